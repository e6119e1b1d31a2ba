//! Hostile handshakes: frames crafted by hand (the wire format documented at
//! the top of `src/handoff.rs`) against [`Producer::connect`] (a bad offer)
//! and against [`Tripwire::share`] (a bad reply).
//!
//! Every case must end in a clear [`Error`] on the side under test, never a
//! panic and never a hang: each body runs on its own thread under a
//! [`WATCHDOG`]. When a bad offer still arrived as a complete frame with the
//! right magic, the producer must also send back an error reply (status 1),
//! so that its failure surfaces on the consumer's side too. Fds received by
//! the failing side must be closed.

use std::io::{IoSlice, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use memfd_tripwire::blocking::Tripwire;
use memfd_tripwire::{Backend, Error, Producer};

mod support;
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

// ---------------------------------------------------------------------------
// The wire format, restated from src/handoff.rs (not imported: the tests must
// catch a change to it).

const OFFER_MAGIC: [u8; 8] = *b"MFDTWIRE";
const REPLY_MAGIC: [u8; 8] = *b"MFDTWACK";
/// 4 since the Doorbell offer is one memfd (region, then control page) and
/// the producer rings through the handshake socket; 5 since the offer names
/// its protocol (8 bytes: all zero for a plain tripwire, else the tag of
/// the extra frame that follows) and a producer that expected another
/// replies with status 2 and its own in the reply's last 8 bytes.
const VERSION: u16 = 5;
const OFFER_LEN: usize = 32;
const REPLY_LEN: usize = 24;
const MAX_MESSAGE: usize = 4096;
const KERNEL: u16 = 1;
const DOORBELL: u16 = 2;
const POLL: u16 = 3;
const USERFAULT: u16 = 4;
/// The Doorbell control page's size (one page, after the region).
const CONTROL_LEN: u64 = 4096;

/// The region length every offer announces.
const LEN: u64 = 4096;
/// How long a test body may run; the handshake's own time-out is 10 s.
const WATCHDOG: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Harness.

/// Tests that count `/proc/self/fd` take it exclusively; all others share it,
/// so that no other test opens or closes fds while one is counting.
static FD_TABLE: RwLock<()> = RwLock::new(());

/// Runs `body` on its own thread and fails if it has not finished within
/// [`WATCHDOG`]: a hang is a failure, not a stuck test run.
fn watchdog(counts_fds: bool, body: impl FnOnce() + Send + 'static) {
    let _shared = (!counts_fds).then(|| FD_TABLE.read().unwrap_or_else(PoisonError::into_inner));
    let _exclusive = counts_fds.then(|| FD_TABLE.write().unwrap_or_else(PoisonError::into_inner));
    let (done, outcome) = mpsc::channel();
    let worker = thread::Builder::new()
        .name("test body".into())
        .spawn(move || {
            body();
            let _ = done.send(());
        })
        .expect("spawning the test body");
    match outcome.recv_timeout(WATCHDOG) {
        Ok(()) => worker.join().expect("the body finished"),
        Err(RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the body returned without reporting"),
        },
        Err(RecvTimeoutError::Timeout) => {
            panic!("hang: the test body did not finish within {WATCHDOG:?}")
        }
    }
}

/// Asserts a handshake error whose reason contains every one of `needles`;
/// returns the reason.
#[track_caller]
fn assert_handshake(result: Result<impl std::fmt::Debug, Error>, needles: &[&str]) -> String {
    let reason = match result {
        Err(Error::Handshake { reason }) => reason,
        Err(other) => panic!("expected Error::Handshake, got {other:?} ({other})"),
        Ok(v) => panic!("expected Error::Handshake, the handshake succeeded: {v:?}"),
    };
    for needle in needles {
        assert!(
            reason.contains(needle),
            "the reason {reason:?} does not say {needle:?}"
        );
    }
    reason
}

// ---------------------------------------------------------------------------
// Frames and fds.

fn offer_frame(magic: [u8; 8], version: u16, backend: u16, fds: u32, len: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(OFFER_LEN);
    f.extend_from_slice(&magic);
    f.extend_from_slice(&version.to_le_bytes());
    f.extend_from_slice(&backend.to_le_bytes());
    f.extend_from_slice(&fds.to_le_bytes());
    f.extend_from_slice(&len.to_le_bytes());
    f.extend_from_slice(&[0; 8]); // a plain tripwire
    assert_eq!(f.len(), OFFER_LEN);
    f
}

/// A reply: its header (with `address` 0) and `msg`, which need not be
/// `msg_len` bytes long.
fn reply_frame(magic: [u8; 8], version: u16, status: u16, msg_len: u32, msg: &[u8]) -> Vec<u8> {
    reply_frame_at(magic, version, status, msg_len, 0, msg)
}

fn reply_frame_at(
    magic: [u8; 8],
    version: u16,
    status: u16,
    msg_len: u32,
    address: u64,
    msg: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(REPLY_LEN + msg.len());
    f.extend_from_slice(&magic);
    f.extend_from_slice(&version.to_le_bytes());
    f.extend_from_slice(&status.to_le_bytes());
    f.extend_from_slice(&msg_len.to_le_bytes());
    f.extend_from_slice(&address.to_le_bytes());
    assert_eq!(f.len(), REPLY_LEN);
    f.extend_from_slice(msg);
    f
}

/// One `sendmsg`: `bytes`, with `fds` in `SCM_RIGHTS` (none if empty).
fn send(sock: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    let sent = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .expect("sendmsg");
    assert_eq!(sent, bytes.len(), "short sendmsg");
}

/// A memfd of `len` bytes sealed against resizing, like the crate's own.
fn sealed_memfd(name: &str, len: u64) -> OwnedFd {
    sealed_memfd_with(
        name,
        len,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )
}

fn sealed_memfd_with(name: &str, len: u64, seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .expect("memfd_create");
    rustix::fs::ftruncate(&fd, len).expect("ftruncate");
    rustix::fs::fcntl_add_seals(&fd, seals).expect("F_ADD_SEALS");
    fd
}

/// A memfd of `len` bytes created without `MFD_ALLOW_SEALING`: never sealable.
fn unsealable_memfd(name: &str, len: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC).expect("memfd_create");
    rustix::fs::ftruncate(&fd, len).expect("ftruncate");
    fd
}

