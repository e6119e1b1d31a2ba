//! Turn writes into shared memory into notifications, on Linux.
//!
//! A *tripwire* is a region of shared memory whose writes trip a wire: its
//! wake-up fd turns readable until the consumer ACKs, which re-arms it. The
//! promise, from the `memfd_tripwire` RFC: **no write slips through** — a
//! write racing with the ACK is either visible once the ACK returns or trips
//! the wire again. A consumer can then act like a hardware doorbell register
//! (a VFIO-user device server), or watch a ring that a producer fills with
//! plain stores.
//!
//! On top, through the same public API: [`ring`], a typed queue between
//! two processes ([`ring::frames`]: variable-length byte frames on it), and
//! [`watch`], a latest value (a status struct, say) read whole, never torn.
//!
//! # Quick start
//!
//! ```
//! # #[cfg(feature = "tokio")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::os::unix::net::UnixStream;
//! use memfd_tripwire::{Backend, Producer, Tripwire, blocking};
//!
//! // Consumer: create, share with the producer (normally another process).
//! let (ours, theirs) = UnixStream::pair()?;
//! let producer = tokio::spawn(async move {
//!     let p = Producer::connect_async(theirs).await?;
//!     p.region().write(0, &0xC0FFEE_u32)?;
//!     p.notify()?; // needed on Doorbell, a no-op elsewhere
//!     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(p)
//! });
//! let tw = blocking::Tripwire::builder(4096).backend(Backend::Doorbell).create()?;
//! let mut tw = Tripwire::new(tw)?;
//! tw.share(ours).await?; // the handshake never blocks the runtime's thread
//!
//! let epoch = tw.changed().await?; // waits, ACKs, returns the new epoch
//! assert_eq!(tw.region().read::<u32>(0)?, 0xC0FFEE);
//! # let _ = (epoch, producer.await.unwrap().unwrap());
//! # Ok(()) }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```
//!
//! # Backends
//!
//! | backend | what is seen | who cooperates | cost | where |
//! |---|---|---|---|---|
//! | [`Kernel`](Backend::Kernel) | every store through any mapping | nobody | a page fault per written page per ACK | the RFC kernel (syscall 472) |
//! | [`Userfault`](Backend::Userfault) | every store through the producer's mapping, and which pages | the producer registers at handshake ([`Producer::connect`] starts an agent thread that keeps the uffd) | a stalled store (a fault resolved by the producer's own agent) per written page per ACK; the ACK is a round trip to the agent | Linux >= 5.19 |
//! | [`UserfaultAsync`](Backend::UserfaultAsync) | as `Userfault`, within one interval | as `Userfault` | a ~1 µs fault per written page per ACK, never a stall; a page-table scan per interval (default 1 ms) | Linux >= 6.7 |
//! | [`Doorbell`](Backend::Doorbell) | stores followed by [`Producer::notify`] | the producer calls `notify()` | a fence per `notify()`; a one-byte socket send only when the consumer waits | every Linux |
//! | [`Poll`](Backend::Poll) | any change of the bytes | nobody | a compare of the whole region per interval (1 ms, stretched so that a large region's compares cost at most ~4 % of a core; one poller thread per process); latency up to one interval | every Linux |
//!
//! [`Backend::Auto`] picks `Kernel`, then `Userfault`, and otherwise fails with an error that
//! names each backend tried and why, and the explicit choices (`UserfaultAsync` is never
//! picked by `Auto`: choose it by name). [`Backend::Unmodified`] picks `Kernel`, else
//! `Poll`: for a producer that only maps
//! [`producer_fd`](blocking::Tripwire::producer_fd) and stores, knowing nothing of this crate.
//!
//! # What is not promised
//!
//! One event per write; which address or value changed; a rewrite of the
//! same value; a change undone before the consumer looks. Spurious trips
//! happen (the kernel's fault fires before the store lands).
//!
//! # Gotchas
//!
//! - On `Kernel`, the consumer's own writes to the region trip its wire too.
//! - A producer's death is learned from the handshake socket's hang-up; a
//!   forked child that inherits the socket hides it until it exits
//!   (`Command` children, which exec, hide nothing).
//! - `fork`: a child's copies of a `Producer`, a tripwire or a ring end are
//!   inert: dropping them leaves the parent's working (no agent stopped, no
//!   ring closed). On `Userfault` and `UserfaultAsync` the producer's
//!   mapping is `MADV_DONTFORK`: a child's store to it is a `SIGSEGV`.
//! - The layers: [`blocking::Tripwire`] is runtime-free (and a
#![cfg_attr(
    feature = "tokio",
    doc = "   `mio::event::Source` with feature `mio`); [`Tripwire`] wraps it for"
)]
#![cfg_attr(
    not(feature = "tokio"),
    doc = "   `mio::event::Source` with feature `mio`); `Tripwire` wraps it for"
)]
//!   tokio (default feature `tokio`).
//!
//! # Observability
//!
//! Counters, always kept: [`blocking::Tripwire::stats`] (and the async
//! tripwire's `stats()`) gives a [`blocking::TripwireStats`] of trips
//! taken, ACKs done, ACK time-outs, and producers connected, closed
//! cleanly and dead; a ring's [`Receiver::stats`](ring::Receiver::stats)
//! gives its [`RingStats`](ring::RingStats).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use memfd_tripwire::{Backend, blocking::Tripwire};
//!
//! let mut tw = Tripwire::builder(64).backend(Backend::Poll).create()?;
//! tw.region().write(0, &1u8)?;
//! tw.wait_timeout(Duration::from_secs(5))?.expect("tripped");
//! let stats = tw.stats();
//! println!("{} trips, {} ACKs, {} timed out", stats.trips, stats.acks, stats.ack_timeouts);
//! assert_eq!(stats.trips, 1);
//! # Ok(()) }
//! ```
//!
//! Events, with feature `tracing` (off by default; without it nothing is
//! compiled in): a [`tracing`](https://docs.rs/tracing) event for each
//! moment a user would otherwise have to guess at, with fields (`backend`,
//! `peers`, `error`, ...) and a target under `memfd_tripwire` (filter with
//! `memfd_tripwire=debug`):
//!
//! | event | level | where |
//! |---|---|---|
//! | handshake completed or failed | debug | both sides: `share` (the ring's too), `Producer::connect` (the ring's `Sender::connect` too) |
//! | a producer closed its end (goodbye, then hang-up) | debug | the consumer; a ring's Receiver also says "ring closed" |
//! | a producer died (hang-up without a goodbye) | warn | the consumer; a ring's Receiver also says "ring ended" |
//! | an ACK timed out (a producer's agent did not answer) | warn | the consumer, `Userfault` and `UserfaultAsync` |
//! | a corrupt peer (an impossible ring index) | warn | the ring end that read it |
//!
//! The OS-level detail stays in the errors; an event says what happened
//! once, where it was learned (a dead producer is reported when the
//! consumer next looks, not when it died).
//!
//! # Blocking calls and tokio
//!
//! The calls that sleep until a peer acts ([`blocking::Tripwire`]'s
//! `wait`, `wait_timeout`, `wait_ready` and `ack`, the typed ring's and
//! the frames' `blocking_recv`, `blocking_recv_many`, `blocking_send`,
//! `blocking_send_many` and `blocking_reserve`, the watch's
//! [`watch::blocking::Receiver`] `wait` and `wait_timeout`) panic, with feature `tokio`, when they would
//! sleep on a thread that drives a tokio runtime's async tasks: each would
//! stall every task of that thread. The message names the async method to
//! use instead. They are allowed outside a runtime, inside
//! `tokio::task::spawn_blocking` and inside `tokio::task::block_in_place`.
//!
//! Unlike tokio's own `blocking_recv`, which panics on every call, the
//! check is made only where the call would sleep (nothing to receive, no
//! free slot, no trip yet): a call that finds its message returns without
//! it, so the check costs a blocking loop nothing on its fast path (made on
//! every call, it cost ~530 ns inside `spawn_blocking` here). A misplaced
//! call can thus pass a test in which data is always ready; it panics the
//! first time it would stall, never stalls silently.
//!
//! The exact rule, made with tokio's public API (it has no "may this
//! thread block?" call): the call panics when the thread has a runtime
//! context (`Handle::try_current()` succeeds) *and* tokio's cooperative
//! budget is in force. tokio sets that budget around every poll of a task
//! (on any runtime flavour, and in a `LocalSet`) and of a `block_on`'s
//! future, and lifts it in `spawn_blocking` and `block_in_place`. One
//! case escapes: a future wrapped in `tokio::task::coop::unconstrained`
//! has no budget, so a blocking call inside it is not caught (tokio's own
//! check would panic). The handshakes (`share`, `connect`) block too and
//! do not panic: call them on `spawn_blocking`.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code, unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

