//! What [`blocking::Builder::create`](crate::blocking::Builder::create)
//! accepts, checked before anything is created: a mistake is an
//! [`Error::InvalidArgument`] that names the argument, its value and what is
//! allowed (#23: some were `Error::Io` with a made-up operation, one was
//! `Unavailable`, which reads as "this host cannot", and one a silent clamp).
//!
//! | argument | backends | allowed |
//! |---|---|---|
//! | `len` | all | 1 (else [`Error::ZeroLength`]) ..= [`max_len`] |
//! | `len` | `Userfault`, `UserfaultAsync` | ..= [`userfault::MAX_LEN`](super::userfault::MAX_LEN) (16 GiB) |
//! | `poll_interval` | `Poll`, `Unmodified` | >= [`MIN_POLL_INTERVAL`] (10 µs) |
//! | `poll_interval` | `UserfaultAsync` | `MIN_POLL_INTERVAL` ..= [`MAX_SCAN_INTERVAL`] (10 s) |
//! | `busy_poll` | `Poll`, `Unmodified` (others: zero only) | ..= [`BUSY_POLL_MAX`] (100 ms), on a region ..= [`BUSY_POLL_MAX_LEN`] (16 KiB) |
//!
//! What is left is the host's: a region the kernel cannot map fails with
//! `Error::Io` (`ENOMEM`, `EFBIG`, ...), and `Poll`'s snapshot of the region
//! (one region's worth of heap) is allocated fallibly, so a region too large
//! for this process's memory is `Error::Io` of kind `OutOfMemory`, never an
//! abort.

use std::time::Duration;

use super::userfault::MAX_LEN as UFFD_MAX;
use crate::{Backend, Error};

/// The shortest [`Options::poll_interval`] accepted.
pub(crate) const MIN_POLL_INTERVAL: Duration = Duration::from_micros(10);

/// Options that only some backends read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// `Poll`'s compare and `UserfaultAsync`'s scan interval; `None`: not
    /// set by the user (`Poll` adapts it to the region, `UserfaultAsync`
    /// takes the default interval, 1 ms).
    pub(crate) poll_interval: Option<Duration>,
    /// `Poll`: how long the poller compares without pause after an ACK.
    pub(crate) busy_poll: Duration,
}

/// The largest region `Poll` busy-polls: a compare must cost next to
/// nothing (4 pages: ~0.1-0.4 µs here) for the spin to be worth a core.
pub(crate) const BUSY_POLL_MAX_LEN: usize = 16 << 10;
/// The longest busy-poll window after an ACK.
pub(crate) const BUSY_POLL_MAX: Duration = Duration::from_millis(100);

/// The longest `UserfaultAsync` scan interval: its agent takes no longer
/// one (it used to clamp it, silently).
pub(crate) const MAX_SCAN_INTERVAL: Duration = Duration::from_secs(10);

/// The longest region any backend is asked to map: the largest object Rust
/// allows (`isize::MAX` bytes), less a page (`Doorbell` adds its control
/// page), in whole pages. The kernel's own limit (the address space: 128
/// TiB on x86-64 with 4-level page tables) is usually lower: between the
/// two, `Error::Io` from `mmap`.
pub(crate) fn max_len() -> usize {
    let page = rustix::param::page_size();
    (isize::MAX as usize / page - 1) * page
}

