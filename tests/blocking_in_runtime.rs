//! Every call that sleeps for a peer panics on a thread that drives a
//! tokio runtime's tasks, naming the async method to use, as tokio's own
//! `blocking_recv` does (#23: `Receiver::blocking_recv` on a current-thread
//! runtime stalled it for 3 s, silently), and runs where blocking is
//! allowed: outside a runtime, in `spawn_blocking`, in `block_in_place`.
//!
//! The check is made where a call would sleep (#23: it costs nothing on a
//! call that finds its message, space or trip, where tokio's own check
//! runs on every call). So each call here is given nothing to return: it
//! has to wait, until a thread releases it after [`RELEASE`] (a store, a
//! message, a freed slot). Without the check it returns then, and the test
//! fails: the panic is the check's, never a consequence of a stall.

mod support;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use memfd_tripwire::ring::SharedRing;
use memfd_tripwire::ring::frames::{FrameBatch, FrameReceiver, FrameSender, SharedFrames};
use memfd_tripwire::{Backend, blocking, watch};

/// The part of the message every such panic has.
const MESSAGE: &str = "cannot block the current thread from within a tokio runtime";

/// A blocking call, ready to run, with the async method its panic names.
struct Call {
    name: &'static str,
    instead: &'static str,
    run: Box<dyn FnOnce() + Send>,
}

/// When a call that must wait is released (where it may block, it then
/// returns; where it must not, it panicked long before). Counted from the
/// start of the call itself: every release is armed inside the call's
/// `run`, so a loaded host that is slow to reach a call cannot release it
/// early. (They used to be counted from when the objects were made, all
/// before the first call: on a loaded 2-vCPU host a call found its trip
/// already there and returned without sleeping, so without the check's
/// panic.)
const RELEASE: Duration = Duration::from_secs(2);

/// Runs `release` on a thread after [`RELEASE`].
fn release_later(release: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        std::thread::sleep(RELEASE);
        release();
    });
}

/// A Poll tripwire (any host), armed and quiet, and what trips it: a wait
/// on it sleeps until `trip_later(region)` trips it [`RELEASE`] later.
fn quiet() -> (blocking::Tripwire, memfd_tripwire::Region) {
    let tw = blocking::Tripwire::builder(64)
        .backend(Backend::Poll)
        .create()
        .expect("create");
    let region = tw.region().clone();
    (tw, region)
}