/// A producer on the other end of the returned socket.
fn spawn_producer() -> (UnixStream, JoinHandle<Result<Producer, Error>>) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let producer = thread::Builder::new()
        .name("producer".into())
        .spawn(move || Producer::connect(theirs))
        .expect("spawning the producer");
    (ours, producer)
}

fn join(producer: JoinHandle<Result<Producer, Error>>) -> Result<Producer, Error> {
    producer.join().expect("Producer::connect panicked")
}

/// Reads one reply frame: `None` if the producer hung up without one.
fn read_reply(sock: &UnixStream) -> Option<(u16, String)> {
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("SO_RCVTIMEO");
    let mut hdr = [0u8; REPLY_LEN];
    let mut got = 0;
    while got < REPLY_LEN {
        match (&*sock).read(&mut hdr[got..]) {
            Ok(0) if got == 0 => return None,
            Ok(0) => panic!("the producer's reply is truncated: {got} of {REPLY_LEN} bytes"),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A socket with unread data in it when its peer closed it resets.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && got == 0 => {
                return None;
            }
            Err(e) => panic!("reading the producer's reply: {e}"),
        }
    }
    assert_eq!(hdr[..8], REPLY_MAGIC, "reply magic");
    assert_eq!(
        u16::from_le_bytes([hdr[8], hdr[9]]),
        VERSION,
        "reply version"
    );
    let status = u16::from_le_bytes([hdr[10], hdr[11]]);
    let len = u32::from_le_bytes(hdr[12..16].try_into().unwrap()) as usize;
    let address = u64::from_le_bytes(hdr[16..24].try_into().unwrap());
    if status != 0 {
        assert_eq!(address, 0, "an error reply's address");
    }
    assert!(len <= MAX_MESSAGE, "reply message of {len} bytes");
    let mut msg = vec![0u8; len];
    (&*sock)
        .read_exact(&mut msg)
        .expect("reading the reply's message");
    let msg = String::from_utf8(msg).expect("the reply's message is UTF-8");
    Some((status, msg))
}

/// Asserts that the producer sent back status 1 carrying `reason` (its
/// error), so that the consumer learns why.
#[track_caller]
fn assert_error_reply(reply: Option<(u16, String)>, reason: &str) {
    match reply {
        Some((1, msg)) => assert!(
            msg.contains(reason),
            "the error reply {msg:?} does not carry the producer's reason {reason:?}"
        ),
        Some((status, msg)) => panic!("expected an error reply, got status {status}: {msg:?}"),
        None => panic!(
            "the producer hung up without an error reply; the consumer only learns \
             that it hung up, not that {reason:?}"
        ),
    }
}

/// Asserts that no reply arrived: the frame was not one to reply to.
#[track_caller]
fn assert_no_reply(reply: Option<(u16, String)>) {
    if let Some((status, msg)) = reply {
        panic!("unexpected reply to an unrecognisable frame: status {status}, {msg:?}");
    }
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// The `/proc/self/fd` entries whose link names `needle`.
fn open_fds_naming(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| {
            let e = e.ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            let link = link.to_string_lossy().into_owned();
            link.contains(needle)
                .then(|| format!("{} -> {link}", e.path().display()))
        })
        .collect()
}

/// Runs a producer-side case: sends what `send_offer` sends, expects
/// `Producer::connect` to fail with a handshake error saying `needles`, and
/// checks the reply (`reply_due`). With `fd_tag`, also checks that no fd
/// naming it outlives the case and that the fd table did not grow.
fn producer_case(
    send_offer: impl FnOnce(&UnixStream),
    needles: &[&str],
    reply_due: bool,
    fd_tag: Option<&str>,
) {
    let before = fd_tag.map(|_| fd_count());
    let (reason, reply) = {
        let (ours, producer) = spawn_producer();
        send_offer(&ours);
        let reason = assert_handshake(join(producer), needles);
        (reason, read_reply(&ours))
    };
    // The fds first: a missing reply must not hide a leak.
    if let (Some(tag), Some(before)) = (fd_tag, before) {
        let left = open_fds_naming(tag);
        assert!(
            left.is_empty(),
            "fds still open after the failure: {left:?}"
        );
        assert_eq!(fd_count(), before, "the fd table grew");
    }
    if reply_due {
        assert_error_reply(reply, &reason);
    } else {
        assert_no_reply(reply);
    }
}

// ---------------------------------------------------------------------------
// Producer side: bad offers.

