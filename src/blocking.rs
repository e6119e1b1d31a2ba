//! The runtime-free [`Tripwire`]: poll it, wait on it, or register it with
//! mio; the async `crate::Tripwire` (feature `tokio`) is a thin layer over it.

use std::fmt;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::backend::{Options, Take, Wire};
use crate::handoff;
use crate::sys::wait;
use crate::{Backend, BackendKind, Epoch, Error, Region, trace};

/// Configures and creates a [`Tripwire`]; from [`Tripwire::builder`].
///
/// ```
/// use std::time::Duration;
/// use memfd_tripwire::{Backend, blocking::Tripwire};
///
/// let tw = Tripwire::builder(4096)
///     .backend(Backend::Poll)
///     .poll_interval(Duration::from_micros(500))
///     .create()
///     .unwrap();
/// assert_eq!(tw.region().len(), 4096);
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .create()"]
pub struct Builder {
    len: usize,
    backend: Backend,
    opts: Options,
}

impl Builder {
    /// Which mechanism to use; [`Backend::Auto`] by default.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let b = Tripwire::builder(64).backend(Backend::Doorbell);
    /// ```
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// How often [`Backend::Poll`] compares the region, and how often
    /// [`Backend::UserfaultAsync`] scans the producers' page tables; ignored
    /// by the other backends. An interval set here is kept as it is: you
    /// choose the CPU it costs.
    ///
    /// When it is not set: `UserfaultAsync` scans every 1 ms; `Poll`
    /// compares every 1 ms, stretched so that its polling costs at most ~4 %
    /// of a core: the interval is 25 times the measured (and smoothed) cost
    /// of a compare of the whole region, the poller thread's wake-up around
    /// it included, if that is longer (so a host whose wake-ups cost more
    /// polls less often). A page
    /// compares in well under a µs (1 ms); a 1 MiB region in ~100-120 µs on
    /// a 2-vCPU EPYC VM, which stretches its interval to ~3 ms; 16 MiB to
    /// ~40-65 ms, 64 MiB to ~330 ms (latency grows with it). `Poll` suits
    /// doorbell pages and small regions; for large regions prefer
    /// [`Backend::Kernel`] or [`Backend::Userfault`], idle at no cost. All
    /// `Poll` tripwires of a process share one poller thread, which compares
    /// them in turn: a large one delays the others' compares by its own
    /// compare time.
    ///
    /// A store is seen within about one interval, plus the time the thread
    /// that checks takes to wake (its timer slack is set to a twentieth of
    /// the interval, 1 to 50 µs; on `Poll`, of the shortest interval of the
    /// process's `Poll` tripwires) and, for `UserfaultAsync`, the scan: on a
    /// 2-vCPU VM a 50 µs interval gave a median of ~95 µs from store to
    /// `wait()` returning, and 1 ms gave ~665 µs.
    ///
    /// On `Poll` an interval over a day is taken as a day (`Duration::MAX`
    /// included).
    ///
    /// The interval must be at least 10 µs, and on `UserfaultAsync` at most
    /// 10 s: [`create`](Builder::create) refuses another with
    /// [`Error::InvalidArgument`] (`what: "poll_interval"`) rather than spin
    /// a thread (or, on `UserfaultAsync`, scan at another interval than the
    /// one set).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// # use std::time::Duration;
    /// let b = Tripwire::builder(64).backend(Backend::Poll).poll_interval(Duration::from_millis(5));
    /// assert!(Tripwire::builder(64).backend(Backend::Poll).poll_interval(Duration::ZERO).create().is_err());
    /// ```
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.opts.poll_interval = Some(interval);
        self
    }

    /// `Poll` (and `Unmodified` when it falls back to `Poll`) for a small
    /// region, such as a doorbell page: after each ACK the poller compares
    /// the region without sleeping for up to `window`, then goes back to
    /// sleeping [`poll_interval`](Builder::poll_interval)s. A store made
    /// within the window is seen within one compare (well under a µs for a
    /// page) instead of up to an interval; the price is up to `window` of
    /// one core per ACK. Zero (the default) turns it off.
    ///
    /// The process's one poller thread does the spinning (the ACK wakes it,
    /// so the window starts at once); meanwhile it still compares the other
    /// `Poll` tripwires when they are due, and a large one among them delays
    /// the next compare by its own compare time.
    ///
    /// Refused (by [`create`](Builder::create), with
    /// [`Error::InvalidArgument`], `what: "busy_poll"`) for other backends,
    /// for a region over 16 KiB (each compare would cost more than a
    /// wake-up), and for a window over 100 ms.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let doorbell = Tripwire::builder(4096)
    ///     .backend(Backend::Poll)
    ///     .busy_poll(Duration::from_micros(200))
    ///     .create()
    ///     .unwrap();
    /// assert!(Tripwire::builder(1 << 20).backend(Backend::Poll).busy_poll(Duration::from_micros(200)).create().is_err());
    /// ```
    pub fn busy_poll(mut self, window: Duration) -> Self {
        self.opts.busy_poll = window;
        self
    }

    /// Creates the tripwire: its memory (zeroed), its wake-up fd, armed.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroLength`] for a length of 0; [`Error::InvalidArgument`]
    /// for an argument out of range, checked before anything is created
    /// (it names the argument, the value and what is allowed);
    /// [`Error::Unavailable`] when the chosen backend cannot work on this
    /// kernel (with the reason); [`Error::NoBackend`] from `Auto`, listing
    /// each backend it tried; [`Error::Io`] when a system call fails.
    ///
    /// The length, per backend (none panics or aborts on any value):
    ///
    /// - every backend: 1 to `isize::MAX` bytes less a page (else
    ///   `InvalidArgument`, `what: "len"`); a region the kernel cannot map
    ///   (over the address space: 128 TiB on x86-64) is `Error::Io` from
    ///   `mmap` or `ftruncate`;
    /// - `Userfault`, `UserfaultAsync`: at most 16 GiB (else
    ///   `InvalidArgument`);
    /// - `Poll` (and `Unmodified` falling back to it): also one region's
    ///   worth of heap for the snapshot, allocated fallibly: `Error::Io` of
    ///   kind `OutOfMemory` when this process cannot have it (the memory is
    ///   written at once, so one that only fits by overcommit is used up);
    /// - `Kernel`, `Doorbell`: no more than the kernel's (the region is
    ///   mapped lazily; `Doorbell` adds a page).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, Error, blocking::Tripwire};
    /// match Tripwire::builder(4096).create() {
    ///     Ok(tw) => println!("using {}", tw.backend()),
    ///     Err(e) => println!("no tripwire here: {e}"),
    /// }
    /// ```
    pub fn create(self) -> Result<Tripwire, Error> {
        let (wire, region) = Wire::create(self.backend, self.len, self.opts)?;
        Ok(Tripwire {
            wire,
            region,
            epoch: Epoch::ZERO,
            stats: TripwireStats::default(),
        })
    }
}

