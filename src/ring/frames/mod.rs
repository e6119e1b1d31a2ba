//! Byte frames between two processes: variable-length messages on the
//! typed ring's memory, its handshake, its waits and its close and death.
//! [`SharedFrames::builder`]`(bytes)` makes the [`FrameReceiver`];
//! [`FrameReceiver::share`] hands it to a peer, whose
//! [`FrameSender::connect`] attaches.
//!
//! # How it works
//!
//! A ring of 8-byte words (the typed ring's slots become a byte area; the
//! head and tail count words). A frame is a length word (`u64`, the payload
//! length in bytes) and its payload, padded to a word. The Sender reserves
//! a contiguous [`FrameGrant`], fills it in place (straight into shared
//! memory) and commits it: one head store and one `notify()` publish it.
//! A frame never straddles the end of the area: one that would is placed
//! at offset 0, after a skip marker (`u64::MAX`) covering the rest. A grant
//! dropped without a commit publishes nothing.
//!
//! The Receiver copies each frame out into a caller's `Vec<u8>`: the Sender
//! may rewrite the bytes at any time, so no reference into shared memory is
//! handed out.
//!
//! Many small frames go faster in batches, at both ends: the Sender's
//! [`blocking_send_many`](FrameSender::blocking_send_many) (and
//! `send_many`) publishes once per 16 KiB of frames instead of once per
//! frame, as a `BufWriter` writes; the Receiver's
//! [`blocking_recv_many`](FrameReceiver::blocking_recv_many) (and
//! `recv_many`) copies what is published out in one piece into a
//! [`FrameBatch`] and checks its length words there. Everything else is the typed ring's (see [`ring`](super)):
//! the spin before a sleep, the tail published in batches, the waiting
//! flag and the space bell for backpressure, the async receive's coop
//! budget, the close and death reports.
//!
//! # Limits
//!
//! The capacity is a power of two from 16 bytes to 128 MiB. A frame may
//! take the whole area ([`FrameSender::max_frame`]: the capacity less one
//! length word); a larger one is refused at the Sender, which sends
//! nothing. A frame that needs the start of the area may first publish the
//! skip marker alone and wait for the Receiver to pass it: frames are never
//! lost or reordered by it.
//!
//! # A peer you do not trust
//!
//! Every length word is copied once and checked against where it lies and
//! how far the head is: too large, straddling the end, ending past the
//! head, a skip marker at offset 0 or past the head all give
//! [`Error::Corrupt`], never a panic, an over-read or an endless loop. (A
//! misaligned frame cannot be expressed: the indices count words.) The
//! handshake names its protocol: a [`FrameSender`] connecting to a typed
//! ring, or a typed [`Sender`](super::Sender) to frames, is refused as a
//! "wrong protocol" on both sides, at once.
//!
//! # Examples
//!
//! ```
//! # #[cfg(feature = "tokio")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::os::unix::net::UnixStream;
//! use memfd_tripwire::Backend;
//! use memfd_tripwire::ring::frames::{FrameSender, SharedFrames};
//!
//! let (ours, theirs) = UnixStream::pair()?;
//! // The Sender normally lives in another process; this one is blocking.
//! let sender = std::thread::spawn(move || -> Result<(), memfd_tripwire::Error> {
//!     let mut tx = FrameSender::connect(theirs)?;
//!     for i in 0..100 {
//!         tx.blocking_send(format!("line {i}").as_bytes())?;
//!     }
//!     Ok(())
//! });
//! let mut rx = SharedFrames::builder(4096).backend(Backend::Doorbell).create()?;
//! rx.share_async(ours).await?;
//! let mut buf = Vec::new();
//! let mut n = 0;
//! while let Some(len) = rx.recv(&mut buf).await? {
//!     assert_eq!(&buf[..len], format!("line {n}").as_bytes());
//!     n += 1;
//! }
//! assert_eq!(n, 100); // Ok(None): the sender was dropped after its last frame
//! sender.join().unwrap()?;
//! # Ok(()) }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```

mod batch;
mod receiver;
mod sender;
#[cfg(feature = "tokio")]
mod tokio;
pub(crate) mod walk;

use std::fmt;
use std::time::Duration;

pub use batch::{FrameBatch, Iter};
pub use receiver::FrameReceiver;
pub use sender::{FrameGrant, FrameSender};

use super::{Builder, SharedRing, layout};
use crate::{Backend, Error};

/// The type tag in the header of a ring of frames (the header's element is
/// the 8-byte word).
pub(crate) const TYPE_TAG: u64 = u64::from_le_bytes(*b"FRAMES\0\0");
/// The least capacity in bytes: a length word and one word of payload.
const MIN_BYTES: usize = 2 * walk::WORD;

/// The entry point: `SharedFrames::builder(bytes)`.
///
/// ```
/// use memfd_tripwire::{Backend, ring::frames::SharedFrames};
/// let rx = SharedFrames::builder(1 << 16).backend(Backend::Poll).create().unwrap();
/// assert_eq!(rx.capacity(), 65536);
/// ```
#[derive(Debug)]
pub struct SharedFrames(());

