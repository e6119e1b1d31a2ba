//! A typed ring between two processes, on top of a tripwire:
//! [`SharedRing`]`::<T>::builder(capacity)` makes the [`Receiver`];
//! [`Receiver::share`] hands the ring to a peer, whose [`Sender::connect`]
//! attaches. In the style of `tokio::sync::mpsc`, but single-producer,
//! single-consumer, and across processes. Variable-length messages (byte
//! frames, filled in place) go through [`frames`], on the same machinery.
//!
//! # How it works
//!
//! The Sender writes messages into the slots (a sealed memfd) and then the
//! head index, in the tripwire's memory: only that store needs to trip the
//! wire, so a re-arm costs a Sender on `Kernel` or `Userfault` at most one
//! trapped store, however many slot pages it writes. The Receiver's tail
//! index lives in a third sealed memfd, so neither side ever writes what the
//! other writes, and the Receiver's writes never trip its own wire.
//!
//! The Receiver busy-polls the head for a budget ([`Builder::spin`]; by
//! default the measured price of one sleep on this host)
//! before it re-arms the wire and sleeps, like NAPI: under load the wire
//! stays tripped, so the Sender neither faults (`Kernel`, `Userfault`) nor
//! rings (`Doorbell`; the ring calls `notify()` itself). A full ring makes
//! a Sender poll the tail for the price of a sleep, then wait on a bell (a
//! unix socket pair) the Receiver rings when it frees space: it never spins
//! forever or drops.
//!
//! # In async code
//!
//! `recv().await` and `send().await` never block the thread (on `Userfault`
//! the Receiver's ACK stays in flight while it waits for the Sender's
//! agent), and spend tokio's coop budget per message, as
//! `tokio::sync::mpsc` does. The handshakes have async twins that never
//! block the thread either: `Receiver::share_async` and
//! `Sender::connect_async` (feature `tokio`; up to 10 s per frame against a
//! silent peer, as the blocking `share` and `connect`), as the example
//! below does.
//!
//! # Batches and in-place sends
//!
//! With feature `tokio` the [`Sender`] is a `futures::Sink` whose flush
//! means "published": `start_send` writes values into their slots, and
//! they are published together (one head store, one `notify()`) by a
//! flush, by any other send, before a wait for space, or after a quarter
//! ring, so `stream.forward(tx)` batches as [`Sender::blocking_send_many`]
//! does. For a large `T`, [`Sender::try_reserve`],
//! [`Sender::blocking_reserve`] and `reserve().await` hand out a
//! [`SendSlot`] to fill in place, field by field (copies at offsets, never
//! a reference into the shared slot), published by
//! [`commit`](SendSlot::commit) alone.
//!
//! # A peer you do not trust
//!
//! `T` is [`bytemuck::Pod`]: values are copied in and out, any bytes are a
//! valid `T`, and no reference into shared memory is handed out. Indices
//! read from the peer are copied once and validated; an impossible one gives
//! [`Error::Corrupt`], never a panic, an out-of-bounds access or an endless
//! loop. The layout (size and alignment of `T`, capacity, a type tag) is
//! checked when the Sender attaches and kept locally.
//!
//! # Peer death
//!
//! The Receiver drains what was published, then ends with `Ok(None)` if the
//! Sender was dropped (a clean close) or `Err(Error::PeerDied)` if its
//! process died (killed, crashed, or a Sender dropped while its thread
//! panics). A Receiver that is dropped sets a bit the Sender reads on every
//! send: its next send fails with [`Error::Closed`] / [`TrySendError::Closed`].
//! A Receiver's death is learned from its hang-up: a process-wide thread
//! watches each Sender's handshake socket and sets a flag the Sender reads
//! on every send, so the first send after that thread saw the hang-up
//! (microseconds after the death) fails with [`Error::PeerDied`]; a send
//! made in between still succeeds into a ring no one reads (as a write to a
//! socket whose peer just died can). A Sender waiting for space sees the
//! hang-up directly.
//!
//! # Examples
//!
//! ```
//! # #[cfg(feature = "tokio")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::os::unix::net::UnixStream;
//! use memfd_tripwire::Backend;
//! use memfd_tripwire::ring::{Sender, SharedRing};
//!
//! let (ours, theirs) = UnixStream::pair()?;
//! // The Sender normally lives in another process; this one is blocking.
//! let sender = std::thread::spawn(move || -> Result<(), memfd_tripwire::Error> {
//!     let mut tx = Sender::<[u64; 2]>::connect(theirs)?;
//!     for i in 0..100 {
//!         tx.blocking_send([i, i * i]).map_err(|e| e.into_error())?;
//!     }
//!     Ok(())
//! });
//! let mut rx = SharedRing::<[u64; 2]>::builder(64)
//!     .backend(Backend::Doorbell)
//!     .create()?;
//! // The async handshake: the runtime's thread is free meanwhile.
//! rx.share_async(ours).await?;
//! let mut n = 0;
//! while let Some([i, sq]) = rx.recv().await? {
//!     assert_eq!((i, sq), (n, n * n));
//!     n += 1;
//! }
//! assert_eq!(n, 100); // Ok(None): the sender was dropped after its last send
//! sender.join().unwrap()?;
//! # Ok(()) }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```

