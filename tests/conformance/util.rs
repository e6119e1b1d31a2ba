//! Shared helpers: pairs, child processes, time-outs, watchdogs.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use libtest_mimic::Failed;
use memfd_tripwire::{Backend, BackendKind, Producer, blocking::Tripwire};

use crate::child::ROLE_ENV;

pub type Outcome = Result<(), Failed>;

#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub backend: Backend,
    pub kind: BackendKind,
}

/// `TRIPWIRE_TIME_SCALE`, for emulated VMs (default 1).
pub fn scale() -> u32 {
    std::env::var("TRIPWIRE_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// `ms` milliseconds, times the scale.
pub fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms) * scale()
}

/// Runs a scenario on its own thread and fails it if it overruns.
pub fn with_watchdog(ctx: &Ctx, f: fn(&Ctx) -> Outcome) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let ctx = *ctx;
    std::thread::spawn(move || {
        let _ = tx.send(f(&ctx));
    });
    let limit = ms(60_000);
    match rx.recv_timeout(limit) {
        Ok(outcome) => outcome,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(format!("watchdog: still running after {limit:?}").into())
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err("the scenario panicked (see above)".into())
        }
    }
}

pub fn create(ctx: &Ctx, len: usize) -> Result<Tripwire, Failed> {
    Ok(Tripwire::builder(len).backend(ctx.backend).create()?)
}

/// A tripwire and an in-process producer (a thread did the handshake).
pub fn pair(ctx: &Ctx, len: usize) -> Result<(Tripwire, Producer), Failed> {
    let mut tw = create(ctx, len)?;
    let (ours, theirs) = UnixStream::pair()?;
    let producer = std::thread::spawn(move || Producer::connect(theirs));
    tw.share(ours)?;
    let producer = producer.join().map_err(|_| "producer thread panicked")??;
    Ok((tw, producer))
}

/// A child running `role` with `stdin` as fd 0, and `stdout` (or a pipe) as fd 1.
pub fn spawn(
    role: &str,
    env: &[(&str, String)],
    stdin: OwnedFd,
    stdout: Option<OwnedFd>,
) -> Result<Child, Failed> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(ROLE_ENV, role)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::from(stdin))
        .stdout(stdout.map_or_else(Stdio::piped, Stdio::from));
    Ok(cmd.spawn()?)
}

/// Spawns a producer child and does the handshake with it.
pub fn share_with_child(
    tw: &mut Tripwire,
    role: &str,
    env: &[(&str, String)],
) -> Result<Child, Failed> {
    let (ours, theirs) = UnixStream::pair()?;
    let child = spawn(role, env, theirs.into(), None)?;
    tw.share(ours)?;
    Ok(child)
}

/// Waits for a child and checks that it exited 0.
pub fn reap(mut child: Child, what: &str) -> Outcome {
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("{what} child failed: {status}").into());
    }
    Ok(())
}

/// Fails with `msg` unless `cond`.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Outcome {
    if cond { Ok(()) } else { Err(msg().into()) }
}

/// Waits for one trip, failing after `limit`.
pub fn expect_trip(tw: &mut Tripwire, limit: Duration, what: &str) -> Outcome {
    match tw.wait_timeout(limit)? {
        Some(_) => Ok(()),
        None => Err(format!("{what}: no trip within {limit:?}").into()),
    }
}

/// A current-thread tokio runtime with IO and time.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failed> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Once every store is done: takes the trips still pending (a store that
/// raced the last ACK trips once more) and then requires the wire to stay
/// quiet for a short while. A wire that never re-arms (tripped again at
/// every look) fails here; a correct one cannot, however slow the host (a
/// longer wait only makes the check more sensitive).
pub fn settles(tw: &mut Tripwire, what: &str) -> Outcome {
    const PENDING: usize = 3;
    for _ in 0..=PENDING {
        if tw.wait_timeout(ms(200))?.is_none() {
            return Ok(());
        }
    }
    Err(format!(
        "{what}: still tripped after {} ACKs with no store (the wire does not re-arm)",
        PENDING + 1
    )
    .into())
}

/// Marks the running trial skipped: a `skipping: <why> [<backend>::<scenario>]`
/// line on the real stderr, the suite's convention (`tests/support`), and
/// `Ok`. With a `requirement` (a name `TRIPWIRE_REQUIRE` takes, such as
/// `root`) that `TRIPWIRE_REQUIRE` names, it fails instead.
pub fn skip(ctx: &Ctx, scenario: &str, requirement: Option<&str>, why: &str) -> Outcome {
    let backend = crate::BACKENDS
        .iter()
        .find(|&&(_, kind, _)| kind == ctx.kind)
        .map_or("?", |&(_, _, name)| name);
    let why = format!("{why} [{backend}::{scenario}]");
    match requirement {
        Some(r) if crate::support::is_required(r) => {
            Err(format!("required by TRIPWIRE_REQUIRE ({r}) but skipped: {why}").into())
        }
        _ => {
            crate::support::say_skipping(&why);
            Ok(())
        }
    }
}
