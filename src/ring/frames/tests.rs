//! Frames end to end in one process: placement around the end (exact fits,
//! skip markers, zero-length frames), grants, the refusal of a frame larger
//! than the ring, and a hostile Sender's length words (each class is
//! `Corrupt`, never a panic, an over-read or a hang).

use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;

use proptest::prelude::*;

use super::walk::{self, SKIP};
use super::{FrameBatch, FrameReceiver, FrameSender, SharedFrames, TryReserveError};
use crate::ring::layout;
use crate::ring::{Sender, SharedRing, TryRecvError};
use crate::{Backend, Error};

pub(super) fn pair(bytes: usize) -> (FrameReceiver, FrameSender) {
    let mut rx = SharedFrames::builder(bytes)
        .backend(Backend::Doorbell)
        .create()
        .expect("frames");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let tx = std::thread::spawn(move || FrameSender::connect(theirs));
    rx.share(ours).expect("share");
    (rx, tx.join().expect("thread").expect("connect"))
}

/// The Sender's head, in words.
fn head(tx: &FrameSender) -> u64 {
    tx.inner.tx.head
}

/// The word at word `i` of the byte area, as the Receiver sees it.
fn word(rx: &FrameReceiver, i: usize) -> u64 {
    rx.inner.rx.ring.slots.read(i * 8).unwrap()
}

/// A frame of `len` bytes, all `seed`.
pub(super) fn frame(len: usize, seed: u8) -> Vec<u8> {
    vec![seed; len]
}

/// Nothing to receive now.
fn assert_empty(rx: &mut FrameReceiver) {
    assert!(matches!(
        rx.try_recv(&mut Vec::new()),
        Err(TryRecvError::Empty)
    ));
}