// Laid out as tokio's mpsc: `receiver.rs` and `sender.rs` are the public
// API; `core.rs` the memory and index logic of both ends; `step.rs` the
// Receiver's non-blocking step; `blocking.rs`, `tokio.rs` and `mio.rs` the
// drivers that wait; `error.rs` the errors; `protocol.rs` every atomic step
// (checked by loom); `layout.rs` where everything lives; `spin.rs` the spin
// budget and the one spin loop; `slot.rs` a reserved slot to fill in
// place.
mod blocking;
mod core;
mod error;
pub mod frames;
pub(crate) mod layout;
#[cfg(feature = "mio")]
mod mio;
pub(crate) mod protocol;
mod receiver;
#[cfg(feature = "tokio")]
mod registration;
mod sender;
mod slot;
mod spin;
mod step;
#[cfg(feature = "tokio")]
mod tokio;

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use bytemuck::Pod;

pub use error::{SendError, SendManyError, TryRecvError, TrySendError};
pub use receiver::{Receiver, RingStats};
pub use sender::Sender;
pub use slot::SendSlot;

use crate::{Backend, Error};

/// The default type tag of a ring of `T`: a hash of `T`'s size, alignment
/// and [`type_name`](std::any::type_name), so a Sender of another type is
/// refused ([`Error::LayoutMismatch`]) even when sizes agree.
///
/// Both ends compute it from `T`, so neither has to be told. Type names
/// are the compiler's, not a stable format: two programs that name the type
/// differently (another crate path, another compiler version) disagree.
/// Set one tag on both ends then ([`Builder::type_tag`],
/// [`Sender::connect_with_tag`]).
///
/// ```
/// use memfd_tripwire::ring::type_tag;
/// assert_eq!(type_tag::<[u8; 8]>(), type_tag::<[u8; 8]>());
/// assert_ne!(type_tag::<[u8; 8]>(), type_tag::<u64>());
/// ```
pub fn type_tag<T>() -> u64 {
    // FNV-1a, 64 bits: small, fixed, and the same in every process.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let size = std::mem::size_of::<T>() as u64;
    let align = std::mem::align_of::<T>() as u64;
    let name = std::any::type_name::<T>().as_bytes();
    for &b in size
        .to_le_bytes()
        .iter()
        .chain(&align.to_le_bytes())
        .chain(name)
    {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The entry point: `SharedRing::<T>::builder(capacity)`.
///
/// ```
/// use memfd_tripwire::{Backend, ring::SharedRing};
/// let rx = SharedRing::<u64>::builder(1024).backend(Backend::Poll).create().unwrap();
/// assert_eq!(rx.capacity(), 1024);
/// ```
pub struct SharedRing<T>(PhantomData<fn() -> T>);

impl<T> fmt::Debug for SharedRing<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedRing")
    }
}

impl<T: Pod> SharedRing<T> {
    /// Starts building a ring of `capacity` messages (a power of two from 1
    /// to 2^24; checked by [`create`](Builder::create)).
    ///
    /// ```
    /// # use memfd_tripwire::ring::SharedRing;
    /// let builder = SharedRing::<[u8; 64]>::builder(4096);
    /// ```
    pub fn builder(capacity: usize) -> Builder<T> {
        Builder {
            capacity,
            backend: Backend::Auto,
            tag: type_tag::<T>(),
            spin: None,
            poll_interval: Duration::from_millis(1),
            protocol: layout::FRAME_TAG,
            _t: PhantomData,
        }
    }
}

/// Configures a ring's [`Receiver`]; from [`SharedRing::builder`].
///
/// ```
/// use std::time::Duration;
/// use memfd_tripwire::{Backend, ring::SharedRing};
/// let rx = SharedRing::<u32>::builder(256)
///     .backend(Backend::Doorbell)
///     .type_tag(0x5eed)
///     .spin(Duration::ZERO)
///     .create()
///     .unwrap();
/// ```
#[must_use = "a builder does nothing until .create()"]
pub struct Builder<T> {
    capacity: usize,
    backend: Backend,
    tag: u64,
    /// `None`: adaptive.
    spin: Option<Duration>,
    poll_interval: Duration,
    /// What the handshake's offer names: a ring, or byte frames.
    pub(crate) protocol: [u8; 8],
    _t: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Builder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("capacity", &self.capacity)
            .field("backend", &self.backend)
            .field("tag", &self.tag)
            .field("spin", &self.spin)
            .finish()
    }
}

