//! The async [`Tripwire`] and its [`Changes`] stream: a thin, `unsafe`-free
//! driver of [`blocking::Tripwire`]'s public, non-blocking step
//! ([`try_changed`](blocking::Tripwire::try_changed),
//! [`try_ack`](blocking::Tripwire::try_ack)): it waits on `AsyncFd`
//! readiness and, while the step reports a
//! [`deadline`](blocking::Tripwire::deadline) (an ACK in flight), on a
//! tokio timer armed at it. The coop-budget accounting of every async loop
//! of the crate (tokio policy) is here too: [`poll_turns`].

use std::fmt;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use ::tokio::io::unix::AsyncFd;
use futures_core::{FusedStream, Stream};

use crate::reactor;
use crate::{BackendKind, Epoch, Error, Producer, Region, blocking, handoff};

/// A tripwire registered with the tokio reactor: `changed().await`.
///
/// Built from a [`blocking::Tripwire`] (share it with its producers first,
/// or later with [`share`](Tripwire::share));
/// [`into_inner`](Tripwire::into_inner) gives it back. Needs a runtime with
/// IO enabled, and on `Userfault` and `UserfaultAsync` its timer too (see
/// [`changed`](Tripwire::changed), `# Panics`).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use memfd_tripwire::{Backend, Tripwire, blocking};
///
/// let tw = blocking::Tripwire::builder(4096).backend(Backend::Poll).create()?;
/// let mut tw = Tripwire::new(tw)?;
/// tw.region().write(0, &1u32)?;
/// let epoch = tw.changed().await?;
/// assert_eq!(epoch.get(), 1);
/// # Ok(()) }
/// ```
pub struct Tripwire {
    /// The blocking tripwire, registered by its one fd (no duplicate)
    /// inside the `AsyncFd` that holds it: reached through
    /// [`inner`](Tripwire::inner) and [`inner_mut`](Tripwire::inner_mut),
    /// never replaced (no public `get_mut`).
    fd: AsyncFd<reactor::Owner<blocking::Tripwire>>,
    /// Armed at the step's deadline (an ACK in flight) while there is one:
    /// a stopped producer, which never makes the fd readable, still ends
    /// the wait. Made at the first deadline, then reset.
    timer: reactor::DeadlineTimer,
}

impl fmt::Debug for Tripwire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tripwire")
            .field("inner", self.inner())
            .finish()
    }
}

/// The blocking tripwire's fd is its wire's one fd, made with it and never
/// replaced (the epoll set of its producers, or `Poll`'s eventfd).
impl reactor::FixedFd for blocking::Tripwire {}

impl Tripwire {
    /// The blocking tripwire inside the registration.
    fn inner(&self) -> &blocking::Tripwire {
        &self.fd.get_ref().0
    }

    /// The blocking tripwire inside the registration, to call its methods
    /// (never to replace it: the registration watches its fd).
    fn inner_mut(&mut self) -> &mut blocking::Tripwire {
        &mut self.fd.get_mut().0
    }

    /// Registers `tripwire` (its wake-up fd, and its producers' sockets if it
    /// was shared) with the current tokio runtime.
    ///
    /// # Errors
    ///
    /// Fails outside a tokio runtime, or if registration fails (no fd left,
    /// say); the [`NewError`] hands the tripwire back
    /// ([`into_parts`](NewError::into_parts)), untouched. (Inside a runtime
    /// built without IO, tokio itself panics.)
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let tw = blocking::Tripwire::builder(64).backend(Backend::Doorbell).create().unwrap();
    /// let tw = Tripwire::new(tw)?; // a NewError converts into an io::Error
    /// # Ok(()) }
    /// ```
    ///
    /// Outside a runtime the tripwire comes back:
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let tw = blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// let err = Tripwire::new(tw).unwrap_err();
    /// let (mut tw, why) = err.into_parts();
    /// assert!(why.to_string().contains("runtime"));
    /// assert!(tw.try_changed().unwrap().is_none()); // still usable, blocking
    /// ```
    pub fn new(tripwire: blocking::Tripwire) -> Result<Self, NewError> {
        if ::tokio::runtime::Handle::try_current().is_err() {
            return Err(NewError {
                tripwire: Box::new(tripwire),
                error: io::Error::other(
                    "Tripwire::new needs a tokio runtime (with IO enabled): call it from \
                     async code or inside Runtime::enter",
                ),
            });
        }
        match reactor::register(tripwire) {
            Ok(fd) => Ok(Tripwire {
                fd,
                timer: reactor::DeadlineTimer::default(),
            }),
            Err((tripwire, error)) => Err(NewError {
                tripwire: Box::new(tripwire),
                error,
            }),
        }
    }

