//! The handshake that hands a tripwire to a producer over a `UnixStream`.
//!
//! One frame each way, little-endian, fds in `SCM_RIGHTS`:
//!
//! ```text
//! offer (consumer -> producer), 24 bytes + fds:
//!   magic "MFDTWIRE" | version u16 | backend u16 | fd count u32 | region length u64
//!   fds: Kernel [tripwire]; Doorbell [memfd: the region rounded up to a
//!        page, then the control page; up to version 3 a bell socket and a
//!        control memfd came apart]; Poll [memfd];
//!        Userfault, UserfaultAsync [memfd, the agent's channel (a unix
//!        seqpacket socket end; from version 3)]
//! reply (producer -> consumer), 24 bytes + message, never fds (from
//! version 3; before, Userfault sent its uffd, which handed the consumer
//! the producer's address space):
//!   magic "MFDTWACK" | version u16 | status u16 (0 ok, 1 error) | message length u32
//!   | address u64 (0; ignored)
//!   message: UTF-8, at most 4096 bytes: why the producer could not attach
//! extra frame (consumer -> producer, after the reply), 16 bytes + fds,
//! answered by a reply frame without fds:
//!   magic | version u16 | reserved u16 (0, not checked) | fd count u32
//!   a ring's: magic "MFDTRING"; fds [control memfd, space bell, slots memfd]
//! ```
//!
//! Fds are received with `MSG_CMSG_CLOEXEC`; a truncated control message
//! (`MSG_CTRUNC`), a wrong fd count, an unknown magic or version, a short
//! frame, a peer that hangs up or stays silent for [`TIMEOUT`]: each is an
//! [`Error::Handshake`] and every fd received is closed. After the handshake
//! the socket carries nothing but, on Doorbell, the producer's rings (one
//! byte each): its hang-up is how each side learns that the other is gone.
//!
//! Waiting never depends on the socket's own settings, which the caller (or
//! the peer, through a shared file description) chooses: each side polls
//! with the time left before one deadline per exchange (a peer that trickles
//! bytes cannot stretch it), then reads and writes with `MSG_DONTWAIT`. So a
//! non-blocking socket (as `tokio::net::UnixStream::into_std` returns) works
//! as well as a blocking one, and `O_NONBLOCK` and `SO_RCVTIMEO` are left
//! as they were.
//!
//! The parsing of each frame is pure (`parse_*`, no I/O): the cargo-fuzz
//! targets in `fuzz/` call it through `memfd_tripwire::__fuzz`.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::{BackendKind, Error};

pub(crate) const OFFER_MAGIC: [u8; 8] = *b"MFDTWIRE";
pub(crate) const REPLY_MAGIC: [u8; 8] = *b"MFDTWACK";
/// 2: the Doorbell offer's second fd is a unix socket end, no longer an
/// eventfd. 3: a Userfault(Async) offer carries the agent's channel, and no
/// reply carries fds (the producer's uffd never leaves it). 4: the Doorbell
/// offer is one memfd (region, then control page), and the producer rings
/// through the handshake socket.
pub(crate) const VERSION: u16 = 4;
pub(crate) const OFFER_LEN: usize = 24;
pub(crate) const REPLY_LEN: usize = 24;
pub(crate) const MAX_MESSAGE: usize = 4096;
/// The most fds any frame carries; the receive buffer fits these (plus
/// alignment slack): many more arrive as `MSG_CTRUNC`, a few more are caught
/// by the fd-count check. Either way every fd received is closed.
const MAX_FDS: usize = 4;
/// How long one side waits for the other's frame.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

const RECEIVING: &str = "receiving the handshake frame";
const SENDING: &str = "sending the handshake frame";

/// What a producer was offered.
#[derive(Debug)]
pub(crate) struct Offer {
    pub(crate) kind: BackendKind,
    pub(crate) len: usize,
    pub(crate) fds: Vec<OwnedFd>,
}

/// What a producer sends back besides its verdict.
#[derive(Debug, Default)]
pub(crate) struct Extras<F> {
    pub(crate) fds: Vec<F>,
    pub(crate) address: u64,
}

