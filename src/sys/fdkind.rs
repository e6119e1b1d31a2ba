//! What kind of object an fd is, read from `/proc/self/fd`, before we use
//! an fd received from a peer (or returned by a syscall we cannot trust).

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// Checks what `/proc/self/fd/N` names (`anon_inode:[userfaultfd]`, ...):
/// `Err` with what it names instead.
pub(crate) fn check_link(fd: BorrowedFd<'_>, want: &str) -> Result<(), String> {
    check_raw_link(fd.as_raw_fd(), want)
}

/// [`check_link`] for a number that may not even be an open fd (then the
/// readlink fails, and nothing is ever borrowed under it).
pub(crate) fn check_raw_link(raw: RawFd, want: &str) -> Result<(), String> {
    let link = raw_link(raw)?;
    if link != want {
        return Err(format!("/proc/self/fd/{raw} is `{link}`, not `{want}`"));
    }
    Ok(())
}

fn raw_link(raw: RawFd) -> Result<String, String> {
    let path = format!("/proc/self/fd/{raw}");
    let link = rustix::fs::readlink(path.as_str(), Vec::new())
        .map_err(|e| format!("readlink {path}: {e} (is /proc mounted?)"))?;
    Ok(link.to_string_lossy().into_owned())
}
