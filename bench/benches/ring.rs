//! The typed ring (`ring::{SharedRing, Receiver, Sender}`) between two pinned
//! processes, through the public API only: throughput and one-message round
//! trip, on the `Doorbell` and `Userfault` backends.
//!
//! Built to be compared with `../shared/anchor-bench/spsc_ring` (`tput`,
//! `rtt`; a hand-written C ring of 64-byte messages with an eventfd doorbell
//! rung only when the peer sleeps) and `../shared/peer-bench` in the same
//! session: `scripts/bench-ring` interleaves the three and writes
//! `BENCHMARKS.md`. `Kernel` is not measured here: it exists only in the RFC
//! kernel VM, where timing means nothing (`scripts/test-in-vm` covers its
//! correctness).
//!
//! # Harness
//!
//! - The bench binary re-executes itself as the peer (env
//!   `MEMFD_TRIPWIRE_BENCH_ROLE=ring-peer`, the case in
//!   `MEMFD_TRIPWIRE_RING_CASE`), one fresh peer and fresh rings per case.
//!   The consumer (parent) pins itself to CPU0, the producer (child) to CPU1
//!   (`sched_setaffinity`, as the anchor; no `taskset`). A `Userfault`
//!   ring's agent thread (which resolves the faults and answers the ACKs)
//!   lives in the producer's process, so on CPU1.
//! - **tput**: the child's stdin is the ring's handshake socket and its
//!   stdout a control socket. Once both ends are attached, the child says
//!   ready and waits; the parent starts its clock, sends `go` and receives
//!   `N` messages (default 2,000,000), checking each one's sequence number
//!   (first and last word); the clock stops at the last message. Then the
//!   child drops its Sender and the parent checks that the ring ends with a
//!   clean close. The producer sends with one `blocking_send` per message
//!   (`one`) or `blocking_send_many` of K (`manyK`, e.g. `many256`: one
//!   head store and one `notify()` per batch, as the anchor's `BATCH`); the
//!   consumer takes them with `blocking_recv` (`blocking`),
//!   `blocking_recv_many(&mut buf, 256)` (`blockmany`: a batch per call, as
//!   the anchor's consumer drains everything published) or, in a tokio
//!   current-thread runtime, `recv_many(&mut buf, 256)` (`many`).
//!   The async per-message pair (`PAIRS`, default `async:async`): the
//!   producer `send(m).await`s each message and the consumer
//!   `recv().await`s each one, each side in its own tokio current-thread
//!   runtime: the async counterpart of `one` into `blocking`, which it is
//!   meant to be compared with (#22: at least 0.8x).
//!   The Sink (#24.3), each in a current-thread runtime: `forward` is
//!   `StreamExt::forward` of a `stream::iter` of the messages into the
//!   Sender (`start_send` per message, published by the quarter-ring bound
//!   and the final close), `feed` is `SinkExt::feed` per message and one
//!   `flush` at the end; compare them with `many256` (#24 goal: `forward`
//!   at least 0.8x `send_many`). The in-place send (#24.3): `reserve` is
//!   `blocking_reserve()`, then the slot is filled field by field and
//!   committed, `areserve` the same with `reserve().await`; compare them
//!   with `one` and `async` on `MSGS=4K`, a 4 KiB message whose payload
//!   the producer holds already (`send` copies it into a value, then into
//!   the slot; the reserved slot gets it in one copy; #24 goal: faster
//!   than `send`). None of these run by default: name them in `SENDS` or
//!   `PAIRS`.
//! - **rtt**: two rings, as `examples/ring_ipc.rs`: the parent sends message
//!   `i` on ring A (`blocking_send`), the child takes it (`blocking_recv`)
//!   and sends it back on ring B, the parent takes it and checks it. 2,000
//!   warm-up round trips, then 100,000 timed ones (`RTT_WARMUP`, `RTT_N`),
//!   each timed with the TSC as the anchor does (`rdtscp`, calibrated
//!   against `CLOCK_MONOTONIC` over 50 ms; `Instant` elsewhere).
//! - Spin budget (`Builder::spin`): 0 (park at once) and 5 µs by default
//!   (`SPINS_US`; `auto` is the adaptive default), for every Receiver of
//!   the case. Capacity 1024 slots, as the anchor's `CAP`.
//! - Counters: the Receiver's `stats()` (`rearms`: times it re-armed the
//!   wire after running dry, an upper bound of the doorbells it can cause on
//!   `Doorbell`; `sleeps`), the voluntary context switches of each side's
//!   main thread, and the producer thread's page faults (minor + major,
//!   `getrusage`) while it sends: a store that traps into userfaultfd counts
//!   as one (checked on Linux 6.18: 4,000 trapped stores, 4,001 minor
//!   faults), so on `Userfault` `prod_faults` bounds the producer's stalls
//!   from above. It also counts the first touch of each ring page (17 for
//!   a 1024-slot ring of 64-byte messages), on every backend.
//!
//! # Output
//!
//! One line per case on stdout, `RING` and space-separated `key=value`
//! fields (rates in M msg/s, times in ns unless named `_secs`):
//!
//! ```text
//! RING test=tput backend=doorbell msg=64B send=many256 recv=blocking spin_us=5 cap=1024 n=2000000 secs=.. mmsgs=.. rearms=.. sleeps=.. rearms_per_1k=.. cons_nvcsw=.. prod_nvcsw=.. prod_faults=.. faults_per_1k=..
//! RING test=rtt backend=doorbell msg=64B spin_us=5 cap=1024 n=100000 warmup=2000 median_ns=.. p99_ns=.. rearms_per_rt=.. ..
//! ```
//!
//! A case that fails prints `ring: <case>: <error>` on stderr and the bench
//! goes on with the next; the exit status is then 1.
//!
//! # Knobs (env)
//!
//! | env | default | meaning |
//! |---|---|---|
//! | `TESTS` | `tput rtt` | which tests |
//! | `BACKENDS` | `doorbell userfault` | `doorbell`, `userfault`, `userfault_async`, `poll`, `kernel` |
//! | `MSGS` | `64B u64` | message types: `[u64; 8]`, `u64`, `4K` (4 KiB: sequence, payload, check) (tput; rtt is 64B only) |
//! | `SENDS` | `many256 one` | producer: `manyK` = `blocking_send_many` of K, `one` = `blocking_send`, `async` = `send().await`, `forward` = `StreamExt::forward` into the Sink, `feed` = `SinkExt::feed` each + one `flush`, `reserve` = `blocking_reserve` + fill + `commit`, `areserve` = `reserve().await` + fill + `commit` |
//! | `RECVS` | `blocking blockmany many` | consumer: `blocking_recv`, `blocking_recv_many` or `recv_many` of up to `RECV_BATCH` (256), `async` = `recv().await` |
//! | `PAIRS` | `async:async` | `send:recv` pairs run after the `SENDS` x `RECVS` ones (not twice), per message type; empty: none |
//! | `SPINS_US` | `0 5` | the Receivers' spin budget, µs (`auto`: the adaptive default) |
//! | `N`, `RTT_N`, `RTT_WARMUP` | 2000000, 100000, 2000 | messages per tput run, timed and warm-up round trips |
//! | `CAP` | 1024 | ring capacity (slots) |
//! | `CONSUMER_CPU`, `PRODUCER_CPU` | 0, 1 | pinning |
//!
//! Run: `cargo bench -p memfd-tripwire-bench --bench ring` (or the built binary).

