//! One thread per process that learns of hang-ups on handshake sockets,
//! for two kinds of owner:
//!
//! - `Poll` consumers: a tripwire whose only fd is the eventfd its poller
//!   rings has no epoll set of its own to watch its producers' handshake
//!   sockets in, so they sit in this process-wide one (`sys::Watch`,
//!   edge-triggered `EPOLLRDHUP` and `EPOLLIN`), and a hang-up (or bytes,
//!   which the consumer reads and drops) rings the tripwire's eventfd. The
//!   consumer then looks, finds the wire armed, and checks its producers
//!   (`Peers::all_gone`).
//! - Producers ([`GoneFlag`]): the consumer's hang-up (`EPOLLRDHUP` only)
//!   sets a flag that `notify()` and a ring Sender's every send read (one
//!   load), so a consumer's death is learned at the producer's next call,
//!   not at its next wait.
//!
//! Started by the first socket watched (a failure to start it fails that
//! `share` with the reason); it never ends, and sleeps in `epoll_wait`
//! while nothing hangs up. A forked child shares its parent's epoll set (one
//! open file): it never removes a socket from it (that would blind the
//! parent's thread), and starts its own set and thread with its first watch
//! (the parent's set stays open in the child, an fd per such fork). It holds each tripwire's eventfd only weakly,
//! and takes the lock of its table only to look up a hang-up: a watch or
//! unwatch waits for at most that.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use crate::sys::{Watch, eventfd};

/// What a watched socket's hang-up does.
#[derive(Debug)]
enum Target {
    /// Rings a `Poll` tripwire's eventfd.
    Ring(Weak<OwnedFd>),
    /// Sets a producer's [`GoneFlag`].
    Flag(Weak<AtomicBool>),
}

/// The epoll set, and what each id's hang-up does.
#[derive(Debug)]
struct Watcher {
    watch: Arc<Watch>,
    targets: Arc<Mutex<HashMap<u64, Target>>>,
    next_id: u64,
}

/// One process's watcher, behind its own lock.
#[derive(Debug)]
struct Slot {
    pid: rustix::process::Pid,
    watcher: Mutex<Option<Watcher>>,
}

/// A slot per generation of forked processes: a child never touches its
/// parent's (another thread of the parent may have held its lock at the
/// fork, and would hold it for ever in the child, whose first watch would
/// then block for ever); it takes the first free slot in its copy of this
/// array. A slot, once set, only needs a lock-free `get`.
static SLOTS: [OnceLock<Slot>; GENERATIONS] = [const { OnceLock::new() }; GENERATIONS];
const GENERATIONS: usize = 32;

/// This process's slot; `create`: make it if there is none.
fn slot(create: bool) -> Option<&'static Slot> {
    let pid = rustix::process::getpid();
    for s in &SLOTS {
        match s.get() {
            Some(slot) if slot.pid == pid => return Some(slot),
            Some(_) => continue, // an ancestor's
            None if !create => return None,
            None => {
                // Only this process writes its copy: a race is with
                // another of its threads, which sets the same pid.
                let slot = s.get_or_init(|| Slot {
                    pid,
                    watcher: Mutex::new(None),
                });
                if slot.pid == pid {
                    return Some(slot);
                }
            }
        }
    }
    None
}

/// Watches `sock` for its peer's hang-up, which then rings `wake` (an
/// eventfd of ours); returns the id to [`unwatch`] it with.
pub(crate) fn watch(sock: BorrowedFd<'_>, wake: Weak<OwnedFd>) -> io::Result<u64> {
    add(sock, Target::Ring(wake))
}

fn add(sock: BorrowedFd<'_>, target: Target) -> io::Result<u64> {
    let slot = slot(true).ok_or_else(|| {
        io::Error::other(format!(
            "more than {GENERATIONS} generations of forked processes watch hang-ups"
        ))
    })?;
    let mut guard = slot.watcher.lock().unwrap_or_else(PoisonError::into_inner);
    if guard.is_none() {
        *guard = Some(start()?);
    }
    let w = guard.as_mut().expect("started above");
    let id = w.next_id;
    w.next_id += 1;
    let added = match target {
        Target::Ring(_) => w.watch.add(sock, id),
        Target::Flag(_) => w.watch.add_hangup(sock, id),
    };
    w.targets
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, target);
    if let Err(e) = added {
        w.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        return Err(e);
    }
    Ok(id)
}

/// Stops watching `sock` (watched as `id`); call it before closing it.
pub(crate) fn unwatch(sock: BorrowedFd<'_>, id: u64) {
    // A forked child shares its parent's epoll set (the same open file):
    // removing the socket there would blind the parent's thread to it. So
    // only this process's own slot is looked at (never its parent's lock).
    let Some(slot) = slot(false) else {
        return;
    };
    let guard = slot.watcher.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(w) = guard.as_ref() {
        w.watch.remove(sock);
        w.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

fn start() -> io::Result<Watcher> {
    let watch = Arc::new(Watch::new()?);
    let targets: Arc<Mutex<HashMap<u64, Target>>> = Arc::default();
    let (w, t) = (watch.clone(), targets.clone());
    std::thread::Builder::new()
        .name("memfd-tripwire-hangup".into())
        .spawn(move || {
            // An epoll_wait that fails for good (it cannot, on a valid
            // set) ends the thread; hang-ups are then seen at the next
            // look instead of waking the consumer.
            while let Ok(ids) = w.wait() {
                let wakes: Vec<Arc<OwnedFd>> = {
                    let table = t.lock().unwrap_or_else(PoisonError::into_inner);
                    ids.iter()
                        .filter_map(|id| match table.get(id)? {
                            Target::Ring(wake) => wake.upgrade(),
                            Target::Flag(flag) => {
                                if let Some(flag) = flag.upgrade() {
                                    flag.store(true, Ordering::Release);
                                }
                                None
                            }
                        })
                        .collect()
                };
                for fd in wakes {
                    // Best effort: a full counter is a pending wake-up.
                    let _ = eventfd::ring(fd.as_fd());
                }
            }
        })?;
    Ok(Watcher {
        watch,
        targets,
        next_id: 0,
    })
}

/// A producer's "the consumer hung up" flag, set by this module's thread
/// at the consumer's hang-up: a load where a poll of the socket would be a
/// syscall. Best effort: if the watch cannot be set up (no thread, no
/// epoll set) the flag stays down and the death is learned, as before, at
/// the next wait. A forked child's copy is never set (the thread is its
/// parent's): the child learns at its next wait too.
#[derive(Debug)]
pub(crate) struct GoneFlag {
    flag: Arc<AtomicBool>,
    /// The watch, while `sock` is watched.
    id: Option<u64>,
}

impl GoneFlag {
    /// Watches `sock` (a handshake socket the caller keeps open until
    /// [`unwatch`](GoneFlag::unwatch)) for its peer's hang-up.
    pub(crate) fn watch(sock: BorrowedFd<'_>) -> GoneFlag {
        let flag = Arc::new(AtomicBool::new(false));
        let id = add(sock, Target::Flag(Arc::downgrade(&flag)));
        if let Err(e) = &id {
            crate::trace::warn!(
                error = %e,
                "the consumer's hang-up will be learned at the next wait, not the next call: \
                 the hang-up thread is not watching"
            );
        }
        GoneFlag { flag, id: id.ok() }
    }

    /// Whether the peer hung up (seen by the thread: shortly after it did).
    #[inline]
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Stops watching `sock`; call it before closing it.
    pub(crate) fn unwatch(&mut self, sock: BorrowedFd<'_>) {
        if let Some(id) = self.id.take() {
            unwatch(sock, id);
        }
    }
}
