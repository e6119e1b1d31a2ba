//! The handshake that hands a tripwire to a producer over a `UnixStream`.
//!
//! One frame each way, little-endian, fds in `SCM_RIGHTS`:
//!
//! ```text
//! offer (consumer -> producer), 24 bytes + fds:
//!   magic "MFDTWIRE" | version u16 | backend u16 | fd count u32 | region length u64
//!   fds: Kernel [tripwire]; Doorbell [memfd, eventfd, control memfd];
//!        Poll, Userfault, UserfaultAsync [memfd]
//! reply (producer -> consumer), 24 bytes + message + fds:
//!   magic "MFDTWACK" | version u16 | status u16 (0 ok, 1 error) | message length u32
//!   | address u64 (Userfault, UserfaultAsync: the producer's mapping of the
//!     region; else 0)
//!   message: UTF-8, at most 4096 bytes: why the producer could not attach
//!   fds: Userfault [the producer's userfaultfd]; UserfaultAsync [its
//!        userfaultfd, its /proc/self/pagemap]; otherwise none
//! ```
//!
//! Fds are received with `MSG_CMSG_CLOEXEC`; a truncated control message
//! (`MSG_CTRUNC`), a wrong fd count, an unknown magic or version, a short
//! frame, a peer that hangs up or stays silent for [`TIMEOUT`]: each is an
//! [`Error::Handshake`] and every fd received is closed. After the handshake
//! the socket carries nothing: its hang-up is how each side learns that the
//! other is gone.

