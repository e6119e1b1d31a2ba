//! The crate's error type, for causes that are ours rather than the OS's.

use std::fmt;
use std::io;

use crate::BackendKind;
use crate::sys::mapping::AccessError;

/// What went wrong, and where the message says what to do about it.
///
/// OS failures are carried as [`Error::Io`] with the operation that failed;
/// everything else is a cause this crate detected itself. Converts into
/// [`std::io::Error`] (with a fitting [`io::ErrorKind`]) for `?` in functions
/// that return `io::Result`.
///
/// # Examples
///
/// ```
/// use memfd_tripwire::{Error, blocking::Tripwire};
///
/// let err = Tripwire::builder(0).create().unwrap_err();
/// assert!(matches!(err, Error::ZeroLength));
/// let io: std::io::Error = err.into();
/// assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    Io {
        /// The operation, e.g. `"mmap of the region"`.
        op: &'static str,
        /// What the OS said.
        source: io::Error,
    },
    /// A region of zero bytes was asked for.
    ZeroLength,
    /// A builder was given an argument outside what it accepts: a ring's
    /// capacity or element type, a length over a backend's limit, an
    /// interval or busy-poll window out of range. Nothing was created; the
    /// message names the argument, the value and what is allowed.
    ///
    /// ```
    /// use memfd_tripwire::{Backend, Error, ring::SharedRing};
    ///
    /// let err = SharedRing::<u64>::builder(1000).backend(Backend::Poll).create().unwrap_err();
    /// assert!(matches!(&err, Error::InvalidArgument(a) if a.what() == "capacity"));
    /// assert!(err.to_string().contains("1000"));
    /// ```
    InvalidArgument(ArgumentError),
    /// A write, or a writable atomic, into memory this process mapped
    /// read-only (see [`SharedMemory::options`](crate::SharedMemory::options)).
    ReadOnly {
        /// Where the access started.
        offset: usize,
        /// How many bytes it covered.
        len: usize,
    },
    /// An access reached past the end of the region.
    OutOfBounds {
        /// Where the access started.
        offset: usize,
        /// How many bytes it covered.
        len: usize,
        /// The region's size.
        size: usize,
    },
    /// An atomic was asked for at an offset that is not a multiple of its size.
    Misaligned {
        /// The offset asked for.
        offset: usize,
        /// The alignment the type needs.
        align: usize,
    },
    /// A backend asked for by name cannot work here.
    Unavailable {
        /// The backend.
        backend: BackendKind,
        /// Why, and what to do instead.
        reason: String,
    },
    /// [`Backend::Auto`](crate::Backend::Auto) found no backend that works
    /// without producer cooperation; each one tried is listed with its cause.
    NoBackend {
        /// Each backend tried, with why it failed.
        tried: Vec<(BackendKind, String)>,
    },
    /// An fd that should have been a `memfd_tripwire` file is something else.
    NotATripwire {
        /// What was found instead.
        reason: String,
    },
    /// The handshake with the peer failed (malformed frame, wrong version,
    /// unexpected fds, a producer-side setup error, a time-out, ...).
    Handshake {
        /// What was wrong.
        reason: String,
    },
    /// The peer hung up without saying goodbye: its process exited or was
    /// killed while it held its handle, it crashed, or it panicked (a handle
    /// dropped while its thread unwinds says no goodbye), or it closed the
    /// handshake socket behind the crate's back.
    ///
    /// Converts to [`io::ErrorKind::BrokenPipe`].
    PeerDied,
    /// The peer closed its end cleanly: it dropped its handle (a
    /// [`Producer`](crate::Producer), a ring's `Sender` or `Receiver`),
    /// which says goodbye before it hangs up. What it wrote before is
    /// reported first; this comes after, like a closed `tokio::sync::watch`
    /// channel. A stream (`Changes`, the ring's
    /// `Receiver`) ends with `None` instead.
    ///
    /// Converts to [`io::ErrorKind::ConnectionAborted`] ("terminated by the
    /// remote side"), so that `?` into `io::Result` keeps the two apart.
    ///
    /// ```
    /// use memfd_tripwire::Error;
    /// let io: std::io::Error = Error::Closed.into();
    /// assert_eq!(io.kind(), std::io::ErrorKind::ConnectionAborted);
    /// assert!(Error::is_closed(&io));
    /// ```
    Closed,
    /// Shared memory written by the peer holds an impossible value (an
    /// index out of range, ...): the peer is buggy or hostile.
    Corrupt {
        /// What was wrong, with the values seen.
        reason: String,
    },
    /// No whole value could be read from a [`watch`](crate::watch) within
    /// its bound ([`watch::Builder::stuck_after`](crate::watch::Builder::stuck_after)):
    /// the writer stayed in the middle of a write (it stopped or died
    /// there), or the sequence changed during every read (a writer faster
    /// than a copy, or one that scribbles the sequence). Never a hang and
    /// never a torn value. Converts into an [`io::Error`] of kind
    /// `TimedOut`.
    ///
    /// ```
    /// use memfd_tripwire::Error;
    /// let e = Error::Stuck { reason: "the sequence stayed odd".into() };
    /// assert_eq!(std::io::Error::from(e).kind(), std::io::ErrorKind::TimedOut);
    /// ```
    Stuck {
        /// What the reads saw, and for how long.
        reason: String,
    },
    /// The two ends of a ring or a watch disagree on its layout or element type.
    LayoutMismatch {
        /// Which field, with both sides' values.
        reason: String,
    },
    /// A wait on something that was never shared, which nothing can wake:
    /// a ring [`Receiver`](crate::ring::Receiver) before its
    /// [`share`](crate::ring::Receiver::share) (only its Sender writes the
    /// ring), or a `Doorbell`, `Userfault` or `UserfaultAsync` tripwire
    /// before its first [`share`](crate::blocking::Tripwire::share) (only a
    /// connected producer trips those). Returned at once instead of a wait
    /// that would never end; share it first. (`Kernel` and `Poll` tripwires
    /// wait: a store through any mapping trips them, the consumer's own and
    /// a [`producer_fd`](crate::blocking::Tripwire::producer_fd) writer's
    /// included.) Converts into an [`io::Error`] of kind `NotConnected`.
    ///
    /// ```
    /// use memfd_tripwire::{Backend, Error, ring::SharedRing};
    ///
    /// let mut rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create().unwrap();
    /// assert!(matches!(rx.rearm(), Err(Error::NotShared { .. })));
    /// ```
    NotShared {
        /// What was never shared, and what could have woken the wait.
        reason: String,
    },
}