// ---------------------------------------------------------------------------
// The frames, encoded and parsed: pure functions of their bytes.

/// The fields of an offer's header that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OfferHeader {
    pub(crate) kind: BackendKind,
    /// At least 1.
    pub(crate) len: usize,
}

/// The fields of a reply's header that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplyHeader {
    /// 0 ok, 1 error; anything else is refused by [`reply_verdict`].
    pub(crate) status: u16,
    /// Bytes of message after the header: at most [`MAX_MESSAGE`].
    pub(crate) msg_len: usize,
    pub(crate) address: u64,
}

/// How many fds an offer for `kind` carries.
pub(crate) fn offer_fds(kind: BackendKind) -> usize {
    match kind {
        BackendKind::Kernel | BackendKind::Poll | BackendKind::Doorbell => 1,
        BackendKind::Userfault | BackendKind::UserfaultAsync => 2,
    }
}

pub(crate) fn encode_offer(kind: BackendKind, len: usize, fds: usize) -> [u8; OFFER_LEN] {
    let mut frame = [0u8; OFFER_LEN];
    frame[..8].copy_from_slice(&OFFER_MAGIC);
    frame[8..10].copy_from_slice(&VERSION.to_le_bytes());
    frame[10..12].copy_from_slice(&kind.wire_code().to_le_bytes());
    frame[12..16].copy_from_slice(&(fds as u32).to_le_bytes());
    frame[16..24].copy_from_slice(&(len as u64).to_le_bytes());
    frame
}

/// Checks an offer's header that arrived with `fds` fds.
pub(crate) fn parse_offer(frame: &[u8; OFFER_LEN], fds: usize) -> Result<OfferHeader, Error> {
    check_magic_version(frame, OFFER_MAGIC, "offer")?;
    let code = u16_at(frame, 10);
    let kind = BackendKind::from_wire_code(code)
        .ok_or_else(|| Error::handshake(format!("unknown backend code {code}")))?;
    let announced = u32_at(frame, 12);
    let len = u64_at(frame, 16);
    if usize::try_from(announced).ok() != Some(fds) {
        return Err(Error::handshake(format!(
            "the offer announces {announced} fds but {fds} arrived (all closed)"
        )));
    }
    let want = offer_fds(kind);
    if fds != want {
        return Err(Error::handshake(format!(
            "backend {kind} takes {want} fds, the offer carried {fds} (all closed)"
        )));
    }
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l > 0)
        .ok_or_else(|| Error::handshake(format!("bad region length {len}")))?;
    Ok(OfferHeader { kind, len })
}

pub(crate) fn encode_reply(status: u16, msg_len: usize, address: u64) -> [u8; REPLY_LEN] {
    let mut hdr = [0u8; REPLY_LEN];
    hdr[..8].copy_from_slice(&REPLY_MAGIC);
    hdr[8..10].copy_from_slice(&VERSION.to_le_bytes());
    hdr[10..12].copy_from_slice(&status.to_le_bytes());
    hdr[12..16].copy_from_slice(&(msg_len as u32).to_le_bytes());
    hdr[16..24].copy_from_slice(&address.to_le_bytes());
    hdr
}

/// Checks a reply's header; the message that follows is up to the caller
/// (and then [`reply_verdict`]).
pub(crate) fn parse_reply(hdr: &[u8; REPLY_LEN]) -> Result<ReplyHeader, Error> {
    check_magic_version(hdr, REPLY_MAGIC, "reply")?;
    let status = u16_at(hdr, 10);
    let msg_len = u32_at(hdr, 12);
    let address = u64_at(hdr, 16);
    let msg_len = usize::try_from(msg_len)
        .ok()
        .filter(|&n| n <= MAX_MESSAGE)
        .ok_or_else(|| {
            Error::handshake(format!(
                "the producer's message claims {msg_len} bytes (at most {MAX_MESSAGE})"
            ))
        })?;
    Ok(ReplyHeader {
        status,
        msg_len,
        address,
    })
}

