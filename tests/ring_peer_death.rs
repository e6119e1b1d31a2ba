//! A ring whose Receiver is SIGKILLed: its Sender learns of the death
//! (`Error::PeerDied`, `TrySendError::Closed`) within a coarse bound, never
//! hangs, blocking or async, whether it was already waiting for space or
//! sends into a ring with room left (then at its next call once the
//! hang-up thread saw the death, not a ring's worth later). The Receiver is a child process (this test binary, re-run with
//! `RING_PEER_DEATH_ROLE` set; the handshake socket is its stdin), on every
//! backend available on the host.

#![cfg(feature = "tokio")]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use memfd_tripwire::ring::{Sender, SharedRing, TrySendError};
use memfd_tripwire::{Backend, Error};

mod support;
use support::{BACKENDS, scaled};

const ROLE_ENV: &str = "RING_PEER_DEATH_ROLE";
const CAPACITY: usize = 8;
/// What the child prints once it shared the ring.
const READY: &str = "ring-peer-death: receiver ready";

/// The coarse bound on learning of the death: the Sender polls the
/// handshake socket's hang-up, so it takes a wake-up, not seconds.
fn bound() -> Duration {
    scaled(Duration::from_secs(10))
}

/// The child: a Receiver on the backend named in `BACKEND` that shares
/// the ring over stdin, says so on stdout, and waits to be killed.
fn run_receiver_child() -> ! {
    let backend = BACKENDS
        .iter()
        .find(|(name, _)| std::env::var("BACKEND").as_deref() == Ok(*name))
        .map(|&(_, b)| b)
        .expect("child: BACKEND");
    // No orphan outlives its test by much, whatever happens to the parent.
    std::thread::spawn(|| {
        std::thread::sleep(scaled(Duration::from_secs(120)));
        eprintln!("child: watchdog expired");
        std::process::exit(2);
    });
    let sock = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("child: dup stdin");
    let capacity = std::env::var("CAPACITY").map_or(CAPACITY, |c| c.parse().expect("CAPACITY"));
    let mut rx = SharedRing::<u64>::builder(capacity)
        .backend(backend)
        .create()
        .expect("child: ring");
    rx.share(UnixStream::from(sock)).expect("child: share");
    // On a line of its own: the test harness writes to stdout too.
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{READY}").expect("child: ready");
    out.flush().expect("child: ready");
    drop(out);
    loop {
        std::thread::park();
    }
}

/// A Receiver child on `backend` and a Sender connected to it; `None`
/// (after a `skipping:` line) if the backend is unavailable here and not
/// required.
fn sender_to_child(name: &str, backend: Backend) -> Option<(Sender<u64>, Child)> {
    sender_to_child_with(name, backend, CAPACITY)
}

/// [`sender_to_child`] with a ring of `capacity` slots.
fn sender_to_child_with(
    name: &str,
    backend: Backend,
    capacity: usize,
) -> Option<(Sender<u64>, Child)> {
    // Ask here first, so that an unavailable backend is a skip, not a
    // child's failure.
    let probe = SharedRing::<u64>::builder(capacity)
        .backend(backend)
        .create();
    drop(support::or_skip(name, probe)?);
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", "receiver_child", "--nocapture"])
        .env(ROLE_ENV, "receiver")
        .env("BACKEND", name)
        .env("CAPACITY", capacity.to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the receiver");
    let tx = Sender::<u64>::connect(ours).expect("connect");
    // Kept open in `child` (a write to a closed pipe would fail the child).
    let mut out = BufReader::new(child.stdout.as_mut().expect("stdout"));
    let mut line = String::new();
    while line.trim_end() != READY {
        line.clear();
        let n = out.read_line(&mut line).expect("the receiver's stdout");
        assert!(
            n > 0,
            "{name}: the receiver child ended before it shared the ring"
        );
    }
    Some((tx, child))
}

fn kill(mut child: Child) {
    child.kill().expect("SIGKILL the receiver");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "{status}");
}

/// Runs `f` on a thread; its result, or a panic if it overruns `bound()`.
fn within_bound<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    finished
        .recv_timeout(bound())
        .unwrap_or_else(|e| panic!("{what}: no answer within {:?} ({e})", bound()))
}

