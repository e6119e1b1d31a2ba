//! The producing end of a ring.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};

use bytemuck::Pod;

use super::layout::{self, Header};
use super::protocol;
use super::{SendError, TrySendError};
use crate::handoff::{RING_MAGIC, receive_extra, reply_extra};
use crate::sys::{self, Bell};
use crate::{Error, Producer, Region, SharedMemory};

/// The producing end of a ring, in the process that received it.
///
/// ```no_run
/// # fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
/// use memfd_tripwire::ring::Sender;
/// let mut tx = Sender::<[u8; 64]>::connect(sock, 0)?;
/// tx.blocking_send([7; 64]).map_err(|e| e.into_error())?;
/// # Ok(()) }
/// ```
pub struct Sender<T> {
    producer: Producer,
    region: Region,
    control: Region,
    slots: Region,
    space: Bell,
    sock: UnixStream,
    header: Header,
    head: u64,
    tail: u64,
    /// How long a blocking Sender that finds the ring full polls for space
    /// before it sleeps: the price of a sleep on this host (`ring::spin`).
    space_spin: std::time::Duration,
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
    /// other end of `sock`. `type_tag` must equal the Receiver's
    /// [`type_tag`](super::Builder::type_tag), and `T` must have the same
    /// size and alignment; a mismatch is refused on both sides.
    ///
    /// # Errors
    ///
    /// [`Error::LayoutMismatch`] naming both sides' values;
    /// [`Error::Handshake`] or [`Error::Io`] as for
    /// [`Producer::connect`].
    ///
    /// ```no_run
    /// # fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
    /// let tx = memfd_tripwire::ring::Sender::<u64>::connect(sock, 0)?;
    /// # Ok(()) }
    /// ```
    pub fn connect(sock: UnixStream, type_tag: u64) -> Result<Sender<T>, Error> {
        let producer = Producer::connect(sock)?;
        let peer = producer
            .peer()
            .ok_or_else(|| Error::handshake("no handshake socket"))?
            .try_clone()
            .map_err(|e| Error::io("dup of the handshake socket", e))?;
        let fds = receive_extra(&peer, RING_MAGIC, 3)?;
        let attached = Self::attach(producer, peer.try_clone(), fds, type_tag);
        let _ = reply_extra(&peer, attached.as_ref().map(|_| ()));
        let mut tx = attached?;
        tx.sock = peer;
        Ok(tx)
    }

