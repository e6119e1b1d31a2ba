//! The producing end of a ring, its public API: drives the core
//! (`core::Tx`); the blocking wait for space is in `blocking.rs`, the async
//! one in `tokio.rs`.

use std::fmt;
use std::os::unix::net::UnixStream;

use bytemuck::Pod;

use super::core::Tx;
use super::layout;
use super::{SendError, SendManyError, SendSlot, TrySendError};
use crate::{Error, Producer, handoff};

/// The producing end of a ring, in the process that received it.
///
/// ```no_run
/// # fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
/// use memfd_tripwire::ring::Sender;
/// let mut tx = Sender::<[u8; 64]>::connect(sock)?;
/// tx.blocking_send([7; 64])?;
/// # Ok(()) }
/// ```
pub struct Sender<T> {
    /// The core: the producer, indices, memory, the space bell.
    pub(super) tx: Tx<T>,
    /// The space bell and the handshake socket, registered with tokio as
    /// one epoll set, once, at the first wait for space in async code.
    #[cfg(feature = "tokio")]
    pub(super) reg: Option<super::registration::Registration>,
    /// The process that connected: a copy dropped in a forked child leaves
    /// the ring open.
    pid: u32,
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.tx.ring.header.capacity)
            .field("head", &self.tx.head)
            .field("backend", &self.tx.producer.backend())
            .finish()
    }
}

impl<T: Pod> Sender<T> {
    /// Attaches to the ring a [`Receiver`](super::Receiver) shares over the
    /// other end of `sock`. `T` must have the Receiver's size, alignment and
    /// [type tag](super::type_tag); a mismatch is refused on both sides.
    ///
    /// Blocks for the handshake (up to 10 s per frame against a silent peer): in
    /// async code, use `connect_async` (feature `tokio`).
    ///
    /// # Errors
    ///
    /// [`Error::LayoutMismatch`] naming both sides' values; "wrong
    /// protocol" ([`Error::Handshake`]), naming both, at once, if the peer
    /// shares a plain tripwire ([`blocking::Tripwire::share`](crate::blocking::Tripwire::share));
    /// [`Error::Handshake`] or [`Error::Io`] as for
    /// [`Producer::connect`].
    ///
    /// ```no_run
    /// # fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
    /// let tx = memfd_tripwire::ring::Sender::<u64>::connect(sock)?;
    /// # Ok(()) }
    /// ```
    pub fn connect(sock: UnixStream) -> Result<Sender<T>, Error> {
        Self::connect_with_tag(sock, super::type_tag::<T>())
    }

    /// [`connect`](Sender::connect) to a ring built with
    /// [`Builder::type_tag`](super::Builder::type_tag)`(type_tag)`.
    ///
    /// # Errors
    ///
    /// As [`connect`](Sender::connect).
    ///
    /// ```no_run
    /// # fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
    /// const PRICES: u64 = u64::from_le_bytes(*b"PRICE\0\0\0");
    /// let tx = memfd_tripwire::ring::Sender::<u64>::connect_with_tag(sock, PRICES)?;
    /// # Ok(()) }
    /// ```
    pub fn connect_with_tag(sock: UnixStream, type_tag: u64) -> Result<Sender<T>, Error> {
        handoff::block_on(Self::connect_on(
            handoff::Blocking(sock),
            layout::FRAME_TAG,
            type_tag,
        ))
    }

    /// The handshake of [`connect_with_tag`](Sender::connect_with_tag)
    /// over any driver (the blocking one, or the tokio reactor's for
    /// `connect_async`), expecting an offer of `protocol` (a ring's
    /// `layout::FRAME_TAG`, or byte frames').
    pub(super) async fn connect_on<W: handoff::Wait>(
        w: W,
        protocol: [u8; 8],
        type_tag: u64,
    ) -> Result<Sender<T>, Error> {
        let (producer, attached) =
            Producer::connect_with_fds_on(w, protocol, layout::FRAME_FDS, |producer, fds| {
                Tx::<T>::attach(producer.region(), fds, type_tag)
            })
            .await?;
        Ok(Sender {
            tx: Tx::new(producer, attached),
            #[cfg(feature = "tokio")]
            reg: None,
            pid: std::process::id(),
        })
    }

    /// The capacity in messages.
    ///
    /// ```no_run
    /// # fn f(tx: memfd_tripwire::ring::Sender<u64>) {
    /// println!("{} slots", tx.capacity());
    /// # }
    /// ```
    pub fn capacity(&self) -> usize {
        self.tx.ring.capacity()
    }

