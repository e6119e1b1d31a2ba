//! Scale (#16): what many tripwires and big regions cost, on one host.
//!
//! Prints markdown, ready to paste into BENCHMARKS.md: the host, then one
//! table per part, then notes (skipped cases and why, fds by kind).
//! Progress goes to stderr. Each case (a backend and an N, or a region
//! size) runs in a fresh process of this binary (env
//! `MEMFD_TRIPWIRE_BENCH_ROLE=case`), so that no case measures the heap,
//! threads or fds another left behind; the first process only prints.
//!
//! ```sh
//! cargo bench -p memfd-tripwire-bench --bench scale                      # both parts, the defaults (a few minutes on 2 cores)
//! SCALE_PARTS=1 SCALE_BACKENDS=doorbell SCALE_N=1,1000 cargo bench -p memfd-tripwire-bench --bench scale
//! SCALE_PARTS=2 SCALE_REGIONS=4K,1M,64M cargo bench -p memfd-tripwire-bench --bench scale
//! ```
//!
//! # Part 1: many tripwires
//!
//! For each backend and each N, a case process (the consumer) creates N
//! tripwires of 4096 bytes and shares each with a producer; all N producers
//! live in one child process (this binary re-executed, env
//! `MEMFD_TRIPWIRE_BENCH_ROLE=producer`), which connects N + 1 times to a
//! listening socket (an abstract unix address): once for a control channel,
//! then once per tripwire (`share` here, `Producer::connect` there). A
//! backend whose `create` fails here (`Userfault` without userfaultfd, for
//! one) is skipped with the reason the error gives. Both processes raise
//! their `RLIMIT_NOFILE` soft limit to the hard one; an N whose fds would not
//! fit under it (N times the fds per tripwire measured at the previous N of
//! that backend, plus 64) is skipped with the reason.
//!
//! Measured, as deltas against a baseline taken before the first tripwire
//! is created, divided by N:
//!
//! - in the consumer: open fds (`/proc/self/fd`), threads (`Threads:` of
//!   `/proc/self/status`) and RSS (`VmRSS:`) after creating and sharing all
//!   N, and the fds once more after registering all with tokio
//!   (`Tripwire::new`: before aed75bf it added two duplicates per tripwire);
//!   under the table, the fds by kind (`socket`, `memfd`, `eventpoll`, ...,
//!   from the `/proc/self/fd` links) at each backend's largest N;
//! - in the producer process: the same, after all N `Producer::connect`s;
//! - the time to create and share all N (*setup*), and to drop them with
//!   the runtime and its tasks (*drop*);
//! - the consumer's CPU while nothing is rung (all N registered, each
//!   waited on by its task) over `SCALE_IDLE_MS`, as % of one core
//!   (`CLOCK_PROCESS_CPUTIME_ID`: every thread of the process);
//! - latency: one current-thread tokio runtime with one task per tripwire,
//!   each looping on `changed().await`. The consumer asks the producer
//!   process (over the control channel) to ring tripwire i, chosen
//!   pseudo-randomly; the producer pauses (below), stores `CLOCK_MONOTONIC`
//!   in ns (one u64) at offset 0 of producer i's region and calls
//!   `notify()`; task i, woken, reads the clock, then the stamp, records
//!   now - stamp and asks for the next ring: one ring in flight at a time.
//!   So a sample is store -> `changed()` returned, which includes the ACK
//!   (on `Userfault`: the producer's trapped store, and the ACK's round trip
//!   to the producer's agent). Most rings hit a tripwire that was not rung
//!   recently (cold caches): that is the point of many. p50 and p99 of the
//!   timed rings.
//!
//! Before each store the producer sleeps a pseudo-random 0 to
//! `SCALE_GAP_US` µs: by default 0, but 1000 on the backends that look
//! every interval (Poll, UserfaultAsync), so that its store lands anywhere
//! in their cycle (1 ms for a page when the interval is not set) (without it, the store follows the previous
//! detection by a fixed delay and every ring waits about a whole
//! interval). The stamp is taken after the pause.
//!
//! Wakes that are not the ring in flight are counted, not timed: *early*,
//! the rung tripwire woke but its region still holds its previous stamp
//! (the store is not visible yet: it wakes again once it is); *other*, a
//! tripwire that was not rung woke (on `Userfault`, the previous ring's
//! tripwire tripped again: its store raced with its ACK). On `Userfault`
//! the producer's agent trips the wire before it lets the stalled store
//! through, and the consumer's ACK re-protects the page, so a store that
//! has not retried by then traps again: *trapped stores/ring* is
//! `Producer::trapped_stores()` summed over the producer process, per ring
//! sent (warm-up included; 0 on the backends whose stores never stall).
//!
//! The first `SCALE_WARMUP` rings are not timed. Poll and UserfaultAsync
//! take up to an interval (1 ms by default for a page) per ring, and Poll
//! can saturate a small machine at large N (with one poller thread per
//! tripwire, before 51245d0, it did on 2 vCPUs from a few hundred
//! tripwires: then every thread of the process, the one that creates and
//! shares, the runtime's, crawled). So they have their own sample count; every case stops ringing after `SCALE_MAX_SECS` (the *samples*
//! column then says how many were taken, "capped"); a case whose creating
//! and sharing takes over `SCALE_SETUP_SECS` stops there and says how far it
//! got, and the larger N of its backend are not run; so are they after a
//! case whose idle CPU reached 90% of every vCPU (a note says why; `SCALE_N`
//! with that N alone runs it).
//!
//! # Part 2: Poll against region size
//!
//! For each region size, one `Poll` tripwire at the default interval (the
//! bench does not call `poll_interval`), shared with a `Producer` on a
//! thread of the case process (started before the baseline):
//!
//! - RSS delta after creating and sharing it and letting the poller run for
//!   200 ms, in KiB and per byte of region (the snapshot, and the region's
//!   pages that the compares touch through the consumer's mapping; for a
//!   small region, mostly the stacks of the threads the crate starts);
//! - idle, over `SCALE_IDLE_MS` with nothing written: the CPU of the whole
//!   process as % of one core, and the poller's own figures: the thread of
//!   the process that woke most often in that window (the others sleep
//!   once), its wake-ups per second (voluntary context switches: one per
//!   sleep) and its CPU time (`/proc/self/task/*/schedstat`) per wake-up:
//!   one compare of the whole region with the snapshot plus the cost of
//!   waking. The marginal cost per MiB, `(c - c0) / (MiB - MiB0)` against
//!   the smallest region of the run, removes the wake-up and leaves the
//!   compare;
//! - store -> `wait()` returned, p50 and p99: the producer thread sleeps a
//!   pseudo-random pause below the poller's cycle measured while idle (1 /
//!   its wake-ups per second; 3 ms if no thread woke), so that its store
//!   lands anywhere in the cycle, stores the clock into the *last* 8 bytes
//!   of the region (the compare reaches them last), and the consumer records now - stamp when
//!   `wait()` returns. `wait()` includes the ACK (a copy of the region into
//!   the snapshot);
//! - ACK: the same store, then `wait_ready()` (no ACK), then the time of
//!   the `try_changed()` that takes the trip.
//!
//! # Knobs (env)
//!
//! | knob | default | meaning |
//! |---|---|---|
//! | `SCALE_PARTS` | `1,2` | which parts to run |
//! | `SCALE_BACKENDS` | `doorbell,poll,userfault` | part 1's backends, as `Backend: FromStr` names them |
//! | `SCALE_N` | `1,10,100,1000,3000` | part 1's tripwire counts |
//! | `SCALE_SAMPLES` | 2000 | timed rings per case of part 1, but on Poll and UserfaultAsync |
//! | `SCALE_POLL_SAMPLES` | 200 | timed rings per case of part 1 on Poll and UserfaultAsync (about an interval each) |
//! | `SCALE_WARMUP` | 100 | untimed rings before them |
//! | `SCALE_MAX_SECS` | 20 | cap on a case's ringing (part 1) |
//! | `SCALE_SETUP_SECS` | 120 | cap on a case's creating and sharing (part 1) |
//! | `SCALE_GAP_US` | 0; Poll, UserfaultAsync: 1000 | the producer's pause before a store is pseudo-random below this (part 1) |
//! | `SCALE_IDLE_MS` | 2000 | the idle CPU window (both parts) |
//! | `SCALE_REGIONS` | `4K,64K,1M,16M,64M` | part 2's region sizes (K = KiB, M = MiB, G = GiB, or bytes) |
//! | `SCALE_REGION_SAMPLES` | 40 | part 2's samples per size, for each of latency and ACK |
//! | `SCALE_SEED` | 1 | the pseudo-random choices of tripwires and pauses |
//!
//! Nothing is pinned: both processes float over the host's CPUs, as many
//! tripwires would in a real server. Figures from a shared machine move
//! between runs: compare rows of one run.

