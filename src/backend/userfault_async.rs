//! `Backend::UserfaultAsync`: the low-stall variant of `Backend::Userfault`,
//! for kernels with `UFFD_FEATURE_WP_ASYNC` and `PAGEMAP_SCAN` (Linux 6.7).
//!
//! The producer (in the handshake) opens a userfaultfd with `WP_ASYNC`,
//! registers its mapping of the memfd in write-protect mode, protects it,
//! marks it `MADV_DONTFORK`, and sends the consumer the uffd, an fd of its
//! `/proc/self/pagemap` and the mapping's address, keeping no copy of
//! either. A store to a protected page then costs the producer one minor
//! fault (~1 µs) that the kernel resolves by itself: it clears the page's
//! uffd-wp bit and queues no message, so nothing ever waits for the
//! consumer.
//!
//! Here, a poller thread runs `PAGEMAP_SCAN` on the producer's pagemap every
//! interval, with `PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC` and category
//! `PAGE_IS_WRITTEN`: one walk reports the pages written since the last scan
//! and write-protects them again, under the page-table lock, so a store
//! is either reported by this scan or faults again and is reported by a
//! later one. The pages found accumulate; the first finding trips the wire
//! (an eventfd). An ACK runs one more scan under the poller's lock, so every
//! store made before it is visible once it returns and is reported by it,
//! and any later store trips the wire again. Holding the uffd matters: once
//! it is closed the registration is gone and scans fail with `EPERM`.
//!
//! A producer that exits (`ESRCH`) or unmaps its mapping takes its page
//! tables with it, and with them the record of stores not yet scanned. So
//! when a producer goes, the wire trips once more, reporting the whole
//! region: possibly spurious, never a lost store.
//!
//! Watched, as on `Userfault`: stores through the producer's registered
//! mapping. Not watched: `pwrite(2)` to the memfd, any other mapping (the
//! consumer's own), a forked child. Unlike `Userfault`, a kernel-mode write
//! into the region (`read(2)` into it) works and is seen: the kernel resolves
//! the fault itself. With swap enabled, a written page that is swapped out
//! before the next scan loses its page-table entry, and with it the record
//! of the write (the kernel keeps only the protection, not the written
//! state): that store trips the wire only when the page is next touched.

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::backend::userfault::{self, PAGE};
use crate::sys::{EventFd, Mapping, SealedMemfd, uffd};
use crate::{BackendKind, Error, Region};

#[derive(Debug)]
pub(crate) struct UserfaultAsync {
    memfd: SealedMemfd,
    len: usize,
    interval: Duration,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Byte ranges reported by the last ACK (written pages).
    pages: Vec<Range<usize>>,
}

#[derive(Debug)]
struct Shared {
    wake: EventFd,
    stop: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tripped: bool,
    watches: Vec<Watch>,
    /// Pages written since the last ACK, from every producer.
    dirty: Dirty,
}

/// One producer's registered mapping.
#[derive(Debug)]
struct Watch {
    /// Never used, only held: while it is open the producer's mapping stays
    /// registered (its close would unregister it, and scans would fail
    /// with `EPERM`).
    _uffd: OwnedFd,
    pagemap: OwnedFd,
    base: usize,
    /// The region's length rounded up to whole pages.
    span: usize,
}

