//! Why a send or a receive did not happen: each error that carries a value
//! hands it back, and `Empty`/`Full` are told apart from a gone peer.

use std::fmt;

use crate::Error;

/// Why [`Sender::try_send`](super::Sender::try_send) did not send; carries
/// the value back (`()` from [`Sender::try_reserve`](super::Sender::try_reserve)).
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

impl TrySendError<()> {
    /// The same error, carrying `value` (a `try_reserve`'s, for `try_send`).
    pub(super) fn with<T>(self, value: T) -> TrySendError<T> {
        match self {
            TrySendError::Full(()) => TrySendError::Full(value),
            TrySendError::Closed(()) => TrySendError::Closed(value),
            TrySendError::Failed((), e) => TrySendError::Failed(value, e),
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

/// Why [`Receiver::try_recv`](super::Receiver::try_recv) returned no message.
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
    doc = " Why [`Sender::send`](super::Sender::send) / [`Sender::blocking_send`](super::Sender::blocking_send) failed; carries the"
)]
#[cfg_attr(
    not(feature = "tokio"),
    doc = " Why `Sender::send` (feature `tokio`) / [`Sender::blocking_send`](super::Sender::blocking_send) failed; carries the"
)]
/// value back.
pub struct SendError<T> {
    pub(super) value: T,
    pub(super) error: Error,
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

    /// Why: [`Error::Closed`] when the Receiver was dropped,
    /// [`Error::PeerDied`] when its process died.
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
    doc = " Why [`Sender::send_many`](super::Sender::send_many) / [`Sender::blocking_send_many`](super::Sender::blocking_send_many) stopped:"
)]
#[cfg_attr(
    not(feature = "tokio"),
    doc = " Why `Sender::send_many` (feature `tokio`) / [`Sender::blocking_send_many`](super::Sender::blocking_send_many) stopped:"
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
    /// Why the rest were not: [`Error::Closed`] when the Receiver was
    /// dropped, [`Error::PeerDied`] when its process died.
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
