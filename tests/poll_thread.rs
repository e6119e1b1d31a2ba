//! `Backend::Poll` compares every tripwire of a process on one shared
//! poller thread (#16), not one thread per tripwire. A test binary of its
//! own, with this one test, so that no other test's threads or fds move the
//! counts.

use std::time::Duration;

use memfd_tripwire::{Backend, blocking::Tripwire};

/// `Threads:` of /proc/self/status.
fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

fn poll_tripwire() -> Tripwire {
    Tripwire::builder(4096)
        .backend(Backend::Poll)
        .create()
        .expect("a Poll tripwire")
}

/// Stores `round` into each region (each at its own offset), then waits
/// for each to see it.
fn each_sees_a_store(tws: &mut [Tripwire], round: u64) {
    for (i, tw) in tws.iter().enumerate() {
        tw.region()
            .write(8 * (i % 512), &round)
            .expect("store into the region");
    }
    for (i, tw) in tws.iter_mut().enumerate() {
        let seen = tw
            .wait_timeout(Duration::from_secs(10))
            .expect("wait_timeout");
        assert!(seen.is_some(), "round {round}: tripwire {i} missed a store");
    }
}

/// Fifty `Poll` tripwires add at most one thread to the process, and each
/// sees a store, also once some were dropped and others created; dropping
/// them all gives their fds back at once (the drop waits for the thread to
/// let go of each, it does not leave it to the thread).
#[test]
fn fifty_poll_tripwires_share_one_thread() {
    let (threads0, fds0) = (threads(), open_fds());
    let mut tws: Vec<Tripwire> = (0..50).map(|_| poll_tripwire()).collect();
    let with_fifty = threads();
    assert!(
        with_fifty <= threads0 + 1,
        "50 Poll tripwires: {with_fifty} threads, {threads0} before"
    );
    each_sees_a_store(&mut tws, 1);

    // Drop every third one, the first and the last among them.
    let mut i = 0;
    tws.retain(|_| {
        i += 1;
        i % 3 != 1 && i != 50
    });
    assert_eq!(tws.len(), 32);
    each_sees_a_store(&mut tws, 2);

    tws.extend((0..10).map(|_| poll_tripwire()));
    let after = threads();
    assert!(
        after <= threads0 + 1,
        "after drops and creations: {after} threads, {threads0} before"
    );
    each_sees_a_store(&mut tws, 3);

    drop(tws);
    assert_eq!(open_fds(), fds0, "fds left behind by dropped tripwires");
    // The thread stays (parked) for the next tripwire.
    assert!(threads() <= threads0 + 1);
    let mut last = vec![poll_tripwire()];
    each_sees_a_store(&mut last, 4);
    assert!(threads() <= threads0 + 1);
}
