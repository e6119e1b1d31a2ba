//! The scenarios, each a property named after what it guards. Each runs on
//! every backend unless its entry in [`ALL`] names one.

#![allow(clippy::single_range_in_vec_init)] // lists of page ranges with one entry
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use libtest_mimic::Failed;
use memfd_tripwire::{BackendKind, Error, Producer, Tripwire, blocking};

use crate::util::{
    Ctx, Outcome, create, ensure, expect_trip, ms, pair, reap, runtime, settles, share_with_child,
    skip, spawn,
};

/// A scenario: its name, its body, and the backends it runs on (all when
/// empty).
type Scenario = (&'static str, fn(&Ctx) -> Outcome, &'static [BackendKind]);

const ANY: &[BackendKind] = &[];
const BOTH_USERFAULTS: &[BackendKind] = &[BackendKind::Userfault, BackendKind::UserfaultAsync];

pub const ALL: &[Scenario] = &[
    ("sequential_life_cycle", sequential_life_cycle, ANY),
    ("odd_length_region_works", odd_length_region_works, ANY),
    (
        "multi_page_each_page_trips",
        multi_page_each_page_trips,
        ANY,
    ),
    (
        "first_write_to_untouched_page_trips",
        first_write_to_untouched_page_trips,
        ANY,
    ),
    (
        "write_after_ack_trips_again",
        write_after_ack_trips_again,
        ANY,
    ),
    (
        "explicit_ack_takes_the_trip_and_rearms",
        explicit_ack_takes_the_trip_and_rearms,
        ANY,
    ),
    (
        "cross_process_write_is_seen",
        cross_process_write_is_seen,
        ANY,
    ),
    ("cross_process_1000_rounds", cross_process_1000_rounds, ANY),
    (
        "no_lost_events_free_running_writer",
        no_lost_events_free_running_writer,
        ANY,
    ),
    (
        "n_writer_processes_all_writes_visible",
        n_writer_processes_all_writes_visible,
        ANY,
    ),
    ("quiet_wire_stays_quiet", quiet_wire_stays_quiet, ANY),
    (
        "paced_writer_at_most_two_epochs_per_write",
        paced_writer_at_most_two_epochs_per_write,
        ANY,
    ),
    (
        "dropped_changed_loses_nothing",
        dropped_changed_loses_nothing,
        ANY,
    ),
    (
        "cancelled_in_select_loses_nothing",
        cancelled_in_select_loses_nothing,
        ANY,
    ),
    ("stream_with_combinators", stream_with_combinators, ANY),
    ("mio_source_reports_trip", mio_source_reports_trip, ANY),
    ("bad_inputs_are_errors", bad_inputs_are_errors, ANY),
    (
        "producer_killed_pending_trip_then_broken_pipe",
        producer_killed_pending_trip_then_broken_pipe,
        ANY,
    ),
    (
        "producer_dropped_is_a_clean_close",
        producer_dropped_is_a_clean_close,
        ANY,
    ),
    (
        "producer_panicked_is_a_death",
        producer_panicked_is_a_death,
        ANY,
    ),
    (
        "notify_learns_of_a_closed_consumer_at_its_next_call",
        notify_learns_of_a_closed_consumer_at_its_next_call,
        &[BackendKind::Doorbell],
    ),
    (
        "notify_after_consumer_died_errors",
        notify_after_consumer_died_errors,
        &[BackendKind::Doorbell],
    ),
    (
        "notify_learns_of_a_killed_consumer_at_its_next_call",
        notify_learns_of_a_killed_consumer_at_its_next_call,
        &[BackendKind::Doorbell],
    ),
    (
        "from_fd_inherited_producer",
        from_fd_inherited_producer,
        &[BackendKind::Kernel],
    ),
    (
        "fd_exhaustion_names_ulimit",
        fd_exhaustion_names_ulimit,
        ANY,
    ),
    ("fds_per_tripwire", fds_per_tripwire, ANY),
    (
        "ring_1e6_messages_in_order",
        ring_1e6_messages_in_order,
        ANY,
    ),
    (
        "ring_batched_receive_in_order",
        ring_batched_receive_in_order,
        ANY,
    ),
    (
        "ring_full_ring_backpressure",
        ring_full_ring_backpressure,
        ANY,
    ),
    (
        "ring_sender_killed_is_peer_died",
        ring_sender_killed_is_peer_died,
        ANY,
    ),
    (
        "ring_try_recv_tells_a_death_from_empty",
        ring_try_recv_tells_a_death_from_empty,
        ANY,
    ),
    (
        "ring_receiver_gone_sender_errors",
        ring_receiver_gone_sender_errors,
        ANY,
    ),
    (
        "ring_layout_mismatch_refused_on_both_sides",
        ring_layout_mismatch_refused_on_both_sides,
        ANY,
    ),
    (
        "second_ftruncate_is_refused",
        second_ftruncate_is_refused,
        &[BackendKind::Kernel],
    ),
    (
        "ack_reports_exactly_the_written_pages",
        ack_reports_exactly_the_written_pages,
        BOTH_USERFAULTS,
    ),
    (
        "consumer_mapping_is_not_watched",
        consumer_mapping_is_not_watched,
        BOTH_USERFAULTS,
    ),
    (
        "store_does_not_stall_when_consumer_stopped",
        store_does_not_stall_when_consumer_stopped,
        BOTH_USERFAULTS,
    ),
    (
        "racing_acks_bound_the_faults_of_a_store",
        racing_acks_bound_the_faults_of_a_store,
        BOTH_USERFAULTS,
    ),
    (
        "unprivileged_producer_works",
        unprivileged_producer_works,
        BOTH_USERFAULTS,
    ),
];

const PAGE: usize = 4096;

fn write(p: &Producer, offset: usize, v: u64) -> Result<(), String> {
    p.region().write(offset, &v).map_err(|e| e.to_string())?;
    p.notify().map_err(|e| format!("notify: {e}"))
}

/// No trip comes with no write. A negative check can only be bounded: the
/// bound is many Poll intervals (1 ms by default; a stale snapshot trips
/// at the next compare) and a wire that stays tripped trips at once. A
/// correct crate cannot fail it on any host; a slower host only makes it
/// less sensitive.
fn quiet(tw: &mut blocking::Tripwire, what: &str) -> Outcome {
    let e = tw.wait_timeout(ms(100))?;
    ensure(e.is_none(), || {
        format!("{what}: tripped with no write ({e:?})")
    })
}

fn sequential_life_cycle(ctx: &Ctx) -> Outcome {
    let (mut tw, p) = pair(ctx, PAGE)?;
    ensure(tw.backend() == ctx.kind, || {
        format!("backend {} != {}", tw.backend(), ctx.kind)
    })?;
    ensure(tw.try_changed()?.is_none(), || {
        "fresh tripwire is tripped".into()
    })?;
    write(&p, 0, 0x41)?;
    let e1 = tw
        .wait_timeout(ms(5000))?
        .ok_or("no trip after the first write")?;
    ensure(tw.region().read::<u64>(0)? == 0x41, || {
        "first write not visible after ACK".into()
    })?;
    quiet(&mut tw, "after the ACK")?;
    write(&p, 0, 0x42)?;
    let e2 = tw
        .wait_timeout(ms(5000))?
        .ok_or("no trip after the second write")?;
    ensure(e1.get() == 1 && e2 > e1, || {
        format!("epochs {e1:?}, {e2:?}")
    })?;
    ensure(tw.region().read::<u64>(0)? == 0x42, || {
        "second write not visible".into()
    })
}

fn multi_page_each_page_trips(ctx: &Ctx) -> Outcome {
    let (mut tw, p) = pair(ctx, 4 * PAGE)?;
    for page in 0..4 {
        write(&p, page * PAGE + 8, page as u64 + 1)?;
        expect_trip(&mut tw, ms(5000), &format!("page {page}"))?;
        let v = tw.region().read::<u64>(page * PAGE + 8)?;
        ensure(v == page as u64 + 1, || format!("page {page}: read {v}"))?;
        quiet(&mut tw, &format!("after page {page}"))?;
    }
    Ok(())
}

fn first_write_to_untouched_page_trips(ctx: &Ctx) -> Outcome {
    let (mut tw, p) = pair(ctx, 16 * PAGE)?;
    write(&p, 15 * PAGE + 100, 7)?;
    expect_trip(&mut tw, ms(5000), "write to the last, never-touched page")?;
    ensure(tw.region().read::<u64>(15 * PAGE + 100)? == 7, || {
        "value not visible".into()
    })
}

