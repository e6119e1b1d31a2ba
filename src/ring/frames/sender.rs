//! The sending end of a ring of frames: a typed ring's Sender of words,
//! whose waits for space wait for as many words as the frame's placement
//! needs (`walk::plan`), and the grant a frame is written in.

use std::fmt;
use std::os::unix::net::UnixStream;

use super::super::core::Tx;
use super::super::{SendManyError, Sender};
use super::walk::{self, Plan, WORD};
use super::{TYPE_TAG, TryReserveError};
use crate::{Error, handoff};

/// The sending end of a ring of byte frames, in the process that received
/// it.
///
/// ```no_run
/// # fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
/// use memfd_tripwire::ring::frames::FrameSender;
/// let mut tx = FrameSender::connect(sock)?;
/// tx.blocking_send(b"hello")?;
/// // Or fill the frame in place, then publish it:
/// let mut grant = tx.blocking_reserve(12)?;
/// grant.write(0, b"hello, ")?;
/// grant.write(7, b"world")?;
/// grant.commit()?;
/// # Ok(()) }
/// ```
pub struct FrameSender {
    /// The typed ring's Sender of words the frames are written in.
    pub(super) inner: Sender<u64>,
    /// A frame the `Sink` accepted while the ring had no room for it:
    /// written by its next `poll_ready`, `poll_flush` or `poll_close` (or,
    /// if there is room then, by the drop).
    pub(super) held: Option<Vec<u8>>,
}

impl Drop for FrameSender {
    fn drop(&mut self) {
        // A frame the Sink holds goes if there is room for it now (the
        // typed Sender's drop then publishes it and closes the ring); else
        // it is lost, as a `BufWriter`'s buffer whose last write fails.
        if let Some(frame) = self.held.take() {
            let _ = self.try_send(&frame);
        }
    }
}

impl fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameSender")
            .field("capacity", &self.capacity())
            .field("head", &self.inner.tx.head)
            .field("backend", &self.inner.tx.producer.backend())
            .field("held", &self.held.as_ref().map(Vec::len))
            .finish()
    }
}

/// A frame reserved in the ring, contiguous, to fill in place with
/// [`write`](FrameGrant::write) and publish with
/// [`commit`](FrameGrant::commit) (or
/// [`commit_len`](FrameGrant::commit_len)). Dropped without a commit, it
/// publishes nothing: the Receiver never sees it, and the next reservation
/// reuses its space.
///
/// Its bytes start as whatever the ring held there (older frames): write
/// every byte you commit.
///
/// ```no_run
/// # fn f(mut tx: memfd_tripwire::ring::frames::FrameSender) -> Result<(), memfd_tripwire::Error> {
/// let mut grant = tx.blocking_reserve(8)?;
/// grant.write(0, &42u64.to_le_bytes())?;
/// grant.commit()?;
/// # Ok(()) }
/// ```
#[must_use = "a grant publishes nothing until .commit()"]
pub struct FrameGrant<'a> {
    tx: &'a mut Tx<u64>,
    /// Byte offset of the frame's length word in the byte area.
    offset: usize,
    len: usize,
    /// Words of skip marker before the frame (0: none), published with it.
    skip: u64,
}

impl fmt::Debug for FrameGrant<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameGrant")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("skip", &self.skip)
            .finish()
    }
}

