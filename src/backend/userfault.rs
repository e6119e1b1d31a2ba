//! `Backend::Userfault` (and, with `kind` `UserfaultAsync`, its low-stall
//! variant): plain stores seen on mainline kernels through userfaultfd
//! write-protect on the producer's mapping.
//!
//! The uffd never leaves the producer: its agent (`backend::agent`, a thread
//! in the producer's process started by `Producer::connect`) owns it,
//! resolves each fault at once (records the page, un-protects it, sends a
//! trip), and re-protects the written pages when the consumer ACKs. This is
//! the consumer's end: one `sys::Channel` per producer (made here, its other
//! end handed over in the offer), an epoll set of them as the wake-up fd,
//! and the ACK as a round trip: a request to every producer's agent, whose
//! replies list the written pages. A producer that does not answer within
//! [`ACK_DEADLINE`] (stopped, hung) makes the ACK fail with `TimedOut` and
//! the wire stay tripped; never a hang.
//!
//! Watched: stores through the producer's registered mapping. Not watched:
//! `pwrite(2)` to the memfd, any other mapping (the consumer's own), a
//! forked child (the mapping is `MADV_DONTFORK`). On `Userfault`, with
//! `UFFD_USER_MODE_ONLY`, a kernel-mode write into a protected page (e.g.
//! `read(2)` into the region) fails with `EFAULT` instead of trapping.

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::epoll;

use crate::backend::agent::{self, MAX_MESSAGE, TRIP};
use crate::sys::{Channel, FdSet, Recv, SealedMemfd, uffd};
use crate::{BackendKind, Error, Region};

pub(crate) const PAGE: usize = 4096;

/// How many queued messages of one channel a look at it takes at most.
const MAX_PER_LOOK: usize = 64;

/// The largest region these backends watch: the agent keeps a bit per page
/// and write-protects every page (page tables for the whole span), and its
/// replies number pages in `u32`.
pub(crate) const MAX_LEN: usize = 16 << 30;