    /// How many sent messages the Receiver has not yet taken, as far as it
    /// has published (it publishes in batches: see
    /// [`Receiver::flush`](super::Receiver::flush)). An impossible tail from
    /// the Receiver counts as a full ring; the next send reports it.
    ///
    /// ```no_run
    /// # fn f(tx: memfd_tripwire::ring::Sender<u64>) {
    /// println!("{} of {} in flight", tx.len(), tx.capacity());
    /// # }
    /// ```
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// `true` when the Receiver has taken everything sent.
    ///
    /// ```no_run
    /// # fn f(tx: memfd_tripwire::ring::Sender<u64>) {
    /// if tx.is_empty() { println!("all caught up"); }
    /// # }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `true` when no slot is free: a send would wait (or `try_send` fail).
    ///
    /// ```no_run
    /// # fn f(tx: memfd_tripwire::ring::Sender<u64>) {
    /// if tx.is_full() { println!("the receiver is behind"); }
    /// # }
    /// ```
    pub fn is_full(&self) -> bool {
        self.len() == self.capacity()
    }

    /// `true` once the Receiver is gone: dropped (its closed bit, seen by
    /// the next send), or its end of the handshake socket or of the space
    /// bell hung up (a death).
    ///
    /// ```no_run
    /// # fn f(tx: memfd_tripwire::ring::Sender<u64>) {
    /// if tx.is_closed() { eprintln!("receiver gone"); }
    /// # }
    /// ```
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Sends without waiting.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] when there is no free slot (then
    /// [`TrySendError::Closed`] if the Receiver is also gone);
    /// [`TrySendError::Failed`] for a corrupt tail index.
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::Sender<u64>) {
    /// use memfd_tripwire::ring::TrySendError;
    /// match tx.try_send(1) {
    ///     Ok(()) => {}
    ///     Err(TrySendError::Full(v)) => println!("full, kept {v}"),
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// # }
    /// ```
    pub fn try_send(&mut self, value: T) -> Result<(), TrySendError<T>> {
        let free = self.try_free().map_err(|e| e.with(value))?;
        match self.tx.write(std::slice::from_ref(&value), free).1 {
            Ok(()) => Ok(()),
            Err(Error::PeerDied) => Err(TrySendError::Closed(value)),
            Err(e) => Err(TrySendError::Failed(value, e)),
        }
    }

    /// Free slots (at least one), or why a `try_` call cannot have one.
    fn try_free(&mut self) -> Result<u64, TrySendError<()>> {
        match self.tx.free(1) {
            Ok(0) if self.is_closed() => Err(TrySendError::Closed(())),
            Ok(0) => Err(TrySendError::Full(())),
            Ok(free) => Ok(free),
            Err(Error::Closed | Error::PeerDied) => Err(TrySendError::Closed(())),
            Err(e) => Err(TrySendError::Failed((), e)),
        }
    }

    /// Reserves the next slot without waiting, to fill in place and
    /// [`commit`](SendSlot::commit): a large `T` need not be built on the
    /// stack and copied. A [`SendSlot`] dropped without a commit publishes
    /// nothing.
    ///
    /// # Errors
    ///
    /// As [`try_send`](Sender::try_send), carrying `()`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::unix::net::UnixStream;
    /// use memfd_tripwire::{Backend, ring::{Sender, SharedRing, TrySendError}};
    ///
    /// let mut rx = SharedRing::<[u64; 512]>::builder(1).backend(Backend::Poll).create()?;
    /// let (ours, theirs) = UnixStream::pair()?;
    /// let tx = std::thread::spawn(move || Sender::<[u64; 512]>::connect(theirs));
    /// rx.share(ours)?;
    /// let mut tx = tx.join().unwrap()?;
    ///
    /// let mut slot = tx.try_reserve()?;
    /// slot.write_at(0, &1u64)?;
    /// slot.write_at(511 * 8, &2u64)?;
    /// slot.commit()?;
    /// assert!(matches!(tx.try_reserve(), Err(TrySendError::Full(())))); // one slot
    /// let v = rx.try_recv()?;
    /// assert_eq!((v[0], v[511]), (1, 2));
    /// # Ok(()) }
    /// ```
    pub fn try_reserve(&mut self) -> Result<SendSlot<'_, T>, TrySendError<()>> {
        self.try_free()?;
        Ok(SendSlot::new(&mut self.tx))
    }

    /// Reserves the next slot, blocking the thread while the ring is full:
    /// [`try_reserve`](Sender::try_reserve) that waits, as
    /// [`blocking_send`](Sender::blocking_send) does.
    ///
    /// # Errors
    ///
    /// As [`blocking_send`](Sender::blocking_send).
    ///
    /// # Panics
    ///
    /// As [`blocking_send`](Sender::blocking_send) (use
    /// `reserve().await` in async code).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::unix::net::UnixStream;
    /// # use memfd_tripwire::{Backend, ring::{Sender, SharedRing}};
    /// # let mut rx = SharedRing::<[u8; 4096]>::builder(4).backend(Backend::Poll).create()?;
    /// # let (ours, theirs) = UnixStream::pair()?;
    /// # let tx = std::thread::spawn(move || Sender::<[u8; 4096]>::connect(theirs));
    /// # rx.share(ours)?;
    /// # let mut tx = tx.join().unwrap()?;
    /// let mut slot = tx.blocking_reserve()?;
    /// slot.write_bytes(0, &[7; 4096])?;
    /// slot.commit()?;
    /// assert_eq!(rx.try_recv()?, [7; 4096]);
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn blocking_reserve(&mut self) -> Result<SendSlot<'_, T>, Error> {
        self.tx
            .blocking_reserve(1, ("Sender::blocking_reserve", "reserve().await"))?;
        Ok(SendSlot::new(&mut self.tx))
    }

    /// Sends as many of `values` as there are free slots for, in order,
    /// without waiting: one copy per contiguous run of slots, one head
    /// store and one `notify()`. Returns how many (0 when full).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the Receiver was dropped (nothing is sent);
    /// [`Error::PeerDied`] once the Receiver's process is gone (nothing is
    /// sent; learned from its hang-up, by a thread that watches it: a
    /// call made in the moment between the death and that thread's look
    /// still sends, into a ring no one will read); [`Error::Corrupt`] for
    /// an impossible tail index.
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::Sender<u64>) -> Result<(), memfd_tripwire::Error> {
    /// let values = [1, 2, 3, 4];
    /// let n = tx.try_send_slice(&values)?;
    /// let rest = &values[n..]; // for later
    /// # Ok(()) }
    /// ```
    pub fn try_send_slice(&mut self, values: &[T]) -> Result<usize, Error> {
        match self.tx.free(1)? {
            0 if self.is_closed() => Err(Error::PeerDied),
            0 => Ok(0),
            free => {
                let (n, rung) = self.tx.write(values, free);
                rung.map(|()| n)
            }
        }
    }

    /// Sends, blocking the thread while the ring is full.
    ///
    /// # Errors
    ///
    /// In the [`SendError`], with the value: [`Error::Closed`] once the
    /// Receiver was dropped (seen by this very call, as
    /// `tokio::sync::mpsc::Sender::send` fails once its receiver is gone);
    /// [`Error::PeerDied`] if the Receiver's process died (from its
    /// hang-up, which a thread watches: the first call after that thread
    /// saw it, microseconds after the death, fails; one made in between
    /// still sends); [`Error::Corrupt`] for an impossible tail index.
    ///
    /// # Panics
    ///
    /// With feature `tokio`, when it would sleep on a thread that drives a
    /// tokio runtime's tasks (in a task or a `block_on`), whose tasks it
    /// would stall: use
    /// `send(value).await` there, or call this inside `spawn_blocking`; the
    /// exact rule is in [the crate docs](crate#blocking-calls-and-tokio).
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::Sender<u64>) -> Result<(), memfd_tripwire::ring::SendError<u64>> {
    /// tx.blocking_send(42)?;
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn blocking_send(&mut self, value: T) -> Result<(), SendError<T>> {
        let fail = |error| SendError { value, error };
        let free = self
            .tx
            .blocking_reserve(1, ("Sender::blocking_send", "send(value).await"))
            .map_err(fail)?;
        self.tx
            .write(std::slice::from_ref(&value), free)
            .1
            .map_err(fail)
    }

    /// Sends all of `values`, in order, publishing them in batches (one
    /// head store and one `notify()` per batch), blocking while full.
    ///
    /// # Errors
    ///
    /// As [`blocking_send`](Sender::blocking_send), in a [`SendManyError`]
    /// that says how many values were sent before it (`values[sent..]`
    /// were not).
    ///
    /// # Panics
    ///
    /// With feature `tokio`, when it would sleep on a thread that drives a
    /// tokio runtime's tasks (in a task or a `block_on`), whose tasks it
    /// would stall: use
    /// `send_many(values).await` there, or call this inside `spawn_blocking`;
    /// the exact rule is in [the crate docs](crate#blocking-calls-and-tokio).
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::Sender<u64>) -> Result<(), memfd_tripwire::Error> {
    /// tx.blocking_send_many(&[1, 2, 3])?;
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn blocking_send_many(&mut self, values: &[T]) -> Result<(), SendManyError> {
        let mut sent = 0;
        while sent < values.len() {
            let free = self
                .tx
                .blocking_reserve(1, ("Sender::blocking_send_many", "send_many(values).await"))
                .map_err(|error| SendManyError { sent, error })?;
            let (n, rung) = self.tx.write(&values[sent..], free);
            sent += n;
            rung.map_err(|error| SendManyError { sent, error })?;
        }
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // A forked child's copy says nothing: the ring is the parent's, which
        // closes it when its own Sender goes (or dies). Nor does a Sender
        // dropped by a panic's unwinding: what it meant to send may be
        // missing, so the Receiver reports a death, not a clean close.
        if self.pid != std::process::id() {
            return;
        }
        // Values written by `Sink::start_send` and not yet flushed are
        // whole in their slots: they are published, as a flush would, in
        // either case.
        if std::thread::panicking() {
            let _ = self.tx.publish();
            return;
        }
        // A clean close: the Receiver drains, then ends with Ok(None).
        let _ = self.tx.close();
    }
}