impl FrameGrant<'_> {
    /// The bytes reserved.
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::frames::FrameSender) -> Result<(), memfd_tripwire::Error> {
    /// assert_eq!(tx.blocking_reserve(100)?.len(), 100);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` for a grant of a zero-length frame.
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::frames::FrameSender) -> Result<(), memfd_tripwire::Error> {
    /// assert!(tx.blocking_reserve(0)?.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `bytes` into the frame at `at`, straight into shared memory.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] if `at + bytes.len()` exceeds the grant;
    /// nothing is written then.
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::frames::FrameSender) -> Result<(), memfd_tripwire::Error> {
    /// let mut grant = tx.blocking_reserve(4)?;
    /// grant.write(0, b"ab")?;
    /// grant.write(2, b"cd")?;
    /// assert!(grant.write(3, b"ef").is_err());
    /// grant.commit()?;
    /// # Ok(()) }
    /// ```
    pub fn write(&mut self, at: usize, bytes: &[u8]) -> Result<(), Error> {
        if at.checked_add(bytes.len()).is_none_or(|end| end > self.len) {
            return Err(Error::OutOfBounds {
                offset: at,
                len: bytes.len(),
                size: self.len,
            });
        }
        self.tx
            .ring
            .slots
            .write_bytes(self.offset + WORD + at, bytes)
    }

    /// Publishes the whole frame ([`len`](FrameGrant::len) bytes).
    ///
    /// # Errors
    ///
    /// As [`commit_len`](FrameGrant::commit_len).
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::frames::FrameSender) -> Result<(), memfd_tripwire::Error> {
    /// let mut grant = tx.blocking_reserve(3)?;
    /// grant.write(0, b"abc")?;
    /// grant.commit()?;
    /// # Ok(()) }
    /// ```
    pub fn commit(self) -> Result<(), Error> {
        let len = self.len;
        self.commit_len(len)
    }

    /// Publishes the first `len` bytes of the frame as the frame (for a
    /// writer that knew only a bound when it reserved); the rest of the
    /// grant is free again.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming `"len"` if it exceeds the grant
    /// (nothing is published); [`Error::Io`] if `notify()` fails after the
    /// frame was published.
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::frames::FrameSender) -> Result<(), memfd_tripwire::Error> {
    /// let mut grant = tx.blocking_reserve(64)?;
    /// grant.write(0, b"short")?;
    /// grant.commit_len(5)?;
    /// # Ok(()) }
    /// ```
    pub fn commit_len(self, len: usize) -> Result<(), Error> {
        self.seal(len, None)
    }

    /// Writes the frame's length word `len` (and its skip marker), then
    /// publishes it now (`batch` `None`), or counts it as written and
    /// publishes once `batch` words or more wait (a batched send).
    fn seal(self, len: usize, batch: Option<u64>) -> Result<(), Error> {
        if len > self.len {
            return Err(Error::invalid(
                "len",
                len.to_string(),
                format!("at most the {} bytes reserved", self.len),
            ));
        }
        let slots = &self.tx.ring.slots;
        slots.write(self.offset, &(len as u64))?;
        if self.skip > 0 {
            let at = self.tx.ring.header.slot_offset(self.tx.next());
            slots.write(at, &walk::SKIP)?;
        }
        let words = self.skip + walk::words(len);
        match batch {
            None => self.tx.publish_next(words)?,
            Some(batch) => self.tx.stage_next(words, batch),
        }
    }
}

impl FrameSender {
    /// Attaches to the ring of frames a
    /// [`FrameReceiver`](super::FrameReceiver) shares over the other end of
    /// `sock`.
    ///
    /// Blocks for the handshake (up to 10 s per frame against a silent
    /// peer): in async code, use `connect_async` (feature `tokio`).
    ///
    /// # Errors
    ///
    /// "wrong protocol" ([`Error::Handshake`]), naming both, at once, if the
    /// peer shares a typed ring or a plain tripwire; otherwise as the typed
    /// ring's [`Sender::connect`].
    ///
    /// ```no_run
    /// # fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
    /// let tx = memfd_tripwire::ring::frames::FrameSender::connect(sock)?;
    /// # Ok(()) }
    /// ```
    pub fn connect(sock: UnixStream) -> Result<FrameSender, Error> {
        handoff::block_on(Self::connect_on(handoff::Blocking(sock)))
    }

    /// The handshake of [`connect`](FrameSender::connect) over any driver.
    pub(super) async fn connect_on<W: handoff::Wait>(w: W) -> Result<FrameSender, Error> {
        let inner = Sender::<u64>::connect_on(w, handoff::FRAMES_TAG, TYPE_TAG).await?;
        Ok(FrameSender { inner, held: None })
    }

    /// The capacity in bytes (length words and padding included).
    ///
    /// ```no_run
    /// # fn f(tx: memfd_tripwire::ring::frames::FrameSender) {
    /// println!("{} bytes", tx.capacity());
    /// # }
    /// ```
    pub fn capacity(&self) -> usize {
        self.inner.capacity() * WORD
    }

    /// The largest frame the ring carries: the capacity less one length
    /// word. A larger one is refused ([`Error::InvalidArgument`]).
    ///
    /// ```no_run
    /// # fn f(tx: memfd_tripwire::ring::frames::FrameSender) {
    /// assert_eq!(tx.max_frame(), tx.capacity() - 8);
    /// # }
    /// ```
    pub fn max_frame(&self) -> usize {
        walk::max_len(self.inner.capacity() as u64)
    }

