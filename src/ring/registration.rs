//! One end's registration with tokio, shared by both ends' async drivers
//! (`tokio.rs`): one fd (the Receiver's a duplicate of its tripwire's
//! public fd; the Sender's an epoll set of its space bell and handshake
//! socket), registered through a shared reference that keeps the fd open,
//! so the tripwire itself never moves: a failed or panicking registration
//! leaves the ring as it was. Imports neither end.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use ::tokio::io::unix::AsyncFd;

use crate::sys::FdSet;
use crate::{Error, reactor};

/// One end's registration with tokio: one fd, and a timer armed at the
/// deadline of the step's ACK in flight (the Receiver's), so that a
/// stopped Sender still ends the wait.
pub(super) struct Registration {
    fd: AsyncFd<reactor::SharedFd>,
    /// Made at the first deadline, then reset.
    timer: reactor::DeadlineTimer,
}

impl Registration {
    /// The registration in `slot`, made by registering `fd()` the first
    /// time. Outside a runtime it fails and leaves `slot` empty.
    pub(super) fn get_or_register(
        slot: &mut Option<Registration>,
        fd: impl FnOnce() -> std::io::Result<Arc<OwnedFd>>,
    ) -> Result<&mut Registration, Error> {
        if let Some(reg) = slot {
            return Ok(reg);
        }
        if ::tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::io(
                "registering the ring with tokio",
                std::io::Error::other(
                    "the ring's async calls need a tokio runtime (with IO enabled)",
                ),
            ));
        }
        let fd = fd()
            .and_then(reactor::register_shared)
            .map_err(|e| Error::io("registering the ring with tokio", e))?;
        Ok(slot.insert(Registration {
            fd,
            timer: reactor::DeadlineTimer::default(),
        }))
    }

    /// One epoll set watching `fds` for readability (and hang-up): what a
    /// Sender waits on.
    pub(super) fn set_of<'a>(
        fds: impl IntoIterator<Item = BorrowedFd<'a>>,
    ) -> std::io::Result<Arc<OwnedFd>> {
        let set = FdSet::<OwnedFd>::new()?;
        for fd in fds {
            set.watch(fd)?;
        }
        Ok(set.shared_fd())
    }

    /// `Ready` once the fd may have become readable since the last call,
    /// or at `deadline`; clears the readiness: look at the level next.
    pub(super) fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        deadline: Option<Instant>,
    ) -> Poll<std::io::Result<()>> {
        if self.timer.poll_expired(cx, deadline) {
            return Poll::Ready(Ok(()));
        }
        let mut guard = ready!(self.fd.poll_read_ready(cx))?;
        guard.clear_ready();
        Poll::Ready(Ok(()))
    }
}