fn write_after_ack_trips_again(ctx: &Ctx) -> Outcome {
    let (tw, p) = pair(ctx, PAGE)?;
    runtime()?.block_on(async move {
        let mut tw = Tripwire::new(tw)?;
        let mut last = memfd_tripwire::Epoch::ZERO;
        for i in 1..=20u64 {
            write(&p, 0, i)?;
            let e = tokio::time::timeout(ms(5000), tw.changed())
                .await
                .map_err(|_| format!("write {i} after an ACK did not trip"))??;
            ensure(e > last, || format!("epoch went from {last:?} to {e:?}"))?;
            last = e;
            let v = tw.region().read::<u64>(0)?;
            ensure(v == i, || format!("round {i}: read {v}"))?;
        }
        Ok(())
    })
}

/// `ack()`, for consumers that ACK on their own schedule, takes a pending
/// trip (no stale trip is left for the next look) and re-arms: the next
/// write trips again. (Found by cargo mutants: a Doorbell `ack` that did
/// nothing survived, as every other scenario ACKs through `try_changed`.)
fn explicit_ack_takes_the_trip_and_rearms(ctx: &Ctx) -> Outcome {
    let (mut tw, p) = pair(ctx, PAGE)?;
    for i in 1..=3u64 {
        write(&p, 0, i)?;
        // Wait for the trip without taking it: readiness, then the level.
        let deadline = Instant::now() + ms(5000);
        loop {
            tw.wait_ready(Some(ms(100)))?;
            if rustix::event::poll(
                &mut [rustix::event::PollFd::new(
                    &tw,
                    rustix::event::PollFlags::IN,
                )],
                Some(&rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                }),
            )? > 0
            {
                break;
            }
            ensure(Instant::now() < deadline, || {
                format!("write {i} did not trip")
            })?;
        }
        tw.ack()?;
        ensure(tw.region().read::<u64>(0)? == i, || {
            format!("round {i}: the write is not visible after ack()")
        })?;
        quiet(&mut tw, &format!("round {i}: after ack()"))?;
    }
    Ok(())
}

fn cross_process_write_is_seen(ctx: &Ctx) -> Outcome {
    let mut tw = create(ctx, PAGE)?;
    let child = share_with_child(
        &mut tw,
        "write_once",
        &[("OFFSET", "16".into()), ("VALUE", "123456789".into())],
    )?;
    expect_trip(&mut tw, ms(10_000), "write from the child")?;
    reap(child, "writer")?;
    let v = tw.region().read::<u64>(16)?;
    ensure(v == 123_456_789, || format!("read {v}"))
}

fn cross_process_1000_rounds(ctx: &Ctx) -> Outcome {
    const ROUNDS: u64 = 1000;
    let mut tw = create(ctx, PAGE)?;
    let (sock, theirs) = UnixStream::pair()?;
    let (ours, child_sync) = UnixStream::pair()?;
    let child = spawn(
        "rounds",
        &[("ROUNDS", ROUNDS.to_string())],
        sock.into(),
        Some(child_sync.into()),
    )?;
    tw.share(theirs)?;
    let mut ours = ours;
    for i in 1..=ROUNDS {
        // A trip can come before its store lands (the fault fires first):
        // wait until the value is there, each wait bounded.
        loop {
            expect_trip(&mut tw, ms(10_000), &format!("round {i}"))?;
            let v = tw.region().read::<u64>(0)?;
            if v == i {
                break;
            }
            ensure(v == i - 1, || format!("round {i}: read {v}"))?;
        }
        ours.write_all(&[1])?;
    }
    reap(child, "rounds")
}