/// A tripwire's consumer end, without an async runtime.
///
/// A write into the [`region`](Tripwire::region) (on `Doorbell`: a
/// [`Producer::notify`](crate::Producer::notify) after it) *trips* the wire.
/// [`try_changed`](Tripwire::try_changed), [`wait`](Tripwire::wait) and
/// [`wait_timeout`](Tripwire::wait_timeout) take a trip: they ACK it
/// (re-arming the wire and making every earlier write visible) and return the
/// new [`Epoch`]. Writes coalesce: each epoch stands for at least one change,
/// possibly more. Nothing slips through: a write racing with the ACK is
/// either visible once it returns or trips the wire again.
///
/// [`AsFd`]/[`AsRawFd`] give the tripwire's one fd, readable while the wire
/// is tripped or once a producer hung up: an epoll set over the mechanism's
/// wake-up fd (the tripwire itself on `Kernel`, the agents' channels on the
/// Userfaults, the producers' sockets on `Doorbell`) and the producers'
/// handshake sockets; on `Poll` the eventfd its poller rings (which a
/// process-wide thread also rings when a producer hangs up). It is the only fd to
/// watch, before and after [`share`](Tripwire::share); with the `mio`
/// feature the tripwire is a
/// [`mio::event::Source`](https://docs.rs/mio/1/mio/event/trait.Source.html)
/// for it.
/// Wrap it in `crate::Tripwire` (feature `tokio`) for `changed().await`.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use memfd_tripwire::{Backend, blocking::Tripwire};
///
/// let mut tw = Tripwire::builder(4096).backend(Backend::Poll).create()?;
/// assert_eq!(tw.try_changed()?, None); // quiet
/// tw.region().write(100, &1u8)?; // any write; here our own
/// let epoch = tw.wait_timeout(Duration::from_secs(5))?.expect("tripped");
/// assert_eq!(epoch.get(), 1);
/// # Ok(()) }
/// ```
pub struct Tripwire {
    wire: Wire,
    region: Region,
    epoch: Epoch,
    /// The step's counters (the producers' ends are the wire's: see
    /// [`stats`](Tripwire::stats)).
    stats: TripwireStats,
}