mod common;
use common::{ROLE_ENV, env_num, env_words, median_p99, pin};

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use memfd_tripwire::Backend;
use memfd_tripwire::ring::{Receiver, SendSlot, Sender, SharedRing};

const ROLE: &str = "ring-peer";
const CASE_ENV: &str = "MEMFD_TRIPWIRE_RING_CASE";

type BoxError = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let peer = std::env::var_os(ROLE_ENV).is_some_and(|r| r == ROLE);
    let result = if peer { peer_main() } else { consumer_main() };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ring{}: {e}", if peer { " (peer)" } else { "" });
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------- messages

/// A message type of the bench: how to make message `seq` and check it.
trait Msg: bytemuck::Pod {
    const NAME: &'static str;
    const TAG: u64;
    fn make(seq: u64) -> Self;
    fn is(&self, seq: u64) -> bool;
    /// Fills a reserved slot with message `seq` (`reserve`, `areserve`):
    /// the whole value by default; a large message field by field, never
    /// built on the stack.
    fn fill(seq: u64, slot: &mut SendSlot<'_, Self>) -> Result<(), memfd_tripwire::Error> {
        slot.write(&Self::make(seq))
    }
}

/// 64 bytes, the anchor's message size: the sequence number in the first
/// word (and the others), its complement in the last.
type Msg64 = [u64; 8];

impl Msg for Msg64 {
    const NAME: &'static str = "64B";
    const TAG: u64 = u64::from_le_bytes(*b"RBENCH64");

    fn make(seq: u64) -> Self {
        [seq, seq, seq, seq, seq, seq, seq, !seq]
    }

