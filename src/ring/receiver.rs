//! The consuming end of a ring: owns the tripwire.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytemuck::Pod;

use super::layout::{self, Header};
use super::protocol;
use super::spin::Spin;
use super::{Builder, TryRecvError};
use crate::sys::Bell;
use crate::{BackendKind, Error, Region, SharedMemory, blocking};

/// The consuming end of a ring; from [`SharedRing::builder`](super::SharedRing::builder).
///
/// Receive with [`recv`](Receiver::recv) (async, cancel safe),
/// [`blocking_recv`](Receiver::blocking_recv), [`try_recv`](Receiver::try_recv),
/// or as a [`Stream`](futures_core::Stream) (feature `tokio`); in batches,
/// one copy per contiguous run of slots, with [`recv_many`](Receiver::recv_many)
/// and [`blocking_recv_many`](Receiver::blocking_recv_many).
///
/// ```
/// use memfd_tripwire::{Backend, ring::{SharedRing, TryRecvError}};
/// let mut rx = SharedRing::<u64>::builder(64).backend(Backend::Doorbell).create().unwrap();
/// assert_eq!(rx.try_recv(), Err(TryRecvError::Empty)); // nothing sent yet
/// ```
pub struct Receiver<T> {
    tw: RingTripwire,
    /// The backend `tw` was created with.
    kind: BackendKind,
    pub(super) region: Region,
    pub(super) control: Region,
    pub(super) slots: Region,
    /// The memfds behind `control` and `slots`, handed to the Sender.
    control_mem: SharedMemory,
    slots_mem: SharedMemory,
    /// Our end of the space bell (we ring it when the Sender waits for
    /// space), and the Sender's end, handed over in the ring's frame.
    space: Bell,
    space_peer: OwnedFd,
    header: Header,
    pub(super) tail: u64,
    pub(super) published: u64,
    /// The head as last read (validated): messages up to it are readable.
    pub(super) known_head: u64,
    /// The Sender's waiting flag as seen at the last head read.
    sender_waiting: bool,
    batch: u64,
    spin: Spin,
    done: bool,
    /// When the ACK now in flight (async, `Userfault`) was sent: its cost,
    /// for the spin budget, runs from then to its completion.
    ack_sent: Option<Instant>,
    /// A Sender attached (one only: the ring has a single producer).
    shared: bool,
    /// An error of publishing the tail after messages were taken: reported
    /// by the next receive, so that the taken messages are not lost.
    deferred: Option<Error>,
    stats: RingStats,
    _t: PhantomData<fn() -> T>,
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

/// The ring's tripwire, used through its public API only: blocking until
/// the first `recv().await` registers it with tokio.
enum RingTripwire {
    Blocking(blocking::Tripwire),
    #[cfg(feature = "tokio")]
    Async(crate::Tripwire),
    /// Only inside `Receiver::registered`, which always puts a tripwire
    /// back (a failed registration hands it back), unless tokio panics in
    /// there (a runtime without IO): the Receiver is then poisoned.
    #[cfg(feature = "tokio")]
    Poisoned,
}

impl RingTripwire {
    fn get(&self) -> std::io::Result<&blocking::Tripwire> {
        match self {
            RingTripwire::Blocking(tw) => Ok(tw),
            #[cfg(feature = "tokio")]
            RingTripwire::Async(tw) => Ok(tw.get_ref()),
            #[cfg(feature = "tokio")]
            RingTripwire::Poisoned => Err(poisoned()),
        }
    }

    /// The deadline of the tripwire's ACK in flight, if any.
    fn deadline(&self) -> Option<Instant> {
        self.get().ok().and_then(blocking::Tripwire::deadline)
    }

    /// The tripwire's step ([`blocking::Tripwire::try_changed`]): never
    /// blocks (`None` while an ACK is in flight).
    fn try_changed(&mut self) -> std::io::Result<Option<crate::Epoch>> {
        match self {
            RingTripwire::Blocking(tw) => tw.try_changed(),
            #[cfg(feature = "tokio")]
            RingTripwire::Async(tw) => tw.try_changed(),
            #[cfg(feature = "tokio")]
            RingTripwire::Poisoned => Err(poisoned()),
        }
    }

