//! A hostile peer against the batched calls: a Sender scribbling length
//! words, skip markers and heads under `pop_frames` / `blocking_recv_many`
//! (checked against a model of what a correct Receiver takes), the
//! `FrameBatch`'s growth per call, a Receiver scribbling tails against
//! `blocking_send_many` and the Sink, odd inputs of `send_many`, and the
//! Sink's misuse.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::batch::pop_frames;
#[cfg(feature = "tokio")]
use super::tests::runtime;
use super::tests::{frame, pair};
use super::walk::SKIP;
use super::{FrameBatch, FrameSender};
use crate::Error;
#[cfg(feature = "tokio")]
use crate::ring::TryRecvError;
use crate::ring::layout;

/// xorshift64*: reproducible randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// A length word a hostile Sender might write in a ring of `cap` words.
    fn length_word(&mut self, cap: u64) -> u64 {
        let max = (cap - 1) * 8;
        match self.below(8) {
            0 => 0,
            1 => SKIP,
            2 => max,
            3 => max + 1 + self.below(16),
            4 => self.next(),
            5 => SKIP - 1 - self.below(4),
            _ => self.below(max + 1),
        }
    }
    fn limit(&mut self) -> usize {
        match self.below(5) {
            0 => 1,
            1 => 2,
            2 => usize::MAX,
            _ => 1 + self.below(8) as usize,
        }
    }
}

fn write_word(tx: &FrameSender, i: u64, cap: u64, value: u64) {
    tx.inner
        .tx
        .ring
        .slots
        .write(((i % cap) * 8) as usize, &value)
        .unwrap();
}

fn store_head(tx: &FrameSender, head: u64) {
    tx.inner
        .tx
        .ring
        .head()
        .unwrap()
        .store(head, Ordering::Release);
}

/// What a correct Receiver takes from a byte area of `area.len()` words,
/// from `tail`, with the head known `known` and the head now `head`
/// (re-read once the known one is reached), up to `limit` frames: the
/// frames, the tail after, and whether it stopped at something corrupt.
/// Written from the spec in `frames/mod.rs`, not from `walk`.
fn model(
    area: &[u64],
    tail: u64,
    known: u64,
    head: u64,
    limit: usize,
) -> (Vec<Vec<u8>>, u64, bool) {
    let cap = area.len() as u64;
    let bytes: &[u8] = bytemuck::cast_slice(area);
    let mut frames = Vec::new();
    let (mut t, mut h, mut reread) = (tail, known, false);
    loop {
        if frames.len() >= limit {
            return (frames, t, false);
        }
        if t == h {
            if reread {
                return (frames, t, false);
            }
            reread = true;
            if head.wrapping_sub(t) > cap {
                return (frames, t, true);
            }
            h = head;
            if t == h {
                return (frames, t, false);
            }
        }
        let ready = h.wrapping_sub(t);
        let off = t % cap;
        let w = area[off as usize];
        if w == SKIP {
            if off == 0 || cap - off > ready {
                return (frames, t, true);
            }
            t = t.wrapping_add(cap - off);
            continue;
        }
        if w > (cap - 1) * 8 {
            return (frames, t, true);
        }
        let words = 1 + w.div_ceil(8);
        if words > cap - off || words > ready {
            return (frames, t, true);
        }
        let at = (off as usize + 1) * 8;
        frames.push(bytes[at..at + w as usize].to_vec());
        t = t.wrapping_add(words);
    }
}

