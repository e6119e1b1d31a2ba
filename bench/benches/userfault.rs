//! `Backend::Userfault` and `Backend::UserfaultAsync` costs, between two
//! pinned processes, through the public API only:
//!
//! - **trapped-store stall** (case `stall`): the producer's time for a store
//!   that traps (its first store to a page after an ACK), measured in the
//!   producer around `producer.region().write(..)`, and a second store to
//!   the same page right after (untrapped) for reference. Built to be
//!   compared with `../shared/anchor-bench/uffd_wp poll` (its
//!   `trapped_write_stall` and `untrapped_write`), in the same session.
//! - **ACK cost vs region size** (case `ack`): regions of 1, 16, 256 and
//!   4096 pages, one page written per round; the consumer's time for the
//!   `try_changed_with_pages(&mut pages)` steps that take the trip, i.e.
//!   the ACK that re-protects the written page (since #22 the step never
//!   blocks: the first sends the ACK to the producer's agent, the consumer
//!   sleeps in `wait_ready`, a second completes it; `take_pages`). For context next to
//!   `uffd_wp rearm` (which re-protects the whole range, from the thread
//!   that owns the mapping).
//! - **UserfaultAsync first write** (case `async_first_write`): the stall
//!   case (`blocking` consumer) on a `Backend::UserfaultAsync` tripwire
//!   whose scanner is kept out of the way (`poll_interval` 1 s): the
//!   consumer re-arms with `ack()` after `done`, so each timed store is the
//!   first to a re-protected page and takes the async fault that the kernel
//!   resolves by itself, with no consumer involved. Compare with
//!   `uffd_wp_async` `first_write_fault_stall` and `untrapped_write`.
//! - **UserfaultAsync ACK cost** (case `async_ack`): the ACK cases with the
//!   consumer's `ack()` timed (scanner kept out of the way, so its
//!   `PAGEMAP_SCAN` is the one that finds and re-protects the page
//!   written), next to `uffd_wp_async` `pagemap_scan_<n>pages
//!   scan+reWP(1_written)`. Besides that ioctl, `ack()` takes a mutex,
//!   checks with a second, one-page scan that the mapping is still
//!   registered, and drains the eventfd. And the scan's re-protect, on
//!   another process's mm, flushes that mm's TLB on the producer's CPU:
//!   on x86 `PAGEMAP_SCAN` flushes with `flush_tlb_range`, which also
//!   interrupts CPUs that only hold the mm lazily, so even an idle
//!   producer's (halted) CPU takes the IPI, and the ACK waits for it
//!   (`Userfault`'s re-protect skips lazy CPUs). The anchor scans its own
//!   mm from its only thread: a local flush.
//! - **UserfaultAsync detection latency** (case `async_latency`): for each
//!   scan interval in `POLL_US` and each consumer in `LAT_MODES`
//!   (`wait`: `blocking::Tripwire::wait()`; `tokio`:
//!   `changed_with_pages().await`), the time from the producer's store to
//!   the consumer's wait returning, on the stall case's region. The value
//!   stored is the producer's `CLOCK_MONOTONIC` in ns (`now_ns`, read just
//!   before the store); the consumer reads the clock as its wait returns,
//!   then the stamp from the region: one clock for both processes, so the
//!   difference is the latency. After `go` the producer first spins for a
//!   random time, uniform below max(10 x interval, 1 ms), so that its stores
//!   fall at uniformly spread phases of the scanner's period (`go` follows a
//!   scan by a fixed delay; without the spread the phase would be fixed).
//!   Expect half the scanner's *actual* period (the interval plus the
//!   timer slack of its `park_timeout`, 50 µs by default, plus its CPU's
//!   wake-up) plus a scan, the consumer's wake-up and its ACK's scan.
//!
//! # Harness
//!
//! - The bench binary re-executes itself as a producer (env
//!   `MEMFD_TRIPWIRE_BENCH_ROLE=producer`), one per tripwire, with the
//!   handshake socket as its stdin and a second socket (the per-round
//!   control channel) as its stdout. The consumer (parent) is pinned to
//!   CPU1; the producers to CPU0, and with them (since #12) their agents,
//!   which resolve the faults: unlike the anchor's placement (writer thread
//!   on CPU0, resolver thread on CPU1), the resolution is a wake-up on the
//!   writer's own CPU.
//! - Each producer first stores once into every page it will use (each
//!   store traps and is resolved), and the consumer takes that trip
//!   (UserfaultAsync: re-arms with `ack()`): the pages are populated before
//!   the first round, as the anchor pre-faults.
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
//! - Warm-up rounds are dropped (`WARMUP`, 1000 as in the anchor; a tenth
//!   of it in the latency case, whose rounds are long).
//! - The latency case: the consumer sends `go` and waits on the tripwire;
//!   the producer spins, stores its stamp (timed, as the first write) and
//!   stores it again, and sends `done`. A wake-up that finds no newer stamp
//!   than the last one seen (a late trip of the previous round's second
//!   store, before this round's store) is counted as an extra trip, and the
//!   consumer waits again.
//!
//! The consumer variant of the stall case (`MODE`; the ACK cases always use
//! `blocking`):
//!
//! | `MODE` | where the consumer's main thread is when the store traps | ACK |
//! |---|---|---|
//! | `blocking` (default) | blocked on the control socket: the trap wakes only the producer's agent, like the anchor's `poll` resolver (`poll()` + `read()` + un-protect) | `blocking::Tripwire::try_changed_with_pages` after `done` |
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
//! RESULT userfault_async_first_write first_write_fault_stall <median> <p99> ns   (producer; and the
//!                                        untrapped, empty_interval, ... lines as above)
//! RESULT userfault_async_ack_<when>_<n>pages ack(1_written) <median> <p99> ns    (consumer)
//! RESULT userfault_async_latency_<us>us_<mode> detect_latency <median> <p99> ns  (consumer)
//! RESULT userfault_async_latency_<us>us_<mode> detect_latency_mean <mean> - ns   (consumer)
//! RESULT userfault_async_latency_<us>us_<mode> detect_latency_min <min> - ns     (consumer)
//! ```
//!
//! (Every UserfaultAsync producer names its timed store
//! `first_write_fault_stall`, as the anchor does.)
//!
//! Run: `cargo bench -p memfd-tripwire-bench --bench userfault` (or the built binary). Env knobs:
//! `CASES` (default `stall ack`; also `async_first_write async_ack
//! async_latency`, Linux >= 6.7), `MODE` (above), `ITERS` (20000 stall and
//! first-write samples), `ACK_ITERS` (5000 samples per ACK tripwire),
//! `ACK_PAGES` (default `1 16 256 4096`), `ACK_WHEN` (default `idle
//! busy`), `SETTLE_US` (50), `WARMUP` (1000), `POLL_US` (scan intervals of
//! the latency case, default `50 1000`: a low-latency setting and the
//! crate's default), `LAT_MODES` (default `wait tokio`), `LAT_ITERS` (2000
//! latency samples per interval and mode), `CONSUMER_CPU` (1),
//! `PRODUCER_CPU` (0). `scripts/bench-userfault` interleaves it with the C
//! anchors (`uffd_wp`, `uffd_wp_async`).

