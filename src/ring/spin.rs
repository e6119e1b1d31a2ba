//! How long a ring end busy-polls before it re-arms and sleeps: adapted to
//! what a sleep costs on the host at hand, instead of a constant.
//!
//! Going to sleep costs the Receiver its ACK (a round trip to the producer's
//! agent on `Userfault`, an ioctl on `Kernel`, a flag store on `Doorbell`),
//! the Sender a trapped store or a ring, and the Receiver a wake-up when the
//! next message comes. Spinning for as long as that costs (the classic
//! competitive rule: spin for the price of a block) is never worse than
//! twice the best choice made in hindsight, and avoids the cliff a constant
//! budget falls off on a host where wake-ups cost more (a 5 µs spin against
//! a 30-60 µs wake-up or trap re-arms on every gap and can livelock).
//!
//! The budget is `ack + wake + detect`, where `detect` is how late the
//! wire reports a store (the interval of `Poll` and `UserfaultAsync`: a
//! sleeping Receiver waits it out), `wake` the one-way wake-up
//! latency of this host, measured once per process (a ping-pong between two
//! threads through eventfds, ~1 ms), and `ack` an average of the ACKs this
//! Receiver made; clamped to [`MIN`]..[`MAX`].

use std::os::fd::AsFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::sys::EventFd;

/// The least budget: a re-check of the head that costs next to nothing.
pub(crate) const MIN: Duration = Duration::from_micros(1);
/// The most budget: beyond it, a CPU spent spinning costs more than a
/// wake-up on any host we know of.
pub(crate) const MAX: Duration = Duration::from_micros(250);

/// The spin policy of a ring end.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Spin {
    /// A budget set by the user.
    Fixed(Duration),
    /// The cost of a sleep here: `ack` is an average of measured ACKs,
    /// `detect` how late the wire reports a store (the interval of `Poll`
    /// and `UserfaultAsync`, which a sleeping Receiver waits out; zero on
    /// the backends that trap or ring at once).
    Adaptive { ack: Duration, detect: Duration },
}

impl Spin {
    /// The budget to spin for now.
    pub(crate) fn budget(&self) -> Duration {
        match *self {
            Spin::Fixed(d) => d,
            // Saturating: `detect` is the user's interval (#23: a ring on
            // `Poll` with `poll_interval(Duration::MAX)` panicked here).
            Spin::Adaptive { ack, detect } => ack
                .saturating_add(wake_cost())
                .saturating_add(detect)
                .clamp(MIN, MAX),
        }
    }

    /// Records what one ACK cost (an exponential average, weight 1/8).
    pub(crate) fn record_ack(&mut self, took: Duration) {
        if let Spin::Adaptive { ack, .. } = self {
            *ack = (*ack * 7 + took.min(MAX)) / 8;
        }
    }
}

/// Busy-polls: looks until `look` says `true` (then `true`) or `budget` is
/// spent (then `false`), a spin-loop hint between looks and a clock read
/// once per 64 looks. A zero budget looks not at all. Both ends spin here:
/// the Receiver for data before it re-arms, the Sender for space before it
/// sleeps.
#[inline]
pub(crate) fn until<E>(
    budget: Duration,
    mut look: impl FnMut() -> Result<bool, E>,
) -> Result<bool, E> {
    if budget.is_zero() {
        return Ok(false);
    }
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if look()? {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= budget {
            return Ok(false);
        }
    }
}

/// The one-way wake-up latency of this host: half the median round trip of
/// 16 ping-pongs between two threads sleeping in `poll` on eventfds.
/// Measured once per process; 20 µs if it cannot be measured.
pub(crate) fn wake_cost() -> Duration {
    static COST: OnceLock<Duration> = OnceLock::new();
    *COST.get_or_init(|| measure().unwrap_or(Duration::from_micros(20)))
}

fn measure() -> Option<Duration> {
    const ROUNDS: usize = 16;
    let ping = std::sync::Arc::new(EventFd::new().ok()?);
    let pong = std::sync::Arc::new(EventFd::new().ok()?);
    let (p, q) = (ping.clone(), pong.clone());
    let echo = std::thread::Builder::new()
        .name("memfd-tripwire-calibrate".into())
        .spawn(move || -> std::io::Result<()> {
            for _ in 0..ROUNDS {
                wait(&p)?;
                q.ring()?;
            }
            Ok(())
        })
        .ok()?;
    let mut rtts = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        ping.ring().ok()?;
        wait(&pong).ok()?;
        rtts.push(start.elapsed());
    }
    echo.join().ok()?.ok()?;
    rtts.sort_unstable();
    Some(rtts[ROUNDS / 2] / 2)
}

/// Sleeps until `fd` is signalled (at most 1 s), then resets it.
fn wait(fd: &EventFd) -> std::io::Result<()> {
    let second = Instant::now() + Duration::from_secs(1);
    if !crate::sys::wait::ready(fd.as_fd(), crate::sys::wait::PollFlags::IN, Some(second))? {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    fd.drain()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_follows_the_costs_within_bounds() {
        let w = wake_cost();
        assert!(w > Duration::ZERO && w < Duration::from_secs(1), "{w:?}");
        let mut s = Spin::Adaptive {
            ack: Duration::ZERO,
            detect: Duration::ZERO,
        };
        let cheap = s.budget();
        for _ in 0..64 {
            s.record_ack(Duration::from_micros(100));
        }
        assert!(s.budget() >= cheap, "{:?} < {cheap:?}", s.budget());
        assert!(s.budget() <= MAX && s.budget() >= MIN);
        for _ in 0..64 {
            s.record_ack(Duration::from_secs(10));
        }
        assert_eq!(s.budget(), MAX);
        assert_eq!(Spin::Fixed(Duration::ZERO).budget(), Duration::ZERO);
    }
}
