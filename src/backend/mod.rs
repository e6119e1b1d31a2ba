//! The mechanisms that turn writes into wake-ups, one file each, behind one
//! small enum ([`Wire`]) that the public types drive. `Poll` has two: the
//! wire in `poll.rs`, and in `poller.rs` the one thread per process that
//! compares every `Poll` tripwire's region (and picks its interval).

use std::fmt;
use std::io;
use std::ops::Range;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use crate::sys::SealedMemfd;
use crate::{Error, Region};
use peers::Peers;

pub(crate) mod agent;
pub(crate) mod doorbell;
mod hangups;
pub(crate) mod kernel;
pub(crate) mod limits;
pub(crate) mod peers;
pub(crate) mod poll;
pub(crate) mod poller;
pub(crate) mod userfault;
pub(crate) mod userfault_async;

/// What a look at the wire found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Not tripped: armed.
    Idle,
    /// Tripped, and now ACKed (re-armed).
    Taken,
    /// An ACK is in flight: look again when the wake-up fd turns readable,
    /// or at its [deadline](Wire::deadline) at the latest.
    Pending,
}

impl From<bool> for Take {
    fn from(taken: bool) -> Take {
        if taken { Take::Taken } else { Take::Idle }
    }
}

/// Which mechanism a tripwire should use. [`BackendKind`] is what it got.
///
/// | backend | sees | producer must | cost |
/// |---|---|---|---|
/// | `Kernel` | every store through any mapping | nothing | one fault per page per ACK; needs the RFC kernel |
/// | `Doorbell` | stores followed by [`Producer::notify`](crate::Producer::notify) | call `notify()` | a fence per `notify()`, a syscall only when the consumer waits |
/// | `Userfault` | every store through the producer's mapping | register at handshake (done by [`Producer::connect`](crate::Producer::connect)) | a stalled store (~15–35 µs) per written page per ACK |
/// | `UserfaultAsync` | every store through the producer's mapping, within one interval | as `Userfault` | a ~1 µs fault per written page per ACK, never a stall; a page-table scan per interval |
/// | `Poll` | any change of the bytes, within one interval | nothing | a compare of the whole region per interval |
///
/// # Examples
///
/// ```
/// use memfd_tripwire::{Backend, BackendKind, blocking::Tripwire};
///
/// let tw = Tripwire::builder(4096).backend(Backend::Doorbell).create().unwrap();
/// assert_eq!(tw.backend(), BackendKind::Doorbell);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Backend {
    /// The real `memfd_tripwire` where the kernel has it, else `Userfault`;
    /// otherwise an error that lists each backend tried, why it failed, and
    /// the explicit choices.
    #[default]
    Auto,
    /// The `memfd_tripwire(2)` system call (RFC, syscall 472 on x86_64).
    Kernel,
    /// userfaultfd write-protect on the producer's mapping (Linux >= 5.19):
    /// plain stores are seen with no `notify()`, and the ACK reports which
    /// pages were written. The producer's first store to each page after an
    /// ACK stalls until the producer's own agent thread (started by
    /// [`Producer::connect`](crate::Producer::connect); it owns the uffd,
    /// which never leaves the producer) lets it through: never waits for the
    /// consumer. The ACK is a round trip to each producer's agent (which
    /// re-protects the written pages and replies with them); a producer that
    /// does not answer within 1 s (stopped) fails it with `TimedOut`.
    /// Only stores through the producer's registered mapping are watched:
    /// not `pwrite(2)`, not another mapping, not a forked child.
    Userfault,
    /// The low-stall variant of `Userfault` (Linux >= 6.7: userfaultfd
    /// `WP_ASYNC` and the `PAGEMAP_SCAN` ioctl). The producer registers its
    /// mapping in *async* write-protect mode: its first store to a page
    /// after an ACK costs ~1 µs (a minor fault the kernel resolves by
    /// itself) instead of a 15–35 µs stall, and no store ever waits for the
    /// consumer, even a stopped or hung one. The producer's agent scans its
    /// own page tables every
    /// [`Builder::poll_interval`](crate::blocking::Builder::poll_interval)
    /// (default 1 ms), re-protecting the written pages as it finds them;
    /// the ACK reports which pages were written, as on `Userfault`.
    ///
    /// Trade-offs:
    /// - latency: a store trips the wire up to one interval later, and the
    ///   scan costs O(region) page-table entries per interval;
    /// - cooperation: the same as `Userfault` ([`Producer::connect`](crate::Producer::connect)
    ///   registers; only stores through the producer's registered mapping
    ///   are watched: not `pwrite(2)`, not another mapping, not a forked
    ///   child);
    /// - the ACK, as on `Userfault`, is a round trip to the agent (one more
    ///   scan);
    /// - a producer that exits or drops its [`Producer`](crate::Producer)
    ///   trips the wire once more (its last stores may not have been
    ///   scanned yet, and their record goes with its page tables): a
    ///   possibly spurious trip, reporting the whole region.
    ///
    /// Not in [`Backend::Auto`]: choose it by name.
    UserfaultAsync,
    /// Cooperative: a bell (one end of a unix socket pair) the producer rings from
    /// [`Producer::notify`](crate::Producer::notify) when the consumer is
    /// armed. Writes without a `notify()` are not seen.
    Doorbell,
    /// A poller thread compares the region with a snapshot taken at each ACK,
    /// every [`Builder::poll_interval`](crate::blocking::Builder::poll_interval).
    /// Needs no cooperation; latency is up to one interval and each interval
    /// costs a compare of the whole region. One thread per process serves
    /// every `Poll` tripwire (started with the first); each keeps a snapshot
    /// of its region and an eventfd.
    ///
    /// For doorbell pages and small regions. By default the interval is 1
    /// ms, stretched for a larger region so that its compares cost at most
    /// ~4 % of a core (25 times a compare and its share of the poller's
    /// wake-up): a 1 MiB region compares in
    /// ~100-120 µs on a 2-vCPU EPYC VM, so ~3 ms there; 16 MiB, ~40-65 ms;
    /// 64 MiB, ~330 ms.
    /// For large regions prefer [`Kernel`](Backend::Kernel) or
    /// [`Userfault`](Backend::Userfault), which cost nothing while idle.
    /// For a doorbell page,
    /// [`Builder::busy_poll`](crate::blocking::Builder::busy_poll) compares
    /// without pause for a while after each ACK.
    Poll,
    /// For a producer that only maps the memory and stores, and knows
    /// nothing of this crate (an existing program, a VFIO-user client):
    /// `Kernel` where the kernel has it, else `Poll`, the two backends that
    /// see stores through any mapping. Hand the producer
    /// [`producer_fd`](crate::blocking::Tripwire::producer_fd) by
    /// inheritance, `SCM_RIGHTS` or your protocol's own fd passing.
    Unmodified,
}

