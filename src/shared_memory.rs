//! [`SharedMemory`]: plain shared memory to pass next to a tripwire.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::sys::SealedMemfd;
use crate::{Error, Region};

/// Plain (unwatched) shared memory: a memfd sealed against resizing, and
/// its mapping in this process.
///
/// For the memory that goes with a tripwire but must not trip it: a device's
/// descriptor and completion rings next to its doorbell registers, say.
/// Pass the fd to the peer any way you like (inheritance, `SCM_RIGHTS`); the
/// peer attaches with [`SharedMemory::from_fd`], which checks the seals, so
/// neither side can shrink it under the other's mapping (SIGBUS).
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), memfd_tripwire::Error> {
/// use std::os::fd::AsFd;
/// use memfd_tripwire::SharedMemory;
///
/// let ours = SharedMemory::create(4096)?;
/// let theirs = SharedMemory::from_fd(ours.as_fd().try_clone_to_owned().unwrap())?;
/// theirs.region().write(0, &7u32)?;
/// assert_eq!(ours.region().read::<u32>(0)?, 7);
/// # Ok(()) }
/// ```
pub struct SharedMemory {
    fd: SealedMemfd,
    region: Region,
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("fd", &self.fd.as_raw_fd())
            .field("len", &self.region.len())
            .finish()
    }
}

impl SharedMemory {
    /// Creates `len` zeroed bytes of sealed shared memory.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroLength`], or [`Error::Io`] from `memfd_create`/`mmap`.
    ///
    /// ```
    /// # use memfd_tripwire::SharedMemory;
    /// let mem = SharedMemory::create(64 * 1024).unwrap();
    /// ```
    pub fn create(len: usize) -> Result<Self, Error> {
        Self::create_named("memfd-tripwire-shared", len)
    }

    /// [`create`](SharedMemory::create), with the name the memfd shows in
    /// `/proc/<pid>/maps` and `/proc/<pid>/fd`.
    pub(crate) fn create_named(name: &str, len: usize) -> Result<Self, Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let fd =
            SealedMemfd::create(name, len).map_err(|e| Error::io("creating a sealed memfd", e))?;
        Self::map(fd)
    }

    /// Attaches to shared memory received from a peer, after checking that
    /// it is a memfd sealed against resizing.
    ///
    /// # Errors
    ///
    /// [`Error::Handshake`] if the fd is not such a memfd (or is empty);
    /// [`Error::Io`] if mapping fails.
    ///
    /// ```
    /// # use memfd_tripwire::{Error, SharedMemory};
    /// let not_memfd = std::fs::File::open("/dev/null").unwrap();
    /// assert!(matches!(SharedMemory::from_fd(not_memfd.into()), Err(Error::Handshake { .. })));
    /// ```
    pub fn from_fd(fd: OwnedFd) -> Result<Self, Error> {
        Self::from_peer(fd, None, "the shared memory")
    }

    /// Attaches to a memfd from a peer that must be `len` bytes (any size
    /// when `None`); a refusal names it `what`.
    pub(crate) fn from_peer(fd: OwnedFd, len: Option<usize>, what: &str) -> Result<Self, Error> {
        let fd = SealedMemfd::from_peer(fd, len)
            .map_err(|why| Error::handshake(format!("{what} {why}")))?;
        Self::map(fd)
    }

    fn map(fd: SealedMemfd) -> Result<Self, Error> {
        let map = fd
            .map()
            .map_err(|e| Error::io("mmap of shared memory", e))?;
        Ok(SharedMemory {
            fd,
            region: Region::new(map),
        })
    }

    /// The memory, as mapped in this process.
    ///
    /// ```
    /// # use memfd_tripwire::SharedMemory;
    /// let mem = SharedMemory::create(64).unwrap();
    /// assert_eq!(mem.region().len(), 64);
    /// ```
    pub fn region(&self) -> &Region {
        &self.region
    }
}

impl AsFd for SharedMemory {
    /// The memfd, to hand to a peer.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SharedMemory {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
