//! A memfd sealed against resizing: the memory of the emulated backends,
//! of the ring, and of `SharedMemory`.
//!
//! The seals are what make a shared mapping safe against its peer: without
//! `F_SEAL_SHRINK` a peer's `ftruncate` turns our next access into SIGBUS.
//! `F_SEAL_WRITE` is not set: userfaultfd registration needs a writable
//! mapping.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::fs::{MemfdFlags, SealFlags};

use super::Mapping;

/// The seals every memfd we hand out carries, and every one we take must.
const SIZE_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

/// A memfd of a fixed size.
#[derive(Debug)]
pub(crate) struct SealedMemfd {
    fd: OwnedFd,
    len: usize,
}

impl SealedMemfd {
    /// A new anonymous memfd of `len` zeroed bytes, sealed against resizing
    /// (and against adding or removing seals).
    pub(crate) fn create(name: &str, len: usize) -> io::Result<Self> {
        let step = |what: &'static str, e: rustix::io::Errno| {
            let source = io::Error::from(e);
            io::Error::new(source.kind(), Step { what, source })
        };
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| step("memfd_create", e))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(|e| step("ftruncate", e))?;
        rustix::fs::fcntl_add_seals(&fd, SIZE_SEALS | SealFlags::SEAL)
            .map_err(|e| step("F_ADD_SEALS", e))?;
        Ok(SealedMemfd { fd, len })
    }

    /// Takes a memfd received from a peer after checking that it is sealed
    /// against resizing and is `len` bytes long (`None`: whatever it is,
    /// but not empty). The reason for a refusal reads after the fd's name:
    /// "the control memfd {reason}".
    pub(crate) fn from_peer(fd: OwnedFd, len: Option<usize>) -> Result<Self, String> {
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|e| format!("is not a sealable memfd (F_GET_SEALS: {e})"))?;
        if !seals.contains(SIZE_SEALS) {
            return Err(format!(
                "is not sealed against resizing (seals {seals:?}; need SHRINK|GROW)"
            ));
        }
        let size = rustix::fs::fstat(&fd)
            .map_err(|e| format!("cannot be stat'ed ({e})"))?
            .st_size;
        let size = usize::try_from(size).unwrap_or(0);
        match len {
            Some(len) if size != len => Err(format!("has {size} bytes, the frame says {len}")),
            None if size == 0 => Err("is empty".into()),
            _ => Ok(SealedMemfd { fd, len: size }),
        }
    }

    /// Maps all of it, shared and read-write.
    pub(crate) fn map(&self) -> io::Result<Mapping> {
        Mapping::map_shared(self.fd.as_fd(), self.len)
    }

    /// Maps `len` bytes from `offset` (a multiple of the page size), shared
    /// and read-write; refused past the end.
    pub(crate) fn map_range(&self, offset: usize, len: usize) -> io::Result<Mapping> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at {offset} lie past the end of a {}-byte memfd",
                    self.len
                ),
            ));
        }
        Mapping::map_shared_at(self.fd.as_fd(), offset, len)
    }

    /// A read-only mapping of the whole memfd.
    pub(crate) fn map_read_only(&self) -> io::Result<Mapping> {
        Mapping::map_shared_read_only(self.fd.as_fd(), self.len)
    }
}

impl AsFd for SealedMemfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SealedMemfd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_memfd_must_be_sealed_and_of_the_size_announced() {
        let ours = SealedMemfd::create("t", 8192).unwrap();
        let dup = || ours.as_fd().try_clone_to_owned().unwrap();
        assert_eq!(SealedMemfd::from_peer(dup(), Some(8192)).unwrap().len, 8192);
        assert_eq!(SealedMemfd::from_peer(dup(), None).unwrap().len, 8192);
        let short = SealedMemfd::from_peer(dup(), Some(4096)).unwrap_err();
        assert!(short.contains("8192 bytes"), "{short}");
        let unsealed = rustix::fs::memfd_create("u", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, 4096).unwrap();
        assert!(SealedMemfd::from_peer(unsealed, None).is_err());
    }
}

/// A failed step of `create`: its name, and the OS error (kept as the
/// source, so that its number can still be found).
#[derive(Debug)]
struct Step {
    what: &'static str,
    source: io::Error,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for Step {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
