//! The watch's seqlock, generic over its atomics so that loom checks
//! exactly this code (`tests/loom_watch.rs`, under
//! `--cfg memfd_tripwire_loom`). Boehm's seqlock ("Can seqlocks get along
//! with programming language memory models?", MSPC 2012), the payload
//! copied with relaxed atomic word accesses on both sides:
//!
//! - **Writer** (one only): [`begin_write`] stores the odd sequence, then
//!   a release fence; the payload's stores follow; [`end_write`] stores
//!   the next even sequence (Release).
//! - **Reader**: [`read_begin`] loads the sequence (Acquire) and goes on
//!   only if it is even; the payload's loads follow; [`read_end`] fences
//!   (Acquire) and loads the sequence again: the copy is whole if it is
//!   unchanged. A reader that saw any store of a later write in its copy
//!   then sees that write's odd sequence (the two fences synchronise), so
//!   a torn copy is never accepted.
//!
//! The sequence has one writer, the Sender (or an unmodified producer that
//! follows the same steps); the Receiver only loads it.

use std::sync::atomic::Ordering::{self, Acquire, Relaxed, Release};

/// The 64-bit sequence word, with the fences that go with it.
pub trait Seq {
    /// `load`.
    fn load(&self, order: Ordering) -> u64;
    /// `store`.
    fn store(&self, value: u64, order: Ordering);
    /// A fence of `order` (Acquire or Release).
    fn fence(order: Ordering);
}

macro_rules! atomics {
    ($u64:ty, $fence:path) => {
        impl Seq for $u64 {
            #[inline]
            fn load(&self, order: Ordering) -> u64 {
                <$u64>::load(self, order)
            }
            #[inline]
            fn store(&self, value: u64, order: Ordering) {
                <$u64>::store(self, value, order)
            }
            #[inline]
            fn fence(order: Ordering) {
                $fence(order)
            }
        }
    };
}

atomics!(std::sync::atomic::AtomicU64, std::sync::atomic::fence);
#[cfg(memfd_tripwire_loom)]
atomics!(loom::sync::atomic::AtomicU64, loom::sync::atomic::fence);

/// Writer: starts writing a value over the one published at `even` (the
/// sequence this writer last stored); the payload's stores follow.
/// Returns the odd sequence stored.
#[inline]
pub fn begin_write<S: Seq>(seq: &S, even: u64) -> u64 {
    let odd = even.wrapping_add(1);
    seq.store(odd, Relaxed);
    S::fence(Release);
    odd
}

/// Writer: publishes the value written since [`begin_write`] returned
/// `odd`; returns the new even sequence.
#[inline]
pub fn end_write<S: Seq>(seq: &S, odd: u64) -> u64 {
    let even = odd.wrapping_add(1);
    seq.store(even, Release);
    even
}

/// Reader: the sequence before a copy; `Err` with it while a write is
/// under way (odd). The payload's loads follow.
#[inline]
pub fn read_begin<S: Seq>(seq: &S) -> Result<u64, u64> {
    let s = seq.load(Acquire);
    if s & 1 == 0 { Ok(s) } else { Err(s) }
}

/// Reader: after the copy, whether it is whole (the sequence is still
/// `begun`); `Err` with the sequence seen otherwise.
#[inline]
pub fn read_end<S: Seq>(seq: &S, begun: u64) -> Result<(), u64> {
    S::fence(Acquire);
    let s = seq.load(Relaxed);
    if s == begun { Ok(()) } else { Err(s) }
}
