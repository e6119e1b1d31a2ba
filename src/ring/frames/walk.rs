//! The frame walk, pure: what a length word read from the byte area means,
//! checked against where it lies and how far the Sender's head is (the
//! Receiver's side), and where the Sender puts a frame (its side). Indices
//! count 8-byte words, so a frame can only start on a word: a misaligned
//! frame cannot be expressed. No memory, no atomics: what the fuzzer
//! (`fuzz/fuzz_targets/frame_walk.rs`) and the unit tests drive.
//!
//! ```text
//! byte area (the ring's slots memfd, capacity words):
//!   [len: u64][payload, padded to 8] [len][payload] ... [SKIP][unused to the end]
//! ```
//!
//! A frame of `len` bytes takes `1 + ceil(len / 8)` words and never
//! straddles the end of the area: one that would is placed at offset 0,
//! after a skip marker (`u64::MAX`) that covers the rest of the area.

use crate::Error;

/// The length word of a skip marker: the frame that follows starts at
/// offset 0 of the byte area.
pub(crate) const SKIP: u64 = u64::MAX;

/// Bytes of a word: a length word, and the unit of the indices.
pub(crate) const WORD: usize = 8;

/// Words a frame of `len` payload bytes takes: its length word and its
/// payload, padded to a word.
#[inline]
pub(crate) fn words(len: usize) -> u64 {
    1 + len.div_ceil(WORD) as u64
}

/// The largest payload a ring of `capacity` words carries: a frame that
/// fills the whole area (placed at offset 0, after a skip if need be).
#[inline]
pub(crate) fn max_len(capacity: u64) -> usize {
    (capacity as usize - 1) * WORD
}

/// A frame the Receiver may copy out: `len` payload bytes after the length
/// word, `words` words in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) len: usize,
    pub(crate) words: u64,
}

fn corrupt(reason: String) -> Error {
    Error::Corrupt { reason }
}

/// Receiver: the word at word `offset` of an area of `capacity` words, with
/// `ready` words published from there (`1..=capacity`). `Some(n)`: a skip
/// marker, covering the `n` words to the end; `None`: not a skip (a frame,
/// checked by [`frame`]). A skip at offset 0 (it would cover the whole
/// area, which the Sender never needs) or reaching past the head is
/// [`Error::Corrupt`].
#[inline]
pub(crate) fn skip(
    word: u64,
    offset: u64,
    capacity: u64,
    ready: u64,
) -> Result<Option<u64>, Error> {
    if word != SKIP {
        return Ok(None);
    }
    if offset == 0 {
        return Err(corrupt(
            "a skip marker at offset 0 of the byte area, where every frame fits".into(),
        ));
    }
    let to_end = capacity - offset;
    if to_end > ready {
        return Err(corrupt(format!(
            "a skip marker at word {offset} covers {to_end} words to the end, past the head \
             ({ready} published)"
        )));
    }
    Ok(Some(to_end))
}

/// Receiver: the length word `word` at word `offset` of an area of
/// `capacity` words, with `ready` words published from there
/// (`1..=capacity`), names a frame that lies inside the area, does not
/// straddle its end and ends at or before the head; anything else
/// (a skip marker here included: it was checked for before) is
/// [`Error::Corrupt`].
#[inline]
pub(crate) fn frame(word: u64, offset: u64, capacity: u64, ready: u64) -> Result<Frame, Error> {
    let max = max_len(capacity) as u64;
    if word > max {
        return Err(corrupt(if word == SKIP {
            format!("a skip marker at word {offset}, where a frame was announced")
        } else {
            format!("a frame of {word} bytes at word {offset}, in a ring that holds at most {max}")
        }));
    }
    let len = word as usize;
    let words = words(len);
    if words > capacity - offset {
        return Err(corrupt(format!(
            "a frame of {len} bytes ({words} words) at word {offset} straddles the end of \
             {capacity} words"
        )));
    }
    if words > ready {
        return Err(corrupt(format!(
            "a frame of {len} bytes ({words} words) at word {offset} ends past the head \
             ({ready} words published)"
        )));
    }
    Ok(Frame { len, words })
}

/// What the Sender does for a frame of `words` words (at most `capacity`)
/// at word `offset`, with `free` words free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Write it now: after a skip of this many words (0: none), published
    /// with the frame.
    Grant { skip: u64 },
    /// Publish a skip marker of this many words (to the end) alone now,
    /// then plan again at offset 0: the frame and the skip do not fit
    /// together yet, or ever (a frame of more words than the offset).
    Skip(u64),
    /// Wait until this many words are free, then plan again.
    Wait(u64),
}

/// The Sender's placement of a frame: contiguous, never straddling the end.
#[inline]
pub(crate) fn plan(words: u64, offset: u64, capacity: u64, free: u64) -> Plan {
    let to_end = capacity - offset;
    if words <= to_end {
        return if free >= words {
            Plan::Grant { skip: 0 }
        } else {
            Plan::Wait(words)
        };
    }
    if free >= to_end + words {
        Plan::Grant { skip: to_end }
    } else if free >= to_end {
        Plan::Skip(to_end)
    } else if to_end + words <= capacity {
        Plan::Wait(to_end + words)
    } else {
        Plan::Wait(to_end)
    }
}