/// The crafted frames are right: a well-formed Poll offer is accepted.
#[test]
fn sanity_a_handcrafted_poll_offer_is_accepted() {
    watchdog(false, || {
        let (ours, producer) = spawn_producer();
        let memfd = sealed_memfd("hostile-sanity", LEN);
        send(
            &ours,
            &offer_frame(OFFER_MAGIC, VERSION, POLL, 1, LEN),
            &[memfd.as_fd()],
        );
        assert_eq!(read_reply(&ours), Some((0, String::new())));
        let producer = join(producer).expect("a valid offer");
        assert_eq!(producer.region().len(), LEN as usize);
    });
}

#[test]
fn offer_with_wrong_magic() {
    watchdog(false, || {
        let memfd = sealed_memfd("hostile-magic", LEN);
        producer_case(
            |s| {
                send(
                    s,
                    &offer_frame(*b"NOTTWIRE", VERSION, POLL, 1, LEN),
                    &[memfd.as_fd()],
                )
            },
            &[
                "NOTTWIRE",
                "MFDTWIRE",
                "does not speak the memfd-tripwire handshake",
            ],
            // Not our protocol, but a best-effort error reply does no harm
            // and tells a confused peer what happened.
            true,
            None,
        );
    });
}

#[test]
fn offer_with_wrong_version() {
    watchdog(false, || {
        let memfd = sealed_memfd("hostile-version", LEN);
        // An older release (version 1: the Doorbell offer carried an
        // eventfd) and a newer one.
        for theirs in [VERSION - 1, VERSION + 1] {
            producer_case(
                |s| {
                    send(
                        s,
                        &offer_frame(OFFER_MAGIC, theirs, POLL, 1, LEN),
                        &[memfd.as_fd()],
                    )
                },
                &[
                    &format!("version {theirs}"),
                    &format!("this side {VERSION}"),
                ],
                // The magic says it is our handshake: a reply of this
                // side's version tells the consumer about the mismatch.
                true,
                None,
            );
        }
    });
}

#[test]
fn offer_with_unknown_backend_code() {
    watchdog(false, || {
        let memfd = sealed_memfd("hostile-backend", LEN);
        producer_case(
            |s| {
                send(
                    s,
                    &offer_frame(OFFER_MAGIC, VERSION, 9, 1, LEN),
                    &[memfd.as_fd()],
                )
            },
            &["unknown backend code 9"],
            true,
            None,
        );
    });
}

#[test]
fn poll_offer_with_a_pipe_instead_of_a_memfd() {
    watchdog(false, || {
        // std::io::pipe: rustix's `pipe` feature is not enabled here.
        let (reader, _writer) = std::io::pipe().expect("pipe");
        producer_case(
            |s| {
                send(
                    s,
                    &offer_frame(OFFER_MAGIC, VERSION, POLL, 1, LEN),
                    &[reader.as_fd()],
                )
            },
            &["region memfd", "not a sealable memfd"],
            true,
            None,
        );
    });
}

#[test]
fn poll_offer_with_an_unsealed_memfd() {
    watchdog(false, || {
        // Never sealable (no MFD_ALLOW_SEALING), and sealable but unsealed.
        let memfds = [
            unsealable_memfd("hostile-unsealable", LEN),
            sealed_memfd_with("hostile-unsealed", LEN, SealFlags::empty()),
            sealed_memfd_with("hostile-grow-only", LEN, SealFlags::GROW),
        ];
        for memfd in &memfds {
            producer_case(
                |s| {
                    send(
                        s,
                        &offer_frame(OFFER_MAGIC, VERSION, POLL, 1, LEN),
                        &[memfd.as_fd()],
                    )
                },
                &["region memfd", "not sealed against resizing"],
                true,
                None,
            );
        }
    });
}

#[test]
fn poll_offer_with_a_memfd_shorter_than_the_frame_says() {
    watchdog(false, || {
        let memfd = sealed_memfd("hostile-short", 1024);
        producer_case(
            |s| {
                send(
                    s,
                    &offer_frame(OFFER_MAGIC, VERSION, POLL, 1, LEN),
                    &[memfd.as_fd()],
                )
            },
            &["region memfd", "1024 bytes", "the frame says 4096"],
            true,
            None,
        );
    });
}

#[test]
fn poll_offer_with_a_write_sealed_memfd() {
    watchdog(false, || {
        // Sealed against resizing, but also against writing: the producer
        // cannot map it writable. Documented as Error::Io from the mapping.
        let memfd = sealed_memfd_with(
            "hostile-write-sealed",
            LEN,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
        );
        let (ours, producer) = spawn_producer();
        send(
            &ours,
            &offer_frame(OFFER_MAGIC, VERSION, POLL, 1, LEN),
            &[memfd.as_fd()],
        );
        match join(producer) {
            Err(e @ Error::Io { op, .. }) => {
                assert_eq!(op, "mmap of the region", "{e}");
                assert_error_reply(read_reply(&ours), &e.to_string());
            }
            other => panic!("expected Error::Io from mmap, got {other:?}"),
        }
    });
}

#[test]
fn poll_offer_with_zero_length() {
    watchdog(false, || {
        let memfd = sealed_memfd("hostile-zero", 0);
        producer_case(
            |s| {
                send(
                    s,
                    &offer_frame(OFFER_MAGIC, VERSION, POLL, 1, 0),
                    &[memfd.as_fd()],
                )
            },
            &["bad region length 0"],
            true,
            None,
        );
    });
}

