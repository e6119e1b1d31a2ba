//! The hostile peer, played in-process so that ThreadSanitizer can see it:
//! threads that write a region while other threads copy it, through one
//! mapping. A peer process writes through a mapping of its own, at other
//! addresses, where TSan sees nothing; a thread of ours is the same race,
//! visible.
//!
//! The tests pass in a normal build too, and check what a copy racing a
//! writer may return: whole words (8 aligned bytes of the region) that some
//! write stored, never a word torn inside, never a word older than one read
//! before. `scripts/tsan` runs them under ThreadSanitizer, which must report
//! nothing.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use memfd_tripwire::blocking::Tripwire;
use memfd_tripwire::ring::{Sender, SharedRing};
use memfd_tripwire::{Backend, Region};

/// A word whose halves agree, so a word torn inside shows: the low half is
/// `v`, the high half `!v`.
fn word(v: u32) -> u64 {
    u64::from(v) | u64::from(!v) << 32
}

/// `v` if `w` is a whole `word(v)`.
fn unword(w: u64) -> Option<u32> {
    let v = w as u32;
    (w >> 32 == u64::from(!v)).then_some(v)
}

/// Runs `write(v)` for v = 1, 2, ... on another thread until `stop` is set
/// or `max` is reached; returns the last v written.
fn writer(
    stop: &Arc<AtomicBool>,
    max: u32,
    write: impl FnMut(u32) + Send + 'static,
) -> thread::JoinHandle<u32> {
    overlapping_writer(stop, max, None, write)
}

/// [`writer`], which, after writing `max / 2`, waits until `overlap` (the
/// reader's count of reads that saw a value the writer went on from) is
/// above 0: the reader and the writer overlap however the two threads are
/// scheduled, so the race under test happens. The overlap counter is
/// Relaxed: it orders nothing, and TSan sees the accesses around it as the
/// race they are.
fn overlapping_writer(
    stop: &Arc<AtomicBool>,
    max: u32,
    overlap: Option<Arc<AtomicU64>>,
    mut write: impl FnMut(u32) + Send + 'static,
) -> thread::JoinHandle<u32> {
    let stop = stop.clone();
    thread::spawn(move || {
        let mut v = 0;
        while v < max && !stop.load(Ordering::Relaxed) {
            v += 1;
            write(v);
            if let Some(overlap) = overlap.as_ref().filter(|_| v == max / 2) {
                let deadline = Instant::now() + Duration::from_secs(60);
                while overlap.load(Ordering::Relaxed) == 0 {
                    assert!(
                        Instant::now() < deadline,
                        "the reader never read while the writer wrote"
                    );
                    thread::yield_now();
                }
            }
        }
        v
    })
}

/// The Poll backend's poller copies the whole region at every interval while
/// a thread writes it through `Region::write` and `write_bytes` (aligned and
/// not): the wire trips again after every ACK, then stays quiet once the
/// writes stop, and trips again on one more write.
#[test]
fn poll_snapshots_race_a_writing_thread() {
    let mut tw = Tripwire::builder(4096)
        .backend(Backend::Poll)
        .poll_interval(Duration::from_micros(200))
        .create()
        .expect("Poll tripwire");
    let region = tw.region().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&stop, u32::MAX, move |v| {
        let at = 64 * (v as usize % 32);
        region.write(at, &[word(v); 8]).expect("in bounds");
        // Unaligned and not a whole number of words: merged head and tail.
        region
            .write_bytes(2048 + 3 + v as usize % 13, &v.to_le_bytes().repeat(5))
            .expect("in bounds");
        region.write(4093, &[v as u8; 3]).expect("in bounds");
    });
    for round in 0..5 {
        let tripped = tw.wait_timeout(Duration::from_secs(20)).expect("wait");
        assert!(tripped.is_some(), "round {round}: no trip while written");
    }
    stop.store(true, Ordering::Relaxed);
    let last = w.join().expect("writer");
    assert!(last >= 5, "the writer ran");
    // One more write after the writer's, then its trip: once it is taken
    // (and ACKed, with the final contents in the snapshot), no compare of
    // the poller is left under way against an older snapshot (a trip is
    // rung after the compare that found it, and none starts while the wire
    // is tripped), so nothing written before can trip the wire again.
    tw.region().write(3000, &1u64).expect("in bounds");
    let tripped = tw.wait_timeout(Duration::from_secs(20)).expect("wait");
    assert!(tripped.is_some(), "no trip after the last write");
    tw.ack().expect("ack");
    assert_eq!(
        tw.wait_timeout(Duration::from_millis(20)).expect("wait"),
        None,
        "a quiet region trips nothing"
    );
    for i in 0..32 {
        let words: [u64; 8] = tw.region().read(64 * i).expect("in bounds");
        for w in words {
            assert!(w == 0 || unword(w).is_some_and(|v| v <= last), "{w:#x}");
        }
    }
    tw.region().write(100, &7u8).expect("in bounds");
    assert!(
        tw.wait_timeout(Duration::from_secs(20))
            .expect("wait")
            .is_some()
    );
}

