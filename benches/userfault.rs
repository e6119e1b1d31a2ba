//! `Backend::Userfault` costs, between two pinned processes, through the
//! public API only:
//!
//! - **trapped-store stall** (case `stall`): the producer's time for a store
//!   that traps (its first store to a page after an ACK), measured in the
//!   producer around `producer.region().write(..)`, and a second store to
//!   the same page right after (untrapped) for reference. Built to be
//!   compared with `../shared/anchor-bench/uffd_wp poll` (its
//!   `trapped_write_stall` and `untrapped_write`), in the same session.
//! - **ACK cost vs region size** (case `ack`): regions of 1, 16, 256 and
//!   4096 pages, one page written per round; the consumer's time for the
//!   `try_changed_with_pages(&mut pages)` call that takes the trip, i.e.
//!   the ACK that re-protects the written page. For context next to
//!   `uffd_wp rearm` (which re-protects the whole range, from the thread
//!   that owns the mapping).
//!
//! # Harness
//!
//! - The bench binary re-executes itself as a producer (env
//!   `MEMFD_TRIPWIRE_BENCH_ROLE=producer`), one per tripwire, with the
//!   handshake socket as its stdin and a second socket (the per-round
//!   control channel) as its stdout. The consumer (parent) is pinned to
//!   CPU1, so its fault-resolver threads run there too; the producers to
//!   CPU0: the anchor's placement (writer thread on CPU0, resolver thread on
//!   CPU1).
//! - Each producer first stores once into every page it will use (each
//!   store traps and is resolved), and the consumer takes that trip: the
//!   pages are populated before the first round, as the anchor pre-faults.
//! - A round: the consumer sends `go`; the producer stores 8 bytes into page
//!   `p` (trapped: timed), stores again into `p` (untrapped: timed), reads
//!   the clock once more (nothing between: the clock's own cost) and sends
//!   `done`; the consumer ACKs (re-protects `p`) and checks that the trip
//!   reported exactly page `p`. So every timed store traps, as in the
//!   anchor, where the writer re-arms the page itself before each store.
//! - The stall case uses a 4096-page region and rotates over its first 64
//!   pages, as the anchor does; the ACK cases write page `round % pages`.
//!   The ACK cases run together, round-robin (one round of each tripwire,
//!   then the next round), so that a disturbance of the machine hits every
//!   region size alike.
//! - Warm-up rounds are dropped (`WARMUP`, 1000 as in the anchor).
//!
//! The consumer variant of the stall case (`MODE`; the ACK cases always use
//! `blocking`):
//!
//! | `MODE` | where the consumer's main thread is when the store traps | ACK |
//! |---|---|---|
//! | `blocking` (default) | blocked on the control socket: the trap wakes only the resolver thread, like the anchor's `poll` resolver (`poll()` + `read()` + un-protect) | `blocking::Tripwire::try_changed_with_pages` after `done` |
//! | `wait` | in `blocking::Tripwire::wait()`: woken by the trip, ACKs at once | inside `wait()` |
//! | `tokio` | in tokio `Tripwire::changed_with_pages().await` (current_thread runtime): woken by the trip, ACKs at once | inside `changed_with_pages` |
//!
//! In `wait` and `tokio` an ACK can land before the producer's stalled
//! store has retried (the store then faults again) or before its second,
//! "untrapped" store; each such extra trip is taken before the next round
//! and counted (`extra_trips_per_1k_rounds`); the producer counts its
//! "untrapped" stores that took over 5 µs (`untrapped_over_5us_per_1k_rounds`:
//! trapped after all, or interrupted), so the rest of the extra trips are
//! timed stores that faulted twice.
//!
//! Where the producer is when the consumer ACKs (`ACK_WHEN`, ACK cases;
//! both by default, each its own set of tripwires):
//!
//! | `ACK_WHEN` | producer during the ACK | what the re-protect costs besides the page-table update |
//! |---|---|---|
//! | `idle` | blocked, and given `SETTLE_US` (50) to get off its CPU | no remote TLB flush (its mm is live on no CPU): like the anchor's re-arm, which flushes only its own CPU |
//! | `busy` | busy-polling the control socket until the ACK is done | a TLB-shootdown IPI to the producer's CPU, waited for: the case of a producer that keeps running |
//!
//! Without either (the consumer ACKing right after `done`), whether the
//! producer has already left its CPU is a race, and the median flips
//! between the two figures from run to run.
//!
//! Differences from the anchor: two processes (the anchor is one process,
//! two threads); the clock is `Instant` (`clock_gettime` through the vDSO)
//! where the anchor reads the TSC: `empty_interval` gives the clock's own
//! cost, which the untrapped figure includes; the anchor's writer re-arms
//! the page itself right before its store, here the consumer's ACK comes
//! one round trip (two wake-ups) earlier.
//!
//! Output, in the anchor's format (median and p99 of the samples, in ns):
//!
//! ```text
//! RESULT userfault_stall_<mode> trapped_write_stall <median> <p99> ns            (producer, stderr)
//! RESULT userfault_stall_<mode> untrapped_write <median> <p99> ns                (producer, stderr)
//! RESULT userfault_stall_<mode> empty_interval <median> <p99> ns                 (producer, stderr)
//! RESULT userfault_stall_<mode> untrapped_over_5us_per_1k_rounds <n> - count     (producer, stderr)
//! RESULT userfault_stall_<mode> extra_trips_per_1k_rounds <n> - count            (consumer, stdout)
//! RESULT userfault_ack_<when>_<n>pages try_changed_with_pages(1_written) <median> <p99> ns  (consumer)
//! RESULT userfault_ack_<when>_<n>pages trapped_write_stall <median> <p99> ns    (producer, ...)
//! ```
//!
//! Run: `cargo bench --bench userfault` (or the built binary). Env knobs:
//! `CASES` (default `stall ack`), `MODE` (above), `ITERS` (20000 stall
//! samples), `ACK_ITERS` (5000 samples per ACK tripwire), `ACK_PAGES`
//! (default `1 16 256 4096`), `ACK_WHEN` (default `idle busy`),
//! `SETTLE_US` (50), `WARMUP` (1000), `CONSUMER_CPU` (1), `PRODUCER_CPU`
//! (0). `scripts/bench-userfault` interleaves it with the C anchor.