    fn is(&self, seq: u64) -> bool {
        self[0] == seq && self[7] == !seq
    }
}

/// 4 KiB, for the in-place send (`reserve`) against `send` of the same
/// value: the sequence number first, its complement last, and a payload
/// that the producer holds already (as a user's buffer would be): `make`
/// copies it into a value on the stack that the send copies again, `fill`
/// copies it once, into the slot.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Msg4K {
    seq: u64,
    payload: [u8; 4080],
    check: u64,
}

/// The payload of every `Msg4K`.
static PAYLOAD: [u8; 4080] = [0xa5; 4080];

impl Msg for Msg4K {
    const NAME: &'static str = "4K";
    const TAG: u64 = u64::from_le_bytes(*b"RBENCH4K");

    fn make(seq: u64) -> Self {
        Msg4K {
            seq,
            payload: PAYLOAD,
            check: !seq,
        }
    }

    fn is(&self, seq: u64) -> bool {
        self.seq == seq && self.check == !seq
    }

    fn fill(seq: u64, slot: &mut SendSlot<'_, Self>) -> Result<(), memfd_tripwire::Error> {
        slot.write_at(std::mem::offset_of!(Msg4K, seq), &seq)?;
        slot.write_bytes(std::mem::offset_of!(Msg4K, payload), &PAYLOAD)?;
        slot.write_at(std::mem::offset_of!(Msg4K, check), &!seq)
    }
}

impl Msg for u64 {
    const NAME: &'static str = "u64";
    const TAG: u64 = u64::from_le_bytes(*b"RBENCHu8");

    fn make(seq: u64) -> Self {
        seq
    }

    fn is(&self, seq: u64) -> bool {
        *self == seq
    }
}

// ---------------------------------------------------------------- cases

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    Tput,
    Rtt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendMode {
    One,
    Many(usize),
    /// `send(m).await` per message, in a current-thread runtime.
    Async,
    /// The Sink: `StreamExt::forward` of a stream of the messages, in a
    /// current-thread runtime (start_send per message, published by the
    /// quarter-ring bound and the final close).
    Forward,
    /// The Sink: `SinkExt::feed` per message, one `flush` at the end.
    Feed,
    /// `blocking_reserve()`, `Msg::fill`, `commit()` per message.
    Reserve,
    /// `reserve().await`, `Msg::fill`, `commit()` per message.
    AsyncReserve,
}

impl SendMode {
    /// Whether the producer runs in a tokio runtime.
    fn is_async(self) -> bool {
        matches!(
            self,
            SendMode::Async | SendMode::Forward | SendMode::Feed | SendMode::AsyncReserve
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvMode {
    Blocking,
    BlockingMany,
    Many,
    /// `recv().await` per message, in a current-thread runtime.
    Async,
}

#[derive(Debug, Clone)]
struct Case {
    test: Test,
    backend: &'static str,
    msg: &'static str,
    send: SendMode,
    recv: RecvMode,
    /// The Receiver's spin budget, µs; `auto`: the adaptive default.
    spin_us: SpinUs,
}

/// A fixed spin budget in µs, or the adaptive default (`auto`).
#[derive(Debug, Clone, Copy)]
struct SpinUs(Option<u64>);

impl fmt::Display for SpinUs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(us) => write!(f, "{us}"),
            None => f.write_str("auto"),
        }
    }
}

impl std::str::FromStr for SpinUs {
    type Err = BoxError;
    fn from_str(s: &str) -> Result<Self, BoxError> {
        match s {
            "auto" => Ok(SpinUs(None)),
            us => Ok(SpinUs(Some(
                us.parse().map_err(|e| format!("spin {us:?}: {e}"))?,
            ))),
        }
    }
}

fn backend(name: &str) -> Result<(&'static str, Backend), BoxError> {
    Ok(match name {
        "doorbell" => ("doorbell", Backend::Doorbell),
        "userfault" => ("userfault", Backend::Userfault),
        "userfault_async" => ("userfault_async", Backend::UserfaultAsync),
        "poll" => ("poll", Backend::Poll),
        "kernel" => ("kernel", Backend::Kernel),
        other => return Err(format!("unknown backend {other:?}").into()),
    })
}

impl fmt::Display for SendMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendMode::One => f.write_str("one"),
            SendMode::Many(k) => write!(f, "many{k}"),
            SendMode::Async => f.write_str("async"),
            SendMode::Forward => f.write_str("forward"),
            SendMode::Feed => f.write_str("feed"),
            SendMode::Reserve => f.write_str("reserve"),
            SendMode::AsyncReserve => f.write_str("areserve"),
        }
    }
}

