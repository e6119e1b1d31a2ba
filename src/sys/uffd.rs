//! `userfaultfd(2)` write-protect: the few ioctls `Backend::Userfault`
//! needs, written with `rustix::ioctl` (the `userfaultfd` crate needs
//! bindgen/libclang and lacks the newer features).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::ioctl::{Opcode, Updater, ioctl, opcode};

const UFFD_API: u64 = 0xAA;
/// `UFFD_USER_MODE_ONLY`: allowed without privilege even when
/// `vm.unprivileged_userfaultfd` is 0; kernel-mode faults then fail EFAULT.
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM` (Linux 5.19): write-protect on shmem.
pub(crate) const FEATURE_WP_SHMEM: u64 = 1 << 12;
const REGISTER_MODE_WP: u64 = 1 << 1;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFD_EVENT_PAGEFAULT` and its `UFFD_PAGEFAULT_FLAG_WP`.
const EVENT_PAGEFAULT: u8 = 0x12;
const PAGEFAULT_FLAG_WP: u64 = 1 << 1;

#[repr(C)]
struct Api {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct Range {
    start: u64,
    len: u64,
}

#[repr(C)]
struct Register {
    range: Range,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct WriteProtect {
    range: Range,
    mode: u64,
}

const UFFDIO_API: Opcode = opcode::read_write::<Api>(0xAA, 0x3F);
const UFFDIO_REGISTER: Opcode = opcode::read_write::<Register>(0xAA, 0x00);
const UFFDIO_WRITEPROTECT: Opcode = opcode::read_write::<WriteProtect>(0xAA, 0x06);

/// `userfaultfd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)`.
///
/// Non-blocking on purpose: `poll()` on a blocking uffd reports POLLERR.
pub(crate) fn open() -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY;
    // SAFETY: userfaultfd takes one int of flags and returns a new fd or -1.
    let ret = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this fd for us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) })
}

/// `UFFDIO_API`: enables `features`; returns what the kernel offers when
/// asked for none (call it once per fd).
pub(crate) fn api(fd: BorrowedFd<'_>, features: u64) -> io::Result<u64> {
    let mut api = Api {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes exactly a `struct uffdio_api`,
    // which `Api` mirrors (three u64s, repr(C)).
    unsafe { ioctl(fd, Updater::<UFFDIO_API, Api>::new(&mut api)) }?;
    Ok(api.features)
}

/// `UFFDIO_REGISTER` in write-protect mode over `[start, start+len)`.
pub(crate) fn register_wp(fd: BorrowedFd<'_>, start: usize, len: usize) -> io::Result<()> {
    let mut reg = Register {
        range: Range {
            start: start as u64,
            len: len as u64,
        },
        mode: REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes a `struct uffdio_register`,
    // mirrored by `Register`. The range is only recorded by the kernel (it
    // must be a mapping of the uffd's mm, or the call fails); no memory of
    // ours is touched.
    unsafe { ioctl(fd, Updater::<UFFDIO_REGISTER, Register>::new(&mut reg)) }?;
    Ok(())
}

/// `UFFDIO_WRITEPROTECT`: protect (`true`) or un-protect and wake the
/// blocked writers (`false`) `[start, start+len)` of the uffd's mm.
pub(crate) fn write_protect(
    fd: BorrowedFd<'_>,
    start: usize,
    len: usize,
    protect: bool,
) -> io::Result<()> {
    let mut wp = WriteProtect {
        range: Range {
            start: start as u64,
            len: len as u64,
        },
        mode: if protect { WRITEPROTECT_MODE_WP } else { 0 },
    };
    // SAFETY: UFFDIO_WRITEPROTECT reads and writes a `struct
    // uffdio_writeprotect`, mirrored by `WriteProtect`. It changes page
    // protection in the uffd's (the producer's) mm only; the kernel checks
    // that the range is registered.
    unsafe {
        ioctl(
            fd,
            Updater::<UFFDIO_WRITEPROTECT, WriteProtect>::new(&mut wp),
        )
    }?;
    Ok(())
}

/// Reads one event: `Some(address)` of a write-protect fault, `None` when
/// nothing is queued. Other events are read and ignored.
pub(crate) fn read_wp_fault(fd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    // struct uffd_msg: u8 event, 7 bytes reserved, then for a page fault
    // u64 flags, u64 address, u32 ptid (+pad): 32 bytes in all.
    let mut msg = [0u8; 32];
    loop {
        match rustix::io::read(fd.as_fd(), &mut msg) {
            Ok(32) => {}
            Ok(n) => return Err(io::Error::other(format!("short uffd_msg ({n} bytes)"))),
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let flags = u64::from_ne_bytes(msg[8..16].try_into().expect("8 bytes"));
        if msg[0] == EVENT_PAGEFAULT && flags & PAGEFAULT_FLAG_WP != 0 {
            return Ok(Some(u64::from_ne_bytes(
                msg[16..24].try_into().expect("8 bytes"),
            )));
        }
    }
}
