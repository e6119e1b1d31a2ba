//! Loom model of the Doorbell backend's armed-flag protocol: the shipped
//! `arm`/`should_ring` (src/backend/doorbell.rs), run on loom's atomics.
//!
//! RUSTFLAGS="--cfg memfd_tripwire_loom" cargo test --release --test loom_doorbell
#![cfg(memfd_tripwire_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
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
