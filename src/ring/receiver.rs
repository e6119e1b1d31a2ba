//! The consuming end of a ring, its public API: owns the tripwire and
//! drives the core (`core::Rx`) through the tripwire's non-blocking step;
//! the blocking, async and mio drivers are in `blocking.rs`, `tokio.rs`
//! and `mio.rs`.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use super::core::{Rx, Shared};
use super::layout::{self, Header};
use super::spin::Spin;
use super::{Builder, TryRecvError};
use crate::sys::Bell;
use crate::{BackendKind, Error, SharedMemory, blocking, handoff};

/// The consuming end of a ring; from [`SharedRing::builder`](super::SharedRing::builder).
///
#[cfg_attr(
    feature = "tokio",
    doc = " Receive with [`recv`](Receiver::recv) (async, cancel safe),"
)]
#[cfg_attr(
    not(feature = "tokio"),
    doc = " Receive with `recv` (async, cancel safe; feature `tokio`),"
)]
/// [`blocking_recv`](Receiver::blocking_recv), [`try_recv`](Receiver::try_recv),
#[cfg_attr(
    feature = "tokio",
    doc = " or as a [`Stream`](futures_core::Stream) (feature `tokio`); in batches,"
)]
#[cfg_attr(
    not(feature = "tokio"),
    doc = " or as a `Stream` (feature `tokio`); in batches,"
)]
#[cfg_attr(
    feature = "tokio",
    doc = " one copy per contiguous run of slots, with [`recv_many`](Receiver::recv_many)"
)]
#[cfg_attr(
    not(feature = "tokio"),
    doc = " one copy per contiguous run of slots, with `recv_many` (feature `tokio`)"
)]
/// and [`blocking_recv_many`](Receiver::blocking_recv_many).
///
/// ```
/// use memfd_tripwire::{Backend, ring::{SharedRing, TryRecvError}};
/// let mut rx = SharedRing::<u64>::builder(64).backend(Backend::Doorbell).create().unwrap();
/// assert_eq!(rx.try_recv(), Err(TryRecvError::Empty)); // nothing sent yet
/// ```
pub struct Receiver<T> {
    /// The core: indices, memory, the space bell.
    pub(super) rx: Rx<T>,
    /// The ring's tripwire, used through its public API only, and never
    /// moved: async code registers its fd beside it (`reg`).
    pub(super) tw: blocking::Tripwire,
    /// The memfds behind the control memory and the slots, handed to the
    /// Sender, and the Sender's end of the space bell.
    control_mem: SharedMemory,
    slots_mem: SharedMemory,
    space_peer: OwnedFd,
    pub(super) spin: Spin,
    pub(super) done: bool,
    /// When the ACK now in flight (async, `Userfault`) was sent: its cost,
    /// for the spin budget, runs from then to its completion.
    pub(super) ack_sent: Option<Instant>,
    /// A Sender attached (one only: the ring has a single producer); until
    /// then the step refuses to sleep (`Error::NotShared`).
    pub(super) shared: bool,
    /// The process that created it: a forked child's copy closes nothing.
    pid: u32,
    /// What the handshake's offer names (`layout::FRAME_TAG`, or byte
    /// frames').
    protocol: [u8; 8],
    /// Re-arms and sleeps (the core counts the messages).
    pub(super) stats: RingStats,
    /// The tripwire's fd registered with tokio, at the first async wait.
    #[cfg(feature = "tokio")]
    pub(super) reg: Option<super::registration::Registration>,
}

/// How a [`Receiver`] has waited so far: the cost it put on the Sender.
///
/// Each re-arm lets the Sender's next `notify()` ring the bell
/// (`Doorbell`) or its next store to the head page fault (`Kernel`,
/// `Userfault`; the slots are outside the wire): at most one doorbell or
/// one fault per re-arm. Under load the Receiver finds data while spinning
/// and re-arms rarely.
///
/// ```
/// # use memfd_tripwire::{Backend, ring::SharedRing};
/// let rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create().unwrap();
/// assert_eq!(rx.stats().received, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Messages received.
    pub received: u64,
    /// Times the Receiver ran dry, found the wire tripped, and re-armed it.
    pub rearms: u64,
    /// Times it then went to sleep (found nothing after re-arming).
    pub sleeps: u64,
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("capacity", &self.rx.ring.header.capacity)
            .field("backend", &self.tw.backend())
            .field("tail", &self.rx.tail)
            .field("done", &self.done)
            .finish()
    }
}

