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
//! come): a live peer that writes to its socket is not mistaken for a dead
//! one. On `Doorbell` the sockets are also the producers' bells (see
//! `backend::doorbell`): registered for `EPOLLIN` too, and drained by
//! [`Peers::take_rings`]; such a socket is only closed once its rings are
//! all taken, so that the last ring of a producer that rang and left is
//! not lost.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use rustix::event::epoll::EventFlags;

use crate::Error;
use crate::sys::{FdSet, bell};

#[derive(Debug)]
pub(crate) struct Peers {
    socks: FdSet<UnixStream>,
    /// `Doorbell`: the sockets carry the producers' rings.
    rings: bool,
}

impl Peers {
    /// A set that also watches `wake` (the wire's wake-up fd), if any; with
    /// `rings`, the producers ring through their sockets.
    pub(crate) fn new(wake: Option<BorrowedFd<'_>>, rings: bool) -> Result<Self, Error> {
        let socks = FdSet::new().map_err(|e| Error::io("epoll_create for the tripwire", e))?;
        if let Some(wake) = wake {
            socks
                .watch(wake)
                .map_err(|e| Error::io("epoll_ctl for the wake-up fd", e))?;
        }
        Ok(Peers { socks, rings })
    }

    /// A set in the epoll of the wire's own set (`Userfault`: the agents'
    /// channels), so that the tripwire has one epoll fd, not two.
    pub(crate) fn beside<U: AsFd>(wire: &FdSet<U>) -> Self {
        Peers {
            socks: FdSet::beside(wire),
            rings: false,
        }
    }

    pub(crate) fn add(&mut self, sock: UnixStream) -> Result<(), Error> {
        // Close the sockets of peers that are gone (their slots are reused),
        // so that a long-lived consumer serving many short-lived producers
        // stays flat.
        self.reap()
            .map_err(|e| Error::io("epoll_wait on the peer set", e))?;
        let events = if self.rings {
            EventFlags::RDHUP | EventFlags::IN
        } else {
            EventFlags::RDHUP
        };
        self.socks
            .insert(sock, events)
            .map_err(|e| Error::io("epoll_ctl for a peer socket", e))?;
        Ok(())
    }

    /// The tripwire's fd: readable when the wire trips (its wake-up fd or,
    /// on `Doorbell`, a ring) or a peer hangs up.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.socks.fd()
    }

    /// [`fd`](Peers::fd), for a registration that keeps it open.
    #[cfg(feature = "tokio")]
    pub(crate) fn shared_fd(&self) -> std::sync::Arc<std::os::fd::OwnedFd> {
        self.socks.shared_fd()
    }

    /// `true` once every peer that was added has hung up (never `true` for a
    /// tripwire that was never shared), rings left in their sockets or not.
    /// Reaps hung-up peers; no blocking.
    pub(crate) fn all_gone(&mut self) -> io::Result<bool> {
        if !self.socks.ever_used() {
            return Ok(false);
        }
        let kept = self.reap()?;
        Ok(self.socks.live() == kept)
    }

    /// `Doorbell`: takes the rings of every socket that has some (at most
    /// 256 bytes each: a flood cannot keep us here); `true` if there was
    /// one. Closes the sockets that reached their end. No blocking.
    pub(crate) fn take_rings(&mut self) -> io::Result<bool> {
        let mut rang = false;
        for (idx, events) in self.socks.ready()? {
            if !events.intersects(EventFlags::IN | EventFlags::HUP | EventFlags::ERR) {
                continue;
            }
            let Some(sock) = self.socks.get(idx) else {
                continue;
            };
            match bell::drain(sock.as_fd()) {
                Ok(got) => rang |= got,
                // The end of the stream (or a broken one): all its rings
                // were taken before.
                Err(_) => {
                    self.socks.remove(idx);
                }
            }
        }
        Ok(rang)
    }

    /// Closes the sockets of the peers that hung up, except (on `Doorbell`)
    /// those with rings left in them; returns how many of those it kept.
    /// No blocking.
    fn reap(&mut self) -> io::Result<usize> {
        let hang_up = EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR;
        let mut kept = 0;
        for (idx, events) in self.socks.ready()? {
            if !events.intersects(hang_up) {
                continue;
            }
            let rings_left = self.rings
                && self
                    .socks
                    .get(idx)
                    .is_some_and(|s| bell::has_data(s.as_fd()).unwrap_or(false));
            if rings_left {
                kept += 1;
            } else {
                self.socks.remove(idx);
            }
        }
        Ok(kept)
    }
}
