//! The producers a tripwire was shared with, and the one fd that stands for
//! the whole tripwire.
//!
//! Each handshake socket stays open for the pair's life. The sockets sit in
//! one epoll set (`sys::FdSet`), created with the tripwire, which also
//! watches the wire's own wake-up fd (if it has one): that epoll fd is the
//! tripwire's fd, readable when the wire trips or a producer hangs up, so
//! that whoever watches it (`wait`, tokio or mio) watches producers shared
//! later too, through one fd and one registration.
//!
//! A socket is registered for `EPOLLRDHUP` (`EPOLLHUP` and `EPOLLERR` always
//! come) and `EPOLLIN`: a live peer that writes to its socket is not
//! mistaken for a dead one, and what it writes is read and dropped (with
//! any fd it passed: a producer that parks its own end of the socket in the
//! socket's queue and exits would otherwise never hang up). On `Doorbell`
//! the sockets are also the producers' bells (see `backend::doorbell`), and
//! what they carry are rings, taken by [`Peers::take_rings`]; such a socket is only closed once its rings are
//! all taken, so that the last ring of a producer that rang and left is
//! not lost.
//!
//! `Poll` is the exception: its one fd is the eventfd its poller rings, an
//! fd less than a set would cost, so its producers' sockets are watched by
//! the process-wide thread of `backend::hangups`, which rings that eventfd
//! when one hangs up ([`Peers::watched`]).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use rustix::event::epoll::EventFlags;

use super::hangups;
use crate::sys::{Bell, FdSet};
use crate::{BackendKind, Error, trace};

/// Up to this many Doorbell sockets, a take reads each directly.
const DIRECT_MAX: usize = 2;

#[derive(Debug)]
pub(crate) struct Peers {
    kind: Kind,
    /// How the peers that hung up ended. One that died (no goodbye, see
    /// `sys::bell`) makes the end a death, not a clean close.
    ends: Ends,
    /// The process that made it: a forked child's copy says no goodbye.
    pid: u32,
}

/// The peers that hung up so far: those that said goodbye first (a clean
/// close) and those that did not (a death). For the tripwire's stats, and
/// the backend its events name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ends {
    pub(crate) closed: u64,
    pub(crate) died: u64,
    backend: BackendKind,
}

#[derive(Debug)]
enum Kind {
    /// The sockets in the tripwire's epoll set.
    Set {
        socks: FdSet<Bell>,
        /// `Doorbell`: the sockets carry the producers' rings.
        rings: bool,
    },
    /// The sockets watched by `backend::hangups`, which rings `wake`.
    Watched {
        wake: Arc<OwnedFd>,
        /// Each with its id in the watch.
        socks: Vec<(Bell, u64)>,
        ever: bool,
    },
}

impl Peers {
    /// A set that also watches `wake` (the wire's wake-up fd), if any; with
    /// `rings`, the producers ring through their sockets.
    pub(crate) fn new(
        backend: BackendKind,
        wake: Option<BorrowedFd<'_>>,
        rings: bool,
    ) -> Result<Self, Error> {
        let socks = FdSet::new().map_err(|e| Error::io("epoll_create for the tripwire", e))?;
        if let Some(wake) = wake {
            socks
                .watch(wake)
                .map_err(|e| Error::io("epoll_ctl for the wake-up fd", e))?;
        }
        Ok(Peers {
            kind: Kind::Set { socks, rings },
            ends: Ends::new(backend),
            pid: std::process::id(),
        })
    }

    /// A set in the epoll of the wire's own set (`Userfault`: the agents'
    /// channels), so that the tripwire has one epoll fd, not two.
    pub(crate) fn beside<U: AsFd>(backend: BackendKind, wire: &FdSet<U>) -> Self {
        Peers {
            kind: Kind::Set {
                socks: FdSet::beside(wire),
                rings: false,
            },
            ends: Ends::new(backend),
            pid: std::process::id(),
        }
    }

