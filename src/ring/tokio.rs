//! The tokio driver: the async receive and send, waiting on one
//! `Registration` per end (`registration.rs`), made at the end's first wait
//! in async code.
//!
//! A registration watches one fd: the Receiver's a duplicate of its
//! tripwire's public fd (`AsFd`; the ring takes nothing below the
//! tripwire's public API), the Sender's an epoll set of the space bell and
//! the handshake socket, made for it (one fd, where two duplicates used to
//! be). Both are registered
//! through a shared reference that keeps the fd open, and the tripwire
//! itself never moves: a failed or panicking registration leaves the ring
//! as it was.

use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytemuck::Pod;
use futures_core::{FusedStream, Stream};

use super::core::Rx;
use super::registration::Registration;
use super::{Receiver, SendError, SendManyError, SendSlot, Sender};
use crate::{Error, handoff};

impl<T: Pod> Receiver<T> {
    /// The async [`share`](Receiver::share): the same handshake (the
    /// tripwire's, then the ring's frame), but the runtime's thread never
    /// blocks on it; the Sender may connect with
    /// [`Sender::connect_async`] or the blocking
    /// [`Sender::connect`]. Named `share_async`, not `share`: the ring is
    /// used with and without a runtime, and the blocking `share` keeps its
    /// name whatever the features (see [`Producer`](crate::Producer)'s
    /// async handshakes).
    ///
    /// `peer` is a std socket; a `tokio::net::UnixStream` goes in through
    /// its `into_std()`. Gives up after 10 s of silence per frame (a tokio
    /// timer: the runtime needs its time driver).
    ///
    /// # Cancel safety
    ///
    /// A dropped `share_async` leaves the ring unshared and closes `peer`
    /// (the Sender's `connect` fails with a hang-up): share it again with
    /// a new socket.
    ///
    /// # Errors
    ///
    /// As [`share`](Receiver::share); [`Error::Io`] outside a tokio
    /// runtime, or if the socket cannot be registered with it.
    ///
    /// # Panics
    ///
    /// In a runtime without its time driver (tokio's timer panics).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::unix::net::UnixStream;
    /// use memfd_tripwire::{Backend, ring::{Sender, SharedRing}};
    ///
    /// let mut rx = SharedRing::<u64>::builder(64).backend(Backend::Doorbell).create()?;
    /// let (ours, theirs) = UnixStream::pair()?;
    /// // Normally in another process.
    /// let tx = tokio::spawn(Sender::<u64>::connect_async(theirs));
    /// rx.share_async(ours).await?;
    /// let mut tx = tx.await??;
    /// tx.send(7).await?;
    /// assert_eq!(rx.recv().await?, Some(7));
    /// # Ok(()) }
    /// ```
    pub async fn share_async(&mut self, peer: std::os::unix::net::UnixStream) -> Result<(), Error> {
        self.share_on(handoff::Reactor::new(peer)?).await
    }

    /// Polls for the next message; the building block of
    /// [`recv`](Receiver::recv) and the `Stream`. Spends a unit of
    /// tokio's coop budget per message (and per wake-up that found
    /// none), like `tokio::sync::mpsc`: a Sender that keeps the ring
    /// full cannot starve the other tasks of this thread.
    ///
    /// # Errors
    ///
    /// As [`recv`](Receiver::recv).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::os::unix::net::UnixStream;
    /// # use memfd_tripwire::{Backend, Error, ring::{Sender, SharedRing}};
    /// let mut rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create().unwrap();
    /// let waker = std::task::Waker::noop();
    /// let mut cx = std::task::Context::from_waker(&waker);
    /// // Never shared: no Sender can reach it, so no wait.
    /// assert!(matches!(rx.poll_recv(&mut cx), std::task::Poll::Ready(Err(Error::NotShared { .. }))));
    /// # let (ours, theirs) = UnixStream::pair().unwrap();
    /// # let tx = std::thread::spawn(move || Sender::<u64>::connect(theirs));
    /// rx.share(ours).unwrap(); // the Sender connects on the other end
    /// # let _tx = tx.join().unwrap().unwrap();
    /// assert!(rx.poll_recv(&mut cx).is_pending());
    /// # }
    /// ```
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<T>, Error>> {
        self.poll_take(cx, Rx::pop)
    }

