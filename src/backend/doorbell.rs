//! `Backend::Doorbell`: the producer rings a bell (`sys::Bell`, one end of a
//! unix socket pair; the consumer keeps the other) from `notify()`, but only
//! when the consumer is armed (a Dekker handshake on a shared flag), so a
//! busy producer pays one fence and one atomic swap per `notify()`. Neither
//! side can make the other block through the bell (see `sys::bell`).
//!
//! Contract: a `notify()` that follows a write and comes after an ACK trips
//! the wire; writes without `notify()` are not seen.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU32;

use crate::sys::{Bell, Mapping, SealedMemfd};
use crate::{Error, Region};

/// Size of the control memfd that holds the armed flag.
pub(crate) const CONTROL_LEN: usize = 4096;
/// Offset of the armed flag (a `u32`: 1 = the consumer wants a ring).
pub(crate) const ARMED_OFFSET: usize = 0;

pub(crate) mod protocol {
    //! The armed-flag protocol, generic over its atomic so that loom can
    //! check exactly this code (`--cfg memfd_tripwire_loom`).
    //!
    //! Consumer ACK: `armed = true; fence(SeqCst);` then it reads the data.
    //! Producer `notify()`: (data written) `fence(SeqCst);` then it rings if
    //! `armed.swap(false)` was true. With both fences, either the producer's
    //! swap sees `true` (and rings), or the consumer's reads after its fence
    //! see the producer's writes: no write is lost.

    use std::sync::atomic::Ordering::{Relaxed, SeqCst};

    /// An atomic flag plus the fence that goes with it.
    pub trait Flag {
        /// Stores the flag.
        fn store_flag(&self, armed: bool);
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
        flag.swap_flag(false)
    }
}

#[derive(Debug)]
pub(crate) struct Doorbell {
    memfd: SealedMemfd,
    /// Our end of the bell: its rings are the wake-ups.
    bell: Bell,
    /// The producers' end, handed to each in the handshake.
    bell_peer: OwnedFd,
    control_fd: SealedMemfd,
    control: Mapping,
}

impl Doorbell {
    pub(crate) fn create(len: usize) -> Result<(Self, Region), Error> {
        let (memfd, region) = super::region_memfd(len)?;
        let (bell, bell_peer) =
            Bell::pair().map_err(|e| Error::io("socketpair for the bell", e))?;
        let control_fd = SealedMemfd::create("memfd-tripwire-control", CONTROL_LEN)
            .map_err(|e| Error::io("creating the control memfd", e))?;
        let control = control_fd
            .map()
            .map_err(|e| Error::io("mmap of the control page", e))?;
        let wire = Doorbell {
            memfd,
            bell,
            bell_peer,
            control_fd,
            control,
        };
        protocol::arm(wire.armed());
        Ok((wire, region))
    }

    fn armed(&self) -> &AtomicU32 {
        self.control
            .atomic_u32(ARMED_OFFSET)
            .expect("the armed flag lies inside the control page")
    }

    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.bell.as_fd()
    }

    pub(crate) fn take(&mut self) -> io::Result<bool> {
        if !self.bell.drain()? {
            return Ok(false);
        }
        protocol::arm(self.armed());
        Ok(true)
    }

    pub(crate) fn ack(&mut self) -> io::Result<()> {
        self.bell.drain()?;
        protocol::arm(self.armed());
        Ok(())
    }

    pub(crate) fn offer_fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![
            self.memfd.as_fd(),
            self.bell_peer.as_fd(),
            self.control_fd.as_fd(),
        ]
    }
}
