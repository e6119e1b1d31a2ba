//! The agent of `Backend::Userfault` and `Backend::UserfaultAsync`: a
//! thread inside the *producer's* process that owns its userfaultfd.
//!
//! Whoever holds a uffd can register any range of its process, write-protect
//! it or fill missing pages with its own bytes: handing it to the consumer
//! would hand over the producer's whole address space (and a pagemap fd its
//! memory layout). So nothing with power beyond the region leaves the
//! producer. The agent:
//!
//! - `Userfault`: reads each write fault, records the page, sends the
//!   consumer a *trip* (once per ACK) and un-protects the page at once: a
//!   store never waits for the consumer, even a stopped or hung one;
//! - `UserfaultAsync`: the kernel resolves the faults itself (`WP_ASYNC`);
//!   the agent scans its own page tables (`PAGEMAP_SCAN` with
//!   `PM_SCAN_WP_MATCHING`) every interval while the consumer is armed, and
//!   sends a trip when it finds a written page;
//! - on the consumer's ACK request, re-protects the pages written since the
//!   last one (on `UserfaultAsync`, scans once more, which re-protects them)
//!   and replies with them; the consumer is then armed again.
//!
//! One thread does all of it, in order, so an un-protect can never land
//! after an ACK's re-protect: a store racing an ACK either happened before
//! the re-protect (it is in the reply, and visible once the consumer has
//! it) or faults again and trips again. Nothing slips through.
//!
//! A store let through is not done yet: its thread must run again to
//! retry it, and until then a re-protect makes it fault again, and trip
//! again. With the agent and the consumer answering each other faster than
//! that thread gets a CPU (it shares one with the agent, or a busy one),
//! one store could trip once per ACK, 13 times in a row (#23). So an ACK
//! first waits (up to [`LANDING_WAIT`], resolving faults meanwhile) until
//! each thread let through since the last ACK has completed its fault: its
//! count of completed faults (`minflt + majflt` in
//! `/proc/self/task/<tid>/stat`, the thread named by the fault message)
//! went past the count read before the un-protect woke it (the kernel
//! counts a fault once, when it completes, not when it waits for us), and
//! it sleeps, or it was seen running at two looks in a row (the store
//! follows the fault at once, in user mode, unless the thread is preempted
//! in between, e.g. by the agent waking on its CPU). A store that still
//! loses the race faults once more: one spurious trip, never a lost one. A
//! thread that is gone, or a count that cannot be read (no /proc, another
//! PID namespace), is not waited for.
//!
//! The channel is a `sys::Channel` (seqpacket) whose other end the consumer
//! made and keeps; every message is validated, anything else is ignored. A
//! consumer that floods ACKs only makes this producer's stores fault more
//! often; one that stops reading loses its own trips and replies.
//!
//! Messages (little-endian):
//!
//! ```text
//! consumer -> agent:  ACK    'A' 0 0 0 | seq u32                       (8 bytes)
//!                     CONFIG 'C' 0 0 0 0 0 0 0 | interval ns u64      (16 bytes)
//! agent -> consumer:  TRIP   'T'                                       (1 byte)
//!                     PAGES  'P' all u8 0 0 | seq u32 | n u32 | 0 u32
//!                            | n x (first page u32, end page u32)     (16 + 8n bytes)
//! ```

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::probe::{self, MAX_LEN, page};
use crate::backend::common::{map_peer_memfd, set_timer_slack_for};
use crate::sys::wait::PollFlags;
use crate::sys::{Channel, EventFd, Mapping, Recv, uffd};
use crate::{BackendKind, Error, Region};

/// The most page ranges one PAGES message lists; more, and it says "all".
pub(crate) const MAX_RANGES: usize = 2048;
/// The largest message either side sends.
pub(crate) const MAX_MESSAGE: usize = 16 + 8 * MAX_RANGES;
/// How long an ACK waits at most for the stores let through since the last
/// one to complete before it re-protects their pages (a stopped thread must
/// not hold the ACK up to its deadline).
pub(crate) const LANDING_WAIT: Duration = Duration::from_millis(50);