mod common;
use common::{ROLE_ENV, env_num, median_p99, now_ns};

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memfd_tripwire::{Backend, BackendKind, Error, Producer, Tripwire, blocking};

type BoxError = Box<dyn std::error::Error>;

/// Part 1's region size.
const LEN: usize = 4096;
/// Where part 1's producer stores its stamp.
const STAMP: usize = 0;
/// The control channel's command that ends the ringing (else: an index).
const STOP: u64 = u64::MAX;
/// The producer process's answer to `STOP`.
const DONE: u64 = u64::from_le_bytes(*b"DONE\0\0\0\0");
/// The producer process's env: the abstract socket name, and N.
const SOCKET_ENV: &str = "MEMFD_TRIPWIRE_SCALE_SOCKET";
const N_ENV: &str = "MEMFD_TRIPWIRE_SCALE_N";
/// How long either process waits for the other before giving up.
const PATIENCE: Duration = Duration::from_secs(30);
/// Part 1 gives up when no tripwire wakes for this long.
const STALL: Duration = Duration::from_secs(10);

/// The case a case process runs: `many <backend> <N>` or `region <bytes>`.
const CASE_ENV: &str = "MEMFD_TRIPWIRE_SCALE_CASE";

/// Three roles: the orchestrator (no role: prints the host and the tables),
/// a case process (runs one case, in a fresh process, so that no case
/// inherits another's heap, threads or fds, and reports it on stdout), and
/// part 1's producer process.
fn main() -> ExitCode {
    let role = std::env::var(ROLE_ENV).unwrap_or_default();
    let result = match role.as_str() {
        "producer" => producer_process(),
        "case" => case_process(),
        _ => consumer(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if role == "case" {
                // The orchestrator reports it; keep it on one line.
                let line = e.to_string().replace('\n', " ");
                let key = if e.is::<GaveUp>() { "gave_up" } else { "error" };
                println!("{key} {line}");
            } else {
                let role = if role.is_empty() {
                    String::new()
                } else {
                    format!(" ({role})")
                };
                eprintln!("scale{role}: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// A case that stopped at its time budget: later, larger cases of its
/// backend are skipped.
#[derive(Debug)]
struct GaveUp(String);

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GaveUp {}

/// A case's result as a case process prints it: one `key value` a line,
/// the value being the rest of the line.
#[derive(Debug, Default)]
struct Report(BTreeMap<String, String>);

impl Report {
    fn put(&mut self, key: &str, value: impl std::fmt::Display) {
        self.0.insert(key.to_string(), value.to_string());
    }

    fn text(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k} {v}\n")).collect()
    }

    fn parse(text: &str) -> Report {
        Report(
            text.lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn str(&self, key: &str) -> Result<&str, BoxError> {
        self.0
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("the case process reported no {key:?}").into())
    }

    fn num<T: std::str::FromStr>(&self, key: &str) -> Result<T, BoxError> {
        let v = self.str(key)?;
        v.parse()
            .map_err(|_| format!("the case process reported {key} {v:?}: not a number").into())
    }

    /// `n/a` for none.
    fn opt<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, BoxError> {
        match self.str(key)? {
            "n/a" => Ok(None),
            _ => self.num(key).map(Some),
        }
    }
}

/// Runs one case in a fresh process of this binary (its stderr, the
/// progress, goes through); its report, or why it failed.
fn run_case(case: &str) -> Result<Report, BoxError> {
    let out = Command::new(std::env::current_exe()?)
        .env(ROLE_ENV, "case")
        .env(CASE_ENV, case)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("starting the case process: {e}"))?;
    let report = Report::parse(&String::from_utf8_lossy(&out.stdout));
    if let Ok(why) = report.str("gave_up") {
        return Err(Box::new(GaveUp(why.to_string())));
    }
    if let Ok(why) = report.str("error") {
        return Err(why.into());
    }
    if !out.status.success() {
        return Err(format!("the case process failed ({})", out.status).into());
    }
    Ok(report)
}

/// A case process: runs the case in `CASE_ENV`, prints its report.
fn case_process() -> Result<(), BoxError> {
    if let Err(why) = raise_nofile() {
        eprintln!("scale (case): {why}; going on with the soft limit");
    }
    let cfg = Config::from_env()?;
    let case = std::env::var(CASE_ENV).map_err(|e| format!("{CASE_ENV}: {e}"))?;
    let report = match case.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["many", backend, n] => many(&cfg, backend.parse()?, n.parse()?)?.report(),
        ["region", size] => region_case(&cfg, size.parse()?)?.report(),
        _ => return Err(format!("{CASE_ENV}={case:?}: not a case").into()),
    };
    print!("{}", report.text());
    Ok(())
}

// ---------------------------------------------------------------------------
// Configuration

struct Config {
    part1: bool,
    part2: bool,
    backends: Vec<Backend>,
    ns: Vec<usize>,
    samples: usize,
    poll_samples: usize,
    warmup: usize,
    max_ringing: Duration,
    max_setup: Duration,
    /// `SCALE_GAP_US`; `None`: 1000 on Poll and UserfaultAsync, else 0.
    gap_us: Option<u64>,
    idle: Duration,
    regions: Vec<usize>,
    region_samples: usize,
    seed: u64,
}

impl Config {
    fn from_env() -> Result<Config, BoxError> {
        let parts = env_list("SCALE_PARTS", "1,2", |s| match s {
            "1" => Ok(1),
            "2" => Ok(2),
            _ => Err("use 1, 2 or 1,2".to_string()),
        })?;
        let mut cfg = Config {
            part1: parts.contains(&1),
            part2: parts.contains(&2),
            backends: env_list("SCALE_BACKENDS", "doorbell,poll,userfault", |s| {
                s.parse::<Backend>().map_err(|e| e.to_string())
            })?,
            ns: env_list("SCALE_N", "1,10,100,1000,3000", |s| match s.parse() {
                Ok(0) | Err(_) => Err("each N must be a whole number of at least 1".to_string()),
                Ok(n) => Ok(n),
            })?,
            samples: env_num("SCALE_SAMPLES", 2000)?,
            poll_samples: env_num("SCALE_POLL_SAMPLES", 200)?,
            warmup: env_num("SCALE_WARMUP", 100)?,
            max_ringing: Duration::try_from_secs_f64(env_num("SCALE_MAX_SECS", 20.0)?)
                .map_err(|e| format!("SCALE_MAX_SECS: {e}"))?,
            max_setup: Duration::try_from_secs_f64(env_num("SCALE_SETUP_SECS", 120.0)?)
                .map_err(|e| format!("SCALE_SETUP_SECS: {e}"))?,
            gap_us: match std::env::var_os("SCALE_GAP_US") {
                None => None,
                Some(_) => Some(env_num("SCALE_GAP_US", 0)?),
            },
            idle: Duration::from_millis(env_num("SCALE_IDLE_MS", 2000)?),
            regions: env_list("SCALE_REGIONS", "4K,64K,1M,16M,64M", parse_size)?,
            region_samples: env_num("SCALE_REGION_SAMPLES", 40)?,
            seed: env_num("SCALE_SEED", 1)?,
        };
        if cfg.samples == 0 || cfg.poll_samples == 0 || cfg.region_samples == 0 {
            return Err(
                "SCALE_SAMPLES, SCALE_POLL_SAMPLES and SCALE_REGION_SAMPLES must be at least 1"
                    .into(),
            );
        }
        // Smallest first: a case that cannot run stops the larger ones.
        cfg.ns.sort_unstable();
        cfg.ns.dedup();
        cfg.regions.sort_unstable();
        cfg.regions.dedup();
        Ok(cfg)
    }
}

/// The comma-separated list in env `name` (or `default`), each item parsed
/// by `parse`.
fn env_list<T>(
    name: &str,
    default: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, BoxError> {
    let v = match std::env::var(name) {
        Ok(v) => v,
        Err(std::env::VarError::NotPresent) => default.to_string(),
        Err(e) => return Err(format!("{name}: {e}").into()),
    };
    let items = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse(s).map_err(|e| format!("{name}={v:?}: {s:?}: {e}")))
        .collect::<Result<Vec<T>, String>>()?;
    if items.is_empty() {
        return Err(format!("{name} is empty").into());
    }
    Ok(items)
}

/// `4096`, `4K`, `4KiB`, `1M`, `1MiB` (binary units, any case).
fn parse_size(s: &str) -> Result<usize, String> {
    let lower = s.to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => lower.split_at(at),
        None => (lower.as_str(), ""),
    };
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err("a size is bytes, or a number with K, M or G (binary units)".into()),
    };
    let n: usize = digits.parse().map_err(|e| format!("{e}"))?;
    match n.checked_shl(shift).filter(|v| v >> shift == n) {
        Some(0) => Err("a region must have at least one byte".into()),
        Some(v) => Ok(v),
        None => Err("too big".into()),
    }
}

fn size_label(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// xorshift64*: the pseudo-random choices, the same for a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Never zero (xorshift's fixed point).
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

// ---------------------------------------------------------------------------
// What a process holds

/// Open fds (in all, and by kind), threads and RSS of this process.
#[derive(Debug, Clone, Default)]
struct Usage {
    fds: i64,
    /// Open fds by kind (`socket`, `memfd`, `eventfd`, ...).
    kinds: BTreeMap<String, i64>,
    threads: i64,
    rss_kib: i64,
}

impl Usage {
    fn now() -> Result<Usage, BoxError> {
        let mut kinds = BTreeMap::new();
        // The directory's own fd is counted every time: it cancels out.
        for entry in
            std::fs::read_dir("/proc/self/fd").map_err(|e| format!("/proc/self/fd: {e}"))?
        {
            let Ok(entry) = entry else { continue };
            // An fd closed meanwhile (by another thread) is not counted.
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            *kinds.entry(fd_kind(&target.to_string_lossy())).or_insert(0) += 1;
        }
        let status = std::fs::read_to_string("/proc/self/status")
            .map_err(|e| format!("/proc/self/status: {e}"))?;
        let field = |name: &str| -> Result<i64, BoxError> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .ok_or_else(|| format!("/proc/self/status has no {name} line").into())
        };
        Ok(Usage {
            fds: kinds.values().sum(),
            kinds,
            threads: field("Threads:")?,
            rss_kib: field("VmRSS:")?,
        })
    }

    fn minus(&self, base: &Usage) -> Usage {
        let mut kinds = self.kinds.clone();
        for (kind, n) in &base.kinds {
            *kinds.entry(kind.clone()).or_insert(0) -= n;
        }
        kinds.retain(|_, n| *n != 0);
        Usage {
            fds: self.fds - base.fds,
            kinds,
            threads: self.threads - base.threads,
            rss_kib: self.rss_kib - base.rss_kib,
        }
    }

    /// One line of text, for the control channel: `fds threads rss kind=n ...`.
    fn to_line(&self) -> String {
        let mut line = format!("{} {} {}", self.fds, self.threads, self.rss_kib);
        for (kind, n) in &self.kinds {
            line.push_str(&format!(" {kind}={n}"));
        }
        line.push('\n');
        line
    }

    fn from_line(line: &str) -> Result<Usage, BoxError> {
        let bad = || format!("a malformed usage line from the producer process: {line:?}");
        let mut words = line.split_whitespace();
        let mut num =
            || -> Result<i64, String> { words.next().and_then(|w| w.parse().ok()).ok_or_else(bad) };
        let (fds, threads, rss_kib) = (num()?, num()?, num()?);
        let mut kinds = BTreeMap::new();
        for w in words {
            let (kind, n) = w.rsplit_once('=').ok_or_else(bad)?;
            kinds.insert(kind.to_string(), n.parse().map_err(|_| bad())?);
        }
        Ok(Usage {
            fds,
            kinds,
            threads,
            rss_kib,
        })
    }

    /// `2.00 socket, 1.00 memfd` per tripwire, most first; a kind with a
    /// few fds in all (a thread's, the process's) as `+1 eventpoll in all`.
    fn kinds_per(&self, n: usize) -> String {
        let mut kinds: Vec<_> = self.kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let list: Vec<String> = kinds
            .iter()
            .map(|(kind, c)| {
                let per = **c as f64 / n as f64;
                if per.abs() < 0.005 {
                    format!("{c:+} {kind} in all")
                } else {
                    format!("{per:.2} {kind}")
                }
            })
            .collect();
        if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        }
    }
}

