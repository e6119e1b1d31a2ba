//! The one thread per process that runs the compares of every
//! `Backend::Poll` tripwire, and the choice of each one's interval. The
//! wire itself (snapshot, state word, compare) and the interval's measure
//! ([`Timing`](super::poll_shared::Timing)) are in
//! [`poll_shared`](super::poll_shared), the ACK in [`poll`](super::poll).
//!
//! # The thread
//!
//! Started by the first `Poll` tripwire the process creates (a failure to
//! start it fails that creation with `Error::Io`, and the next creation
//! tries again). It never ends: once the last tripwire is gone it parks
//! without a time-out (a sleeping thread, no CPU), ready for the next one.
//! A forked child, whose copy of the registry names a thread it does not
//! have, starts its own with its first `Poll` tripwire (a child forked
//! while the thread held the registry's lock, briefly after a change, would
//! wait forever for it: as everywhere, a threaded process's forked child
//! should only `exec`).
//!
//! # The registry
//!
//! A `static` mutex lists the tripwires (an id, a `Weak` reference, the
//! first due time), and a generation counter tells the thread that the list
//! changed. The thread keeps its own list with each tripwire's next due
//! time, and takes the lock only to read the registry again after a change:
//! never across a compare, so creating or dropping a tripwire never waits
//! for one (a 64 MiB region takes ~8 ms to compare).
//!
//! # A pass
//!
//! The thread compares every tripwire that is due, or due within an eighth
//! of its interval (tripwires compared together are due together again, so
//! the thread wakes a few times per interval, not once per tripwire), then
//! sleeps until the earliest due time, with the timer slack of the
//! shortest interval. While a tripwire is armed inside its busy-poll window
//! (its ACK unparks the thread, so the window starts at once) the thread
//! spins instead of sleeping: it compares that tripwire on each turn, and
//! the others when they are due. The compares are serial: a large region on
//! `Poll` delays the compares of the others, and the start of a busy-poll
//! window, by up to its own compare time.
//!
//! # The interval
//!
//! As given when the user set one
//! ([`Builder::poll_interval`](crate::blocking::Builder::poll_interval)):
//! the user chose the CPU (one over a day is a day: [`FAR`]). Otherwise it
//! adapts to the host, so that a tripwire's polling costs at most ~4 % of a
//! core: `max(1 ms, 25 × the cost of a compare)`, that cost being the
//! compare's CPU time plus the tripwire's share of the thread's own CPU
//! outside compares in one turn in which it was due (going back to sleep
//! and waking up, ~20 µs on a 2-vCPU EPYC VM, more where a wake-up costs
//! more), both measured with `CLOCK_THREAD_CPUTIME_ID`, so a thread
//! preempted by a busy writer is not charged for the time it waited; each
//! smoothed: it falls fast and rises slowly, and one sample counts as at
//! most four times the average. The turns of a tripwire left tripped
//! (nothing to compare until its ACK) count each as one wake-up, never
//! summed into one. A page compares in well under a µs (1 ms); 1 MiB in
//! ~100-120 µs on a 2-vCPU EPYC VM (~3 ms); 16 MiB in ~1.5-2.5 ms (~40-65
//! ms); 64 MiB in ~13 ms (~330 ms). The budget is per tripwire: many large
//! regions add up, and once their compares fill the thread, each waits for
//! the others.
//!
//! # Dropping
//!
//! A tripwire's [`Registration`] holds the only strong reference to its
//! [`Shared`]; the thread holds `Weak`s and upgrades one only for a look or
//! a compare. A drop tells a compare under way to stop (a compare looks
//! every 32 KiB), leaves the registry, then waits for the thread to let go,
//! a few µs (no join): from then on nothing touches the region or rings the
//! eventfd, and the eventfd is closed before the drop returns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::poll_shared::{Compared, Shared};
use crate::Error;

/// The thread's name (`/proc/self/task/*/comm` shows its first 15 bytes).
const THREAD_NAME: &str = "memfd-tripwire-poll";

