//! The async receive and send of frames: the typed ring's tokio driver
//! (`poll_take`, `poll_reserve`), taking or placing one frame at a time.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::super::SendManyError;
use super::super::core::closed_by_sender;
use super::batch::{FrameBatch, pop_frames};
use super::receiver::pop_frame;
use super::sender::{fill, stage};
use super::walk;
use super::{FrameGrant, FrameReceiver, FrameSender};
use crate::{Error, handoff};

impl FrameReceiver {
    /// The async [`share`](FrameReceiver::share), as the typed ring's
    /// [`Receiver::share_async`](crate::ring::Receiver::share_async).
    ///
    /// # Cancel safety
    ///
    /// A dropped `share_async` leaves the ring unshared and closes `peer`.
    ///
    /// # Errors
    ///
    /// As [`share`](FrameReceiver::share); [`Error::Io`] outside a tokio
    /// runtime.
    ///
    /// # Panics
    ///
    /// In a runtime without its time driver (tokio's timer panics).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::unix::net::UnixStream;
    /// use memfd_tripwire::{Backend, ring::frames::{FrameSender, SharedFrames}};
    ///
    /// let mut rx = SharedFrames::builder(4096).backend(Backend::Doorbell).create()?;
    /// let (ours, theirs) = UnixStream::pair()?;
    /// let (shared, tx) = tokio::join!(rx.share_async(ours), FrameSender::connect_async(theirs));
    /// shared?;
    /// tx?.send(b"hello").await?;
    /// let mut buf = Vec::new();
    /// assert_eq!(rx.recv(&mut buf).await?, Some(5));
    /// assert_eq!(buf, b"hello");
    /// # Ok(()) }
    /// ```
    pub async fn share_async(&mut self, peer: std::os::unix::net::UnixStream) -> Result<(), Error> {
        self.inner.share_async(peer).await
    }

    /// Polls for the next frame, copied into `buf`; the building block of
    /// [`recv`](FrameReceiver::recv). Spends a unit of tokio's coop budget
    /// per frame (and per wake-up that found none), as the typed ring.
    ///
    /// # Errors
    ///
    /// As [`recv`](FrameReceiver::recv).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, Error, ring::frames::SharedFrames};
    /// let mut rx = SharedFrames::builder(4096).backend(Backend::Poll).create().unwrap();
    /// let waker = std::task::Waker::noop();
    /// let mut cx = std::task::Context::from_waker(&waker);
    /// let mut buf = Vec::new();
    /// // Never shared: no Sender can reach it, so no wait.
    /// assert!(matches!(rx.poll_recv(&mut cx, &mut buf), std::task::Poll::Ready(Err(Error::NotShared { .. }))));
    /// ```
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<Result<Option<usize>, Error>> {
        self.inner.poll_take(cx, |rx| pop_frame(rx, buf))
    }

    /// Waits for the next frame and copies it into `buf`; returns its
    /// length. `Ok(None)` once the Sender was dropped and every frame it
    /// sent was received.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a frame is taken (and `buf` changed) only in the poll
    /// that returns it.
    ///
    /// # Errors
    ///
    /// As the typed ring's [`Receiver::recv`](crate::ring::Receiver::recv);
    /// [`Error::Corrupt`] for a hostile length word or index.
    ///
    /// ```no_run
    /// # async fn f(mut rx: memfd_tripwire::ring::frames::FrameReceiver) -> Result<(), memfd_tripwire::Error> {
    /// let mut buf = Vec::new();
    /// while let Some(len) = rx.recv(&mut buf).await? {
    ///     println!("{len} bytes");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recv(&mut self, buf: &mut Vec<u8>) -> Result<Option<usize>, Error> {
        std::future::poll_fn(|cx| self.poll_recv(cx, buf)).await
    }

    /// Waits for at least one frame, then appends up to `limit` frames (at
    /// least one) to `batch` without waiting further (fewer once about
    /// 16 KiB were taken). Returns how many; 0
    /// means the Sender closed and every frame was received. The batched
    /// [`recv`](FrameReceiver::recv), as
    /// [`blocking_recv_many`](FrameReceiver::blocking_recv_many); spends
    /// one unit of tokio's coop budget per call.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: frames are taken (and `batch` changed) only in the
    /// poll that returns them.
    ///
    /// # Errors
    ///
    /// As [`recv`](FrameReceiver::recv); frames already appended stay in
    /// `batch`.
    ///
    /// ```no_run
    /// # async fn f(mut rx: memfd_tripwire::ring::frames::FrameReceiver) -> Result<(), memfd_tripwire::Error> {
    /// use memfd_tripwire::ring::frames::FrameBatch;
    /// let mut batch = FrameBatch::new();
    /// while rx.recv_many(&mut batch, 1024).await? > 0 {
    ///     for frame in &batch {
    ///         println!("{} bytes", frame.len());
    ///     }
    ///     batch.clear();
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recv_many(
        &mut self,
        batch: &mut FrameBatch,
        limit: usize,
    ) -> Result<usize, Error> {
        let limit = limit.max(1);
        let taken = std::future::poll_fn(|cx| {
            self.inner.poll_take(cx, |rx| {
                pop_frames(rx, batch, limit).map(|n| (n > 0).then_some(n))
            })
        })
        .await?;
        Ok(taken.unwrap_or(0))
    }
}