/// What an fd is, from its `/proc/self/fd` link: `socket`, `pipe`,
/// `memfd`, `eventfd`, `eventpoll`, `userfaultfd`, else the file's name.
fn fd_kind(target: &str) -> String {
    let target = target.strip_suffix(" (deleted)").unwrap_or(target);
    if let Some(rest) = target.strip_prefix("anon_inode:") {
        return rest.trim_matches(|c| c == '[' || c == ']').to_string();
    }
    if target.starts_with("/memfd:") {
        return "memfd".into();
    }
    if let Some((kind, _)) = target.split_once(":[") {
        return kind.to_string();
    }
    target.rsplit('/').next().unwrap_or(target).to_string()
}

/// CPU time of every thread of this process, in ns.
fn process_cpu_ns() -> u64 {
    use rustix::time::{ClockId, clock_gettime};
    let t = clock_gettime(ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Raises the soft limit of open files to the hard one; returns the limit
/// now in force (`None`: unlimited).
fn raise_nofile() -> Result<Option<u64>, String> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).map_err(|e| {
            format!(
                "raising RLIMIT_NOFILE's soft limit to the hard one ({:?}): {e}",
                limit.maximum
            )
        })?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

// ---------------------------------------------------------------------------
// The consumer: the host, then the parts

fn consumer() -> Result<(), BoxError> {
    let cfg = Config::from_env()?;
    let nofile = match raise_nofile() {
        Ok(limit) => limit,
        Err(why) => {
            eprintln!("scale: {why}; going on with the soft limit");
            rustix::process::getrlimit(rustix::process::Resource::Nofile).current
        }
    };
    print_host(nofile);
    if cfg.part1 {
        part1(&cfg, nofile)?;
    }
    if cfg.part2 {
        part2(&cfg)?;
    }
    println!(
        "At the end: the host's CPUs {} busy over 1 s; load average (1 / 5 / 15 min) {} \
         (it counts this bench's own threads too).",
        host_busy(),
        load_average()
    );
    Ok(())
}

fn print_host(nofile: Option<u64>) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown".to_string(), |(_, m)| m.trim().to_string());
    let vcpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
    };
    let idle = read("/sys/devices/system/cpu/cpuidle/current_driver").unwrap_or("none".into());
    let kernel = read("/proc/sys/kernel/osrelease").unwrap_or("unknown".into());
    let load = load_average();
    let busy = host_busy();
    println!("## Scale (#16): host");
    println!();
    println!("- CPU: {model}; vCPUs: {vcpus}; cpuidle driver: {idle}");
    println!("- kernel: {kernel}");
    println!("- code: {}", code_version());
    println!(
        "- at the start: the host's CPUs {busy} busy over 1 s; load average (1 / 5 / 15 min) {load}"
    );
    println!(
        "- RLIMIT_NOFILE (soft, raised to the hard limit): {}",
        nofile.map_or("unlimited".into(), |n| n.to_string())
    );
    println!();
}

