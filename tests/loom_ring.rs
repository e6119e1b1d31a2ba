//! Loom models of the ring's protocol (src/ring/protocol.rs), the shipped
//! functions run on loom's atomics, each with a negative control.
//!
//! RUSTFLAGS="--cfg memfd_tripwire_loom" cargo test --release --test loom_ring
#![cfg(memfd_tripwire_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use memfd_tripwire::__loom::ring::{
    Index, State, announce_wait, close, is_closed, load_head, publish_head, publish_tail,
};

/// Index protocol: a slot written before the head is published is seen by
/// a Receiver that sees the head.
fn slot_then_head<I: Index + Send + Sync + 'static>(head: I) {
    let head = Arc::new(head);
    let slot = Arc::new(AtomicU64::new(0));
    let sender = {
        let (head, slot) = (head.clone(), slot.clone());
        loom::thread::spawn(move || {
            slot.store(42, Ordering::Relaxed); // the message (a plain copy)
            publish_head(&*head, 1);
        })
    };
    if load_head(&*head) == 1 {
        assert_eq!(
            slot.load(Ordering::Relaxed),
            42,
            "stale slot: the head came before its data"
        );
    }
    sender.join().unwrap();
}

#[test]
fn published_slots_are_visible() {
    loom::model(|| slot_then_head(AtomicU64::new(0)));
}

/// An index word that ignores the orderings asked for (all Relaxed).
struct RelaxedIndex(AtomicU64);

impl Index for RelaxedIndex {
    fn load(&self, _: Ordering) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    fn store(&self, value: u64, _: Ordering) {
        self.0.store(value, Ordering::Relaxed)
    }
}

#[test]
#[should_panic(expected = "stale slot")]
fn without_release_acquire_a_slot_is_stale() {
    loom::model(|| slot_then_head(RelaxedIndex(AtomicU64::new(0))));
}

/// Waiting flag: the ring is full (head = 1, capacity 1, tail = 0); the
/// Sender announces that it waits while the Receiver frees the slot. Either
/// the Sender sees the space, or the Receiver rings it: never a sleep with
/// nobody to wake it.
fn full_ring_wait<S: State + Send + Sync + 'static>(state: S) {
    let state = Arc::new(state);
    let tail = Arc::new(AtomicU64::new(0));
    let rang = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (state, tail, rang) = (state.clone(), tail.clone(), rang.clone());
        loom::thread::spawn(move || {
            if publish_tail(&*state, &*tail, 1) {
                rang.store(true, Ordering::Relaxed);
            }
        })
    };
    let seen_tail = announce_wait(&*state, &*tail);
    receiver.join().unwrap();
    let sleeps = seen_tail == 0;
    assert!(
        !sleeps || rang.load(Ordering::Relaxed),
        "lost wake-up: the sender sleeps on a ring with space"
    );
}

#[test]
fn a_waiting_sender_is_always_woken() {
    loom::model(|| full_ring_wait(AtomicU64::new(0)));
}

/// The state word with its fence removed.
struct NoFence(AtomicU64);

impl State for NoFence {
    fn load(&self, order: Ordering) -> u64 {
        self.0.load(order)
    }
    fn fetch_or(&self, bits: u64, order: Ordering) -> u64 {
        self.0.fetch_or(bits, order)
    }
    fn fetch_and(&self, bits: u64, order: Ordering) -> u64 {
        self.0.fetch_and(bits, order)
    }
    fn fence() {}
}

#[test]
#[should_panic(expected = "lost wake-up")]
fn without_fences_a_wake_up_is_lost() {
    loom::model(|| full_ring_wait(NoFence(AtomicU64::new(0))));
}

/// Close bit: the Sender publishes its last message, then closes (its
/// drop). A Receiver that sees the close drains up to the head it loads
/// next: that must be the last head, with its slot written, or it would
/// report the close with a message still in the ring.
fn close_after_last_publish<S: State + Send + Sync + 'static>(state: S) {
    let state = Arc::new(state);
    let head = Arc::new(AtomicU64::new(0));
    let slot = Arc::new(AtomicU64::new(0));
    let sender = {
        let (state, head, slot) = (state.clone(), head.clone(), slot.clone());
        loom::thread::spawn(move || {
            slot.store(42, Ordering::Relaxed); // the last message
            publish_head(&*head, 1);
            close(&*state);
        })
    };
    if is_closed(&*state) {
        // The Receiver's `finish`: drain up to the head, then report.
        assert_eq!(
            load_head(&*head),
            1,
            "lost message: the close was seen before the last publish"
        );
        assert_eq!(
            slot.load(Ordering::Relaxed),
            42,
            "stale slot after the close"
        );
    }
    sender.join().unwrap();
}

#[test]
fn the_receiver_drains_everything_before_the_close() {
    loom::model(|| close_after_last_publish(AtomicU64::new(0)));
}

/// The state word with every ordering asked for weakened to Relaxed (its
/// fence kept).
struct RelaxedState(AtomicU64);

impl State for RelaxedState {
    fn load(&self, _: Ordering) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    fn fetch_or(&self, bits: u64, _: Ordering) -> u64 {
        self.0.fetch_or(bits, Ordering::Relaxed)
    }
    fn fetch_and(&self, bits: u64, _: Ordering) -> u64 {
        self.0.fetch_and(bits, Ordering::Relaxed)
    }
    fn fence() {
        loom::sync::atomic::fence(Ordering::SeqCst)
    }
}

#[test]
#[should_panic(expected = "lost message")]
fn with_a_relaxed_close_a_message_is_lost() {
    loom::model(|| close_after_last_publish(RelaxedState(AtomicU64::new(0))));
}
