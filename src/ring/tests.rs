//! A hostile or buggy peer: impossible indices and headers give errors,
//! never a panic, an out-of-bounds access or a hang.

use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;

use proptest::prelude::*;

use super::layout::{self, Header};
use super::{Receiver, Sender, SharedRing, TryRecvError, TrySendError};
use crate::{Backend, Error, Region};

type Msg = [u64; 2];

fn pair(capacity: usize) -> (Receiver<Msg>, Sender<Msg>) {
    let mut rx = SharedRing::<Msg>::builder(capacity)
        .backend(Backend::Doorbell)
        .create()
        .expect("ring");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let tx = std::thread::spawn(move || Sender::<Msg>::connect(theirs));
    rx.share(ours).expect("share");
    (rx, tx.join().expect("thread").expect("connect"))
}

/// Each end maps read-only what only the other writes: the Receiver its
/// slots, the Sender the control memory (the tail). A write through those
/// mappings is refused, not a SIGSEGV.
#[test]
fn each_end_maps_what_it_only_reads_read_only() {
    let (rx, tx) = pair(8);
    assert!(!rx.rx.ring.slots.is_writable(), "the receiver's slots");
    assert!(
        !tx.tx.ring.control.is_writable(),
        "the sender's control memory"
    );
    assert!(rx.rx.ring.control.is_writable() && tx.tx.ring.slots.is_writable());
    assert!(matches!(
        rx.rx.ring.slots.write(0, &[1u64, 2]),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(
        tx.tx.ring.control.atomic_u64(layout::TAIL),
        Err(Error::ReadOnly { .. })
    ));
}

#[test]
fn a_head_too_far_ahead_is_corrupt() {
    let (mut rx, _tx) = pair(8);
    rx.rx
        .ring
        .region
        .atomic_u64(layout::HEAD)
        .unwrap()
        .store(9, Ordering::Relaxed);
    assert!(matches!(
        rx.try_recv(),
        Err(TryRecvError::Failed(Error::Corrupt { .. }))
    ));
}

#[test]
fn a_head_moving_backwards_is_corrupt() {
    let (mut rx, mut tx) = pair(8);
    tx.try_send([1, 1]).unwrap();
    assert_eq!(rx.try_recv().unwrap(), [1, 1]);
    rx.rx
        .ring
        .region
        .atomic_u64(layout::HEAD)
        .unwrap()
        .store(0, Ordering::Relaxed);
    assert!(matches!(
        rx.try_recv(),
        Err(TryRecvError::Failed(Error::Corrupt { .. }))
    ));
}

#[test]
fn a_tail_past_the_head_is_corrupt() {
    let (rx, mut tx) = pair(4);
    for i in 0..4 {
        tx.try_send([i, i]).unwrap();
    }
    rx.rx
        .ring
        .control
        .atomic_u64(layout::TAIL)
        .unwrap()
        .store(100, Ordering::Relaxed);
    assert!(matches!(
        tx.try_send([9, 9]),
        Err(TrySendError::Failed(_, Error::Corrupt { .. }))
    ));
}

fn control_with(bytes: &[u8]) -> Region {
    let r = crate::SharedMemory::create(layout::control_len())
        .unwrap()
        .region()
        .clone();
    r.write_bytes(0, bytes).unwrap();
    r
}

fn header_bytes(h: Header, magic: u64, version: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&magic.to_le_bytes());
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&h.size.to_le_bytes());
    b.extend_from_slice(&h.align.to_le_bytes());
    b.extend_from_slice(&h.capacity.to_le_bytes());
    b.extend_from_slice(&h.tag.to_le_bytes());
    b
}