/// How busy all the host's CPUs were over the next second (from
/// `/proc/stat`): other work that would disturb the figures shows here.
fn host_busy() -> String {
    let sample = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|t| t.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest: in user)
        let total: u64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3)? + ticks.get(4)?;
        Some((total, idle))
    };
    let Some((t0, i0)) = sample() else {
        return "(unknown)".into();
    };
    std::thread::sleep(Duration::from_secs(1));
    match sample() {
        Some((t1, i1)) if t1 > t0 => {
            let busy = 1.0 - (i1 - i0) as f64 / (t1 - t0) as f64;
            format!("{:.0}%", busy * 100.0)
        }
        _ => "(unknown)".into(),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or("unknown".into(), |l| {
        l.split_whitespace().take(3).collect::<Vec<_>>().join(" / ")
    })
}

/// The commit measured, if this runs in a git checkout (best effort).
fn code_version() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            let dirty = if dirty { " + uncommitted changes" } else { "" };
            format!("{commit}{dirty}")
        }
        None => "unknown (git rev-parse failed here)".into(),
    }
}

// ---------------------------------------------------------------------------
// Part 1: many tripwires

/// One row of part 1's table.
struct Row {
    n: usize,
    created: Usage,
    /// After registering with tokio too.
    registered: Usage,
    theirs: Usage,
    idle_cpu: f64,
    /// Timed rings, and how many were wanted.
    samples: usize,
    wanted: usize,
    /// Their p50 and p99, ns (`None`: no sample).
    p50: Option<u64>,
    p99: Option<u64>,
    /// Rings sent (warm-up included), and the stores that trapped in the
    /// producer process meanwhile (and while it connected: none).
    rings: usize,
    traps: u64,
    early: u64,
    other: u64,
    gap_us: u64,
    setup_secs: f64,
    /// Dropping the runtime, its tasks and their tripwires.
    drop_secs: f64,
    wall_secs: f64,
}

/// An `Option` as a report value.
fn or_na(v: Option<impl std::fmt::Display>) -> String {
    v.map_or("n/a".into(), |v| v.to_string())
}

impl Row {
    fn report(&self) -> Report {
        let mut r = Report::default();
        r.put("n", self.n);
        r.put("created", self.created.to_line());
        r.put("registered", self.registered.to_line());
        r.put("theirs", self.theirs.to_line());
        r.put("idle_cpu", self.idle_cpu);
        r.put("samples", self.samples);
        r.put("wanted", self.wanted);
        r.put("p50", or_na(self.p50));
        r.put("p99", or_na(self.p99));
        r.put("rings", self.rings);
        r.put("traps", self.traps);
        r.put("early", self.early);
        r.put("other", self.other);
        r.put("gap_us", self.gap_us);
        r.put("setup_secs", self.setup_secs);
        r.put("drop_secs", self.drop_secs);
        r.put("wall_secs", self.wall_secs);
        r
    }

    fn from_report(r: &Report) -> Result<Row, BoxError> {
        Ok(Row {
            n: r.num("n")?,
            created: Usage::from_line(r.str("created")?)?,
            registered: Usage::from_line(r.str("registered")?)?,
            theirs: Usage::from_line(r.str("theirs")?)?,
            idle_cpu: r.num("idle_cpu")?,
            samples: r.num("samples")?,
            wanted: r.num("wanted")?,
            p50: r.opt("p50")?,
            p99: r.opt("p99")?,
            rings: r.num("rings")?,
            traps: r.num("traps")?,
            early: r.num("early")?,
            other: r.num("other")?,
            gap_us: r.num("gap_us")?,
            setup_secs: r.num("setup_secs")?,
            drop_secs: r.num("drop_secs")?,
            wall_secs: r.num("wall_secs")?,
        })
    }
}

