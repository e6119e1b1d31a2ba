//! The watch (`memfd_tripwire::watch`, #24.2): never a torn value against
//! a writer that rewrites a 256-byte value as fast as it can (a thread on
//! Doorbell, Poll, Userfault; an unmodified C process on Poll/Kernel);
//! `Error::Stuck` within its bound against a writer that stops mid-write
//! or scribbles the sequence, never a hang; close and death after the last
//! value; one writer; the layout and protocol checked at attach.

#![cfg(feature = "tokio")]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use memfd_tripwire::{Backend, Error, Producer, watch};

mod support;
use support::{BACKENDS, or_skip, scaled, within};

/// 256 bytes, every word the same counter: a copy with words of two
/// writes is visible.
type Status = [u64; 32];

const ROLE_ENV: &str = "WATCH_TEST_ROLE";
const READY: &str = "watch-test: sender ready";

/// 10^6 reads in release (CI's release step); a hundredth in debug builds.
/// In debug a copy costs about the writer's whole send, so most copies
/// overlap a write and are retried until the writer is off the CPU: 10^5
/// debug reads took 110 s per backend on 2 vCPUs, and up to 700 s for the
/// test in a loaded CI run. With `read_end`'s check removed, 200,000 debug
/// reads gave 17,453 torn copies, so a hundredth still catches that break.
fn reads() -> usize {
    if cfg!(debug_assertions) {
        10_000
    } else {
        1_000_000
    }
}

/// A watch of `initial` on `backend` and its Sender, connected from
/// another thread; `None` after a `skipping:` line if the backend is
/// unavailable here.
fn pair<T: bytemuck::Pod + Send>(
    name: &str,
    backend: Backend,
    initial: T,
    stuck_after: Duration,
) -> Option<(watch::blocking::Receiver<T>, watch::Sender<T>)> {
    let created = watch::channel(initial)
        .backend(backend)
        .stuck_after(stuck_after)
        .create();
    let mut rx = or_skip(name, created)?;
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let tx = std::thread::spawn(move || watch::Sender::<T>::connect(theirs));
    rx.share(ours).expect("share");
    Some((rx, tx.join().expect("thread").expect("connect")))
}

fn whole(v: &Status) -> bool {
    v.iter().all(|&w| w == v[0])
}

/// Copies the value `reads()` times while a writer rewrites it: the torn
/// copies, the times the value moved, the last value.
fn race(rx: &mut watch::blocking::Receiver<Status>) -> (usize, usize, u64) {
    let (mut torn, mut moved, mut last) = (0, 0, rx.borrow()[0]);
    for _ in 0..reads() {
        let v = *rx
            .borrow_and_update()
            .expect("a whole value within the bound");
        if !whole(&v) {
            torn += 1;
        } else if v[0] != last {
            moved += 1;
            last = v[0];
        }
    }
    (torn, moved, last)
}

/// The reader copies `reads()` times while a Sender thread rewrites the
/// value as fast as it can: every copy is whole, and the values seen move
/// (the writer really raced the reads). Fails with `read_end`'s check
/// removed (torn copies within a few thousand reads).
#[test]
fn no_torn_value_in_a_million_reads_against_a_free_running_sender() {
    if std::env::var_os(ROLE_ENV).is_some() {
        return;
    }
    for (name, backend) in BACKENDS {
        if !matches!(
            backend,
            Backend::Doorbell | Backend::Poll | Backend::Userfault | Backend::Kernel
        ) {
            continue;
        }
        let Some((mut rx, mut tx)) = pair(name, backend, [0; 32], scaled(Duration::from_secs(2)))
        else {
            continue;
        };
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    c += 1;
                    tx.send(&[c; 32]).expect("send");
                }
                c
            })
        };
        let (torn, moved, _) = race(&mut rx);
        stop.store(true, Ordering::Relaxed);
        let written = writer.join().expect("writer");
        println!(
            "{name}: {} reads, {torn} torn, {moved} distinct values of {written} written",
            reads()
        );
        assert_eq!(torn, 0, "{name}: torn values");
        // Few: a copy that overlaps a write is retried, so a reader sees
        // a new value mostly when the writer is off the CPU (2 shared
        // cores here saw 50 to 500); torn copies, when `read_end` is
        // broken, come by the thousand.
        assert!(
            moved >= 2,
            "{name}: the writer never moved during the reads ({moved})"
        );
    }
}

