//! The watch's async Receiver, over the async
//! [`Tripwire`](crate::Tripwire): its waits never block the thread.

use std::fmt;
use std::os::unix::net::UnixStream;

use bytemuck::Pod;

use super::core::{Attempt, CloseOnDrop, Core, Retry, after_failed_wait, check_unshared};
use super::layout;
use crate::{BackendKind, Error, Region};

/// The consuming end of a watch, for tokio; from
/// [`watch::channel`](super::channel)`(..).`[`create_async`](super::Builder::create_async)
/// (or a [`blocking::Receiver`](super::blocking::Receiver)'s
/// [`into_async`](super::blocking::Receiver::into_async)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::unix::net::UnixStream;
/// use memfd_tripwire::{Backend, Error, watch};
///
/// let (ours, theirs) = UnixStream::pair()?;
/// let sender = tokio::spawn(async move {
///     let mut tx = watch::Sender::<[u32; 2]>::connect_async(theirs).await?;
///     tx.send(&[1, 2])?;
///     Ok::<_, Error>(())
/// });
/// let mut rx = watch::channel([0u32; 2]).backend(Backend::Doorbell).create_async()?;
/// rx.share(ours).await?;
/// rx.changed().await?;
/// assert_eq!(*rx.borrow(), [1, 2]);
/// sender.await.unwrap()?;
/// assert!(matches!(rx.changed().await, Err(Error::Closed)));
/// # Ok(()) }
/// ```
pub struct Receiver<T> {
    pub(super) tw: crate::Tripwire,
    pub(super) core: Core<T>,
    pub(super) shared: bool,
    pub(super) _close: CloseOnDrop,
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("backend", &self.tw.backend())
            .field("seen", &self.core.seen)
            .finish_non_exhaustive()
    }
}

impl<T: Pod> Receiver<T> {
    /// Hands the watch to the Sender at the other end of `peer`; the
    /// async [`blocking::Receiver::share`](super::blocking::Receiver::share),
    /// which never blocks the thread.
    ///
    /// # Cancel safety
    ///
    /// As [`Tripwire::share_with_fds`](crate::Tripwire::share_with_fds):
    /// a dropped future leaves the watch unshared.
    ///
    /// # Errors
    ///
    /// As [`blocking::Receiver::share`](super::blocking::Receiver::share).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::unix::net::UnixStream;
    /// # use memfd_tripwire::{Backend, watch};
    /// let (ours, theirs) = UnixStream::pair()?;
    /// let tx = tokio::spawn(watch::Sender::<u8>::connect_async(theirs));
    /// let mut rx = watch::channel(0u8).backend(Backend::Doorbell).create_async()?;
    /// rx.share(ours).await?;
    /// let _tx = tx.await.unwrap()?;
    /// # Ok(()) }
    /// ```
    pub async fn share(&mut self, peer: UnixStream) -> Result<(), Error> {
        check_unshared(self.shared)?;
        self.tw.share_with_fds(peer, layout::FRAME_TAG, &[]).await?;
        self.shared = true;
        Ok(())
    }

    /// The last value read (by [`changed`](Receiver::changed),
    /// [`borrow_and_update`](Receiver::borrow_and_update), or the initial
    /// one): a local copy, never shared memory.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use memfd_tripwire::{Backend, watch};
    /// let rx = watch::channel(9i32).backend(Backend::Poll).create_async().unwrap();
    /// assert_eq!(*rx.borrow(), 9);
    /// # }
    /// ```
    #[allow(clippy::should_implement_trait)] // tokio::sync::watch's name
    pub fn borrow(&self) -> &T {
        &self.core.value
    }

    /// Reads the latest whole value now, keeps it (marking it seen) and
    /// returns it. Spins, yielding the thread, for at most
    /// [`stuck_after`](super::Builder::stuck_after) against a writer in the
    /// middle of a write (a whole value normally takes one copy).
    ///
    /// # Errors
    ///
    /// [`Error::Stuck`] past that bound.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use memfd_tripwire::{Backend, watch};
    /// let mut rx = watch::channel(9i32).backend(Backend::Poll).create_async().unwrap();
    /// assert_eq!(*rx.borrow_and_update().unwrap(), 9);
    /// # }
    /// ```
    pub fn borrow_and_update(&mut self) -> Result<&T, Error> {
        self.core.update(self.tw.region())
    }

