//! The one way this crate sleeps on fds: `poll(2)` with a deadline, one
//! conversion of the time left, one `EINTR` policy (retry with the time
//! left), the way mio's `select` converts its time-out once.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use rustix::event::Timespec;
pub(crate) use rustix::event::{PollFd, PollFlags};

/// Waits until one of `fds` has one of the events it asks for, or until
/// `deadline` (`None`: no limit; a deadline already past: a look). Returns
/// how many fds are ready: 0 once the deadline has passed. A signal that
/// interrupts the wait (`EINTR`) is retried with the time left.
pub(crate) fn poll(fds: &mut [PollFd<'_>], deadline: Option<Instant>) -> io::Result<usize> {
    loop {
        let left = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: left.subsec_nanos().into(),
            }
        });
        match rustix::event::poll(fds, left.as_ref()) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// [`poll`] on one fd for `events`: `true` if it is ready, `false` once
/// `deadline` has passed.
pub(crate) fn ready(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    let mut fds = [PollFd::new(&fd, events)];
    Ok(poll(&mut fds, deadline)? > 0)
}

/// [`ready`] for reading, with no deadline given as "now": a look.
pub(crate) fn readable_now(fd: BorrowedFd<'_>) -> io::Result<bool> {
    ready(fd, PollFlags::IN, Some(Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn deadline_and_readiness() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let start = Instant::now();
        let deadline = start + Duration::from_millis(20);
        assert!(!ready(a.as_fd(), PollFlags::IN, Some(deadline)).unwrap());
        assert!(Instant::now() >= deadline);
        assert!(!readable_now(a.as_fd()).unwrap());
        std::io::Write::write_all(&mut b, b"x").unwrap();
        assert!(ready(a.as_fd(), PollFlags::IN, None).unwrap());
        assert!(readable_now(a.as_fd()).unwrap());
    }
}
