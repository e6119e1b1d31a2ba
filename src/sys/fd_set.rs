//! Fds watched together: an epoll set whose members sit in reusable slots,
//! so that a member is named by a small index and a set that sees many
//! members come and go stays as large as the most it held at once. The
//! epoll fd is what a caller sleeps on (directly, or through tokio or mio).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::{Timespec, epoll};

/// The members of an epoll set, by slot.
#[derive(Debug)]
pub(crate) struct FdSet<T> {
    epoll: OwnedFd,
    slots: Vec<Option<T>>,
}

impl<T: AsFd> FdSet<T> {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(FdSet {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            slots: Vec::new(),
        })
    }

    /// The epoll fd: readable while a member has one of its events.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
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
            &self.epoll,
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
        let _ = epoll::delete(&self.epoll, &item);
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

    /// The slots of the members whose events are pending now (no waiting).
    pub(crate) fn ready(&self) -> io::Result<Vec<usize>> {
        let mut out = Vec::new();
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); 16];
        loop {
            let (ready, _) = loop {
                match epoll::wait(&self.epoll, &mut events, Some(&Timespec::default())) {
                    Err(rustix::io::Errno::INTR) => continue,
                    other => break other?,
                }
            };
            let n = ready.len();
            out.extend(ready.iter().map(|e| e.data.u64() as usize));
            // A level-triggered set reports the same members again: one
            // full batch is all there is to take now.
            if n < events.len() || out.len() >= self.slots.len() {
                return Ok(out);
            }
        }
    }
}