    /// No set: `wake` (an eventfd of ours, `Poll`'s) is the tripwire's fd,
    /// and the process-wide watch rings it when a producer hangs up.
    pub(crate) fn watched(backend: BackendKind, wake: Arc<OwnedFd>) -> Self {
        Peers {
            kind: Kind::Watched {
                wake,
                socks: Vec::new(),
                ever: false,
            },
            ends: Ends::new(backend),
            pid: std::process::id(),
        }
    }

    /// Watches a producer's handshake socket; returns its identity (for
    /// [`evict`](Peers::evict)).
    pub(crate) fn add(&mut self, sock: UnixStream) -> Result<u64, Error> {
        let sock = Bell::from_stream(sock);
        let id = sock
            .id()
            .map_err(|e| Error::io("fstat of a peer socket", e))?;
        // Close the sockets of peers that are gone (their slots are reused),
        // so that a long-lived consumer serving many short-lived producers
        // stays flat.
        self.reap()
            .map_err(|e| Error::io("looking for producers that hung up", e))?;
        match &mut self.kind {
            Kind::Set { socks, .. } => {
                socks
                    .insert(sock, EventFlags::RDHUP | EventFlags::IN)
                    .map_err(|e| Error::io("epoll_ctl for a peer socket", e))?;
            }
            Kind::Watched { wake, socks, ever } => {
                let id = hangups::watch(sock.as_fd(), Arc::downgrade(wake))
                    .map_err(|e| Error::io("watching a producer's socket for its hang-up", e))?;
                socks.push((sock, id));
                *ever = true;
            }
        }
        Ok(id)
    }

    /// Shuts down the socket of the producer `id` (from [`add`](Peers::add))
    /// if it is still watched: it learns that it was dropped (its
    /// `Producer::is_closed`), and the next look reaps it as a death (it
    /// said no goodbye). No blocking.
    pub(crate) fn evict(&self, id: u64) {
        let shut = |sock: &Bell| {
            if sock.id().is_ok_and(|i| i == id) {
                sock.shut_down();
            }
        };
        match &self.kind {
            Kind::Set { socks, .. } => socks.indices().filter_map(|i| socks.get(i)).for_each(shut),
            Kind::Watched { socks, .. } => socks.iter().for_each(|(sock, _)| shut(sock)),
        }
    }