    /// Bytes sent that the Receiver has not yet taken, as far as it has
    /// published (length words, padding and skipped space included).
    ///
    /// ```no_run
    /// # fn f(tx: memfd_tripwire::ring::frames::FrameSender) {
    /// println!("{} of {} bytes in flight", tx.len(), tx.capacity());
    /// # }
    /// ```
    pub fn len(&self) -> usize {
        self.inner.len() * WORD
    }

    /// `true` when the Receiver has taken everything sent.
    ///
    /// ```no_run
    /// # fn f(tx: memfd_tripwire::ring::frames::FrameSender) {
    /// if tx.is_empty() { println!("all caught up"); }
    /// # }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `true` once the Receiver is gone (dropped, or its process died), as
    /// the typed ring's [`Sender::is_closed`].
    ///
    /// ```no_run
    /// # fn f(tx: memfd_tripwire::ring::frames::FrameSender) {
    /// if tx.is_closed() { eprintln!("receiver gone"); }
    /// # }
    /// ```
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// The words a frame of `len` bytes takes, or why it can never be sent.
    pub(super) fn words(&self, len: usize) -> Result<u64, Error> {
        let max = self.max_frame();
        if len > max {
            return Err(Error::invalid(
                "frame length",
                len.to_string(),
                format!(
                    "at most {max} bytes (the ring's {} less a length word): make a larger \
                     ring, or split the frame",
                    self.capacity()
                ),
            ));
        }
        Ok(walk::words(len))
    }

    /// Places a frame of `words` words with `free` words free: publishes a
    /// skip marker alone if the plan says so, then `Ok(skip)` for a grant
    /// after a skip of `skip` words, or `Err(need)`: wait for `need` free
    /// words and place again.
    pub(super) fn place(&mut self, words: u64, mut free: u64) -> Result<Result<u64, u64>, Error> {
        let tx = &mut self.inner.tx;
        let capacity = u64::from(tx.ring.header.capacity);
        loop {
            let offset = tx.ring.header.slot_offset(tx.next());
            match walk::plan(words, (offset / WORD) as u64, capacity, free) {
                Plan::Grant { skip } => return Ok(Ok(skip)),
                Plan::Wait(need) => return Ok(Err(need)),
                Plan::Skip(n) => {
                    tx.ring.slots.write(offset, &walk::SKIP)?;
                    tx.publish_next(n)??;
                    free -= n;
                }
            }
        }
    }

