//! The Receiver's non-blocking step, which every driver (blocking,
//! tokio, mio) drives: the core's look at the head and the tripwire's own
//! step ([`try_changed`](crate::blocking::Tripwire::try_changed), which
//! re-arms a tripped wire or collects an ACK in flight), in the order that
//! loses no message: spin, publish the tail, re-arm, look again, and only
//! then sleep, or say how the ring ended.

use std::time::Instant;

use bytemuck::Pod;

use super::core::Rx;
use super::{Receiver, TryRecvError};
use crate::{Error, trace};

impl<T: Pod> Receiver<T> {
    /// [`rearm`](Receiver::rearm): publish the tail, take the wire's step
    /// (re-arm a tripped wire, or collect an ACK in flight), look again.
    pub(super) fn step_rearm(&mut self) -> Result<bool, Error> {
        // Only the Sender writes the ring, and only `share` lets one in: a
        // sleep now would never end. (Decided here, the step every way of
        // waiting takes before it sleeps.)
        if !self.shared {
            return Err(Error::NotShared {
                reason: "this ring's Receiver was never shared, and only its Sender \
                         (Sender::connect, after share) can send to it"
                    .into(),
            });
        }
        self.rx.publish_tail()?;
        let start = Instant::now();
        let changed = self.tw.try_changed();
        if self.tw.deadline().is_some() {
            self.ack_sent.get_or_insert(start);
        }
        match changed {
            // Tripped, and now re-armed: what was stored before is visible.
            Ok(Some(_)) => {
                self.stats.rearms += 1;
                // An ACK that went out without blocking cost the Receiver
                // from its sending to here (a sleep in between included).
                let sent = self.ack_sent.take().unwrap_or(start);
                self.spin.record_ack(sent.elapsed());
                // That may have been the last trip of a Sender that is
                // gone (taken with its hang-up, which then wakes no one):
                // sleeping now would be for ever.
                if self
                    .tw
                    .producers_gone()
                    .map_err(|e| Error::io("checking for the Sender's hang-up", e))?
                {
                    return Ok(false);
                }
            }
            // Armed since the last re-arm: the next store trips it.
            Ok(None) => {}
            // Every Sender is gone: nothing will trip it any more.
            Err(e) if Error::is_closed(&e) || Error::is_peer_died(&e) => return Ok(false),
            Err(e) => return Err(Error::io("re-arming the ring's tripwire", e)),
        }
        // A Sender that closed cleanly while its socket lives on (a dup, a
        // forked child) trips no more either.
        if self.rx.closed()? {
            return Ok(false);
        }
        Ok(self.rx.ready()? == 0)
    }

    /// One round of "nothing there": spin, re-arm, look again. `Some` is
    /// the outcome to return; `None` means: sleep until the wire trips.
    /// `take` takes what the caller receives (a message, a frame), if any.
    pub(super) fn idle<R>(
        &mut self,
        mut take: impl FnMut(&mut Rx<T>) -> Result<Option<R>, Error>,
    ) -> Result<Option<Option<R>>, Error> {
        // (Not for a ring never shared, which the re-arm refuses at once.)
        if self.shared && self.rx.spin_for_data(self.spin.budget())? {
            if let Some(v) = take(&mut self.rx)? {
                return Ok(Some(Some(v)));
            }
        }
        if self.rearm()? {
            self.stats.sleeps += 1;
            return Ok(None);
        }
        match take(&mut self.rx)? {
            Some(v) => Ok(Some(Some(v))),
            // Nothing, though not armed: the Sender is gone.
            None => self.finish(take).map(Some),
        }
    }

    /// The Sender is gone: drain what was published, then say how it ended.
    fn finish<R>(
        &mut self,
        mut take: impl FnMut(&mut Rx<T>) -> Result<Option<R>, Error>,
    ) -> Result<Option<R>, Error> {
        if let Some(v) = take(&mut self.rx)? {
            return Ok(Some(v));
        }
        self.done = true;
        if self.rx.closed()? {
            trace::debug!(
                backend = %self.tw.backend(),
                received = self.rx.received,
                "ring closed: its Sender closed it and every message was received"
            );
            Ok(None)
        } else {
            trace::warn!(
                backend = %self.tw.backend(),
                received = self.rx.received,
                "ring ended: its Sender died (every message it published was received)"
            );
            Err(Error::PeerDied)
        }
    }

    /// Nothing was there: has the Sender finished? `Empty` if not; else
    /// one more look (its flag and its hang-up come after its last head
    /// store), then how it ended.
    pub(super) fn finished<R>(
        &mut self,
        take: impl FnMut(&mut Rx<T>) -> Result<Option<R>, Error>,
    ) -> Result<R, TryRecvError> {
        let closed = self.rx.closed()?;
        let gone = closed
            || self
                .tw
                .producers_gone()
                .map_err(|e| Error::io("checking for the Sender's hang-up", e))?;
        if !gone {
            return Err(TryRecvError::Empty);
        }
        self.finish(take)?.ok_or(TryRecvError::Closed)
    }
}