    /// Waits until the wire trips, ACKs it, and returns the new epoch.
    ///
    /// Each epoch stands for at least one change, possibly more: writes made
    /// before the ACK are coalesced into one, and are all visible in
    /// [`region`](Tripwire::region) when this returns. A write racing with
    /// the ACK is either visible then or trips the wire again. It never
    /// returns without a trip: readiness is only a hint, the wire's level is
    /// checked each time.
    ///
    /// On `Userfault` and `UserfaultAsync` the ACK is a round trip to the
    /// producers' agents: it goes out without blocking the thread, and while
    /// it is in flight the task waits for the replies or the ACK's
    /// [deadline](blocking::Tripwire::deadline) (1 s), on a tokio timer: a
    /// stopped producer makes this return `TimedOut` then, with no timer of
    /// the caller's.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. Dropping the future (in `select!`, or on
    /// a time-out) loses nothing: the epoch is counted only in the poll that
    /// returns it, so a trip that was not returned stays pending for the
    /// next call (an ACK left in flight goes on at the next look).
    ///
    /// # Errors
    ///
    /// Once the tripwire was shared and every producer has hung up, after
    /// any pending trip was returned: `ConnectionAborted` (wrapping
    /// [`Error::Closed`](crate::Error::Closed)) after a clean close (each
    /// dropped its `Producer`), `BrokenPipe` (wrapping
    /// [`Error::PeerDied`](crate::Error::PeerDied)) if one died; as
    /// `tokio::sync::watch::Receiver::changed` fails once its sender is
    /// gone. `TimedOut` when a producer did not
    /// answer the ACK by its deadline. `NotConnected` (wrapping
    /// [`Error::NotShared`](crate::Error::NotShared)), at once, on a
    /// `Doorbell`, `Userfault` or `UserfaultAsync` tripwire never shared,
    /// which nothing could trip (see
    /// [`blocking::Tripwire::try_changed`]). Otherwise the OS error of the poll or
    /// ACK; a failed ACK leaves the wire tripped.
    ///
    /// # Panics
    ///
    /// On `Userfault` and `UserfaultAsync`, when an ACK is in flight in a
    /// runtime built without its timer (tokio panics: build it with
    /// `enable_time` or `enable_all`, as `#[tokio::main]` does). The other
    /// backends never need the timer.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// # use std::time::Duration;
    /// let tw = blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// let mut tw = Tripwire::new(tw)?;
    /// // Quiet: nothing wrote, so this times out, and loses nothing.
    /// assert!(tokio::time::timeout(Duration::from_millis(20), tw.changed()).await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn changed(&mut self) -> io::Result<Epoch> {
        std::future::poll_fn(|cx| self.poll_changed(cx)).await
    }

    /// Polls for a trip: the building block of [`changed`](Tripwire::changed)
    /// and [`Changes`]. Registers `cx` for a wake-up when it returns
    /// `Pending`.
    ///
    /// # Errors
    ///
    /// As [`changed`](Tripwire::changed).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let tw = blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// let mut tw = Tripwire::new(tw)?;
    /// tw.region().write(0, &1u8).unwrap();
    /// let epoch = std::future::poll_fn(|cx| tw.poll_changed(cx)).await?;
    /// # Ok(()) }
    /// ```
    pub fn poll_changed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Epoch>> {
        self.poll_step(cx, blocking::Tripwire::try_changed)
    }

    /// [`changed`](Tripwire::changed), and also appends to `out` the byte
    /// ranges written since the previous ACK (exactly the written pages on
    /// `Userfault`, the whole region elsewhere); see
    /// [`blocking::Tripwire::try_changed_with_pages`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`changed`](Tripwire::changed): `out` is only
    /// appended to in the poll that returns the epoch.
    ///
    /// # Errors
    ///
    /// As [`changed`](Tripwire::changed).
    ///
    /// # Panics
    ///
    /// As [`changed`](Tripwire::changed).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let tw = blocking::Tripwire::builder(4096).backend(Backend::Poll).create().unwrap();
    /// let mut tw = Tripwire::new(tw)?;
    /// tw.region().write(0, &1u8).unwrap();
    /// let mut pages = Vec::new();
    /// tw.changed_with_pages(&mut pages).await?;
    /// assert_eq!(pages, [0..4096]);
    /// # Ok(()) }
    /// ```
    pub async fn changed_with_pages(&mut self, out: &mut Vec<Range<usize>>) -> io::Result<Epoch> {
        std::future::poll_fn(|cx| self.poll_step(cx, |tw| tw.try_changed_with_pages(out))).await
    }

    /// The driver: steps, and while the step finds nothing, waits for
    /// readiness or the step's deadline, then steps again (never trusting
    /// readiness: the level is what the step looks at, so no edge is lost).
    /// Spends a unit of tokio's coop budget per turn (an outcome, or a
    /// wake-up that found nothing), like tokio's own channels: a producer
    /// that keeps the wire tripped, or its fd readable, cannot starve the
    /// other tasks of this thread.
    fn poll_step<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(&mut blocking::Tripwire) -> io::Result<Option<T>>,
    ) -> Poll<io::Result<T>> {
        poll_turns(cx, |cx| match step(self.inner_mut()) {
            Ok(Some(outcome)) => Poll::Ready(Ok(Some(outcome))),
            Err(e) => Poll::Ready(Err(e)),
            // Not tripped, or an ACK in flight: sleep on readiness (or the
            // deadline), then look at the level again.
            Ok(None) => self.poll_ready(cx).map_ok(|()| None),
        })
    }

    /// Polls for readiness: `Ready` once the wire may have tripped or a
    /// producer may have hung up since the last call, or once the
    /// [deadline](blocking::Tripwire::deadline) of an ACK in flight has come
    /// (a tokio timer is armed at it), without ACKing anything. Readiness is only a hint, and this clears it: look at the
    /// level next ([`try_changed`](Tripwire::try_changed), or the memory
    /// then [`ack`](Tripwire::ack)), and call this again only once the wire
    /// is armed, or it may sleep through a trip that already happened.
    ///
    /// For consumers that ACK on their own schedule, as a ring does: keep
    /// reading while data flows (the wire stays tripped, so producers neither
    /// fault nor ring), `try_changed` when dry, and sleep here.
    ///
    /// # Errors
    ///
    /// The OS error of the reactor.
    ///
    /// # Panics
    ///
    /// As [`changed`](Tripwire::changed): the deadline's timer needs the
    /// runtime's.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let mut tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap())?;
    /// tw.region().write(0, &1u8).unwrap();
    /// loop {
    ///     if let Some(_epoch) = tw.try_changed()? {
    ///         break; // or: read the memory first, then ack()
    ///     }
    ///     tw.ready().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let deadline = self.inner().deadline();
        if self.timer.poll_expired(cx, deadline) {
            return Poll::Ready(Ok(()));
        }
        let mut guard = ready!(self.fd.poll_read_ready(cx))?;
        guard.clear_ready();
        Poll::Ready(Ok(()))
    }

    /// Waits for readiness, without ACKing: the `async` form of
    /// [`poll_ready`](Tripwire::poll_ready), with its caveats.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    ///
    /// # Errors
    ///
    /// The OS error of the reactor.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let mut tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap())?;
    /// tw.region().write(0, &1u8).unwrap();
    /// tw.ready().await?; // the poller saw the write
    /// assert!(tw.try_changed()?.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn ready(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// Takes a pending trip without waiting: ACKs it and returns the new
    /// epoch, or `None` if the wire is armed; the step
    /// [`blocking::Tripwire::try_changed`]. Never blocks: on `Userfault`
    /// and `UserfaultAsync`, where the ACK is a round trip to the
    /// producers' agents, it returns `None` while the ACK is in flight, and
    /// [`ready`](Tripwire::ready) wakes as the replies come, or at the
    /// ACK's deadline.
    ///
    /// # Errors
    ///
    /// As [`changed`](Tripwire::changed).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let mut tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap())?;
    /// assert_eq!(tw.try_changed()?, None);
    /// # Ok(()) }
    /// ```
    pub fn try_changed(&mut self) -> io::Result<Option<Epoch>> {
        self.inner_mut().try_changed()
    }

    /// `true` while an ACK awaits the producers' replies: on `Userfault`
    /// and `UserfaultAsync`, where [`try_changed`](Tripwire::try_changed)
    /// and [`changed`](Tripwire::changed) send the ACK without waiting for
    /// it. The wire is not re-armed yet; its replies wake
    /// [`ready`](Tripwire::ready), or its
    /// [deadline](blocking::Tripwire::deadline) does. Always `false` on the
    /// other backends.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Doorbell).create().unwrap())?;
    /// assert!(!tw.ack_in_flight());
    /// # Ok(()) }
    /// ```
    pub fn ack_in_flight(&self) -> bool {
        self.inner().deadline().is_some()
    }

    /// ACKs now, tripped or not; see [`blocking::Tripwire::ack`]. On
    /// `Userfault` and `UserfaultAsync` it waits for the producers' agents
    /// to answer without blocking the thread.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an ACK in flight goes on at the next look (`ack`,
    /// `changed`, `try_changed`), and the wire stays tripped until it is
    /// done.
    ///
    /// # Errors
    ///
    /// The OS error of the ACK (`TimedOut` for an agent that did not answer
    /// within 1 s: a timer is armed at the deadline); the wire then stays
    /// tripped.
    ///
    /// # Panics
    ///
    /// As [`changed`](Tripwire::changed).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let mut tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Doorbell).create().unwrap())?;
    /// tw.ack().await?;
    /// # Ok(()) }
    /// ```
    pub async fn ack(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_step(cx, |tw| Ok(tw.try_ack()?.then_some(())))).await
    }

    /// The last epoch returned (zero before the first change).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Epoch, Tripwire, blocking};
    /// let tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap())?;
    /// assert_eq!(tw.epoch(), Epoch::ZERO);
    /// # Ok(()) }
    /// ```
    pub fn epoch(&self) -> Epoch {
        self.inner().epoch()
    }

    /// What this tripwire has done so far: trips, ACKs, ACK time-outs and
    /// how its producers came and went (the blocking tripwire's
    /// [`stats`](blocking::Tripwire::stats); see
    /// [`TripwireStats`](blocking::TripwireStats)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let mut tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap())?;
    /// tw.region().write(0, &1u8).unwrap();
    /// tw.changed().await?;
    /// assert_eq!(tw.stats().trips, 1);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> blocking::TripwireStats {
        self.inner().stats()
    }

    /// The blocking tripwire inside, still registered.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap())?;
    /// assert_eq!(tw.get_ref().region().len(), 64);
    /// # Ok(()) }
    /// ```
    pub fn get_ref(&self) -> &blocking::Tripwire {
        self.inner()
    }

    /// Hands the tripwire to one more producer, the async
    /// [`blocking::Tripwire::share`]: the same handshake, but the runtime's
    /// thread never blocks on it (the socket is registered with the runtime
    /// for the handshake's time, each frame moves when the socket is ready,
    /// and other tasks run meanwhile). The registration watches the new
    /// producer too (the tripwire's one fd does).
    ///
    /// `peer` is a std socket; a `tokio::net::UnixStream` goes in through
    /// its `into_std()`. Either side may be blocking or async: the
    /// producer calls [`Producer::connect`](crate::Producer::connect) or
    /// [`Producer::connect_async`](crate::Producer::connect_async).
    ///
    /// Gives up after 10 s of silence, as the blocking share does (a tokio
    /// timer: the runtime needs its time driver).
    ///
    /// (Until 0.1 this `share` blocked; it is `async` now, like every
    /// method of this type that waits.)
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in that a dropped `share` leaves the tripwire as it was
    /// (nothing of the unfinished producer is watched) and closes `peer`,
    /// so the producer's `connect` fails with a hang-up: share again with a
    /// new socket. The handshake itself is lost.
    ///
    /// # Errors
    ///
    /// As [`blocking::Tripwire::share`] (a wrong protocol, a refusal, a
    /// time-out: [`Error::Handshake`]); [`Error::Io`] if the socket cannot
    /// be registered with the runtime.
    ///
    /// # Panics
    ///
    /// In a runtime without its time driver (tokio's timer panics).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::unix::net::UnixStream;
    /// # use memfd_tripwire::{Backend, Producer, Tripwire, blocking};
    /// let mut tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create()?)?;
    /// let (ours, theirs) = UnixStream::pair()?;
    /// let producer = tokio::spawn(Producer::connect_async(theirs)); // or another process
    /// tw.share(ours).await?;
    /// let producer = producer.await??;
    /// producer.region().write(0, &1u8)?;
    /// tw.changed().await?;
    /// # Ok(()) }
    /// ```
    pub async fn share(&mut self, peer: UnixStream) -> Result<(), Error> {
        let w = handoff::Reactor::new(peer)?;
        self.inner_mut().share_on(w, None).await
    }

    /// [`share`](Tripwire::share) with a second frame of `fds`, the async
    /// [`blocking::Tripwire::share_with_fds`]; the producer calls
    /// [`Producer::connect_with_fds_async`](crate::Producer::connect_with_fds_async)
    /// (or the blocking one) with the same `tag`.
    ///
    /// # Cancel safety
    ///
    /// As [`share`](Tripwire::share).
    ///
    /// # Errors
    ///
    /// As [`blocking::Tripwire::share_with_fds`], and as
    /// [`share`](Tripwire::share).
    ///
    /// # Panics
    ///
    /// As [`share`](Tripwire::share).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsFd;
    /// use std::os::unix::net::UnixStream;
    /// use memfd_tripwire::{Backend, Producer, SharedMemory, Tripwire, blocking};
    ///
    /// const TAG: [u8; 8] = *b"MYDEVICE";
    /// let mut tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create()?)?;
    /// let (ours, theirs) = UnixStream::pair()?;
    /// let producer = tokio::spawn(Producer::connect_with_fds_async(theirs, TAG, 1, |_, mut fds| {
    ///     SharedMemory::from_fd(fds.remove(0))
    /// }));
    /// let descriptors = SharedMemory::create(4096)?;
    /// tw.share_with_fds(ours, TAG, &[descriptors.as_fd()]).await?;
    /// let (_producer, theirs) = producer.await??;
    /// theirs.region().write(0, &7u32)?;
    /// assert_eq!(descriptors.region().read::<u32>(0)?, 7);
    /// # Ok(()) }
    /// ```
    pub async fn share_with_fds(
        &mut self,
        peer: UnixStream,
        tag: [u8; 8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), Error> {
        let w = handoff::Reactor::new(peer)?;
        self.inner_mut().share_on(w, Some((tag, fds))).await
    }

    /// `true` once the tripwire was shared and every producer has hung up:
    /// [`blocking::Tripwire::producers_gone`].
    ///
    /// # Errors
    ///
    /// As [`blocking::Tripwire::producers_gone`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let mut tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap())?;
    /// assert!(!tw.producers_gone()?); // never shared
    /// # Ok(()) }
    /// ```
    pub fn producers_gone(&mut self) -> io::Result<bool> {
        self.inner_mut().producers_gone()
    }

    /// Turns the tripwire into a [`Stream`] of epochs.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// use futures_util::StreamExt;
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let tw = blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// let tw = Tripwire::new(tw)?;
    /// tw.region().write(0, &1u8).unwrap();
    /// let mut changes = tw.into_stream();
    /// assert_eq!(changes.next().await.unwrap()?.get(), 1);
    /// # Ok(()) }
    /// ```
    pub fn into_stream(self) -> Changes {
        Changes {
            tripwire: self,
            done: false,
        }
    }

    /// Deregisters from the runtime and returns the blocking tripwire.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap())?;
    /// let blocking: blocking::Tripwire = tw.into_inner();
    /// # Ok(()) }
    /// ```
    #[must_use = "dropping the tripwire closes it; into_inner() is for keeping it"]
    pub fn into_inner(self) -> blocking::Tripwire {
        self.fd.into_inner().0
    }

    /// The backend in use.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, BackendKind, Tripwire, blocking};
    /// let tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap())?;
    /// assert_eq!(tw.backend(), BackendKind::Poll);
    /// # Ok(()) }
    /// ```
    pub fn backend(&self) -> BackendKind {
        self.inner().backend()
    }

    /// The shared memory, as mapped in this process.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap())?;
    /// assert_eq!(tw.region().len(), 64);
    /// # Ok(()) }
    /// ```
    pub fn region(&self) -> &Region {
        self.inner().region()
    }
}