mod common;
use common::{median_p99, pin};

use std::io::{Read as _, Write as _};
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitCode, Stdio};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use memfd_tripwire::{Backend, BackendKind, Producer, Tripwire, blocking};

const ROLE_ENV: &str = "MEMFD_TRIPWIRE_BENCH_ROLE";
const PAGE: usize = 4096;
/// The stall case: the anchor's region size and rotation.
const STALL_REGION_PAGES: usize = 4096;
const STALL_ROTATE_PAGES: usize = 64;
/// Control bytes. Producer -> consumer: `READY` (pages pre-touched),
/// `DONE` (round stored). Consumer -> producer: `GO` (store), `ACKED` (a
/// busy producer may stop spinning).
const READY: u8 = b'r';
const GO: u8 = b'g';
const DONE: u8 = b'd';
const ACKED: u8 = b'a';
/// A producer's parameters (set by the consumer).
const ENV_ROTATE: &str = "MEMFD_TRIPWIRE_BENCH_ROTATE";
const ENV_ROUNDS: &str = "MEMFD_TRIPWIRE_BENCH_ROUNDS";
const ENV_SKIP: &str = "MEMFD_TRIPWIRE_BENCH_SKIP";
const ENV_NAME: &str = "MEMFD_TRIPWIRE_BENCH_NAME";
const ENV_BUSY: &str = "MEMFD_TRIPWIRE_BENCH_BUSY";

