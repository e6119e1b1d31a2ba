//! [`Producer`]: the writing side, in whatever process received the tripwire.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use crate::backend::{Feed, GoneFlag};
use crate::handoff::{self, Protocol, Wait};
use crate::sys::Bell;
use crate::{BackendKind, Error, Region, trace};

/// The producer's end of a tripwire: its memory, and `notify()`.
///
/// Get one with [`Producer::connect`] over a `UnixStream` whose other end was
/// passed to [`blocking::Tripwire::share`](crate::blocking::Tripwire::share)
/// (any backend), or with [`Producer::from_fd`] from a raw `memfd_tripwire`
/// fd that came from anywhere (a VFIO-user client, say; `Kernel` only).
///
/// Write through [`region`](Producer::region), then call
/// [`notify`](Producer::notify). `notify()` is what `Backend::Doorbell`
/// relies on; on every other backend it is a no-op, so code written against
/// `Producer` works on all of them.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::unix::net::UnixStream;
/// use std::time::Duration;
/// use memfd_tripwire::{Backend, Producer, blocking::Tripwire};
///
/// let (ours, theirs) = UnixStream::pair()?;
/// // Normally in another process, which got `theirs` by inheritance or SCM_RIGHTS.
/// let producer = std::thread::spawn(move || Producer::connect(theirs));
/// let mut tw = Tripwire::builder(4096).backend(Backend::Doorbell).create()?;
/// tw.share(ours)?;
/// let producer = producer.join().unwrap()?;
///
/// producer.region().write(0, &42u32)?;
/// producer.notify()?;
/// assert!(tw.wait_timeout(Duration::from_secs(5))?.is_some());
/// assert_eq!(tw.region().read::<u32>(0)?, 42);
/// # Ok(()) }
/// ```
pub struct Producer {
    kind: BackendKind,
    region: Region,
    /// The backend's producer half (its file in `backend/` has both).
    feed: Feed,
    peer: Option<Bell>,
    /// Set when the consumer hangs up (the peer socket's watch): read by
    /// `notify()` and a ring Sender's sends, so that a death is learned at
    /// the next call.
    gone: Option<GoneFlag>,
    /// The process that connected: a forked child's copy says no goodbye
    /// (the socket is still its parent's).
    pid: u32,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("backend", &self.kind)
            .field("region", &self.region)
            .field("connected", &self.peer.is_some())
            .finish()
    }
}

impl Producer {
    /// Wraps a `memfd_tripwire` fd received from anywhere.
    ///
    /// The fd is checked before use (`/proc/self/fd` link
    /// `anon_inode:memfd_tripwire`, `S_IFREG`, mode 0600) and its size must
    /// already be set. [`notify`](Producer::notify) is a no-op. Without a
    /// handshake socket there is no way to learn that the consumer died.
    ///
    /// # Errors
    ///
    /// [`Error::NotATripwire`] if the fd is something else (it is closed, as
    /// it is ours), [`Error::Io`] if mapping it fails.
    ///
    /// ```
    /// use memfd_tripwire::{Error, Producer};
    /// # fn main() -> std::io::Result<()> {
    /// let not_a_tripwire = std::fs::File::open("/dev/null")?;
    /// let err = Producer::from_fd(not_a_tripwire.into()).unwrap_err();
    /// assert!(matches!(err, Error::NotATripwire { .. }));
    /// # Ok(()) }
    /// ```
    pub fn from_fd(fd: OwnedFd) -> Result<Producer, Error> {
        let (feed, region) = Feed::from_fd(fd)?;
        Ok(Producer {
            kind: BackendKind::Kernel,
            region,
            feed,
            peer: None,
            gone: None,
            pid: std::process::id(),
        })
    }

