//! A `MAP_SHARED` mapping of a memory fd, accessed only by atomic operations
//! at checked offsets: copies in and out are made of relaxed atomic loads
//! and stores, never of plain memory accesses.
//!
//! # Granularity
//!
//! Rust's memory model makes a racing pair of atomic accesses undefined if
//! they overlap only partially (a 1-byte store racing an 8-byte load of the
//! same word), not just a racing non-atomic access. So every byte of a mapping
//! has one fixed access size, a property of where it lies, not of the access:
//!
//! - the bytes of each 8-aligned word that lies wholly inside the mapping
//!   (all of it but the last `len % 8` bytes) are only ever accessed as that
//!   whole word, an `AtomicU64`: a copy that covers part of a word loads the
//!   word and keeps the bytes it wants, or merges its bytes into the word
//!   with a compare-exchange;
//! - the last `len % 8` bytes are only ever accessed as `AtomicU8`s.
//!
//! Every copy of this crate, on either side of a handshake, follows that
//! rule, and so does [`Mapping::atomic_u64`] (8-aligned, so always a whole
//! word). [`Mapping::atomic_u32`] cannot: an `AtomicU32` at `offset` racing a
//! copy of its word is a mixed-size race (see its doc).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, fence};

// Every word of a mapping is an 8-byte atomic, and a read-only mapping is
// read with relaxed 8-byte loads, which the standard library allows on
// read-only memory only where they are native (its "Atomic accesses to
// read-only memory" table: 8 bytes on 64-bit targets, 4 on 32-bit ones).
#[cfg(not(target_pointer_width = "64"))]
compile_error!("memfd-tripwire needs a 64-bit target (8-byte atomics on shared memory)");

/// Why an access was refused. Checked here, because the soundness of every
/// raw access below rests on these checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessError {
    OutOfBounds {
        offset: usize,
        len: usize,
        size: usize,
    },
    Misaligned {
        offset: usize,
        align: usize,
    },
    /// A write, or a view that allows writes, into a read-only mapping.
    ReadOnly {
        offset: usize,
        len: usize,
    },
}

/// The access size of the mapping's words (see the module doc).
const WORD: usize = std::mem::size_of::<u64>();

/// How often a partial-word store retries its compare-exchange before it
/// falls back to two read-modify-writes that always complete.
const MERGE_TRIES: usize = 4;

/// A shared mapping of `len` bytes, read-write or read-only. Unmapped on
/// drop.
///
/// A read-only mapping is only ever accessed by relaxed atomic loads of at
/// most 8 bytes, which the standard library allows on read-only memory
/// (`core::sync::atomic`, "Atomic accesses to read-only memory"): writes,
/// and views that would allow them (`atomic_u32`, `atomic_u64`), are
/// refused with [`AccessError::ReadOnly`] before any access.
///
/// Another process may write the same memory at any time: nothing here hands
/// out a reference to plain data, and nothing reads or writes it with a plain
/// (non-atomic) access; only atomics are used.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is shared memory owned by this value; every access to
// it is an atomic operation (see `word`/`byte`), which is sound from any
// thread, concurrently with any other atomic access of the same size.
unsafe impl Send for Mapping {}
// SAFETY: as above: `&Mapping` only allows atomic loads, stores and
// read-modify-writes, never a plain access that could race.
unsafe impl Sync for Mapping {}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("addr", &self.ptr)
            .field("len", &self.len)
            .field("writable", &self.writable)
            .finish()
    }
}

