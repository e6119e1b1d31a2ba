//! Registration with the tokio reactor. Since tokio 1.54, `AsyncFd`'s
//! constructors are `unsafe` (the fd must stay open and the same for the
//! registration's life), so the call lives here, for an owner whose fd is
//! fixed by construction: a value that owns its one fd for life
//! ([`FixedFd`]: the blocking tripwire), held by the `AsyncFd` itself, or an
//! `OwnedFd` shared through an `Arc` (the ring's registrations).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A value registered by its own fd (`AsFd`), inside the `AsyncFd` that
/// watches it: no duplicate, and the fd closes only after the registration
/// is gone (an `AsyncFd` deregisters before it drops what it holds).
#[derive(Debug)]
pub(crate) struct Owner<T>(pub(crate) T);

impl<T: AsFd> AsRawFd for Owner<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// A type whose [`as_fd`](AsFd::as_fd) is the one fd it made (or took) at
/// creation, for its whole life: nothing it offers closes or replaces it.
/// Only such a type may be registered by [`register`].
pub(crate) trait FixedFd: AsFd {}

/// A std socket's fd is the one it was made with, for its whole life: none
/// of its methods closes or replaces it (the handshake's socket, registered
/// for the handshake's time by `handoff/tokio.rs`).
impl FixedFd for std::os::unix::net::UnixStream {}

/// Registers `inner` by its own fd for readability, with no duplicate: the
/// `AsyncFd` owns it. Whoever holds the `AsyncFd` may call `inner`'s
/// methods through `get_mut`, never replace it (tokio's rule). On failure,
/// `inner` comes back with the error.
pub(crate) fn register<T: FixedFd>(inner: T) -> Result<AsyncFd<Owner<T>>, (T, io::Error)> {
    register_for(inner, Interest::READABLE)
}

/// [`register`] for `interest` (readability, writability or both).
pub(crate) fn register_for<T: FixedFd>(
    inner: T,
    interest: Interest,
) -> Result<AsyncFd<Owner<T>>, (T, io::Error)> {
    // SAFETY: `T: FixedFd` returns the same open fd for its whole life, and
    // the AsyncFd owns it: the fd is open and the same until the AsyncFd is
    // dropped (it deregisters first) or gives `inner` back (`into_inner`,
    // which deregisters). The crate's holders replace no registered value
    // (tokio.rs only calls methods through `get_mut`; the handshake's
    // driver only `get_ref`).
    unsafe { AsyncFd::register_with_interest(Owner(inner), interest) }.map_err(|e| {
        let (Owner(inner), error) = e.into_parts();
        (inner, error)
    })
}

/// An fd kept open by the `Arc` it shares with its owner: registered
/// without a duplicate.
#[derive(Debug)]
pub(crate) struct SharedFd(Arc<OwnedFd>);

impl AsRawFd for SharedFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Registers the fd of a shared `OwnedFd` for readability, with no
/// duplicate: the registration holds a reference, so the fd stays open (and
/// the same) until it is dropped, whatever its other holders do.
pub(crate) fn register_shared(fd: Arc<OwnedFd>) -> io::Result<AsyncFd<SharedFd>> {
    // SAFETY: the AsyncFd owns a clone of the Arc; an OwnedFd is closed
    // only when dropped, which the Arc prevents while this clone lives, and
    // its number never changes: the fd is open and the same for the
    // registration's whole life.
    unsafe { AsyncFd::register_with_interest(SharedFd(fd), Interest::READABLE) }
        .map_err(io::Error::from)
}

/// A tokio timer armed at a driver's deadline (an ACK in flight), made at
/// the first deadline and then reset: what both the async `Tripwire` and
/// the ring's registration wait on beside their fd.
#[derive(Debug, Default)]
pub(crate) struct DeadlineTimer(Option<std::pin::Pin<Box<tokio::time::Sleep>>>);

impl DeadlineTimer {
    /// `true` once `deadline` has passed (its timer fired); `false` with no
    /// deadline, or with the timer armed and `cx` woken when it fires.
    pub(crate) fn poll_expired(
        &mut self,
        cx: &mut std::task::Context<'_>,
        deadline: Option<std::time::Instant>,
    ) -> bool {
        let Some(deadline) = deadline else {
            return false;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        let timer = match &mut self.0 {
            Some(timer) => {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self.0.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        std::future::Future::poll(timer.as_mut(), cx).is_ready()
    }
}
