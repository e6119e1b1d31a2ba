//! The Sender as a `futures::Sink` and its reserved slots (#24.3), through
//! the public API: `StreamExt::forward` into the Sink (from a stream of
//! values, and from another ring's Receiver: `rx.forward(tx)`), what
//! `start_send` publishes (nothing until a flush, a quarter ring, a wait
//! for space, or the Sender's drop), `poll_close` as a clean close, and
//! `reserve`/`try_reserve`/`blocking_reserve`: a committed slot arrives, a
//! dropped one publishes nothing.
//!
//! Both ends are in this process (the Sender connected from a thread), on
//! `Doorbell` and `Poll` (the conformance suite runs the ring on every
//! backend).

#![cfg(feature = "tokio")]

use std::mem::offset_of;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use futures_util::{Sink, SinkExt, StreamExt};
use memfd_tripwire::ring::{Receiver, Sender, SharedRing, TryRecvError, TrySendError};
use memfd_tripwire::{Backend, Error};

mod support;

/// Values per relay: many times the ring and tokio's coop budget (128).
const N: u64 = 20_000;

const HOST_BACKENDS: [Backend; 2] = [Backend::Doorbell, Backend::Poll];

fn ring<T: bytemuck::Pod>(backend: Backend, capacity: usize) -> (Receiver<T>, Sender<T>) {
    let rx = SharedRing::<T>::builder(capacity)
        .backend(backend)
        .create()
        .expect("ring");
    support::with_sender(rx)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Receives everything on a thread (`blocking_recv`) until the ring ends.
fn receiver(mut rx: Receiver<u64>) -> JoinHandle<Result<Vec<u64>, Error>> {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Some(v) = rx.blocking_recv()? {
            got.push(v);
        }
        Ok(got)
    })
}

fn assert_in_order(backend: Backend, got: &[u64], n: u64) {
    let at = got.iter().zip(0..).take_while(|&(&v, i)| v == i).count();
    assert!(
        at == got.len() && got.len() as u64 == n,
        "{backend:?}: {} of {n} received, first difference at {at}: {:?}",
        got.len(),
        &got[at..got.len().min(at + 8)]
    );
}

/// One poll of the Sink's `poll_ready`, in a runtime (a wait for space
/// registers with its reactor).
fn poll_ready_once(rt: &tokio::runtime::Runtime, tx: &mut Sender<u64>) -> Poll<Result<(), Error>> {
    rt.block_on(std::future::poll_fn(|cx: &mut Context<'_>| {
        Poll::Ready(Pin::new(&mut *tx).poll_ready(cx))
    }))
}

/// `StreamExt::forward` of a stream of values into the Sink: every value
/// arrives, in order, through a ring much smaller than the stream; the
/// forward's close ends the Receiver with `Ok(None)`.
#[test]
fn forward_of_a_stream_into_the_sink_arrives_in_order_then_closes() {
    for backend in HOST_BACKENDS {
        let (rx, tx) = ring::<u64>(backend, 64);
        let got = receiver(rx);
        runtime()
            .block_on(futures_util::stream::iter((0..N).map(Ok)).forward(tx))
            .expect("forward");
        let got = got.join().expect("thread").expect("the ring ends cleanly");
        assert_in_order(backend, &got, N);
    }
}

/// `rx.forward(tx)`: a ring's Receiver (a `Stream` of `Result<T, Error>`)
/// relayed into another ring's Sender with no adapter; the first ring's
/// close ends the relay, which closes the second.
#[test]
fn rx_forward_tx_relays_one_ring_into_another() {
    for backend in HOST_BACKENDS {
        let (rx_a, mut tx_a) = ring::<u64>(backend, 32);
        let (rx_b, tx_b) = ring::<u64>(backend, 16);
        let source = std::thread::spawn(move || {
            for v in 0..N {
                tx_a.blocking_send(v).expect("send");
            }
        });
        let got = receiver(rx_b);
        runtime().block_on(rx_a.forward(tx_b)).expect("relay");
        source.join().expect("source");
        let got = got.join().expect("thread").expect("the ring ends cleanly");
        assert_in_order(backend, &got, N);
    }
}