/// A single-threaded hostile Sender: valid frames, skips (with a frame or
/// alone), corrupt words in and out of what is published, heads cutting
/// frames, moving backwards or absurd, then a batched receive with a
/// random limit; every outcome is what the model says (the same frames,
/// the same tail, `Corrupt` exactly when it says so), never a panic.
#[test]
fn hostile_words_and_heads_give_the_model_s_frames_or_corrupt() {
    for (cap_bytes, seed) in [(16usize, 1u64), (64, 2), (4096, 3), (64, 4), (16, 5)] {
        let (mut rx, tx) = pair(cap_bytes);
        let cap = (cap_bytes / 8) as u64;
        let max = (cap - 1) * 8;
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut wh = 0u64; // the head a well-behaved writer would be at
        let mut batch = FrameBatch::new();
        let (mut ok_frames, mut corrupts) = (0usize, 0usize);
        let mut last_corrupt = false;
        for round in 0..4000 {
            let rt = rx.inner.rx.tail;
            if wh.wrapping_sub(rt) > cap {
                wh = rt.max(rx.inner.rx.known_head);
                if wh.wrapping_sub(rt) > cap {
                    wh = rt;
                }
            }
            let mode = if last_corrupt && rng.below(2) == 0 {
                99
            } else {
                rng.below(10)
            };
            match mode {
                0..=4 => {
                    for _ in 0..=rng.below(4) {
                        let len = if rng.below(3) == 0 {
                            rng.below(max + 1)
                        } else {
                            rng.below(24.min(max + 1))
                        };
                        let words = 1 + len.div_ceil(8);
                        let off = wh % cap;
                        let to_end = cap - off;
                        let free = cap - wh.wrapping_sub(rt);
                        if words > to_end {
                            if free >= to_end && (free < to_end + words || rng.below(4) == 0) {
                                // The skip alone.
                                write_word(&tx, wh, cap, SKIP);
                                wh = wh.wrapping_add(to_end);
                                break;
                            }
                            if free < to_end + words {
                                break;
                            }
                            write_word(&tx, wh, cap, SKIP);
                            wh = wh.wrapping_add(to_end);
                        } else if free < words {
                            break;
                        }
                        write_word(&tx, wh, cap, len);
                        let payload: Vec<u8> =
                            (0..len).map(|i| (i as u8) ^ (round as u8)).collect();
                        tx.inner
                            .tx
                            .ring
                            .slots
                            .write_bytes(((wh % cap + 1) * 8) as usize, &payload)
                            .unwrap();
                        wh = wh.wrapping_add(words);
                    }
                    store_head(&tx, wh);
                }
                5 => {
                    // A hostile word inside what is published.
                    let span = wh.wrapping_sub(rt);
                    let i = rt.wrapping_add(rng.below(span.max(1)));
                    let w = rng.length_word(cap);
                    write_word(&tx, i, cap, w);
                    store_head(&tx, wh);
                }
                6 => {
                    let h = match rng.below(4) {
                        0 => rt.wrapping_sub(1 + rng.below(cap)),
                        1 => rt.wrapping_add(cap + 1 + rng.below(cap)),
                        2 => rng.next(),
                        _ => u64::MAX - rng.below(4),
                    };
                    store_head(&tx, h);
                }
                7 => store_head(&tx, rt.wrapping_add(rng.below(cap + 1))),
                8 => {
                    let i = rng.below(cap);
                    let w = rng.length_word(cap);
                    write_word(&tx, i, cap, w);
                    store_head(&tx, wh);
                }
                99 => {
                    // Repair: zero-length frames up to the head known, so
                    // that the walk can go on.
                    let kh = rx.inner.rx.known_head;
                    let kh = if kh.wrapping_sub(rt) > cap { rt } else { kh };
                    let mut i = rt;
                    while i != kh {
                        write_word(&tx, i, cap, 0);
                        i = i.wrapping_add(1);
                    }
                    wh = kh;
                    store_head(&tx, wh);
                }
                _ => {}
            }
            // The receive, against the model.
            let area: Vec<u64> = (0..cap)
                .map(|i| rx.inner.rx.ring.slots.read((i * 8) as usize).unwrap())
                .collect();
            let tail = rx.inner.rx.tail;
            let known = rx.inner.rx.known_head;
            let head = tx.inner.tx.ring.head().unwrap().load(Ordering::Relaxed);
            let limit = rng.limit();
            let (want, want_tail, want_corrupt) = model(&area, tail, known, head, limit);
            if rng.below(2) == 0 {
                batch.clear();
            }
            let before = batch.len();
            let blocking = rng.below(3) == 0 && (want_corrupt || !want.is_empty());
            let got = if blocking {
                rx.blocking_recv_many(&mut batch, limit)
            } else {
                pop_frames(&mut rx.inner.rx, &mut batch, limit)
            };
            let ctx = format!(
                "cap {cap} round {round} mode {mode} tail {tail} known {known} head {head} \
                 limit {limit}: {got:?}"
            );
            match &got {
                Ok(n) => {
                    assert!(!want_corrupt, "{ctx}: the model says corrupt");
                    assert_eq!(*n, want.len(), "{ctx}");
                }
                Err(Error::Corrupt { .. }) => {
                    assert!(want_corrupt, "{ctx}: the model says fine");
                }
                Err(e) => panic!("{ctx}: {e}"),
            }
            last_corrupt = got.is_err();
            corrupts += usize::from(got.is_err());
            let taken: Vec<&[u8]> = batch.iter().skip(before).collect();
            assert_eq!(taken.len(), want.len(), "{ctx}");
            for (a, b) in taken.iter().zip(&want) {
                assert_eq!(a, &b.as_slice(), "{ctx}");
            }
            ok_frames += want.len();
            assert_eq!(rx.inner.rx.tail, want_tail, "{ctx}");
        }
        assert!(ok_frames > 1000, "cap {cap}: only {ok_frames} frames");
        assert!(corrupts > 100, "cap {cap}: only {corrupts} corrupt");
    }
}

