//! `Backend::Poll`: a poller thread compares the region with a snapshot
//! taken at each ACK and trips the wire (an eventfd) on any difference.
//!
//! Needs no producer cooperation. Latency is up to one interval; each
//! interval costs a copy and compare of the whole region (O(region)). A
//! change that is undone within one interval is not seen.
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
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sys::{EventFd, Mapping, SealedMemfd};
use crate::{Error, Region};

#[derive(Debug)]
pub(crate) struct Poller {
    memfd: SealedMemfd,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The wire's state, shared by the consumer (ACK) and the poller.
const ARMED: u8 = 0;
/// The poller tripped the wire; nothing to compare until the next ACK.
const TRIPPED: u8 = 1;
/// An ACK is rewriting the snapshot: a compare now means nothing.
const REARMING: u8 = 2;

/// What the consumer and the poller share. No lock: the snapshot is a row
/// of atomic words, and `state` says whose turn it is, so an ACK (an
/// O(region) copy) never makes the poller wait, nor the poller an ACK.
#[derive(Debug)]
struct Shared {
    map: Arc<Mapping>,
    eventfd: EventFd,
    stop: AtomicBool,
    interval: Duration,
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
}

impl Shared {
    /// Compares once, word by word, stopping at the first difference; trips
    /// the wire on one. Returns whether it did.
    fn check(&self) -> io::Result<bool> {
        if self.state.load(Ordering::Acquire) != ARMED {
            return Ok(false);
        }
        let differs = self
            .snapshot
            .iter()
            .enumerate()
            .any(|(i, w)| self.map.snapshot_word(i) != Some(w.load(Ordering::Relaxed)));
        // An ACK that began meanwhile moved the state on: the compare may
        // have met a half-written snapshot, and the ACK's copy decides.
        if !differs
            || self
                .state
                .compare_exchange(ARMED, TRIPPED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Ok(false);
        }
        self.eventfd.ring()?;
        Ok(true)
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

    /// How long the poller sleeps before its next compare: not at all while
    /// armed inside a busy-poll window, else an interval.
    fn pause(&self) -> Duration {
        let until = self.spin_until.load(Ordering::Relaxed);
        if until != 0
            && self.state.load(Ordering::Relaxed) == ARMED
            && (self.epoch.elapsed().as_nanos() as u64) < until
        {
            Duration::ZERO
        } else {
            self.interval
        }
    }
}

impl Poller {
    pub(crate) fn create(
        len: usize,
        interval: Duration,
        busy: Duration,
    ) -> Result<(Self, Region), Error> {
        let (memfd, region) = super::region_memfd(len)?;
        let eventfd = EventFd::new().map_err(|e| Error::io("eventfd", e))?;
        let words = region.mapping().snapshot_words();
        let shared = Arc::new(Shared {
            map: region.mapping().clone(),
            eventfd,
            stop: AtomicBool::new(false),
            interval,
            busy,
            snapshot: (0..words).map(|_| AtomicU64::new(0)).collect(),
            state: AtomicU8::new(TRIPPED),
            spin_until: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        shared.rearm();
        let worker = shared.clone();
        let thread = super::spawn_interval_thread("memfd-tripwire-poll", interval, move || {
            if worker.stop.load(Ordering::Acquire) {
                return None;
            }
            // An eventfd write only fails if the fd is broken; the consumer
            // then sees the error from its own read.
            let _ = worker.check();
            Some(worker.pause())
        })
        .map_err(|e| Error::io("spawning the poller thread", e))?;
        Ok((
            Poller {
                memfd,
                shared,
                thread: Some(thread),
            },
            region,
        ))
    }

    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.shared.eventfd.as_fd()
    }

    pub(crate) fn take(&mut self) -> io::Result<bool> {
        if !self.shared.eventfd.drain()? {
            return Ok(false);
        }
        self.rearm();
        Ok(true)
    }

    pub(crate) fn ack(&mut self) -> io::Result<()> {
        self.shared.eventfd.drain()?;
        self.rearm();
        Ok(())
    }

    /// Re-arms; with busy-poll, wakes the poller out of its interval sleep
    /// so that its window starts now.
    fn rearm(&self) {
        self.shared.rearm();
        if !self.shared.busy.is_zero() {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
    }

    pub(crate) fn take_final(&mut self) -> io::Result<bool> {
        self.shared.check()?;
        self.take()
    }

    pub(crate) fn offer_fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.memfd_fd()]
    }

    /// The sealed memfd of the region.
    pub(crate) fn memfd_fd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