/// Stores into `region` from [`RELEASE`] from now.
fn trip_later(region: memfd_tripwire::Region) {
    release_later(move || {
        // Stores that differ, until the poller saw one (a single store may
        // land between two of its looks and be taken as no change: no).
        for i in 0..1000u32 {
            if region.write(0, &(i as u8 | 1)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
}

/// A ring on Doorbell (every host): empty, and (`full`) with every slot
/// taken. A thread sends a message or takes one [`RELEASE`] from now.
fn ring(
    full: bool,
) -> (
    memfd_tripwire::ring::Receiver<u64>,
    memfd_tripwire::ring::Sender<u64>,
) {
    let rx = SharedRing::<u64>::builder(2)
        .backend(Backend::Doorbell)
        .create()
        .expect("ring");
    let (rx, mut tx) = support::with_sender(rx);
    if full {
        tx.try_send(1).expect("send");
        tx.try_send(2).expect("send");
    }
    (rx, tx)
}

/// Sends 7 [`RELEASE`] from now, and keeps the Sender open a while (the
/// ring must not end instead).
fn send_later(mut tx: memfd_tripwire::ring::Sender<u64>) {
    release_later(move || {
        let _ = tx.try_send(7);
        std::thread::sleep(Duration::from_secs(10));
    });
}

/// Takes a message and publishes the tail [`RELEASE`] from now, and keeps
/// the Receiver open a while.
fn free_a_slot_later(mut rx: memfd_tripwire::ring::Receiver<u64>) {
    release_later(move || {
        let _ = rx.try_recv();
        let _ = rx.flush();
        std::thread::sleep(Duration::from_secs(10));
    });
}

/// A ring of frames on Doorbell (every host), of 64 bytes: empty, and
/// (`full`) with 56 bytes taken, too few left for an 8-byte frame.
fn frames(full: bool) -> (FrameReceiver, FrameSender) {
    let rx = SharedFrames::builder(64)
        .backend(Backend::Doorbell)
        .create()
        .expect("frames");
    let (rx, mut tx) = support::with_frame_sender(rx);
    if full {
        tx.try_send(&[1; 48]).expect("send");
    }
    (rx, tx)
}

/// Sends a frame [`RELEASE`] from now, and keeps the FrameSender open a
/// while.
fn send_frame_later(mut tx: FrameSender) {
    release_later(move || {
        let _ = tx.try_send(b"seven");
        std::thread::sleep(Duration::from_secs(10));
    });
}

/// Takes a frame and publishes the tail [`RELEASE`] from now, and keeps
/// the FrameReceiver open a while.
fn free_frame_room_later(mut rx: FrameReceiver) {
    release_later(move || {
        let _ = rx.try_recv(&mut Vec::new());
        let _ = rx.flush();
        std::thread::sleep(Duration::from_secs(10));
    });
}

/// A watch on Doorbell (every host), shared, its initial value seen.
fn watched() -> (watch::blocking::Receiver<u64>, watch::Sender<u64>) {
    let rx = watch::channel(0u64)
        .backend(Backend::Doorbell)
        .create()
        .expect("watch");
    support::with_watch_sender(rx)
}

/// Sends 7 [`RELEASE`] from now, and keeps the watch's Sender open a while.
fn update_later(mut tx: watch::Sender<u64>) {
    release_later(move || {
        let _ = tx.send(&7);
        std::thread::sleep(Duration::from_secs(10));
    });
}

/// Every blocking call of the public API, each on fresh objects, each of
/// which must wait.
fn calls() -> Vec<Call> {
    let mut calls = Vec::new();
    let (mut tw, region) = quiet();
    calls.push(Call {
        name: "blocking::Tripwire::wait",
        instead: "Tripwire::changed().await",
        run: Box::new(move || {
            trip_later(region);
            tw.wait().expect("wait");
        }),
    });
    let (mut tw, region) = quiet();
    calls.push(Call {
        name: "blocking::Tripwire::wait_timeout",
        instead: "tokio::time::timeout(t, tripwire.changed()).await",
        run: Box::new(move || {
            trip_later(region);
            assert!(
                tw.wait_timeout(Duration::from_secs(10))
                    .expect("wait")
                    .is_some()
            );
        }),
    });
    let (tw, region) = quiet();
    calls.push(Call {
        name: "blocking::Tripwire::wait_ready",
        instead: "Tripwire::ready().await",
        run: Box::new(move || {
            trip_later(region);
            tw.wait_ready(Some(Duration::from_secs(10))).expect("wait")
        }),
    });
    let (mut rx, tx) = ring(false);
    calls.push(Call {
        name: "Receiver::blocking_recv",
        instead: "recv().await",
        run: Box::new(move || {
            send_later(tx);
            assert_eq!(rx.blocking_recv().expect("recv"), Some(7));
        }),
    });
    let (mut rx, tx) = ring(false);
    calls.push(Call {
        name: "Receiver::blocking_recv_many",
        instead: "recv_many(buf, limit).await",
        run: Box::new(move || {
            send_later(tx);
            let mut buf = Vec::new();
            assert_eq!(rx.blocking_recv_many(&mut buf, 4).expect("recv"), 1);
        }),
    });
    let (rx, mut tx) = ring(true);
    calls.push(Call {
        name: "Sender::blocking_send",
        instead: "send(value).await",
        run: Box::new(move || {
            free_a_slot_later(rx);
            tx.blocking_send(8).expect("send");
        }),
    });
    let (rx, mut tx) = ring(true);
    calls.push(Call {
        name: "Sender::blocking_send_many",
        instead: "send_many(values).await",
        run: Box::new(move || {
            free_a_slot_later(rx);
            tx.blocking_send_many(&[8]).expect("send");
        }),
    });
    let (rx, mut tx) = ring(true);
    calls.push(Call {
        name: "Sender::blocking_reserve",
        instead: "reserve().await",
        run: Box::new(move || {
            free_a_slot_later(rx);
            let mut slot = tx.blocking_reserve().expect("reserve");
            slot.write(&8).expect("write");
            slot.commit().expect("commit");
        }),
    });
    let (mut rx, tx) = frames(false);
    calls.push(Call {
        name: "FrameReceiver::blocking_recv",
        instead: "recv(buf).await",
        run: Box::new(move || {
            send_frame_later(tx);
            let mut buf = Vec::new();
            assert_eq!(rx.blocking_recv(&mut buf).expect("recv"), Some(5));
        }),
    });
    let (mut rx, tx) = frames(false);
    calls.push(Call {
        name: "FrameReceiver::blocking_recv_many",
        instead: "recv_many(batch, limit).await",
        run: Box::new(move || {
            send_frame_later(tx);
            let mut batch = FrameBatch::new();
            assert_eq!(rx.blocking_recv_many(&mut batch, 4).expect("recv"), 1);
        }),
    });
    let (rx, mut tx) = frames(true);
    calls.push(Call {
        name: "FrameSender::blocking_send",
        instead: "send(frame).await",
        run: Box::new(move || {
            free_frame_room_later(rx);
            tx.blocking_send(&[8; 8]).expect("send");
        }),
    });
    let (rx, mut tx) = frames(true);
    calls.push(Call {
        name: "FrameSender::blocking_send_many",
        instead: "send_many(frames).await",
        run: Box::new(move || {
            free_frame_room_later(rx);
            tx.blocking_send_many(&[[8u8; 8]]).expect("send");
        }),
    });
    let (rx, mut tx) = frames(true);
    calls.push(Call {
        name: "FrameSender::blocking_reserve",
        instead: "reserve(len).await",
        run: Box::new(move || {
            free_frame_room_later(rx);
            tx.blocking_reserve(8)
                .expect("reserve")
                .commit()
                .expect("commit");
        }),
    });
    let (mut rx, tx) = watched();
    calls.push(Call {
        name: "watch::blocking::Receiver::wait",
        instead: "watch::Receiver::changed().await",
        run: Box::new(move || {
            update_later(tx);
            rx.wait().expect("wait");
            assert_eq!(*rx.borrow(), 7);
        }),
    });
    let (mut rx, tx) = watched();
    calls.push(Call {
        name: "watch::blocking::Receiver::wait_timeout",
        instead: "tokio::time::timeout(t, watch_receiver.changed()).await",
        run: Box::new(move || {
            update_later(tx);
            assert!(rx.wait_timeout(Duration::from_secs(10)).expect("wait"));
            assert_eq!(*rx.borrow(), 7);
        }),
    });
    calls
}

/// The panic's message, from a `catch_unwind` or a `JoinError`.
fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

/// Runs every call with `run_in` and checks that each panicked with the
/// message that names it and the async method to use.
fn assert_each_refused(
    context: &str,
    mut run_in: impl FnMut(Box<dyn FnOnce() + Send>) -> Result<(), String>,
) {
    for Call { name, instead, run } in calls() {
        let msg = match run_in(run) {
            Ok(()) => panic!("{name} ran {context}: it must panic"),
            Err(msg) => msg,
        };
        assert!(
            msg.contains(MESSAGE) && msg.contains(name) && msg.contains(instead),
            "{name} {context}: the panic says {msg:?}"
        );
    }
}

/// Runs `run` in `rt.block_on` and says how it ended.
fn in_block_on(rt: &tokio::runtime::Runtime, run: Box<dyn FnOnce() + Send>) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| rt.block_on(async move { run() }))).map_err(|p| message(&*p))
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn blocking_calls_panic_in_a_current_thread_block_on() {
    assert_each_refused("in a current-thread block_on", |run| {
        in_block_on(&current_thread(), run)
    });
}

/// Runs `run` in a task spawned on `rt` and says how it ended.
fn in_task(rt: &tokio::runtime::Runtime, run: Box<dyn FnOnce() + Send>) -> Result<(), String> {
    rt.block_on(async move {
        tokio::spawn(async move { run() })
            .await
            .map_err(|e| message(&*e.into_panic()))
    })
}

#[test]
fn blocking_calls_panic_in_a_current_thread_task() {
    let rt = current_thread();
    assert_each_refused("in a current-thread task", |run| in_task(&rt, run));
}

#[test]
fn blocking_calls_panic_in_a_multi_thread_worker() {
    let rt = multi_thread();
    assert_each_refused("in a multi-thread worker", |run| in_task(&rt, run));
}

#[test]
fn blocking_calls_panic_in_a_multi_thread_block_on() {
    assert_each_refused("in a multi-thread block_on", |run| {
        in_block_on(&multi_thread(), run)
    });
}

/// The single test `#[should_panic]` form, as a user would write it.
#[test]
#[should_panic(
    expected = "Receiver::blocking_recv cannot block the current thread from within \
                           a tokio runtime"
)]
fn blocking_recv_in_async_main_panics() {
    let (mut rx, tx) = ring(false);
    // Without the check, the call ends (Ok(None)) when the Sender goes.
    release_later(move || drop(tx));
    current_thread().block_on(async move {
        let _ = rx.blocking_recv();
    });
}