#[test]
fn poll_offer_carrying_two_fds_announcing_two() {
    watchdog(true, || {
        producer_case(
            |s| {
                let a = sealed_memfd("hostile-extra2-a", LEN);
                let b = sealed_memfd("hostile-extra2-b", LEN);
                send(
                    s,
                    &offer_frame(OFFER_MAGIC, VERSION, POLL, 2, LEN),
                    &[a.as_fd(), b.as_fd()],
                );
            },
            &["backend Poll takes 1 fds", "carried 2"],
            true,
            Some("hostile-extra2"),
        );
    });
}

#[test]
fn poll_offer_carrying_two_fds_announcing_one() {
    watchdog(true, || {
        producer_case(
            |s| {
                let a = sealed_memfd("hostile-extra1-a", LEN);
                let b = sealed_memfd("hostile-extra1-b", LEN);
                send(
                    s,
                    &offer_frame(OFFER_MAGIC, VERSION, POLL, 1, LEN),
                    &[a.as_fd(), b.as_fd()],
                );
            },
            &["announces 1 fds but 2 arrived"],
            true,
            Some("hostile-extra1"),
        );
    });
}

#[test]
fn offer_announcing_one_fd_carrying_none() {
    watchdog(false, || {
        producer_case(
            |s| send(s, &offer_frame(OFFER_MAGIC, VERSION, POLL, 1, LEN), &[]),
            &["announces 1 fds but 0 arrived"],
            true,
            None,
        );
    });
}

#[test]
fn offer_carrying_more_fds_than_any_frame_holds() {
    watchdog(true, || {
        producer_case(
            |s| {
                // MAX_FDS is 4, but the receive buffer has slack for up to 6
                // (a 5-fd Poll offer fails on the count instead): 8 truncate.
                let fds: Vec<OwnedFd> = (0..8)
                    .map(|i| sealed_memfd(&format!("hostile-ctrunc-{i}"), LEN))
                    .collect();
                let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
                send(
                    s,
                    &offer_frame(OFFER_MAGIC, VERSION, POLL, 8, LEN),
                    &borrowed,
                );
            },
            &["more than 4 fds", "truncated"],
            // A complete frame with the right magic: worth a reply.
            true,
            Some("hostile-ctrunc"),
        );
    });
}

#[test]
fn truncated_offer_then_hang_up() {
    watchdog(false, || {
        let (ours, producer) = spawn_producer();
        let memfd = sealed_memfd("hostile-trunc", LEN);
        let frame = offer_frame(OFFER_MAGIC, VERSION, POLL, 1, LEN);
        send(&ours, &frame[..10], &[memfd.as_fd()]);
        drop(ours);
        assert_handshake(join(producer), &["hung up", "truncated"]);
    });
}

/// The one test that waits out the handshake's 10 s time-out.
#[test]
fn truncated_offer_then_silence_times_out() {
    watchdog(false, || {
        let (ours, producer) = spawn_producer();
        let memfd = sealed_memfd("hostile-silence", LEN);
        let frame = offer_frame(OFFER_MAGIC, VERSION, POLL, 1, LEN);
        let start = Instant::now();
        send(&ours, &frame[..10], &[memfd.as_fd()]);
        assert_handshake(join(producer), &["did not complete its frame within 10 s"]);
        let took = start.elapsed();
        assert!(
            (Duration::from_secs(9)..Duration::from_secs(15)).contains(&took),
            "the time-out took {took:?}"
        );
        drop(ours);
    });
}

#[test]
fn consumer_hangs_up_before_sending_anything() {
    watchdog(false, || {
        let (ours, producer) = spawn_producer();
        drop(ours);
        assert_handshake(join(producer), &["hung up before sending its frame"]);
    });
}

/// Since version 4 a Doorbell offer is one memfd: the region rounded up to a
/// page, then the control page. A memfd of the region alone would put the
/// armed flag past its end: refused, with both sizes.
#[test]
fn doorbell_offer_without_the_control_page() {
    watchdog(false, || {
        let region = sealed_memfd("hostile-bell-region", LEN);
        producer_case(
            |s| {
                send(
                    s,
                    &offer_frame(OFFER_MAGIC, VERSION, DOORBELL, 1, LEN),
                    &[region.as_fd()],
                )
            },
            &[
                "Doorbell memfd",
                "has 4096 bytes",
                &format!("{}", LEN + CONTROL_LEN),
            ],
            true,
            None,
        );
    });
}

/// The version-3 Doorbell offer (region memfd, bell socket, control memfd)
/// is refused by its version, and its three fds are closed.
#[test]
fn doorbell_offer_of_version_3() {
    watchdog(true, || {
        producer_case(
            |s| {
                let region = sealed_memfd("hostile-v3-region", LEN);
                let (bell, _other) = UnixStream::pair().expect("socketpair");
                let control = sealed_memfd("hostile-v3-control", CONTROL_LEN);
                send(
                    s,
                    &offer_frame(OFFER_MAGIC, 3, DOORBELL, 3, LEN),
                    &[region.as_fd(), bell.as_fd(), control.as_fd()],
                )
            },
            &["version"],
            true,
            Some("hostile-v3"),
        );
    });
}

