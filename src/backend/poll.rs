//! `Backend::Poll`, the wire: a snapshot of the region taken at each ACK,
//! compared with the region by the process's poller thread, which trips the
//! wire (an eventfd) on any difference.
//!
//! What lives where: this file holds one tripwire's side (its creation,
//! the take and the ACK); [`poll_shared`](super::poll_shared) what it
//! shares with the poller thread (the snapshot, the state word the ACK and
//! the compare share, the compare itself, the interval's measure);
//! [`poller`](super::poller) holds the one thread that runs every `Poll`
//! tripwire's compares in this process, its registry, and the choice of
//! each tripwire's interval. `poll` imports both; `poller` imports only
//! `poll_shared`.
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
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::poll_shared::{Shared, TRIPPED, Timing};
use super::poller::Registration;
use crate::sys::{EventFd, SealedMemfd};
use crate::{Error, Region};

#[derive(Debug)]
pub(crate) struct Poller {
    /// First, so that the poller thread has let go of the region before
    /// the memfd closes.
    reg: Registration,
    memfd: SealedMemfd,
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

    /// Its place on the poller thread, for the poller's own tests.
    #[cfg(test)]
    pub(super) fn registration(&self) -> &Registration {
        &self.reg
    }

    /// The interval the poller uses now, and the smoothed duration of its
    /// compares (`None` before the first whole one).
    #[cfg(test)]
    pub(crate) fn timing(&self) -> (Duration, Option<Duration>) {
        let t = &self.reg.shared().timing;
        (t.interval(), t.cost())
    }
}