    fn producers_gone(&mut self) -> std::io::Result<bool> {
        match self {
            RingTripwire::Blocking(tw) => tw.producers_gone(),
            #[cfg(feature = "tokio")]
            RingTripwire::Async(tw) => tw.producers_gone(),
            #[cfg(feature = "tokio")]
            RingTripwire::Poisoned => Err(poisoned()),
        }
    }

    fn share_with_fds(
        &mut self,
        peer: UnixStream,
        tag: [u8; 8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), Error> {
        match self {
            RingTripwire::Blocking(tw) => tw.share_with_fds(peer, tag, fds),
            #[cfg(feature = "tokio")]
            RingTripwire::Async(tw) => tw.share_with_fds(peer, tag, fds),
            #[cfg(feature = "tokio")]
            RingTripwire::Poisoned => Err(Error::io("sharing the ring", poisoned())),
        }
    }
}

#[cfg(feature = "tokio")]
fn poisoned() -> std::io::Error {
    std::io::Error::other(
        "the ring lost its tripwire to a panic while registering with tokio (a runtime \
         without IO?)",
    )
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("capacity", &self.header.capacity)
            .field("backend", &self.kind)
            .field("tail", &self.tail)
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
        Ok(Receiver {
            tw: RingTripwire::Blocking(tw),
            kind: tw_kind,
            region,
            control,
            slots,
            control_mem,
            slots_mem,
            space,
            space_peer,
            header,
            tail: 0,
            published: 0,
            known_head: 0,
            sender_waiting: false,
            batch: u64::from(capacity / 4).max(1),
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
            deferred: None,
            stats: RingStats::default(),
            _t: PhantomData,
        })
    }

    /// Hands the ring to the Sender on the other end of `peer` (which calls
    /// [`Sender::connect`](super::Sender::connect)): the tripwire handshake,
    /// then the ring's own frame (its control memory and space doorbell).
    ///
    /// # Errors
    ///
    /// [`Error::Handshake`] if the exchange fails or the Sender refuses (for
    /// a [`Error::LayoutMismatch`] on its side, the message says which).
    ///
    /// ```no_run
    /// # fn f(peer: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
    /// # use memfd_tripwire::ring::SharedRing;
    /// let mut rx = SharedRing::<u64>::builder(1024).create()?;
    /// rx.share(peer)?;
    /// # Ok(()) }
    /// ```
    pub fn share(&mut self, peer: UnixStream) -> Result<(), Error> {
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
        self.tw.share_with_fds(peer, layout::FRAME_TAG, &fds)?;
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
        self.stats
    }

    /// The capacity in messages.
    ///
    /// ```
    /// # use memfd_tripwire::ring::SharedRing;
    /// # let rx = SharedRing::<u64>::builder(8).backend(memfd_tripwire::Backend::Poll).create().unwrap();
    /// assert_eq!(rx.capacity(), 8);
    /// ```
    pub fn capacity(&self) -> usize {
        self.header.capacity as usize
    }

    /// The tripwire backend in use.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, BackendKind, ring::SharedRing};
    /// # let rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(rx.backend(), BackendKind::Poll);
    /// ```
    pub fn backend(&self) -> BackendKind {
        self.kind
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
        let Ok(head) = self.head() else { return 0 };
        let head = protocol::load_head(head);
        layout::available(head, self.tail, self.header.capacity).map_or(0, |n| n as usize)
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
        self.publish_tail()
    }

    fn head(&self) -> Result<&AtomicU64, Error> {
        self.region.atomic_u64(layout::HEAD)
    }

    fn state(&self) -> Result<&AtomicU64, Error> {
        self.region.atomic_u64(layout::STATE)
    }

