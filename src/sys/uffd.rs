//! `userfaultfd(2)` write-protect: the few ioctls `Backend::Userfault`
//! needs, written with `rustix::ioctl` (the `userfaultfd` crate needs
//! bindgen/libclang and lacks the newer features).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::ioctl::{Opcode, Updater, ioctl, opcode};

const UFFD_API: u64 = 0xAA;
/// `UFFD_USER_MODE_ONLY`: allowed without privilege even when
/// `vm.unprivileged_userfaultfd` is 0; kernel-mode faults then fail EFAULT.
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM` (Linux 5.19): write-protect on shmem.
pub(crate) const FEATURE_WP_SHMEM: u64 = 1 << 12;
/// `UFFD_FEATURE_THREAD_ID` (Linux 4.14): a fault message names the
/// faulting thread.
pub(crate) const FEATURE_THREAD_ID: u64 = 1 << 8;
const REGISTER_MODE_WP: u64 = 1 << 1;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFD_EVENT_PAGEFAULT` and its `UFFD_PAGEFAULT_FLAG_WP`.
const EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_EVENT_FORK`: reading it installs a new uffd in the reader's table.
const EVENT_FORK: u8 = 0x13;
/// The highest address any process can map (57-bit, 5-level paging): a
/// range from a peer that reaches past it is not a mapping.
const ADDRESS_LIMIT: u64 = 1 << 56;

/// `[start, start+len)` as the kernel's `(start, len)`, or why it cannot be
/// a range of a process's address space (a peer's address is untrusted).
pub(crate) fn checked_range(start: usize, len: usize) -> io::Result<(u64, u64)> {
    let (start, len) = (start as u64, len as u64);
    match start.checked_add(len) {
        Some(end) if end <= ADDRESS_LIMIT => Ok((start, len)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the range {start:#x} + {len:#x} lies outside any address space"),
        )),
    }
}
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
    let (start, len) = checked_range(start, len)?;
    let mut reg = Register {
        range: Range { start, len },
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
    let (start, len) = checked_range(start, len)?;
    let mut wp = WriteProtect {
        range: Range { start, len },
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

/// A write-protect fault, as read from the uffd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WpFault {
    /// The faulting address (the start of its page).
    pub(crate) address: u64,
    /// The faulting thread (in its own PID namespace), with
    /// [`FEATURE_THREAD_ID`]; 0 without.
    pub(crate) tid: u32,
}

/// Reads one event: `Some` write-protect fault, `None` when nothing is
/// queued. Other events are read and ignored; a fork event's new
/// uffd (installed in our table by the read) is closed.
///
/// Never blocks, whatever the fd's file status flags (were the description
/// ever shared, a peer could clear its `O_NONBLOCK`): `preadv2(RWF_NOWAIT)`
/// makes this one read non-blocking (userfaultfd honours it since Linux
/// 6.8); where the kernel refuses it, `O_NONBLOCK` is set again right before
/// a plain read.
pub(crate) fn read_wp_fault(fd: BorrowedFd<'_>) -> io::Result<Option<WpFault>> {
    // struct uffd_msg: u8 event, 7 bytes reserved, then for a page fault
    // u64 flags, u64 address, u32 ptid (+pad): 32 bytes in all; for a fork
    // event, u32 ufd.
    let mut msg = [0u8; 32];
    loop {
        match read_nowait(fd, &mut msg) {
            Ok(32) => {}
            Ok(n) => return Err(io::Error::other(format!("short uffd_msg ({n} bytes)"))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let flags = u64::from_ne_bytes(msg[8..16].try_into().expect("8 bytes"));
        if msg[0] == EVENT_PAGEFAULT && flags & PAGEFAULT_FLAG_WP != 0 {
            return Ok(Some(WpFault {
                address: u64::from_ne_bytes(msg[16..24].try_into().expect("8 bytes")),
                tid: u32::from_ne_bytes(msg[24..28].try_into().expect("4 bytes")),
            }));
        }
        if msg[0] == EVENT_FORK {
            let ufd = i32::from_ne_bytes(msg[8..12].try_into().expect("4 bytes"));
            if ufd >= 0 {
                // SAFETY: reading a fork event installs a new uffd in our fd
                // table and reports its number here; nothing else knows of
                // it, so we own it, and close it at once.
                drop(unsafe { OwnedFd::from_raw_fd(ufd) });
            }
        }
    }
}

/// One read that does not block, whatever the description's flags.
fn read_nowait(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec describing `buf`, a live, exclusively borrowed
    // buffer of `buf.len()` bytes; offset -1 means "the current position"
    // (a uffd has none); the kernel writes at most `iov_len` bytes into it.
    let n = unsafe { libc::preadv2(fd.as_raw_fd(), &iov, 1, -1, libc::RWF_NOWAIT) };
    if n >= 0 {
        return Ok(n as usize);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(err);
    }
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(rustix::io::read(fd, buf)?)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    /// The suite's skip convention (`skipping: <why>` on the real stderr,
    /// `TRIPWIRE_REQUIRE`), shared with the integration tests.
    mod support {
        include!("../../tests/support/skip.rs");
    }

    #[test]
    fn ranges_past_any_address_space_are_refused() {
        assert!(checked_range(0x7f00_0000_0000, 4096).is_ok());
        assert!(checked_range(0xFFFF_FFFF_FFFF_F000, 8192).is_err());
        assert!(checked_range(usize::MAX, 1).is_err());
    }

    #[test]
    fn a_cleared_o_nonblock_does_not_make_the_read_block() {
        let fd = match open() {
            Ok(fd) => fd,
            // No syscall, not allowed, or no UFFD_USER_MODE_ONLY (before 5.11).
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS | libc::EPERM | libc::EACCES | libc::EINVAL)
                ) =>
            {
                support::skipping("userfault", &format!("userfaultfd unavailable here: {e}"));
                return;
            }
            Err(e) => panic!("userfaultfd: {e}"),
        };
        api(fd.as_fd(), 0).unwrap();
        // A producer sharing the description clears O_NONBLOCK: the read
        // must still come back at once with nothing queued.
        rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::empty()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            tx.send(read_wp_fault(fd.as_fd()).map_err(|e| e.to_string()))
                .unwrap();
            fd
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(got.expect("read_wp_fault blocked"), Ok(None));
        reader.join().unwrap();
    }
}

// ---------------------------------------------------------------------------
// `Backend::UserfaultAsync`: `UFFD_FEATURE_WP_ASYNC` and `PAGEMAP_SCAN`
// (Linux 6.7), as in include/uapi/linux/userfaultfd.h and
// include/uapi/linux/fs.h.

/// `UFFD_FEATURE_WP_ASYNC` (Linux 6.7): the kernel resolves write-protect
/// faults itself (it clears the page's uffd-wp bit, queues no message).
pub(crate) const FEATURE_WP_ASYNC: u64 = 1 << 15;

/// `PM_SCAN_WP_MATCHING`: write-protect the pages that match, in the walk.
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail (`EPERM`) on a VMA in the range that is not
/// registered with an async write-protect userfaultfd.
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
/// `PAGE_IS_WPALLOWED`: the page lies in a VMA registered for async WP.
const PAGE_IS_WPALLOWED: u64 = 1 << 0;
/// `PAGE_IS_WRITTEN`: the page's uffd-wp bit is clear (written since the
/// last write-protect).
const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// `struct page_region`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg` (twelve u64s).
#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: Opcode = opcode::read_write::<PmScanArg>(b'f', 16);