/// Which builder argument was refused, its value and what is allowed: the
/// detail of [`Error::InvalidArgument`]. (Boxed: it keeps [`Error`] as small
/// as it was.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgumentError(Box<ArgumentDetail>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct ArgumentDetail {
    what: &'static str,
    value: String,
    allowed: String,
}

impl ArgumentError {
    /// The argument, as the builder names it: `"capacity"` and `"T"`
    /// (a ring's), `"len"`, `"poll_interval"`, `"busy_poll"`.
    #[must_use]
    pub fn what(&self) -> &'static str {
        self.0.what
    }

    /// The value given, as text (`"1000"`, `"0ns"`, `"() (0 bytes, aligned
    /// to 1)"`, ...).
    #[must_use]
    pub fn value(&self) -> &str {
        &self.0.value
    }

    /// What is accepted instead.
    #[must_use]
    pub fn allowed(&self) -> &str {
        &self.0.allowed
    }
}

impl fmt::Display for ArgumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ArgumentDetail {
            what,
            value,
            allowed,
        } = &*self.0;
        write!(f, "invalid {what}: {value} (allowed: {allowed})")
    }
}

impl Error {
    /// Whether `e` (an error of `changed()`, `wait()`, `notify()`, ...)
    /// is [`Error::Closed`]: every peer closed its end cleanly.
    ///
    /// ```
    /// use memfd_tripwire::Error;
    /// assert!(Error::is_closed(&Error::Closed.into()));
    /// assert!(!Error::is_closed(&Error::PeerDied.into()));
    /// ```
    pub fn is_closed(e: &io::Error) -> bool {
        matches!(Self::inside(e), Some(Error::Closed))
    }

    /// Whether `e` is [`Error::PeerDied`]: a peer hung up without a
    /// goodbye.
    ///
    /// ```
    /// use memfd_tripwire::Error;
    /// assert!(Error::is_peer_died(&Error::PeerDied.into()));
    /// assert!(!Error::is_peer_died(&std::io::ErrorKind::BrokenPipe.into()));
    /// ```
    pub fn is_peer_died(e: &io::Error) -> bool {
        matches!(Self::inside(e), Some(Error::PeerDied))
    }

    /// The crate's error inside an `io::Error`, if it carries one.
    fn inside(e: &io::Error) -> Option<&Error> {
        e.get_ref()?.downcast_ref::<Error>()
    }

    pub(crate) fn io(op: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Io {
            op,
            source: source.into(),
        }
    }

    pub(crate) fn invalid(
        what: &'static str,
        value: impl Into<String>,
        allowed: impl Into<String>,
    ) -> Self {
        Error::InvalidArgument(ArgumentError(Box::new(ArgumentDetail {
            what,
            value: value.into(),
            allowed: allowed.into(),
        })))
    }

