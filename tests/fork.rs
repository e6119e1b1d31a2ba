//! A forked child that drops its copy of a `Poll` tripwire must not touch
//! what its parent's threads use: the child shares the parent's epoll set
//! of watched producers' sockets (one open file), so removing its socket
//! there would blind the parent's hang-up thread, and it has no poller
//! thread, so a drop that waited for one would spin. Its own binary: one
//! test, so that no other test's thread holds a lock at the fork.

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use memfd_tripwire::{Backend, Producer, blocking::Tripwire};

#[test]
fn a_forked_child_dropping_its_copy_leaves_the_parents_watch_alone() {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let producer = std::thread::spawn(move || Producer::connect(theirs));
    let mut tw = Tripwire::builder(4096)
        .backend(Backend::Poll)
        .create()
        .expect("create");
    tw.share(ours).expect("share");
    let producer = producer.join().expect("thread").expect("connect");
    // SAFETY: the child only drops the inherited tripwire (no lock is held
    // by the parent's threads at this point of the test: nothing is being
    // created, shared or dropped) and leaves with _exit; alarm bounds it.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: async-signal-safe calls in the child.
        unsafe { libc::alarm(10) };
        drop(tw);
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child did not drop its copy and exit (status {status:#x}): a drop that spins?"
    );
    // The producer leaves; the parent, asleep in wait, must learn of it at
    // once (its hang-up thread rings the tripwire), not at its time-out.
    let leaver = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(producer);
    });
    let start = Instant::now();
    let woke = tw.wait_timeout(Duration::from_secs(5));
    let took = start.elapsed();
    leaver.join().expect("thread");
    let err = match woke {
        Ok(None) => panic!("the producer's hang-up never woke the consumer ({took:?})"),
        Ok(Some(e)) => panic!("a trip nobody made: {e:?}"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "{err}");
    assert!(took < Duration::from_secs(4), "woke only after {took:?}");
}
