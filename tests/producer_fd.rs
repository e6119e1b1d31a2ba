//! The fd a producer that knows nothing of this crate maps, the backend
//! that picks a tripwire such a producer can use, and `Poll`'s busy-poll
//! mode for a doorbell page (#14). Host tests; the RFC selftest's scenarios
//! against an unmodified producer are in the conformance suite.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use memfd_tripwire::{Backend, BackendKind, Error, blocking::Tripwire};

mod support;

/// The tests take turns: one of them counts the CPU time of every thread
/// of this crate in the process, which the others' tripwires would add to.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `Unmodified` gives `Kernel` or `Poll`, and a producer fd; the backends
/// that need cooperation refuse with the reason and the way out.
#[test]
fn producer_fd_is_there_exactly_where_a_producer_needs_nothing() {
    let _serial = serial();
    let tw = Tripwire::builder(4096)
        .backend(Backend::Unmodified)
        .create()
        .expect("Kernel or Poll");
    assert!(matches!(
        tw.backend(),
        BackendKind::Kernel | BackendKind::Poll
    ));
    assert!(tw.producer_fd().is_ok());
    let poll = Tripwire::builder(4096)
        .backend(Backend::Poll)
        .create()
        .unwrap();
    assert!(poll.producer_fd().is_ok());
    let doorbell = Tripwire::builder(4096)
        .backend(Backend::Doorbell)
        .create()
        .unwrap();
    match doorbell.producer_fd() {
        Err(Error::Unavailable { backend, reason }) => {
            assert_eq!(backend, BackendKind::Doorbell);
            assert!(
                reason.contains("notify") && reason.contains("Unmodified"),
                "{reason}"
            );
        }
        other => panic!("Doorbell gave {other:?}"),
    }
    match Tripwire::builder(4096).backend(Backend::Userfault).create() {
        Ok(uffd) => assert!(matches!(uffd.producer_fd(), Err(Error::Unavailable { .. }))),
        Err(e @ Error::Unavailable { .. }) => support::skipping(
            "userfault",
            &format!("the Userfault case of producer_fd: {e}"),
        ),
        Err(e) => panic!("creating a Userfault tripwire: {e}"),
    }
    assert_eq!(
        "unmodified".parse::<Backend>().unwrap(),
        Backend::Unmodified
    );
}

/// Busy-poll is for `Poll` and small regions, with a bounded window; a zero
/// interval stays refused and points at it.
#[test]
fn busy_poll_is_bounded_and_only_where_it_pays() {
    let _serial = serial();
    let refused = |b: memfd_tripwire::blocking::Builder, why: &str| match b.create() {
        Err(e) => assert!(e.to_string().contains(why), "{e}"),
        Ok(tw) => panic!("accepted {tw:?}"),
    };
    let ms = Duration::from_millis;
    refused(
        Tripwire::builder(4096)
            .backend(Backend::Doorbell)
            .busy_poll(ms(1)),
        "Backend::Poll",
    );
    refused(
        Tripwire::builder(1 << 20)
            .backend(Backend::Poll)
            .busy_poll(ms(1)),
        "tripwire of its own",
    );
    refused(
        Tripwire::builder(4096)
            .backend(Backend::Poll)
            .busy_poll(ms(101)),
        "100ms",
    );
    refused(
        Tripwire::builder(4096)
            .backend(Backend::Poll)
            .poll_interval(Duration::ZERO),
        "busy_poll",
    );
}

/// CPU time of this crate's threads in this process, in clock ticks. A
/// thread's `comm` keeps 15 bytes of its name: the poller
/// (`memfd-tripwire-poll`), the agents and the hang-up thread all read
/// `memfd-tripwire-`, so all are counted; the tests of this file take turns
/// ([`serial`]), so the only busy one is the poller of the test that counts.
fn crate_thread_ticks() -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("memfd-tripwire") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split(' ').collect();
        // utime and stime: fields 14 and 15 of stat, 12 and 13 after ") ".
        ticks += fields
            .get(11)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
        ticks += fields
            .get(12)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ticks
}

/// Within its window the poller sees a store, where the interval alone
/// (a minute) would not within the wait; after the window it sleeps again:
/// the CPU it burns is bounded by the window per ACK, not "spin forever".
/// The bounds are coarse, not latencies: the wait is up to five tries of
/// 1 s against the minute's interval, and after the window the crate's threads may burn at
/// most 400 ms of CPU in 1.5 s (one 100 ms window, and slack), where a
/// poller that kept spinning burns the whole 1.5 s of a CPU, or half of it
/// on a busy machine.
#[test]
fn busy_poll_sees_a_store_in_its_window_and_then_sleeps() {
    let _serial = serial();
    let mut tw = Tripwire::builder(4096)
        .backend(Backend::Poll)
        .poll_interval(Duration::from_secs(60))
        .busy_poll(Duration::from_millis(100))
        .create()
        .unwrap();
    // Two rounds: an ACK opens a window, and a store 5 ms into it (after
    // the compare that the ACK's wake-up makes at once) is seen only if the
    // poller keeps comparing through the window: without the spin, or
    // without the wake-up, the next compare is a minute away. A host so
    // slow that the window passed before the store tries again with a new
    // ACK; correct code is seen within the first try's second.
    for round in 1..=2u64 {
        if round == 2 {
            // The windows so far (the creation's, round 1's ACK's: 100 ms
            // each) are over: the poller sleeps for its minute, and only
            // the next ACK's wake-up starts a window in time (round 2 in
            // the first window let a mutant without the wake-up survive).
            std::thread::sleep(Duration::from_millis(300));
        }
        let seen = (0..5u64).any(|attempt| {
            tw.ack().unwrap();
            std::thread::sleep(Duration::from_millis(5));
            tw.region().write(0, &(round * 100 + attempt)).unwrap();
            tw.wait_timeout(Duration::from_secs(1)).unwrap().is_some()
        });
        assert!(
            seen,
            "round {round}: a store 5 ms after the ACK went unseen, 5 tries"
        );
    }
    // An ACK, then nothing: the window ends and the poller sleeps.
    tw.ack().unwrap();
    let before = crate_thread_ticks();
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let spent = crate_thread_ticks() - before;
    let tick = Duration::from_millis(10); // USER_HZ = 100 on Linux
    assert!(
        tick * spent as u32 <= Duration::from_millis(400),
        "the poller burnt {spent} ticks in {:?} after one 100 ms window",
        start.elapsed()
    );
    drop(tw);
}
