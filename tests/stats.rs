//! The tripwire's counters (#23 item 9): `blocking::Tripwire::stats()`
//! and the async `Tripwire::stats()` count the trips taken, the ACKs done,
//! the producers that connected, and those that left, a clean close (a
//! dropped `Producer`) apart from a death (one dropped while its thread
//! panics, which says no goodbye). Always on: no feature needed.

mod support;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use memfd_tripwire::blocking::TripwireStats;
use memfd_tripwire::{Backend, Error, Producer, Tripwire, blocking};
use support::or_skip;

fn connect(tw: &mut blocking::Tripwire) -> Producer {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let producer = std::thread::spawn(move || Producer::connect(theirs));
    tw.share(ours).expect("share");
    producer.join().unwrap().expect("connect")
}

/// Drops `producer` while its thread unwinds: no goodbye, a death.
fn die(producer: Producer) {
    let dying = std::thread::spawn(move || {
        let _producer = producer;
        std::panic::resume_unwind(Box::new("the producer dies"));
    });
    assert!(dying.join().is_err());
}

/// `f` on a tripwire of each backend that counts without a kernel of its
/// own or a userfaultfd: `Poll` and `Doorbell`.
fn on_poll_and_doorbell(mut f: impl FnMut(&str, blocking::Tripwire)) {
    for (name, backend) in [("poll", Backend::Poll), ("doorbell", Backend::Doorbell)] {
        let created = blocking::Tripwire::builder(4096).backend(backend).create();
        if let Some(tw) = or_skip(name, created) {
            f(name, tw);
        }
    }
}

#[test]
fn trips_and_acks_count_up_on_poll_and_doorbell() {
    on_poll_and_doorbell(|name, mut tw| {
        let producer = connect(&mut tw);
        assert_eq!(
            tw.stats(),
            TripwireStats {
                producers_connected: 1,
                ..TripwireStats::default()
            },
            "{name}: before any trip"
        );
        for i in 1..=3u64 {
            producer.region().write(0, &i).unwrap();
            producer.notify().unwrap();
            let epoch = tw.wait_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(epoch.map(|e| e.get()), Some(i), "{name}");
            let stats = tw.stats();
            assert_eq!((stats.trips, stats.acks), (i, i), "{name}: after trip {i}");
        }
        // An ACK of its own counts as an ACK, not a trip.
        tw.ack().unwrap();
        assert!(tw.try_ack().unwrap());
        let stats = tw.stats();
        assert_eq!((stats.trips, stats.acks), (3, 5), "{name}: after two ACKs");
        assert_eq!(stats.ack_timeouts, 0, "{name}");
        assert_eq!(
            (stats.producers_closed, stats.producers_died),
            (0, 0),
            "{name}"
        );
    });
}

#[test]
fn closes_and_deaths_are_counted_apart() {
    on_poll_and_doorbell(|name, mut tw| {
        let a = connect(&mut tw);
        let b = connect(&mut tw);
        let c = connect(&mut tw);
        drop(a);
        drop(b);
        die(c);
        let end = loop {
            match tw.wait_timeout(Duration::from_secs(10)) {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("{name}: no end after 10 s"),
                Err(e) => break e,
            }
        };
        assert!(Error::is_peer_died(&end), "{name}: {end}");
        let stats = tw.stats();
        assert_eq!(stats.producers_connected, 3, "{name}");
        assert_eq!(stats.producers_closed, 2, "{name}: clean closes");
        assert_eq!(stats.producers_died, 1, "{name}: deaths");
    });
}

#[test]
fn the_async_tripwire_and_its_stream_show_the_same_counters() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tw = blocking::Tripwire::builder(4096)
            .backend(Backend::Doorbell)
            .create()
            .unwrap();
        let mut tw = Tripwire::new(tw).unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let producer = tokio::spawn(Producer::connect_async(theirs));
        tw.share(ours).await.expect("share");
        let producer = producer.await.unwrap().expect("connect");
        producer.region().write(0, &1u8).unwrap();
        producer.notify().unwrap();
        assert_eq!(tw.changed().await.unwrap().get(), 1);
        drop(producer);
        let end = tw.changed().await.unwrap_err();
        assert!(Error::is_closed(&end), "{end}");
        let stats = tw.stats();
        assert_eq!(stats, tw.get_ref().stats());
        assert_eq!(
            stats,
            TripwireStats {
                trips: 1,
                acks: 1,
                ack_timeouts: 0,
                producers_connected: 1,
                producers_closed: 1,
                producers_died: 0,
            }
        );
        let changes = tw.into_stream();
        assert_eq!(changes.get_ref().stats(), stats);
    });
}