/// The child role; an ordinary, empty pass in the parent.
#[test]
fn receiver_child() {
    if std::env::var_os(ROLE_ENV).is_some() {
        run_receiver_child();
    }
}

/// A Sender blocked on a full ring when its Receiver is SIGKILLed returns
/// `PeerDied`; so do the calls after it, and `try_send` says `Closed`.
#[test]
fn a_sender_waiting_for_space_learns_of_a_killed_receiver() {
    if std::env::var_os(ROLE_ENV).is_some() {
        return;
    }
    for (name, backend) in BACKENDS {
        let Some((mut tx, child)) = sender_to_child(name, backend) else {
            continue;
        };
        for i in 0..CAPACITY as u64 {
            tx.try_send(i).expect("room in the ring");
        }
        assert!(tx.is_full());
        let waiting = std::thread::spawn(move || {
            let r = tx.blocking_send(99).map_err(|e| e.into_error());
            (tx, r)
        });
        kill(child);
        let (mut tx, r) = within_bound(name, move || waiting.join().expect("sender"));
        assert!(matches!(r, Err(Error::PeerDied)), "{name}: {r:?}");
        assert!(tx.is_closed(), "{name}");
        assert!(
            matches!(tx.try_send(1), Err(TrySendError::Closed(1))),
            "{name}"
        );
        let r = within_bound(name, move || {
            tx.blocking_send(2).map_err(|e| e.into_error())
        });
        assert!(matches!(r, Err(Error::PeerDied)), "{name}: {r:?}");
        println!("{name}: the waiting sender got PeerDied");
    }
}

/// An async Sender with room in the ring when its Receiver is SIGKILLed:
/// at most a ring's worth of `send`s succeed, then `PeerDied`, each within
/// the bound.
#[test]
fn an_async_sender_learns_of_a_killed_receiver_within_a_ring() {
    if std::env::var_os(ROLE_ENV).is_some() {
        return;
    }
    for (name, backend) in BACKENDS {
        let Some((mut tx, child)) = sender_to_child(name, backend) else {
            continue;
        };
        tx.try_send(0).expect("room in the ring");
        kill(child);
        let sent = within_bound(name, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut sent = 1;
                loop {
                    match tx.send(sent as u64).await {
                        Ok(()) => sent += 1,
                        Err(e) => {
                            let e = e.into_error();
                            assert!(matches!(e, Error::PeerDied), "{name}: {e:?}");
                            return sent;
                        }
                    }
                    assert!(sent <= CAPACITY, "{name}: {sent} sent to a dead receiver");
                }
            })
        });
        println!("{name}: {sent} sent before PeerDied");
    }
}

/// A Sender with plenty of room when its Receiver is SIGKILLed learns of it
/// at its next call once the hang-up thread saw the death: `blocking_send`
/// 1 ms apart, at most a handful succeed, not the 1,023 the free slots
/// would take (before the hang-up flag, every send succeeded until the
/// ring was full); `try_send` then says `Closed`.
#[test]
fn a_sender_with_room_learns_of_a_killed_receiver_at_its_next_call() {
    if std::env::var_os(ROLE_ENV).is_some() {
        return;
    }
    const ROOMY: usize = 1024;
    for (name, backend) in BACKENDS {
        let Some((mut tx, child)) = sender_to_child_with(name, backend, ROOMY) else {
            continue;
        };
        tx.try_send(0).expect("room in the ring");
        kill(child);
        let (sent, r, mut tx) = within_bound(name, move || {
            let mut sent = 0;
            loop {
                match tx.blocking_send(sent) {
                    Ok(()) => sent += 1,
                    Err(e) => return (sent, e.into_error(), tx),
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        assert!(matches!(r, Error::PeerDied), "{name}: {r:?}");
        assert!(
            sent <= 100,
            "{name}: {sent} sends (1 ms apart) succeeded after the Receiver was killed"
        );
        assert!(
            matches!(tx.try_send(1), Err(TrySendError::Closed(1))),
            "{name}"
        );
        println!("{name}: {sent} sent after the kill, then PeerDied");
    }
}
