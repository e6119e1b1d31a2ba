//! One thread per process that learns of `Poll` producers' hang-ups for
//! their tripwires: a tripwire whose only fd is the eventfd its poller
//! rings (`Poll`) has no epoll set of its own to watch its producers'
//! handshake sockets in, so they sit in this process-wide one
//! (`sys::Watch`, edge-triggered `EPOLLRDHUP` and `EPOLLIN`), and a hang-up
//! (or bytes, which the consumer reads and drops) rings the tripwire's
//! eventfd. The consumer then looks, finds the wire armed, and checks its
//! producers (`Peers::all_gone`).
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
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::sys::{Watch, eventfd};

/// The epoll set, and what each id's hang-up rings.
#[derive(Debug)]
struct Watcher {
    watch: Arc<Watch>,
    targets: Arc<Mutex<HashMap<u64, Weak<OwnedFd>>>>,
    next_id: u64,
    /// The process that started the thread: a forked child starts its own.
    pid: rustix::process::Pid,
}

static WATCHER: Mutex<Option<Watcher>> = Mutex::new(None);

/// Watches `sock` for its peer's hang-up, which then rings `wake` (an
/// eventfd of ours); returns the id to [`unwatch`] it with.
pub(crate) fn watch(sock: BorrowedFd<'_>, wake: Weak<OwnedFd>) -> io::Result<u64> {
    let mut guard = WATCHER.lock().unwrap_or_else(PoisonError::into_inner);
    let pid = rustix::process::getpid();
    if guard.as_ref().is_none_or(|w| w.pid != pid) {
        *guard = Some(start(pid)?);
    }
    let w = guard.as_mut().expect("started above");
    let id = w.next_id;
    w.next_id += 1;
    w.targets
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, wake);
    if let Err(e) = w.watch.add(sock, id) {
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
    let guard = WATCHER.lock().unwrap_or_else(PoisonError::into_inner);
    // A forked child shares its parent's epoll set (the same open file):
    // removing the socket there would blind the parent's thread to it.
    if let Some(w) = guard
        .as_ref()
        .filter(|w| w.pid == rustix::process::getpid())
    {
        w.watch.remove(sock);
        w.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

fn start(pid: rustix::process::Pid) -> io::Result<Watcher> {
    let watch = Arc::new(Watch::new()?);
    let targets: Arc<Mutex<HashMap<u64, Weak<OwnedFd>>>> = Arc::default();
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
                        .filter_map(|id| table.get(id).and_then(Weak::upgrade))
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
        pid,
    })
}
