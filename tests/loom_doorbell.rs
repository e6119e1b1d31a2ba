//! Loom model of the Doorbell backend's armed-flag protocol: the shipped
//! `arm`/`should_ring` (src/backend/doorbell.rs), run on loom's atomics.
//!
//! RUSTFLAGS="--cfg memfd_tripwire_loom" cargo test --release --test loom_doorbell
#![cfg(memfd_tripwire_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use memfd_tripwire::__loom::{Flag, arm, should_ring};

/// The race that matters: the consumer has taken a trip (the producer's
/// ring cleared the flag) and now ACKs while the producer writes and calls
/// `notify()` again. Either the consumer's reads after the ACK see the write,
/// or the producer rings: never neither.
fn ack_races_notify<F: Flag + Send + Sync + 'static>(flag: F) {
    let flag = Arc::new(flag);
    let data = Arc::new(AtomicU64::new(0));
    let rang = Arc::new(AtomicBool::new(false));
    let producer = {
        let (flag, data, rang) = (flag.clone(), data.clone(), rang.clone());
        loom::thread::spawn(move || {
            data.store(1, Relaxed); // a plain store, as far as ordering goes
            if should_ring(&*flag) {
                rang.store(true, Relaxed);
            }
        })
    };
    arm(&*flag);
    let seen = data.load(Relaxed);
    producer.join().unwrap();
    assert!(
        seen == 1 || rang.load(Relaxed),
        "lost write: the ACK did not see it and notify() did not ring"
    );
}

#[test]
fn no_write_is_lost() {
    loom::model(|| ack_races_notify(AtomicU32::new(0)));
}

/// The same protocol with its fences removed.
struct NoFence(AtomicU32);

impl Flag for NoFence {
    fn store_flag(&self, armed: bool) {
        self.0.store(armed as u32, Relaxed)
    }
    fn load_flag(&self) -> bool {
        self.0.load(Relaxed) != 0
    }
    fn swap_flag(&self, armed: bool) -> bool {
        self.0.swap(armed as u32, Relaxed) != 0
    }
    fn fence() {}
}

/// Negative control: without the fences the model must find the lost write,
/// which shows the model can fail and that the fences are what it checks.
#[test]
#[should_panic(expected = "lost write")]
fn without_fences_a_write_is_lost() {
    loom::model(|| ack_races_notify(NoFence(AtomicU32::new(0))));
}

/// The other half of the contract: `notify()` rings at most once per ACK,
/// however many notifies race it and from however many producers (they
/// share the flag). The flag starts cleared (a trip was taken) and the
/// consumer ACKs once, while one producer notifies twice and another once:
/// each ring needs a swap that read `true`, and the one ACK's `true` can be
/// claimed by one swap only.
fn one_ring_per_arm<F: Flag + Send + Sync + 'static>(flag: F) {
    let flag = Arc::new(flag);
    let rings = Arc::new(AtomicUsize::new(0));
    let producer = |notifies: usize| {
        let (flag, rings) = (flag.clone(), rings.clone());
        loom::thread::spawn(move || {
            for _ in 0..notifies {
                if should_ring(&*flag) {
                    rings.fetch_add(1, Relaxed);
                }
            }
        })
    };
    let (twice, once) = (producer(2), producer(1));
    arm(&*flag);
    twice.join().unwrap();
    once.join().unwrap();
    let rings = rings.load(Relaxed);
    assert!(rings <= 1, "rang twice for one ACK ({rings} rings)");
}

#[test]
fn rings_at_most_once_per_arm() {
    loom::model(|| one_ring_per_arm(AtomicU32::new(0)));
}

/// The protocol with its swap replaced by a load: the flag is never
/// cleared, so every notify after the ACK rings.
struct SwapIsALoad(AtomicU32);

impl Flag for SwapIsALoad {
    fn store_flag(&self, armed: bool) {
        self.0.store(armed as u32, Relaxed)
    }
    fn load_flag(&self) -> bool {
        self.0.load(Relaxed) != 0
    }
    fn swap_flag(&self, _armed: bool) -> bool {
        self.0.load(Relaxed) != 0
    }
    fn fence() {
        loom::sync::atomic::fence(SeqCst)
    }
}

/// Negative control: without the swap's clear, the model must find a
/// second ring for the one ACK (the one producer's second notify).
#[test]
#[should_panic(expected = "rang twice")]
fn without_the_swap_an_arm_rings_twice() {
    loom::model(|| one_ring_per_arm(SwapIsALoad(AtomicU32::new(0))));
}

/// The protocol with its swap split into a load and a store: not one
/// atomic read-modify-write, so two producers can both read `true`.
struct SplitSwap(AtomicU32);

impl Flag for SplitSwap {
    fn store_flag(&self, armed: bool) {
        self.0.store(armed as u32, Relaxed)
    }
    fn load_flag(&self) -> bool {
        self.0.load(Relaxed) != 0
    }
    fn swap_flag(&self, armed: bool) -> bool {
        let old = self.0.load(Relaxed) != 0;
        self.0.store(armed as u32, Relaxed);
        old
    }
    fn fence() {
        loom::sync::atomic::fence(SeqCst)
    }
}

/// Negative control: with a swap that is not atomic, the model must find
/// two producers that both claim the one ACK's ring.
#[test]
#[should_panic(expected = "rang twice")]
fn with_a_split_swap_two_producers_ring_for_one_arm() {
    loom::model(|| one_ring_per_arm(SplitSwap(AtomicU32::new(0))));
}
