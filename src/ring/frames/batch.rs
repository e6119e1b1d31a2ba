//! Frames taken together: [`FrameBatch`], what
//! [`FrameReceiver::blocking_recv_many`](super::FrameReceiver::blocking_recv_many)
//! fills, and the walk that fills it ([`pop_frames`]): each run of
//! published words is copied out of the ring in one piece, then walked in
//! private memory, where no peer can change a length word after its check.

use std::fmt;

use super::super::core::{Rx, corrupt};
use super::walk::{self, WORD};
use crate::Error;

/// Frames received together, by
/// [`blocking_recv_many`](super::FrameReceiver::blocking_recv_many) (or
/// `recv_many`): their bytes, copied out of the ring, and where each one
/// lies. Receives append to it; [`clear`](FrameBatch::clear) it to reuse
/// its allocation.
///
/// ```
/// use memfd_tripwire::ring::frames::FrameBatch;
/// let batch = FrameBatch::new();
/// assert!(batch.is_empty());
/// for frame in &batch {
///     println!("{} bytes", frame.len());
/// }
/// ```
#[derive(Clone, Default)]
pub struct FrameBatch {
    /// The words copied out of the ring (length words, payloads, padding)
    /// are `words[..used]`; the rest is room kept from earlier batches,
    /// which `clear` keeps so that a copy never first zeroes what it
    /// overwrites.
    words: Vec<u64>,
    used: usize,
    /// Each frame: the byte offset of its payload in `words`, its length.
    frames: Vec<(usize, usize)>,
}

impl fmt::Debug for FrameBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameBatch")
            .field("frames", &self.frames.len())
            .field("bytes", &(self.used * WORD))
            .finish()
    }
}

impl FrameBatch {
    /// An empty batch.
    ///
    /// ```
    /// let batch = memfd_tripwire::ring::frames::FrameBatch::new();
    /// assert_eq!(batch.len(), 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// How many frames it holds.
    ///
    /// ```
    /// let batch = memfd_tripwire::ring::frames::FrameBatch::new();
    /// assert_eq!(batch.len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// `true` when it holds no frame.
    ///
    /// ```
    /// assert!(memfd_tripwire::ring::frames::FrameBatch::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frame `i`, oldest first.
    ///
    /// ```
    /// let batch = memfd_tripwire::ring::frames::FrameBatch::new();
    /// assert_eq!(batch.get(0), None);
    /// ```
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let &(at, len) = self.frames.get(i)?;
        Some(&self.bytes()[at..at + len])
    }

    /// The frames, oldest first.
    ///
    /// ```
    /// let batch = memfd_tripwire::ring::frames::FrameBatch::new();
    /// let total: usize = batch.iter().map(<[u8]>::len).sum();
    /// assert_eq!(total, 0);
    /// ```
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            bytes: self.bytes(),
            frames: self.frames.iter(),
        }
    }

    /// Empties it, keeping its allocations.
    ///
    /// ```
    /// let mut batch = memfd_tripwire::ring::frames::FrameBatch::new();
    /// batch.clear();
    /// assert!(batch.is_empty());
    /// ```
    pub fn clear(&mut self) {
        self.used = 0;
        self.frames.clear();
    }

    /// Words held (copied out, and room kept), for tests of its growth.
    #[cfg(test)]
    pub(super) fn words_held(&self) -> usize {
        self.words.len()
    }

    fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.words[..self.used])
    }
}

