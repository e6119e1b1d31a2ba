//! `memfd_tripwire(2)` (RFC syscall 472 on x86_64) and its ACK ioctl.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI64, Ordering};

/// The RFC's syscall number on x86_64 and asm-generic (provisional).
pub(crate) const DEFAULT_SYSCALL_NR: i64 = 472;

/// `_IO(0xDA, 0)`: re-arm the wire and make prior writes visible.
const MEMFD_TRIPWIRE_ACK: rustix::ioctl::Opcode = rustix::ioctl::opcode::none(0xDA, 0);

/// What `/proc/self/fd/N` says of a tripwire fd.
pub(crate) const FD_LINK: &str = "anon_inode:memfd_tripwire";

static SYSCALL_NR: AtomicI64 = AtomicI64::new(DEFAULT_SYSCALL_NR);

/// Sets the syscall number used for `memfd_tripwire(2)` (default: the RFC's
/// 472, x86_64 and asm-generic). The number is provisional; this is for
/// kernels that carry the patch under another number.
///
/// # Safety
///
/// On the running kernel, `nr` must be `memfd_tripwire`, or a system call
/// that, called with the single argument `0`, does nothing harmful and
/// **returns a new fd (which the crate then owns and closes) or an error**:
/// creating a `Kernel` tripwire calls it that way. A call that returns the
/// number of an fd that is already open elsewhere would have it closed twice.
/// (What it returns is checked before use: an fd that is not a tripwire is
/// neither used nor closed.)
///
/// ```
/// // The RFC's number: the default.
/// unsafe { memfd_tripwire::set_kernel_syscall_number(472) };
/// ```
pub unsafe fn set_kernel_syscall_number(nr: i64) {
    SYSCALL_NR.store(nr, Ordering::Relaxed);
}

pub(crate) fn syscall_number() -> i64 {
    SYSCALL_NR.load(Ordering::Relaxed)
}

/// Why a tripwire could not be created.
#[derive(Debug)]
pub(crate) enum CreateError {
    /// The syscall failed: `ENOSYS` when the kernel lacks it.
    Os(io::Error),
    /// The syscall returned something that is not a tripwire fd. It was
    /// neither closed nor wrapped: it may be another syscall's return value.
    NotATripwire { nr: i64, returned: i64, why: String },
}

/// Calls `memfd_tripwire(0)` and checks what came back before owning it.
pub(crate) fn create() -> Result<OwnedFd, CreateError> {
    let nr = syscall_number();
    // SAFETY: the default number is the RFC's, unassigned in every mainline
    // kernel to date (ENOSYS there); an overridden number was promised by the
    // caller of the `unsafe fn set_kernel_syscall_number` to be harmless with
    // one zero argument and to return a new fd or an error. The return value
    // is not trusted: it is checked below.
    let ret = unsafe { libc::syscall(nr as libc::c_long, 0 as libc::c_uint) };
    if ret < 0 {
        return Err(CreateError::Os(io::Error::last_os_error()));
    }
    let returned = ret;
    let raw = match RawFd::try_from(ret) {
        Ok(raw) => raw,
        Err(_) => {
            return Err(CreateError::NotATripwire {
                nr,
                returned,
                why: "the value is not a file descriptor number".into(),
            });
        }
    };
    // Check through /proc first: if `raw` is not an open fd at all, readlink
    // fails and nothing is ever borrowed under that number.
    if let Err(why) = super::fdkind::check_raw_link(raw, FD_LINK) {
        return Err(CreateError::NotATripwire { nr, returned, why });
    }
    // SAFETY: /proc/self/fd/raw exists, so `raw` is an open fd of this
    // process, and it stays open for this borrow (nothing here closes it).
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    if let Err(why) = check_stat(borrowed) {
        return Err(CreateError::NotATripwire { nr, returned, why });
    }
    // SAFETY: the syscall created this fd for us (memfd_tripwire returns a
    // new fd, as does any call `set_kernel_syscall_number`'s contract
    // allows) and it is verified to be a memfd_tripwire file; nobody else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Checks that an fd we were handed is a tripwire (link name and mode).
pub(crate) fn verify(fd: BorrowedFd<'_>) -> Result<(), String> {
    super::fdkind::check_link(fd, FD_LINK)?;
    check_stat(fd)
}

fn check_stat(fd: BorrowedFd<'_>) -> Result<(), String> {
    let st = rustix::fs::fstat(fd).map_err(|e| format!("fstat: {e}"))?;
    let mode = st.st_mode as u32;
    let want = libc::S_IFREG | 0o600;
    if mode != want {
        return Err(format!("st_mode is {mode:#o}, a tripwire has {want:#o}"));
    }
    Ok(())
}

/// `ioctl(fd, MEMFD_TRIPWIRE_ACK, 0)`.
pub(crate) fn ack(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: MEMFD_TRIPWIRE_ACK takes no argument (the kernel requires 0,
    // which NoArg passes) and touches no user memory. `fd` was verified to
    // be a tripwire when it was created or received.
    unsafe {
        rustix::ioctl::ioctl(
            fd.as_fd(),
            rustix::ioctl::NoArg::<MEMFD_TRIPWIRE_ACK>::new(),
        )
    }
    .map_err(io::Error::from)
}