/// A Sender thread scribbling words and heads (plausible and wild) and
/// ringing, while the Receiver takes batches with random limits: each call
/// returns (a watchdog bounds it) with frames inside its batch or
/// `Corrupt`, and a batch never grows past a budget and a frame per call.
#[test]
fn a_scribbling_sender_never_hangs_or_overfills_a_batched_receive() {
    for (cap_bytes, seed) in [(16usize, 11u64), (64, 12), (4096, 13)] {
        let (mut rx, tx) = pair(cap_bytes);
        let cap = (cap_bytes / 8) as u64;
        let stop = Arc::new(AtomicBool::new(false));
        let scribbler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(seed | 1);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let tail = tx.inner.tx.ring.control.load_u64(layout::TAIL).unwrap();
                    for _ in 0..=rng.below(4) {
                        let i = rng.below(cap);
                        let w = rng.length_word(cap);
                        write_word(&tx, i, cap, w);
                    }
                    let h = match rng.below(8) {
                        0 => rng.next(),
                        1 => tail.wrapping_sub(1),
                        _ => tail.wrapping_add(rng.below(cap + 1)),
                    };
                    store_head(&tx, h);
                    let _ = tx.inner.tx.producer.notify();
                    n += 1;
                    if n % 64 == 0 {
                        std::thread::yield_now();
                    }
                }
                tx
            })
        };
        let (ticks, tick) = mpsc::channel();
        let receiver = std::thread::spawn(move || {
            let mut rng = Rng(seed.wrapping_mul(31) | 1);
            let mut batch = FrameBatch::new();
            let (mut frames, mut corrupt) = (0usize, 0usize);
            for _ in 0..3000 {
                batch.clear();
                let limit = rng.limit();
                let got = if rng.below(2) == 0 {
                    rx.blocking_recv_many(&mut batch, limit)
                } else {
                    pop_frames(&mut rx.inner.rx, &mut batch, limit)
                };
                match got {
                    Ok(n) => {
                        assert!(n <= limit && n == batch.len(), "{n} of {limit}");
                        frames += n;
                    }
                    Err(Error::Corrupt { .. }) => corrupt += 1,
                    Err(e) => panic!("cap {cap}: {e}"),
                }
                let bytes: usize = batch.iter().map(<[u8]>::len).sum();
                let max = 16 * 1024 + cap as usize * 8;
                assert!(bytes <= max, "cap {cap}: {bytes} bytes in one call");
                assert!(
                    batch.words_held() <= 2048 + cap as usize,
                    "cap {cap}: {} words held",
                    batch.words_held()
                );
                for f in &batch {
                    assert!(f.len() <= (cap as usize - 1) * 8);
                }
                ticks.send(()).unwrap();
            }
            (frames, corrupt)
        });
        loop {
            match tick.recv_timeout(Duration::from_secs(20)) {
                Ok(()) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("cap {cap}: a batched receive hung for 20 s")
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let (frames, corrupt) = receiver.join().expect("no panic in the receiver");
        drop(scribbler.join().unwrap());
        assert!(corrupt > 0, "cap {cap}: {frames} frames, no corrupt");
    }
}

