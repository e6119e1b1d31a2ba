//! Feature `tracing` (#23 item 9): what the crate tells a `tracing`
//! subscriber. A share (both sides, with the backend and the peer count),
//! a failed handshake, a clean close (a `Producer` dropped), a death (a
//! `Producer` dropped while its thread panics: no goodbye), the ring's
//! close and death, an ACK time-out (a Userfault producer whose agent
//! never answers), and a corrupt peer (a Sender that publishes an
//! impossible head) each give one event, at debug (handshakes, closes) or
//! warn (deaths, corrupt peers), with its fields, under the target
//! `memfd_tripwire`.
//!
//! The subscriber is a small capturing one written here (no
//! `tracing-subscriber`), installed per test and per thread
//! (`with_default`), so that tests running side by side do not see each
//! other's events.

mod support;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memfd_tripwire::ring::{Receiver, Sender, SharedRing, TryRecvError};
use memfd_tripwire::{Backend, Error, Producer, blocking};
use tracing::field::{Field, Visit};
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// One event as captured: its level, target and fields (the message as
/// `message`), each value as its `Debug` (a `%` field's `Display`).
#[derive(Debug, Clone)]
struct Captured {
    level: Level,
    target: String,
    fields: BTreeMap<String, String>,
}

impl Captured {
    fn message(&self) -> &str {
        self.fields.get("message").map_or("", String::as_str)
    }

    fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .map_or_else(|| panic!("no field {name} in {self:?}"), String::as_str)
    }
}

/// Keeps every event it is given; spans are ignored.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    /// The events whose message contains `text`.
    fn find(&self, text: &str) -> Vec<Captured> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter(|e| e.message().contains(text))
            .cloned()
            .collect()
    }

    /// The one event whose message contains `text`, from the crate.
    fn one(&self, text: &str) -> Captured {
        let found = self.find(text);
        assert_eq!(
            found.len(),
            1,
            "one event with {text:?} expected; all: {:#?}",
            self.0.lock().unwrap()
        );
        let event = found.into_iter().next().unwrap();
        assert!(
            event.target.starts_with("memfd_tripwire"),
            "target {:?}",
            event.target
        );
        event
    }

    /// Runs `f` on a new thread with this subscriber as its default: the
    /// producer's side of a handshake.
    fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        let me = self.clone();
        std::thread::spawn(move || tracing::subscriber::with_default(me, f))
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Subscriber for Capture {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // Asked at every event (another test's thread may have none).
        Interest::sometimes()
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            fields,
        });
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

/// A handshake: `share` on one end of a socket pair, `connect` on the
/// other, on a thread under `capture`; what each returned.
fn handshake<R: Send + 'static>(
    capture: &Capture,
    share: impl FnOnce(UnixStream) -> Result<(), Error>,
    connect: impl FnOnce(UnixStream) -> Result<R, Error> + Send + 'static,
) -> (Result<(), Error>, Result<R, Error>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let connected = capture.spawn(move || connect(theirs));
    let shared = share(ours);
    (shared, connected.join().unwrap())
}

/// A Doorbell tripwire (every Linux has it) shared with a producer that
/// connects on a thread under `capture`.
fn shared(capture: &Capture, tw: &mut blocking::Tripwire) -> Producer {
    let (shared, producer) = handshake(capture, |s| tw.share(s), Producer::connect);
    shared.expect("share");
    producer.expect("connect")
}

fn doorbell() -> blocking::Tripwire {
    blocking::Tripwire::builder(4096)
        .backend(Backend::Doorbell)
        .create()
        .unwrap()
}

fn ring() -> Receiver<u64> {
    SharedRing::<u64>::builder(8)
        .backend(Backend::Doorbell)
        .create()
        .unwrap()
}

/// The error the tripwire's wait ends with once every producer left.
fn end(tw: &mut blocking::Tripwire) -> std::io::Error {
    loop {
        match tw.wait_timeout(Duration::from_secs(10)) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no end after 10 s"),
            Err(e) => return e,
        }
    }
}

#[test]
fn a_share_emits_a_debug_event_on_each_side_with_backend_and_peers() {
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || {
        let mut tw = doorbell();
        let _first = shared(&capture, &mut tw);
        let consumer = capture.one("handshake completed: shared with a producer");
        assert_eq!(consumer.level, Level::DEBUG);
        assert_eq!(consumer.field("backend"), "Doorbell");
        assert_eq!(consumer.field("peers"), "1");
        assert!(consumer.field("protocol").contains("plain tripwire"));
        let producer = capture.one("handshake completed: connected to the consumer");
        assert_eq!(producer.level, Level::DEBUG);
        assert_eq!(producer.field("backend"), "Doorbell");
        assert_eq!(producer.field("peers"), "1");

        let _second = shared(&capture, &mut tw);
        let shares = capture.find("handshake completed: shared with a producer");
        assert_eq!(shares.len(), 2);
        assert_eq!(shares[1].field("peers"), "2", "the peer count");
    });
}

#[test]
fn a_failed_handshake_emits_a_debug_event_on_each_side() {
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || {
        // The producer expects a plain tripwire, the consumer offers a ring:
        // both refuse.
        let mut rx = ring();
        let (shared, producer) = handshake(&capture, |s| rx.share(s), Producer::connect);
        assert!(shared.is_err() && producer.is_err());
        let consumer = capture.one("handshake failed: the tripwire stays as it was");
        assert_eq!(consumer.level, Level::DEBUG);
        assert_eq!(consumer.field("backend"), "Doorbell");
        assert!(consumer.field("error").contains("wrong protocol"));
        let producer = capture.one("handshake failed: not connected");
        assert!(producer.field("error").contains("wrong protocol"));
        assert!(capture.find("handshake completed").is_empty());
    });
}

