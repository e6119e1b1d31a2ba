//! A latest value between two processes, in the style of
//! `tokio::sync::watch`: the producer [`Sender::send`]s whole values of a
//! `T:` [`Pod`], the consumer waits for a change
//! (`Receiver::changed().await` with feature `tokio`, or
//! [`blocking::Receiver::wait`]) and
//! reads a copy that was written whole. On top of a tripwire, through its
//! public API only: [`channel`]`(initial)` builds the consumer's end, which
//! [`share`](blocking::Receiver::share)s it; the producer's
//! [`Sender::connect`] attaches.
//!
//! # How it works
//!
//! The tripwire's region holds a seqlock: a sequence word, even while the
//! value is whole and odd while it is being written, then the value. The
//! Sender makes the sequence odd, writes the value, makes it even again
//! and, on `Doorbell`, rings; its stores trip the wire on the other
//! backends. The Receiver, woken by the trip, reads the sequence, copies
//! the value, and reads the sequence again: the copy is whole if the
//! sequence did not move (and was even). Otherwise it tries again, a
//! bounded number of times for a bounded time ([`Builder::stuck_after`],
//! 100 ms by default).
//!
//! # What is promised, and what is not
//!
//! - A value handed out was written whole (never torn), by a writer that
//!   follows the protocol.
//! - Each `changed()` stands for at least one new value, possibly more:
//!   writes between two looks coalesce, and only the latest is read (as
//!   tokio's watch).
//! - A writer that stops in the middle of a write (the sequence stays
//!   odd), or one that changes the sequence during every read (too fast,
//!   or hostile), costs a read at most its bound: then [`Error::Stuck`],
//!   never a hang and never a torn value.
//! - A writer that rewrites the value without a pause, leaving no gap as
//!   long as a copy between two writes, can starve the reader: every copy
//!   overlaps a write, and after the bound that is `Error::Stuck` too. A
//!   seqlock favours its writer; a writer that updates a status between
//!   pieces of work leaves gaps of microseconds, and a 256-byte copy takes
//!   tens of nanoseconds in a release build.
//! - One writer: a watch is shared once. Two writers would break the
//!   seqlock (a second [`share`](blocking::Receiver::share) is refused).
//!
//! # A peer you do not trust
//!
//! The value is copied out of shared memory with relaxed atomic loads
//! (never a reference into it, never a data race), and any bytes are a
//! valid `T` (`Pod`). The layout (size and alignment of `T`, a
//! [type tag](crate::ring::type_tag)) is checked when the Sender attaches
//! and kept locally by both ends.
//!
//! # Close and death
//!
//! When the Sender is dropped, the Receiver's next `changed()` reports
//! the last value first, then [`Error::Closed`]; if the Sender's process
//! died, [`Error::PeerDied`]. A dropped Receiver sets a bit the Sender
//! reads on every send: the next [`send`](Sender::send) fails with
//! [`Error::Closed`]; a dead Receiver is learned by
//! [`Sender::is_closed`] (and by `send` on `Doorbell`, whose ring fails).
//!
//! # An unmodified writer
//!
//! On `Kernel` and `Poll` any store trips the wire, so a writer that
//! knows nothing of this crate can feed a watch: it maps
//! [`producer_fd`](blocking::Receiver::producer_fd) (`MAP_SHARED`,
//! read-write, the whole [`len`](blocking::Receiver::len) at offset 0)
//! and follows this layout and protocol (all little-endian; C shown):
//!
//! ```text
//! offset  field
//!   0     magic: u64 = "MFDTWTC1" (bytes)      written by the Receiver
//!   8     version: u32 = 1                     at creation; check them
//!  12     size_of::<T>(): u32
//!  16     align_of::<T>(): u32
//!  20     zero: u32
//!  24     type tag: u64
//!  32     receiver state: u64 (bit 0: closed)  written by the Receiver
//!  64     sequence: u64                        written by the writer only
//!  72     value: size_of::<T>() bytes, padded to a multiple of 8
//!
//! to write a value (the writer's own copy of the sequence, s, is even):
//!   __atomic_store_n(&seq, s + 1, __ATOMIC_RELAXED);
//!   __atomic_thread_fence(__ATOMIC_RELEASE);
//!   store the value's bytes, each 8-byte word with
//!     __atomic_store_n(&word, w, __ATOMIC_RELAXED);
//!   __atomic_store_n(&seq, s + 2, __ATOMIC_RELEASE);
//!   s += 2;
//! ```
//!
//! `tests/unmodified/writer.c` (its `watch` mode) is such a writer. It has
//! no handshake socket, so a close or death is not reported.
//!
//! # Examples
//!
//! ```
//! # #[cfg(feature = "tokio")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::os::unix::net::UnixStream;
//! use memfd_tripwire::{Backend, watch};
//!
//! let (ours, theirs) = UnixStream::pair()?;
//! // The Sender normally lives in another process.
//! let sender = std::thread::spawn(move || -> Result<(), memfd_tripwire::Error> {
//!     let mut tx = watch::Sender::<[u64; 4]>::connect(theirs)?;
//!     for i in 1..=100 {
//!         tx.send(&[i; 4])?;
//!     }
//!     Ok(())
//! });
//! let mut rx = watch::channel([0u64; 4]).backend(Backend::Doorbell).create_async()?;
//! rx.share(ours).await?;
//! while rx.changed().await.is_ok() {
//!     let [a, b, c, d] = *rx.borrow();
//!     assert!(a == b && b == c && c == d); // whole, never torn
//! }
//! assert_eq!(*rx.borrow(), [100; 4]); // the last value, then Closed
//! sender.join().unwrap()?;
//! # Ok(()) }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```