impl<'a> IntoIterator for &'a FrameBatch {
    type Item = &'a [u8];
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The frames of a [`FrameBatch`], oldest first ([`FrameBatch::iter`]).
///
/// ```
/// let batch = memfd_tripwire::ring::frames::FrameBatch::new();
/// let mut frames = batch.iter();
/// assert_eq!(frames.len(), 0);
/// assert!(frames.next().is_none());
/// ```
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    bytes: &'a [u8],
    frames: std::slice::Iter<'a, (usize, usize)>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let &(at, len) = self.frames.next()?;
        Some(&self.bytes[at..at + len])
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.frames.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

/// Words of frames a call takes at most (unless its first frame is
/// larger): a batch that stays in the cache while its frames are used.
const BUDGET_WORDS: u64 = 16 * 1024 / WORD as u64;

/// Words copied out at a time while walking a run: a walk that stops early
/// (at `limit` frames) wastes at most this much copying.
const CHUNK_WORDS: u64 = 2 * 1024;

/// Takes up to `limit` published frames into `batch` (no waiting, no ACK),
/// fewer once [`BUDGET_WORDS`] were taken; returns how many. Each contiguous run of published words is copied out
/// in chunks and walked in the copy, each length word checked as
/// [`pop_frame`](super::receiver::pop_frame) checks it. On an error, the
/// frames taken before it stay taken (and in `batch`).
pub(super) fn pop_frames(
    rx: &mut Rx<u64>,
    batch: &mut FrameBatch,
    limit: usize,
) -> Result<usize, Error> {
    let mut n = 0;
    let mut budget = BUDGET_WORDS;
    while n < limit && budget > 0 {
        // Past a skip marker at the tail, if any.
        let ready = rx.ready()? as u64;
        if ready == 0 {
            break;
        }
        let capacity = u64::from(rx.ring.header.capacity);
        let at = rx.tail & (capacity - 1);
        let run = ready.min(capacity - at);
        let base = batch.used;
        let mut copied = 0;
        let mut walked = 0;
        let mut taken = 0;
        // The words of the frames taken (not of a skip after them).
        let mut kept = 0;
        let mut skipped = false;
        let outcome = (|| {
            while walked < run && n + taken < limit && (walked < budget || n + taken == 0) {
                // The length word, then the whole frame, copied out (most
                // frames lie in a chunk copied already: the check is here,
                // and a call per frame cost a third of the copy's samples
                // at 64-byte frames).
                if walked + 1 > copied {
                    copy(
                        rx,
                        batch,
                        at,
                        base,
                        &mut copied,
                        walked + 1,
                        run.min(budget),
                    )?;
                }
                let word = batch.words[base + walked as usize];
                let offset = at + walked;
                let here = ready - walked;
                if let Some(skip) = walk::skip(word, offset, capacity, here)? {
                    // It covers the rest of the area: the end of this run.
                    walked += skip;
                    skipped = true;
                    break;
                }
                let frame = walk::frame(word, offset, capacity, here)?;
                let upto = walked + frame.words;
                if upto > copied {
                    copy(rx, batch, at, base, &mut copied, upto, run.min(budget))?;
                }
                let payload = (base + walked as usize + 1) * WORD;
                batch.frames.push((payload, frame.len));
                walked += frame.words;
                kept = walked;
                taken += 1;
            }
            Ok::<_, Error>(())
        })();
        // Words copied past the last frame taken are not the batch's.
        batch.used = base + kept as usize;
        rx.received += taken as u64;
        rx.advance(kept);
        if skipped {
            rx.step_over_skip(walked - kept);
        }
        n += taken;
        budget = budget.saturating_sub(walked);
        outcome.map_err(|e| match e {
            Error::Corrupt { .. } => corrupt(e, "Receiver"),
            e => e,
        })?;
    }
    Ok(n)
}

/// Copies the run's words up to `upto` (at least; a chunk more, up to
/// `bound`, if there are) into `batch` after `base`, from `copied` on.
/// Called only when `upto > copied`.
#[inline(never)]
fn copy(
    rx: &Rx<u64>,
    batch: &mut FrameBatch,
    at: u64,
    base: usize,
    copied: &mut u64,
    upto: u64,
    bound: u64,
) -> Result<(), Error> {
    debug_assert!(upto > *copied);
    let end = upto.max((*copied + CHUNK_WORDS).min(bound));
    let from = base + *copied as usize;
    if batch.words.len() < base + end as usize {
        batch.words.resize(base + end as usize, 0);
    }
    let offset = rx.ring.header.slot_offset(rx.tail.wrapping_add(*copied));
    debug_assert_eq!(offset as u64, (at + *copied) * WORD as u64);
    rx.ring
        .slots
        .mapping()
        .read_words(offset, &mut batch.words[from..base + end as usize])?;
    *copied = end;
    Ok(())
}