/// `start_send` (`feed`) publishes nothing: `try_recv` sees nothing until
/// `flush`, then every value in order; `close` ends the Receiver, and a
/// send after it fails.
#[test]
fn start_send_is_published_by_flush_and_close_ends_the_ring() {
    for backend in HOST_BACKENDS {
        let (mut rx, mut tx) = ring::<u64>(backend, 64);
        let rt = runtime();
        rt.block_on(async {
            for v in 0..3 {
                tx.feed(v).await.expect("feed");
            }
        });
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "{backend:?}");
        assert_eq!(rx.len(), 0, "{backend:?}: nothing published");
        assert_eq!(tx.len(), 3, "{backend:?}: written values count as sent");
        rt.block_on(tx.flush()).expect("flush");
        for v in 0..3 {
            assert_eq!(rx.try_recv(), Ok(v), "{backend:?}");
        }
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "{backend:?}");

        rt.block_on(async {
            tx.feed(3).await.expect("feed");
            tx.close().await.expect("close");
        });
        assert_eq!(rx.try_recv(), Ok(3), "{backend:?}: close flushes");
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed), "{backend:?}");
        assert!(matches!(rt.block_on(rx.recv()), Ok(None)), "{backend:?}");
        let after = rt.block_on(tx.send(4));
        assert!(
            matches!(
                after.as_ref().map_err(|e| e.error()),
                Err(Error::InvalidArgument(_))
            ),
            "{backend:?}: {after:?}"
        );
        assert!(tx.try_send(4).is_err(), "{backend:?}");
    }
}

/// Written values are published on their own after a quarter ring, so a
/// Receiver is not kept waiting by a writer that never flushes.
#[test]
fn start_send_publishes_a_quarter_ring_on_its_own() {
    let (rx, mut tx) = ring::<u64>(Backend::Doorbell, 16);
    runtime().block_on(async {
        for v in 0..3 {
            tx.feed(v).await.expect("feed");
        }
        assert_eq!(rx.len(), 0, "below the batch");
        tx.feed(3).await.expect("feed");
    });
    assert_eq!(rx.len(), 4, "a quarter of 16: published without a flush");
}

/// A ring full of published values and values written but not flushed:
/// `poll_ready` publishes the written ones before it waits for space (or
/// the Receiver, which cannot take what it was never shown, and the
/// Sender would wait for each other for ever).
#[test]
fn poll_ready_on_a_full_ring_publishes_what_was_written() {
    let (mut rx, mut tx) = ring::<u64>(Backend::Doorbell, 16);
    let first: Vec<u64> = (0..14).collect();
    assert_eq!(tx.try_send_slice(&first).expect("send"), 14);
    let rt = runtime();
    rt.block_on(async {
        tx.feed(14).await.expect("feed");
        tx.feed(15).await.expect("feed");
    });
    assert_eq!(rx.len(), 14, "2 written, below the batch of 4");
    let ready = poll_ready_once(&rt, &mut tx);
    assert!(ready.is_pending(), "the ring is full: {ready:?}");
    assert_eq!(rx.len(), 16, "published before the wait");
    let mut buf = [0u64; 16];
    assert_eq!(rx.try_recv_into(&mut buf), Ok(16));
    assert_eq!(buf.to_vec(), (0..16).collect::<Vec<_>>());
    rx.flush().expect("publish the tail");
    rt.block_on(tx.send(16)).expect("space again");
    assert_eq!(rx.try_recv(), Ok(16));
}

/// `start_send` without a free slot (no `poll_ready`) is refused and writes
/// nothing.
#[test]
fn start_send_on_a_full_ring_is_refused() {
    let (mut rx, mut tx) = ring::<u64>(Backend::Doorbell, 4);
    assert_eq!(tx.try_send_slice(&[0, 1, 2, 3]).expect("send"), 4);
    let refused = Pin::new(&mut tx).start_send(99);
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "{refused:?}"
    );
    drop(tx);
    let mut buf = [0u64; 8];
    assert_eq!(rx.try_recv_into(&mut buf), Ok(4));
    assert_eq!(buf[..4], [0, 1, 2, 3]);
    assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
}

/// A Sender dropped with written, unflushed values publishes them, then
/// closes the ring cleanly: nothing is lost.
#[test]
fn a_dropped_sender_publishes_what_it_wrote() {
    for backend in HOST_BACKENDS {
        let (mut rx, mut tx) = ring::<u64>(backend, 64);
        runtime().block_on(async {
            tx.feed(1).await.expect("feed");
            tx.feed(2).await.expect("feed");
        });
        assert_eq!(rx.len(), 0, "{backend:?}");
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(1), "{backend:?}");
        assert_eq!(rx.try_recv(), Ok(2), "{backend:?}");
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed), "{backend:?}");
    }
}

/// A 4 KiB message, as a user of `reserve` would send one.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Page {
    seq: u64,
    data: [u8; 4080],
    check: u64,
}