    /// Receives a tripwire from a consumer that called
    /// [`share`](crate::blocking::Tripwire::share) on the other end of
    /// `sock`, and tells it whether attaching worked (so a failure here
    /// surfaces on both sides). Keep the returned `Producer` for as long as
    /// the pair works together: the socket's hang-up tells the consumer that
    /// the producer is gone.
    ///
    /// Blocks for the handshake; gives up after 10 s of silence. In async
    /// code, use `connect_async` (feature `tokio`), which never blocks the
    /// runtime's thread.
    ///
    /// # Errors
    ///
    /// [`Error::Handshake`] for a malformed or unexpected frame, an fd that is
    /// not what the backend needs (an unsealed or short memfd, a pipe, ...),
    /// or a consumer that hangs up; "wrong protocol", naming both, at once,
    /// if the consumer offered something else than a plain tripwire (a
    /// ring's `Receiver::share`, or `share_with_fds`: it fails at once
    /// too); [`Error::Io`] if mapping fails.
    ///
    /// ```no_run
    /// // In a process started with the handshake socket as its stdin:
    /// use std::os::fd::{AsFd, OwnedFd};
    /// use std::os::unix::net::UnixStream;
    /// # fn main() -> Result<(), memfd_tripwire::Error> {
    /// let stdin: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
    /// let producer = memfd_tripwire::Producer::connect(UnixStream::from(stdin))?;
    /// producer.region().write(0, &1u64)?;
    /// producer.notify().unwrap();
    /// # Ok(()) }
    /// ```
    pub fn connect(sock: UnixStream) -> Result<Producer, Error> {
        handoff::block_on(Self::connect_on(handoff::Blocking(sock)))
    }

    /// [`connect`](Producer::connect), then takes the `count` fds of the
    /// second frame a consumer sends with
    /// [`share_with_fds`](crate::blocking::Tripwire::share_with_fds) and
    /// the same `tag`, and hands them to `accept` next to the attached
    /// producer. What `accept` returns is the verdict the consumer gets: an
    /// error there fails both sides (with its message on the consumer's).
    ///
    /// For protocols on top of a tripwire (the [`ring`](crate::ring)'s
    /// Sender attaches this way). At most 4 fds. An offer that does not
    /// name `tag` is refused at once, before attaching, on both sides.
    ///
    /// Blocks for the handshake, as [`connect`](Producer::connect), and as
    /// long again for the second frame.
    ///
    /// # Errors
    ///
    /// As [`connect`](Producer::connect) ("wrong protocol" if the offer
    /// named another tag or none); [`Error::Handshake`] if the frame has
    /// another tag or another number of fds (they are closed), or if `tag`
    /// is all zero bytes (the handshake's mark of a plain tripwire); and
    /// whatever `accept` returns.
    ///
    /// ```no_run
    /// # fn f(sock: std::os::unix::net::UnixStream) -> Result<(), memfd_tripwire::Error> {
    /// use memfd_tripwire::{Producer, SharedMemory};
    /// let (producer, descriptors) = Producer::connect_with_fds(sock, *b"MYDEVICE", 1, |_, mut fds| {
    ///     SharedMemory::from_fd(fds.remove(0))
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn connect_with_fds<R>(
        sock: UnixStream,
        tag: [u8; 8],
        count: usize,
        accept: impl FnOnce(&Producer, Vec<OwnedFd>) -> Result<R, Error>,
    ) -> Result<(Producer, R), Error> {
        handoff::block_on(Self::connect_with_fds_on(
            handoff::Blocking(sock),
            tag,
            count,
            accept,
        ))
    }

    /// The handshake of [`connect`](Producer::connect) over any driver
    /// (the blocking one, or the tokio reactor's for `connect_async`).
    pub(crate) async fn connect_on<W: Wait>(mut w: W) -> Result<Producer, Error> {
        let attached = Self::attach_on(&mut w, Protocol::Plain).await;
        handshake_event(attached.as_ref().map(|p| p.kind), Protocol::Plain);
        let mut producer = attached?;
        producer.set_peer(w.into_stream());
        Ok(producer)
    }

    /// The handshake of [`connect_with_fds`](Producer::connect_with_fds)
    /// over any driver.
    pub(crate) async fn connect_with_fds_on<W: Wait, R>(
        mut w: W,
        tag: [u8; 8],
        count: usize,
        accept: impl FnOnce(&Producer, Vec<OwnedFd>) -> Result<R, Error>,
    ) -> Result<(Producer, R), Error> {
        let connected = Self::connect_tagged_on(&mut w, tag, count, accept).await;
        handshake_event(
            connected.as_ref().map(|(p, _)| p.kind),
            Protocol::from_wire(tag),
        );
        let (mut producer, accepted) = connected?;
        producer.set_peer(w.into_stream());
        Ok((producer, accepted))
    }

