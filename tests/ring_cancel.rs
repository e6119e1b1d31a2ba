//! Cancel safety of the ring's async calls, through the public API: `recv`,
//! `recv_many`, `send` and `reserve` dropped at any await point (by `select!` against a
//! future that is ready after a few polls, and by `timeout`) lose nothing
//! and duplicate nothing; `send_many` (documented as not cancel safe as a
//! whole) sends a prefix of each batch, in order, once. Each test counts its
//! cancellations and fails if there were none.
//!
//! The two ends are threads of this process, each with its own runtime, on
//! every backend available on the host (a missing one prints
//! `skipping: <why>`; `TRIPWIRE_REQUIRE` makes that a failure).

#![cfg(feature = "tokio")]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use memfd_tripwire::Backend;
use memfd_tripwire::ring::{Receiver, Sender, SharedRing};

mod support;
use support::{BACKENDS, scaled};

/// Messages per test and backend: several times tokio's coop budget (128),
/// so that calls return `Pending` with messages or space waiting, too.
const N: u64 = 3000;
/// A small ring: the Sender waits for space and the Receiver for messages.
const CAPACITY: usize = 8;

/// A ring on `backend`, its Sender connected from a thread; `None` (after a
/// `skipping:` line) if the backend is unavailable here and not required.
fn ring(name: &str, backend: Backend) -> Option<(Receiver<u64>, Sender<u64>)> {
    let rx = SharedRing::<u64>::builder(CAPACITY)
        .backend(backend)
        .create();
    Some(support::with_sender(support::or_skip(name, rx)?))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Ready at its `n`-th poll (the first if 0), waking itself until then: the
/// other branch of a `biased` `select!` is polled `n + 1` times, then
/// dropped if not done.
struct ReadyAfter(u32);

impl Future for ReadyAfter {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            return Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A small deterministic generator (xorshift), for the choice of how and
/// when to cancel.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

/// What one attempt of an async call came to.
enum Attempt<T> {
    Done(T),
    Cancelled,
}

/// Runs `call` to completion, or cancels it: dropped by a `biased`
/// `select!` after 1 to 4 polls, or by a 1 ms `timeout` (a wait that
/// outlasts it), or never.
async fn maybe_cancelled<T>(dice: &mut Dice, call: impl Future<Output = T>) -> Attempt<T> {
    match dice.roll(6) {
        0..=3 => {
            let polls = dice.roll(4) as u32;
            tokio::select! {
                biased;
                v = call => Attempt::Done(v),
                () = ReadyAfter(polls) => Attempt::Cancelled,
            }
        }
        4 => match tokio::time::timeout(Duration::from_millis(1), call).await {
            Ok(v) => Attempt::Done(v),
            Err(_) => Attempt::Cancelled,
        },
        _ => Attempt::Done(call.await),
    }
}

/// Sends 0..N from a thread, in bursts, pausing now and then so that the
/// Receiver finds the ring empty as well as full (the pauses only vary the
/// interleaving; nothing waits on them).
fn blocking_sender(mut tx: Sender<u64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut dice = Dice(0x5eed_1234);
        for v in 0..N {
            tx.blocking_send(v).expect("send");
            if dice.roll(64) == 0 {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    })
}

/// Receives everything from a thread with `blocking_recv`, pausing now and
/// then so that the Sender finds the ring full; returns what came.
fn blocking_receiver(mut rx: Receiver<u64>) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut dice = Dice(0xfeed_4321);
        let mut got = Vec::new();
        while let Some(v) = rx.blocking_recv().expect("recv") {
            got.push(v);
            if dice.roll(64) == 0 {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        got
    })
}

/// `got` is 0..N, each value once and in order; else fails, showing where
/// it went wrong (`what`: the backend and what was done to it).
fn assert_every_value_once(got: &[u64], what: &str) {
    let at = got.iter().zip(0..N).take_while(|&(&v, i)| v == i).count();
    assert!(
        at == got.len() && at as u64 == N,
        "{what}: received {} values, first difference at {at}: {:?}",
        got.len(),
        &got[at..got.len().min(at + 8)]
    );
}

/// Runs `f` on a thread and fails if it overruns a coarse bound (a hang is
/// a failure, not a stuck suite).
fn with_watchdog(what: &str, f: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    match finished.recv_timeout(scaled(Duration::from_secs(120))) {
        Ok(()) => t.join().expect("thread"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what}: hung"),
    }
}

/// `recv` cancelled at any point: every value arrives exactly once, in
/// order, then `Ok(None)`.
#[test]
fn cancelled_recv_loses_and_repeats_nothing() {
    for (name, backend) in BACKENDS {
        let Some((mut rx, tx)) = ring(name, backend) else {
            continue;
        };
        with_watchdog("recv", move || {
            let sender = blocking_sender(tx);
            let mut dice = Dice(0x1234_5678);
            let (mut next, mut cancelled) = (0u64, 0u64);
            runtime().block_on(async {
                loop {
                    match maybe_cancelled(&mut dice, rx.recv()).await {
                        Attempt::Done(Ok(Some(v))) => {
                            assert_eq!(v, next, "{backend:?}: after {cancelled} cancellations");
                            next += 1;
                        }
                        Attempt::Done(Ok(None)) => break,
                        Attempt::Done(Err(e)) => panic!("{backend:?}: {e}"),
                        Attempt::Cancelled => cancelled += 1,
                    }
                }
            });
            sender.join().expect("sender");
            println!("{backend:?}: {N} received, {cancelled} recv cancelled");
            assert_eq!(next, N, "{backend:?}: ended early");
            assert!(cancelled > 0, "{backend:?}: no recv was cancelled");
        });
    }
}

/// `recv_many` cancelled at any point: the values appended to the buffer,
/// by the calls that completed and by those cancelled, are every value
/// exactly once, in order.
#[test]
fn cancelled_recv_many_loses_and_repeats_nothing() {
    for (name, backend) in BACKENDS {
        let Some((mut rx, tx)) = ring(name, backend) else {
            continue;
        };
        with_watchdog("recv_many", move || {
            let sender = blocking_sender(tx);
            let mut dice = Dice(0x8765_4321);
            let (mut next, mut cancelled) = (0u64, 0u64);
            let mut buf = Vec::new();
            runtime().block_on(async {
                loop {
                    let limit = 1 + dice.roll(CAPACITY as u64 * 2) as usize;
                    let outcome = maybe_cancelled(&mut dice, rx.recv_many(&mut buf, limit)).await;
                    let ended = match outcome {
                        Attempt::Done(Ok(0)) => true,
                        Attempt::Done(Ok(n)) => {
                            assert!(n <= limit && n == buf.len(), "{backend:?}: {n} of {limit}");
                            false
                        }
                        Attempt::Done(Err(e)) => panic!("{backend:?}: {e}"),
                        Attempt::Cancelled => {
                            cancelled += 1;
                            false
                        }
                    };
                    for v in buf.drain(..) {
                        assert_eq!(v, next, "{backend:?}: after {cancelled} cancellations");
                        next += 1;
                    }
                    if ended {
                        break;
                    }
                }
            });
            sender.join().expect("sender");
            println!("{backend:?}: {N} received, {cancelled} recv_many cancelled");
            assert_eq!(next, N, "{backend:?}: ended early");
            assert!(cancelled > 0, "{backend:?}: no recv_many was cancelled");
        });
    }
}

/// `send` cancelled at any point, then retried with the same value: the
/// Receiver gets every value exactly once, in order.
#[test]
fn cancelled_send_loses_and_repeats_nothing() {
    for (name, backend) in BACKENDS {
        let Some((rx, mut tx)) = ring(name, backend) else {
            continue;
        };
        with_watchdog("send", move || {
            let receiver = blocking_receiver(rx);
            let mut dice = Dice(0x0bad_cafe);
            let mut cancelled = 0u64;
            runtime().block_on(async {
                for v in 0..N {
                    loop {
                        match maybe_cancelled(&mut dice, tx.send(v)).await {
                            Attempt::Done(Ok(())) => break,
                            Attempt::Done(Err(e)) => panic!("{backend:?}: {e}"),
                            Attempt::Cancelled => cancelled += 1,
                        }
                    }
                }
            });
            drop(tx);
            let got = receiver.join().expect("receiver");
            println!("{backend:?}: {N} sent, {cancelled} send cancelled");
            assert_every_value_once(&got, &format!("{backend:?}, {cancelled} cancellations"));
            assert!(cancelled > 0, "{backend:?}: no send was cancelled");
        });
    }
}

/// `reserve` cancelled at any point (often while it waits on a full ring),
/// and now and then a slot that was handed out, filled and dropped without
/// a commit, then retried: the Receiver gets every value exactly once, in
/// order, and never a dropped slot's.
#[test]
fn cancelled_reserve_loses_and_repeats_nothing() {
    for (name, backend) in BACKENDS {
        let Some((rx, mut tx)) = ring(name, backend) else {
            continue;
        };
        with_watchdog("reserve", move || {
            let receiver = blocking_receiver(rx);
            let mut dice = Dice(0x00c0_ffee);
            let (mut cancelled, mut abandoned) = (0u64, 0u64);
            runtime().block_on(async {
                for v in 0..N {
                    loop {
                        match maybe_cancelled(&mut dice, tx.reserve()).await {
                            Attempt::Done(Ok(mut slot)) if dice.roll(8) == 0 => {
                                slot.write(&u64::MAX).expect("write");
                                drop(slot);
                                abandoned += 1;
                            }
                            Attempt::Done(Ok(mut slot)) => {
                                slot.write(&v).expect("write");
                                slot.commit().expect("commit");
                                break;
                            }
                            Attempt::Done(Err(e)) => panic!("{backend:?}: {e}"),
                            Attempt::Cancelled => cancelled += 1,
                        }
                    }
                }
            });
            drop(tx);
            let got = receiver.join().expect("receiver");
            println!(
                "{backend:?}: {N} sent, {cancelled} reserve cancelled, {abandoned} slots dropped"
            );
            assert_every_value_once(&got, &format!("{backend:?}, {cancelled} cancellations"));
            assert!(cancelled > 0, "{backend:?}: no reserve was cancelled");
            assert!(abandoned > 0, "{backend:?}: no slot was dropped");
        });
    }
}

/// `send_many` cancelled at any point (not retried): of each batch the
/// Receiver gets a prefix (all of it if the call completed), batches in
/// order, each value once.
#[test]
fn cancelled_send_many_sends_a_prefix_of_each_batch() {
    for (name, backend) in BACKENDS {
        let Some((rx, mut tx)) = ring(name, backend) else {
            continue;
        };
        with_watchdog("send_many", move || {
            let receiver = blocking_receiver(rx);
            let mut dice = Dice(0xdead_beef);
            let mut cancelled = 0u64;
            // (length, completed) of each batch; value = batch << 32 | index.
            let mut batches: Vec<(u64, bool)> = Vec::new();
            runtime().block_on(async {
                let mut sent = 0;
                let mut b = 0u64;
                while sent < N {
                    let len = 1 + dice.roll(3 * CAPACITY as u64);
                    let values: Vec<u64> = (0..len).map(|i| b << 32 | i).collect();
                    match maybe_cancelled(&mut dice, tx.send_many(&values)).await {
                        Attempt::Done(Ok(())) => batches.push((len, true)),
                        Attempt::Done(Err(e)) => panic!("{backend:?}: {e:?}"),
                        Attempt::Cancelled => {
                            cancelled += 1;
                            batches.push((len, false));
                        }
                    }
                    sent += len;
                    b += 1;
                }
            });
            drop(tx);
            let got = receiver.join().expect("receiver");
            let mut at = 0;
            let mut partial = 0;
            for (b, &(len, completed)) in batches.iter().enumerate() {
                let b = b as u64;
                let mut i = 0;
                while at < got.len() && got[at] >> 32 == b {
                    assert_eq!(got[at], b << 32 | i, "{backend:?}: batch {b}, value {i}");
                    i += 1;
                    at += 1;
                }
                assert!(i <= len, "{backend:?}: batch {b}: {i} of {len}");
                if completed {
                    assert_eq!(
                        i, len,
                        "{backend:?}: batch {b} completed but {i} of {len} came"
                    );
                } else if i < len {
                    partial += 1;
                }
            }
            assert_eq!(
                at,
                got.len(),
                "{backend:?}: {:#x} is out of order or repeated",
                got.get(at).copied().unwrap_or_default()
            );
            println!(
                "{backend:?}: {} batches, {cancelled} send_many cancelled ({partial} cut short)",
                batches.len()
            );
            assert!(cancelled > 0, "{backend:?}: no send_many was cancelled");
        });
    }
}
