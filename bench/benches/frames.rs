//! Byte frames (`ring::frames::{SharedFrames, FrameReceiver, FrameSender}`)
//! between two pinned processes, through the public API only: throughput
//! of frames of 64 B, 1 KiB and 64 KiB, blocking sender into blocking
//! receiver and async into async.
//!
//! To be compared with `../shared/anchor-bench` `xcore_stream` (a spinning
//! C ring of frames, memcpy in and out) and `../shared/peer-bench` in one
//! session, as `ring.rs` is with its anchors.
//!
//! # Harness
//!
//! As `ring.rs`'s tput: the binary re-executes itself as the producer (env
//! `MEMFD_TRIPWIRE_BENCH_ROLE=frames-peer`, the case in
//! `MEMFD_TRIPWIRE_FRAMES_CASE`), the consumer pinned to CPU0 and the
//! producer to CPU1. The child's stdin is the handshake socket, its stdout
//! a control socket: once attached it says ready; the parent starts its
//! clock, says go, and receives `n` frames (as many as make `BYTES` of
//! payload), checking each one's length and sequence number (its first 8
//! bytes); the clock stops at the last frame, and the ring must then end
//! with a clean close. The producer sends each frame with `blocking_send`
//! (`blocking`) or `send().await` (`async`, a current-thread runtime); the
//! consumer takes each into one reused `Vec<u8>` with `blocking_recv` or
//! `recv().await`.
//!
//! # Output
//!
//! One line per case on stdout:
//!
//! ```text
//! FRAMES backend=doorbell size=64 pair=blocking:blocking spin_us=auto cap=4194304 n=.. secs=.. mframes=.. gbytes=.. rearms=.. sleeps=..
//! ```
//!
//! `gbytes` is payload GB/s (10^9 bytes), `mframes` M frames/s.
//!
//! # Knobs (env)
//!
//! | env | default | meaning |
//! |---|---|---|
//! | `BACKENDS` | `doorbell` | `doorbell`, `userfault`, `userfault_async`, `poll`, `kernel` |
//! | `SIZES` | `64 1024 65536` | payload bytes per frame |
//! | `PAIRS` | `blocking:blocking async:async` | `send:recv`; either may also be `many` (`blocking_send_many` of 256 frames, or 256 KiB of them; `blocking_recv_many` of up to 1024) or `async_many` (`send_many().await`, `recv_many().await`) |
//! | `SPINS_US` | `auto` | the Receiver's spin budget, µs (`auto`: the adaptive default) |
//! | `BYTES` | 1073741824 | payload per case (n = BYTES / size, at least 1000) |
//! | `CAP` | 4194304 | ring capacity, bytes (`xcore_stream`'s `RING`) |
//! | `CONSUMER_CPU`, `PRODUCER_CPU` | 0, 1 | pinning |
//!
//! Run: `cargo bench -p memfd-tripwire-bench --bench frames`.

mod common;
use common::{ROLE_ENV, env_num, env_words, pin};

use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use memfd_tripwire::Backend;
use memfd_tripwire::ring::frames::{FrameBatch, FrameReceiver, FrameSender, SharedFrames};

const ROLE: &str = "frames-peer";
const CASE_ENV: &str = "MEMFD_TRIPWIRE_FRAMES_CASE";

type BoxError = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    common::run_peer_or_cases("frames", ROLE, peer_main, consumer_main)
}

/// One case, as its line names it (and `CASE_ENV` carries it).
#[derive(Debug, Clone)]
struct Case {
    backend: String,
    size: usize,
    send_async: bool,
    /// The producer sends batches of [`MANY`] frames with `send_many`.
    send_many: bool,
    recv_async: bool,
    /// The consumer takes up to [`RECV_MANY`] frames a call with
    /// `recv_many`.
    recv_many: bool,
    spin_us: Option<u64>,
    cap: usize,
    n: u64,
}

impl Case {
    fn line(&self) -> String {
        let mode = |a| if a { "async" } else { "blocking" };
        let batched = |a, many| match (a, many) {
            (false, true) => "many",
            (true, true) => "async_many",
            (a, false) => mode(a),
        };
        let send = batched(self.send_async, self.send_many);
        let recv = batched(self.recv_async, self.recv_many);
        format!(
            "backend={} size={} pair={}:{} spin_us={} cap={} n={}",
            self.backend,
            self.size,
            send,
            recv,
            self.spin_us.map_or("auto".to_owned(), |us| us.to_string()),
            self.cap,
            self.n
        )
    }