impl<T: Pod> Receiver<T> {
    pub(super) fn create(b: Builder<T>) -> Result<Self, Error> {
        let mismatch = |reason: String| Error::LayoutMismatch { reason };
        if std::mem::size_of::<T>() == 0 {
            return Err(mismatch(
                "a ring of a zero-sized type carries nothing".into(),
            ));
        }
        let capacity = u32::try_from(b.capacity).unwrap_or(0);
        layout::check_capacity(capacity).map_err(|why| mismatch(format!("capacity: {why}")))?;
        let header = Header::of::<T>(capacity, b.tag);
        let tw = blocking::Tripwire::builder(header.region_len())
            .backend(b.backend)
            .poll_interval(b.poll_interval)
            .create()?;
        let tw_kind = tw.backend();
        let region = tw.region().clone();
        let control_mem = SharedMemory::options()
            .name("memfd-tripwire-ring")
            .create(layout::control_len())?;
        let control = control_mem.region().clone();
        header.write(&control)?;
        let slots_mem =
            // Only the Sender writes the slots: mapped read-only here.
            SharedMemory::options()
                .name("memfd-tripwire-ring-slots")
                .read_only(true)
                .create(header.slots_len())?;
        let slots = slots_mem.region().clone();
        let (space, space_peer) =
            Bell::pair().map_err(|e| Error::io("socketpair for the space bell", e))?;
        if b.spin.is_none() {
            // Measures this host's wake-up cost now (once per process, ~1
            // ms), not in the middle of the first gap.
            super::spin::wake_cost();
        }
        let ring = Shared {
            header,
            region,
            control,
            slots,
        };
        Ok(Receiver {
            rx: Rx::new(ring, space),
            tw,
            control_mem,
            slots_mem,
            space_peer,
            spin: match b.spin {
                Some(d) => Spin::Fixed(d),
                None => Spin::Adaptive {
                    ack: Duration::ZERO,
                    // The interval backends see a store up to one interval
                    // late: a sleeping Receiver waits that out.
                    detect: match tw_kind {
                        BackendKind::Poll | BackendKind::UserfaultAsync => b.poll_interval,
                        _ => Duration::ZERO,
                    },
                },
            },
            done: false,
            ack_sent: None,
            shared: false,
            pid: std::process::id(),
            protocol: b.protocol,
            stats: RingStats::default(),
            #[cfg(feature = "tokio")]
            reg: None,
        })
    }

    /// Hands the ring to the Sender on the other end of `peer` (which calls
    /// [`Sender::connect`](super::Sender::connect)): the tripwire handshake,
    /// then the ring's own frame (its control memory and space doorbell).
    ///
    /// Blocks for the handshake (up to 10 s per frame against a silent
    /// peer): in async code, use `share_async` (feature `tokio`).
    ///
    /// # Errors
    ///
    /// [`Error::Handshake`] if the exchange fails or the Sender refuses (for
    /// a [`Error::LayoutMismatch`] on its side, the message says which);
    /// "wrong protocol", naming both, at once, if the peer expected a plain
    /// tripwire ([`Producer::connect`](crate::Producer::connect)). The ring
    /// stays unshared: share it again.
    ///
    /// ```no_run
    /// # fn f(peer: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
    /// # use memfd_tripwire::ring::SharedRing;
    /// let mut rx = SharedRing::<u64>::builder(1024).create()?;
    /// rx.share(peer)?;
    /// # Ok(()) }
    /// ```
    pub fn share(&mut self, peer: UnixStream) -> Result<(), Error> {
        handoff::block_on(self.share_on(handoff::Blocking(peer)))
    }

    /// The handshake of [`share`](Receiver::share) over any driver (the
    /// blocking one, or the tokio reactor's for `share_async`): the ring is
    /// shared only once it returns `Ok`.
    pub(super) async fn share_on<W: handoff::Wait>(&mut self, w: W) -> Result<(), Error> {
        if self.shared {
            return Err(Error::handshake(
                "this ring already has its Sender (a ring has one producer): make another ring",
            ));
        }
        let fds = [
            self.control_mem.as_fd(),
            self.space_peer.as_fd(),
            self.slots_mem.as_fd(),
        ];
        self.tw.share_on(w, Some((self.protocol, &fds))).await?;
        self.shared = true;
        Ok(())
    }