    fn attach(
        producer: Producer,
        sock: std::io::Result<UnixStream>,
        fds: Vec<OwnedFd>,
        tag: u64,
    ) -> Result<Sender<T>, Error> {
        let mut fds = fds.into_iter();
        let (Some(control_fd), Some(space), Some(slots_fd)) = (fds.next(), fds.next(), fds.next())
        else {
            return Err(Error::handshake(
                "the ring frame needs 3 fds: control memfd, space bell, slots memfd",
            ));
        };
        let control = SharedMemory::from_peer(
            control_fd,
            Some(layout::CONTROL_LEN),
            "the ring's control memfd",
        )?
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
        let slots =
            SharedMemory::from_peer(slots_fd, Some(header.slots_len()), "the ring's slots memfd")?
                .region()
                .clone();
        let region = producer.region().clone();
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
        let tail = control.atomic_u64(layout::TAIL)?.load(Ordering::Acquire);
        layout::available(head, tail, header.capacity)?;
        Ok(Sender {
            producer,
            region,
            control,
            slots,
            space,
            sock: sock.map_err(|e| Error::io("dup of the handshake socket", e))?,
            header,
            head,
            tail,
            space_spin: super::spin::Spin::Adaptive {
                ack: std::time::Duration::ZERO,
                detect: std::time::Duration::ZERO,
            }
            .budget(),
            _t: PhantomData,
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
        let tail = self
            .control
            .atomic_u64(layout::TAIL)?
            .load(Ordering::Acquire);
        let used = layout::advance_tail(self.head, self.tail, tail, self.header.capacity)?;
        self.tail = tail;
        Ok(cap - used)
    }

    /// Writes up to `free` of `items` and publishes them with one head store
    /// and one `notify()`. Returns how many were written.
    fn write(&mut self, items: &[T], free: u64) -> Result<usize, Error> {
        let n = items.len().min(free as usize);
        let mut done = 0;
        if let [one] = &items[..n] {
            // A fixed-size copy (`send`, `blocking_send`, `try_send`).
            self.slots.write(self.header.slot_offset(self.head), one)?;
            self.head = self.head.wrapping_add(1);
            done = 1;
        }
        // One bounds-checked copy per contiguous run of slots (at most two).
        while done < n {
            let run = (n - done).min(self.header.slots_to_end(self.head));
            self.slots.write_bytes(
                self.header.slot_offset(self.head),
                bytemuck::cast_slice(&items[done..done + run]),
            )?;
            self.head = self.head.wrapping_add(run as u64);
            done += run;
        }
        if n > 0 {
            protocol::publish_head(self.head_atomic()?, self.head);
            self.producer.notify().map_err(|e| match e.kind() {
                std::io::ErrorKind::BrokenPipe => Error::PeerDied,
                _ => Error::io("notify", e),
            })?;
        }
        Ok(n)
    }

    /// `true` once the Receiver's end of the socket hung up.
    ///
    /// ```no_run
    /// # fn f(tx: memfd_tripwire::ring::Sender<u64>) {
    /// if tx.is_closed() { eprintln!("receiver gone"); }
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        sys::bell::hung_up(self.sock.as_fd()).unwrap_or(true)
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
            Ok(free) => match self.write(std::slice::from_ref(&value), free) {
                Ok(_) => Ok(()),
                Err(Error::PeerDied) => Err(TrySendError::Closed(value)),
                Err(e) => Err(TrySendError::Failed(value, e)),
            },
            Err(e) => Err(TrySendError::Failed(value, e)),
        }
    }

    /// Announces that the Sender waits for space; `true` if space appeared
    /// meanwhile (then it does not wait).
    fn start_waiting(&mut self) -> Result<bool, Error> {
        let tail = protocol::announce_wait(self.state()?, self.control.atomic_u64(layout::TAIL)?);
        let used = layout::advance_tail(self.head, self.tail, tail, self.header.capacity)?;
        self.tail = tail;
        Ok(used < u64::from(self.header.capacity))
    }

    fn stop_waiting(&self) -> Result<(), Error> {
        self.state()?
            .fetch_and(!layout::STATE_WAITING, Ordering::Relaxed);
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
                let mut fds = [
                    rustix::event::PollFd::new(&self.space, rustix::event::PollFlags::IN),
                    rustix::event::PollFd::new(&self.sock, rustix::event::PollFlags::RDHUP),
                ];
                match rustix::event::poll(&mut fds, None) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(Error::io("waiting for space", e)),
                }
                // The Receiver's end of the bell or of the socket closed:
                // it is gone (once the space it freed is used up).
                let gone = self.drain_space()? || !fds[1].revents().is_empty();
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
            .map_err(fail)?;
        Ok(())
    }

    /// Sends all of `values`, in order, publishing them in batches (one
    /// head store and one `notify()` per batch), blocking while full.
    ///
    /// # Errors
    ///
    /// As [`blocking_send`](Sender::blocking_send). The error carries how
    /// many values were sent before it (`values[n..]` were not).
    ///
    /// ```no_run
    /// # fn f(mut tx: memfd_tripwire::ring::Sender<u64>) -> Result<(), memfd_tripwire::ring::SendError<usize>> {
    /// tx.blocking_send_many(&[1, 2, 3])?;
    /// # Ok(()) }
    /// ```
    pub fn blocking_send_many(&mut self, values: &[T]) -> Result<(), SendError<usize>> {
        let mut sent = 0;
        while sent < values.len() {
            let r = self
                .blocking_reserve()
                .and_then(|free| self.write(&values[sent..], free));
            match r {
                Ok(n) => sent += n,
                Err(error) => return Err(SendError { value: sent, error }),
            }
        }
        Ok(())
    }
}