/// One batched receive takes about 16 KiB whatever the limit: a ring of
/// 64 KiB full of zero-length frames gives 2048 frames a call, not 8192;
/// a first frame of the whole ring is taken alone. The batch's memory
/// stays within the budget and a frame.
#[test]
fn one_batched_receive_takes_about_16_kib_with_any_limit() {
    let (mut rx, mut tx) = pair(1 << 16);
    let cap = 8192;
    let empties: Vec<&[u8]> = vec![b""; cap];
    tx.blocking_send_many(&empties).unwrap();
    let mut batch = FrameBatch::new();
    let mut total = 0;
    for _ in 0..4 {
        batch.clear();
        let n = rx.blocking_recv_many(&mut batch, usize::MAX).unwrap();
        assert!(n <= 2048, "{n} frames in one call");
        assert!(batch.words_held() <= 2048, "{}", batch.words_held());
        total += n;
    }
    assert_eq!(total, cap);
    rx.flush().unwrap();
    // A frame of the whole ring, then small ones after it.
    let big = frame(tx.max_frame(), 7);
    tx.blocking_send(&big).unwrap();
    batch.clear();
    assert_eq!(rx.blocking_recv_many(&mut batch, usize::MAX).unwrap(), 1);
    assert_eq!(batch.get(0).unwrap(), big.as_slice());
    assert!(batch.words_held() <= cap, "{}", batch.words_held());
}