    /// The grant of `len` bytes after a skip of `skip` words, once
    /// [`place`](FrameSender::place) found room.
    pub(super) fn grant(&mut self, len: usize, skip: u64) -> FrameGrant<'_> {
        let tx = &mut self.inner.tx;
        let offset = tx.ring.header.slot_offset(tx.next().wrapping_add(skip));
        FrameGrant {
            tx,
            offset,
            len,
            skip,
        }
    }

    /// Reserves a frame of `len` bytes without waiting.
    ///
    /// # Errors
    ///
    /// [`TryReserveError::Full`] when there is no room now (a skip marker
    /// may have been published meanwhile, which the Receiver steps over);
    /// [`TryReserveError::Closed`] once the Receiver is gone;
    /// [`TryReserveError::Failed`] with [`Error::InvalidArgument`] for a
    /// frame larger than [`max_frame`](FrameSender::max_frame) (nothing is
    /// sent), or [`Error::Corrupt`] for an impossible tail.
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::frames::FrameSender) -> Result<(), Box<dyn std::error::Error>> {
    /// use memfd_tripwire::ring::frames::TryReserveError;
    /// match tx.try_reserve(5) {
    ///     Ok(mut grant) => { grant.write(0, b"hello")?; grant.commit()?; }
    ///     Err(TryReserveError::Full) => println!("full: later"),
    ///     Err(e) => return Err(e.into()),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn try_reserve(&mut self, len: usize) -> Result<FrameGrant<'_>, TryReserveError> {
        self.not_held()?;
        let words = self.words(len)?;
        let free = self.inner.tx.free(words)?;
        match self.place(words, free)? {
            Ok(skip) => Ok(self.grant(len, skip)),
            Err(_) if self.is_closed() => Err(TryReserveError::Closed),
            Err(_) => Err(TryReserveError::Full),
        }
    }

    /// Sends `frame` without waiting: one copy into the ring.
    ///
    /// # Errors
    ///
    /// As [`try_reserve`](FrameSender::try_reserve).
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::frames::FrameSender) {
    /// if let Err(e) = tx.try_send(b"tick") { eprintln!("{e}"); }
    /// # }
    /// ```
    pub fn try_send(&mut self, frame: &[u8]) -> Result<(), TryReserveError> {
        Ok(fill(self.try_reserve(frame.len())?, frame)?)
    }

    /// Reserves a frame of `len` bytes, blocking the thread until there is
    /// room for it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming `"frame length"` for a frame
    /// larger than [`max_frame`](FrameSender::max_frame) (nothing is sent);
    /// [`Error::Closed`] once the Receiver was dropped, [`Error::PeerDied`]
    /// once its process died, [`Error::Corrupt`] for an impossible tail,
    /// as the typed ring's [`Sender::blocking_send`].
    ///
    /// # Panics
    ///
    /// With feature `tokio`, when it would sleep on a thread that drives a
    /// tokio runtime's tasks: use `reserve(len).await` there, or call this
    /// inside `spawn_blocking` (see
    /// [the crate docs](crate#blocking-calls-and-tokio)).
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::frames::FrameSender) -> Result<(), memfd_tripwire::Error> {
    /// let mut grant = tx.blocking_reserve(2)?;
    /// grant.write(0, b"hi")?;
    /// grant.commit()?;
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn blocking_reserve(&mut self, len: usize) -> Result<FrameGrant<'_>, Error> {
        self.reserve_blocking(len, ("FrameSender::blocking_reserve", "reserve(len).await"))
    }

    /// [`blocking_reserve`](FrameSender::blocking_reserve) for the public
    /// `call`.
    #[track_caller]
    fn reserve_blocking(
        &mut self,
        len: usize,
        call: (&'static str, &'static str),
    ) -> Result<FrameGrant<'_>, Error> {
        self.not_held()?;
        let words = self.words(len)?;
        let mut need = words;
        loop {
            let free = self.inner.tx.blocking_reserve(need, call)?;
            match self.place(words, free)? {
                Ok(skip) => return Ok(self.grant(len, skip)),
                Err(more) => need = more,
            }
        }
    }

    /// Sends `frame`, blocking the thread while there is no room: one copy
    /// into the ring.
    ///
    /// # Errors
    ///
    /// As [`blocking_reserve`](FrameSender::blocking_reserve).
    ///
    /// # Panics
    ///
    /// As [`blocking_reserve`](FrameSender::blocking_reserve) (use
    /// `send(frame).await` in a runtime).
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::frames::FrameSender) -> Result<(), memfd_tripwire::Error> {
    /// tx.blocking_send(b"a log line")?;
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn blocking_send(&mut self, frame: &[u8]) -> Result<(), Error> {
        let grant = self.reserve_blocking(
            frame.len(),
            ("FrameSender::blocking_send", "send(frame).await"),
        )?;
        fill(grant, frame)
    }

    /// Sends every frame of `frames`, in order, blocking the thread while
    /// there is no room, and publishes them in batches: one head store and
    /// one `notify()` per few KiB of frames (and before any wait for room,
    /// and after the last), not one per frame. The frames' bytes are copied
    /// into the ring as [`blocking_send`](FrameSender::blocking_send) does.
    ///
    /// What a `BufWriter` is to a byte stream: for many small frames, a
    /// publish per frame costs a memory fence and the head's cache line
    /// per frame, and this is several times faster (see BENCHMARKS.md).
    ///
    /// # Errors
    ///
    /// As [`blocking_send`](FrameSender::blocking_send), in a
    /// [`SendManyError`] that says how many frames were sent (and
    /// published) before it: `frames[sent..]` were not. (One exception: an
    /// [`Error::Io`] from waking the Receiver comes after the batch was
    /// published, with `frames[sent]`, the frame that completed it.)
    ///
    /// # Panics
    ///
    /// As [`blocking_send`](FrameSender::blocking_send) (use
    /// `send_many(frames).await` in a runtime).
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::frames::FrameSender) -> Result<(), memfd_tripwire::ring::SendManyError> {
    /// let lines = ["one", "two", "three"];
    /// tx.blocking_send_many(&lines)?;
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn blocking_send_many<B: AsRef<[u8]>>(
        &mut self,
        frames: &[B],
    ) -> Result<(), SendManyError> {
        let call = ("FrameSender::blocking_send_many", "send_many(frames).await");
        let batch = self.batch();
        self.start_many()?;
        for (sent, frame) in frames.iter().enumerate() {
            let frame = frame.as_ref();
            let staged = match self.stage_now(frame, batch) {
                Some(staged) => staged,
                None => self
                    .reserve_blocking(frame.len(), call)
                    .and_then(|grant| stage(grant, frame, batch)),
            };
            if let Err(error) = staged {
                return Err(self.failed_after(sent, error));
            }
        }
        self.inner.tx.publish().map_err(|error| SendManyError {
            sent: frames.len(),
            error,
        })
    }

    /// Words of frames a batched send writes before it publishes them: an
    /// eighth of the ring (so that the Receiver copies while the Sender
    /// writes), at most 16 KiB (so that it starts soon).
    pub(super) fn batch(&self) -> u64 {
        (self.inner.capacity() as u64 / 8).clamp(1, BATCH_WORDS)
    }

    /// A batched send's check of the Receiver's end at its start (its fast
    /// path, [`stage_now`](FrameSender::stage_now), checks nothing).
    pub(super) fn start_many(&mut self) -> Result<(), SendManyError> {
        self.not_held()
            .and_then(|()| self.inner.tx.free(0).map(drop))
            .map_err(|error| SendManyError { sent: 0, error })
    }

    /// A send other than the Sink's while the Sink holds a frame (that
    /// found no room at `start_send`) would overtake it: refused, until a
    /// `poll_flush` (or `poll_ready`) writes it. (The drop takes the held
    /// frame out before it sends it.)
    pub(super) fn not_held(&self) -> Result<(), Error> {
        if self.held.is_some() {
            return Err(Error::invalid(
                "send",
                "a frame while the Sink holds one that waits for room",
                "a send after the Sink's poll_flush wrote the frame it held",
            ));
        }
        Ok(())
    }

    /// A batched send's fast path: `frame` written and staged (as
    /// [`stage`]) if it fits where the head is by the tail last read, with
    /// no skip, no wait and no check of the Receiver's end; `None` if not
    /// (nothing counted: the slow path writes it again). `Some(Err)`: it
    /// was staged, and publishing the batch it completed failed.
    #[inline]
    pub(super) fn stage_now(&mut self, frame: &[u8], batch: u64) -> Option<Result<(), Error>> {
        let tx = &mut self.inner.tx;
        let capacity = u64::from(tx.ring.header.capacity);
        let words = walk::words(frame.len());
        let at = tx.next() & (capacity - 1);
        if words > tx.free_known() || words > capacity - at {
            return None;
        }
        let offset = at as usize * WORD;
        // The mapping's own copies: their error has no destructor, which
        // kept a drop call in this loop (12% of a 64-byte send).
        let slots = tx.ring.slots.mapping();
        if slots.write_from(offset + WORD, frame).is_err()
            || slots
                .write_from(offset, &(frame.len() as u64).to_ne_bytes())
                .is_err()
        {
            return None;
        }
        Some(tx.stage_next(words, batch))
    }

    /// A batched send's `error` after `sent` frames: the frames written
    /// before it are whole, and published now.
    #[cold]
    pub(super) fn failed_after(&mut self, sent: usize, error: Error) -> SendManyError {
        let _ = self.inner.tx.publish();
        SendManyError { sent, error }
    }
}

/// The most words of frames a batched send writes before publishing them.
const BATCH_WORDS: u64 = 16 * 1024 / WORD as u64;

/// Writes `frame` into `grant`, which has its length, and commits it.
pub(super) fn fill(mut grant: FrameGrant<'_>, frame: &[u8]) -> Result<(), Error> {
    grant.write(0, frame)?;
    grant.commit()
}

/// Writes `frame` into `grant`, which has its length, and counts it as
/// written, publishing once `batch` words wait (a batched send).
pub(super) fn stage(mut grant: FrameGrant<'_>, frame: &[u8], batch: u64) -> Result<(), Error> {
    grant.write(0, frame)?;
    grant.seal(frame.len(), Some(batch))
}
