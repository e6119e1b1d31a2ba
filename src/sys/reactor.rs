//! Registration with the tokio reactor. Since tokio 1.54, `AsyncFd`'s
//! constructors are `unsafe` (the fd must stay open and the same for the
//! registration's life), so the calls live here, for the two owners whose
//! fd is fixed by construction.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::blocking;

/// Registers a tripwire's wake-up fd for readability.
pub(crate) fn register_tripwire(tw: blocking::Tripwire) -> io::Result<AsyncFd<blocking::Tripwire>> {
    // SAFETY: a blocking::Tripwire owns its wake-up fd (an OwnedFd inside its
    // backend), never replaces it, and closes it only on drop, so
    // `as_raw_fd()` returns the same open fd for as long as the AsyncFd owns
    // the tripwire.
    unsafe { AsyncFd::register_with_interest(tw, Interest::READABLE) }.map_err(io::Error::from)
}

/// Registers an owned fd for readability.
pub(crate) fn register_owned(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open until dropped and always returns the same
    // number; the AsyncFd owns it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}
