//! No silent pending (#23 item 4): a wait that nothing could ever end
//! fails at once with `Error::NotShared` (an `io::Error` of kind
//! `NotConnected` from the tripwire's calls), on every way of waiting: the
//! step (`try_changed`, the ring's `rearm`: what a mio loop calls), the
//! blocking waits, the async `changed()`/`recv()` and both streams.
//!
//! What "never shared" covers: a ring `Receiver` before `share` on every
//! backend (only its Sender writes the ring), and a tripwire before its
//! first `share` on `Doorbell`, `Userfault` and `UserfaultAsync` (only a
//! connected producer trips those). `Kernel` and `Poll` tripwires still
//! wait: the consumer's own stores and a `producer_fd` writer's trip them
//! with no handshake, which the last test keeps working.
//!
//! Each wait that used to be pending for ever runs under a coarse bound
//! (a thread or a tokio time-out of 10 s), so the old code fails the test
//! rather than hang it.

mod support;

use std::io::ErrorKind;
use std::sync::mpsc;
use std::time::Duration;

use futures_util::StreamExt;
use memfd_tripwire::ring::{Receiver, SharedRing, TryRecvError};
use memfd_tripwire::{Backend, Error, Producer, SharedMemory, Tripwire, blocking};
use support::{BACKENDS, or_skip};

/// Longer than any "at once", shorter than "for ever".
const BOUND: Duration = Duration::from_secs(10);

