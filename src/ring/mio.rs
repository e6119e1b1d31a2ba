//! The mio driver: a [`Receiver`] (and a [`FrameReceiver`]) is a
//! [`mio::event::Source`] through its
//! tripwire's one fd (readable while the wire is tripped, once the Sender
//! hung up, or as the replies of an ACK in flight come); the user's event
//! loop sleeps, bounded by [`Receiver::deadline`].

use std::os::fd::{AsFd, AsRawFd};

use super::Receiver;
use super::frames::FrameReceiver;

/// The methods of `mio::event::Source` through the type's one fd (`AsFd`),
/// as `mio::unix::SourceFd` registers it.
macro_rules! source_of_its_fd {
    () => {
        fn register(
            &mut self,
            registry: &mio::Registry,
            token: mio::Token,
            interests: mio::Interest,
        ) -> std::io::Result<()> {
            mio::unix::SourceFd(&self.as_fd().as_raw_fd()).register(registry, token, interests)
        }

        fn reregister(
            &mut self,
            registry: &mio::Registry,
            token: mio::Token,
            interests: mio::Interest,
        ) -> std::io::Result<()> {
            mio::unix::SourceFd(&self.as_fd().as_raw_fd()).reregister(registry, token, interests)
        }

        fn deregister(&mut self, registry: &mio::Registry) -> std::io::Result<()> {
            mio::unix::SourceFd(&self.as_fd().as_raw_fd()).deregister(registry)
        }
    };
}

/// Registers the ring's tripwire and the Sender's hang-up under one token:
/// an event means "call [`try_recv`](Receiver::try_recv) until it says
/// [`Empty`](super::TryRecvError::Empty)". `try_recv` never ACKs: once it says
/// `Empty`, call [`rearm`](Receiver::rearm) and sleep only if it returns
/// `true`, or the wire, still tripped by the last message, stays quiet.
/// Sleep until an event or the Receiver's [`deadline`](Receiver::deadline)
/// (an ACK in flight), whichever is first: at the deadline, `rearm` again
/// (it fails an ACK a stopped Sender left unanswered with `TimedOut`).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::{Duration, Instant};
/// use mio::{Events, Interest, Poll, Token};
/// use memfd_tripwire::{Backend, ring::{SharedRing, TryRecvError}};
/// # use std::os::unix::net::UnixStream;
/// # use memfd_tripwire::ring::Sender;
///
/// let mut rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create()?;
/// # let (ours, theirs) = UnixStream::pair()?;
/// # let tx = std::thread::spawn(move || Sender::<u64>::connect(theirs));
/// rx.share(ours)?; // before it, `rearm` says NotShared: nothing could wake a sleep
/// # let _tx = tx.join().unwrap()?;
/// let mut poll = Poll::new()?;
/// poll.registry().register(&mut rx, Token(1), Interest::READABLE)?;
/// let mut events = Events::with_capacity(4);
/// for _ in 0..3 {
///     match rx.try_recv() {
///         Ok(v) => println!("{v}"),
///         Err(TryRecvError::Empty) => {
///             if rx.rearm()? {
///                 let mut timeout = Duration::from_millis(10);
///                 if let Some(deadline) = rx.deadline() {
///                     timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
///                 }
///                 poll.poll(&mut events, Some(timeout))?;
///             }
///         }
///         Err(e) => return Err(e.into()),
///     }
/// }
/// # Ok(()) }
/// ```
impl<T> mio::event::Source for Receiver<T> {
    source_of_its_fd!();
}

/// Registers the ring's tripwire, as the typed ring's `Receiver` does: an
/// event means "call [`try_recv`](FrameReceiver::try_recv) until it says
/// `Empty`, then [`rearm`](FrameReceiver::rearm)" and sleep only if it
/// returns `true`, until an event or [`deadline`](FrameReceiver::deadline).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use mio::{Interest, Poll, Token};
/// use memfd_tripwire::{Backend, ring::frames::SharedFrames};
/// let mut rx = SharedFrames::builder(4096).backend(Backend::Poll).create()?;
/// let poll = Poll::new()?;
/// poll.registry().register(&mut rx, Token(1), Interest::READABLE)?;
/// # Ok(()) }
/// ```
impl mio::event::Source for FrameReceiver {
    source_of_its_fd!();
}
