//! What a `Backend::Poll` tripwire ([`poll`](super::poll)) and the poller
//! thread ([`poller`](super::poller)) share: the wire ([`Shared`]: the
//! snapshot, the state word the ACK and the compare share, the compare
//! itself) and its interval ([`Timing`]). Both import it; it imports
//! neither.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::DEFAULT_POLL_INTERVAL;
use crate::sys::{EventFd, Mapping};

/// The wire's state, shared by the consumer (ACK) and the poller.
const ARMED: u8 = 0;
/// The poller tripped the wire; nothing to compare until the next ACK.
pub(super) const TRIPPED: u8 = 1;
/// An ACK is rewriting the snapshot: a compare now means nothing.
const REARMING: u8 = 2;

/// How many snapshot words a compare takes between two looks at whether it
/// should go on (32 KiB: a few µs): a compare that an ACK or a drop made
/// pointless stops that soon, however large the region.
const CHUNK_WORDS: usize = 4096;

/// What one compare found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compared {
    /// Nothing compared, or not all of it: the wire is not armed (tripped,
    /// or an ACK began), or its tripwire is being dropped.
    Skipped,
    /// The whole region, equal to the snapshot: what a compare costs.
    Whole,
    /// A difference: the wire is tripped.
    Tripped,
}

/// What the consumer and the poller share. No lock: the snapshot is a row
/// of atomic words, and `state` says whose turn it is, so an ACK (an
/// O(region) copy) never makes the poller wait, nor the poller an ACK.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) map: Arc<Mapping>,
    pub(super) eventfd: EventFd,
    /// Set when the tripwire is dropped: a compare under way stops.
    pub(super) stop: AtomicBool,
    /// The busy-poll window after each ACK (zero: none).
    pub(super) busy: Duration,
    /// The region as it was at the last ACK, word by word
    /// (`Mapping::snapshot_word`): the only copy kept, so the memory
    /// `Poll` adds is one region's worth.
    pub(super) snapshot: Box<[AtomicU64]>,
    pub(super) state: AtomicU8,
    /// Busy-poll: compare without sleeping until this many ns after `epoch`.
    pub(super) spin_until: AtomicU64,
    pub(super) epoch: Instant,
    /// The interval: as set, or adapted to what a compare costs.
    pub(super) timing: Timing,
}

impl Shared {
    /// Compares once, word by word, stopping at the first difference; trips
    /// the wire on one.
    pub(super) fn compare(&self) -> io::Result<Compared> {
        if self.state.load(Ordering::Acquire) != ARMED {
            return Ok(Compared::Skipped);
        }
        match self.differs() {
            None => return Ok(Compared::Skipped),
            Some(false) => return Ok(Compared::Whole),
            Some(true) => {}
        }
        // An ACK that began meanwhile moved the state on: the compare may
        // have met a half-written snapshot, and the ACK's copy decides.
        if self
            .state
            .compare_exchange(ARMED, TRIPPED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Ok(Compared::Skipped);
        }
        self.eventfd.ring()?;
        Ok(Compared::Tripped)
    }

    /// Whether the region differs from the snapshot; `None` if the compare
    /// stopped half-way (an ACK began, or the tripwire is being dropped).
    fn differs(&self) -> Option<bool> {
        for (c, chunk) in self.snapshot.chunks(CHUNK_WORDS).enumerate() {
            if self.stop.load(Ordering::Relaxed) || self.state.load(Ordering::Relaxed) != ARMED {
                return None;
            }
            let base = c * CHUNK_WORDS;
            if chunk
                .iter()
                .enumerate()
                .any(|(k, w)| self.map.snapshot_word(base + k) != Some(w.load(Ordering::Relaxed)))
            {
                return Some(true);
            }
        }
        Some(false)
    }

