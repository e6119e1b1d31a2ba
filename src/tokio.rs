//! The async [`Tripwire`] and its [`Changes`] stream: a thin, `unsafe`-free
//! layer of `AsyncFd` readiness over [`blocking::Tripwire`].

use std::fmt;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use ::tokio::io::unix::AsyncFd;
use futures_core::{FusedStream, Stream};

use crate::backend::Wait;
use crate::sys::reactor;
use crate::{BackendKind, Epoch, Region, blocking};

/// A tripwire registered with the tokio reactor: `changed().await`.
///
/// Built from a [`blocking::Tripwire`] (share it with its producers first);
/// [`into_inner`](Tripwire::into_inner) gives it back. Needs a runtime with
/// IO enabled.
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
    inner: blocking::Tripwire,
    /// The registration of the tripwire's one fd, which it keeps open
    /// through a shared reference: no duplicate fd.
    fd: AsyncFd<reactor::SharedFd>,
}

impl fmt::Debug for Tripwire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tripwire")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Tripwire {
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
        match reactor::register_shared(tripwire.shared_fd()) {
            Ok(fd) => Ok(Tripwire {
                inner: tripwire,
                fd,
            }),
            Err(error) => Err(NewError {
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
    /// # Cancel safety
    ///
    /// This method is cancel safe. Dropping the future (in `select!`, or on
    /// a time-out) loses nothing: the ACK happens only in the poll that
    /// returns the epoch, so a trip that was not returned stays pending for
    /// the next call.
    ///
    /// # Errors
    ///
    /// `BrokenPipe` (wrapping [`Error::PeerDied`](crate::Error::PeerDied))
    /// once the tripwire was shared and every producer has hung up, after
    /// any pending trip was returned. Otherwise the OS error of the poll or
    /// ACK; a failed ACK leaves the wire tripped.
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
        self.poll_take(cx, |tw| tw.look(Wait::No, None))
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
        std::future::poll_fn(|cx| self.poll_take(cx, |tw| tw.look(Wait::No, Some(&mut *out)))).await
    }

    /// The level-checking loop: never trusts readiness, so no edge is lost.
    /// Spends a unit of tokio's coop budget per turn (an epoch, or a
    /// wake-up that found the wire armed), like tokio's own channels: a
    /// producer that keeps the wire tripped, or its fd readable, cannot
    /// starve the other tasks of this thread.
    fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        mut take: impl FnMut(&mut blocking::Tripwire) -> io::Result<Option<Epoch>>,
    ) -> Poll<io::Result<Epoch>> {
        reactor::poll_turns(cx, |cx| match take(&mut self.inner) {
            Ok(Some(epoch)) => Poll::Ready(Ok(Some(epoch))),
            Err(e) => Poll::Ready(Err(e)),
            // Not tripped (or an ACK in flight): sleep on readiness, then
            // look at the level again.
            Ok(None) => self.poll_ready(cx).map_ok(|()| None),
        })
    }

    /// Polls for readiness: `Ready` once the wire may have tripped or a
    /// producer may have hung up since the last call, without ACKing
    /// anything. Readiness is only a hint, and this clears it: look at the
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
    /// epoch, or `None` if the wire is armed; see
    /// [`blocking::Tripwire::try_changed`]. Never blocks: on `Userfault`
    /// and `UserfaultAsync`, where the ACK is a round trip to the
    /// producers' agents, it returns `None` while the ACK is in flight, and
    /// [`ready`](Tripwire::ready) wakes as the replies come.
    ///
    /// # Errors
    ///
    /// As [`changed`](Tripwire::changed).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let mut tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Doorbell).create().unwrap())?;
    /// assert_eq!(tw.try_changed()?, None);
    /// # Ok(()) }
    /// ```
    pub fn try_changed(&mut self) -> io::Result<Option<Epoch>> {
        self.inner.look(Wait::No, None)
    }

    /// `true` while an ACK awaits the producers' replies: on `Userfault`
    /// and `UserfaultAsync`, where [`try_changed`](Tripwire::try_changed)
    /// and [`changed`](Tripwire::changed) send the ACK without waiting for
    /// it. The wire is not re-armed yet; its replies wake
    /// [`ready`](Tripwire::ready). Always `false` on the other backends.
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
        self.inner.ack_in_flight()
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
    /// within 1 s, noticed at the next wake-up); the wire then stays
    /// tripped.
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
        std::future::poll_fn(|cx| {
            loop {
                if self.inner.ack_nowait()? {
                    return Poll::Ready(Ok(()));
                }
                ready!(self.poll_ready(cx))?;
            }
        })
        .await
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
        self.inner.epoch()
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
        &self.inner
    }

    /// The blocking tripwire inside, still registered: to
    /// [`share`](blocking::Tripwire::share) it with one more producer (in
    /// `tokio::task::block_in_place` on a multi-thread runtime, as `share`
    /// blocks for its handshake). Its blocking calls
    /// ([`wait`](blocking::Tripwire::wait), and `try_changed`'s ACK round
    /// trip on `Userfault`) would block the runtime's thread: use
    /// [`changed`](Tripwire::changed) and [`try_changed`](Tripwire::try_changed).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let mut tw = Tripwire::new(blocking::Tripwire::builder(64).backend(Backend::Poll).create().unwrap())?;
    /// let inner: &mut blocking::Tripwire = tw.get_mut();
    /// # Ok(()) }
    /// ```
    pub fn get_mut(&mut self) -> &mut blocking::Tripwire {
        &mut self.inner
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
        self.inner
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
        self.inner.backend()
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
        self.inner.region()
    }
}

impl AsFd for Tripwire {
    /// The wake-up fd.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl AsRawFd for Tripwire {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

/// A [`Stream`] of the epochs of a [`Tripwire`]; from
/// [`Tripwire::into_stream`].
///
/// Each item stands for at least one change, possibly more (see
/// [`Tripwire::changed`]). The stream is fused: after yielding an error (a
/// hung-up producer gives `BrokenPipe`) it ends.
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
        Poll::Ready(Some(item))
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
