//! The ring's two cross-process handshakes, generic over their atomics so
//! that loom checks exactly this code (`tests/loom_ring.rs`, under
//! `--cfg memfd_tripwire_loom`):
//!
//! - **Index**: the Sender writes a slot, then stores the head (Release);
//!   the Receiver loads the head (Acquire), then reads the slot.
//! - **Waiting flag** (Dekker): a Sender that finds the ring full sets its
//!   waiting flag, fences, and re-reads the tail before it sleeps; the
//!   Receiver stores the tail, fences, and reads the flag: either the Sender
//!   sees the new tail or the Receiver sees the flag and rings it. A Sender
//!   that stops waiting withdraws the flag ([`withdraw`]); the Receiver peeks
//!   at it after a head load ([`is_waiting`]) to ring a waiting Sender early.
//! - **Close** (Release/Acquire on the state word): a Sender that drops
//!   sets the closed bit after its last head store ([`close`]); a Receiver
//!   that sees the bit ([`is_closed`]) then sees that head too, so it drains
//!   every published message before it reports the close.
//!
//! - **Receiver close**: a Receiver that drops sets the closed bit of its own
//!   state word (in the control memory it alone writes); the Sender loads it
//!   on every send and fails with `Closed` ([`close_receiver`],
//!   [`receiver_closed`]).
//!
//! Every operation on the state words is here: each has one writer (the
//! Sender's in the wire, the Receiver's in the control memory), and the
//! other end only loads it.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

/// The Sender's "I closed the ring cleanly" bit in its state word.
pub const CLOSED: u64 = 1 << 0;
/// The Sender's "I wait for space" bit in its state word.
pub const WAITING: u64 = 1 << 1;

/// A 64-bit index word.
pub trait Index {
    /// `load`.
    fn load(&self, order: std::sync::atomic::Ordering) -> u64;
    /// `store`.
    fn store(&self, value: u64, order: std::sync::atomic::Ordering);
}

/// A 64-bit state word, with the fence that goes with it. (64 bits, a
/// whole word of the region: the Poll backend copies the region in whole
/// 8-byte atomic words, and a racing atomic of another size on the same
/// bytes is a mixed-size race.)
pub trait State {
    /// `load`.
    fn load(&self, order: std::sync::atomic::Ordering) -> u64;
    /// `fetch_or`.
    fn fetch_or(&self, bits: u64, order: std::sync::atomic::Ordering) -> u64;
    /// `fetch_and`.
    fn fetch_and(&self, bits: u64, order: std::sync::atomic::Ordering) -> u64;
    /// A sequentially consistent fence.
    fn fence();
}

macro_rules! atomics {
    ($u64:ty, $state:ty, $fence:path) => {
        impl Index for $u64 {
            #[inline]
            fn load(&self, order: std::sync::atomic::Ordering) -> u64 {
                <$u64>::load(self, order)
            }
            #[inline]
            fn store(&self, value: u64, order: std::sync::atomic::Ordering) {
                <$u64>::store(self, value, order)
            }
        }
        impl State for $state {
            #[inline]
            fn load(&self, order: std::sync::atomic::Ordering) -> u64 {
                <$state>::load(self, order)
            }
            #[inline]
            fn fetch_or(&self, bits: u64, order: std::sync::atomic::Ordering) -> u64 {
                <$state>::fetch_or(self, bits, order)
            }
            #[inline]
            fn fetch_and(&self, bits: u64, order: std::sync::atomic::Ordering) -> u64 {
                <$state>::fetch_and(self, bits, order)
            }
            #[inline]
            fn fence() {
                $fence(SeqCst)
            }
        }
    };
}

atomics!(
    std::sync::atomic::AtomicU64,
    std::sync::atomic::AtomicU64,
    std::sync::atomic::fence
);
#[cfg(memfd_tripwire_loom)]
atomics!(
    loom::sync::atomic::AtomicU64,
    loom::sync::atomic::AtomicU64,
    loom::sync::atomic::fence
);

/// Sender: makes the slots written so far visible to a Receiver that loads
/// the head with [`load_head`].
#[inline]
pub fn publish_head<I: Index>(head: &I, value: u64) {
    head.store(value, Release);
}

/// Receiver: the published head; slots before it are then readable.
#[inline]
pub fn load_head<I: Index>(head: &I) -> u64 {
    head.load(Acquire)
}

/// Sender: announces that it waits for space; returns the tail to re-check
/// before sleeping. (The model's form: the Sender itself calls [`announce`]
/// and loads the tail from its read-only mapping.)
#[cfg(memfd_tripwire_loom)]
#[inline]
pub fn announce_wait<S: State, I: Index>(state: &S, tail: &I) -> u64 {
    announce(state);
    tail.load(Acquire)
}

/// The first half of [`announce_wait`], for a Sender that loads the tail
/// by other means (its mapping of the tail is read-only: a relaxed load and
/// an acquire fence, at least as strong as the acquire load modelled).
#[inline]
pub fn announce<S: State>(state: &S) {
    state.fetch_or(WAITING, Relaxed);
    S::fence();
}

/// Receiver: publishes the tail; returns whether the Sender must be rung.
#[inline]
pub fn publish_tail<S: State, I: Index>(state: &S, tail: &I, value: u64) -> bool {
    tail.store(value, Release);
    S::fence();
    state.load(Relaxed) & WAITING != 0
}

/// Sender: withdraws a wait it announced (space came, or the wait was
/// cancelled), so the Receiver stops ringing it. Relaxed: a ring that
/// races the withdrawal is only a spurious wake-up.
#[inline]
pub fn withdraw<S: State>(state: &S) {
    state.fetch_and(!WAITING, Relaxed);
}

/// Receiver: whether the Sender waits for space, peeked at after a head
/// load (its bit shares the head's cache line) to ring it after this run
/// rather than a batch later. A hint only: [`publish_tail`] is the check
/// that no wake-up is lost.
#[inline]
pub fn is_waiting<S: State>(state: &S) -> bool {
    state.load(Relaxed) & WAITING != 0
}

/// Sender: closes the ring cleanly, after its last [`publish_head`]: a
/// Receiver that sees the bit ([`is_closed`]) sees every head published
/// before it.
#[inline]
pub fn close<S: State>(state: &S) {
    state.fetch_or(CLOSED, Release);
}

/// Receiver: closes its end cleanly (it was dropped), in its own state
/// word: a Sender that sees the bit ([`receiver_closed`]) fails its next
/// send. Nothing is published with it: relaxed.
#[inline]
pub fn close_receiver<S: State>(state: &S) {
    state.fetch_or(CLOSED, Relaxed);
}

/// Sender: whether the Receiver's state word, as loaded from its read-only
/// mapping, says the Receiver closed its end.
#[inline]
pub fn receiver_closed(word: u64) -> bool {
    word & CLOSED != 0
}

/// Receiver: whether the Sender closed the ring cleanly; once `true`, a
/// [`load_head`] gives the Sender's last head, so draining up to it
/// receives everything it sent.
#[inline]
pub fn is_closed<S: State>(state: &S) -> bool {
    state.load(Acquire) & CLOSED != 0
}