fn no_lost_events_free_running_writer(ctx: &Ctx) -> Outcome {
    let (mut tw, p) = pair(ctx, PAGE)?;
    let seen = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let run_for = ms(1000);
    let writer = {
        let (seen, done) = (seen.clone(), done.clone());
        std::thread::spawn(move || -> Result<(u64, Producer), String> {
            let start = Instant::now();
            let mut i = 0u64;
            while start.elapsed() < run_for {
                i += 1;
                write(&p, 0, i)?;
                // Every so often stop and insist that the last write is seen:
                // a write lost to an ACK race would hang here.
                if i % 256 == 0 {
                    let deadline = Instant::now() + ms(5000);
                    while seen.load(Ordering::Acquire) < i {
                        if Instant::now() > deadline {
                            return Err(format!(
                                "write {i} never seen (consumer at {})",
                                seen.load(Ordering::Acquire)
                            ));
                        }
                        // Sleep, not spin: on one emulated vCPU a spinning
                        // writer starves the Poll thread it waits for.
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            }
            done.store(true, Ordering::Release);
            Ok((i, p)) // the producer stays connected until the checks are done
        })
    };
    let mut last = 0u64;
    let mut trips = 0u64;
    let mut take = |tw: &mut blocking::Tripwire, last: &mut u64| -> Outcome {
        trips += 1;
        let v = tw.region().read::<u64>(0)?;
        ensure(v >= *last, || format!("value went back from {last} to {v}"))?;
        *last = v;
        seen.store(v, Ordering::Release);
        Ok(())
    };
    while !done.load(Ordering::Acquire) && !writer.is_finished() {
        if tw.wait_timeout(ms(100))?.is_some() {
            take(&mut tw, &mut last)?;
        }
    }
    let (total, _producer) = writer.join().map_err(|_| "writer panicked")??;
    // The writer is done: its last write must trip (unless already seen),
    // and then the wire must go quiet.
    while last < total {
        expect_trip(
            &mut tw,
            ms(5000),
            &format!("the last write {total} (saw {last})"),
        )?;
        take(&mut tw, &mut last)?;
    }
    ensure(last == total, || format!("saw {last}, wrote {total}"))?;
    settles(&mut tw, "after the last write")?;
    eprintln!("  {}: {total} writes, {trips} trips", ctx.kind);
    Ok(())
}

/// Several producer processes store into their own slots at once. The
/// consumer must take a trip after which every slot reads the writer's last
/// value while every writer is still connected (the writers stay until told
/// to go, so a hang-up cannot stand in for the last trip); then, with every
/// store done, the wire goes quiet; then, as the writers leave, the hang-up
/// is reported. A backend that never trips fails at the first step, one
/// that never re-arms at the second.
fn n_writer_processes_all_writes_visible(ctx: &Ctx) -> Outcome {
    use std::io::Read;
    const WRITERS: usize = 4;
    let count: u64 = if ctx.kind == BackendKind::Poll {
        500
    } else {
        5000
    };
    let mut tw = create(ctx, WRITERS * PAGE)?;
    let mut writers = Vec::new();
    for slot in 0..WRITERS {
        let (ours, theirs) = UnixStream::pair()?;
        let (sync, child_sync) = UnixStream::pair()?;
        let child = spawn(
            "writer_slot",
            &[
                ("SLOT", slot.to_string()),
                ("STRIDE", PAGE.to_string()),
                ("COUNT", count.to_string()),
            ],
            theirs.into(),
            Some(child_sync.into()),
        )?;
        let child = KillOnDrop(child);
        tw.share(ours)?;
        writers.push((child, sync));
    }
    let mut last = [0u64; WRITERS];
    let mut trips = 0u64;
    let deadline = Instant::now() + ms(30_000);
    while last.iter().any(|&v| v != count) {
        ensure(Instant::now() < deadline, || {
            format!("after {trips} trips the slots read {last:?}, not {count} each")
        })?;
        match tw.wait_timeout(ms(1000)) {
            Ok(None) => {}
            Ok(Some(_)) => {
                trips += 1;
                for (slot, seen) in last.iter_mut().enumerate() {
                    let v = tw.region().read::<u64>(slot * PAGE)?;
                    ensure(v >= *seen && v <= count, || {
                        format!("slot {slot}: {v} after {seen}")
                    })?;
                    *seen = v;
                }
            }
            Err(e) => {
                return Err(format!(
                    "after {trips} trips, every writer still connected, slots {last:?}: {e}"
                )
                .into());
            }
        }
    }
    ensure(trips >= 1, || "no trip".into())?;
    // Every writer's stores have returned: nothing more may trip.
    for (slot, (_, sync)) in writers.iter_mut().enumerate() {
        let mut d = [0u8];
        sync.set_read_timeout(Some(ms(30_000)))?;
        sync.read_exact(&mut d)
            .map_err(|e| format!("writer {slot} did not finish: {e}"))?;
    }
    settles(&mut tw, "after the writers' last stores")?;
    eprintln!(
        "  {}: {WRITERS} writers x {count} stores, {trips} trips",
        ctx.kind
    );
    for (slot, (mut child, sync)) in writers.into_iter().enumerate() {
        drop(sync);
        let status = child.0.wait()?;
        ensure(status.success(), || {
            format!("writer {slot} exited {status}")
        })?;
    }
    // A producer gone may trip once more (UserfaultAsync reports the whole
    // region then: its last stores may not have been scanned), then the
    // hang-up.
    for _ in 0..=WRITERS {
        match tw.wait_timeout(ms(5000)) {
            Ok(Some(_)) => {}
            // Each writer dropped its Producer before it exited.
            Err(e) if Error::is_closed(&e) => return Ok(()),
            other => return Err(format!("after every writer left: {other:?}").into()),
        }
    }
    Err("still tripping after every writer left, and no hang-up".into())
}

fn quiet_wire_stays_quiet(ctx: &Ctx) -> Outcome {
    let (tw, p) = pair(ctx, PAGE)?;
    runtime()?.block_on(async move {
        let mut tw = Tripwire::new(tw)?;
        write(&p, 0, 1)?;
        tokio::time::timeout(ms(5000), tw.changed())
            .await
            .map_err(|_| "no trip")??;
        let _ = tw.region().read::<u64>(0)?; // reading must not trip it
        let r = tokio::time::timeout(ms(200), tw.changed()).await;
        ensure(r.is_err(), || {
            format!("changed() returned {r:?} with no write")
        })
    })
}

/// A paced writer (a store, then a pause longer than an ACK round trip)
/// costs the consumer at most 2 epochs per write: its trip, and at most one
/// more if that trip came before the store landed. The writer is pinned to
/// the CPU it started on, before `connect`, so that on Userfault its agent
/// shares that CPU (as on a small or busy host): a store that faulted runs
/// again only when that CPU is free, and an ACK that re-protected its page
/// before then made it fault and trip again, once per ACK (#23: up to 13
/// epochs per write). Each write waits until the consumer has seen it; the
/// epochs until then are that write's. A bound on counts, not on time.
fn paced_writer_at_most_two_epochs_per_write(ctx: &Ctx) -> Outcome {
    const WRITES: u64 = 100;
    let mut tw = create(ctx, PAGE)?;
    let (ours, theirs) = UnixStream::pair()?;
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<u64>();
    let writer = std::thread::spawn(move || -> Result<Producer, String> {
        let cpu = rustix::thread::sched_getcpu();
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set)
            .map_err(|e| format!("pinning the writer to CPU {cpu}: {e}"))?;
        // On Userfault and UserfaultAsync the agent thread started here
        // inherits the pin: it shares the writer's CPU.
        let p = Producer::connect(theirs);
        let written = p.as_ref().map_err(|e| e.to_string()).and_then(|p| {
            for i in 1..=WRITES {
                write(p, 0, i)?;
                match seen_rx.recv_timeout(ms(10_000)) {
                    Ok(v) if v == i => {}
                    other => return Err(format!("write {i}: the consumer said {other:?}")),
                }
                std::thread::sleep(ms(3));
            }
            Ok(())
        });
        written?;
        p.map_err(|e| e.to_string())
    });
    tw.share(ours)?;
    let mut per_write = Vec::new();
    let outcome = (|| -> Outcome {
        for i in 1..=WRITES {
            let mut epochs = 0u64;
            loop {
                expect_trip(&mut tw, ms(10_000), &format!("write {i}"))?;
                epochs += 1;
                let v = tw.region().read::<u64>(0)?;
                if v == i {
                    break;
                }
                ensure(v == i - 1, || format!("write {i}: read {v}"))?;
            }
            per_write.push(epochs);
            seen_tx.send(i).map_err(|_| "the writer is gone")?;
        }
        Ok(())
    })();
    drop(seen_tx);
    let p = writer.join().map_err(|_| "writer panicked")?;
    outcome?;
    let p = p?;
    let total: u64 = per_write.iter().sum();
    let worst = per_write.iter().copied().max().unwrap_or(0);
    // On Kernel the trip fires at the fault, before the store lands, and
    // the kernel retries the store after the fault: an ACK that re-protects
    // the page first makes it fault (and trip) again, so a store can race
    // the consumer's ACK more than once (seen in the VM: 1 of 100 writes
    // took 3 epochs). The bound there is per write 4, and 2 on average;
    // the emulations wait for the store to land (Userfault) or never trap.
    let (per_write_max, total_max) = match ctx.kind {
        BackendKind::Kernel => (4, 2 * WRITES),
        _ => (2, 2 * WRITES),
    };
    let over: Vec<String> = (1..)
        .zip(&per_write)
        .filter(|&(_, &n)| n > per_write_max)
        .map(|(i, n)| format!("write {i}: {n}"))
        .collect();
    eprintln!(
        "  {}: {WRITES} paced writes, {total} epochs (worst {worst} for one write), \
         {} trapped stores",
        ctx.kind,
        p.trapped_stores()
    );
    ensure(over.is_empty() && total <= total_max, || {
        format!(
            "{} of {WRITES} paced writes cost more than {per_write_max} epochs ({}; {total} \
             in all, at most {total_max} allowed): the consumer is woken again and again for \
             one store",
            over.len(),
            over[..over.len().min(8)].join(", ")
        )
    })
}

/// A `changed()` future dropped with a trip pending for it loses nothing:
/// one waits (polled, pending), the write trips the wire and wakes it, and
/// it is dropped unpolled; then one polled once with the trip there (it
/// takes it, or, with an ACK in flight, is pending) is dropped too. The
/// next `changed()` must still report the write. On every backend.
fn dropped_changed_loses_nothing(ctx: &Ctx) -> Outcome {
    let (tw, p) = pair(ctx, PAGE)?;
    runtime()?.block_on(async move {
        let mut tw = Tripwire::new(tw)?;
        {
            let mut fut = tokio_test::task::spawn(tw.changed());
            ensure(fut.poll().is_pending(), || {
                "changed() ready with no write".into()
            })?;
            write(&p, 0, 5)?;
            // The trip reaches the waiting future: it is woken.
            let deadline = Instant::now() + ms(5000);
            while !fut.is_woken() {
                ensure(Instant::now() < deadline, || {
                    "the write did not wake the waiting changed()".into()
                })?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        } // dropped, woken for a pending trip, unpolled
        let taken = {
            let mut fut = tokio_test::task::spawn(tw.changed());
            match fut.poll() {
                std::task::Poll::Ready(r) => Some(r?),
                std::task::Poll::Pending => None, // dropped mid-take
            }
        };
        let e = match taken {
            Some(e) => e,
            None => tokio::time::timeout(ms(5000), tw.changed())
                .await
                .map_err(|_| "the trip was lost with the dropped futures")??,
        };
        ensure(e.get() == 1, || format!("epoch {e:?}"))?;
        ensure(tw.region().read::<u64>(0)? == 5, || {
            "value not visible".into()
        })
    })
}

/// `changed()` raced in `select!` against a branch that wins every other
/// time (a `yield_now`, ready on its second poll): many futures are
/// cancelled after being polled, some with a trip pending. The writer
/// waits for each value to be seen before the next, so a lost trip
/// stalls it.
fn cancelled_in_select_loses_nothing(ctx: &Ctx) -> Outcome {
    let (tw, p) = pair(ctx, PAGE)?;
    const WRITES: u64 = 200;
    let seen = Arc::new(AtomicU64::new(0));
    let writer = {
        let seen = seen.clone();
        std::thread::spawn(move || -> Result<(), String> {
            for i in 1..=WRITES {
                write(&p, 0, i)?;
                let deadline = Instant::now() + ms(5000);
                while seen.load(Ordering::Acquire) < i {
                    if Instant::now() > deadline {
                        return Err(format!("write {i} never seen: its trip was lost"));
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            Ok(())
        })
    };
    let rt = runtime()?;
    let writer_ref = &writer;
    let consumed = rt.block_on(async move {
        let mut tw = Tripwire::new(tw)?;
        let mut last = 0;
        let mut cancelled = 0u64;
        while last < WRITES && !writer_ref.is_finished() {
            tokio::select! {
                r = tw.changed() => {
                    r?;
                    let v = tw.region().read::<u64>(0)?;
                    ensure(v >= last, || format!("value went back from {last} to {v}"))?;
                    last = v;
                    seen.store(v, Ordering::Release);
                }
                () = tokio::task::yield_now() => cancelled += 1,
            }
        }
        Ok::<_, libtest_mimic::Failed>((last, cancelled, tw))
    });
    // The writer's verdict first (a writer that gave up hangs up, and the
    // consumer then reports only that). The consumer end stays alive until
    // the writer is done (its last notify() would find the consumer gone).
    let written = writer.join().map_err(|_| "writer panicked")?;
    let (last, cancelled, tw) = match (written, consumed) {
        (Ok(()), consumed) => consumed?,
        (Err(w), Ok(_)) => return Err(w.into()),
        (Err(w), Err(c)) => return Err(format!("{w}; the consumer: {c:?}").into()),
    };
    drop(tw);
    eprintln!("  {}: {cancelled} changed() futures cancelled", ctx.kind);
    ensure(cancelled > 0, || "no changed() was cancelled".into())?;
    ensure(last == WRITES, || {
        format!("last value seen {last}, wrote {WRITES}")
    })
}

fn stream_with_combinators(ctx: &Ctx) -> Outcome {
    let (tw, p) = pair(ctx, PAGE)?;
    let seen = Arc::new(AtomicU64::new(0));
    let writer = {
        let seen = seen.clone();
        std::thread::spawn(move || -> Result<(), String> {
            for i in 1..=3u64 {
                write(&p, 0, i)?;
                let deadline = Instant::now() + ms(5000);
                while seen.load(Ordering::Acquire) < i {
                    if Instant::now() > deadline {
                        return Err(format!("change {i} not consumed"));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(())
        })
    };
    let tw = {
        let rt = runtime()?;
        let _guard = rt.enter();
        (Tripwire::new(tw)?, rt)
    };
    let (tw, rt) = tw;
    let region = tw.region().clone();
    // Keep the stream (and so the consumer end) alive until the writer is
    // done: a notify() racing with the consumer's exit may report it.
    let mut stream = tw.into_stream();
    let values = rt.block_on(async {
        let fut = (&mut stream)
            .map(|r| r.map(|e| (e, region.read::<u64>(0))))
            .filter_map(|r| async move {
                match r {
                    Ok((e, Ok(v))) => Some((e, v)),
                    _ => None,
                }
            })
            .inspect(|&(_, v)| seen.store(v, Ordering::Release))
            .take_while(|&(_, v)| std::future::ready(v <= 3))
            // A trip may come before its store lands (the fault fires first),
            // so the same value can show twice: keep each new value once.
            .scan(0u64, |last, (e, v)| {
                let new = v != *last;
                *last = v;
                std::future::ready(Some(new.then_some((e, v))))
            })
            .filter_map(std::future::ready)
            .take(3)
            .collect::<Vec<_>>();
        tokio::time::timeout(ms(20_000), fut)
            .await
            .map_err(|_| libtest_mimic::Failed::from("stream stalled"))
    })?;
    writer.join().map_err(|_| "writer panicked")??;
    drop(stream);
    let vals: Vec<u64> = values.iter().map(|&(_, v)| v).collect();
    ensure(vals == [1, 2, 3], || format!("values {vals:?}"))?;
    ensure(values.windows(2).all(|w| w[0].0 < w[1].0), || {
        format!("epochs not increasing: {values:?}")
    })
}

fn mio_source_reports_trip(ctx: &Ctx) -> Outcome {
    use mio::{Events, Interest, Poll, Token};
    let (mut tw, p) = pair(ctx, PAGE)?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut tw, Token(3), Interest::READABLE)?;
    write(&p, 0, 9)?;
    let mut events = Events::with_capacity(8);
    let deadline = Instant::now() + ms(5000);
    while events.is_empty() && Instant::now() < deadline {
        poll.poll(&mut events, Some(ms(100)))?;
    }
    ensure(events.iter().any(|e| e.token() == Token(3)), || {
        "no mio event".into()
    })?;
    // Readiness is a hint (a trip may be reported before the store lands):
    // the level decides.
    let e = tw.wait_timeout(ms(5000))?;
    ensure(e.is_some(), || {
        "mio said readable but the wire was not tripped".into()
    })?;
    poll.registry().deregister(&mut tw)?;
    Ok(())
}

fn bad_inputs_are_errors(ctx: &Ctx) -> Outcome {
    let zero = blocking::Tripwire::builder(0).backend(ctx.backend).create();
    ensure(matches!(zero, Err(Error::ZeroLength)), || {
        format!("zero length gave {zero:?}")
    })?;
    let (tw, p) = pair(ctx, PAGE)?;
    let r = tw.region();
    let oob = r.read::<u64>(PAGE - 4);
    ensure(matches!(oob, Err(Error::OutOfBounds { .. })), || {
        format!("read past end gave {oob:?}")
    })?;
    let oob = p.region().write(usize::MAX - 2, &1u32);
    ensure(matches!(oob, Err(Error::OutOfBounds { .. })), || {
        format!("write at usize::MAX gave {oob:?}")
    })?;
    let mis = r.atomic_u64(12);
    ensure(matches!(mis, Err(Error::Misaligned { .. })), || {
        format!("misaligned atomic gave {mis:?}")
    })?;
    let mis = r.atomic_u32(PAGE);
    ensure(matches!(mis, Err(Error::OutOfBounds { .. })), || {
        format!("atomic past end gave {mis:?}")
    })?;
    // A plain memfd is not a tripwire.
    let memfd = rustix::fs::memfd_create("not-a-tripwire", rustix::fs::MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&memfd, PAGE as u64)?;
    let bad = Producer::from_fd(memfd);
    ensure(matches!(bad, Err(Error::NotATripwire { .. })), || {
        format!("from_fd(memfd) gave {bad:?}")
    })?;
    // Nothing was lost: the pair still works.
    write(&p, 0, 77)?;
    let mut tw = tw;
    expect_trip(&mut tw, ms(5000), "after the bad inputs")
}

fn producer_killed_pending_trip_then_broken_pipe(ctx: &Ctx) -> Outcome {
    let mut tw = create(ctx, PAGE)?;
    let mut child = lingering_child(&mut tw, "write_then_linger")?;
    child.0.kill()?;
    child.0.wait()?;
    trip_then_end(&mut tw, "killed", |e| {
        e.kind() == std::io::ErrorKind::BrokenPipe && Error::is_peer_died(e)
    })
}

/// A child in `role` that writes `VALUE` 99 and lingers (alive), once it
/// said "ready".
fn lingering_child(tw: &mut blocking::Tripwire, role: &str) -> Result<KillOnDrop, Failed> {
    let child = share_with_child(tw, role, &[("VALUE", "99".into())])?;
    let mut child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().ok_or("no child stdout")?).read_line(&mut line)?;
    ensure(line.trim() == "ready", || format!("child said {line:?}"))?;
    Ok(child)
}

/// The trip of the value 99 first, then the end `is_end` accepts.
fn trip_then_end(
    tw: &mut blocking::Tripwire,
    what: &str,
    is_end: fn(&std::io::Error) -> bool,
) -> Outcome {
    let first = tw.wait_timeout(ms(5000));
    ensure(matches!(first, Ok(Some(_))), || {
        format!("{what}: the pending trip was not reported first: {first:?}")
    })?;
    ensure(tw.region().read::<u64>(0)? == 99, || {
        format!("{what}: the producer's write is not visible")
    })?;
    match tw.wait_timeout(ms(5000)) {
        Err(e) if is_end(&e) => Ok(()),
        other => Err(format!("{what}: after the trip: {other:?}").into()),
    }
}

/// A Producer dropped by a live process says goodbye: its trip, then
/// `Closed` (not `PeerDied`); as a stream, its epoch, then the end.
fn producer_dropped_is_a_clean_close(ctx: &Ctx) -> Outcome {
    let mut tw = create(ctx, PAGE)?;
    let _child = lingering_child(&mut tw, "write_drop_linger")?;
    trip_then_end(&mut tw, "blocking", Error::is_closed)?;

    let mut tw = create(ctx, PAGE)?;
    let _child = lingering_child(&mut tw, "write_drop_linger")?;
    let items: Vec<std::io::Result<_>> = runtime()?.block_on(async {
        let changes = Tripwire::new(tw)?.into_stream();
        let items = tokio::time::timeout(ms(10_000), changes.collect::<Vec<_>>()).await;
        items.map_err(|_| std::io::Error::other("the stream did not end"))
    })?;
    ensure(!items.is_empty() && items.iter().all(Result::is_ok), || {
        format!("the stream after a clean close: {items:?}")
    })
}

/// A Producer dropped by a panic's unwinding says no goodbye: its trip,
/// then `PeerDied`, though the process lives.
fn producer_panicked_is_a_death(ctx: &Ctx) -> Outcome {
    let mut tw = create(ctx, PAGE)?;
    let _child = lingering_child(&mut tw, "write_panic_linger")?;
    trip_then_end(&mut tw, "blocking", Error::is_peer_died)
}

fn notify_after_consumer_died_errors(ctx: &Ctx) -> Outcome {
    let (ours, theirs) = UnixStream::pair()?;
    let child = spawn(
        "consumer_then_exit",
        &[("BACKEND", ctx.kind.to_string())],
        theirs.into(),
        None,
    )?;
    let p = Producer::connect(ours)?;
    reap(child, "consumer")?;
    p.region().write(0, &1u64)?;
    // It dropped its tripwire before it exited: a clean close.
    let r = p.notify();
    match r {
        Err(e) if Error::is_closed(&e) => {}
        other => return Err(format!("notify() to a closed consumer gave {other:?}").into()),
    }
    // A killed one: a death, at the next ring (it is armed after share).
    let (p, mut child) = lingering_consumer(ctx)?;
    child.0.kill()?;
    child.0.wait()?;
    p.region().write(0, &2u64)?;
    match p.notify() {
        Err(e) if Error::is_peer_died(&e) => Ok(()),
        other => Err(format!("notify() to a killed consumer gave {other:?}").into()),
    }
}

/// A producer connected to a consumer child that shared and lingers (to
/// be killed).
fn lingering_consumer(ctx: &Ctx) -> Result<(Producer, KillOnDrop), Failed> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut child = KillOnDrop(spawn(
        "consumer_then_exit",
        &[("BACKEND", ctx.kind.to_string()), ("LINGER", "1".into())],
        theirs.into(),
        None,
    )?);
    let p = Producer::connect(ours)?;
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().ok_or("no child stdout")?).read_line(&mut line)?;
    ensure(line.trim() == "ready", || format!("child said {line:?}"))?;
    Ok((p, child))
}

/// A consumer killed while the producer's last `notify()` had disarmed it
/// (rung, never taken): no later `notify()` would ring it, yet the first
/// one after the hang-up thread saw the death says `PeerDied` (before the
/// hang-up flag, every `notify()` returned `Ok` for ever). The calls are
/// 1 ms apart: a handful may come before the thread looks, not hundreds.
fn notify_learns_of_a_killed_consumer_at_its_next_call(ctx: &Ctx) -> Outcome {
    let (p, mut child) = lingering_consumer(ctx)?;
    write(&p, 0, 1)?; // rings: the flag stays down, the child never takes it
    child.0.kill()?;
    child.0.wait()?;
    let start = Instant::now();
    let mut ok_calls = 0u32;
    loop {
        p.region().write(0, &2u64)?;
        match p.notify() {
            Ok(()) => ok_calls += 1,
            Err(e) if Error::is_peer_died(&e) => break,
            Err(e) => return Err(format!("notify() to a killed consumer gave {e:?}").into()),
        }
        ensure(start.elapsed() < ms(10_000), || {
            format!("notify() still Ok {ok_calls} times after the consumer was killed")
        })?;
        std::thread::sleep(ms(1));
    }
    ensure(ok_calls <= 100, || {
        format!("{ok_calls} notify() calls (1 ms apart) passed before the death was seen")
    })
}

/// A consumer dropped while the producer's last `notify()` had disarmed it
/// (rung, not yet taken): the producer's very next `notify()` says
/// `Closed` (without the consumer arming the flag as it goes, that call
/// would see the flag down and ring no one, and learn nothing).
fn notify_learns_of_a_closed_consumer_at_its_next_call(ctx: &Ctx) -> Outcome {
    let (tw, p) = pair(ctx, PAGE)?;
    write(&p, 0, 1)?; // rings: the flag is down until the consumer takes it
    drop(tw);
    // A child forked by another trial holds a copy of the consumer's socket
    // until it execs: wait for the hang-up (without it, the ring below
    // would reach that copy and succeed).
    let start = Instant::now();
    while !p.is_closed() {
        ensure(start.elapsed() < ms(10_000), || {
            "no hang-up after the drop".into()
        })?;
        std::thread::sleep(ms(1));
    }
    p.region().write(0, &2u64)?;
    match p.notify() {
        Err(e) if Error::is_closed(&e) => Ok(()),
        other => Err(format!("the next notify() gave {other:?}").into()),
    }
}

fn from_fd_inherited_producer(ctx: &Ctx) -> Outcome {
    let mut tw = create(ctx, PAGE)?;
    let fd = tw.producer_fd()?.try_clone_to_owned()?; // the tripwire fd itself on Kernel
    let child = spawn("from_fd_write", &[("VALUE", "4242".into())], fd, None)?;
    expect_trip(&mut tw, ms(10_000), "write through an inherited fd")?;
    reap(child, "from_fd writer")?;
    let v = tw.region().read::<u64>(0)?;
    ensure(v == 4242, || format!("read {v}"))
}

fn second_ftruncate_is_refused(ctx: &Ctx) -> Outcome {
    let (mut tw, p) = pair(ctx, PAGE)?;
    let r = rustix::fs::ftruncate(tw.producer_fd()?, 2 * PAGE as u64);
    ensure(r.is_err(), || {
        "a second ftruncate of a tripwire succeeded".into()
    })?;
    write(&p, 0, 3)?;
    expect_trip(&mut tw, ms(5000), "after the refused ftruncate")
}

/// Waits (bounded) for a trip and the pages it reports.
fn changed_with_pages(
    tw: &mut blocking::Tripwire,
    pages: &mut Vec<std::ops::Range<usize>>,
) -> Result<Option<memfd_tripwire::Epoch>, Failed> {
    let deadline = Instant::now() + ms(5000);
    loop {
        if let Some(e) = tw.try_changed_with_pages(pages)? {
            return Ok(Some(e));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn ack_reports_exactly_the_written_pages(ctx: &Ctx) -> Outcome {
    let (mut tw, p) = pair(ctx, 16 * PAGE)?;
    // On Userfault each store stalls until the resolver has recorded its
    // page; on UserfaultAsync the poller finds some within an interval and
    // the ACK's own scan the rest. Either way the ACK reports all three.
    write(&p, 3 * PAGE + 8, 1)?;
    write(&p, 7 * PAGE, 2)?;
    write(&p, 8 * PAGE + 100, 3)?;
    let mut pages = Vec::new();
    let e = changed_with_pages(&mut tw, &mut pages)?;
    ensure(e.is_some(), || "no trip after three stores".into())?;
    let want = [3 * PAGE..4 * PAGE, 7 * PAGE..9 * PAGE];
    ensure(pages == want, || format!("pages {pages:?}, want {want:?}"))?;
    // Re-protected: the next store to page 3 trips again, and only it shows.
    write(&p, 3 * PAGE, 4)?;
    pages.clear();
    let e = changed_with_pages(&mut tw, &mut pages)?;
    ensure(e.is_some() && pages == [3 * PAGE..4 * PAGE], || {
        format!("second ACK: {e:?} {pages:?}")
    })?;
    // The async counterpart.
    runtime()?.block_on(async move {
        let mut tw = Tripwire::new(tw)?;
        write(&p, 15 * PAGE, 5)?;
        pages.clear();
        tokio::time::timeout(ms(5000), tw.changed_with_pages(&mut pages))
            .await
            .map_err(|_| "no trip")??;
        ensure(pages == [15 * PAGE..16 * PAGE], || {
            format!("async pages {pages:?}")
        })
    })
}

fn consumer_mapping_is_not_watched(ctx: &Ctx) -> Outcome {
    // Documents a limit: only the producer's registered mapping is watched.
    // The consumer's own mapping (like pwrite(2), or any other mapping) is
    // not. Its store to page 0 comes first, then the producer's to page 1:
    // the trip the latter brings reports exactly page 1 (the ACK reports
    // every watched page written before it, so page 0 would be there).
    let (mut tw, p) = pair(ctx, 2 * PAGE)?;
    tw.region().write(0, &1u64)?;
    write(&p, PAGE, 2)?;
    let mut pages = Vec::new();
    let e = changed_with_pages(&mut tw, &mut pages)?;
    ensure(e.is_some(), || "no trip after the producer's store".into())?;
    ensure(pages == [PAGE..2 * PAGE], || {
        format!(
            "pages {pages:?}, want only page 1 (the producer's): the consumer's own \
             store was reported, or the report is not exact"
        )
    })
}

/// The producer's agent resolves its faults itself: a stopped (or dead, or
/// hostile) consumer never stalls a store, on Userfault as on
/// UserfaultAsync. (Until the agent, a Userfault store stalled until the
/// consumer's resolver ran, forever if the consumer was stopped.)
fn store_does_not_stall_when_consumer_stopped(ctx: &Ctx) -> Outcome {
    // The child is killed when `_child` drops, on every path.
    let (_child, _pid, p) = stopped_consumer(ctx)?;
    let before = p.trapped_stores();
    // On a thread, so that a stall fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The consumer's region is one page: the first store faults (the
        // agent or the kernel resolves it), the next ones do not.
        for i in 0..4u64 {
            if let Err(e) = p.region().write(8 * i as usize, &(i + 1)) {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        }
        let _ = tx.send(Ok(p));
    });
    // A stall behind a stopped consumer is for good: a bound in seconds
    // tells it from a slow host.
    let p = rx
        .recv_timeout(ms(10_000))
        .map_err(|_| "the stores stalled behind the stopped consumer")??;
    for i in 0..4u64 {
        let v = p.region().read::<u64>(8 * i as usize)?;
        ensure(v == i + 1, || format!("store {i}: read back {v}"))?;
    }
    // On Userfault the first store did trap, and the agent let it through
    // with the consumer stopped; UserfaultAsync stores never trap.
    let trapped = p.trapped_stores() - before;
    let want = u64::from(ctx.kind == BackendKind::Userfault);
    ensure(trapped == want, || {
        format!("{trapped} trapped stores, expected {want}")
    })
}

/// A consumer child that shared a tripwire with us (the producer) and was
/// then stopped with SIGSTOP (all its threads, the resolver included).
fn stopped_consumer(ctx: &Ctx) -> Result<(KillOnDrop, rustix::process::Pid, Producer), Failed> {
    use rustix::process::{Pid, Signal, kill_process};
    let (ours, theirs) = UnixStream::pair()?;
    let child = spawn(
        "consumer_then_exit",
        &[("BACKEND", ctx.kind.to_string()), ("LINGER", "1".into())],
        theirs.into(),
        None,
    )?;
    let mut child = KillOnDrop(child);
    let p = Producer::connect(ours)?;
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().ok_or("no child stdout")?).read_line(&mut line)?;
    let pid = Pid::from_child(&child.0);
    kill_process(pid, Signal::STOP)?;
    wait_until_stopped(child.0.id(), ms(5000))?;
    Ok((child, pid, p))
}

/// SIGKILLs the child when dropped, so no failure path leaves it behind.
/// A child that is killed and reaped when this is dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until every thread of `pid` is stopped (state `T`).
pub fn wait_until_stopped(pid: u32, limit: Duration) -> Outcome {
    let deadline = Instant::now() + limit;
    loop {
        let mut all = true;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let stat = std::fs::read_to_string(task?.path().join("stat"))?;
            let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
            all &= matches!(state, Some('T' | 't'));
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("process {pid} did not stop").into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The lifelock the RFC warns of: an ACK re-protects a page after the
/// fault was resolved but before the stalled store retried, so the store
/// faults again, and again. Here a thread ACKs as fast as it can while
/// another stores into the one page. What must hold: every store completes
/// (progress, watched store by store), the ACKs really race the stores (at
/// least one ACK completes, and a store after an ACK faults again: an ACK
/// that re-protected nothing fails here), and nothing fails. What the crate
/// bounds is the total: the agent re-protects a page only on an ACK that
/// found it written, so trapped stores <= ACKs + 1; one store may fault
/// once more for each ACK that lands between its fault's resolution and its
/// retry, which the agent's serialised round trip makes rare, not
/// impossible. UserfaultAsync stores never trap (the kernel resolves them),
/// so there it is a skip.
fn racing_acks_bound_the_faults_of_a_store(ctx: &Ctx) -> Outcome {
    const STORES: u64 = 200_000;
    if ctx.kind == BackendKind::UserfaultAsync {
        return skip(
            ctx,
            "racing_acks_bound_the_faults_of_a_store",
            None,
            "UserfaultAsync stores never trap (WP_ASYNC: the kernel resolves the fault), \
             trapped_stores() is always 0: no lifelock to bound",
        );
    }
    let (mut tw, p) = pair(ctx, PAGE)?;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let acker = {
        let (stop, acks) = (stop.clone(), acks.clone());
        std::thread::spawn(move || -> Result<(), String> {
            while !stop.load(Ordering::Relaxed) {
                tw.ack().map_err(|e| format!("ACK: {e}"))?;
                acks.fetch_add(1, Ordering::Release);
            }
            Ok(())
        })
    };
    let stored = Arc::new(AtomicU64::new(0));
    let before = p.trapped_stores();
    let writer = {
        let (stored, acks, stop) = (stored.clone(), acks.clone(), stop.clone());
        std::thread::spawn(move || -> Result<(u64, Producer), String> {
            // Go on until STORES are done and two ACKs completed after the
            // first store returned, then store once more: the later of
            // those ACKs was served after the first store's fault, so it
            // re-protected the page (or one before it did), and this last
            // store (if no earlier one) faults again.
            let mut after_first = None;
            let mut last_round = false;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                p.region().write(0, &i).map_err(|e| e.to_string())?;
                stored.store(i, Ordering::Release);
                if last_round {
                    return Ok((i, p));
                }
                let a = acks.load(Ordering::Acquire);
                let a1 = *after_first.get_or_insert(a);
                last_round = i >= STORES && a >= a1 + 2;
            }
            Err(format!("stopped after {i} stores"))
        })
    };
    // Every store must complete: no stretch of ms(5000) without one.
    let mut seen = 0;
    let mut since = Instant::now();
    let deadline = Instant::now() + ms(30_000);
    while !writer.is_finished() {
        let now = stored.load(Ordering::Acquire);
        if now != seen {
            (seen, since) = (now, Instant::now());
        }
        let stalled =
            since.elapsed() > ms(5000) || Instant::now() > deadline || acker.is_finished();
        if stalled {
            stop.store(true, Ordering::Relaxed);
            let _ = acker.join();
            // The writer may be stuck in its store for good: left detached.
            return Err(format!(
                "store {} did not complete under racing ACKs ({} ACKs so far)",
                seen + 1,
                acks.load(Ordering::Acquire)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let (stores, p) = writer.join().map_err(|_| "writer panicked")??;
    let faults = p.trapped_stores() - before;
    stop.store(true, Ordering::Relaxed);
    acker.join().map_err(|_| "acker panicked")??;
    let acks = acks.load(Ordering::Acquire);
    eprintln!(
        "  {}: {stores} stores racing {acks} ACKs, {faults} faults",
        ctx.kind
    );
    ensure(acks > 0, || "no ACK completed".into())?;
    ensure(faults >= 2, || {
        format!(
            "{faults} trapped stores under {acks} racing ACKs: no store faulted again \
             after an ACK (the ACKs do not re-protect the page)"
        )
    })
}

/// A producer that runs as nobody (uid 65534, no capability): its agent's
/// `userfaultfd(UFFD_USER_MODE_ONLY)` is allowed when
/// `vm.unprivileged_userfaultfd` is 1 (or the sysctl does not exist, before
/// Linux 5.2), or when the kernel knows `UFFD_USER_MODE_ONLY` (5.11), which
/// this process, as root, finds out by asking for one. Then the producer
/// must work; otherwise the share must fail with the documented refusal
/// naming userfaultfd, and the child must fail. Needs root, to switch.
fn unprivileged_producer_works(ctx: &Ctx) -> Outcome {
    use std::os::unix::process::CommandExt;
    if !rustix::process::geteuid().is_root() {
        return skip(
            ctx,
            "unprivileged_producer_works",
            Some("root"),
            "not root: cannot start a producer as another uid",
        );
    }
    let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd");
    let user_mode_only = user_mode_only_known()?;
    let allowed = match sysctl.as_deref().map(str::trim) {
        Err(_) => true, // before the sysctl: anyone may
        Ok("0") => user_mode_only,
        Ok(_) => true,
    };
    let why = format!(
        "vm.unprivileged_userfaultfd {:?}, UFFD_USER_MODE_ONLY {}",
        sysctl.as_deref().map(str::trim).ok(),
        if user_mode_only { "known" } else { "unknown" }
    );
    let mut tw = create(ctx, PAGE)?;
    let (ours, theirs) = UnixStream::pair()?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.env(crate::child::ROLE_ENV, "write_once")
        .env("OFFSET", "0")
        .env("VALUE", "65534")
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            theirs,
        )));
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Err(format!("cannot start a child as uid 65534: {e}").into()),
    };
    let child = KillOnDrop(child);
    match (tw.share(ours), allowed) {
        (Ok(()), true) => {}
        (Ok(()), false) => {
            return Err(format!("{why}: an unprivileged producer was not refused").into());
        }
        // The documented failure: a producer-side refusal names its cause.
        (Err(Error::Handshake { reason }), false) if reason.contains("userfaultfd") => {
            eprintln!("  {why}: the unprivileged producer is refused, as expected: {reason}");
            let mut child = child;
            let status = child.0.wait()?;
            return ensure(!status.success(), || {
                format!("the refused producer exited {status}")
            });
        }
        (Err(e), _) => return Err(format!("{why}: the share gave {e}").into()),
    }
    eprintln!("  {}: {why}: the unprivileged producer works", ctx.kind);
    expect_trip(&mut tw, ms(5000), "store from the uid-65534 producer")?;
    let mut child = child;
    let status = child.0.wait()?;
    ensure(status.success(), || {
        format!("the unprivileged writer exited {status}")
    })?;
    ensure(tw.region().read::<u64>(0)? == 65534, || {
        "value not visible".into()
    })
}

/// Whether this kernel knows `UFFD_USER_MODE_ONLY`: a userfaultfd asked
/// for with it (here, as root, where nothing else refuses it) fails
/// `EINVAL` if not.
fn user_mode_only_known() -> Result<bool, Failed> {
    const UFFD_USER_MODE_ONLY: libc::c_int = 1;
    // SAFETY: userfaultfd takes one int of flags and returns a new fd or -1.
    let ret =
        unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | UFFD_USER_MODE_ONLY) };
    if ret >= 0 {
        // SAFETY: the kernel just made this fd; nothing else owns it.
        drop(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ret as libc::c_int)
        });
        return Ok(true);
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        e => Err(format!("userfaultfd(UFFD_USER_MODE_ONLY) as root: {e}").into()),
    }
}

/// The ring tests' message: a sequence number and a check value.
pub type Msg = [u64; 8];
pub const RING_TAG: u64 = u64::from_le_bytes(*b"TESTMSG1");

pub fn msg(i: u64) -> Msg {
    [i, !i, i.rotate_left(17), 0, 0, 0, 0, i ^ 0x5555]
}

fn ring_rx(ctx: &Ctx, capacity: usize) -> Result<memfd_tripwire::ring::Receiver<Msg>, Failed> {
    Ok(memfd_tripwire::ring::SharedRing::<Msg>::builder(capacity)
        .backend(ctx.backend)
        .type_tag(RING_TAG)
        .create()?)
}

fn ring_pair(
    ctx: &Ctx,
    capacity: usize,
) -> Result<
    (
        memfd_tripwire::ring::Receiver<Msg>,
        memfd_tripwire::ring::Sender<Msg>,
    ),
    Failed,
> {
    let mut rx = ring_rx(ctx, capacity)?;
    let (ours, theirs) = UnixStream::pair()?;
    let tx = std::thread::spawn(move || {
        memfd_tripwire::ring::Sender::<Msg>::connect_with_tag(theirs, RING_TAG)
    });
    rx.share(ours)?;
    let tx = tx.join().map_err(|_| "sender thread panicked")??;
    Ok((rx, tx))
}

fn ring_1e6_messages_in_order(ctx: &Ctx) -> Outcome {
    const COUNT: u64 = 1_000_000;
    let mut rx = ring_rx(ctx, 1024)?;
    let (ours, theirs) = UnixStream::pair()?;
    let child = spawn(
        "ring_sender",
        &[("COUNT", COUNT.to_string())],
        theirs.into(),
        None,
    )?;
    rx.share(ours)?;
    let start = Instant::now();
    let received = runtime()?.block_on(async move {
        let mut next = 0u64;
        let mut stream = rx;
        while let Some(m) = stream.next().await {
            let m = m?;
            if m != msg(next) {
                return Err(format!("message {next}: got {m:?}").into());
            }
            next += 1;
        }
        Ok::<u64, Failed>(next)
    })?;
    reap(child, "ring sender")?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "  {}: {received} messages in {secs:.2} s ({:.1} M msg/s)",
        ctx.kind,
        received as f64 / secs / 1e6
    );
    ensure(received == COUNT, || {
        format!("received {received} of {COUNT} before the clean close")
    })
}

/// `blocking_recv_many` and then tokio `recv_many`, with limits and send
/// batches that divide neither each other nor the capacity, so runs wrap
/// around the ring's end and the Sender often finds it full.
fn ring_batched_receive_in_order(ctx: &Ctx) -> Outcome {
    const COUNT: u64 = 300_000;
    let mut rx = ring_rx(ctx, 64)?;
    let (ours, theirs) = UnixStream::pair()?;
    let child = spawn(
        "ring_sender",
        &[("COUNT", COUNT.to_string()), ("BATCH", "37".into())],
        theirs.into(),
        None,
    )?;
    rx.share(ours)?;
    let mut next = 0u64;
    let mut buf = Vec::with_capacity(50);
    let check = |buf: &mut Vec<Msg>, n: usize, next: &mut u64| -> Outcome {
        ensure(buf.len() == n && (1..=50).contains(&n), || {
            format!("a batch of {n} with {} in the buffer", buf.len())
        })?;
        for m in buf.drain(..) {
            ensure(m == msg(*next), || format!("message {next}: got {m:?}"))?;
            *next += 1;
        }
        Ok(())
    };
    while next < COUNT / 2 {
        let n = rx.blocking_recv_many(&mut buf, 50)?;
        check(&mut buf, n, &mut next)?;
    }
    runtime()?.block_on(async {
        loop {
            match rx.recv_many(&mut buf, 50).await? {
                0 => return Ok::<(), Failed>(()),
                n => check(&mut buf, n, &mut next)?,
            }
        }
    })?;
    reap(child, "ring sender")?;
    ensure(next == COUNT, || {
        format!("received {next} of {COUNT} before the clean close")
    })
}

fn ring_full_ring_backpressure(ctx: &Ctx) -> Outcome {
    use memfd_tripwire::ring::TrySendError;
    let (mut rx, mut tx) = ring_pair(ctx, 8)?;
    for i in 0..8 {
        tx.try_send(msg(i))
            .map_err(|e| format!("send {i} into a non-full ring: {e}"))?;
    }
    match tx.try_send(msg(8)) {
        Err(TrySendError::Full(v)) => {
            ensure(v == msg(8), || "Full did not return the value".into())?
        }
        other => return Err(format!("9th send into a ring of 8: {other:?}").into()),
    }
    // A blocking send waits until the receiver frees a slot: once its
    // thread sleeps in the kernel, it must not have returned.
    let tid = Arc::new(std::sync::atomic::AtomicI32::new(0));
    let sender = {
        let tid = tid.clone();
        std::thread::spawn(move || {
            tid.store(
                rustix::thread::gettid().as_raw_nonzero().get(),
                Ordering::Release,
            );
            tx.blocking_send(msg(8)).map(|()| tx)
        })
    };
    let deadline = Instant::now() + ms(5000);
    while !sender.is_finished() && !thread_sleeps(tid.load(Ordering::Acquire)) {
        ensure(Instant::now() < deadline, || {
            "the sender neither returned nor slept".into()
        })?;
        std::thread::yield_now();
    }
    ensure(!sender.is_finished(), || {
        "blocking_send did not wait on a full ring".into()
    })?;
    let first = rx.blocking_recv()?;
    ensure(first == Some(msg(0)), || format!("first message {first:?}"))?;
    let deadline = Instant::now() + ms(5000);
    while !sender.is_finished() {
        ensure(Instant::now() < deadline, || {
            "the sender was not woken when space appeared".into()
        })?;
        std::thread::sleep(Duration::from_millis(1));
    }
    let tx = sender
        .join()
        .map_err(|_| "sender panicked")?
        .map_err(|e| e.to_string())?;
    for i in 1..=8 {
        let m = rx.blocking_recv()?;
        ensure(m == Some(msg(i)), || format!("message {i}: {m:?}"))?;
    }
    drop(tx);
    let end = rx.blocking_recv()?;
    ensure(end.is_none(), || format!("after a clean close: {end:?}"))
}

/// Whether thread `tid` of this process sleeps (state `S`: blocked in
/// the kernel); `false` for 0 (not yet known).
fn thread_sleeps(tid: i32) -> bool {
    tid != 0
        && std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
            .is_ok_and(|stat| stat.rsplit(") ").next().and_then(|r| r.chars().next()) == Some('S'))
}

/// A ring whose Sender, in a child process, has sent `count` messages and
/// lingers until killed.
fn ring_with_lingering_sender(
    ctx: &Ctx,
    count: u64,
) -> Result<(memfd_tripwire::ring::Receiver<Msg>, KillOnDrop), Failed> {
    let mut rx = ring_rx(ctx, 64)?;
    let (ours, theirs) = UnixStream::pair()?;
    let child = spawn(
        "ring_sender",
        &[("COUNT", count.to_string()), ("LINGER", "1".into())],
        theirs.into(),
        None,
    )?;
    let mut child = KillOnDrop(child);
    rx.share(ours)?;
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().ok_or("no child stdout")?).read_line(&mut line)?;
    Ok((rx, child))
}

