//! A doorbell between two processes that neither side can jam: one end of a
//! connected pair of unix stream sockets.
//!
//! An eventfd shared with a peer is one open file description: the peer can
//! clear its `O_NONBLOCK` (our `read` then blocks), drain its counter between
//! our `poll` and our `read`, or fill it to `u64::MAX - 1` (our `write` then
//! blocks). A socket pair has two descriptions: each side holds its own end
//! and the other side's flags are not ours. Every call here passes
//! `MSG_DONTWAIT` (and `MSG_NOSIGNAL`), so it never blocks whatever flags the
//! description carries, and the peer cannot read what is sent to us: it can
//! only send (a spurious ring), stop reading (our rings find the queue full:
//! a wake-up is pending anyway), or hang up (`EPIPE` / end of stream).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

use super::wait::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, SocketType};

/// How many bytes one [`Bell::drain`] takes at most (in reads of
/// [`DRAIN_CHUNK`]): a peer that floods the bell cannot keep a drain going;
/// what is left makes a later, spurious ring. Large enough that a socket
/// buffer a peer filled before it left is taken in a few looks.
const DRAIN_MAX: usize = 64 << 10;
const DRAIN_CHUNK: usize = 4096;

/// A ring is any byte but this one, which a handshake socket's owner sends
/// last, just before it closes its end: a goodbye ([`Bell::say_goodbye`]).
/// A hang-up after it is a clean close; a hang-up without it, a death.
const GOODBYE: u8 = 0xff;

/// One end of a bell: ring the other end, or drain the rings sent to this one.
#[derive(Debug)]
pub(crate) struct Bell {
    sock: UnixStream,
    /// A drain took the other end's goodbye.
    goodbye: AtomicBool,
}

impl Bell {
    /// A connected pair: the end to keep, and the end to hand to the peer.
    pub(crate) fn pair() -> io::Result<(Bell, OwnedFd)> {
        let (ours, theirs) = super::socket::pair(SocketType::STREAM)?;
        Ok((Bell::from_stream(ours.into()), theirs))
    }

    /// Takes an end received from a peer, after checking that it is a unix
    /// stream socket (anything else is refused with the reason).
    pub(crate) fn from_peer(fd: OwnedFd) -> Result<Bell, String> {
        super::socket::check_unix(&fd, SocketType::STREAM, "stream")?;
        Ok(Bell::from_stream(fd.into()))
    }

    /// A handshake socket (a connected unix stream socket, kept for the
    /// pair's life), used as a bell from now on: a Doorbell producer rings
    /// through it, and either side learns of the other's hang-up from it.
    pub(crate) fn from_stream(sock: UnixStream) -> Bell {
        Bell {
            sock,
            goodbye: AtomicBool::new(false),
        }
    }

    /// Rings the other end. Never blocks: a full queue means rings are
    /// already pending, and counts as done.
    ///
    /// # Errors
    ///
    /// `BrokenPipe` once every holder of the other end closed it.
    #[inline]
    pub(crate) fn ring(&self) -> io::Result<()> {
        ring(self.sock.as_fd())
    }

    /// Takes the rings sent to this end: `true` if there was at least one.
    /// A goodbye among them is no ring: it is kept for
    /// [`said_goodbye`](Bell::said_goodbye). Never blocks.
    ///
    /// # Errors
    ///
    /// `BrokenPipe` once every holder of the other end closed it and no ring
    /// is left.
    pub(crate) fn drain(&self) -> io::Result<bool> {
        let taken = drain(self.sock.as_fd())?;
        if taken.goodbye {
            self.goodbye.store(true, Ordering::Relaxed);
        }
        Ok(taken.rang)
    }

    /// Says goodbye to the other end: sent last, just before this end
    /// closes, it tells a clean close from a death there. Never blocks: a
    /// goodbye that finds the other end's queue full (a peer that stopped
    /// reading) or the other end gone is dropped, and reads as a death.
    pub(crate) fn say_goodbye(&self) {
        let _ = rustix::net::send(
            &self.sock,
            &[GOODBYE],
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        );
    }

