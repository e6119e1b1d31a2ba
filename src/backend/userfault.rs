//! `Backend::Userfault`: plain stores seen on mainline kernels through
//! userfaultfd write-protect on the producer's mapping.
//!
//! The producer (in the handshake) opens a userfaultfd, registers its
//! mapping of the memfd in write-protect mode, protects it, marks it
//! `MADV_DONTFORK`, and sends the uffd and the mapping's address to the
//! consumer, keeping no copy. Here, a resolver thread per producer reads the
//! write faults: it records the page, trips the wire (an eventfd) and
//! un-protects that page, which lets the blocked store proceed. An ACK
//! re-protects exactly the pages written since the last one, under the same
//! lock as the resolver, so an un-protect can never land after an ACK.
//!
//! Watched: stores through the producer's registered mapping. Not watched:
//! `pwrite(2)` to the memfd, any other mapping (the consumer's own), a
//! forked child (the mapping is not inherited). With `UFFD_USER_MODE_ONLY`,
//! a kernel-mode write into a protected page (e.g. `read(2)` into the
//! region) fails with `EFAULT` instead of trapping.

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rustix::event::{PollFd, PollFlags};

use crate::sys::{EventFd, Mapping, SealedMemfd, uffd};
use crate::{BackendKind, Error, Region};

pub(crate) const PAGE: usize = 4096;

#[derive(Debug)]
pub(crate) struct Userfault {
    memfd: SealedMemfd,
    len: usize,
    shared: Arc<Shared>,
    /// One resolver per live producer; each ends when its producer hangs up.
    threads: Vec<JoinHandle<()>>,
    /// Byte ranges re-protected by the last ACK.
    pages: Vec<Range<usize>>,
}

#[derive(Debug)]
struct Shared {
    wake: EventFd,
    stop: EventFd,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    tripped: bool,
    /// The live producers' mappings; a slot is freed (and reused) when its
    /// producer hangs up, so a consumer serving many short-lived producers
    /// stays flat.
    watches: Vec<Option<Watch>>,
    /// Pages that producers now gone wrote since the last ACK.
    orphaned: Vec<Range<usize>>,
}

/// One producer's registered mapping.
#[derive(Debug)]
struct Watch {
    uffd: Arc<OwnedFd>,
    base: usize,
    len: usize,
    /// Page indexes un-protected since the last ACK, kept sorted.
    dirty: Vec<usize>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Frees a watch whose producer is gone, keeping the pages it wrote
    /// since the last ACK for the next one to report.
    fn forget(&self, index: usize) {
        let mut st = self.state();
        if let Some(w) = st.watches.get_mut(index).and_then(Option::take) {
            for &page in &w.dirty {
                let start = page * PAGE;
                push_range(&mut st.orphaned, start..start + PAGE);
            }
        }
    }
}

/// Why this kernel cannot do Userfault, or `Ok` with the features offered.
pub(crate) fn probe() -> Result<u64, String> {
    let fd = uffd::open().map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => "userfaultfd absent (ENOSYS: kernel built without \
                               CONFIG_USERFAULTFD): use Backend::Doorbell or Backend::Poll"
            .to_string(),
        Some(libc::EPERM) => "userfaultfd refused (EPERM) even in user-mode-only mode: allow \
                              it with sysctl vm.unprivileged_userfaultfd=1 or CAP_SYS_PTRACE, \
                              or use Backend::Doorbell"
            .to_string(),
        _ => format!("userfaultfd failed: {e}"),
    })?;
    let features = uffd::api(fd.as_fd(), 0).map_err(|e| format!("UFFDIO_API failed: {e}"))?;
    if features & uffd::FEATURE_WP_SHMEM == 0 {
        return Err(
            "userfaultfd write-protect on shmem unavailable (UFFDIO_API lacks \
                    WP_HUGETLBFS_SHMEM; needs Linux >= 5.19): use Backend::Doorbell or upgrade"
                .into(),
        );
    }
    Ok(features)
}