pub(crate) const TRIP: u8 = b'T';
pub(crate) const PAGES: u8 = b'P';
pub(crate) const ACK: u8 = b'A';
pub(crate) const CONFIG: u8 = b'C';

/// An ACK request.
pub(crate) fn encode_ack(seq: u32) -> [u8; 8] {
    let mut m = [0u8; 8];
    m[0] = ACK;
    m[4..8].copy_from_slice(&seq.to_le_bytes());
    m
}

/// The scan interval of a `UserfaultAsync` agent.
pub(crate) fn encode_config(interval: Duration) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = CONFIG;
    let ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
    m[8..16].copy_from_slice(&ns.to_le_bytes());
    m
}

/// A consumer's message, as the agent reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// ACK with this sequence number.
    Ack(u32),
    /// CONFIG: the scan interval, clamped to 10 µs..=10 s.
    Config(Duration),
}

/// Parses a consumer's message (as received into the agent's 16-byte
/// buffer); `None` for anything else, which the agent ignores.
pub(crate) fn parse_request(msg: &[u8]) -> Option<Request> {
    match msg {
        [ACK, _, _, _, seq @ ..] if seq.len() == 4 => Some(Request::Ack(u32::from_le_bytes(
            seq.try_into().expect("4 bytes"),
        ))),
        [CONFIG, _, _, _, _, _, _, _, ns @ ..] if ns.len() == 8 => {
            let ns = u64::from_le_bytes(ns.try_into().expect("8 bytes"));
            // The consumer's choice, within sane bounds.
            Some(Request::Config(
                Duration::from_nanos(ns).clamp(Duration::from_micros(10), Duration::from_secs(10)),
            ))
        }
        _ => None,
    }
}

/// A PAGES reply, as the consumer reads it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pages {
    pub(crate) seq: u32,
    /// `None`: the whole region.
    pub(crate) ranges: Option<Vec<Range<usize>>>,
}

/// Parses a PAGES message of a region of `pages` pages; `None` if it is
/// malformed (a short message, a count that does not fit, a range outside
/// the region or reversed).
pub(crate) fn parse_pages(msg: &[u8], pages: usize) -> Option<Pages> {
    if msg.len() < 16 || msg[0] != PAGES {
        return None;
    }
    let u32_at = |o: usize| u32::from_le_bytes(msg[o..o + 4].try_into().expect("4 bytes"));
    let seq = u32_at(4);
    let n = u32_at(8) as usize;
    if msg[1] != 0 {
        return Some(Pages { seq, ranges: None });
    }
    if n > MAX_RANGES || msg.len() != 16 + 8 * n {
        return None;
    }
    let mut ranges = Vec::with_capacity(n);
    for i in 0..n {
        let (first, end) = (u32_at(16 + 8 * i) as usize, u32_at(20 + 8 * i) as usize);
        if first >= end || end > pages {
            return None;
        }
        ranges.push(first..end);
    }
    Some(Pages {
        seq,
        ranges: Some(ranges),
    })
}

/// The agent, as the `Producer` holds it: dropping it stops the thread and
/// closes the uffd (which unregisters the mapping).
#[derive(Debug)]
pub(crate) struct Agent {
    stop: Arc<EventFd>,
    /// Write faults resolved so far (`Userfault`).
    faults: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    /// The process that started the agent: the only one with its thread.
    pid: u32,
}

impl Agent {
    /// The producer's end of an offer for `kind`: maps the region memfd
    /// (`memfd`, `len` bytes), then [`start`](Agent::start)s the agent on
    /// `chan`.
    pub(crate) fn attach(
        kind: BackendKind,
        len: usize,
        memfd: OwnedFd,
        chan: OwnedFd,
        peer: BorrowedFd<'_>,
    ) -> Result<(Region, Agent), Error> {
        let region = map_peer_memfd(memfd, len)?;
        let agent = Agent::start(region.mapping(), chan, kind, peer)?;
        Ok((region, agent))
    }

