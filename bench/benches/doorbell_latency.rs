//! One-way wake latency of `changed().await` on the Doorbell backend, between
//! two pinned processes, through the public API only.
//!
//! Built to be compared with `../shared/anchor-bench/pingpong_eventfd epoll`
//! (its `one_way(direct)` figure), in the same session:
//!
//! - the bench binary re-executes itself as the producer (env
//!   `MEMFD_TRIPWIRE_BENCH_ROLE=producer`), with the handshake socket as its
//!   stdin and an eventfd (the ack channel) as its stdout;
//! - the consumer (parent) is pinned to CPU0, the producer (child) to CPU1;
//! - per sample, the producer reads `CLOCK_MONOTONIC`, stores the stamp into
//!   the region and calls `notify()`; the consumer's `changed().await`
//!   returns, it reads the clock and the stamp, records `now - stamp`, and
//!   acks through the eventfd; the producer waits for that ack
//!   (`epoll_wait` + `read`, as the anchor does) before the next sample. So,
//!   as in the anchor, the receiver is back in its wait by the time the next
//!   send comes (the sender first has to be woken by the ack);
//! - 1000 warm-up round trips are dropped, as in the anchor.
//!
//! Differences from the anchor, measured to be small (the `raw_epoll` control
//! below, the anchor's mechanism in this harness, reads 0.94-1.02x the
//! anchor): the clock is `clock_gettime` (vDSO, ~30 ns) where the anchor
//! reads the TSC, and the measured direction is child (CPU1) -> parent (CPU0)
//! where the anchor's is parent (CPU0) -> child (CPU1);
//! `CONSUMER_CPU=1 PRODUCER_CPU=0` measures the anchor's direction.
//!
//! Output, in the anchor's format (median and p99 of the samples, in ns):
//!
//! ```text
//! RESULT doorbell_tokio_current_thread one_way(direct) <median> <p99> ns   (stdout, consumer)
//! RESULT doorbell_tokio_current_thread rtt <median> <p99> ns               (stderr, producer)
//! ```
//!
//! Run: `cargo bench -p memfd-tripwire-bench --bench doorbell_latency` (or the built binary). Env
//! knobs: `ITERS` (default 20000 samples), `WARMUP` (1000), `CONSUMER_CPU`
//! (0), `PRODUCER_CPU` (1), `GAP_US` (0: extra sleep of the producer between
//! the ack and the next send, to make sure the consumer is parked), and
//! `MODE`, which picks the consumer (the default is the one the goal is
//! about; the others break the figure down, with the same harness):
//!
//! | `MODE` | wake path measured |
//! |---|---|
//! | `tokio` (default) | `notify()` -> tokio `Tripwire::changed().await` (current_thread runtime) |
//! | `blocking` | `notify()` -> `blocking::Tripwire::wait()` (no runtime) |
//! | `raw_epoll` | control, no crate: eventfd `write` -> `epoll_wait` + `read`, as the C anchor |
//! | `raw_tokio` | control, no crate: eventfd `write` -> tokio `AsyncFd::readable()` + `read` |
//! | `watch` | `watch::Sender::send` of a 256-byte value (the stamp in its first word) -> tokio `watch::Receiver::changed().await` + `borrow()` (a seqlock read of the whole value), #24's watch update-to-read latency |
//! | `raw_socket` | control, no crate: a 32-byte message on a unix stream socket -> tokio `readable()` + `read`: the transport of a VFIO-user `region_write`, what a device server gets per doorbell store to a trapped register today |
//!
//! `BACKEND` (default `doorbell`; any name `Backend` parses, e.g. `poll`,
//! `unmodified`) picks the tripwire's backend in the `tokio` and `blocking`
//! modes; with `poll`, `POLL_INTERVAL_US` (default 1000) and `BUSY_POLL_US`
//! (default 0: off) set the interval and the busy-poll window. On `Poll` the
//! producer's `notify()` is a no-op: the poller sees its store.
//!
//! In the raw modes the stamp travels as the eventfd's value and the child's
//! stdin is that eventfd instead of the handshake socket.
//! `scripts/bench-doorbell` interleaves it with the C anchor.

