//! Byte frames between two processes (`ring::frames`, #24.1), on every
//! backend available on the host: 10^6 frames of seeded random sizes
//! 0..=capacity/2 arrive whole and in order (blocking, and async to async);
//! a killed Sender is `PeerDied` after its last frame is received; a
//! dropped Receiver makes the Sender's next call `Closed`. The Sender is a
//! child process (this test binary, re-run with `FRAMES_TEST_ROLE` set; the
//! handshake socket is its stdin).

#![cfg(feature = "tokio")]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use memfd_tripwire::ring::frames::{FrameReceiver, FrameSender, SharedFrames};
use memfd_tripwire::{Backend, Error};

mod support;
use support::{BACKENDS, or_skip, scaled, within};

const ROLE_ENV: &str = "FRAMES_TEST_ROLE";
const READY: &str = "frames-test: sender ready";
const CAPACITY: usize = 4096;
const SEED: u64 = 0x5eed_f4a3_e5b1_7e24;

/// 10^6 frames in release; 100,000 in debug builds, where the copies cost
/// ~20x (20,000 took ~1 s per backend here; `FRAMES_TEST_COUNT` sets any
/// count: the full 10^6 in debug takes about a minute per backend).
fn count() -> u64 {
    if let Some(n) = std::env::var("FRAMES_TEST_COUNT")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return n;
    }
    if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    }
}

/// splitmix64: the frame sizes, the same in both processes.
struct Sizes(u64);

impl Sizes {
    fn next(&mut self, max: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % (max as u64 + 1)) as usize
    }
}

/// Frame `seq`: its sequence number (as much of it as fits), then a
/// pattern of `seq` and the position.
fn content(seq: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend((0..len).map(|j| (seq as u8) ^ (j as u8).wrapping_mul(31)));
    let n = len.min(8);
    out[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

/// The child: a Sender on stdin, sending as `FRAMES_TEST_ROLE` says.
fn run_sender_child(role: &str) -> ! {
    std::thread::spawn(|| {
        std::thread::sleep(scaled(Duration::from_secs(300)));
        eprintln!("child: watchdog expired");
        std::process::exit(2);
    });
    let sock = UnixStream::from(
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .expect("child: dup stdin"),
    );
    let n: u64 = std::env::var("COUNT").map_or(0, |c| c.parse().expect("COUNT"));
    let mut sizes = Sizes(SEED);
    let mut buf = Vec::new();
    match role {
        "stream" => {
            let mut tx = FrameSender::connect(sock).expect("child: connect");
            let max = tx.capacity() / 2;
            for seq in 0..n {
                content(seq, sizes.next(max), &mut buf);
                if seq % 2 == 0 {
                    tx.blocking_send(&buf).expect("child: send");
                } else {
                    // In place, in two writes.
                    let mut grant = tx.blocking_reserve(buf.len()).expect("child: reserve");
                    let half = buf.len() / 2;
                    grant.write(half, &buf[half..]).expect("child: write");
                    grant.write(0, &buf[..half]).expect("child: write");
                    grant.commit().expect("child: commit");
                }
            }
            drop(tx); // a clean close (`exit` drops nothing)
            std::process::exit(0);
        }
        "batched" => {
            // Batches of 1..=64 frames, each sent with `blocking_send_many`.
            let mut tx = FrameSender::connect(sock).expect("child: connect");
            let max = tx.capacity() / 2;
            let mut batch: Vec<Vec<u8>> = Vec::new();
            let mut seq = 0;
            while seq < n {
                let k = (seq % 64 + 1).min(n - seq) as usize;
                batch.resize_with(k, Vec::new);
                for frame in &mut batch {
                    content(seq, sizes.next(max), frame);
                    seq += 1;
                }
                tx.blocking_send_many(&batch).expect("child: send_many");
            }
            drop(tx); // a clean close (`exit` drops nothing)
            std::process::exit(0);
        }
        "stream_async" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut tx = FrameSender::connect_async(sock)
                    .await
                    .expect("child: connect");
                let max = tx.capacity() / 2;
                for seq in 0..n {
                    content(seq, sizes.next(max), &mut buf);
                    tx.send(&buf).await.expect("child: send");
                }
                drop(tx); // a clean close (`exit` drops nothing)
            });
            std::process::exit(0);
        }
        "die" => {
            let mut tx = FrameSender::connect(sock).expect("child: connect");
            for seq in 0..n {
                content(seq, seq as usize * 3, &mut buf);
                tx.blocking_send(&buf).expect("child: send");
            }
            ready();
            loop {
                std::thread::park();
            }
        }
        "until_closed" => {
            let mut tx = FrameSender::connect(sock).expect("child: connect");
            ready();
            for seq in 0.. {
                content(seq, 100, &mut buf);
                match tx.blocking_send(&buf) {
                    Ok(()) => {}
                    Err(Error::Closed) => std::process::exit(0),
                    Err(e) => panic!("child: {e}"),
                }
            }
            unreachable!()
        }
        other => panic!("child: role {other}"),
    }
}