/// Producer side: registers `map` and returns the uffd to send away.
pub(crate) fn register(map: &Mapping) -> Result<OwnedFd, Error> {
    let unavailable = |reason: String| Error::Unavailable {
        backend: BackendKind::Userfault,
        reason,
    };
    probe().map_err(unavailable)?;
    let fd = uffd::open().map_err(|e| Error::io("userfaultfd", e))?;
    uffd::api(fd.as_fd(), uffd::FEATURE_WP_SHMEM)
        .map_err(|e| unavailable(format!("UFFDIO_API(WP_HUGETLBFS_SHMEM) failed: {e}")))?;
    // userfaultfd works on whole pages; the mapping covers the last one.
    let len = map.len().div_ceil(PAGE) * PAGE;
    uffd::register_wp(fd.as_fd(), map.addr(), len)
        .map_err(|e| unavailable(format!("UFFDIO_REGISTER in WP mode failed: {e}")))?;
    uffd::write_protect(fd.as_fd(), map.addr(), len, true)
        .map_err(|e| unavailable(format!("UFFDIO_WRITEPROTECT of the region failed: {e}")))?;
    map.dont_fork()
        .map_err(|e| Error::io("madvise(MADV_DONTFORK)", e))?;
    Ok(fd)
}

impl Userfault {
    pub(crate) fn create(len: usize) -> Result<(Self, Region), Error> {
        probe().map_err(|reason| Error::Unavailable {
            backend: BackendKind::Userfault,
            reason,
        })?;
        let (memfd, region) = super::region_memfd(len)?;
        let wake = EventFd::new().map_err(|e| Error::io("eventfd", e))?;
        let stop = EventFd::new().map_err(|e| Error::io("eventfd", e))?;
        let wire = Userfault {
            memfd,
            len,
            shared: Arc::new(Shared {
                wake,
                stop,
                state: Mutex::default(),
            }),
            threads: Vec::new(),
            pages: Vec::new(),
        };
        Ok((wire, region))
    }

    /// Consumer side: takes a producer's uffd and starts resolving its
    /// faults, until the producer on the other end of `peer` hangs up.
    pub(crate) fn accept(
        &mut self,
        uffd: OwnedFd,
        base: u64,
        peer: BorrowedFd<'_>,
    ) -> Result<(), Error> {
        crate::sys::fdkind::check_link(uffd.as_fd(), "anon_inode:[userfaultfd]")
            .map_err(|why| Error::handshake(format!("the producer's uffd: {why}")))?;
        // Reading a fork event would install a new fd in our table per
        // producer fork(): refuse a uffd set up to report them.
        let features = uffd::features_of(uffd.as_fd())
            .map_err(|e| Error::handshake(format!("the producer's uffd: {e}")))?;
        if features & uffd::FEATURE_EVENT_FORK != 0 {
            return Err(Error::handshake(
                "the producer's uffd reports fork events (UFFD_FEATURE_EVENT_FORK), which \
                 would install fds in the consumer: refused",
            ));
        }
        let span = self.len.div_ceil(PAGE) * PAGE;
        let base = usize::try_from(base)
            .ok()
            .filter(|b| *b != 0 && b % PAGE == 0 && uffd::checked_range(*b, span).is_ok())
            .ok_or_else(|| Error::handshake(format!("bad mapping address {base:#x}")))?;
        let peer = peer
            .try_clone_to_owned()
            .map_err(|e| Error::io("dup of the handshake socket", e))?;
        // Resolvers of producers that hung up are done: forget them.
        self.threads.retain(|t| !t.is_finished());
        let uffd = Arc::new(uffd);
        let index = {
            let mut st = self.shared.state();
            let watch = Watch {
                uffd: uffd.clone(),
                base,
                len: span,
                dirty: Vec::new(),
            };
            match st.watches.iter().position(Option::is_none) {
                Some(i) => {
                    st.watches[i] = Some(watch);
                    i
                }
                None => {
                    st.watches.push(Some(watch));
                    st.watches.len() - 1
                }
            }
        };
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("memfd-tripwire-uffd".into())
            .spawn(move || {
                resolve(&shared, &uffd, &peer);
                shared.forget(index);
            });
        match spawned {
            Ok(thread) => {
                self.threads.push(thread);
                Ok(())
            }
            Err(e) => {
                // Nobody would resolve its faults: drop the watch, and with
                // it our uffd (the producer keeps none), which unregisters
                // the range and releases any blocked store.
                self.shared.forget(index);
                Err(Error::io("spawning the fault resolver thread", e))
            }
        }
    }

    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.shared.wake.as_fd()
    }

    pub(crate) fn offer_fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.memfd.as_fd()]
    }

    /// If tripped, re-protects the pages written since the last ACK (they
    /// are then in [`pages`](Userfault::pages)) and returns `true`.
    pub(crate) fn take(&mut self) -> io::Result<bool> {
        if !self.shared.wake.drain()? {
            return Ok(false);
        }
        self.rearm()?;
        Ok(true)
    }

    /// Re-arms whether or not the wire is tripped.
    pub(crate) fn ack(&mut self) -> io::Result<()> {
        self.shared.wake.drain()?;
        self.rearm()
    }

    fn rearm(&mut self) -> io::Result<()> {
        self.pages.clear();
        let mut st = self.shared.state();
        let st = &mut *st;
        for r in st.orphaned.drain(..) {
            push_range(&mut self.pages, r.start..r.end.min(self.len));
        }
        for w in st.watches.iter_mut().flatten() {
            let mut i = 0;
            while i < w.dirty.len() {
                // Coalesce consecutive pages into one ioctl.
                let first = w.dirty[i];
                let mut end = first + 1;
                i += 1;
                while i < w.dirty.len() && w.dirty[i] == end {
                    end += 1;
                    i += 1;
                }
                // Whole pages: `w.len` is page-rounded, like the registration.
                let start = first * PAGE;
                let len = (end * PAGE).min(w.len) - start;
                match uffd::write_protect(w.uffd.as_fd(), w.base + start, len, true) {
                    Ok(()) => {}
                    // The producer's mm (ESRCH) or mapping (ENOENT) is gone:
                    // no store can come through it any more.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH | libc::ENOENT)) => {}
                    Err(e) => {
                        // Leave the wire tripped: the caller sees the error,
                        // and the next look finds the trip again.
                        self.shared.wake.ring()?;
                        return Err(e);
                    }
                }
                push_range(&mut self.pages, start..(start + len).min(self.len));
            }
            w.dirty.clear();
        }
        st.tripped = false;
        Ok(())
    }

    /// The byte ranges the last successful ACK re-protected (written pages).
    pub(crate) fn pages(&self) -> &[Range<usize>] {
        &self.pages
    }
}