fn part1(cfg: &Config, nofile: Option<u64>) -> Result<(), BoxError> {
    let vcpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("## Scale (#16), part 1: many tripwires of {LEN} bytes, one producer process");
    println!();
    println!(
        "Per tripwire: deltas against a baseline before the first one, divided by N. \
         Latency: store -> `changed()` returned (ACK included), one ring in flight, tripwires \
         chosen pseudo-randomly, one task each on one current-thread runtime; the producer \
         pauses a pseudo-random *pause* before each store. *Early wakes*: the rung tripwire \
         woke before its store was visible (then again with it); *other wakes*: a tripwire \
         not rung woke. Neither is timed. *Trapped stores/ring*: `Producer::trapped_stores()` \
         summed over the producer process, per ring sent (warm-up included): stores that \
         stalled (`Userfault`; 0 elsewhere). *Setup*: creating and sharing all N; *drop*: \
         dropping the runtime with its tasks and tripwires."
    );
    println!();
    println!(
        "| backend | N | fds/tw created | fds/tw registered | threads/tw | RSS KiB/tw | \
         producer fds/tw | producer threads/tw | producer RSS KiB/tw | idle CPU % of a core | \
         samples | pause µs | p50 µs | p99 µs | early wakes | other wakes | trapped stores/ring | \
         setup s | drop s | wall s |"
    );
    println!(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut notes = Vec::new();
    let mut kinds = Vec::new();
    for &backend in &cfg.backends {
        if let Err(why) = blocking::Tripwire::builder(LEN).backend(backend).create() {
            let why = match why {
                Error::Unavailable { reason, .. } => reason,
                other => other.to_string(),
            };
            eprintln!("scale: {backend}: unavailable, skipped: {why}");
            notes.push(format!("- `{backend}`: unavailable here, skipped: {why}"));
            continue;
        }
        // Fds per tripwire, the larger of the two processes', as last measured.
        let mut per_tw: Option<(f64, usize)> = None;
        let mut largest = None;
        // The consumer's idle CPU (% of a core) at the last N run.
        // The consumer's idle CPU (% of a core) at the last N run.
        let mut idle: Option<(usize, f64)> = None;
        for &n in &cfg.ns {
            // Idle CPU may grow with N (Poll with a poller thread per
            // tripwire, before 51245d0: about 0.5% of a core each): once it
            // fills every vCPU, a larger case measures a machine that
            // crawls, and takes minutes to (on 2 vCPUs, Poll at N=1000 took
            // 290 s then). Not extrapolated: how it grows depends on the
            // backend's threads (one shared poller cannot pass one core).
            let full = 90.0 * vcpus as f64;
            if let Some((at, cpu)) = idle.filter(|&(_, cpu)| cpu >= full) {
                let why = format!(
                    "idle, the consumer kept {cpu:.0}% of a core busy at N={at}, on the \
                     {vcpus} vCPUs of this host: N={n} and larger not run (`SCALE_N={n}` alone \
                     runs it)"
                );
                eprintln!("scale: {backend}: {why}");
                notes.push(format!("- `{backend}`: {why}"));
                break;
            }
            // Known once measured at a smaller N (before, a shortage shows
            // as the crate's EMFILE error, which says what to raise). 64:
            // what the process holds besides the tripwires, and more.
            let short = per_tw.and_then(|(f, at)| {
                let need = (n as f64 * f).ceil() as u64 + 64;
                nofile
                    .filter(|&limit| limit < need)
                    .map(|limit| (limit, need, f, at))
            });
            if let Some((limit, need, f, at)) = short {
                let basis = format!("{f:.2} fds per tripwire measured at N={at}");
                let why = format!(
                    "needs about {need} open files in a process ({basis}), over the \
                     RLIMIT_NOFILE hard limit of {limit}: raise it (`ulimit -Hn` as root, \
                     limits.conf) to run this N"
                );
                eprintln!("scale: {backend} N={n}: skipped: {why}");
                notes.push(format!("- `{backend}` N={n}: skipped: {why}"));
                continue;
            }
            eprintln!("scale: {backend} N={n} ...");
            match run_case(&format!("many {backend} {n}")).and_then(|r| Row::from_report(&r)) {
                Ok(row) => {
                    let mine = row.created.fds.max(row.registered.fds);
                    let fds = mine.max(row.theirs.fds) as f64 / n as f64;
                    per_tw = Some((fds, n));
                    print_row(backend, &row);
                    largest = Some(format!(
                        "- `{backend}`, N={n}: consumer {}; producer process {}",
                        row.registered.kinds_per(n),
                        row.theirs.kinds_per(n)
                    ));
                    idle = Some((n, row.idle_cpu));
                }
                Err(e) if e.is::<GaveUp>() => {
                    eprintln!("scale: {backend} N={n}: stopped: {e}");
                    notes.push(format!(
                        "- `{backend}` N={n}: stopped: {e}; larger N of `{backend}` not run \
                         (`SCALE_SETUP_SECS` raises the budget)"
                    ));
                    break;
                }
                Err(e) => {
                    eprintln!("scale: {backend} N={n}: failed: {e}");
                    notes.push(format!("- `{backend}` N={n}: failed: {e}"));
                }
            }
        }
        kinds.extend(largest);
    }
    println!();
    if !kinds.is_empty() {
        println!(
            "Fds per tripwire by kind, at each backend's largest N (consumer: after \
             registering with tokio; producer process: after connecting):"
        );
        println!();
        for line in &kinds {
            println!("{line}");
        }
        println!();
    }
    print_notes(&notes);
    Ok(())
}

fn print_row(backend: Backend, r: &Row) {
    let per = |v: i64| format!("{:.2}", v as f64 / r.n as f64);
    let per_kib = |v: i64| format!("{:.1}", v as f64 / r.n as f64);
    let (p50, p99) = (
        r.p50.map_or("n/a".into(), us),
        r.p99.map_or("n/a".into(), us),
    );
    let count = if r.samples < r.wanted {
        format!("{} (capped)", r.samples)
    } else {
        r.samples.to_string()
    };
    println!(
        "| {backend} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {count} | {} | {p50} | {p99} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
        r.n,
        per(r.created.fds),
        per(r.registered.fds),
        per(r.created.threads),
        per_kib(r.created.rss_kib),
        per(r.theirs.fds),
        per(r.theirs.threads),
        per_kib(r.theirs.rss_kib),
        r.idle_cpu,
        if r.gap_us == 0 {
            "0".to_string()
        } else {
            format!("0–{}", r.gap_us)
        },
        r.early,
        r.other,
        r.traps as f64 / r.rings.max(1) as f64,
        r.setup_secs,
        r.drop_secs,
        r.wall_secs,
    );
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// Kills and reaps the producer process unless it was waited for.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn wait(mut self) -> Result<(), BoxError> {
        let Some(mut child) = self.0.take() else {
            return Ok(());
        };
        let status = child.wait()?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("the producer process failed: {status}").into())
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Accepts one connection, or says the producer process never came.
fn accept_within(listener: &UnixListener, what: &str) -> Result<UnixStream, BoxError> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the producer process did not connect for {what} within {PATIENCE:?}"
            )
            .into());
        }
        let ts = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(listener, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(format!("poll on the listener: {e}").into()),
        }
    }
    let (sock, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    Ok(sock)
}

/// The abstract socket name of a case: unique in this host's network namespace.
fn socket_name() -> String {
    static CASE: AtomicUsize = AtomicUsize::new(0);
    format!(
        "memfd-tripwire-scale-{}-{}",
        std::process::id(),
        CASE.fetch_add(1, Ordering::Relaxed)
    )
}

/// What the tasks of part 1 share: whose ring is in flight, the samples.
struct Sampler {
    rng: Rng,
    n: usize,
    /// The tripwire rung last, and how many rings were sent.
    expect: usize,
    rings: usize,
    warmup: usize,
    wanted: usize,
    samples: Vec<u64>,
    /// Before each store, the producer process pauses a pseudo-random
    /// 0 to `gap_us` µs.
    gap_us: u64,
    /// Wakes of the tripwire rung before its stamp was visible.
    early: u64,
    /// Wakes of a tripwire not rung.
    other: u64,
    /// Wakes so far (the stall watchdog's progress).
    wakes: u64,
    deadline: Instant,
    stopped: bool,
    failed: Option<String>,
}

impl Sampler {
    /// The next ring: a tripwire chosen pseudo-randomly, and the pause
    /// before the store.
    fn next_ring(&mut self) -> [u64; 2] {
        self.expect = self.rng.below(self.n as u64) as usize;
        self.rings += 1;
        let pause = if self.gap_us == 0 {
            0
        } else {
            self.rng.below(self.gap_us + 1)
        };
        [self.expect as u64, pause]
    }

    /// Tripwire `i` woke with a new stamp (or not), `latency` after it:
    /// the command to send next, if any.
    fn woke(&mut self, i: usize, fresh: bool, latency: u64) -> Option<[u64; 2]> {
        self.wakes += 1;
        if self.stopped {
            return None;
        }
        if i != self.expect {
            self.other += 1;
            return None;
        }
        if !fresh {
            self.early += 1;
            return None;
        }
        if self.rings > self.warmup {
            self.samples.push(latency);
        }
        if self.samples.len() >= self.wanted || Instant::now() >= self.deadline {
            self.stopped = true;
            return Some([STOP, 0]);
        }
        Some(self.next_ring())
    }
}

fn lock(s: &Mutex<Sampler>) -> std::sync::MutexGuard<'_, Sampler> {
    s.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends one command to the producer process.