mod backend;
pub mod blocking;
mod error;
mod handoff;
mod kind;
mod may_block;
mod producer;
mod region;
pub mod ring;
mod shared_memory;
// The `tracing` events' macros: `tracing`'s with the feature, nothing without.
mod trace;
pub mod watch;
// The one module allowed `unsafe`: every OS object as a small safe type.
#[allow(unsafe_code)]
mod sys;
// tokio's registration of an fd (`AsyncFd`'s constructors are `unsafe`):
// an OS edge like the rest of `sys/`, in its folder, declared here because
// only the `tokio` feature has it (`sys` itself depends on no feature).
#[cfg(feature = "tokio")]
#[allow(unsafe_code)]
#[path = "sys/reactor.rs"]
mod reactor;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "tokio")]
pub use self::tokio::{Changes, NewError, Tripwire};
pub use error::{ArgumentError, Error};
pub use kind::{Backend, BackendKind, ParseBackendError};
pub use producer::Producer;
pub use region::Region;
pub use shared_memory::{SharedMemory, SharedMemoryOptions};

/// How many changes a consumer has observed: an ordered counter that starts
/// at zero and goes up by one with each trip taken.
///
/// Each epoch stands for at least one write, possibly many (writes between
/// two ACKs coalesce).
///
/// ```
/// use memfd_tripwire::Epoch;
/// assert!(Epoch::ZERO < Epoch::ZERO.next());
/// assert_eq!(Epoch::ZERO.next().get(), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(u64);