use std::io::{self, IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::{BackendKind, Error};

pub(crate) const OFFER_MAGIC: [u8; 8] = *b"MFDTWIRE";
pub(crate) const REPLY_MAGIC: [u8; 8] = *b"MFDTWACK";
pub(crate) const VERSION: u16 = 1;
const OFFER_LEN: usize = 24;
const REPLY_LEN: usize = 24;
const MAX_MESSAGE: usize = 4096;
/// The most fds any frame carries; the receive buffer fits these (plus
/// alignment slack): many more arrive as `MSG_CTRUNC`, a few more are caught
/// by the fd-count check. Either way every fd received is closed.
const MAX_FDS: usize = 4;
/// How long one side waits for the other's frame.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// What a producer was offered.
#[derive(Debug)]
pub(crate) struct Offer {
    pub(crate) kind: BackendKind,
    pub(crate) len: usize,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Runs `f` with a deadline for the whole exchange (a peer that trickles
/// bytes cannot stretch it), restoring the socket's own time-out after.
fn with_timeout<T>(
    sock: &UnixStream,
    f: impl FnOnce(Instant) -> Result<T, Error>,
) -> Result<T, Error> {
    let old = sock
        .read_timeout()
        .map_err(|e| Error::io("reading the socket's time-out", e))?;
    let out = f(Instant::now() + TIMEOUT);
    let restored = sock.set_read_timeout(old);
    let out = out?;
    restored.map_err(|e| Error::io("restoring the socket's time-out", e))?;
    Ok(out)
}

/// What a producer sends back besides its verdict.
#[derive(Debug, Default)]
pub(crate) struct Extras<F> {
    pub(crate) fds: Vec<F>,
    pub(crate) address: u64,
}

/// Consumer side: sends the offer, waits for the producer's verdict.
pub(crate) fn offer(
    sock: &UnixStream,
    kind: BackendKind,
    len: usize,
    fds: &[BorrowedFd<'_>],
) -> Result<Extras<OwnedFd>, Error> {
    with_timeout(sock, |deadline| {
        let mut frame = [0u8; OFFER_LEN];
        frame[..8].copy_from_slice(&OFFER_MAGIC);
        frame[8..10].copy_from_slice(&VERSION.to_le_bytes());
        frame[10..12].copy_from_slice(&kind.wire_code().to_le_bytes());
        frame[12..16].copy_from_slice(&(fds.len() as u32).to_le_bytes());
        frame[16..24].copy_from_slice(&(len as u64).to_le_bytes());
        send_frame(sock, &frame, fds)?;

        let mut hdr = [0u8; REPLY_LEN];
        let fds = recv_frame(sock, &mut hdr, deadline)?;
        check_magic_version(&hdr, REPLY_MAGIC, "reply")?;
        let status = u16::from_le_bytes([hdr[10], hdr[11]]);
        let msg_len = u32::from_le_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]) as usize;
        let address = u64::from_le_bytes(hdr[16..24].try_into().expect("8 bytes"));
        if msg_len > MAX_MESSAGE {
            return Err(Error::handshake(format!(
                "the producer's message claims {msg_len} bytes (at most {MAX_MESSAGE})"
            )));
        }
        let mut msg = vec![0u8; msg_len];
        read_rest(sock, &mut msg, deadline)?;
        match status {
            0 => Ok(Extras { fds, address }),
            1 => Err(Error::handshake(format!(
                "the producer could not attach: {}",
                String::from_utf8_lossy(&msg)
            ))),
            s => Err(Error::handshake(format!("unknown reply status {s}"))),
        }
    })
}

/// Producer side: receives and checks the offer's frame (not yet its fds'
/// contents: that is the backend's job, see `Producer::connect`).
pub(crate) fn receive_offer(sock: &UnixStream) -> Result<Offer, Error> {
    with_timeout(sock, |deadline| {
        let mut frame = [0u8; OFFER_LEN];
        let fds = recv_frame(sock, &mut frame, deadline)?;
        check_magic_version(&frame, OFFER_MAGIC, "offer")?;
        let code = u16::from_le_bytes([frame[10], frame[11]]);
        let kind = BackendKind::from_wire_code(code)
            .ok_or_else(|| Error::handshake(format!("unknown backend code {code}")))?;
        let announced = u32::from_le_bytes(frame[12..16].try_into().expect("4 bytes"));
        let len = u64::from_le_bytes(frame[16..24].try_into().expect("8 bytes"));
        if announced as usize != fds.len() {
            return Err(Error::handshake(format!(
                "the offer announces {announced} fds but {} arrived (all closed)",
                fds.len()
            )));
        }
        let want = match kind {
            BackendKind::Kernel
            | BackendKind::Poll
            | BackendKind::Userfault
            | BackendKind::UserfaultAsync => 1,
            BackendKind::Doorbell => 3,
        };
        if fds.len() != want {
            return Err(Error::handshake(format!(
                "backend {kind} takes {want} fds, the offer carried {} (all closed)",
                fds.len()
            )));
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| Error::handshake(format!("bad region length {len}")))?;
        Ok(Offer { kind, len, fds })
    })
}

/// Producer side: tells the consumer whether attaching worked.
pub(crate) fn reply(
    sock: &UnixStream,
    outcome: Result<&Extras<BorrowedFd<'_>>, &Error>,
) -> Result<(), Error> {
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
    frame.extend_from_slice(&REPLY_MAGIC);
    frame.extend_from_slice(&VERSION.to_le_bytes());
    frame.extend_from_slice(&(outcome.is_err() as u16).to_le_bytes());
    frame.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    frame.extend_from_slice(&address.to_le_bytes());
    frame.extend_from_slice(msg.as_bytes());
    send_frame(sock, &frame, fds)
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
    let version = u16::from_le_bytes([frame[8], frame[9]]);
    if version != VERSION {
        return Err(Error::handshake(format!(
            "the peer speaks handshake version {version}, this side {VERSION}: use the same \
             memfd-tripwire release on both sides"
        )));
    }
    Ok(())
}

fn send_frame(sock: &UnixStream, frame: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Error::handshake("too many fds for one frame"));
    }
    let sent = loop {
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(frame)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => {
                break other.map_err(|e| peer_error("sending the handshake frame", e.into()))?;
            }
        }
    };
    if sent != frame.len() {
        return Err(Error::handshake(format!(
            "sent {sent} of {} frame bytes",
            frame.len()
        )));
    }
    Ok(())
}

