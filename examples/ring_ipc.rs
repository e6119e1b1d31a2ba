//! Typed messages between two processes over tripwire rings.
//!
//! ```text
//! cargo run --release --example ring_ipc                                  # Doorbell: any Linux
//! cargo run --release --example ring_ipc -- --backend userfault --messages 2000000 --spin-us 5
//! ```
//!
//! This process creates a ring and starts itself again as the peer. The
//! peer sends a million 64-byte messages, which are consumed here as a
//! `Stream` (throughput); then the two ping-pong one message through a ring
//! each way (round-trip percentiles).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use memfd_tripwire::Backend;
use memfd_tripwire::ring::{Receiver, Sender, SharedRing};

const PEER_ENV: &str = "RING_IPC_EXAMPLE_PEER";
const TAG: u64 = u64::from_le_bytes(*b"RINGIPC1");
const ROUND_TRIPS: u64 = 20_000;

/// A 64-byte message: a sequence number and a payload derived from it.
type Msg = [u64; 8];

fn msg(i: u64) -> Msg {
    [
        i,
        i ^ 0xA5A5,
        i.rotate_left(7),
        !i,
        i * 3,
        i + 5,
        i >> 2,
        i ^ TAG,
    ]
}

struct Args {
    backend: Backend,
    messages: u64,
    spin: Duration,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        backend: Backend::Doorbell,
        messages: 1_000_000,
        spin: Duration::from_micros(5),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--backend" => out.backend = val()?.parse().map_err(|e| format!("--backend: {e}"))?,
            "--messages" => {
                out.messages = val()?.parse().map_err(|e| format!("--messages: {e}"))?
            }
            "--spin-us" => {
                out.spin =
                    Duration::from_micros(val()?.parse().map_err(|e| format!("--spin-us: {e}"))?)
            }
            _ => {
                return Err(
                    "usage: ring_ipc [--backend auto|kernel|userfault|userfault-async|doorbell|poll] \
                            [--messages N] [--spin-us N]"
                        .into(),
                );
            }
        }
    }
    Ok(out)
}

fn ring(args: &Args) -> Result<Receiver<Msg>, memfd_tripwire::Error> {
    SharedRing::<Msg>::builder(4096)
        .backend(args.backend)
        .type_tag(TAG)
        .spin(args.spin)
        .create()
}

fn main() {
    let outcome = match args() {
        Err(e) => Err(e.into()),
        Ok(args) if std::env::var_os(PEER_ENV).is_some() => peer(args),
        Ok(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                // The timer: on Userfault, an ACK in flight has a deadline.
                .enable_time()
                .build()
                .expect("a tokio runtime");
            rt.block_on(main_process(args))
        }
    };
    if let Err(e) = outcome {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn main_process(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut from_peer = ring(&args).map_err(|e| format!("cannot create a ring here: {e}"))?;
    let (a_ours, a_theirs) = UnixStream::pair()?;
    let (b_ours, b_theirs) = UnixStream::pair()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(std::env::args().skip(1))
        .env(PEER_ENV, "1")
        .stdin(Stdio::from(OwnedFd::from(a_theirs)))
        .stdout(Stdio::from(OwnedFd::from(b_theirs)))
        .spawn()?;
    // The async handshakes (up to 10 s against a silent peer) leave the
    // runtime's thread free.
    from_peer.share_async(a_ours).await?;
    let mut to_peer = Sender::<Msg>::connect_with_tag_async(b_ours, TAG).await?;
    println!(
        "ring_ipc: {}-slot rings of {}-byte messages, {} backend, spin {:?}",
        from_peer.capacity(),
        size_of::<Msg>(),
        from_peer.backend(),
        args.spin
    );

    // Throughput: the peer streams messages; they are consumed as a Stream.
    let start = Instant::now();
    let mut expected = 0u64;
    {
        let mut stream = (&mut from_peer).take(args.messages as usize);
        while let Some(m) = stream.next().await {
            let m = m?;
            if m != msg(expected) {
                return Err(format!("message {expected} arrived as {m:?}").into());
            }
            expected += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = from_peer.stats();
    println!(
        "throughput: {expected} messages in {secs:.3} s = {:.2} M msg/s ({:.2} GB/s); {:.2} re-arms per 1000 messages",
        expected as f64 / secs / 1e6,
        expected as f64 * size_of::<Msg>() as f64 / secs / 1e9,
        stats.rearms as f64 * 1000.0 / expected.max(1) as f64
    );

    // Round trips: one message out, the same one back.
    let mut rtt = Vec::with_capacity(ROUND_TRIPS as usize);
    for i in 0..ROUND_TRIPS + 1000 {
        let t0 = Instant::now();
        to_peer.send(msg(i)).await?;
        let back = from_peer.recv().await?.ok_or("the peer closed early")?;
        if i >= 1000 {
            rtt.push(t0.elapsed());
        }
        if back != msg(i) {
            return Err(format!("round trip {i}: got {back:?}").into());
        }
    }
    rtt.sort();
    let pct = |p: f64| rtt[((rtt.len() - 1) as f64 * p) as usize];
    println!(
        "round trip ({ROUND_TRIPS} one-message ping-pongs): p50 {:.2?}, p90 {:.2?}, p99 {:.2?}, max {:.2?}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        rtt[rtt.len() - 1]
    );

    drop(to_peer); // a clean close: the peer's receiver ends, so does the peer
    let end = from_peer.recv().await?;
    child.wait()?;
    println!(
        "done: the peer closed its ring cleanly ({})",
        if end.is_none() {
            "Ok(None)"
        } else {
            "unexpected message"
        }
    );
    Ok(())
}

fn peer(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
    let stdout = std::io::stdout().as_fd().try_clone_to_owned()?;
    let mut to_main = Sender::<Msg>::connect_with_tag(UnixStream::from(stdin), TAG)?;
    let mut from_main = ring(&args)?;
    from_main.share(UnixStream::from(stdout))?;
    let mut batch = Vec::with_capacity(256);
    let mut i = 0;
    while i < args.messages {
        batch.clear();
        batch.extend((i..(i + 256).min(args.messages)).map(msg));
        to_main.blocking_send_many(&batch)?;
        i += batch.len() as u64;
    }
    while let Some(m) = from_main.blocking_recv()? {
        to_main.blocking_send(m)?;
    }
    Ok(())
}
