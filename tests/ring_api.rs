//! The ring's API as a user meets it, through the public API only: what
//! `try_recv` tells apart, the slice calls, `len`/`flush`, the default type
//! tag, and the follow-up frame the ring rides on.
//!
//! Runs on the host (`Doorbell`; the conformance suite runs the ring on every
//! backend).

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use memfd_tripwire::ring::{Receiver, SendManyError, Sender, SharedRing, TryRecvError, type_tag};
use memfd_tripwire::{Backend, Error, Producer, SharedMemory, blocking};

fn ring<T: bytemuck::Pod>(capacity: usize) -> (Receiver<T>, Sender<T>) {
    ring_on(Backend::Doorbell, capacity)
}

fn ring_on<T: bytemuck::Pod>(backend: Backend, capacity: usize) -> (Receiver<T>, Sender<T>) {
    let mut rx = SharedRing::<T>::builder(capacity)
        .backend(backend)
        .create()
        .expect("ring");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let tx = std::thread::spawn(move || Sender::<T>::connect(theirs));
    rx.share(ours).expect("share");
    (rx, tx.join().expect("thread").expect("connect"))
}

/// `try_recv` says `Empty` while the Sender lives, hands over everything it
/// sent, then `Closed` once it was dropped, and `Closed` ever after.
#[test]
fn try_recv_tells_empty_from_closed() {
    let (mut rx, mut tx) = ring::<u64>(8);
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    tx.try_send(1).expect("send");
    tx.try_send(2).expect("send");
    assert_eq!(rx.len(), 2);
    assert_eq!(rx.try_recv(), Ok(1));
    drop(tx);
    assert_eq!(rx.try_recv(), Ok(2), "what was sent before the close");
    assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    let mut buf = [0u64; 4];
    assert_eq!(rx.try_recv_into(&mut buf), Err(TryRecvError::Closed));
}