    /// [`poll_recv`](Receiver::poll_recv) of what `take` takes (a message,
    /// a frame).
    pub(super) fn poll_take<R>(
        &mut self,
        cx: &mut Context<'_>,
        mut take: impl FnMut(&mut Rx<T>) -> Result<Option<R>, Error>,
    ) -> Poll<Result<Option<R>, Error>> {
        // The common case first, as `blocking_recv` takes it: a message is
        // there (see `spend_unit` for why the unit comes before the pop).
        if !self.done && self.rx.ready_now() > 0 {
            ready!(crate::tokio::spend_unit(cx));
            return Poll::Ready(take(&mut self.rx));
        }
        // A unit per turn: a message, or a wake-up that found none (a
        // Sender ringing without publishing cannot keep the task here).
        crate::tokio::poll_turns(cx, |cx| self.turn(cx, &mut take))
    }

    /// One turn: `Ready(Some(..))` is the outcome, `Ready(None)` a
    /// wake-up to look again after.
    #[allow(clippy::type_complexity)]
    fn turn<R>(
        &mut self,
        cx: &mut Context<'_>,
        mut take: impl FnMut(&mut Rx<T>) -> Result<Option<R>, Error>,
    ) -> Poll<Result<Option<Option<R>>, Error>> {
        if self.done {
            return Poll::Ready(Ok(Some(None)));
        }
        if let Some(v) = take(&mut self.rx)? {
            return Poll::Ready(Ok(Some(Some(v))));
        }
        if let Some(outcome) = self.idle(take)? {
            return Poll::Ready(Ok(Some(outcome)));
        }
        let deadline = self.tw.deadline();
        let tw = &self.tw;
        // A duplicate of the tripwire's public fd: one fd more per
        // registered Receiver, and the ring needs nothing below the
        // tripwire's public API (#22).
        let reg = Registration::get_or_register(&mut self.reg, || {
            Ok(std::sync::Arc::new(tw.as_fd().try_clone_to_owned()?))
        })?;
        match reg.poll_ready(cx, deadline) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(None)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(Error::io("waiting on the ring's tripwire", e))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Waits for the next message.
    ///
    /// `Ok(None)` once the Sender was dropped and everything it sent was
    /// received.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is taken only in the poll that returns it.
    ///
    /// # Errors
    ///
    /// [`Error::PeerDied`] once the Sender's process died (after
    /// everything it published was received); [`Error::Corrupt`] for an
    /// impossible index; [`Error::NotShared`], at once, on a ring never
    /// [shared](Receiver::share), which no Sender can reach (it used to
    /// stay pending for ever); [`Error::Io`] if the tripwire fails, with
    /// `TimedOut` inside when the Sender left the re-arm's ACK
    /// unanswered past its deadline (`Userfault`, `UserfaultAsync`: a
    /// timer ends the wait, so a stopped Sender cannot keep this
    /// pending).
    ///
    /// # Panics
    ///
    /// On `Userfault` and `UserfaultAsync`, when it waits for an ACK in
    /// a runtime built without its timer (tokio panics: build it with
    /// `enable_time` or `enable_all`); see
    /// [`Tripwire::changed`](crate::Tripwire::changed).
    ///
    /// ```no_run
    /// # async fn f(mut rx: memfd_tripwire::ring::Receiver<u64>) -> Result<(), memfd_tripwire::Error> {
    /// while let Some(v) = rx.recv().await? {
    ///     println!("{v}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recv(&mut self) -> Result<Option<T>, Error> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Waits for at least one message, then appends up to `limit` (at
    /// least one) to `buf` without waiting further. Returns how many;
    /// 0 means the Sender closed and everything was received.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`recv`](Receiver::recv).
    ///
    /// # Errors
    ///
    /// As [`recv`](Receiver::recv); messages already appended stay in `buf`.
    ///
    /// ```no_run
    /// # async fn f(mut rx: memfd_tripwire::ring::Receiver<u64>) -> Result<(), memfd_tripwire::Error> {
    /// let mut buf = Vec::with_capacity(256);
    /// while rx.recv_many(&mut buf, 256).await? > 0 {
    ///     buf.clear();
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recv_many(&mut self, buf: &mut Vec<T>, limit: usize) -> Result<usize, Error> {
        let Some(first) = self.recv().await? else {
            return Ok(0);
        };
        buf.push(first);
        Ok(1 + self.rx.pop_many(buf, limit.max(1) - 1)?)
    }
}

/// Yields each message; ends after the Sender closed (or with one
/// `Err`, after which it is fused).
///
/// ```no_run
/// # async fn f(rx: memfd_tripwire::ring::Receiver<u64>) {
/// use futures_util::StreamExt;
/// let sum: u64 = rx.filter_map(|r| async move { r.ok() }).fold(0, |a, v| async move { a + v }).await;
/// # }
/// ```
impl<T: Pod> Stream for Receiver<T> {
    type Item = Result<T, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.poll_recv(cx) {
            Poll::Ready(Ok(Some(v))) => Poll::Ready(Some(Ok(v))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: Pod> FusedStream for Receiver<T> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<T: Pod> Sender<T> {
    /// The async [`connect`](Sender::connect): the same handshake, but the
    /// runtime's thread never blocks on it; the Receiver may share with
    /// [`Receiver::share_async`] or the blocking [`Receiver::share`].
    /// Named `connect_async` for the reason
    /// [`Receiver::share_async`] gives.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes `sock` (the Receiver's share fails with
    /// a hang-up) and whatever was attached: connect again over a new
    /// socket.
    ///
    /// # Errors
    ///
    /// As [`connect`](Sender::connect); [`Error::Io`] outside a tokio
    /// runtime, or if the socket cannot be registered with it.
    ///
    /// # Panics
    ///
    /// In a runtime without its time driver (tokio's timer panics).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::unix::net::UnixStream;
    /// use memfd_tripwire::{Backend, ring::{Sender, SharedRing}};
    ///
    /// let mut rx = SharedRing::<u64>::builder(64).backend(Backend::Poll).create()?;
    /// let (ours, theirs) = UnixStream::pair()?;
    /// let (shared, tx) = tokio::join!(rx.share_async(ours), Sender::<u64>::connect_async(theirs));
    /// shared?;
    /// tx?.send(1).await?;
    /// assert_eq!(rx.recv().await?, Some(1));
    /// # Ok(()) }
    /// ```
    pub async fn connect_async(sock: std::os::unix::net::UnixStream) -> Result<Sender<T>, Error> {
        Self::connect_on(
            handoff::Reactor::new(sock)?,
            super::layout::FRAME_TAG,
            super::type_tag::<T>(),
        )
        .await
    }

    /// The async [`connect_with_tag`](Sender::connect_with_tag).
    ///
    /// # Cancel safety
    ///
    /// As [`connect_async`](Sender::connect_async).
    ///
    /// # Errors
    ///
    /// As [`connect_with_tag`](Sender::connect_with_tag) and
    /// [`connect_async`](Sender::connect_async).
    ///
    /// # Panics
    ///
    /// As [`connect_async`](Sender::connect_async).
    ///
    /// ```no_run
    /// # async fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
    /// const PRICES: u64 = u64::from_le_bytes(*b"PRICE\0\0\0");
    /// let tx = memfd_tripwire::ring::Sender::<u64>::connect_with_tag_async(sock, PRICES).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with_tag_async(
        sock: std::os::unix::net::UnixStream,
        type_tag: u64,
    ) -> Result<Sender<T>, Error> {
        Self::connect_on(
            handoff::Reactor::new(sock)?,
            super::layout::FRAME_TAG,
            type_tag,
        )
        .await
    }

    /// Polls for free slots. Each turn (a look at the tail, and a
    /// wake-up that found none) spends a unit of tokio's coop budget,
    /// like `tokio::sync::mpsc`: neither a Receiver that keeps up nor
    /// one that rings without freeing space can keep the task here.
    /// Waits for `need` free slots; returns how many are free.
    pub(super) fn poll_reserve(
        &mut self,
        cx: &mut Context<'_>,
        need: u64,
    ) -> Poll<Result<u64, Error>> {
        // The common case first: room known without a wait.
        let free = self.tx.free_now(need);
        if free >= need {
            ready!(crate::tokio::spend_unit(cx));
            return Poll::Ready(Ok(free));
        }
        crate::tokio::poll_turns(cx, |cx| self.poll_space(cx, need))
    }

    /// One turn: `Ready(Some(..))` is the outcome, `Ready(None)` a
    /// wake-up to look again after.
    #[inline]
    fn poll_space(&mut self, cx: &mut Context<'_>, need: u64) -> Poll<Result<Option<u64>, Error>> {
        let tx = &mut self.tx;
        let free = tx.free(need)?;
        if free >= need {
            return Poll::Ready(Ok(Some(free)));
        }
        self.wait_for_space(cx, need)
    }

    /// The slow half of [`poll_space`](Sender::poll_space): fewer than
    /// `need` free slots were seen.
    #[cold]
    fn wait_for_space(
        &mut self,
        cx: &mut Context<'_>,
        need: u64,
    ) -> Poll<Result<Option<u64>, Error>> {
        let tx = &mut self.tx;
        if tx.start_waiting(need)? {
            tx.stop_waiting()?;
            return Poll::Ready(Ok(None));
        }
        let gone = tx.drain_space()?;
        if tx.free(need)? >= need {
            tx.stop_waiting()?;
            return Poll::Ready(Ok(None));
        }
        if gone || tx.is_closed() {
            tx.stop_waiting()?;
            return Poll::Ready(Err(Error::PeerDied));
        }
        // The Receiver rings the bell when it frees space; its death
        // closes the handshake socket (see `blocking_reserve`).
        let reg = Registration::get_or_register(&mut self.reg, || {
            Registration::set_of(
                std::iter::once(tx.space.as_fd()).chain(tx.producer.handshake_socket()),
            )
        })?;
        ready!(reg.poll_ready(cx, None)).map_err(|e| Error::io("waiting for space", e))?;
        Poll::Ready(Ok(None))
    }

    /// Sends, waiting while the ring is full.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the value is written only in the poll that completes.
    ///
    /// # Errors
    ///
    /// As [`blocking_send`](Sender::blocking_send).
    ///
    /// ```no_run
    /// # async fn f(mut tx: memfd_tripwire::ring::Sender<u64>) -> Result<(), memfd_tripwire::ring::SendError<u64>> {
    /// tx.send(42).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send(&mut self, value: T) -> Result<(), SendError<T>> {
        let fail = |error| SendError { value, error };
        let free = std::future::poll_fn(|cx| self.poll_reserve(cx, 1))
            .await
            .map_err(fail)?;
        self.tx
            .write(std::slice::from_ref(&value), free)
            .1
            .map_err(fail)
    }

    /// Reserves the next slot, waiting while the ring is full, to fill in
    /// place and [`commit`](SendSlot::commit) (tokio mpsc's `reserve`): a
    /// large `T` need not be built on the stack and copied. Spends tokio's
    /// coop budget as [`send`](Sender::send).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is written until the slot is handed out. A
    /// [`SendSlot`] dropped without a commit publishes nothing either.
    ///
    /// # Errors
    ///
    /// As [`send`](Sender::send).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::mem::offset_of;
    /// use std::os::unix::net::UnixStream;
    /// use memfd_tripwire::{Backend, ring::{Sender, SharedRing}};
    ///
    /// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    /// #[repr(C)]
    /// struct Frame {
    ///     len: u64,
    ///     bytes: [u8; 4088],
    /// }
    ///
    /// let mut rx = SharedRing::<Frame>::builder(16).backend(Backend::Doorbell).create()?;
    /// let (ours, theirs) = UnixStream::pair()?;
    /// let (shared, tx) = tokio::join!(rx.share_async(ours), Sender::<Frame>::connect_async(theirs));
    /// shared?;
    /// let mut tx = tx?;
    ///
    /// let line = b"a log line";
    /// let mut slot = tx.reserve().await?;
    /// slot.write_at(offset_of!(Frame, len), &(line.len() as u64))?;
    /// slot.write_bytes(offset_of!(Frame, bytes), line)?;
    /// slot.commit()?;
    ///
    /// let frame = rx.recv().await?.expect("a frame");
    /// assert_eq!(&frame.bytes[..frame.len as usize], line);
    /// # Ok(()) }
    /// ```
    pub async fn reserve(&mut self) -> Result<SendSlot<'_, T>, Error> {
        std::future::poll_fn(|cx| self.poll_reserve(cx, 1)).await?;
        Ok(SendSlot::new(&mut self.tx))
    }

