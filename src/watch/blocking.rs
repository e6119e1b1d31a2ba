//! The watch's runtime-free Receiver, over a
//! [`blocking::Tripwire`](crate::blocking::Tripwire); its waits block the
//! thread. The async one is `watch::Receiver` (feature `tokio`).

use std::fmt;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use super::core::{CloseOnDrop, Core, after_failed_wait, check_unshared};
use super::layout;
use crate::{BackendKind, Error};

/// The consuming end of a watch, blocking; from
/// [`watch::channel`](super::channel)`(..).`[`create`](super::Builder::create).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::unix::net::UnixStream;
/// use memfd_tripwire::{Backend, watch};
///
/// let (ours, theirs) = UnixStream::pair()?;
/// let sender = std::thread::spawn(move || -> Result<(), memfd_tripwire::Error> {
///     let mut tx = watch::Sender::<u64>::connect(theirs)?;
///     tx.send(&42)
/// });
/// let mut rx = watch::channel(0u64).backend(Backend::Doorbell).create()?;
/// rx.share(ours)?;
/// rx.wait()?;
/// assert_eq!(*rx.borrow(), 42);
/// sender.join().unwrap()?;
/// # Ok(()) }
/// ```
pub struct Receiver<T> {
    tw: crate::blocking::Tripwire,
    core: Core<T>,
    shared: bool,
    _close: CloseOnDrop,
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
    pub(super) fn new(tw: crate::blocking::Tripwire, core: Core<T>) -> Self {
        let close = CloseOnDrop::new(tw.region());
        Receiver {
            tw,
            core,
            shared: false,
            _close: close,
        }
    }

    /// Hands the watch to the Sender at the other end of `peer`
    /// ([`Sender::connect`](super::Sender::connect)). Blocks for the
    /// handshake (up to 10 s per frame against a silent peer).
    ///
    /// # Errors
    ///
    /// As [`blocking::Tripwire::share_with_fds`](crate::blocking::Tripwire::share_with_fds);
    /// [`Error::LayoutMismatch`] if the Sender's `T` or type tag differ;
    /// [`Error::Handshake`] if the watch was already shared (it has one
    /// writer).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::unix::net::UnixStream;
    /// # use memfd_tripwire::{Backend, watch};
    /// let (ours, theirs) = UnixStream::pair()?;
    /// let tx = std::thread::spawn(move || watch::Sender::<u32>::connect(theirs));
    /// let mut rx = watch::channel(0u32).backend(Backend::Doorbell).create()?;
    /// rx.share(ours)?;
    /// let _tx = tx.join().unwrap()?;
    /// # Ok(()) }
    /// ```
    pub fn share(&mut self, peer: UnixStream) -> Result<(), Error> {
        check_unshared(self.shared)?;
        self.tw.share_with_fds(peer, layout::FRAME_TAG, &[])?;
        self.shared = true;
        Ok(())
    }

    /// The last value read (by [`wait`](Receiver::wait),
    /// [`borrow_and_update`](Receiver::borrow_and_update), or the initial
    /// one): a local copy, never shared memory, so it costs nothing.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, watch};
    /// let rx = watch::channel([3u8; 4]).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(*rx.borrow(), [3; 4]);
    /// ```
    #[allow(clippy::should_implement_trait)] // tokio::sync::watch's name
    pub fn borrow(&self) -> &T {
        &self.core.value
    }

    /// Reads the latest whole value now, keeps it (marking it seen) and
    /// returns it.
    ///
    /// # Errors
    ///
    /// [`Error::Stuck`] if no whole value could be read within
    /// [`stuck_after`](super::Builder::stuck_after) (it spins, yielding the
    /// thread, that long at most).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, watch};
    /// let mut rx = watch::channel(5u16).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(*rx.borrow_and_update().unwrap(), 5);
    /// ```
    pub fn borrow_and_update(&mut self) -> Result<&T, Error> {
        self.core.update(self.tw.region())
    }

    /// Whether the sequence moved since the last value read: a new value,
    /// or one being written. One atomic load; never blocks.
    ///
    /// # Errors
    ///
    /// None in practice (the sequence word is always in the region).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, watch};
    /// let rx = watch::channel(0u8).backend(Backend::Poll).create().unwrap();
    /// assert!(!rx.has_changed().unwrap());
    /// ```
    pub fn has_changed(&self) -> Result<bool, Error> {
        self.core.has_changed(self.tw.region())
    }

    /// Waits for a new whole value and keeps it ([`borrow`](Receiver::borrow)
    /// shows it). Returns at once if one arrived since the last read; each
    /// return stands for at least one new value, possibly more.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the Sender was dropped, [`Error::PeerDied`]
    /// once its process died, each after the last value it sent;
    /// [`Error::Stuck`] as
    /// [`borrow_and_update`](Receiver::borrow_and_update);
    /// [`Error::NotShared`] on a `Doorbell`, `Userfault` or
    /// `UserfaultAsync` watch never shared; otherwise the tripwire's
    /// errors, as [`blocking::Tripwire::wait`](crate::blocking::Tripwire::wait).
    ///
    /// # Panics
    ///
    /// With feature `tokio`, when it would sleep on a thread that drives a
    /// tokio runtime's tasks (the rule of
    /// [`blocking::Tripwire::wait`](crate::blocking::Tripwire::wait)): use
    /// the async `watch::Receiver`'s `changed().await` there, or call this
    /// inside `spawn_blocking`. The message names this call. The check is
    /// made when no new value is there, before the tripwire is asked, so
    /// it panics even where the wait would have returned at once (the
    /// Sender gone: `Closed`); tokio's own `blocking_recv` panics on every
    /// call.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, Error, watch};
    /// let mut rx = watch::channel(0u8).backend(Backend::Doorbell).create().unwrap();
    /// assert!(matches!(rx.wait(), Err(Error::NotShared { .. }))); // share it first
    /// ```
    #[track_caller]
    pub fn wait(&mut self) -> Result<(), Error> {
        self.wait_until(
            None,
            (
                "watch::blocking::Receiver::wait",
                "watch::Receiver::changed().await",
            ),
        )
        .map(|_| ())
    }