/// A Receiver scribbling tails (plausible, backwards, past the head,
/// absurd), flooding the space bell and taking frames now and then,
/// against `blocking_send_many` and the Sink: each call returns Ok,
/// `Corrupt`, or (once the Receiver is dropped) `Closed`, and the Sender's
/// own indices stay consistent (the next slot at most a ring ahead of the
/// tail it accepted, the published head its own).
#[test]
fn a_scribbling_receiver_never_breaks_the_batched_sender() {
    for (cap_bytes, seed) in [(16usize, 21u64), (64, 22), (4096, 23)] {
        let (mut rx, mut tx) = pair(cap_bytes);
        let cap = (cap_bytes / 8) as u64;
        let max = tx.max_frame() as u64;
        let sender = std::thread::spawn(move || {
            let mut rng = Rng(seed | 1);
            #[cfg(feature = "tokio")]
            let rt = runtime();
            let (mut ok, mut corrupt) = (0usize, 0usize);
            for op in 0.. {
                let frames: Vec<Vec<u8>> = (0..=rng.below(20))
                    .map(|i| frame(rng.below(max.min(40) + 1) as usize, i as u8))
                    .collect();
                let outcome = match op % 3 {
                    #[cfg(feature = "tokio")]
                    0 => rt.block_on(async {
                        use futures_util::SinkExt;
                        for f in frames {
                            SinkExt::feed(&mut tx, f).await?;
                        }
                        SinkExt::flush(&mut tx).await
                    }),
                    1 => tx.blocking_send(&frames[0]),
                    _ => tx.blocking_send_many(&frames).map_err(|e| e.error),
                };
                let (head, pending, tail) = tx.inner.tx.indices();
                let published = tx.inner.tx.ring.head().unwrap().load(Ordering::Relaxed);
                assert_eq!(published, head, "op {op}: the head is the Sender's");
                assert!(
                    head.wrapping_add(pending).wrapping_sub(tail) <= cap,
                    "op {op}: head {head} + {pending} written, tail {tail}"
                );
                match outcome {
                    Ok(()) => ok += 1,
                    Err(Error::Corrupt { .. }) => corrupt += 1,
                    Err(Error::Closed | Error::PeerDied) => return (ok, corrupt),
                    // A Sink that failed (Corrupt) while it held a frame:
                    // the direct sends after it are refused, not reordered.
                    Err(Error::InvalidArgument(a)) if a.what() == "send" && tx.held.is_some() => {}
                    Err(e) => panic!("op {op}: {e}"),
                }
            }
            unreachable!()
        });
        let mut rng = Rng(seed.wrapping_mul(77) | 1);
        let mut batch = FrameBatch::new();
        let until = Instant::now() + Duration::from_millis(700);
        while Instant::now() < until {
            let control = &rx.inner.rx.ring.control;
            let old = control.load_u64(layout::TAIL).unwrap();
            let head = rx.inner.rx.ring.head().unwrap().load(Ordering::Relaxed);
            let tail = match rng.below(8) {
                0 => rng.next(),
                1 => old.wrapping_sub(1 + rng.below(cap)),
                2 => head.wrapping_add(1 + rng.below(cap)),
                3 | 4 => old.wrapping_add(rng.below(head.wrapping_sub(old).min(cap) + 1)),
                _ => {
                    batch.clear();
                    let _ = pop_frames(&mut rx.inner.rx, &mut batch, rng.limit());
                    let _ = rx.flush();
                    rx.inner.rx.ring_space();
                    continue;
                }
            };
            control
                .atomic_u64(layout::TAIL)
                .unwrap()
                .store(tail, Ordering::Release);
            rx.inner.rx.ring_space();
            if rng.below(16) == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        drop(rx);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sender.is_finished() {
            assert!(
                Instant::now() < deadline,
                "cap {cap}: the Sender hung after the Receiver left"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let (ok, corrupt) = sender.join().expect("no panic in the sender");
        assert!(ok + corrupt > 0, "cap {cap}");
    }
}

/// `send_many`'s odd inputs: nothing (publishes nothing), zero-length
/// frames, a frame of exactly `max_frame` mid-ring (after its skip), a
/// frame larger than the ring in the middle of unpublished ones (they are
/// published, `sent` counts them), and many tiny frames through a small
/// ring, in order.
#[test]
fn send_many_with_odd_inputs() {
    let (mut rx, mut tx) = pair(64);
    let none: [&[u8]; 0] = [];
    tx.blocking_send_many(&none).unwrap();
    assert_eq!(tx.inner.tx.head, 0, "nothing published");
    tx.blocking_send_many(&[b"".as_slice(), b"", b"abc"])
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(rx.try_recv(&mut buf).unwrap(), 0);
    assert_eq!(rx.try_recv(&mut buf).unwrap(), 0);
    assert_eq!(rx.try_recv(&mut buf).unwrap(), 3);
    rx.flush().unwrap();
    // At word 4 of 8: a frame of the whole ring needs a skip published
    // alone and the Receiver past it: another thread receives.
    let max = frame(tx.max_frame(), 5);
    let receiver = std::thread::spawn(move || {
        let mut batch = FrameBatch::new();
        while rx.blocking_recv_many(&mut batch, usize::MAX).unwrap() > 0 {}
        (rx, batch)
    });
    tx.blocking_send_many(&[b"x".as_slice(), &max, b"y"])
        .unwrap();
    let too_big = frame(57, 1);
    let e = tx
        .blocking_send_many(&[b"a".as_slice(), b"b", &too_big, b"c"])
        .unwrap_err();
    assert_eq!(e.sent, 2, "{e}");
    assert!(matches!(&e.error, Error::InvalidArgument(a) if a.what() == "frame length"));
    let tiny: Vec<[u8; 1]> = (0..20_000u32).map(|i| [i as u8]).collect();
    tx.blocking_send_many(&tiny).unwrap();
    drop(tx);
    let (_rx, batch) = receiver.join().unwrap();
    let got: Vec<&[u8]> = batch.iter().collect();
    assert_eq!(got.len(), 3 + 2 + tiny.len());
    assert_eq!(got[..5], [b"x".as_slice(), &max, b"y", b"a", b"b"]);
    for (i, f) in got[5..].iter().enumerate() {
        assert_eq!(*f, [i as u8], "tiny frame {i}");
    }
}

/// The async `send_many` with the same odd inputs.
#[cfg(feature = "tokio")]
#[test]
fn async_send_many_with_odd_inputs() {
    let (mut rx, mut tx) = pair(64);
    let receiver = std::thread::spawn(move || {
        let mut batch = FrameBatch::new();
        while rx.blocking_recv_many(&mut batch, 3).unwrap() > 0 {}
        batch
    });
    let max = frame(tx.max_frame(), 5);
    runtime().block_on(async {
        let none: [&[u8]; 0] = [];
        tx.send_many(&none).await.unwrap();
        tx.send_many(&[b"".as_slice(), b"", b"x", &max, b"y"])
            .await
            .unwrap();
        let e = tx
            .send_many(&[b"a".as_slice(), &frame(57, 0), b"c"])
            .await
            .unwrap_err();
        assert_eq!(e.sent, 1);
        let tiny: Vec<[u8; 1]> = (0..5000u32).map(|i| [i as u8]).collect();
        tx.send_many(&tiny).await.unwrap();
    });
    drop(tx);
    let batch = receiver.join().unwrap();
    assert_eq!(batch.len(), 5 + 1 + 5000);
    assert_eq!(batch.get(3).unwrap(), max.as_slice());
    assert_eq!(batch.get(5).unwrap(), b"a");
}

/// `start_send` without `poll_ready` works (when nothing is held); a
/// `FrameSender` dropped while it holds a frame sends it when there is
/// room, then the close.
#[cfg(feature = "tokio")]
#[test]
fn sink_start_send_without_poll_ready_and_a_drop_that_holds() {
    use futures_sink::Sink;
    use std::pin::Pin;
    let (mut rx, mut tx) = pair(64);
    Pin::new(&mut tx).start_send(b"abc".to_vec()).unwrap();
    Pin::new(&mut tx).start_send(frame(40, 1)).unwrap(); // 2 + 6 words: full
    Pin::new(&mut tx).start_send(b"held".to_vec()).unwrap();
    assert!(tx.held.is_some());
    let mut buf = Vec::new();
    // Published by the batch (a word here): take them, then drop the Sender.
    assert_eq!(rx.try_recv(&mut buf).unwrap(), 3);
    assert_eq!(rx.try_recv(&mut buf).unwrap(), 40);
    rx.flush().unwrap();
    drop(tx);
    assert_eq!(rx.blocking_recv(&mut buf).unwrap(), Some(4));
    assert_eq!(buf, b"held");
    assert_eq!(rx.blocking_recv(&mut buf).unwrap(), None);
}

/// `poll_close` twice is Ok, as the typed ring's Sink (and the Tx's
/// close, idempotent).
#[cfg(feature = "tokio")]
#[test]
fn sink_poll_close_twice_is_ok() {
    use futures_util::SinkExt;
    let (mut rx, mut tx) = pair(64);
    runtime().block_on(async {
        SinkExt::send(&mut tx, b"one".to_vec()).await.unwrap();
        SinkExt::close(&mut tx).await.unwrap();
        let again = SinkExt::close(&mut tx).await;
        assert!(again.is_ok(), "a second close: {again:?}");
    });
    let mut buf = Vec::new();
    assert_eq!(rx.blocking_recv(&mut buf).unwrap(), Some(3));
    assert_eq!(rx.blocking_recv(&mut buf).unwrap(), None);
}

/// A `start_send` after `poll_close` is refused (as the typed ring's Sink
/// refuses it) and nothing is written or published after the close.
#[cfg(feature = "tokio")]
#[test]
fn sink_start_send_after_close_is_refused() {
    use futures_sink::Sink;
    use futures_util::SinkExt;
    use std::pin::Pin;
    let (mut rx, mut tx) = pair(64);
    runtime().block_on(async { SinkExt::close(&mut tx).await.unwrap() });
    let head = tx.inner.tx.head;
    let got = Pin::new(&mut tx).start_send(b"late".to_vec());
    // (A ring of 64 bytes publishes every word the Sink writes.)
    assert_eq!(
        tx.inner.tx.head, head,
        "nothing published after the close ({got:?})"
    );
    assert!(
        matches!(&got, Err(Error::InvalidArgument(a)) if a.what() == "Sender"),
        "a start_send after the close: {got:?}"
    );
    let mut buf = Vec::new();
    assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Closed)));
}