    /// This end's identity while it is open (its inode number): how an owner
    /// that keeps no reference to it names it to whoever does.
    pub(crate) fn id(&self) -> io::Result<u64> {
        Ok(rustix::fs::fstat(&self.sock)?.st_ino)
    }

    /// Shuts this end down both ways: the other end sees the hang-up (its
    /// `hung_up` turns true), and this end reads as hung up too, so that
    /// its owner reaps it. Never blocks.
    pub(crate) fn shut_down(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }

    /// Whether a [`drain`](Bell::drain) took the other end's goodbye: its
    /// hang-up (if any) is then a clean close. A peer may say it and live
    /// on; it only changes how its hang-up is reported.
    pub(crate) fn said_goodbye(&self) -> bool {
        self.goodbye.load(Ordering::Relaxed)
    }

    /// Whether rings are waiting, without taking them. Never blocks.
    pub(crate) fn has_data(&self) -> io::Result<bool> {
        has_data(self.sock.as_fd())
    }

    /// Whether the peer hung up (closed its end, died, or shut down its
    /// writing side). Data it sent does not count: only `POLLRDHUP`,
    /// `POLLHUP` and `POLLERR` do, so a live peer cannot pass for a dead
    /// one by writing. Never blocks.
    pub(crate) fn hung_up(&self) -> io::Result<bool> {
        hung_up(self.sock.as_fd())
    }
}