#[cfg(feature = "tokio")]
mod r#async {
    use std::task::{Context, Poll};

    use tokio::io::unix::AsyncFd;

    use super::*;
    use crate::sys::reactor;

    /// The space doorbell and the socket, registered with tokio.
    pub(super) struct Registered {
        space: AsyncFd<OwnedFd>,
        sock: AsyncFd<OwnedFd>,
    }

    impl<T: Pod> Sender<T> {
        fn poll_reserve(
            &mut self,
            reg: &Registered,
            cx: &mut Context<'_>,
        ) -> Poll<Result<u64, Error>> {
            loop {
                let free = self.free()?;
                if free > 0 {
                    return Poll::Ready(Ok(free));
                }
                if self.start_waiting()? {
                    self.stop_waiting()?;
                    continue;
                }
                let gone = self.drain_space()?;
                if self.free()? > 0 {
                    self.stop_waiting()?;
                    continue;
                }
                if gone || self.is_closed() {
                    self.stop_waiting()?;
                    return Poll::Ready(Err(Error::PeerDied));
                }
                let mut woke = false;
                for fd in [&reg.space, &reg.sock] {
                    if let Poll::Ready(g) = fd.poll_read_ready(cx) {
                        g.map_err(|e| Error::io("waiting for space", e))?
                            .clear_ready();
                        woke = true;
                    }
                }
                if !woke {
                    return Poll::Pending;
                }
            }
        }

        fn register(&self) -> Result<Registered, Error> {
            let dup = |fd: std::os::fd::BorrowedFd<'_>| {
                fd.try_clone_to_owned()
                    .and_then(reactor::register_owned)
                    .map_err(|e| Error::io("registering the sender with tokio", e))
            };
            Ok(Registered {
                space: dup(self.space.as_fd())?,
                sock: dup(self.sock.as_fd())?,
            })
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
            let free = match self.free() {
                Ok(0) => {
                    let reg = self.register().map_err(fail)?;
                    std::future::poll_fn(|cx| self.poll_reserve(&reg, cx))
                        .await
                        .map_err(fail)?
                }
                Ok(free) => free,
                Err(e) => return Err(fail(e)),
            };
            self.write(std::slice::from_ref(&value), free)
                .map_err(fail)?;
            Ok(())
        }

        /// Sends all of `values` in order, in batches, waiting while full.
        ///
        /// # Errors
        ///
        /// As [`blocking_send_many`](Sender::blocking_send_many).
        ///
        /// ```no_run
        /// # async fn f(mut tx: memfd_tripwire::ring::Sender<u64>) -> Result<(), memfd_tripwire::ring::SendError<usize>> {
        /// tx.send_many(&[1, 2, 3]).await?;
        /// # Ok(()) }
        /// ```
        pub async fn send_many(&mut self, values: &[T]) -> Result<(), SendError<usize>> {
            let mut sent = 0;
            let mut reg = None;
            while sent < values.len() {
                let free = match self.free() {
                    Ok(0) => {
                        if reg.is_none() {
                            reg = Some(
                                self.register()
                                    .map_err(|error| SendError { value: sent, error })?,
                            );
                        }
                        let r = reg.as_ref().expect("registered above");
                        std::future::poll_fn(|cx| self.poll_reserve(r, cx)).await
                    }
                    other => other,
                };
                match free.and_then(|free| self.write(&values[sent..], free)) {
                    Ok(n) => sent += n,
                    Err(error) => return Err(SendError { value: sent, error }),
                }
            }
            Ok(())
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // A clean close: the Receiver drains, then ends with Ok(None).
        if let Ok(state) = self.region.atomic_u64(layout::STATE) {
            state.fetch_or(layout::STATE_CLOSED, Ordering::Release);
            let _ = self.producer.notify();
        }
    }
}