    /// Registers `map` with a new uffd (write-protect; `kind` says whether
    /// async), protects it, marks it `MADV_DONTFORK`, and starts the agent
    /// on `chan`, the consumer's channel end.
    ///
    /// `peer` is the handshake socket: should the agent fail (an ioctl
    /// error), it shuts the socket down, so that both sides learn that the
    /// producer's stores are no longer watched (the consumer sees its
    /// producer gone, the producer `is_closed()`), rather than go on
    /// silently unwatched.
    fn start(
        map: &Arc<Mapping>,
        chan: OwnedFd,
        kind: BackendKind,
        peer: BorrowedFd<'_>,
    ) -> Result<Agent, Error> {
        let chan = Channel::from_peer(chan)
            .map_err(|why| Error::handshake(format!("the agent channel fd: {why}")))?;
        let is_async = kind == BackendKind::UserfaultAsync;
        let unavailable = |reason: String| Error::Unavailable {
            backend: kind,
            reason,
        };
        if map.len() > MAX_LEN {
            return Err(unavailable(format!(
                "a region of {} bytes is over the {} this backend watches",
                map.len(),
                MAX_LEN
            )));
        }
        let peer = peer
            .try_clone_to_owned()
            .map_err(|e| Error::io("dup of the handshake socket", e))?;
        if is_async {
            probe::userfault_async().map_err(unavailable)?;
        } else {
            probe::userfault().map_err(unavailable)?;
        }
        let fd = uffd::open().map_err(|e| Error::io("userfaultfd", e))?;
        let features = if is_async {
            uffd::FEATURE_WP_SHMEM | uffd::FEATURE_WP_ASYNC
        } else {
            // The faulting thread, so that an ACK can wait for its store.
            uffd::FEATURE_WP_SHMEM | uffd::FEATURE_THREAD_ID
        };
        uffd::api(fd.as_fd(), features)
            .map_err(|e| unavailable(format!("UFFDIO_API({features:#x}) failed: {e}")))?;
        let span = map.len().div_ceil(page()) * page();
        uffd::register_wp(fd.as_fd(), map.addr(), span)
            .map_err(|e| unavailable(format!("UFFDIO_REGISTER in WP mode failed: {e}")))?;
        uffd::write_protect(fd.as_fd(), map.addr(), span, true)
            .map_err(|e| unavailable(format!("UFFDIO_WRITEPROTECT of the region failed: {e}")))?;
        map.dont_fork()
            .map_err(|e| Error::io("madvise(MADV_DONTFORK)", e))?;
        let pagemap = if is_async {
            Some(uffd::open_pagemap().map_err(|e| Error::io("opening /proc/self/pagemap", e))?)
        } else {
            None
        };
        let stop = Arc::new(EventFd::new().map_err(|e| Error::io("eventfd", e))?);
        let faults = Arc::new(AtomicU64::new(0));
        let mut state = State {
            peer,
            faults: faults.clone(),
            uffd: fd,
            pagemap,
            chan,
            base: map.addr(),
            span,
            len: map.len(),
            dirty: Dirty::new(map.len()),
            landing: Vec::new(),
            stats: ThreadStats::default(),
            armed: true,
            interval: Duration::from_millis(1),
            // Keeps the mapping alive while the agent works on it.
            _map: map.clone(),
        };
        let stopper = stop.clone();
        let thread = std::thread::Builder::new()
            .name("memfd-tripwire-agent".into())
            .spawn(move || {
                if state.run(&stopper).is_err() {
                    // Unwatched from now on: say so the only way both sides
                    // hear (the consumer's peer set, `Producer::is_closed`).
                    let _ = rustix::net::shutdown(&state.peer, rustix::net::Shutdown::Both);
                }
            })
            .map_err(|e| Error::io("spawning the userfault agent thread", e))?;
        Ok(Agent {
            stop,
            faults,
            thread: Some(thread),
            pid: std::process::id(),
        })
    }