impl fmt::Display for RecvMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecvMode::Blocking => "blocking",
            RecvMode::BlockingMany => "blockmany",
            RecvMode::Many => "many",
            RecvMode::Async => "async",
        })
    }
}

impl fmt::Display for Case {
    /// The fields of the case, as in the RESULT line (and `CASE_ENV`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.test {
            Test::Tput => write!(
                f,
                "test=tput backend={} msg={} send={} recv={} spin_us={}",
                self.backend, self.msg, self.send, self.recv, self.spin_us
            ),
            Test::Rtt => write!(
                f,
                "test=rtt backend={} msg={} spin_us={}",
                self.backend, self.msg, self.spin_us
            ),
        }
    }
}

impl Case {
    fn parse(s: &str) -> Result<Case, BoxError> {
        let fields = parse_fields(s);
        let get = |k: &str| {
            fields
                .get(k)
                .map(String::as_str)
                .ok_or_else(|| format!("case {s:?} lacks {k}"))
        };
        let test = match get("test")? {
            "tput" => Test::Tput,
            "rtt" => Test::Rtt,
            other => return Err(format!("unknown test {other:?}").into()),
        };
        let (backend, _) = backend(get("backend")?)?;
        let msg = msg_name(get("msg")?)?;
        let (send, recv) = match test {
            Test::Tput => (parse_send(get("send")?)?, parse_recv(get("recv")?)?),
            Test::Rtt => (SendMode::One, RecvMode::Blocking),
        };
        let spin_us = get("spin_us")?.parse()?;
        Ok(Case {
            test,
            backend,
            msg,
            send,
            recv,
            spin_us,
        })
    }

    fn backend(&self) -> Backend {
        backend(self.backend).expect("checked when parsed").1
    }

    fn spin(&self) -> Option<Duration> {
        self.spin_us.0.map(Duration::from_micros)
    }
}

fn msg_name(s: &str) -> Result<&'static str, BoxError> {
    match s {
        "64B" | "64b" | "64" => Ok(<Msg64 as Msg>::NAME),
        "u64" => Ok(<u64 as Msg>::NAME),
        "4K" | "4k" => Ok(<Msg4K as Msg>::NAME),
        other => Err(format!("unknown message type {other:?}: use 64B, u64 or 4K").into()),
    }
}

fn parse_send(s: &str) -> Result<SendMode, BoxError> {
    match s {
        "one" => Ok(SendMode::One),
        "async" => Ok(SendMode::Async),
        "forward" => Ok(SendMode::Forward),
        "feed" => Ok(SendMode::Feed),
        "reserve" => Ok(SendMode::Reserve),
        "areserve" => Ok(SendMode::AsyncReserve),
        _ => match s.strip_prefix("many").map(str::parse::<usize>) {
            Some(Ok(k)) if k > 0 => Ok(SendMode::Many(k)),
            _ => Err(format!(
                "unknown send mode {s:?}: use one, manyK (K > 0), async, forward, feed, \
                 reserve or areserve"
            )
            .into()),
        },
    }
}

fn parse_recv(s: &str) -> Result<RecvMode, BoxError> {
    match s {
        "blocking" => Ok(RecvMode::Blocking),
        "blockmany" => Ok(RecvMode::BlockingMany),
        "many" => Ok(RecvMode::Many),
        "async" => Ok(RecvMode::Async),
        other => Err(format!(
            "unknown receive mode {other:?}: use blocking, blockmany, many or async"
        )
        .into()),
    }
}

/// `k=v` fields of a line (other words are ignored).
fn parse_fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

struct Knobs {
    n: u64,
    rtt_n: usize,
    warmup: usize,
    cap: usize,
    recv_batch: usize,
    consumer_cpu: usize,
    producer_cpu: usize,
}

impl Knobs {
    fn from_env() -> Result<Knobs, BoxError> {
        let k = Knobs {
            n: env_num("N", 2_000_000)?,
            rtt_n: env_num("RTT_N", 100_000)?,
            warmup: env_num("RTT_WARMUP", 2_000)?,
            cap: env_num("CAP", 1024)?,
            recv_batch: env_num("RECV_BATCH", 256)?,
            consumer_cpu: env_num("CONSUMER_CPU", 0)?,
            producer_cpu: env_num("PRODUCER_CPU", 1)?,
        };
        if k.n == 0 || k.rtt_n == 0 || k.recv_batch == 0 {
            return Err("N, RTT_N and RECV_BATCH must be at least 1".into());
        }
        Ok(k)
    }
}