/// How long an ACK waits for every producer's agent to answer.
pub(crate) const ACK_DEADLINE: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Userfault {
    kind: BackendKind,
    memfd: SealedMemfd,
    len: usize,
    /// `UserfaultAsync`: the agents' scan interval.
    interval: Duration,
    /// One per live producer; a slot is reused once its producer is gone.
    /// Its fd is the wake-up fd: readable when one has a message.
    chans: FdSet<Channel>,
    /// The channel of the share in progress: ours, and the agent's end.
    pending: Option<(Channel, OwnedFd)>,
    /// A trip was seen and not yet ACKed.
    tripped: bool,
    /// A producer went away since the last ACK (UserfaultAsync: its last
    /// stores may not have been scanned): the next ACK reports everything.
    report_all: bool,
    seq: u32,
    /// Byte ranges reported by the last ACK (written pages).
    pages: Vec<Range<usize>>,
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

impl Userfault {
    pub(crate) fn create(
        kind: BackendKind,
        len: usize,
        interval: Duration,
    ) -> Result<(Self, Region), Error> {
        let probed = match kind {
            BackendKind::UserfaultAsync => super::userfault_async::probe(),
            _ => probe().map(drop),
        };
        probed.map_err(|reason| Error::Unavailable {
            backend: kind,
            reason,
        })?;
        if len > MAX_LEN {
            return Err(Error::Unavailable {
                backend: kind,
                reason: format!(
                    "a region of {len} bytes is over the {MAX_LEN} this backend watches; use \
                     several tripwires, or Backend::Doorbell"
                ),
            });
        }
        let (memfd, region) = super::region_memfd(len)?;
        let chans =
            FdSet::new().map_err(|e| Error::io("epoll_create for the agents' channels", e))?;
        let wire = Userfault {
            kind,
            memfd,
            len,
            interval,
            chans,
            pending: None,
            tripped: false,
            report_all: false,
            seq: 0,
            pages: Vec::new(),
        };
        Ok((wire, region))
    }

    /// Makes the channel the next producer's agent gets in the offer.
    pub(crate) fn prepare_offer(&mut self) -> Result<(), Error> {
        let pair = Channel::pair().map_err(|e| Error::io("socketpair for an agent channel", e))?;
        self.pending = Some(pair);
        Ok(())
    }

    pub(crate) fn offer_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = vec![self.memfd.as_fd()];
        if let Some((_, theirs)) = &self.pending {
            fds.push(theirs.as_fd());
        }
        fds
    }

    /// The producer attached: its agent listens on the pending channel.
    pub(crate) fn accept(&mut self) -> Result<(), Error> {
        // Our copy of the agent's end is dropped here: its close is how we
        // learn that the agent is gone.
        let (chan, _theirs) = self
            .pending
            .take()
            .ok_or_else(|| Error::handshake("no agent channel was offered"))?;
        if self.kind == BackendKind::UserfaultAsync {
            let _ = chan.send(&agent::encode_config(self.interval));
        }
        self.chans
            .insert(chan, epoll::EventFlags::IN)
            .map_err(|e| Error::io("epoll_ctl for an agent channel", e))?;
        Ok(())
    }

    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.chans.fd()
    }

    pub(crate) fn kind(&self) -> BackendKind {
        self.kind
    }

    /// Reads what the agents sent: trips, stale replies, hang-ups.
    fn collect(&mut self) -> io::Result<()> {
        for idx in self.chans.ready()? {
            self.drain_chan(idx)?;
        }
        Ok(())
    }

    /// Takes every queued message of channel `idx` (no reply is expected
    /// now: any is stale).
    fn drain_chan(&mut self, idx: usize) -> io::Result<()> {
        let mut buf = [0u8; 16];
        // At most this many per look: a flooding agent cannot keep us here
        // (what is left keeps the wake-up fd readable).
        for _ in 0..MAX_PER_LOOK {
            let Some(chan) = self.chans.get(idx) else {
                return Ok(());
            };
            match chan.recv(&mut buf)? {
                Recv::Message(1) if buf[0] == TRIP => self.tripped = true,
                Recv::Message(_) => {}
                Recv::Empty => return Ok(()),
                Recv::Closed => {
                    self.gone(idx);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Forgets a producer whose agent is gone. The pages it recorded since
    /// the last ACK went with it: the next ACK reports the whole region. On
    /// `UserfaultAsync` its last stores may not even have been scanned, so
    /// the wire trips; on `Userfault` every store sent its trip before it
    /// completed.
    fn gone(&mut self, idx: usize) {
        if self.chans.remove(idx).is_some() {
            self.report_all = true;
            if self.kind == BackendKind::UserfaultAsync {
                self.tripped = true;
            }
        }
    }

    /// If tripped, ACKs (re-arming every agent; the pages written since the
    /// last ACK are then in [`pages`](Userfault::pages)) and returns `true`.
    /// A failed ACK leaves the wire tripped.
    pub(crate) fn take(&mut self) -> io::Result<bool> {
        self.collect()?;
        if !self.tripped {
            return Ok(false);
        }
        self.rearm()?;
        Ok(true)
    }

    /// Re-arms whether or not the wire is tripped.
    pub(crate) fn ack(&mut self) -> io::Result<()> {
        self.collect()?;
        self.rearm()
    }

    /// The round trip: an ACK request to every agent, then every reply.
    fn rearm(&mut self) -> io::Result<()> {
        let result = self.round_trip();
        if result.is_err() {
            // Agents that answered (or got the request) re-armed and forgot
            // their pages; their replies are dropped: the wire stays
            // tripped, and the next ACK that succeeds reports the whole
            // region.
            self.report_all = true;
            self.tripped = true;
        }
        result
    }

    /// One ACK request to every agent, then every reply.
    fn round_trip(&mut self) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let request = agent::encode_ack(seq);
        let mut waiting = Vec::new();
        let members: Vec<usize> = self.chans.indices().collect();
        for idx in members {
            let Some(chan) = self.chans.get(idx) else {
                continue;
            };
            match chan.send(&request) {
                Ok(true) => waiting.push(idx),
                Ok(false) => return Err(not_answering("its queue is full")),
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => self.gone(idx),
                Err(e) => return Err(e),
            }
        }
        let deadline = Instant::now() + ACK_DEADLINE;
        let pages = self.len.div_ceil(PAGE);
        let mut all = std::mem::take(&mut self.report_all);
        let mut ranges = Vec::new();
        let mut buf = vec![0u8; MAX_MESSAGE];
        for idx in waiting {
            while let Some(chan) = self.chans.get(idx) {
                match chan.recv(&mut buf)? {
                    Recv::Message(n) => match agent::parse_pages(&buf[..n], pages) {
                        Some(reply) if reply.seq == seq => {
                            match reply.ranges {
                                Some(r) => ranges.extend(r),
                                None => all = true,
                            }
                            break;
                        }
                        // A trip from before the request, or a stale reply; a
                        // flood of them does not outlast the deadline.
                        _ if Instant::now() >= deadline => {
                            return Err(not_answering("a flood instead of the reply"));
                        }
                        _ => {}
                    },
                    Recv::Closed => {
                        self.gone(idx);
                        all |= self.kind == BackendKind::UserfaultAsync;
                        break;
                    }
                    Recv::Empty => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() || !chan.wait(left)? {
                            return Err(not_answering("no reply"));
                        }
                    }
                }
            }
        }
        self.pages.clear();
        if all {
            self.pages.push(0..self.len);
        } else {
            ranges.sort_unstable_by_key(|r| r.start);
            for r in ranges {
                push_range(
                    &mut self.pages,
                    r.start * PAGE..(r.end * PAGE).min(self.len),
                );
            }
        }
        self.tripped = false;
        Ok(())
    }

    /// The byte ranges the last successful ACK reported (written pages).
    pub(crate) fn pages(&self) -> &[Range<usize>] {
        &self.pages
    }
}

fn not_answering(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "a producer's userfault agent did not answer the ACK within {ACK_DEADLINE:?} \
             ({why}): is the producer stopped? The wire stays tripped; try again"
        ),
    )
}

/// Adds a range, merging it with the last one if they touch or overlap.
fn push_range(out: &mut Vec<Range<usize>>, r: Range<usize>) {
    match out.last_mut() {
        Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
        _ => out.push(r),
    }
}
