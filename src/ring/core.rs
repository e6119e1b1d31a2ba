//! The ring's core, as `tokio::sync::mpsc`'s `chan.rs` is: what both ends
//! share ([`Shared`]: the memory and the fixed facts of one ring) and each
//! end's index logic ([`Rx`], [`Tx`]). It never waits, never touches a
//! tripwire and needs no runtime: the public ends (`receiver.rs`,
//! `sender.rs`) drive it, and the drivers (`blocking.rs`, `tokio.rs`,
//! `mio.rs`) wait for it. Every atomic step is a `protocol` function.

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytemuck::Pod;

use super::frames::walk::WORD;
use super::layout::{self, Header};
use super::protocol;
use super::spin;
use crate::sys::Bell;
use crate::sys::mapping::AccessError;
use crate::{Error, Producer, Region, SharedMemory, trace};

/// One ring's memory and fixed facts, the same for both ends: the
/// tripwire's region (head and state, written by the Sender), the control
/// memory (header and tail, written by the Receiver) and the slots.
pub(super) struct Shared {
    pub(super) header: Header,
    pub(super) region: Region,
    pub(super) control: Region,
    pub(super) slots: Region,
}

impl Shared {
    /// The 8-byte word at `offset` of the slots (a frame's length word):
    /// one relaxed load, through the mapping, whose error has no
    /// destructor (a per-frame `Result<_, Error>` cost the frames' hot
    /// path a drop call and a spill).
    #[inline]
    pub(super) fn word(&self, offset: usize) -> Result<u64, AccessError> {
        let mut word = [0u8; 8];
        self.slots.mapping().read_into(offset, &mut word)?;
        Ok(u64::from_ne_bytes(word))
    }

    /// The capacity in messages.
    pub(super) fn capacity(&self) -> usize {
        self.header.capacity as usize
    }

    /// The head index (the Sender writes it).
    pub(super) fn head(&self) -> Result<&AtomicU64, Error> {
        self.region.atomic_u64(layout::HEAD)
    }

    /// The state word (the Sender writes it; see `protocol`).
    pub(super) fn state(&self) -> Result<&AtomicU64, Error> {
        self.region.atomic_u64(layout::STATE)
    }

    /// The tail as the Receiver last published it, read fresh.
    fn tail(&self) -> Result<u64, Error> {
        self.control.load_u64(layout::TAIL)
    }

    /// How many messages are in the ring as one end sees it: the index that
    /// end writes is exact, the peer's is read fresh and validated. An
    /// impossible index counts as an empty ring on the Receiver's side and
    /// a full one on the Sender's (the next receive or send reports it).
    pub(super) fn len(&self, end: End) -> usize {
        let cap = self.header.capacity;
        match end {
            End::Receiver { tail } => self
                .head()
                .ok()
                .and_then(|head| layout::available(protocol::load_head(head), tail, cap).ok())
                .map_or(0, |n| n as usize),
            End::Sender { head, tail } => self
                .tail()
                .ok()
                .and_then(|fresh| layout::advance_tail(head, tail, fresh, cap).ok())
                .map_or(self.capacity(), |n| n as usize),
        }
    }
}

/// How many spin-loop hints the Receiver waits before it re-reads the head
/// while the Sender streams ("temporal slipping", as in FastForward's SPSC
/// queue): a Receiver that keeps up re-reads the head's cache line as soon
/// as the Sender wrote it, and each read takes the line from the Sender's
/// core, which then stalls on its next head store. Slipping lets a few
/// messages gather first, so one read of the line takes them all. (#22,
/// measured: the async per-message pair went from 0.66x to 0.85x the
/// blocking pair with it.) It costs a streaming message up to 8 hints
/// (~0.2 µs on AMD EPYC, ~0.4 µs on Intel since Skylake); a Receiver that
/// had to wait for its message (the round-trip case) never slips.
const SLIP: u32 = 8;

