//! Registration with the tokio reactor. Since tokio 1.54, `AsyncFd`'s
//! constructors are `unsafe` (the fd must stay open and the same for the
//! registration's life), so the call lives here, for an owner whose fd is
//! fixed by construction: an `OwnedFd` shared through an `Arc`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// An fd kept open by the `Arc` it shares with its owner: registered
/// without a duplicate.
#[derive(Debug)]
pub(crate) struct SharedFd(Arc<OwnedFd>);

impl AsRawFd for SharedFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Registers the fd of a shared `OwnedFd` for readability, with no
/// duplicate: the registration holds a reference, so the fd stays open (and
/// the same) until it is dropped, whatever its other holders do.
pub(crate) fn register_shared(fd: Arc<OwnedFd>) -> io::Result<AsyncFd<SharedFd>> {
    // SAFETY: the AsyncFd owns a clone of the Arc; an OwnedFd is closed
    // only when dropped, which the Arc prevents while this clone lives, and
    // its number never changes: the fd is open and the same for the
    // registration's whole life.
    unsafe { AsyncFd::register_with_interest(SharedFd(fd), Interest::READABLE) }
        .map_err(io::Error::from)
}