/// Walks an area of `capacity` words (`word(i)` reads word `i`) from `tail`
/// to `head` as the Receiver does: each frame as (byte offset of its
/// payload, length). For the fuzzer and the unit tests: the Receiver
/// itself takes one frame per call, through the same checks.
#[cfg(any(test, fuzzing))]
pub(crate) fn walk(
    capacity: u32,
    head: u64,
    mut tail: u64,
    word: impl Fn(usize) -> u64,
) -> Result<Vec<(usize, usize)>, Error> {
    let cap = u64::from(capacity);
    let mut frames = Vec::new();
    loop {
        let ready = crate::ring::layout::available(head, tail, capacity)?;
        if ready == 0 {
            return Ok(frames);
        }
        let offset = tail & (cap - 1);
        if let Some(n) = skip(word(offset as usize), offset, cap, ready)? {
            tail = tail.wrapping_add(n);
            continue;
        }
        let f = frame(word(offset as usize), offset, cap, ready)?;
        frames.push((offset as usize * WORD + WORD, f.len));
        tail = tail.wrapping_add(f.words);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every class of hostile length word is `Corrupt`, with a reason.
    #[test]
    fn each_hostile_length_word_is_corrupt() {
        // (word, offset, capacity, ready, says)
        for (word, offset, ready, says) in [
            (57, 0, 16, "at most 56"),             // too big for the ring
            (u64::MAX - 1, 0, 16, "at most 56"),   // absurd
            (1 << 32, 3, 5, "at most 56"),         // high bits set
            (16, 6, 2, "straddles the end"),       // 3 words at word 6 of 8
            (24, 0, 3, "past the head"),           // 4 words, 3 published
            (0, 0, 0, "past the head"),            // nothing published at all
            (SKIP, 0, 8, "skip marker at word 0"), // a skip where a frame was
        ] {
            let e = frame(word, offset, 8, ready).unwrap_err();
            assert!(
                matches!(&e, Error::Corrupt { reason } if reason.contains(says)),
                "{word} at {offset}: {e}"
            );
        }
        let e = skip(SKIP, 0, 8, 8).unwrap_err();
        assert!(e.to_string().contains("offset 0"), "{e}");
        let e = skip(SKIP, 5, 8, 2).unwrap_err();
        assert!(e.to_string().contains("past the head"), "{e}");
    }

    #[test]
    fn frames_that_fit_are_accepted() {
        assert_eq!(frame(0, 7, 8, 1).unwrap(), Frame { len: 0, words: 1 });
        assert_eq!(frame(8, 6, 8, 2).unwrap(), Frame { len: 8, words: 2 });
        assert_eq!(frame(9, 5, 8, 3).unwrap(), Frame { len: 9, words: 3 });
        assert_eq!(frame(56, 0, 8, 8).unwrap(), Frame { len: 56, words: 8 });
        assert_eq!(skip(SKIP, 5, 8, 3).unwrap(), Some(3));
        assert_eq!(skip(0, 5, 8, 3).unwrap(), None);
    }

    /// A frame that exactly fits the end goes there; one that does not
    /// goes after a skip, published with it when both fit, alone first
    /// when not, and the wait is for what makes progress.
    #[test]
    fn the_sender_places_frames_without_straddling() {
        use Plan::*;
        // (words, offset, free) in a ring of 8 words
        for (words, offset, free, want) in [
            (3, 5, 3, Grant { skip: 0 }), // exactly fits the end
            (3, 5, 2, Wait(3)),
            (4, 5, 7, Grant { skip: 3 }), // skip and frame together
            (4, 5, 6, Skip(3)),           // room for the skip, not for both
            (4, 5, 2, Wait(7)),           // wait for both
            (6, 5, 2, Wait(3)),           // both never fit: wait for the skip alone
            (6, 5, 4, Skip(3)),
            (8, 0, 8, Grant { skip: 0 }), // the largest frame, at 0
            (8, 1, 8, Skip(7)),
            (1, 7, 1, Grant { skip: 0 }), // a zero-length frame in the last word
        ] {
            assert_eq!(
                plan(words, offset, 8, free),
                want,
                "{words} at {offset}, {free} free"
            );
        }
    }

    /// The walk the Receiver takes: frames up to the head, skips stepped
    /// over, wrapping indices.
    #[test]
    fn the_walk_steps_over_a_skip() {
        // 8 words: a 12-byte frame at word 5 cannot fit (3 words left), so
        // the Sender skipped: [frame 12 @0..3] [frame 0 @3] [frame 0 @4]
        // [SKIP @5..8].
        let mut area = [0u64; 8];
        area[0] = 12;
        area[5] = SKIP;
        // tail at 3 (wrapped once), head after the frame at 0 (3 words).
        let got = walk(8, 8 + 8 + 3, 8 + 3, |i| area[i]).unwrap();
        assert_eq!(got, [(32, 0), (40, 0), (8, 12)]);
        // The same bytes with a head that cuts the last frame: corrupt.
        assert!(walk(8, 8 + 8 + 2, 8 + 3, |i| area[i]).is_err());
    }
}