/// Which end asks [`Shared::len`], with the indices it holds.
pub(super) enum End {
    Receiver { tail: u64 },
    Sender { head: u64, tail: u64 },
}

/// The Receiver's core: its indices, its end of the space bell, and the
/// taking and publishing of messages. No waiting, no ACK.
pub(super) struct Rx<T> {
    pub(super) ring: Shared,
    /// Our end of the space bell: rung when the Sender waits for space.
    space: Bell,
    pub(super) tail: u64,
    pub(super) published: u64,
    /// The head as last read (validated): messages up to it are readable.
    pub(super) known_head: u64,
    /// The Sender's waiting flag as seen at the last head read.
    sender_waiting: bool,
    batch: u64,
    /// An error of publishing the tail after messages were taken: reported
    /// by the next receive, so that the taken messages are not lost.
    deferred: Option<Error>,
    /// The last look at the head found messages without waiting for them:
    /// the Sender is streaming, so the next look slips (see [`SLIP`]).
    slip: bool,
    /// Messages were waited for (spun for) since the last look that found
    /// some: the next find is a wake-up, not a stream, and does not slip.
    waited: bool,
    /// Messages received.
    pub(super) received: u64,
    /// A ring of byte frames (`ring::frames`): `ready` steps over the skip
    /// marker a frame that did not fit before the end left there.
    pub(super) framed: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T> Rx<T> {
    /// Closes the Receiver's end cleanly: sets the closed bit of its state
    /// word, then rings the space bell, so that a Sender asleep on a full
    /// ring wakes and sees it.
    pub(super) fn close(&self) {
        if let Ok(state) = self.ring.control.atomic_u64(layout::RX_STATE) {
            protocol::close_receiver(state);
        }
        let _ = self.space.ring();
    }
}

impl<T: Pod> Rx<T> {
    pub(super) fn new(ring: Shared, space: Bell) -> Self {
        Rx {
            batch: u64::from(ring.header.capacity / 4).max(1),
            ring,
            space,
            tail: 0,
            published: 0,
            known_head: 0,
            sender_waiting: false,
            deferred: None,
            slip: false,
            waited: false,
            received: 0,
            framed: false,
            _t: PhantomData,
        }
    }

    /// Rings the space bell whatever the indices say (a hostile
    /// Receiver's flood), for tests.
    #[cfg(test)]
    pub(super) fn ring_space(&self) {
        let _ = self.space.ring();
    }

    /// How many messages are published and not yet received.
    pub(super) fn len(&self) -> usize {
        self.ring.len(End::Receiver { tail: self.tail })
    }

    /// Whether the Sender closed the ring cleanly (after its last publish).
    pub(super) fn closed(&self) -> Result<bool, Error> {
        Ok(protocol::is_closed(self.ring.state()?))
    }

    /// How many published messages are ready to take. The Sender's head is
    /// re-read (and validated) only once the messages known to be published
    /// are used up, so a burst costs one read of the Sender's cache line,
    /// not one per message; while the Sender streams, that read slips
    /// behind it (see [`SLIP`]).
    pub(super) fn ready(&mut self) -> Result<usize, Error> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        if self.tail == self.known_head {
            if self.slip {
                for _ in 0..SLIP {
                    std::hint::spin_loop();
                }
                // A slip is a wait: what it finds does not slip the next
                // look (else a round trip that fits in a slip would slip
                // every time).
                self.waited = true;
            }
            let head = protocol::load_head(self.ring.head()?);
            layout::available(head, self.tail, self.ring.header.capacity)
                .map_err(|e| corrupt(e, "Receiver"))?;
            self.known_head = head;
            if head == self.tail {
                self.slip = false;
                return Ok(0);
            }
            self.slip = !std::mem::take(&mut self.waited);
            // A Sender waiting for space is woken after this run, not a
            // batch later (its flag shares the head's cache line, just read).
            self.sender_waiting = protocol::is_waiting(self.ring.state()?);
        }
        let ready = self.known_head.wrapping_sub(self.tail);
        if self.framed {
            return self.past_skip(ready);
        }
        Ok(ready as usize)
    }