type BoxError = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let result = if std::env::var_os(ROLE_ENV).is_some_and(|r| r == "producer") {
        producer()
    } else {
        consumer()
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("userfault bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Blocking,
    Wait,
    Tokio,
}

impl Mode {
    fn from_env() -> Result<Mode, BoxError> {
        match std::env::var("MODE").as_deref() {
            Err(std::env::VarError::NotPresent) | Ok("blocking") => Ok(Mode::Blocking),
            Ok("wait") => Ok(Mode::Wait),
            Ok("tokio") => Ok(Mode::Tokio),
            Ok(other) => Err(format!("MODE={other:?}: use blocking, wait or tokio").into()),
            Err(e) => Err(format!("MODE: {e}").into()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Blocking => "blocking",
            Mode::Wait => "wait",
            Mode::Tokio => "tokio",
        }
    }
}

/// Where the producer is when the consumer ACKs (the ACK cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckWhen {
    /// Blocked, and given `SETTLE_US` to get off its CPU.
    Idle,
    /// Busy-polling the control socket until the ACK is done.
    Busy,
}

impl AckWhen {
    fn from_env() -> Result<Vec<AckWhen>, BoxError> {
        let v = std::env::var("ACK_WHEN").unwrap_or_else(|_| "idle busy".into());
        v.split_whitespace()
            .map(|w| match w {
                "idle" => Ok(AckWhen::Idle),
                "busy" => Ok(AckWhen::Busy),
                other => Err(format!("ACK_WHEN: {other:?}: use idle, busy or both").into()),
            })
            .collect()
    }

    fn name(self) -> &'static str {
        match self {
            AckWhen::Idle => "idle",
            AckWhen::Busy => "busy",
        }
    }
}

struct Config {
    stall: bool,
    ack: bool,
    mode: Mode,
    iters: usize,
    ack_iters: usize,
    ack_pages: Vec<usize>,
    ack_when: Vec<AckWhen>,
    settle: Duration,
    warmup: usize,
    consumer_cpu: usize,
    producer_cpu: usize,
}

impl Config {
    fn from_env() -> Result<Config, BoxError> {
        let cases = std::env::var("CASES").unwrap_or_else(|_| "stall ack".into());
        let (mut stall, mut ack) = (false, false);
        for c in cases.split_whitespace() {
            match c {
                "stall" => stall = true,
                "ack" => ack = true,
                other => return Err(format!("CASES: unknown case {other:?} (stall, ack)").into()),
            }
        }
        let ack_pages = match std::env::var("ACK_PAGES") {
            Ok(v) => v
                .split_whitespace()
                .map(|n| match n.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(format!("ACK_PAGES: bad page count {n:?}")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Err(_) => vec![1, 16, 256, 4096],
        };
        let cfg = Config {
            stall,
            ack,
            mode: Mode::from_env()?,
            iters: env_usize("ITERS", 20_000)?,
            ack_iters: env_usize("ACK_ITERS", 5_000)?,
            ack_pages,
            ack_when: AckWhen::from_env()?,
            settle: Duration::from_micros(env_usize("SETTLE_US", 50)? as u64),
            warmup: env_usize("WARMUP", 1_000)?,
            consumer_cpu: env_usize("CONSUMER_CPU", 1)?,
            producer_cpu: env_usize("PRODUCER_CPU", 0)?,
        };
        if cfg.iters == 0 || cfg.ack_iters == 0 {
            return Err("ITERS and ACK_ITERS must be at least 1".into());
        }
        Ok(cfg)
    }
}

fn env_usize(name: &str, default: usize) -> Result<usize, BoxError> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|e| format!("{name}={v:?}: {e}").into()),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => Err(format!("{name}: {e}").into()),
    }
}

fn nanos(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.duration_since(from).as_nanos()).unwrap_or(u64::MAX)
}

fn send(sock: &mut UnixStream, byte: u8) -> std::io::Result<()> {
    sock.write_all(&[byte])
}

fn check(got: u8, want: u8) -> Result<(), BoxError> {
    if got != want {
        return Err(format!(
            "control channel: got {:?}, want {:?}",
            got as char, want as char
        )
        .into());
    }
    Ok(())
}

/// Blocks for the next control byte, which must be `want`.
fn expect(sock: &mut UnixStream, want: u8) -> Result<(), BoxError> {
    let mut b = [0u8];
    sock.read_exact(&mut b)?;
    check(b[0], want)
}