#[test]
fn each_header_mismatch_names_both_sides() {
    let ours = Header::of::<Msg>(0, 5);
    let good = Header::of::<Msg>(64, 5);
    let cases: [(Vec<u8>, &str); 8] = [
        (header_bytes(good, 0x1234, layout::VERSION), "not a ring"),
        (
            header_bytes(good, layout::MAGIC, 1),
            "layout version: receiver 1, sender 4",
        ),
        (
            header_bytes(Header { size: 8, ..good }, layout::MAGIC, layout::VERSION),
            "size_of::<T>(): receiver 8, sender 16",
        ),
        (
            header_bytes(Header { align: 16, ..good }, layout::MAGIC, layout::VERSION),
            "align_of::<T>(): receiver 16, sender 8",
        ),
        (
            header_bytes(Header { tag: 6, ..good }, layout::MAGIC, layout::VERSION),
            "type tag: receiver 0x6, sender 0x5",
        ),
        (
            header_bytes(
                Header {
                    capacity: 3,
                    ..good
                },
                layout::MAGIC,
                layout::VERSION,
            ),
            "capacity: 3 is not a power of two",
        ),
        (
            header_bytes(
                Header {
                    capacity: 0,
                    ..good
                },
                layout::MAGIC,
                layout::VERSION,
            ),
            "capacity: 0",
        ),
        (
            header_bytes(
                Header {
                    capacity: 1 << 30,
                    ..good
                },
                layout::MAGIC,
                layout::VERSION,
            ),
            "capacity: 1073741824",
        ),
    ];
    for (bytes, needle) in cases {
        match Header::check(&control_with(&bytes), ours) {
            Err(Error::LayoutMismatch { reason }) => {
                assert!(reason.contains(needle), "{reason:?} lacks {needle:?}")
            }
            other => panic!("{needle}: {other:?}"),
        }
    }
    assert_eq!(
        Header::check(
            &control_with(&header_bytes(good, layout::MAGIC, layout::VERSION)),
            ours
        )
        .unwrap(),
        good
    );
}

