//! A ring's checks of what its peer wrote: the control memfd's header (the
//! Sender's `Header::check`), then head and tail indices through
//! `available` and the Sender's tail-advance check, with the header's
//! capacity or an arbitrary one. Never panics, and every `Ok` satisfies the
//! invariants the ring relies on (asserted below).

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use memfd_tripwire::__fuzz::{Ring, RingHeader};
use memfd_tripwire::Error;

#[derive(Debug, Arbitrary)]
struct Input {
    raw: [u8; Ring::HEADER_LEN],
    /// Expect exactly what `raw` names (else `ours`): lets the fuzzer past
    /// the size, alignment and tag comparisons at once.
    expect_raw: bool,
    ours: (u32, u32, u64),
    /// Use the header's capacity (if accepted) for the indices.
    header_capacity: bool,
    capacity: u32,
    head: u64,
    tail: u64,
    new_tail: u64,
}

fn u32_at(raw: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(raw[at..at + 4].try_into().unwrap())
}

fn u64_at(raw: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(raw[at..at + 8].try_into().unwrap())
}

fuzz_target!(|input: Input| {
    let Input {
        raw, expect_raw, ..
    } = input;
    let named = RingHeader {
        size: u32_at(&raw, 12),
        align: u32_at(&raw, 16),
        capacity: u32_at(&raw, 20),
        tag: u64_at(&raw, 24),
    };
    let ours = if expect_raw {
        RingHeader {
            capacity: 0,
            ..named
        }
    } else {
        let (size, align, tag) = input.ours;
        RingHeader {
            size,
            align,
            capacity: 0,
            tag,
        }
    };

    let mut capacity = input.capacity;
    match Ring::header(&raw, ours) {
        Ok(h) => {
            assert_eq!(&raw[..8], b"MFDTRNG1");
            assert_eq!(u32_at(&raw, 8), Ring::VERSION);
            assert_eq!(h, named, "the header is what the bytes say");
            assert_eq!((h.size, h.align, h.tag), (ours.size, ours.align, ours.tag));
            assert!(h.capacity.is_power_of_two() && h.capacity <= Ring::MAX_CAPACITY);
            // Every slot of the accepted ring lies inside the slots memfd.
            let (offset, to_end, slots_len) = Ring::slot(h, input.head);
            let (size, cap) = (h.size as usize, h.capacity as usize);
            assert_eq!(slots_len % 4096, 0);
            assert!(cap * size <= slots_len && slots_len < cap * size + 4096);
            assert!((1..=cap).contains(&to_end), "{to_end} of {cap}");
            assert_eq!(offset, (cap - to_end) * size);
            assert!(offset + to_end * size <= slots_len);
            if input.header_capacity {
                capacity = h.capacity;
            }
        }
        Err(Error::LayoutMismatch { reason }) => assert!(!reason.is_empty()),
        Err(other) => panic!("not a layout mismatch: {other:?}"),
    }

    let cap = u64::from(capacity);
    let (head, tail, new_tail) = (input.head, input.tail, input.new_tail);
    match Ring::available(head, tail, capacity) {
        Ok(n) => {
            assert!(n <= cap);
            assert_eq!(tail.wrapping_add(n), head);
        }
        Err(Error::Corrupt { .. }) => assert!(head.wrapping_sub(tail) > cap),
        Err(other) => panic!("not a corrupt index: {other:?}"),
    }

    match Ring::advance_tail(head, tail, new_tail, capacity) {
        Ok(used) => {
            let moved = new_tail.wrapping_sub(tail);
            assert!(used <= cap && moved <= cap);
            assert_eq!(new_tail.wrapping_add(used), head);
            // The tail moved forward, and not past the head: with the
            // Sender's own invariant (head - tail <= capacity), tail <=
            // new_tail <= head in wrapping order.
            assert_eq!(moved + used, head.wrapping_sub(tail));
            if head.wrapping_sub(tail) <= cap {
                assert!(moved <= head.wrapping_sub(tail));
            }
        }
        Err(Error::Corrupt { .. }) => {
            assert!(head.wrapping_sub(new_tail) > cap || new_tail.wrapping_sub(tail) > cap);
        }
        Err(other) => panic!("not a corrupt index: {other:?}"),
    }
});