/// What a tripwire has done so far: counters that only go up, from its
/// creation, read with [`Tripwire::stats`] (and the async
/// `Tripwire::stats`, feature `tokio`). Like the ring's
/// [`RingStats`](crate::ring::RingStats), always kept (a few integer
/// additions in the step every driver takes); the `tracing` feature's
/// events tell the same story one event at a time.
///
/// `trips` equals [`Tripwire::epoch`]`.get()`; `acks` is at least
/// `trips` (each trip is taken with an ACK, and
/// [`ack`](Tripwire::ack)/[`try_ack`](Tripwire::try_ack) add their own).
/// The producers still connected are `producers_connected -
/// producers_closed - producers_died` (a producer that hung up is counted
/// once the tripwire next looks: at its next step or
/// [`producers_gone`](Tripwire::producers_gone)).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use memfd_tripwire::{Backend, blocking::{Tripwire, TripwireStats}};
///
/// let mut tw = Tripwire::builder(4096).backend(Backend::Poll).create()?;
/// assert_eq!(tw.stats(), TripwireStats::default());
/// tw.region().write(0, &1u8)?;
/// tw.wait_timeout(Duration::from_secs(5))?.expect("tripped");
/// let stats = tw.stats();
/// assert_eq!((stats.trips, stats.acks), (1, 1));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TripwireStats {
    /// Trips taken: epochs returned by [`Tripwire::try_changed`] and the
    /// waits built on it.
    pub trips: u64,
    /// ACKs completed (each re-armed the wire): one per trip taken, and
    /// one per [`ack`](Tripwire::ack) or [`try_ack`](Tripwire::try_ack)
    /// that returned done.
    pub acks: u64,
    /// ACKs that failed with `TimedOut`: a producer's agent did not answer
    /// by the [`deadline`](Tripwire::deadline) (`Userfault`,
    /// `UserfaultAsync` only; is a producer stopped?).
    pub ack_timeouts: u64,
    /// Producers that completed a handshake ([`share`](Tripwire::share)
    /// and its kin, the ring's too).
    pub producers_connected: u64,
    /// Producers that closed their end cleanly (a dropped
    /// [`Producer`](crate::Producer)'s goodbye, then its hang-up: see
    /// [`Error::Closed`]).
    pub producers_closed: u64,
    /// Producers that hung up without a goodbye: killed, crashed, or
    /// dropped while their thread panicked (see [`Error::PeerDied`]).
    pub producers_died: u64,
}

impl fmt::Debug for Tripwire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tripwire")
            .field("backend", &self.wire.kind())
            .field("len", &self.region.len())
            .field("epoch", &self.epoch)
            .field("fd", &self.as_raw_fd())
            .finish()
    }
}

impl Tripwire {
    /// Starts building a tripwire over `len` bytes of shared memory.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let tw = Tripwire::builder(4096).backend(Backend::Doorbell).create().unwrap();
    /// ```
    pub fn builder(len: usize) -> Builder {
        Builder {
            len,
            backend: Backend::Auto,
            opts: Options {
                poll_interval: None,
                busy_poll: Duration::ZERO,
            },
        }
    }

    /// The backend in use (what `Auto` resolved to).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, BackendKind, blocking::Tripwire};
    /// let tw = Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(tw.backend(), BackendKind::Poll);
    /// ```
    pub fn backend(&self) -> BackendKind {
        self.wire.kind()
    }