impl SharedFrames {
    /// Starts building a ring of `bytes` bytes of frames (a power of two
    /// from 16 to 2^27; checked by [`create`](FramesBuilder::create)).
    ///
    /// ```
    /// # use memfd_tripwire::ring::frames::SharedFrames;
    /// let builder = SharedFrames::builder(1 << 20);
    /// ```
    pub fn builder(bytes: usize) -> FramesBuilder {
        let mut ring = SharedRing::<u64>::builder(bytes / walk::WORD).type_tag(TYPE_TAG);
        ring.protocol = crate::handoff::FRAMES_TAG;
        FramesBuilder { bytes, ring }
    }
}

/// Configures a [`FrameReceiver`]; from [`SharedFrames::builder`].
///
/// ```
/// use std::time::Duration;
/// use memfd_tripwire::{Backend, ring::frames::SharedFrames};
/// let rx = SharedFrames::builder(4096)
///     .backend(Backend::Doorbell)
///     .spin(Duration::ZERO)
///     .create()
///     .unwrap();
/// ```
#[must_use = "a builder does nothing until .create()"]
pub struct FramesBuilder {
    bytes: usize,
    ring: Builder<u64>,
}

impl fmt::Debug for FramesBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FramesBuilder")
            .field("bytes", &self.bytes)
            .field("ring", &self.ring)
            .finish()
    }
}

impl FramesBuilder {
    /// The tripwire backend ([`Backend::Auto`] by default).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::frames::SharedFrames};
    /// let b = SharedFrames::builder(4096).backend(Backend::Doorbell);
    /// ```
    pub fn backend(mut self, backend: Backend) -> Self {
        self.ring = self.ring.backend(backend);
        self
    }

    /// How long the Receiver busy-polls for the next frame before it
    /// re-arms the wire and sleeps: as the typed ring's
    /// [`Builder::spin`](super::Builder::spin) (by default the measured
    /// price of one sleep on this host).
    ///
    /// ```
    /// # use memfd_tripwire::ring::frames::SharedFrames;
    /// # use std::time::Duration;
    /// let b = SharedFrames::builder(4096).spin(Duration::from_micros(20));
    /// ```
    pub fn spin(mut self, budget: Duration) -> Self {
        self.ring = self.ring.spin(budget);
        self
    }

    /// The interval of [`Backend::Poll`] (default 1 ms).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::frames::SharedFrames};
    /// # use std::time::Duration;
    /// let b = SharedFrames::builder(4096).backend(Backend::Poll).poll_interval(Duration::from_micros(200));
    /// ```
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.ring = self.ring.poll_interval(interval);
        self
    }

    /// Creates the ring's memory, its tripwire and the Receiver.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming `"bytes"` for a capacity that is
    /// not a power of two from 16 to 2^27 (128 MiB); otherwise as the
    /// typed ring's [`Builder::create`](super::Builder::create).
    ///
    /// ```
    /// # use memfd_tripwire::{Error, ring::frames::SharedFrames};
    /// let err = SharedFrames::builder(1000).create().unwrap_err(); // not a power of two
    /// assert!(matches!(&err, Error::InvalidArgument(a) if a.what() == "bytes"), "{err}");
    /// ```
    pub fn create(self) -> Result<FrameReceiver, Error> {
        let max = layout::MAX_CAPACITY as usize * walk::WORD;
        if !self.bytes.is_power_of_two() || !(MIN_BYTES..=max).contains(&self.bytes) {
            return Err(Error::invalid(
                "bytes",
                self.bytes.to_string(),
                format!("a power of two from {MIN_BYTES} to {max} (2^27)"),
            ));
        }
        FrameReceiver::create(self.ring)
    }
}

/// Why [`FrameSender::try_reserve`] (or [`try_send`](FrameSender::try_send))
/// did not reserve.
///
/// ```
/// use memfd_tripwire::ring::frames::TryReserveError;
/// let e = TryReserveError::Full;
/// assert_eq!(e.to_string(), "the ring has no room for the frame now");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum TryReserveError {
    /// No room for the frame now: the Receiver has not caught up.
    Full,
    /// The Receiver is gone (dropped, or its process died).
    Closed,
    /// Something else failed: a frame larger than the ring
    /// ([`Error::InvalidArgument`], nothing sent), a corrupt index from the
    /// peer, an OS error.
    Failed(Error),
}

impl fmt::Display for TryReserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryReserveError::Full => f.write_str("the ring has no room for the frame now"),
            TryReserveError::Closed => f.write_str("the receiver is gone"),
            TryReserveError::Failed(e) => write!(f, "reserving a frame failed: {e}"),
        }
    }
}

impl std::error::Error for TryReserveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TryReserveError::Failed(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Error> for TryReserveError {
    fn from(e: Error) -> Self {
        match e {
            Error::Closed | Error::PeerDied => TryReserveError::Closed,
            e => TryReserveError::Failed(e),
        }
    }
}

#[cfg(test)]
mod hostile_batch_tests;
#[cfg(test)]
mod tests;