impl Backend {
    /// Every choice, with its [`Display`](fmt::Display) name.
    const NAMES: [(&'static str, Backend); 7] = [
        ("auto", Backend::Auto),
        ("kernel", Backend::Kernel),
        ("userfault", Backend::Userfault),
        ("userfault-async", Backend::UserfaultAsync),
        ("doorbell", Backend::Doorbell),
        ("poll", Backend::Poll),
        ("unmodified", Backend::Unmodified),
    ];
}

/// The lower-case name [`FromStr`](std::str::FromStr) takes back.
///
/// ```
/// use memfd_tripwire::Backend;
/// assert_eq!(Backend::UserfaultAsync.to_string(), "userfault-async");
/// ```
impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Backend::NAMES
            .iter()
            .find(|(_, b)| b == self)
            .map_or("?", |(name, _)| name);
        f.write_str(name)
    }
}

/// Parses a backend's name, as a command line would give it: `auto`,
/// `kernel`, `userfault`, `userfault-async`, `doorbell`, `poll` or
/// `unmodified` (ASCII case and `_` for `-` are accepted).
///
/// ```
/// use memfd_tripwire::Backend;
/// assert_eq!("poll".parse::<Backend>().unwrap(), Backend::Poll);
/// assert_eq!("Userfault_Async".parse::<Backend>().unwrap(), Backend::UserfaultAsync);
/// let err = "epoll".parse::<Backend>().unwrap_err();
/// assert!(err.to_string().contains("doorbell"));
/// ```
impl std::str::FromStr for Backend {
    type Err = ParseBackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.to_ascii_lowercase().replace('_', "-");
        Backend::NAMES
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, b)| *b)
            .ok_or_else(|| ParseBackendError(s.to_owned()))
    }
}

