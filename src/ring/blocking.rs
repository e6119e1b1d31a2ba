//! The blocking driver: waits in `poll(2)` for what the core cannot do
//! now. The Receiver sleeps on its tripwire
//! ([`wait_ready`](crate::blocking::Tripwire::wait_ready), which caps the
//! sleep at the deadline of an ACK in flight); the Sender sleeps on the
//! space bell and the handshake socket here.

use std::os::fd::AsFd;

use bytemuck::Pod;

use super::core::Tx;
use crate::Error;
use crate::sys::wait::{self, PollFd, PollFlags};

impl<T: Pod> Tx<T> {
    /// Blocks until a slot is free (or the Receiver is gone); before it
    /// sleeps, the `may_block` check of the public `call`.
    #[track_caller]
    pub(super) fn blocking_reserve(
        &mut self,
        (call, instead): (&'static str, &'static str),
    ) -> Result<u64, Error> {
        loop {
            let free = self.spin_for_space()?;
            if free > 0 {
                return Ok(free);
            }
            if !self.start_waiting()? {
                // The Receiver rings the bell when it frees space; its death
                // closes the handshake socket (the bell is the Receiver's
                // to make: a hostile one may hand over a bell that never
                // hangs up).
                // No deadline: the Sender waits for a peer, as a blocking
                // write to a pipe does; its death ends the wait.
                crate::may_block::assert_may_block(call, instead);
                let sock = self.producer.handshake_socket();
                let mut fds = [
                    PollFd::new(&self.space, PollFlags::IN),
                    PollFd::from_borrowed_fd(sock.unwrap_or(self.space.as_fd()), PollFlags::RDHUP),
                ];
                wait::poll(&mut fds, None).map_err(|e| Error::io("waiting for space", e))?;
                // Gone once the space it freed is used up.
                let gone = self.drain_space()? || self.producer.is_closed();
                if gone && self.free()? == 0 {
                    self.stop_waiting()?;
                    return Err(Error::PeerDied);
                }
            }
            self.stop_waiting()?;
        }
    }
}
