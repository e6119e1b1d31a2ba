//! The receiving end of a ring of frames: a typed ring of words
//! ([`Receiver<u64>`](super::super::Receiver)) whose step is the ring's,
//! taking one frame at a time ([`pop_frame`]) instead of one word.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::super::core::{Rx, corrupt};
use super::super::{Builder, Receiver, RingStats, TryRecvError};
use super::batch::{FrameBatch, pop_frames};
use super::walk::{self, WORD};
use crate::{BackendKind, Error};

/// The receiving end of a ring of byte frames; from
/// [`SharedFrames::builder`](super::SharedFrames::builder).
///
/// Each receive copies one frame into a caller's `Vec<u8>` (replacing what
/// it held; its allocation is reused):
#[cfg_attr(
    feature = "tokio",
    doc = " [`recv`](FrameReceiver::recv) (async, cancel safe),"
)]
#[cfg_attr(
    not(feature = "tokio"),
    doc = " `recv` (async, cancel safe; feature `tokio`),"
)]
/// [`blocking_recv`](FrameReceiver::blocking_recv) or
/// [`try_recv`](FrameReceiver::try_recv).
///
/// ```
/// use memfd_tripwire::{Backend, ring::{TryRecvError, frames::SharedFrames}};
/// let mut rx = SharedFrames::builder(4096).backend(Backend::Doorbell).create().unwrap();
/// let mut buf = Vec::new();
/// assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty))); // nothing sent yet
/// ```
pub struct FrameReceiver {
    /// The typed ring of words the frames live in (its core walks skips).
    pub(super) inner: Receiver<u64>,
}

impl fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameReceiver")
            .field("capacity", &self.capacity())
            .field("backend", &self.backend())
            .field("tail", &self.inner.rx.tail)
            .field("done", &self.inner.done)
            .finish()
    }
}

/// Takes the next published frame, if any, into `buf` (no waiting, no
/// ACK): one copy of the length word, checked (`walk::frame`), then one
/// bounds-checked copy of the payload. The skip marker before it was
/// stepped over by `Rx::ready`. Returns the frame's length.
#[inline]
pub(super) fn pop_frame(rx: &mut Rx<u64>, buf: &mut Vec<u8>) -> Result<Option<usize>, Error> {
    let ready = rx.ready()? as u64;
    if ready == 0 {
        return Ok(None);
    }
    let header = rx.ring.header;
    let offset = header.slot_offset(rx.tail);
    let word = rx.ring.word(offset)?;
    let frame = walk::frame(
        word,
        (offset / WORD) as u64,
        u64::from(header.capacity),
        ready,
    )
    .map_err(|e| corrupt(e, "Receiver"))?;
    // Only the growth is zeroed: a reused buffer costs one copy.
    buf.truncate(frame.len);
    buf.resize(frame.len, 0);
    rx.ring.slots.mapping().read_into(offset + WORD, buf)?;
    rx.received += 1;
    rx.advance(frame.words);
    Ok(Some(frame.len))
}

impl FrameReceiver {
    pub(super) fn create(ring: Builder<u64>) -> Result<Self, Error> {
        let mut inner = ring.create()?;
        inner.rx.framed = true;
        Ok(FrameReceiver { inner })
    }

    /// Hands the ring to the Sender on the other end of `peer` (which calls
    /// [`FrameSender::connect`](super::FrameSender::connect)), as the typed
    /// ring's [`Receiver::share`].
    ///
    /// Blocks for the handshake (up to 10 s per frame against a silent
    /// peer): in async code, use `share_async` (feature `tokio`).
    ///
    /// # Errors
    ///
    /// [`Error::Handshake`] if the exchange fails or the Sender refuses;
    /// "wrong protocol", naming both, at once, if the peer expected a typed
    /// ring ([`Sender::connect`](crate::ring::Sender::connect)) or a plain
    /// tripwire. The ring stays unshared: share it again.
    ///
    /// ```no_run
    /// # fn f(peer: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
    /// # use memfd_tripwire::ring::frames::SharedFrames;
    /// let mut rx = SharedFrames::builder(1 << 20).create()?;
    /// rx.share(peer)?;
    /// # Ok(()) }
    /// ```
    pub fn share(&mut self, peer: UnixStream) -> Result<(), Error> {
        self.inner.share(peer)
    }