#[cfg(feature = "tokio")]
pub(super) fn runtime() -> ::tokio::runtime::Runtime {
    ::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn recv(rx: &mut FrameReceiver) -> Vec<u8> {
    let mut buf = vec![0xee; 3]; // replaced, whatever it held
    let len = rx.try_recv(&mut buf).expect("a frame");
    assert_eq!(len, buf.len());
    buf
}

/// In a ring of 8 words: a frame that exactly fits the end goes there with
/// no skip; one that would straddle it goes to offset 0 after a skip marker
/// (published with it); zero-length frames take a word each.
#[test]
fn frames_wrap_exactly_or_after_a_skip() {
    let (mut rx, mut tx) = pair(64);
    tx.try_send(&frame(20, 1)).unwrap(); // 4 words: 0..4
    tx.try_send(&[]).unwrap(); // 1 word: 4
    assert_eq!(head(&tx), 5);
    assert_eq!(recv(&mut rx), frame(20, 1));
    assert_eq!(recv(&mut rx), b"");
    rx.flush().unwrap();
    // 3 words left before the end: a 16-byte frame (3 words) fits exactly.
    tx.try_send(&frame(16, 2)).unwrap();
    assert_eq!(head(&tx), 8, "no skip for an exact fit");
    assert_eq!(word(&rx, 5), 16);
    assert_eq!(recv(&mut rx), frame(16, 2));
    // Now at 0 again: 6 words, then a 3-word frame that cannot fit the 2
    // left: skip 2, frame at 0, in one publish.
    rx.flush().unwrap();
    tx.try_send(&frame(40, 3)).unwrap(); // words 8..14
    assert_eq!(recv(&mut rx), frame(40, 3));
    rx.flush().unwrap();
    tx.try_send(&frame(9, 4)).unwrap();
    assert_eq!(head(&tx), 14 + 2 + 3);
    assert_eq!(word(&rx, 6), SKIP, "the skip marker");
    assert_eq!(word(&rx, 0), 9, "the frame at offset 0");
    assert_eq!(recv(&mut rx), frame(9, 4));
    assert_empty(&mut rx);
    assert_eq!(rx.stats().received, 5, "skips are not frames");
}

/// A frame of the whole ring at a non-zero offset: the skip is published
/// alone (the two never fit together), then the frame once the Receiver
/// passed the skip.
#[test]
fn the_largest_frame_goes_after_a_skip_published_alone() {
    let (mut rx, mut tx) = pair(64);
    assert_eq!(tx.max_frame(), 56);
    tx.try_send(b"x").unwrap(); // 2 words
    assert_eq!(recv(&mut rx), b"x");
    rx.flush().unwrap();
    // 8 words free, but 6 to the end: the skip alone, then Full.
    assert!(matches!(tx.try_reserve(56), Err(TryReserveError::Full)));
    assert_eq!(head(&tx), 8, "the skip was published");
    assert_empty(&mut rx);
    rx.flush().unwrap();
    tx.try_send(&frame(56, 7)).unwrap();
    assert_eq!(recv(&mut rx), frame(56, 7));
}

/// The blocking pair across threads with every placement: sizes cycling
/// through 0..=max, so frames wrap, skip and fill the ring.
#[test]
fn every_size_round_trips_through_a_small_ring() {
    let (mut rx, mut tx) = pair(128);
    let max = tx.max_frame();
    let sender = std::thread::spawn(move || {
        for i in 0..2000usize {
            let len = (i * 7) % (max + 1);
            tx.blocking_send(&frame(len, i as u8)).unwrap();
        }
    });
    let mut buf = Vec::new();
    for i in 0..2000usize {
        let len = rx.blocking_recv(&mut buf).unwrap().expect("a frame");
        assert_eq!(len, (i * 7) % (max + 1), "frame {i}");
        assert!(buf.iter().all(|&b| b == i as u8), "frame {i}");
    }
    sender.join().unwrap();
    assert_eq!(rx.blocking_recv(&mut buf).unwrap(), None, "closed");
}

/// The batched calls across threads with every placement: batches of
/// 1..=9 frames of sizes cycling through 0..=max (so frames wrap, skip and
/// fill the ring), taken with limits of 1..=7.
#[test]
fn batches_of_every_size_round_trip_through_a_small_ring() {
    let (mut rx, mut tx) = pair(128);
    let max = tx.max_frame();
    let len = move |i: usize| (i * 7) % (max + 1);
    let sender = std::thread::spawn(move || {
        let mut i = 0;
        while i < 3000 {
            let batch: Vec<Vec<u8>> = (i..i + i % 9 + 1).map(|i| frame(len(i), i as u8)).collect();
            i += batch.len();
            tx.blocking_send_many(&batch).unwrap();
        }
        i
    });
    let mut batch = FrameBatch::new();
    let mut i = 0;
    loop {
        batch.clear();
        let limit = i % 7 + 1;
        let k = rx.blocking_recv_many(&mut batch, limit).unwrap();
        if k == 0 {
            break;
        }
        assert!(k <= limit && k == batch.len() && k == batch.iter().len());
        for got in &batch {
            assert_eq!(got.len(), len(i), "frame {i}");
            assert!(got.iter().all(|&b| b == i as u8), "frame {i}");
            i += 1;
        }
        assert_eq!(batch.get(k - 1).map(<[u8]>::len), Some(len(i - 1)));
        assert_eq!(batch.get(k), None);
    }
    assert_eq!(i, sender.join().unwrap(), "every frame, then the close");
}

/// A batched send publishes its frames by its return (they are all
/// there for `try_recv`), and one that meets a frame it cannot send
/// publishes those before it, says how many, and sends none after.
#[test]
fn send_many_publishes_what_it_sent_and_says_how_many() {
    let (mut rx, mut tx) = pair(4096);
    // 19 words: fewer than a batch (64 words here), so only the final
    // publish shows them.
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(i * 10, i as u8)).collect();
    tx.blocking_send_many(&frames).unwrap();
    for want in &frames {
        assert_eq!(&recv(&mut rx), want);
    }
    rx.flush().unwrap();
    let too_big = frame(5000, 9);
    let e = tx
        .blocking_send_many(&[b"one".as_slice(), b"two", &too_big, b"four"])
        .unwrap_err();
    assert_eq!(e.sent, 2, "{e}");
    assert!(
        matches!(&e.error, Error::InvalidArgument(a) if a.what() == "frame length"),
        "{e}"
    );
    assert_eq!(recv(&mut rx), b"one");
    assert_eq!(recv(&mut rx), b"two");
    assert_empty(&mut rx);
    // Closed: nothing sent.
    drop(rx);
    let e = tx.blocking_send_many(&[b"x"]).unwrap_err();
    assert_eq!(e.sent, 0);
    assert!(matches!(e.error, Error::Closed), "{e}");
}