/// Three fds where the version-4 Doorbell offer carries one: refused, and
/// all are closed.
#[test]
fn doorbell_offer_carrying_three_fds() {
    watchdog(true, || {
        producer_case(
            |s| {
                let region = sealed_memfd("hostile-3fd-region", LEN + CONTROL_LEN);
                let (bell, _other) = UnixStream::pair().expect("socketpair");
                let control = sealed_memfd("hostile-3fd-control", CONTROL_LEN);
                send(
                    s,
                    &offer_frame(OFFER_MAGIC, VERSION, DOORBELL, 3, LEN),
                    &[region.as_fd(), bell.as_fd(), control.as_fd()],
                )
            },
            &["fd"],
            true,
            Some("hostile-3fd"),
        );
    });
}

#[test]
fn kernel_offer_with_a_plain_memfd() {
    watchdog(false, || {
        let memfd = sealed_memfd("hostile-kernel", LEN);
        producer_case(
            |s| {
                send(
                    s,
                    &offer_frame(OFFER_MAGIC, VERSION, KERNEL, 1, LEN),
                    &[memfd.as_fd()],
                )
            },
            &["Kernel offer's fd", "memfd_tripwire"],
            true,
            None,
        );
    });
}

// ---------------------------------------------------------------------------
// Consumer side: bad replies from a fake producer.

/// Receives the consumer's whole offer: its frame and its fds.
fn recv_offer(sock: &UnixStream) -> ([u8; OFFER_LEN], Vec<OwnedFd>) {
    let mut frame = [0u8; OFFER_LEN];
    let fds = support::recv_frame(sock, &mut frame);
    assert_eq!(frame[..8], OFFER_MAGIC);
    (frame, fds)
}

/// Shares a Poll tripwire with a fake producer that runs `producer` after
/// receiving the offer; returns what `share` said.
fn share_with(producer: impl FnOnce(UnixStream) + Send + 'static) -> Result<(), Error> {
    share_via(Backend::Poll, producer).expect("Poll works everywhere")
}

/// [`share_with`] on `backend` (Poll or Userfault); `None` if this machine
/// cannot create that backend.
fn share_via(
    backend: Backend,
    producer: impl FnOnce(UnixStream) + Send + 'static,
) -> Option<Result<(), Error>> {
    let (code, offered, requirement) = match backend {
        Backend::Poll => (POLL, 1, "poll"),
        // The region and the channel to the producer's agent.
        Backend::Userfault => (USERFAULT, 2, "userfault"),
        other => unreachable!("{other:?} is not used here"),
    };
    let mut tw = match Tripwire::builder(LEN as usize).backend(backend).create() {
        Ok(tw) => tw,
        Err(e @ Error::Unavailable { .. }) => {
            support::skipping(requirement, &format!("a {backend:?} handshake: {e}"));
            return None;
        }
        Err(e) => panic!("creating a {backend:?} tripwire: {e}"),
    };
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let fake = thread::Builder::new()
        .name("fake producer".into())
        .spawn(move || {
            let (frame, fds) = recv_offer(&theirs);
            assert_eq!(u16::from_le_bytes([frame[10], frame[11]]), code);
            assert_eq!(fds.len(), offered);
            drop(fds);
            producer(theirs);
        })
        .expect("spawning the fake producer");
    let shared = tw.share(ours);
    fake.join().expect("the fake producer panicked");
    Some(shared)
}

#[test]
fn reply_with_bad_magic() {
    watchdog(false, || {
        let shared = share_with(|s| send(&s, &reply_frame(*b"NOTTWACK", VERSION, 0, 0, b""), &[]));
        assert_handshake(shared, &["reply", "NOTTWACK", "MFDTWACK", "does not speak"]);
    });
}

#[test]
fn reply_with_wrong_version() {
    watchdog(false, || {
        let shared = share_with(|s| send(&s, &reply_frame(REPLY_MAGIC, 7, 0, 0, b""), &[]));
        assert_handshake(shared, &["version 7", &format!("this side {VERSION}")]);
    });
}

#[test]
fn reply_with_error_status_and_message() {
    watchdog(false, || {
        let why = "disk on fire: cannot attach today";
        let shared = share_with(move |s| {
            send(
                &s,
                &reply_frame(REPLY_MAGIC, VERSION, 1, why.len() as u32, why.as_bytes()),
                &[],
            )
        });
        assert_handshake(shared, &["could not attach", why]);
    });
}

#[test]
fn reply_with_unknown_status() {
    watchdog(false, || {
        let shared = share_with(|s| send(&s, &reply_frame(REPLY_MAGIC, VERSION, 7, 0, b""), &[]));
        assert_handshake(shared, &["unknown reply status 7"]);
    });
}

#[test]
fn reply_with_oversized_message() {
    watchdog(false, || {
        let shared = share_with(|s| {
            send(
                &s,
                &reply_frame(REPLY_MAGIC, VERSION, 1, 1 << 30, b"x"),
                &[],
            )
        });
        assert_handshake(shared, &["1073741824 bytes", "at most 4096"]);
    });
}

#[test]
fn reply_with_truncated_message_then_hang_up() {
    watchdog(false, || {
        let shared = share_with(|s| {
            send(
                &s,
                &reply_frame(REPLY_MAGIC, VERSION, 1, 100, b"only ten.."),
                &[],
            )
        });
        assert_handshake(shared, &["hung up", "truncated"]);
    });
}