/// Headers with the right magic and version and the other fields drawn
/// near and far from what this side expects: `check` returns `Ok` exactly
/// when every field is valid (computed here, independently), and then the
/// header read. Both outcomes must have occurred, or the property said
/// nothing.
#[test]
fn any_header_fields_are_checked() {
    use proptest::test_runner::{Config, TestRunner};
    use std::sync::atomic::AtomicUsize;

    const TAG: u64 = 0x7a6_0000_0001;
    let ours = Header::of::<Msg>(0, TAG);
    // Each field: mostly ours (or a valid capacity), else anything.
    let size = prop_oneof![4 => Just(ours.size), 1 => any::<u32>(), 1 => 0u32..64];
    let align = prop_oneof![4 => Just(ours.align), 1 => any::<u32>(), 1 => 0u32..64];
    let capacity = prop_oneof![
        4 => (0u32..=25).prop_map(|s| 1u32 << s),
        1 => Just(0u32),
        1 => Just(layout::MAX_CAPACITY + 1),
        1 => Just(u32::MAX),
        1 => any::<u32>(),
        1 => 0u32..100,
    ];
    let tag = prop_oneof![
        4 => Just(ours.tag),
        1 => Just(0u64),
        1 => any::<u64>(),
        1 => Just(TAG ^ 1),
    ];
    let (oks, errs) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner = TestRunner::new(Config {
        cases: 2048,
        ..Config::default()
    });
    runner
        .run(
            &(size, align, capacity, tag),
            |(size, align, capacity, tag)| {
                let theirs = Header {
                    size,
                    align,
                    capacity,
                    tag,
                };
                let valid = size == 16
                    && align == 8
                    && tag == TAG
                    && capacity != 0
                    && capacity & (capacity - 1) == 0
                    && capacity <= 1 << 24;
                let bytes = header_bytes(theirs, layout::MAGIC, layout::VERSION);
                match Header::check(&control_with(&bytes), ours) {
                    Ok(h) => {
                        prop_assert!(valid, "accepted an invalid header {theirs:?}");
                        prop_assert_eq!(h, theirs);
                        oks.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Error::LayoutMismatch { .. }) => {
                        prop_assert!(!valid, "refused a valid header {theirs:?}");
                        errs.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => prop_assert!(false, "{theirs:?}: {e}"),
                }
                Ok(())
            },
        )
        .unwrap();
    let (oks, errs) = (oks.into_inner(), errs.into_inner());
    println!("any_header_fields_are_checked: {oks} accepted, {errs} refused");
    assert!(oks > 0 && errs > 0, "{oks} accepted, {errs} refused");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any head and tail: a message, nothing, or `Corrupt`; never a panic,
    /// and never more than `capacity` messages before an error or the end.
    #[test]
    fn any_indices_are_validated(head in any::<u64>(), tail in any::<u64>()) {
        let mut rx = SharedRing::<Msg>::builder(8).backend(Backend::Poll).create().unwrap();
        rx.rx.tail = tail;
        rx.rx.published = tail;
        rx.rx.known_head = tail;
        rx.rx.ring.region.atomic_u64(layout::HEAD).unwrap().store(head, Ordering::Relaxed);
        let mut got = 0;
        loop {
            match rx.try_recv() {
                Ok(_) => got += 1,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Failed(Error::Corrupt { .. })) => break,
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
            prop_assert!(got <= 8);
        }
        // The batched path, from the same state: at most a ring's worth.
        rx.rx.tail = tail;
        rx.rx.published = tail;
        rx.rx.known_head = tail;
        let mut buf = Vec::new();
        match rx.rx.pop_many(&mut buf, 100) {
            Ok(n) => prop_assert!(n <= 8 && buf.len() == n),
            Err(Error::Corrupt { .. }) => prop_assert!(buf.len() <= 8),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    /// Batched sends and receives of any sizes, wrapping around a small
    /// ring: every message arrives once, in order, whole.
    #[test]
    fn batches_of_any_size_arrive_in_order(
        ops in proptest::collection::vec((0usize..20, 0usize..20), 1..64)
    ) {
        let (mut rx, mut tx) = pair(8);
        let (mut sent, mut received) = (0u64, 0u64);
        let mut buf = Vec::new();
        for (sends, limit) in ops {
            for _ in 0..sends {
                match tx.try_send([sent, !sent]) {
                    Ok(()) => sent += 1,
                    Err(TrySendError::Full(_)) => break,
                    Err(e) => prop_assert!(false, "send: {e}"),
                }
            }
            if sent == received {
                continue;
            }
            let n = rx.blocking_recv_many(&mut buf, limit).unwrap();
            prop_assert_eq!(n, buf.len());
            prop_assert!(n >= 1 && n <= limit.max(1));
            for m in buf.drain(..) {
                prop_assert_eq!(m, [received, !received]);
                received += 1;
            }
        }
        drop(tx);
        while rx.blocking_recv_many(&mut buf, 3).unwrap() > 0 {
            for m in buf.drain(..) {
                prop_assert_eq!(m, [received, !received]);
                received += 1;
            }
        }
        prop_assert_eq!(received, sent);
    }
}

/// A hostile Receiver hands over a space bell that never hangs up (it keeps
/// the other end somewhere alive), fills the ring, and dies. The Sender
/// learns of the death from the handshake socket: a full-ring send fails
/// with `PeerDied` instead of waiting for ever, blocking or async.
#[cfg(feature = "tokio")]
#[test]
fn a_bell_that_never_hangs_up_cannot_hold_the_sender() {
    use std::os::fd::AsFd;
    const CAP: u32 = 4;
    let header = Header::of::<Msg>(CAP, super::type_tag::<Msg>());
    let mut tw = crate::blocking::Tripwire::builder(header.region_len())
        .backend(Backend::Doorbell)
        .create()
        .unwrap();
    let control = crate::SharedMemory::create(layout::control_len()).unwrap();
    header.write(control.region()).unwrap();
    let slots = crate::SharedMemory::create(header.slots_len()).unwrap();
    // The bell's other end stays alive here, as in a hostile process.
    let (_kept, bell) = crate::sys::Bell::pair().unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let tx = std::thread::spawn(move || Sender::<Msg>::connect(theirs));
    tw.share_with_fds(
        ours,
        layout::FRAME_TAG,
        &[control.as_fd(), bell.as_fd(), slots.as_fd()],
    )
    .unwrap();
    let mut tx = tx.join().unwrap().unwrap();
    for i in 0..u64::from(CAP) {
        tx.try_send([i, i]).unwrap();
    }
    drop(tw); // the Receiver dies: its handshake socket closes
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let blocking = tx.blocking_send([9, 9]).map_err(|e| e.into_error());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let nonblocking = rt.block_on(tx.send([9, 9])).map_err(|e| e.into_error());
        let _ = done_tx.send((blocking, nonblocking));
    });
    let (blocking, nonblocking) = done_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("a full-ring send waited for ever on a bell that never hangs up");
    assert!(matches!(blocking, Err(Error::PeerDied)), "{blocking:?}");
    assert!(
        matches!(nonblocking, Err(Error::PeerDied)),
        "{nonblocking:?}"
    );
}

/// A `send` cancelled while it waited for space withdraws its waiting flag
/// at the next send: otherwise the Receiver rings the Sender's bell at every
/// tail it publishes.
#[cfg(feature = "tokio")]
#[test]
fn a_cancelled_send_withdraws_its_wait() {
    let (mut rx, mut tx) = pair(2);
    tx.try_send([1, 1]).unwrap();
    tx.try_send([2, 2]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let waited = rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_millis(20), tx.send([3, 3])).await
    });
    assert!(waited.is_err(), "the ring is full: the send waits");
    let waiting = |rx: &Receiver<Msg>| {
        rx.rx
            .ring
            .region
            .atomic_u64(layout::STATE)
            .unwrap()
            .load(Ordering::Relaxed)
            & super::protocol::WAITING
            != 0
    };
    assert!(waiting(&rx), "the cancelled send announced its wait");
    assert_eq!(rx.try_recv().unwrap(), [1, 1]);
    rx.flush().unwrap();
    tx.try_send([4, 4]).unwrap();
    assert!(!waiting(&rx), "the next send withdrew the wait");
}

