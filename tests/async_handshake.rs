//! The async handshakes (#23 item 2): `Tripwire::share().await`,
//! `Producer::connect_async`, the ring's `Receiver::share_async` and
//! `Sender::connect_async` never block the runtime's thread, honour the
//! 10 s deadline, and leave nothing half-done when their future is dropped.
//!
//! The peer is another process (this binary, re-run as the `peer` test with
//! `ASYNC_HANDSHAKE_PEER` naming its role and the socket as its stdin), and
//! it answers 200 ms late; the side under test runs on a current-thread
//! runtime next to a ticker task that sleeps 1 ms at a time: had the
//! handshake blocked the thread, the ticker could not have run. On the host
//! backends (Doorbell, Userfault, Poll); a backend this machine lacks is
//! skipped (`tests/support/skip.rs`).

use std::future::Future;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memfd_tripwire::ring::{Sender, SharedRing};
use memfd_tripwire::{Backend, Error, Producer, Tripwire, blocking};

mod support;

/// The backends these tests run on, by their `TRIPWIRE_REQUIRE` names.
const HOST: [(&str, Backend); 3] = [
    ("doorbell", Backend::Doorbell),
    ("userfault", Backend::Userfault),
    ("poll", Backend::Poll),
];

/// How late the peer answers.
const LATE: Duration = Duration::from_millis(200);
/// Ticks a 1 ms ticker gets at the very least in [`LATE`] on a thread that
/// is never blocked (coarse: ~100-200 on an idle host, fewer under load;
/// a blocked thread gets none).
const MIN_TICKS: u64 = 10;
/// The value the producing side writes.
const VALUE: u64 = 0xC0FFEE;

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Runs `fut` next to a task that sleeps 1 ms and counts, on the current
/// (current-thread) runtime: `fut`'s output, the ticks while it ran, and
/// how long it took.
async fn ticking<F: Future>(fut: F) -> (F::Output, u64, Duration) {
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    // Let the ticker start.
    tokio::task::yield_now().await;
    let start = Instant::now();
    let before = ticks.load(Ordering::Relaxed);
    let out = fut.await;
    let took = start.elapsed();
    let ticked = ticks.load(Ordering::Relaxed) - before;
    ticker.abort();
    (out, ticked, took)
}

/// Asserts that a handshake that waited [`LATE`] for its peer let the
/// ticker run meanwhile.
#[track_caller]
fn assert_never_blocked(what: &str, ticks: u64, took: Duration) {
    assert!(
        took >= LATE / 2,
        "{what}: took {took:?}: the peer answers {LATE:?} late, so the handshake did not wait"
    );
    assert!(
        ticks >= MIN_TICKS,
        "{what}: the ticker ran {ticks} times in {took:?}: the runtime's thread was blocked"
    );
}

/// Starts this binary as the peer `role`, its stdin the socket `theirs`.
fn spawn_peer(role: &str, theirs: UnixStream) -> Child {
    Command::new(std::env::current_exe().expect("current_exe"))
        .args(["peer", "--exact", "--nocapture", "--test-threads=1"])
        .env("ASYNC_HANDSHAKE_PEER", role)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the peer")
}

/// Waits for the peer and checks that its role passed.
fn reap(role: &str, child: Child) {
    let out = child.wait_with_output().expect("waiting for the peer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "the peer {role} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `true` if `backend` works here (else a `skipping:` line).
fn available(name: &str, backend: Backend) -> bool {
    support::or_skip(
        name,
        blocking::Tripwire::builder(4096).backend(backend).create(),
    )
    .is_some()
}

fn backend_named(name: &str) -> Backend {
    HOST.iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, b)| b)
        .unwrap_or_else(|| panic!("unknown backend {name}"))
}

/// The peer's side, in its own process: answers [`LATE`], with the async
/// handshakes on a runtime of its own (so both sides are async). Passes at
/// once when not run as a peer.
#[test]
fn peer() {
    let Ok(role) = std::env::var("ASYNC_HANDSHAKE_PEER") else {
        return;
    };
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("stdin");
    let sock = UnixStream::from(stdin);
    std::thread::sleep(LATE);
    let (what, backend) = role.split_once(':').unwrap_or((role.as_str(), ""));
    current_thread().block_on(async move {
        match what {
            "producer" => {
                let producer = Producer::connect_async(sock).await.expect("connect_async");
                producer.region().write(0, &VALUE).expect("write");
                producer.notify().expect("notify");
                // Stay until the consumer has seen it and left.
                until_closed(&producer).await;
            }
            "consumer" => {
                let tw = blocking::Tripwire::builder(4096)
                    .backend(backend_named(backend))
                    .create()
                    .expect("create");
                let mut tw = Tripwire::new(tw).expect("register");
                tw.share(sock).await.expect("share");
                within_10_s("a trip", tw.changed()).await.expect("changed");
                assert_eq!(tw.region().read::<u64>(0).expect("read"), VALUE);
            }
            "sender" => {
                let mut tx = Sender::<u64>::connect_async(sock)
                    .await
                    .expect("connect_async");
                tx.send(VALUE).await.expect("send");
            }
            "receiver" => {
                let mut rx = SharedRing::<u64>::builder(64)
                    .backend(backend_named(backend))
                    .create()
                    .expect("create");
                rx.share_async(sock).await.expect("share_async");
                let got = within_10_s("a message", rx.recv()).await.expect("recv");
                assert_eq!(got, Some(VALUE));
            }
            other => panic!("unknown peer role {other}"),
        }
    });
}

