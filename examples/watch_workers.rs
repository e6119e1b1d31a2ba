//! A supervisor watching the status of N worker processes, each through a
//! cross-process [`watch`](memfd_tripwire::watch) of a plain struct.
//!
//! ```text
//! cargo run --example watch_workers                         # 3 workers, Doorbell: any Linux
//! cargo run --example watch_workers -- 5 poll               # 5 workers, Poll
//! ```
//!
//! The supervisor creates one watch per worker, starts this same program
//! again as each worker (the watch's handshake socket on its stdin), and
//! prints every status change it sees until each worker has closed its end
//! (or died). A worker updates its status as it goes: reads are whole
//! values, never a mix of two updates.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use memfd_tripwire::{Backend, Error, watch};

const WORKER_ENV: &str = "WATCH_WORKERS_EXAMPLE_WORKER";
const STEPS: u64 = 20;

/// What a worker publishes: plain data, any bytes valid (`Pod`).
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
#[repr(C)]
struct Status {
    worker: u64,
    done: u64,
    total: u64,
    /// The sum of the items done so far: with `done`, a check that the
    /// value read was written whole.
    checksum: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(id) = std::env::var_os(WORKER_ENV) {
        return worker(id.to_string_lossy().parse()?);
    }
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(Ok(3), |a| a.parse())?;
    let backend: Backend = args.next().map_or(Ok(Backend::Doorbell), |a| a.parse())?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(supervise(n, backend))
}

/// One task per worker: each waits for its worker's changes.
async fn supervise(n: u64, backend: Backend) -> Result<(), Box<dyn std::error::Error>> {
    let mut tasks = Vec::new();
    let mut children = Vec::new();
    for id in 0..n {
        let mut rx = watch::channel(Status::default())
            .backend(backend)
            .create_async()?;
        let (ours, theirs) = UnixStream::pair()?;
        children.push(
            Command::new(std::env::current_exe()?)
                .env(WORKER_ENV, id.to_string())
                .stdin(Stdio::from(OwnedFd::from(theirs)))
                .spawn()?,
        );
        rx.share(ours).await?;
        tasks.push(tokio::spawn(async move {
            loop {
                match rx.changed().await {
                    Ok(()) => {
                        let s = *rx.borrow();
                        assert_eq!(s.checksum, s.done * (s.done + 1) / 2, "a torn status");
                        println!("worker {}: {}/{}", s.worker, s.done, s.total);
                    }
                    Err(Error::Closed) => return format!("worker {id}: finished"),
                    Err(e) => return format!("worker {id}: {e}"),
                }
            }
        }));
    }
    for task in tasks {
        println!("{}", task.await?);
    }
    for mut child in children {
        child.wait()?;
    }
    Ok(())
}

/// A worker: connects its watch (stdin) and publishes its progress.
fn worker(id: u64) -> Result<(), Box<dyn std::error::Error>> {
    let sock = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut tx = watch::Sender::<Status>::connect(sock)?;
    for done in 1..=STEPS {
        std::thread::sleep(Duration::from_millis(10 + 5 * id));
        tx.send_modify(|s| {
            *s = Status {
                worker: id,
                done,
                total: STEPS,
                checksum: s.checksum + done,
            }
        })?;
    }
    Ok(()) // dropping the Sender closes the watch: the supervisor sees Closed
}