    /// How many published messages are ready to take. The Sender's head is
    /// re-read (and validated) only once the messages known to be published
    /// are used up, so a burst costs one read of the Sender's cache line,
    /// not one per message.
    fn ready(&mut self) -> Result<usize, Error> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        if self.tail == self.known_head {
            let head = protocol::load_head(self.head()?);
            layout::available(head, self.tail, self.header.capacity)?;
            self.known_head = head;
            if head == self.tail {
                return Ok(0);
            }
            // A Sender waiting for space is woken after this run, not a
            // batch later (its flag shares the head's cache line, just read).
            self.sender_waiting = protocol::is_waiting(self.state()?);
        }
        Ok(self.known_head.wrapping_sub(self.tail) as usize)
    }

    /// Marks `n` messages taken. The tail is published in batches of a
    /// quarter ring; going idle always publishes (see `idle`), so a Sender
    /// that starts waiting later is still woken.
    fn taken(&mut self, n: usize) -> Result<(), Error> {
        self.tail = self.tail.wrapping_add(n as u64);
        self.stats.received += n as u64;
        if self.sender_waiting || self.tail.wrapping_sub(self.published) >= self.batch {
            // The messages are taken: an error now is for the next call.
            if let Err(e) = self.publish_tail() {
                self.deferred = Some(e);
            }
        }
        Ok(())
    }

    /// Takes the next published message, if any (no waiting, no ACK).
    fn pop(&mut self) -> Result<Option<T>, Error> {
        if self.ready()? == 0 {
            return Ok(None);
        }
        let value: T = self.slots.read(self.header.slot_offset(self.tail))?;
        self.taken(1)?;
        Ok(Some(value))
    }

    /// Takes up to `limit` published messages, one bounds-checked copy per
    /// contiguous run of slots, each run handed to `copy` as (slots, offset,
    /// messages); no waiting, no ACK. Returns how many.
    fn pop_runs(
        &mut self,
        limit: usize,
        mut copy: impl FnMut(&Region, usize, usize) -> Result<(), Error>,
    ) -> Result<usize, Error> {
        let mut n = 0;
        while n < limit {
            let ready = self.ready()?;
            if ready == 0 {
                break;
            }
            let run = ready
                .min(self.header.slots_to_end(self.tail))
                .min(limit - n);
            copy(&self.slots, self.header.slot_offset(self.tail), run)?;
            self.taken(run)?;
            n += run;
        }
        Ok(n)
    }

    /// Appends up to `limit` published messages to `buf` (no waiting).
    pub(super) fn pop_many(&mut self, buf: &mut Vec<T>, limit: usize) -> Result<usize, Error> {
        self.pop_runs(limit, |slots, offset, run| {
            let old = buf.len();
            buf.resize(old + run, T::zeroed());
            slots.read_bytes(offset, bytemuck::cast_slice_mut(&mut buf[old..]))
        })
    }

    /// Publishes the tail; rings the Sender if it waits for space.
    fn publish_tail(&mut self) -> Result<(), Error> {
        self.sender_waiting = false;
        if self.published == self.tail {
            return Ok(());
        }
        let ring = protocol::publish_tail(
            self.state()?,
            self.control.atomic_u64(layout::TAIL)?,
            self.tail,
        );
        self.published = self.tail;
        if ring {
            match self.space.ring() {
                // A Sender that is gone needs no wake-up; its death is
                // learned from the handshake socket.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.map_err(|e| Error::io("ringing the sender", e))?,
            }
        }
        Ok(())
    }

