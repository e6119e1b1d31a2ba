//! The async driver of the handshake: the socket registered with the tokio
//! reactor (through `reactor`, where the `unsafe` registration lives) for
//! both readiness directions, and a tokio timer at each exchange's
//! deadline. A runtime thread never blocks on it: a step that would block
//! returns, and the task waits here.

use std::io;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use ::tokio::io::Interest;
use ::tokio::io::unix::AsyncFd;

use super::{Need, Wait};
use crate::Error;
use crate::reactor;

/// A handshake socket registered with the current tokio runtime until the
/// handshake is over ([`into_stream`](Wait::into_stream) deregisters it).
#[derive(Debug)]
pub(crate) struct Reactor(AsyncFd<reactor::Owner<UnixStream>>);

impl Reactor {
    /// Registers `sock` with the current runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] outside a tokio runtime, or if the registration fails.
    pub(crate) fn new(sock: UnixStream) -> Result<Reactor, Error> {
        if ::tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::io(
                "an async handshake needs a tokio runtime",
                io::Error::other(
                    "call it from async code inside a runtime (with IO and time enabled), or \
                     use the blocking share/connect",
                ),
            ));
        }
        reactor::register_for(sock, Interest::READABLE | Interest::WRITABLE)
            .map(Reactor)
            .map_err(|(_sock, e)| Error::io("registering the handshake socket with tokio", e))
    }
}

impl Wait for Reactor {
    fn sock(&self) -> &UnixStream {
        &self.0.get_ref().0
    }

    async fn ready(&mut self, need: Need, deadline: Instant) -> io::Result<bool> {
        let interest = match need {
            Need::Read => Interest::READABLE,
            Need::Write => Interest::WRITABLE,
        };
        let deadline = ::tokio::time::Instant::from_std(deadline);
        match ::tokio::time::timeout_at(deadline, self.0.ready(interest)).await {
            Err(_elapsed) => Ok(false),
            Ok(guard) => {
                // The step that follows tries its I/O again: readiness is
                // cleared before it, so a new edge (data that comes after
                // the step found none) is never missed.
                guard?.clear_ready();
                Ok(true)
            }
        }
    }

    fn into_stream(self) -> UnixStream {
        self.0.into_inner().0
    }
}