/// The Receiver rings the Sender only when it announced a wait: other bits
/// of the state word (the close bit) do not make a ring (found by cargo
/// mutants: `&` made `|` in `publish_tail`, a ring on every publish,
/// survived, as a spurious ring is harmless to order and content).
#[test]
fn publish_tail_rings_only_a_waiting_sender() {
    use super::protocol::{WAITING, announce, close, publish_tail};
    use std::sync::atomic::AtomicU64;
    let (state, tail) = (AtomicU64::new(0), AtomicU64::new(0));
    assert!(!publish_tail(&state, &tail, 1), "no wait announced");
    close(&state);
    assert!(!publish_tail(&state, &tail, 2), "closed, not waiting");
    announce(&state);
    assert_eq!(state.load(Ordering::Relaxed) & WAITING, WAITING);
    assert!(publish_tail(&state, &tail, 3), "a wait announced");
    assert_eq!(tail.load(Ordering::Relaxed), 3);
}

/// An async call made outside a runtime, where neither end can register
/// with tokio, is an error, and leaves both ends as they were: the
/// tripwire never moves into the registration, so there is nothing to
/// poison, and the blocking calls go on working.
#[cfg(feature = "tokio")]
#[test]
fn an_async_call_outside_a_runtime_is_an_error_that_leaves_the_ring_usable() {
    let (mut rx, mut tx) = pair(2);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let recv = rx.poll_recv(&mut cx);
    assert!(
        matches!(recv, std::task::Poll::Ready(Err(Error::Io { .. }))),
        "{recv:?}"
    );
    tx.try_send([1, 1]).unwrap();
    tx.try_send([2, 2]).unwrap();
    {
        let mut send = std::pin::pin!(tx.send([3, 3]));
        let sent = std::future::Future::poll(send.as_mut(), &mut cx);
        assert!(
            matches!(&sent, std::task::Poll::Ready(Err(e)) if matches!(e.error(), Error::Io { .. })),
            "{sent:?}"
        );
    }
    assert_eq!(rx.blocking_recv().unwrap(), Some([1, 1]));
    assert_eq!(rx.blocking_recv().unwrap(), Some([2, 2]));
    tx.blocking_send([3, 3]).unwrap();
    assert_eq!(rx.blocking_recv().unwrap(), Some([3, 3]));
    let _ = std::os::fd::AsFd::as_fd(&rx); // no panic: the Receiver keeps its tripwire
}