    /// Busy-polls the head for the spin budget: `true` once it moved.
    fn spin_for_data(&self) -> Result<bool, Error> {
        let budget = self.spin.budget();
        if budget.is_zero() {
            return Ok(false);
        }
        let head = self.head()?;
        let start = Instant::now();
        loop {
            for _ in 0..64 {
                if head.load(Ordering::Relaxed) != self.tail {
                    return Ok(true);
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= budget {
                return Ok(false);
            }
        }
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
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::SharedRing};
    /// let mut rx = SharedRing::<u64>::builder(8).backend(Backend::Doorbell).create().unwrap();
    /// assert!(rx.rearm().unwrap()); // empty: safe to sleep
    /// ```
    pub fn rearm(&mut self) -> Result<bool, Error> {
        self.publish_tail()?;
        let start = Instant::now();
        let changed = self.tw.try_changed();
        if self.tw.deadline().is_some() {
            self.ack_sent.get_or_insert(start);
        }
        match changed {
            // Tripped, and now re-armed: what was stored before is visible.
            Ok(Some(_)) => {
                self.stats.rearms += 1;
                // An ACK that went out without blocking cost the Receiver
                // from its sending to here (a sleep in between included).
                let sent = self.ack_sent.take().unwrap_or(start);
                self.spin.record_ack(sent.elapsed());
                // That may have been the last trip of a Sender that is
                // gone (taken with its hang-up, which then wakes no one):
                // sleeping now would be for ever.
                if self
                    .tw
                    .producers_gone()
                    .map_err(|e| Error::io("checking for the Sender's hang-up", e))?
                {
                    return Ok(false);
                }
            }
            // Armed since the last re-arm: the next store trips it.
            Ok(None) => {}
            // Every Sender is gone: nothing will trip it any more.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(false),
            Err(e) => return Err(Error::io("re-arming the ring's tripwire", e)),
        }
        // A Sender that closed cleanly while its socket lives on (a dup, a
        // forked child) trips no more either.
        if protocol::is_closed(self.state()?) {
            return Ok(false);
        }
        Ok(self.ready()? == 0)
    }

    /// When an event loop must call [`rearm`](Receiver::rearm) again even if
    /// the fd stays quiet: the deadline of the ACK that `rearm` left in
    /// flight (`Userfault`, `UserfaultAsync`; see
    /// [`blocking::Tripwire::deadline`]), after which `rearm` fails it with
    /// `TimedOut` if the Sender has not answered (is it stopped?). `None`
    /// with no ACK in flight. [`blocking_recv`](Receiver::blocking_recv)
    /// and [`recv`](Receiver::recv) arm it themselves.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, ring::SharedRing};
    /// let mut rx = SharedRing::<u64>::builder(8).backend(Backend::Doorbell).create().unwrap();
    /// assert!(rx.rearm().unwrap());
    /// assert_eq!(rx.deadline(), None); // a Doorbell ACK is done at once
    /// ```
    pub fn deadline(&self) -> Option<Instant> {
        self.tw.deadline()
    }

    /// One round of "nothing there": spin, re-arm, look again. `Some` is
    /// the outcome to return; `None` means: sleep until the wire trips.
    fn idle(&mut self) -> Result<Option<Option<T>>, Error> {
        if self.spin_for_data()? {
            return self.pop().map(|v| v.map(Some));
        }
        if self.rearm()? {
            self.stats.sleeps += 1;
            return Ok(None);
        }
        match self.pop()? {
            Some(v) => Ok(Some(Some(v))),
            // Nothing, though not armed: the Sender is gone.
            None => self.finish().map(Some),
        }
    }

    /// The Sender is gone: drain what was published, then say how it ended.
    fn finish(&mut self) -> Result<Option<T>, Error> {
        if let Some(v) = self.pop()? {
            return Ok(Some(v));
        }
        self.done = true;
        if protocol::is_closed(self.state()?) {
            Ok(None)
        } else {
            Err(Error::PeerDied)
        }
    }

    /// Nothing was there: has the Sender finished? `Empty` if not; else
    /// one more look (its flag and its hang-up come after its last head
    /// store), then how it ended.
    fn finished(&mut self) -> Result<T, TryRecvError> {
        let closed = protocol::is_closed(self.state()?);
        let gone = closed
            || self
                .tw
                .producers_gone()
                .map_err(|e| Error::io("checking for the Sender's hang-up", e))?;
        if !gone {
            return Err(TryRecvError::Empty);
        }
        self.finish()?.ok_or(TryRecvError::Closed)
    }

    /// Takes a message if one is there, without waiting or ACKing.
    ///
    /// When nothing is there it tells whether more may come, which costs a
    /// load from shared memory and one system call (has the Sender's
    /// process hung up?).
    ///
    /// # Errors
    ///
    /// - [`TryRecvError::Empty`]: nothing now; more may come.
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
        match self.pop()? {
            Some(v) => Ok(v),
            None => self.finished(),
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
        let n = self.pop_runs(buf.len(), |slots, offset, run| {
            let dst = bytemuck::cast_slice_mut(&mut buf[at..at + run]);
            at += run;
            slots.read_bytes(offset, dst)
        })?;
        if n > 0 {
            return Ok(n);
        }
        buf[0] = self.finished()?;
        Ok(1)
    }

    /// Waits for the next message, blocking the thread.
    ///
    /// `Ok(None)` once the Sender was dropped and everything it sent was
    /// received.
    ///
    /// # Errors
    ///
    /// [`Error::PeerDied`] once the Sender's process died (after everything
    /// it published was received); [`Error::Corrupt`] for an impossible
    /// index; [`Error::Io`] if the tripwire fails.
    ///
    /// ```no_run
    /// # fn f(mut rx: memfd_tripwire::ring::Receiver<u64>) -> Result<(), memfd_tripwire::Error> {
    /// while let Some(v) = rx.blocking_recv()? {
    ///     println!("{v}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn blocking_recv(&mut self) -> Result<Option<T>, Error> {
        loop {
            if self.done {
                return Ok(None);
            }
            if let Some(v) = self.pop()? {
                return Ok(Some(v));
            }
            if let Some(outcome) = self.idle()? {
                return Ok(outcome);
            }
            self.tw
                .get()
                .and_then(|tw| tw.wait_ready(None))
                .map_err(|e| Error::io("waiting on the ring's tripwire", e))?;
        }
    }

    /// Waits for at least one message, blocking the thread, then appends up
    /// to `limit` (at least one) to `buf` without waiting further. Returns
    /// how many; 0 means the Sender closed and everything was received.
    ///
    /// The batched [`blocking_recv`](Receiver::blocking_recv): one copy per
    /// contiguous run of slots instead of one per message.
    ///
    /// # Errors
    ///
    /// As [`blocking_recv`](Receiver::blocking_recv); messages already
    /// appended stay in `buf`.
    ///
    /// ```no_run
    /// # fn f(mut rx: memfd_tripwire::ring::Receiver<u64>) -> Result<(), memfd_tripwire::Error> {
    /// let mut buf = Vec::with_capacity(256);
    /// while rx.blocking_recv_many(&mut buf, 256)? > 0 {
    ///     buf.clear();
    /// }
    /// # Ok(()) }
    /// ```
    pub fn blocking_recv_many(&mut self, buf: &mut Vec<T>, limit: usize) -> Result<usize, Error> {
        let limit = limit.max(1);
        if !self.done {
            let n = self.pop_many(buf, limit)?;
            if n > 0 {
                return Ok(n);
            }
        }
        let Some(first) = self.blocking_recv()? else {
            return Ok(0);
        };
        buf.push(first);
        Ok(1 + self.pop_many(buf, limit - 1)?)
    }
}

impl<T> AsFd for Receiver<T> {
    /// The tripwire's wake-up fd: readable while the wire is tripped. (The
    /// Sender's hang-up is another fd: [`mio::event::Source`], feature
    /// `mio`, watches both.)
    ///
    /// # Panics
    ///
    /// If the Receiver was poisoned: tokio panicked while registering it (a
    /// runtime without IO) and the panic was caught.
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self.tw.get() {
            Ok(tw) => tw.as_fd(),
            Err(e) => panic!("{e}"),
        }
    }
}