/// A frame the Sink holds is not overtaken by a direct send: either it
/// goes first or the direct send is refused (a frame accepted by
/// `start_send` is never reordered).
#[cfg(feature = "tokio")]
#[test]
fn a_held_frame_is_not_overtaken_by_a_direct_send() {
    use futures_sink::Sink;
    use std::pin::Pin;
    let (mut rx, mut tx) = pair(64);
    Pin::new(&mut tx).start_send(frame(48, 1)).unwrap(); // 7 of 8 words
    Pin::new(&mut tx).start_send(b"second".to_vec()).unwrap(); // held
    assert!(tx.held.is_some());
    let mut buf = Vec::new();
    assert_eq!(rx.try_recv(&mut buf).unwrap(), 48);
    rx.flush().unwrap();
    let direct = tx.try_send(b"third");
    let mut order = Vec::new();
    drop(tx); // sends a held frame, if still held
    while let Some(n) = rx.blocking_recv(&mut buf).unwrap() {
        order.push(buf[..n].to_vec());
    }
    match direct {
        Ok(()) => assert_eq!(order, [b"second".to_vec(), b"third".to_vec()], "reordered"),
        Err(e) => {
            assert!(
                matches!(&e, super::TryReserveError::Failed(Error::InvalidArgument(a)) if a.what() == "send"),
                "{e}"
            );
            assert_eq!(order, [b"second".to_vec()]);
        }
    }
}