    fn parse(line: &str) -> Result<Case, BoxError> {
        let get = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                .ok_or_else(|| format!("case {line:?} lacks {k}"))
        };
        let (send, recv) = get("pair")?
            .split_once(':')
            .ok_or("pair is not send:recv")?;
        Ok(Case {
            backend: get("backend")?.to_owned(),
            size: get("size")?.parse()?,
            send_async: send.starts_with("async"),
            send_many: send.ends_with("many"),
            recv_async: recv.starts_with("async"),
            recv_many: recv.ends_with("many"),
            spin_us: get("spin_us")?.parse().ok(),
            cap: get("cap")?.parse()?,
            n: get("n")?.parse()?,
        })
    }

    fn backend(&self) -> Result<Backend, BoxError> {
        Ok(match self.backend.as_str() {
            "doorbell" => Backend::Doorbell,
            "userfault" => Backend::Userfault,
            "userfault_async" => Backend::UserfaultAsync,
            "poll" => Backend::Poll,
            "kernel" => Backend::Kernel,
            other => return Err(format!("unknown backend {other:?}").into()),
        })
    }
}

fn cases() -> Result<Vec<Case>, BoxError> {
    let bytes: u64 = env_num("BYTES", 1 << 30)?;
    let cap: usize = env_num("CAP", 4 << 20)?;
    let mut cases = Vec::new();
    for backend in env_words("BACKENDS", "doorbell") {
        for spin in env_words("SPINS_US", "auto") {
            for pair in env_words("PAIRS", "blocking:blocking async:async") {
                for size in env_words("SIZES", "64 1024 65536") {
                    let size: usize = size.parse()?;
                    let line = format!(
                        "backend={backend} size={size} pair={pair} spin_us={spin} cap={cap} n={}",
                        (bytes / size.max(1) as u64).max(1000)
                    );
                    cases.push(Case::parse(&line)?);
                }
            }
        }
    }
    Ok(cases)
}

fn runtime() -> Result<tokio::runtime::Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?)
}

fn consumer_main() -> Result<bool, BoxError> {
    common::print_cases("frames", "FRAMES", cases()?, Case::line, tput)
}

fn tput(case: &Case) -> Result<String, BoxError> {
    let b = SharedFrames::builder(case.cap).backend(case.backend()?);
    let b = match case.spin_us {
        Some(us) => b.spin(Duration::from_micros(us)),
        None => b,
    };
    let mut rx = b.create()?;
    let (ours, theirs) = UnixStream::pair()?;
    let (mut ctl, ctl_theirs) = UnixStream::pair()?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(ROLE_ENV, ROLE)
        .env(CASE_ENV, case.line())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(ctl_theirs)))
        .spawn()?;
    let outcome = (|| {
        rx.share(ours)?;
        let mut byte = [0u8];
        ctl.read_exact(&mut byte)?; // the producer is attached and ready
        let start = Instant::now();
        ctl.write_all(b"g")?;
        // Each returns when the last frame arrived: the clean close after
        // it is checked but not timed.
        let last = if case.recv_many {
            receive_many(&mut rx, case)?
        } else if case.recv_async {
            runtime()?.block_on(async {
                let mut buf = Vec::new();
                for seq in 0..case.n {
                    let len = rx.recv(&mut buf).await?;
                    check(case, seq, len, &buf)?;
                }
                let last = Instant::now();
                let end = rx.recv(&mut buf).await?;
                check(case, case.n, end, &buf).map(|()| last)
            })?
        } else {
            receive(&mut rx, case)?
        };
        Ok::<_, BoxError>(last - start)
    })();
    let took = match outcome {
        Ok(took) => took,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("the peer failed ({status})").into());
    }
    let secs = took.as_secs_f64();
    let stats = rx.stats();
    Ok(format!(
        "secs={secs:.3} mframes={:.2} gbytes={:.2} rearms={} sleeps={}",
        case.n as f64 / secs / 1e6,
        case.n as f64 * case.size as f64 / secs / 1e9,
        stats.rearms,
        stats.sleeps
    ))
}

/// Frames per `recv_many` call (`many` and `async_many` consumers).
const RECV_MANY: usize = 1024;