impl<T> AsRawFd for Receiver<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// Registers the ring's tripwire and the Sender's hang-up under one token:
/// an event means "call [`try_recv`](Receiver::try_recv) until it says
/// [`Empty`](TryRecvError::Empty)". `try_recv` never ACKs: once it says
/// `Empty`, call [`rearm`](Receiver::rearm) and sleep only if it returns
/// `true`, or the wire, still tripped by the last message, stays quiet.
/// Sleep until an event or the Receiver's [`deadline`](Receiver::deadline)
/// (an ACK in flight), whichever is first: at the deadline, `rearm` again
/// (it fails an ACK a stopped Sender left unanswered with `TimedOut`).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::{Duration, Instant};
/// use mio::{Events, Interest, Poll, Token};
/// use memfd_tripwire::{Backend, ring::{SharedRing, TryRecvError}};
///
/// let mut rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create()?;
/// let mut poll = Poll::new()?;
/// poll.registry().register(&mut rx, Token(1), Interest::READABLE)?;
/// let mut events = Events::with_capacity(4);
/// for _ in 0..3 {
///     match rx.try_recv() {
///         Ok(v) => println!("{v}"),
///         Err(TryRecvError::Empty) => {
///             if rx.rearm()? {
///                 let mut timeout = Duration::from_millis(10);
///                 if let Some(deadline) = rx.deadline() {
///                     timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
///                 }
///                 poll.poll(&mut events, Some(timeout))?;
///             }
///         }
///         Err(e) => return Err(e.into()),
///     }
/// }
/// # Ok(()) }
/// ```
#[cfg(feature = "mio")]
impl<T> mio::event::Source for Receiver<T> {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> std::io::Result<()> {
        let fd = self.tw.get()?.as_raw_fd();
        mio::unix::SourceFd(&fd).register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> std::io::Result<()> {
        let fd = self.tw.get()?.as_raw_fd();
        mio::unix::SourceFd(&fd).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> std::io::Result<()> {
        let fd = self.tw.get()?.as_raw_fd();
        mio::unix::SourceFd(&fd).deregister(registry)
    }
}

#[cfg(feature = "tokio")]
mod r#async {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_core::{FusedStream, Stream};

