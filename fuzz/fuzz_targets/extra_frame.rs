//! The Sender's parse of a ring's extra frame (after the handshake): 16
//! bytes, the fds that came with them and the count expected. Never panics;
//! an accepted frame carries exactly the fds it announces and the Sender
//! expects, and re-encodes to itself (but for its two reserved bytes, which
//! are ignored).

#![no_main]

use libfuzzer_sys::fuzz_target;
use memfd_tripwire::__fuzz::{EXTRA_LEN, RING_MAGIC, encode_extra, parse_extra};
use memfd_tripwire::Error;

fuzz_target!(|data: &[u8]| {
    // Byte 0: the fds that arrived (bit 7 set: as many as announced);
    // byte 1: the fds expected (bit 7 set: as many as arrived); then the
    // frame, exactly.
    let [fds, want, rest @ ..] = data else {
        return;
    };
    let Some(frame) = rest.first_chunk::<EXTRA_LEN>() else {
        return;
    };
    let announced = u32::from_le_bytes([frame[12], frame[13], frame[14], frame[15]]);
    let fds = if fds & 0x80 != 0 {
        announced as usize
    } else {
        usize::from(*fds)
    };
    let want = if want & 0x80 != 0 {
        fds
    } else {
        usize::from(*want)
    };

    match parse_extra(frame, RING_MAGIC, fds, want) {
        Ok(()) => {
            assert_eq!(fds, want);
            let mut expected = encode_extra(RING_MAGIC, fds);
            expected[10..12].copy_from_slice(&frame[10..12]);
            assert_eq!(&expected, frame);
        }
        Err(Error::Handshake { reason }) => assert!(!reason.is_empty()),
        Err(other) => panic!("not a handshake error: {other:?}"),
    }
});