fn ring_sender_killed_is_peer_died(ctx: &Ctx) -> Outcome {
    let (mut rx, mut child) = ring_with_lingering_sender(ctx, 10)?;
    child.0.kill()?;
    child.0.wait()?;
    for i in 0..10 {
        let m = rx.blocking_recv()?;
        ensure(m == Some(msg(i)), || {
            format!("message {i} before the death: {m:?}")
        })?;
    }
    match rx.blocking_recv() {
        Err(Error::PeerDied) => Ok(()),
        other => Err(format!("after the sender was killed: {other:?}").into()),
    }
}

/// `try_recv`, which never waits, still tells "nothing yet" (the Sender
/// lives) from "the Sender's process died" (after what it published), and
/// then says `Closed`.
fn ring_try_recv_tells_a_death_from_empty(ctx: &Ctx) -> Outcome {
    use memfd_tripwire::ring::TryRecvError;
    let (mut rx, mut child) = ring_with_lingering_sender(ctx, 3)?;
    for i in 0..3 {
        let m = rx.try_recv();
        ensure(m == Ok(msg(i)), || format!("message {i}: {m:?}"))?;
    }
    let m = rx.try_recv();
    ensure(m == Err(TryRecvError::Empty), || {
        format!("a live sender that sent everything: {m:?}")
    })?;
    child.0.kill()?;
    child.0.wait()?;
    match rx.try_recv() {
        Err(TryRecvError::Failed(Error::PeerDied)) => {}
        other => return Err(format!("after the sender was killed: {other:?}").into()),
    }
    let m = rx.try_recv();
    ensure(m == Err(TryRecvError::Closed), || {
        format!("afterwards: {m:?}")
    })
}

