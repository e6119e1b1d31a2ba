//! `Backend::Userfault` and `Backend::UserfaultAsync`: plain stores seen on
//! mainline kernels through userfaultfd write-protect on the producer's
//! mapping. Both halves are here: the consumer's end (`wire`: the channels
//! to the agents, the ACK as a round trip) and the producer's (`agent`: the
//! thread in the producer's process that owns the uffd), with what both
//! check (`probe`). `probe` imports neither, `agent` imports `probe`,
//! `wire` imports both.
//!
//! `UserfaultAsync` is the low-stall variant, for kernels with
//! `UFFD_FEATURE_WP_ASYNC` and `PAGEMAP_SCAN` (Linux 6.7). The producer's
//! agent registers its mapping in async write-protect mode: a store to a
//! protected page costs the producer one minor fault (~1 µs) that the
//! kernel resolves by itself, clearing the page's uffd-wp bit; nothing ever
//! waits for the consumer. The agent scans its own page tables
//! (`PAGEMAP_SCAN`, `PM_SCAN_WP_MATCHING`) every interval while the
//! consumer is armed, trips the wire on a written page, and on the
//! consumer's ACK scans once more (which re-protects what it reports, under
//! the page-table lock: a store is either reported by that scan or faults
//! again) and replies with the pages. The consumer's end is the same as
//! `Userfault`'s.
//!
//! A producer that is killed takes its page tables, and the record of the
//! stores not scanned yet, with it: the consumer then reports the whole
//! region once (possibly spurious, never a lost store). With swap enabled,
//! a written page swapped out before the next scan loses its written state
//! (the kernel keeps only the protection): that store trips the wire only
//! when the page is next touched.

mod agent;
mod probe;
mod wire;

pub(crate) use agent::Agent;
pub(crate) use probe::MAX_LEN;
pub(crate) use wire::Userfault;

/// The agent's channel protocol and the page size, for `__fuzz`.
#[cfg(fuzzing)]
pub(crate) mod fuzz {
    pub(crate) use super::agent::{
        MAX_MESSAGE, MAX_RANGES, Request, encode_ack, encode_config, parse_pages, parse_request,
    };
    pub(crate) use super::probe::page;
}