    /// The capacity in bytes (length words and padding included).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::frames::SharedFrames};
    /// let rx = SharedFrames::builder(4096).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(rx.capacity(), 4096);
    /// ```
    pub fn capacity(&self) -> usize {
        self.inner.capacity() * WORD
    }

    /// The largest frame the ring carries: the capacity less one length
    /// word (as [`FrameSender::max_frame`](super::FrameSender::max_frame)).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::frames::SharedFrames};
    /// let rx = SharedFrames::builder(4096).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(rx.max_frame(), 4088);
    /// ```
    pub fn max_frame(&self) -> usize {
        walk::max_len(self.inner.capacity() as u64)
    }

    /// The tripwire backend in use.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, BackendKind, ring::frames::SharedFrames};
    /// let rx = SharedFrames::builder(4096).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(rx.backend(), BackendKind::Poll);
    /// ```
    pub fn backend(&self) -> BackendKind {
        self.inner.backend()
    }

    /// Counters of frames and waits (see [`RingStats`]: `received` counts
    /// frames).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::frames::SharedFrames};
    /// let rx = SharedFrames::builder(4096).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(rx.stats().received, 0);
    /// ```
    pub fn stats(&self) -> RingStats {
        self.inner.stats()
    }

    /// Bytes published and not yet received (length words, padding and
    /// skipped space included; an impossible head counts as none).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::frames::SharedFrames};
    /// let rx = SharedFrames::builder(4096).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(rx.len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.inner.len() * WORD
    }

    /// `true` when nothing published waits ([`len`](FrameReceiver::len) is 0).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::frames::SharedFrames};
    /// let rx = SharedFrames::builder(4096).backend(Backend::Poll).create().unwrap();
    /// assert!(rx.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes now how far this end has received, as the typed ring's
    /// [`Receiver::flush`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if ringing a waiting Sender fails.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::frames::SharedFrames};
    /// let mut rx = SharedFrames::builder(4096).backend(Backend::Poll).create().unwrap();
    /// rx.flush().unwrap();
    /// ```
    pub fn flush(&mut self) -> Result<(), Error> {
        self.inner.flush()
    }

    /// Gets ready to sleep, for your own event loop, as the typed ring's
    /// [`Receiver::rearm`]: `Ok(true)` means sleep on
    /// [`as_fd`](AsFd::as_fd) until readiness or the
    /// [`deadline`](FrameReceiver::deadline); `Ok(false)` means receive
    /// first.
    ///
    /// # Errors
    ///
    /// As [`Receiver::rearm`]; [`Error::Corrupt`] for a hostile skip marker.
    ///
    /// ```
    /// # use std::os::unix::net::UnixStream;
    /// # use memfd_tripwire::{Backend, ring::frames::{FrameSender, SharedFrames}};
    /// let mut rx = SharedFrames::builder(4096).backend(Backend::Doorbell).create().unwrap();
    /// # let (ours, theirs) = UnixStream::pair().unwrap();
    /// # let tx = std::thread::spawn(move || FrameSender::connect(theirs));
    /// rx.share(ours).unwrap(); // the Sender connects on the other end
    /// # let _tx = tx.join().unwrap().unwrap();
    /// assert!(rx.rearm().unwrap()); // empty: safe to sleep
    /// ```
    pub fn rearm(&mut self) -> Result<bool, Error> {
        self.inner.rearm()
    }

    /// When an event loop must call [`rearm`](FrameReceiver::rearm) again
    /// even if the fd stays quiet, as [`Receiver::deadline`].
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::frames::SharedFrames};
    /// let rx = SharedFrames::builder(4096).backend(Backend::Doorbell).create().unwrap();
    /// assert_eq!(rx.deadline(), None); // no ACK in flight
    /// ```
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline()
    }

    /// Takes a frame into `buf` if one is there, without waiting or
    /// ACKing; returns its length (`buf` holds exactly the frame).
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`]: nothing now; more may come.
    /// [`TryRecvError::Closed`]: the Sender was dropped and every frame it
    /// sent was received. [`TryRecvError::Failed`]: [`Error::PeerDied`]
    /// once the Sender's process died and every frame it published was
    /// received; [`Error::Corrupt`] for a hostile length word or index
    /// (`buf` is then unchanged).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::{TryRecvError, frames::SharedFrames}};
    /// let mut rx = SharedFrames::builder(4096).backend(Backend::Poll).create().unwrap();
    /// let mut buf = Vec::new();
    /// assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));
    /// ```
    pub fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<usize, TryRecvError> {
        if self.inner.done {
            return Err(TryRecvError::Closed);
        }
        match pop_frame(&mut self.inner.rx, buf)? {
            Some(len) => Ok(len),
            None => self.inner.finished(|rx| pop_frame(rx, buf)),
        }
    }

    /// Waits for the next frame, blocking the thread, and copies it into
    /// `buf`; returns its length. `Ok(None)` once the Sender was dropped
    /// and every frame it sent was received.
    ///
    /// # Errors
    ///
    /// As the typed ring's [`Receiver::blocking_recv`]; [`Error::Corrupt`]
    /// for a hostile length word or index.
    ///
    /// # Panics
    ///
    /// With feature `tokio`, when it would sleep on a thread that drives a
    /// tokio runtime's tasks: use `recv(buf).await` there, or call this
    /// inside `spawn_blocking` (see
    /// [the crate docs](crate#blocking-calls-and-tokio)).
    ///
    /// ```no_run
    /// # fn f(mut rx: memfd_tripwire::ring::frames::FrameReceiver) -> Result<(), memfd_tripwire::Error> {
    /// let mut buf = Vec::new();
    /// while let Some(len) = rx.blocking_recv(&mut buf)? {
    ///     println!("{len} bytes: {:?}", String::from_utf8_lossy(&buf));
    /// }
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn blocking_recv(&mut self, buf: &mut Vec<u8>) -> Result<Option<usize>, Error> {
        self.inner
            .recv_blocking(("FrameReceiver::blocking_recv", "recv(buf).await"), |rx| {
                pop_frame(rx, buf)
            })
    }

    /// Waits for at least one frame, blocking the thread, then appends up
    /// to `limit` frames (at least one) to `batch` without waiting further,
    /// fewer once about 16 KiB of them were taken (so that the batch stays
    /// in the cache). Returns how many; 0 means the Sender closed and every
    /// frame was received.
    ///
    /// The batched [`blocking_recv`](FrameReceiver::blocking_recv), as the
    /// typed ring's [`Receiver::blocking_recv_many`]: what is published is
    /// copied out in large pieces and its length words are checked in the
    /// copy, not one frame per call. For many small frames it is several
    /// times faster (see BENCHMARKS.md).
    ///
    /// # Errors
    ///
    /// As [`blocking_recv`](FrameReceiver::blocking_recv); frames already
    /// appended stay in `batch`.
    ///
    /// # Panics
    ///
    /// As [`blocking_recv`](FrameReceiver::blocking_recv) (use
    /// `recv_many(batch, limit).await` in a runtime).
    ///
    /// ```no_run
    /// # fn f(mut rx: memfd_tripwire::ring::frames::FrameReceiver) -> Result<(), memfd_tripwire::Error> {
    /// use memfd_tripwire::ring::frames::FrameBatch;
    /// let mut batch = FrameBatch::new();
    /// while rx.blocking_recv_many(&mut batch, 1024)? > 0 {
    ///     for frame in &batch {
    ///         println!("{} bytes", frame.len());
    ///     }
    ///     batch.clear();
    /// }
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn blocking_recv_many(
        &mut self,
        batch: &mut FrameBatch,
        limit: usize,
    ) -> Result<usize, Error> {
        let limit = limit.max(1);
        let taken = self.inner.recv_blocking(
            (
                "FrameReceiver::blocking_recv_many",
                "recv_many(batch, limit).await",
            ),
            |rx| pop_frames(rx, batch, limit).map(|n| (n > 0).then_some(n)),
        )?;
        Ok(taken.unwrap_or(0))
    }
}

impl AsFd for FrameReceiver {
    /// The tripwire's wake-up fd, as [`Receiver`]'s.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl AsRawFd for FrameReceiver {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}