/// How many regions one `PAGEMAP_SCAN` call may return; more are fetched by
/// calling again from `walk_end`.
const SCAN_VEC_LEN: usize = 64;

/// `PAGEMAP_SCAN` returns the number of regions it filled, which rustix's
/// `Updater` drops: this keeps it.
struct Scan<'a>(&'a mut PmScanArg);

// SAFETY: the opcode is PAGEMAP_SCAN, whose argument is a `struct
// pm_scan_arg` that the kernel reads and writes (`walk_end`), mirrored by
// `PmScanArg`; `IS_MUTATING` is true accordingly; the output is the ioctl's
// non-negative return value (a count of regions), no pointer is read.
unsafe impl rustix::ioctl::Ioctl for Scan<'_> {
    type Output = usize;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        PAGEMAP_SCAN
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        std::ptr::from_mut::<PmScanArg>(self.0).cast()
    }

    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<usize> {
        Ok(usize::try_from(out).unwrap_or(0))
    }
}

/// One `PAGEMAP_SCAN` call on `pagemap` for `[start, end)` of its mm,
/// filling up to `out.len()` regions; returns how many, and `walk_end`.
fn pagemap_scan(
    pagemap: BorrowedFd<'_>,
    mut arg: PmScanArg,
    out: &mut [PageRegion],
) -> io::Result<(usize, u64)> {
    arg.size = std::mem::size_of::<PmScanArg>() as u64;
    arg.vec = if out.is_empty() {
        0
    } else {
        out.as_mut_ptr() as u64
    };
    arg.vec_len = out.len() as u64;
    // SAFETY: PAGEMAP_SCAN reads and writes one `struct pm_scan_arg`
    // (mirrored by `PmScanArg`, `size` set to match), and writes at most
    // `vec_len` `struct page_region`s (mirrored by `PageRegion`) to `vec`,
    // which points at `out`, a live, exclusively borrowed buffer of exactly
    // that many in this process (or is null with `vec_len` 0). `start`/`end` are addresses in the
    // *pagemap's* mm (the producer's), never dereferenced here; with
    // WP_MATCHING the kernel only changes page protection there, and
    // CHECK_WPASYNC makes it refuse any VMA not registered for async WP.
    let n = unsafe { ioctl(pagemap, Scan(&mut arg)) }?;
    if n > out.len() {
        return Err(io::Error::other(format!(
            "PAGEMAP_SCAN reported {n} regions into a buffer of {}",
            out.len()
        )));
    }
    Ok((n, arg.walk_end))
}