/// The slice calls: as many as fit, in order, across the wrap.
#[test]
fn slices_go_in_and_come_out_in_order_across_the_wrap() {
    let (mut rx, mut tx) = ring::<u32>(8);
    let mut next_out = 0u32;
    let mut next_in = 0u32;
    for round in 0..20 {
        // Sends up to 5 at a time into a ring of 8: the runs wrap.
        let values: Vec<u32> = (next_out..next_out + 5).collect();
        let n = tx.try_send_slice(&values).expect("send");
        assert!(n <= 5 && (n > 0 || tx.is_full()), "round {round}: sent {n}");
        next_out += n as u32;
        let mut buf = [0u32; 3];
        match rx.try_recv_into(&mut buf) {
            Ok(got) => {
                for v in &buf[..got] {
                    assert_eq!(*v, next_in);
                    next_in += 1;
                }
            }
            Err(TryRecvError::Empty) => {}
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    // Drain the rest.
    let mut buf = [0u32; 8];
    while next_in < next_out {
        let got = rx.try_recv_into(&mut buf).expect("what was sent");
        for v in &buf[..got] {
            assert_eq!(*v, next_in);
            next_in += 1;
        }
    }
    assert_eq!(rx.try_recv_into(&mut buf), Err(TryRecvError::Empty));
    assert_eq!(rx.try_recv_into(&mut []), Ok(0));
    assert!(rx.is_empty());
}

/// A full ring: `try_send_slice` sends nothing, `is_full` on both ends, and
/// the Sender sees free slots only once the Receiver publishes its tail,
/// which `flush` does at once.
#[test]
fn flush_publishes_the_tail_now() {
    let (mut rx, mut tx) = ring::<u64>(16);
    let all: Vec<u64> = (0..16).collect();
    assert_eq!(tx.try_send_slice(&all).expect("send"), 16);
    assert!(tx.is_full() && rx.is_full());
    assert_eq!(tx.try_send_slice(&[99]).expect("full"), 0);
    assert_eq!(rx.try_recv(), Ok(0));
    // One of 16 taken: below the batch (a quarter ring), not yet published.
    assert_eq!(tx.len(), 16, "the tail is published in batches");
    rx.flush().expect("flush");
    assert_eq!(tx.len(), 15);
    assert_eq!(tx.try_send_slice(&[99]).expect("send"), 1);
}

/// A Sender of another type of the same size is refused with the default
/// tags; a tag set on both ends is accepted.
#[test]
fn the_default_tag_tells_types_of_one_size_apart() {
    assert_ne!(type_tag::<u64>(), type_tag::<[u64; 1]>());
    let mut rx = SharedRing::<u64>::builder(8)
        .backend(Backend::Doorbell)
        .create()
        .expect("ring");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let tx = std::thread::spawn(move || Sender::<[u64; 1]>::connect(theirs).map(drop));
    let refused = rx.share(ours);
    let sender = tx.join().expect("thread");
    assert!(
        matches!(&sender, Err(Error::LayoutMismatch { reason }) if reason.contains("type tag")),
        "{sender:?}"
    );
    assert!(refused.is_err(), "the receiver hears the refusal");

    // The same Receiver, refused once, can still be shared.
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let tx = std::thread::spawn(move || Sender::<u64>::connect(theirs));
    rx.share(ours).expect("share after a refusal");
    let mut tx = tx.join().expect("thread").expect("connect");
    tx.try_send(5).expect("send");
    assert_eq!(rx.try_recv(), Ok(5));

    const TAG: u64 = 0x5eed;
    let mut rx = SharedRing::<u64>::builder(8)
        .backend(Backend::Doorbell)
        .type_tag(TAG)
        .create()
        .expect("ring");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let tx = std::thread::spawn(move || Sender::<[u64; 1]>::connect_with_tag(theirs, TAG));
    rx.share(ours).expect("share");
    let mut tx = tx.join().expect("thread").expect("connect");
    tx.try_send([42]).expect("send");
    assert_eq!(rx.try_recv(), Ok(42));
}

/// `SendManyError` says how many went out; `?` turns the send errors into
/// `Error`.
#[test]
fn send_many_says_how_many_went_out() {
    let (rx, mut tx) = ring::<u64>(4);
    drop(rx);
    let values: Vec<u64> = (0..10).collect();
    let SendManyError { sent, error } = tx.blocking_send_many(&values).expect_err("no receiver");
    // The Receiver was dropped (a clean close): nothing goes out.
    assert_eq!(sent, 0, "published before the error");
    assert!(matches!(error, Error::Closed), "{error}");
    let e: Error = tx.blocking_send(1).expect_err("no receiver").into();
    assert!(matches!(e, Error::Closed));
    assert!(tx.is_closed());
}

/// The follow-up frame: the producer's verdict reaches the consumer; a
/// refusal leaves the tripwire unshared (it does not report its producers
/// gone) and free to be shared again.
#[test]
fn a_refused_follow_up_frame_leaves_the_tripwire_unshared() {
    const TAG: [u8; 8] = *b"TESTTAG1";
    let mut tw = blocking::Tripwire::builder(4096)
        .backend(Backend::Doorbell)
        .create()
        .expect("tripwire");
    let extra = SharedMemory::create(4096).expect("memory");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let producer = std::thread::spawn(move || {
        Producer::connect_with_fds(theirs, TAG, 1, |_, _fds| -> Result<(), Error> {
            Err(Error::LayoutMismatch {
                reason: "not the memory I want".into(),
            })
        })
        .map(drop)
    });
    let refused = tw.share_with_fds(ours, TAG, &[extra.as_fd()]);
    let producer = producer.join().expect("thread");
    assert!(producer.is_err());
    assert!(
        matches!(&refused, Err(Error::Handshake { reason }) if reason.contains("not the memory")),
        "{refused:?}"
    );
    assert!(!tw.producers_gone().expect("peers"), "never shared");

    // Another tag, or another number of fds, is refused by the producer.
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let producer =
        std::thread::spawn(move || Producer::connect_with_fds(theirs, TAG, 2, |_, _| Ok(())));
    assert!(tw.share_with_fds(ours, TAG, &[extra.as_fd()]).is_err());
    assert!(producer.join().expect("thread").is_err());

    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let producer = std::thread::spawn(move || {
        Producer::connect_with_fds(theirs, TAG, 1, |_, mut fds| {
            SharedMemory::from_fd(fds.remove(0))
        })
    });
    tw.share_with_fds(ours, TAG, &[extra.as_fd()])
        .expect("accepted");
    let (producer, theirs) = producer.join().expect("thread").expect("connect");
    theirs.region().write(0, &7u32).expect("write");
    assert_eq!(extra.region().read::<u32>(0).expect("read"), 7);
    producer.region().write(0, &1u8).expect("store");
    producer.notify().expect("notify");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tw.try_changed().expect("look").is_none() {
        assert!(Instant::now() < deadline, "no trip");
        tw.wait_ready(Some(Duration::from_millis(100)))
            .expect("wait");
    }
    drop(producer);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tw.producers_gone().expect("peers") {
        assert!(Instant::now() < deadline, "the hang-up was not seen");
        tw.wait_ready(Some(Duration::from_millis(100)))
            .expect("wait");
    }
}

/// A Sender dropped cleanly while a copy of its handshake socket lives on
/// (a dup, a forked child): the Receiver ends with `Ok(None)` anyway, from
/// the close flag, instead of sleeping for a hang-up that never comes.
#[test]
fn a_clean_close_ends_the_ring_while_the_socket_lives_on() {
    let mut rx = SharedRing::<u64>::builder(8)
        .backend(Backend::Doorbell)
        .create()
        .expect("ring");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let lingering = theirs.try_clone().expect("dup");
    let tx = std::thread::spawn(move || Sender::<u64>::connect(theirs));
    rx.share(ours).expect("share");
    let mut tx = tx.join().expect("thread").expect("connect");
    tx.try_send(1).expect("send");
    drop(tx);
    let (done, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let first = rx.blocking_recv().map_err(|e| e.to_string());
        let end = rx.blocking_recv().map_err(|e| e.to_string());
        let _ = done.send((first, end));
    });
    let (first, end) = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the Receiver slept through a clean close");
    assert_eq!(first, Ok(Some(1)));
    assert_eq!(end, Ok(None));
    drop(lingering);
}

/// A Sender dropped by a panic's unwinding closes nothing: what it meant to
/// send may be missing, so the Receiver takes what was published, then
/// `PeerDied`, not the `Ok(None)` of a clean close.
#[test]
fn a_sender_dropped_by_a_panic_is_a_death() {
    for backend in [Backend::Doorbell, Backend::Poll] {
        let (mut rx, mut tx) = ring_on::<u64>(backend, 8);
        let sender = std::thread::spawn(move || {
            tx.try_send(1).expect("send");
            std::panic::set_hook(Box::new(|_| {}));
            panic!("on purpose, with the Sender in scope");
        });
        assert!(sender.join().is_err(), "the thread panicked");
        let _ = std::panic::take_hook();
        let (done, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let first = rx.blocking_recv();
            let end = rx.blocking_recv();
            let _ = done.send((first, end));
        });
        let (first, end) = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the Receiver slept through the Sender's death");
        assert_eq!(first.expect("the message sent"), Some(1), "{backend:?}");
        assert!(matches!(end, Err(Error::PeerDied)), "{backend:?}: {end:?}");
    }
}

/// A ring has one producer: a second `share` is refused.
#[test]
fn a_ring_is_shared_once() {
    let (mut rx, _tx) = ring::<u64>(8);
    let (ours, _theirs) = UnixStream::pair().expect("socketpair");
    let again = rx.share(ours);
    assert!(
        matches!(&again, Err(Error::Handshake { reason }) if reason.contains("already")),
        "{again:?}"
    );
}