/// Busy-polls the control socket for the next byte, which must be `want`.
fn spin_for(sock: &mut UnixStream, want: u8) -> Result<(), BoxError> {
    sock.set_nonblocking(true)?;
    let mut b = [0u8];
    let got = loop {
        match sock.read(&mut b) {
            Ok(1) => break b[0],
            Ok(_) => return Err("control channel: the consumer hung up".into()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    };
    sock.set_nonblocking(false)?;
    check(got, want)
}

/// Spins (keeps the CPU busy, so no idle-state exit follows) for `d`.
fn spin(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Whether `pages` is exactly the one range `r`.
fn only(pages: &[Range<usize>], r: Range<usize>) -> bool {
    matches!(pages, [one] if *one == r)
}

/// One tripwire and its producer process.
struct Peer {
    name: String,
    rotate: usize,
    skip: usize,
    busy: bool,
    tw: blocking::Tripwire,
    ctl: UnixStream,
    child: Child,
    pages: Vec<Range<usize>>,
    /// The timed ACKs (after the warm-up).
    acks: Vec<u64>,
    /// Trips taken besides the one each round is for.
    extra: usize,
}

struct PeerSpec<'a> {
    name: String,
    pages: usize,
    rotate: usize,
    rounds: usize,
    skip: usize,
    busy: bool,
    cfg: &'a Config,
}

impl Peer {
    /// Spawns the producer, shares a fresh Userfault tripwire with it, and
    /// takes the trip of its pre-touch of the pages.
    fn spawn(spec: PeerSpec<'_>) -> Result<Peer, BoxError> {
        let (hs_ours, hs_theirs) = UnixStream::pair()?;
        let (ctl, ctl_theirs) = UnixStream::pair()?;
        let child = {
            // The Command owns the child's ends; dropping it closes our copies.
            let mut cmd = Command::new(std::env::current_exe()?);
            cmd.env(ROLE_ENV, "producer")
                .env("PRODUCER_CPU", spec.cfg.producer_cpu.to_string())
                .env(ENV_ROTATE, spec.rotate.to_string())
                .env(ENV_ROUNDS, spec.rounds.to_string())
                .env(ENV_SKIP, spec.skip.to_string())
                .env(ENV_NAME, &spec.name)
                .env(ENV_BUSY, if spec.busy { "1" } else { "0" })
                .stdin(Stdio::from(OwnedFd::from(hs_theirs)))
                .stdout(Stdio::from(OwnedFd::from(ctl_theirs)));
            cmd.spawn()?
        };
        let mut tw = blocking::Tripwire::builder(spec.pages * PAGE)
            .backend(Backend::Userfault)
            .create()?;
        tw.share(hs_ours)?;
        let mut peer = Peer {
            name: spec.name,
            rotate: spec.rotate,
            skip: spec.skip,
            busy: spec.busy,
            tw,
            ctl,
            child,
            pages: Vec::with_capacity(4),
            acks: Vec::with_capacity(spec.rounds.saturating_sub(spec.skip)),
            extra: 0,
        };
        expect(&mut peer.ctl, READY)?;
        peer.pages.clear();
        if peer.tw.try_changed_with_pages(&mut peer.pages)?.is_none() {
            return Err(format!("{}: no trip after the pre-touch", peer.name).into());
        }
        if !only(&peer.pages, 0..peer.rotate * PAGE) {
            return Err(format!("{}: pre-touch reported {:?}", peer.name, peer.pages).into());
        }
        Ok(peer)
    }

    /// A round with the consumer parked on the control socket while the
    /// producer stores; then the ACK, timed when `settle` is given.
    fn ack_round(&mut self, round: usize, settle: Option<Duration>) -> Result<(), BoxError> {
        send(&mut self.ctl, GO)?;
        expect(&mut self.ctl, DONE)?;
        self.pages.clear();
        if let Some(d) = settle.filter(|d| !d.is_zero()) {
            spin(d);
        }
        let t0 = Instant::now();
        let taken = self.tw.try_changed_with_pages(&mut self.pages)?;
        let t1 = Instant::now();
        if self.busy {
            send(&mut self.ctl, ACKED)?;
        }
        if taken.is_none() {
            return Err(format!("{}: round {round}: no trip after a store", self.name).into());
        }
        let p = round % self.rotate;
        if !only(&self.pages, p * PAGE..(p + 1) * PAGE) {
            return Err(format!(
                "{}: round {round}: pages {:?}, want page {p}",
                self.name, self.pages
            )
            .into());
        }
        if settle.is_some() && round >= self.skip {
            self.acks.push(nanos(t0, t1));
        }
        self.take_extra()
    }

    /// Takes any further trip before the next round (counted).
    fn take_extra(&mut self) -> Result<(), BoxError> {
        while self.tw.try_changed()?.is_some() {
            self.extra += 1;
        }
        Ok(())
    }

    /// Waits for the producer (which prints its figures) and prints ours.
    fn finish(self, rounds: usize) -> Result<(), BoxError> {
        let Peer {
            name,
            ctl,
            mut child,
            mut acks,
            extra,
            tw,
            ..
        } = self;
        drop(ctl);
        let status = child.wait()?;
        drop(tw);
        if !status.success() {
            return Err(format!("{name}: producer failed: {status}").into());
        }
        let mut out = std::io::stdout().lock();
        if !acks.is_empty() {
            let (med, p99) = median_p99(&mut acks);
            writeln!(
                out,
                "RESULT {name} try_changed_with_pages(1_written) {med}.0 {p99}.0 ns"
            )?;
        }
        let per_1k = extra as f64 * 1000.0 / rounds as f64;
        writeln!(
            out,
            "RESULT {name} extra_trips_per_1k_rounds {per_1k:.2} - count"
        )?;
        out.flush()?;
        Ok(())
    }
}

fn consumer() -> Result<(), BoxError> {
    let cfg = Config::from_env()?;
    pin(cfg.consumer_cpu)?;
    if cfg.stall {
        run_stall(&cfg)?;
    }
    if cfg.ack {
        run_acks(&cfg)?;
    }
    Ok(())
}

fn run_stall(cfg: &Config) -> Result<(), BoxError> {
    let rounds = cfg.warmup + cfg.iters;
    let mut peer = Peer::spawn(PeerSpec {
        name: format!("userfault_stall_{}", cfg.mode.name()),
        pages: STALL_REGION_PAGES,
        rotate: STALL_ROTATE_PAGES,
        rounds,
        skip: cfg.warmup,
        busy: false,
        cfg,
    })?;
    match cfg.mode {
        Mode::Blocking => {
            for round in 0..rounds {
                peer.ack_round(round, None)?;
            }
        }
        Mode::Wait => {
            for _ in 0..rounds {
                send(&mut peer.ctl, GO)?;
                peer.tw.wait()?;
                expect(&mut peer.ctl, DONE)?;
                peer.take_extra()?;
            }
        }
        Mode::Tokio => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()?;
            let tw = peer.tw; // into the tokio wrapper for the loop, back after
            let ctl = &mut peer.ctl;
            let (tw, extra) = rt.block_on(async {
                let mut tw = Tripwire::new(tw)?;
                let mut cx = Context::from_waker(Waker::noop());
                let mut pages = Vec::with_capacity(4);
                let mut extra = 0;
                for _ in 0..rounds {
                    send(ctl, GO)?;
                    pages.clear();
                    tw.changed_with_pages(&mut pages).await?;
                    // A blocking read on the runtime's only thread: nothing
                    // else runs on it.
                    expect(ctl, DONE)?;
                    while let Poll::Ready(r) = tw.poll_changed(&mut cx) {
                        r?;
                        extra += 1;
                    }
                }
                Ok::<_, BoxError>((tw.into_inner(), extra))
            })?;
            peer = Peer {
                tw,
                extra: peer.extra + extra,
                ..peer
            };
        }
    }
    peer.finish(rounds)
}

fn run_acks(cfg: &Config) -> Result<(), BoxError> {
    let rounds = cfg.warmup + cfg.ack_iters;
    let mut peers = Vec::new();
    for &when in &cfg.ack_when {
        for &n in &cfg.ack_pages {
            let peer = Peer::spawn(PeerSpec {
                name: format!("userfault_ack_{}_{n}pages", when.name()),
                pages: n,
                rotate: n,
                rounds,
                skip: cfg.warmup,
                busy: when == AckWhen::Busy,
                cfg,
            })?;
            let settle = match when {
                AckWhen::Idle => cfg.settle,
                AckWhen::Busy => Duration::ZERO,
            };
            peers.push((peer, settle));
        }
    }
    for round in 0..rounds {
        for (peer, settle) in &mut peers {
            peer.ack_round(round, Some(*settle))?;
        }
    }
    for (peer, _) in peers {
        peer.finish(rounds)?;
    }
    Ok(())
}

fn producer() -> Result<(), BoxError> {
    pin(env_usize("PRODUCER_CPU", 0)?)?;
    let rotate = env_usize(ENV_ROTATE, 1)?.max(1);
    let rounds = env_usize(ENV_ROUNDS, 0)?;
    let skip = env_usize(ENV_SKIP, 0)?;
    let name = std::env::var(ENV_NAME)?;
    let busy = env_usize(ENV_BUSY, 0)? != 0;

    let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
    let mut ctl = UnixStream::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let p = Producer::connect(UnixStream::from(stdin))?;
    if p.backend() != BackendKind::Userfault {
        return Err(format!("the consumer chose {}, not Userfault", p.backend()).into());
    }
    let region = p.region();
    if region.len() < rotate * PAGE {
        return Err(format!("region of {} bytes < {rotate} pages", region.len()).into());
    }
    // Populate every page used (each store traps once); the consumer ACKs.
    for page in 0..rotate {
        region.write(page * PAGE, &0u64)?;
    }
    send(&mut ctl, READY)?;

    let n = rounds.saturating_sub(skip);
    let mut trapped = Vec::with_capacity(n);
    let mut untrapped = Vec::with_capacity(n);
    let mut clock = Vec::with_capacity(n);
    for round in 0..rounds {
        expect(&mut ctl, GO)?;
        let off = (round % rotate) * PAGE;
        let v = round as u64;
        let t0 = Instant::now();
        region.write(off, &v)?; // trapped: the first store to the page since the ACK
        let t1 = Instant::now();
        region.write(off, &v.wrapping_add(1))?; // not trapped: baseline
        let t2 = Instant::now();
        let t3 = Instant::now(); // nothing: the clock's own cost
        send(&mut ctl, DONE)?;
        if busy {
            spin_for(&mut ctl, ACKED)?;
        }
        if round >= skip {
            trapped.push(nanos(t0, t1));
            untrapped.push(nanos(t1, t2));
            clock.push(nanos(t2, t3));
        }
    }
    // Stay until the consumer is done with us (it closes the control
    // socket): exiting earlier would make its last look see a hang-up.
    let mut rest = Vec::new();
    ctl.read_to_end(&mut rest)?;
    if !rest.is_empty() {
        return Err(format!(
            "control channel: {} unexpected bytes at the end",
            rest.len()
        )
        .into());
    }
    if n == 0 {
        return Ok(());
    }
    // An "untrapped" store that took this long trapped after all (a
    // consumer's ACK got in first) or was interrupted.
    let slow = untrapped.iter().filter(|&&t| t > 5_000).count();
    let slow_per_1k = slow as f64 * 1000.0 / n as f64;
    let (tm, tp) = median_p99(&mut trapped);
    let (um, up) = median_p99(&mut untrapped);
    let (cm, cp) = median_p99(&mut clock);
    // One write: the producers of the ACK cases finish at the same time,
    // on the same stderr.
    let text = format!(
        "RESULT {name} trapped_write_stall {tm}.0 {tp}.0 ns\n\
         RESULT {name} untrapped_write {um}.0 {up}.0 ns\n\
         RESULT {name} empty_interval {cm}.0 {cp}.0 ns\n\
         RESULT {name} untrapped_over_5us_per_1k_rounds {slow_per_1k:.2} - count\n"
    );
    std::io::stderr().write_all(text.as_bytes())?;
    Ok(())
}