impl Mapping {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0)`.
    pub(crate) fn map_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        Self::map(fd, 0, len, true)
    }

    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, fd, offset)`;
    /// `offset` must be a multiple of the page size (else `EINVAL`).
    pub(crate) fn map_shared_at(fd: BorrowedFd<'_>, offset: usize, len: usize) -> io::Result<Self> {
        Self::map(fd, offset, len, true)
    }

    /// `mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0)`: for memory this
    /// process only reads, so that no bug of ours can write it.
    pub(crate) fn map_shared_read_only(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        Self::map(fd, 0, len, false)
    }

    fn map(fd: BorrowedFd<'_>, offset: usize, len: usize, writable: bool) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map a zero-length region",
            ));
        }
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // Through libc, not rustix's raw system calls: sanitizers intercept
        // libc's mmap/munmap, and ThreadSanitizer must see a mapping end, or
        // a later mapping at the same address inherits its access history
        // and unrelated tests appear to race.
        // SAFETY: a fresh mapping at an address of the kernel's choosing
        // (null hint, no MAP_FIXED) aliases nothing in this process.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Mapping { ptr, len, writable })
    }

    /// `false` for a read-only mapping.
    pub(crate) fn is_writable(&self) -> bool {
        self.writable
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The mapping's address in this process (for userfaultfd ranges).
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// `madvise(MADV_DONTFORK)`: a forked child gets no copy of the mapping.
    pub(crate) fn dont_fork(&self) -> io::Result<()> {
        // SAFETY: the range is exactly this live mapping; DONTFORK only
        // changes what fork() copies, not this process's view of it.
        unsafe {
            rustix::mm::madvise(
                self.ptr.as_ptr().cast(),
                self.len,
                rustix::mm::Advice::LinuxDontFork,
            )
        }?;
        Ok(())
    }

    #[inline]
    fn check(&self, offset: usize, len: usize, align: usize) -> Result<(), AccessError> {
        let end = offset.checked_add(len);
        if end.is_none_or(|end| end > self.len) {
            return Err(AccessError::OutOfBounds {
                offset,
                len,
                size: self.len,
            });
        }
        // The mapping is page aligned, so offset alignment is address alignment.
        if offset % align != 0 {
            return Err(AccessError::Misaligned { offset, align });
        }
        Ok(())
    }

    /// Where the whole words end: bytes before this are accessed as words,
    /// bytes from here to `len` (fewer than 8) as bytes.
    #[inline(always)]
    fn words_end(&self) -> usize {
        self.len & !(WORD - 1)
    }

    /// The word at `at`.
    ///
    /// # Safety
    ///
    /// `at` is a multiple of 8 and `at + 8 <= self.words_end()`.
    #[inline(always)]
    unsafe fn word(&self, at: usize) -> &AtomicU64 {
        debug_assert!(at % WORD == 0 && at + WORD <= self.words_end());
        // SAFETY: by the caller's promise the 8 bytes at `at` lie inside the
        // live mapping, which is page aligned, so the pointer is 8-aligned;
        // they stay mapped as long as `&self` lives (unmapped only in `drop`).
        // Concurrent writes by other threads or processes, hostile or not,
        // cannot make this view unsound:
        // - in this process every access to these bytes by a copy or by
        //   `atomic_u64` is an atomic access of exactly these 8 bytes (the
        //   module doc's rule), so no data race and no mixed-size race
        //   arises between them (`atomic_u32` is the exception; see there);
        // - any bit pattern is a valid `u64`, so whatever was stored, a load
        //   returns a valid value, which callers treat as untrusted;
        // - the compiler may not assume an atomic keeps its value between
        //   two accesses (no re-read, no elided load), so a value checked
        //   once stays the value that was checked;
        // - a peer process is outside Rust's model: all it can do is store
        //   bytes, and each aligned 8-byte load of ours is single-copy atomic
        //   on the hardware, so it observes some `u64`.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(at).cast()) }
    }

    /// The byte at `at`, one of the last `len % 8`.
    ///
    /// # Safety
    ///
    /// `self.words_end() <= at < self.len`.
    #[inline(always)]
    unsafe fn byte(&self, at: usize) -> &AtomicU8 {
        debug_assert!(self.words_end() <= at && at < self.len);
        // SAFETY: as for `word`, for one byte inside the live mapping that
        // is only ever accessed as an `AtomicU8` (alignment 1).
        unsafe { AtomicU8::from_ptr(self.ptr.as_ptr().add(at)) }
    }

    /// Copies `dst.len()` bytes at `offset` out of the mapping, with relaxed
    /// atomic loads.
    ///
    /// A peer writing at the same time can make the copy torn: each word
    /// (8 aligned bytes of the mapping) is one load, so the copy may mix
    /// older and newer words, never a byte that nobody stored. Callers treat
    /// the result as untrusted input.
    #[inline(always)]
    pub(crate) fn read_into(&self, offset: usize, dst: &mut [u8]) -> Result<(), AccessError> {
        self.check(offset, dst.len(), 1)?;
        // The common cases are kept small enough to inline, so that a fixed
        // size becomes straight loads: whole words (aligned slots and values,
        // whole pages), or part of one word (a small unaligned value).
        if self.whole_words(offset, dst.len()) {
            // SAFETY: `whole_words` checked what `load_words` needs.
            unsafe { self.load_words(offset, dst) };
        } else if self.in_one_word(offset, dst.len()) {
            let lead = offset % WORD;
            // SAFETY: `in_one_word` checked that the word at `offset - lead`
            // lies below `words_end`.
            let word = unsafe { self.word(offset - lead) }.load(Relaxed);
            copy_small(dst, &word.to_ne_bytes()[lead..lead + dst.len()]);
        } else {
            self.read_parts(offset, dst);
        }
        Ok(())
    }

    /// Copies `dst.len()` words at `offset`, a multiple of 8, out of the
    /// mapping: `read_into` for whole words, for long copies (a batch of
    /// frames). Torn as `read_into` may be.
    ///
    /// Four words an iteration: the compiler does not unroll a loop of
    /// atomic loads where it cannot see the length, and one word an
    /// iteration made a batch of 64 KiB frames copy at three quarters of
    /// the speed of `read_into` inlined into a frame's receive (which it
    /// did unroll).
    #[inline]
    pub(crate) fn read_words(&self, offset: usize, dst: &mut [u64]) -> Result<(), AccessError> {
        // No overflow: a slice holds at most `isize::MAX` bytes.
        self.check(offset, dst.len() * WORD, WORD)?;
        let (quads, rest) = dst.split_at_mut(dst.len() / 4 * 4);
        for (q, quad) in quads.chunks_exact_mut(4).enumerate() {
            let at = offset + q * 4 * WORD;
            for (i, w) in quad.iter_mut().enumerate() {
                // SAFETY: `check` proved `offset + dst.len() * 8 <= len`
                // and `offset` 8-aligned, so each of these words ends at
                // or below `offset + dst.len() * 8`, a multiple of 8 at
                // most `len`, hence at most `words_end`.
                *w = unsafe { self.word(at + i * WORD) }.load(Relaxed);
            }
        }
        let at = offset + quads.len() * WORD;
        for (i, w) in rest.iter_mut().enumerate() {
            // SAFETY: as above, for the words after the last four.
            *w = unsafe { self.word(at + i * WORD) }.load(Relaxed);
        }
        Ok(())
    }

    /// Whether `offset..offset + len` is made of whole words only.
    #[inline(always)]
    fn whole_words(&self, offset: usize, len: usize) -> bool {
        // No overflow: `check` proved `offset + len <= self.len`.
        (offset | len) % WORD == 0 && offset + len <= self.words_end()
    }

    /// Whether `offset..offset + len` is a non-empty part of one word.
    #[inline(always)]
    fn in_one_word(&self, offset: usize, len: usize) -> bool {
        let lead = offset % WORD;
        // No overflow: `check` proved `offset + len <= self.len`.
        len != 0 && lead + len <= WORD && offset - lead + WORD <= self.words_end()
    }

    /// Loads the words at `at..at + dst.len()` into `dst`.
    ///
    /// # Safety
    ///
    /// `at` and `dst.len()` are multiples of 8, `at + dst.len() <= words_end`.
    #[inline(always)]
    unsafe fn load_words(&self, at: usize, dst: &mut [u8]) {
        for (i, chunk) in dst.chunks_exact_mut(WORD).enumerate() {
            // SAFETY: 8-aligned, and `at + i * 8 + 8 <= at + dst.len()`,
            // which the caller promises is at most `words_end`.
            let word = unsafe { self.word(at + i * WORD) }.load(Relaxed);
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
    }

    /// Stores `src` into the words at `at..at + src.len()`.
    ///
    /// # Safety
    ///
    /// As for `load_words`.
    #[inline(always)]
    unsafe fn store_words(&self, at: usize, src: &[u8]) {
        for (i, chunk) in src.chunks_exact(WORD).enumerate() {
            let word = u64::from_ne_bytes(chunk.try_into().expect("chunks of 8"));
            // SAFETY: as in `load_words`.
            unsafe { self.word(at + i * WORD) }.store(word, Relaxed);
        }
    }

    /// `read_into` for any range: a head inside a word, whole words, a tail
    /// inside a word, the bytes past the last whole word.
    fn read_parts(&self, offset: usize, dst: &mut [u8]) {
        let words_end = self.words_end();
        let mut at = offset;
        let mut out = dst;
        // SAFETY (every `word`/`byte`/`load_words` call below): the caller
        // (`read_into`) checked `offset + dst.len() <= len`, and `at` only
        // advances by the bytes copied, so `at + out.len() <= len`
        // throughout. Each call site states why its words lie below
        // `words_end` (or its bytes past it).
        let lead = at % WORD;
        if lead != 0 && at < words_end {
            // A head inside a word: `at - lead` is 8-aligned and below
            // `words_end`, a multiple of 8, so its whole word is below too.
            let n = (WORD - lead).min(out.len());
            let word = unsafe { self.word(at - lead) }.load(Relaxed).to_ne_bytes();
            let (head, rest) = out.split_at_mut(n);
            copy_small(head, &word[lead..lead + n]);
            out = rest;
            at += n;
        }
        // Whole words: `at` is 8-aligned here unless it is at or past
        // `words_end` (then `whole` is 0).
        let whole = words_end.saturating_sub(at).min(out.len()) / WORD;
        let (mid, rest) = out.split_at_mut(whole * WORD);
        // 8-aligned, and `at + whole * 8 <= words_end`.
        unsafe { self.load_words(at, mid) };
        out = rest;
        at += whole * WORD;
        if !out.is_empty() && at < words_end {
            // A tail inside a word: `at` is 8-aligned and below `words_end`
            // (so `at + 8 <= words_end`), and fewer than 8 bytes are left,
            // else the loop above would have taken them.
            let word = unsafe { self.word(at) }.load(Relaxed).to_ne_bytes();
            let n = out.len();
            copy_small(out, &word[..n]);
            return;
        }
        for (i, b) in out.iter_mut().enumerate() {
            // Only bytes at or past `words_end` are left.
            *b = unsafe { self.byte(at + i) }.load(Relaxed);
        }
    }

    /// Copies `src` into the mapping at `offset`, with relaxed atomic
    /// stores; bytes of a word that `src` covers only in part are merged
    /// into it with a compare-exchange, which keeps the word's other bytes.
    ///
    /// A peer reading at the same time may see some words of `src` and not
    /// others; one writing the same bytes at the same time leaves them
    /// unspecified (each word holds its value or ours, except after a merge
    /// that a peer kept defeating: see `merge`).
    #[inline(always)]
    pub(crate) fn write_from(&self, offset: usize, src: &[u8]) -> Result<(), AccessError> {
        self.check(offset, src.len(), 1)?;
        self.check_writable(offset, src.len())?;
        if self.whole_words(offset, src.len()) {
            // SAFETY: `whole_words` checked what `store_words` needs.
            unsafe { self.store_words(offset, src) };
        } else if self.in_one_word(offset, src.len()) {
            let lead = offset % WORD;
            // SAFETY: as in `read_into`.
            merge(unsafe { self.word(offset - lead) }, lead, src);
        } else if !src.is_empty() {
            // (An empty `src` writes nothing: not even a merge, which would
            // be a write, and trip a wire that traps stores.)
            self.write_parts(offset, src);
        }
        Ok(())
    }

    /// `write_from` for any range, in the steps of `read_parts`.
    fn write_parts(&self, offset: usize, src: &[u8]) {
        let words_end = self.words_end();
        let mut at = offset;
        let mut src = src;
        // SAFETY (every `word`/`byte`/`store_words` call below): as in
        // `read_parts`, whose steps these mirror one for one.
        let lead = at % WORD;
        if lead != 0 && at < words_end {
            let n = (WORD - lead).min(src.len());
            let (head, rest) = src.split_at(n);
            merge(unsafe { self.word(at - lead) }, lead, head);
            src = rest;
            at += n;
        }
        let whole = words_end.saturating_sub(at).min(src.len()) / WORD;
        let (mid, rest) = src.split_at(whole * WORD);
        unsafe { self.store_words(at, mid) };
        src = rest;
        at += whole * WORD;
        if !src.is_empty() && at < words_end {
            merge(unsafe { self.word(at) }, 0, src);
            return;
        }
        for (i, &b) in src.iter().enumerate() {
            unsafe { self.byte(at + i) }.store(b, Relaxed);
        }
    }

    /// An atomic view of the naturally aligned `u32` at `offset`.
    ///
    /// Half a word: it is the caller's duty that no copy of the surrounding
    /// word (nor an `atomic_u64` of it) races an access through this view,
    /// as that would be a mixed-size race, which Rust's memory model leaves
    /// undefined (the hardware defines it: x86-64 and aarch64 give each
    /// aligned access single-copy atomicity). The doorbell's control page
    /// is never copied; the ring's state (`ring::layout::STATE`, half of the
    /// wire's second word) is, by the `Poll` backend's snapshot when a ring
    /// runs on `Poll`, and so is any `Region::atomic_u32` of a user's.
    #[inline]
    pub(crate) fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, AccessError> {
        self.check(offset, 4, std::mem::align_of::<AtomicU32>())?;
        // A `&AtomicU32` allows stores, which a read-only mapping would
        // answer with SIGSEGV.
        self.check_writable(offset, 4)?;
        // SAFETY: in bounds and aligned (checked); the memory lives as long
        // as `&self`; concurrent atomic accesses of these same 4 bytes, by
        // threads or processes, are sound, and any bit pattern is a valid
        // u32. No plain access to the mapping exists (all copies are atomic);
        // the mixed-size caveat is in the doc above.
        Ok(unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast()) })
    }

    /// An atomic view of the naturally aligned `u64` at `offset`: exactly one
    /// of the mapping's words, so it may race copies of it.
    #[inline]
    pub(crate) fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, AccessError> {
        self.check(offset, 8, std::mem::align_of::<AtomicU64>())?;
        // As in `atomic_u32`: a view that allows stores needs a writable
        // mapping.
        self.check_writable(offset, 8)?;
        // SAFETY: in bounds and 8-aligned (checked), hence a whole word
        // below `words_end`, accessed by every copy as this same `AtomicU64`
        // (see `word`).
        Ok(unsafe { self.word(offset) })
    }

    /// How many `u64`s [`snapshot_word`](Mapping::snapshot_word) numbers:
    /// the whole words, and one more for the trailing bytes if any.
    pub(crate) fn snapshot_words(&self) -> usize {
        self.len.div_ceil(WORD)
    }

    /// Word `i` of the mapping as a `u64`, for a snapshot: a whole word is
    /// one relaxed load; the last, partial one is its trailing bytes (each a
    /// relaxed byte load, the module doc's rule), zero-padded. `None` past
    /// the end.
    #[inline]
    pub(crate) fn snapshot_word(&self, i: usize) -> Option<u64> {
        let at = i.checked_mul(WORD)?;
        if at + WORD <= self.words_end() {
            // SAFETY: 8-aligned and a whole word below `words_end`.
            return Some(unsafe { self.word(at) }.load(Relaxed));
        }
        if at >= self.len {
            return None;
        }
        let mut bytes = [0u8; WORD];
        for (k, b) in bytes.iter_mut().enumerate().take(self.len - at) {
            // SAFETY: `words_end <= at + k < len`: one of the trailing bytes.
            *b = unsafe { self.byte(at + k) }.load(Relaxed);
        }
        Some(u64::from_ne_bytes(bytes))
    }

    /// The naturally aligned `u64` at `offset`, loaded with acquire
    /// ordering: a relaxed load, then an acquire fence. Works on read-only
    /// mappings, where only relaxed loads are allowed.
    #[inline]
    pub(crate) fn load_u64(&self, offset: usize) -> Result<u64, AccessError> {
        self.check(offset, 8, std::mem::align_of::<AtomicU64>())?;
        // SAFETY: as in `atomic_u64`; and a relaxed load of 8 aligned bytes
        // is the one access the standard library allows on read-only
        // memory on the 64-bit targets this crate builds for.
        let value = unsafe { self.word(offset) }.load(Relaxed);
        fence(Acquire);
        Ok(value)
    }

    #[inline(always)]
    fn check_writable(&self, offset: usize, len: usize) -> Result<(), AccessError> {
        if self.writable {
            Ok(())
        } else {
            Err(AccessError::ReadOnly { offset, len })
        }
    }
}