impl<T: Pod> Builder<T> {
    /// The tripwire backend ([`Backend::Auto`] by default).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::SharedRing};
    /// let b = SharedRing::<u8>::builder(8).backend(Backend::Doorbell);
    /// ```
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The `u64` naming the message type: a Sender that connects with
    /// another tag is refused ([`Error::LayoutMismatch`]). Default:
    /// [`type_tag::<T>()`](type_tag), which [`Sender::connect`] uses too;
    /// a Sender of a tag set here connects with
    /// [`Sender::connect_with_tag`].
    ///
    /// ```
    /// # use memfd_tripwire::ring::SharedRing;
    /// let b = SharedRing::<u64>::builder(8).type_tag(u64::from_le_bytes(*b"PRICE\0\0\0"));
    /// ```
    pub fn type_tag(mut self, tag: u64) -> Self {
        self.tag = tag;
        self
    }

    /// How long the Receiver busy-polls for the next message before it
    /// re-arms the wire and sleeps: a fixed budget (zero sleeps at once).
    /// Spinning turns a wake-up of tens of µs into a cache-line transfer,
    /// and keeps the Sender from faulting or ringing under load.
    ///
    /// By default the budget adapts to the host: the price of one sleep
    /// (the Receiver's measured ACK cost plus this host's measured one-way
    /// wake-up latency, plus the interval on `Poll` and `UserfaultAsync`,
    /// which a sleeping Receiver waits out; 1 to 250 µs), so that a host where wake-ups or
    /// traps cost more spins longer instead of re-arming on every gap.
    ///
    /// ```
    /// # use memfd_tripwire::ring::SharedRing;
    /// # use std::time::Duration;
    /// let b = SharedRing::<u64>::builder(8).spin(Duration::from_micros(20));
    /// ```
    pub fn spin(mut self, budget: Duration) -> Self {
        self.spin = Some(budget);
        self
    }

    /// The interval of [`Backend::Poll`] (default 1 ms).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::SharedRing};
    /// # use std::time::Duration;
    /// let b = SharedRing::<u64>::builder(8).backend(Backend::Poll).poll_interval(Duration::from_micros(200));
    /// ```
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Creates the ring's memory, its tripwire and the Receiver.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming `"capacity"` for a capacity that is
    /// not a power of two from 1 to 2^24, or `"T"` for a zero-sized `T` or
    /// one of 4 GiB or more (the header keeps sizes in `u32`); naming
    /// `"poll_interval"` for an interval [`Backend::Poll`] or
    /// [`Backend::UserfaultAsync`] refuses (as
    /// [`blocking::Builder::poll_interval`](crate::blocking::Builder::poll_interval));
    /// otherwise as
    /// [`blocking::Builder::create`](crate::blocking::Builder::create). The
    /// slots take `capacity × size_of::<T>()` bytes of shared memory
    /// (page-rounded, mapped lazily); more than the kernel maps is
    /// [`Error::Io`].
    ///
    /// ```
    /// # use memfd_tripwire::{Error, ring::SharedRing};
    /// let err = SharedRing::<u64>::builder(100).create().unwrap_err(); // not a power of two
    /// assert!(matches!(&err, Error::InvalidArgument(a) if a.what() == "capacity"), "{err}");
    /// ```
    pub fn create(self) -> Result<Receiver<T>, Error> {
        self.check()?;
        Receiver::create(self)
    }

    /// The builder's own arguments (the tripwire checks its own).
    fn check(&self) -> Result<(), Error> {
        let size = std::mem::size_of::<T>();
        let align = std::mem::align_of::<T>();
        if size == 0 || u32::try_from(size).is_err() || u32::try_from(align).is_err() {
            return Err(Error::invalid(
                "T",
                format!(
                    "{} ({size} bytes, aligned to {align})",
                    std::any::type_name::<T>()
                ),
                format!(
                    "an element of 1 to {} bytes (a zero-sized type carries nothing)",
                    u32::MAX
                ),
            ));
        }
        let capacity = u32::try_from(self.capacity).unwrap_or(0);
        if layout::check_capacity(capacity).is_err() {
            return Err(Error::invalid(
                "capacity",
                self.capacity.to_string(),
                format!("a power of two from 1 to {} (2^24)", layout::MAX_CAPACITY),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