/// What one scan of a watch found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Quiet,
    Written,
    /// The producer exited or unmapped its mapping.
    Gone,
    /// Part of the range is not a mapping registered with our uffd for
    /// async write-protect (`EPERM`): the producer unmapped its mapping and
    /// something else took its place, or (at the handshake) it sent a wrong
    /// address or uffd.
    Refused,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state is fine.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn trip(&self, st: &mut State) {
        if !st.tripped {
            st.tripped = true;
            // Only fails if the eventfd is broken; the consumer then sees the
            // error from its own read.
            let _ = self.wake.ring();
        }
    }

    /// Scans every producer once (recording written pages, re-protecting
    /// them); returns whether anything was found. Call with the lock held.
    fn scan(st: &mut State) -> io::Result<bool> {
        let State { watches, dirty, .. } = st;
        let mut found = false;
        let mut result = Ok(());
        let mut i = 0;
        while i < watches.len() {
            match watches[i].scan(dirty) {
                Ok(Seen::Quiet) => i += 1,
                Ok(Seen::Written) => {
                    found = true;
                    i += 1;
                }
                Ok(Seen::Gone | Seen::Refused) => {
                    // Stores made just before it went may have vanished with
                    // its page tables: report the whole region, once.
                    dirty.mark_all();
                    found = true;
                    watches.swap_remove(i);
                }
                Err(e) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                    i += 1;
                }
            }
        }
        result.map(|()| found)
    }

    /// The poller's step: scan unless already tripped, trip on a finding.
    fn poll(&self) {
        let mut st = self.state();
        if st.tripped || st.watches.is_empty() {
            // Stores made meanwhile stay recorded in the page tables: the
            // ACK's own scan finds them.
            return;
        }
        match Self::scan(&mut st) {
            Ok(false) => {}
            // An error trips the wire too: the consumer's ACK scans again
            // and reports it.
            Ok(true) | Err(_) => self.trip(&mut st),
        }
    }
}

impl Watch {
    fn scan(&self, dirty: &mut Dirty) -> io::Result<Seen> {
        let mut written = false;
        let base = self.base;
        let scanned =
            uffd::scan_written_and_protect(self.pagemap.as_fd(), base, self.span, |start, end| {
                dirty.mark((start - base) / PAGE, (end - base).div_ceil(PAGE));
                written = true;
            });
        if let Err(e) = scanned {
            return match e.raw_os_error() {
                Some(libc::ESRCH) => Ok(Seen::Gone),
                Some(libc::EPERM) => Ok(Seen::Refused),
                _ => Err(e),
            };
        }
        // Unmapping (or exiting: the page tables are torn down before the
        // process is gone) takes the record of unscanned stores with it, and
        // a scan of an unmapped range finds nothing: so check, after the
        // scan, that all of the mapping was still there for it (an unmap of
        // any one page loses that page's record).
        match uffd::is_wp_async_registered(self.pagemap.as_fd(), base, self.span) {
            Ok(true) if written => Ok(Seen::Written),
            Ok(true) => Ok(Seen::Quiet),
            Ok(false) => Ok(Seen::Gone),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(Seen::Gone),
            Err(e) => Err(e),
        }
    }
}

/// One bit per page of the region.
#[derive(Debug)]
struct Dirty {
    bits: Vec<u64>,
    pages: usize,
}

impl Dirty {
    fn new(len: usize) -> Self {
        let pages = len.div_ceil(PAGE);
        Dirty {
            bits: vec![0; pages.div_ceil(64)],
            pages,
        }
    }

    /// Marks pages `first..end` (clamped to the region).
    fn mark(&mut self, first: usize, end: usize) {
        for page in first..end.min(self.pages) {
            self.bits[page / 64] |= 1 << (page % 64);
        }
    }

    fn mark_all(&mut self) {
        self.mark(0, self.pages);
    }

    fn is_set(&self, page: usize) -> bool {
        self.bits[page / 64] & (1 << (page % 64)) != 0
    }

    /// Appends the marked pages as merged byte ranges (the last one clamped
    /// to `len`), and clears them.
    fn drain_into(&mut self, len: usize, out: &mut Vec<Range<usize>>) {
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
            out.push(first * PAGE..(page * PAGE).min(len));
        }
        self.bits.fill(0);
    }
}

/// Why this kernel cannot do UserfaultAsync.
pub(crate) fn probe() -> Result<(), String> {
    let features = userfault::probe()?;
    if features & uffd::FEATURE_WP_ASYNC == 0 {
        return Err(
            "userfaultfd async write-protect unavailable (UFFDIO_API lacks \
                    WP_ASYNC; needs Linux >= 6.7): use Backend::Userfault or upgrade"
                .into(),
        );
    }
    let pagemap = uffd::open_pagemap().map_err(|e| {
        format!(
            "opening /proc/self/pagemap failed ({e}): needs /proc mounted and a kernel with \
             CONFIG_PROC_PAGE_MONITOR; use Backend::Userfault"
        )
    })?;
    uffd::probe_pagemap_scan(pagemap.as_fd()).map_err(|e| {
        format!(
            "the PAGEMAP_SCAN ioctl is unavailable ({e}; needs Linux >= 6.7): use \
             Backend::Userfault or upgrade"
        )
    })
}

