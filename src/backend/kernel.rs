//! `Backend::Kernel`: the real `memfd_tripwire(2)` fd, polled and ACKed;
//! the producer only maps it (`attach`, `attach_offered`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys::{self, Mapping, tripwire::CreateError};
use crate::{BackendKind, Error, Region};

#[derive(Debug)]
pub(crate) struct Kernel {
    fd: OwnedFd,
}

impl Kernel {
    pub(crate) fn create(len: usize) -> Result<(Self, Region), Error> {
        let fd = sys::tripwire::create().map_err(|e| match e {
            CreateError::Os(e) if e.raw_os_error() == Some(libc::ENOSYS) => Error::Unavailable {
                backend: BackendKind::Kernel,
                reason: "memfd_tripwire syscall absent (ENOSYS): this kernel lacks the RFC \
                         patch; use Backend::Doorbell or Backend::Poll on mainline kernels"
                    .into(),
            },
            CreateError::Os(e) => Error::Unavailable {
                backend: BackendKind::Kernel,
                reason: format!(
                    "memfd_tripwire(0) failed: {e}{}",
                    crate::error::fd_limit_hint(e.raw_os_error())
                ),
            },
            CreateError::NotATripwire { nr, returned, why } => Error::Unavailable {
                backend: BackendKind::Kernel,
                reason: format!(
                    "syscall {nr} returned {returned}, which is not a memfd_tripwire fd ({why}); \
                     this kernel gives the number to another syscall, so the value was neither \
                     used nor closed"
                ),
            },
        })?;
        rustix::fs::ftruncate(&fd, len as u64)
            .map_err(|e| Error::io("ftruncate of the tripwire", e))?;
        let map = Mapping::map_shared(fd.as_fd(), len)
            .map_err(|e| Error::io("mmap of the tripwire", e))?;
        Ok((Kernel { fd }, Region::new(map)))
    }

    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(crate) fn take(&mut self) -> io::Result<bool> {
        if !is_readable(self.fd.as_fd())? {
            return Ok(false);
        }
        sys::tripwire::ack(self.fd.as_fd())?;
        Ok(true)
    }

    pub(crate) fn ack(&mut self) -> io::Result<()> {
        sys::tripwire::ack(self.fd.as_fd())
    }

    pub(crate) fn offer_fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.fd.as_fd()]
    }
}

/// `poll(fd, POLLIN, 0)`: is the fd readable right now?
pub(crate) fn is_readable(fd: BorrowedFd<'_>) -> io::Result<bool> {
    sys::wait::readable_now(fd)
}

/// Maps a tripwire fd received from elsewhere, after checking what it is.
pub(crate) fn attach(fd: &OwnedFd) -> Result<Mapping, Error> {
    sys::tripwire::verify(fd.as_fd()).map_err(|reason| Error::NotATripwire { reason })?;
    let size = rustix::fs::fstat(fd)
        .map_err(|e| Error::io("fstat of the tripwire", e))?
        .st_size;
    let len = usize::try_from(size).unwrap_or(0);
    if len == 0 {
        return Err(Error::NotATripwire {
            reason: "the tripwire has no size yet (the consumer must ftruncate it first)".into(),
        });
    }
    Mapping::map_shared(fd.as_fd(), len).map_err(|e| Error::io("mmap of the tripwire", e))
}

/// Maps the tripwire fd of a Kernel offer: `len` bytes, as the frame says.
pub(crate) fn attach_offered(fd: OwnedFd, len: usize) -> Result<Region, Error> {
    let map = attach(&fd).map_err(|e| match e {
        Error::NotATripwire { reason } => {
            Error::handshake(format!("the Kernel offer's fd: {reason}"))
        }
        other => other,
    })?;
    if map.len() != len {
        return Err(Error::handshake(format!(
            "the tripwire has {} bytes, the frame says {len}",
            map.len()
        )));
    }
    Ok(Region::new(map))
}
