//! A reserved slot, filled in place and published by an explicit commit
//! (tokio mpsc's `Permit`, rtrb's `write_chunk_uninit`): the way to send a
//! large `T` without building it on the stack first.
//!
//! "In place" within the crate's rule for shared memory: no `&mut T` into
//! the slot is handed out (the Receiver's process maps the same bytes), so
//! the caller writes the value, or parts of it at offsets, through copies
//! that are bounds checked against the slot, as [`Region`](crate::Region)'s
//! writes are.

use std::fmt;

use bytemuck::Pod;

use super::core::Tx;
use crate::Error;

/// One free slot of the ring, reserved for the next message: fill it
/// ([`write`](SendSlot::write), or part by part with
/// [`write_at`](SendSlot::write_at) and
/// [`write_bytes`](SendSlot::write_bytes)), then
/// [`commit`](SendSlot::commit) it. From
/// [`Sender::try_reserve`](super::Sender::try_reserve),
/// [`Sender::blocking_reserve`](super::Sender::blocking_reserve) or, with
/// feature `tokio`, `Sender::reserve().await`.
///
/// Only `commit` publishes (one head store and one `notify()`, as a
/// send). A slot dropped without it publishes nothing and leaves the ring
/// as it was: the head is not moved, and the next send or reservation
/// writes the same slot again (as tokio's `Permit`, dropped, gives its
/// capacity back).
///
/// The slot's bytes are not cleared: they hold whatever an earlier message
/// left there. Write every byte of the value the Receiver will read (or
/// the whole value once, with `write`).
///
/// # Examples
///
/// A 4 KiB message filled field by field, never built on the stack:
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::mem::offset_of;
/// use std::os::unix::net::UnixStream;
/// use memfd_tripwire::{Backend, ring::{Sender, SharedRing}};
///
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// #[repr(C)]
/// struct Page {
///     seq: u64,
///     data: [u8; 4088],
/// }
///
/// let mut rx = SharedRing::<Page>::builder(8).backend(Backend::Doorbell).create()?;
/// let (ours, theirs) = UnixStream::pair()?;
/// // The Sender normally lives in another process.
/// let tx = std::thread::spawn(move || Sender::<Page>::connect(theirs));
/// rx.share(ours)?;
/// let mut tx = tx.join().unwrap()?;
///
/// let mut slot = tx.try_reserve()?;
/// slot.write_at(offset_of!(Page, seq), &7u64)?;
/// slot.write_bytes(offset_of!(Page, data), &[0xab; 4088])?;
/// slot.commit()?;
///
/// let page = rx.try_recv()?;
/// assert_eq!((page.seq, page.data[4087]), (7, 0xab));
/// # Ok(()) }
/// ```
#[must_use = "a reserved slot publishes nothing until commit()"]
pub struct SendSlot<'a, T> {
    tx: &'a mut Tx<T>,
}

impl<T> fmt::Debug for SendSlot<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendSlot")
            .field("index", &self.tx.next())
            .finish()
    }
}

impl<'a, T: Pod> SendSlot<'a, T> {
    /// The slot after the written ones, which the caller found free.
    pub(super) fn new(tx: &'a mut Tx<T>) -> Self {
        SendSlot { tx }
    }

    /// Copies a whole `value` into the slot (not published until
    /// [`commit`](SendSlot::commit)).
    ///
    /// # Errors
    ///
    /// None in practice: the slot's bounds were checked when the Sender
    /// attached. Kept fallible as [`Region::write`](crate::Region::write).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::unix::net::UnixStream;
    /// # use memfd_tripwire::{Backend, ring::{Sender, SharedRing}};
    /// # let mut rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create()?;
    /// # let (ours, theirs) = UnixStream::pair()?;
    /// # let tx = std::thread::spawn(move || Sender::<u64>::connect(theirs));
    /// # rx.share(ours)?;
    /// # let mut tx = tx.join().unwrap()?;
    /// let mut slot = tx.try_reserve()?;
    /// slot.write(&42)?;
    /// slot.commit()?;
    /// assert_eq!(rx.try_recv()?, 42);
    /// # Ok(()) }
    /// ```
    pub fn write(&mut self, value: &T) -> Result<(), Error> {
        self.tx.ring.slots.write(self.tx.next_offset(), value)
    }