/// The longest interval the thread keeps: a longer one (the user's, up to
/// `Duration::MAX`) is compared once a day. Kept as it was, an interval
/// too long to add to an instant made its tripwire due at every wake-up
/// of the thread (its due time and "now plus an eighth of it" both
/// saturated to the same far instant).
const FAR: Duration = Duration::from_secs(86_400);

/// A tripwire in the registry.
#[derive(Debug)]
struct Entry {
    id: u64,
    shared: Weak<Shared>,
    /// Whether it busy-polls: the thread then looks at its window each turn.
    busy: bool,
    interval: Duration,
    /// When it is first due.
    due: Instant,
}

#[derive(Debug)]
struct Registry {
    /// Sorted by id (ids only grow).
    entries: Vec<Entry>,
    next_id: u64,
    /// The thread, and the process that started it.
    thread: Option<(Thread, u32)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    entries: Vec::new(),
    next_id: 0,
    thread: None,
});

/// Moved on at every change of the registry's entries: the thread reads
/// them again.
static GENERATION: AtomicU64 = AtomicU64::new(0);

fn registry() -> MutexGuard<'static, Registry> {
    // Nothing in here panics while holding it; were something to, the list
    // would still be whole.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A tripwire's interval as the thread keeps it: at most [`FAR`], so that
/// an instant plus it never overflows.
fn kept(interval: Duration) -> Duration {
    interval.min(FAR)
}

/// A tripwire's place on the poller thread: owns its [`Shared`] (the one
/// strong reference), leaves the registry when dropped.
#[derive(Debug)]
pub(super) struct Registration {
    id: u64,
    /// `None` only while dropping.
    shared: Option<Arc<Shared>>,
    thread: Thread,
    /// The process whose poller thread compares it.
    pid: u32,
}

impl Registration {
    /// Hands `shared` to the poller thread, starting the thread if this
    /// process has none yet.
    pub(super) fn new(shared: Shared) -> Result<Self, Error> {
        let busy = shared.busy_polls();
        let interval = kept(shared.timing.interval());
        let due = Instant::now() + interval;
        let shared = Arc::new(shared);
        let mut reg = registry();
        let pid = std::process::id();
        let thread = match &reg.thread {
            Some((thread, by)) if *by == pid => thread.clone(),
            _ => {
                let thread = std::thread::Builder::new()
                    .name(THREAD_NAME.into())
                    .spawn(run)
                    .map_err(|e| {
                        Error::io(
                            "starting the Poll backend's poller thread (one per process)",
                            e,
                        )
                    })?
                    .thread()
                    .clone();
                reg.thread = Some((thread.clone(), pid));
                thread
            }
        };
        let id = reg.next_id;
        reg.next_id += 1;
        reg.entries.push(Entry {
            id,
            shared: Arc::downgrade(&shared),
            busy,
            interval,
            due,
        });
        GENERATION.fetch_add(1, Ordering::Release);
        drop(reg);
        thread.unpark();
        Ok(Registration {
            id,
            shared: Some(shared),
            thread,
            pid,
        })
    }

    pub(super) fn shared(&self) -> &Shared {
        match &self.shared {
            Some(shared) => shared,
            None => unreachable!("taken only by drop"),
        }
    }