    /// A ring of frames: `ready` words, of which a leading skip marker is
    /// consumed here (validated by `frames::walk`), so that what `ready`
    /// reports is a frame. (At most one skip in a row: the next starts at
    /// offset 0, where a skip is impossible.)
    fn past_skip(&mut self, ready: u64) -> Result<usize, Error> {
        if ready == 0 {
            return Ok(0);
        }
        let header = self.ring.header;
        let offset = header.slot_offset(self.tail);
        let word = self.ring.word(offset)?;
        let Some(skip) = super::frames::walk::skip(
            word,
            (offset / WORD) as u64,
            u64::from(header.capacity),
            ready,
        )
        .map_err(|e| corrupt(e, "Receiver"))?
        else {
            return Ok(ready as usize);
        };
        self.step_over_skip(skip);
        self.ready()
    }

    /// Moves the tail over a skip marker of `n` words and publishes it at
    /// once, not in the next batch: the Sender that wrote it alone waits
    /// for the room after it, and a Receiver that stepped over it in its
    /// last look before sleeping would sleep on an unpublished tail, each
    /// side waiting for the other (seen as a hang in CI, 12 of 60 runs of
    /// `every_size_round_trips_through_a_small_ring` here). An error of
    /// the publish is kept for the next call, as [`advance`](Rx::advance)'s.
    pub(super) fn step_over_skip(&mut self, n: u64) {
        self.advance(n);
        if let Err(e) = self.publish_tail() {
            self.deferred = Some(e);
        }
    }

    /// [`ready`](Rx::ready) for a fast path that only asks "anything?": 0
    /// also for an error, which is kept for the next `ready` (or `pop`) to
    /// report. (The async driver's fast path.)
    #[cfg(feature = "tokio")]
    #[inline]
    pub(super) fn ready_now(&mut self) -> usize {
        self.ready().unwrap_or_else(|e| {
            self.deferred = Some(e);
            0
        })
    }

    /// Marks `n` messages taken. The tail is published in batches of a
    /// quarter ring; going idle always publishes (see `Receiver::idle`), so
    /// a Sender that starts waiting later is still woken.
    fn taken(&mut self, n: usize) {
        self.received += n as u64;
        self.advance(n as u64);
    }

    /// Moves the tail `n` slots on, publishing it per batch (see
    /// [`taken`](Rx::taken)); counts no message.
    pub(super) fn advance(&mut self, n: u64) {
        self.tail = self.tail.wrapping_add(n);
        if self.sender_waiting || self.tail.wrapping_sub(self.published) >= self.batch {
            // The messages are taken: an error now is for the next call.
            if let Err(e) = self.publish_tail() {
                self.deferred = Some(e);
            }
        }
    }

    /// Takes the next published message, if any (no waiting, no ACK).
    pub(super) fn pop(&mut self) -> Result<Option<T>, Error> {
        if self.ready()? == 0 {
            return Ok(None);
        }
        let value: T = self
            .ring
            .slots
            .read(self.ring.header.slot_offset(self.tail))?;
        self.taken(1);
        Ok(Some(value))
    }