/// A connected producer that follows the watch's protocol by hand (the
/// test's hostile or stopped writer): the plain `Producer` of the watch.
fn fake_sender(
    name: &str,
    backend: Backend,
    stuck_after: Duration,
) -> Option<(watch::blocking::Receiver<Status>, Producer)> {
    let created = watch::channel([0u64; 32])
        .backend(backend)
        .stuck_after(stuck_after)
        .create();
    let mut rx = or_skip(name, created)?;
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let p = std::thread::spawn(move || {
        Producer::connect_with_fds(theirs, *b"MFDTWTCH", 0, |_, _| Ok(()))
    });
    rx.share(ours).expect("share");
    Some((rx, p.join().expect("thread").expect("connect").0))
}

/// The sequence word (offset 64 of the documented layout).
const SEQ: usize = 64;

/// A writer that makes the sequence odd and stops: `wait`,
/// `borrow_and_update` and the async `changed` each fail with
/// `Error::Stuck` within the bound (plus slack), naming the odd sequence;
/// never a hang (fails, by the `within` guard, with the bound removed), and
/// the value kept is the last whole one.
#[test]
fn a_writer_stuck_mid_write_is_an_error_within_the_bound() {
    if std::env::var_os(ROLE_ENV).is_some() {
        return;
    }
    let bound = Duration::from_millis(50);
    for (name, backend) in BACKENDS {
        if !matches!(backend, Backend::Doorbell | Backend::Poll) {
            continue;
        }
        let Some((mut rx, p)) = fake_sender(name, backend, bound) else {
            continue;
        };
        p.region()
            .atomic_u64(SEQ)
            .unwrap()
            .store(1, Ordering::Release);
        p.notify().unwrap();
        let (rx, started, r) = within(scaled(Duration::from_secs(10)), move || {
            let started = Instant::now();
            let r = rx.wait();
            (rx, started.elapsed(), r)
        });
        let mut rx = rx;
        let e = r.expect_err("a stuck writer");
        assert!(matches!(e, Error::Stuck { .. }), "{name}: {e}");
        assert!(e.to_string().contains("stayed odd (1"), "{name}: {e}");
        assert!(
            started >= bound && started < bound + scaled(Duration::from_secs(2)),
            "{name}: {started:?}"
        );
        let e = rx.borrow_and_update().expect_err("still stuck");
        assert!(matches!(e, Error::Stuck { .. }), "{name}: {e}");
        assert_eq!(
            *rx.borrow(),
            [0; 32],
            "{name}: the last whole value is kept"
        );
        let e = rx.into_async_in_test().expect_err("async: still stuck");
        assert!(matches!(e, Error::Stuck { .. }), "{name}: {e}");
        drop(p);
    }
}

/// Helper: the async `changed()` of a blocking Receiver, on a runtime of
/// its own, bounded.
trait AsyncChanged {
    fn into_async_in_test(self) -> Result<(), Error>;
}

impl AsyncChanged for watch::blocking::Receiver<Status> {
    fn into_async_in_test(self) -> Result<(), Error> {
        within(scaled(Duration::from_secs(10)), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move { self.into_async()?.changed().await })
        })
    }
}

/// A writer that scribbles the sequence (a new odd value on every store,
/// never a stable one): `Error::Stuck` within the bound, naming a sequence
/// that changed during every read.
#[test]
fn a_scribbled_sequence_is_an_error_within_the_bound() {
    if std::env::var_os(ROLE_ENV).is_some() {
        return;
    }
    let bound = Duration::from_millis(50);
    let Some((rx, p)) = fake_sender("poll", Backend::Poll, bound) else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let scribbler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let seq = p.region().atomic_u64(SEQ).unwrap();
            let mut s = 1u64;
            while !stop.load(Ordering::Relaxed) {
                seq.store(s, Ordering::Relaxed);
                s = s.wrapping_add(2);
            }
        })
    };
    let (started, r) = within(scaled(Duration::from_secs(10)), move || {
        let mut rx = rx;
        let started = Instant::now();
        let r = rx.wait().map(|()| *rx.borrow());
        (started.elapsed(), r)
    });
    stop.store(true, Ordering::Relaxed);
    scribbler.join().unwrap();
    let e = r.expect_err("a scribbled sequence");
    assert!(matches!(e, Error::Stuck { .. }), "{e}");
    assert!(e.to_string().contains("changed during each"), "{e}");
    assert!(
        started < bound + scaled(Duration::from_secs(2)),
        "{started:?}"
    );
}

/// A Sender dropped after its last send: the Receiver reports that value,
/// then `Error::Closed` (blocking and async), on every backend here.
#[test]
fn a_dropped_sender_is_closed_after_its_last_value() {
    if std::env::var_os(ROLE_ENV).is_some() {
        return;
    }
    for (name, backend) in BACKENDS {
        let Some((mut rx, mut tx)) = pair(name, backend, [0; 32], Duration::from_secs(1)) else {
            continue;
        };
        tx.send(&[1; 32]).unwrap();
        tx.send_modify(|v| *v = [2; 32]).unwrap();
        assert_eq!(*tx.borrow(), [2; 32]);
        drop(tx);
        let rx = within(scaled(Duration::from_secs(10)), move || {
            rx.wait().expect("the last value first");
            assert_eq!(*rx.borrow(), [2; 32], "{name}");
            let e = rx.wait().expect_err("then closed");
            assert!(matches!(e, Error::Closed), "{e}");
            rx
        });
        let e = rx.into_async_in_test().expect_err("async: closed");
        assert!(matches!(e, Error::Closed), "{name}: {e}");
    }
}