fn ready() {
    // On a line of its own: the test harness writes to stdout too.
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{READY}").expect("child: ready");
    out.flush().expect("child: ready");
}

/// In the parent only (the child's pass of a test is empty): `f(name,
/// receiver, child)` on every backend, each a Receiver with a Sender
/// child in `role` sending `n` frames (after a `skipping:` line for a
/// backend unavailable here).
fn on_each_backend(role: &str, n: u64, mut f: impl FnMut(&'static str, FrameReceiver, Child)) {
    if std::env::var_os(ROLE_ENV).is_some() {
        return;
    }
    for (name, backend) in BACKENDS {
        if let Some((rx, child)) = with_child(name, backend, role, n) {
            f(name, rx, child);
        }
    }
}

/// A Receiver on `backend` and a Sender child in `role` sending `n`
/// frames; `None` after a `skipping:` line if the backend is unavailable.
fn with_child(name: &str, backend: Backend, role: &str, n: u64) -> Option<(FrameReceiver, Child)> {
    let created = SharedFrames::builder(CAPACITY).backend(backend).create();
    let mut rx = or_skip(name, created)?;
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", "sender_child", "--nocapture"])
        .env(ROLE_ENV, role)
        .env("COUNT", n.to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the sender");
    rx.share(ours).expect("share");
    Some((rx, child))
}

fn wait_ready(name: &str, child: &mut Child) {
    let mut out = BufReader::new(child.stdout.as_mut().expect("stdout"));
    let mut line = String::new();
    while line.trim_end() != READY {
        line.clear();
        let n = out.read_line(&mut line).expect("the sender's stdout");
        assert!(n > 0, "{name}: the sender child ended before it was ready");
    }
}

/// Checks frame `seq` against what the Sender made of it.
fn check(name: &str, seq: u64, sizes: &mut Sizes, got: &[u8], want: &mut Vec<u8>) {
    content(seq, sizes.next(CAPACITY / 2), want);
    assert_eq!(got.len(), want.len(), "{name}: frame {seq}'s length");
    assert!(got == &want[..], "{name}: frame {seq}'s bytes differ");
}

/// The child role; an ordinary, empty pass in the parent.
#[test]
fn sender_child() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        run_sender_child(&role);
    }
}

/// `count()` frames of seeded random sizes 0..=capacity/2 (half sent in
/// place through a grant, in two writes out of order) arrive whole and in
/// order, then the clean close (`Ok(None)`), on every backend. Fails with
/// the skip marker's placement or the Receiver's skip step broken.
#[test]
fn frames_of_random_sizes_arrive_whole_and_in_order() {
    let n = count();
    on_each_backend("stream", n, |name, mut rx, mut child| {
        let start = Instant::now();
        let (mut got, mut want, mut sizes) = (Vec::new(), Vec::new(), Sizes(SEED));
        for seq in 0..n {
            match rx.blocking_recv(&mut got) {
                Ok(Some(len)) => assert_eq!(len, got.len()),
                other => panic!("{name}: frame {seq}: {other:?}"),
            }
            check(name, seq, &mut sizes, &got, &mut want);
        }
        assert_eq!(
            rx.blocking_recv(&mut got).unwrap(),
            None,
            "{name}: the close"
        );
        assert!(child.wait().unwrap().success(), "{name}: the child");
        println!("{name}: {n} frames in {:?}", start.elapsed());
    });
}

