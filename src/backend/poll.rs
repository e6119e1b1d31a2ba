//! `Backend::Poll`, the wire: a snapshot of the region taken at each ACK,
//! compared with the region by the process's poller thread, which trips the
//! wire (an eventfd) on any difference.
//!
//! What lives where: this file holds one tripwire's side (the snapshot, the
//! state word the ACK and the compare share, the compare itself, the ACK);
//! [`poller`](super::poller) holds the one thread that runs every `Poll`
//! tripwire's compares in this process, its registry, and the choice of
//! each tripwire's interval.
//!
//! Needs no producer cooperation. Latency is up to one interval; each
//! interval costs a compare of the whole region (O(region)). A change that
//! is undone within one interval is not seen.
//!
//! Per tripwire this keeps the sealed memfd and its mapping, a snapshot of
//! the region (one region's worth of memory, as atomic words), an eventfd
//! (the wake-up fd) and an entry in the poller's registry; no thread. Per
//! producer, nothing: a producer only maps the memfd (the handshake socket
//! in the peer set is common to every backend).
//!
//! Busy-poll (a small region, a window set by the consumer): after each
//! ACK the poller compares without sleeping until the window ends or the
//! wire trips, then goes back to the interval. A doorbell rung soon after
//! the last one is then seen within a compare (sub-µs for a page) instead
//! of an interval, at the price of up to one window of a core per ACK.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::poller::{Registration, Timing};
use crate::sys::{EventFd, Mapping, SealedMemfd};
use crate::{Error, Region};

#[derive(Debug)]
pub(crate) struct Poller {
    /// First, so that the poller thread has let go of the region before
    /// the memfd closes.
    reg: Registration,
    memfd: SealedMemfd,
}

/// The wire's state, shared by the consumer (ACK) and the poller.
const ARMED: u8 = 0;
/// The poller tripped the wire; nothing to compare until the next ACK.
const TRIPPED: u8 = 1;
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
    map: Arc<Mapping>,
    eventfd: EventFd,
    /// Set when the tripwire is dropped: a compare under way stops.
    stop: AtomicBool,
    /// The busy-poll window after each ACK (zero: none).
    busy: Duration,
    /// The region as it was at the last ACK, word by word
    /// (`Mapping::snapshot_word`): the only copy kept, so the memory
    /// `Poll` adds is one region's worth.
    snapshot: Box<[AtomicU64]>,
    state: AtomicU8,
    /// Busy-poll: compare without sleeping until this many ns after `epoch`.
    spin_until: AtomicU64,
    epoch: Instant,
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
    fn rearm(&self) {
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

/// A zeroed snapshot of `words` words, allocated fallibly: a region too
/// large for this process's memory is an error, not an abort (#23: a
/// 1 TiB region aborted with "memory allocation of 1099511627776 bytes
/// failed").
fn snapshot(words: usize) -> Result<Box<[AtomicU64]>, Error> {
    let mut v: Vec<AtomicU64> = Vec::new();
    v.try_reserve_exact(words).map_err(|e| {
        Error::io(
            "allocating Poll's snapshot of the region (one region's worth of memory)",
            io::Error::new(io::ErrorKind::OutOfMemory, e),
        )
    })?;
    v.extend((0..words).map(|_| AtomicU64::new(0)));
    Ok(v.into_boxed_slice())
}

impl Poller {
    /// `interval`: `None` adapts it to what a compare costs (see
    /// [`poller`](super::poller)).
    ///
    /// # Errors
    ///
    /// Besides the system calls': `Error::Io` of kind `OutOfMemory` when
    /// the snapshot (`len` rounded up to 8 bytes, on the heap) cannot be
    /// allocated.
    pub(crate) fn create(
        len: usize,
        interval: Option<Duration>,
        busy: Duration,
    ) -> Result<(Self, Region), Error> {
        let (memfd, region) = super::region_memfd(len)?;
        let eventfd = EventFd::new().map_err(|e| Error::io("eventfd", e))?;
        let snapshot = snapshot(region.mapping().snapshot_words())?;
        let shared = Shared {
            map: region.mapping().clone(),
            eventfd,
            stop: AtomicBool::new(false),
            busy,
            snapshot,
            state: AtomicU8::new(TRIPPED),
            spin_until: AtomicU64::new(0),
            epoch: Instant::now(),
            timing: Timing::new(interval),
        };
        shared.rearm();
        let reg = Registration::new(shared)?;
        Ok((Poller { reg, memfd }, region))
    }

    /// The eventfd, shared: the tripwire's one fd (`Peers::watched`).
    pub(crate) fn wake_shared(&self) -> std::sync::Arc<std::os::fd::OwnedFd> {
        self.reg.shared().eventfd.shared()
    }

    /// Takes a trip: the state word says whether there is one (the
    /// eventfd is also rung when a producer hangs up, which is no trip).
    pub(crate) fn take(&mut self) -> io::Result<bool> {
        let shared = self.reg.shared();
        shared.eventfd.drain()?;
        if shared.state.load(Ordering::Acquire) != TRIPPED {
            return Ok(false);
        }
        self.rearm();
        Ok(true)
    }

    pub(crate) fn ack(&mut self) -> io::Result<()> {
        self.reg.shared().eventfd.drain()?;
        self.rearm();
        Ok(())
    }

    /// Re-arms; with busy-poll, wakes the poller out of its sleep so that
    /// the window starts now.
    fn rearm(&self) {
        let shared = self.reg.shared();
        shared.rearm();
        if shared.busy_polls() {
            self.reg.wake();
        }
    }

    /// Compares here, in the caller, then takes a trip if there is one.
    pub(crate) fn take_final(&mut self) -> io::Result<bool> {
        self.reg.shared().compare()?;
        self.take()
    }

    pub(crate) fn offer_fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.memfd_fd()]
    }

    /// The sealed memfd of the region.
    pub(crate) fn memfd_fd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// The interval the poller uses now, and the smoothed duration of its
    /// compares (`None` before the first whole one).
    #[cfg(test)]
    pub(crate) fn timing(&self) -> (Duration, Option<Duration>) {
        let t = &self.reg.shared().timing;
        (t.interval(), t.cost())
    }
}