/// Every case the env asks for, in a fixed order.
fn cases_from_env() -> Result<Vec<Case>, BoxError> {
    let tests = env_words("TESTS", "tput rtt");
    let backends = env_words("BACKENDS", "doorbell userfault");
    let msgs = env_words("MSGS", "64B u64");
    let sends = env_words("SENDS", "many256 one");
    let recvs = env_words("RECVS", "blocking blockmany many");
    let spins = env_words("SPINS_US", "0 5");
    // The throughput pairs: SENDS x RECVS, then PAIRS not already there.
    let mut pairs = Vec::new();
    for send in &sends {
        for recv in &recvs {
            pairs.push((parse_send(send)?, parse_recv(recv)?));
        }
    }
    for pair in env_words("PAIRS", "async:async") {
        let (send, recv) = pair
            .split_once(':')
            .ok_or_else(|| format!("PAIRS: {pair:?} is not send:recv"))?;
        let pair = (parse_send(send)?, parse_recv(recv)?);
        if !pairs.contains(&pair) {
            pairs.push(pair);
        }
    }
    let mut cases = Vec::new();
    for t in &tests {
        for b in &backends {
            let (backend, _) = backend(b)?;
            for s in &spins {
                let spin_us: SpinUs = s.parse()?;
                match t.as_str() {
                    "tput" => {
                        for m in &msgs {
                            for &(send, recv) in &pairs {
                                cases.push(Case {
                                    test: Test::Tput,
                                    backend,
                                    msg: msg_name(m)?,
                                    send,
                                    recv,
                                    spin_us,
                                });
                            }
                        }
                    }
                    "rtt" => cases.push(Case {
                        test: Test::Rtt,
                        backend,
                        msg: <Msg64 as Msg>::NAME,
                        send: SendMode::One,
                        recv: RecvMode::Blocking,
                        spin_us,
                    }),
                    other => return Err(format!("TESTS: unknown test {other:?}").into()),
                }
            }
        }
    }
    Ok(cases)
}

// ---------------------------------------------------------------- OS helpers

/// Pins the calling thread (and the threads it creates later) to `cpu`.
/// The calling thread's counters from `getrusage(RUSAGE_THREAD)`.
#[derive(Debug, Clone, Copy)]
struct Usage {
    nvcsw: i64,
    nivcsw: i64,
    majflt: i64,
    minflt: i64,
}

impl Usage {
    fn now() -> Usage {
        // SAFETY: rusage is plain data; getrusage fills it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid, writable rusage; RUSAGE_THREAD always exists on Linux.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
        assert_eq!(rc, 0, "getrusage(RUSAGE_THREAD)");
        Usage {
            nvcsw: ru.ru_nvcsw,
            nivcsw: ru.ru_nivcsw,
            majflt: ru.ru_majflt,
            minflt: ru.ru_minflt,
        }
    }

    fn since(self, before: Usage) -> Usage {
        Usage {
            nvcsw: self.nvcsw - before.nvcsw,
            nivcsw: self.nivcsw - before.nivcsw,
            majflt: self.majflt - before.majflt,
            minflt: self.minflt - before.minflt,
        }
    }
}

/// The round-trip clock: the TSC (`rdtscp`), as the anchor, calibrated
/// against `Instant` over 50 ms; `Instant` where there is no TSC.
struct Clock {
    ns_per_tick: f64,
}

