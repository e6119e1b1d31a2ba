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
    /// Creates `len` zeroed bytes of sealed shared memory, mapped
    /// read-write.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroLength`]; [`Error::InvalidArgument`] (`what: "len"`)
    /// over `isize::MAX` bytes less a page; or [`Error::Io`] from
    /// `memfd_create`/`mmap` (a length the kernel cannot map).
    ///
    /// ```
    /// # use memfd_tripwire::SharedMemory;
    /// let mem = SharedMemory::create(64 * 1024).unwrap();
    /// ```
    pub fn create(len: usize) -> Result<Self, Error> {
        Self::options().create(len)
    }

    /// Attaches to shared memory received from a peer, after checking that
    /// it is a memfd sealed against resizing; maps it read-write.
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
        Self::options().attach(fd)
    }

    /// Options for [`create`](SharedMemoryOptions::create) and
    /// [`attach`](SharedMemoryOptions::attach): a name, an expected length,
    /// a read-only mapping.
    ///
    /// ```
    /// # fn main() -> Result<(), memfd_tripwire::Error> {
    /// use std::os::fd::AsFd;
    /// use memfd_tripwire::{Error, SharedMemory};
    ///
    /// // The peer writes, we only read: a bug of ours cannot write it.
    /// let ours = SharedMemory::options().name("completions").read_only(true).create(4096)?;
    /// let fd = ours.as_fd().try_clone_to_owned().unwrap();
    /// let theirs = SharedMemory::options().expect_len(4096).attach(fd)?;
    /// theirs.region().write(0, &7u32)?;
    /// assert_eq!(ours.region().read::<u32>(0)?, 7);
    /// assert!(matches!(ours.region().write(0, &8u32), Err(Error::ReadOnly { .. })));
    /// # Ok(()) }
    /// ```
    pub fn options() -> SharedMemoryOptions {
        SharedMemoryOptions {
            name: None,
            len: None,
            read_only: false,
        }
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

/// How [`SharedMemory`] is created or attached; from
/// [`SharedMemory::options`].
///
/// ```
/// # use memfd_tripwire::SharedMemory;
/// let opts = SharedMemory::options().name("queues").read_only(false);
/// let mem = opts.create(8192).unwrap();
/// assert_eq!(mem.region().len(), 8192);
/// ```
#[derive(Debug, Clone)]
#[must_use = "options do nothing until .create() or .attach()"]
pub struct SharedMemoryOptions {
    name: Option<String>,
    len: Option<usize>,
    read_only: bool,
}

impl SharedMemoryOptions {
    /// The memfd's name, shown in `/proc/<pid>/maps` and `/proc/<pid>/fd`
    /// (for `create`; `memfd-tripwire-shared` by default), and in the
    /// errors of `attach`.
    ///
    /// ```
    /// # use memfd_tripwire::SharedMemory;
    /// let mem = SharedMemory::options().name("descriptors").create(4096).unwrap();
    /// ```
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// For `attach`: refuse a memfd that is not exactly `len` bytes.
    ///
    /// ```
    /// # use std::os::fd::AsFd;
    /// # use memfd_tripwire::SharedMemory;
    /// let mem = SharedMemory::create(4096).unwrap();
    /// let fd = mem.as_fd().try_clone_to_owned().unwrap();
    /// assert!(SharedMemory::options().expect_len(8192).attach(fd).is_err());
    /// ```
    pub fn expect_len(mut self, len: usize) -> Self {
        self.len = Some(len);
        self
    }

    /// Map it read-only in this process (`PROT_READ`): reads work, writes
    /// and writable atomics fail with [`Error::ReadOnly`]. For memory only
    /// the peer writes. Default `false`.
    ///
    /// ```
    /// # use memfd_tripwire::SharedMemory;
    /// let mem = SharedMemory::options().read_only(true).create(64).unwrap();
    /// assert!(!mem.region().is_writable());
    /// assert_eq!(mem.region().read::<u64>(0).unwrap(), 0);
    /// ```
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Creates `len` zeroed bytes of sealed shared memory.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroLength`]; [`Error::InvalidArgument`] (`what: "len"`)
    /// over `isize::MAX` bytes less a page; or [`Error::Io`] from
    /// `memfd_create`/`mmap` (a length the kernel cannot map).
    ///
    /// ```
    /// # use memfd_tripwire::SharedMemory;
    /// let mem = SharedMemory::options().create(4096).unwrap();
    /// ```
    pub fn create(&self, len: usize) -> Result<SharedMemory, Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let max = crate::backend::max_len();
        if len > max {
            return Err(Error::invalid(
                "len",
                format!("{len} bytes"),
                format!("1 to {max} bytes"),
            ));
        }
        let name = self.name.as_deref().unwrap_or("memfd-tripwire-shared");
        let fd =
            SealedMemfd::create(name, len).map_err(|e| Error::io("creating a sealed memfd", e))?;
        self.map(fd)
    }

    /// Attaches to a memfd from a peer, after checking that it is sealed
    /// against resizing (and of the expected length, if one was set).
    ///
    /// # Errors
    ///
    /// [`Error::Handshake`] if the fd is not such a memfd (or is empty);
    /// [`Error::Io`] if mapping fails.
    ///
    /// ```
    /// # use memfd_tripwire::{Error, SharedMemory};
    /// let not_memfd = std::fs::File::open("/dev/null").unwrap();
    /// let err = SharedMemory::options().name("the queues").attach(not_memfd.into()).unwrap_err();
    /// assert!(err.to_string().contains("the queues"));
    /// ```
    pub fn attach(&self, fd: OwnedFd) -> Result<SharedMemory, Error> {
        let what = self.name.as_deref().unwrap_or("the shared memory");
        let fd = SealedMemfd::from_peer(fd, self.len)
            .map_err(|why| Error::handshake(format!("{what} {why}")))?;
        self.map(fd)
    }

    fn map(&self, fd: SealedMemfd) -> Result<SharedMemory, Error> {
        let map = if self.read_only {
            fd.map_read_only()
        } else {
            fd.map()
        };
        let map = map.map_err(|e| Error::io("mmap of shared memory", e))?;
        Ok(SharedMemory {
            fd,
            region: Region::new(map),
        })
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