#[test]
fn reply_carrying_fds() {
    watchdog(true, || {
        let before = fd_count();
        let shared = share_with(|s| {
            let stray = sealed_memfd("hostile-reply-fd", LEN);
            send(
                &s,
                &reply_frame(REPLY_MAGIC, VERSION, 0, 0, b""),
                &[stray.as_fd()],
            );
        });
        assert_handshake(shared, &["unexpected fds"]);
        let left = open_fds_naming("hostile-reply-fd");
        assert!(
            left.is_empty(),
            "fds still open after the failure: {left:?}"
        );
        assert_eq!(fd_count(), before, "the fd table grew");
    });
}

#[test]
fn producer_hangs_up_without_replying() {
    watchdog(false, || {
        let shared = share_with(drop);
        assert_handshake(shared, &["hung up before sending its frame"]);
    });
}

#[test]
fn producer_gone_before_the_offer() {
    watchdog(false, || {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        drop(theirs);
        let mut tw = Tripwire::builder(LEN as usize)
            .backend(Backend::Poll)
            .create()
            .expect("a Poll tripwire");
        assert_handshake(tw.share(ours), &["hung up"]);
    });
}

// ---------------------------------------------------------------------------
// The socket's own settings: the handshake waits with poll(2) and reads and
// writes with MSG_DONTWAIT, so neither O_NONBLOCK nor SO_RCVTIMEO matters,
// and neither is changed.

/// What the handshake must leave alone on a socket.
fn socket_settings(sock: &UnixStream) -> (bool, Option<Duration>) {
    let flags = rustix::fs::fcntl_getfl(sock).expect("F_GETFL");
    let timeout = sock.read_timeout().expect("SO_RCVTIMEO");
    (flags.contains(rustix::fs::OFlags::NONBLOCK), timeout)
}

/// A real handshake (`share` against `Producer::connect`) on `ours` and
/// `theirs` as the caller set them up. The producer starts after
/// `producer_delay` (the consumer then waits for the reply), the consumer
/// offers after `consumer_delay` (the producer then waits for the offer).
/// Checks that neither socket's `O_NONBLOCK` nor `SO_RCVTIMEO` changed and
/// that a write then reaches the consumer.
fn handshake_on(
    backend: Backend,
    ours: UnixStream,
    theirs: UnixStream,
    consumer_delay: Duration,
    producer_delay: Duration,
) {
    // Clones share the open file description: they see its flags.
    let (our_probe, their_probe) = (ours.try_clone().unwrap(), theirs.try_clone().unwrap());
    let (our_before, their_before) = (socket_settings(&our_probe), socket_settings(&their_probe));
    let producer = thread::Builder::new()
        .name("producer".into())
        .spawn(move || {
            thread::sleep(producer_delay);
            Producer::connect(theirs)
        })
        .expect("spawning the producer");
    let mut tw = Tripwire::builder(LEN as usize)
        .backend(backend)
        .create()
        .unwrap_or_else(|e| panic!("creating a {backend:?} tripwire: {e}"));
    thread::sleep(consumer_delay);
    tw.share(ours)
        .unwrap_or_else(|e| panic!("{backend:?}: share on {our_before:?}: {e}"));
    let producer =
        join(producer).unwrap_or_else(|e| panic!("{backend:?}: connect on {their_before:?}: {e}"));
    assert_eq!(producer.backend(), tw.backend());
    assert_eq!(
        socket_settings(&our_probe),
        our_before,
        "the consumer's socket"
    );
    assert_eq!(
        socket_settings(&their_probe),
        their_before,
        "the producer's socket"
    );
    // The handshake worked end to end: a write trips the consumer's wire,
    // and the consumer reads it after the trip.
    assert_eq!(
        tw.wait_timeout(Duration::ZERO).unwrap(),
        None,
        "{backend:?}: tripped before any write"
    );
    producer.region().write(0, &0xC0FFEE_u32).unwrap();
    producer.notify().unwrap();
    tw.wait_timeout(Duration::from_secs(20))
        .unwrap()
        .unwrap_or_else(|| panic!("{backend:?}: no trip after a write and notify"));
    assert_eq!(tw.region().read::<u32>(0).unwrap(), 0xC0FFEE);
}

/// `share` and `connect` on sockets set non-blocking (as
/// `tokio::net::UnixStream::into_std()` returns them), on each side, with
/// each side the one that waits.
#[test]
fn handshake_on_non_blocking_sockets() {
    watchdog(false, || {
        let wait = Duration::from_millis(100);
        for backend in [Backend::Poll, Backend::Doorbell] {
            for (consumer_delay, producer_delay) in [(Duration::ZERO, wait), (wait, Duration::ZERO)]
            {
                for (ours_nb, theirs_nb) in [(true, true), (true, false), (false, true)] {
                    let (ours, theirs) = UnixStream::pair().expect("socketpair");
                    ours.set_nonblocking(ours_nb).unwrap();
                    theirs.set_nonblocking(theirs_nb).unwrap();
                    handshake_on(backend, ours, theirs, consumer_delay, producer_delay);
                }
            }
        }
    });
}

