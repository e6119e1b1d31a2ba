//! The mechanisms that turn writes into wake-ups, one file (or folder) each
//! with both halves, behind one small enum per side that the public types
//! drive: [`Wire`], the consumer's end (`blocking::Tripwire`), and
//! [`Feed`], the producer's (`Producer`). The submodules are private: what
//! the rest of the crate needs is here. `Poll` has three files: the
//! tripwire's side in `poll.rs`, in `poller.rs` the one thread per process
//! that compares every `Poll` tripwire's region (and picks its interval),
//! and in `poll_shared.rs` what the two share (the wire's state and
//! compare, the interval's measure), which imports neither.

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use crate::{Backend, BackendKind, Error, Region};

mod common;
pub(crate) use common::Take;
pub(crate) use hangups::GoneFlag;
pub(crate) use limits::{Options, max_len};
// `poll`, `poll_shared` and `poller` reach these through here (`super::`).
use common::{DEFAULT_POLL_INTERVAL, region_memfd, set_timer_slack_for, timer_slack_for};

mod doorbell;
mod hangups;
mod kernel;
mod limits;
mod peers;
mod poll;
mod poll_shared;
mod poller;
mod userfault;

/// The Doorbell's armed-flag protocol, for the loom models (`__loom`).
#[cfg(memfd_tripwire_loom)]
pub(crate) use doorbell::protocol as doorbell_protocol;
use peers::Peers;
/// The Userfault agent's channel protocol, for the fuzz targets (`__fuzz`).
#[cfg(fuzzing)]
pub(crate) use userfault::fuzz as userfault_fuzz;

/// The consumer's end of a tripwire: its mechanism, and the owner of its
/// one fd (the set of its producers' sockets, which the mechanism's
/// wake-up fd is registered into: see [`Peers`]). Built together, so that
/// nothing outside hands one to the other.
#[derive(Debug)]
pub(crate) struct Wire {
    mech: Mech,
    peers: Peers,
}

/// The mechanism: one variant per backend file.
#[derive(Debug)]
enum Mech {
    Kernel(kernel::Kernel),
    Doorbell(doorbell::Doorbell),
    Poll(poll::Poller),
    /// `Userfault` and `UserfaultAsync`: the consumer's end of the agents.
    Userfault(userfault::Userfault),
}

impl Mech {
    fn kind(&self) -> BackendKind {
        match self {
            Mech::Kernel(_) => BackendKind::Kernel,
            Mech::Doorbell(_) => BackendKind::Doorbell,
            Mech::Poll(_) => BackendKind::Poll,
            Mech::Userfault(w) => w.kind(),
        }
    }

    /// Creates the wire and maps its region.
    fn create(backend: Backend, len: usize, opts: Options) -> Result<(Mech, Region), Error> {
        limits::check(backend, len, &opts)?;
        // The agents' scan interval (`UserfaultAsync`), in the producer.
        let scan_interval = opts.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL);
        match backend {
            Backend::Kernel => kernel::Kernel::create(len).map(|(w, r)| (Mech::Kernel(w), r)),
            Backend::Doorbell => {
                doorbell::Doorbell::create(len).map(|(w, r)| (Mech::Doorbell(w), r))
            }
            Backend::Poll => poll::Poller::create(len, opts.poll_interval, opts.busy_poll)
                .map(|(w, r)| (Mech::Poll(w), r)),
            Backend::Userfault => {
                userfault::Userfault::create(BackendKind::Userfault, len, scan_interval)
                    .map(|(w, r)| (Mech::Userfault(w), r))
            }
            Backend::UserfaultAsync => {
                userfault::Userfault::create(BackendKind::UserfaultAsync, len, scan_interval)
                    .map(|(w, r)| (Mech::Userfault(w), r))
            }
            Backend::Unmodified => match kernel::Kernel::create(len) {
                Ok((w, r)) => Ok((Mech::Kernel(w), r)),
                Err(_) => poll::Poller::create(len, opts.poll_interval, opts.busy_poll)
                    .map(|(w, r)| (Mech::Poll(w), r)),
            },
            Backend::Auto => {
                let kernel = match kernel::Kernel::create(len) {
                    Ok((w, r)) => return Ok((Mech::Kernel(w), r)),
                    Err(e) => unavailable_reason(e),
                };
                let userfault = match userfault::Userfault::create(
                    BackendKind::Userfault,
                    len,
                    scan_interval,
                ) {
                    Ok((w, r)) => return Ok((Mech::Userfault(w), r)),
                    Err(e) => unavailable_reason(e),
                };
                Err(Error::NoBackend {
                    tried: vec![
                        (BackendKind::Kernel, kernel),
                        (BackendKind::Userfault, userfault),
                    ],
                })
            }
        }
    }
}

