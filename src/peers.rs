//! The producers a tripwire was shared with, and how we learn they are gone.
//!
//! Each handshake socket stays open for the pair's life. The sockets sit in
//! one epoll set (`sys::FdSet`), created with the tripwire (so that whoever
//! watches its fd, `wait`, tokio or mio, watches producers shared later
//! too), whose fd is what they watch next to the wake-up fd. A socket is
//! registered for `EPOLLRDHUP` only (`EPOLLHUP` and `EPOLLERR` always
//! come): a live peer that writes to its socket is not mistaken for a dead
//! one.

use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;

use rustix::event::epoll::EventFlags;

use crate::Error;
use crate::sys::FdSet;

#[derive(Debug)]
pub(crate) struct Peers {
    socks: FdSet<UnixStream>,
}

impl Peers {
    pub(crate) fn new() -> Result<Self, Error> {
        let socks = FdSet::new().map_err(|e| Error::io("epoll_create for the peer set", e))?;
        Ok(Peers { socks })
    }

    pub(crate) fn add(&mut self, sock: UnixStream) -> Result<(), Error> {
        // Close the sockets of peers that are gone (their slots are reused),
        // so that a long-lived consumer serving many short-lived producers
        // stays flat.
        self.reap()
            .map_err(|e| Error::io("epoll_wait on the peer set", e))?;
        self.socks
            .insert(sock, EventFlags::RDHUP)
            .map_err(|e| Error::io("epoll_ctl for a peer socket", e))?;
        Ok(())
    }

    /// The fd that turns readable when a peer hangs up.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.socks.fd()
    }

    /// `true` once every peer that was added has hung up (never `true` for a
    /// tripwire that was never shared). Reaps hung-up peers; no blocking.
    pub(crate) fn all_gone(&mut self) -> io::Result<bool> {
        if !self.socks.ever_used() {
            return Ok(false);
        }
        self.reap()?;
        Ok(self.socks.live() == 0)
    }

    /// Closes the sockets of the peers that hung up. No blocking.
    fn reap(&mut self) -> io::Result<()> {
        for idx in self.socks.ready()? {
            self.socks.remove(idx);
        }
        Ok(())
    }
}
