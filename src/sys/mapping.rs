//! A `MAP_SHARED` mapping of a memory fd, accessed only by copies and by
//! atomics at checked offsets.

use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use rustix::mm::{MapFlags, ProtFlags};

/// Why an access was refused. Checked here, because the soundness of every
/// raw access below rests on these checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessError {
    OutOfBounds {
        offset: usize,
        len: usize,
        size: usize,
    },
    Misaligned {
        offset: usize,
        align: usize,
    },
}

/// A shared, read-write mapping of `len` bytes. Unmapped on drop.
///
/// Another process may write the same memory at any time: nothing here hands
/// out a reference to plain data, only copies and atomics.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; all access
// goes through copies or atomics, which are fine from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above: `&Mapping` only allows copies and atomic operations.
unsafe impl Sync for Mapping {}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("addr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl Mapping {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0)`.
    pub(crate) fn map_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map a zero-length region",
            ));
        }
        // SAFETY: a fresh mapping at an address of the kernel's choosing
        // (null hint, no MAP_FIXED) aliases nothing in this process.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Mapping { ptr, len })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The mapping's address in this process (for userfaultfd ranges).
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// `madvise(MADV_DONTFORK)`: a forked child gets no copy of the mapping.
    pub(crate) fn dont_fork(&self) -> io::Result<()> {
        // SAFETY: the range is exactly this live mapping; DONTFORK only
        // changes what fork() copies, not this process's view of it.
        unsafe {
            rustix::mm::madvise(
                self.ptr.as_ptr().cast(),
                self.len,
                rustix::mm::Advice::LinuxDontFork,
            )
        }?;
        Ok(())
    }

    #[inline]
    fn check(&self, offset: usize, len: usize, align: usize) -> Result<(), AccessError> {
        let end = offset.checked_add(len);
        if end.is_none_or(|end| end > self.len) {
            return Err(AccessError::OutOfBounds {
                offset,
                len,
                size: self.len,
            });
        }
        // The mapping is page aligned, so offset alignment is address alignment.
        if offset % align != 0 {
            return Err(AccessError::Misaligned { offset, align });
        }
        Ok(())
    }

    /// Copies `dst.len()` bytes at `offset` out of the mapping.
    ///
    /// A peer writing at the same time can make the copy torn (a mix of old
    /// and new bytes): callers treat the result as untrusted input.
    #[inline]
    pub(crate) fn read_into(&self, offset: usize, dst: &mut [u8]) -> Result<(), AccessError> {
        self.check(offset, dst.len(), 1)?;
        // SAFETY: `check` proved offset..offset+len lies inside the live
        // mapping; `dst` is a distinct local buffer, so the ranges do not
        // overlap. Racing writes from another process can only change which
        // bytes are copied, never their validity: `dst` is raw bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
        Ok(())
    }

    /// Copies `src` into the mapping at `offset`.
    #[inline]
    pub(crate) fn write_from(&self, offset: usize, src: &[u8]) -> Result<(), AccessError> {
        self.check(offset, src.len(), 1)?;
        // SAFETY: bounds checked above; `src` is caller memory outside the
        // mapping (no `&[u8]` into the mapping is ever handed out), so the
        // ranges do not overlap; the mapping is PROT_WRITE.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len())
        };
        Ok(())
    }

    /// An atomic view of the naturally aligned `u32` at `offset`.
    #[inline]
    pub(crate) fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, AccessError> {
        self.check(offset, 4, std::mem::align_of::<AtomicU32>())?;
        // SAFETY: in bounds and aligned (checked); the memory lives as long
        // as `&self`; atomics are sound on memory shared with other
        // processes, and any bit pattern is a valid u32.
        Ok(unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast()) })
    }

    /// An atomic view of the naturally aligned `u64` at `offset`.
    #[inline]
    pub(crate) fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, AccessError> {
        self.check(offset, 8, std::mem::align_of::<AtomicU64>())?;
        // SAFETY: as for `atomic_u32`, with 8-byte size and alignment.
        Ok(unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(offset).cast()) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from a successful mmap and are unmapped
        // exactly once; no reference into the mapping outlives `self`
        // (atomic references borrow `self`).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