/// The waits, driven by trips, against a Sender that sends 1..=N and
/// drops: every value seen is whole and newer than the one before, the
/// last one seen is N (no write slips through), then `Error::Closed`; on
/// every backend here. Half the watches are read by the async Receiver.
#[test]
fn waits_see_every_value_up_to_the_last_then_closed() {
    if std::env::var_os(ROLE_ENV).is_some() {
        return;
    }
    const N: u64 = 2_000;
    for (name, backend) in BACKENDS {
        for use_async in [false, true] {
            let Some((rx, mut tx)) = pair(name, backend, [0; 32], scaled(Duration::from_secs(2)))
            else {
                break;
            };
            let writer = std::thread::spawn(move || {
                for i in 1..=N {
                    tx.send(&[i; 32]).expect("send");
                    // Paced, so that the waits race the sends.
                    std::thread::sleep(Duration::from_micros(20));
                }
            });
            let (seen, e) = within(scaled(Duration::from_secs(30)), move || {
                let mut seen = Vec::new();
                if !use_async {
                    let mut rx = rx;
                    loop {
                        match rx.wait() {
                            Ok(()) => seen.push(*rx.borrow()),
                            Err(e) => return (seen, e),
                        }
                    }
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let mut rx = match rx.into_async() {
                        Ok(rx) => rx,
                        Err(e) => return (seen, e),
                    };
                    loop {
                        match rx.changed().await {
                            Ok(()) => seen.push(*rx.borrow()),
                            Err(e) => return (seen, e),
                        }
                    }
                })
            });
            writer.join().expect("writer");
            let last = seen.last().copied().unwrap_or([0; 32]);
            assert!(matches!(e, Error::Closed), "{name} async={use_async}: {e}");
            assert!(seen.iter().all(whole), "{name}: a torn value");
            assert!(
                seen.windows(2).all(|w| w[0][0] < w[1][0]),
                "{name}: a value older than the one before"
            );
            assert_eq!(
                last, [N; 32],
                "{name} async={use_async}: the last value was lost"
            );
            println!(
                "{name} async={use_async}: {} changes seen for {N} sends",
                seen.len()
            );
        }
    }
}

/// A dropped Receiver: the Sender's next send is `Error::Closed`, and it
/// says so.
#[test]
fn a_dropped_receiver_closes_the_sender() {
    let Some((rx, mut tx)) = pair("doorbell", Backend::Doorbell, 0u64, Duration::from_secs(1))
    else {
        return;
    };
    tx.send(&1).unwrap();
    assert!(!tx.is_closed());
    drop(rx);
    assert!(tx.is_closed());
    assert!(matches!(tx.send(&2), Err(Error::Closed)));
}

/// One writer: a second share is refused, and the first Sender still
/// works.
#[test]
fn a_watch_is_shared_once() {
    let Some((mut rx, mut tx)) = pair("doorbell", Backend::Doorbell, 0u64, Duration::from_secs(1))
    else {
        return;
    };
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let e = rx.share(ours).expect_err("a second writer");
    assert!(e.to_string().contains("one writer"), "{e}");
    tx.send(&5).unwrap();
    rx.wait().unwrap();
    assert_eq!(*rx.borrow(), 5);
}

/// The attach checks: another `T` is a `LayoutMismatch` on both sides; a
/// plain `Producer::connect` is refused before attaching.
#[test]
fn another_type_or_a_plain_producer_is_refused() {
    let mut rx = watch::channel(0u64)
        .backend(Backend::Doorbell)
        .create()
        .unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let tx = std::thread::spawn(move || watch::Sender::<[u32; 2]>::connect(theirs));
    let e = rx.share(ours).expect_err("another type");
    assert!(e.to_string().contains("type tag"), "{e}");
    let e = tx.join().unwrap().expect_err("another type");
    assert!(matches!(e, Error::LayoutMismatch { .. }), "{e}");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let p = std::thread::spawn(move || Producer::connect(theirs));
    let e = rx.share(ours).expect_err("a plain producer");
    assert!(
        e.to_string().contains("wrong protocol") || e.to_string().contains("expected"),
        "{e}"
    );
    assert!(p.join().unwrap().is_err());
}

