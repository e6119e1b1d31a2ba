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
