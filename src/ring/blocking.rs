//! The blocking driver: waits in `poll(2)` for what the core cannot do
//! now, and the Receiver's blocking receives. The Receiver sleeps on its
//! tripwire
//! ([`wait_ready`](crate::blocking::Tripwire::wait_ready), which caps the
//! sleep at the deadline of an ACK in flight); the Sender sleeps on the
//! space bell and the handshake socket here.

use std::os::fd::AsFd;

use bytemuck::Pod;

use super::Receiver;
use super::core::{Rx, Tx};
use crate::Error;
use crate::sys::wait::{self, PollFd, PollFlags};

impl<T: Pod> Tx<T> {
    /// Blocks until `need` slots are free (or the Receiver is gone);
    /// returns how many are; before it sleeps, the `may_block` check of the
    /// public `call`.
    #[track_caller]
    pub(super) fn blocking_reserve(
        &mut self,
        need: u64,
        (call, instead): (&'static str, &'static str),
    ) -> Result<u64, Error> {
        loop {
            let free = self.spin_for_space(need)?;
            if free >= need {
                return Ok(free);
            }
            if !self.start_waiting(need)? {
                crate::may_block::assert_may_block(call, instead);
                // The wait stays announced while rings free too little: a
                // Receiver that rings without freeing space (a hostile one
                // can flood the bell) costs a wake-up per ring, not a spin.
                while let Some(short) = self.sleep_for_space(need)? {
                    if short.gone {
                        self.stop_waiting()?;
                        return Err(Error::PeerDied);
                    }
                }
            }
            self.stop_waiting()?;
        }
    }
}

/// A wake-up of [`Tx::sleep_for_space`] that found too little space.
struct Short {
    /// The Receiver is gone (its bell or handshake socket hung up).
    gone: bool,
}

impl<T> Tx<T> {
    /// Sleeps until the Receiver rings the space bell or hangs up, then
    /// looks: `None` once `need` slots are free, else why not yet.
    ///
    /// The Receiver rings the bell when it frees space; its death closes
    /// the handshake socket (the bell is the Receiver's to make: a hostile
    /// one may hand over a bell that never hangs up). No deadline: the
    /// Sender waits for a peer, as a blocking write to a pipe does; its
    /// death ends the wait.
    fn sleep_for_space(&mut self, need: u64) -> Result<Option<Short>, Error> {
        let sock = self.producer.handshake_socket();
        let mut fds = [
            PollFd::new(&self.space, PollFlags::IN),
            PollFd::from_borrowed_fd(sock.unwrap_or(self.space.as_fd()), PollFlags::RDHUP),
        ];
        wait::poll(&mut fds, None).map_err(|e| Error::io("waiting for space", e))?;
        // Gone once the space it freed is used up.
        let gone = self.drain_space()? || self.producer.is_closed();
        if self.free(need)? >= need {
            return Ok(None);
        }
        Ok(Some(Short { gone }))
    }
}

impl<T: Pod> Receiver<T> {
    /// Waits for the next message, blocking the thread.
    ///
    /// `Ok(None)` once the Sender was dropped and everything it sent was
    /// received.
    ///
    /// # Errors
    ///
    /// [`Error::PeerDied`] once the Sender's process died (after everything
    /// it published was received); [`Error::Corrupt`] for an impossible
    /// index; [`Error::Io`] if the tripwire fails; [`Error::NotShared`], at
    /// once, on a ring never [shared](Receiver::share), which no Sender
    /// can reach.
    ///
    /// # Panics
    ///
    /// With feature `tokio`, when it would sleep on a thread that drives a
    /// tokio runtime's tasks (in a task or a `block_on`), whose tasks it
    /// would stall: use
    /// `recv().await` there, or call this inside `spawn_blocking`; the exact
    /// rule is in [the crate docs](crate#blocking-calls-and-tokio).
    ///
    /// ```no_run
    /// # fn f(mut rx: memfd_tripwire::ring::Receiver<u64>) -> Result<(), memfd_tripwire::Error> {
    /// while let Some(v) = rx.blocking_recv()? {
    ///     println!("{v}");
    /// }
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn blocking_recv(&mut self) -> Result<Option<T>, Error> {
        self.recv_blocking(("Receiver::blocking_recv", "recv().await"), Rx::pop)
    }

    /// [`blocking_recv`](Receiver::blocking_recv) of what `take` takes (a
    /// message, a frame); before it sleeps, the `may_block` check of the
    /// public `call`.
    #[track_caller]
    pub(super) fn recv_blocking<R>(
        &mut self,
        (call, instead): (&'static str, &'static str),
        mut take: impl FnMut(&mut Rx<T>) -> Result<Option<R>, Error>,
    ) -> Result<Option<R>, Error> {
        loop {
            if self.done {
                return Ok(None);
            }
            if let Some(v) = take(&mut self.rx)? {
                return Ok(Some(v));
            }
            if let Some(outcome) = self.idle(&mut take)? {
                return Ok(outcome);
            }
            crate::may_block::assert_may_block(call, instead);
            self.tw
                .sleep_until(None)
                .map_err(|e| Error::io("waiting on the ring's tripwire", e))?;
        }
    }

    /// Waits for at least one message, blocking the thread, then appends up
    /// to `limit` (at least one) to `buf` without waiting further. Returns
    /// how many; 0 means the Sender closed and everything was received.
    ///
    /// The batched [`blocking_recv`](Receiver::blocking_recv): one copy per
    /// contiguous run of slots instead of one per message.
    ///
    /// # Errors
    ///
    /// As [`blocking_recv`](Receiver::blocking_recv); messages already
    /// appended stay in `buf`.
    ///
    /// # Panics
    ///
    /// With feature `tokio`, when it would sleep on a thread that drives a
    /// tokio runtime's tasks (in a task or a `block_on`), whose tasks it
    /// would stall: use
    /// `recv_many(..).await` there, or call this inside `spawn_blocking`; the
    /// exact rule is in [the crate docs](crate#blocking-calls-and-tokio).
    ///
    /// ```no_run
    /// # fn f(mut rx: memfd_tripwire::ring::Receiver<u64>) -> Result<(), memfd_tripwire::Error> {
    /// let mut buf = Vec::with_capacity(256);
    /// while rx.blocking_recv_many(&mut buf, 256)? > 0 {
    ///     buf.clear();
    /// }
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn blocking_recv_many(&mut self, buf: &mut Vec<T>, limit: usize) -> Result<usize, Error> {
        let limit = limit.max(1);
        if !self.done {
            let n = self.rx.pop_many(buf, limit)?;
            if n > 0 {
                return Ok(n);
            }
        }
        let Some(first) = self.recv_blocking(
            (
                "Receiver::blocking_recv_many",
                "recv_many(buf, limit).await",
            ),
            Rx::pop,
        )?
        else {
            return Ok(0);
        };
        buf.push(first);
        Ok(1 + self.rx.pop_many(buf, limit - 1)?)
    }
}