/// `open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)`.
pub(crate) fn open_pagemap() -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        "/proc/self/pagemap",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// Whether `pagemap` supports `PAGEMAP_SCAN` (an empty scan: `ENOTTY`
/// before Linux 6.7).
pub(crate) fn probe_pagemap_scan(pagemap: BorrowedFd<'_>) -> io::Result<()> {
    pagemap_scan(pagemap, PmScanArg::default(), &mut []).map(drop)
}

/// `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC` over
/// `[start, start+len)` of the pagemap's mm: calls `found(first, end)` for
/// each run of pages written since they were last write-protected, and
/// write-protects them again, in the same walk (under the page-table lock,
/// so a store is either reported here or faults again afterwards).
///
/// Errors: `ESRCH` once the mm has exited; `EPERM` if part of the range is
/// not a VMA registered with an async write-protect uffd that is still
/// open.
pub(crate) fn scan_written_and_protect(
    pagemap: BorrowedFd<'_>,
    start: usize,
    len: usize,
    mut found: impl FnMut(usize, usize),
) -> io::Result<()> {
    let (from, len) = checked_range(start, len)?;
    let end = from + len;
    let mut from = from;
    let mut vec = [PageRegion::default(); SCAN_VEC_LEN];
    while from < end {
        let arg = PmScanArg {
            flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            start: from,
            end,
            category_mask: PAGE_IS_WRITTEN,
            return_mask: PAGE_IS_WRITTEN,
            ..PmScanArg::default()
        };
        let (n, walk_end) = pagemap_scan(pagemap, arg, &mut vec)?;
        for r in &vec[..n] {
            let (s, e) = (r.start.max(from), r.end.min(end));
            if s < e {
                found(s as usize, e as usize);
            }
        }
        if walk_end <= from {
            return Err(io::Error::other(format!(
                "PAGEMAP_SCAN made no progress at {from:#x} (walk_end {walk_end:#x})"
            )));
        }
        from = walk_end;
    }
    Ok(())
}

/// Whether all of `[start, start+len)` of the pagemap's mm is still a VMA
/// registered for async write-protect (`PAGE_IS_WPALLOWED` on every page).
/// `false` once the mapping is unmapped or replaced; `ESRCH` once the mm
/// has exited.
pub(crate) fn is_wp_async_registered(
    pagemap: BorrowedFd<'_>,
    start: usize,
    len: usize,
) -> io::Result<bool> {
    let (start, len) = checked_range(start, len)?;
    let end = start + len;
    let arg = PmScanArg {
        start,
        end,
        category_mask: PAGE_IS_WPALLOWED,
        return_mask: PAGE_IS_WPALLOWED,
        ..PmScanArg::default()
    };
    let mut vec = [PageRegion::default(); 1];
    let (n, _) = pagemap_scan(pagemap, arg, &mut vec)?;
    Ok(n == 1 && vec[0].start <= start && vec[0].end >= end)
}