    /// Like [`wait`](Receiver::wait), but gives up after `timeout`:
    /// `Ok(false)` then.
    ///
    /// # Errors
    ///
    /// As [`wait`](Receiver::wait).
    ///
    /// # Panics
    ///
    /// As [`wait`](Receiver::wait).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use memfd_tripwire::{Backend, watch};
    /// let mut rx = watch::channel(0u8).backend(Backend::Poll).create().unwrap();
    /// assert!(!rx.wait_timeout(Duration::from_millis(10)).unwrap());
    /// ```
    #[track_caller]
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<bool, Error> {
        self.wait_until(
            Instant::now().checked_add(timeout),
            (
                "watch::blocking::Receiver::wait_timeout",
                "tokio::time::timeout(t, watch_receiver.changed()).await",
            ),
        )
    }

    /// Waits on the tripwire until a new value is read, or `until`. With
    /// no new value, the tripwire's wait would sleep (or take a trip that
    /// is there): the `may_block` check of the public `call` is made
    /// first, so that a panic names the watch's call, not the tripwire's.
    #[track_caller]
    fn wait_until(
        &mut self,
        until: Option<Instant>,
        (call, instead): (&'static str, &'static str),
    ) -> Result<bool, Error> {
        loop {
            if self.take_new()? {
                return Ok(true);
            }
            crate::may_block::assert_may_block(call, instead);
            let waited = match until {
                None => self.tw.wait().map(Some),
                Some(until) => self
                    .tw
                    .wait_timeout(until.saturating_duration_since(Instant::now())),
            };
            match waited {
                Ok(Some(_)) => {}
                Ok(None) => return self.take_new(),
                // The producer is gone (or the wait failed): a value it
                // published before is reported first.
                Err(e) => return after_failed_wait(self.take_new(), e),
            }
        }
    }

    fn take_new(&mut self) -> Result<bool, Error> {
        self.core.take_new(self.tw.region())
    }

    /// The fd an unmodified writer maps ([`Backend::Unmodified`](crate::Backend::Unmodified),
    /// `Kernel` or `Poll`), as
    /// [`blocking::Tripwire::producer_fd`](crate::blocking::Tripwire::producer_fd);
    /// the layout it follows is in [the module docs](super#an-unmodified-writer).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] on `Doorbell`, `Userfault` and `UserfaultAsync`.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, watch};
    /// let rx = watch::channel(0u64).backend(Backend::Unmodified).create().unwrap();
    /// let fd = rx.producer_fd().unwrap().try_clone_to_owned().unwrap(); // hand this over
    /// ```
    pub fn producer_fd(&self) -> Result<BorrowedFd<'_>, Error> {
        self.tw.producer_fd()
    }

    /// Bytes an unmodified writer maps: the header, the sequence and the
    /// value (see [the module docs](super#an-unmodified-writer)).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, watch};
    /// let rx = watch::channel([0u8; 256]).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(rx.len(), 72 + 256);
    /// ```
    #[allow(clippy::len_without_is_empty)] // never empty: a header at least
    pub fn len(&self) -> usize {
        self.tw.region().len()
    }

    /// The backend the tripwire runs on.
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, BackendKind, watch};
    /// let rx = watch::channel(0u8).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(rx.backend(), BackendKind::Poll);
    /// ```
    pub fn backend(&self) -> BackendKind {
        self.tw.backend()
    }

    /// The tripwire underneath (its [`stats`](crate::blocking::Tripwire::stats),
    /// say).
    ///
    /// ```
    /// # use memfd_tripwire::{Backend, watch};
    /// let rx = watch::channel(0u8).backend(Backend::Poll).create().unwrap();
    /// assert_eq!(rx.tripwire().stats().trips, 0);
    /// ```
    pub fn tripwire(&self) -> &crate::blocking::Tripwire {
        &self.tw
    }

    /// The async Receiver of the same watch (feature `tokio`), registered
    /// with the current runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] outside a tokio runtime or if registration fails
    /// (this Receiver is then dropped, and the watch closed).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), memfd_tripwire::Error> {
    /// # use memfd_tripwire::{Backend, watch};
    /// let rx = watch::channel(0u8).backend(Backend::Poll).create()?;
    /// let rx = rx.into_async()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tokio")]
    pub fn into_async(self) -> Result<super::Receiver<T>, Error> {
        let Receiver {
            tw,
            core,
            shared,
            _close,
        } = self;
        let tw = crate::Tripwire::new(tw).map_err(|e| {
            Error::io(
                "registering the watch's tripwire with tokio",
                e.into_parts().1,
            )
        })?;
        Ok(super::Receiver {
            tw,
            core,
            shared,
            _close,
        })
    }
}
