//! `Backend::UserfaultAsync`: the low-stall variant of `Backend::Userfault`,
//! for kernels with `UFFD_FEATURE_WP_ASYNC` and `PAGEMAP_SCAN` (Linux 6.7).
//!
//! The producer's agent (`backend::agent`) registers its mapping in async
//! write-protect mode: a store to a protected page costs the producer one
//! minor fault (~1 µs) that the kernel resolves by itself, clearing the
//! page's uffd-wp bit; nothing ever waits for the consumer. The agent scans
//! its own page tables (`PAGEMAP_SCAN`, `PM_SCAN_WP_MATCHING`) every
//! interval while the consumer is armed, trips the wire on a written page,
//! and on the consumer's ACK scans once more (which re-protects what it
//! reports, under the page-table lock: a store is either reported by that
//! scan or faults again) and replies with the pages. The consumer's end is
//! `backend::userfault::Userfault`, shared with `Backend::Userfault`.
//!
//! A producer that is killed takes its page tables, and the record of the
//! stores not scanned yet, with it: the consumer then reports the whole
//! region once (possibly spurious, never a lost store). With swap enabled,
//! a written page swapped out before the next scan loses its written state
//! (the kernel keeps only the protection): that store trips the wire only
//! when the page is next touched.

use std::os::fd::AsFd;

use crate::backend::userfault;
use crate::sys::uffd;

/// Why this kernel cannot do UserfaultAsync.
pub(crate) fn probe() -> Result<(), String> {
    let features = userfault::probe()?;
    if features & uffd::FEATURE_WP_ASYNC == 0 {
        return Err(
            "userfaultfd async write-protect unavailable (UFFDIO_API lacks \
                    WP_ASYNC; needs Linux >= 6.7): use Backend::Userfault or upgrade"
                .into(),
        );
    }
    let pagemap = uffd::open_pagemap().map_err(|e| {
        format!(
            "opening /proc/self/pagemap failed ({e}): needs /proc mounted and a kernel with \
             CONFIG_PROC_PAGE_MONITOR; use Backend::Userfault"
        )
    })?;
    uffd::probe_pagemap_scan(pagemap.as_fd()).map_err(|e| {
        format!(
            "the PAGEMAP_SCAN ioctl is unavailable ({e}; needs Linux >= 6.7): use \
             Backend::Userfault or upgrade"
        )
    })
}