#[test]
fn a_dropped_producer_emits_a_debug_event_of_a_clean_close() {
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || {
        let mut tw = doorbell();
        drop(shared(&capture, &mut tw));
        assert!(Error::is_closed(&end(&mut tw)));
        let closed = capture.one("a producer closed its end");
        assert_eq!(closed.level, Level::DEBUG);
        assert_eq!(closed.field("backend"), "Doorbell");
        assert_eq!(closed.field("closed"), "1");
        assert_eq!(closed.field("died"), "0");
        assert!(capture.find("died").is_empty(), "no death reported");
    });
}

#[test]
fn a_producer_dropped_in_a_panic_emits_a_warn_event_of_a_death() {
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || {
        let mut tw = doorbell();
        let producer = shared(&capture, &mut tw);
        // Unwinds without the panic hook's message: the drop sees
        // `thread::panicking()` and says no goodbye.
        let dying = std::thread::spawn(move || {
            let _producer = producer;
            std::panic::resume_unwind(Box::new("the producer dies"));
        });
        assert!(dying.join().is_err());
        assert!(Error::is_peer_died(&end(&mut tw)));
        let died = capture.one("a producer died");
        assert_eq!(died.level, Level::WARN);
        assert_eq!(died.field("backend"), "Doorbell");
        assert_eq!(died.field("closed"), "0");
        assert_eq!(died.field("died"), "1");
        assert!(capture.find("closed its end").is_empty());
    });
}

#[test]
fn a_ring_emits_its_close_and_its_senders_death() {
    for dies in [false, true] {
        let capture = Capture::default();
        tracing::subscriber::with_default(capture.clone(), || {
            let mut rx = ring();
            let (shared, tx) = handshake(&capture, |s| rx.share(s), Sender::<u64>::connect);
            shared.expect("share");
            let mut tx = tx.expect("connect");
            tx.try_send(7).unwrap();
            if dies {
                let dying = std::thread::spawn(move || {
                    let _tx = tx;
                    std::panic::resume_unwind(Box::new("the sender dies"));
                });
                assert!(dying.join().is_err());
            } else {
                drop(tx);
            }
            assert_eq!(rx.blocking_recv().unwrap(), Some(7));
            let ended = rx.blocking_recv();
            if dies {
                assert!(matches!(ended, Err(Error::PeerDied)), "{ended:?}");
                let died = capture.one("ring ended: its Sender died");
                assert_eq!(died.level, Level::WARN);
                assert_eq!(died.field("backend"), "Doorbell");
                assert_eq!(died.field("received"), "1");
            } else {
                assert!(matches!(ended, Ok(None)), "{ended:?}");
                let closed = capture.one("ring closed: its Sender closed it");
                assert_eq!(closed.level, Level::DEBUG);
                assert_eq!(closed.field("received"), "1");
            }
        });
    }
}

#[test]
fn an_impossible_head_emits_a_warn_event_of_a_corrupt_peer() {
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || {
        let mut rx = ring();
        // A hostile Sender: takes the ring's frame without checking it,
        // then publishes a head 9 ahead in a ring of 8 (the head is the
        // tripwire region's first word).
        let (shared, tx) = handshake(
            &capture,
            |s| rx.share(s),
            |s| Producer::connect_with_fds(s, *b"MFDTRING", 3, |_, fds| Ok(fds)),
        );
        shared.expect("share");
        let (producer, _fds) = tx.expect("connect");
        producer.region().write(0, &9u64).unwrap();
        producer.notify().unwrap();
        let got = rx.try_recv();
        assert!(
            matches!(got, Err(TryRecvError::Failed(Error::Corrupt { .. }))),
            "{got:?}"
        );
        let corrupt = capture.one("corrupt peer");
        assert_eq!(corrupt.level, Level::WARN);
        assert_eq!(corrupt.field("end"), "Receiver");
        assert!(corrupt.field("error").contains("head 9"));
    });
}

/// A fake Userfault producer: takes the offer, keeps its fds (the agent's
/// channel among them) and says yes, then never answers an ACK, as a
/// stopped producer would not.
fn silent_userfault_producer(sock: UnixStream) -> Result<(UnixStream, Vec<OwnedFd>), Error> {
    let fds = support::recv_frame(&sock, &mut [0u8; 32]);
    // The reply: magic, version 5, status 0 (ok), no message, a plain
    // tripwire.
    let mut reply = Vec::from(*b"MFDTWACK");
    reply.extend_from_slice(&5u16.to_le_bytes());
    reply.extend_from_slice(&0u16.to_le_bytes());
    reply.extend_from_slice(&0u32.to_le_bytes());
    reply.extend_from_slice(&[0; 8]);
    (&sock).write_all(&reply).unwrap();
    Ok((sock, fds))
}

#[test]
fn an_ack_a_producer_never_answers_emits_a_warn_event_of_a_time_out() {
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || {
        let created = blocking::Tripwire::builder(4096)
            .backend(Backend::Userfault)
            .create();
        let Some(mut tw) = support::or_skip("userfault", created) else {
            return;
        };
        let (shared, silent) = handshake(&capture, |s| tw.share(s), silent_userfault_producer);
        shared.expect("share");
        let _silent = silent.expect("the fake producer");
        let acked = tw.ack();
        assert!(
            matches!(&acked, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
            "{acked:?}"
        );
        let timed_out = capture.one("ACK timed out");
        assert_eq!(timed_out.level, Level::WARN);
        assert_eq!(timed_out.field("backend"), "Userfault");
        assert_eq!(timed_out.field("producers"), "1");
        assert!(timed_out.field("error").contains("did not answer"));
        assert_eq!(tw.stats().ack_timeouts, 1);
    });
}