mod common;
use common::{ROLE_ENV, env_num, median_p99, now_ns, pin};

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use memfd_tripwire::{Backend, Producer, Tripwire, blocking, watch};
use rustix::event::{EventfdFlags, epoll};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Offset of the producer's stamp in the region.
const STAMP: usize = 0;
/// The watched value of `MODE=watch`: 256 bytes, the stamp in word 0.
type Watched = [u64; 32];
/// Bytes of a VFIO-user `region_write` of 8 bytes (header, offset, count,
/// data), as `MODE=raw_socket` sends per doorbell.
const REGION_WRITE_LEN: usize = 32;

type BoxError = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    common::run_role("doorbell_latency", producer, consumer)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tokio,
    Blocking,
    RawEpoll,
    RawTokio,
    RawSocket,
    Watch,
}

impl Mode {
    fn from_env() -> Result<Mode, BoxError> {
        match std::env::var("MODE").as_deref() {
            Err(std::env::VarError::NotPresent) | Ok("tokio") => Ok(Mode::Tokio),
            Ok("blocking") => Ok(Mode::Blocking),
            Ok("raw_epoll") => Ok(Mode::RawEpoll),
            Ok("raw_tokio") => Ok(Mode::RawTokio),
            Ok("raw_socket") => Ok(Mode::RawSocket),
            Ok("watch") => Ok(Mode::Watch),
            Ok(other) => Err(format!(
                "MODE={other:?}: use tokio, blocking, raw_epoll, raw_tokio, raw_socket or watch"
            )
            .into()),
            Err(e) => Err(format!("MODE: {e}").into()),
        }
    }

    /// The bench name in the RESULT lines.
    fn name(self) -> &'static str {
        match self {
            Mode::Tokio => "doorbell_tokio_current_thread",
            Mode::Blocking => "doorbell_blocking_wait",
            Mode::RawEpoll => "raw_eventfd_epoll",
            Mode::RawTokio => "raw_eventfd_tokio_current_thread",
            Mode::RawSocket => "raw_socket_message_tokio_current_thread",
            Mode::Watch => "watch_doorbell_tokio_current_thread",
        }
    }

    fn raw(self) -> bool {
        matches!(self, Mode::RawEpoll | Mode::RawTokio)
    }
}

struct Config {
    mode: Mode,
    backend: Backend,
    poll_interval: Duration,
    busy_poll: Duration,
    iters: usize,
    warmup: usize,
    consumer_cpu: usize,
    producer_cpu: usize,
    gap: Duration,
}

impl Config {
    /// The bench name in the RESULT lines: the mode, and the backend and
    /// its poll settings where they apply.
    fn name(&self) -> String {
        let mode = self.mode.name();
        if self.mode.raw() || self.mode == Mode::RawSocket || self.backend == Backend::Doorbell {
            return mode.to_string();
        }
        let mode = mode.replacen("doorbell", &self.backend.to_string(), 1);
        if self.backend == Backend::Poll || self.backend == Backend::Unmodified {
            let busy = self.busy_poll.as_micros();
            format!(
                "{mode}_interval{}us_busy{busy}us",
                self.poll_interval.as_micros()
            )
        } else {
            mode
        }
    }

    fn from_env() -> Result<Config, BoxError> {
        Ok(Config {
            mode: Mode::from_env()?,
            backend: std::env::var("BACKEND")
                .as_deref()
                .unwrap_or("doorbell")
                .parse()?,
            poll_interval: Duration::from_micros(env_num("POLL_INTERVAL_US", 1000)?),
            busy_poll: Duration::from_micros(env_num("BUSY_POLL_US", 0)?),
            iters: env_num("ITERS", 20_000)?,
            warmup: env_num("WARMUP", 1_000)?,
            consumer_cpu: env_num("CONSUMER_CPU", 0)?,
            producer_cpu: env_num("PRODUCER_CPU", 1)?,
            gap: Duration::from_micros(env_num::<u64>("GAP_US", 0)?),
        })
    }
}

