//! The async [`Tripwire`] and its [`Changes`] stream: a thin, `unsafe`-free
//! layer of `AsyncFd` readiness over [`blocking::Tripwire`].

use std::fmt;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use ::tokio::io::unix::AsyncFd;
use futures_core::{FusedStream, Stream};

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
    /// Registrations of duplicates of the wake-up fd and of the peer set's
    /// fd: each owns what it watches.
    wake: AsyncFd<OwnedFd>,
    peers: AsyncFd<OwnedFd>,
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
    /// Fails outside a tokio runtime, or if registration fails. (Inside a
    /// runtime built without IO, tokio itself panics.)
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use memfd_tripwire::{Backend, Tripwire, blocking};
    /// let tw = blocking::Tripwire::builder(64).backend(Backend::Doorbell).create().unwrap();
    /// let tw = Tripwire::new(tw).unwrap();
    /// # }
    /// ```
    pub fn new(tripwire: blocking::Tripwire) -> io::Result<Self> {
        if ::tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "Tripwire::new needs a tokio runtime (with IO enabled): call it from async \
                 code or inside Runtime::enter",
            ));
        }
        let wake = reactor::register_owned(tripwire.as_fd().try_clone_to_owned()?)?;
        let peers = reactor::register_owned(tripwire.peers_fd().try_clone_to_owned()?)?;
        Ok(Tripwire {
            inner: tripwire,
            wake,
            peers,
        })
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
        self.poll_take(cx, |tw| tw.try_changed())
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
        std::future::poll_fn(|cx| self.poll_take(cx, |tw| tw.try_changed_with_pages(out))).await
    }

    /// The level-checking loop: never trusts readiness, so no edge is lost.
    fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        mut take: impl FnMut(&mut blocking::Tripwire) -> io::Result<Option<Epoch>>,
    ) -> Poll<io::Result<Epoch>> {
        loop {
            if let Some(epoch) = take(&mut self.inner)? {
                return Poll::Ready(Ok(epoch));
            }
            // Not tripped: sleep on readiness, then look at the level again.
            if let Poll::Ready(guard) = self.wake.poll_read_ready(cx) {
                guard?.clear_ready();
                continue;
            }
            if let Poll::Ready(guard) = self.peers.poll_read_ready(cx) {
                guard?.clear_ready();
                continue;
            }
            return Poll::Pending;
        }
    }

    /// The blocking tripwire inside (still registered).
    pub(crate) fn get_mut(&mut self) -> &mut blocking::Tripwire {
        &mut self.inner
    }

    /// Ready once the wake-up fd or a peer socket signalled since the last
    /// call; clears that readiness. Says nothing of the wire's level.
    pub(crate) fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut ready = false;
        if let Poll::Ready(guard) = self.wake.poll_read_ready(cx) {
            guard?.clear_ready();
            ready = true;
        }
        if let Poll::Ready(guard) = self.peers.poll_read_ready(cx) {
            guard?.clear_ready();
            ready = true;
        }
        if ready {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
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