impl AsFd for Tripwire {
    /// The wake-up fd.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner().as_fd()
    }
}

impl AsRawFd for Tripwire {
    fn as_raw_fd(&self) -> RawFd {
        self.inner().as_raw_fd()
    }
}

/// A [`Stream`] of the epochs of a [`Tripwire`]; from
/// [`Tripwire::into_stream`].
///
/// Each item stands for at least one change, possibly more (see
/// [`Tripwire::changed`]). After a clean close (every producer dropped its
/// `Producer`) it ends with `None`, as tokio's `WatchStream` does; a
/// producer's death is an error item (`BrokenPipe`,
/// [`Error::PeerDied`](crate::Error::PeerDied)), after which it ends too, as
/// after a `Doorbell` or Userfault tripwire never shared (`NotConnected`, at
/// once).
/// Needs the runtime's timer on `Userfault` and `UserfaultAsync`, as
/// [`Tripwire::changed`] does (see its `# Panics`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use futures_util::StreamExt;
/// # use memfd_tripwire::{Backend, Tripwire, blocking};
/// let tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap())?;
/// tw.region().write(0, &1u8).unwrap();
/// let first: Vec<u64> = tw.into_stream().take(1).map(|e| e.unwrap().get()).collect().await;
/// assert_eq!(first, [1]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "streams do nothing unless polled"]
pub struct Changes {
    tripwire: Tripwire,
    done: bool,
}