/// The child role: a Sender on the handshake socket (stdin) that sends
/// 7s and waits to be killed; an ordinary, empty pass in the parent.
#[test]
fn sender_child() {
    if std::env::var_os(ROLE_ENV).is_none() {
        return;
    }
    std::thread::spawn(|| {
        std::thread::sleep(scaled(Duration::from_secs(60)));
        std::process::exit(2);
    });
    let sock = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
    let mut tx = watch::Sender::<Status>::connect(UnixStream::from(sock)).expect("child: connect");
    tx.send(&[7; 32]).expect("child: send");
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{READY}").unwrap();
    out.flush().unwrap();
    drop(out);
    loop {
        std::thread::park();
    }
}

/// A Sender whose process is SIGKILLed: the Receiver reports its value,
/// then `Error::PeerDied`.
#[test]
fn a_killed_sender_is_peer_died_after_its_last_value() {
    if std::env::var_os(ROLE_ENV).is_some() {
        return;
    }
    for (name, backend) in BACKENDS {
        let created = watch::channel([0u64; 32]).backend(backend).create();
        let Some(mut rx) = or_skip(name, created) else {
            continue;
        };
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut child: Child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "sender_child", "--nocapture"])
            .env(ROLE_ENV, "sender")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        rx.share(ours).expect("share");
        let mut out = BufReader::new(child.stdout.as_mut().unwrap());
        let mut line = String::new();
        while line.trim_end() != READY {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "{name}: the child ended"
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let r = within(scaled(Duration::from_secs(10)), move || {
            let first = rx.wait().map(|()| *rx.borrow());
            (first, rx.wait())
        });
        assert_eq!(r.0.expect("the value first"), [7; 32], "{name}");
        assert!(matches!(r.1, Err(Error::PeerDied)), "{name}: {:?}", r.1);
    }
}

/// `tests/unmodified/writer.c`, built with `cc`; `None` without one.
fn c_writer() -> Option<std::path::PathBuf> {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/unmodified/writer.c");
    let out = std::env::temp_dir().join(format!(
        "memfd-tripwire-watch-writer-{}",
        std::process::id()
    ));
    let built = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(src)
        .status();
    match built {
        Ok(s) if s.success() => Some(out),
        other => {
            support::say_skipping(&format!("no C writer: cc gave {other:?}"));
            None
        }
    }
}

/// Runs the C writer's `watch` mode (`count` values, `gap` empty loops
/// between two) on `rx`'s memory.
fn c_watch_writer(
    path: &std::path::Path,
    rx: &watch::blocking::Receiver<Status>,
    count: u64,
    gap: u64,
) -> Child {
    let fd = rx.producer_fd().unwrap().try_clone_to_owned().unwrap();
    Command::new(path)
        .args([
            "watch",
            &rx.len().to_string(),
            &count.to_string(),
            &gap.to_string(),
        ])
        .stdin(Stdio::from(fd))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// An unmodified writer, a C process that knows only the documented
/// layout (Backend::Unmodified: Kernel, else Poll): its one value trips
/// the wire and is read whole; then it rewrites the value as fast as it
/// can while the reader copies it `reads()` times: no copy torn.
#[test]
fn an_unmodified_c_writer_is_seen_and_never_torn() {
    if std::env::var_os(ROLE_ENV).is_some() {
        return;
    }
    let Some(path) = c_writer() else {
        return;
    };
    let mut rx = watch::channel([0u64; 32])
        .backend(Backend::Unmodified)
        .stuck_after(scaled(Duration::from_secs(2)))
        .create()
        .unwrap();
    let mut one = c_watch_writer(&path, &rx, 1, 0);
    assert!(one.wait().unwrap().success());
    assert!(
        rx.wait_timeout(scaled(Duration::from_secs(5))).unwrap(),
        "no trip"
    );
    assert_eq!(*rx.borrow(), [1; 32]);

    // Runs until killed: the reader copies `reads()` times meanwhile. A
    // writer that leaves no gap longer than a copy between two writes
    // starves the reader (every copy overlaps a write: `Error::Stuck`
    // after the bound, never a torn value); the unoptimised copy of a debug
    // build (~2 us) needs a gap of that order.
    let gap = if cfg!(debug_assertions) { 2_000 } else { 0 };
    let mut many = c_watch_writer(&path, &rx, u64::MAX / 4, gap);
    let (torn, moved, last) = race(&mut rx);
    many.kill().unwrap();
    many.wait().unwrap();
    let _ = std::fs::remove_file(&path);
    println!(
        "{:?}: {} reads, {torn} torn, {moved} distinct values (up to {last})",
        rx.backend(),
        reads()
    );
    assert!(
        moved >= 2,
        "the writer never moved during the reads ({moved})"
    );
    assert_eq!(torn, 0);
}
