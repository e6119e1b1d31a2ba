//! A message channel between two processes that neither side can jam: one
//! end of a connected pair of unix `SOCK_SEQPACKET` sockets (message
//! boundaries kept, in order). As with [`Bell`](super::Bell), each side
//! holds its own end, and every call passes `MSG_DONTWAIT` (and
//! `MSG_NOSIGNAL`), so no flag a peer sets on anything it holds can make a
//! call of ours block; waiting is `sys::wait`, by the caller.

use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, SocketType};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// What [`Channel::recv`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recv {
    /// A message of this many bytes (truncated to the buffer if longer).
    Message(usize),
    /// Nothing queued now.
    Empty,
    /// The other end is closed and nothing is left.
    Closed,
}

/// One end of a message channel.
#[derive(Debug)]
pub(crate) struct Channel {
    sock: OwnedFd,
}

impl Channel {
    /// A connected pair: the end to keep, and the end to hand to the peer.
    pub(crate) fn pair() -> io::Result<(Channel, OwnedFd)> {
        let (ours, theirs) = super::socket::pair(SocketType::SEQPACKET)?;
        Ok((Channel { sock: ours }, theirs))
    }

    /// Takes an end received from a peer, after checking that it is a unix
    /// `SOCK_SEQPACKET` socket.
    pub(crate) fn from_peer(fd: OwnedFd) -> Result<Channel, String> {
        super::socket::check_unix(&fd, SocketType::SEQPACKET, "seqpacket")?;
        Ok(Channel { sock: fd })
    }

    /// Sends one message; `Ok(false)` if the peer's queue is full (it is
    /// not reading). Never blocks.
    ///
    /// # Errors
    ///
    /// `BrokenPipe` once the other end is closed.
    pub(crate) fn send(&self, msg: &[u8]) -> io::Result<bool> {
        loop {
            match rustix::net::send(&self.sock, msg, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                Ok(_) => return Ok(true),
                Err(Errno::AGAIN) => return Ok(false),
                Err(Errno::INTR) => continue,
                Err(Errno::PIPE | Errno::CONNRESET) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the other end of the channel is closed",
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Takes the next message into `buf`, if one is queued. Never blocks.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<Recv> {
        let len = buf.len();
        loop {
            match rustix::net::recv(&self.sock, &mut *buf, RecvFlags::DONTWAIT) {
                // No side ever sends an empty message: 0 is the end.
                Ok((0, _)) => return Ok(Recv::Closed),
                Ok((n, _)) => return Ok(Recv::Message(n.min(len))),
                Err(Errno::AGAIN) => return Ok(Recv::Empty),
                Err(Errno::INTR) => continue,
                Err(Errno::CONNRESET) => return Ok(Recv::Closed),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for Channel {
    /// Readable while messages are queued (or once the other end closed).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_boundaries_and_the_end_is_seen() {
        let (a, b) = Channel::pair().unwrap();
        let b = Channel::from_peer(b).unwrap();
        assert!(a.send(b"one").unwrap());
        assert!(a.send(b"three").unwrap());
        let mut buf = [0u8; 16];
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Message(3));
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Message(5));
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Empty);
        drop(a);
        assert!(
            super::super::wait::ready(b.as_fd(), super::super::wait::PollFlags::IN, None).unwrap()
        );
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Closed);
        assert_eq!(b.send(b"x").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_full_queue_and_cleared_flags_do_not_block() {
        let (a, b) = Channel::pair().unwrap();
        rustix::fs::fcntl_setfl(&b, rustix::fs::OFlags::empty()).unwrap();
        rustix::fs::fcntl_setfl(&a.sock, rustix::fs::OFlags::empty()).unwrap();
        while a.send(&[7; 1024]).unwrap() {}
        let mut buf = [0u8; 8];
        assert_eq!(a.recv(&mut buf).unwrap(), Recv::Empty);
        assert!(!super::super::wait::readable_now(a.as_fd()).unwrap());
    }

    #[test]
    fn only_seqpacket_sockets_are_taken() {
        let (_, stream) = super::super::Bell::pair().unwrap();
        assert!(
            Channel::from_peer(stream)
                .unwrap_err()
                .contains("seqpacket")
        );
    }
}