impl Epoch {
    /// No change observed yet.
    pub const ZERO: Epoch = Epoch(0);

    /// The number of changes observed.
    ///
    /// ```
    /// assert_eq!(memfd_tripwire::Epoch::ZERO.get(), 0);
    /// ```
    pub fn get(self) -> u64 {
        self.0
    }

    /// The epoch after this one (this one is unchanged).
    ///
    /// ```
    /// use memfd_tripwire::Epoch;
    /// assert_eq!(Epoch::ZERO.next().next().get(), 2);
    /// ```
    #[must_use = "next() returns the following epoch; it does not advance this one"]
    pub fn next(self) -> Epoch {
        Epoch(self.0.wrapping_add(1))
    }
}

pub use sys::tripwire::set_kernel_syscall_number;

/// The Doorbell backend's armed-flag protocol and the ring's protocol,
/// exported for the loom models in `tests/loom_*.rs`
/// (`RUSTFLAGS="--cfg memfd_tripwire_loom"`).
#[cfg(memfd_tripwire_loom)]
#[doc(hidden)]
pub mod __loom {
    pub use crate::backend::doorbell_protocol::*;
    /// The ring's index and waiting-flag protocol.
    pub mod ring {
        pub use crate::ring::protocol::*;
    }
    /// The watch's seqlock.
    pub mod watch {
        pub use crate::watch::protocol::*;
    }
}