/// The same with a pair made by tokio and turned into std sockets (which
/// stay non-blocking).
#[test]
fn handshake_on_sockets_from_tokio() {
    watchdog(false, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("a runtime");
        for backend in [Backend::Poll, Backend::Doorbell] {
            let (ours, theirs) = rt.block_on(async {
                let (a, b) = tokio::net::UnixStream::pair().expect("socketpair");
                (a.into_std().unwrap(), b.into_std().unwrap())
            });
            assert!(
                socket_settings(&ours).0,
                "tokio hands over a non-blocking socket"
            );
            handshake_on(
                backend,
                ours,
                theirs,
                Duration::from_millis(50),
                Duration::ZERO,
            );
        }
    });
}

/// A short SO_RCVTIMEO of the caller's neither cuts the handshake short nor
/// is changed by it.
#[test]
fn handshake_ignores_and_keeps_the_sockets_receive_timeout() {
    watchdog(false, || {
        let short = Some(Duration::from_millis(5));
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        ours.set_read_timeout(short).unwrap();
        theirs.set_read_timeout(short).unwrap();
        // Each side waits 100 ms, far beyond the 5 ms time-out.
        handshake_on(
            Backend::Poll,
            ours,
            theirs,
            Duration::from_millis(100),
            Duration::from_millis(100),
        );
    });
}

/// A consumer that sends its offer one byte at a time, each after a pause:
/// the producer's 10 s is for the whole frame, not per byte.
#[test]
fn trickled_offer_still_times_out_after_10_s() {
    watchdog(false, || {
        let (ours, producer) = spawn_producer();
        let memfd = sealed_memfd("hostile-trickle", LEN);
        let frame = offer_frame(OFFER_MAGIC, VERSION, POLL, 1, LEN);
        let start = Instant::now();
        let trickler = thread::Builder::new()
            .name("trickler".into())
            .spawn(move || {
                // 23 of 24 bytes at 600 ms: ~13.8 s, past the deadline, but
                // no pause is anywhere near 10 s.
                send(&ours, &frame[..1], &[memfd.as_fd()]);
                for byte in &frame[1..OFFER_LEN - 1] {
                    thread::sleep(Duration::from_millis(600));
                    if rustix::net::send(&ours, std::slice::from_ref(byte), SendFlags::NOSIGNAL)
                        .is_err()
                    {
                        break; // the producer gave up and hung up
                    }
                }
            })
            .expect("spawning the trickler");
        assert_handshake(join(producer), &["did not complete its frame within 10 s"]);
        let took = start.elapsed();
        assert!(
            (Duration::from_secs(9)..Duration::from_millis(11_500)).contains(&took),
            "the time-out took {took:?}"
        );
        trickler.join().expect("the trickler panicked");
    });
}

/// A consumer that sends its offer and never reads: the producer's reply
/// does not fit the full socket buffer, and the producer gives up after
/// 10 s instead of blocking in `sendmsg` for ever.
#[test]
fn reply_to_a_consumer_that_never_reads_times_out() {
    watchdog(false, || {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        // Fill the producer-to-consumer direction, then hand the producer
        // its end blocking again, as a caller would.
        theirs.set_nonblocking(true).unwrap();
        let junk = [0u8; 4096];
        loop {
            match rustix::net::send(&theirs, &junk, SendFlags::NOSIGNAL) {
                Ok(_) => {}
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => panic!("filling the socket: {e}"),
            }
        }
        theirs.set_nonblocking(false).unwrap();
        let memfd = sealed_memfd("hostile-deaf", LEN);
        send(
            &ours,
            &offer_frame(OFFER_MAGIC, VERSION, POLL, 1, LEN),
            &[memfd.as_fd()],
        );
        let start = Instant::now();
        let producer = thread::Builder::new()
            .name("producer".into())
            .spawn(move || Producer::connect(theirs))
            .expect("spawning the producer");
        assert_handshake(
            join(producer),
            &["sending the handshake frame", "within 10 s"],
        );
        let took = start.elapsed();
        assert!(
            (Duration::from_secs(9)..Duration::from_secs(15)).contains(&took),
            "the time-out took {took:?}"
        );
        drop(ours);
    });
}

// ---------------------------------------------------------------------------
// Consumer side, Userfault: from handshake version 3 the reply carries no fd
// (the producer's uffd stays with its agent) and its address is ignored.
// Skipped where userfaultfd write-protect on shmem is unavailable.

/// A fresh userfaultfd (no UFFDIO_API yet), or `None` if refused.
fn userfaultfd() -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    const UFFD_USER_MODE_ONLY: libc::c_long = 1;
    let flags = libc::c_long::from(libc::O_CLOEXEC);
    [flags, flags | UFFD_USER_MODE_ONLY]
        .into_iter()
        .find_map(|flags| {
            // SAFETY: userfaultfd(2) takes one flags argument and returns a new
            // fd or -1; a new fd is ours alone.
            let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
            (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
        })
}

#[test]
fn userfault_reply_without_fds_is_accepted_whatever_its_address() {
    watchdog(false, || {
        for address in [0, 0x1234, 0xFFFF_FFFF_FFFF_F000] {
            let Some(shared) = share_via(Backend::Userfault, move |s| {
                send(
                    &s,
                    &reply_frame_at(REPLY_MAGIC, VERSION, 0, 0, address, b""),
                    &[],
                );
            }) else {
                return;
            };
            shared.expect("an ok reply without fds");
        }
    });
}