/// A name that is not a [`Backend`]; says which names are.
///
/// ```
/// let err = "fast".parse::<memfd_tripwire::Backend>().unwrap_err();
/// eprintln!("{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseBackendError(String);

impl fmt::Display for ParseBackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown backend {:?}: choose one of ", self.0)?;
        for (i, (name, _)) in Backend::NAMES.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseBackendError {}

/// The mechanism a tripwire actually uses (never "auto").
///
/// ```
/// use memfd_tripwire::BackendKind;
/// assert_eq!(BackendKind::Doorbell.to_string(), "Doorbell");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// See [`Backend::Kernel`].
    Kernel,
    /// See [`Backend::Userfault`].
    Userfault,
    /// See [`Backend::UserfaultAsync`].
    UserfaultAsync,
    /// See [`Backend::Doorbell`].
    Doorbell,
    /// See [`Backend::Poll`].
    Poll,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Kernel => "Kernel",
            BackendKind::Userfault => "Userfault",
            BackendKind::UserfaultAsync => "UserfaultAsync",
            BackendKind::Doorbell => "Doorbell",
            BackendKind::Poll => "Poll",
        })
    }
}

impl BackendKind {
    /// The code used for this kind in the handshake frame.
    pub(crate) fn wire_code(self) -> u16 {
        match self {
            BackendKind::Kernel => 1,
            BackendKind::Doorbell => 2,
            BackendKind::Poll => 3,
            BackendKind::Userfault => 4,
            BackendKind::UserfaultAsync => 5,
        }
    }

    pub(crate) fn from_wire_code(code: u16) -> Option<Self> {
        Some(match code {
            1 => BackendKind::Kernel,
            2 => BackendKind::Doorbell,
            3 => BackendKind::Poll,
            4 => BackendKind::Userfault,
            5 => BackendKind::UserfaultAsync,
            _ => return None,
        })
    }
}

/// The shortest [`Options::poll_interval`] accepted.
pub(crate) const MIN_POLL_INTERVAL: Duration = Duration::from_micros(10);

/// `UserfaultAsync`'s scan interval when none is set; `Poll`'s shortest
/// interval when none is set (it stretches for a large region:
/// [`poller`]).
pub(crate) const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Options that only some backends read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// `Poll`'s compare and `UserfaultAsync`'s scan interval; `None`: not
    /// set by the user (`Poll` adapts it to the region, `UserfaultAsync`
    /// takes [`DEFAULT_POLL_INTERVAL`]).
    pub(crate) poll_interval: Option<Duration>,
    /// `Poll`: how long the poller compares without pause after an ACK.
    pub(crate) busy_poll: Duration,
}

/// The largest region `Poll` busy-polls: a compare must cost next to
/// nothing (4 pages: ~0.1-0.4 µs here) for the spin to be worth a core.
pub(crate) const BUSY_POLL_MAX_LEN: usize = 16 << 10;
/// The longest busy-poll window after an ACK.
pub(crate) const BUSY_POLL_MAX: Duration = Duration::from_millis(100);

/// The consumer's end of one mechanism.
#[derive(Debug)]
pub(crate) enum Wire {
    Kernel(kernel::Kernel),
    Doorbell(doorbell::Doorbell),
    Poll(poll::Poller),
    /// `Userfault` and `UserfaultAsync`: the consumer's end of the agents.
    Userfault(userfault::Userfault),
}

