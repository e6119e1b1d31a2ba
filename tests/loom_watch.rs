//! Loom models of the watch's seqlock (src/watch/protocol.rs), the shipped
//! functions run on loom's atomics, each with a negative control.
//!
//! RUSTFLAGS="--cfg memfd_tripwire_loom" cargo test --release --test loom_watch
#![cfg(memfd_tripwire_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, Ordering};
use memfd_tripwire::__loom::watch::{Seq, begin_write, end_write, read_begin, read_end};

/// The payload: two words, copied with relaxed atomics as `Region` does.
type Payload = [AtomicU64; 2];

fn write<S: Seq>(seq: &S, payload: &Payload, even: u64, value: u64) -> u64 {
    let odd = begin_write(seq, even);
    for w in payload {
        w.store(value, Ordering::Relaxed);
    }
    end_write(seq, odd)
}

/// The shipped reader: begin, copy, end.
fn read<S: Seq>(seq: &S, payload: &Payload) -> Option<[u64; 2]> {
    let begun = read_begin(seq).ok()?;
    let copy = [
        payload[0].load(Ordering::Relaxed),
        payload[1].load(Ordering::Relaxed),
    ];
    read_end(seq, begun).ok()?;
    Some(copy)
}

/// A reader in the wrong order: it checks the sequence before copying.
fn read_checked_first<S: Seq>(seq: &S, payload: &Payload) -> Option<[u64; 2]> {
    let begun = read_begin(seq).ok()?;
    read_end(seq, begun).ok()?;
    Some([
        payload[0].load(Ordering::Relaxed),
        payload[1].load(Ordering::Relaxed),
    ])
}

/// The writer rewrites the value twice (1, then 2) while the reader copies
/// it once: an accepted copy is never torn (both words of one write).
fn no_torn_copy<S: Seq + Send + Sync + 'static>(
    seq: S,
    reader: fn(&S, &Payload) -> Option<[u64; 2]>,
) {
    let seq = Arc::new(seq);
    let payload = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let writer = {
        let (seq, payload) = (seq.clone(), payload.clone());
        loom::thread::spawn(move || {
            let s = write(&*seq, &payload, 0, 1);
            write(&*seq, &payload, s, 2);
        })
    };
    if let Some([a, b]) = reader(&seq, &payload) {
        assert_eq!(a, b, "torn copy accepted: the words of two writes");
    }
    writer.join().unwrap();
}

#[test]
fn an_accepted_copy_is_whole() {
    loom::model(|| no_torn_copy(AtomicU64::new(0), read));
}

#[test]
#[should_panic(expected = "torn copy")]
fn a_reader_that_checks_before_copying_accepts_torn_copies() {
    loom::model(|| no_torn_copy(AtomicU64::new(0), read_checked_first));
}

/// The sequence word with its fences removed.
struct NoFence(AtomicU64);

impl Seq for NoFence {
    fn load(&self, order: Ordering) -> u64 {
        self.0.load(order)
    }
    fn store(&self, value: u64, order: Ordering) {
        self.0.store(value, order)
    }
    fn fence(_: Ordering) {}
}

#[test]
#[should_panic(expected = "torn copy")]
fn without_fences_a_torn_copy_is_accepted() {
    loom::model(|| no_torn_copy(NoFence(AtomicU64::new(0)), read));
}