/// For each host backend this machine has: starts the peer `role` (with
/// `:<backend>` appended when the peer creates the tripwire or ring), runs
/// `body` with our end of the socket on a current-thread runtime, then
/// checks that the peer's role passed.
fn with_late_peer<F: Future<Output = ()>>(
    role: &str,
    peer_creates: bool,
    mut body: impl FnMut(&'static str, Backend, UnixStream) -> F,
) {
    for (name, backend) in HOST {
        if !available(name, backend) {
            continue;
        }
        let role = match peer_creates {
            true => format!("{role}:{name}"),
            false => role.to_owned(),
        };
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let child = spawn_peer(&role, theirs);
        current_thread().block_on(body(name, backend, ours));
        reap(&role, child);
    }
}

/// `fut`'s output, or a failure saying `what` did not come within 10 s.
async fn within_10_s<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} within 10 s"))
}

/// Waits (at most 20 s) until the consumer hangs up.
async fn until_closed(producer: &Producer) {
    let until = Instant::now() + Duration::from_secs(20);
    while !producer.is_closed() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn async_share_waits_for_a_late_producer_without_blocking_the_runtime() {
    with_late_peer("producer", false, |name, backend, ours| async move {
        let tw = blocking::Tripwire::builder(4096)
            .backend(backend)
            .create()
            .expect("create");
        let mut tw = Tripwire::new(tw).expect("register");
        let (shared, ticks, took) = ticking(tw.share(ours)).await;
        shared.unwrap_or_else(|e| panic!("{name}: share: {e}"));
        assert_never_blocked(name, ticks, took);
        within_10_s("a trip", tw.changed()).await.expect("changed");
        assert_eq!(tw.region().read::<u64>(0).expect("read"), VALUE);
    });
}

#[test]
fn async_connect_waits_for_a_late_consumer_without_blocking_the_runtime() {
    with_late_peer("consumer", true, |name, _, ours| async move {
        let (connected, ticks, took) = ticking(Producer::connect_async(ours)).await;
        let producer = connected.unwrap_or_else(|e| panic!("{name}: connect_async: {e}"));
        assert_never_blocked(name, ticks, took);
        producer.region().write(0, &VALUE).expect("write");
        producer.notify().expect("notify");
        // The consumer checks the value, then leaves.
        until_closed(&producer).await;
    });
}

#[test]
fn ring_share_async_waits_for_a_late_sender_without_blocking_the_runtime() {
    with_late_peer("sender", false, |name, backend, ours| async move {
        let mut rx = SharedRing::<u64>::builder(64)
            .backend(backend)
            .create()
            .expect("create");
        let (shared, ticks, took) = ticking(rx.share_async(ours)).await;
        shared.unwrap_or_else(|e| panic!("{name}: share_async: {e}"));
        assert_never_blocked(name, ticks, took);
        let got = within_10_s("a message", rx.recv()).await.expect("recv");
        assert_eq!(got, Some(VALUE), "{name}");
    });
}

#[test]
fn ring_connect_async_waits_for_a_late_receiver_without_blocking_the_runtime() {
    with_late_peer("receiver", true, |name, _, ours| async move {
        let (connected, ticks, took) = ticking(Sender::<u64>::connect_async(ours)).await;
        let mut tx = connected.unwrap_or_else(|e| panic!("{name}: connect_async: {e}"));
        assert_never_blocked(name, ticks, took);
        tx.send(VALUE).await.expect("send");
    });
}

// ---------------------------------------------------------------------------
// Cancellation: a dropped handshake closes its socket and leaves the
// tripwire or ring as it was, to be shared again.

/// Reads what the silent peer `theirs` got until the other end closed:
/// `None` if it stayed open for 5 s.
fn read_until_closed(mut theirs: UnixStream) -> Option<Vec<u8>> {
    theirs
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("SO_RCVTIMEO");
    let mut got = Vec::new();
    theirs.read_to_end(&mut got).ok().map(|_| got)
}

/// How long a cancelled handshake is given before it is dropped.
const CANCEL_AFTER: Duration = Duration::from_millis(100);

#[test]
fn a_dropped_async_share_leaves_the_tripwire_shareable() {
    for (name, backend) in HOST {
        if !available(name, backend) {
            continue;
        }
        current_thread().block_on(async {
            let tw = blocking::Tripwire::builder(4096)
                .backend(backend)
                .create()
                .expect("create");
            let mut tw = Tripwire::new(tw).expect("register");
            // A producer that takes the offer and never answers.
            let (ours, silent) = UnixStream::pair().expect("socketpair");
            let start = Instant::now();
            let cancelled = tokio::time::timeout(CANCEL_AFTER, tw.share(ours)).await;
            assert!(
                cancelled.is_err(),
                "{name}: the share ended on its own: {cancelled:?}"
            );
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{name}: dropping took {:?}",
                start.elapsed()
            );
            let got = read_until_closed(silent)
                .unwrap_or_else(|| panic!("{name}: the dropped share kept its socket open"));
            assert_eq!(&got[..8], b"MFDTWIRE", "{name}: the offer went first");
            // Shared again, with a producer that answers: it works.
            let (ours, theirs) = UnixStream::pair().expect("socketpair");
            let producer = std::thread::spawn(move || Producer::connect(theirs));
            tw.share(ours)
                .await
                .unwrap_or_else(|e| panic!("{name}: share again: {e}"));
            let producer = producer.join().expect("thread").expect("connect");
            producer.region().write(0, &VALUE).expect("write");
            producer.notify().expect("notify");
            within_10_s("a trip", tw.changed()).await.expect("changed");
            assert_eq!(tw.region().read::<u64>(0).expect("read"), VALUE);
        });
    }
}