impl Wire {
    /// Creates the wire and maps its region.
    pub(crate) fn create(
        backend: Backend,
        len: usize,
        opts: Options,
    ) -> Result<(Wire, Region), Error> {
        limits::check(backend, len, &opts)?;
        // The agents' scan interval (`UserfaultAsync`), in the producer.
        let scan_interval = opts.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL);
        match backend {
            Backend::Kernel => kernel::Kernel::create(len).map(|(w, r)| (Wire::Kernel(w), r)),
            Backend::Doorbell => {
                doorbell::Doorbell::create(len).map(|(w, r)| (Wire::Doorbell(w), r))
            }
            Backend::Poll => poll::Poller::create(len, opts.poll_interval, opts.busy_poll)
                .map(|(w, r)| (Wire::Poll(w), r)),
            Backend::Userfault => {
                userfault::Userfault::create(BackendKind::Userfault, len, scan_interval)
                    .map(|(w, r)| (Wire::Userfault(w), r))
            }
            Backend::UserfaultAsync => {
                userfault::Userfault::create(BackendKind::UserfaultAsync, len, scan_interval)
                    .map(|(w, r)| (Wire::Userfault(w), r))
            }
            Backend::Unmodified => match kernel::Kernel::create(len) {
                Ok((w, r)) => Ok((Wire::Kernel(w), r)),
                Err(_) => poll::Poller::create(len, opts.poll_interval, opts.busy_poll)
                    .map(|(w, r)| (Wire::Poll(w), r)),
            },
            Backend::Auto => {
                let kernel = match kernel::Kernel::create(len) {
                    Ok((w, r)) => return Ok((Wire::Kernel(w), r)),
                    Err(e) => unavailable_reason(e),
                };
                let userfault = match userfault::Userfault::create(
                    BackendKind::Userfault,
                    len,
                    scan_interval,
                ) {
                    Ok((w, r)) => return Ok((Wire::Userfault(w), r)),
                    Err(e) => unavailable_reason(e),
                };
                Err(Error::NoBackend {
                    tried: vec![
                        (BackendKind::Kernel, kernel),
                        (BackendKind::Userfault, userfault),
                    ],
                })
            }
        }
    }

    pub(crate) fn kind(&self) -> BackendKind {
        match self {
            Wire::Kernel(_) => BackendKind::Kernel,
            Wire::Doorbell(_) => BackendKind::Doorbell,
            Wire::Poll(_) => BackendKind::Poll,
            Wire::Userfault(w) => w.kind(),
        }
    }

    /// The set of producers' sockets this wire needs, which is also the
    /// tripwire's one fd: on `Kernel`, one that watches the tripwire; on
    /// `Doorbell`, one that takes the rings (its producers ring through
    /// their sockets); on the Userfaults, one in the epoll of the agents'
    /// channels; on `Poll`, no set: its eventfd, rung on a hang-up by
    /// `backend::hangups`.
    pub(crate) fn peers(&self) -> Result<Peers, Error> {
        match self {
            Wire::Kernel(w) => Peers::new(Some(w.wake_fd()), false),
            Wire::Doorbell(_) => Peers::new(None, true),
            Wire::Poll(w) => Ok(Peers::watched(w.wake_shared())),
            Wire::Userfault(w) => Ok(Peers::beside(w.channels())),
        }
    }

    /// If the wire is tripped, ACKs it (re-arms; prior writes become
    /// visible): `Taken`; `Idle` if it is not tripped. Never blocks: an ACK
    /// that is a round trip (`Userfault`, `UserfaultAsync`) stays in flight
    /// (`Pending`) until its replies are in, and the wake-up fd turns
    /// readable as they come; a look after its [deadline](Wire::deadline)
    /// fails it. A failed ACK leaves the wire tripped.
    pub(crate) fn take(&mut self, peers: &mut Peers) -> io::Result<Take> {
        let taken = match self {
            Wire::Kernel(w) => w.take(),
            Wire::Doorbell(w) => w.take(peers),
            Wire::Poll(w) => w.take(),
            Wire::Userfault(w) => return w.take(),
        };
        taken.map(Take::from)
    }

    /// When the ACK in flight fails if its replies are not all in: look
    /// again by then. `None` with no ACK in flight.
    pub(crate) fn deadline(&self) -> Option<std::time::Instant> {
        match self {
            Wire::Userfault(w) => w.deadline(),
            _ => None,
        }
    }

    /// Appends the byte ranges the last successful take re-armed: the
    /// written pages on `Userfault` and `UserfaultAsync`, the whole region
    /// on the backends that cannot tell.
    pub(crate) fn pages_into(&self, len: usize, out: &mut Vec<Range<usize>>) {
        match self {
            Wire::Userfault(w) => out.extend_from_slice(w.pages()),
            _ => out.push(0..len),
        }
    }

    /// Prepares what the next producer is offered (a fresh channel to its
    /// agent on `Userfault` and `UserfaultAsync`).
    pub(crate) fn prepare_offer(&mut self) -> Result<(), Error> {
        match self {
            Wire::Userfault(w) => w.prepare_offer(),
            _ => Ok(()),
        }
    }

    /// Checks what the producer sent back in the handshake: no fd, on any
    /// backend (a Userfault producer's agent keeps its uffd). Closes them.
    pub(crate) fn check_reply(fds: Vec<OwnedFd>) -> Result<(), Error> {
        if !fds.is_empty() {
            return Err(Error::handshake(format!(
                "the producer's reply carried {} unexpected fds (closed)",
                fds.len()
            )));
        }
        Ok(())
    }

    /// The producer attached: starts watching it (its agent's channel on
    /// `Userfault` and `UserfaultAsync`).
    pub(crate) fn accept(&mut self) -> Result<(), Error> {
        match self {
            Wire::Userfault(w) => w.accept(),
            _ => Ok(()),
        }
    }

    /// The share in progress failed: forgets what was prepared for it (the
    /// agent channel, whose close tells a refused agent to stop).
    pub(crate) fn reject(&mut self) {
        if let Wire::Userfault(w) = self {
            w.reject();
        }
    }

    /// Re-arms now, tripped or not: every write made before it returns is
    /// visible, and any later one trips the wire. `Taken` once done;
    /// `Pending` as for [`take`](Wire::take).
    pub(crate) fn ack(&mut self, peers: &mut Peers) -> io::Result<Take> {
        match self {
            Wire::Kernel(w) => w.ack(),
            Wire::Doorbell(w) => w.ack(peers),
            Wire::Poll(w) => w.ack(),
            Wire::Userfault(w) => return w.ack(),
        }
        .map(|()| Take::Taken)
    }

    /// Like [`take`](Wire::take), but also finds writes the mechanism has
    /// not reported yet (the poller's next compare or scan). Used once every
    /// producer is gone, before reporting it.
    pub(crate) fn take_final(&mut self, peers: &mut Peers) -> io::Result<Take> {
        match self {
            Wire::Poll(w) => w.take_final().map(Take::from),
            _ => self.take(peers),
        }
    }

    /// The fd an unmodified producer maps: the tripwire (`Kernel`) or the
    /// memfd (`Poll`); the others need the producer's cooperation.
    pub(crate) fn producer_fd(&self) -> Result<BorrowedFd<'_>, Error> {
        let why = match self {
            Wire::Kernel(w) => return Ok(w.wake_fd()),
            Wire::Poll(w) => return Ok(w.memfd_fd()),
            Wire::Doorbell(_) => {
                "its producer must call Producer::notify after its stores, so it needs \
                 Producer::connect"
            }
            Wire::Userfault(_) => {
                "its producer's mapping is registered with userfaultfd by the agent \
                 Producer::connect starts: a producer that only maps the fd is not watched"
            }
        };
        Err(Error::Unavailable {
            backend: self.kind(),
            reason: format!(
                "{why}; for a producer that knows nothing of this crate, create the tripwire \
                 with Backend::Unmodified (Kernel where the kernel has it, else Poll)"
            ),
        })
    }

    /// The fds a producer needs, in handshake order.
    pub(crate) fn offer_fds(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            Wire::Kernel(w) => w.offer_fds(),
            Wire::Doorbell(w) => w.offer_fds(),
            Wire::Poll(w) => w.offer_fds(),
            Wire::Userfault(w) => w.offer_fds(),
        }
    }
}