impl Changes {
    /// The tripwire behind the stream.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let changes = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap())?.into_stream();
    /// assert_eq!(changes.get_ref().region().len(), 64);
    /// # Ok(()) }
    /// ```
    pub fn get_ref(&self) -> &Tripwire {
        &self.tripwire
    }

    /// Ends the stream and returns the tripwire.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let changes = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap())?.into_stream();
    /// let tw: Tripwire = changes.into_inner();
    /// # Ok(()) }
    /// ```
    #[must_use = "dropping the tripwire closes it; into_inner() is for keeping it"]
    pub fn into_inner(self) -> Tripwire {
        self.tripwire
    }
}

impl Stream for Changes {
    type Item = io::Result<Epoch>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let item = ready!(this.tripwire.poll_changed(cx));
        this.done = item.is_err();
        // A clean close ends the stream, as a dropped `watch::Sender` ends
        // a `WatchStream`; a death is an error item.
        match item {
            Err(e) if crate::Error::is_closed(&e) => Poll::Ready(None),
            item => Poll::Ready(Some(item)),
        }
    }
}

impl FusedStream for Changes {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

/// Why [`Tripwire::new`] did not register a tripwire; hands it back.
///
/// Converts into an [`io::Error`] for `?` (dropping the tripwire).
///
/// ```
/// # use memfd_tripwire::{Backend, Tripwire, blocking};
/// let tw = blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
/// match Tripwire::new(tw) {
///     Ok(tw) => drop(tw),
///     Err(e) => {
///         eprintln!("{e}; waiting on the blocking tripwire instead");
///         let tw: blocking::Tripwire = e.into_tripwire();
///     }
/// }
/// ```
pub struct NewError {
    /// Boxed: keeps `Result<Tripwire, NewError>` small.
    tripwire: Box<blocking::Tripwire>,
    error: io::Error,
}

impl NewError {
    /// The tripwire, untouched, and why registration failed.
    ///
    /// ```
    /// # fn f(e: memfd_tripwire::NewError) {
    /// let (tripwire, why) = e.into_parts();
    /// # }
    /// ```
    #[must_use = "dropping the tripwire closes it"]
    pub fn into_parts(self) -> (blocking::Tripwire, io::Error) {
        (*self.tripwire, self.error)
    }