    /// Counters of messages and waits (see [`RingStats`]).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::SharedRing};
    /// let rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create().unwrap();
    /// let stats = rx.stats();
    /// println!("{} re-arms for {} messages", stats.rearms, stats.received);
    /// ```
    pub fn stats(&self) -> RingStats {
        RingStats {
            received: self.rx.received,
            ..self.stats
        }
    }

    /// The capacity in messages.
    ///
    /// ```
    /// # use memfd_tripwire::ring::SharedRing;
    /// # let rx = SharedRing::<u64>::builder(8).backend(memfd_tripwire::Backend::Poll).create().unwrap();
    /// assert_eq!(rx.capacity(), 8);
    /// ```
    pub fn capacity(&self) -> usize {
        self.rx.ring.capacity()
    }

    /// The tripwire backend in use.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, BackendKind, ring::SharedRing};
    /// # let rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(rx.backend(), BackendKind::Poll);
    /// ```
    pub fn backend(&self) -> BackendKind {
        self.tw.backend()
    }

    /// How many messages are published and not yet received (an
    /// impossible head from the Sender counts as none; the next receive
    /// reports it).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::SharedRing};
    /// let rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(rx.len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// `true` when no message waits ([`len`](Receiver::len) is 0).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::SharedRing};
    /// let rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create().unwrap();
    /// assert!(rx.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `true` when every slot holds a message not yet received: the Sender
    /// cannot send until this end receives.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::SharedRing};
    /// let rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create().unwrap();
    /// assert!(!rx.is_full());
    /// ```
    pub fn is_full(&self) -> bool {
        self.len() == self.capacity()
    }

    /// Publishes now how far this end has received, so the Sender sees the
    /// free slots at once. Receiving publishes by itself once per quarter
    /// of the ring, whenever the Sender waits for space, and before every
    /// sleep: call this only to free slots early (before a long pause in
    /// receiving, say).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if ringing a waiting Sender fails.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::SharedRing};
    /// let mut rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create().unwrap();
    /// rx.flush().unwrap();
    /// ```
    pub fn flush(&mut self) -> Result<(), Error> {
        self.rx.publish_tail()
    }

    /// Gets ready to sleep: publishes the tail and re-arms the wire if it
    /// is tripped. `Ok(true)`: still empty and armed (or its ACK in flight,
    /// whose replies make the fd readable), so the next message trips the
    /// wire: sleep now ([`wait_ready`](blocking::Tripwire::wait_ready), mio,
    /// `poll(2)` on [`as_fd`](AsFd::as_fd)), until readiness or the
    /// [`deadline`](Receiver::deadline). `Ok(false)`: something is there or
    /// the Sender is gone; receive before sleeping. Never blocks.
    ///
    /// For your own event loop; `recv` and `blocking_recv` do this
    /// themselves.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the ACK fails (`TimedOut` for one the Sender did
    /// not answer by its deadline); the wire then stays tripped.
    /// [`Error::NotShared`], at once, before [`share`](Receiver::share):
    /// only the Sender writes the ring, so a sleep would never end.
    ///
    /// ```
    /// # use std::os::unix::net::UnixStream;
    /// # use memfd_tripwire::{Backend, ring::{Sender, SharedRing}};
    /// let mut rx = SharedRing::<u64>::builder(8).backend(Backend::Doorbell).create().unwrap();
    /// # let (ours, theirs) = UnixStream::pair().unwrap();
    /// # let tx = std::thread::spawn(move || Sender::<u64>::connect(theirs));
    /// rx.share(ours).unwrap(); // the Sender connects on the other end
    /// # let _tx = tx.join().unwrap().unwrap();
    /// assert!(rx.rearm().unwrap()); // empty: safe to sleep
    /// ```
    pub fn rearm(&mut self) -> Result<bool, Error> {
        self.step_rearm()
    }

