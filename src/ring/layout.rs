//! Where everything of a ring lives, and the check of a header read from a
//! peer. Three memory objects, one writer each:
//!
//! ```text
//! the tripwire's region, one page (written by the Sender only):
//!   0    head: u64      messages published (wrapping count)
//!   8    state: u64     bit 0: closed cleanly; bit 1: the Sender waits for space
//!                       (a whole 8-byte word: see `protocol::State`)
//! the slots memfd, sealed (written by the Sender only):
//!   0    slots          capacity x size_of::<T>(), slot i at (i % capacity) * size
//! the control memfd, sealed (written by the Receiver only):
//!   0    magic: u64 "MFDTRNG1" | 8 version: u32 | 12 size_of::<T>: u32
//!   16   align_of::<T>: u32 | 20 capacity: u32 (a power of two) | 24 type tag: u64
//!   128  tail: u64      messages consumed (wrapping count)
//!   256  state: u64     bit 0: the Receiver closed its end cleanly (dropped);
//!                       a cache line of its own, read by every send
//! ```
//!
//! The slots sit outside the tripwire: the head store that publishes them is
//! all the Receiver needs to see, so on the backends that trap stores
//! (`Kernel`, `Userfault`) a re-arm costs the Sender at most one trapped
//! store, not one per slot page written (layout version 1 had the slots in
//! the wire, and a busy ring re-armed itself into a fault per page).

use crate::{Error, Region};

pub(crate) const HEAD: usize = 0;
pub(crate) const STATE: usize = 8;
pub(crate) const TAIL: usize = 128;
/// The Receiver's state word, in the control memfd (see [`protocol`](super::protocol)).
pub(crate) const RX_STATE: usize = 256;
/// Bytes of the control memfd: one page of this host.
pub(crate) fn control_len() -> usize {
    rustix::param::page_size()
}
/// The tag of the ring's frame after the tripwire's handshake (its fds:
/// control memfd, space bell, slots memfd).
pub(crate) const FRAME_TAG: [u8; 8] = crate::handoff::RING_TAG;
/// The fds of the ring's frame.
pub(crate) const FRAME_FDS: usize = 3;
/// Bytes of the header at the start of the control memfd.
pub(crate) const HEADER_LEN: usize = 32;

pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"MFDTRNG1");
/// 3: the state word (offset 8 of the wire) is a u64; 4: the Receiver's
/// state word (offset 256 of the control memfd).
pub(crate) const VERSION: u32 = 4;
/// The largest capacity accepted (keeps every offset far from overflow).
pub(crate) const MAX_CAPACITY: u32 = 1 << 24;

/// The fixed facts of a ring, validated once and then kept locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) size: u32,
    pub(crate) align: u32,
    pub(crate) capacity: u32,
    pub(crate) tag: u64,
}

impl Header {
    pub(crate) fn of<T>(capacity: u32, tag: u64) -> Header {
        Header {
            size: std::mem::size_of::<T>() as u32,
            align: std::mem::align_of::<T>() as u32,
            capacity,
            tag,
        }
    }

    /// Bytes of the tripwire region: the head and the state, on a page of
    /// their own.
    pub(crate) fn region_len(&self) -> usize {
        rustix::param::page_size()
    }

    /// Bytes of the slots memfd (page-rounded).
    pub(crate) fn slots_len(&self) -> usize {
        let page = rustix::param::page_size();
        (self.capacity as usize * self.size as usize).div_ceil(page) * page
    }

    /// Where in the slots memfd the message with (wrapping) index `i` lives.
    #[inline]
    pub(crate) fn slot_offset(&self, i: u64) -> usize {
        (i & u64::from(self.capacity - 1)) as usize * self.size as usize
    }

    /// How many slots follow index `i`'s before the ring wraps.
    #[inline]
    pub(crate) fn slots_to_end(&self, i: u64) -> usize {
        (self.capacity - (i & u64::from(self.capacity - 1)) as u32) as usize
    }

    pub(crate) fn write(&self, control: &Region) -> Result<(), Error> {
        control.write(0, &MAGIC)?;
        control.write(8, &VERSION)?;
        control.write(12, &self.size)?;
        control.write(16, &self.align)?;
        control.write(20, &self.capacity)?;
        control.write(24, &self.tag)?;
        Ok(())
    }

    /// Reads the header a peer wrote (one copy) and checks it against what
    /// this side expects; a mismatch names both values.
    pub(crate) fn check(control: &Region, ours: Header) -> Result<Header, Error> {
        Header::parse(&control.read(0)?, ours)
    }

    /// Checks the bytes of a header a peer wrote against what this side
    /// expects (`ours.capacity` is not compared: the peer chooses it);
    /// a mismatch names both values. Pure: what the fuzzer drives.
    pub(crate) fn parse(raw: &[u8; HEADER_LEN], ours: Header) -> Result<Header, Error> {
        let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().expect("8 bytes"));
        let mismatch = |reason: String| Error::LayoutMismatch { reason };
        if u64_at(0) != MAGIC {
            return Err(mismatch(format!(
                "the control memory starts with {:?}, not \"MFDTRNG1\" (not a ring)",
                String::from_utf8_lossy(&raw[..8])
            )));
        }
        if u32_at(8) != VERSION {
            return Err(mismatch(format!(
                "layout version: receiver {}, sender {VERSION}",
                u32_at(8)
            )));
        }
        let theirs = Header {
            size: u32_at(12),
            align: u32_at(16),
            capacity: u32_at(20),
            tag: u64_at(24),
        };
        check_type(
            (theirs.size, theirs.align, theirs.tag),
            (ours.size, ours.align, ours.tag),
        )?;
        check_capacity(theirs.capacity).map_err(|why| mismatch(format!("capacity: {why}")))?;
        Ok(theirs)
    }
}