/// The pure parsers of what a peer sends (the handshake's frames, a ring's
/// header and indices, the Userfault agent's channel), exported for the cargo-fuzz targets in `fuzz/`
/// (`cargo fuzz` builds with `--cfg fuzzing`). Each returns what the crate
/// itself would: the same checks, the same errors.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod __fuzz {
    use crate::ring::layout;
    use crate::{BackendKind, Error, handoff};

    /// Bytes of an offer's header.
    pub const OFFER_LEN: usize = handoff::OFFER_LEN;
    /// Bytes of a reply's header (its message follows).
    pub const REPLY_LEN: usize = handoff::REPLY_LEN;
    /// Bytes of an extra frame (a ring's, after the handshake).
    pub const EXTRA_LEN: usize = handoff::EXTRA_LEN;
    /// The longest message a reply may announce.
    pub const MAX_MESSAGE: usize = handoff::MAX_MESSAGE;
    /// The magic of a ring's extra frame.
    pub const RING_MAGIC: [u8; 8] = layout::FRAME_TAG;

    /// An offer's header that passed every check.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Offer {
        /// The backend offered.
        pub kind: BackendKind,
        /// The region's length (at least 1).
        pub len: usize,
        /// What it offers: all zero for a plain tripwire, else the tag of
        /// the extra frame that follows.
        pub protocol: [u8; 8],
    }

    /// A reply's header that passed every check.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Reply {
        /// 0 ok, 1 error, 2 wrong protocol (others are refused by
        /// [`reply_verdict`]).
        pub status: u16,
        /// Bytes of message that follow (at most [`MAX_MESSAGE`]).
        pub msg_len: usize,
        /// Status 2: the protocol the producer expected (all zero: a plain
        /// tripwire).
        pub protocol: [u8; 8],
    }

    /// The fds an offer for `kind` carries.
    pub fn offer_fds(kind: BackendKind) -> usize {
        handoff::offer_fds(kind)
    }

    /// Checks an offer's header that arrived with `fds` fds.
    pub fn parse_offer(frame: &[u8; OFFER_LEN], fds: usize) -> Result<Offer, Error> {
        handoff::parse_offer(frame, fds).map(|h| Offer {
            kind: h.kind,
            len: h.len,
            protocol: h.protocol.to_wire(),
        })
    }

    /// The offer's header a consumer sends.
    pub fn encode_offer(
        kind: BackendKind,
        len: usize,
        fds: usize,
        protocol: [u8; 8],
    ) -> [u8; OFFER_LEN] {
        handoff::encode_offer(kind, len, fds, handoff::Protocol::from_wire(protocol))
    }

    /// Checks a reply's header.
    pub fn parse_reply(hdr: &[u8; REPLY_LEN]) -> Result<Reply, Error> {
        handoff::parse_reply(hdr).map(|h| Reply {
            status: h.status,
            msg_len: h.msg_len,
            protocol: h.protocol.to_wire(),
        })
    }

    /// The reply's header a producer sends.
    pub fn encode_reply(status: u16, msg_len: usize, protocol: [u8; 8]) -> [u8; REPLY_LEN] {
        handoff::encode_reply(status, msg_len, handoff::Protocol::from_wire(protocol))
    }

    /// What a reply's status and message say.
    pub fn reply_verdict(status: u16, msg: &[u8]) -> Result<(), Error> {
        handoff::reply_verdict(status, msg)
    }

    /// Checks an extra frame that arrived with `fds` fds where `magic` and
    /// exactly `want` fds are expected.
    pub fn parse_extra(
        frame: &[u8; EXTRA_LEN],
        magic: [u8; 8],
        fds: usize,
        want: usize,
    ) -> Result<(), Error> {
        handoff::parse_extra(frame, magic, fds, want)
    }

    /// The extra frame a consumer sends.
    pub fn encode_extra(magic: [u8; 8], fds: usize) -> [u8; EXTRA_LEN] {
        handoff::encode_extra(magic, fds)
    }

    /// A ring's fixed facts, as its header names them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RingHeader {
        /// `size_of::<T>()`.
        pub size: u32,
        /// `align_of::<T>()`.
        pub align: u32,
        /// Slots: a power of two, at most `Ring::MAX_CAPACITY`.
        pub capacity: u32,
        /// The caller's type tag.
        pub tag: u64,
    }

    /// Byte frames' walk and placement (`src/ring/frames/walk.rs`): the
    /// Receiver's checks of each length word, the Sender's plan.
    #[derive(Debug)]
    pub struct Frames;

    /// What the Sender does for a frame ([`Frames::plan`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Plan {
        /// Write it now, after a skip of this many words (0: none).
        Grant(u64),
        /// Publish a skip of this many words alone, then plan again.
        Skip(u64),
        /// Wait for this many free words.
        Wait(u64),
    }

    impl Frames {
        /// The skip marker.
        pub const SKIP: u64 = crate::ring::frames::walk::SKIP;

        /// Walks `area` (`capacity` words, a power of two; `area` has at
        /// least that many) from `tail` to `head` as the Receiver does:
        /// each frame as (byte offset of its payload, length).
        pub fn walk(
            capacity: u32,
            head: u64,
            tail: u64,
            area: &[u64],
        ) -> Result<Vec<(usize, usize)>, Error> {
            crate::ring::frames::walk::walk(capacity, head, tail, |i| area[i])
        }

        /// Words a frame of `len` bytes takes.
        pub fn words(len: usize) -> u64 {
            crate::ring::frames::walk::words(len)
        }

        /// The Sender's placement of a frame of `words` words at word
        /// `offset` with `free` words free.
        pub fn plan(words: u64, offset: u64, capacity: u64, free: u64) -> Plan {
            use crate::ring::frames::walk::{self, Plan as P};
            match walk::plan(words, offset, capacity, free) {
                P::Grant { skip } => Plan::Grant(skip),
                P::Skip(n) => Plan::Skip(n),
                P::Wait(n) => Plan::Wait(n),
            }
        }
    }

    /// A ring's checks of its peer's header and indices: each calls the
    /// one in `src/ring/layout.rs`.
    #[derive(Debug)]
    pub struct Ring;

    impl Ring {
        /// The layout version in [`Ring::header`]'s bytes 8..12 (its magic,
        /// bytes 0..8: `"MFDTRNG1"`).
        pub const VERSION: u32 = layout::VERSION;
        /// The largest capacity a header may name.
        pub const MAX_CAPACITY: u32 = layout::MAX_CAPACITY;
        /// Bytes of a ring's header, at the start of its control memfd.
        pub const HEADER_LEN: usize = layout::HEADER_LEN;

        /// `Header::parse`: the peer's header bytes against what this side
        /// expects (`ours.capacity` is ignored).
        pub fn header(
            raw: &[u8; layout::HEADER_LEN],
            ours: RingHeader,
        ) -> Result<RingHeader, Error> {
            let ours = layout::Header {
                size: ours.size,
                align: ours.align,
                capacity: ours.capacity,
                tag: ours.tag,
            };
            layout::Header::parse(raw, ours).map(|h| RingHeader {
                size: h.size,
                align: h.align,
                capacity: h.capacity,
                tag: h.tag,
            })
        }

        /// `available`: the messages between `tail` and `head`.
        pub fn available(head: u64, tail: u64, capacity: u32) -> Result<u64, Error> {
            layout::available(head, tail, capacity)
        }

        /// `advance_tail`: the Sender's check of a re-read tail.
        pub fn advance_tail(
            head: u64,
            old_tail: u64,
            new_tail: u64,
            capacity: u32,
        ) -> Result<u64, Error> {
            layout::advance_tail(head, old_tail, new_tail, capacity)
        }

        /// Where in the slots memfd message `i` of a checked header lives,
        /// and the slots before the ring wraps.
        pub fn slot(header: RingHeader, i: u64) -> (usize, usize, usize) {
            let h = layout::Header {
                size: header.size,
                align: header.align,
                capacity: header.capacity,
                tag: header.tag,
            };
            (h.slot_offset(i), h.slots_to_end(i), h.slots_len())
        }
    }

    /// Bytes of a page in the Userfault agent's PAGES replies (the host's
    /// page size).
    pub fn agent_page() -> usize {
        crate::backend::userfault_fuzz::page()
    }
    /// The most page ranges one PAGES reply lists.
    pub const AGENT_MAX_RANGES: usize = crate::backend::userfault_fuzz::MAX_RANGES;
    /// The largest message on the agent's channel (the consumer's buffer).
    pub const AGENT_MAX_MESSAGE: usize = crate::backend::userfault_fuzz::MAX_MESSAGE;
    /// Bytes of the buffer the agent receives the consumer's messages into
    /// (a longer message is truncated to it by the channel).
    pub const AGENT_REQUEST_BUF: usize = 16;

    /// A PAGES reply (Userfault agent -> consumer) for a region of `pages`
    /// pages, as the consumer parses it: its sequence number and the
    /// written page ranges (`None`: the whole region); `None` if malformed.
    pub fn parse_pages(
        msg: &[u8],
        pages: usize,
    ) -> Option<(u32, Option<Vec<std::ops::Range<usize>>>)> {
        crate::backend::userfault_fuzz::parse_pages(msg, pages).map(|p| (p.seq, p.ranges))
    }

    /// A consumer's message to a Userfault agent, as the agent parses it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum AgentRequest {
        /// ACK with this sequence number.
        Ack(u32),
        /// CONFIG: the scan interval (clamped).
        Config(std::time::Duration),
    }

    /// The agent's parse of a consumer's message; `None`: ignored.
    pub fn parse_agent_request(msg: &[u8]) -> Option<AgentRequest> {
        use crate::backend::userfault_fuzz::{Request, parse_request};
        parse_request(msg).map(|r| match r {
            Request::Ack(seq) => AgentRequest::Ack(seq),
            Request::Config(d) => AgentRequest::Config(d),
        })
    }

    /// The ACK request a consumer sends.
    pub fn encode_ack(seq: u32) -> [u8; 8] {
        crate::backend::userfault_fuzz::encode_ack(seq)
    }

    /// The CONFIG message a `UserfaultAsync` consumer sends.
    pub fn encode_config(interval: std::time::Duration) -> [u8; 16] {
        crate::backend::userfault_fuzz::encode_config(interval)
    }
}
