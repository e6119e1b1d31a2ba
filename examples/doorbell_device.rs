//! A device server with a doorbell register, in the spirit of VFIO-user.
//!
//! ```text
//! cargo run --release --example doorbell_device                       # Auto: Kernel, else Userfault
//! cargo run --release --example doorbell_device -- --backend userfault --requests 20000
//! ```
//!
//! The device (this process) exposes a "BAR": a tripwire holding only a
//! doorbell register, plus plain shared memory with a submission queue and a
//! completion queue. The driver (this program again, as a child process) is
//! written the way a driver for real hardware is: it stores a descriptor,
//! then stores the new queue tail into the doorbell register, and polls for
//! the completion. No `notify()`, no eventfd: the device wakes on
//! `changed().await` because the driver *wrote* the register.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Instant;

use memfd_tripwire::{Backend, Producer, SharedMemory, Tripwire, blocking};

#[path = "common/requests.rs"]
mod requests;
use requests::{CQE_LEN, Cqe, DESC_LEN, Desc};

const DRIVER_ENV: &str = "DOORBELL_EXAMPLE_DRIVER";
/// BAR layout: the submission-queue tail doorbell.
const SQ_TAIL_DOORBELL: usize = 0x0;
const BAR_LEN: usize = 4096;
/// Queue memory layout.
const ENTRIES: u32 = 64;
const SQ: usize = 0; // ENTRIES x Desc
const CQ: usize = 4096; // ENTRIES x Cqe
const CQ_TAIL: usize = 8192; // u32, written by the device
const QUEUES_LEN: usize = 3 * 4096;

fn main() {
    let outcome = if std::env::var_os(DRIVER_ENV).is_some() {
        driver()
    } else {
        device()
    };
    if let Err(e) = outcome {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

struct Args {
    backend: Backend,
    requests: u64,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        backend: Backend::Auto,
        requests: 20_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--backend" => {
                out.backend = val()?.parse().map_err(|e| format!("--backend: {e}"))?;
                if out.backend == Backend::Doorbell {
                    return Err("the driver never calls notify(), so Backend::Doorbell \
                                cannot see its doorbell writes: use auto, kernel, \
                                userfault, userfault-async or poll"
                        .into());
                }
            }
            "--requests" => {
                out.requests = val()?.parse().map_err(|e| format!("--requests: {e}"))?
            }
            _ => {
                return Err(
                    "usage: doorbell_device [--backend auto|kernel|userfault|userfault-async|poll] [--requests N]"
                        .into(),
                );
            }
        }
    }
    Ok(out)
}

fn device() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let mut bar = match blocking::Tripwire::builder(BAR_LEN)
        .backend(args.backend)
        .create()
    {
        Ok(bar) => bar,
        Err(e) => return Err(format!("no backend can watch the driver's stores here: {e}").into()),
    };
    let queues = SharedMemory::create(QUEUES_LEN)?;
    let (ours, theirs) = UnixStream::pair()?;
    let mut driver = Command::new(std::env::current_exe()?)
        .env(DRIVER_ENV, args.requests.to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(queues.as_fd().try_clone_to_owned()?))
        .spawn()?;
    bar.share(ours)?;
    println!(
        "device: BAR of {BAR_LEN} bytes watched by the {} backend; {ENTRIES}-entry queues in plain shared memory",
        bar.backend()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        // The timer: on Userfault, an ACK in flight has a deadline.
        .enable_time()
        .build()?;
    let (served, wakeups) = rt.block_on(async { serve(Tripwire::new(bar)?, &queues).await })?;
    driver.wait()?;
    println!("device: served {served} requests in {wakeups} wake-ups; the driver has gone");
    Ok(())
}

/// Waits for doorbell writes and serves every submission they announce.
async fn serve(
    mut bar: Tripwire,
    queues: &SharedMemory,
) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let q = queues.region();
    let mut head = 0u32; // next submission to serve
    let mut served = 0u64;
    let mut wakeups = 0u64;
    loop {
        match bar.changed().await {
            Ok(_) => wakeups += 1,
            // The driver dropped its Producer: a clean close.
            Err(e) if memfd_tripwire::Error::is_closed(&e) => return Ok((served, wakeups)),
            Err(e) => return Err(e.into()),
        }
        // On Kernel the trip fires just before the store lands.
        let doorbell = bar.region().atomic_u32(SQ_TAIL_DOORBELL)?;
        requests::settle(doorbell, head);
        // The register is the driver's: read it once and validate it.
        let tail = doorbell.load(Ordering::Acquire);
        if tail.wrapping_sub(head) > ENTRIES {
            return Err(format!(
                "driver wrote doorbell {tail} with {head} served: not a valid tail"
            )
            .into());
        }
        while head != tail {
            let slot = (head % ENTRIES) as usize;
            let d: Desc = q.read(SQ + slot * DESC_LEN)?;
            q.write(CQ + slot * CQE_LEN, &d.execute())?;
            head = head.wrapping_add(1);
            q.atomic_u32(CQ_TAIL)?.store(head, Ordering::Release);
            served += 1;
        }
    }
}

fn driver() -> Result<(), Box<dyn std::error::Error>> {
    let requests: u64 = std::env::var(DRIVER_ENV)?.parse()?;
    let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
    let bar = Producer::connect(UnixStream::from(stdin))?;
    let queues = SharedMemory::from_fd(std::io::stdout().as_fd().try_clone_to_owned()?)?;
    let q = queues.region();
    let doorbell = bar.region().atomic_u32(SQ_TAIL_DOORBELL)?;
    let cq_tail = q.atomic_u32(CQ_TAIL)?;
    let mut lat = Vec::with_capacity(requests as usize);
    let start = Instant::now();
    for id in 0..requests {
        let tail = id as u32;
        let slot = (tail % ENTRIES) as usize;
        let request = Desc::checksum_request(id);
        let t0 = Instant::now();
        // An unmodified driver: the descriptor, then the doorbell store.
        q.write(SQ + slot * DESC_LEN, &request)?;
        doorbell.store(tail.wrapping_add(1), Ordering::Release);
        // Poll for the completion, as drivers do; give up if the device died.
        let mut spins = 0u64;
        while cq_tail.load(Ordering::Acquire) != tail.wrapping_add(1) {
            std::hint::spin_loop();
            spins += 1;
            if spins % (1 << 20) == 0 && bar.is_closed() {
                return Err(format!("request {id}: the device went away").into());
            }
        }
        lat.push(t0.elapsed());
        let c: Cqe = q.read(CQ + slot * CQE_LEN)?;
        c.check(&request)?;
    }
    eprintln!("driver: {}", requests::summary(&mut lat, start.elapsed()));
    Ok(())
}
