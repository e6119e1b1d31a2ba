//! Where everything of a watch lives, and the check of the header a
//! Sender reads at attach. One memory object, the tripwire's region:
//!
//! ```text
//!   0    magic: u64 "MFDTWTC1" | 8 version: u32 | 12 size_of::<T>: u32
//!   16   align_of::<T>: u32    | 20 zero: u32   | 24 type tag: u64
//!        (the header: written by the Receiver before it shares, never again)
//!   32   receiver state: u64   bit 0: the Receiver closed its end (dropped)
//!        (written by the Receiver only)
//!   64   sequence: u64         even: the payload is whole; odd: being written
//!   72   payload               size_of::<T>() bytes, then zero up to a multiple of 8
//!        (sequence and payload: written by the Sender only)
//! ```
//!
//! Every field is little-endian (the host's order: both ends share a host).
//! The Receiver keeps its own copy of the header's facts; a peer that
//! rewrites the header later changes nothing.

use crate::{Error, Region};

/// The receiver's state word.
pub(crate) const RX_STATE: usize = 32;
/// The sequence word.
pub(crate) const SEQ: usize = 64;
/// The payload's first byte.
pub(crate) const PAYLOAD: usize = 72;
/// Bytes of the header.
pub(crate) const HEADER_LEN: usize = 32;

pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"MFDTWTC1");
pub(crate) const VERSION: u32 = 1;
/// The tag of the watch's second handshake frame (it carries no fds): a
/// plain producer, or a ring's Sender, is refused at once.
pub(crate) const FRAME_TAG: [u8; 8] = *b"MFDTWTCH";

/// The fixed facts of a watch, validated once and then kept locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) size: u32,
    pub(crate) align: u32,
    pub(crate) tag: u64,
}

impl Header {
    pub(crate) fn of<T>(tag: u64) -> Header {
        Header {
            size: std::mem::size_of::<T>() as u32,
            align: std::mem::align_of::<T>() as u32,
            tag,
        }
    }

    /// Bytes of the region: the header, the state, the sequence and the
    /// payload padded to a multiple of 8.
    pub(crate) fn region_len(&self) -> usize {
        PAYLOAD + (self.size as usize).div_ceil(8) * 8
    }

    pub(crate) fn write(&self, region: &Region) -> Result<(), Error> {
        region.write(0, &MAGIC)?;
        region.write(8, &VERSION)?;
        region.write(12, &self.size)?;
        region.write(16, &self.align)?;
        region.write(20, &0u32)?;
        region.write(24, &self.tag)?;
        Ok(())
    }

    /// Reads the header the Receiver wrote (one copy) and checks it
    /// against what this side expects.
    pub(crate) fn check(region: &Region, ours: Header) -> Result<Header, Error> {
        if region.len() < ours.region_len() {
            return Err(Error::LayoutMismatch {
                reason: format!(
                    "the watch's region has {} bytes, {} expected",
                    region.len(),
                    ours.region_len()
                ),
            });
        }
        Header::parse(&region.read(0)?, ours)
    }

    /// Checks a header's bytes against what this side expects; a mismatch
    /// names both values.
    pub(crate) fn parse(raw: &[u8; HEADER_LEN], ours: Header) -> Result<Header, Error> {
        let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().expect("8 bytes"));
        let mismatch = |reason: String| Error::LayoutMismatch { reason };
        if u64_at(0) != MAGIC {
            return Err(mismatch(format!(
                "the region starts with {:?}, not \"MFDTWTC1\" (not a watch)",
                String::from_utf8_lossy(&raw[..8])
            )));
        }
        if u32_at(8) != VERSION {
            return Err(mismatch(format!(
                "watch layout version: receiver {}, sender {VERSION}",
                u32_at(8)
            )));
        }
        let theirs = Header {
            size: u32_at(12),
            align: u32_at(16),
            tag: u64_at(24),
        };
        crate::ring::layout::check_type(
            (theirs.size, theirs.align, theirs.tag),
            (ours.size, ours.align, ours.tag),
        )?;
        Ok(theirs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each field of the header is checked, and a mismatch names it (a
    /// check removed lets one of these through).
    #[test]
    fn every_header_field_is_checked() {
        let ours = Header::of::<[u64; 4]>(7);
        let good = |h: Header| {
            let mut raw = [0u8; HEADER_LEN];
            raw[..8].copy_from_slice(&MAGIC.to_le_bytes());
            raw[8..12].copy_from_slice(&VERSION.to_le_bytes());
            raw[12..16].copy_from_slice(&h.size.to_le_bytes());
            raw[16..20].copy_from_slice(&h.align.to_le_bytes());
            raw[24..32].copy_from_slice(&h.tag.to_le_bytes());
            raw
        };
        assert_eq!(Header::parse(&good(ours), ours).unwrap(), ours);
        let mut raw = good(ours);
        raw[0] = b'X';
        let e = Header::parse(&raw, ours).unwrap_err().to_string();
        assert!(e.contains("not a watch"), "{e}");
        let mut raw = good(ours);
        raw[8] = 9;
        let e = Header::parse(&raw, ours).unwrap_err().to_string();
        assert!(e.contains("version"), "{e}");
        for (h, says) in [
            (Header { size: 31, ..ours }, "size_of"),
            (Header { align: 4, ..ours }, "align_of"),
            (Header { tag: 8, ..ours }, "type tag"),
        ] {
            let e = Header::parse(&good(h), ours).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn the_payload_is_padded_to_words() {
        assert_eq!(Header::of::<u8>(0).region_len(), PAYLOAD + 8);
        assert_eq!(Header::of::<[u8; 256]>(0).region_len(), PAYLOAD + 256);
        assert_eq!(Header::of::<[u8; 257]>(0).region_len(), PAYLOAD + 264);
    }
}
