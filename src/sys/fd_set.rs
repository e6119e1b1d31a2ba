//! Fds watched together: an epoll set whose members sit in reusable slots,
//! so that a member is named by a small index and a set that sees many
//! members come and go stays as large as the most it held at once. The
//! epoll fd is what a caller sleeps on (directly, or through tokio or mio).
//! It sits in an `Arc`, so that a tokio registration can hold it open
//! without a duplicate fd. A set may also watch one fd it does not own (a
//! wire's wake-up fd), or share its epoll with another set
//! ([`FdSet::beside`]): each set's slots are told apart by a tag in the
//! event data, so that one epoll fd stands for the whole tripwire.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::event::{Timespec, epoll};

/// The members of an epoll set, by slot.
#[derive(Debug)]
pub(crate) struct FdSet<T> {
    epoll: Arc<OwnedFd>,
    /// How many fds the epoll watches, for every set in it.
    members: Arc<AtomicUsize>,
    slots: Vec<Option<T>>,
    /// The top byte of this set's event data (the slot is the rest).
    tag: u64,
}

/// The event data of the fd watched with [`FdSet::watch`]: no slot's.
const FOREIGN: u64 = u64::MAX;
/// The bits of the event data that tell the sets of one epoll apart.
const TAG_MASK: u64 = 0xff << 56;

impl<T: AsFd> FdSet<T> {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(FdSet {
            epoll: Arc::new(epoll::create(epoll::CreateFlags::CLOEXEC)?),
            members: Arc::default(),
            slots: Vec::new(),
            tag: 0,
        })
    }

    /// A second set in the epoll of `first` (one fd for both): readiness of
    /// either makes the fd readable; each set's [`ready`](FdSet::ready)
    /// reports its own members only.
    pub(crate) fn beside<U>(first: &FdSet<U>) -> Self {
        FdSet {
            epoll: first.epoll.clone(),
            members: first.members.clone(),
            slots: Vec::new(),
            tag: first.tag + (1 << 56),
        }
    }

    /// The epoll fd itself, for a registration that must keep it open (and
    /// the same number) for as long as it lives: no duplicate needed.
    #[allow(dead_code)] // the ring Sender's tokio registration is the one user
    pub(crate) fn shared_fd(&self) -> Arc<OwnedFd> {
        self.epoll.clone()
    }

    /// The epoll fd: readable while a member has one of its events.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    /// Also watches `fd` for readability, in no slot: its readiness makes
    /// the set's fd readable, and [`ready`](FdSet::ready) skips it. The fd
    /// leaves the set when the last fd of its open file description closes.
    pub(crate) fn watch(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        epoll::add(
            &*self.epoll,
            fd,
            epoll::EventData::new_u64(FOREIGN),
            epoll::EventFlags::IN,
        )?;
        self.members.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Adds `item`, watched for `events` (`EPOLLHUP`/`EPOLLERR` always
    /// come), in the first free slot; returns the slot.
    pub(crate) fn insert(&mut self, item: T, events: epoll::EventFlags) -> io::Result<usize> {
        let idx = self
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.slots.len());
        epoll::add(
            &*self.epoll,
            &item,
            epoll::EventData::new_u64(self.tag | idx as u64),
            events,
        )?;
        self.members.fetch_add(1, Ordering::Relaxed);
        if idx == self.slots.len() {
            self.slots.push(Some(item));
        } else {
            self.slots[idx] = Some(item);
        }
        Ok(idx)
    }

    /// Takes the member out of slot `idx` (and out of the epoll set).
    pub(crate) fn remove(&mut self, idx: usize) -> Option<T> {
        let item = self.slots.get_mut(idx).and_then(Option::take)?;
        let _ = epoll::delete(&*self.epoll, &item);
        self.members.fetch_sub(1, Ordering::Relaxed);
        Some(item)
    }

    pub(crate) fn get(&self, idx: usize) -> Option<&T> {
        self.slots.get(idx).and_then(Option::as_ref)
    }

    /// The slots in use.
    pub(crate) fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|_| i))
    }

    /// How many members there are.
    pub(crate) fn live(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Whether a member was ever added.
    pub(crate) fn ever_used(&self) -> bool {
        !self.slots.is_empty()
    }

    /// The slots of the members whose events are pending now (no waiting),
    /// with those events.
    pub(crate) fn ready(&self) -> io::Result<Vec<(usize, epoll::EventFlags)>> {
        let mut out = Vec::new();
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); 16];
        // A level-triggered epoll hands out its ready members in turn, a
        // batch at a time: after as many batches as it has members (of
        // every set in it) over the batch size, each was reported once.
        let mut batches = self.members.load(Ordering::Relaxed) / events.len() + 1;
        loop {
            let (ready, _) = loop {
                match epoll::wait(&*self.epoll, &mut events, Some(&Timespec::default())) {
                    Err(rustix::io::Errno::INTR) => continue,
                    other => break other?,
                }
            };
            let n = ready.len();
            out.extend(
                ready
                    .iter()
                    .map(|e| (e.data.u64(), e.flags))
                    .filter(|&(data, _)| data != FOREIGN && data & TAG_MASK == self.tag)
                    .map(|(data, flags)| ((data & !TAG_MASK) as usize, flags)),
            );
            batches -= 1;
            // A level-triggered set reports the same members again: one
            // full batch is all there is to take now. Each slot once.
            if n < events.len() || batches == 0 {
                out.sort_unstable_by_key(|&(idx, _)| idx);
                out.dedup_by_key(|&mut (idx, _)| idx);
                return Ok(out);
            }
        }
    }
}