fn ring_receiver_gone_sender_errors(ctx: &Ctx) -> Outcome {
    let (ours, theirs) = UnixStream::pair()?;
    let child = spawn(
        "ring_receiver_then_exit",
        &[("BACKEND", ctx.kind.to_string())],
        theirs.into(),
        None,
    )?;
    let mut tx = memfd_tripwire::ring::Sender::<Msg>::connect_with_tag(ours, RING_TAG)?;
    reap(child, "ring receiver")?;
    // It dropped its Receiver before it exited: a clean close, which the
    // very next send reports (not a ring's worth later), as `Closed`.
    ensure(tx.is_closed(), || {
        "is_closed() after the Receiver left".into()
    })?;
    match tx.blocking_send(msg(0)) {
        Err(e) if matches!(e.error(), Error::Closed) => {}
        other => return Err(format!("the first send after the close: {other:?}").into()),
    }
    match tx.try_send(msg(1)) {
        Err(memfd_tripwire::ring::TrySendError::Closed(_)) => Ok(()),
        other => Err(format!("try_send after the close: {other:?}").into()),
    }
}

fn ring_layout_mismatch_refused_on_both_sides(ctx: &Ctx) -> Outcome {
    for (what, wrong) in [("size", 0u8), ("tag", 1u8)] {
        let mut rx = ring_rx(ctx, 8)?;
        let (ours, theirs) = UnixStream::pair()?;
        let tx = std::thread::spawn(move || match wrong {
            0 => memfd_tripwire::ring::Sender::<[u64; 4]>::connect_with_tag(theirs, RING_TAG)
                .map(drop),
            _ => memfd_tripwire::ring::Sender::<Msg>::connect_with_tag(theirs, RING_TAG + 1)
                .map(drop),
        });
        let consumer = rx.share(ours);
        let producer = tx.join().map_err(|_| "sender thread panicked")?;
        let needle = if wrong == 0 { "size_of" } else { "type tag" };
        match producer {
            Err(Error::LayoutMismatch { reason }) if reason.contains(needle) => {}
            other => return Err(format!("{what}: sender side gave {other:?}").into()),
        }
        match consumer {
            Err(Error::Handshake { reason }) if reason.contains(needle) => {}
            other => return Err(format!("{what}: receiver side gave {other:?}").into()),
        }
    }
    Ok(())
}