/// What a reply with `status` and message `msg` says.
pub(crate) fn reply_verdict(status: u16, msg: &[u8]) -> Result<(), Error> {
    match status {
        0 => Ok(()),
        1 => Err(Error::handshake(format!(
            "the producer could not attach: {}",
            String::from_utf8_lossy(msg)
        ))),
        s => Err(Error::handshake(format!("unknown reply status {s}"))),
    }
}

pub(crate) const EXTRA_LEN: usize = 16;

pub(crate) fn encode_extra(magic: [u8; 8], fds: usize) -> [u8; EXTRA_LEN] {
    let mut frame = [0u8; EXTRA_LEN];
    frame[..8].copy_from_slice(&magic);
    frame[8..10].copy_from_slice(&VERSION.to_le_bytes());
    frame[12..16].copy_from_slice(&(fds as u32).to_le_bytes());
    frame
}

/// Checks an extra frame that arrived with `fds` fds where `magic` and
/// exactly `want` fds are expected.
pub(crate) fn parse_extra(
    frame: &[u8; EXTRA_LEN],
    magic: [u8; 8],
    fds: usize,
    want: usize,
) -> Result<(), Error> {
    check_magic_version(frame, magic, "frame")?;
    let announced = u32_at(frame, 12);
    if usize::try_from(announced).ok() != Some(fds) || fds != want {
        return Err(Error::handshake(format!(
            "the frame announces {announced} fds, carries {fds}, and {want} are expected \
             (all closed; a peer of another memfd-tripwire release?)"
        )));
    }
    Ok(())
}

fn check_magic_version(frame: &[u8], magic: [u8; 8], what: &str) -> Result<(), Error> {
    if frame[..8] != magic {
        return Err(Error::handshake(format!(
            "the {what} starts with {:?}, not {:?}: the peer does not speak the \
             memfd-tripwire handshake",
            String::from_utf8_lossy(&frame[..8]),
            String::from_utf8_lossy(&magic)
        )));
    }
    let version = u16_at(frame, 8);
    if version != VERSION {
        return Err(Error::handshake(format!(
            "the peer speaks handshake version {version}, this side {VERSION}: use the same \
             memfd-tripwire release on both sides"
        )));
    }
    Ok(())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(le)
}

// ---------------------------------------------------------------------------
// The exchanges.

