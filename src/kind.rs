//! What a tripwire is asked to use ([`Backend`]) and what it got
//! ([`BackendKind`]): the names the public API, the errors and the
//! handshake share. A leaf: it imports nothing from the crate.

use std::fmt;

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