/// Regression: a length that is not a whole number of pages (userfaultfd
/// registers whole pages).
fn odd_length_region_works(ctx: &Ctx) -> Outcome {
    let (mut tw, p) = pair(ctx, 100)?;
    write(&p, 92, 0xabcd)?;
    expect_trip(&mut tw, ms(5000), "write at the end of a 100-byte region")?;
    let v = tw.region().read::<u64>(92)?;
    ensure(v == 0xabcd, || format!("read {v:#x}"))?;
    let past = p.region().write(96, &1u64);
    ensure(matches!(past, Err(Error::OutOfBounds { .. })), || {
        format!("write past 100 bytes: {past:?}")
    })
}

/// Out of fds (a child with `RLIMIT_NOFILE` at 64 creates tripwires until
/// one fails): the error names the limit and what to do (issue #16).
/// What one tripwire, shared with one producer and registered with tokio,
/// costs its consumer in fds (#16): at most 3 where the mechanism allows
/// it. Counted in a child process, where no other test opens fds, for a
/// second tripwire (the first also starts what a process keeps once). Before
/// #16 a Doorbell tripwire cost 8 (memfd, control memfd, bell pair, peer
/// set, socket, and two duplicates registered with tokio).
fn fds_per_tripwire(ctx: &Ctx) -> Outcome {
    // The memfd or tripwire, the tripwire's one fd (an epoll set, or
    // Poll's eventfd), the socket; plus the Userfault agent's channel.
    let bound = match ctx.kind {
        BackendKind::Userfault | BackendKind::UserfaultAsync => 4,
        _ => 3,
    };
    let line = run_child("count_fds", ctx)?;
    let counts: Vec<usize> = line
        .split_whitespace()
        .map(|w| w.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the child said {line:?}: {e}"))?;
    let [first, _, _, created, shared, registered] = counts[..] else {
        return Err(format!("the child said {line:?}").into());
    };
    eprintln!(
        "  {}: fds created {created}, shared {shared}, registered {registered} \
         (the first tripwire: {first} created)",
        ctx.kind
    );
    ensure(registered <= bound, || {
        format!(
            "{}: a shared, registered tripwire holds {registered} fds, over {bound}",
            ctx.kind
        )
    })
}

/// Runs child `role` on the backend of `ctx` with no handshake socket (its
/// stdin is /dev/null), and returns what it printed once it succeeded.
fn run_child(role: &str, ctx: &Ctx) -> Result<String, Failed> {
    let null = std::fs::File::open("/dev/null")?;
    let child = spawn(
        role,
        &[("BACKEND", ctx.kind.to_string())],
        null.into(),
        None,
    )?;
    let out = child.wait_with_output()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure(out.status.success(), || {
        format!(
            "the child failed: {} {line} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(line)
}

fn fd_exhaustion_names_ulimit(ctx: &Ctx) -> Outcome {
    let line = run_child("exhaust_fds", ctx)?;
    eprintln!("  {}: {}", ctx.kind, line.trim());
    ensure(line.contains("ulimit -n"), || {
        format!("the error does not name the limit: {line}")
    })
}