impl FrameSender {
    /// The async [`connect`](FrameSender::connect).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes `sock` and whatever was attached.
    ///
    /// # Errors
    ///
    /// As [`connect`](FrameSender::connect); [`Error::Io`] outside a tokio
    /// runtime.
    ///
    /// # Panics
    ///
    /// In a runtime without its time driver (tokio's timer panics).
    ///
    /// ```no_run
    /// # async fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
    /// let tx = memfd_tripwire::ring::frames::FrameSender::connect_async(sock).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_async(sock: std::os::unix::net::UnixStream) -> Result<FrameSender, Error> {
        Self::connect_on(handoff::Reactor::new(sock)?).await
    }

    /// Reserves a frame of `len` bytes, waiting while there is no room.
    /// Each look spends a unit of tokio's coop budget, as the typed ring's
    /// `send`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is reserved until it completes (a skip marker
    /// it published meanwhile is stepped over by the Receiver).
    ///
    /// # Errors
    ///
    /// As [`blocking_reserve`](FrameSender::blocking_reserve).
    ///
    /// ```no_run
    /// # async fn f(mut tx: memfd_tripwire::ring::frames::FrameSender) -> Result<(), memfd_tripwire::Error> {
    /// let mut grant = tx.reserve(2).await?;
    /// grant.write(0, b"hi")?;
    /// grant.commit()?;
    /// # Ok(()) }
    /// ```
    pub async fn reserve(&mut self, len: usize) -> Result<FrameGrant<'_>, Error> {
        self.not_held()?;
        let words = self.words(len)?;
        let mut need = words;
        loop {
            let free = std::future::poll_fn(|cx| self.inner.poll_reserve(cx, need)).await?;
            match self.place(words, free)? {
                Ok(skip) => return Ok(self.grant(len, skip)),
                Err(more) => need = more,
            }
        }
    }

    /// Sends `frame`, waiting while there is no room: one copy into the
    /// ring.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the frame is written and published only in the poll
    /// that completes.
    ///
    /// # Errors
    ///
    /// As [`blocking_send`](FrameSender::blocking_send).
    ///
    /// ```no_run
    /// # async fn f(mut tx: memfd_tripwire::ring::frames::FrameSender) -> Result<(), memfd_tripwire::Error> {
    /// tx.send(b"a log line").await?;
    /// # Ok(()) }
    /// ```
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), Error> {
        let grant = self.reserve(frame.len()).await?;
        fill(grant, frame)
    }

    /// Sends every frame of `frames`, in order, waiting while there is no
    /// room, and publishes them in batches, as
    /// [`blocking_send_many`](FrameSender::blocking_send_many). Each wait
    /// for room spends a unit of tokio's coop budget, as
    /// [`send`](FrameSender::send).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe as a whole: dropped midway, a prefix of `frames`
    /// was sent (and is published as the future drops), the rest not.
    /// Loop over [`send`](FrameSender::send) when that matters.
    ///
    /// # Errors
    ///
    /// As [`blocking_send_many`](FrameSender::blocking_send_many).
    ///
    /// ```no_run
    /// # async fn f(mut tx: memfd_tripwire::ring::frames::FrameSender) -> Result<(), memfd_tripwire::ring::SendManyError> {
    /// tx.send_many(&[b"one".as_slice(), b"two"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_many<B: AsRef<[u8]>>(&mut self, frames: &[B]) -> Result<(), SendManyError> {
        // Frames written by a future dropped midway are published as it
        // drops: whole, and in order.
        let this = PublishOnDrop(self);
        let batch = this.0.batch();
        this.0.start_many()?;
        for (sent, frame) in frames.iter().enumerate() {
            let frame = frame.as_ref();
            let staged = match this.0.stage_now(frame, batch) {
                Some(staged) => staged,
                None => match this.0.reserve(frame.len()).await {
                    Ok(grant) => stage(grant, frame, batch),
                    Err(e) => Err(e),
                },
            };
            if let Err(error) = staged {
                return Err(this.0.failed_after(sent, error));
            }
        }
        this.0.inner.tx.publish().map_err(|error| SendManyError {
            sent: frames.len(),
            error,
        })
    }
}