/// Checks a tripwire's arguments for `backend`.
pub(crate) fn check(backend: Backend, len: usize, opts: &Options) -> Result<(), Error> {
    if len == 0 {
        return Err(Error::ZeroLength);
    }
    let max = max_len();
    if len > max {
        return Err(Error::invalid(
            "len",
            format!("{len} bytes"),
            format!("1 to {max} bytes"),
        ));
    }
    if matches!(backend, Backend::Userfault | Backend::UserfaultAsync) && len > UFFD_MAX {
        return Err(Error::invalid(
            "len",
            format!("{len} bytes on Backend::{backend:?}"),
            format!(
                "1 to {UFFD_MAX} bytes on the Userfaults (the agent keeps a bit per page and \
                 numbers pages in u32); use several tripwires, or another backend"
            ),
        ));
    }
    if let Some(interval) = opts.poll_interval {
        let spins = "a shorter interval would keep a thread spinning; for a small region, \
                     busy_poll(window) spins for a bounded window after each ACK, and \
                     Backend::Doorbell wakes at once";
        match backend {
            Backend::Poll | Backend::Unmodified if interval < MIN_POLL_INTERVAL => {
                return Err(Error::invalid(
                    "poll_interval",
                    format!("{interval:?}"),
                    format!("at least {MIN_POLL_INTERVAL:?}: {spins}"),
                ));
            }
            Backend::UserfaultAsync
                if !(MIN_POLL_INTERVAL..=MAX_SCAN_INTERVAL).contains(&interval) =>
            {
                return Err(Error::invalid(
                    "poll_interval",
                    format!("{interval:?} on Backend::UserfaultAsync"),
                    format!(
                        "{MIN_POLL_INTERVAL:?} to {MAX_SCAN_INTERVAL:?} on UserfaultAsync \
                         (under {MIN_POLL_INTERVAL:?}, {spins})"
                    ),
                ));
            }
            _ => {}
        }
    }
    let window = opts.busy_poll;
    if !window.is_zero() {
        if !matches!(backend, Backend::Poll | Backend::Unmodified) {
            return Err(Error::invalid(
                "busy_poll",
                format!("{window:?} with Backend::{backend:?}"),
                "zero; busy-polling is for Backend::Poll and Backend::Unmodified",
            ));
        }
        if len > BUSY_POLL_MAX_LEN {
            return Err(Error::invalid(
                "busy_poll",
                format!("{window:?} on a region of {len} bytes"),
                format!(
                    "zero on a region over {BUSY_POLL_MAX_LEN} bytes (each compare would cost \
                     more than a wake-up): put the doorbell in a tripwire of its own"
                ),
            ));
        }
        if window > BUSY_POLL_MAX {
            return Err(Error::invalid(
                "busy_poll",
                format!("{window:?}"),
                format!("up to {BUSY_POLL_MAX:?}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(poll_interval: Option<Duration>, busy_poll: Duration) -> Options {
        Options {
            poll_interval,
            busy_poll,
        }
    }

    /// The detail is boxed: `Error` (in every `Result` of the crate, and
    /// in a ring's `SendError<T>` beside the value) stays 32 bytes.
    #[test]
    fn the_error_stays_small() {
        assert!(std::mem::size_of::<Error>() <= 32);
    }

    /// Every refusal is `InvalidArgument` naming the argument (or
    /// `ZeroLength`), on the backends it concerns, and the limits
    /// themselves are accepted.
    #[test]
    fn each_limit_names_its_argument() {
        let none = opts(None, Duration::ZERO);
        let what = |r: Result<(), Error>| match r {
            Err(Error::InvalidArgument(a)) => a.what(),
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            check(Backend::Poll, 0, &none),
            Err(Error::ZeroLength)
        ));
        for b in [
            Backend::Auto,
            Backend::Kernel,
            Backend::Doorbell,
            Backend::Poll,
            Backend::Unmodified,
        ] {
            assert_eq!(what(check(b, max_len() + 1, &none)), "len");
            assert_eq!(what(check(b, usize::MAX, &none)), "len");
            check(b, 1 << 40, &none).unwrap();
        }
        for b in [Backend::Userfault, Backend::UserfaultAsync] {
            assert_eq!(what(check(b, UFFD_MAX + 1, &none)), "len");
            check(b, UFFD_MAX, &none).unwrap();
        }
        let us = Duration::from_micros;
        for b in [Backend::Poll, Backend::Unmodified, Backend::UserfaultAsync] {
            let short = opts(Some(us(9)), Duration::ZERO);
            assert_eq!(what(check(b, 64, &short)), "poll_interval");
            check(b, 64, &opts(Some(us(10)), Duration::ZERO)).unwrap();
        }
        let long = opts(Some(Duration::MAX), Duration::ZERO);
        check(Backend::Poll, 64, &long).unwrap();
        assert_eq!(
            what(check(Backend::UserfaultAsync, 64, &long)),
            "poll_interval"
        );
        check(
            Backend::UserfaultAsync,
            64,
            &opts(Some(MAX_SCAN_INTERVAL), Duration::ZERO),
        )
        .unwrap();
        // Ignored where there is no interval.
        check(
            Backend::Doorbell,
            64,
            &opts(Some(Duration::ZERO), Duration::ZERO),
        )
        .unwrap();
        let busy = opts(None, us(200));
        assert_eq!(what(check(Backend::Doorbell, 64, &busy)), "busy_poll");
        assert_eq!(
            what(check(Backend::Poll, BUSY_POLL_MAX_LEN + 1, &busy)),
            "busy_poll"
        );
        check(Backend::Poll, BUSY_POLL_MAX_LEN, &busy).unwrap();
        let too_long = opts(None, BUSY_POLL_MAX + Duration::from_nanos(1));
        assert_eq!(what(check(Backend::Poll, 64, &too_long)), "busy_poll");
        check(Backend::Poll, 64, &opts(None, BUSY_POLL_MAX)).unwrap();
    }
}