/// The same with both batched calls: the child's `blocking_send_many` of
/// 1..=64 frames at a time, this side's `blocking_recv_many` with limits
/// of 1..=100, a quarter of the count. Fails with the batch walk's skip
/// step, its copy bounds or the sender's batched placement broken.
#[test]
fn batched_frames_arrive_whole_and_in_order() {
    use memfd_tripwire::ring::frames::FrameBatch;
    let n = count() / 4;
    on_each_backend("batched", n, |name, mut rx, mut child| {
        let (mut want, mut sizes, mut batch) = (Vec::new(), Sizes(SEED), FrameBatch::new());
        let mut seq = 0;
        while seq < n {
            batch.clear();
            let limit = (seq % 100 + 1) as usize;
            match rx.blocking_recv_many(&mut batch, limit) {
                Ok(k) => assert!(
                    k >= 1 && k <= limit && k == batch.len(),
                    "{name}: {k} of {limit}"
                ),
                other => panic!("{name}: frame {seq}: {other:?}"),
            }
            for got in &batch {
                check(name, seq, &mut sizes, got, &mut want);
                seq += 1;
            }
        }
        batch.clear();
        assert_eq!(
            rx.blocking_recv_many(&mut batch, 10).unwrap(),
            0,
            "{name}: the close"
        );
        assert!(child.wait().unwrap().success(), "{name}: the child");
    });
}

/// The same, async to async (the child's `send().await`, this side's
/// `recv().await` on a current-thread runtime), a tenth of the count.
#[test]
fn async_frames_arrive_whole_and_in_order() {
    let n = count() / 10;
    on_each_backend("stream_async", n, |name, mut rx, mut child| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut got, mut want, mut sizes) = (Vec::new(), Vec::new(), Sizes(SEED));
            for seq in 0..n {
                match rx.recv(&mut got).await {
                    Ok(Some(_)) => {}
                    other => panic!("{name}: frame {seq}: {other:?}"),
                }
                check(name, seq, &mut sizes, &got, &mut want);
            }
            assert_eq!(rx.recv(&mut got).await.unwrap(), None, "{name}: the close");
        });
        assert!(child.wait().unwrap().success(), "{name}: the child");
    });
}

/// A Sender whose process is SIGKILLed after 30 frames (1,640 bytes of
/// the ring's 4,096: it never waits for space): the Receiver gets all 30,
/// then `Error::PeerDied` (not `Ok(None)`, not a hang).
#[test]
fn a_killed_sender_is_peer_died_after_its_last_frame() {
    on_each_backend("die", 30, |name, mut rx, mut child| {
        wait_ready(name, &mut child);
        child.kill().unwrap();
        child.wait().unwrap();
        within(scaled(Duration::from_secs(10)), move || {
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for seq in 0..30u64 {
                assert_eq!(rx.blocking_recv(&mut got).unwrap(), Some(seq as usize * 3));
                content(seq, seq as usize * 3, &mut want);
                assert_eq!(got, want, "{name}: frame {seq}");
            }
            let end = rx.blocking_recv(&mut got);
            assert!(matches!(end, Err(Error::PeerDied)), "{name}: {end:?}");
        });
    });
}

/// A Receiver dropped (after a few frames, with the child's Sender
/// blocked on a full ring or sending): the child's next call fails with
/// `Error::Closed`, and it exits 0 on it.
#[test]
fn a_dropped_receiver_is_closed_at_the_senders_next_call() {
    on_each_backend("until_closed", 0, |name, mut rx, mut child| {
        wait_ready(name, &mut child);
        let mut got = Vec::new();
        for _ in 0..10 {
            assert_eq!(rx.blocking_recv(&mut got).unwrap(), Some(100));
        }
        drop(rx);
        let status = within(scaled(Duration::from_secs(10)), move || {
            child.wait().unwrap()
        });
        assert!(status.success(), "{name}: the sender child: {status}");
    });
}