/// Rings the other end of a connected unix stream socket ([`Bell::ring`]).
#[inline]
fn ring(sock: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        match rustix::net::send(sock, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(_) | Err(Errno::AGAIN) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(Errno::PIPE | Errno::CONNRESET) => {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the other end of the bell is closed",
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What one [`drain`] took.
#[derive(Default)]
struct Taken {
    /// A byte other than [`GOODBYE`].
    rang: bool,
    goodbye: bool,
}

/// Takes the rings sent to this end of a connected unix stream socket
/// ([`Bell::drain`]: at most [`DRAIN_MAX`] bytes; fds a peer sent along are
/// closed).
fn drain(sock: BorrowedFd<'_>) -> io::Result<Taken> {
    let mut buf = [0u8; DRAIN_CHUNK];
    let mut taken = 0;
    let mut seen = Taken::default();
    // A peer that closed with bytes we sent still unread makes our next
    // `recv` fail once with ECONNRESET (the error is then cleared), ahead
    // of what it sent before it closed: read on, once.
    let mut reset = false;
    while taken < DRAIN_MAX {
        match rustix::net::recv(sock, &mut buf, RecvFlags::DONTWAIT) {
            // The end comes after every ring sent before it.
            Ok((0, _)) if taken > 0 => return Ok(seen),
            Ok((0, _)) => {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the other end of the bell is closed",
                ));
            }
            Ok((n, _)) => {
                let got = &buf[..n.min(buf.len())];
                seen.rang |= got.iter().any(|&b| b != GOODBYE);
                seen.goodbye |= got.contains(&GOODBYE);
                taken += n;
            }
            Err(Errno::AGAIN) => return Ok(seen),
            Err(Errno::INTR) => continue,
            Err(Errno::CONNRESET) if !reset => reset = true,
            Err(Errno::CONNRESET) => {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the other end of the bell is closed",
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(seen)
}

/// [`Bell::has_data`].
fn has_data(sock: BorrowedFd<'_>) -> io::Result<bool> {
    let mut byte = [0u8; 1];
    loop {
        match rustix::net::recv(sock, &mut byte, RecvFlags::DONTWAIT | RecvFlags::PEEK) {
            Ok((n, _)) => return Ok(n > 0),
            Err(Errno::AGAIN) => return Ok(false),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

impl AsFd for Bell {
    /// Readable while rings are pending (or once the other end is closed).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for Bell {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// [`Bell::hung_up`].
fn hung_up(sock: BorrowedFd<'_>) -> io::Result<bool> {
    let mut fds = [PollFd::new(&sock, PollFlags::RDHUP)];
    super::wait::poll(&mut fds, Some(std::time::Instant::now()))?;
    Ok(fds[0]
        .revents()
        .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR))
}

#[cfg(test)]
mod tests {
    use rustix::net::{AddressFamily, SocketFlags};

    use super::*;

    #[test]
    fn rings_are_drained_and_coalesce() {
        let (a, b) = Bell::pair().unwrap();
        let b = Bell::from_peer(b).unwrap();
        assert!(!a.drain().unwrap());
        b.ring().unwrap();
        b.ring().unwrap();
        assert!(a.drain().unwrap());
        assert!(!a.drain().unwrap());
    }

    #[test]
    fn a_closed_other_end_is_broken_pipe_both_ways() {
        let (a, b) = Bell::pair().unwrap();
        drop(b);
        assert_eq!(a.ring().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(a.drain().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn the_peer_cannot_make_us_block() {
        let (a, b) = Bell::pair().unwrap();
        // The peer clears O_NONBLOCK on every description it can reach
        // (its own end; ours it never holds) and never reads: our rings
        // fill its queue and then return at once.
        rustix::fs::fcntl_setfl(&b, rustix::fs::OFlags::empty()).unwrap();
        rustix::fs::fcntl_setfl(&a.sock, rustix::fs::OFlags::empty()).unwrap();
        for _ in 0..100_000 {
            a.ring().unwrap();
        }
        assert!(!a.drain().unwrap());
    }

    #[test]
    fn only_unix_stream_sockets_are_taken() {
        let (_, dgram) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        assert!(
            Bell::from_peer(dgram)
                .unwrap_err()
                .contains("not a unix stream")
        );
        let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        assert_eq!(Bell::from_peer(memfd).unwrap_err(), "not a socket");
    }

    #[test]
    fn a_goodbye_is_no_ring_and_is_kept() {
        let (a, b) = Bell::pair().unwrap();
        let b = Bell::from_peer(b).unwrap();
        b.say_goodbye();
        assert!(!a.drain().unwrap(), "a goodbye alone is no ring");
        assert!(a.said_goodbye());
        drop(b);
        assert_eq!(a.drain().unwrap_err().kind(), io::ErrorKind::BrokenPipe);

        let (a, b) = Bell::pair().unwrap();
        let b = Bell::from_peer(b).unwrap();
        b.ring().unwrap();
        b.say_goodbye();
        drop(b);
        assert!(a.drain().unwrap(), "the ring before the goodbye");
        assert!(a.said_goodbye());

        let (a, b) = Bell::pair().unwrap();
        let b = Bell::from_peer(b).unwrap();
        b.ring().unwrap();
        drop(b);
        assert!(a.drain().unwrap());
        assert_eq!(a.drain().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        assert!(!a.said_goodbye(), "no goodbye: a death");
    }

    #[test]
    fn a_goodbye_survives_a_reset() {
        // The other end closes with our ring unread in its queue: our
        // next recv fails once with ECONNRESET; its goodbye is still read.
        let (a, b) = Bell::pair().unwrap();
        let b = Bell::from_peer(b).unwrap();
        a.ring().unwrap();
        b.say_goodbye();
        drop(b);
        assert!(!a.drain().unwrap(), "a goodbye alone is no ring");
        assert!(a.said_goodbye());
        assert_eq!(a.drain().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn data_is_not_a_hang_up() {
        let (a, b) = Bell::pair().unwrap();
        rustix::net::send(&b, b"hello", SendFlags::empty()).unwrap();
        assert!(!a.hung_up().unwrap());
        drop(b);
        assert!(a.hung_up().unwrap());
    }
}