/// A hostile length word in the middle of what a batched receive takes:
/// the frames before it are taken (and in the batch), then `Corrupt`, at
/// every call after too; `limit` is honoured.
#[test]
fn a_batched_receive_keeps_the_frames_before_a_hostile_word() {
    let (mut rx, mut tx) = pair(256);
    for i in 0..3 {
        tx.try_send(&frame(10, i)).unwrap(); // 3 words each
    }
    // After the third frame (words 6..9): a length word of 1000 bytes,
    // published with them (the Receiver has not looked yet).
    let at = tx.inner.tx.ring.header.slot_offset(head(&tx));
    tx.inner.tx.ring.slots.write(at, &1000u64).unwrap();
    tx.inner
        .tx
        .ring
        .head()
        .unwrap()
        .store(head(&tx) + 4, Ordering::Release);
    let mut batch = FrameBatch::new();
    assert_eq!(
        rx.blocking_recv_many(&mut batch, 2).unwrap(),
        2,
        "the limit"
    );
    assert_eq!(batch.len(), 2);
    // The third frame and the hostile word in one walk.
    match rx.blocking_recv_many(&mut batch, 10) {
        Err(Error::Corrupt { reason }) => assert!(reason.contains("1000 bytes"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let got: Vec<&[u8]> = batch.iter().collect();
    assert_eq!(got, [frame(10, 0), frame(10, 1), frame(10, 2)], "kept");
    assert!(matches!(
        rx.blocking_recv_many(&mut batch, 10),
        Err(Error::Corrupt { .. })
    ));
    assert_eq!(batch.len(), 3);
}

/// A frame larger than the ring can ever hold is refused at the Sender,
/// which publishes and writes nothing; the ring stays usable.
#[test]
fn a_frame_larger_than_the_ring_is_refused_with_nothing_written() {
    let (mut rx, mut tx) = pair(64);
    let before: Vec<u64> = (0..8).map(|i| word(&rx, i)).collect();
    // try_send first: without the check it would say Full (and a blocking
    // send would wait for ever).
    assert!(matches!(
        tx.try_send(&frame(1000, 9)),
        Err(TryReserveError::Failed(Error::InvalidArgument(_)))
    ));
    let e = tx.blocking_send(&frame(57, 9)).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(a) if a.what() == "frame length"),
        "{e}"
    );
    assert!(e.to_string().contains("at most 56 bytes"), "{e}");
    assert_eq!(head(&tx), 0);
    let after: Vec<u64> = (0..8).map(|i| word(&rx, i)).collect();
    assert_eq!(before, after, "nothing written");
    tx.try_send(b"ok").unwrap();
    assert_eq!(recv(&mut rx), b"ok");
}

/// A grant dropped without a commit publishes nothing, even one that
/// needed a skip; the next frame takes its place. `commit_len` publishes a
/// prefix; writes past the grant are refused.
#[test]
fn a_dropped_grant_publishes_nothing() {
    let (mut rx, mut tx) = pair(64);
    let mut grant = tx.try_reserve(10).unwrap();
    grant.write(0, b"0123456789").unwrap();
    assert!(matches!(
        grant.write(8, b"abc"),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(grant.write(usize::MAX, b"a").is_err());
    drop(grant);
    assert_eq!(head(&tx), 0);
    assert_empty(&mut rx);
    // Move to word 6, then drop a grant that would skip.
    tx.try_send(&frame(40, 1)).unwrap();
    assert_eq!(recv(&mut rx), frame(40, 1));
    rx.flush().unwrap();
    drop(tx.try_reserve(20).unwrap());
    assert_eq!(head(&tx), 6, "neither the skip nor the frame published");
    assert_empty(&mut rx);
    let mut grant = tx.try_reserve(30).unwrap();
    grant.write(0, b"short").unwrap();
    assert!(grant.commit_len(31).is_err(), "longer than the grant");
    let mut grant = tx.try_reserve(30).unwrap();
    grant.write(0, b"short").unwrap();
    grant.commit_len(5).unwrap();
    assert_eq!(recv(&mut rx), b"short");
}

/// A hostile Sender: each kind of impossible length word, published under
/// a valid head, is `Corrupt` at the Receiver (with a reason), never a
/// panic or an over-read, and `buf` is untouched.
#[test]
fn each_hostile_length_word_is_corrupt() {
    // (words to publish before, the word written at the tail, head advance, says)
    for (pre, bad, advance, says) in [
        (0, 57, 8, "at most 56"),           // longer than the ring
        (0, u64::MAX - 1, 8, "at most 56"), // absurd
        (0, 1 << 40, 8, "at most 56"),      // high bits
        (5, 24, 3, "straddles the end"),    // 4 words at word 5 of 8
        (0, 24, 2, "past the head"),        // 4 words, 2 published
        (0, SKIP, 8, "offset 0"),           // a skip at the start
        (5, SKIP, 2, "past the head"),      // a skip of 3 words, 2 published
    ] {
        let (mut rx, mut tx) = pair(64);
        if pre > 0 {
            // A legitimate frame of `pre` words first, received.
            tx.try_send(&frame((pre as usize - 1) * 8, 1)).unwrap();
            recv(&mut rx);
        }
        let at = tx.inner.tx.ring.header.slot_offset(head(&tx));
        tx.inner.tx.ring.slots.write(at, &bad).unwrap();
        let h = head(&tx) + advance;
        tx.inner.tx.ring.head().unwrap().store(h, Ordering::Release);
        let mut buf = b"kept".to_vec();
        match rx.try_recv(&mut buf) {
            Err(TryRecvError::Failed(Error::Corrupt { reason })) => {
                assert!(reason.contains(says), "{bad:#x} at {pre}: {reason}");
            }
            other => panic!("{bad:#x} at {pre}: {other:?}"),
        }
        assert_eq!(buf, b"kept");
        // Blocking receive: the same error, not a hang.
        assert!(matches!(
            rx.blocking_recv(&mut buf),
            Err(Error::Corrupt { .. })
        ));
    }
}

/// A hostile Receiver: a tail moved past the head, or backwards, is
/// `Corrupt` at the Sender's next reservation that re-reads it, never a
/// frame written over unread ones.
#[test]
fn a_hostile_tail_is_corrupt_at_the_sender() {
    for bad_tail in [100u64, u64::MAX - 3] {
        let (rx, mut tx) = pair(64);
        tx.try_send(&frame(40, 1)).unwrap(); // 6 of 8 words
        rx.inner
            .rx
            .ring
            .control
            .atomic_u64(layout::TAIL)
            .unwrap()
            .store(bad_tail, Ordering::Relaxed);
        // 3 words do not fit by the tail known (0): the Sender re-reads it.
        match tx.try_send(&frame(16, 2)) {
            Err(TryReserveError::Failed(Error::Corrupt { .. })) => {}
            other => panic!("tail {bad_tail}: {other:?}"),
        }
        let e = tx.blocking_send(&frame(16, 2)).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "tail {bad_tail}: {e}");
        assert_eq!(head(&tx), 6, "nothing published");
    }
}

/// A frame Sender against a typed ring, and a typed Sender against frames:
/// "wrong protocol" on both sides, at once.
#[test]
fn frames_and_typed_rings_refuse_each_other() {
    let mut rx = SharedRing::<u64>::builder(8)
        .backend(Backend::Doorbell)
        .create()
        .unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let tx = std::thread::spawn(move || FrameSender::connect(theirs));
    let e = rx.share(ours).unwrap_err();
    assert!(e.to_string().contains("wrong protocol"), "{e}");
    let e = tx.join().unwrap().unwrap_err();
    assert!(
        e.to_string().contains("wrong protocol") && e.to_string().contains("byte frames"),
        "{e}"
    );

    let mut rx = SharedFrames::builder(64)
        .backend(Backend::Doorbell)
        .create()
        .unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let tx = std::thread::spawn(move || Sender::<u64>::connect(theirs));
    let e = rx.share(ours).unwrap_err();
    assert!(e.to_string().contains("wrong protocol"), "{e}");
    let e = tx.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("wrong protocol"), "{e}");
}

/// Capacities: a power of two from 16 bytes to 2^27.
#[test]
fn the_capacity_is_checked() {
    for bytes in [0, 8, 24, 1000, 1 << 28] {
        let e = SharedFrames::builder(bytes)
            .backend(Backend::Poll)
            .create()
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(a) if a.what() == "bytes"),
            "{bytes}: {e}"
        );
    }
    let rx = SharedFrames::builder(16)
        .backend(Backend::Poll)
        .create()
        .unwrap();
    assert_eq!((rx.capacity(), rx.max_frame()), (16, 8));
}

