//! The producers a tripwire was shared with, and how we learn they are gone.
//!
//! Each handshake socket stays open for the pair's life and carries nothing
//! after the handshake, so any readiness on it means the peer hung up. The
//! sockets sit in one epoll set whose fd is what `wait`, tokio and mio watch
//! next to the wake-up fd.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::event::{Timespec, epoll};

use crate::Error;

#[derive(Debug, Default)]
pub(crate) struct Peers {
    epoll: Option<OwnedFd>,
    socks: Vec<Option<UnixStream>>,
    alive: usize,
}

impl Peers {
    pub(crate) fn add(&mut self, sock: UnixStream) -> Result<(), Error> {
        let ep = match &self.epoll {
            Some(ep) => ep,
            None => self.epoll.insert(
                epoll::create(epoll::CreateFlags::CLOEXEC)
                    .map_err(|e| Error::io("epoll_create for the peer set", e))?,
            ),
        };
        epoll::add(
            ep,
            &sock,
            epoll::EventData::new_u64(self.socks.len() as u64),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        )
        .map_err(|e| Error::io("epoll_ctl for a peer socket", e))?;
        self.socks.push(Some(sock));
        self.alive += 1;
        Ok(())
    }

    /// The fd that turns readable when a peer hangs up (if any was added).
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.epoll.as_ref().map(|e| e.as_fd())
    }

    /// `true` once every peer that was added has hung up (never `true` for a
    /// tripwire that was never shared). Reaps hung-up peers; no blocking.
    pub(crate) fn all_gone(&mut self) -> io::Result<bool> {
        let Some(ep) = &self.epoll else {
            return Ok(false);
        };
        if self.alive == 0 {
            return Ok(true);
        }
        let mut buf = [MaybeUninit::<epoll::Event>::uninit(); 8];
        let (events, _) = loop {
            match epoll::wait(ep, &mut buf, Some(&Timespec::default())) {
                Err(rustix::io::Errno::INTR) => continue,
                other => break other?,
            }
        };
        for ev in events.iter() {
            let idx = ev.data.u64() as usize;
            if let Some(sock) = self.socks.get_mut(idx).and_then(Option::take) {
                let _ = epoll::delete(ep, &sock);
                self.alive -= 1;
            }
        }
        Ok(self.alive == 0)
    }
}