/// The element type's facts, as the Receiver wrote them (`theirs`) and as
/// the Sender has them (`ours`): size, alignment, type tag. A mismatch
/// names the field and both values. (The watch's header checks them too.)
pub(crate) fn check_type(theirs: (u32, u32, u64), ours: (u32, u32, u64)) -> Result<(), Error> {
    let mismatch = |reason: String| Err(Error::LayoutMismatch { reason });
    if theirs.0 != ours.0 {
        return mismatch(format!(
            "size_of::<T>(): receiver {}, sender {}",
            theirs.0, ours.0
        ));
    }
    if theirs.1 != ours.1 {
        return mismatch(format!(
            "align_of::<T>(): receiver {}, sender {}",
            theirs.1, ours.1
        ));
    }
    if theirs.2 != ours.2 {
        return mismatch(format!(
            "type tag: receiver {:#x}, sender {:#x}",
            theirs.2, ours.2
        ));
    }
    Ok(())
}

/// A capacity must be a power of two in 1..=MAX_CAPACITY.
pub(crate) fn check_capacity(capacity: u32) -> Result<(), String> {
    if capacity == 0 || !capacity.is_power_of_two() || capacity > MAX_CAPACITY {
        return Err(format!(
            "{capacity} is not a power of two between 1 and {MAX_CAPACITY}"
        ));
    }
    Ok(())
}

/// How many published messages `head` says there are after `tail`, or why
/// that is impossible for a ring of `capacity`.
#[inline]
pub(crate) fn available(head: u64, tail: u64, capacity: u32) -> Result<u64, Error> {
    let n = head.wrapping_sub(tail);
    if n > u64::from(capacity) {
        return Err(Error::Corrupt {
            reason: format!(
                "head {head} and tail {tail} are {n} apart in a ring of {capacity}: an index \
                 moved backwards or past the other"
            ),
        });
    }
    Ok(n)
}

/// The Sender's check of a tail it re-read: `new_tail` may have moved
/// forward from `old_tail`, but not past `head`. Returns the slots in use.
///
/// With `head` at most `capacity` ahead of `old_tail` (the Sender's own
/// invariant), an `Ok` means `old_tail <= new_tail <= head` in wrapping
/// order.
#[inline]
pub(crate) fn advance_tail(
    head: u64,
    old_tail: u64,
    new_tail: u64,
    capacity: u32,
) -> Result<u64, Error> {
    let used = available(head, new_tail, capacity)?;
    // The tail only moves forward, never past the head (checked above).
    if new_tail.wrapping_sub(old_tail) > u64::from(capacity) {
        return Err(Error::Corrupt {
            reason: format!("the tail moved from {old_tail} to {new_tail}"),
        });
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_moves_forward_up_to_the_head() {
        // Wrapping indices: all of these are valid moves.
        for (head, old, new) in [(8, 0, 0), (8, 0, 8), (8, 4, 6), (3, u64::MAX - 4, 1)] {
            let used = advance_tail(head, old, new, 8).unwrap();
            assert_eq!(used, head.wrapping_sub(new));
        }
        for (head, old, new, says) in [
            (8, 4, 3, "moved from 4 to 3"),
            (8, 4, 9, "apart in a ring of 8"),
            (
                3,
                u64::MAX - 2,
                u64::MAX - 3,
                "moved from 18446744073709551613",
            ),
        ] {
            let e = advance_tail(head, old, new, 8).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    /// The slots memfd holds `capacity * size` bytes, page-rounded: a ring
    /// larger than a page gets every page it needs (found by cargo mutants:
    /// `*` made `+` survived, every ring under test fitting one page).
    #[test]
    fn the_slots_memfd_fits_every_slot() {
        let page = rustix::param::page_size();
        for (capacity, size) in [(1u32, 8u32), (8, 8), (1024, 16), (4096, 24), (1 << 16, 64)] {
            let h = Header {
                size,
                align: 8,
                capacity,
                tag: 0,
            };
            let want = (capacity as usize * size as usize).div_ceil(page) * page;
            assert_eq!(h.slots_len(), want, "capacity {capacity}, size {size}");
            let last = h.slot_offset(u64::from(capacity) - 1) + size as usize;
            assert!(last <= h.slots_len(), "the last slot ends past the memfd");
        }
    }

    /// How many slots follow index `i`'s before the ring wraps: the batched
    /// copies take runs this long (found by cargo mutants: a constant 1
    /// survived, as runs of one slot still deliver every message).
    #[test]
    fn runs_end_where_the_ring_wraps() {
        let h = Header {
            size: 8,
            align: 8,
            capacity: 8,
            tag: 0,
        };
        for (i, want) in [
            (0u64, 8usize),
            (5, 3),
            (7, 1),
            (8, 8),
            (13, 3),
            (u64::MAX, 1),
        ] {
            assert_eq!(h.slots_to_end(i), want, "index {i}");
        }
    }
}