impl Clock {
    fn calibrate() -> Clock {
        let (i0, t0) = (Instant::now(), Clock::ticks());
        while i0.elapsed() < Duration::from_millis(50) {
            std::hint::spin_loop();
        }
        let (i1, t1) = (Instant::now(), Clock::ticks());
        Clock {
            ns_per_tick: (i1 - i0).as_nanos() as f64 / t1.wrapping_sub(t0).max(1) as f64,
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn ticks() -> u64 {
        let mut aux = 0u32;
        // SAFETY: rdtscp only reads the TSC (and TSC_AUX into `aux`, a
        // valid u32); every x86_64 CPU this bench runs on has it.
        unsafe { std::arch::x86_64::__rdtscp(&mut aux) }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn ticks() -> u64 {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }

    fn ns(&self, ticks: u64) -> f64 {
        ticks as f64 * self.ns_per_tick
    }
}

fn per_1k(count: i64, of: u64) -> f64 {
    count as f64 * 1000.0 / of.max(1) as f64
}

// ---------------------------------------------------------------- the peer

/// The peer process of one case; killed if the case ends early.
struct Peer {
    child: Option<Child>,
}

impl Peer {
    /// Starts this binary again as the peer of `case`, with the given stdin
    /// and stdout; its stderr comes back to us.
    fn spawn(case: &Case, stdin: OwnedFd, stdout: OwnedFd) -> Result<Peer, BoxError> {
        let child = Command::new(std::env::current_exe()?)
            .env(ROLE_ENV, ROLE)
            .env(CASE_ENV, case.to_string())
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(Peer { child: Some(child) })
    }

    /// Waits for the peer; returns the `k=v` fields of its `PEER` lines, and
    /// passes its other stderr lines on.
    fn finish(mut self) -> Result<BTreeMap<String, String>, BoxError> {
        let mut child = self.child.take().expect("finished once");
        // Its stderr closes when it exits (or hangs up early).
        let err = child.stderr.take().map(|mut e| {
            let mut s = String::new();
            e.read_to_string(&mut s).map(|_| s)
        });
        let status = child.wait()?;
        let err = err.transpose()?.unwrap_or_default();
        let mut fields = BTreeMap::new();
        for line in err.lines() {
            match line.strip_prefix("PEER ") {
                Some(rest) => fields.extend(parse_fields(rest)),
                None => eprintln!("{line}"),
            }
        }
        if !status.success() {
            return Err(format!("the peer failed ({status})").into());
        }
        Ok(fields)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn peer_field(fields: &BTreeMap<String, String>, key: &str) -> Result<i64, BoxError> {
    let v = fields
        .get(key)
        .ok_or_else(|| format!("the peer did not report {key}"))?;
    Ok(v.parse()?)
}

// ---------------------------------------------------------------- consumer

fn consumer_main() -> Result<bool, BoxError> {
    let k = Knobs::from_env()?;
    let cases = cases_from_env()?;
    pin(k.consumer_cpu)?;
    let mut ok = true;
    for case in &cases {
        let line = match (case.test, case.msg) {
            (Test::Tput, "u64") => tput::<u64>(&k, case),
            (Test::Tput, "4K") => tput::<Msg4K>(&k, case),
            (Test::Tput, _) => tput::<Msg64>(&k, case),
            (Test::Rtt, _) => rtt::<Msg64>(&k, case),
        };
        match line {
            Ok(line) => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "RING {case} {line}")?;
                out.flush()?;
            }
            Err(e) => {
                eprintln!("ring: {case}: {e}");
                ok = false;
            }
        }
    }
    Ok(ok)
}

fn ring<T: Msg>(k: &Knobs, case: &Case) -> Result<Receiver<T>, BoxError> {
    let b = SharedRing::<T>::builder(k.cap)
        .backend(case.backend())
        .type_tag(T::TAG);
    let b = match case.spin() {
        Some(d) => b.spin(d),
        None => b,
    };
    Ok(b.create()?)
}

fn runtime() -> Result<tokio::runtime::Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_io()
        // The timer: on Userfault, an ACK in flight has a deadline.
        .enable_time()
        .build()?)
}

fn tput<T: Msg>(k: &Knobs, case: &Case) -> Result<String, BoxError> {
    let n = k.n;
    let mut rx = ring::<T>(k, case)?;
    let (ours, theirs) = UnixStream::pair()?;
    let (mut ctl, ctl_theirs) = UnixStream::pair()?;
    let peer = Peer::spawn(case, theirs.into(), ctl_theirs.into())?;
    rx.share(ours)?;
    let rt = match case.recv {
        RecvMode::Many | RecvMode::Async => Some(runtime()?),
        RecvMode::Blocking | RecvMode::BlockingMany => None,
    };
    let mut buf = Vec::with_capacity(k.recv_batch);
    let mut byte = [0u8];
    ctl.read_exact(&mut byte)?; // the producer is attached and ready

    let usage = Usage::now();
    let start = Instant::now();
    ctl.write_all(b"g")?;
    // Checks a batch in `buf` that starts with message `i`; returns the next.
    let check = |buf: &[T], i: u64| -> Result<u64, BoxError> {
        if buf.is_empty() {
            return Err(format!("closed after {i} of {n} messages").into());
        }
        for (j, m) in (i..).zip(buf) {
            if !m.is(j) {
                return Err(format!("message {j} arrived wrong").into());
            }
        }
        Ok(i + buf.len() as u64)
    };
    let mut i = 0;
    match (&rt, case.recv) {
        (None, RecvMode::Blocking) => {
            while i < n {
                let m = rx.blocking_recv()?;
                i = check(m.as_slice(), i)?;
            }
        }
        (None, _) => {
            while i < n {
                buf.clear();
                rx.blocking_recv_many(&mut buf, k.recv_batch)?;
                i = check(&buf, i)?;
            }
        }
        (Some(rt), RecvMode::Async) => rt.block_on(async {
            while i < n {
                let m = rx.recv().await?;
                i = check(m.as_slice(), i)?;
            }
            Ok::<_, BoxError>(())
        })?,
        (Some(rt), _) => rt.block_on(async {
            while i < n {
                buf.clear();
                rx.recv_many(&mut buf, k.recv_batch).await?;
                i = check(&buf, i)?;
            }
            Ok::<_, BoxError>(())
        })?,
    }
    if i != n {
        return Err(format!("{i} messages arrived, {n} sent").into());
    }
    let secs = start.elapsed().as_secs_f64();
    let usage = Usage::now().since(usage);
    let stats = rx.stats();

    // The producer drops its Sender: a clean close.
    let closed = match &rt {
        None => rx.blocking_recv()?.is_none(),
        Some(rt) => rt.block_on(rx.recv_many(&mut buf, 1))? == 0,
    };
    let p = peer.finish()?;
    if !closed {
        return Err("a message after the last one".into());
    }
    let faults = peer_field(&p, "majflt")? + peer_field(&p, "minflt")?;
    Ok(format!(
        "cap={} n={n} secs={secs:.4} mmsgs={:.3} rearms={} sleeps={} rearms_per_1k={:.4} \
         cons_nvcsw={} cons_nivcsw={} prod_nvcsw={} prod_nivcsw={} prod_faults={faults} \
         faults_per_1k={:.4} prod_send_secs={}",
        k.cap,
        n as f64 / secs / 1e6,
        stats.rearms,
        stats.sleeps,
        per_1k(stats.rearms as i64, n),
        usage.nvcsw,
        usage.nivcsw,
        peer_field(&p, "nvcsw")?,
        peer_field(&p, "nivcsw")?,
        per_1k(faults, n),
        p.get("send_secs").map_or("-", String::as_str),
    ))
}

fn rtt<T: Msg + PartialEq>(k: &Knobs, case: &Case) -> Result<String, BoxError> {
    let mut from_peer = ring::<T>(k, case)?;
    let (a_ours, a_theirs) = UnixStream::pair()?;
    let (b_ours, b_theirs) = UnixStream::pair()?;
    let peer = Peer::spawn(case, a_theirs.into(), b_theirs.into())?;
    from_peer.share(a_ours)?;
    let mut to_peer = Sender::<T>::connect_with_tag(b_ours, T::TAG)?;
    let clock = Clock::calibrate();

    let total = k.warmup + k.rtt_n;
    let mut samples = Vec::with_capacity(k.rtt_n);
    let usage = Usage::now();
    for i in 0..total as u64 {
        let m = T::make(i);
        let t0 = Clock::ticks();
        to_peer.blocking_send(m)?;
        let back = from_peer.blocking_recv()?;
        let t1 = Clock::ticks();
        match back {
            Some(b) if b == m => {}
            Some(_) => return Err(format!("round trip {i} came back wrong").into()),
            None => return Err(format!("the peer closed after {i} round trips").into()),
        }
        if i as usize >= k.warmup {
            samples.push(t1.wrapping_sub(t0));
        }
    }
    let usage = Usage::now().since(usage);
    let stats = from_peer.stats();
    drop(to_peer); // the peer's Receiver ends, so does the peer
    let closed = from_peer.blocking_recv()?.is_none();
    let p = peer.finish()?;
    if !closed {
        return Err("a message after the last round trip".into());
    }
    let (med, p99) = median_p99(&mut samples);
    let rearms = stats.rearms as i64 + peer_field(&p, "rearms")?;
    let faults = peer_field(&p, "majflt")? + peer_field(&p, "minflt")?;
    Ok(format!(
        "cap={} n={} warmup={} median_ns={:.1} p99_ns={:.1} rearms_per_rt={:.4} \
         faults_per_rt={:.4} cons_nvcsw={} prod_nvcsw={} ns_per_tick={:.4}",
        k.cap,
        k.rtt_n,
        k.warmup,
        clock.ns(med),
        clock.ns(p99),
        rearms as f64 / total as f64,
        // Faults of both producers: the peer's stores on ring B (counted
        // in the peer) and ours on ring A (counted here).
        (faults + usage.majflt + usage.minflt) as f64 / total as f64,
        usage.nvcsw,
        peer_field(&p, "nvcsw")?,
        clock.ns_per_tick,
    ))
}

// ---------------------------------------------------------------- producer

fn peer_main() -> Result<bool, BoxError> {
    let k = Knobs::from_env()?;
    let case = Case::parse(&std::env::var(CASE_ENV)?)?;
    pin(k.producer_cpu)?;
    let stdin = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let stdout = UnixStream::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    match (case.test, case.msg) {
        (Test::Tput, "u64") => produce::<u64>(&k, &case, stdin, stdout)?,
        (Test::Tput, "4K") => produce::<Msg4K>(&k, &case, stdin, stdout)?,
        (Test::Tput, _) => produce::<Msg64>(&k, &case, stdin, stdout)?,
        (Test::Rtt, _) => echo::<Msg64>(&k, &case, stdin, stdout)?,
    }
    Ok(true)
}

fn produce<T: Msg>(
    k: &Knobs,
    case: &Case,
    sock: UnixStream,
    mut ctl: UnixStream,
) -> Result<(), BoxError> {
    let n = k.n;
    let mut tx = Sender::<T>::connect_with_tag(sock, T::TAG)?;
    let mut batch = Vec::with_capacity(match case.send {
        SendMode::Many(b) => b,
        _ => 0,
    });
    // Built before `go`: its cost is not the messages'.
    let rt = if case.send.is_async() {
        Some(runtime()?)
    } else {
        None
    };
    ctl.write_all(b"r")?;
    let mut go = [0u8];
    ctl.read_exact(&mut go)?;

    let usage = Usage::now();
    let start = Instant::now();
    match case.send {
        SendMode::One => {
            for i in 0..n {
                tx.blocking_send(T::make(i))?;
            }
        }
        SendMode::Many(b) => {
            let mut i = 0;
            while i < n {
                let end = (i + b as u64).min(n);
                batch.clear();
                batch.extend((i..end).map(T::make));
                tx.blocking_send_many(&batch)?;
                i = end;
            }
        }
        SendMode::Async => {
            let rt = rt.as_ref().expect("built for SendMode::Async");
            rt.block_on(async {
                for i in 0..n {
                    tx.send(T::make(i)).await?;
                }
                Ok::<_, BoxError>(())
            })?;
        }
        SendMode::Forward => {
            let rt = rt.as_ref().expect("built for SendMode::Forward");
            // `forward` closes the Sink at the end: the Receiver then sees
            // the clean close it checks (the drop below does nothing more).
            let values = futures_util::stream::iter((0..n).map(|i| Ok(T::make(i))));
            rt.block_on(values.forward(&mut tx))?;
        }
        SendMode::Feed => {
            let rt = rt.as_ref().expect("built for SendMode::Feed");
            rt.block_on(async {
                for i in 0..n {
                    tx.feed(T::make(i)).await?;
                }
                tx.flush().await
            })?;
        }
        SendMode::Reserve => {
            for i in 0..n {
                let mut slot = tx.blocking_reserve()?;
                T::fill(i, &mut slot)?;
                slot.commit()?;
            }
        }
        SendMode::AsyncReserve => {
            let rt = rt.as_ref().expect("built for SendMode::AsyncReserve");
            rt.block_on(async {
                for i in 0..n {
                    let mut slot = tx.reserve().await?;
                    T::fill(i, &mut slot)?;
                    slot.commit()?;
                }
                Ok::<_, BoxError>(())
            })?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let usage = Usage::now().since(usage);
    drop(tx); // a clean close
    eprintln!(
        "PEER send_secs={secs:.4} majflt={} minflt={} nvcsw={} nivcsw={}",
        usage.majflt, usage.minflt, usage.nvcsw, usage.nivcsw
    );
    Ok(())
}

fn echo<T: Msg>(
    k: &Knobs,
    case: &Case,
    to_main: UnixStream,
    from_main: UnixStream,
) -> Result<(), BoxError> {
    let mut tx = Sender::<T>::connect_with_tag(to_main, T::TAG)?;
    let mut rx = ring::<T>(k, case)?;
    rx.share(from_main)?;
    let usage = Usage::now();
    while let Some(m) = rx.blocking_recv()? {
        tx.blocking_send(m)?;
    }
    let usage = Usage::now().since(usage);
    let stats = rx.stats();
    eprintln!(
        "PEER rearms={} sleeps={} majflt={} minflt={} nvcsw={}",
        stats.rearms, stats.sleeps, usage.majflt, usage.minflt, usage.nvcsw
    );
    Ok(())
}