    /// The tripwire's fd: readable when the wire trips (its wake-up fd or,
    /// on `Doorbell`, a ring) or a peer hangs up.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match &self.kind {
            Kind::Set { socks, .. } => socks.fd(),
            Kind::Watched { wake, .. } => wake.as_fd(),
        }
    }

    /// `true` once every peer that was added has hung up (never `true` for a
    /// tripwire that was never shared), rings left in their sockets or not.
    /// Reaps hung-up peers; no blocking.
    pub(crate) fn all_gone(&mut self) -> io::Result<bool> {
        let kept = self.reap()?;
        Ok(match &self.kind {
            Kind::Set { socks, .. } => socks.ever_used() && socks.live() == kept,
            Kind::Watched { socks, ever, .. } => *ever && socks.is_empty(),
        })
    }

    /// How the peers ended, once [`all_gone`](Peers::all_gone): the error
    /// the tripwire's step reports after its last trip. A clean close if
    /// every peer said goodbye before it hung up, a death if one did not.
    pub(crate) fn end(&self) -> io::Error {
        crate::error::peers_ended(self.ends.died > 0)
    }

    /// How the peers that hung up so far ended.
    pub(crate) fn ends(&self) -> Ends {
        self.ends
    }

    /// Whether a peer was ever added (hung up since or not).
    pub(crate) fn ever_shared(&self) -> bool {
        match &self.kind {
            Kind::Set { socks, .. } => socks.ever_used(),
            Kind::Watched { ever, .. } => *ever,
        }
    }

    /// `Doorbell`: takes the rings of every socket that has some (at most
    /// 64 KiB each: a flood cannot keep us here); `true` if there was
    /// one. Closes the sockets that reached their end. No blocking.
    pub(crate) fn take_rings(&mut self) -> io::Result<bool> {
        let Kind::Set { socks, .. } = &mut self.kind else {
            return Ok(false);
        };
        let ends = &mut self.ends;
        let mut rang = false;
        // A few sockets are read directly (one `recv` each, the common case
        // of one producer: no `epoll_wait` per ring); more, through the set.
        let ready: Vec<usize> = if socks.live() <= DIRECT_MAX {
            socks.indices().collect()
        } else {
            socks
                .ready()?
                .into_iter()
                .filter(|(_, ev)| ev.intersects(EventFlags::IN | EventFlags::HUP | EventFlags::ERR))
                .map(|(idx, _)| idx)
                .collect()
        };
        for idx in ready {
            let Some(sock) = socks.get(idx) else {
                continue;
            };
            match sock.drain() {
                Ok(got) => rang |= got,
                // The end of the stream (or a broken one): all its rings
                // were taken before.
                Err(_) => ends.forget(socks.remove(idx)),
            }
        }
        Ok(rang)
    }

    /// Closes the sockets of the peers that hung up, except (on `Doorbell`)
    /// those with rings left in them; returns how many of those it kept.
    /// No blocking.
    fn reap(&mut self) -> io::Result<usize> {
        let ends = &mut self.ends;
        let (socks, rings) = match &mut self.kind {
            Kind::Set { socks, rings } => (socks, *rings),
            Kind::Watched { socks, .. } => {
                let mut i = 0;
                while i < socks.len() {
                    if discard(&socks[i].0)? {
                        let (sock, id) = socks.swap_remove(i);
                        hangups::unwatch(sock.as_fd(), id);
                        ends.forget(Some(sock));
                    } else {
                        i += 1;
                    }
                }
                return Ok(0);
            }
        };
        let hang_up = EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR;
        let mut kept = 0;
        for (idx, events) in socks.ready()? {
            if !rings {
                // Bytes on a socket that carries none after the handshake.
                if socks.get(idx).is_none_or(|s| discard(s).unwrap_or(true)) {
                    ends.forget(socks.remove(idx));
                }
                continue;
            }
            if !events.intersects(hang_up) {
                continue;
            }
            let rings_left = rings
                && socks
                    .get(idx)
                    .is_some_and(|s| s.has_data().unwrap_or(false));
            if rings_left {
                kept += 1;
            } else {
                ends.forget(socks.remove(idx));
            }
        }
        Ok(kept)
    }
}

/// Says goodbye to every producer still here (the consumer closed its end
/// cleanly: see `Producer::notify`), unless this is a forked child's copy
/// or a panic is unwinding it; then closes their sockets.
impl Drop for Peers {
    fn drop(&mut self) {
        let goodbye = self.pid == std::process::id() && !std::thread::panicking();
        match &self.kind {
            Kind::Set { socks, .. } => {
                if goodbye {
                    socks
                        .indices()
                        .filter_map(|i| socks.get(i))
                        .for_each(Bell::say_goodbye);
                }
            }
            Kind::Watched { socks, .. } => {
                for (sock, id) in socks {
                    if goodbye {
                        sock.say_goodbye();
                    }
                    hangups::unwatch(sock.as_fd(), *id);
                }
            }
        }
    }
}

impl Ends {
    fn new(backend: BackendKind) -> Self {
        Ends {
            closed: 0,
            died: 0,
            backend,
        }
    }

    /// Closes the socket of a peer that hung up, counting a clean close if
    /// it said goodbye first and a death if it did not.
    fn forget(&mut self, sock: Option<Bell>) {
        let Some(sock) = sock else {
            return;
        };
        if sock.said_goodbye() {
            self.closed += 1;
            trace::debug!(
                backend = %self.backend,
                closed = self.closed,
                died = self.died,
                "a producer closed its end (a goodbye, then its hang-up)"
            );
        } else {
            self.died += 1;
            trace::warn!(
                backend = %self.backend,
                closed = self.closed,
                died = self.died,
                "a producer died (it hung up without a goodbye: killed, crashed or panicked)"
            );
        }
    }
}

/// Takes what a peer sent on a socket that carries nothing after the
/// handshake (closing any fd passed along: a producer that parked its own
/// end of the socket in it would otherwise never hang up), then says
/// whether the peer hung up. No blocking.
fn discard(sock: &Bell) -> io::Result<bool> {
    match sock.drain() {
        Ok(_) => sock.hung_up(),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(e),
    }
}
