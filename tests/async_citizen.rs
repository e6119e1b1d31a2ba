//! The async layer as a tokio user meets it: the coop budget, registration
//! that never loses a tripwire, a ring Receiver that works before and after
//! its first poll, and a Sender that registers with the reactor once.
//!
//! Runs on the host only (it needs no kernel facility beyond `Doorbell` and
//! `Poll`). The tests take one lock: some count this process's fds.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use memfd_tripwire::ring::{Receiver, Sender, SharedRing, TryRecvError};
use memfd_tripwire::{Backend, BackendKind, Producer, Tripwire, blocking};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A ring of `capacity` u64 and its Sender, attached on another thread.
fn ring(capacity: usize) -> (Receiver<u64>, Sender<u64>) {
    let mut rx = SharedRing::<u64>::builder(capacity)
        .backend(Backend::Doorbell)
        .create()
        .expect("ring");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let tx = std::thread::spawn(move || Sender::<u64>::connect(theirs));
    rx.share(ours).expect("share");
    (rx, tx.join().expect("thread").expect("connect"))
}

/// Runs `busy` as a task on a current-thread runtime next to a ticker task
/// that counts how often it gets the thread; returns `busy`'s output and
/// the ticks.
fn ticks_while<F>(busy: F) -> (F::Output, u64)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    current_thread().block_on(async move {
        let stop = Arc::new(AtomicBool::new(false));
        let ticks = Arc::new(AtomicU64::new(0));
        let ticker = tokio::spawn({
            let (stop, ticks) = (stop.clone(), ticks.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }
        });
        let out = tokio::spawn(busy).await.expect("the busy task");
        stop.store(true, Ordering::Relaxed);
        ticker.await.expect("ticker");
        (out, ticks.load(Ordering::Relaxed))
    })
}

/// tokio's budget is 128 units: the ticker must run about once per 128
/// units of busy work, so at least once per 1,000.
fn assert_yielded(ticks: u64, units: u64, what: &str) {
    assert!(
        ticks >= units / 1_000,
        "the ticker ran {ticks} times while {units} {what}"
    );
}

/// A Receiver draining a ring that never runs dry yields to the other tasks
/// of its thread: without the coop budget, `recv().await` returns Ready for
/// as long as messages are there, and the ticker never runs.
#[test]
fn a_busy_ring_receiver_lets_other_tasks_run() {
    let _serial = serial();
    const MESSAGES: u64 = 200_000;
    let (mut rx, mut tx) = ring(1 << 18);
    // Every message is there before the first recv: it never waits.
    let all: Vec<u64> = (0..MESSAGES).collect();
    tx.blocking_send_many(&all).expect("fill");
    assert_eq!(rx.len() as u64, MESSAGES);
    let (rx, ticks) = ticks_while(async move {
        for i in 0..MESSAGES {
            assert_eq!(rx.recv().await.expect("recv"), Some(i));
        }
        rx
    });
    drop((rx, tx));
    assert_yielded(ticks, MESSAGES, "messages were received");
}

/// A Sender whose ring always has room yields too: `send().await` never
/// waits then.
#[test]
fn a_busy_ring_sender_lets_other_tasks_run() {
    let _serial = serial();
    const MESSAGES: u64 = 200_000;
    let (mut rx, mut tx) = ring(1 << 16);
    let receiver = std::thread::spawn(move || {
        let mut n = 0u64;
        while let Ok(Some(_)) = rx.blocking_recv() {
            n += 1;
        }
        n
    });
    let ((), ticks) = ticks_while(async move {
        for i in 0..MESSAGES {
            tx.send(i).await.expect("send");
        }
    });
    assert_eq!(receiver.join().expect("receiver"), MESSAGES);
    assert_yielded(ticks, MESSAGES, "messages were sent");
}

/// `changed().await` on a wire that is tripped at every look yields too.
#[test]
fn a_busy_tripwire_lets_other_tasks_run() {
    let _serial = serial();
    const EPOCHS: u64 = 20_000;
    let mut tw = blocking::Tripwire::builder(64)
        .backend(Backend::Doorbell)
        .create()
        .expect("tripwire");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let producer = std::thread::spawn(move || Producer::connect(theirs));
    tw.share(ours).expect("share");
    let producer = producer.join().expect("thread").expect("connect");
    let ((), ticks) = ticks_while(async move {
        let mut tw = Tripwire::new(tw).expect("register");
        for i in 1..=EPOCHS {
            // The producer stores and rings before each look, so `changed`
            // never has to wait.
            producer.region().write(0, &i).expect("store");
            producer.notify().expect("notify");
            assert_eq!(tw.changed().await.expect("changed").get(), i);
        }
    });
    assert_yielded(ticks, EPOCHS, "epochs were taken");
}