    /// Keeps the handshake socket as the peer, watched for its hang-up.
    fn set_peer(&mut self, sock: UnixStream) {
        let bell = Bell::from_stream(sock);
        self.gone = Some(GoneFlag::watch(bell.as_fd()));
        self.peer = Some(bell);
    }

    /// Whether the consumer hung up, as the hang-up thread saw it (one
    /// load; shortly after the hang-up). `false` for a producer made with
    /// [`from_fd`](Producer::from_fd), and in a forked child.
    #[inline]
    pub(crate) fn consumer_gone(&self) -> bool {
        self.gone.as_ref().is_some_and(GoneFlag::is_set)
    }

    /// [`connect_with_fds_on`](Producer::connect_with_fds_on)'s exchange:
    /// the producer has no peer yet.
    async fn connect_tagged_on<W: Wait, R>(
        w: &mut W,
        tag: [u8; 8],
        count: usize,
        accept: impl FnOnce(&Producer, Vec<OwnedFd>) -> Result<R, Error>,
    ) -> Result<(Producer, R), Error> {
        let producer = Self::attach_on(w, Protocol::tagged(tag)?).await?;
        let accepted = match handoff::receive_extra(w, tag, count).await {
            Ok(fds) => accept(&producer, fds),
            Err(e) => Err(e),
        };
        // The verdict must arrive: a consumer that does not hear it fails,
        // and so must we.
        let replied = handoff::reply(w, accepted.as_ref().map(|_| ())).await;
        let accepted = accepted?;
        replied?;
        Ok((producer, accepted))
    }

    /// Receives an offer of `protocol` (any other is refused, on both
    /// sides), attaches, and tells the consumer whether it worked (so a
    /// failure here surfaces on both sides). The producer has no peer yet.
    async fn attach_on<W: Wait>(w: &mut W, protocol: Protocol) -> Result<Producer, Error> {
        let offer = handoff::receive_offer(w, protocol).await?;
        let attached = Self::attach(offer, w.sock());
        // Nothing but the verdict goes back: on Userfault and UserfaultAsync
        // the uffd stays with this process's agent.
        handoff::reply(w, attached.as_ref().map(|_| ())).await?;
        attached
    }

