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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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

#[derive(Debug)]
struct Shared {
    map: Arc<Mapping>,
    eventfd: EventFd,
    stop: AtomicBool,
    interval: Duration,
    /// The busy-poll window after each ACK (zero: none).
    busy: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The region as it was at the last ACK.
    snapshot: Vec<u8>,
    /// Scratch for the current contents.
    current: Vec<u8>,
    /// `true` from an ACK until the poller trips the wire.
    armed: bool,
    /// Busy-poll: compare without sleeping until then (set by each ACK).
    spin_until: Option<Instant>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the buffers are fine.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Compares once; trips the wire on a difference. Returns whether it did.
    fn check(&self) -> io::Result<bool> {
        let mut st = self.state();
        if !st.armed {
            return Ok(false);
        }
        let State {
            snapshot, current, ..
        } = &mut *st;
        self.map
            .read_into(0, current)
            .expect("buffers are as long as the mapping");
        if current == snapshot {
            return Ok(false);
        }
        st.armed = false;
        self.eventfd.ring()?;
        Ok(true)
    }

    fn rearm(&self) {
        let mut st = self.state();
        let State { snapshot, .. } = &mut *st;
        self.map
            .read_into(0, snapshot)
            .expect("buffers are as long as the mapping");
        st.armed = true;
        if !self.busy.is_zero() {
            st.spin_until = Some(Instant::now() + self.busy);
        }
    }

    /// How long the poller sleeps before its next compare: not at all while
    /// armed inside a busy-poll window, else an interval.
    fn pause(&self) -> Duration {
        let mut st = self.state();
        match st.spin_until {
            Some(until) if st.armed && Instant::now() < until => Duration::ZERO,
            Some(_) => {
                st.spin_until = None;
                self.interval
            }
            None => self.interval,
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
        let shared = Arc::new(Shared {
            map: region.mapping().clone(),
            eventfd,
            stop: AtomicBool::new(false),
            interval,
            busy,
            state: Mutex::new(State {
                snapshot: vec![0; len],
                current: vec![0; len],
                armed: false,
                spin_until: None,
            }),
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