/// Each way to reserve: the slot, filled field by field and committed,
/// arrives whole and in order.
#[test]
fn a_reserved_slot_filled_in_place_and_committed_arrives() {
    for backend in HOST_BACKENDS {
        let (mut rx, mut tx) = ring::<Page>(backend, 4);
        let rt = runtime();
        for seq in 0..12u64 {
            let fill = |slot: &mut memfd_tripwire::ring::SendSlot<'_, Page>| {
                slot.write_at(offset_of!(Page, seq), &seq).expect("seq");
                slot.write_bytes(offset_of!(Page, data), &[seq as u8; 4080])
                    .expect("data");
                slot.write_at(offset_of!(Page, check), &!seq)
                    .expect("check");
            };
            match seq % 3 {
                0 => {
                    let mut slot = tx.try_reserve().expect("a free slot");
                    fill(&mut slot);
                    slot.commit().expect("commit");
                }
                1 => {
                    let mut slot = tx.blocking_reserve().expect("a free slot");
                    fill(&mut slot);
                    slot.commit().expect("commit");
                }
                _ => rt.block_on(async {
                    let mut slot = tx.reserve().await.expect("a free slot");
                    fill(&mut slot);
                    slot.commit().expect("commit");
                }),
            }
            let page = rx.try_recv().expect("the committed slot");
            assert_eq!(page.seq, seq, "{backend:?}");
            assert_eq!(page.data, [seq as u8; 4080], "{backend:?}");
            assert_eq!(page.check, !seq, "{backend:?}");
            rx.flush().expect("publish the tail");
        }
        let mut slot = tx.try_reserve().expect("a free slot");
        assert!(
            matches!(
                slot.write_bytes(4090, &[0; 8]),
                Err(Error::OutOfBounds { size: 4096, .. })
            ),
            "past the end of the value"
        );
        slot.write(&Page {
            seq: 99,
            data: [9; 4080],
            check: !99,
        })
        .expect("a whole value");
        slot.commit().expect("commit");
        assert_eq!(rx.try_recv().expect("whole").seq, 99);
    }
}

/// A reservation dropped without a commit publishes nothing and leaves the
/// ring as it was: the next send (or reservation) takes the same slot and
/// arrives alone.
#[test]
fn a_dropped_reservation_publishes_nothing_and_the_next_send_works() {
    for backend in HOST_BACKENDS {
        let (mut rx, mut tx) = ring::<u64>(backend, 4);
        let rt = runtime();
        for round in 0..6u64 {
            let mut slot = match round % 3 {
                0 => tx.try_reserve().expect("a free slot"),
                1 => tx.blocking_reserve().expect("a free slot"),
                _ => rt.block_on(tx.reserve()).expect("a free slot"),
            };
            slot.write(&0xdead).expect("write");
            drop(slot);
            assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "{backend:?}");
            assert_eq!((rx.len(), tx.len()), (0, 0), "{backend:?}: head unmoved");
            tx.try_send(round).expect("send");
            assert_eq!(rx.try_recv(), Ok(round), "{backend:?}");
            assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "{backend:?}");
            rx.flush().expect("publish the tail");
        }
        // A full ring: no slot to reserve, as no slot to send into.
        while tx.try_send_slice(&[0, 1, 2, 3]).expect("send") > 0 {}
        assert_eq!(rx.len(), 4, "{backend:?}");
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Full(()))));
        drop(rx);
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Closed(()))));
    }
}

/// `reserve().await` dropped while it waits on a full ring: nothing is
/// written or published, and once space comes the next reservation takes
/// the slot and arrives after what was there, in order.
#[test]
fn a_reserve_dropped_while_waiting_on_a_full_ring_loses_nothing() {
    for backend in HOST_BACKENDS {
        let (mut rx, mut tx) = ring::<u64>(backend, 4);
        let rt = runtime();
        while tx.try_send_slice(&[0, 1, 2, 3]).expect("send") > 0 {}
        let waited = rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(20), tx.reserve())
                .await
                .map(|slot| slot.map(drop))
        });
        assert!(
            waited.is_err(),
            "{backend:?}: the ring was full: {waited:?}"
        );
        assert_eq!(rx.len(), 4, "{backend:?}");
        let mut buf = [0u64; 4];
        assert_eq!(rx.try_recv_into(&mut buf), Ok(4), "{backend:?}");
        assert_eq!(buf, [0, 1, 2, 3], "{backend:?}");
        rx.flush().expect("publish the tail");
        rt.block_on(async {
            let mut slot = tx.reserve().await.expect("space");
            slot.write(&4).expect("write");
            slot.commit().expect("commit");
        });
        assert_eq!(rx.try_recv(), Ok(4), "{backend:?}");
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "{backend:?}");
    }
}