impl Wire {
    /// Creates the wire, maps its region, and makes the tripwire's one fd:
    /// on `Kernel`, a set that watches the tripwire; on `Doorbell`, one
    /// that takes the rings (its producers ring through their sockets); on
    /// the Userfaults, one in the epoll of the agents' channels; on `Poll`,
    /// no set: its eventfd, rung on a hang-up by `backend::hangups`.
    pub(crate) fn create(
        backend: Backend,
        len: usize,
        opts: Options,
    ) -> Result<(Wire, Region), Error> {
        let (mech, region) = Mech::create(backend, len, opts)?;
        let kind = mech.kind();
        let peers = match &mech {
            Mech::Kernel(w) => Peers::new(kind, Some(w.wake_fd()), false)?,
            Mech::Doorbell(_) => Peers::new(kind, None, true)?,
            Mech::Poll(w) => Peers::watched(kind, w.wake_shared()),
            Mech::Userfault(w) => Peers::beside(kind, w.channels()),
        };
        Ok((Wire { mech, peers }, region))
    }

    /// The tripwire's one fd: readable when the wire trips (its wake-up fd
    /// or, on `Doorbell`, a ring) or a producer hangs up.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.peers.fd()
    }

    /// `true` once every producer that was shared with has hung up (never
    /// for a tripwire never shared). Closes the sockets of the producers
    /// that hung up; no blocking.
    pub(crate) fn all_gone(&mut self) -> io::Result<bool> {
        self.peers.all_gone()
    }

    /// How the producers ended, once [`all_gone`](Wire::all_gone): a clean
    /// close or a death, as an error.
    pub(crate) fn end(&self) -> io::Error {
        self.peers.end()
    }

    /// Why nothing can trip the wire yet, if so: a backend that only a
    /// connected producer trips (`Doorbell`'s rings, the Userfault agents'
    /// trips), never shared. `None` on `Kernel` and `Poll`, which any store
    /// through any mapping trips (the consumer's own, a `producer_fd`
    /// writer's), and once a producer was ever accepted (when all have gone,
    /// the step says `BrokenPipe` instead).
    pub(crate) fn never_shared(&self) -> Option<String> {
        if self.peers.ever_shared() || matches!(self.mech, Mech::Kernel(_) | Mech::Poll(_)) {
            return None;
        }
        Some(format!(
            "this {} tripwire was never shared, and only a producer that connected to it \
             (Producer::connect) can trip it (its own stores, producer_fd and a mapping of \
             its memory do not)",
            self.kind()
        ))
    }

    pub(crate) fn kind(&self) -> BackendKind {
        self.mech.kind()
    }

    /// How the producers that hung up so far ended: (clean closes, deaths).
    pub(crate) fn ends(&self) -> (u64, u64) {
        let ends = self.peers.ends();
        (ends.closed, ends.died)
    }

    /// If the wire is tripped, ACKs it (re-arms; prior writes become
    /// visible): `Taken`; `Idle` if it is not tripped. Never blocks: an ACK
    /// that is a round trip (`Userfault`, `UserfaultAsync`) stays in flight
    /// (`Pending`) until its replies are in, and the wake-up fd turns
    /// readable as they come; a look after its [deadline](Wire::deadline)
    /// fails it. A failed ACK leaves the wire tripped.
    pub(crate) fn take(&mut self) -> io::Result<Take> {
        let taken = match &mut self.mech {
            Mech::Kernel(w) => w.take(),
            Mech::Doorbell(w) => w.take(&mut self.peers),
            Mech::Poll(w) => w.take(),
            Mech::Userfault(w) => {
                let taken = w.take();
                self.evict();
                return taken;
            }
        };
        taken.map(Take::from)
    }

    /// When the ACK in flight fails if its replies are not all in: look
    /// again by then. `None` with no ACK in flight.
    pub(crate) fn deadline(&self) -> Option<std::time::Instant> {
        match &self.mech {
            Mech::Userfault(w) => w.deadline(),
            _ => None,
        }
    }

    /// Appends the byte ranges the last successful take re-armed: the
    /// written pages on `Userfault` and `UserfaultAsync`, the whole region
    /// on the backends that cannot tell.
    pub(crate) fn pages_into(&self, len: usize, out: &mut Vec<Range<usize>>) {
        match &self.mech {
            Mech::Userfault(w) => out.extend_from_slice(w.pages()),
            _ => out.push(0..len),
        }
    }

    /// Prepares what the next producer is offered (a fresh channel to its
    /// agent on `Userfault` and `UserfaultAsync`).
    pub(crate) fn prepare_offer(&mut self) -> Result<(), Error> {
        match &mut self.mech {
            Mech::Userfault(w) => w.prepare_offer(),
            _ => Ok(()),
        }
    }

    /// Checks what the producer sent back in the handshake: no fd, on any
    /// backend (a Userfault producer's agent keeps its uffd). Closes them.
    pub(crate) fn check_reply(fds: Vec<OwnedFd>) -> Result<(), Error> {
        if !fds.is_empty() {
            return Err(Error::handshake(format!(
                "the producer's reply carried {} unexpected fds (closed)",
                fds.len()
            )));
        }
        Ok(())
    }

    /// The producer attached: starts watching it (its handshake socket,
    /// and its agent's channel on `Userfault` and `UserfaultAsync`).
    pub(crate) fn accept(&mut self, sock: UnixStream) -> Result<(), Error> {
        let id = self.peers.add(sock)?;
        if let Mech::Userfault(w) = &mut self.mech {
            w.accept(id)?;
        }
        Ok(())
    }

    /// Shuts down the sockets of the producers the mechanism evicted (a
    /// Userfault agent that let an ACK's deadline pass while others
    /// answered): each learns that it was dropped.
    fn evict(&mut self) {
        if let Mech::Userfault(w) = &mut self.mech {
            for id in w.take_evicted() {
                self.peers.evict(id);
            }
        }
    }

    /// The share in progress failed: forgets what was prepared for it (the
    /// agent channel, whose close tells a refused agent to stop).
    pub(crate) fn reject(&mut self) {
        if let Mech::Userfault(w) = &mut self.mech {
            w.reject();
        }
    }

    /// Re-arms now, tripped or not: every write made before it returns is
    /// visible, and any later one trips the wire. `Taken` once done;
    /// `Pending` as for [`take`](Wire::take).
    pub(crate) fn ack(&mut self) -> io::Result<Take> {
        match &mut self.mech {
            Mech::Kernel(w) => w.ack(),
            Mech::Doorbell(w) => w.ack(&mut self.peers),
            Mech::Poll(w) => w.ack(),
            Mech::Userfault(w) => {
                let taken = w.ack();
                self.evict();
                return taken;
            }
        }
        .map(|()| Take::Taken)
    }

    /// Like [`take`](Wire::take), but also finds writes the mechanism has
    /// not reported yet (the poller's next compare or scan). Used once every
    /// producer is gone, before reporting it.
    pub(crate) fn take_final(&mut self) -> io::Result<Take> {
        match &mut self.mech {
            Mech::Poll(w) => w.take_final().map(Take::from),
            _ => self.take(),
        }
    }

    /// The fd an unmodified producer maps: the tripwire (`Kernel`) or the
    /// memfd (`Poll`); the others need the producer's cooperation.
    pub(crate) fn producer_fd(&self) -> Result<BorrowedFd<'_>, Error> {
        let why = match &self.mech {
            Mech::Kernel(w) => return Ok(w.wake_fd()),
            Mech::Poll(w) => return Ok(w.memfd_fd()),
            Mech::Doorbell(_) => {
                "its producer must call Producer::notify after its stores, so it needs \
                 Producer::connect"
            }
            Mech::Userfault(_) => {
                "its producer's mapping is registered with userfaultfd by the agent \
                 Producer::connect starts: a producer that only maps the fd is not watched"
            }
        };
        Err(Error::Unavailable {
            backend: self.kind(),
            reason: format!(
                "{why}; for a producer that knows nothing of this crate, create the tripwire \
                 with Backend::Unmodified (Kernel where the kernel has it, else Poll)"
            ),
        })
    }

    /// The fds a producer needs, in handshake order.
    pub(crate) fn offer_fds(&self) -> Vec<BorrowedFd<'_>> {
        match &self.mech {
            Mech::Kernel(w) => w.offer_fds(),
            Mech::Doorbell(w) => w.offer_fds(),
            Mech::Poll(w) => w.offer_fds(),
            Mech::Userfault(w) => w.offer_fds(),
        }
    }
}