fn write_eventfd(fd: BorrowedFd<'_>, value: u64) -> std::io::Result<()> {
    loop {
        match rustix::io::write(fd, &value.to_ne_bytes()) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads an eventfd's counter (resetting it); `None` if it is zero and the
/// eventfd non-blocking.
fn read_eventfd(fd: BorrowedFd<'_>) -> std::io::Result<Option<u64>> {
    let mut buf = [0u8; 8];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(_) => return Ok(Some(u64::from_ne_bytes(buf))),
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Blocks in `epoll_wait` for the one fd in `ep`, as the anchor's `wait_fd`.
fn epoll_wait_one(ep: BorrowedFd<'_>) -> std::io::Result<()> {
    let mut events = [MaybeUninit::<epoll::Event>::uninit(); 1];
    loop {
        match epoll::wait(ep, &mut events, None) {
            Ok((ready, _)) if !ready.is_empty() => return Ok(()),
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn epoll_for(fd: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(&ep, fd, epoll::EventData::new_u64(0), epoll::EventFlags::IN)?;
    Ok(ep)
}

/// The consumer's samples: `warmup + iters` wake-ups, each acked through
/// `ack` right after the clock is read; keeps the last `iters` one-way
/// latencies.
struct Sampler<'a> {
    cfg: &'a Config,
    ack: BorrowedFd<'a>,
    samples: Vec<u64>,
    seen: usize,
}

impl Sampler<'_> {
    fn done(&self) -> bool {
        self.seen == self.cfg.warmup + self.cfg.iters
    }

    /// Records `now - stamp` (read the clock right after the wake-up, before
    /// anything else), then acks.
    fn woke(&mut self, stamp: impl FnOnce() -> Result<u64, BoxError>) -> Result<(), BoxError> {
        let t1 = now_ns();
        let stamp = stamp()?;
        if self.seen >= self.cfg.warmup {
            self.samples.push(t1.wrapping_sub(stamp));
        }
        self.seen += 1;
        write_eventfd(self.ack, 1)?;
        Ok(())
    }
}

fn consumer() -> Result<(), BoxError> {
    let cfg = Config::from_env()?;
    if cfg.iters == 0 {
        return Err("ITERS must be at least 1".into());
    }
    pin(cfg.consumer_cpu)?;

    // The ack channel: consumer -> producer, the producer's stdout.
    let ack = rustix::event::eventfd(0, EventfdFlags::CLOEXEC)?;
    // The child's stdin: the handshake socket, or (raw modes) the doorbell.
    let (ours, theirs): (Option<UnixStream>, OwnedFd) = if cfg.mode.raw() {
        let bell = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        (None, bell)
    } else {
        let (ours, theirs) = UnixStream::pair()?;
        (Some(ours), theirs.into())
    };
    let bell = cfg.mode.raw().then(|| theirs.try_clone()).transpose()?;
    let mut child = {
        // The Command owns the child's ends; dropping it closes our copies.
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(ROLE_ENV, "producer")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::from(ack.try_clone()?));
        cmd.spawn()?
    };

    let mut s = Sampler {
        cfg: &cfg,
        ack: ack.as_fd(),
        samples: Vec::with_capacity(cfg.iters),
        seen: 0,
    };
    match (cfg.mode, ours, bell) {
        (Mode::Tokio | Mode::Blocking, Some(ours), _) => {
            let mut tw = blocking::Tripwire::builder(4096)
                .backend(cfg.backend)
                .poll_interval(cfg.poll_interval)
                .busy_poll(cfg.busy_poll)
                .create()?;
            tw.share(ours)?;
            if cfg.mode == Mode::Blocking {
                while !s.done() {
                    tw.wait()?;
                    s.woke(|| Ok(tw.region().read(STAMP)?))?;
                }
            } else {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    // The timer: on Userfault, an ACK in flight has a deadline.
                    .enable_time()
                    .build()?;
                rt.block_on(async {
                    let mut tw = Tripwire::new(tw)?;
                    while !s.done() {
                        tw.changed().await?;
                        s.woke(|| Ok(tw.region().read(STAMP)?))?;
                    }
                    Ok::<_, BoxError>(())
                })?;
            }
        }
        (Mode::Watch, Some(ours), _) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()?;
            rt.block_on(async {
                let mut rx = watch::channel::<Watched>([0; 32])
                    .backend(cfg.backend)
                    .poll_interval(cfg.poll_interval)
                    .create_async()?;
                rx.share(ours).await?;
                while !s.done() {
                    rx.changed().await?;
                    s.woke(|| Ok(rx.borrow()[0]))?;
                }
                Ok::<_, BoxError>(())
            })?;
        }
        (Mode::RawEpoll, _, Some(bell)) => {
            let ep = epoll_for(bell.as_fd())?;
            while !s.done() {
                epoll_wait_one(ep.as_fd())?;
                let Some(stamp) = read_eventfd(bell.as_fd())? else {
                    continue; // spurious: wait again
                };
                s.woke(|| Ok(stamp))?;
            }
        }
        (Mode::RawTokio, _, Some(bell)) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()?;
            rt.block_on(async {
                // SAFETY: `bell` is an open OwnedFd, owned by the AsyncFd
                // until it is dropped, so its number stays the same.
                let bell = unsafe { AsyncFd::register_with_interest(bell, Interest::READABLE) }
                    .map_err(std::io::Error::from)?;
                while !s.done() {
                    let mut guard = bell.readable().await?;
                    match guard.try_io(|fd| match read_eventfd(fd.as_fd())? {
                        Some(v) => Ok(v),
                        None => Err(std::io::ErrorKind::WouldBlock.into()),
                    }) {
                        Ok(stamp) => s.woke(|| Ok(stamp?))?,
                        Err(_would_block) => continue,
                    }
                }
                Ok::<_, BoxError>(())
            })?;
        }
        (Mode::RawSocket, Some(ours), _) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()?;
            rt.block_on(async {
                ours.set_nonblocking(true)?;
                let sock = tokio::net::UnixStream::from_std(ours)?;
                let mut msg = [0u8; REGION_WRITE_LEN];
                while !s.done() {
                    sock.readable().await?;
                    match sock.try_read(&mut msg) {
                        Ok(REGION_WRITE_LEN) => {
                            let stamp = u64::from_ne_bytes(msg[24..32].try_into()?);
                            s.woke(|| Ok(stamp))?;
                        }
                        Ok(n) => return Err(format!("a short message of {n} bytes").into()),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok::<_, BoxError>(())
            })?;
        }
        _ => unreachable!("the raw modes have a bell, the others a socket"),
    }

    let status = child.wait()?;
    if !status.success() {
        return Err(format!("producer failed: {status}").into());
    }
    let (med, p99) = median_p99(&mut s.samples);
    let mut out = std::io::stdout().lock();
    let name = cfg.name();
    writeln!(out, "RESULT {name} one_way(direct) {med}.0 {p99}.0 ns")?;
    out.flush()?;
    Ok(())
}

fn producer() -> Result<(), BoxError> {
    let cfg = Config::from_env()?;
    pin(cfg.producer_cpu)?;

    let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
    let ack = std::io::stdout().as_fd().try_clone_to_owned()?;
    let socket = (cfg.mode == Mode::RawSocket)
        .then(|| stdin.try_clone())
        .transpose()?;
    let mut watched = None;
    let (producer, bell) = if cfg.mode.raw() {
        (None, Some(stdin))
    } else if socket.is_some() {
        (None, None)
    } else if cfg.mode == Mode::Watch {
        watched = Some(watch::Sender::<Watched>::connect(UnixStream::from(stdin))?);
        (None, None)
    } else {
        (Some(Producer::connect(UnixStream::from(stdin))?), None)
    };
    let ep = epoll_for(ack.as_fd())?;

    let mut rtt = Vec::with_capacity(cfg.iters);
    for i in 0..cfg.warmup + cfg.iters {
        if !cfg.gap.is_zero() {
            std::thread::sleep(cfg.gap);
        }
        let t0 = now_ns();
        if let Some(tx) = &mut watched {
            let mut value: Watched = [0; 32];
            value[0] = t0;
            tx.send(&value)?;
        }
        match (&producer, &bell, &socket) {
            (None, None, None) => {} // the watch, sent above
            (Some(p), _, _) => {
                p.region().write(STAMP, &t0)?;
                p.notify()?;
            }
            (None, Some(bell), _) => write_eventfd(bell.as_fd(), t0)?,
            (None, None, Some(sock)) => {
                // A message the size of a VFIO-user region_write of a u64:
                // a 16-byte header, the region offset, the count, the data.
                let mut msg = [0u8; REGION_WRITE_LEN];
                msg[24..32].copy_from_slice(&t0.to_ne_bytes());
                rustix::io::write(sock, &msg)?;
            }
        }
        // Wait for the ack as the anchor waits: epoll_wait, then read.
        epoll_wait_one(ep.as_fd())?;
        read_eventfd(ack.as_fd())?;
        let t1 = now_ns();
        if i >= cfg.warmup {
            rtt.push(t1 - t0);
        }
    }
    let (med, p99) = median_p99(&mut rtt);
    eprintln!("RESULT {} rtt {med}.0 {p99}.0 ns", cfg.name());
    Ok(())
}
