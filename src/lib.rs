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
//! # Quick start
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::os::unix::net::UnixStream;
//! use memfd_tripwire::{Backend, Producer, Tripwire, blocking};
//!
//! // Consumer: create, share with the producer (normally another process).
//! let (ours, theirs) = UnixStream::pair()?;
//! let producer = std::thread::spawn(move || {
//!     let p = Producer::connect(theirs)?;
//!     p.region().write(0, &0xC0FFEE_u32)?;
//!     p.notify()?; // needed on Doorbell, a no-op elsewhere
//!     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(p)
//! });
//! let mut tw = blocking::Tripwire::builder(4096).backend(Backend::Doorbell).create()?;
//! tw.share(ours)?;
//! let mut tw = Tripwire::new(tw)?;
//!
//! let epoch = tw.changed().await?; // waits, ACKs, returns the new epoch
//! assert_eq!(tw.region().read::<u32>(0)?, 0xC0FFEE);
//! # let _ = (epoch, producer.join().unwrap().unwrap());
//! # Ok(()) }
//! ```
//!
//! # Backends
//!
//! | backend | what is seen | who cooperates | cost | where |
//! |---|---|---|---|---|
//! | [`Kernel`](Backend::Kernel) | every store through any mapping | nobody | a page fault per written page per ACK | the RFC kernel (syscall 472) |
//! | [`Userfault`](Backend::Userfault) | every store through the producer's mapping, and which pages | the producer registers at handshake ([`Producer::connect`] does it) | a stalled store (~15–35 µs) per written page per ACK | Linux >= 5.19 |
//! | [`UserfaultAsync`](Backend::UserfaultAsync) | as `Userfault`, within one interval | as `Userfault`, and it hands the consumer its `/proc/self/pagemap` (its memory layout) | a ~1 µs fault per written page per ACK, never a stall; a page-table scan per interval (default 1 ms) | Linux >= 6.7 |
//! | [`Doorbell`](Backend::Doorbell) | stores followed by [`Producer::notify`] | the producer calls `notify()` | a fence per `notify()`; an eventfd write only when the consumer waits | every Linux |
//! | [`Poll`](Backend::Poll) | any change of the bytes | nobody | a compare of the whole region per interval; latency up to one interval | every Linux |
//!
//! [`Backend::Auto`] picks `Kernel`, then `Userfault`, and otherwise fails with an error that
//! names each backend tried and why, and the explicit choices (`UserfaultAsync` is never
//! picked by `Auto`: choose it by name).
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
//!   forked child that inherits the socket hides it.
//! - The layers: [`blocking::Tripwire`] is runtime-free (and a
//!   `mio::event::Source` with feature `mio`); [`Tripwire`] wraps it for
//!   tokio (default feature `tokio`).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

mod backend;
pub mod blocking;
mod error;
mod handoff;
mod peers;
mod producer;
mod region;
pub mod ring;
mod shared_memory;
mod sys;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "tokio")]
pub use self::tokio::{Changes, Tripwire};
pub use backend::{Backend, BackendKind};
pub use error::Error;
pub use producer::Producer;
pub use region::Region;
pub use shared_memory::SharedMemory;

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

    /// The epoch after this one.
    ///
    /// ```
    /// use memfd_tripwire::Epoch;
    /// assert_eq!(Epoch::ZERO.next().next().get(), 2);
    /// ```
    pub fn next(self) -> Epoch {
        Epoch(self.0.wrapping_add(1))
    }
}

/// Sets the syscall number used for `memfd_tripwire(2)` (default: the RFC's
/// 472, x86_64 and asm-generic). The number is provisional; this is for
/// kernels that carry the patch under another number.
///
/// # Safety
///
/// On the running kernel, `nr` must be `memfd_tripwire`, or a system call
/// that is harmless when called with the single argument `0`: creating a
/// `Kernel` tripwire calls it that way. (What it returns is still checked
/// before use.)
///
/// ```
/// // The RFC's number: the default.
/// unsafe { memfd_tripwire::set_kernel_syscall_number(472) };
/// ```
pub unsafe fn set_kernel_syscall_number(nr: i64) {
    // SAFETY: forwarded: the caller upholds `set_syscall_number`'s contract.
    unsafe { sys::tripwire::set_syscall_number(nr) }
}

/// The Doorbell backend's armed-flag protocol and the ring's protocol,
/// exported for the loom models in `tests/loom_*.rs`
/// (`RUSTFLAGS="--cfg memfd_tripwire_loom"`).
#[cfg(memfd_tripwire_loom)]
#[doc(hidden)]
pub mod __loom {
    pub use crate::backend::doorbell::protocol::*;
    /// The ring's index and waiting-flag protocol.
    pub mod ring {
        pub use crate::ring::protocol::*;
    }
}