/// The other sends are refused likewise while a frame is held, with
/// nothing written; after a flush they go.
#[cfg(feature = "tokio")]
#[test]
fn every_direct_send_is_refused_while_the_sink_holds_a_frame() {
    use futures_sink::Sink;
    use futures_util::SinkExt;
    use std::pin::Pin;
    let (mut rx, mut tx) = pair(64);
    Pin::new(&mut tx).start_send(frame(48, 1)).unwrap();
    Pin::new(&mut tx).start_send(b"second".to_vec()).unwrap(); // held
    let head = tx.inner.tx.head;
    let refused = |e: &Error| matches!(e, Error::InvalidArgument(a) if a.what() == "send");
    assert!(refused(&tx.blocking_send(b"x").unwrap_err()));
    assert!(refused(&tx.blocking_reserve(1).unwrap_err()));
    let e = tx.blocking_send_many(&[b"x"]).unwrap_err();
    assert!(e.sent == 0 && refused(&e.error), "{e}");
    runtime().block_on(async {
        assert!(refused(&tx.send(b"x").await.unwrap_err()));
        let e = tx.send_many(&[b"x"]).await.unwrap_err();
        assert!(e.sent == 0 && refused(&e.error), "{e}");
    });
    assert_eq!(tx.inner.tx.head, head, "nothing published");
    let mut buf = Vec::new();
    assert_eq!(rx.try_recv(&mut buf).unwrap(), 48);
    rx.flush().unwrap();
    runtime().block_on(async { SinkExt::flush(&mut tx).await.unwrap() });
    tx.blocking_send(b"third").unwrap();
    assert_eq!(rx.try_recv(&mut buf).unwrap(), 6);
    assert_eq!(rx.try_recv(&mut buf).unwrap(), 5);
}