/// Registration outside a runtime fails, and hands the tripwire back, shared
/// and working: it still sees its producer's stores, blocking, and registers
/// later inside a runtime.
#[test]
fn a_failed_registration_hands_the_tripwire_back() {
    let _serial = serial();
    let mut tw = blocking::Tripwire::builder(64)
        .backend(Backend::Doorbell)
        .create()
        .expect("tripwire");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let producer = std::thread::spawn(move || Producer::connect(theirs));
    tw.share(ours).expect("share");
    let producer = producer.join().expect("thread").expect("connect");

    let err = Tripwire::new(tw).expect_err("no runtime here");
    assert!(err.to_string().contains("runtime"), "{err}");
    let (mut tw, _why) = err.into_parts();
    producer.region().write(0, &1u64).expect("store");
    producer.notify().expect("notify");
    let epoch = tw
        .wait_timeout(Duration::from_secs(5))
        .expect("wait")
        .expect("a trip");
    assert_eq!(epoch.get(), 1);

    let rt = current_thread();
    rt.block_on(async {
        let mut tw = tw.into_async().expect("register inside a runtime");
        producer.region().write(0, &2u64).expect("store");
        producer.notify().expect("notify");
        let epoch = tokio::time::timeout(Duration::from_secs(5), tw.changed())
            .await
            .expect("in time")
            .expect("changed");
        assert_eq!(epoch, tw.epoch());
        assert_eq!(epoch.get(), 2);
    });
}

/// A ring Receiver polled outside a runtime reports the failed
/// registration and stays whole: `backend()`, `blocking_recv` and, later,
/// `recv().await` inside a runtime all work. (Shared first: a Receiver
/// never shared is refused before it registers, #23.)
#[test]
fn a_receiver_polled_outside_a_runtime_stays_whole() {
    let _serial = serial();
    let mut rx = SharedRing::<u64>::builder(8)
        .backend(Backend::Doorbell)
        .create()
        .expect("ring");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let tx = std::thread::spawn(move || {
        let mut tx = Sender::<u64>::connect(theirs)?;
        // Nothing sent until the failed poll is done: it must wait.
        let _ = wait.recv();
        tx.blocking_send(7)?;
        tx.blocking_send(8)?;
        Ok::<_, memfd_tripwire::Error>(tx)
    });
    rx.share(ours).expect("share");
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match rx.poll_recv(&mut cx) {
        std::task::Poll::Ready(Err(e)) => {
            assert!(e.to_string().contains("tokio"), "{e}");
        }
        other => panic!("expected a registration error, got {other:?}"),
    }
    assert_eq!(rx.backend(), BackendKind::Doorbell);
    go.send(()).expect("sender thread");
    assert_eq!(rx.blocking_recv().expect("recv"), Some(7));
    let tx = tx.join().expect("thread").expect("sender");
    let rt = current_thread();
    rt.block_on(async {
        assert_eq!(rx.recv().await.expect("recv"), Some(8));
        drop(tx);
        assert_eq!(rx.recv().await.expect("recv"), None, "a clean close");
    });
}

/// A Receiver polled before `share` is told at once that it was never
/// shared (#23: it used to stay pending for ever), and works once shared.
#[test]
fn a_receiver_shared_after_its_first_poll_works() {
    let _serial = serial();
    let mut rx = SharedRing::<u64>::builder(8)
        .backend(Backend::Poll)
        .poll_interval(Duration::from_millis(1))
        .create()
        .expect("ring");
    let rt = current_thread();
    rt.block_on(async {
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(rx.poll_recv(cx))).await;
        assert!(
            matches!(
                first,
                std::task::Poll::Ready(Err(memfd_tripwire::Error::NotShared { .. }))
            ),
            "never shared: {first:?}"
        );
    });
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let tx = std::thread::spawn(move || {
        let mut tx = Sender::<u64>::connect(theirs)?;
        tx.blocking_send(42)?;
        Ok::<_, memfd_tripwire::Error>(tx)
    });
    rx.share(ours).expect("share after the first poll");
    let tx = tx.join().expect("thread").expect("sender");
    rt.block_on(async {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("in time");
        assert_eq!(got.expect("recv"), Some(42));
        drop(tx);
        let end = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("in time");
        assert_eq!(end.expect("recv"), None);
    });
    assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// A Sender that waits for space again and again registers with the
/// reactor once (one epoll set of its space bell and its handshake socket):
/// while it waits, it holds one fd more than before its first wait, every
/// time, the same one (it used to dup and register two new fds per wait,
/// then two duplicates once).
#[test]
fn a_sender_registers_with_the_reactor_once() {
    let _serial = serial();
    const WAITS: u64 = 50;
    let (mut rx, mut tx) = ring(2);
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    // Takes one message each time it is told to.
    let receiver = std::thread::spawn(move || {
        let mut n = 0;
        while go_rx.recv().is_ok() {
            match rx.blocking_recv() {
                Ok(Some(_)) => n += 1,
                _ => break,
            }
        }
        n
    });
    let rt = current_thread();
    let (tx, baseline, during) = rt.block_on(async move {
        let baseline = open_fds();
        let mut during = Vec::new();
        for i in 0..WAITS {
            while tx.try_send(i).is_ok() {}
            let mut send = std::pin::pin!(tx.send(i));
            let first = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(std::future::Future::poll(send.as_mut(), cx))
            })
            .await;
            assert!(first.is_pending(), "the ring is full: the send waits");
            during.push(open_fds());
            go.send(()).expect("receiver");
            send.await.expect("send");
        }
        drop(go);
        (tx, baseline, during)
    });
    drop(tx);
    assert_eq!(receiver.join().expect("receiver"), WAITS);
    assert!(
        during.iter().all(|&n| n == baseline + 1),
        "fds while waiting for space, against {baseline} before: {during:?}"
    );
}