/// Adds a range, merging it with the last one if they touch.
fn push_range(out: &mut Vec<Range<usize>>, r: Range<usize>) {
    match out.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => out.push(r),
    }
}

/// The resolver: one thread per producer, until the producer hangs up (its
/// end of `peer` closes) or the wire is dropped.
fn resolve(shared: &Shared, uffd: &Arc<OwnedFd>, peer: &OwnedFd) {
    loop {
        let mut fds = [
            PollFd::new(uffd, PollFlags::IN),
            PollFd::new(&shared.stop, PollFlags::IN),
            PollFd::new(peer, PollFlags::RDHUP),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
        if !fds[1].revents().is_empty() || !fds[2].revents().is_empty() {
            return;
        }
        if fds[0]
            .revents()
            .intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL)
        {
            return;
        }
        loop {
            match uffd::read_wp_fault(uffd.as_fd()) {
                Ok(Some(addr)) => on_fault(shared, uffd, addr as usize),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn on_fault(shared: &Shared, uffd: &Arc<OwnedFd>, addr: usize) {
    let mut st = shared.state();
    let Some(w) = st
        .watches
        .iter_mut()
        .flatten()
        .find(|w| Arc::ptr_eq(&w.uffd, uffd))
    else {
        return;
    };
    let page_addr = addr & !(PAGE - 1);
    if page_addr < w.base || page_addr >= w.base + w.len {
        return; // not ours: the kernel only reports registered ranges
    }
    let page = (page_addr - w.base) / PAGE;
    if let Err(pos) = w.dirty.binary_search(&page) {
        w.dirty.insert(pos, page);
    }
    let tripped = std::mem::replace(&mut st.tripped, true);
    if !tripped {
        let _ = shared.wake.ring();
    }
    // Un-protect and wake the writer, still under the lock, so that an ACK
    // cannot run between recording the page and un-protecting it.
    let _ = uffd::write_protect(uffd.as_fd(), page_addr, PAGE, false);
}

impl Drop for Userfault {
    fn drop(&mut self) {
        let _ = self.shared.stop.ring();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
