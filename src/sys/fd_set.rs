//! Fds watched together: an epoll set whose members sit in reusable slots,
//! so that a member is named by a small index and a set that sees many
//! members come and go stays as large as the most it held at once. The
//! epoll fd is what a caller sleeps on (directly, or through tokio or mio).
//! It sits in an `Arc`, so that a tokio registration can hold it open
//! without a duplicate fd. A set may also watch one fd it does not own (a
//! wire's wake-up fd), so that one epoll fd stands for the whole tripwire.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::event::{Timespec, epoll};

/// The members of an epoll set, by slot.
#[derive(Debug)]
pub(crate) struct FdSet<T> {
    epoll: Arc<OwnedFd>,
    slots: Vec<Option<T>>,
}

/// The event data of the fd watched with [`FdSet::watch`]: no slot's.
const FOREIGN: u64 = u64::MAX;

impl<T: AsFd> FdSet<T> {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(FdSet {
            epoll: Arc::new(epoll::create(epoll::CreateFlags::CLOEXEC)?),
            slots: Vec::new(),
        })
    }

    /// The epoll fd: readable while a member has one of its events.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    /// The epoll fd itself, for a registration that must keep it open (and
    /// the same number) for as long as it lives: no duplicate needed.
    #[cfg(feature = "tokio")]
    pub(crate) fn shared_fd(&self) -> Arc<OwnedFd> {
        self.epoll.clone()
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
            epoll::EventData::new_u64(idx as u64),
            events,
        )?;
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
                    .filter(|e| e.data.u64() != FOREIGN)
                    .map(|e| (e.data.u64() as usize, e.flags)),
            );
            // A level-triggered set reports the same members again: one
            // full batch is all there is to take now. Each slot once.
            if n < events.len() || out.len() >= self.slots.len() {
                out.sort_unstable_by_key(|&(idx, _)| idx);
                out.dedup_by_key(|&mut (idx, _)| idx);
                return Ok(out);
            }
        }
    }
}