async fn send(ctrl: &tokio::net::UnixStream, cmd: [u64; 2]) -> std::io::Result<()> {
    let mut frame = [0u8; 16];
    frame[..8].copy_from_slice(&cmd[0].to_le_bytes());
    frame[8..].copy_from_slice(&cmd[1].to_le_bytes());
    let mut sent = 0;
    while sent < frame.len() {
        ctrl.writable().await?;
        match ctrl.try_write(&frame[sent..]) {
            Ok(k) => sent += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Task i: waits on its tripwire, times each wake, relays the next ring.
async fn watch(
    i: usize,
    mut tw: Tripwire,
    s: Arc<Mutex<Sampler>>,
    ctrl: Arc<tokio::net::UnixStream>,
) {
    let mut last = 0u64;
    loop {
        let woke = tw.changed().await;
        let t1 = now_ns();
        if lock(&s).stopped {
            // The producer process may be leaving: nothing more to time.
            return;
        }
        let step = async {
            woke?;
            let stamp: u64 = tw.region().read(STAMP)?;
            let fresh = stamp != last;
            last = stamp;
            let next = lock(&s).woke(i, fresh, t1.wrapping_sub(stamp));
            if let Some(cmd) = next {
                send(&ctrl, cmd).await?;
            }
            Ok::<_, BoxError>(())
        };
        if let Err(e) = step.await {
            let mut s = lock(&s);
            s.failed.get_or_insert(format!("tripwire {i}: {e}"));
            return;
        }
    }
}

/// One case of part 1: N tripwires of `backend`.
fn many(cfg: &Config, backend: Backend, n: usize) -> Result<Row, BoxError> {
    let start = Instant::now();
    let name = socket_name();
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    let listener = UnixListener::bind_addr(&addr).map_err(|e| format!("binding @{name}: {e}"))?;
    let child = Command::new(std::env::current_exe()?)
        .env(ROLE_ENV, "producer")
        .env(SOCKET_ENV, &name)
        .env(N_ENV, n.to_string())
        .spawn()
        .map_err(|e| format!("starting the producer process: {e}"))?;
    let child = ChildGuard(Some(child));
    let ctrl = accept_within(&listener, "its control channel")?;
    ctrl.set_read_timeout(Some(PATIENCE))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let base = Usage::now()?;
    let cpu0 = process_cpu_ns();
    let mut wires = Vec::with_capacity(n);
    for i in 0..n {
        if start.elapsed() > cfg.max_setup {
            // First the producer process, which waits for this tripwire's
            // handshake and would time out while the others are dropped.
            drop(child);
            let secs = start.elapsed().as_secs_f64();
            let cpu = (process_cpu_ns() - cpu0) as f64 / 1e9 / secs * 100.0;
            return Err(Box::new(GaveUp(format!(
                "created and shared {i} of {n} tripwires in {secs:.0} s, over the \
                 setup budget of {:.0} s; this process used {cpu:.0}% of a core meanwhile",
                cfg.max_setup.as_secs_f64()
            ))));
        }
        let mut tw = blocking::Tripwire::builder(LEN)
            .backend(backend)
            .create()
            .map_err(|e| format!("creating tripwire {i}: {e}"))?;
        let sock = accept_within(&listener, &format!("tripwire {i}"))?;
        tw.share(sock)
            .map_err(|e| format!("sharing tripwire {i}: {e}"))?;
        wires.push(tw);
    }
    let created = Usage::now()?.minus(&base);
    let setup = start.elapsed();
    // The producer process sends nothing after this line until told to stop:
    // the buffer holds no more than the line.
    let mut line = String::new();
    BufReader::new(&ctrl)
        .read_line(&mut line)
        .map_err(|e| format!("reading the producer process's usage: {e}"))?;
    let theirs = Usage::from_line(&line)?;

    // Poll and UserfaultAsync see a store within an interval (1 ms).
    let interval = wires
        .first()
        .is_some_and(|w| matches!(w.backend(), BackendKind::Poll | BackendKind::UserfaultAsync));
    let wanted = if interval {
        cfg.poll_samples
    } else {
        cfg.samples
    };
    let (registered, idle_cpu, traps, sampler) = rt.block_on(async {
        let mut tws = Vec::with_capacity(n);
        for (i, tw) in wires.into_iter().enumerate() {
            tws.push(Tripwire::new(tw).map_err(|e| format!("registering tripwire {i}: {e}"))?);
        }
        let registered = Usage::now()?.minus(&base);

        ctrl.set_nonblocking(true)?;
        let ctrl = Arc::new(tokio::net::UnixStream::from_std(ctrl)?);
        let s = Arc::new(Mutex::new(Sampler {
            rng: Rng::new(cfg.seed),
            n,
            expect: usize::MAX,
            rings: 0,
            warmup: cfg.warmup,
            wanted,
            samples: Vec::with_capacity(wanted),
            gap_us: cfg.gap_us.unwrap_or(if interval { 1000 } else { 0 }),
            early: 0,
            other: 0,
            wakes: 0,
            deadline: Instant::now(),
            stopped: false,
            failed: None,
        }));
        for (i, tw) in tws.into_iter().enumerate() {
            tokio::spawn(watch(i, tw, s.clone(), ctrl.clone()));
        }
        // Idle: every task waits, nothing rings.
        let (cpu0, t0) = (process_cpu_ns(), Instant::now());
        tokio::time::sleep(cfg.idle).await;
        let idle_cpu = (process_cpu_ns() - cpu0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
        if let Some(e) = lock(&s).failed.take() {
            return Err(e.into());
        }

        let first = {
            let mut s = lock(&s);
            s.deadline = Instant::now() + cfg.max_ringing;
            s.next_ring()
        };
        send(&ctrl, first).await?;
        let traps = wait_done(&ctrl, &s).await?;
        Ok::<_, BoxError>((registered, idle_cpu, traps, s))
    })?;
    // The tasks and their tripwires go with the runtime; then the control
    // channel closes, and the producer process leaves.
    let dropping = Instant::now();
    drop(rt);
    let drop_secs = dropping.elapsed().as_secs_f64();
    drop(listener);
    let (mut samples, rings, early, other, gap_us) = {
        let mut s = lock(&sampler);
        let samples = std::mem::take(&mut s.samples);
        (samples, s.rings, s.early, s.other, s.gap_us)
    };
    let (p50, p99) = if samples.is_empty() {
        (None, None)
    } else {
        let (p50, p99) = median_p99(&mut samples);
        (Some(p50), Some(p99))
    };
    child.wait()?;
    Ok(Row {
        n,
        created,
        registered,
        theirs,
        idle_cpu,
        samples: samples.len(),
        wanted,
        p50,
        p99,
        rings,
        traps,
        early,
        other,
        gap_us,
        setup_secs: setup.as_secs_f64(),
        drop_secs,
        wall_secs: start.elapsed().as_secs_f64(),
    })
}

/// Waits for the producer process's `DONE` (after the tasks sent `STOP`),
/// watching for a failed task and for a ring that never wakes anyone;
/// returns the stores that trapped in the producer process (`Userfault`).
async fn wait_done(ctrl: &tokio::net::UnixStream, s: &Mutex<Sampler>) -> Result<u64, BoxError> {
    let mut buf = [0u8; 16];
    let mut got = 0;
    let mut progress = (0u64, Instant::now());
    loop {
        {
            let mut s = lock(s);
            if let Some(e) = s.failed.take() {
                return Err(e.into());
            }
            if s.wakes != progress.0 {
                progress = (s.wakes, Instant::now());
            } else if progress.1.elapsed() > STALL {
                return Err(format!(
                    "no tripwire woke for {STALL:?}, with tripwire {} rung (ring {})",
                    s.expect, s.rings
                )
                .into());
            }
        }
        let Ok(ready) = tokio::time::timeout(Duration::from_millis(200), ctrl.readable()).await
        else {
            continue;
        };
        ready?;
        match ctrl.try_read(&mut buf[got..]) {
            Ok(0) => return Err("the producer process hung up before it was done".into()),
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
        if got == buf.len() {
            let word = |at: usize| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&buf[at..at + 8]);
                u64::from_le_bytes(w)
            };
            return match word(0) {
                DONE => Ok(word(8)),
                other => Err(format!("the producer process said {other:#x}, not DONE").into()),
            };
        }
    }
}

/// The producer process of part 1: N producers, then rings on command.
fn producer_process() -> Result<(), BoxError> {
    if let Err(why) = raise_nofile() {
        eprintln!("scale (producer): {why}; going on with the soft limit");
    }
    let name = std::env::var(SOCKET_ENV).map_err(|e| format!("{SOCKET_ENV}: {e}"))?;
    let n: usize = env_num(N_ENV, 0)?;
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    let mut ctrl = UnixStream::connect_addr(&addr)
        .map_err(|e| format!("connecting to @{name} (control): {e}"))?;
    let base = Usage::now()?;
    let mut producers = Vec::with_capacity(n);
    for i in 0..n {
        let sock = UnixStream::connect_addr(&addr)
            .map_err(|e| format!("connecting to @{name} (producer {i}): {e}"))?;
        producers.push(Producer::connect(sock).map_err(|e| format!("producer {i}: {e}"))?);
    }
    let mine = Usage::now()?.minus(&base);
    ctrl.write_all(mine.to_line().as_bytes())?;

    let mut cmd = [0u8; 16];
    loop {
        match ctrl.read_exact(&mut cmd) {
            Ok(()) => {}
            // The consumer gave up (its error says why).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("reading a command: {e}").into()),
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&cmd[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let (i, pause_us) = (word(0), word(8));
        if i == STOP {
            let traps: u64 = producers.iter().map(Producer::trapped_stores).sum();
            let mut done = [0u8; 16];
            done[..8].copy_from_slice(&DONE.to_le_bytes());
            done[8..].copy_from_slice(&traps.to_le_bytes());
            ctrl.write_all(&done)?;
            break;
        }
        let p = usize::try_from(i)
            .ok()
            .and_then(|i| producers.get(i))
            .ok_or_else(|| format!("asked to ring tripwire {i} of {n}"))?;
        if pause_us > 0 {
            std::thread::sleep(Duration::from_micros(pause_us));
        }
        p.region().write(STAMP, &now_ns())?;
        p.notify()?;
    }
    // Keep every producer until the consumer has dropped its tripwires (it
    // closes the control channel then), so that none sees its peer die.
    let _ = ctrl.read(&mut cmd);
    drop(producers);
    Ok(())
}

// ---------------------------------------------------------------------------
// Part 2: Poll against region size

struct RegionRow {
    size: usize,
    rss_kib: i64,
    idle_cpu: f64,
    /// The poller's wake-ups per second while idle, and its CPU per
    /// wake-up in ns (`None`: no thread of ours woke).
    poller: Option<(f64, f64)>,
    /// Store -> `wait()` returned and ACK: p50 and p99 in ns, and how many.
    wake: (u64, u64),
    ack: (u64, u64),
    samples: usize,
    stray: u64,
}

impl RegionRow {
    fn report(&self) -> Report {
        let mut r = Report::default();
        r.put("size", self.size);
        r.put("rss_kib", self.rss_kib);
        r.put("idle_cpu", self.idle_cpu);
        r.put("poller_rate", or_na(self.poller.map(|p| p.0)));
        r.put("poller_per_wake_ns", or_na(self.poller.map(|p| p.1)));
        r.put("wake", format!("{} {}", self.wake.0, self.wake.1));
        r.put("ack", format!("{} {}", self.ack.0, self.ack.1));
        r.put("samples", self.samples);
        r.put("stray", self.stray);
        r
    }

    fn from_report(r: &Report) -> Result<RegionRow, BoxError> {
        let pair = |key: &str| -> Result<(u64, u64), BoxError> {
            let v = r.str(key)?;
            v.split_once(' ')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .ok_or_else(|| format!("the case process reported {key} {v:?}").into())
        };
        let rate: Option<f64> = r.opt("poller_rate")?;
        let per_wake: Option<f64> = r.opt("poller_per_wake_ns")?;
        Ok(RegionRow {
            size: r.num("size")?,
            rss_kib: r.num("rss_kib")?,
            idle_cpu: r.num("idle_cpu")?,
            poller: rate.zip(per_wake),
            wake: pair("wake")?,
            ack: pair("ack")?,
            samples: r.num("samples")?,
            stray: r.num("stray")?,
        })
    }
}

fn part2(cfg: &Config) -> Result<(), BoxError> {
    println!(
        "## Scale (#16), part 2: one `Poll` tripwire against region size (its default interval)"
    );
    println!();
    println!(
        "Idle: nothing written. The poller is the thread that woke most often; its CPU per \
         wake-up (`schedstat`, divided by its voluntary context switches: one sleep each) is \
         one compare of the whole region plus the wake-up; the marginal cost per MiB, against \
         the smallest region of the run, is the compare's alone. The store is to the region's \
         last 8 bytes, after a pseudo-random pause below the poller's cycle (1 / its wake-ups \
         per second); store -> `wait()` returned includes the ACK (a copy of the region into \
         the snapshot); ACK: `try_changed()` after `wait_ready()`."
    );
    println!();
    println!(
        "| region | RSS delta KiB | RSS / region | idle CPU % of a core | poller wake-ups/s | \
         CPU per wake-up µs | marginal µs per MiB | store -> wait() p50 µs | p99 µs | \
         ACK p50 µs | ACK p99 µs | samples |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut notes = Vec::new();
    let mut smallest: Option<(usize, f64)> = None;
    for &size in &cfg.regions {
        eprintln!("scale: poll region {} ...", size_label(size));
        match run_case(&format!("region {size}")).and_then(|r| RegionRow::from_report(&r)) {
            Ok(r) => {
                let mib = |bytes: usize| bytes as f64 / (1 << 20) as f64;
                let (rate, per_wake, marginal) = match r.poller {
                    Some((rate, per_wake)) => {
                        let marginal = match smallest {
                            // Closer, the difference is the wake-up's noise.
                            Some((s0, c0)) if mib(size) - mib(s0) >= 0.5 => {
                                format!("{:.1}", (per_wake - c0) / 1000.0 / (mib(size) - mib(s0)))
                            }
                            _ => "—".to_string(),
                        };
                        if smallest.is_none_or(|(s0, _)| size < s0) {
                            smallest = Some((size, per_wake));
                        }
                        (
                            format!("{rate:.0}"),
                            format!("{:.1}", per_wake / 1000.0),
                            marginal,
                        )
                    }
                    None => ("n/a".into(), "n/a".into(), "n/a".into()),
                };
                println!(
                    "| {} | {} | {:.2} | {:.1} | {rate} | {per_wake} | {marginal} | {} | {} | {} | {} | {}{} |",
                    size_label(r.size),
                    r.rss_kib,
                    r.rss_kib as f64 * 1024.0 / r.size as f64,
                    r.idle_cpu,
                    us(r.wake.0),
                    us(r.wake.1),
                    us(r.ack.0),
                    us(r.ack.1),
                    r.samples,
                    if r.stray > 0 {
                        format!(" ({} stray)", r.stray)
                    } else {
                        String::new()
                    },
                );
            }
            Err(e) => {
                eprintln!("scale: poll region {}: failed: {e}", size_label(size));
                notes.push(format!("- {}: failed: {e}", size_label(size)));
            }
        }
    }
    println!();
    print_notes(&notes);
    Ok(())
}

/// Per thread of this process: its CPU time in ns (`schedstat`) and its
/// voluntary context switches (one per sleep).
fn thread_stats() -> BTreeMap<u64, (u64, u64)> {
    let mut stats = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return stats;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let read = |file: &str| std::fs::read_to_string(task.path().join(file)).ok();
        let cpu = read("schedstat").and_then(|s| s.split_whitespace().next()?.parse().ok());
        let switches = read("status").and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                .trim()
                .parse()
                .ok()
        });
        if let (Some(cpu), Some(switches)) = (cpu, switches) {
            stats.insert(tid, (cpu, switches));
        }
    }
    stats
}

/// The thread, other than the calling one, that slept (so woke) most
/// often between two `thread_stats`: its wake-ups and its CPU time then.
/// In part 2 that is the poller: the producer thread and this one sleep
/// once each.
fn busiest_sleeper(
    before: &BTreeMap<u64, (u64, u64)>,
    after: &BTreeMap<u64, (u64, u64)>,
) -> Option<(u64, u64)> {
    let me = rustix::thread::gettid().as_raw_nonzero().get() as u64;
    after
        .iter()
        .filter(|(tid, _)| **tid != me)
        .filter_map(|(tid, (cpu, sw))| {
            let (cpu0, sw0) = before.get(tid)?;
            Some((sw.checked_sub(*sw0)?, cpu.checked_sub(*cpu0)?))
        })
        .max_by_key(|(wakes, _)| *wakes)
        .filter(|(wakes, _)| *wakes > 1)
}

/// What the consumer tells part 2's producer thread.
enum Go {
    /// Connect as the producer of the tripwire on the other end.
    Connect(UnixStream),
    /// Pause this long, then store the clock.
    Store(Duration),
}

fn region_case(cfg: &Config, size: usize) -> Result<RegionRow, BoxError> {
    let rng = &mut Rng::new(cfg.seed ^ size as u64);
    if size < 8 {
        return Err("part 2 needs a region of at least 8 bytes (the stamp)".into());
    }
    let at = (size - 8) & !7;
    // The producer thread exists before the baseline: its stack is the
    // bench's, not the tripwire's.
    let (go, orders) = std::sync::mpsc::channel::<Go>();
    let thread = std::thread::spawn(move || -> Result<(), String> {
        let Ok(Go::Connect(sock)) = orders.recv() else {
            return Ok(());
        };
        let p = Producer::connect(sock).map_err(|e| format!("Producer::connect: {e}"))?;
        while let Ok(Go::Store(pause)) = orders.recv() {
            std::thread::sleep(pause);
            p.region()
                .write(at, &now_ns())
                .map_err(|e| format!("store: {e}"))?;
        }
        Ok(())
    });
    let mut writer = WriterGuard {
        go: Some(go),
        thread: Some(thread),
    };
    let base = Usage::now()?;
    let mut tw = blocking::Tripwire::builder(size)
        .backend(Backend::Poll)
        .create()
        .map_err(|e| format!("creating the tripwire: {e}"))?;
    let (ours, theirs) = UnixStream::pair()?;
    writer.go(Go::Connect(theirs))?;
    if let Err(e) = tw.share(ours) {
        return Err(writer.failure(format!("share: {e}")));
    }
    // Let the poller compare a few times (it touches the region's pages).
    std::thread::sleep(Duration::from_millis(200));
    let rss_kib = Usage::now()?.minus(&base).rss_kib;

    let (cpu0, threads0, t0) = (process_cpu_ns(), thread_stats(), Instant::now());
    std::thread::sleep(cfg.idle);
    let (cpu1, threads1, wall) = (process_cpu_ns(), thread_stats(), t0.elapsed());
    let f = (cpu1 - cpu0) as f64 / wall.as_nanos() as f64;
    let poller = busiest_sleeper(&threads0, &threads1).map(|(wakes, cpu_ns)| {
        (
            wakes as f64 / wall.as_secs_f64(),
            cpu_ns as f64 / wakes as f64,
        )
    });

    // A store anywhere in the poller's cycle: not always just after the
    // compare that took the last one (then each would wait a whole cycle).
    let cycle_us = poller.map_or(3000, |(rate, _)| (1e6 / rate) as u64).max(1);
    let pause = |rng: &mut Rng| Duration::from_micros(rng.below(cycle_us));
    let mut last = 0u64;
    let mut stray = 0;
    let mut wake = Vec::with_capacity(cfg.region_samples);
    while wake.len() < cfg.region_samples {
        writer.go(Go::Store(pause(rng)))?;
        loop {
            tw.wait_timeout(PATIENCE)
                .map_err(|e| format!("wait: {e}"))?
                .ok_or_else(|| format!("no trip within {PATIENCE:?} of a store"))?;
            let t1 = now_ns();
            let stamp: u64 = tw.region().read(at)?;
            if stamp != last {
                last = stamp;
                wake.push(t1.wrapping_sub(stamp));
                break;
            }
            stray += 1;
        }
    }
    let mut ack = Vec::with_capacity(cfg.region_samples);
    while ack.len() < cfg.region_samples {
        writer.go(Go::Store(pause(rng)))?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if Instant::now() > deadline {
                return Err(format!("no trip within {PATIENCE:?} of a store").into());
            }
            tw.wait_ready(Some(PATIENCE))
                .map_err(|e| format!("wait_ready: {e}"))?;
            let t2 = now_ns();
            let took = tw.try_changed().map_err(|e| format!("try_changed: {e}"))?;
            let t3 = now_ns();
            if took.is_none() {
                continue;
            }
            let stamp: u64 = tw.region().read(at)?;
            if stamp != last {
                last = stamp;
                ack.push(t3 - t2);
                break;
            }
            stray += 1;
        }
    }
    writer.join()?;
    Ok(RegionRow {
        size,
        rss_kib,
        idle_cpu: f * 100.0,
        poller,
        samples: wake.len(),
        wake: median_p99(&mut wake),
        ack: median_p99(&mut ack),
        stray,
    })
}

/// Part 2's producer thread: stopped and joined however the case ends.
struct WriterGuard {
    /// Dropping it stops the thread.
    go: Option<std::sync::mpsc::Sender<Go>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl WriterGuard {
    fn go(&mut self, order: Go) -> Result<(), BoxError> {
        match &self.go {
            Some(go) if go.send(order).is_ok() => Ok(()),
            _ => Err(self.failure("the producer thread stopped".into())),
        }
    }

    /// Stops the thread; its error, else `otherwise`.
    fn failure(&mut self, otherwise: String) -> BoxError {
        match self.join() {
            Err(e) => e,
            Ok(()) => otherwise.into(),
        }
    }

    fn join(&mut self) -> Result<(), BoxError> {
        self.go = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => Err(format!("producer thread: {e}").into()),
            Some(Err(_)) => Err("the producer thread panicked".into()),
            _ => Ok(()),
        }
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// The notes under a table (skipped cases and why), then a blank line.
fn print_notes(notes: &[String]) {
    for note in notes {
        println!("{note}");
    }
    if !notes.is_empty() {
        println!();
    }
}