    use super::*;

    impl<T: Pod> Receiver<T> {
        /// The tokio-registered tripwire (registers it on first use; a
        /// failed registration leaves the ring as it was).
        fn registered(&mut self) -> Result<&mut crate::Tripwire, Error> {
            if let RingTripwire::Blocking(_) = self.tw {
                let RingTripwire::Blocking(tw) =
                    std::mem::replace(&mut self.tw, RingTripwire::Poisoned)
                else {
                    unreachable!("matched just above")
                };
                match crate::Tripwire::new(tw) {
                    Ok(tw) => self.tw = RingTripwire::Async(tw),
                    Err(e) => {
                        let (tw, why) = e.into_parts();
                        self.tw = RingTripwire::Blocking(tw);
                        return Err(Error::io("registering the ring with tokio", why));
                    }
                }
            }
            match &mut self.tw {
                RingTripwire::Async(tw) => Ok(tw),
                _ => Err(Error::io("registering the ring with tokio", poisoned())),
            }
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
        /// # use memfd_tripwire::{Backend, ring::SharedRing};
        /// let mut rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create().unwrap();
        /// let waker = std::task::Waker::noop();
        /// let mut cx = std::task::Context::from_waker(&waker);
        /// assert!(rx.poll_recv(&mut cx).is_pending());
        /// # }
        /// ```
        pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<T>, Error>> {
            // A unit per turn: a message, or a wake-up that found none (a
            // Sender ringing without publishing cannot keep the task here).
            crate::tokio::poll_turns(cx, |cx| self.turn(cx))
        }

        /// One turn: `Ready(Some(..))` is the outcome, `Ready(None)` a
        /// wake-up to look again after.
        #[allow(clippy::type_complexity)]
        fn turn(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Option<T>>, Error>> {
            if self.done {
                return Poll::Ready(Ok(Some(None)));
            }
            if let Some(v) = self.pop()? {
                return Poll::Ready(Ok(Some(Some(v))));
            }
            if let Some(outcome) = self.idle()? {
                return Poll::Ready(Ok(Some(outcome)));
            }
            match self.registered()?.poll_ready(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(None)),
                Poll::Ready(Err(e)) => {
                    Poll::Ready(Err(Error::io("waiting on the ring's tripwire", e)))
                }
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
        /// impossible index; [`Error::Io`] if the tripwire fails, with
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
            Ok(1 + self.pop_many(buf, limit.max(1) - 1)?)
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
}
