//! The consumer's parse of a Userfault agent's PAGES reply (the agent is in
//! the producer's process: a hostile producer chooses every byte), for a
//! region of a chosen number of pages. Never panics; an accepted reply is
//! exactly `'P' all 0 0 | seq | n | 0 | n x (first, end)` (or says "all"),
//! with at most MAX_RANGES ranges, each non-empty and inside the region, and
//! re-encodes to the bytes it came from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use memfd_tripwire::__fuzz::{AGENT_MAX_MESSAGE, AGENT_MAX_RANGES, parse_pages};

fn u32_at(msg: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(msg[at..at + 4].try_into().unwrap())
}

fuzz_target!(|data: &[u8]| {
    // Two bytes choose the region's size (in pages); the rest is the
    // message, as the consumer receives it (at most MAX_MESSAGE bytes).
    let Some((size, msg)) = data.split_first_chunk::<2>() else {
        return;
    };
    let pages = usize::from(u16::from_le_bytes(*size));
    let msg = &msg[..msg.len().min(AGENT_MAX_MESSAGE)];

    let Some((seq, ranges)) = parse_pages(msg, pages) else {
        return;
    };
    assert!(msg.len() >= 16 && msg[0] == b'P', "{msg:?}");
    assert_eq!(seq, u32_at(msg, 4));
    let Some(ranges) = ranges else {
        // "All pages": only when the agent says so.
        assert_ne!(msg[1], 0);
        return;
    };
    assert_eq!(msg[1], 0);
    let n = u32_at(msg, 8) as usize;
    assert!(n <= AGENT_MAX_RANGES);
    assert_eq!(ranges.len(), n);
    assert_eq!(msg.len(), 16 + 8 * n);
    for r in &ranges {
        assert!(r.start < r.end && r.end <= pages, "{r:?} of {pages} pages");
    }
    // Re-encoded as the agent does, it is the message (bytes 2..4 and
    // 12..16 are not read: copied from the input).
    let mut again = vec![b'P', 0, msg[2], msg[3]];
    again.extend_from_slice(&seq.to_le_bytes());
    again.extend_from_slice(&(n as u32).to_le_bytes());
    again.extend_from_slice(&msg[12..16]);
    for r in &ranges {
        again.extend_from_slice(&(r.start as u32).to_le_bytes());
        again.extend_from_slice(&(r.end as u32).to_le_bytes());
    }
    assert_eq!(again, msg);
});
