//! A typed ring between two processes, on top of a tripwire:
//! [`SharedRing`]`::<T>::builder(capacity)` makes the [`Receiver`];
//! [`Receiver::share`] hands the ring to a peer, whose [`Sender::connect`]
//! attaches. In the style of `tokio::sync::mpsc`, but single-producer,
//! single-consumer, and across processes.
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
//! a blocking Sender poll the tail for 5 µs, then wait on a bell (a unix socket pair) the
//! Receiver rings when it frees space: it never spins forever or drops.
//!
//! # A peer you do not trust
//!
//! `T` is [`bytemuck::Pod`]: values are copied in and out, any bytes are a
//! valid `T`, and no reference into shared memory is handed out. Indices
//! read from the peer are copied once and validated; an impossible one gives
//! [`Error::Corrupt`], never a panic, an out-of-bounds access or an endless
//! loop. The layout (size and alignment of `T`, capacity, a caller-chosen
//! type tag) is checked when the Sender attaches and kept locally.
//!
//! # Peer death
//!
//! The Receiver drains what was published, then ends with `Ok(None)` if the
//! Sender was dropped (a clean close) or `Err(Error::PeerDied)` if its
//! process died. A Sender learns that the Receiver is gone when it has to
//! wait for space: [`SendError`] / [`TrySendError::Closed`].
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::os::unix::net::UnixStream;
//! use memfd_tripwire::Backend;
//! use memfd_tripwire::ring::{Sender, SharedRing};
//!
//! let (ours, theirs) = UnixStream::pair()?;
//! // The Sender normally lives in another process.
//! let sender = std::thread::spawn(move || -> Result<(), memfd_tripwire::Error> {
//!     let mut tx = Sender::<[u64; 2]>::connect(theirs, 7)?;
//!     for i in 0..100 {
//!         tx.blocking_send([i, i * i]).map_err(|e| e.into_error())?;
//!     }
//!     Ok(())
//! });
//! let mut rx = SharedRing::<[u64; 2]>::builder(64)
//!     .backend(Backend::Doorbell)
//!     .type_tag(7)
//!     .create()?;
//! rx.share(ours)?;
//! let mut n = 0;
//! while let Some([i, sq]) = rx.recv().await? {
//!     assert_eq!((i, sq), (n, n * n));
//!     n += 1;
//! }
//! assert_eq!(n, 100); // Ok(None): the sender was dropped after its last send
//! sender.join().unwrap()?;
//! # Ok(()) }
//! ```

mod layout;
pub(crate) mod protocol;
mod receiver;
mod sender;
mod spin;

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use bytemuck::Pod;

pub use receiver::{Receiver, RingStats};
pub use sender::Sender;

use crate::{Backend, Error};

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
    /// Starts building a ring of `capacity` messages (a power of two).
    ///
    /// ```
    /// # use memfd_tripwire::ring::SharedRing;
    /// let builder = SharedRing::<[u8; 64]>::builder(4096);
    /// ```
    pub fn builder(capacity: usize) -> Builder<T> {
        Builder {
            capacity,
            backend: Backend::Auto,
            tag: 0,
            spin: None,
            poll_interval: Duration::from_millis(1),
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

    /// A caller-chosen `u64` naming the message type: a Sender that
    /// connects with another tag is refused ([`Error::LayoutMismatch`]).
    /// Default 0.
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
    /// [`Error::LayoutMismatch`] for a capacity that is not a power of two
    /// (or is over 2^24) or a zero-sized `T`; otherwise as
    /// [`blocking::Builder::create`](crate::blocking::Builder::create).
    ///
    /// ```
    /// # use memfd_tripwire::ring::SharedRing;
    /// assert!(SharedRing::<u64>::builder(100).create().is_err()); // not a power of two
    /// ```
    pub fn create(self) -> Result<Receiver<T>, Error> {
        Receiver::create(self)
    }
}

/// Why [`Sender::try_send`] did not send; carries the value back.
pub enum TrySendError<T> {
    /// The ring is full: the Receiver has not caught up.
    Full(T),
    /// The Receiver is gone.
    Closed(T),
    /// Something else failed (a corrupt index from the peer, an OS error).
    Failed(T, Error),
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Closed(_) => f.write_str("Closed(..)"),
            TrySendError::Failed(_, e) => write!(f, "Failed(.., {e:?})"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("the ring is full"),
            TrySendError::Closed(_) => f.write_str("the receiver is gone"),
            TrySendError::Failed(_, e) => write!(f, "send failed: {e}"),
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {}

/// Why [`Sender::send`] / [`Sender::blocking_send`] failed; carries the
/// value back.
pub struct SendError<T> {
    value: T,
    error: Error,
}

impl<T> SendError<T> {
    /// The value that was not sent.
    ///
    /// ```
    /// # fn f(e: memfd_tripwire::ring::SendError<u64>) {
    /// let v: u64 = e.into_inner();
    /// # }
    /// ```
    pub fn into_inner(self) -> T {
        self.value
    }

    /// Why: [`Error::PeerDied`] when the Receiver is gone.
    ///
    /// ```
    /// # fn f(e: memfd_tripwire::ring::SendError<u64>) {
    /// eprintln!("not sent: {}", e.error());
    /// # }
    /// ```
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The error, dropping the value.
    ///
    /// ```
    /// # fn f(e: memfd_tripwire::ring::SendError<u64>) -> memfd_tripwire::Error {
    /// e.into_error()
    /// # }
    /// ```
    pub fn into_error(self) -> Error {
        self.error
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError")
            .field("error", &self.error)
            .finish()
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "send failed: {}", self.error)
    }
}

impl<T> std::error::Error for SendError<T> {}

#[cfg(test)]
mod tests;
