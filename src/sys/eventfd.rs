//! An eventfd that only this process holds: a wake-up between our own
//! threads (a poller or calibration thread and the consumer). It is never handed
//! to a peer: a peer sharing its open file description could clear
//! `O_NONBLOCK` or drain or fill the counter, and make our calls block (for
//! wake-ups across processes, see [`Bell`](super::Bell)).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use rustix::event::EventfdFlags;
use rustix::io::Errno;

/// A non-blocking eventfd of our own.
#[derive(Debug)]
pub(crate) struct EventFd {
    /// In an `Arc`: a tokio registration, or a thread that rings it, may
    /// hold it open without a duplicate fd.
    fd: Arc<OwnedFd>,
}

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(EventFd { fd: Arc::new(fd) })
    }

    /// The fd, shared: whoever holds it keeps it open and the same.
    pub(crate) fn shared(&self) -> Arc<OwnedFd> {
        self.fd.clone()
    }

    /// Signals it. Never blocks: the counter only gets near overflow if
    /// signalled ~2^64 times without a drain.
    pub(crate) fn ring(&self) -> io::Result<()> {
        ring(self.fd.as_fd())
    }

    /// Resets it: `true` if it was signalled. Never blocks.
    pub(crate) fn drain(&self) -> io::Result<bool> {
        let mut buf = [0u8; 8];
        loop {
            match rustix::io::read(&*self.fd, &mut buf) {
                Ok(_) => return Ok(true),
                Err(Errno::AGAIN) => return Ok(false),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Signals an eventfd of ours held as a plain fd (from
/// [`EventFd::shared`]), as [`EventFd::ring`].
pub(crate) fn ring(fd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        match rustix::io::write(fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(Errno::AGAIN) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
