//! What the integration tests share: the skip convention (`skip!`,
//! `TRIPWIRE_REQUIRE`), from skip.rs, which the library's unit tests
//! include too; and, here only, the backends by their `TRIPWIRE_REQUIRE`
//! names, the time scale, and the "create it or skip" and "connect a peer"
//! steps that the per-backend tests repeat.
#![allow(dead_code, unused_macros, unused_imports)] // each test crate uses part of it

include!("skip.rs");

use std::os::unix::net::UnixStream;
use std::time::Duration;

use memfd_tripwire::ring::{Receiver, Sender};
use memfd_tripwire::{Backend, Error, Producer, blocking::Tripwire};

/// `skip!("userfault", "userfaultfd unavailable: {e}")`: says
/// `skipping: <why>` (or panics if `TRIPWIRE_REQUIRE` names the
/// requirement) and returns from the test.
macro_rules! skip {
    ($requirement:expr, $($why:tt)+) => {{
        $crate::support::skipping($requirement, &format!($($why)+));
        return;
    }};
}
pub(crate) use skip;

/// Every backend, each with its name in [`REQUIRABLE`] (what
/// `TRIPWIRE_REQUIRE` and [`or_skip`] take).
pub const BACKENDS: [(&str, Backend); 5] = [
    ("kernel", Backend::Kernel),
    ("doorbell", Backend::Doorbell),
    ("poll", Backend::Poll),
    ("userfault", Backend::Userfault),
    ("userfault_async", Backend::UserfaultAsync),
];

/// `d` times `TRIPWIRE_TIME_SCALE` (a whole number, default 1), for slow
/// emulated VMs.
pub fn scaled(d: Duration) -> Duration {
    let n = std::env::var("TRIPWIRE_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    d * n
}

/// What creating a tripwire or ring on backend `name` (from [`BACKENDS`])
/// gave: `Some` if it worked; `None` after `skipping: <name>: <reason>` if
/// the backend is unavailable here (a failure if `TRIPWIRE_REQUIRE` names
/// it); any other error fails the test.
pub fn or_skip<T>(name: &str, created: Result<T, Error>) -> Option<T> {
    match created {
        Ok(t) => Some(t),
        Err(Error::Unavailable { reason, .. }) => {
            skipping(name, &format!("{name}: {reason}"));
            None
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

/// Receives a whole frame of `frame.len()` bytes on `sock` (blocking): the
/// fds that came with its first bytes (`SCM_RIGHTS`, close-on-exec), the
/// rest of the bytes read after them. A fake peer's side of a handshake.
pub fn recv_frame(sock: &UnixStream, frame: &mut [u8]) -> Vec<std::os::fd::OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::io::Read;
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [std::io::IoSliceMut::new(frame)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .expect("recvmsg of a frame");
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    (&*sock)
        .read_exact(&mut frame[msg.bytes..])
        .expect("the rest of the frame");
    fds
}

/// `tw`, shared with a `Producer` connected from another thread.
pub fn with_producer(mut tw: Tripwire) -> (Tripwire, Producer) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let producer = std::thread::spawn(move || Producer::connect(theirs));
    tw.share(ours).expect("share");
    (tw, producer.join().expect("thread").expect("connect"))
}

/// `rx`, shared with a `Sender` connected from another thread.
pub fn with_sender<T: bytemuck::Pod>(mut rx: Receiver<T>) -> (Receiver<T>, Sender<T>) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let tx = std::thread::spawn(move || Sender::<T>::connect(theirs));
    rx.share(ours).expect("share");
    (rx, tx.join().expect("thread").expect("connect"))
}

/// `rx`, shared with a `FrameSender` connected from another thread.
pub fn with_frame_sender(
    mut rx: memfd_tripwire::ring::frames::FrameReceiver,
) -> (
    memfd_tripwire::ring::frames::FrameReceiver,
    memfd_tripwire::ring::frames::FrameSender,
) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let tx = std::thread::spawn(move || memfd_tripwire::ring::frames::FrameSender::connect(theirs));
    rx.share(ours).expect("share");
    (rx, tx.join().expect("thread").expect("connect"))
}

/// `rx`, shared with a watch `Sender` connected from another thread.
pub fn with_watch_sender<T: bytemuck::Pod + Send>(
    mut rx: memfd_tripwire::watch::blocking::Receiver<T>,
) -> (
    memfd_tripwire::watch::blocking::Receiver<T>,
    memfd_tripwire::watch::Sender<T>,
) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let tx = std::thread::spawn(move || memfd_tripwire::watch::Sender::<T>::connect(theirs));
    rx.share(ours).expect("share");
    (rx, tx.join().expect("thread").expect("connect"))
}

/// Runs `f` on a thread; its result, or a panic if it overruns `limit`
/// (a hang is a failure, not a stuck test run).
pub fn within<R: Send + 'static>(limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    finished
        .recv_timeout(limit)
        .unwrap_or_else(|e| panic!("no answer within {limit:?} ({e})"))
}