/// Stores `src` into bytes `lead..lead + src.len()` of `word`, keeping the
/// others: a compare-exchange loop, so a concurrent store of the other bytes
/// (by a thread or by a peer) is not undone. A peer that keeps changing the
/// word could make that loop spin, so after `MERGE_TRIES` it falls back to
/// clearing our bytes and then setting them (two read-modify-writes that
/// always complete): the other bytes are still kept, ours may then be mixed
/// with what the peer stored into them meanwhile.
#[inline]
fn merge(word: &AtomicU64, lead: usize, src: &[u8]) {
    let mut bytes = [0u8; WORD];
    let mut mask = [0u8; WORD];
    let ours = lead..lead + src.len();
    copy_small(&mut bytes[ours.clone()], src);
    copy_small(&mut mask[ours], &[0xff; WORD][..src.len()]);
    let (bytes, mask) = (u64::from_ne_bytes(bytes), u64::from_ne_bytes(mask));
    let mut current = word.load(Relaxed);
    for _ in 0..MERGE_TRIES {
        match word.compare_exchange_weak(current, (current & !mask) | bytes, Relaxed, Relaxed) {
            Ok(_) => return,
            Err(now) => current = now,
        }
    }
    word.fetch_and(!mask, Relaxed);
    word.fetch_or(bytes, Relaxed);
}