    /// Write faults resolved so far (stores that trapped, `Userfault`).
    pub(crate) fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A forked child has a copy of this value but not the thread, and
        // shares the stop eventfd's open file with the parent: ringing it
        // would stop the *parent's* agent (its stores no longer watched).
        if self.pid != std::process::id() {
            return;
        }
        let _ = self.stop.ring();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct State {
    /// A duplicate of the handshake socket, shut down if the agent fails.
    peer: OwnedFd,
    faults: Arc<AtomicU64>,
    uffd: OwnedFd,
    /// `UserfaultAsync`: our own `/proc/self/pagemap`.
    pagemap: Option<OwnedFd>,
    chan: Channel,
    base: usize,
    span: usize,
    len: usize,
    dirty: Dirty,
    /// `Userfault`: the threads let through since the last ACK, each with
    /// its count of completed faults before it was, and whether it was
    /// seen past that fault but still running (see the module doc).
    landing: Vec<(u32, u64, bool)>,
    stats: ThreadStats,
    /// The consumer ACKed since our last trip: the next write trips.
    armed: bool,
    interval: Duration,
    _map: Arc<Mapping>,
}

impl State {
    /// Serves until stopped (`Ok`), the consumer goes (`Ok`), or something
    /// fails (`Err`: the stores are no longer watched).
    fn run(&mut self, stop: &EventFd) -> io::Result<()> {
        let mut next_scan = Instant::now() + self.interval;
        loop {
            let until = self
                .pagemap
                .as_ref()
                .filter(|_| self.armed)
                .map(|_| next_scan);
            let (uffd_ready, chan_ready, stopped) = self.wait(stop, until)?;
            if stopped {
                // A producer going away: report what was not scanned yet.
                self.scan();
                return Ok(());
            }
            if uffd_ready {
                self.resolve_faults()?;
            }
            if chan_ready && !self.serve()? {
                return Ok(()); // the consumer is gone: dropping the uffd unregisters
            }
            if self.pagemap.is_some() && Instant::now() >= next_scan {
                self.scan();
                next_scan = Instant::now() + self.interval;
            }
        }
    }

