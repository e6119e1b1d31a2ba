//! What the two-process benchmarks share: CPU pinning, a clock that both
//! processes read alike, the anchors' way of taking percentiles, the
//! parsing of their numeric env knobs, and the choice of role in the
//! re-executed binary (`mod common;` in each bench).

/// Pins the calling process (all its future threads too) to `cpu`.
#[allow(dead_code)] // the scale bench lets its processes float
pub fn pin(cpu: usize) -> Result<(), Box<dyn std::error::Error>> {
    use rustix::thread::{CpuSet, sched_setaffinity};
    if cpu >= CpuSet::MAX_CPU {
        return Err(format!("cpu {cpu} out of range").into());
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).map_err(|e| format!("sched_setaffinity({cpu}): {e}").into())
}

/// `CLOCK_MONOTONIC` in ns (vDSO): one clock for every process, so a stamp
/// taken in one can be compared with a reading in another (`Instant` reads
/// the same clock but cannot be sent).
#[allow(dead_code)] // not every bench measures across processes
pub fn now_ns() -> u64 {
    use rustix::time::{ClockId, clock_gettime};
    let t = clock_gettime(ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Median and p99 as the anchor computes them: sorted `s[n/2]`, `s[n*0.99]`.
#[allow(dead_code)] // not every bench reports percentiles
pub fn median_p99(samples: &mut [u64]) -> (u64, u64) {
    samples.sort_unstable();
    let n = samples.len();
    let p99 = ((n as f64 * 0.99) as usize).min(n - 1);
    (samples[n / 2], samples[p99])
}

/// The number in env `name`, or `default` when it is not set.
pub fn env_num<T: std::str::FromStr>(
    name: &str,
    default: T,
) -> Result<T, Box<dyn std::error::Error>>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|e| format!("{name}={v:?}: {e}").into()),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => Err(format!("{name}: {e}").into()),
    }
}

/// The words of env `name`, or of `default` when it is not set.
#[allow(dead_code)] // for the benches with lists of cases
pub fn env_words(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The env that tells a re-executed bench binary which role it plays.
pub const ROLE_ENV: &str = "MEMFD_TRIPWIRE_BENCH_ROLE";

/// The `main` of a bench that re-executes itself as its producer (env
/// [`ROLE_ENV`] `=producer`): runs the role's half and turns an
/// error into a message and a failing exit status.
#[allow(dead_code)] // the ring bench has roles of its own
pub fn run_role(
    name: &str,
    producer: fn() -> Result<(), Box<dyn std::error::Error>>,
    consumer: fn() -> Result<(), Box<dyn std::error::Error>>,
) -> std::process::ExitCode {
    let role = std::env::var_os(ROLE_ENV);
    let result = if role.is_some_and(|r| r == "producer") {
        producer()
    } else {
        consumer()
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The `main` of a bench that runs cases and re-executes itself as each
/// case's peer (env [`ROLE_ENV`] `= role`): runs the peer's half, or the
/// consumer's (`Ok(false)`: a case failed and said why), and turns an
/// error into a message and a failing exit status.
#[allow(dead_code)] // the benches with one producer use `run_role`
pub fn run_peer_or_cases(
    name: &str,
    role: &str,
    peer: fn() -> Result<(), Box<dyn std::error::Error>>,
    consumer: fn() -> Result<bool, Box<dyn std::error::Error>>,
) -> std::process::ExitCode {
    let is_peer = std::env::var_os(ROLE_ENV).is_some_and(|r| r == role);
    let result = if is_peer {
        peer().map(|()| true)
    } else {
        consumer()
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{name}{}: {e}", if is_peer { " (peer)" } else { "" });
            std::process::ExitCode::FAILURE
        }
    }
}

/// Pins the consumer (env `CONSUMER_CPU`, 0) and runs each case with
/// `tput`, printing `<tag> <case line> <figures>` per case as soon as it
/// is measured; a case that fails is reported on stderr and the others
/// still run. `Ok(false)` if any failed.
#[allow(dead_code)] // the benches with one producer use `run_role`
pub fn print_cases<C>(
    name: &str,
    tag: &str,
    cases: Vec<C>,
    line: impl Fn(&C) -> String,
    tput: impl Fn(&C) -> Result<String, Box<dyn std::error::Error>>,
) -> Result<bool, Box<dyn std::error::Error>> {
    use std::io::Write as _;
    pin(env_num("CONSUMER_CPU", 0)?)?;
    let mut ok = true;
    for case in cases {
        match tput(&case) {
            Ok(figures) => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{tag} {} {figures}", line(&case))?;
                out.flush()?;
            }
            Err(e) => {
                eprintln!("{name}: {}: {e}", line(&case));
                ok = false;
            }
        }
    }
    Ok(ok)
}
