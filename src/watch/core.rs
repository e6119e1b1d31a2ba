//! What both Receivers (blocking and async) share: the local facts of the
//! watch, the last value read, and the bounded seqlock read over the
//! tripwire's public [`Region`]. It never waits on the tripwire: the
//! Receivers in `blocking.rs` and `tokio.rs` do.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytemuck::Pod;

use super::layout::{self, Header};
use super::protocol;
use crate::{Error, Region};

/// Attempts between two looks at the clock, and between two yields of
/// the thread (or the task) while a write is under way.
pub(super) const SPINS: u32 = 64;

/// What one copy attempt found.
pub(super) enum Attempt<T> {
    /// A whole value and its (even) sequence.
    Whole(u64, T),
    /// No whole value: the sequence before the copy and after it (equal
    /// and odd: a write under way).
    Busy(u64, u64),
}

/// The Receiver's state, whatever drives it.
#[derive(Debug)]
pub(super) struct Core<T> {
    /// The sequence of `value`.
    pub(super) seen: u64,
    /// The last whole value read: what `borrow` hands out.
    pub(super) value: T,
    /// How long a read retries before it reports the writer stuck.
    pub(super) stuck_after: Duration,
}

impl<T: Pod> Core<T> {
    /// Lays out a fresh watch in `region` (the header, `initial` at
    /// sequence 0): before it is shared, when nobody else writes it.
    pub(super) fn create(
        region: &Region,
        header: Header,
        initial: T,
        stuck_after: Duration,
    ) -> Result<Self, Error> {
        header.write(region)?;
        region.write(layout::PAYLOAD, &initial)?;
        region.atomic_u64(layout::SEQ)?.store(0, Ordering::Release);
        Ok(Core {
            seen: 0,
            value: initial,
            stuck_after,
        })
    }

    fn seq(region: &Region) -> Result<&AtomicU64, Error> {
        region.atomic_u64(layout::SEQ)
    }

    /// Whether the sequence moved since the last value read (a write under
    /// way counts): one load, no copy.
    pub(super) fn has_changed(&self, region: &Region) -> Result<bool, Error> {
        Ok(Self::seq(region)?.load(Ordering::Relaxed) != self.seen)
    }

    /// One seqlock read: the sequence, a copy of the payload with relaxed
    /// atomic word loads (`Region::read_bytes`: never a data race, never a
    /// reference into the peer's memory), the sequence again.
    pub(super) fn attempt(&self, region: &Region) -> Result<Attempt<T>, Error> {
        let seq = Self::seq(region)?;
        let begun = match protocol::read_begin(seq) {
            Ok(s) => s,
            Err(odd) => return Ok(Attempt::Busy(odd, odd)),
        };
        let mut value = T::zeroed();
        region.read_bytes(layout::PAYLOAD, bytemuck::bytes_of_mut(&mut value))?;
        match protocol::read_end(seq, begun) {
            Ok(()) => Ok(Attempt::Whole(begun, value)),
            Err(now) => Ok(Attempt::Busy(begun, now)),
        }
    }

    /// Keeps a value read as the current one; `true` if it is new.
    pub(super) fn accept(&mut self, seq: u64, value: T) -> bool {
        let new = seq != self.seen;
        self.seen = seq;
        self.value = value;
        new
    }

    /// Reads the latest whole value now (bounded, blocking) and keeps it.
    pub(super) fn update(&mut self, region: &Region) -> Result<&T, Error> {
        let (seq, value) = self.read_blocking(region)?;
        self.accept(seq, value);
        Ok(&self.value)
    }

    /// Reads the value if the sequence moved (bounded, blocking); `true`
    /// if it is new.
    pub(super) fn take_new(&mut self, region: &Region) -> Result<bool, Error> {
        if !self.has_changed(region)? {
            return Ok(false);
        }
        let (seq, value) = self.read_blocking(region)?;
        Ok(self.accept(seq, value))
    }

