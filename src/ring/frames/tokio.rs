//! The async receive and send of frames: the typed ring's tokio driver
//! (`poll_take`, `poll_reserve`), taking or placing one frame at a time.

use std::task::{Context, Poll};

use super::super::SendManyError;
use super::batch::{FrameBatch, pop_frames};
use super::receiver::pop_frame;
use super::sender::{fill, stage};
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

/// Publishes the frames a batched send wrote, when it drops.
struct PublishOnDrop<'a>(&'a mut FrameSender);

impl Drop for PublishOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.inner.tx.publish();
    }
}