    /// When an event loop must call [`rearm`](Receiver::rearm) again even if
    /// the fd stays quiet: the deadline of the ACK that `rearm` left in
    /// flight (`Userfault`, `UserfaultAsync`; see
    /// [`blocking::Tripwire::deadline`]), after which `rearm` fails it with
    /// `TimedOut` if the Sender has not answered (is it stopped?). `None`
    /// with no ACK in flight. [`blocking_recv`](Receiver::blocking_recv)
    /// and `recv` (feature `tokio`) arm it themselves.
    ///
    /// ```
    /// # use std::os::unix::net::UnixStream;
    /// # use memfd_tripwire::{Backend, ring::{Sender, SharedRing}};
    /// let mut rx = SharedRing::<u64>::builder(8).backend(Backend::Doorbell).create().unwrap();
    /// # let (ours, theirs) = UnixStream::pair().unwrap();
    /// # let tx = std::thread::spawn(move || Sender::<u64>::connect(theirs));
    /// rx.share(ours).unwrap(); // the Sender connects on the other end
    /// # let _tx = tx.join().unwrap().unwrap();
    /// assert!(rx.rearm().unwrap());
    /// assert_eq!(rx.deadline(), None); // a Doorbell ACK is done at once
    /// ```
    pub fn deadline(&self) -> Option<Instant> {
        self.tw.deadline()
    }

    /// Takes a message if one is there, without waiting or ACKing.
    ///
    /// When nothing is there it tells whether more may come, which costs a
    /// load from shared memory and one system call (has the Sender's
    /// process hung up?).
    ///
    /// # Errors
    ///
    /// - [`TryRecvError::Empty`]: nothing now; more may come (on a ring
    ///   not shared yet too, which can still be: the calls that would
    ///   sleep, [`rearm`](Receiver::rearm) and the receives that wait,
    ///   return [`Error::NotShared`] instead).
    /// - [`TryRecvError::Closed`]: the Sender was dropped and everything it
    ///   sent was received (and on every call after the ring ended).
    /// - [`TryRecvError::Failed`]: [`Error::PeerDied`] once the Sender's
    ///   process died and everything it published was received;
    ///   [`Error::Corrupt`] for an impossible index.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::{SharedRing, TryRecvError}};
    /// let mut rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    /// ```
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        if self.done {
            return Err(TryRecvError::Closed);
        }
        match self.rx.pop()? {
            Some(v) => Ok(v),
            None => self.finished(Rx::pop),
        }
    }

    /// Fills the start of `buf` with the messages that are there, without
    /// waiting: one bounds-checked copy per contiguous run of slots (at
    /// most two), from shared memory straight into `buf`. Returns how many
    /// (at least one; 0 only for an empty `buf`).
    ///
    /// # Errors
    ///
    /// As [`try_recv`](Receiver::try_recv), when not one message is there.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::{SharedRing, TryRecvError}};
    /// let mut rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create().unwrap();
    /// let mut buf = [0u64; 8];
    /// assert_eq!(rx.try_recv_into(&mut buf), Err(TryRecvError::Empty));
    /// ```
    pub fn try_recv_into(&mut self, buf: &mut [T]) -> Result<usize, TryRecvError> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.done {
            return Err(TryRecvError::Closed);
        }
        let mut at = 0;
        let n = self.rx.pop_runs(buf.len(), |slots, offset, run| {
            let dst = bytemuck::cast_slice_mut(&mut buf[at..at + run]);
            at += run;
            slots.read_bytes(offset, dst)
        })?;
        if n > 0 {
            return Ok(n);
        }
        buf[0] = self.finished(Rx::pop)?;
        Ok(1)
    }
}

impl<T> AsFd for Receiver<T> {
    /// The tripwire's wake-up fd: readable while the wire is tripped, once
    /// the Sender hung up, or as the replies of an ACK in flight come.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tw.as_fd()
    }
}

impl<T> AsRawFd for Receiver<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// Closes the ring's receiving end cleanly: the Sender's next send fails
/// with [`Error::Closed`](crate::Error::Closed) (`try_send`:
/// `TrySendError::Closed`), as a `tokio::sync::mpsc` send fails once its
/// receiver is dropped. A forked child's copy, or a Receiver dropped while
/// its thread panics, closes nothing: the Sender learns of the end from the
/// socket's hang-up, as of a death (`PeerDied`).
impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        if self.pid == std::process::id() && !std::thread::panicking() {
            self.rx.close();
        }
    }
}