    /// A bounded blocking read: spins, yielding the thread every
    /// [`SPINS`] attempts, until a whole value or the bound.
    pub(super) fn read_blocking(&self, region: &Region) -> Result<(u64, T), Error> {
        let mut retry = Retry::new(self.stuck_after);
        loop {
            match self.attempt(region)? {
                Attempt::Whole(seq, value) => return Ok((seq, value)),
                Attempt::Busy(a, b) => {
                    if retry.failed(a, b)? {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    }
}

/// The bound of a read: attempts and time.
pub(super) struct Retry {
    start: Instant,
    bound: Duration,
    attempts: u32,
    /// Every failed attempt saw an odd sequence, the same one.
    stuck_at: Option<u64>,
}

impl Retry {
    pub(super) fn new(bound: Duration) -> Self {
        Retry {
            start: Instant::now(),
            bound,
            attempts: 0,
            stuck_at: None,
        }
    }

    /// Counts a failed attempt that saw sequence `a` before its copy and
    /// `b` after; `Ok(true)` every [`SPINS`] attempts (time to yield),
    /// [`Error::Stuck`] once the bound has passed.
    pub(super) fn failed(&mut self, a: u64, b: u64) -> Result<bool, Error> {
        let odd = a == b && a & 1 == 1;
        self.stuck_at = if odd && (self.attempts == 0 || self.stuck_at == Some(a)) {
            Some(a)
        } else {
            None
        };
        self.attempts += 1;
        if self.attempts % SPINS != 0 {
            return Ok(false);
        }
        let waited = self.start.elapsed();
        if waited < self.bound {
            return Ok(true);
        }
        let reason = match self.stuck_at {
            Some(s) => format!(
                "the sequence stayed odd ({s}: a write under way) for {waited:?}, {} reads: \
                 the writer stopped, or died, in the middle of a write",
                self.attempts
            ),
            None => format!(
                "the sequence changed during each of {} reads for {waited:?} (last {a} then \
                 {b}): the writer rewrites the value faster than it can be copied, or \
                 scribbles the sequence",
                self.attempts
            ),
        };
        Err(Error::Stuck { reason })
    }
}

/// What a wait that failed with `e` returns: a new value read after it
/// (`last`: the producer published it before it left), else the error.
pub(super) fn after_failed_wait(last: Result<bool, Error>, e: io::Error) -> Result<bool, Error> {
    match last {
        Ok(true) => Ok(true),
        _ => Err(from_io("waiting for the watch's tripwire", e)),
    }
}

/// The crate's error inside an `io::Error` from the tripwire (`Closed`,
/// `PeerDied`, `NotShared`, ...), else the `io::Error` as [`Error::Io`].
pub(super) fn from_io(op: &'static str, e: io::Error) -> Error {
    if !e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return Error::io(op, e);
    }
    let kind = e.kind();
    match e.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(ours)) => *ours,
        _ => Error::io(op, kind), // not reached: checked above
    }
}

/// A Receiver's closed bit, set when it is dropped in the process that
/// created it (a forked child's copy leaves the watch open): the Sender's
/// next send fails with [`Error::Closed`]. Apart from the Receivers so
/// that `into_async` can move their fields.
#[derive(Debug)]
pub(super) struct CloseOnDrop {
    region: Region,
    pid: u32,
}

impl CloseOnDrop {
    pub(super) fn new(region: &Region) -> Self {
        CloseOnDrop {
            region: region.clone(),
            pid: std::process::id(),
        }
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if self.pid == std::process::id() {
            if let Ok(state) = self.region.atomic_u64(layout::RX_STATE) {
                state.fetch_or(RX_CLOSED, Ordering::Relaxed);
            }
        }
    }
}

/// The Receiver's closed bit in its state word.
pub(super) const RX_CLOSED: u64 = 1;

/// A watch has one writer: a second share is refused.
pub(super) fn check_unshared(shared: bool) -> Result<(), Error> {
    if shared {
        return Err(Error::Handshake {
            reason: "this watch was already shared: a watch has one writer (a second would \
                     tear values)"
                .into(),
        });
    }
    Ok(())
}
