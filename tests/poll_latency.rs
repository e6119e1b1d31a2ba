//! `Poll`'s documented latency, "up to one interval", with a coarse bound
//! only: with a 20 ms interval, each store is seen within 1 s (50
//! intervals; times `TRIPWIRE_TIME_SCALE`), so a 10x slower machine still
//! passes while a poller that ignored its interval (or slept for seconds
//! between compares) fails. The figures themselves belong to the
//! benchmarks (`bench/benches/scale.rs`).

use std::time::{Duration, Instant};

use memfd_tripwire::{Backend, blocking::Tripwire};

mod support;
use support::{scaled, with_producer};

const INTERVAL: Duration = Duration::from_millis(20);
const ROUNDS: u64 = 10;

fn bound() -> Duration {
    scaled(INTERVAL * 50)
}

#[test]
fn poll_sees_each_store_within_a_coarse_multiple_of_its_interval() {
    let tw = Tripwire::builder(4096)
        .backend(Backend::Poll)
        .poll_interval(INTERVAL)
        .create()
        .expect("create");
    let (mut tw, producer) = with_producer(tw);
    let mut worst = Duration::ZERO;
    for round in 1..=ROUNDS {
        // Armed: nothing written since the last ACK.
        assert_eq!(tw.try_changed().expect("look"), None, "round {round}");
        let stored = Instant::now();
        producer.region().write(0, &round).expect("store");
        let seen = tw.wait_timeout(bound()).expect("wait");
        let took = stored.elapsed();
        assert!(
            seen.is_some(),
            "round {round}: a store not seen within {:?} (interval {INTERVAL:?})",
            bound()
        );
        assert_eq!(tw.region().read::<u64>(0).expect("read"), round);
        worst = worst.max(took);
    }
    println!("Poll, interval {INTERVAL:?}: {ROUNDS} stores, slowest seen after {worst:?}");
}

/// A producer's last store, made just before it hangs up, is reported
/// before the hang-up even when the poller has not compared since: the look
/// that finds every producer gone compares once more. The interval (60 s)
/// keeps the poller from comparing on its own first. (Found by cargo
/// mutants: `take_final` made `Ok(false)` survived.)
#[test]
fn the_last_store_before_a_hang_up_is_reported_first() {
    let tw = Tripwire::builder(4096)
        .backend(Backend::Poll)
        .poll_interval(Duration::from_secs(60))
        .create()
        .expect("create");
    let (mut tw, producer) = with_producer(tw);
    assert_eq!(tw.try_changed().expect("look"), None);
    producer.region().write(0, &7u64).expect("store");
    drop(producer);
    let first = tw.wait_timeout(scaled(Duration::from_secs(10)));
    assert!(
        matches!(first, Ok(Some(_))),
        "the last store was not reported before the hang-up: {first:?}"
    );
    assert_eq!(tw.region().read::<u64>(0).expect("read"), 7);
    let then = tw.wait_timeout(scaled(Duration::from_secs(10)));
    assert!(
        matches!(&then, Err(e) if memfd_tripwire::Error::is_closed(e)),
        "then the clean close: {then:?}"
    );
}

/// `UserfaultAsync` scans at the interval it was built with, which its
/// producer's agent learns from a message after the handshake (found by
/// cargo mutants: an agent that ignored that message, and went on
/// scanning every millisecond, passed every test). Two stores, each made
/// right after the trip of the one before was taken: the second is found
/// by the next periodic scan, one interval (1 s) after the scan that found
/// the first, so the two trips are at least half an interval apart. (An
/// agent that scanned every millisecond reports it at once; a slower
/// machine only makes the gap longer.)
#[test]
fn userfault_async_scans_at_its_configured_interval() {
    const SCAN: Duration = Duration::from_secs(1);
    let created = Tripwire::builder(4096)
        .backend(Backend::UserfaultAsync)
        .poll_interval(SCAN)
        .create();
    let Some(tw) = support::or_skip("userfault_async", created) else {
        return;
    };
    let (mut tw, producer) = with_producer(tw);
    let mut trips = Vec::new();
    for round in 1..=2u64 {
        producer.region().write(0, &round).expect("store");
        let seen = tw.wait_timeout(scaled(SCAN * 10)).expect("wait");
        assert!(
            seen.is_some(),
            "round {round}: the store was never reported"
        );
        trips.push(Instant::now());
    }
    let gap = trips[1] - trips[0];
    assert!(
        gap >= SCAN / 2,
        "the second trip came {gap:?} after the first: the agent did not scan at its {SCAN:?} interval"
    );
}