    /// Takes the snapshot and arms: every write before it returns is in the
    /// snapshot or trips the wire.
    pub(super) fn rearm(&self) {
        self.state.store(REARMING, Ordering::Release);
        for (i, w) in self.snapshot.iter().enumerate() {
            w.store(self.map.snapshot_word(i).unwrap_or(0), Ordering::Relaxed);
        }
        self.state.store(ARMED, Ordering::Release);
        if !self.busy.is_zero() {
            let until = self.epoch.elapsed() + self.busy;
            self.spin_until
                .store(until.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// Whether this tripwire busy-polls at all (its window is not zero).
    pub(super) fn busy_polls(&self) -> bool {
        !self.busy.is_zero()
    }

    /// Whether the poller should compare now, without sleeping: armed, and
    /// inside the busy-poll window of the last ACK.
    pub(super) fn in_busy_window(&self) -> bool {
        let until = self.spin_until.load(Ordering::Relaxed);
        until != 0
            && self.state.load(Ordering::Relaxed) == ARMED
            && (self.epoch.elapsed().as_nanos() as u64) < until
    }

    /// Tells a compare under way to stop: the tripwire is being dropped.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// With no interval set, a tripwire's compares take at most one
/// `COST_SHARE`th of a core (4 %).
pub(super) const COST_SHARE: u32 = 25;

/// A tripwire's interval: as set, or adapted to what its compares cost.
#[derive(Debug)]
pub(super) struct Timing {
    /// Set by the user: kept as it is.
    explicit: Option<Duration>,
    /// The smoothed CPU time of a whole compare on the poller thread, in
    /// ns; 0 before the first. Only the poller thread writes it.
    cost_ns: AtomicU64,
    /// The smoothed share of the poller thread's own CPU around its
    /// compares (waking up, going back to sleep) that falls to this
    /// tripwire, in ns: on a VM a wake-up can cost more than a page's
    /// compare. Only the poller thread writes it.
    wake_ns: AtomicU64,
}

impl Timing {
    /// `explicit`: the interval the user set, if any.
    pub(super) fn new(explicit: Option<Duration>) -> Self {
        Timing {
            explicit,
            cost_ns: AtomicU64::new(0),
            wake_ns: AtomicU64::new(0),
        }
    }

    /// The interval now: as set, else `max(1 ms, 25 × cost)`, the cost
    /// being a compare and this tripwire's share of the wake-up around it.
    pub(super) fn interval(&self) -> Duration {
        self.explicit.unwrap_or_else(|| {
            let ns = self.cost_ns.load(Ordering::Relaxed) + self.wake_ns.load(Ordering::Relaxed);
            DEFAULT_POLL_INTERVAL.max(Duration::from_nanos(ns).saturating_mul(COST_SHARE))
        })
    }

    /// The smoothed cost of a whole compare, its wake-up share included;
    /// `None` before the first.
    #[cfg(test)]
    pub(super) fn cost(&self) -> Option<Duration> {
        match self.cost_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(
                ns + self.wake_ns.load(Ordering::Relaxed),
            )),
        }
    }

    /// Counts a compare of the whole region that took `took` of the
    /// thread's CPU.
    pub(super) fn record(&self, took: Duration) {
        smooth(&self.cost_ns, took);
    }

    /// Counts this tripwire's share of the thread's CPU outside compares
    /// in one turn (sleep, wake-up, pass) in which it was due: one
    /// wake-up's worth, never more.
    pub(super) fn record_wake(&self, share: Duration) {
        smooth(&self.wake_ns, share);
    }
}

/// Moves a smoothed duration (in ns; 0: none yet) towards `took`.
fn smooth(value: &AtomicU64, took: Duration) {
    let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
    let old = value.load(Ordering::Relaxed);
    let new = if old == 0 {
        sample
    } else if sample <= old {
        // Falls fast: halfway to a shorter one.
        old - (old - sample) / 2
    } else {
        // Rises slowly, and one the scheduler stretched counts as at most
        // four times the average: one moves it by at most 3/8.
        let sample = sample.min(old.saturating_mul(4));
        old + (sample - old) / 8
    };
    value.store(new.max(1), Ordering::Relaxed);
}
