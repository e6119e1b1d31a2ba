//! The consumer's parse of a reply: 24 header bytes, then the message, as a
//! hostile producer chooses. Never panics; an accepted header announces at
//! most MAX_MESSAGE bytes and re-encodes to itself; only status 0 is a
//! success.

#![no_main]

use libfuzzer_sys::fuzz_target;
use memfd_tripwire::__fuzz::{MAX_MESSAGE, REPLY_LEN, encode_reply, parse_reply, reply_verdict};
use memfd_tripwire::Error;

fuzz_target!(|data: &[u8]| {
    // The header, exactly (no padding), then the message.
    let Some((hdr, rest)) = data.split_first_chunk::<REPLY_LEN>() else {
        return;
    };

    let reply = match parse_reply(hdr) {
        Ok(reply) => reply,
        Err(Error::Handshake { reason }) => {
            assert!(!reason.is_empty());
            return;
        }
        Err(other) => panic!("not a handshake error: {other:?}"),
    };
    assert!(reply.msg_len <= MAX_MESSAGE, "{reply:?}");
    assert_eq!(
        &encode_reply(reply.status, reply.msg_len, reply.protocol),
        hdr
    );

    // The consumer reads exactly msg_len bytes (here: what there is).
    let msg = &rest[..rest.len().min(reply.msg_len)];
    match reply_verdict(reply.status, msg) {
        Ok(()) => assert_eq!(reply.status, 0),
        Err(Error::Handshake { reason }) => {
            assert_ne!(reply.status, 0);
            if reply.status == 1 {
                assert!(reason.contains("could not attach"), "{reason}");
            }
        }
        Err(other) => panic!("not a handshake error: {other:?}"),
    }
});