/// The sentence an `Auto` error gives for a backend's failure.
fn unavailable_reason(e: Error) -> String {
    match e {
        Error::Unavailable { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// The producer's end of one mechanism, as [`Producer`](crate::Producer)
/// holds it.
#[derive(Debug)]
pub(crate) enum Feed {
    /// `Kernel`, `Poll`: the stores are seen as they are; nothing to run.
    Plain,
    /// The consumer's armed flag: `notify()` rings when it is set.
    Doorbell(doorbell::Ringer),
    /// `Userfault`, `UserfaultAsync`: the thread that owns the uffd (held
    /// for its drop, which stops it and unregisters the mapping).
    Userfault(userfault::Agent),
}

impl Feed {
    /// Maps a `memfd_tripwire` fd received from anywhere (`Kernel`: no
    /// handshake, nothing to run), after checking what it is.
    pub(crate) fn from_fd(fd: OwnedFd) -> Result<(Feed, Region), Error> {
        let map = kernel::attach(&fd)?;
        Ok((Feed::Plain, Region::new(map)))
    }

    /// Maps what an offer for `kind` carries (`fds`, in handshake order, as
    /// many as `kind` takes); on `Userfault` and `UserfaultAsync` also
    /// registers the mapping and starts the agent that owns the uffd, which
    /// shuts `sock` (the handshake socket) down should it fail.
    pub(crate) fn attach(
        kind: BackendKind,
        len: usize,
        fds: Vec<OwnedFd>,
        sock: &UnixStream,
    ) -> Result<(Feed, Region), Error> {
        let mut fds = fds.into_iter();
        let mut next = || fds.next().expect("fd count checked by receive_offer");
        Ok(match kind {
            BackendKind::Kernel => (Feed::Plain, kernel::attach_offered(next(), len)?),
            BackendKind::Poll => (Feed::Plain, common::map_peer_memfd(next(), len)?),
            BackendKind::Doorbell => {
                let (region, ringer) = doorbell::Ringer::attach(next(), len)?;
                (Feed::Doorbell(ringer), region)
            }
            BackendKind::Userfault | BackendKind::UserfaultAsync => {
                let memfd = next();
                let (region, agent) =
                    userfault::Agent::attach(kind, len, memfd, next(), sock.as_fd())?;
                (Feed::Userfault(agent), region)
            }
        })
    }

    /// `notify()`'s fast path: whether to ring the consumer (on `Doorbell`,
    /// when it is armed; never on the others, whose stores are seen).
    #[inline]
    pub(crate) fn should_ring(&self) -> bool {
        match self {
            Feed::Doorbell(ringer) => ringer.should_ring(),
            _ => false,
        }
    }

    /// Whether `notify()` rings at all (`Doorbell`): only such a producer
    /// learns of a consumer's death from `notify()`.
    #[inline]
    pub(crate) fn rings(&self) -> bool {
        matches!(self, Feed::Doorbell(_))
    }

    /// How many stores trapped so far (`Userfault`); 0 elsewhere.
    pub(crate) fn trapped_stores(&self) -> u64 {
        match self {
            Feed::Userfault(agent) => agent.faults(),
            _ => 0,
        }
    }
}
