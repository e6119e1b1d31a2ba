//! `Backend::Doorbell`: the producer rings from `notify()`, but only when
//! the consumer is armed (a Dekker handshake on a shared flag), so a busy
//! producer pays one fence and a load of the flag per `notify()` (a swap
//! too when the consumer is armed, to claim the ring). It rings
//! through its handshake socket (a byte, `sys::Bell::ring`): the socket that
//! tells each side of the other's death also carries the rings, so a
//! Doorbell tripwire costs the consumer its memfd, its epoll set and one
//! socket per producer (`backend::peers`). Neither side can make the other
//! block through it (see `sys::bell`).
//!
//! The armed flag lives in one page after the region, in the same memfd
//! (the region's length rounded up to a page, plus a page): the producer
//! maps both, the consumer's `Region` only the first.
//!
//! Contract: a `notify()` that follows a write and comes after an ACK trips
//! the wire; writes without `notify()` are not seen.
//!
//! Both ends are here: the consumer's [`Doorbell`] (arms, takes the rings)
//! and the producer's [`Ringer`] (`notify()`'s check of the armed flag).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU32;

use super::peers::Peers;
use crate::sys::{Mapping, SealedMemfd};
use crate::{Error, Region};

/// Offset of the armed flag in the control page (a `u32`: 1 = the consumer
/// wants a ring).
const ARMED_OFFSET: usize = 0;

/// Where the control page starts in a Doorbell memfd for a region of `len`
/// bytes, and the memfd's whole size; `None` if that overflows.
fn control_at(len: usize) -> Option<(usize, usize)> {
    let page = rustix::param::page_size();
    let at = len.checked_next_multiple_of(page)?;
    Some((at, at.checked_add(page)?))
}

pub(crate) mod protocol {
    //! The armed-flag protocol, generic over its atomic so that loom can
    //! check exactly this code (`--cfg memfd_tripwire_loom`).
    //!
    //! Consumer ACK: `armed = true; fence(SeqCst);` then it reads the data.
    //! Producer `notify()`: (data written) `fence(SeqCst);` then, if a
    //! plain load of `armed` sees `true`, it rings if `armed.swap(false)`
    //! was true (the swap claims the ring: one per ACK). With both fences,
    //! either the producer's load sees `true` (and its swap, or an earlier
    //! one since the ACK, rings), or the consumer's reads after its fence
    //! see the producer's writes: no write is lost. The load keeps the
    //! common case (not armed: a streaming producer) to one locked
    //! instruction, the fence, where an unconditional swap was a second one
    //! that also took the flag's cache line from the consumer at every
    //! notify.

    use std::sync::atomic::Ordering::{Relaxed, SeqCst};

    /// An atomic flag plus the fence that goes with it.
    pub trait Flag {
        /// Stores the flag.
        fn store_flag(&self, armed: bool);
        /// Loads the flag.
        fn load_flag(&self) -> bool;
        /// Swaps the flag, returning the old value.
        fn swap_flag(&self, armed: bool) -> bool;
        /// A sequentially consistent fence.
        fn fence();
    }

    impl Flag for std::sync::atomic::AtomicU32 {
        #[inline]
        fn store_flag(&self, armed: bool) {
            self.store(armed as u32, Relaxed)
        }
        #[inline]
        fn load_flag(&self) -> bool {
            self.load(Relaxed) != 0
        }
        #[inline]
        fn swap_flag(&self, armed: bool) -> bool {
            self.swap(armed as u32, Relaxed) != 0
        }
        #[inline]
        fn fence() {
            std::sync::atomic::fence(SeqCst)
        }
    }

    #[cfg(memfd_tripwire_loom)]
    impl Flag for loom::sync::atomic::AtomicU32 {
        fn store_flag(&self, armed: bool) {
            self.store(armed as u32, Relaxed)
        }
        fn load_flag(&self) -> bool {
            self.load(Relaxed) != 0
        }
        fn swap_flag(&self, armed: bool) -> bool {
            self.swap(armed as u32, Relaxed) != 0
        }
        fn fence() {
            loom::sync::atomic::fence(SeqCst)
        }
    }

    /// Consumer side of an ACK: re-arm, then order later data reads after it.
    #[inline]
    pub fn arm<F: Flag>(flag: &F) {
        flag.store_flag(true);
        F::fence();
    }

    /// Producer side of `notify()`: should the doorbell be rung?
    #[inline]
    pub fn should_ring<F: Flag>(flag: &F) -> bool {
        F::fence();
        flag.load_flag() && flag.swap_flag(false)
    }
}