mod common;
use common::{ROLE_ENV, env_num, median_p99, now_ns, pin};

use std::io::{Read as _, Write as _};
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitCode, Stdio};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use memfd_tripwire::{Backend, BackendKind, Producer, Region, Tripwire, blocking};

const PAGE: usize = 4096;
/// The stall case: the anchor's region size and rotation.
const STALL_REGION_PAGES: usize = 4096;
const STALL_ROTATE_PAGES: usize = 64;
/// UserfaultAsync where only the consumer's `ack()` should scan: the
/// scanner thread's interval, long enough to keep it out of the way.
const QUIET_INTERVAL: Duration = Duration::from_secs(1);
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
/// The producer's random wait before its store, below this many ns.
const ENV_JITTER: &str = "MEMFD_TRIPWIRE_BENCH_JITTER_NS";

type BoxError = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    common::run_role("userfault bench", producer, consumer)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Blocking,
    Wait,
    Tokio,
}

impl Mode {
    /// The modes listed in env `name` (`default` when unset), among `allowed`.
    fn list_from_env(name: &str, default: &str, allowed: &[Mode]) -> Result<Vec<Mode>, BoxError> {
        let v = std::env::var(name).unwrap_or_else(|_| default.into());
        let names: Vec<_> = allowed.iter().map(|m| m.name()).collect();
        v.split_whitespace()
            .map(|w| match names.iter().position(|n| *n == w) {
                Some(i) => Ok(allowed[i]),
                None => Err(format!("{name}: {w:?}: use {}", names.join(", ")).into()),
            })
            .collect()
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
    async_first_write: bool,
    async_ack: bool,
    async_latency: bool,
    mode: Mode,
    iters: usize,
    ack_iters: usize,
    ack_pages: Vec<usize>,
    ack_when: Vec<AckWhen>,
    settle: Duration,
    warmup: usize,
    /// UserfaultAsync scan intervals of the latency case.
    poll: Vec<Duration>,
    lat_modes: Vec<Mode>,
    lat_iters: usize,
    consumer_cpu: usize,
    producer_cpu: usize,
}

impl Config {
    fn from_env() -> Result<Config, BoxError> {
        const CASES: [&str; 5] = [
            "stall",
            "ack",
            "async_first_write",
            "async_ack",
            "async_latency",
        ];
        let cases = std::env::var("CASES").unwrap_or_else(|_| "stall ack".into());
        let cases: Vec<&str> = cases.split_whitespace().collect();
        if let Some(other) = cases.iter().find(|c| !CASES.contains(c)) {
            return Err(format!("CASES: unknown case {other:?} ({})", CASES.join(", ")).into());
        }
        let mode = Mode::list_from_env(
            "MODE",
            "blocking",
            &[Mode::Blocking, Mode::Wait, Mode::Tokio],
        )?;
        let [mode] = mode[..] else {
            return Err("MODE: name one mode".into());
        };
        let cfg = Config {
            stall: cases.contains(&"stall"),
            ack: cases.contains(&"ack"),
            async_first_write: cases.contains(&"async_first_write"),
            async_ack: cases.contains(&"async_ack"),
            async_latency: cases.contains(&"async_latency"),
            mode,
            iters: env_num("ITERS", 20_000)?,
            ack_iters: env_num("ACK_ITERS", 5_000)?,
            ack_pages: env_list("ACK_PAGES", "1 16 256 4096")?,
            ack_when: AckWhen::from_env()?,
            settle: Duration::from_micros(env_num::<u64>("SETTLE_US", 50)?),
            warmup: env_num("WARMUP", 1_000)?,
            poll: env_list("POLL_US", "50 1000")?
                .into_iter()
                .map(|us| Duration::from_micros(us as u64))
                .collect(),
            lat_modes: Mode::list_from_env("LAT_MODES", "wait tokio", &[Mode::Wait, Mode::Tokio])?,
            lat_iters: env_num("LAT_ITERS", 2_000)?,
            consumer_cpu: env_num("CONSUMER_CPU", 1)?,
            producer_cpu: env_num("PRODUCER_CPU", 0)?,
        };
        if cfg.iters == 0 || cfg.ack_iters == 0 || cfg.lat_iters == 0 {
            return Err("ITERS, ACK_ITERS and LAT_ITERS must be at least 1".into());
        }
        Ok(cfg)
    }
}

/// The positive whole numbers listed in env `name` (`default` when unset).
fn env_list(name: &str, default: &str) -> Result<Vec<usize>, BoxError> {
    let v = std::env::var(name).unwrap_or_else(|_| default.into());
    v.split_whitespace()
        .map(|n| match n.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{name}: bad number {n:?}").into()),
        })
        .collect()
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
/// Takes a trip that is there, to its end; `false` if there is none. Since
/// #22 `try_changed_with_pages` never blocks, and on `Userfault` a trip's
/// ACK is a round trip to the producer's agent: the step that takes the trip
/// sends it and returns `None` with a `deadline()`, a later one completes it
/// and returns the epoch. So step, sleeping in `wait_ready` (readiness or
/// the deadline) between steps: what the one blocking call cost before.
fn take_pages(tw: &mut blocking::Tripwire, pages: &mut Vec<Range<usize>>) -> std::io::Result<bool> {
    loop {
        if tw.try_changed_with_pages(pages)?.is_some() {
            return Ok(true);
        }
        if tw.deadline().is_none() {
            return Ok(false); // no trip, no ACK in flight
        }
        tw.wait_ready(None)?;
    }
}

fn only(pages: &[Range<usize>], r: Range<usize>) -> bool {
    matches!(pages, [one] if *one == r)
}

/// Detection latencies (UserfaultAsync, consumer in `wait` or `tokio`):
/// the age of the producer's stamp when the consumer's wait returned.
struct Latency {
    on: bool,
    /// The stamp seen last (the pre-touch stores 0).
    last: u64,
    samples: Vec<u64>,
}

impl Latency {
    /// Right after a wait returned: whether the round's store, at `off`, is
    /// visible (always `true` when off); records its age if `record`. The
    /// stamps grow round by round: one no newer than the last seen is an
    /// earlier round's (the page's stamp from `rotate` rounds ago), read
    /// after a late trip of the previous round's second store.
    fn woke(&mut self, region: &Region, off: usize, record: bool) -> Result<bool, BoxError> {
        if !self.on {
            return Ok(true);
        }
        let now = now_ns();
        let stamp: u64 = region.read(off)?;
        if stamp <= self.last {
            return Ok(false);
        }
        self.last = stamp;
        if record {
            self.samples.push(now.saturating_sub(stamp));
        }
        Ok(true)
    }
}

/// One tripwire and its producer process.
struct Peer {
    name: String,
    rotate: usize,
    skip: usize,
    busy: bool,
    /// `Backend::UserfaultAsync` (else `Userfault`).
    is_async: bool,
    tw: blocking::Tripwire,
    ctl: UnixStream,
    child: Child,
    pages: Vec<Range<usize>>,
    /// The timed ACKs (after the warm-up).
    acks: Vec<u64>,
    /// Trips taken besides the one each round is for.
    extra: usize,
    lat: Latency,
}

struct PeerSpec<'a> {
    name: String,
    pages: usize,
    rotate: usize,
    rounds: usize,
    skip: usize,
    busy: bool,
    /// `Some(interval)`: `Backend::UserfaultAsync` scanning at that interval.
    scan: Option<Duration>,
    /// The producer waits a random time below this before each store.
    jitter: Duration,
    cfg: &'a Config,
}