/// The region of an emulated backend: a sealed memfd (to hand to the
/// producers) and its mapping here.
fn region_memfd(len: usize) -> Result<(SealedMemfd, Region), Error> {
    let memfd = SealedMemfd::create("memfd-tripwire", len)
        .map_err(|e| Error::io("creating the region's memfd", e))?;
    let map = memfd
        .map()
        .map_err(|e| Error::io("mmap of the region", e))?;
    Ok((memfd, Region::new(map)))
}

/// The sentence an `Auto` error gives for a backend's failure.
fn unavailable_reason(e: Error) -> String {
    match e {
        Error::Unavailable { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// Linux lets a sleep overrun by the thread's timer slack, 50 µs by default,
/// which would more than double a 50 µs interval: sets the calling thread's
/// slack to [`timer_slack_for`] `interval`.
fn set_timer_slack_for(interval: Duration) {
    let ns = std::num::NonZeroU64::new(timer_slack_for(interval));
    // Best effort: a failure only keeps the default slack.
    let _ = rustix::thread::set_current_timer_slack(ns);
}

/// The timer slack for `interval`, in ns: a twentieth of it, between 1 µs
/// and the default (50 µs).
fn timer_slack_for(interval: Duration) -> u64 {
    (interval / 20).as_nanos().clamp(1_000, 50_000) as u64
}