// Where blocking is allowed, every call waits out its RELEASE: the calls
// run side by side, so that a test takes one RELEASE, not one per call.

#[test]
fn blocking_calls_run_in_spawn_blocking() {
    for rt in [current_thread(), multi_thread()] {
        rt.block_on(async move {
            let running: Vec<_> = calls()
                .into_iter()
                .map(|Call { name, run, .. }| (name, tokio::task::spawn_blocking(run)))
                .collect();
            for (name, call) in running {
                if let Err(e) = call.await {
                    panic!("{name} in spawn_blocking: {:?}", message(&*e.into_panic()));
                }
            }
        });
    }
}

#[test]
fn blocking_calls_run_in_block_in_place() {
    let rt = multi_thread();
    rt.block_on(async move {
        let running: Vec<_> = calls()
            .into_iter()
            .map(|Call { name, run, .. }| {
                (
                    name,
                    tokio::spawn(async move { tokio::task::block_in_place(run) }),
                )
            })
            .collect();
        for (name, call) in running {
            let outcome = call.await.map_err(|e| message(&*e.into_panic()));
            assert!(outcome.is_ok(), "{name} in block_in_place: {outcome:?}");
        }
    });
}

#[test]
fn blocking_calls_run_outside_a_runtime_and_under_enter() {
    let rt = current_thread();
    let handle = rt.handle();
    std::thread::scope(|scope| {
        for entered in [false, true] {
            for Call { name, run, .. } in calls() {
                scope.spawn(move || {
                    let _entered = entered.then(|| handle.enter());
                    let outcome = catch_unwind(AssertUnwindSafe(run)).map_err(|p| message(&*p));
                    assert!(outcome.is_ok(), "{name} (entered: {entered}): {outcome:?}");
                });
            }
        }
    });
}
