//! Every call that sleeps for a peer panics on a thread that drives a
//! tokio runtime's tasks, naming the async method to use, as tokio's own
//! `blocking_recv` does (#23: `Receiver::blocking_recv` on a current-thread
//! runtime stalled it for 3 s, silently), and runs where blocking is
//! allowed: outside a runtime, in `spawn_blocking`, in `block_in_place`.
//!
//! Each call is given something to return at once (a message, free space,
//! a trip), so that without the check it returns instead of panicking: the
//! panic is the check's, never a consequence of a stall.

mod support;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use memfd_tripwire::ring::SharedRing;
use memfd_tripwire::{Backend, blocking};

/// The part of the message every such panic has.
const MESSAGE: &str = "cannot block the current thread from within a tokio runtime";

/// A blocking call, ready to run, with the async method its panic names.
struct Call {
    name: &'static str,
    instead: &'static str,
    run: Box<dyn FnOnce() + Send>,
}

/// A Poll tripwire already tripped (Poll: tripped by our own store, on any
/// host), so `wait` returns at once.
fn tripped() -> blocking::Tripwire {
    let mut tw = blocking::Tripwire::builder(64)
        .backend(Backend::Poll)
        .create()
        .expect("create");
    tw.region().write(0, &1u8).expect("write");
    let start = Instant::now();
    while tw.wait_timeout(Duration::ZERO).expect("look").is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "never tripped");
        tw.region()
            .write(0, &((start.elapsed().as_micros() % 250) as u8 + 2))
            .expect("write");
        std::thread::sleep(Duration::from_millis(1));
    }
    tw.region().write(0, &1u8).expect("write");
    tw
}

/// A ring on Doorbell (every host) with one message in it and room for more.
fn ring() -> (
    memfd_tripwire::ring::Receiver<u64>,
    memfd_tripwire::ring::Sender<u64>,
) {
    let rx = SharedRing::<u64>::builder(8)
        .backend(Backend::Doorbell)
        .create()
        .expect("ring");
    let (rx, mut tx) = support::with_sender(rx);
    tx.try_send(7).expect("send");
    (rx, tx)
}

/// Every blocking call of the public API, each on fresh objects.
fn calls() -> Vec<Call> {
    let mut calls = Vec::new();
    let mut tw = tripped();
    calls.push(Call {
        name: "blocking::Tripwire::wait",
        instead: "Tripwire::changed().await",
        run: Box::new(move || {
            tw.wait().expect("wait");
        }),
    });
    let mut tw = tripped();
    calls.push(Call {
        name: "blocking::Tripwire::wait_timeout",
        instead: "tokio::time::timeout(t, tripwire.changed()).await",
        run: Box::new(move || {
            tw.wait_timeout(Duration::from_secs(5)).expect("wait");
        }),
    });
    let tw = tripped();
    calls.push(Call {
        name: "blocking::Tripwire::wait_ready",
        instead: "Tripwire::ready().await",
        run: Box::new(move || tw.wait_ready(Some(Duration::from_secs(5))).expect("wait")),
    });
    let mut tw = tripped();
    calls.push(Call {
        name: "blocking::Tripwire::ack",
        instead: "Tripwire::ack().await",
        run: Box::new(move || tw.ack().expect("ack")),
    });
    let (mut rx, tx) = ring();
    calls.push(Call {
        name: "Receiver::blocking_recv",
        instead: "recv().await",
        run: Box::new(move || {
            assert_eq!(rx.blocking_recv().expect("recv"), Some(7));
            drop(tx);
        }),
    });
    let (mut rx, tx) = ring();
    calls.push(Call {
        name: "Receiver::blocking_recv_many",
        instead: "recv_many(buf, limit).await",
        run: Box::new(move || {
            let mut buf = Vec::new();
            assert_eq!(rx.blocking_recv_many(&mut buf, 4).expect("recv"), 1);
            drop(tx);
        }),
    });
    let (rx, mut tx) = ring();
    calls.push(Call {
        name: "Sender::blocking_send",
        instead: "send(value).await",
        run: Box::new(move || {
            tx.blocking_send(8).expect("send");
            drop(rx);
        }),
    });
    let (rx, mut tx) = ring();
    calls.push(Call {
        name: "Sender::blocking_send_many",
        instead: "send_many(values).await",
        run: Box::new(move || {
            tx.blocking_send_many(&[8, 9]).expect("send");
            drop(rx);
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
    let (mut rx, _tx) = ring();
    current_thread().block_on(async move {
        let _ = rx.blocking_recv();
    });
}

#[test]
fn blocking_calls_run_in_spawn_blocking() {
    for rt in [current_thread(), multi_thread()] {
        for Call { name, run, .. } in calls() {
            rt.block_on(async move {
                if let Err(e) = tokio::task::spawn_blocking(run).await {
                    panic!("{name} in spawn_blocking: {:?}", message(&*e.into_panic()));
                }
            });
        }
    }
}

#[test]
fn blocking_calls_run_in_block_in_place() {
    let rt = multi_thread();
    for Call { name, run, .. } in calls() {
        let outcome = in_task(&rt, Box::new(move || tokio::task::block_in_place(run)));
        assert!(outcome.is_ok(), "{name} in block_in_place: {outcome:?}");
    }
}

#[test]
fn blocking_calls_run_outside_a_runtime_and_under_enter() {
    for Call { run, .. } in calls() {
        run();
    }
    let rt = current_thread();
    let _entered = rt.enter();
    for Call { run, .. } in calls() {
        run();
    }
}