impl<T> Drop for FdSet<T> {
    fn drop(&mut self) {
        // Its members leave the epoll as they close.
        let live = self.slots.iter().flatten().count();
        self.members.fetch_sub(live, Ordering::Relaxed);
    }
}

/// An epoll set of fds owned elsewhere, each named by an id, watched
/// edge-triggered for hang-up and bytes: a thread sleeps in
/// [`wait`](Watch::wait) and learns of each once.
#[derive(Debug)]
pub(crate) struct Watch {
    epoll: OwnedFd,
}

impl Watch {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Watch {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
        })
    }

    /// Watches `fd` (a connected socket) for its peer's hang-up, and for
    /// bytes (which the owner reads: they may carry a parked fd that
    /// keeps the peer from hanging up), as `id`. Stop with
    /// [`remove`](Watch::remove) before closing it.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, id: u64) -> io::Result<()> {
        let events = epoll::EventFlags::RDHUP | epoll::EventFlags::IN | epoll::EventFlags::ET;
        epoll::add(&self.epoll, fd, epoll::EventData::new_u64(id), events)?;
        Ok(())
    }

    /// Watches `fd` (a connected socket) for its peer's hang-up only, as
    /// `id`, once: bytes the peer sends do not wake the watcher (they may
    /// be another reader's, as the ACK frames a `Userfault` agent reads),
    /// and neither does anything after the first report (one-shot: a peer
    /// that calls `shutdown` again and again re-arms an edge-triggered
    /// `EPOLLRDHUP` each time, and would keep the watcher busy).
    pub(crate) fn add_hangup(&self, fd: BorrowedFd<'_>, id: u64) -> io::Result<()> {
        let events = epoll::EventFlags::RDHUP | epoll::EventFlags::ET | epoll::EventFlags::ONESHOT;
        epoll::add(&self.epoll, fd, epoll::EventData::new_u64(id), events)?;
        Ok(())
    }

    pub(crate) fn remove(&self, fd: BorrowedFd<'_>) {
        let _ = epoll::delete(&self.epoll, fd);
    }

    /// Sleeps until some watched fds hang up; their ids.
    pub(crate) fn wait(&self) -> io::Result<Vec<u64>> {
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); 64];
        loop {
            match epoll::wait(&self.epoll, &mut events, None) {
                Ok((ready, _)) => return Ok(ready.iter().map(|e| e.data.u64()).collect()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn sets_beside_each_other_report_only_their_own_members() {
        let mut first = FdSet::<UnixStream>::new().unwrap();
        let mut second = FdSet::<UnixStream>::beside(&first);
        assert_eq!(first.fd().as_raw_fd(), second.fd().as_raw_fd());
        // Many ready members in the first set (more than a batch), one in
        // the second, in slot 0 of each.
        let mut keep = Vec::new();
        for _ in 0..40 {
            let (a, mut b) = UnixStream::pair().unwrap();
            b.write_all(b"x").unwrap();
            first.insert(a, epoll::EventFlags::IN).unwrap();
            keep.push(b);
        }
        let (a, b) = UnixStream::pair().unwrap();
        second.insert(a, epoll::EventFlags::RDHUP).unwrap();
        drop(b);
        let mine: Vec<usize> = second.ready().unwrap().iter().map(|&(i, _)| i).collect();
        assert_eq!(mine, [0]);
        let theirs = first.ready().unwrap();
        assert_eq!(theirs.len(), 40, "{theirs:?}");
        assert!(
            theirs
                .iter()
                .all(|(_, ev)| ev.contains(epoll::EventFlags::IN))
        );
    }

    /// A set behind many ready members of the other set in the ready list
    /// (100 hung-up sockets not reaped yet) still sees all of its own:
    /// `ready` takes as many batches as the epoll has members. (With a
    /// budget of this set's size, it saw none.)
    #[test]
    fn a_set_behind_many_ready_members_of_the_other_sees_its_own() {
        let mut first = FdSet::<UnixStream>::new().unwrap();
        let mut second = FdSet::<UnixStream>::beside(&first);
        for _ in 0..100 {
            let (a, b) = UnixStream::pair().unwrap();
            first.insert(a, epoll::EventFlags::RDHUP).unwrap();
            drop(b);
        }
        let mut keep = Vec::new();
        for _ in 0..4 {
            let (a, mut b) = UnixStream::pair().unwrap();
            second.insert(a, epoll::EventFlags::IN).unwrap();
            b.write_all(b"x").unwrap();
            keep.push(b);
        }
        assert_eq!(second.ready().unwrap().len(), 4);
        assert_eq!(first.ready().unwrap().len(), 100);
        drop(second);
        assert_eq!(first.members.load(Ordering::Relaxed), 100);
    }
}