// `core.rs`: the bounded seqlock read both Receivers share; `blocking.rs`
// and `tokio.rs` the two Receivers (over `blocking::Tripwire` and the async
// `Tripwire`); `sender.rs` the Sender; `protocol.rs` every atomic step
// (checked by loom); `layout.rs` where everything lives.
pub mod blocking;
mod core;
pub(crate) mod layout;
pub(crate) mod protocol;
mod sender;
#[cfg(feature = "tokio")]
mod tokio;

use std::fmt;
use std::time::Duration;

use bytemuck::Pod;

#[cfg(feature = "tokio")]
pub use self::tokio::Receiver;
pub use sender::Sender;

use crate::{Backend, Error};

/// Starts building a watch of `T` whose value is `initial` until the
/// Sender's first send.
///
/// ```
/// use memfd_tripwire::{Backend, watch};
/// let rx = watch::channel(7u64).backend(Backend::Poll).create().unwrap();
/// assert_eq!(*rx.borrow(), 7);
/// ```
pub fn channel<T: Pod>(initial: T) -> Builder<T> {
    Builder {
        initial,
        backend: Backend::Auto,
        tag: crate::ring::type_tag::<T>(),
        poll_interval: Duration::from_millis(1),
        stuck_after: Duration::from_millis(100),
    }
}

/// Configures a watch's Receiver; from [`channel`].
///
/// ```
/// use std::time::Duration;
/// use memfd_tripwire::{Backend, watch};
/// let rx = watch::channel([0u8; 32])
///     .backend(Backend::Doorbell)
///     .type_tag(0x5eed)
///     .stuck_after(Duration::from_millis(10))
///     .create()
///     .unwrap();
/// ```
#[must_use = "a builder does nothing until .create()"]
pub struct Builder<T> {
    initial: T,
    backend: Backend,
    tag: u64,
    poll_interval: Duration,
    stuck_after: Duration,
}

impl<T> fmt::Debug for Builder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("backend", &self.backend)
            .field("tag", &self.tag)
            .field("poll_interval", &self.poll_interval)
            .field("stuck_after", &self.stuck_after)
            .finish_non_exhaustive()
    }
}

impl<T: Pod> Builder<T> {
    /// The tripwire backend ([`Backend::Auto`] by default;
    /// [`Backend::Unmodified`] for a writer that only maps
    /// [`producer_fd`](blocking::Receiver::producer_fd)).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, watch};
    /// let b = watch::channel(0u32).backend(Backend::Doorbell);
    /// ```
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The `u64` naming the value's type: a Sender that connects with
    /// another is refused ([`Error::LayoutMismatch`]). Default:
    /// [`ring::type_tag::<T>()`](crate::ring::type_tag), which
    /// [`Sender::connect`] uses too; a Sender of a tag set here connects
    /// with [`Sender::connect_with_tag`].
    ///
    /// ```
    /// # use memfd_tripwire::watch;
    /// let b = watch::channel(0u64).type_tag(u64::from_le_bytes(*b"STATUS\0\0"));
    /// ```
    pub fn type_tag(mut self, tag: u64) -> Self {
        self.tag = tag;
        self
    }

    /// The interval of [`Backend::Poll`] (default 1 ms).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, watch};
    /// # use std::time::Duration;
    /// let b = watch::channel(0u64).backend(Backend::Poll).poll_interval(Duration::from_micros(200));
    /// ```
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long a read retries, while the writer is in the middle of a
    /// write or the sequence moves during each copy, before it gives up
    /// with [`Error::Stuck`] (default 100 ms). A whole value normally takes
    /// one attempt; a writer preempted in the middle of a write delays a
    /// read by up to its time off the CPU, so keep this well above a
    /// scheduler's time slice.
    ///
    /// ```
    /// # use memfd_tripwire::watch;
    /// # use std::time::Duration;
    /// let b = watch::channel(0u64).stuck_after(Duration::from_millis(20));
    /// ```
    pub fn stuck_after(mut self, bound: Duration) -> Self {
        self.stuck_after = bound;
        self
    }

    /// Creates the watch's memory, its tripwire and the blocking
    /// Receiver, holding the initial value.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming `"T"` for a zero-sized `T` or one
    /// of 4 GiB or more; otherwise as
    /// [`blocking::Builder::create`](crate::blocking::Builder::create).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, watch};
    /// let rx = watch::channel([1u16; 3]).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(*rx.borrow(), [1; 3]);
    /// ```
    pub fn create(self) -> Result<blocking::Receiver<T>, Error> {
        let size = std::mem::size_of::<T>();
        if size == 0 || u32::try_from(size).is_err() {
            return Err(Error::invalid(
                "T",
                format!("{} ({size} bytes)", std::any::type_name::<T>()),
                format!(
                    "a value of 1 to {} bytes (a zero-sized type carries nothing)",
                    u32::MAX
                ),
            ));
        }
        let header = layout::Header::of::<T>(self.tag);
        let tw = crate::blocking::Tripwire::builder(header.region_len())
            .backend(self.backend)
            .poll_interval(self.poll_interval)
            .create()?;
        let core = core::Core::create(tw.region(), header, self.initial, self.stuck_after)?;
        Ok(blocking::Receiver::new(tw, core))
    }

    /// [`create`](Builder::create), then the async Receiver, registered
    /// with the current tokio runtime.
    ///
    /// # Errors
    ///
    /// As [`create`](Builder::create); [`Error::Io`] outside a tokio
    /// runtime or if registration fails.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), memfd_tripwire::Error> {
    /// # use memfd_tripwire::{Backend, watch};
    /// let rx = watch::channel(0u32).backend(Backend::Doorbell).create_async()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tokio")]
    pub fn create_async(self) -> Result<Receiver<T>, Error> {
        self.create()?.into_async()
    }
}