fn unavailable(reason: String) -> Error {
    Error::Unavailable {
        backend: BackendKind::UserfaultAsync,
        reason,
    }
}

/// The region's length rounded up to whole pages (what the mapping covers).
fn span(len: usize) -> usize {
    len.div_ceil(PAGE) * PAGE
}

/// Producer side: registers `map` for async write-protect and returns the
/// uffd and an fd of this process's `/proc/self/pagemap`, to send away.
pub(crate) fn register(map: &Mapping) -> Result<(OwnedFd, OwnedFd), Error> {
    probe().map_err(unavailable)?;
    let fd = uffd::open().map_err(|e| Error::io("userfaultfd", e))?;
    uffd::api(fd.as_fd(), uffd::FEATURE_WP_SHMEM | uffd::FEATURE_WP_ASYNC).map_err(|e| {
        unavailable(format!(
            "UFFDIO_API(WP_HUGETLBFS_SHMEM | WP_ASYNC) failed: {e}; needs Linux >= 6.7"
        ))
    })?;
    let len = span(map.len());
    uffd::register_wp(fd.as_fd(), map.addr(), len)
        .map_err(|e| unavailable(format!("UFFDIO_REGISTER in WP mode failed: {e}")))?;
    uffd::write_protect(fd.as_fd(), map.addr(), len, true)
        .map_err(|e| unavailable(format!("UFFDIO_WRITEPROTECT of the region failed: {e}")))?;
    map.dont_fork()
        .map_err(|e| Error::io("madvise(MADV_DONTFORK)", e))?;
    let pagemap = uffd::open_pagemap().map_err(|e| Error::io("opening /proc/self/pagemap", e))?;
    Ok((fd, pagemap))
}

/// Checks that `fd` is some process's `/proc/<pid>/pagemap`.
fn check_pagemap(fd: &OwnedFd) -> Result<(), String> {
    let link = crate::sys::fdkind::link(fd.as_fd())?;
    let fs = rustix::fs::fstatfs(fd).map_err(|e| format!("fstatfs: {e}"))?;
    if !link.ends_with("/pagemap") || fs.f_type != rustix::fs::PROC_SUPER_MAGIC {
        return Err(format!(
            "/proc/self/fd/{} is `{link}`, not a /proc/<pid>/pagemap",
            fd.as_raw_fd()
        ));
    }
    Ok(())
}

impl UserfaultAsync {
    pub(crate) fn create(len: usize, interval: Duration) -> Result<(Self, Region), Error> {
        probe().map_err(unavailable)?;
        let (memfd, region) = super::region_memfd(len)?;
        let wake = EventFd::new().map_err(|e| Error::io("eventfd", e))?;
        let wire = UserfaultAsync {
            memfd,
            len,
            interval,
            shared: Arc::new(Shared {
                wake,
                stop: AtomicBool::new(false),
                state: Mutex::new(State {
                    tripped: false,
                    watches: Vec::new(),
                    dirty: Dirty::new(len),
                }),
            }),
            thread: None,
            pages: Vec::new(),
        };
        Ok((wire, region))
    }

