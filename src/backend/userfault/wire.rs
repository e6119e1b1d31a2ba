//! `Backend::Userfault` (and, with `kind` `UserfaultAsync`, its low-stall
//! variant): plain stores seen on mainline kernels through userfaultfd
//! write-protect on the producer's mapping.
//!
//! The uffd never leaves the producer: its agent (`userfault::agent`, a thread
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
//! The ACK never blocks: the requests go out, the ACK stays in flight (its
//! deadline is data, [`Userfault::deadline`], which every driver arms: the
//! `poll(2)` time-out, a tokio timer, a mio user's poll time-out), and each
//! later look takes the replies that arrived (the wake-up fd turns readable
//! with each), until all are in, or a look after the deadline fails it.
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

use super::agent::{self, MAX_MESSAGE, TRIP};
use super::probe::{self, MAX_LEN, page};
use crate::backend::common::{Take, region_memfd};
use crate::sys::{Channel, FdSet, Recv, SealedMemfd};
use crate::{BackendKind, Error, Region, trace};

/// How many queued messages of one channel a look at it takes at most.
const MAX_PER_LOOK: usize = 64;

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
    /// The ACK whose replies are still awaited (sent without blocking).
    in_flight: Option<InFlight>,
    /// Byte ranges reported by the last ACK (written pages).
    pages: Vec<Range<usize>>,
    /// The producer (its handshake socket's id) behind each channel slot.
    owners: Vec<u64>,
    /// Producers evicted since the owner last asked ([`take_evicted`]).
    ///
    /// [`take_evicted`]: Userfault::take_evicted
    evicted: Vec<u64>,
}

/// An ACK sent to the agents, and what their replies said so far.
#[derive(Debug)]
struct InFlight {
    seq: u32,
    /// The channels whose reply is still awaited.
    waiting: Vec<usize>,
    deadline: Instant,
    /// Report the whole region (a producer left, an agent lost its pages).
    all: bool,
    /// Written pages, as page-index ranges.
    ranges: Vec<Range<usize>>,
}