/// Maps a Doorbell memfd (laid out as [`control_at`] says): the region of
/// `len` bytes, and the control page at `at`.
fn map(memfd: &SealedMemfd, len: usize, at: usize) -> Result<(Region, Mapping), Error> {
    let region = memfd
        .map_range(0, len)
        .map_err(|e| Error::io("mmap of the region", e))?;
    let control = memfd
        .map_range(at, rustix::param::page_size())
        .map_err(|e| Error::io("mmap of the control page", e))?;
    Ok((Region::new(region), control))
}

#[derive(Debug)]
pub(crate) struct Doorbell {
    /// The region, then the control page.
    memfd: SealedMemfd,
    control: Mapping,
    /// The process that made it (see `Drop`).
    pid: u32,
}

/// Arms the flag as the consumer goes, so that each producer's next
/// `notify()` rings, finds the consumer's end closed, and reports it then
/// (it would otherwise learn only after the next ACK, which never comes).
/// A forked child's copy leaves the flag alone.
impl Drop for Doorbell {
    fn drop(&mut self) {
        if self.pid == std::process::id() {
            protocol::arm(self.armed());
        }
    }
}

impl Doorbell {
    pub(crate) fn create(len: usize) -> Result<(Self, Region), Error> {
        let too_long = || {
            Error::io(
                "sizing the Doorbell memfd",
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a region of {len} bytes plus a control page overflows"),
                ),
            )
        };
        let (at, size) = control_at(len).ok_or_else(too_long)?;
        let memfd = SealedMemfd::create("memfd-tripwire", size)
            .map_err(|e| Error::io("creating the region's memfd", e))?;
        let (region, control) = map(&memfd, len, at)?;
        let wire = Doorbell {
            memfd,
            control,
            pid: std::process::id(),
        };
        protocol::arm(wire.armed());
        Ok((wire, region))
    }

    fn armed(&self) -> &AtomicU32 {
        armed(&self.control)
    }

    pub(crate) fn take(&mut self, peers: &mut Peers) -> io::Result<bool> {
        if !peers.take_rings()? {
            return Ok(false);
        }
        protocol::arm(self.armed());
        Ok(true)
    }

    pub(crate) fn ack(&mut self, peers: &mut Peers) -> io::Result<()> {
        peers.take_rings()?;
        protocol::arm(self.armed());
        Ok(())
    }

    pub(crate) fn offer_fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.memfd.as_fd()]
    }
}

/// The armed flag in a control page.
#[inline]
fn armed(control: &Mapping) -> &AtomicU32 {
    control
        .atomic_u32(ARMED_OFFSET)
        .expect("the armed flag lies inside the control page")
}

/// The producer's end: the consumer's armed flag (it rings through its
/// handshake socket).
#[derive(Debug)]
pub(crate) struct Ringer {
    control: Mapping,
}

impl Ringer {
    /// Maps the Doorbell memfd of an offer for a region of `len` bytes: the
    /// region, and the control page after it.
    pub(crate) fn attach(fd: OwnedFd, len: usize) -> Result<(Region, Ringer), Error> {
        let (at, size) = control_at(len)
            .ok_or_else(|| Error::handshake(format!("a region of {len} bytes overflows")))?;
        let memfd = SealedMemfd::from_peer(fd, Some(size))
            .map_err(|why| Error::handshake(format!("the Doorbell memfd {why}")))?;
        let (region, control) = map(&memfd, len, at)?;
        Ok((region, Ringer { control }))
    }

    /// `notify()`'s fast path: whether the consumer is armed, and so wants
    /// a ring (a fence and a load; the swap that claims the ring only when
    /// armed).
    #[inline]
    pub(crate) fn should_ring(&self) -> bool {
        protocol::should_ring(armed(&self.control))
    }
}

#[cfg(test)]
mod tests {
    use super::protocol::{arm, should_ring};
    use std::sync::atomic::AtomicU32;

    /// `notify()` rings once per ACK: an armed flag rings, and a second
    /// notify before the next ACK rings nothing (found by cargo mutants:
    /// `should_ring` made `true`, a syscall per notify, survived, as an
    /// extra ring is a spurious wake-up the contract allows).
    #[test]
    fn notify_rings_once_per_arm() {
        let flag = AtomicU32::new(0);
        assert!(!should_ring(&flag), "never armed");
        arm(&flag);
        assert!(should_ring(&flag), "armed by the ACK");
        assert!(!should_ring(&flag), "a second notify before the next ACK");
    }
}