    /// Wakes the thread: a busy-poll window starts now.
    pub(super) fn wake(&self) {
        self.thread.unpark();
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(mut shared) = self.shared.take() else {
            return;
        };
        shared.stop();
        {
            let mut reg = registry();
            if let Ok(i) = reg.entries.binary_search_by_key(&self.id, |e| e.id) {
                reg.entries.remove(i);
            }
            GENERATION.fetch_add(1, Ordering::Release);
        }
        // A forked child has no poller thread: a reference the parent's
        // held at the fork is never let go here, so do not wait for it
        // (the child's copy of the memory is leaked, its fds closed at exit).
        if self.pid != std::process::id() {
            return;
        }
        // The thread holds a strong reference only for a look or a compare,
        // and a compare stops within a chunk now: wake it (it may sleep for
        // a whole interval) and wait for it to let go.
        // Once the count reached zero, its `Weak` no longer upgrades.
        self.thread.unpark();
        let mut turns = 0u32;
        loop {
            match Arc::try_unwrap(shared) {
                Ok(last) => {
                    drop(last);
                    return;
                }
                Err(again) => {
                    shared = again;
                    turns = turns.saturating_add(1);
                    if turns < 64 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }
}

/// The thread's own view of a tripwire.
#[derive(Debug)]
struct Slot {
    id: u64,
    shared: Weak<Shared>,
    busy: bool,
    /// Its interval as of its last compare.
    interval: Duration,
    due: Instant,
}

impl Slot {
    /// Compares now and sets the next due time. `measure`: counts the
    /// cost if the compare covered the whole region, and returns the CPU
    /// time it took, whatever it found (else zero: a busy-poll turn is not
    /// slowed down by the two clock reads, a system call each).
    fn compare(&mut self, shared: &Shared, measure: bool) -> Duration {
        // The thread's CPU time, not the wall clock: a compare preempted by
        // a busy writer (or anything else on the host) costs no more CPU.
        let start = measure.then(thread_cpu);
        // An eventfd write only fails if the fd is broken; the consumer then
        // sees the error from its own read.
        let found = shared.compare().unwrap_or(Compared::Skipped);
        let took = start.map_or(Duration::ZERO, |start| thread_cpu().saturating_sub(start));
        if measure && found == Compared::Whole {
            shared.timing.record(took);
        }
        self.interval = kept(shared.timing.interval());
        self.due = Instant::now() + self.interval;
        took
    }
}

/// The poller thread.
fn run() {
    let mut slots: Vec<Slot> = Vec::new();
    let mut seen = None;
    let mut slack = None;
    // The thread's CPU time when the last pass ended, and the tripwires a
    // pass compared because they were due (whatever the compare found):
    // the CPU of one turn (going to sleep, waking up, this pass), minus
    // its compares, is what their interval's wake-up costs, shared among
    // them. Per pass, never accumulated over passes (#23: the CPU of every
    // pass since the last whole compare was charged to that one, so under
    // a writer that kept the wire tripping, hundreds of wake-ups counted as
    // one and a page's interval went from 1 ms to 183-675 ms at once). A
    // pass with nothing due (a busy-poll turn, an unpark) charges nobody.
    let mut mark = thread_cpu();
    let mut due: Vec<Arc<Shared>> = Vec::new();
    loop {
        let generation = GENERATION.load(Ordering::Acquire);
        if seen != Some(generation) {
            seen = Some(generation);
            resync(&mut slots);
        }
        let (spin, next, spent) = pass(&mut slots, &mut due);
        let now = thread_cpu();
        if !due.is_empty() {
            let share = (now.saturating_sub(mark)).saturating_sub(spent) / due.len() as u32;
            for shared in &due {
                shared.timing.record_wake(share);
            }
        }
        mark = now;
        // Let go before sleeping: a drop waits until this thread holds no
        // strong reference (found by #21: a tripwire compared once and then
        // dropped, alone on the thread with a long interval, hung its drop
        // until the thread next woke).
        due.clear();
        if let Some(least) = slots.iter().map(|s| s.interval).min() {
            let want = super::timer_slack_for(least);
            if slack != Some(want) {
                super::set_timer_slack_for(least);
                slack = Some(want);
            }
        }
        if spin {
            std::hint::spin_loop();
            continue;
        }
        match next {
            None => std::thread::park(),
            Some(at) => {
                let now = Instant::now();
                if at > now {
                    std::thread::park_timeout(at - now);
                }
            }
        }
    }
}

/// Reads the registry again: keeps the slots of the tripwires still there
/// (and their due times), adds the new ones, forgets the dropped ones.
fn resync(slots: &mut Vec<Slot>) {
    let reg = registry();
    let mut old = std::mem::take(slots).into_iter().peekable();
    slots.reserve(reg.entries.len());
    for entry in &reg.entries {
        while old.next_if(|s| s.id < entry.id).is_some() {}
        let slot = old.next_if(|s| s.id == entry.id).unwrap_or_else(|| Slot {
            id: entry.id,
            shared: entry.shared.clone(),
            busy: entry.busy,
            interval: entry.interval,
            due: entry.due,
        });
        slots.push(slot);
    }
}

/// Compares the tripwires that are due (or nearly), and those armed in a
/// busy-poll window; puts those that were due in `due`. Returns whether one
/// is still in its window (spin: do not sleep), the earliest due time, and
/// the CPU time all the compares took.
fn pass(slots: &mut [Slot], due_ones: &mut Vec<Arc<Shared>>) -> (bool, Option<Instant>, Duration) {
    let mut spin = false;
    let mut next: Option<Instant> = None;
    let mut spent = Duration::ZERO;
    let now = Instant::now();
    for slot in slots.iter_mut() {
        let due = slot.due <= now + slot.interval / 8;
        if due || slot.busy {
            // A tripwire being dropped no longer upgrades: skipped, and
            // forgotten at the next resync.
            let Some(shared) = slot.shared.upgrade() else {
                continue;
            };
            if due || shared.in_busy_window() {
                spent += slot.compare(&shared, due);
                if due {
                    due_ones.push(shared.clone());
                }
                spin |= slot.busy && shared.in_busy_window();
            }
        }
        next = Some(next.map_or(slot.due, |n| n.min(slot.due)));
    }
    (spin, next, spent)
}

/// The CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DEFAULT_POLL_INTERVAL;
    use crate::backend::poll::Poller;
    use crate::backend::poll_shared::{COST_SHARE, Timing};

    /// Waits (for as long as it takes: no timing is asserted) until the
    /// poller measured a whole compare of `p`.
    fn measured(p: &Poller) -> (Duration, Duration) {
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            if let (interval, Some(cost)) = p.timing() {
                return (interval, cost);
            }
            assert!(Instant::now() < give_up, "no compare in 60 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// With no interval set, a 16 MiB region (a compare of far more than
    /// 40 µs on any host) gets an interval over 1 ms, 25 times its cost; an
    /// interval set by the user is kept, whatever a compare costs.
    #[test]
    fn the_default_interval_stretches_for_a_big_region_and_a_set_one_is_kept() {
        let (big, _region) = Poller::create(16 << 20, None, Duration::ZERO).unwrap();
        let (interval, cost) = measured(&big);
        assert!(
            interval > DEFAULT_POLL_INTERVAL,
            "{interval:?} for a cost of {cost:?}"
        );
        assert_eq!(interval, DEFAULT_POLL_INTERVAL.max(cost * COST_SHARE));
        drop(big);

        let set = Duration::from_millis(1);
        let (kept, _region) = Poller::create(16 << 20, Some(set), Duration::ZERO).unwrap();
        let (interval, _) = measured(&kept);
        assert_eq!(interval, set);
        drop(kept);

        let (page, _region) = Poller::create(4096, None, Duration::ZERO).unwrap();
        assert_eq!(page.timing().0, DEFAULT_POLL_INTERVAL);
    }

    /// Tripwires created and dropped from several threads at once, some
    /// busy-polling, while the thread keeps comparing a 16 MiB region back
    /// to back (and that one dropped mid-compare): every drop returns, and
    /// every live tripwire sees its store.
    #[test]
    fn creating_and_dropping_while_the_thread_compares() {
        use crate::Backend;
        use crate::blocking::Tripwire;

        let big = Tripwire::builder(16 << 20)
            .backend(Backend::Poll)
            .poll_interval(Duration::from_micros(10))
            .create()
            .unwrap();
        let workers: Vec<_> = (0..4u64)
            .map(|w| {
                std::thread::spawn(move || {
                    for round in 1..=25u64 {
                        let mut b = Tripwire::builder(4096).backend(Backend::Poll);
                        if (w + round) % 2 == 0 {
                            b = b.busy_poll(Duration::from_micros(200));
                        }
                        let mut tw = b.create().unwrap();
                        tw.ack().unwrap();
                        tw.region().write(8 * w as usize, &round).unwrap();
                        let seen = tw.wait_timeout(Duration::from_secs(30)).unwrap();
                        assert!(seen.is_some(), "worker {w}, round {round}: store missed");
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        drop(big);
        for w in workers {
            w.join().unwrap();
        }
    }

    /// A tripwire left tripped (not ACKed) for a while, the poller waking
    /// each interval to find nothing to compare, then ACKed: the CPU of
    /// those wake-ups is not charged to the next whole compare as one
    /// wake-up (#23: it was, and a page's interval went from 1 ms to
    /// 183-675 ms at once under a busy writer; 37-54 ms here after 200 ms
    /// tripped). Coarse: within 20 ms (times `TRIPWIRE_TIME_SCALE`), where
    /// a wake-up of ~20-50 µs makes it 1-1.3 ms.
    #[test]
    fn wake_ups_while_tripped_are_not_charged_as_one() {
        let (mut p, region) = Poller::create(4096, None, Duration::ZERO).unwrap();
        // Before the first compare (due 1 ms after the creation): the
        // first compare trips, before any whole compare set a cost.
        region.write(0, &1u64).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(p.take().unwrap(), "the store tripped the wire");
        let (interval, cost) = measured(&p);
        let scale = std::env::var("TRIPWIRE_TIME_SCALE")
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(1);
        assert!(
            interval <= Duration::from_millis(20) * scale,
            "a page's interval {interval:?} (cost {cost:?}) after 200 ms tripped"
        );
    }

    /// A drop leaves the registry, and returns only once the thread has
    /// let go of the tripwire: here a stand-in for the thread holds a
    /// strong reference for 100 ms, and the drop must wait for it (from
    /// then on nothing touches the region or rings the eventfd).
    #[test]
    fn a_drop_leaves_the_registry_and_waits_for_the_last_reference() {
        use std::sync::atomic::AtomicBool;
        let (p, _region) = Poller::create(4096, None, Duration::ZERO).unwrap();
        let id = p.registration().id;
        let held = p.registration().shared.clone().expect("registered");
        let let_go = Arc::new(AtomicBool::new(false));
        let holder = {
            let let_go = let_go.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let_go.store(true, Ordering::SeqCst);
                drop(held);
            })
        };
        drop(p);
        assert!(
            let_go.load(Ordering::SeqCst),
            "the drop returned while another strong reference was held"
        );
        assert!(
            registry().entries.iter().all(|e| e.id != id),
            "a dropped tripwire is still in the registry"
        );
        holder.join().unwrap();
    }

    /// An interval over a day (here `Duration::MAX`, too long to add to an
    /// instant) is compared once a day: not at creation, and not when the
    /// thread wakes for another tripwire (it was, at every wake-up).
    #[test]
    fn an_interval_over_a_day_is_a_day() {
        let (mut p, region) = Poller::create(4096, Some(Duration::MAX), Duration::ZERO).unwrap();
        region.write(0, &1u64).unwrap();
        // Another tripwire, compared (and so waking the thread) at once.
        let (mut other, other_region) =
            Poller::create(4096, Some(Duration::from_micros(10)), Duration::ZERO).unwrap();
        other_region.write(0, &1u64).unwrap();
        let give_up = Instant::now() + Duration::from_secs(60);
        while !other.take().unwrap() {
            assert!(
                Instant::now() < give_up,
                "the other tripwire: no trip in 60 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!p.take().unwrap(), "compared before its day was up");
        assert!(p.take_final().unwrap(), "the store is there to be seen");
        let slots = {
            let mut slots = Vec::new();
            resync(&mut slots);
            slots
        };
        let slot = slots.iter().find(|s| s.id == p.registration().id).unwrap();
        assert_eq!(slot.interval, FAR);
    }

    /// A change of the registry keeps each slot's due time and interval:
    /// a slot is made fresh (due at once) only for a new tripwire.
    #[test]
    fn a_resync_keeps_the_slots_it_had() {
        let (a, _ra) = Poller::create(4096, None, Duration::ZERO).unwrap();
        let (b, _rb) = Poller::create(4096, None, Duration::ZERO).unwrap();
        let ours = [a.registration().id, b.registration().id];
        let mut slots = Vec::new();
        resync(&mut slots);
        let far = Instant::now() + Duration::from_secs(3600);
        for slot in slots.iter_mut().filter(|s| ours.contains(&s.id)) {
            slot.due = far;
            slot.interval = Duration::from_secs(7);
        }
        drop(a);
        let (c, _rc) = Poller::create(4096, None, Duration::ZERO).unwrap();
        resync(&mut slots);
        let find = |id| slots.iter().find(|s| s.id == id);
        assert!(
            find(ours[0]).is_none(),
            "the dropped tripwire's slot is gone"
        );
        let kept = find(ours[1]).expect("the live tripwire's slot");
        assert_eq!((kept.due, kept.interval), (far, Duration::from_secs(7)));
        let new = find(c.registration().id).expect("a slot for the new one");
        assert!(new.due < far);
    }

    /// Only a whole compare counts towards the cost: a 16 MiB region left
    /// tripped, its due turns finding nothing to compare, keeps the cost
    /// of its whole compares (counting those empty turns would take it
    /// down to a wake-up's, and its interval to 1 ms).
    #[test]
    fn only_whole_compares_count_towards_the_cost() {
        let (mut p, region) = Poller::create(16 << 20, None, Duration::ZERO).unwrap();
        let (interval, cost) = measured(&p);
        region.write(0, &1u64).unwrap();
        let give_up = Instant::now() + Duration::from_secs(60);
        while !p.take_final().unwrap() {
            assert!(Instant::now() < give_up, "no trip in 60 s");
        }
        // Tripped and not ACKed (take_final took the trip and re-armed):
        // trip it again and leave it, for several intervals.
        region.write(0, &2u64).unwrap();
        std::thread::sleep(interval * 8);
        let (_, after) = p.timing();
        let after = after.expect("measured");
        assert!(
            after > cost / 4,
            "cost {cost:?} before, {after:?} after {:?} of turns left tripped",
            interval * 8
        );
    }

    /// The smoothing: the first compare sets the cost; a longer one moves
    /// it up by an eighth of the difference, counted as at most four times
    /// the cost; a shorter one halves the difference.
    #[test]
    fn the_cost_rises_slowly_and_falls_fast() {
        let t = Timing::new(None);
        let us = Duration::from_micros;
        t.record(us(100));
        assert_eq!(t.cost(), Some(us(100)));
        assert_eq!(t.interval(), us(2500));
        t.record(Duration::from_millis(10)); // preempted: counts as 400 µs
        let ns = Duration::from_nanos;
        assert_eq!(t.cost(), Some(ns(100_000 + 300_000 / 8)));
        t.record(us(1));
        assert_eq!(t.cost(), Some(ns(137_500 - (137_500 - 1_000) / 2)));
        let set = Timing::new(Some(us(50)));
        set.record(Duration::from_millis(10));
        assert_eq!(set.interval(), us(50));
    }

    /// The wake-up around a compare counts: a page (a compare of under a
    /// µs) on a host where a wake-up costs 60 µs polls every 1.5 ms, not 1.
    #[test]
    fn a_costly_wake_up_stretches_the_interval() {
        let t = Timing::new(None);
        let us = Duration::from_micros;
        t.record(Duration::from_nanos(800));
        assert_eq!(t.interval(), DEFAULT_POLL_INTERVAL);
        t.record_wake(us(60));
        assert_eq!(t.cost(), Some(Duration::from_nanos(60_800)));
        assert_eq!(t.interval(), Duration::from_nanos(60_800 * 25));
    }
}