    /// The shared memory, as mapped in this process.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let tw = Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(tw.region().read::<u64>(0).unwrap(), 0);
    /// ```
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The last epoch returned (zero before the first change).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, Epoch, blocking::Tripwire};
    /// let tw = Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(tw.epoch(), Epoch::ZERO);
    /// ```
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// What this tripwire has done so far: trips, ACKs, ACK time-outs,
    /// and how its producers came and went (see [`TripwireStats`]).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::unix::net::UnixStream;
    /// use memfd_tripwire::{Backend, Error, Producer, blocking::Tripwire};
    ///
    /// let (ours, theirs) = UnixStream::pair()?;
    /// let producer = std::thread::spawn(move || Producer::connect(theirs));
    /// let mut tw = Tripwire::builder(4096).backend(Backend::Doorbell).create()?;
    /// tw.share(ours)?;
    /// drop(producer.join().unwrap()?); // a clean close
    /// let err = tw.wait().unwrap_err();
    /// assert!(Error::is_closed(&err));
    /// let stats = tw.stats();
    /// assert_eq!(stats.producers_connected, 1);
    /// assert_eq!((stats.producers_closed, stats.producers_died), (1, 0));
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> TripwireStats {
        let (producers_closed, producers_died) = self.wire.ends();
        TripwireStats {
            producers_closed,
            producers_died,
            ..self.stats
        }
    }

    /// Counts what a take or an ACK of the wire did: an ACK done, or one
    /// that timed out.
    fn count(&mut self, taken: io::Result<Take>) -> io::Result<Take> {
        match &taken {
            Ok(Take::Taken) => self.stats.acks += 1,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => self.stats.ack_timeouts += 1,
            _ => {}
        }
        taken
    }

    /// The one non-blocking step every way of waiting drives: if the wire
    /// is tripped, ACKs it and returns the new epoch; otherwise `None`.
    /// Never blocks.
    ///
    /// On `Userfault` and `UserfaultAsync` the ACK is a round trip to each
    /// producer's agent (tens of µs): the step sends it and returns `None`
    /// while it is in flight, and a later step (when the fd turns readable
    /// as the replies come) finishes it and returns the epoch. An ACK in
    /// flight has a [`deadline`](Tripwire::deadline) (1 s after it was
    /// sent): a step after it, with a reply still missing (a stopped
    /// producer), fails the ACK with `TimedOut`. So look again on
    /// readiness *or* at the deadline, whichever comes first:
    /// [`wait`](Tripwire::wait) and [`wait_ready`](Tripwire::wait_ready) do,
    /// and so must an event loop of yours.
    ///
    /// With mio, call this on each event of the tripwire's token until it
    /// returns `None`, and use [`deadline`](Tripwire::deadline) as (part of)
    /// the time-out of `Poll::poll`:
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::{Duration, Instant};
    /// use mio::{Events, Interest, Poll, Token, unix::SourceFd};
    /// use memfd_tripwire::{Backend, blocking::Tripwire};
    ///
    /// let mut tw = Tripwire::builder(64).backend(Backend::Poll).create()?;
    /// let mut poll = Poll::new()?;
    /// // With the `mio` feature, `register(&mut tw, ..)` does this.
    /// poll.registry().register(&mut SourceFd(&tw.as_raw_fd()), Token(0), Interest::READABLE)?;
    /// let mut events = Events::with_capacity(8);
    /// tw.region().write(0, &1u8)?;
    /// let mut seen = 0;
    /// while seen == 0 {
    ///     // Our own time-out, cut short by the tripwire's deadline.
    ///     let mut timeout = Duration::from_secs(5);
    ///     if let Some(deadline) = tw.deadline() {
    ///         timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
    ///     }
    ///     poll.poll(&mut events, Some(timeout))?;
    ///     // On an event of Token(0), or at the deadline: step.
    ///     while let Some(_epoch) = tw.try_changed()? {
    ///         seen += 1;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Once the tripwire was [shared](Tripwire::share) and every producer
    /// has hung up, after any pending trip: `ConnectionAborted` (wrapping
    /// [`Error::Closed`]) if each dropped its [`Producer`](crate::Producer)
    /// (a goodbye, then the hang-up), `BrokenPipe` (wrapping
    /// [`Error::PeerDied`]) if one left without a goodbye (killed, crashed,
    /// panicked); [`Error::is_closed`] and [`Error::is_peer_died`] tell them
    /// apart. `TimedOut` for an ACK whose
    /// [`deadline`](Tripwire::deadline) passed with a producer's reply
    /// missing; if other producers answered, the silent ones are evicted
    /// (their sockets shut down, their stores no longer watched), the error
    /// says so, once, and the next step re-arms the others. `NotConnected` (wrapping [`Error::NotShared`]), at once, on
    /// a `Doorbell`, `Userfault` or `UserfaultAsync` tripwire never
    /// [shared](Tripwire::share): only a connected producer trips those,
    /// so any wait would never end (`Kernel` and `Poll` wait: any store
    /// trips them, this process's own and a
    /// [`producer_fd`](Tripwire::producer_fd) writer's included).
    /// Otherwise the OS error of the poll or ACK. A failed ACK
    /// leaves the wire tripped (the next step tries again).
    ///
    /// ```
    /// # use std::io::ErrorKind;
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let mut doorbell = Tripwire::builder(64).backend(Backend::Doorbell).create().unwrap();
    /// let err = doorbell.try_changed().unwrap_err(); // share it first
    /// assert_eq!(err.kind(), ErrorKind::NotConnected);
    /// ```
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let mut tw = Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// assert!(tw.try_changed().unwrap().is_none());
    /// ```
    pub fn try_changed(&mut self) -> io::Result<Option<Epoch>> {
        self.step(None)
    }

    /// The step: on a trip, appends the written ranges to `pages`.
    fn step(&mut self, pages: Option<&mut Vec<Range<usize>>>) -> io::Result<Option<Epoch>> {
        let taken = self.wire.take();
        let mut taken = self.count(taken)?;
        match taken {
            Take::Taken => {}
            Take::Pending => {
                // Close the sockets of producers that hung up meanwhile: a
                // hang-up left in the set would keep the fd readable, and a
                // driver looping on it, until the ACK is done.
                self.wire.all_gone()?;
                return Ok(None);
            }
            Take::Idle => {
                if !self.wire.all_gone()? {
                    // Nothing can trip it before it is shared: say so now
                    // rather than let a wait never end.
                    if let Some(reason) = self.wire.never_shared() {
                        return Err(Error::NotShared { reason }.into());
                    }
                    return Ok(None);
                }
                // The producers' last writes happen before their sockets
                // close: look once more, and let the mechanism report what
                // it has not yet.
                let last = self.wire.take_final();
                taken = self.count(last)?;
                match taken {
                    Take::Taken => {}
                    Take::Pending => return Ok(None),
                    Take::Idle => return Err(self.wire.end()),
                }
            }
        }
        if let Some(out) = pages {
            self.wire.pages_into(self.region.len(), out);
        }
        Ok(Some(self.advance()))
    }

    /// When the caller must step again even if the fd stays quiet: the
    /// deadline of the ACK in flight (`Userfault`, `UserfaultAsync`), after
    /// which the next step ([`try_changed`](Tripwire::try_changed),
    /// [`try_ack`](Tripwire::try_ack)) fails it with `TimedOut` if a
    /// producer's reply is still missing. `None` when no ACK is in flight
    /// (always, on the other backends): then readiness alone says when to
    /// look.
    ///
    /// An event loop sleeps until readiness or this, whichever is first:
    /// mio's `Poll::poll` time-out (see [`try_changed`](Tripwire::try_changed)),
    /// a timer; the async `Tripwire` (feature `tokio`) arms a tokio timer.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let mut tw = Tripwire::builder(64).backend(Backend::Doorbell).create().unwrap();
    /// assert_eq!(tw.deadline(), None); // nothing in flight
    /// tw.ack().unwrap();
    /// assert_eq!(tw.deadline(), None); // a Doorbell ACK is done at once
    /// ```
    pub fn deadline(&self) -> Option<Instant> {
        self.wire.deadline()
    }

    /// Like [`try_changed`](Tripwire::try_changed), and on a trip also
    /// appends to `out` the byte ranges of the region that were written
    /// since the previous ACK: exactly the written pages on `Userfault` and
    /// `UserfaultAsync` (which the ACK re-protects; the whole region once
    /// after a producer went away or an ACK failed, as their record of
    /// pages is then lost), the whole region on the backends that cannot
    /// tell. Ranges are page-granular and merged where they touch.
    ///
    /// # Errors
    ///
    /// As [`try_changed`](Tripwire::try_changed).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let mut tw = Tripwire::builder(8192).backend(Backend::Poll).create().unwrap();
    /// tw.region().write(5000, &1u8).unwrap();
    /// let mut pages = Vec::new();
    /// while tw.try_changed_with_pages(&mut pages).unwrap().is_none() {
    ///     std::thread::sleep(std::time::Duration::from_millis(1));
    /// }
    /// assert_eq!(pages, [0..8192]); // Poll cannot tell which page
    /// ```
    pub fn try_changed_with_pages(
        &mut self,
        out: &mut Vec<Range<usize>>,
    ) -> io::Result<Option<Epoch>> {
        self.step(Some(out))
    }

    /// ACKs now, tripped or not: re-arms the wire, makes every write made
    /// before it visible, and lets any later write trip it again. Does not
    /// count an epoch. On `Userfault` and `UserfaultAsync` it blocks for the
    /// agents' round trip, up to the ACK's [`deadline`](Tripwire::deadline)
    /// (then `TimedOut`): it drives [`try_ack`](Tripwire::try_ack) and
    /// [`wait_ready`](Tripwire::wait_ready).
    ///
    /// For consumers that read the memory on their own schedule (busy-poll
    /// a ring's head while data flows, then `ack()`, re-check, and only then
    /// wait): while the wire stays tripped, producers' stores neither fault
    /// (`Kernel`, `Userfault`, `UserfaultAsync`) nor ring (`Doorbell`).
    ///
    /// # Errors
    ///
    /// As [`try_ack`](Tripwire::try_ack); the wire then stays tripped.
    ///
    /// # Panics
    ///
    /// With feature `tokio`, when it would sleep on a thread that drives a
    /// tokio runtime's tasks (in a task or a `block_on`), whose tasks it
    /// would stall: use
    /// `Tripwire::ack().await` (the async `Tripwire`) there, or call this
    /// inside `spawn_blocking`; the exact rule is in [the crate
    /// docs](crate#blocking-calls-and-tokio).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let mut tw = Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// tw.ack().unwrap();
    /// assert_eq!(tw.try_changed().unwrap(), None);
    /// ```
    #[track_caller]
    pub fn ack(&mut self) -> io::Result<()> {
        while !self.try_ack()? {
            crate::may_block::assert_may_block("blocking::Tripwire::ack", "Tripwire::ack().await");
            self.sleep_until(None)?;
        }
        Ok(())
    }

    /// [`ack`](Tripwire::ack) as a non-blocking step, for consumers that
    /// ACK on their own schedule: `true` once the ACK is done (the wire is
    /// re-armed, every write made before it is visible), `false` while it
    /// is in flight (`Userfault`, `UserfaultAsync`: call it again when the
    /// fd turns readable, or at the [`deadline`](Tripwire::deadline) at the
    /// latest). A call with an ACK in flight goes on with that ACK, and so
    /// does [`try_changed`](Tripwire::try_changed) (which then returns an
    /// epoch once it is done). Never blocks.
    ///
    /// # Errors
    ///
    /// `TimedOut` for an ACK whose [`deadline`](Tripwire::deadline) passed
    /// with a producer's reply missing (is it stopped?); otherwise the OS
    /// error of the ACK. The wire then stays tripped: the next call sends a
    /// new ACK.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let mut tw = Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// while !tw.try_ack().unwrap() {
    ///     tw.wait_ready(None).unwrap(); // readiness, or the deadline
    /// }
    /// ```
    pub fn try_ack(&mut self) -> io::Result<bool> {
        let acked = self.wire.ack();
        Ok(self.count(acked)? == Take::Taken)
    }

    fn advance(&mut self) -> Epoch {
        self.stats.trips += 1;
        self.epoch = self.epoch.next();
        self.epoch
    }

    /// Blocks until the wire trips, then ACKs it and returns the new epoch:
    /// drives [`try_changed`](Tripwire::try_changed), sleeping in
    /// [`wait_ready`](Tripwire::wait_ready) (until readiness or the ACK's
    /// deadline) while it returns `None`.
    ///
    /// # Errors
    ///
    /// As [`try_changed`](Tripwire::try_changed).
    ///
    /// # Panics
    ///
    /// With feature `tokio`, when it would sleep on a thread that drives a
    /// tokio runtime's tasks (in a task or a `block_on`), whose tasks it
    /// would stall: use
    /// `Tripwire::changed().await` (the async `Tripwire`) there, or call this
    /// inside `spawn_blocking`; the exact rule is in [the crate
    /// docs](crate#blocking-calls-and-tokio).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let mut tw = Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// tw.region().write(0, &1u8).unwrap();
    /// let epoch = tw.wait().unwrap();
    /// ```
    #[track_caller]
    pub fn wait(&mut self) -> io::Result<Epoch> {
        self.wait_until(
            None,
            ("blocking::Tripwire::wait", "Tripwire::changed().await"),
        )
        .map(|e| e.expect("no deadline, so an epoch"))
    }

    /// The blocking driver: steps, and sleeps until readiness, the ACK's
    /// deadline or `until` while the step finds nothing; `None` at `until`.
    /// Before it sleeps, the `may_block` check of the public `call`.
    #[track_caller]
    fn wait_until(
        &mut self,
        until: Option<Instant>,
        (call, instead): (&'static str, &'static str),
    ) -> io::Result<Option<Epoch>> {
        loop {
            if let Some(e) = self.try_changed()? {
                return Ok(Some(e));
            }
            if until.is_some_and(|until| Instant::now() >= until) {
                return Ok(None);
            }
            crate::may_block::assert_may_block(call, instead);
            self.sleep_until(until)?;
        }
    }

    /// Like [`wait`](Tripwire::wait), but gives up after `timeout` and
    /// returns `None`.
    ///
    /// # Errors
    ///
    /// As [`try_changed`](Tripwire::try_changed).
    ///
    /// # Panics
    ///
    /// With feature `tokio`, when it would sleep on a thread that drives a
    /// tokio runtime's tasks (in a task or a `block_on`), whose tasks it
    /// would stall: use
    /// `tokio::time::timeout` around `Tripwire::changed().await` there, or call
    /// this inside `spawn_blocking`; the exact rule is in [the crate
    /// docs](crate#blocking-calls-and-tokio).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let mut tw = Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(tw.wait_timeout(Duration::from_millis(10)).unwrap(), None);
    /// ```
    #[track_caller]
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<Epoch>> {
        // A time-out too long to be an Instant (`Duration::MAX`) never ends.
        self.wait_until(
            Instant::now().checked_add(timeout),
            (
                "blocking::Tripwire::wait_timeout",
                "tokio::time::timeout(t, tripwire.changed()).await",
            ),
        )
    }

    /// `true` once this tripwire was [shared](Tripwire::share) and every
    /// producer has hung up; never for one that was not shared. Does not
    /// look at the wire (a last trip may still be pending: take it with
    /// [`try_changed`](Tripwire::try_changed), which reports the hang-up
    /// only after it). Closes the sockets of the producers that left.
    ///
    /// # Errors
    ///
    /// The OS error of `epoll_wait`.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let mut tw = Tripwire::builder(64).backend(Backend::Doorbell).create().unwrap();
    /// assert!(!tw.producers_gone().unwrap()); // never shared
    /// ```
    pub fn producers_gone(&mut self) -> io::Result<bool> {
        self.wire.all_gone()
    }

    /// Sleeps until the wire may have tripped or a producer may have hung
    /// up (its fd turned readable), until the [`deadline`](Tripwire::deadline)
    /// of an ACK in flight, or until `timeout` (`None`: no limit), whichever
    /// comes first. Does not ACK; a signal does not end the sleep early.
    /// The blocking form of `Tripwire::poll_ready` (feature `tokio`),
    /// for consumers that ACK on their own schedule: read while data flows
    /// (the wire stays tripped, so producers neither fault nor ring), then
    /// [`try_changed`](Tripwire::try_changed) when dry, then sleep here.
    /// Readiness is a hint: look at the level afterwards (a look after the
    /// deadline fails the ACK in flight with `TimedOut`).
    ///
    /// # Errors
    ///
    /// The OS error of `poll(2)`.
    ///
    /// # Panics
    ///
    /// With feature `tokio`, when it would sleep on a thread that drives a
    /// tokio runtime's tasks (in a task or a `block_on`), whose tasks it
    /// would stall: use
    /// `Tripwire::ready().await` (the async `Tripwire`) there, or call this
    /// inside `spawn_blocking`; the exact rule is in [the crate
    /// docs](crate#blocking-calls-and-tokio).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use memfd_tripwire::{Backend, blocking::Tripwire};
    /// let mut tw = Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// tw.region().write(0, &1u8).unwrap();
    /// while tw.try_changed().unwrap().is_none() {
    ///     tw.wait_ready(Some(Duration::from_secs(1))).unwrap();
    /// }
    /// ```
    #[track_caller]
    pub fn wait_ready(&self, timeout: Option<Duration>) -> io::Result<()> {
        crate::may_block::assert_may_block(
            "blocking::Tripwire::wait_ready",
            "Tripwire::ready().await",
        );
        // A time-out too long to be an Instant is no limit.
        self.sleep_until(timeout.and_then(|t| Instant::now().checked_add(t)))
    }

    /// [`wait_ready`](Tripwire::wait_ready) until `until`, cut short by the
    /// ACK's deadline: the drivers' one sleep (the ring's blocking receive
    /// too, which checked `may_block` itself).
    pub(crate) fn sleep_until(&self, until: Option<Instant>) -> io::Result<()> {
        let until = match (until, self.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        wait::ready(self.wire.fd(), wait::PollFlags::IN, until).map(drop)
    }

    /// Hands the tripwire to a producer on the other end of `peer`, which
    /// calls [`Producer::connect`](crate::Producer::connect). Sends the
    /// memory fd and what the backend needs (`SCM_RIGHTS`), then waits for
    /// the producer's verdict, so a failure on its side is reported here.
    ///
    /// Keeps `peer` open: when it hangs up, [`wait`](Tripwire::wait) and
    /// friends report it (after any pending trip): [`Error::Closed`] after a
    /// dropped `Producer`'s goodbye, [`Error::PeerDied`] without one. A
    /// tripwire can be shared with several producers; it reports the end once
    /// all are gone (`PeerDied` if any of them died). A forked child that inherits the producer's socket hides the
    /// producer's death until the child exits too.
    ///
    /// Blocks for the handshake; gives up after 10 s of silence. In async
    /// code, use the async `Tripwire`'s `share` (feature `tokio`), which
    /// never blocks the runtime's thread, or share before entering the
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Handshake`] if the producer refuses or the exchange fails;
    /// "wrong protocol", naming both, if the producer expected something
    /// else (a ring's `Sender::connect`, or `Producer::connect_with_fds`):
    /// it fails at once too. The tripwire stays as it was, free to be
    /// shared again.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::unix::net::UnixStream;
    /// use memfd_tripwire::{Backend, Producer, blocking::Tripwire};
    ///
    /// let (ours, theirs) = UnixStream::pair()?;
    /// let producer = std::thread::spawn(move || Producer::connect(theirs));
    /// let mut tw = Tripwire::builder(4096).backend(Backend::Poll).create()?;
    /// tw.share(ours)?;
    /// let producer = producer.join().unwrap()?;
    /// assert_eq!(producer.backend(), tw.backend());
    /// # Ok(()) }
    /// ```
    pub fn share(&mut self, peer: UnixStream) -> Result<(), Error> {
        handoff::block_on(self.share_on(handoff::Blocking(peer), None))
    }

    /// [`share`](Tripwire::share), then a second frame over the same socket
    /// that hands over `fds`, tagged `tag`: for a protocol on top that needs
    /// more than the tripwire (the [`ring`](crate::ring) sends its slots
    /// this way). The producer takes them with
    /// [`Producer::connect_with_fds`](crate::Producer::connect_with_fds)
    /// and the same `tag`; its verdict is reported here, and only a producer
    /// that accepted is watched (a refusal leaves this tripwire as it was,
    /// free to be shared again: the refused producer is not in the peer set
    /// and, on `Userfault`, has no agent channel; it still holds what the
    /// first frame gave it, the memory among them, as any producer that was
    /// once handed the tripwire does).
    ///
    /// The offer names `tag`, so a producer that expected another (or a
    /// plain tripwire) refuses at once, before attaching.
    ///
    /// Blocks for the handshake, as [`share`](Tripwire::share), and as long
    /// again for the second frame's verdict.
    ///
    /// # Errors
    ///
    /// As [`share`](Tripwire::share); [`Error::Handshake`] carrying the
    /// producer's reason if it refused the fds, or if `tag` is all zero
    /// bytes (the handshake's mark of a plain tripwire).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsFd;
    /// use std::os::unix::net::UnixStream;
    /// use memfd_tripwire::{Backend, Producer, SharedMemory, blocking::Tripwire};
    ///
    /// const TAG: [u8; 8] = *b"MYDEVICE";
    /// let (ours, theirs) = UnixStream::pair()?;
    /// let producer = std::thread::spawn(move || {
    ///     Producer::connect_with_fds(theirs, TAG, 1, |_producer, mut fds| {
    ///         SharedMemory::from_fd(fds.remove(0))
    ///     })
    /// });
    /// let descriptors = SharedMemory::create(4096)?;
    /// let mut tw = Tripwire::builder(4096).backend(Backend::Poll).create()?;
    /// tw.share_with_fds(ours, TAG, &[descriptors.as_fd()])?;
    /// let (_producer, theirs) = producer.join().unwrap()?;
    /// theirs.region().write(0, &7u32)?;
    /// assert_eq!(descriptors.region().read::<u32>(0)?, 7);
    /// # Ok(()) }
    /// ```
    pub fn share_with_fds(
        &mut self,
        peer: UnixStream,
        tag: [u8; 8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), Error> {
        handoff::block_on(self.share_on(handoff::Blocking(peer), Some((tag, fds))))
    }

    /// The handshake of [`share`](Tripwire::share) (`extra`: `None`) and
    /// [`share_with_fds`](Tripwire::share_with_fds) over any driver `w`
    /// (the blocking one, or the tokio reactor's for the async shares).
    /// Until it returns `Ok` the tripwire is as it was: an error, or the
    /// future dropped at any point, forgets what was prepared for this
    /// producer (its agent channel) and closes the socket; the producer is
    /// watched only once it accepted every frame.
    pub(crate) async fn share_on<W: handoff::Wait>(
        &mut self,
        w: W,
        extra: Option<([u8; 8], &[BorrowedFd<'_>])>,
    ) -> Result<(), Error> {
        let shared = self.offer(w, extra).await;
        match &shared {
            Ok(()) => {
                self.stats.producers_connected += 1;
                trace::debug!(
                    backend = %self.wire.kind(),
                    peers = {
                        let s = self.stats();
                        s.producers_connected - s.producers_closed - s.producers_died
                    },
                    protocol = %extra.map_or(handoff::Protocol::Plain, |(tag, _)| {
                        handoff::Protocol::from_wire(tag)
                    }),
                    "handshake completed: shared with a producer"
                );
            }
            Err(e) => trace::debug!(
                backend = %self.wire.kind(),
                error = %e,
                "handshake failed: the tripwire stays as it was"
            ),
        }
        shared
    }

    /// [`share_on`](Tripwire::share_on)'s exchange.
    async fn offer<W: handoff::Wait>(
        &mut self,
        mut w: W,
        extra: Option<([u8; 8], &[BorrowedFd<'_>])>,
    ) -> Result<(), Error> {
        let protocol = match extra {
            None => handoff::Protocol::Plain,
            Some((tag, _)) => handoff::Protocol::tagged(tag)?,
        };
        let len = self.region.len();
        self.wire.prepare_offer()?;
        let pending = Pending(&mut self.wire);
        let offered = pending.0.offer_fds();
        let reply_fds = handoff::offer(&mut w, pending.0.kind(), len, protocol, &offered).await?;
        drop(offered);
        Wire::check_reply(reply_fds)?;
        // The layer on top goes first: a producer it refuses is not watched
        // (no agent channel, not in the peer set).
        if let Some((tag, fds)) = extra {
            handoff::offer_extra(&mut w, tag, fds).await?;
        }
        pending.accept(w.into_stream())
    }

    /// The fd a producer that knows nothing of this crate maps
    /// (`mmap(MAP_SHARED, PROT_READ|PROT_WRITE)`, [`region`](Tripwire::region)`.len()`
    /// bytes at offset 0) and stores into: on `Kernel` the tripwire fd, on
    /// `Poll` its sealed memfd; every store through any mapping of it is
    /// seen. Pass it by inheritance (it is `O_CLOEXEC`: dup it without, or
    /// hand it to `Command` as a stdio), `SCM_RIGHTS`, or a protocol's own fd
    /// passing (a VFIO-user region's sparse-mmap area). Such a producer
    /// cannot be told apart from the consumer's own mappings: its death is
    /// not reported (there is no handshake socket to hang up).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] on the backends that need the producer's
    /// cooperation: `Doorbell` (its `notify()`), `Userfault` and
    /// `UserfaultAsync` (the registration its agent makes in
    /// [`Producer::connect`](crate::Producer::connect)). Create the
    /// tripwire with [`Backend::Unmodified`] instead.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsFd;
    /// use memfd_tripwire::{Backend, Error, blocking::Tripwire};
    ///
    /// let tw = Tripwire::builder(4096).backend(Backend::Unmodified).create()?;
    /// let fd = tw.producer_fd()?.try_clone_to_owned()?; // hand this over
    /// let doorbell = Tripwire::builder(4096).backend(Backend::Doorbell).create()?;
    /// assert!(matches!(doorbell.producer_fd(), Err(Error::Unavailable { .. })));
    /// # Ok(()) }
    /// ```
    pub fn producer_fd(&self) -> Result<BorrowedFd<'_>, Error> {
        self.wire.producer_fd()
    }
}

/// A share in progress: dropped before [`accept`](Pending::accept) (an
/// error, or the async share's future dropped), it forgets what was
/// prepared for the producer, so the tripwire is as it was.
struct Pending<'a>(&'a mut Wire);

impl Pending<'_> {
    /// The producer attached: starts watching it.
    fn accept(self, sock: UnixStream) -> Result<(), Error> {
        let wire = &mut *std::mem::ManuallyDrop::new(self).0;
        wire.accept(sock)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.reject();
    }
}

impl AsFd for Tripwire {
    /// The tripwire's one fd (an epoll set, there from creation): readable
    /// while the wire is tripped or once a producer hung up, whenever it was
    /// shared.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wire.fd()
    }
}

impl AsRawFd for Tripwire {
    fn as_raw_fd(&self) -> RawFd {
        self.wire.fd().as_raw_fd()
    }
}

/// Registers the tripwire's one fd: an event means "call
/// [`Tripwire::try_changed`] until it returns `None`".
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use mio::{Events, Interest, Poll, Token};
/// use memfd_tripwire::{Backend, blocking::Tripwire};
///
/// let mut tw = Tripwire::builder(64).backend(Backend::Poll).create()?;
/// let mut poll = Poll::new()?;
/// poll.registry().register(&mut tw, Token(7), Interest::READABLE)?;
/// tw.region().write(0, &1u8)?;
/// let mut events = Events::with_capacity(4);
/// poll.poll(&mut events, Some(std::time::Duration::from_secs(5)))?;
/// assert!(events.iter().any(|e| e.token() == Token(7)));
/// assert!(tw.try_changed()?.is_some());
/// # Ok(()) }
/// ```
#[cfg(feature = "mio")]
impl mio::event::Source for Tripwire {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.as_raw_fd()).register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        mio::unix::SourceFd(&self.as_raw_fd()).deregister(registry)
    }
}
