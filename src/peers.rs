//! The producers a tripwire was shared with, and how we learn they are gone.
//!
//! Each handshake socket stays open for the pair's life. The sockets sit in
//! one epoll set, created with the tripwire (so that whoever watches its fd,
//! `wait`, tokio or mio, watches producers shared later too), whose fd is
//! what they watch next to the wake-up fd. A socket is registered for
//! `EPOLLRDHUP` only (`EPOLLHUP` and `EPOLLERR` always come): a live peer
//! that writes to its socket is not mistaken for a dead one.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::event::{Timespec, epoll};

use crate::Error;

#[derive(Debug)]
pub(crate) struct Peers {
    epoll: OwnedFd,
    socks: Vec<Option<UnixStream>>,
    alive: usize,
}

impl Peers {
    pub(crate) fn new() -> Result<Self, Error> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| Error::io("epoll_create for the peer set", e))?;
        Ok(Peers {
            epoll,
            socks: Vec::new(),
            alive: 0,
        })
    }

    pub(crate) fn add(&mut self, sock: UnixStream) -> Result<(), Error> {
        // Close the sockets of peers that are gone and reuse their slots,
        // so that a long-lived consumer serving many short-lived producers
        // stays flat.
        self.reap()
            .map_err(|e| Error::io("epoll_wait on the peer set", e))?;
        let idx = self
            .socks
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.socks.len());
        epoll::add(
            &self.epoll,
            &sock,
            epoll::EventData::new_u64(idx as u64),
            epoll::EventFlags::RDHUP,
        )
        .map_err(|e| Error::io("epoll_ctl for a peer socket", e))?;
        if idx == self.socks.len() {
            self.socks.push(Some(sock));
        } else {
            self.socks[idx] = Some(sock);
        }
        self.alive += 1;
        Ok(())
    }

    /// The fd that turns readable when a peer hangs up.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    /// `true` once every peer that was added has hung up (never `true` for a
    /// tripwire that was never shared). Reaps hung-up peers; no blocking.
    pub(crate) fn all_gone(&mut self) -> io::Result<bool> {
        if self.socks.is_empty() {
            return Ok(false);
        }
        if self.alive == 0 {
            return Ok(true);
        }
        self.reap()?;
        Ok(self.alive == 0)
    }

    /// Closes the sockets of the peers that hung up. No blocking.
    fn reap(&mut self) -> io::Result<()> {
        let mut buf = [MaybeUninit::<epoll::Event>::uninit(); 16];
        loop {
            let (events, _) = loop {
                match epoll::wait(&self.epoll, &mut buf, Some(&Timespec::default())) {
                    Err(rustix::io::Errno::INTR) => continue,
                    other => break other?,
                }
            };
            let n = events.len();
            for ev in events.iter() {
                let idx = ev.data.u64() as usize;
                if let Some(sock) = self.socks.get_mut(idx).and_then(Option::take) {
                    let _ = epoll::delete(&self.epoll, &sock);
                    self.alive -= 1;
                }
            }
            if n < buf.len() {
                return Ok(());
            }
        }
    }
}