/// Receives every frame in batches; when the last one arrived.
fn receive_many(rx: &mut FrameReceiver, case: &Case) -> Result<Instant, BoxError> {
    let mut batch = FrameBatch::new();
    let mut seq = 0;
    let mut last = None;
    let rt = if case.recv_async {
        Some(runtime()?)
    } else {
        None
    };
    loop {
        batch.clear();
        let n = match &rt {
            Some(rt) => rt.block_on(rx.recv_many(&mut batch, RECV_MANY))?,
            None => rx.blocking_recv_many(&mut batch, RECV_MANY)?,
        };
        if n == 0 {
            check(case, seq, None, &[])?;
            return last.ok_or_else(|| "no frame arrived".into());
        }
        for frame in &batch {
            check(case, seq, Some(frame.len()), frame)?;
            seq += 1;
        }
        if seq == case.n {
            last = Some(Instant::now());
        }
    }
}

/// Receives every frame, one per call; when the last one arrived.
fn receive(rx: &mut FrameReceiver, case: &Case) -> Result<Instant, BoxError> {
    let mut buf = Vec::new();
    for seq in 0..case.n {
        let len = rx.blocking_recv(&mut buf)?;
        check(case, seq, len, &buf)?;
    }
    let last = Instant::now();
    let end = rx.blocking_recv(&mut buf)?;
    check(case, case.n, end, &buf).map(|()| last)
}

/// Frame `seq` arrived whole: its length, and its sequence number in its
/// first bytes; after the last, the clean close.
fn check(case: &Case, seq: u64, len: Option<usize>, buf: &[u8]) -> Result<(), BoxError> {
    if seq == case.n {
        return match len {
            None => Ok(()),
            Some(_) => Err(format!("more than {} frames", case.n).into()),
        };
    }
    // A fixed-size compare where the frame has 8 bytes: no memcmp call.
    let numbered = match buf.first_chunk::<8>() {
        Some(first) => u64::from_le_bytes(*first) == seq,
        None => buf[..] == seq.to_le_bytes()[..buf.len()],
    };
    if len != Some(case.size) || !numbered {
        return Err(format!("frame {seq} arrived wrong ({len:?} bytes)").into());
    }
    Ok(())
}

fn peer_main() -> Result<(), BoxError> {
    let case = Case::parse(&std::env::var(CASE_ENV)?)?;
    pin(env_num("PRODUCER_CPU", 1)?)?;
    let sock = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut ctl = UnixStream::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let mut frame = vec![0xa5u8; case.size];
    let n = case.size.min(8);
    let go = |ctl: &mut UnixStream| -> Result<(), BoxError> {
        ctl.write_all(b"r")?;
        let mut byte = [0u8];
        ctl.read_exact(&mut byte)?;
        Ok(())
    };
    if case.send_async {
        runtime()?.block_on(async {
            let mut tx = FrameSender::connect_async(sock).await?;
            go(&mut ctl)?;
            if case.send_many {
                let mut batch = vec![frame.clone(); many(case.size)];
                for first in (0..case.n).step_by(batch.len()) {
                    let k = numbered(&mut batch, first, case.n, n);
                    tx.send_many(&batch[..k]).await?;
                }
                return Ok(());
            }
            for seq in 0..case.n {
                frame[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
                tx.send(&frame).await?;
            }
            Ok::<_, BoxError>(())
        })?;
    } else {
        let mut tx = FrameSender::connect(sock)?;
        go(&mut ctl)?;
        if case.send_many {
            let mut batch = vec![frame.clone(); many(case.size)];
            for first in (0..case.n).step_by(batch.len()) {
                let k = numbered(&mut batch, first, case.n, n);
                tx.blocking_send_many(&batch[..k])?;
            }
            return Ok(());
        }
        for seq in 0..case.n {
            frame[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
            tx.blocking_send(&frame)?;
        }
    }
    Ok(())
}

/// Frames per `send_many` call (`many` and `async_many` senders): 256, or
/// fewer where 256 would not fit 256 KiB (so that the frames sent come
/// from the cache, as a single reused frame does for the others, and as
/// `xcore_stream`'s do).
fn many(size: usize) -> usize {
    (256 * 1024 / size.max(1)).clamp(1, 256)
}

/// Numbers the frames of `batch` from `first` (their first `n` bytes);
/// returns how many of them are below `end`.
fn numbered(batch: &mut [Vec<u8>], first: u64, end: u64, n: usize) -> usize {
    let k = (end - first).min(batch.len() as u64) as usize;
    for (i, frame) in batch[..k].iter_mut().enumerate() {
        frame[..n].copy_from_slice(&(first + i as u64).to_le_bytes()[..n]);
    }
    k
}