    /// The tripwire, untouched.
    ///
    /// ```
    /// # fn f(e: memfd_tripwire::NewError) {
    /// let tripwire = e.into_tripwire();
    /// # }
    /// ```
    #[must_use = "dropping the tripwire closes it"]
    pub fn into_tripwire(self) -> blocking::Tripwire {
        *self.tripwire
    }

    /// Why registration failed.
    ///
    /// ```
    /// # fn f(e: memfd_tripwire::NewError) {
    /// eprintln!("{:?}", e.error().kind());
    /// # }
    /// ```
    pub fn error(&self) -> &io::Error {
        &self.error
    }
}

impl fmt::Debug for NewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewError")
            .field("tripwire", &self.tripwire)
            .field("error", &self.error)
            .finish()
    }
}

impl fmt::Display for NewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "registering the tripwire with tokio: {}{}",
            self.error,
            crate::error::fd_limit_hint(self.error.raw_os_error())
        )
    }
}

impl std::error::Error for NewError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<NewError> for io::Error {
    fn from(e: NewError) -> io::Error {
        io::Error::new(e.error.kind(), e)
    }
}

/// [`Tripwire::new`], for `try_into()`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// # use memfd_tripwire::{Backend, Tripwire, blocking};
/// let tw = blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
/// let tw: Tripwire = tw.try_into()?;
/// # Ok(()) }
/// ```
impl TryFrom<blocking::Tripwire> for Tripwire {
    type Error = NewError;

