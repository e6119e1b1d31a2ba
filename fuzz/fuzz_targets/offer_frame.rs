//! The producer's parse of an offer: 32 header bytes and the number of fds
//! that came with them, as a hostile consumer chooses. Never panics; an
//! accepted offer names a known backend with exactly its fds and a non-zero
//! length, and every byte of it is meaningful (it re-encodes to itself).

#![no_main]

use libfuzzer_sys::fuzz_target;
use memfd_tripwire::__fuzz::{OFFER_LEN, encode_offer, offer_fds, parse_offer};
use memfd_tripwire::Error;

fuzz_target!(|data: &[u8]| {
    // Byte 0: the fds that arrived (bit 7 set: as many as the frame
    // announces, an honest peer); then the header, exactly (no padding: a
    // field the input does not hold would hide it from libFuzzer's
    // comparison tracing).
    let [fds, rest @ ..] = data else {
        return;
    };
    let Some(frame) = rest.first_chunk::<OFFER_LEN>() else {
        return;
    };
    let announced = u32::from_le_bytes([frame[12], frame[13], frame[14], frame[15]]);
    let fds = if fds & 0x80 != 0 {
        announced as usize
    } else {
        usize::from(*fds)
    };

    match parse_offer(frame, fds) {
        Ok(offer) => {
            assert!(offer.len > 0, "{offer:?}");
            assert_eq!(fds, offer_fds(offer.kind), "{offer:?}");
            assert_eq!(
                &encode_offer(offer.kind, offer.len, fds, offer.protocol),
                frame,
                "{offer:?}"
            );
        }
        Err(Error::Handshake { reason }) => assert!(!reason.is_empty()),
        Err(other) => panic!("not a handshake error: {other:?}"),
    }
});