/// Receives exactly `buf.len()` bytes; the fds come with the first segment.
fn recv_frame(sock: &UnixStream, buf: &mut [u8], deadline: Instant) -> Result<Vec<OwnedFd>, Error> {
    arm(sock, deadline)?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => {
                break other.map_err(|e| peer_error("receiving the handshake frame", e.into()))?;
            }
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

fn read_rest(mut sock: &UnixStream, mut buf: &mut [u8], deadline: Instant) -> Result<(), Error> {
    while !buf.is_empty() {
        arm(sock, deadline)?;
        match sock.read(buf) {
            Ok(0) => {
                return Err(Error::handshake(
                    "the peer hung up in the middle of its frame (truncated)",
                ));
            }
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(peer_error("receiving the handshake frame", e)),
        }
    }
    Ok(())
}

/// Sets the socket's read time-out to what is left before `deadline`.
fn arm(sock: &UnixStream, deadline: Instant) -> Result<(), Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(peer_error(
            "receiving the handshake frame",
            io::ErrorKind::TimedOut.into(),
        ));
    }
    sock.set_read_timeout(Some(left))
        .map_err(|e| Error::io("setting the handshake time-out", e))
}

fn peer_error(op: &str, e: io::Error) -> Error {
    match e.kind() {
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

/// Magic of the second frame a ring sends after the tripwire handshake.
pub(crate) const RING_MAGIC: [u8; 8] = *b"MFDTRING";
const RING_LEN: usize = 16;

/// Consumer side of an extra frame (magic, version, fd count; fds): sends
/// it and waits for the producer's verdict (a reply frame, as above).
pub(crate) fn offer_extra(
    sock: &UnixStream,
    magic: [u8; 8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), Error> {
    with_timeout(sock, |deadline| {
        let mut frame = [0u8; RING_LEN];
        frame[..8].copy_from_slice(&magic);
        frame[8..10].copy_from_slice(&VERSION.to_le_bytes());
        frame[12..16].copy_from_slice(&(fds.len() as u32).to_le_bytes());
        send_frame(sock, &frame, fds)?;
        let mut hdr = [0u8; REPLY_LEN];
        let fds = recv_frame(sock, &mut hdr, deadline)?;
        check_magic_version(&hdr, REPLY_MAGIC, "reply")?;
        if !fds.is_empty() {
            return Err(Error::handshake(
                "the peer's reply carried unexpected fds (closed)",
            ));
        }
        let status = u16::from_le_bytes([hdr[10], hdr[11]]);
        let msg_len = u32::from_le_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]) as usize;
        if msg_len > MAX_MESSAGE {
            return Err(Error::handshake(format!(
                "the peer's message claims {msg_len} bytes"
            )));
        }
        let mut msg = vec![0u8; msg_len];
        read_rest(sock, &mut msg, deadline)?;
        match status {
            0 => Ok(()),
            _ => Err(Error::handshake(format!(
                "the peer could not attach: {}",
                String::from_utf8_lossy(&msg)
            ))),
        }
    })
}

/// Producer side of an extra frame: its fds, exactly `want` of them.
pub(crate) fn receive_extra(
    sock: &UnixStream,
    magic: [u8; 8],
    want: usize,
) -> Result<Vec<OwnedFd>, Error> {
    with_timeout(sock, |deadline| {
        let mut frame = [0u8; RING_LEN];
        let fds = recv_frame(sock, &mut frame, deadline)?;
        check_magic_version(&frame, magic, "frame")?;
        let announced = u32::from_le_bytes(frame[12..16].try_into().expect("4 bytes")) as usize;
        if announced != fds.len() || fds.len() != want {
            return Err(Error::handshake(format!(
                "the frame announces {announced} fds, carries {}, and {want} are expected \
                 (all closed; a peer of another memfd-tripwire release?)",
                fds.len()
            )));
        }
        Ok(fds)
    })
}

/// Producer side: reports the outcome of an extra frame.
pub(crate) fn reply_extra(sock: &UnixStream, outcome: Result<(), &Error>) -> Result<(), Error> {
    let none = Extras {
        fds: Vec::new(),
        address: 0,
    };
    reply(sock, outcome.map(|()| &none))
}