#[test]
fn a_dropped_share_async_leaves_the_ring_unshared() {
    for (name, backend) in HOST {
        if !available(name, backend) {
            continue;
        }
        current_thread().block_on(async {
            let mut rx = SharedRing::<u64>::builder(64)
                .backend(backend)
                .create()
                .expect("create");
            let (ours, silent) = UnixStream::pair().expect("socketpair");
            let cancelled = tokio::time::timeout(CANCEL_AFTER, rx.share_async(ours)).await;
            assert!(cancelled.is_err(), "{name}: ended on its own");
            read_until_closed(silent)
                .unwrap_or_else(|| panic!("{name}: the dropped share kept its socket open"));
            let (ours, theirs) = UnixStream::pair().expect("socketpair");
            let tx = std::thread::spawn(move || Sender::<u64>::connect(theirs));
            rx.share_async(ours)
                .await
                .unwrap_or_else(|e| panic!("{name}: share again: {e}"));
            let mut tx = tx.join().expect("thread").expect("connect");
            tx.blocking_send(VALUE).expect("send");
            let got = within_10_s("a message", rx.recv()).await.expect("recv");
            assert_eq!(got, Some(VALUE));
        });
    }
}

#[test]
fn a_dropped_async_connect_closes_its_socket() {
    current_thread().block_on(async {
        // A consumer that has not offered anything yet.
        let (silent, theirs) = UnixStream::pair().expect("socketpair");
        let cancelled = tokio::time::timeout(CANCEL_AFTER, Producer::connect_async(theirs)).await;
        assert!(cancelled.is_err(), "ended on its own: {cancelled:?}");
        // The consumer learns of it at once: its share fails.
        let mut tw = blocking::Tripwire::builder(4096)
            .backend(Backend::Poll)
            .create()
            .expect("create");
        let start = Instant::now();
        let err = tw.share(silent).expect_err("a share with a peer that left");
        assert!(
            matches!(&err, Error::Handshake { reason } if reason.contains("hung up")),
            "{err}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        // The same for a ring's Sender.
        let (silent, theirs) = UnixStream::pair().expect("socketpair");
        let cancelled =
            tokio::time::timeout(CANCEL_AFTER, Sender::<u64>::connect_async(theirs)).await;
        assert!(cancelled.is_err(), "ended on its own");
        assert_eq!(read_until_closed(silent), Some(Vec::new()));
    });
}

// ---------------------------------------------------------------------------
// The deadline, and Send.

#[test]
fn an_async_share_gives_up_after_10_s_of_silence() {
    current_thread().block_on(async {
        let tw = blocking::Tripwire::builder(4096)
            .backend(Backend::Poll)
            .create()
            .expect("create");
        let mut tw = Tripwire::new(tw).expect("register");
        let (ours, _silent) = UnixStream::pair().expect("socketpair");
        let (shared, ticks, took) = ticking(tw.share(ours)).await;
        match shared {
            Err(Error::Handshake { reason }) => assert_eq!(
                reason,
                "receiving the handshake frame: the peer did not complete its frame within 10 s"
            ),
            other => panic!("expected the time-out, got {other:?}"),
        }
        assert!(
            (Duration::from_secs(9)..Duration::from_secs(15)).contains(&took),
            "the time-out took {took:?}"
        );
        assert!(ticks >= 100, "the ticker ran {ticks} times in {took:?}");
    });
}

/// The async handshakes can be spawned on a multi-thread runtime.
#[test]
fn the_async_handshakes_are_send() {
    fn send<T: Send>(_: &T) {}
    current_thread().block_on(async {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let tw = blocking::Tripwire::builder(64)
            .backend(Backend::Poll)
            .create()
            .expect("create");
        let mut tw = Tripwire::new(tw).expect("register");
        send(&tw.share(a.try_clone().expect("dup")));
        send(&Producer::connect_async(b.try_clone().expect("dup")));
        let mut rx = SharedRing::<u64>::builder(8)
            .backend(Backend::Poll)
            .create()
            .expect("create");
        send(&rx.share_async(a));
        send(&Sender::<u64>::connect_async(b));
    });
}
