//! The producing end of a watch.

use std::fmt;
use std::os::unix::net::UnixStream;

use bytemuck::Pod;

use super::core::{RX_CLOSED, from_io};
use super::layout::{self, Header};
use super::protocol;
use crate::{Error, Producer};

/// The producing end of a watch, in the process that received it: sends
/// whole values of `T`.
///
/// ```no_run
/// # fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
/// use memfd_tripwire::watch;
/// let mut tx = watch::Sender::<[u8; 64]>::connect(sock)?;
/// tx.send(&[7; 64])?;
/// tx.send_modify(|v| v[0] = 8)?;
/// # Ok(()) }
/// ```
pub struct Sender<T> {
    producer: Producer,
    /// The sequence this Sender last stored (even).
    seq: u64,
    /// The last value sent (or the Receiver's initial one).
    value: T,
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("backend", &self.producer.backend())
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl<T: Pod> Sender<T> {
    /// Attaches to the watch a Receiver shares over the other end of
    /// `sock`. `T` must have the Receiver's size, alignment and
    /// [type tag](crate::ring::type_tag); a mismatch is refused on both
    /// sides.
    ///
    /// Blocks for the handshake (up to 10 s per frame against a silent
    /// peer): in async code, use `connect_async` (feature `tokio`).
    ///
    /// # Errors
    ///
    /// [`Error::LayoutMismatch`] naming both sides' values; "wrong
    /// protocol" ([`Error::Handshake`]) at once if the peer shares
    /// something else (a plain tripwire, a ring); otherwise as
    /// [`Producer::connect_with_fds`].
    ///
    /// ```no_run
    /// # fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
    /// let tx = memfd_tripwire::watch::Sender::<u64>::connect(sock)?;
    /// # Ok(()) }
    /// ```
    pub fn connect(sock: UnixStream) -> Result<Self, Error> {
        Self::connect_with_tag(sock, crate::ring::type_tag::<T>())
    }

    /// [`connect`](Sender::connect) to a watch whose Receiver set its own
    /// [type tag](super::Builder::type_tag).
    ///
    /// # Errors
    ///
    /// As [`connect`](Sender::connect).
    ///
    /// ```no_run
    /// # fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
    /// let tag = u64::from_le_bytes(*b"STATUS\0\0");
    /// let tx = memfd_tripwire::watch::Sender::<u64>::connect_with_tag(sock, tag)?;
    /// # Ok(()) }
    /// ```
    pub fn connect_with_tag(sock: UnixStream, tag: u64) -> Result<Self, Error> {
        let (producer, ()) =
            Producer::connect_with_fds(sock, layout::FRAME_TAG, 0, |p, _| check::<T>(p, tag))?;
        Ok(Self::attached(producer))
    }

    /// The async [`connect`](Sender::connect): the handshake never blocks
    /// the thread (feature `tokio`; needs the runtime's time driver).
    ///
    /// # Cancel safety
    ///
    /// As [`Producer::connect_async`].
    ///
    /// # Errors
    ///
    /// As [`connect`](Sender::connect).
    ///
    /// ```no_run
    /// # async fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
    /// let tx = memfd_tripwire::watch::Sender::<u64>::connect_async(sock).await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tokio")]
    pub async fn connect_async(sock: UnixStream) -> Result<Self, Error> {
        Self::connect_with_tag_async(sock, crate::ring::type_tag::<T>()).await
    }

    /// The async [`connect_with_tag`](Sender::connect_with_tag) (feature
    /// `tokio`).
    ///
    /// # Errors
    ///
    /// As [`connect`](Sender::connect).
    ///
    /// ```no_run
    /// # async fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
    /// let tx = memfd_tripwire::watch::Sender::<u64>::connect_with_tag_async(sock, 7).await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tokio")]
    pub async fn connect_with_tag_async(sock: UnixStream, tag: u64) -> Result<Self, Error> {
        let (producer, ()) =
            Producer::connect_with_fds_async(sock, layout::FRAME_TAG, 0, |p, _| check::<T>(p, tag))
                .await?;
        Ok(Self::attached(producer))
    }

    fn attached(producer: Producer) -> Self {
        let region = producer.region();
        // Nobody writes these now: the Receiver wrote them before it shared,
        // and this is the one writer. An odd sequence (a hostile Receiver)
        // is made even by the first send.
        let seq = region.load_u64(layout::SEQ).unwrap_or(0) & !1;
        let value = region.read(layout::PAYLOAD).unwrap_or_else(|_| T::zeroed());
        Sender {
            producer,
            seq,
            value,
        }
    }

    /// Publishes `value`: the sequence turns odd, the value is written,
    /// the sequence turns even, and the consumer is notified (a no-op but
    /// on `Doorbell`). Never blocks.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the Receiver was dropped (nothing is written;
    /// or, if it was dropped while this send ran, written and closed);
    /// [`Error::PeerDied`] on `Doorbell` if the Receiver's process hung up
    /// (the value was written).
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::watch::Sender<[u32; 2]>) -> Result<(), memfd_tripwire::Error> {
    /// tx.send(&[1, 2])?;
    /// # Ok(()) }
    /// ```
    pub fn send(&mut self, value: &T) -> Result<(), Error> {
        let region = self.producer.region();
        if region.load_u64(layout::RX_STATE)? & RX_CLOSED != 0 {
            return Err(Error::Closed);
        }
        let seq = region.atomic_u64(layout::SEQ)?;
        let odd = protocol::begin_write(seq, self.seq);
        let written = region.write(layout::PAYLOAD, value);
        // Even on an error (none in practice: the layout was checked), the
        // sequence is left even.
        self.seq = protocol::end_write(seq, odd);
        written?;
        self.value = *value;
        self.producer
            .notify()
            .map_err(|e| from_io("notifying the watch's Receiver", e))
    }

    /// Changes the last value sent in place with `modify`, then
    /// [`send`](Sender::send)s it.
    ///
    /// # Errors
    ///
    /// As [`send`](Sender::send).
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::watch::Sender<[u32; 2]>) -> Result<(), memfd_tripwire::Error> {
    /// tx.send_modify(|v| v[1] += 1)?;
    /// # Ok(()) }
    /// ```
    pub fn send_modify(&mut self, modify: impl FnOnce(&mut T)) -> Result<(), Error> {
        let mut value = self.value;
        modify(&mut value);
        self.send(&value)
    }

    /// The last value sent (at first, the Receiver's initial value).
    ///
    /// ```no_run
    /// # fn f(tx: memfd_tripwire::watch::Sender<u64>) {
    /// println!("last sent: {}", tx.borrow());
    /// # }
    /// ```
    #[allow(clippy::should_implement_trait)] // tokio::sync::watch's name
    pub fn borrow(&self) -> &T {
        &self.value
    }

    /// `true` once the Receiver was dropped (its closed bit) or its
    /// process is gone (a hang-up of the handshake socket: one `poll(2)`).
    ///
    /// ```no_run
    /// # fn f(tx: memfd_tripwire::watch::Sender<u64>) {
    /// if tx.is_closed() {
    ///     eprintln!("nobody watches");
    /// }
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        let dropped = self
            .producer
            .region()
            .load_u64(layout::RX_STATE)
            .map_or(true, |s| s & RX_CLOSED != 0);
        dropped || self.producer.is_closed()
    }

    /// The producer underneath.
    ///
    /// ```no_run
    /// # fn f(tx: memfd_tripwire::watch::Sender<u64>) {
    /// println!("on {}", tx.producer().backend());
    /// # }
    /// ```
    pub fn producer(&self) -> &Producer {
        &self.producer
    }
}

/// The Sender's check of the header, in the handshake (a mismatch fails
/// both sides).
fn check<T>(producer: &Producer, tag: u64) -> Result<(), Error> {
    Header::check(producer.region(), Header::of::<T>(tag)).map(|_| ())
}
