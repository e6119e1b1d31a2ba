//! The producing end of a ring.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};

use bytemuck::Pod;

use super::layout::{self, Header};
use super::protocol;
use super::{SendError, SendManyError, TrySendError};
use crate::sys::{self, Bell};
use crate::{Error, Producer, Region, SharedMemory};

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
    producer: Producer,
    region: Region,
    pub(super) control: Region,
    pub(super) slots: Region,
    space: Bell,
    /// Duplicates of `space` and of the handshake socket registered with
    /// tokio, once, at the first wait for space in async code.
    #[cfg(feature = "tokio")]
    registered: Option<r#async::Registered>,
    /// The waiting flag is set in the state word (a wait was announced and
    /// not yet withdrawn, e.g. by a cancelled `send`).
    waiting: bool,
    header: Header,
    head: u64,
    tail: u64,
    /// How long a blocking Sender that finds the ring full polls for space
    /// before it sleeps: the price of a sleep on this host (`ring::spin`).
    space_spin: std::time::Duration,
    /// The process that connected: a copy dropped in a forked child leaves
    /// the ring open.
    pid: u32,
    _t: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.header.capacity)
            .field("head", &self.head)
            .field("backend", &self.producer.backend())
            .finish()
    }
}

impl<T: Pod> Sender<T> {
    /// Attaches to the ring a [`Receiver`](super::Receiver) shares over the
    /// other end of `sock`. `T` must have the Receiver's size, alignment and
    /// [type tag](super::type_tag); a mismatch is refused on both sides.
    ///
    /// Blocks for the handshake (up to 10 s per frame against a silent peer): in
    /// async code, call it on `tokio::task::spawn_blocking`.
    ///
    /// # Errors
    ///
    /// [`Error::LayoutMismatch`] naming both sides' values;
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
        let (producer, attached) = Producer::connect_with_fds(
            sock,
            layout::FRAME_TAG,
            layout::FRAME_FDS,
            |producer, fds| Self::attach(producer.region(), fds, type_tag),
        )?;
        let Attached {
            control,
            slots,
            space,
            header,
            head,
            tail,
        } = attached;
        Ok(Sender {
            region: producer.region().clone(),
            producer,
            control,
            slots,
            space,
            #[cfg(feature = "tokio")]
            registered: None,
            waiting: false,
            header,
            head,
            tail,
            space_spin: super::spin::Spin::Adaptive {
                ack: std::time::Duration::ZERO,
                detect: std::time::Duration::ZERO,
            }
            .budget(),
            pid: std::process::id(),
            _t: PhantomData,
        })
    }

    /// Checks the ring's frame (control memfd, space bell, slots memfd)
    /// against the tripwire's `region` and what this end expects.
    fn attach(region: &Region, fds: Vec<OwnedFd>, tag: u64) -> Result<Attached, Error> {
        let mut fds = fds.into_iter();
        let (Some(control_fd), Some(space), Some(slots_fd)) = (fds.next(), fds.next(), fds.next())
        else {
            return Err(Error::handshake(
                "the ring frame needs 3 fds: control memfd, space bell, slots memfd",
            ));
        };
        // Only the Receiver writes the control memory: read-only here.
        let control = SharedMemory::options()
            .name("the ring's control memfd")
            .expect_len(layout::control_len())
            .read_only(true)
            .attach(control_fd)?
            .region()
            .clone();
        let space = Bell::from_peer(space)
            .map_err(|why| Error::handshake(format!("the ring's space bell: {why}")))?;
        if std::mem::size_of::<T>() == 0 {
            return Err(Error::LayoutMismatch {
                reason: "a ring of a zero-sized type carries nothing".into(),
            });
        }
        let header = Header::check(&control, Header::of::<T>(0, tag))?;
        let slots = SharedMemory::options()
            .name("the ring's slots memfd")
            .expect_len(header.slots_len())
            .attach(slots_fd)?
            .region()
            .clone();
        if region.len() < header.region_len() {
            return Err(Error::LayoutMismatch {
                reason: format!(
                    "the tripwire has {} bytes, a ring of {} x {} needs {}",
                    region.len(),
                    header.capacity,
                    header.size,
                    header.region_len()
                ),
            });
        }
        let head = region.atomic_u64(layout::HEAD)?.load(Ordering::Relaxed);
        let tail = control.load_u64(layout::TAIL)?;
        layout::available(head, tail, header.capacity)?;
        Ok(Attached {
            control,
            slots,
            space,
            header,
            head,
            tail,
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
        self.header.capacity as usize
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
        let Ok(tail) = self.control.load_u64(layout::TAIL) else {
            return self.capacity();
        };
        layout::advance_tail(self.head, self.tail, tail, self.header.capacity)
            .map_or(self.capacity(), |used| used as usize)
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

    fn head_atomic(&self) -> Result<&AtomicU64, Error> {
        self.region.atomic_u64(layout::HEAD)
    }

    fn state(&self) -> Result<&AtomicU64, Error> {
        self.region.atomic_u64(layout::STATE)
    }

    /// Free slots, re-reading (and validating) the Receiver's tail.
    fn free(&mut self) -> Result<u64, Error> {
        let cap = u64::from(self.header.capacity);
        let used = self.head.wrapping_sub(self.tail);
        if used < cap {
            return Ok(cap - used);
        }
        let tail = self.control.load_u64(layout::TAIL)?;
        let used = layout::advance_tail(self.head, self.tail, tail, self.header.capacity)?;
        self.tail = tail;
        Ok(cap - used)
    }

    /// Writes up to `free` of `items` and publishes them with one head store
    /// and one `notify()`. Returns how many were published (0 if a copy
    /// failed), and the outcome: `notify()` can fail after the head store
    /// (a Receiver found gone is not a failure: what was published counts
    /// as sent, and the next wait for space reports the death).
    fn write(&mut self, items: &[T], free: u64) -> (usize, Result<(), Error>) {
        let n = items.len().min(free as usize);
        let mut done = 0;
        let copied = (|| {
            if let [one] = &items[..n] {
                // A fixed-size copy (`send`, `blocking_send`, `try_send`).
                self.slots.write(self.header.slot_offset(self.head), one)?;
                done = 1;
            }
            // One bounds-checked copy per contiguous run of slots (at most two).
            while done < n {
                let at = self.head.wrapping_add(done as u64);
                let run = (n - done).min(self.header.slots_to_end(at));
                self.slots.write_bytes(
                    self.header.slot_offset(at),
                    bytemuck::cast_slice(&items[done..done + run]),
                )?;
                done += run;
            }
            Ok(())
        })();
        if let Err(e) = copied {
            return (0, Err(e));
        }
        if n == 0 {
            return (0, Ok(()));
        }
        let head = self.head.wrapping_add(n as u64);
        match self.head_atomic() {
            Ok(atomic) => protocol::publish_head(atomic, head),
            Err(e) => return (0, Err(e)),
        }
        self.head = head;
        if self.waiting {
            // A wait announced by a `send` that was cancelled: withdraw it,
            // or the Receiver rings us at every tail it publishes.
            let _ = self.stop_waiting();
        }
        let rung = match self.producer.notify() {
            Ok(()) => Ok(()),
            // Published: a Receiver that is gone may have taken them before
            // it left; the next wait for space reports it.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            // Published, but the Receiver may not have been woken.
            Err(e) => Err(Error::io("notify (after publishing)", e)),
        };
        (n, rung)
    }

    /// `true` once the Receiver is gone (its end of the handshake socket or
    /// of the space bell hung up).
    ///
    /// ```no_run
    /// # fn f(tx: memfd_tripwire::ring::Sender<u64>) {
    /// if tx.is_closed() { eprintln!("receiver gone"); }
    /// # }
    /// ```
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.producer.is_closed() || self.space.hung_up().unwrap_or(true)
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
        match self.free() {
            Ok(0) if self.is_closed() => Err(TrySendError::Closed(value)),
            Ok(0) => Err(TrySendError::Full(value)),
            Ok(free) => match self.write(std::slice::from_ref(&value), free).1 {
                Ok(()) => Ok(()),
                Err(Error::PeerDied) => Err(TrySendError::Closed(value)),
                Err(e) => Err(TrySendError::Failed(value, e)),
            },
            Err(e) => Err(TrySendError::Failed(value, e)),
        }
    }

    /// Sends as many of `values` as there are free slots for, in order,
    /// without waiting: one copy per contiguous run of slots, one head
    /// store and one `notify()`. Returns how many (0 when full).
    ///
    /// # Errors
    ///
    /// [`Error::PeerDied`] when the ring is full and the Receiver is gone,
    /// or `notify()` finds it gone (the values may then sit in the ring of a
    /// Receiver that will never read them); [`Error::Corrupt`] for an
    /// impossible tail index.
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::Sender<u64>) -> Result<(), memfd_tripwire::Error> {
    /// let values = [1, 2, 3, 4];
    /// let n = tx.try_send_slice(&values)?;
    /// let rest = &values[n..]; // for later
    /// # Ok(()) }
    /// ```
    pub fn try_send_slice(&mut self, values: &[T]) -> Result<usize, Error> {
        match self.free()? {
            0 if self.is_closed() => Err(Error::PeerDied),
            0 => Ok(0),
            free => {
                let (n, rung) = self.write(values, free);
                rung.map(|()| n)
            }
        }
    }

    /// Announces that the Sender waits for space; `true` if space appeared
    /// meanwhile (then it does not wait).
    fn start_waiting(&mut self) -> Result<bool, Error> {
        protocol::announce(self.state()?);
        self.waiting = true;
        let tail = self.control.load_u64(layout::TAIL)?;
        let used = layout::advance_tail(self.head, self.tail, tail, self.header.capacity)?;
        self.tail = tail;
        Ok(used < u64::from(self.header.capacity))
    }

    fn stop_waiting(&mut self) -> Result<(), Error> {
        protocol::withdraw(self.state()?);
        self.waiting = false;
        Ok(())
    }

    /// Free slots, polling the tail for up to `space_spin` while there
    /// are none: the Receiver polls the head likewise, and a sleep costs
    /// both sides a wake-up.
    fn spin_for_space(&mut self) -> Result<u64, Error> {
        let free = self.free()?;
        if free > 0 {
            // The common case: no clock read on the way to a send.
            return Ok(free);
        }
        let start = std::time::Instant::now();
        loop {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            let free = self.free()?;
            if free > 0 || start.elapsed() >= self.space_spin {
                return Ok(free);
            }
        }
    }

    /// Takes the Receiver's rings of the space bell; `true` if its end is
    /// closed (the Receiver is gone).
    fn drain_space(&self) -> Result<bool, Error> {
        match self.space.drain() {
            Ok(_) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
            Err(e) => Err(Error::io("draining the space bell", e)),
        }
    }

    /// Blocks until a slot is free (or the Receiver is gone).
    fn blocking_reserve(&mut self) -> Result<u64, Error> {
        loop {
            let free = self.spin_for_space()?;
            if free > 0 {
                return Ok(free);
            }
            if !self.start_waiting()? {
                // The Receiver rings the bell when it frees space; its death
                // closes the handshake socket (the bell is the Receiver's
                // to make: a hostile one may hand over a bell that never
                // hangs up).
                // No deadline: the Sender waits for a peer, as a blocking
                // write to a pipe does; its death ends the wait.
                use sys::wait::{PollFd, PollFlags};
                let sock = self.producer.handshake_socket();
                let mut fds = [
                    PollFd::new(&self.space, PollFlags::IN),
                    PollFd::from_borrowed_fd(sock.unwrap_or(self.space.as_fd()), PollFlags::RDHUP),
                ];
                sys::wait::poll(&mut fds, None).map_err(|e| Error::io("waiting for space", e))?;
                // Gone once the space it freed is used up.
                let gone = self.drain_space()? || self.producer.is_closed();
                if gone && self.free()? == 0 {
                    self.stop_waiting()?;
                    return Err(Error::PeerDied);
                }
            }
            self.stop_waiting()?;
        }
    }

    /// Sends, blocking the thread while the ring is full.
    ///
    /// # Errors
    ///
    /// [`Error::PeerDied`] in the [`SendError`] if the Receiver is gone
    /// (noticed when the ring is full, or by `notify()` on `Doorbell`);
    /// [`Error::Corrupt`] for an impossible tail index.
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::Sender<u64>) -> Result<(), memfd_tripwire::ring::SendError<u64>> {
    /// tx.blocking_send(42)?;
    /// # Ok(()) }
    /// ```
    pub fn blocking_send(&mut self, value: T) -> Result<(), SendError<T>> {
        let fail = |error| SendError { value, error };
        let free = self.blocking_reserve().map_err(fail)?;
        self.write(std::slice::from_ref(&value), free)
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
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::Sender<u64>) -> Result<(), memfd_tripwire::Error> {
    /// tx.blocking_send_many(&[1, 2, 3])?;
    /// # Ok(()) }
    /// ```
    pub fn blocking_send_many(&mut self, values: &[T]) -> Result<(), SendManyError> {
        let mut sent = 0;
        while sent < values.len() {
            let free = self
                .blocking_reserve()
                .map_err(|error| SendManyError { sent, error })?;
            let (n, rung) = self.write(&values[sent..], free);
            sent += n;
            rung.map_err(|error| SendManyError { sent, error })?;
        }
        Ok(())
    }
}

/// What the ring's frame gave a Sender, checked.
struct Attached {
    control: Region,
    slots: Region,
    space: Bell,
    header: Header,
    head: u64,
    tail: u64,
}

#[cfg(feature = "tokio")]
mod r#async {
    use std::task::{Context, Poll};

    use tokio::io::unix::AsyncFd;

    use super::*;
    use crate::reactor;

    /// The space bell and the handshake socket, registered with tokio (as
    /// duplicates: the Sender keeps the originals for its blocking calls).
    pub(super) struct Registered {
        space: AsyncFd<OwnedFd>,
        sock: Option<AsyncFd<OwnedFd>>,
    }

    impl<T: Pod> Sender<T> {
        /// Polls for free slots. Each turn (a look at the tail, and a
        /// wake-up that found none) spends a unit of tokio's coop budget,
        /// like `tokio::sync::mpsc`: neither a Receiver that keeps up nor
        /// one that rings without freeing space can keep the task here.
        fn poll_reserve(&mut self, cx: &mut Context<'_>) -> Poll<Result<u64, Error>> {
            crate::tokio::poll_turns(cx, |cx| self.poll_space(cx))
        }

        /// One turn: `Ready(Some(..))` is the outcome, `Ready(None)` a
        /// wake-up to look again after.
        fn poll_space(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<u64>, Error>> {
            let free = self.free()?;
            if free > 0 {
                return Poll::Ready(Ok(Some(free)));
            }
            if self.start_waiting()? {
                self.stop_waiting()?;
                return Poll::Ready(Ok(None));
            }
            let gone = self.drain_space()?;
            if self.free()? > 0 {
                self.stop_waiting()?;
                return Poll::Ready(Ok(None));
            }
            if gone || self.is_closed() {
                self.stop_waiting()?;
                return Poll::Ready(Err(Error::PeerDied));
            }
            let reg = self.registered()?;
            let mut woke = false;
            for fd in std::iter::once(&reg.space).chain(&reg.sock) {
                if let Poll::Ready(guard) = fd.poll_read_ready(cx) {
                    guard
                        .map_err(|e| Error::io("waiting for space", e))?
                        .clear_ready();
                    woke = true;
                }
            }
            if woke {
                Poll::Ready(Ok(None))
            } else {
                Poll::Pending
            }
        }

        /// The bell and the socket, registered with tokio on first use and
        /// kept.
        fn registered(&mut self) -> Result<&Registered, Error> {
            let reg = match self.registered.take() {
                Some(reg) => reg,
                None => {
                    let dup = |fd: std::os::fd::BorrowedFd<'_>| {
                        fd.try_clone_to_owned()
                            .and_then(reactor::register_owned)
                            .map_err(|e| Error::io("registering the sender with tokio", e))
                    };
                    Registered {
                        space: dup(self.space.as_fd())?,
                        sock: self.producer.handshake_socket().map(dup).transpose()?,
                    }
                }
            };
            Ok(self.registered.insert(reg))
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
            let free = std::future::poll_fn(|cx| self.poll_reserve(cx))
                .await
                .map_err(fail)?;
            self.write(std::slice::from_ref(&value), free)
                .1
                .map_err(fail)
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
                let free = std::future::poll_fn(|cx| self.poll_reserve(cx))
                    .await
                    .map_err(|error| SendManyError { sent, error })?;
                let (n, rung) = self.write(&values[sent..], free);
                sent += n;
                rung.map_err(|error| SendManyError { sent, error })?;
            }
            Ok(())
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // A forked child's copy says nothing: the ring is the parent's, which
        // closes it when its own Sender goes (or dies).
        if self.pid != std::process::id() {
            return;
        }
        // A clean close: the Receiver drains, then ends with Ok(None).
        if let Ok(state) = self.region.atomic_u64(layout::STATE) {
            protocol::close(state);
            let _ = self.producer.notify();
        }
    }
}