    /// Takes up to `limit` published messages, one bounds-checked copy per
    /// contiguous run of slots, each run handed to `copy` as (slots, offset,
    /// messages); no waiting, no ACK. Returns how many.
    pub(super) fn pop_runs(
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
            let header = &self.ring.header;
            let run = ready.min(header.slots_to_end(self.tail)).min(limit - n);
            copy(&self.ring.slots, header.slot_offset(self.tail), run)?;
            self.taken(run);
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
    pub(super) fn publish_tail(&mut self) -> Result<(), Error> {
        self.sender_waiting = false;
        if self.published == self.tail {
            return Ok(());
        }
        let ring = protocol::publish_tail(
            self.ring.state()?,
            self.ring.control.atomic_u64(layout::TAIL)?,
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

    /// Busy-polls the head for `budget`: `true` once it moved.
    pub(super) fn spin_for_data(&mut self, budget: Duration) -> Result<bool, Error> {
        self.waited = true;
        let head = self.ring.head()?;
        spin::until(budget, || {
            Ok::<_, Error>(head.load(std::sync::atomic::Ordering::Relaxed) != self.tail)
        })
    }
}

/// The Sender's core: the producer of the tripwire, its indices, its end
/// of the space bell, and the writing and publishing of messages.
pub(super) struct Tx<T> {
    pub(super) ring: Shared,
    pub(super) producer: Producer,
    pub(super) space: Bell,
    /// The waiting flag is set in the state word (a wait was announced and
    /// not yet withdrawn, e.g. by a cancelled `send`).
    waiting: bool,
    /// The head as last published.
    pub(super) head: u64,
    /// Slots written after `head` and not yet published (`Sink::start_send`
    /// batches them; a [`SendSlot`](super::SendSlot) fills the one after
    /// them): published by the next [`publish`](Tx::publish), which every
    /// send and flush makes, and before any wait for space.
    pending: u64,
    /// Published values after which [`Tx::stage`] publishes on its own, so
    /// that a Receiver is not kept waiting by a writer that never flushes: a
    /// quarter ring, as the Receiver's batches of tail stores.
    #[cfg(feature = "tokio")]
    batch: u64,
    /// The Sender closed the ring itself (`Sink::poll_close`): no send may
    /// follow.
    pub(super) closed: bool,
    tail: u64,
    /// How long a Sender that finds the ring full polls for space before
    /// it sleeps: the price of a sleep on this host (`ring::spin`).
    space_spin: Duration,
    _t: PhantomData<fn(T)>,
}

/// What the ring's frame gave a Sender, checked.
pub(super) struct Attached {
    ring: Shared,
    space: Bell,
    head: u64,
    tail: u64,
}

impl<T: Pod> Tx<T> {
    /// Checks the ring's frame (control memfd, space bell, slots memfd)
    /// against the tripwire's `region` and what this end expects.
    pub(super) fn attach(region: &Region, fds: Vec<OwnedFd>, tag: u64) -> Result<Attached, Error> {
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
        let head = region
            .atomic_u64(layout::HEAD)?
            .load(std::sync::atomic::Ordering::Relaxed);
        let tail = control.load_u64(layout::TAIL)?;
        layout::available(head, tail, header.capacity)?;
        Ok(Attached {
            ring: Shared {
                header,
                region: region.clone(),
                control,
                slots,
            },
            space,
            head,
            tail,
        })
    }

    /// The Sender's core, once the frame is accepted.
    pub(super) fn new(producer: Producer, attached: Attached) -> Self {
        let Attached {
            ring,
            space,
            head,
            tail,
        } = attached;
        Tx {
            #[cfg(feature = "tokio")]
            batch: u64::from(ring.header.capacity / 4).max(1),
            ring,
            producer,
            space,
            waiting: false,
            head,
            pending: 0,
            closed: false,
            tail,
            space_spin: spin::Spin::Adaptive {
                ack: Duration::ZERO,
                detect: Duration::ZERO,
            }
            .budget(),
            _t: PhantomData,
        }
    }
}

impl<T: Pod> Tx<T> {
    /// Writes up to `free` of `items` and publishes them (with any written
    /// before) with one head store and one `notify()`. Returns how many were
    /// published (0 if a copy failed), and the outcome: `notify()` can fail
    /// after the head store (a Receiver found gone is not a failure: what
    /// was published counts as sent, and the next wait for space reports
    /// the death).
    pub(super) fn write(&mut self, items: &[T], free: u64) -> (usize, Result<(), Error>) {
        let n = items.len().min(free as usize);
        let mut done = 0;
        let header = self.ring.header;
        let next = self.next();
        let copied = (|| {
            if let [one] = &items[..n] {
                // A fixed-size copy (`send`, `blocking_send`, `try_send`).
                self.ring.slots.write(header.slot_offset(next), one)?;
                done = 1;
            }
            // One bounds-checked copy per contiguous run of slots (at most two).
            while done < n {
                let at = next.wrapping_add(done as u64);
                let run = (n - done).min(header.slots_to_end(at));
                self.ring.slots.write_bytes(
                    header.slot_offset(at),
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
        // One head store for these and any written before them (the
        // Sink's), one notify(); inlined, so that the hot path (`send`,
        // `blocking_send`) passes no `Result` through memory (see
        // `tokio::spend_unit`: such copies stall).
        if let Err(e) = self.store_head(next.wrapping_add(n as u64)) {
            return (0, Err(e)); // nothing was published
        }
        (n, self.notify("notify (after publishing)"))
    }

    /// Writes `value` into the next slot without publishing it (`Sink`'s
    /// `start_send`), then publishes everything written once a batch is
    /// due. The caller saw a free slot ([`free`](Tx::free)); a full ring,
    /// as this end last saw it, is refused (nothing is written).
    #[cfg(feature = "tokio")]
    pub(super) fn stage(&mut self, value: &T) -> Result<(), Error> {
        if self.closed {
            return Err(closed_by_sender());
        }
        if self.next().wrapping_sub(self.tail) >= u64::from(self.ring.header.capacity) {
            return Err(Error::invalid(
                "start_send",
                "a value while the ring is full",
                "a value after poll_ready returned Ready(Ok(()))",
            ));
        }
        self.ring.slots.write(self.next_offset(), value)?;
        self.pending += 1;
        if self.pending >= self.batch {
            self.publish()?;
        }
        Ok(())
    }
}

impl<T> Tx<T> {
    /// How many sent messages the Receiver has not yet taken, as far as it
    /// has published.
    /// Values written and not yet published count as sent.
    pub(super) fn len(&self) -> usize {
        self.ring.len(End::Sender {
            head: self.next(),
            tail: self.tail,
        })
    }

    /// The Sender's indices (published head, written and not published,
    /// tail last read), for tests of its invariants against a hostile
    /// Receiver.
    #[cfg(test)]
    pub(super) fn indices(&self) -> (u64, u64, u64) {
        (self.head, self.pending, self.tail)
    }

    /// The index of the next slot to write: after the published head and
    /// the values written since.
    #[inline]
    pub(super) fn next(&self) -> u64 {
        self.head.wrapping_add(self.pending)
    }

    /// The byte offset of the next slot to write in the slots memory (a
    /// [`SendSlot`](super::SendSlot)'s).
    pub(super) fn next_offset(&self) -> usize {
        self.ring.header.slot_offset(self.next())
    }

    /// `true` once the Receiver is gone (its end of the handshake socket or
    /// of the space bell hung up).
    pub(super) fn is_closed(&self) -> bool {
        self.receiver_closed() || self.producer.is_closed() || self.space.hung_up().unwrap_or(true)
    }

    /// How the Receiver's end went: `Closed` if it closed it (the closed
    /// bit, read after the hang-up flag: a clean close sets the bit before
    /// its socket closes), else `PeerDied`.
    #[cold]
    fn ended(&self) -> Error {
        if self.receiver_closed() {
            Error::Closed
        } else {
            Error::PeerDied
        }
    }

    /// Whether the Receiver closed its end cleanly (one load of a word it
    /// writes once).
    #[inline]
    fn receiver_closed(&self) -> bool {
        self.ring
            .control
            .load_u64(layout::RX_STATE)
            .is_ok_and(protocol::receiver_closed)
    }

    /// [`free`](Tx::free) for a fast path that only asks "room?": 0 also
    /// for an error (the next `free` finds it again). (The async driver's
    /// fast path.)
    #[cfg(feature = "tokio")]
    #[inline]
    pub(super) fn free_now(&mut self, need: u64) -> u64 {
        self.free(need).unwrap_or(0)
    }

    /// Free slots, re-reading (and validating) the Receiver's tail when the
    /// tail last read leaves fewer than `need` (1 for a message);
    /// [`Error::Closed`] once the Receiver closed its end, and
    /// [`Error::PeerDied`] once its process hung up without closing it
    /// (the producer's hang-up flag: shortly after the death), whatever the
    /// slots say: what is sent now would never be read. Slots written and
    /// not yet published are not free; when fewer than `need` are free,
    /// they are published (the Receiver cannot free slots it was never
    /// shown).
    pub(super) fn free(&mut self, need: u64) -> Result<u64, Error> {
        if self.closed {
            return Err(closed_by_sender());
        }
        if self.receiver_closed() || self.producer.consumer_gone() {
            return Err(self.ended());
        }
        let cap = u64::from(self.ring.header.capacity);
        let used = self.next().wrapping_sub(self.tail);
        if used + need <= cap {
            // Room for `need` by the tail known: no read of the Receiver's
            // cache line.
            return Ok(cap - used);
        }
        let used = self.reread_tail()?;
        if cap - used < need {
            self.publish()?;
        }
        Ok(cap - used)
    }

    /// Re-reads the Receiver's tail; returns the slots in use, written ones
    /// included. The tail is checked against the published head: a
    /// Receiver cannot have taken what it was never shown.
    fn reread_tail(&mut self) -> Result<u64, Error> {
        let tail = self.ring.tail()?;
        layout::advance_tail(self.head, self.tail, tail, self.ring.header.capacity)
            .map_err(|e| corrupt(e, "Sender"))?;
        self.tail = tail;
        Ok(self.next().wrapping_sub(tail))
    }

    /// Publishes the slot after the written ones, which a
    /// [`SendSlot`](super::SendSlot) filled, with them.
    pub(super) fn commit_next(&mut self) -> Result<(), Error> {
        self.pending += 1;
        self.publish()
    }

    /// Publishes the next `n` slots, written already after any the Sink
    /// wrote (a frame and its skip marker), with them: one head store and
    /// one `notify()`. `Err`: nothing was published; `Ok(rung)`: they were,
    /// and `rung` is the outcome of `notify()` (see [`write`](Tx::write)).
    pub(super) fn publish_next(&mut self, n: u64) -> Result<Result<(), Error>, Error> {
        self.store_head(self.next().wrapping_add(n))?;
        Ok(self.notify("notify (after publishing)"))
    }

    /// Free slots by the tail last read: no read of the Receiver's cache
    /// line, no check of its end (a batched send's fast path, which made
    /// them with [`free`](Tx::free) at its start and makes them again
    /// whenever this falls short).
    #[inline]
    pub(super) fn free_known(&self) -> u64 {
        u64::from(self.ring.header.capacity) - self.next().wrapping_sub(self.tail)
    }

    /// Counts the next `n` slots, written already after any written before
    /// (a frame and its skip marker), as written and not yet published; once
    /// `batch` or more are, publishes them all (one head store, one
    /// `notify()`). A batched send of frames.
    #[inline]
    pub(super) fn stage_next(&mut self, n: u64, batch: u64) -> Result<(), Error> {
        self.pending += n;
        if self.pending >= batch {
            return self.publish();
        }
        Ok(())
    }

    /// Publishes every slot written and not yet published: one head store
    /// and one `notify()`; nothing if there are none. An error of the head
    /// store publishes nothing; `notify()` can fail after it (see
    /// [`write`](Tx::write)).
    pub(super) fn publish(&mut self) -> Result<(), Error> {
        if self.pending == 0 {
            return Ok(());
        }
        self.store_head(self.next())?;
        self.notify("notify (after publishing)")
    }

    /// The head store of [`publish`](Tx::publish) (at `head`: the written
    /// slots and any after them), without the `notify()`.
    #[inline]
    fn store_head(&mut self, head: u64) -> Result<(), Error> {
        protocol::publish_head(self.ring.head()?, head);
        self.head = head;
        self.pending = 0;
        if self.waiting {
            // A wait announced by a `send` that was cancelled: withdraw it,
            // or the Receiver rings us at every tail it publishes.
            let _ = self.stop_waiting();
        }
        Ok(())
    }

    /// Wakes the Receiver after a publish or a close.
    #[inline]
    fn notify(&self, what: &'static str) -> Result<(), Error> {
        match self.producer.notify() {
            Ok(()) => Ok(()),
            // Published: a Receiver that is gone (died: `BrokenPipe`; or
            // said goodbye: `ConnectionAborted`, `Error::Closed`'s kind) may
            // have taken them before it left; the next call reports it. (A
            // Receiver that closed between a send's check and its notify
            // made it an `Error::Io` before: a hostile test saw it in CI.)
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                Ok(())
            }
            // Published, but the Receiver may not have been woken.
            Err(e) => Err(Error::io(what, e)),
        }
    }

    /// Closes the ring cleanly (`Sink::poll_close`, a dropped Sender):
    /// publishes what was written, sets the closed bit after that last
    /// head store, and rings the Receiver once; no send may follow.
    pub(super) fn close(&mut self) -> Result<(), Error> {
        if self.closed {
            return Ok(());
        }
        if self.pending > 0 {
            self.store_head(self.next())?;
        }
        protocol::close(self.ring.state()?);
        self.closed = true;
        self.notify("notify (after closing)")
    }

    /// Announces that the Sender waits for `need` free slots; `true` if
    /// they appeared meanwhile (then it does not wait).
    pub(super) fn start_waiting(&mut self, need: u64) -> Result<bool, Error> {
        protocol::announce(self.ring.state()?);
        self.waiting = true;
        Ok(u64::from(self.ring.header.capacity) - self.reread_tail()? >= need)
    }

    /// Withdraws the wait [`start_waiting`](Tx::start_waiting) announced.
    pub(super) fn stop_waiting(&mut self) -> Result<(), Error> {
        protocol::withdraw(self.ring.state()?);
        self.waiting = false;
        Ok(())
    }

    /// Free slots, polling the tail for up to `space_spin` while there
    /// are fewer than `need`: the Receiver polls the head likewise, and a
    /// sleep costs both sides a wake-up.
    pub(super) fn spin_for_space(&mut self, need: u64) -> Result<u64, Error> {
        let mut free = self.free(need)?;
        if free >= need {
            // The common case: no clock read on the way to a send.
            return Ok(free);
        }
        spin::until(self.space_spin, || {
            free = self.free(need)?;
            Ok::<_, Error>(free >= need)
        })?;
        Ok(free)
    }

    /// Takes the Receiver's rings of the space bell; `true` if its end is
    /// closed (the Receiver is gone).
    pub(super) fn drain_space(&self) -> Result<bool, Error> {
        match self.space.drain() {
            Ok(_) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
            Err(e) => Err(Error::io("draining the space bell", e)),
        }
    }
}

/// A send after the Sender closed the ring itself (`Sink::poll_close`).
pub(super) fn closed_by_sender() -> Error {
    Error::invalid(
        "Sender",
        "a send after Sink::poll_close closed the ring",
        "sends before the close only",
    )
}

/// An index check of the peer's that failed ([`Error::Corrupt`]) at this
/// `end`: the `tracing` event (see `crate::trace`), then the error.
pub(super) fn corrupt(e: Error, end: &'static str) -> Error {
    trace::warn!(
        end = end,
        error = %e,
        "corrupt peer: the ring's other end wrote an impossible index"
    );
    e
}