impl Userfault {
    pub(crate) fn create(
        kind: BackendKind,
        len: usize,
        interval: Duration,
    ) -> Result<(Self, Region), Error> {
        let probed = match kind {
            BackendKind::UserfaultAsync => probe::userfault_async(),
            _ => probe::userfault().map(drop),
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
        let (memfd, region) = region_memfd(len)?;
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
            in_flight: None,
            pages: Vec::new(),
            owners: Vec::new(),
            evicted: Vec::new(),
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

    /// The producer attached (`owner`: its handshake socket's id): its
    /// agent listens on the pending channel.
    pub(crate) fn accept(&mut self, owner: u64) -> Result<(), Error> {
        // Our copy of the agent's end is dropped here: its close is how we
        // learn that the agent is gone.
        let (chan, _theirs) = self
            .pending
            .take()
            .ok_or_else(|| Error::handshake("no agent channel was offered"))?;
        if self.kind == BackendKind::UserfaultAsync {
            let _ = chan.send(&agent::encode_config(self.interval));
        }
        let idx = self
            .chans
            .insert(chan, epoll::EventFlags::IN)
            .map_err(|e| Error::io("epoll_ctl for an agent channel", e))?;
        if self.owners.len() <= idx {
            self.owners.resize(idx + 1, 0);
        }
        self.owners[idx] = owner;
        Ok(())
    }

    /// The producers evicted since the last call (their handshake sockets'
    /// ids), for the owner of those sockets to shut down.
    pub(crate) fn take_evicted(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.evicted)
    }

    /// The share in progress failed: drops its channel.
    pub(crate) fn reject(&mut self) {
        self.pending = None;
    }

    /// The agents' channels: the producers' sockets join their epoll.
    pub(crate) fn channels(&self) -> &FdSet<Channel> {
        &self.chans
    }

    pub(crate) fn kind(&self) -> BackendKind {
        self.kind
    }

    /// Reads what the agents sent: trips, stale replies, hang-ups. Leaves
    /// the channels whose ACK reply is awaited to `progress`.
    fn collect(&mut self) -> io::Result<()> {
        for (idx, _) in self.chans.ready()? {
            if self
                .in_flight
                .as_ref()
                .is_some_and(|f| f.waiting.contains(&idx))
            {
                continue;
            }
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
    /// last ACK are then in [`pages`](Userfault::pages)): `Taken`, or
    /// `Pending` while the replies are out. A failed ACK leaves the wire
    /// tripped.
    pub(crate) fn take(&mut self) -> io::Result<Take> {
        self.collect()?;
        if self.in_flight.is_none() && !self.tripped {
            return Ok(Take::Idle);
        }
        self.acknowledge()
    }

    /// ACKs whether or not the wire is tripped (or goes on with the ACK in
    /// flight): `Taken` once every agent answered.
    pub(crate) fn ack(&mut self) -> io::Result<Take> {
        self.collect()?;
        self.acknowledge()
    }

    /// The ACK itself, once the agents' messages were collected.
    fn acknowledge(&mut self) -> io::Result<Take> {
        let result = match self.in_flight.take() {
            Some(f) => Ok(f),
            None => self.send_ack(),
        }
        .and_then(|f| self.progress(f));
        match result {
            Ok(done) => Ok(if done { Take::Taken } else { Take::Pending }),
            Err(e) => {
                if e.kind() == io::ErrorKind::TimedOut {
                    trace::warn!(
                        backend = %self.kind,
                        producers = self.chans.live(),
                        error = %e,
                        "ACK timed out: a producer's agent did not answer (stopped?)"
                    );
                }
                // Agents that answered (or got the request) re-armed and
                // forgot their pages; their replies are dropped (a later
                // ACK has another sequence number): the wire stays tripped,
                // and the next ACK that succeeds reports the whole region.
                self.report_all = true;
                self.tripped = true;
                Err(e)
            }
        }
    }

    /// The deadline of the ACK in flight, if one is.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.in_flight.as_ref().map(|f| f.deadline)
    }

    /// Sends an ACK request to every agent. The trips seen so far are the
    /// ACK's to answer: `tripped` is cleared now, not when the replies are
    /// in, so that a trip an agent sends after its reply (a store after its
    /// re-arm), collected while others' replies are awaited, is kept for
    /// the next look. (A failed ACK sets it again.)
    fn send_ack(&mut self) -> io::Result<InFlight> {
        self.seq = self.seq.wrapping_add(1);
        let request = agent::encode_ack(self.seq);
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
        // An agent gone just now is covered by this ACK too (`all`).
        self.tripped = false;
        Ok(InFlight {
            seq: self.seq,
            waiting,
            deadline: Instant::now() + ACK_DEADLINE,
            all: std::mem::take(&mut self.report_all),
            ranges: Vec::new(),
        })
    }

    /// Reads agent `idx`'s channel until its reply to `f` or its close
    /// (`true`: no longer awaited), or until it is empty or gave
    /// `MAX_PER_LOOK` other messages (`false`). A trip from before the
    /// request, or a stale reply, is dropped; a flood of them does not
    /// outlast the deadline.
    fn take_reply(
        &mut self,
        f: &mut InFlight,
        idx: usize,
        pages: usize,
        buf: &mut [u8],
    ) -> io::Result<bool> {
        for _ in 0..MAX_PER_LOOK {
            let Some(chan) = self.chans.get(idx) else {
                return Ok(true);
            };
            match chan.recv(buf)? {
                Recv::Message(n) => match agent::parse_pages(&buf[..n], pages) {
                    Some(reply) if reply.seq == f.seq => {
                        match reply.ranges {
                            Some(r) => f.ranges.extend(r),
                            None => f.all = true,
                        }
                        return Ok(true);
                    }
                    _ if Instant::now() >= f.deadline => {
                        return Err(not_answering("a flood instead of the reply"));
                    }
                    _ => {}
                },
                Recv::Closed => {
                    // This ACK covers it (it reports the whole region on
                    // UserfaultAsync): no further trip of its own.
                    let tripped = self.tripped;
                    self.gone(idx);
                    self.tripped = tripped;
                    f.all |= self.kind == BackendKind::UserfaultAsync;
                    return Ok(true);
                }
                Recv::Empty => return Ok(false),
            }
        }
        Ok(false)
    }

    /// Takes the replies to `f` that are there, from every agent still
    /// awaited: `true` once all are in (the ACK is done), `false` (kept in
    /// flight) if some are not yet; `TimedOut` if some are not and the
    /// deadline has passed.
    fn progress(&mut self, mut f: InFlight) -> io::Result<bool> {
        let page = page();
        let pages = self.len.div_ceil(page);
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut i = 0;
        while i < f.waiting.len() {
            let idx = f.waiting[i];
            if self.take_reply(&mut f, idx, pages, &mut buf)? {
                f.waiting.swap_remove(i);
            } else {
                i += 1;
            }
        }
        if !f.waiting.is_empty() {
            if Instant::now() >= f.deadline {
                return Err(self.evict_silent(&f.waiting));
            }
            self.in_flight = Some(f);
            return Ok(false);
        }
        self.pages.clear();
        if f.all {
            self.pages.push(0..self.len);
        } else {
            f.ranges.sort_unstable_by_key(|r| r.start);
            for r in f.ranges {
                push_range(
                    &mut self.pages,
                    r.start * page..(r.end * page).min(self.len),
                );
            }
        }
        Ok(true)
    }

    /// The ACK's deadline passed with the agents of `silent` still to
    /// answer. If another producer answered, the silent ones are evicted:
    /// their channels closed (an agent that runs again sees it and stops
    /// watching its producer's stores), their sockets handed to the owner
    /// to shut down ([`take_evicted`](Userfault::take_evicted)), so that
    /// the next ACK goes to the others only and one stopped producer cannot
    /// deny them service. A sole producer (or all of them silent) is kept:
    /// it may only be stopped for a while (SIGSTOP, a debugger), and the
    /// wire waits for it, failing each ACK with `TimedOut`.
    fn evict_silent(&mut self, silent: &[usize]) -> io::Error {
        if self.chans.live() <= silent.len() {
            return not_answering("no reply");
        }
        for &idx in silent {
            if self.chans.remove(idx).is_some() {
                self.evicted
                    .push(self.owners.get(idx).copied().unwrap_or(0));
            }
        }
        trace::warn!(
            backend = %self.kind,
            evicted = silent.len(),
            producers = self.chans.live(),
            "evicted producers whose agent did not answer the ACK (the others answered)"
        );
        // Their pages since the last ACK went with them.
        self.report_all = true;
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "evicted {} producer(s) whose userfault agent did not answer the ACK within \
                 {ACK_DEADLINE:?} (stopped or hung) while the others answered: their sockets \
                 are shut down and their stores no longer watched; the other producers keep \
                 their notifications (the next look re-arms them)",
                silent.len()
            ),
        )
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