    /// Consumer side: takes a producer's uffd and pagemap fd and starts
    /// scanning its mapping at `base`.
    pub(crate) fn accept(
        &mut self,
        uffd: OwnedFd,
        pagemap: OwnedFd,
        base: u64,
    ) -> Result<(), Error> {
        crate::sys::fdkind::check_link(uffd.as_fd(), "anon_inode:[userfaultfd]")
            .map_err(|why| Error::handshake(format!("the producer's uffd: {why}")))?;
        check_pagemap(&pagemap)
            .map_err(|why| Error::handshake(format!("the producer's pagemap fd: {why}")))?;
        let base = usize::try_from(base)
            .ok()
            .filter(|b| *b != 0 && b % PAGE == 0 && uffd::checked_range(*b, span(self.len)).is_ok())
            .ok_or_else(|| Error::handshake(format!("bad mapping address {base:#x}")))?;
        let watch = Watch {
            _uffd: uffd,
            pagemap,
            base,
            span: span(self.len),
        };
        {
            let mut st = self.shared.state();
            // Picks up the stores made since the producer replied. A producer
            // that is already gone (it may write, drop its end and exit
            // before we get here) is reported like one that goes later.
            match watch.scan(&mut st.dirty) {
                Ok(Seen::Quiet) => st.watches.push(watch),
                Ok(Seen::Written) => {
                    st.watches.push(watch);
                    self.shared.trip(&mut st);
                }
                // Gone already, or (EPERM) its range is no longer a mapping
                // registered with that uffd: it unmapped its region (and the
                // address may have been reused), or it lied. Either way it
                // can write no more; report the whole region once.
                Ok(Seen::Gone | Seen::Refused) => {
                    st.dirty.mark_all();
                    self.shared.trip(&mut st);
                }
                Err(e) => return Err(Error::io("PAGEMAP_SCAN of the producer's mapping", e)),
            }
        }
        if self.thread.is_none() {
            let shared = self.shared.clone();
            let interval = self.interval;
            let thread = super::spawn_interval_thread("memfd-tripwire-scan", interval, move || {
                if shared.stop.load(Ordering::Acquire) {
                    return false;
                }
                shared.poll();
                true
            })
            .map_err(|e| Error::io("spawning the scanner thread", e))?;
            self.thread = Some(thread);
        }
        Ok(())
    }

    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.shared.wake.as_fd()
    }

    pub(crate) fn offer_fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.memfd.as_fd()]
    }

    /// If tripped, scans once more, reports every page written since the
    /// last ACK (then in [`pages`](UserfaultAsync::pages)), re-arms, and
    /// returns `true`. A failed scan leaves the wire tripped.
    pub(crate) fn take(&mut self) -> io::Result<bool> {
        let mut st = self.shared.state();
        if !st.tripped {
            return Ok(false);
        }
        Shared::scan(&mut st)?;
        self.shared.wake.drain()?;
        self.pages.clear();
        st.dirty.drain_into(self.len, &mut self.pages);
        st.tripped = false;
        Ok(true)
    }

    /// Re-arms whether or not the wire is tripped: scans once more (the
    /// stores before it are visible, those after it trip the wire) and
    /// forgets what was found.
    pub(crate) fn ack(&mut self) -> io::Result<()> {
        let mut st = self.shared.state();
        if let Err(e) = Shared::scan(&mut st) {
            self.shared.trip(&mut st);
            return Err(e);
        }
        self.shared.wake.drain()?;
        self.pages.clear();
        st.dirty.drain_into(self.len, &mut self.pages);
        st.tripped = false;
        Ok(())
    }

    /// Like [`take`](UserfaultAsync::take), but first scans whether or not
    /// the poller has: used once every producer is gone.
    pub(crate) fn take_final(&mut self) -> io::Result<bool> {
        {
            let mut st = self.shared.state();
            match Shared::scan(&mut st) {
                Ok(false) => {}
                Ok(true) => self.shared.trip(&mut st),
                Err(e) => {
                    self.shared.trip(&mut st);
                    return Err(e);
                }
            }
        }
        self.take()
    }

    /// The byte ranges the last successful ACK reported (written pages).
    pub(crate) fn pages(&self) -> &[Range<usize>] {
        &self.pages
    }
}

impl Drop for UserfaultAsync {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // lists of page ranges
    fn dirty_pages_merge_and_clamp() {
        let mut d = Dirty::new(200 * PAGE + 100);
        d.mark(3, 4);
        d.mark(7, 9);
        d.mark(63, 66);
        d.mark(200, 205); // the last, partial page; past the end is ignored
        let mut out = Vec::new();
        d.drain_into(200 * PAGE + 100, &mut out);
        assert_eq!(
            out,
            [
                3 * PAGE..4 * PAGE,
                7 * PAGE..9 * PAGE,
                63 * PAGE..66 * PAGE,
                200 * PAGE..200 * PAGE + 100,
            ]
        );
        out.clear();
        d.drain_into(200 * PAGE + 100, &mut out);
        assert!(out.is_empty());
        d.mark_all();
        d.drain_into(200 * PAGE + 100, &mut out);
        assert_eq!(out, [0..200 * PAGE + 100]);
    }
}
