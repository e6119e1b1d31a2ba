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
//! a Sender poll the tail for the price of a sleep, then wait on a bell (a
//! unix socket pair) the Receiver rings when it frees space: it never spins
//! forever or drops.
//!
//! # In async code
//!
//! `recv().await` and `send().await` never block the thread (on `Userfault`
//! the Receiver's ACK stays in flight while it waits for the Sender's
//! agent), and spend tokio's coop budget per message, as
//! `tokio::sync::mpsc` does. Sharing and connecting do block, for the
//! handshake (up to 10 s per frame against a silent peer): in async code,
//! run them on `tokio::task::spawn_blocking`, as the example below does.
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
//! // The Sender normally lives in another process; connecting blocks.
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
//! // Sharing blocks for the handshake: not on the runtime's thread.
//! let mut rx = tokio::task::spawn_blocking(move || rx.share(ours).map(|()| rx)).await??;
//! let mut n = 0;
//! while let Some([i, sq]) = rx.recv().await? {
//!     assert_eq!((i, sq), (n, n * n));
//!     n += 1;
//! }
//! assert_eq!(n, 100); // Ok(None): the sender was dropped after its last send
//! sender.join().unwrap()?;
//! # Ok(()) }
//! ```

pub(crate) mod layout;
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

/// Why [`Sender::try_send`] did not send; carries the value back.
pub enum TrySendError<T> {
    /// The ring is full: the Receiver has not caught up.
    Full(T),
    /// The Receiver is gone.
    Closed(T),
    /// Something else failed (a corrupt index from the peer, an OS error).
    Failed(T, Error),
}

impl<T> TrySendError<T> {
    /// The value that was not sent.
    ///
    /// ```
    /// # use memfd_tripwire::ring::TrySendError;
    /// assert_eq!(TrySendError::Full(7u8).into_inner(), 7);
    /// ```
    #[must_use = "into_inner() hands back the value that was not sent"]
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(v) | TrySendError::Closed(v) | TrySendError::Failed(v, _) => v,
        }
    }
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

impl<T> std::error::Error for TrySendError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TrySendError::Failed(_, e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`Receiver::try_recv`] returned no message.
///
/// ```
/// use memfd_tripwire::{Backend, ring::{SharedRing, TryRecvError}};
/// let mut rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create().unwrap();
/// match rx.try_recv() {
///     Ok(v) => println!("{v}"),
///     Err(TryRecvError::Empty) => {} // come back later
///     Err(TryRecvError::Closed) => println!("done"),
///     Err(TryRecvError::Failed(e)) => eprintln!("{e}"),
/// }
/// ```
#[derive(Debug)]
pub enum TryRecvError {
    /// Nothing is there now; more may come.
    Empty,
    /// The Sender was dropped and everything it sent was received; or the
    /// ring ended earlier (after an error).
    Closed,
    /// The Sender's process died ([`Error::PeerDied`], after everything it
    /// published was received), an index was impossible
    /// ([`Error::Corrupt`]), or the tripwire failed.
    Failed(Error),
}

impl PartialEq for TryRecvError {
    /// Equal variants; two `Failed` are equal when their errors display the
    /// same.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TryRecvError::Empty, TryRecvError::Empty) => true,
            (TryRecvError::Closed, TryRecvError::Closed) => true,
            (TryRecvError::Failed(a), TryRecvError::Failed(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl From<Error> for TryRecvError {
    fn from(e: Error) -> Self {
        TryRecvError::Failed(e)
    }
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("the ring is empty"),
            TryRecvError::Closed => f.write_str("the sender closed the ring"),
            TryRecvError::Failed(e) => write!(f, "receive failed: {e}"),
        }
    }
}

impl std::error::Error for TryRecvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TryRecvError::Failed(e) => Some(e),
            _ => None,
        }
    }
}

impl From<TryRecvError> for Error {
    /// `Empty` and `Closed` become [`Error::Io`] of kind `WouldBlock` and
    /// `BrokenPipe`.
    fn from(e: TryRecvError) -> Error {
        match e {
            TryRecvError::Failed(e) => e,
            TryRecvError::Empty => Error::io(
                "try_recv",
                std::io::Error::new(std::io::ErrorKind::WouldBlock, "the ring is empty"),
            ),
            TryRecvError::Closed => Error::io(
                "try_recv",
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the sender closed the ring"),
            ),
        }
    }
}

#[cfg_attr(
    feature = "tokio",
    doc = " Why [`Sender::send`] / [`Sender::blocking_send`] failed; carries the"
)]
#[cfg_attr(
    not(feature = "tokio"),
    doc = " Why `Sender::send` (feature `tokio`) / [`Sender::blocking_send`] failed; carries the"
)]
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
    #[must_use = "into_inner() hands back the value that was not sent"]
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

    /// The error, dropping the value (or use `?`: `From<SendError<T>>`
    /// for [`Error`]).
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

impl<T> std::error::Error for SendError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// `?` on a send in a function returning [`Error`]: drops the value.
///
/// ```no_run
/// # fn f(mut tx: memfd_tripwire::ring::Sender<u64>) -> Result<(), memfd_tripwire::Error> {
/// tx.blocking_send(1)?;
/// # Ok(()) }
/// ```
impl<T> From<SendError<T>> for Error {
    fn from(e: SendError<T>) -> Error {
        e.error
    }
}

#[cfg_attr(
    feature = "tokio",
    doc = " Why [`Sender::send_many`] / [`Sender::blocking_send_many`] stopped:"
)]
#[cfg_attr(
    not(feature = "tokio"),
    doc = " Why `Sender::send_many` (feature `tokio`) / [`Sender::blocking_send_many`] stopped:"
)]
/// how many values were published into the ring before the error
/// (`values[sent..]` were not; after [`Error::PeerDied`], the published
/// ones may never be read).
///
/// ```no_run
/// # fn f(mut tx: memfd_tripwire::ring::Sender<u64>) {
/// if let Err(e) = tx.blocking_send_many(&[1, 2, 3]) {
///     eprintln!("{} sent, then: {}", e.sent, e.error);
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct SendManyError {
    /// How many values were sent, in order, before the error.
    pub sent: usize,
    /// Why the rest were not: [`Error::PeerDied`] when the Receiver is gone.
    pub error: Error,
}

impl fmt::Display for SendManyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "send failed after {} values: {}", self.sent, self.error)
    }
}

impl std::error::Error for SendManyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<SendManyError> for Error {
    fn from(e: SendManyError) -> Error {
        e.error
    }
}

#[cfg(test)]
mod tests;