/// One thread copies out with `Region::read`/`read_bytes` what another
/// writes with `Region::write`/`write_bytes`: aligned (8 whole words), and
/// unaligned across three words (a merged head, a whole word, a merged
/// tail).
#[test]
fn reads_racing_writes_see_whole_written_words() {
    const N: u32 = 20_000;
    let tw = Tripwire::builder(4096)
        .backend(Backend::Doorbell)
        .create()
        .expect("tripwire");
    let region = tw.region().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let theirs = region.clone();
    let overlap = Arc::new(AtomicU64::new(0));
    let w = overlapping_writer(&stop, N, Some(overlap.clone()), move |v| {
        theirs.write(64, &[word(v); 8]).expect("in bounds");
        // Bytes 259..275: 5 bytes of word 256, word 264, 3 bytes of 272.
        theirs.write_bytes(259, &[v as u8; 16]).expect("in bounds");
    });
    let mut seen = [0u32; 8];
    let mut reads = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = w.is_finished();
        let words: [u64; 8] = region.read(64).expect("in bounds");
        for (i, &w) in words.iter().enumerate() {
            if w == 0 {
                assert_eq!(seen[i], 0, "word {i} went back to 0");
                continue;
            }
            let v = unword(w).unwrap_or_else(|| panic!("word {i} torn: {w:#x}"));
            assert!(v <= N, "word {i}: {v} was never written");
            assert!(v >= seen[i], "word {i} went back from {} to {v}", seen[i]);
            seen[i] = v;
        }
        let mut bytes = [0u8; 16];
        region.read_bytes(259, &mut bytes).expect("in bounds");
        // Within each word of the region, the bytes come from one write.
        for part in [&bytes[..5], &bytes[5..13], &bytes[13..]] {
            assert!(part.iter().all(|&b| b == part[0]), "torn word: {bytes:?}");
        }
        reads += 1;
        // A value the writer went on from: this read overlapped its writes.
        if words
            .iter()
            .any(|&w| unword(w).is_some_and(|v| v > 0 && v < N))
        {
            overlap.fetch_add(1, Ordering::Relaxed);
        }
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the writer did not finish");
    }
    assert_eq!(w.join().expect("writer"), N);
    assert_eq!(seen, [N; 8], "the last read, after the writer ended");
    assert!(reads > 1);
    assert!(
        overlap.load(Ordering::Relaxed) > 0,
        "no read overlapped the writes"
    );
    assert_eq!(region.read::<[u8; 16]>(259).expect("read"), [N as u8; 16]);
}

type Msg = [u64; 8];

/// The ring with its Sender and Receiver on two threads (in this process, so
/// through two mappings of each memfd): every message arrives, in order,
/// whole; on `Poll` the poller copies the wire while the Sender stores the
/// head.
fn ring_across_threads(backend: Backend, n: u64) {
    let mut rx = SharedRing::<Msg>::builder(64)
        .backend(backend)
        .poll_interval(Duration::from_micros(200))
        .create()
        .expect("ring");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let tx = thread::spawn(move || {
        let mut tx = Sender::<Msg>::connect(theirs).expect("connect");
        let mut i = 0;
        while i < n {
            if i % 3 == 0 {
                let batch: Vec<Msg> = (i..(i + 5).min(n)).map(|j| [j; 8]).collect();
                tx.blocking_send_many(&batch).expect("send_many");
                i += batch.len() as u64;
            } else {
                tx.blocking_send([i; 8]).expect("send");
                i += 1;
            }
        }
    });
    rx.share(ours).expect("share");
    let mut next = 0;
    while let Some(m) = rx.blocking_recv().expect("recv") {
        assert_eq!(m, [next; 8]);
        next += 1;
    }
    assert_eq!(next, n);
    tx.join().expect("sender");
}

#[test]
fn ring_on_poll_across_threads() {
    ring_across_threads(Backend::Poll, 5_000);
}

#[test]
fn ring_on_doorbell_across_threads() {
    ring_across_threads(Backend::Doorbell, 5_000);
}

/// A region shorter than a whole number of words: its last bytes are copied
/// byte by byte, raced like the rest.
#[test]
fn the_trailing_bytes_race_too() {
    let tw = Tripwire::builder(29)
        .backend(Backend::Doorbell)
        .create()
        .expect("tripwire");
    let region: Region = tw.region().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let theirs = region.clone();
    let overlap = Arc::new(AtomicU64::new(0));
    let last = 5_000u32 as u8;
    let w = overlapping_writer(&stop, 5_000, Some(overlap.clone()), move |v| {
        theirs.write_bytes(20, &[v as u8; 9]).expect("in bounds");
    });
    while !w.is_finished() {
        let mut bytes = [0u8; 9];
        region.read_bytes(20, &mut bytes).expect("in bounds");
        // Bytes 20..24 are one word; 24..29 are single bytes.
        assert!(bytes[..4].iter().all(|&b| b == bytes[0]), "{bytes:?}");
        // Not 0 and not the last value: read while the writer was at work.
        if bytes[0] != 0 && bytes[0] != last {
            overlap.fetch_add(1, Ordering::Relaxed);
        }
    }
    assert_eq!(w.join().expect("writer"), 5_000);
    assert!(
        overlap.load(Ordering::Relaxed) > 0,
        "no read overlapped the writes"
    );
    assert_eq!(
        region.read::<[u8; 9]>(20).expect("read"),
        [5_000u32 as u8; 9]
    );
}
