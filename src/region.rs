//! [`Region`]: a bounds-checked, copy-in/copy-out view of shared memory.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};

use bytemuck::Pod;

use crate::Error;
use crate::sys::Mapping;

/// The tripwire's memory, as mapped in this process.
///
/// Another process may write this memory at any time, so a `Region` never
/// hands out `&T` or `&[u8]` into it: plain values are **copied** in and out
/// ([`read`](Region::read), [`write`](Region::write)), and only atomics
/// ([`atomic_u32`](Region::atomic_u32), [`atomic_u64`](Region::atomic_u64))
/// are borrowed, at naturally aligned offsets. Every access is bounds checked
/// and fails with [`Error::OutOfBounds`] or [`Error::Misaligned`]; nothing
/// here panics on a bad offset.
///
/// Copies are made of relaxed atomic loads and stores, one per aligned 8-byte
/// word of the region (a word covered only in part is loaded whole, or has
/// the bytes merged into it with a compare-exchange; the last `len() % 8`
/// bytes, if any, go one by one), so a copy racing a writer, in another
/// thread or process, is not a data race. A value copied
/// out while the peer writes it can be torn between words: validate what you
/// read. The mapping is unmapped when the last handle to it is dropped.
///
/// Writes through a consumer's own `Region` are writes like any other: on the
/// `Kernel` backend they trip the wire.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), memfd_tripwire::Error> {
/// use memfd_tripwire::{Backend, blocking::Tripwire};
///
/// let tw = Tripwire::builder(4096).backend(Backend::Poll).create()?;
/// let region = tw.region();
/// region.write(8, &0xfeed_u64)?;
/// assert_eq!(region.read::<u64>(8)?, 0xfeed);
/// assert!(region.read::<u64>(4092).is_err()); // past the end
/// assert!(region.atomic_u64(4).is_err()); // misaligned
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Region {
    map: Arc<Mapping>,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region").field("len", &self.len()).finish()
    }
}

impl Region {
    pub(crate) fn new(map: Mapping) -> Self {
        Region { map: Arc::new(map) }
    }

    pub(crate) fn mapping(&self) -> &Arc<Mapping> {
        &self.map
    }

    /// The region's size in bytes (never zero).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let tw = Tripwire::builder(100).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(tw.region().len(), 100);
    /// ```
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always `false`: a tripwire has at least one byte. Here for clippy's
    /// `len_without_is_empty` and for symmetry with slices.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let tw = Tripwire::builder(1).backend(Backend::Poll).create().unwrap();
    /// assert!(!tw.region().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Copies the `T` at `offset` out of the region. Any offset is accepted
    /// (no alignment needed); the copy may be torn by a concurrent writer.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] if `offset + size_of::<T>()` exceeds the region.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let tw = Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(tw.region().read::<[u8; 4]>(3).unwrap(), [0; 4]);
    /// ```
    pub fn read<T: Pod>(&self, offset: usize) -> Result<T, Error> {
        let mut value = T::zeroed();
        self.map
            .read_into(offset, bytemuck::bytes_of_mut(&mut value))?;
        Ok(value)
    }

    /// Copies `dst.len()` bytes at `offset` out of the region.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] if the range exceeds the region; `dst` is then
    /// left untouched.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let tw = Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// let mut buf = [1u8; 16];
    /// tw.region().read_bytes(48, &mut buf).unwrap();
    /// assert_eq!(buf, [0; 16]);
    /// ```
    #[inline]
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<(), Error> {
        Ok(self.map.read_into(offset, dst)?)
    }

    /// Copies `value` into the region at `offset`.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] if it does not fit, [`Error::ReadOnly`] on a
    /// read-only region; nothing is written then.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let tw = Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// tw.region().write(60, &7u32).unwrap();
    /// assert!(tw.region().write(61, &7u32).is_err());
    /// ```
    pub fn write<T: Pod>(&self, offset: usize, value: &T) -> Result<(), Error> {
        Ok(self.map.write_from(offset, bytemuck::bytes_of(value))?)
    }

    /// Copies `src` into the region at `offset`.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] if it does not fit, [`Error::ReadOnly`] on a
    /// read-only region; nothing is written then.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let tw = Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// tw.region().write_bytes(0, b"hello").unwrap();
    /// assert_eq!(tw.region().read::<[u8; 5]>(0).unwrap(), *b"hello");
    /// ```
    #[inline]
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> Result<(), Error> {
        Ok(self.map.write_from(offset, src)?)
    }

    /// The `AtomicU32` at `offset`, which must be a multiple of 4.
    ///
    /// It is half of one of the region's 8-byte words, which copies access
    /// whole: do not let it race a copy of that word ([`read`](Region::read)
    /// and the like, or the `Poll` backend's snapshots of the whole region),
    /// which Rust's memory model calls a mixed-size race and leaves
    /// undefined. Prefer [`atomic_u64`](Region::atomic_u64) in memory that
    /// is copied too.
    ///
    /// # Errors
    ///
    /// [`Error::Misaligned`] or [`Error::OutOfBounds`]; [`Error::ReadOnly`]
    /// on a read-only region.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// use std::sync::atomic::Ordering;
    /// let tw = Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// tw.region().atomic_u32(4).unwrap().store(9, Ordering::Release);
    /// assert!(tw.region().atomic_u32(5).is_err());
    /// ```
    #[inline]
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, Error> {
        Ok(self.map.atomic_u32(offset)?)
    }

    /// The `AtomicU64` at `offset`, which must be a multiple of 8.
    ///
    /// # Errors
    ///
    /// [`Error::Misaligned`] or [`Error::OutOfBounds`]; [`Error::ReadOnly`]
    /// on a read-only region (a `&AtomicU64` allows stores: use
    /// [`load_u64`](Region::load_u64)).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// use std::sync::atomic::Ordering;
    /// let tw = Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// tw.region().atomic_u64(56).unwrap().fetch_add(1, Ordering::AcqRel);
    /// assert!(tw.region().atomic_u64(60).is_err());
    /// ```
    #[inline]
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, Error> {
        Ok(self.map.atomic_u64(offset)?)
    }

    /// Loads the `u64` at `offset` (a multiple of 8) with acquire ordering:
    /// what the peer wrote before it stored this value (with release
    /// ordering) is visible afterwards. Works on read-only regions too.
    ///
    /// # Errors
    ///
    /// [`Error::Misaligned`] or [`Error::OutOfBounds`].
    ///
    /// ```
    /// # use memfd_tripwire::SharedMemory;
    /// let mem = SharedMemory::create(64).unwrap();
    /// mem.region().write(8, &5u64).unwrap();
    /// assert_eq!(mem.region().load_u64(8).unwrap(), 5);
    /// assert!(mem.region().load_u64(4).is_err());
    /// ```
    #[inline]
    pub fn load_u64(&self, offset: usize) -> Result<u64, Error> {
        Ok(self.map.load_u64(offset)?)
    }

    /// `false` if this process mapped the region read-only: then writes
    /// fail with [`Error::ReadOnly`].
    ///
    /// ```
    /// # use memfd_tripwire::SharedMemory;
    /// assert!(SharedMemory::create(64).unwrap().region().is_writable());
    /// ```
    pub fn is_writable(&self) -> bool {
        self.map.is_writable()
    }
}
