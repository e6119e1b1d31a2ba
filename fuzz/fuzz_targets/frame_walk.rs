//! Byte frames' walk over an arbitrary byte area and indices (what a
//! hostile Sender can leave in shared memory), and the Sender's placement
//! of a frame. The walk never panics, never reads outside the area (every
//! word index it asks for is checked below), and every frame it accepts
//! lies inside the area, ends at or before the head, and the walk ends
//! within a ring's worth of words; the placement never straddles the end
//! and always waits for an amount a drained ring satisfies.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use memfd_tripwire::Error;
use memfd_tripwire::__fuzz::{Frames, Plan};

#[derive(Debug, Arbitrary)]
struct Input {
    /// Capacity 2^(log % 11) words: 1 to 1024.
    log: u8,
    tail: u64,
    /// The head: `tail + ahead` (often in range), or arbitrary.
    ahead: u16,
    wild_head: Option<u64>,
    area: Vec<u64>,
    /// A frame to place: (length, offset, free).
    place: (u32, u64, u64),
}

fuzz_target!(|input: Input| {
    let capacity = 1u32 << (input.log % 11);
    let cap = u64::from(capacity);
    let mut area = input.area;
    area.resize(capacity as usize, 0);
    let tail = input.tail;
    let head = input
        .wild_head
        .unwrap_or(tail.wrapping_add(u64::from(input.ahead)));

    // Exactly `capacity` words: an index past them panics here.
    match Frames::walk(capacity, head, tail, &area[..capacity as usize]) {
        Ok(frames) => {
            let published = head.wrapping_sub(tail);
            assert!(published <= cap);
            let mut words = 0;
            for (at, len) in frames {
                assert!(at >= 8 && at % 8 == 0, "payload at {at}");
                assert!(at + len <= capacity as usize * 8, "{at} + {len} past the area");
                words += Frames::words(len);
            }
            assert!(words <= published, "{words} words of frames, {published} published");
        }
        Err(Error::Corrupt { reason }) => assert!(!reason.is_empty()),
        Err(other) => panic!("not a corrupt ring: {other:?}"),
    }

    // The placement: any frame the ring can hold, at any offset, any free.
    let (len, offset, free) = input.place;
    let words = Frames::words(len as usize);
    if words > cap {
        return;
    }
    let offset = offset % cap;
    let free = free % (cap + 1);
    let to_end = cap - offset;
    match Frames::plan(words, offset, cap, free) {
        Plan::Grant(0) => assert!(words <= to_end && words <= free),
        Plan::Grant(skip) => {
            assert_eq!(skip, to_end);
            assert!(words > to_end && skip + words <= free);
        }
        Plan::Skip(n) => assert!(n == to_end && n <= free && offset > 0 && words > to_end),
        Plan::Wait(n) => assert!(n > free && n <= cap, "waits for {n} of {cap}, {free} free"),
    }
});