    /// Sends all of `values` in order, in batches, waiting while full.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe as a whole: dropped midway, an unknown prefix of
    /// `values` was sent. Loop over [`send`](Sender::send) or
    /// [`try_send_slice`](Sender::try_send_slice) when that matters.
    ///
    /// # Errors
    ///
    /// As [`blocking_send_many`](Sender::blocking_send_many).
    ///
    /// ```no_run
    /// # async fn f(mut tx: memfd_tripwire::ring::Sender<u64>) -> Result<(), memfd_tripwire::Error> {
    /// tx.send_many(&[1, 2, 3]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_many(&mut self, values: &[T]) -> Result<(), SendManyError> {
        let mut sent = 0;
        while sent < values.len() {
            let free = std::future::poll_fn(|cx| self.poll_reserve(cx, 1))
                .await
                .map_err(|error| SendManyError { sent, error })?;
            let (n, rung) = self.tx.write(&values[sent..], free);
            sent += n;
            rung.map_err(|error| SendManyError { sent, error })?;
        }
        Ok(())
    }
}

/// The Sender as a [`Sink`](futures_sink::Sink) (`futures::Sink`), with
/// `poll_flush` meaning "published", as a `BufWriter`'s flush means
/// "written":
///
/// - `poll_ready` waits for a free slot, as [`send`](Sender::send) does
///   (the same coop budget, the same errors);
/// - `start_send` writes the value into its slot without publishing it. The
///   written values are published together (one head store, one
///   `notify()`) by `poll_flush`, by any other send, before a wait for
///   space (the Receiver cannot free slots it was never shown), and on
///   their own after a quarter ring of them, so that a Receiver is not kept
///   waiting by a writer that seldom flushes;
/// - `poll_flush` publishes what was written; it never waits (the Receiver
///   need not have taken anything);
/// - `poll_close` publishes, then closes the ring cleanly, as dropping the
///   Sender does: the Receiver takes everything, then ends with `Ok(None)`.
///   A send after it fails ([`Error::InvalidArgument`]).
///
/// A Sender dropped with values written and not flushed publishes them
/// (they are whole in their slots) before it closes the ring: unlike a
/// dropped `BufWriter`, nothing is lost; and a Sender dropped while its
/// thread panics publishes them too, though the Receiver then reports
/// [`Error::PeerDied`] after them.
///
/// `Error` is the crate's [`Error`], the Receiver's `Stream` error, so that
/// [`StreamExt::forward`](https://docs.rs/futures-util/0.3/futures_util/stream/trait.StreamExt.html#method.forward)
/// relays one ring into another (`rx.forward(tx)`), or any stream of
/// `Result<T, Error>` into the ring. `start_send` without a free slot
/// (`poll_ready` not called) is an [`Error::InvalidArgument`], and writes
/// nothing.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::unix::net::UnixStream;
/// use futures_util::{SinkExt, StreamExt};
/// use memfd_tripwire::{Backend, ring::{Sender, SharedRing}};
///
/// let mut rx = SharedRing::<u64>::builder(128).backend(Backend::Doorbell).create()?;
/// let (ours, theirs) = UnixStream::pair()?;
/// let (shared, tx) = tokio::join!(rx.share_async(ours), Sender::<u64>::connect_async(theirs));
/// shared?;
/// let mut tx = tx?;
///
/// tx.feed(1).await?; // written, not published
/// assert!(rx.try_recv().is_err());
/// tx.flush().await?; // published
/// assert_eq!(rx.try_recv()?, 1);
///
/// // `forward` sends a stream, then closes the ring (which has room for
/// // all of it here: nothing receives meanwhile).
/// let values = futures_util::stream::iter((2..100).map(Ok));
/// values.forward(tx).await?;
/// let rest: Vec<u64> = rx.map(|r| r.unwrap()).collect().await;
/// assert_eq!(rest, (2..100).collect::<Vec<_>>());
/// # Ok(()) }
/// ```
impl<T: Pod> futures_sink::Sink<T> for Sender<T> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_reserve(cx, 1).map_ok(drop)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), Error> {
        self.get_mut().tx.stage(&item)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(self.get_mut().tx.publish())
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(self.get_mut().tx.close())
    }
}
