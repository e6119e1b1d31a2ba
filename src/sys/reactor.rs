//! Registration with the tokio reactor. Since tokio 1.54, `AsyncFd`'s
//! constructors are `unsafe` (the fd must stay open and the same for the
//! registration's life), so the call lives here, for an owner whose fd is
//! fixed by construction: an `OwnedFd`, or a value that owns its one fd for
//! life ([`FixedFd`]: the blocking tripwire), held by the `AsyncFd` itself.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Registers an owned fd for readability. Callers register a duplicate
/// (`try_clone_to_owned`) of the fd they watch, so the registration owns
/// what it watches and nothing else can close it under tokio.
pub(crate) fn register_owned(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open until dropped and always returns the same
    // number; the AsyncFd owns it, so it stays open and the same for the
    // registration's whole life.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}

/// A value registered by its own fd (`AsFd`), inside the `AsyncFd` that
/// watches it: no duplicate, and the fd closes only after the registration
/// is gone (an `AsyncFd` deregisters before it drops what it holds).
#[derive(Debug)]
pub(crate) struct Owner<T>(pub(crate) T);

impl<T: AsFd> AsRawFd for Owner<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// A type whose [`as_fd`](AsFd::as_fd) is the one fd it made (or took) at
/// creation, for its whole life: nothing it offers closes or replaces it.
/// Only such a type may be registered by [`register`].
pub(crate) trait FixedFd: AsFd {}

/// Registers `inner` by its own fd for readability, with no duplicate: the
/// `AsyncFd` owns it. Whoever holds the `AsyncFd` may call `inner`'s
/// methods through `get_mut`, never replace it (tokio's rule). On failure,
/// `inner` comes back with the error.
pub(crate) fn register<T: FixedFd>(inner: T) -> Result<AsyncFd<Owner<T>>, (T, io::Error)> {
    // SAFETY: `T: FixedFd` returns the same open fd for its whole life, and
    // the AsyncFd owns it: the fd is open and the same until the AsyncFd is
    // dropped (it deregisters first) or gives `inner` back (`into_inner`,
    // which deregisters). The crate's holders replace no registered value
    // (tokio.rs only calls methods through `get_mut`).
    unsafe { AsyncFd::register_with_interest(Owner(inner), Interest::READABLE) }.map_err(|e| {
        let (Owner(inner), error) = e.into_parts();
        (inner, error)
    })
}