/// Runs `f` on a thread; its result, or a failure if it is still waiting
/// after [`BOUND`].
fn bounded<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    outcome
        .recv_timeout(support::scaled(BOUND))
        .unwrap_or_else(|_| panic!("{what}: still waiting after {BOUND:?}, never shared"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn ring(name: &str, backend: Backend) -> Option<Receiver<u64>> {
    or_skip(
        name,
        SharedRing::<u64>::builder(8).backend(backend).create(),
    )
}

fn is_not_shared(e: &Error) -> bool {
    matches!(e, Error::NotShared { .. }) && e.to_string().contains("share")
}

#[test]
fn a_ring_never_shared_refuses_every_wait_at_once() {
    for (name, backend) in BACKENDS {
        let Some(mut rx) = ring(name, backend) else {
            continue;
        };
        // Nothing now, and it may still be shared: not an error.
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "{name}");
        // The step a mio loop takes before it sleeps.
        let e = rx.rearm().expect_err(name);
        assert!(is_not_shared(&e), "{name}: rearm: {e}");
        let (rx, e) = bounded(name, move || {
            let e = rx.blocking_recv();
            (rx, e)
        });
        let e = e.expect_err(name);
        assert!(is_not_shared(&e), "{name}: blocking_recv: {e}");
        let (mut rx, e) = bounded(name, move || {
            let mut rx = rx;
            let e = rx.blocking_recv_many(&mut Vec::new(), 4);
            (rx, e)
        });
        let e = e.expect_err(name);
        assert!(is_not_shared(&e), "{name}: blocking_recv_many: {e}");
        runtime().block_on(async {
            let e = tokio::time::timeout(BOUND, rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{name}: recv().await pending, never shared"))
                .expect_err(name);
            assert!(is_not_shared(&e), "{name}: recv: {e}");
            let mut buf = Vec::new();
            let e = tokio::time::timeout(BOUND, rx.recv_many(&mut buf, 4))
                .await
                .unwrap_or_else(|_| panic!("{name}: recv_many().await pending"))
                .expect_err(name);
            assert!(is_not_shared(&e), "{name}: recv_many: {e}");
            let mut stream = rx;
            let first = tokio::time::timeout(BOUND, stream.next())
                .await
                .unwrap_or_else(|_| panic!("{name}: the stream pending, never shared"));
            assert!(
                matches!(&first, Some(Err(e)) if is_not_shared(e)),
                "{name}: the stream's first item: {first:?}"
            );
            assert!(stream.next().await.is_none(), "{name}: fused after it");
        });
    }
}

/// The backends a store of the consumer's own cannot trip.
const PRODUCER_ONLY: [(&str, Backend); 3] = [
    ("doorbell", Backend::Doorbell),
    ("userfault", Backend::Userfault),
    ("userfault_async", Backend::UserfaultAsync),
];

fn tripwire(name: &str, backend: Backend) -> Option<blocking::Tripwire> {
    or_skip(
        name,
        blocking::Tripwire::builder(4096).backend(backend).create(),
    )
}

fn assert_not_shared(name: &str, what: &str, e: &std::io::Error) {
    assert_eq!(e.kind(), ErrorKind::NotConnected, "{name}: {what}: {e}");
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<Error>());
    assert!(
        inner.is_some_and(is_not_shared),
        "{name}: {what}: {e} carries no Error::NotShared"
    );
}

#[test]
fn a_tripwire_only_a_producer_trips_refuses_every_wait_before_its_first_share() {
    for (name, backend) in PRODUCER_ONLY {
        let Some(mut tw) = tripwire(name, backend) else {
            continue;
        };
        // Our own store, which cannot trip it, changes nothing.
        tw.region().write(0, &1u8).expect("write");
        let e = tw.try_changed().expect_err(name);
        assert_not_shared(name, "try_changed", &e);
        let (tw, e) = bounded(name, move || {
            let mut tw = tw;
            let e = tw.wait();
            (tw, e)
        });
        assert_not_shared(name, "wait", &e.expect_err(name));
        let (tw, e) = bounded(name, move || {
            let mut tw = tw;
            let e = tw.wait_timeout(Duration::from_secs(3600));
            (tw, e)
        });
        assert_not_shared(name, "wait_timeout", &e.expect_err(name));
        runtime().block_on(async {
            let mut tw = Tripwire::new(tw).expect("register");
            let e = tokio::time::timeout(BOUND, tw.changed())
                .await
                .unwrap_or_else(|_| panic!("{name}: changed().await pending, never shared"))
                .expect_err(name);
            assert_not_shared(name, "changed", &e);
            let mut changes = tw.into_stream();
            let first = tokio::time::timeout(BOUND, changes.next())
                .await
                .unwrap_or_else(|_| panic!("{name}: Changes pending, never shared"));
            match first {
                Some(Err(e)) => assert_not_shared(name, "Changes", &e),
                other => panic!("{name}: Changes' first item: {other:?}"),
            }
            assert!(changes.next().await.is_none(), "{name}: fused after it");
        });
    }
}

/// Once shared, a producer that is there keeps the wait open: the error is
/// for "never shared" only.
#[test]
fn a_shared_tripwire_waits_for_its_producer() {
    for (name, backend) in PRODUCER_ONLY {
        let Some(tw) = tripwire(name, backend) else {
            continue;
        };
        let (mut tw, producer) = support::with_producer(tw);
        assert_eq!(tw.try_changed().expect(name), None, "{name}");
        producer.region().write(0, &1u8).expect("write");
        producer.notify().expect("notify");
        assert!(tw.wait_timeout(BOUND).expect(name).is_some(), "{name}");
    }
}

/// `Kernel` and `Poll` never shared still wait, and trip on a store
/// through the consumer's own mapping or through `producer_fd` (a writer
/// with no handshake).
#[test]
fn kernel_and_poll_never_shared_still_trip_on_any_store() {
    for (name, backend) in [("kernel", Backend::Kernel), ("poll", Backend::Poll)] {
        let Some(mut tw) = tripwire(name, backend) else {
            continue;
        };
        assert_eq!(tw.try_changed().expect(name), None, "{name}");
        assert_eq!(
            tw.wait_timeout(Duration::from_millis(20)).expect(name),
            None,
            "{name}"
        );
        tw.region().write(0, &1u8).expect("write");
        assert!(
            tw.wait_timeout(BOUND).expect(name).is_some(),
            "{name}: own store"
        );
        // What an unmodified writer maps: the tripwire fd (Kernel) or the
        // memfd (Poll), no handshake.
        let fd = tw
            .producer_fd()
            .expect("producer_fd")
            .try_clone_to_owned()
            .expect("dup");
        let writer = match backend {
            Backend::Kernel => Producer::from_fd(fd).expect("map").region().clone(),
            _ => SharedMemory::from_fd(fd).expect("map").region().clone(),
        };
        writer.write(8, &2u64).expect("write");
        assert!(
            tw.wait_timeout(BOUND).expect(name).is_some(),
            "{name}: producer_fd store"
        );
        assert_eq!(tw.region().read::<u64>(8).expect("read"), 2, "{name}");
    }
}