    /// `true` once the consumer is gone (its end of the handshake socket
    /// hung up), or dropped this producer: a Userfault consumer evicts a
    /// producer that left an ACK unanswered past its deadline while other
    /// producers answered (its stores are then no longer watched). Always
    /// `false` for a producer made with
    /// [`from_fd`](Producer::from_fd), which has no socket.
    ///
    /// ```
    /// # use memfd_tripwire::Producer;
    /// # fn f(p: &Producer) {
    /// if p.is_closed() {
    ///     eprintln!("the consumer went away");
    /// }
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.peer
            .as_ref()
            .is_some_and(|p| p.hung_up().unwrap_or(true))
    }

    /// The handshake socket (`None` for a producer made with
    /// [`from_fd`](Producer::from_fd)): poll it for `POLLRDHUP` in your own
    /// event loop to learn that the consumer went away (what
    /// [`is_closed`](Producer::is_closed) checks). Do not read or write it:
    /// it belongs to the tripwire (on `Doorbell` it carries the rings).
    ///
    /// ```no_run
    /// # fn f(p: &memfd_tripwire::Producer) -> std::io::Result<()> {
    /// use rustix::event::{PollFd, PollFlags, poll};
    /// if let Some(sock) = p.handshake_socket() {
    ///     let mut fds = [PollFd::new(&sock, PollFlags::RDHUP)];
    ///     poll(&mut fds, None)?; // returns once the consumer is gone
    /// }
    /// # Ok(()) }
    /// ```
    pub fn handshake_socket(&self) -> Option<BorrowedFd<'_>> {
        self.peer.as_ref().map(|p| p.as_fd())
    }

    /// Maps what the offer carries; for Userfault and UserfaultAsync also
    /// registers the mapping and starts the agent that owns the uffd.
    fn attach(offer: crate::handoff::Offer, sock: &UnixStream) -> Result<Producer, Error> {
        let (feed, region) = Feed::attach(offer.kind, offer.len, offer.fds, sock)?;
        Ok(Producer {
            kind: offer.kind,
            region,
            feed,
            peer: None,
            gone: None,
            pid: std::process::id(),
        })
    }

    /// How many stores trapped so far on `Userfault` (each first store to a
    /// page after an ACK, and one more for a store that an ACK re-protected
    /// before it could retry); 0 on the other backends, where stores do not
    /// stall.
    ///
    /// ```
    /// # use memfd_tripwire::Producer;
    /// # fn f(p: &Producer) {
    /// println!("{} stores trapped", p.trapped_stores());
    /// # }
    /// ```
    pub fn trapped_stores(&self) -> u64 {
        self.feed.trapped_stores()
    }

    /// The backend the consumer chose.
    ///
    /// ```
    /// # use memfd_tripwire::{Producer};
    /// # fn check(p: &Producer) {
    /// println!("writing through {}", p.backend());
    /// # }
    /// ```
    pub fn backend(&self) -> BackendKind {
        self.kind
    }

    /// The shared memory, as mapped in this process.
    ///
    /// ```
    /// # use memfd_tripwire::Producer;
    /// # fn f(p: &Producer) -> Result<(), memfd_tripwire::Error> {
    /// p.region().write(0, &[1u8, 2, 3])?;
    /// # Ok(()) }
    /// ```
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Tells the consumer that the region changed. Call it after writing.
    ///
    /// On `Doorbell` it costs a fence, an atomic swap and a load, plus a
    /// one-byte non-blocking send on the handshake socket when the
    /// consumer is waiting for one. On every other backend it does nothing
    /// (the writes themselves are seen).
    ///
    /// # Errors
    ///
    /// On `Doorbell`, once the consumer is gone: `ConnectionAborted`
    /// (wrapping [`Error::Closed`](crate::Error::Closed)) at the first call
    /// after it dropped its tripwire (it arms the flag and says goodbye as
    /// it goes), `BrokenPipe` ([`Error::PeerDied`](crate::Error::PeerDied))
    /// if it died: at the first call after a process-wide thread that
    /// watches the handshake socket saw the hang-up (microseconds after
    /// the death; a call in between returns `Ok`, as a write to a socket
    /// whose peer just died can). It never blocks. On the other
    /// backends `notify()` does nothing and never fails: ask
    /// [`is_closed`](Producer::is_closed).
    ///
    /// ```
    /// # use memfd_tripwire::Producer;
    /// # fn f(p: &Producer) -> std::io::Result<()> {
    /// p.region().write(0, &7u64)?;
    /// p.notify()?;
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn notify(&self) -> io::Result<()> {
        if self.feed.should_ring() || self.consumer_gone() && self.feed.rings() {
            return self.ring();
        }
        Ok(())
    }

    /// The slow half of `notify()`: the consumer is armed.
    #[cold]
    fn ring(&self) -> io::Result<()> {
        let Some(sock) = &self.peer else {
            return Err(crate::error::peer_gone());
        };
        // Never blocks (see `sys::bell`); `BrokenPipe` once the consumer's
        // end is closed: the consumer is gone, cleanly if it said goodbye
        // (the only thing it ever sends after the handshake).
        sock.ring().map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => {
                let _ = sock.drain();
                crate::error::peers_ended(!sock.said_goodbye())
            }
            _ => e,
        })
    }
}

/// The `tracing` event of a producer's handshake (see `crate::trace`):
/// connected on `backend`, or why not.
fn handshake_event(outcome: Result<BackendKind, &Error>, protocol: Protocol) {
    match outcome {
        Ok(backend) => trace::debug!(
            backend = %backend,
            peers = 1,
            protocol = %protocol,
            "handshake completed: connected to the consumer"
        ),
        Err(e) => trace::debug!(
            protocol = %protocol,
            error = %e,
            "handshake failed: not connected"
        ),
    }
}

/// Says goodbye to the consumer (see [`Error::Closed`]): its `changed()`
/// reports what was written, then `Closed` instead of `PeerDied`. A
/// `Producer` dropped while its thread panics, or a forked child's copy,
/// says nothing: the consumer sees a death when the socket closes.
impl Drop for Producer {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            // A forked child's copy: the watch is its parent's.
            return;
        }
        if let (Some(peer), Some(gone)) = (&self.peer, &mut self.gone) {
            gone.unwatch(peer.as_fd());
        }
        if std::thread::panicking() {
            return;
        }
        if let Some(peer) = &self.peer {
            peer.say_goodbye();
        }
    }
}