/// The frame Sender as a [`Sink`](futures_sink::Sink) of `Vec<u8>` frames,
/// as the typed ring's [`Sender`](crate::ring::Sender) is one of `T`, with
/// `poll_flush` meaning "published". (One item type, not any
/// `AsRef<[u8]>`: with several, `tx.flush()` would need a type annotation.
/// A `String` is `into_bytes()` away.)
///
/// - `start_send` writes the frame into the ring without publishing it;
///   the frames written are published together once 16 KiB (or an eighth
///   of the ring) wait, by `poll_flush`, before any wait for room, and by
///   `poll_close`, as [`send_many`](FrameSender::send_many) publishes;
/// - a frame's size is known only at `start_send`, so `poll_ready` does not
///   wait for room: a frame that finds none is held (the `Vec` itself) and
///   written by the next `poll_ready`, `poll_flush` or `poll_close`, which
///   wait for its room; so the Sink holds at most one frame, and a full
///   ring holds the writer back at its next `poll_ready`;
/// - `poll_ready` spends a unit of tokio's coop budget per frame, as
///   [`send`](FrameSender::send);
/// - `poll_close` publishes, then closes the ring cleanly, as dropping the
///   Sender does: the Receiver takes every frame, then ends with
///   `Ok(None)`.
///
/// A frame larger than [`max_frame`](FrameSender::max_frame) is refused
/// at `start_send` ([`Error::InvalidArgument`]; nothing is written), and
/// so is a `start_send` while a frame is held (`poll_ready` not called),
/// and one after `poll_close` (naming `"Sender"`). While a frame is held,
/// the Sender's own sends and reserves (`send`, `try_send`,
/// `blocking_send`, `send_many`, ...) are refused
/// ([`Error::InvalidArgument`] naming `"send"`, nothing written): they
/// would overtake it; `flush` first. A second `poll_close` is `Ok`.
/// A `FrameSender` dropped while it holds a frame sends it if there is
/// room then; else that frame is lost, as a dropped `BufWriter`'s buffer
/// may be: flush or close a Sink before dropping it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::unix::net::UnixStream;
/// use futures_util::{SinkExt, StreamExt};
/// use memfd_tripwire::{Backend, ring::frames::{FrameSender, SharedFrames}};
///
/// let mut rx = SharedFrames::builder(4096).backend(Backend::Doorbell).create()?;
/// let (ours, theirs) = UnixStream::pair()?;
/// let (shared, tx) = tokio::join!(rx.share_async(ours), FrameSender::connect_async(theirs));
/// shared?;
/// let mut tx = tx?;
///
/// tx.feed(b"written".to_vec()).await?; // not published yet
/// assert!(rx.try_recv(&mut Vec::new()).is_err());
/// tx.flush().await?; // published
/// let mut buf = Vec::new();
/// assert_eq!(rx.recv(&mut buf).await?, Some(7));
///
/// // `forward` sends a stream of frames, then closes the ring.
/// let lines = futures_util::stream::iter((0..10).map(|i| Ok(format!("line {i}").into_bytes())));
/// lines.forward(tx).await?;
/// let mut n = 0;
/// while let Some(len) = rx.recv(&mut buf).await? {
///     assert_eq!(&buf[..len], format!("line {n}").as_bytes());
///     n += 1;
/// }
/// assert_eq!(n, 10);
/// # Ok(()) }
/// ```
impl futures_sink::Sink<Vec<u8>> for FrameSender {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if this.held.is_none() {
            ready!(crate::tokio::spend_unit(cx));
        }
        this.poll_held(cx)
    }

    fn start_send(self: Pin<&mut Self>, frame: Vec<u8>) -> Result<(), Error> {
        let this = self.get_mut();
        if this.inner.tx.closed {
            // `stage_now` checks nothing: it would write (and publish)
            // after the close.
            return Err(closed_by_sender());
        }
        if this.held.is_some() {
            return Err(Error::invalid(
                "start_send",
                "a frame while the last one still waits for room",
                "a frame after poll_ready returned Ready(Ok(()))",
            ));
        }
        this.words(frame.len())?;
        let batch = this.batch();
        match this.stage_now(&frame, batch) {
            Some(staged) => staged,
            None => {
                this.held = Some(frame);
                Ok(())
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        ready!(this.poll_held(cx))?;
        Poll::Ready(this.inner.tx.publish())
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if this.inner.tx.closed {
            // Closed already (nothing can be held then): as the typed
            // ring's Sink, not "a send after the close".
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_held(cx))?;
        Poll::Ready(this.inner.tx.close())
    }
}

impl FrameSender {
    /// Writes the frame the Sink holds (without publishing it), waiting
    /// for its room; with none held, only checks that the Receiver is
    /// there (as a send would).
    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let Some(len) = self.held.as_ref().map(Vec::len) else {
            return Poll::Ready(self.inner.tx.free(0).map(drop));
        };
        let words = walk::words(len);
        let mut need = words;
        loop {
            let free = ready!(self.inner.poll_reserve(cx, need))?;
            match self.place(words, free)? {
                Ok(skip) => {
                    let frame = self.held.take().expect("a held frame");
                    let batch = self.batch();
                    return Poll::Ready(stage(self.grant(len, skip), &frame, batch));
                }
                Err(more) => need = more,
            }
        }
    }
}

/// Publishes the frames a batched send wrote, when it drops.
struct PublishOnDrop<'a>(&'a mut FrameSender);

impl Drop for PublishOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.inner.tx.publish();
    }
}
