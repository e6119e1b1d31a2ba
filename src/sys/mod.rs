//! The OS edge: the only module of this crate that contains `unsafe`.
//!
//! Everything above `sys` is safe Rust built on the small, safe signatures
//! exported here (the way mio keeps its system calls under `src/sys/unix/`).
//! Plain system calls go through rustix; what rustix lacks (the provisional
//! `memfd_tripwire` syscall number, the tripwire ACK ioctl, raw access to a
//! shared mapping, `preadv2(RWF_NOWAIT)`) is written here, one `unsafe`
//! block at a time, each with a `// SAFETY:` comment (mmap/munmap go through
//! libc, which sanitizers intercept). `sys` imports nothing from the rest of
//! the crate.
//!
//! One small type per OS object: [`Mapping`] (a shared mapping, copied only
//! with atomics), [`SealedMemfd`], [`Bell`] (a wake-up across processes that
//! no peer can jam), [`Channel`] (messages across processes, likewise),
//! [`EventFd`] (a wake-up between our own threads),
//! `uffd` (userfaultfd and `PAGEMAP_SCAN`), `tripwire` (the RFC syscall),
//! `fdkind` (what a received fd is), [`FdSet`] (fds watched together
//! through one epoll fd), `wait` (the one `poll(2)` with a deadline).
//! `reactor.rs` (a tokio registration that owns its fd) sits in this
//! folder with the rest of the `unsafe`, but is declared in `lib.rs`, where
//! the features choose modules: nothing here depends on a feature.

pub(crate) mod bell;
pub(crate) mod channel;
pub(crate) mod eventfd;
pub(crate) mod fd_set;
pub(crate) mod fdkind;
pub(crate) mod mapping;
pub(crate) mod memfd;
mod socket;
pub(crate) mod tripwire;
pub(crate) mod uffd;
pub(crate) mod wait;

pub(crate) use bell::Bell;
pub(crate) use channel::{Channel, Recv};
pub(crate) use eventfd::EventFd;
pub(crate) use fd_set::{FdSet, Watch};
pub(crate) use mapping::Mapping;
pub(crate) use memfd::SealedMemfd;