/// Consumer side: sends the offer, waits for the producer's verdict.
pub(crate) fn offer(
    sock: &UnixStream,
    kind: BackendKind,
    len: usize,
    fds: &[BorrowedFd<'_>],
) -> Result<Extras<OwnedFd>, Error> {
    let deadline = Instant::now() + TIMEOUT;
    send_frame(sock, &encode_offer(kind, len, fds.len()), fds, deadline)?;
    let (hdr, fds) = recv_reply(sock, deadline)?;
    Ok(Extras {
        fds,
        address: hdr.address,
    })
}

/// Producer side: receives and checks the offer's frame (not yet its fds'
/// contents: that is the backend's job, see `Producer::connect`).
pub(crate) fn receive_offer(sock: &UnixStream) -> Result<Offer, Error> {
    let deadline = Instant::now() + TIMEOUT;
    let mut frame = [0u8; OFFER_LEN];
    let fds = recv_frame(sock, &mut frame, deadline)?;
    let OfferHeader { kind, len } = parse_offer(&frame, fds.len())?;
    Ok(Offer { kind, len, fds })
}

/// Producer side: tells the consumer whether attaching worked.
pub(crate) fn reply(
    sock: &UnixStream,
    outcome: Result<&Extras<BorrowedFd<'_>>, &Error>,
) -> Result<(), Error> {
    let deadline = Instant::now() + TIMEOUT;
    let (fds, address): (&[BorrowedFd<'_>], u64) = match outcome {
        Ok(x) => (&x.fds, x.address),
        Err(_) => (&[], 0),
    };
    let msg = match outcome {
        Ok(_) => String::new(),
        Err(e) => {
            let mut m = e.to_string();
            while m.len() > MAX_MESSAGE {
                m.pop();
            }
            m
        }
    };
    let mut frame = Vec::with_capacity(REPLY_LEN + msg.len());
    frame.extend_from_slice(&encode_reply(
        u16::from(outcome.is_err()),
        msg.len(),
        address,
    ));
    frame.extend_from_slice(msg.as_bytes());
    send_frame(sock, &frame, fds, deadline)
}

/// Consumer side of an extra frame (magic, version, fd count; fds): sends
/// it and waits for the producer's verdict (a reply frame, as above).
pub(crate) fn offer_extra(
    sock: &UnixStream,
    magic: [u8; 8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), Error> {
    let deadline = Instant::now() + TIMEOUT;
    send_frame(sock, &encode_extra(magic, fds.len()), fds, deadline)?;
    let (_, fds) = recv_reply(sock, deadline)?;
    if !fds.is_empty() {
        return Err(Error::handshake(
            "the peer's reply carried unexpected fds (closed)",
        ));
    }
    Ok(())
}

/// Producer side of an extra frame: its fds, exactly `want` of them.
pub(crate) fn receive_extra(
    sock: &UnixStream,
    magic: [u8; 8],
    want: usize,
) -> Result<Vec<OwnedFd>, Error> {
    let deadline = Instant::now() + TIMEOUT;
    let mut frame = [0u8; EXTRA_LEN];
    let fds = recv_frame(sock, &mut frame, deadline)?;
    parse_extra(&frame, magic, fds.len(), want)?;
    Ok(fds)
}

/// Producer side: reports the outcome of an extra frame.
pub(crate) fn reply_extra(sock: &UnixStream, outcome: Result<(), &Error>) -> Result<(), Error> {
    let none = Extras {
        fds: Vec::new(),
        address: 0,
    };
    reply(sock, outcome.map(|()| &none))
}

/// Receives a whole reply (header, message) before `deadline`: its header
/// and fds if its status is 0, else the producer's reason.
fn recv_reply(sock: &UnixStream, deadline: Instant) -> Result<(ReplyHeader, Vec<OwnedFd>), Error> {
    let mut hdr = [0u8; REPLY_LEN];
    let fds = recv_frame(sock, &mut hdr, deadline)?;
    let hdr = parse_reply(&hdr)?;
    let mut msg = vec![0u8; hdr.msg_len];
    read_rest(sock, &mut msg, deadline)?;
    reply_verdict(hdr.status, &msg)?;
    Ok((hdr, fds))
}

// ---------------------------------------------------------------------------
// The I/O: poll(2) bounded by the deadline, then a call with MSG_DONTWAIT.

/// Sends all of `frame`, `fds` with its first bytes, before `deadline`.
fn send_frame(
    sock: &UnixStream,
    frame: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Instant,
) -> Result<(), Error> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Error::handshake("too many fds for one frame"));
    }
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    let mut sent = 0;
    while sent < frame.len() {
        wait(sock, PollFlags::OUT, deadline, SENDING)?;
        let result = if sent == 0 {
            rustix::net::sendmsg(sock, &[IoSlice::new(frame)], &mut control, flags)
        } else {
            // The fds went with the first bytes.
            rustix::net::send(sock, &frame[sent..], flags)
        };
        match result {
            Ok(0) => {
                return Err(Error::handshake(format!(
                    "sent {sent} of {} frame bytes",
                    frame.len()
                )));
            }
            Ok(n) => sent += n,
            Err(Errno::INTR | Errno::AGAIN) => {}
            Err(e) => return Err(peer_error(SENDING, e.into())),
        }
    }
    Ok(())
}

