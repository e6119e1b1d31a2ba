//! The OS edge: the only module of this crate that contains `unsafe`.
//!
//! Everything above `sys` is safe Rust built on the small, safe signatures
//! exported here (the way mio keeps its system calls under `src/sys/unix/`).
//! Plain system calls go through rustix; what rustix lacks (the provisional
//! `memfd_tripwire` syscall number, the tripwire ACK ioctl, raw access to a
//! shared mapping) is written here, one `unsafe` block at a time, each with
//! a `// SAFETY:` comment.

pub(crate) mod bell;
pub(crate) mod eventfd;
pub(crate) mod mapping;
#[cfg(feature = "tokio")]
pub(crate) mod reactor;
pub(crate) mod tripwire;
pub(crate) mod uffd;

pub(crate) use bell::Bell;
pub(crate) use eventfd::EventFd;
pub(crate) use mapping::Mapping;