impl PeerSpec<'_> {
    /// A stall-case tripwire (the anchor's region and rotation), Userfault.
    fn stall(cfg: &Config, name: String, rounds: usize, skip: usize) -> PeerSpec<'_> {
        PeerSpec {
            name,
            pages: STALL_REGION_PAGES,
            rotate: STALL_ROTATE_PAGES,
            rounds,
            skip,
            busy: false,
            scan: None,
            jitter: Duration::ZERO,
            cfg,
        }
    }
}

impl Peer {
    /// Spawns the producer, shares a fresh Userfault(Async) tripwire with
    /// it, and takes the trip of its pre-touch of the pages.
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
                .env(ENV_JITTER, spec.jitter.as_nanos().to_string())
                .stdin(Stdio::from(OwnedFd::from(hs_theirs)))
                .stdout(Stdio::from(OwnedFd::from(ctl_theirs)));
            cmd.spawn()?
        };
        let builder = blocking::Tripwire::builder(spec.pages * PAGE);
        let mut tw = match spec.scan {
            None => builder.backend(Backend::Userfault),
            Some(interval) => builder
                .backend(Backend::UserfaultAsync)
                .poll_interval(interval),
        }
        .create()?;
        tw.share(hs_ours)?;
        let mut peer = Peer {
            name: spec.name,
            rotate: spec.rotate,
            skip: spec.skip,
            busy: spec.busy,
            is_async: spec.scan.is_some(),
            tw,
            ctl,
            child,
            pages: Vec::with_capacity(4),
            acks: Vec::with_capacity(spec.rounds.saturating_sub(spec.skip)),
            extra: 0,
            lat: Latency {
                on: false,
                last: 0,
                samples: Vec::new(),
            },
        };
        expect(&mut peer.ctl, READY)?;
        if peer.is_async {
            // Whether or not the scanner has seen the pre-touch: re-arm all.
            peer.tw.ack()?;
            return Ok(peer);
        }
        peer.pages.clear();
        if !take_pages(&mut peer.tw, &mut peer.pages)? {
            return Err(format!("{}: no trip after the pre-touch", peer.name).into());
        }
        if !only(&peer.pages, 0..peer.rotate * PAGE) {
            return Err(format!("{}: pre-touch reported {:?}", peer.name, peer.pages).into());
        }
        Ok(peer)
    }

    /// A round with the consumer parked on the control socket while the
    /// producer stores; then the ACK, timed when `settle` is given: on
    /// UserfaultAsync `ack()` (its scan finds the store: the scanner thread
    /// is kept out of the way), else `try_changed_with_pages`.
    fn ack_round(&mut self, round: usize, settle: Option<Duration>) -> Result<(), BoxError> {
        send(&mut self.ctl, GO)?;
        expect(&mut self.ctl, DONE)?;
        self.pages.clear();
        if let Some(d) = settle.filter(|d| !d.is_zero()) {
            spin(d);
        }
        let t0 = Instant::now();
        let tripped = if self.is_async {
            self.tw.ack()?; // re-arms, tripped or not; reports no pages
            true
        } else {
            take_pages(&mut self.tw, &mut self.pages)?
        };
        let t1 = Instant::now();
        if self.busy {
            send(&mut self.ctl, ACKED)?;
        }
        if !tripped {
            return Err(format!("{}: round {round}: no trip after a store", self.name).into());
        }
        let p = round % self.rotate;
        if !self.is_async && !only(&self.pages, p * PAGE..(p + 1) * PAGE) {
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
            is_async,
            ctl,
            mut child,
            mut acks,
            extra,
            tw,
            mut lat,
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
            let call = if is_async {
                "ack"
            } else {
                "try_changed_with_pages"
            };
            writeln!(out, "RESULT {name} {call}(1_written) {med}.0 {p99}.0 ns")?;
        }
        if !lat.samples.is_empty() {
            let s = &mut lat.samples;
            let (med, p99) = median_p99(s);
            let mean = s.iter().sum::<u64>() as f64 / s.len() as f64;
            writeln!(out, "RESULT {name} detect_latency {med}.0 {p99}.0 ns")?;
            writeln!(out, "RESULT {name} detect_latency_mean {mean:.0} - ns")?;
            writeln!(out, "RESULT {name} detect_latency_min {} - ns", s[0])?;
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
    let rounds = cfg.warmup + cfg.iters;
    if cfg.stall {
        let name = format!("userfault_stall_{}", cfg.mode.name());
        run_stall(cfg.mode, PeerSpec::stall(&cfg, name, rounds, cfg.warmup))?;
    }
    if cfg.ack {
        run_acks(&cfg, None)?;
    }
    if cfg.async_first_write {
        let name = "userfault_async_first_write".to_string();
        let spec = PeerSpec::stall(&cfg, name, rounds, cfg.warmup);
        run_stall(
            Mode::Blocking,
            PeerSpec {
                scan: Some(QUIET_INTERVAL),
                ..spec
            },
        )?;
    }
    if cfg.async_ack {
        run_acks(&cfg, Some(QUIET_INTERVAL))?;
    }
    if cfg.async_latency {
        let warmup = cfg.warmup / 10;
        for &interval in &cfg.poll {
            for &mode in &cfg.lat_modes {
                let us = interval.as_micros();
                let name = format!("userfault_async_latency_{us}us_{}", mode.name());
                let spec = PeerSpec::stall(&cfg, name, warmup + cfg.lat_iters, warmup);
                let jitter = (interval * 10).max(Duration::from_millis(1));
                run_stall(
                    mode,
                    PeerSpec {
                        scan: Some(interval),
                        jitter,
                        ..spec
                    },
                )?;
            }
        }
    }
    Ok(())
}

/// The stall loop: one tripwire, the consumer in `mode`.
fn run_stall(mode: Mode, spec: PeerSpec<'_>) -> Result<(), BoxError> {
    let rounds = spec.rounds;
    let mut peer = Peer::spawn(spec)?;
    peer.lat.on = peer.is_async && mode != Mode::Blocking;
    let (rotate, skip) = (peer.rotate, peer.skip);
    let off = |round: usize| (round % rotate) * PAGE;
    match mode {
        Mode::Blocking => {
            for round in 0..rounds {
                peer.ack_round(round, None)?;
            }
        }
        Mode::Wait => {
            for round in 0..rounds {
                send(&mut peer.ctl, GO)?;
                loop {
                    peer.tw.wait()?;
                    if peer.lat.woke(peer.tw.region(), off(round), round >= skip)? {
                        break;
                    }
                    peer.extra += 1;
                }
                expect(&mut peer.ctl, DONE)?;
                peer.take_extra()?;
            }
        }
        Mode::Tokio => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                // The timer: on Userfault, an ACK in flight has a deadline.
                .enable_time()
                .build()?;
            let tw = peer.tw; // into the tokio wrapper for the loop, back after
            let (ctl, lat) = (&mut peer.ctl, &mut peer.lat);
            let (tw, extra) = rt.block_on(async {
                let mut tw = Tripwire::new(tw)?;
                let mut cx = Context::from_waker(Waker::noop());
                let mut pages = Vec::with_capacity(4);
                let mut extra = 0;
                for round in 0..rounds {
                    send(ctl, GO)?;
                    loop {
                        pages.clear();
                        tw.changed_with_pages(&mut pages).await?;
                        if lat.woke(tw.region(), off(round), round >= skip)? {
                            break;
                        }
                        extra += 1;
                    }
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

/// The ACK cases; `scan`: on UserfaultAsync, with that scan interval.
fn run_acks(cfg: &Config, scan: Option<Duration>) -> Result<(), BoxError> {
    let rounds = cfg.warmup + cfg.ack_iters;
    let prefix = if scan.is_some() {
        "userfault_async"
    } else {
        "userfault"
    };
    let mut peers = Vec::new();
    for &when in &cfg.ack_when {
        for &n in &cfg.ack_pages {
            let peer = Peer::spawn(PeerSpec {
                name: format!("{prefix}_ack_{}_{n}pages", when.name()),
                pages: n,
                rotate: n,
                rounds,
                skip: cfg.warmup,
                busy: when == AckWhen::Busy,
                scan,
                jitter: Duration::ZERO,
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
    pin(env_num("PRODUCER_CPU", 0)?)?;
    let rotate = env_num::<usize>(ENV_ROTATE, 1)?.max(1);
    let rounds = env_num::<usize>(ENV_ROUNDS, 0)?;
    let skip = env_num::<usize>(ENV_SKIP, 0)?;
    let name = std::env::var(ENV_NAME)?;
    let busy = env_num::<usize>(ENV_BUSY, 0)? != 0;
    let jitter = env_num::<u64>(ENV_JITTER, 0)?;
    let mut rng = now_ns() | 1; // xorshift64 state: any odd seed

    let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
    let mut ctl = UnixStream::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let p = Producer::connect(UnixStream::from(stdin))?;
    // The first store after an ACK traps on Userfault; on UserfaultAsync it
    // takes the fault the kernel resolves by itself (the anchor's name).
    let first = match p.backend() {
        BackendKind::Userfault => "trapped_write_stall",
        BackendKind::UserfaultAsync => "first_write_fault_stall",
        other => return Err(format!("the consumer chose {other}, not Userfault(Async)").into()),
    };
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
        if jitter > 0 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            spin(Duration::from_nanos(rng % jitter));
        }
        let off = (round % rotate) * PAGE;
        // The value stored: when it is stored, for the consumer's latency.
        let stamp = now_ns();
        let t0 = Instant::now();
        region.write(off, &stamp)?; // trapped: the first store to the page since the ACK
        let t1 = Instant::now();
        region.write(off, &stamp)?; // not trapped: baseline
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
        "RESULT {name} {first} {tm}.0 {tp}.0 ns\n\
         RESULT {name} untrapped_write {um}.0 {up}.0 ns\n\
         RESULT {name} empty_interval {cm}.0 {cp}.0 ns\n\
         RESULT {name} untrapped_over_5us_per_1k_rounds {slow_per_1k:.2} - count\n"
    );
    std::io::stderr().write_all(text.as_bytes())?;
    Ok(())
}
