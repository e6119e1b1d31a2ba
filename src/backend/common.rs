//! What more than one backend uses: the answer of a look at the wire, the
//! region of the emulated backends (both ends), the pollers' timer slack. A leaf of
//! `backend`: the backends import it, it imports none of them.

use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::sys::SealedMemfd;
use crate::{Error, Region};

/// What a look at the wire found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Not tripped: armed.
    Idle,
    /// Tripped, and now ACKed (re-armed).
    Taken,
    /// An ACK is in flight: look again when the wake-up fd turns readable,
    /// or at its deadline (`Wire::deadline`) at the latest.
    Pending,
}

impl From<bool> for Take {
    fn from(taken: bool) -> Take {
        if taken { Take::Taken } else { Take::Idle }
    }
}

/// `UserfaultAsync`'s scan interval when none is set; `Poll`'s shortest
/// interval when none is set (it stretches for a large region:
/// `poller`).
pub(crate) const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// The region of an emulated backend: a sealed memfd (to hand to the
/// producers) and its mapping here.
pub(crate) fn region_memfd(len: usize) -> Result<(SealedMemfd, Region), Error> {
    let memfd = SealedMemfd::create("memfd-tripwire", len)
        .map_err(|e| Error::io("creating the region's memfd", e))?;
    let map = memfd
        .map()
        .map_err(|e| Error::io("mmap of the region", e))?;
    Ok((memfd, Region::new(map)))
}

/// The producer's mapping of the region of an emulated backend, from the
/// memfd the offer carried (checked: sealed, `len` bytes).
pub(crate) fn map_peer_memfd(fd: OwnedFd, len: usize) -> Result<Region, Error> {
    let map = SealedMemfd::from_peer(fd, Some(len))
        .map_err(|why| Error::handshake(format!("the region memfd {why}")))?
        .map()
        .map_err(|e| Error::io("mmap of the region", e))?;
    Ok(Region::new(map))
}

/// Linux lets a sleep overrun by the thread's timer slack, 50 µs by default,
/// which would more than double a 50 µs interval: sets the calling thread's
/// slack to [`timer_slack_for`] `interval`.
pub(crate) fn set_timer_slack_for(interval: Duration) {
    let ns = std::num::NonZeroU64::new(timer_slack_for(interval));
    // Best effort: a failure only keeps the default slack.
    let _ = rustix::thread::set_current_timer_slack(ns);
}

/// The timer slack for `interval`, in ns: a twentieth of it, between 1 µs
/// and the default (50 µs).
pub(crate) fn timer_slack_for(interval: Duration) -> u64 {
    (interval / 20).as_nanos().clamp(1_000, 50_000) as u64
}