/// `dst.copy_from_slice(src)` for at most 8 bytes, in fixed-size moves
/// rather than a call to `memcpy` (a partial word is 1 to 7 bytes).
#[inline(always)]
fn copy_small(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    debug_assert!(n == dst.len() && n <= WORD);
    let mut i = 0;
    for width in [8, 4, 2, 1] {
        if n & width != 0 {
            dst[i..i + width].copy_from_slice(&src[i..i + width]);
            i += width;
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from a successful mmap and are unmapped
        // exactly once; no reference into the mapping outlives `self`
        // (atomic references borrow `self`).
        // (libc, for the sanitizers: see `map_shared`.)
        let _ = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(len: usize) -> Mapping {
        super::super::SealedMemfd::create("mapping-test", len)
            .unwrap()
            .map()
            .unwrap()
    }

    /// A read-only mapping is `r--s` in `/proc/self/maps`, refuses writes
    /// and writable atomics before touching the memory (no SIGSEGV), and
    /// reads what a writable mapping of the same memfd wrote.
    #[test]
    fn a_read_only_mapping_reads_and_refuses_writes() {
        let fd = super::super::SealedMemfd::create("mapping-ro-test", 100).unwrap();
        let rw = fd.map().unwrap();
        let ro = fd.map_read_only().unwrap();
        let start = format!("{:x}-", ro.addr());
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps
            .lines()
            .find(|l| l.starts_with(&start))
            .expect("the mapping in /proc/self/maps");
        assert_eq!(line.split_whitespace().nth(1), Some("r--s"), "{line}");
        assert!(!ro.is_writable() && rw.is_writable());

        rw.write_from(0, &[1, 2, 3]).unwrap();
        rw.atomic_u64(8).unwrap().store(77, Relaxed);
        rw.write_from(96, &[9, 9, 9, 9]).unwrap();
        let mut got = [0u8; 3];
        ro.read_into(0, &mut got).unwrap();
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(ro.load_u64(8), Ok(77));
        let mut tail = [0u8; 4];
        ro.read_into(96, &mut tail).unwrap();
        assert_eq!(tail, [9; 4]);

        let refused = AccessError::ReadOnly { offset: 8, len: 8 };
        assert_eq!(ro.write_from(8, &[0; 8]), Err(refused));
        assert_eq!(ro.atomic_u64(8).err(), Some(refused));
        assert_eq!(
            ro.atomic_u32(8).err(),
            Some(AccessError::ReadOnly { offset: 8, len: 4 })
        );
        // Bounds and alignment come first.
        assert!(matches!(
            ro.load_u64(4),
            Err(AccessError::Misaligned { .. })
        ));
        assert!(matches!(
            ro.write_from(99, &[0; 2]),
            Err(AccessError::OutOfBounds { .. })
        ));
        assert_eq!(ro.load_u64(8), Ok(77), "nothing was written");
    }

    /// Every offset and length of a mapping whose length is not a multiple
    /// of 8 (heads, whole words, tails and the trailing bytes, alone and
    /// combined), against a plain byte array.
    #[test]
    fn copies_of_every_offset_and_length_match_a_model() {
        for len in [1, 7, 8, 29, 64] {
            let map = mapping(len);
            let mut model = vec![0u8; len];
            let mut stamp = 0u8;
            for offset in 0..=len {
                for n in 0..=len - offset {
                    let src: Vec<u8> = (0..n)
                        .map(|_| {
                            stamp = stamp.wrapping_add(37);
                            stamp
                        })
                        .collect();
                    map.write_from(offset, &src).unwrap();
                    model[offset..offset + n].copy_from_slice(&src);
                    let mut all = vec![0xaa; len];
                    map.read_into(0, &mut all).unwrap();
                    assert_eq!(all, model, "len {len}: after writing {n} at {offset}");
                    let mut part = vec![0xaa; n];
                    map.read_into(offset, &mut part).unwrap();
                    assert_eq!(part, src, "len {len}: reading {n} at {offset}");
                }
            }
        }
    }

    /// Whole words into buffers at every alignment (16-aligned, 8 but not
    /// 16, odd), short and long.
    #[test]
    fn whole_words_into_buffers_of_any_alignment() {
        #[repr(align(16))]
        struct Buf([u8; 300]);
        let map = mapping(4096);
        let model: Vec<u8> = (0..4096u32).map(|i| (i * 7 + i / 256) as u8).collect();
        map.write_from(0, &model).unwrap();
        for n in (0..=280).step_by(8) {
            for shift in [0, 8, 1, 3] {
                let mut buf = Buf([0xaa; 300]);
                map.read_into(64, &mut buf.0[shift..shift + n]).unwrap();
                assert_eq!(
                    &buf.0[shift..shift + n],
                    &model[64..64 + n],
                    "{n} at {shift}"
                );
                assert!(buf.0[..shift].iter().all(|&b| b == 0xaa));
                assert!(buf.0[shift + n..].iter().all(|&b| b == 0xaa));
            }
        }
    }

    /// `read_words` gives what `read_into` gives, at every word offset and
    /// length of a mapping whose length is not a multiple of 8 (the quads,
    /// the words after them, the last whole word); a range past the whole
    /// words, or a misaligned one, is refused with `dst` untouched.
    #[test]
    fn read_words_match_read_into_and_refuse_what_it_cannot_read() {
        let len = 8 * 13 + 5;
        let map = mapping(len);
        let model: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        map.write_from(0, &model).unwrap();
        for offset in (0..len).step_by(8) {
            for n in 0..=(len - offset) / 8 {
                let mut words = vec![0xaaaa_u64; n + 1];
                map.read_words(offset, &mut words[..n]).unwrap();
                let mut bytes = vec![0u8; n * 8];
                map.read_into(offset, &mut bytes).unwrap();
                assert_eq!(
                    bytemuck::cast_slice::<u64, u8>(&words[..n]),
                    &bytes[..],
                    "{n} words at {offset}"
                );
                assert_eq!(words[n], 0xaaaa, "{n} words at {offset}: one more written");
            }
        }
        let mut words = [0x55u64; 2];
        assert!(matches!(
            map.read_words(len - 5 - 8, &mut words),
            Err(AccessError::OutOfBounds { .. })
        ));
        assert!(matches!(
            map.read_words(4, &mut words),
            Err(AccessError::Misaligned { .. })
        ));
        assert!(map.read_words(usize::MAX & !7, &mut words).is_err());
        assert_eq!(words, [0x55; 2]);
    }

    #[test]
    fn out_of_bounds_copies_touch_nothing() {
        let map = mapping(29);
        let mut buf = [0x55u8; 8];
        assert!(map.read_into(22, &mut buf).is_err());
        assert_eq!(buf, [0x55; 8]);
        assert!(map.write_from(usize::MAX, &buf).is_err());
        assert!(map.write_from(22, &buf).is_err());
        let mut all = [1u8; 29];
        map.read_into(0, &mut all).unwrap();
        assert_eq!(all, [0; 29]);
    }

    #[test]
    fn atomic_u64_views_are_words() {
        let map = mapping(29);
        map.atomic_u64(16).unwrap().store(u64::MAX, Relaxed);
        let mut buf = [0u8; 10];
        map.read_into(15, &mut buf).unwrap();
        assert_eq!(buf, [0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        assert!(map.atomic_u64(24).is_err()); // the trailing bytes
    }
}