/// Receives exactly `buf.len()` bytes before `deadline`; the fds come with
/// the first segment.
fn recv_frame(sock: &UnixStream, buf: &mut [u8], deadline: Instant) -> Result<Vec<OwnedFd>, Error> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        wait(sock, PollFlags::IN, deadline, RECEIVING)?;
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        ) {
            Err(Errno::INTR | Errno::AGAIN) => {}
            other => break other.map_err(|e| peer_error(RECEIVING, e.into()))?,
        }
    };
    // Take ownership of every fd first, so that each one is closed on error.
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(Error::handshake(format!(
            "the peer sent more than {MAX_FDS} fds (control message truncated; all closed)"
        )));
    }
    if msg.bytes == 0 {
        return Err(Error::handshake(
            "the peer hung up before sending its frame",
        ));
    }
    read_rest(sock, &mut buf[msg.bytes..], deadline)?;
    Ok(fds)
}

/// Fills `buf` before `deadline`.
fn read_rest(sock: &UnixStream, buf: &mut [u8], deadline: Instant) -> Result<(), Error> {
    let mut got = 0;
    while got < buf.len() {
        wait(sock, PollFlags::IN, deadline, RECEIVING)?;
        match rustix::net::recv(sock, &mut buf[got..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => {
                return Err(Error::handshake(
                    "the peer hung up in the middle of its frame (truncated)",
                ));
            }
            Ok((n, _)) => got += n,
            Err(Errno::INTR | Errno::AGAIN) => {}
            Err(e) => return Err(peer_error(RECEIVING, e.into())),
        }
    }
    Ok(())
}

/// Waits until `sock` is ready for `events`, or has hung up or failed (the
/// call that follows says which), for at most what is left before
/// `deadline`. A signal restarts the wait with the time then left.
fn wait(sock: &UnixStream, events: PollFlags, deadline: Instant, op: &str) -> Result<(), Error> {
    match crate::sys::wait::ready(sock.as_fd(), events, Some(deadline)) {
        Ok(true) => Ok(()),
        Ok(false) => Err(peer_error(op, io::ErrorKind::TimedOut.into())),
        Err(e) => Err(peer_error(op, e)),
    }
}

fn peer_error(op: &str, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if op == SENDING => {
            Error::handshake(format!(
                "{op}: the peer did not take it within {} s",
                TIMEOUT.as_secs()
            ))
        }
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::handshake(format!(
            "{op}: the peer did not complete its frame within {} s",
            TIMEOUT.as_secs()
        )),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
            Error::handshake(format!("{op}: the peer hung up"))
        }
        _ => Error::handshake(format!("{op}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_offer_round_trips() {
        for code in 1..=5 {
            let kind = BackendKind::from_wire_code(code).unwrap();
            let n = offer_fds(kind);
            let frame = encode_offer(kind, 4096, n);
            assert_eq!(
                parse_offer(&frame, n).unwrap(),
                OfferHeader { kind, len: 4096 }
            );
        }
    }

    #[test]
    fn a_reply_round_trips_and_its_message_is_bounded() {
        let hdr = encode_reply(1, MAX_MESSAGE, 0x1000);
        let parsed = parse_reply(&hdr).unwrap();
        assert_eq!(
            parsed,
            ReplyHeader {
                status: 1,
                msg_len: MAX_MESSAGE,
                address: 0x1000
            }
        );
        let err = parse_reply(&encode_reply(0, MAX_MESSAGE + 1, 0)).unwrap_err();
        assert!(
            err.to_string().contains("4097 bytes (at most 4096)"),
            "{err}"
        );
        assert!(reply_verdict(0, b"").is_ok());
        let err = reply_verdict(1, b"no").unwrap_err();
        assert!(err.to_string().contains("could not attach: no"), "{err}");
        let err = reply_verdict(2, b"").unwrap_err();
        assert!(err.to_string().contains("unknown reply status 2"), "{err}");
    }

    #[test]
    fn an_extra_frame_round_trips() {
        let frame = encode_extra(*b"TESTTEST", 3);
        assert!(parse_extra(&frame, *b"TESTTEST", 3, 3).is_ok());
        assert!(parse_extra(&frame, *b"TESTTEST", 2, 3).is_err());
        assert!(parse_extra(&frame, *b"TESTTEST", 3, 2).is_err());
        assert!(parse_extra(&frame, OFFER_MAGIC, 3, 3).is_err());
    }
}