/// Receiver dropped: the Sender's next call is `Closed`; Sender dropped:
/// the Receiver drains, then `Ok(None)` / `Closed`.
#[test]
fn close_is_seen_at_the_next_call() {
    let (rx, mut tx) = pair(64);
    tx.try_send(b"a").unwrap();
    drop(rx);
    assert!(matches!(tx.blocking_send(b"b"), Err(Error::Closed)));
    assert!(matches!(tx.try_send(b"b"), Err(TryReserveError::Closed)));

    let (mut rx, mut tx) = pair(64);
    tx.try_send(b"a").unwrap();
    drop(tx);
    let mut buf = Vec::new();
    assert_eq!(rx.blocking_recv(&mut buf).unwrap(), Some(1));
    assert_eq!(rx.blocking_recv(&mut buf).unwrap(), None);
    assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Closed)));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any contents of the byte area and any head and tail: the walk gives
    /// frames inside the area, ending at or before the head, or `Corrupt`;
    /// never a panic, and at most a ring's worth of steps.
    #[test]
    fn any_byte_area_is_walked_safely(
        area in proptest::collection::vec(prop_oneof![0u64..80, Just(SKIP), any::<u64>()], 8),
        head in any::<u64>(),
        tail in any::<u64>(),
    ) {
        match walk::walk(8, head, tail, |i| area[i]) {
            Ok(frames) => {
                let mut words = 0;
                for (at, len) in frames {
                    prop_assert!(at >= 8 && at + len <= 64, "{at} + {len}");
                    words += walk::words(len);
                }
                prop_assert!(words <= head.wrapping_sub(tail));
            }
            Err(Error::Corrupt { reason }) => prop_assert!(!reason.is_empty()),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    /// Frames of any sizes, sent and received in any interleaving through
    /// a small ring: each arrives once, in order, whole.
    #[test]
    fn frames_of_any_size_arrive_in_order(
        ops in proptest::collection::vec((0usize..=120, 0usize..4), 1..64)
    ) {
        let (mut rx, mut tx) = pair(128);
        let (mut sent, mut received) = (0usize, 0usize);
        let mut lens = std::collections::VecDeque::new();
        let mut buf = Vec::new();
        for (len, recvs) in ops {
            match tx.try_send(&frame(len, sent as u8)) {
                Ok(()) => { lens.push_back(len); sent += 1; }
                Err(TryReserveError::Full) => {}
                Err(e) => prop_assert!(false, "send: {e}"),
            }
            for _ in 0..recvs {
                match rx.try_recv(&mut buf) {
                    Ok(n) => {
                        prop_assert_eq!(n, lens.pop_front().unwrap());
                        prop_assert!(buf.iter().all(|&b| b == received as u8));
                        received += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(e) => prop_assert!(false, "recv: {e}"),
                }
                rx.flush().unwrap();
            }
        }
        drop(tx);
        while let Some(n) = rx.blocking_recv(&mut buf).unwrap() {
            prop_assert_eq!(n, lens.pop_front().unwrap());
            received += 1;
        }
        prop_assert_eq!(received, sent);
    }
}

#[test]
fn the_layout_constants_agree() {
    // A frame ring is a ring of words: its header names 8-byte elements.
    let rx = SharedFrames::builder(64)
        .backend(Backend::Poll)
        .create()
        .unwrap();
    assert_eq!(rx.inner.rx.ring.header.size, 8);
    assert_eq!(rx.inner.rx.ring.header.tag, super::TYPE_TAG);
    assert!(rx.inner.rx.framed);
    assert_eq!(layout::HEAD, 0);
}

/// A `send_many` dropped at a yield for tokio's coop budget (which a wait
/// for room would not be: it publishes first) has published the frames it
/// wrote before the yield.
#[cfg(feature = "tokio")]
#[test]
fn send_many_dropped_at_a_coop_yield_publishes_what_it_wrote() {
    let (mut rx, mut tx) = pair(1024);
    let rt = runtime();
    rt.block_on(async {
        // The head at word 101 of 128: two 3-word frames fit before the
        // end, a 26-word one needs a skip, which takes the slow path.
        tx.send(&frame(800, 0)).await.unwrap();
        assert_eq!(recv(&mut rx).len(), 800);
        rx.flush().unwrap();
        let frames = [frame(16, 1), frame(16, 2), frame(200, 3)];
        while ::tokio::task::coop::has_budget_remaining() {
            ::tokio::task::coop::consume_budget().await;
        }
        // One poll, then dropped (not `select!`, which yields first
        // itself when the budget is spent).
        let mut sending = std::pin::pin!(tx.send_many(&frames));
        let polled =
            std::future::poll_fn(|cx| std::task::Poll::Ready(sending.as_mut().poll(cx))).await;
        assert!(polled.is_pending(), "no budget: send_many yields");
    });
    assert_eq!(recv(&mut rx), frame(16, 1));
    assert_eq!(recv(&mut rx), frame(16, 2));
    assert_empty(&mut rx);
}

/// The async batched calls: `recv_many` cancelled while it waits leaves
/// the batch as it was; `send_many` cancelled while it waits for room has
/// published the whole frames it wrote (a prefix, in order) and nothing
/// else.
#[cfg(feature = "tokio")]
#[test]
fn cancelled_batched_calls_lose_nothing() {
    use std::time::Duration;
    let (mut rx, mut tx) = pair(64);
    let rt = runtime();
    rt.block_on(async {
        let mut batch = FrameBatch::new();
        tx.send_many(&[b"a".as_slice()]).await.unwrap();
        assert_eq!(rx.recv_many(&mut batch, 5).await.unwrap(), 1);
        rx.flush().unwrap();
        let waited =
            ::tokio::time::timeout(Duration::from_millis(20), rx.recv_many(&mut batch, 5)).await;
        assert!(waited.is_err(), "nothing sent: the recv_many waits");
        assert_eq!(batch.iter().collect::<Vec<_>>(), [b"a"], "left as it was");
        // 8 words: two frames of 3 words fit, the third waits.
        let frames = [frame(16, 1), frame(16, 2), frame(16, 3)];
        let waited = ::tokio::time::timeout(Duration::from_millis(20), tx.send_many(&frames)).await;
        assert!(waited.is_err(), "no room for the third: send_many waits");
        batch.clear();
        assert_eq!(rx.recv_many(&mut batch, 5).await.unwrap(), 2, "the prefix");
        assert_eq!(batch.iter().collect::<Vec<_>>(), [&frames[0], &frames[1]]);
        rx.flush().unwrap();
        assert_empty(&mut rx);
    });
}

/// The Sink: `forward` of frames of every size through a small ring (most
/// find it full and are held, then written by the next `poll_ready`) to a
/// Receiver in another thread, then the close; each arrives once, whole,
/// in order.
#[cfg(feature = "tokio")]
#[test]
fn forward_into_the_sink_carries_every_frame_then_the_close() {
    use futures_util::StreamExt;
    let (mut rx, mut tx) = pair(128);
    let max = tx.max_frame();
    let len = move |i: usize| (i * 7) % (max + 1);
    let receiver = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut i = 0;
        while let Some(n) = rx.blocking_recv(&mut buf).unwrap() {
            assert_eq!(n, len(i), "frame {i}");
            assert!(buf.iter().all(|&b| b == i as u8), "frame {i}");
            i += 1;
        }
        i
    });
    runtime().block_on(async {
        let frames = futures_util::stream::iter((0..2000).map(|i| Ok(frame(len(i), i as u8))));
        frames.forward(&mut tx).await.unwrap();
    });
    assert_eq!(receiver.join().unwrap(), 2000);
}