    fn try_from(tripwire: blocking::Tripwire) -> Result<Self, NewError> {
        Tripwire::new(tripwire)
    }
}

impl blocking::Tripwire {
    /// Registers this tripwire with the current tokio runtime:
    /// [`Tripwire::new`](crate::Tripwire::new).
    ///
    /// # Errors
    ///
    /// As [`Tripwire::new`](crate::Tripwire::new): the error hands this
    /// tripwire back.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, blocking};
    /// let tw = blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap();
    /// let mut tw = tw.into_async()?;
    /// tw.region().write(0, &1u8).unwrap();
    /// tw.changed().await?;
    /// # Ok(()) }
    /// ```
    pub fn into_async(self) -> Result<Tripwire, NewError> {
        Tripwire::new(self)
    }
}

/// Spends one unit of tokio's coop budget on an outcome that is there now
/// (the ring's fast paths), like one turn of [`poll_turns`]. Call it
/// before computing the outcome, not around it: tokio's guard is dropped by
/// an out-of-line call, and a large `Result` held across it is spilled to
/// the stack and copied back with loads wider than its stores, which stall
/// (store forwarding fails) for ~5 ns each, every message (#22: that made
/// the async per-message pair 0.66x the blocking one on AMD EPYC).
#[inline]
pub(crate) fn spend_unit(cx: &mut Context<'_>) -> Poll<()> {
    let coop = ready!(::tokio::task::coop::poll_proceed(cx));
    coop.made_progress();
    Poll::Ready(())
}

