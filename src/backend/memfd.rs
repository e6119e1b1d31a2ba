//! Plain sealed memfds: the memory of the emulated backends.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};

use crate::Error;

/// The seals every memfd we hand out carries: its size is fixed, so a peer's
/// `ftruncate` cannot make our mapping raise SIGBUS.
pub(crate) const SIZE_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

/// An anonymous memfd of `len` bytes, sealed against resizing.
pub(crate) fn create_sealed(name: &str, len: usize) -> Result<OwnedFd, Error> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(|e| Error::io("memfd_create", e))?;
    rustix::fs::ftruncate(&fd, len as u64).map_err(|e| Error::io("ftruncate of a memfd", e))?;
    rustix::fs::fcntl_add_seals(&fd, SIZE_SEALS | SealFlags::SEAL)
        .map_err(|e| Error::io("sealing a memfd", e))?;
    Ok(fd)
}

/// Checks a memfd received from a peer: sealed against resizing, `len` long.
pub(crate) fn check_sealed(fd: BorrowedFd<'_>, len: usize, what: &str) -> Result<(), Error> {
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|e| {
        Error::handshake(format!("{what} is not a sealable memfd (F_GET_SEALS: {e})"))
    })?;
    if !seals.contains(SIZE_SEALS) {
        return Err(Error::handshake(format!(
            "{what} is not sealed against resizing (seals {seals:?}; need SHRINK|GROW)"
        )));
    }
    let size = rustix::fs::fstat(fd.as_fd())
        .map_err(|e| Error::io("fstat of a received memfd", e))?
        .st_size;
    if u64::try_from(size).ok() != Some(len as u64) {
        return Err(Error::handshake(format!(
            "{what} has {size} bytes, the frame says {len}"
        )));
    }
    Ok(())
}