/// The Sink's `feed` writes without publishing, `flush` publishes; a frame
/// that finds no room is held (and `start_send` refuses another until
/// `poll_ready` wrote it); a frame larger than the ring is refused with
/// nothing written.
#[cfg(feature = "tokio")]
#[test]
fn the_sink_publishes_on_flush_and_holds_one_frame_at_most() {
    use futures_util::{Sink, SinkExt};
    // 128 words; the Sink publishes by itself once 16 wait.
    let (mut rx, mut tx) = pair(1024);
    runtime().block_on(async {
        tx.feed(frame(8, 1)).await.unwrap(); // 2 words, words 0..2
        assert_empty(&mut rx);
        tx.flush().await.unwrap();
        let e = tx.feed(frame(1017, 9)).await.unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(a) if a.what() == "frame length"),
            "{e}"
        );
        tx.feed(frame(992, 2)).await.unwrap(); // 125 words, 2..127
        tx.feed(frame(8, 3)).await.unwrap(); // 2 words: 1 free, held
        assert_eq!(tx.held.as_ref().map(Vec::len), Some(8));
        let e = std::pin::Pin::new(&mut tx)
            .start_send(frame(0, 4))
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(a) if a.what() == "start_send"),
            "{e}"
        );
    });
    assert_eq!(recv(&mut rx), frame(8, 1));
    rx.flush().unwrap(); // 3 words free: a skip of 1 and the held frame
    runtime().block_on(async { tx.flush().await.unwrap() });
    assert!(tx.held.is_none());
    assert_eq!(recv(&mut rx), frame(992, 2));
    assert_eq!(recv(&mut rx), frame(8, 3));
    assert_empty(&mut rx);
}