/// Runs `turn` until it gives an outcome (`Ready(Some)` or an error),
/// spending a unit of tokio's coop budget per turn, a wake-up that found
/// nothing (`Ready(None)`) included: a peer that keeps its fd readable
/// without giving us anything cannot keep the task in one poll, nor a
/// stream of outcomes starve the other tasks of the thread. The crate's
/// async loops (the tripwire's, the ring's) all go through it: tokio
/// policy, kept in the tokio layer.
pub(crate) fn poll_turns<T, E>(
    cx: &mut Context<'_>,
    mut turn: impl FnMut(&mut Context<'_>) -> Poll<Result<Option<T>, E>>,
) -> Poll<Result<T, E>> {
    loop {
        let coop = ready!(::tokio::task::coop::poll_proceed(cx));
        let Poll::Ready(outcome) = turn(cx) else {
            // Dropping `coop` gives the unit back.
            return Poll::Pending;
        };
        coop.made_progress();
        if let Some(outcome) = outcome.transpose() {
            return Poll::Ready(outcome);
        }
    }
}

/// The async handshakes of [`Producer`], beside its blocking ones.
///
/// Named `connect_async` rather than `connect`: `Producer` is used with and
/// without a runtime, and its blocking `connect` keeps its name whatever
/// the features (a feature never changes a signature); the ring's ends
/// follow the same rule ([`Sender::connect_async`](crate::ring::Sender::connect_async),
/// [`Receiver::share_async`](crate::ring::Receiver::share_async)). Types
/// that only exist with tokio, as the async [`Tripwire`], use the plain
/// name (`share().await`), as tokio's own types do.
impl Producer {
    /// The async [`connect`](Producer::connect): the same handshake, but
    /// the runtime's thread never blocks on it (the socket is registered
    /// with the runtime for the handshake's time, and each frame moves when
    /// the socket is ready). The consumer may share with the blocking or
    /// the async `share`.
    ///
    /// `sock` is a std socket; a `tokio::net::UnixStream` goes in through
    /// its `into_std()`. Gives up after 10 s of silence, as `connect` does
    /// (a tokio timer: the runtime needs its time driver).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes `sock` (the consumer's `share` fails
    /// with a hang-up) and anything attached so far (on `Userfault`, the
    /// agent): nothing is left behind, and the handshake is lost. Connect
    /// again over a new socket.
    ///
    /// # Errors
    ///
    /// As [`connect`](Producer::connect); [`Error::Io`] outside a tokio
    /// runtime, or if the socket cannot be registered with it.
    ///
    /// # Panics
    ///
    /// In a runtime without its time driver (tokio's timer panics).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::unix::net::UnixStream;
    /// use memfd_tripwire::{Backend, Producer, Tripwire, blocking};
    ///
    /// let (ours, theirs) = UnixStream::pair()?;
    /// // Normally in another process, which got `theirs` by inheritance or SCM_RIGHTS.
    /// let producer = tokio::spawn(Producer::connect_async(theirs));
    /// let mut tw = Tripwire::new(blocking::Tripwire::builder(4096).backend(Backend::Doorbell).create()?)?;
    /// tw.share(ours).await?;
    /// let producer = producer.await??;
    /// producer.region().write(0, &42u32)?;
    /// producer.notify()?;
    /// tw.changed().await?;
    /// assert_eq!(tw.region().read::<u32>(0)?, 42);
    /// # Ok(()) }
    /// ```
    pub async fn connect_async(sock: UnixStream) -> Result<Producer, Error> {
        Producer::connect_on(handoff::Reactor::new(sock)?).await
    }

    /// The async [`connect_with_fds`](Producer::connect_with_fds), as
    /// [`connect_async`](Producer::connect_async) is the async `connect`.
    ///
    /// # Cancel safety
    ///
    /// As [`connect_async`](Producer::connect_async) (`accept` runs only
    /// if the second frame arrived, before its verdict is sent).
    ///
    /// # Errors
    ///
    /// As [`connect_with_fds`](Producer::connect_with_fds) and
    /// [`connect_async`](Producer::connect_async).
    ///
    /// # Panics
    ///
    /// As [`connect_async`](Producer::connect_async).
    ///
    /// ```no_run
    /// # async fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
    /// use memfd_tripwire::{Producer, SharedMemory};
    /// let (producer, descriptors) =
    ///     Producer::connect_with_fds_async(sock, *b"MYDEVICE", 1, |_, mut fds| {
    ///         SharedMemory::from_fd(fds.remove(0))
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with_fds_async<R>(
        sock: UnixStream,
        tag: [u8; 8],
        count: usize,
        accept: impl FnOnce(&Producer, Vec<OwnedFd>) -> Result<R, Error>,
    ) -> Result<(Producer, R), Error> {
        Producer::connect_with_fds_on(handoff::Reactor::new(sock)?, tag, count, accept).await
    }
}