    pub(crate) fn handshake(reason: impl Into<String>) -> Self {
        Error::Handshake {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, source } => {
                write!(
                    f,
                    "{op} failed: {source}{}",
                    fd_limit_hint(errno_of(source))
                )
            }
            Error::ZeroLength => write!(f, "a tripwire needs a length of at least one byte"),
            Error::InvalidArgument(a) => write!(f, "{a}"),
            Error::ReadOnly { offset, len } => write!(
                f,
                "a write of {len} bytes at offset {offset} into memory mapped read-only here \
                 (the peer writes it; read it with read/read_bytes/load_u64)"
            ),
            Error::OutOfBounds { offset, len, size } => write!(
                f,
                "access of {len} bytes at offset {offset} reaches past the end of the \
                 {size}-byte region"
            ),
            Error::Misaligned { offset, align } => write!(
                f,
                "offset {offset} is not a multiple of {align}: atomics need natural alignment"
            ),
            Error::Unavailable { backend, reason } => {
                write!(f, "backend {backend} is unavailable: {reason}")
            }
            Error::NoBackend { tried } => {
                write!(f, "no backend can watch plain stores here (tried ")?;
                for (i, (kind, why)) in tried.iter().enumerate() {
                    if i > 0 {
                        write!(f, "; ")?;
                    }
                    write!(f, "{kind}: {why}")?;
                }
                write!(
                    f,
                    "); choose Backend::Doorbell (the producer calls Producer::notify after \
                     writing) or Backend::Poll (no cooperation; latency = poll interval)"
                )
            }
            Error::NotATripwire { reason } => {
                write!(f, "not a memfd_tripwire file: {reason}")
            }
            Error::Handshake { reason } => write!(f, "tripwire handshake failed: {reason}"),
            Error::PeerDied => write!(
                f,
                "the peer hung up without saying goodbye (it died, was killed, panicked or \
                 closed its socket): what it was writing may be incomplete"
            ),
            Error::Closed => write!(f, "the peer closed its end (a clean close)"),
            Error::Corrupt { reason } => write!(
                f,
                "the peer wrote an impossible value into shared memory ({reason}): it is buggy \
                 or hostile; drop this end"
            ),
            Error::Stuck { reason } => {
                write!(f, "no whole value could be read from the watch: {reason}")
            }
            Error::LayoutMismatch { reason } => write!(
                f,
                "the two ends (of a ring or a watch) disagree: {reason}; build both with the same element type, \
                 type tag and crate version"
            ),
            Error::NotShared { reason } => write!(
                f,
                "nothing can end this wait: {reason}; call share() with the peer's socket first \
                 (the peer calls connect() on its end)"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Io { source, .. } => source.kind(),
            Error::ZeroLength
            | Error::InvalidArgument(_)
            | Error::OutOfBounds { .. }
            | Error::Misaligned { .. } => io::ErrorKind::InvalidInput,
            Error::Unavailable { .. } | Error::NoBackend { .. } => io::ErrorKind::Unsupported,
            Error::NotATripwire { .. }
            | Error::Handshake { .. }
            | Error::Corrupt { .. }
            | Error::LayoutMismatch { .. } => io::ErrorKind::InvalidData,
            Error::PeerDied => io::ErrorKind::BrokenPipe,
            Error::Closed => io::ErrorKind::ConnectionAborted,
            Error::NotShared { .. } => io::ErrorKind::NotConnected,
            Error::Stuck { .. } => io::ErrorKind::TimedOut,
            Error::ReadOnly { .. } => io::ErrorKind::PermissionDenied,
        };
        io::Error::new(kind, e)
    }
}

impl From<AccessError> for Error {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::OutOfBounds { offset, len, size } => {
                Error::OutOfBounds { offset, len, size }
            }
            AccessError::Misaligned { offset, align } => Error::Misaligned { offset, align },
            AccessError::ReadOnly { offset, len } => Error::ReadOnly { offset, len },
        }
    }
}

/// What to do when a call failed for want of fds (`EMFILE`, `ENFILE`), to
/// append to its message; empty for any other error.
pub(crate) fn fd_limit_hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::EMFILE) => {
            " (this process is at its limit of open files: raise it with `ulimit -n` or \
             RLIMIT_NOFILE, or hold fewer tripwires; each holds a few fds)"
        }
        Some(libc::ENFILE) => " (the system is at its limit of open files: fs.file-max)",
        _ => "",
    }
}

/// The OS error number behind `e`, through wrapped errors and sources.
fn errno_of(e: &io::Error) -> Option<i32> {
    if let Some(n) = e.raw_os_error() {
        return Some(n);
    }
    let mut inner: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|i| i as _);
    while let Some(cur) = inner {
        if let Some(n) = cur
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(n);
        }
        inner = cur.source();
    }
    None
}

/// The error `changed()` and friends return once every producer hung up:
/// [`Error::PeerDied`] if one `died`, else [`Error::Closed`].
pub(crate) fn peers_ended(died: bool) -> io::Error {
    if died {
        peer_gone()
    } else {
        Error::Closed.into()
    }
}

/// [`Error::PeerDied`] as an `io::Error`.
pub(crate) fn peer_gone() -> io::Error {
    Error::PeerDied.into()
}