/// Cancelled async calls lose nothing: a `reserve` dropped while it waits
/// for room publishes nothing and its wait is withdrawn by the next
/// publish; a `recv` dropped while it waits leaves `buf` and the ring as
/// they were.
#[cfg(feature = "tokio")]
#[test]
fn cancelled_reserve_and_recv_lose_nothing() {
    use std::time::Duration;
    let (mut rx, mut tx) = pair(64);
    let rt = runtime();
    rt.block_on(async {
        tx.send(&frame(48, 1)).await.unwrap(); // 7 of 8 words
        let waited = ::tokio::time::timeout(Duration::from_millis(20), tx.reserve(16)).await;
        assert!(waited.is_err(), "no room: the reserve waits");
        assert_eq!(head(&tx), 7, "a cancelled reserve publishes nothing");
        let mut buf = Vec::new();
        assert_eq!(rx.recv(&mut buf).await.unwrap(), Some(48));
        rx.flush().unwrap();
        let waited = ::tokio::time::timeout(Duration::from_millis(20), rx.recv(&mut buf)).await;
        assert!(waited.is_err(), "nothing sent: the recv waits");
        assert_eq!(buf, frame(48, 1), "a cancelled recv leaves buf");
        tx.send(&frame(16, 2)).await.unwrap();
        let state = tx.inner.tx.ring.state().unwrap().load(Ordering::Relaxed);
        assert_eq!(
            state & crate::ring::protocol::WAITING,
            0,
            "the cancelled wait was withdrawn"
        );
        assert_eq!(rx.recv(&mut buf).await.unwrap(), Some(16));
        assert_eq!(buf, frame(16, 2));
    });
}