    /// Whether the sequence moved since the last value read: a new value,
    /// or one being written. One atomic load.
    ///
    /// # Errors
    ///
    /// None in practice (the sequence word is always in the region).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use memfd_tripwire::{Backend, watch};
    /// let rx = watch::channel(0u8).backend(Backend::Poll).create_async().unwrap();
    /// assert!(!rx.has_changed().unwrap());
    /// # }
    /// ```
    pub fn has_changed(&self) -> Result<bool, Error> {
        self.core.has_changed(self.tw.region())
    }

    /// Waits for a new whole value and keeps it ([`borrow`](Receiver::borrow)
    /// shows it). Returns at once if one arrived since the last read; each
    /// return stands for at least one new value, possibly more (as
    /// `tokio::sync::watch::Receiver::changed`).
    ///
    /// A read that finds a write under way retries, yielding to the
    /// runtime between rounds, for at most
    /// [`stuck_after`](super::Builder::stuck_after).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a value is kept only when the future returns it, and
    /// the tripwire's `changed` is cancel safe.
    ///
    /// # Errors
    ///
    /// As [`blocking::Receiver::wait`](super::blocking::Receiver::wait):
    /// [`Error::Closed`] or [`Error::PeerDied`] after the last value sent,
    /// [`Error::Stuck`], [`Error::NotShared`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use memfd_tripwire::{Backend, Error, watch};
    /// let mut rx = watch::channel(0u8).backend(Backend::Doorbell).create_async().unwrap();
    /// assert!(matches!(rx.changed().await, Err(Error::NotShared { .. }))); // share it first
    /// # }
    /// ```
    pub async fn changed(&mut self) -> Result<(), Error> {
        loop {
            if self.take_new().await? {
                return Ok(());
            }
            if let Err(e) = self.tw.changed().await {
                // The producer is gone (or the wait failed): a value it
                // published before is reported first.
                return after_failed_wait(self.take_new().await, e).map(|_| ());
            }
        }
    }

    /// Reads the value if the sequence moved; `true` if it is new.
    async fn take_new(&mut self) -> Result<bool, Error> {
        let region = self.tw.region();
        if !self.core.has_changed(region)? {
            return Ok(false);
        }
        let (seq, value) = read_async(&self.core, region).await?;
        Ok(self.core.accept(seq, value))
    }

    /// The fd an unmodified writer maps, as
    /// [`blocking::Receiver::producer_fd`](super::blocking::Receiver::producer_fd).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] on `Doorbell`, `Userfault` and `UserfaultAsync`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use memfd_tripwire::{Backend, watch};
    /// let rx = watch::channel(0u64).backend(Backend::Unmodified).create_async().unwrap();
    /// let fd = rx.producer_fd().unwrap().try_clone_to_owned().unwrap();
    /// # }
    /// ```
    pub fn producer_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>, Error> {
        self.tw.get_ref().producer_fd()
    }

    /// The backend the tripwire runs on.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use memfd_tripwire::{Backend, BackendKind, watch};
    /// let rx = watch::channel(0u8).backend(Backend::Poll).create_async().unwrap();
    /// assert_eq!(rx.backend(), BackendKind::Poll);
    /// # }
    /// ```
    pub fn backend(&self) -> BackendKind {
        self.tw.backend()
    }

    /// The tripwire underneath (its `stats()`, say).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use memfd_tripwire::{Backend, watch};
    /// let rx = watch::channel(0u8).backend(Backend::Poll).create_async().unwrap();
    /// assert_eq!(rx.tripwire().stats().trips, 0);
    /// # }
    /// ```
    pub fn tripwire(&self) -> &crate::Tripwire {
        &self.tw
    }
}

/// The bounded read, yielding to the runtime every few attempts instead of
/// the thread.
async fn read_async<T: Pod>(core: &Core<T>, region: &Region) -> Result<(u64, T), Error> {
    let mut retry = Retry::new(core.stuck_after);
    loop {
        match core.attempt(region)? {
            Attempt::Whole(seq, value) => return Ok((seq, value)),
            Attempt::Busy(a, b) => {
                if retry.failed(a, b)? {
                    ::tokio::task::yield_now().await;
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }
}