    /// Sleeps until the uffd, the channel or `stop` is readable, or
    /// `timeout`. Returns which were.
    fn wait(&self, stop: &EventFd, until: Option<Instant>) -> io::Result<(bool, bool, bool)> {
        use crate::sys::wait::{PollFd, PollFlags};
        let mut fds = [
            PollFd::new(&self.uffd, PollFlags::IN),
            PollFd::new(&self.chan, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        crate::sys::wait::poll(&mut fds, until)?;
        let r = |i: usize| !fds[i].revents().is_empty();
        Ok((r(0), r(1), r(2)))
    }

    /// `Userfault`: records, trips and un-protects each queued fault.
    fn resolve_faults(&mut self) -> io::Result<()> {
        while let Some(fault) = uffd::read_wp_fault(self.uffd.as_fd())? {
            let size = page();
            let page_addr = fault.address as usize & !(size - 1);
            if page_addr < self.base || page_addr >= self.base + self.span {
                continue; // the kernel only reports registered ranges
            }
            let index = (page_addr - self.base) / size;
            self.faults.fetch_add(1, Ordering::Relaxed);
            self.dirty.mark(index, index + 1);
            self.trip();
            // Read while the thread waits for us: this fault is not counted.
            if let Some((count, _)) = self.stats.completed_faults(fault.tid) {
                let entry = (fault.tid, count, false);
                match self.landing.iter_mut().find(|e| e.0 == fault.tid) {
                    Some(e) => *e = entry,
                    None => self.landing.push(entry),
                }
            }
            // Lets the stalled store through.
            uffd::write_protect(self.uffd.as_fd(), page_addr, size, false)?;
        }
        Ok(())
    }

    /// `Userfault`: waits until every thread let through since the last ACK
    /// has completed its fault (or is gone), at most [`LANDING_WAIT`],
    /// resolving the faults that come meanwhile (their threads are waited
    /// for too).
    fn await_landing(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + LANDING_WAIT;
        let mut step = Duration::from_micros(20);
        loop {
            let stats = &mut self.stats;
            self.landing
                .retain_mut(|(tid, before, past)| match stats.completed_faults(*tid) {
                    // Gone, or not readable: not waited for.
                    None => false,
                    // Not run again yet.
                    Some((now, _)) if now <= *before => true,
                    // Past its fault and asleep (or stopped): the store is done.
                    Some((_, false)) => false,
                    // Past its fault and running: maybe preempted (by us,
                    // waking, on its CPU) before the store; one more step.
                    Some((_, true)) => !std::mem::replace(past, true),
                });
            if self.landing.is_empty() || Instant::now() >= deadline {
                self.landing.clear();
                return Ok(());
            }
            // Asleep, so that a thread sharing our CPU gets it.
            let until = (Instant::now() + step).min(deadline);
            if crate::sys::wait::ready(self.uffd.as_fd(), PollFlags::IN, Some(until))? {
                self.resolve_faults()?;
            }
            step = (step * 2).min(Duration::from_millis(1));
        }
    }

    /// `UserfaultAsync`: records (and re-protects) the written pages; trips
    /// on a finding.
    fn scan(&mut self) {
        let Some(pagemap) = &self.pagemap else { return };
        let (base, dirty) = (self.base, &mut self.dirty);
        let mut found = false;
        let scanned =
            uffd::scan_written_and_protect(pagemap.as_fd(), base, self.span, |start, end| {
                dirty.mark((start - base) / page(), (end - base).div_ceil(page()));
                found = true;
            });
        // A scan that failed cannot tell what was written; and an unmap of
        // any part of the mapping (a raw munmap in this process) took the
        // record of that part's unscanned stores with it: either way, say
        // everything was written.
        let intact = uffd::is_wp_async_registered(pagemap.as_fd(), base, self.span);
        if scanned.is_err() || !matches!(intact, Ok(true)) {
            self.dirty.mark_all();
            found = true;
        }
        if found {
            self.trip();
        }
    }

    fn trip(&mut self) {
        if std::mem::replace(&mut self.armed, false) {
            // A full queue: the consumer has not read its trips; a closed
            // channel is noticed by `serve`.
            let _ = self.chan.send(&[TRIP]);
        }
    }

    /// Serves the consumer's messages (at most 64 per wake-up, so that a
    /// flooding consumer cannot keep faults waiting); `Ok(false)` once the
    /// consumer is gone.
    fn serve(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 16];
        for _ in 0..64 {
            match self.chan.recv(&mut buf) {
                Ok(Recv::Message(n)) => match parse_request(&buf[..n]) {
                    Some(Request::Ack(seq)) => match self.ack(seq) {
                        Ok(()) => {}
                        // A consumer that closed its end mid-reply.
                        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(false),
                        Err(e) => return Err(e),
                    },
                    Some(Request::Config(interval)) if interval != self.interval => {
                        self.interval = interval;
                        set_timer_slack_for(interval);
                    }
                    Some(Request::Config(_)) => {}
                    None => {} // not ours to understand: ignored
                },
                Ok(Recv::Empty) => return Ok(true),
                Ok(Recv::Closed) | Err(_) => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Re-protects what was written since the last ACK and replies with it.
    fn ack(&mut self, seq: u32) -> io::Result<()> {
        if self.pagemap.is_some() {
            self.scan();
        } else {
            // Pending faults first: their pages are then in the reply.
            self.resolve_faults()?;
            // Their stores, and those let through before, land before the
            // re-protect: else each faults, and trips, once more.
            self.await_landing()?;
        }
        let mut runs = Vec::new();
        self.dirty.drain_into(self.len, &mut runs);
        let mut reprotect_all = false;
        if self.pagemap.is_none() {
            for r in &runs {
                let (start, end) = (r.start, r.end.div_ceil(page()) * page());
                if uffd::write_protect(self.uffd.as_fd(), self.base + start, end - start, true)
                    .is_err()
                {
                    reprotect_all = true;
                }
            }
            if reprotect_all {
                uffd::write_protect(self.uffd.as_fd(), self.base, self.span, true)?;
            }
        }
        self.armed = true;
        let mut msg = Vec::with_capacity(16 + 8 * runs.len().min(MAX_RANGES));
        msg.push(PAGES);
        msg.push(u8::from(reprotect_all || runs.len() > MAX_RANGES));
        msg.extend_from_slice(&[0, 0]);
        msg.extend_from_slice(&seq.to_le_bytes());
        if msg[1] != 0 {
            msg.extend_from_slice(&[0; 8]);
        } else {
            msg.extend_from_slice(&(runs.len() as u32).to_le_bytes());
            msg.extend_from_slice(&[0; 4]);
            for r in &runs {
                msg.extend_from_slice(&((r.start / page()) as u32).to_le_bytes());
                msg.extend_from_slice(&(r.end.div_ceil(page()) as u32).to_le_bytes());
            }
        }
        // A full queue: the consumer is not reading; it will time out.
        self.chan.send(&msg).map(drop)
    }
}

/// The `/proc/self/task/<tid>/stat` files of the threads that faulted
/// last, kept open: a read at offset 0 regenerates the file, and costs a
/// third of an open, a read and a close (which doubled a trapped store's
/// stall).
#[derive(Debug, Default)]
struct ThreadStats {
    open: Vec<(u32, std::fs::File)>,
}

impl ThreadStats {
    /// How many threads' files are kept open at most.
    const KEEP: usize = 16;

    /// How many faults thread `tid` of this process has completed (the sum
    /// of `minflt` and `majflt` in its `stat`), and whether it is running
    /// or runnable (state `R`); `None` if it cannot be read (the thread is
    /// gone, no /proc, another PID namespace, tid 0).
    fn completed_faults(&mut self, tid: u32) -> Option<(u64, bool)> {
        use std::os::unix::fs::FileExt;
        if tid == 0 {
            return None;
        }
        let mut buf = [0u8; 1024];
        if let Some(i) = self.open.iter().position(|(t, _)| *t == tid) {
            match self.open[i].1.read_at(&mut buf, 0) {
                Ok(n) => return parse_completed_faults(std::str::from_utf8(&buf[..n]).ok()?),
                // The thread is gone (its tid may be reused): open again.
                Err(_) => drop(self.open.swap_remove(i)),
            }
        }
        let file = std::fs::File::open(format!("/proc/self/task/{tid}/stat")).ok()?;
        let n = file.read_at(&mut buf, 0).ok()?;
        if self.open.len() >= Self::KEEP {
            self.open.remove(0);
        }
        self.open.push((tid, file));
        parse_completed_faults(std::str::from_utf8(&buf[..n]).ok()?)
    }
}

/// `minflt + majflt` of a `stat` line (fields 10 and 12, counted after the
/// command name, which is in parentheses and may hold anything), and
/// whether its state (field 3) is `R`.
fn parse_completed_faults(stat: &str) -> Option<(u64, bool)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    // state(3) ppid pgrp session tty_nr tpgid flags minflt(10) cminflt majflt(12)
    let running = fields.next()? == "R";
    let minflt: u64 = fields.nth(6)?.parse().ok()?;
    let majflt: u64 = fields.nth(1)?.parse().ok()?;
    Some((minflt + majflt, running))
}

/// One bit per page of the region.
#[derive(Debug)]
pub(crate) struct Dirty {
    bits: Vec<u64>,
    pages: usize,
}

impl Dirty {
    pub(crate) fn new(len: usize) -> Self {
        let pages = len.div_ceil(page());
        Dirty {
            bits: vec![0; pages.div_ceil(64)],
            pages,
        }
    }

    /// Marks pages `first..end` (clamped to the region).
    pub(crate) fn mark(&mut self, first: usize, end: usize) {
        for page in first..end.min(self.pages) {
            self.bits[page / 64] |= 1 << (page % 64);
        }
    }

    pub(crate) fn mark_all(&mut self) {
        self.mark(0, self.pages);
    }

    fn is_set(&self, page: usize) -> bool {
        self.bits[page / 64] & (1 << (page % 64)) != 0
    }

    /// Appends the marked pages as merged byte ranges (the last one clamped
    /// to `len`), and clears them.
    pub(crate) fn drain_into(&mut self, len: usize, out: &mut Vec<Range<usize>>) {
        let size = page();
        let mut page = 0;
        while page < self.pages {
            if self.bits[page / 64] == 0 {
                page = (page / 64 + 1) * 64;
                continue;
            }
            if !self.is_set(page) {
                page += 1;
                continue;
            }
            let first = page;
            while page < self.pages && self.is_set(page) {
                page += 1;
            }
            out.push(first * size..(page * size).min(len));
        }
        self.bits.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A region of a whole number of 64-page words whose last page was
    /// written: the walk ends at the last word (cargo mutants: `<` as `<=`
    /// in `drain_into`'s loop read one word past the bitmap, which no
    /// region under test had reached).
    #[test]
    #[allow(clippy::single_range_in_vec_init)] // lists of page ranges
    fn dirty_pages_end_at_a_whole_last_word() {
        for words in [1, 2] {
            let pages = 64 * words;
            let mut d = Dirty::new(pages * page());
            d.mark(pages - 1, pages);
            let mut out = Vec::new();
            d.drain_into(pages * page(), &mut out);
            assert_eq!(out, vec![(pages - 1) * page()..pages * page()]);
        }
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // lists of page ranges
    fn dirty_pages_merge_and_clamp() {
        let mut d = Dirty::new(200 * page() + 100);
        d.mark(3, 4);
        d.mark(7, 9);
        d.mark(63, 66);
        d.mark(200, 205); // the last, partial page; past the end is ignored
        let mut out = Vec::new();
        d.drain_into(200 * page() + 100, &mut out);
        assert_eq!(
            out,
            [
                3 * page()..4 * page(),
                7 * page()..9 * page(),
                63 * page()..66 * page(),
                200 * page()..200 * page() + 100,
            ]
        );
        out.clear();
        d.drain_into(200 * page() + 100, &mut out);
        assert!(out.is_empty());
        d.mark_all();
        d.drain_into(200 * page() + 100, &mut out);
        assert_eq!(out, [0..200 * page() + 100]);
    }

    #[test]
    fn completed_faults_are_minflt_plus_majflt() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 1234 0 56 0 3 1 0 0 20 0 1 0";
        assert_eq!(parse_completed_faults(stat), Some((1234 + 56, false)));
        let running = stat.replace(") S ", ") R ");
        assert_eq!(parse_completed_faults(&running), Some((1234 + 56, true)));
        assert_eq!(parse_completed_faults("4242 (x) S 1 2"), None, "short");
        assert_eq!(parse_completed_faults("no parenthesis"), None);
        // This thread's own count is readable, twice (the file kept open);
        // tid 0 (no THREAD_ID) is not.
        let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        let mut stats = ThreadStats::default();
        let (first, running) = stats.completed_faults(tid).expect("our own stat");
        assert!(running, "we are running");
        assert!(stats.completed_faults(tid).is_some_and(|(n, _)| n >= first));
        assert_eq!(stats.open.len(), 1);
        assert_eq!(stats.completed_faults(0), None);
    }

    #[test]
    fn only_whole_requests_are_understood() {
        assert_eq!(parse_request(&encode_ack(7)), Some(Request::Ack(7)));
        assert_eq!(parse_request(&encode_ack(7)[..7]), None, "short");
        let mut long = encode_ack(7).to_vec();
        long.push(0);
        assert_eq!(parse_request(&long), None, "long");
        let ms = Duration::from_millis(1);
        assert_eq!(parse_request(&encode_config(ms)), Some(Request::Config(ms)));
        assert_eq!(
            parse_request(&encode_config(Duration::ZERO)),
            Some(Request::Config(Duration::from_micros(10))),
            "clamped"
        );
        assert_eq!(
            parse_request(&encode_config(Duration::MAX)),
            Some(Request::Config(Duration::from_secs(10))),
            "clamped"
        );
        assert_eq!(parse_request(&encode_config(ms)[..8]), None, "short");
        assert_eq!(parse_request(b"T"), None);
        assert_eq!(parse_request(&[]), None);
    }

    /// The largest PAGES reply the agent sends (`MAX_RANGES` ranges; with
    /// more it says "all") is understood whole, and fits the buffer the
    /// consumer receives into (`MAX_MESSAGE`): a smaller one would cut it
    /// and refuse every trip of more than a few hundred scattered pages.
    #[test]
    fn the_largest_pages_reply_fits_the_receive_buffer() {
        let mut m = vec![PAGES, 0, 0, 0];
        m.extend_from_slice(&9u32.to_le_bytes());
        m.extend_from_slice(&(MAX_RANGES as u32).to_le_bytes());
        m.extend_from_slice(&[0; 4]);
        for i in 0..MAX_RANGES as u32 {
            m.extend_from_slice(&(2 * i).to_le_bytes());
            m.extend_from_slice(&(2 * i + 1).to_le_bytes());
        }
        assert!(m.len() <= MAX_MESSAGE, "{} > {MAX_MESSAGE}", m.len());
        let pages = parse_pages(&m, 2 * MAX_RANGES + 2).expect("understood");
        assert_eq!(pages.ranges.map(|r| r.len()), Some(MAX_RANGES));
        // One range more than the agent ever lists: refused.
        m[8..12].copy_from_slice(&(MAX_RANGES as u32 + 1).to_le_bytes());
        m.extend_from_slice(&(2 * MAX_RANGES as u32).to_le_bytes());
        m.extend_from_slice(&(2 * MAX_RANGES as u32 + 1).to_le_bytes());
        assert_eq!(parse_pages(&m, 2 * MAX_RANGES + 2), None, "too many ranges");
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // lists of page ranges
    fn malformed_pages_replies_are_refused() {
        let mut m = vec![PAGES, 0, 0, 0];
        m.extend_from_slice(&7u32.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            parse_pages(&m, 4),
            Some(Pages {
                seq: 7,
                ranges: Some(vec![2..3])
            })
        );
        assert_eq!(parse_pages(&m, 2), None, "a range past the region");
        assert_eq!(parse_pages(&m[..20], 4), None, "short");
        assert_eq!(parse_pages(&m[..3], 4), None, "shorter than a header");
        let mut reversed = m.clone();
        reversed[16..20].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(parse_pages(&reversed, 4), None, "empty or reversed");
        let mut huge = m.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_pages(&huge, 4), None, "a count that does not fit");
        let mut all = m;
        all[1] = 1;
        assert_eq!(
            parse_pages(&all, 4),
            Some(Pages {
                seq: 7,
                ranges: None
            })
        );
    }

    /// The producer's own bound on the region a consumer offers: a
    /// hand-made offer of more than [`MAX_LEN`] (which an honest consumer's
    /// create refuses before any offer) is refused here too, before any
    /// uffd is made (found by cargo mutants: `>` as `==` in `Agent::start`
    /// survived; the memfd is sparse, so the test maps 16 GiB of address
    /// space and touches none of it).
    #[test]
    fn an_offer_over_the_largest_region_is_refused() {
        let len = MAX_LEN + page();
        let memfd = crate::sys::SealedMemfd::create("too-large", len).expect("memfd");
        let fd = memfd.as_fd().try_clone_to_owned().expect("dup");
        let (_ours, chan) = Channel::pair().expect("channel");
        let (peer, _theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        for kind in [BackendKind::Userfault, BackendKind::UserfaultAsync] {
            let fd = fd.try_clone().expect("dup");
            let chan = chan.try_clone().expect("dup");
            match Agent::attach(kind, len, fd, chan, peer.as_fd()) {
                Err(Error::Unavailable { backend, reason }) => {
                    assert_eq!(backend, kind);
                    assert!(reason.contains("over the"), "{kind}: {reason}");
                }
                Ok(_) => panic!("{kind}: a region of {len} bytes was watched"),
                Err(e) => panic!("{kind}: refused for another reason: {e}"),
            }
        }
    }
}