/// A producer of an older handshake (or a hostile one) sends its uffd, or
/// anything else: the consumer takes no fd from a reply, and closes them.
#[test]
fn userfault_reply_carrying_fds_is_refused_and_they_are_closed() {
    watchdog(true, || {
        let before = fd_count();
        let Some(shared) = share_via(Backend::Userfault, |s| {
            let fake = sealed_memfd("hostile-fake-uffd", LEN);
            let frame = reply_frame_at(REPLY_MAGIC, VERSION, 0, 0, 0x10_0000, b"");
            match userfaultfd() {
                Some(uffd) => send(&s, &frame, &[uffd.as_fd(), fake.as_fd()]),
                None => send(&s, &frame, &[fake.as_fd()]),
            }
        }) else {
            return;
        };
        assert_handshake(shared, &["unexpected fds"]);
        let left = open_fds_naming("hostile-fake-uffd");
        assert!(
            left.is_empty(),
            "fds still open after the failure: {left:?}"
        );
        assert_eq!(fd_count(), before, "the fd table grew");
    });
}

// ---------------------------------------------------------------------------
// A wrong protocol: a ring's share against a plain connect and the other way
// round. Each offer names what it offers (version 5), so the producer
// refuses at once, and both sides fail naming both, well before the 10 s
// time-out. On the host backends.

/// The backends the wrong-protocol cases run on.
const HOST: [(&str, Backend); 3] = [
    ("doorbell", Backend::Doorbell),
    ("userfault", Backend::Userfault),
    ("poll", Backend::Poll),
];

const PLAIN: &str = "a plain tripwire (Tripwire::share, Producer::connect)";
const RING: &str = "a ring (tag \"MFDTRING\": ring::Receiver::share, ring::Sender::connect)";

/// The error text of a wrong protocol, as each side says it.
fn wrong_protocol(offered: &str, expected: &str) -> (String, String) {
    let tail = "both sides must use the same pair of calls";
    (
        format!(
            "tripwire handshake failed: wrong protocol: this side offered {offered}, the peer \
             expected {expected}: {tail}"
        ),
        format!(
            "tripwire handshake failed: wrong protocol: the peer offered {offered}, this side \
             expected {expected}: {tail}"
        ),
    )
}

/// Asserts `result` is exactly the handshake error `text`.
#[track_caller]
fn assert_exact(side: &str, result: Result<impl std::fmt::Debug, Error>, text: &str) {
    match result {
        Err(e @ Error::Handshake { .. }) => assert_eq!(e.to_string(), text, "{side}"),
        other => panic!("{side}: expected the handshake error {text:?}, got {other:?}"),
    }
}

/// Coarse: a refusal, not the 10 s time-out.
const AT_ONCE: Duration = Duration::from_secs(5);

#[test]
fn a_ring_shared_with_a_plain_producer_fails_on_both_sides_at_once() {
    use memfd_tripwire::ring::{Sender, SharedRing};
    watchdog(false, || {
        for (name, backend) in HOST {
            let Some(mut rx) = support::or_skip(
                name,
                SharedRing::<u64>::builder(64).backend(backend).create(),
            ) else {
                continue;
            };
            let (ours, theirs) = UnixStream::pair().expect("socketpair");
            let start = Instant::now();
            let producer = thread::spawn(move || Producer::connect(theirs));
            let shared = rx.share(ours);
            let connected = producer.join().expect("the producer panicked");
            let took = start.elapsed();
            let (consumer, producer) = wrong_protocol(RING, PLAIN);
            assert_exact(&format!("{name}: the ring's share"), shared, &consumer);
            assert_exact(&format!("{name}: Producer::connect"), connected, &producer);
            assert!(took < AT_ONCE, "{name}: the refusal took {took:?}");
            // Nothing was shared: the ring takes its Sender next.
            let (ours, theirs) = UnixStream::pair().expect("socketpair");
            let tx = thread::spawn(move || Sender::<u64>::connect(theirs));
            rx.share(ours)
                .unwrap_or_else(|e| panic!("{name}: share again: {e}"));
            let mut tx = tx.join().expect("the sender panicked").expect("connect");
            tx.blocking_send(7).expect("send");
            assert_eq!(rx.blocking_recv().expect("recv"), Some(7), "{name}");
        }
    });
}

#[test]
fn a_plain_tripwire_shared_with_a_ring_sender_fails_on_both_sides_at_once() {
    use memfd_tripwire::ring::Sender;
    watchdog(false, || {
        for (name, backend) in HOST {
            let Some(mut tw) =
                support::or_skip(name, Tripwire::builder(4096).backend(backend).create())
            else {
                continue;
            };
            let (ours, theirs) = UnixStream::pair().expect("socketpair");
            let start = Instant::now();
            let sender = thread::spawn(move || Sender::<u64>::connect(theirs));
            let shared = tw.share(ours);
            let connected = sender.join().expect("the sender panicked");
            let took = start.elapsed();
            let (consumer, producer) = wrong_protocol(PLAIN, RING);
            assert_exact(&format!("{name}: share"), shared, &consumer);
            assert_exact(&format!("{name}: Sender::connect"), connected, &producer);
            assert!(took < AT_ONCE, "{name}: the refusal took {took:?}");
            // Nothing was shared: the tripwire takes a producer next.
            let (tw, producer) = support::with_producer(tw);
            producer.region().write(0, &1u8).expect("write");
            producer.notify().expect("notify");
            let mut tw = tw;
            assert!(
                tw.wait_timeout(Duration::from_secs(10))
                    .expect("wait")
                    .is_some(),
                "{name}: no trip after sharing again"
            );
        }
    });
}