    /// Copies `part` into the slot at byte `offset` of the value (e.g.
    /// [`offset_of!`](std::mem::offset_of)`(T, field)`).
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] if `part` reaches past the end of `T` (its
    /// `size` is then `size_of::<T>()`); nothing is written.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::unix::net::UnixStream;
    /// # use memfd_tripwire::{Backend, ring::{Sender, SharedRing}};
    /// # let mut rx = SharedRing::<[u32; 4]>::builder(8).backend(Backend::Poll).create()?;
    /// # let (ours, theirs) = UnixStream::pair()?;
    /// # let tx = std::thread::spawn(move || Sender::<[u32; 4]>::connect(theirs));
    /// # rx.share(ours)?;
    /// # let mut tx = tx.join().unwrap()?;
    /// let mut slot = tx.try_reserve()?;
    /// slot.write_at(0, &[1u32, 2])?;
    /// slot.write_at(8, &[3u32, 4])?;
    /// assert!(slot.write_at(12, &[5u32, 6]).is_err()); // past the end of [u32; 4]
    /// slot.commit()?;
    /// assert_eq!(rx.try_recv()?, [1, 2, 3, 4]);
    /// # Ok(()) }
    /// ```
    pub fn write_at<P: Pod>(&mut self, offset: usize, part: &P) -> Result<(), Error> {
        self.write_bytes(offset, bytemuck::bytes_of(part))
    }

    /// Copies `bytes` into the slot at byte `offset` of the value.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] if `bytes` reach past the end of `T` (its
    /// `size` is then `size_of::<T>()`); nothing is written.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::unix::net::UnixStream;
    /// # use memfd_tripwire::{Backend, ring::{Sender, SharedRing}};
    /// # let mut rx = SharedRing::<[u8; 16]>::builder(8).backend(Backend::Poll).create()?;
    /// # let (ours, theirs) = UnixStream::pair()?;
    /// # let tx = std::thread::spawn(move || Sender::<[u8; 16]>::connect(theirs));
    /// # rx.share(ours)?;
    /// # let mut tx = tx.join().unwrap()?;
    /// let mut slot = tx.try_reserve()?;
    /// slot.write_bytes(0, b"hello, in place!")?;
    /// slot.commit()?;
    /// assert_eq!(&rx.try_recv()?, b"hello, in place!");
    /// # Ok(()) }
    /// ```
    pub fn write_bytes(&mut self, offset: usize, bytes: &[u8]) -> Result<(), Error> {
        let size = std::mem::size_of::<T>();
        if offset.checked_add(bytes.len()).is_none_or(|end| end > size) {
            return Err(Error::OutOfBounds {
                offset,
                len: bytes.len(),
                size,
            });
        }
        self.tx
            .ring
            .slots
            .write_bytes(self.tx.next_offset() + offset, bytes)
    }

    /// Publishes the slot, and any values written before it and not yet
    /// flushed (`Sink::start_send`): one head store and one `notify()`.
    ///
    /// # Errors
    ///
    /// As a send's `notify()`: an [`Error::Io`] after the head store (the
    /// message is published, but the Receiver may not have been woken).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::unix::net::UnixStream;
    /// # use memfd_tripwire::{Backend, ring::{Sender, SharedRing}};
    /// # let mut rx = SharedRing::<u64>::builder(8).backend(Backend::Poll).create()?;
    /// # let (ours, theirs) = UnixStream::pair()?;
    /// # let tx = std::thread::spawn(move || Sender::<u64>::connect(theirs));
    /// # rx.share(ours)?;
    /// # let mut tx = tx.join().unwrap()?;
    /// let mut slot = tx.try_reserve()?;
    /// slot.write(&1)?;
    /// drop(slot); // never committed: nothing is published
    /// assert!(rx.try_recv().is_err());
    /// let mut slot = tx.try_reserve()?;
    /// slot.write(&2)?;
    /// slot.commit()?;
    /// assert_eq!(rx.try_recv()?, 2);
    /// # Ok(()) }
    /// ```
    pub fn commit(self) -> Result<(), Error> {
        self.tx.commit_next()
    }
}
