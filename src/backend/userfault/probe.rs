//! What the kernel offers `Backend::Userfault` and `Backend::UserfaultAsync`
//! (each probe says why not, and what to do), and the limits both halves
//! check: a leaf of `userfault`, imported by the consumer's end (`wire`)
//! and the producer's (`agent`).

use std::os::fd::AsFd;

use crate::sys::uffd;

/// Why this kernel cannot do UserfaultAsync.
pub(crate) fn userfault_async() -> Result<(), String> {
    let features = userfault()?;
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

/// Why this kernel cannot do Userfault, or `Ok` with the features offered.
pub(crate) fn userfault() -> Result<u64, String> {
    let fd = uffd::open().map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => "userfaultfd absent (ENOSYS: kernel built without \
                               CONFIG_USERFAULTFD): use Backend::Doorbell or Backend::Poll"
            .to_string(),
        Some(libc::EPERM) => "userfaultfd refused (EPERM) even in user-mode-only mode: allow \
                              it with sysctl vm.unprivileged_userfaultfd=1 or CAP_SYS_PTRACE, \
                              or use Backend::Doorbell"
            .to_string(),
        n => format!("userfaultfd failed: {e}{}", crate::error::fd_limit_hint(n)),
    })?;
    let features = uffd::api(fd.as_fd(), 0).map_err(|e| format!("UFFDIO_API failed: {e}"))?;
    if features & uffd::FEATURE_WP_SHMEM == 0 {
        return Err(
            "userfaultfd write-protect on shmem unavailable (UFFDIO_API lacks \
                    WP_HUGETLBFS_SHMEM; needs Linux >= 5.19): use Backend::Doorbell or upgrade"
                .into(),
        );
    }
    Ok(features)
}

/// The host's page size: the unit of `UFFDIO_WRITEPROTECT` ranges and of
/// the page numbers in the agent's replies (both ends run on this host).
pub(crate) fn page() -> usize {
    rustix::param::page_size()
}

/// The largest region these backends watch: the agent keeps a bit per page
/// and write-protects every page (page tables for the whole span), and its
/// replies number pages in `u32`.
pub(crate) const MAX_LEN: usize = 16 << 30;
