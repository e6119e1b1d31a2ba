//! A log shipper over byte frames: a worker process ships its log lines to
//! this one, each line a frame.
//!
//! ```text
//! cargo run --release --example log_shipper                      # Doorbell: any Linux
//! cargo run --release --example log_shipper -- --backend poll --lines 100000
//! ```
//!
//! This process creates the ring (`SharedFrames::builder`) and starts
//! itself again as the worker, which formats each line into a reused
//! buffer, reserves room for the longest line (`blocking_reserve`), copies
//! the line in with one `write` and commits only the bytes it wrote
//! (`commit_len`). (Formatting straight into the grant would be many small
//! writes into shared memory, each word a peer may touch written
//! atomically: one copy of the finished line is cheaper.) Here each line is
//! copied into one reused buffer (`blocking_recv`); the worker's exit is a
//! clean close (`Ok(None)`).

use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Instant;

use memfd_tripwire::Backend;
use memfd_tripwire::ring::frames::{FrameSender, SharedFrames};

const WORKER_ENV: &str = "LOG_SHIPPER_EXAMPLE_WORKER";
/// The longest line the worker formats.
const MAX_LINE: usize = 256;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os(WORKER_ENV).is_some() {
        return worker();
    }
    let (mut backend, mut lines) = (Backend::Doorbell, 1_000_000u64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let val = args.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--backend" => backend = val.parse()?,
            "--lines" => lines = val.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let mut rx = SharedFrames::builder(1 << 20).backend(backend).create()?;
    let (ours, theirs) = UnixStream::pair()?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(WORKER_ENV, lines.to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()?;
    rx.share(ours)?;
    let start = Instant::now();
    let (mut buf, mut n, mut bytes, mut first) = (Vec::new(), 0u64, 0usize, None);
    while let Some(len) = rx.blocking_recv(&mut buf)? {
        if first.is_none() {
            first = Some(String::from_utf8_lossy(&buf).into_owned());
        }
        n += 1;
        bytes += len;
    }
    let took = start.elapsed();
    child.wait()?;
    println!(
        "backend {}: {n} lines, {bytes} bytes in {took:?}",
        rx.backend()
    );
    println!(
        "{:.1} M lines/s, {:.0} MB/s",
        n as f64 / took.as_secs_f64() / 1e6,
        bytes as f64 / took.as_secs_f64() / 1e6
    );
    println!("first: {}", first.unwrap_or_default());
    println!("last:  {}", String::from_utf8_lossy(&buf));
    Ok(())
}

/// The worker: formats each line, copies it into a reserved frame,
/// commits what it wrote. Dropping the Sender at the end closes the ring cleanly.
fn worker() -> Result<(), Box<dyn std::error::Error>> {
    let lines: u64 = std::env::var(WORKER_ENV)?.parse()?;
    let sock = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut tx = FrameSender::connect(sock)?;
    let mut line = Vec::with_capacity(MAX_LINE);
    for i in 0..lines {
        line.clear();
        write!(
            line,
            "worker pid {} line {i}: status={} queue={}",
            std::process::id(),
            if i % 7 == 0 { "busy" } else { "ok" },
            i % 1000
        )?;
        let mut grant = tx.blocking_reserve(MAX_LINE)?;
        grant.write(0, &line)?;
        grant.commit_len(line.len())?;
    }
    Ok(())
}
