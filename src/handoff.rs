//! The handshake that hands a tripwire to a producer over a `UnixStream`.
//!
//! One frame each way, little-endian, fds in `SCM_RIGHTS`:
//!
//! ```text
//! offer (consumer -> producer), 24 bytes + fds:
//!   magic "MFDTWIRE" | version u16 | backend u16 | fd count u32 | region length u64
//!   fds: Kernel [tripwire]; Doorbell [memfd, eventfd, control memfd]; Poll [memfd]
//! reply (producer -> consumer), 16 bytes + message:
//!   magic "MFDTWACK" | version u16 | status u16 (0 ok, 1 error) | message length u32
//!   message: UTF-8, at most 4096 bytes: why the producer could not attach
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
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::{BackendKind, Error};

pub(crate) const OFFER_MAGIC: [u8; 8] = *b"MFDTWIRE";
pub(crate) const REPLY_MAGIC: [u8; 8] = *b"MFDTWACK";
pub(crate) const VERSION: u16 = 1;
const OFFER_LEN: usize = 24;
const REPLY_LEN: usize = 16;
const MAX_MESSAGE: usize = 4096;
/// The most fds any frame carries; more arrive as `MSG_CTRUNC`.
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

/// Runs `f` with the handshake time-out set on `sock`, restoring it after.
fn with_timeout<T>(sock: &UnixStream, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    let old = sock
        .read_timeout()
        .map_err(|e| Error::io("reading the socket's time-out", e))?;
    sock.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| Error::io("setting the handshake time-out", e))?;
    let out = f();
    let restored = sock.set_read_timeout(old);
    let out = out?;
    restored.map_err(|e| Error::io("restoring the socket's time-out", e))?;
    Ok(out)
}

/// Consumer side: sends the offer, waits for the producer's verdict.
pub(crate) fn offer(
    sock: &UnixStream,
    kind: BackendKind,
    len: usize,
    fds: &[BorrowedFd<'_>],
) -> Result<(), Error> {
    with_timeout(sock, || {
        let mut frame = [0u8; OFFER_LEN];
        frame[..8].copy_from_slice(&OFFER_MAGIC);
        frame[8..10].copy_from_slice(&VERSION.to_le_bytes());
        frame[10..12].copy_from_slice(&kind.wire_code().to_le_bytes());
        frame[12..16].copy_from_slice(&(fds.len() as u32).to_le_bytes());
        frame[16..24].copy_from_slice(&(len as u64).to_le_bytes());
        send_frame(sock, &frame, fds)?;

        let mut hdr = [0u8; REPLY_LEN];
        let fds = recv_frame(sock, &mut hdr)?;
        if !fds.is_empty() {
            return Err(Error::handshake(format!(
                "the producer's reply carried {} unexpected fds (closed)",
                fds.len()
            )));
        }
        check_magic_version(&hdr, REPLY_MAGIC, "reply")?;
        let status = u16::from_le_bytes([hdr[10], hdr[11]]);
        let msg_len = u32::from_le_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]) as usize;
        if msg_len > MAX_MESSAGE {
            return Err(Error::handshake(format!(
                "the producer's message claims {msg_len} bytes (at most {MAX_MESSAGE})"
            )));
        }
        let mut msg = vec![0u8; msg_len];
        read_rest(sock, &mut msg)?;
        match status {
            0 => Ok(()),
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
    with_timeout(sock, || {
        let mut frame = [0u8; OFFER_LEN];
        let fds = recv_frame(sock, &mut frame)?;
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
            BackendKind::Kernel | BackendKind::Poll => 1,
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
pub(crate) fn reply(sock: &UnixStream, outcome: Result<(), &Error>) -> Result<(), Error> {
    let msg = match outcome {
        Ok(()) => String::new(),
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
    frame.extend_from_slice(msg.as_bytes());
    send_frame(sock, &frame, &[])
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
fn recv_frame(sock: &UnixStream, buf: &mut [u8]) -> Result<Vec<OwnedFd>, Error> {
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
    read_rest(sock, &mut buf[msg.bytes..])?;
    Ok(fds)
}

fn read_rest(mut sock: &UnixStream, buf: &mut [u8]) -> Result<(), Error> {
    sock.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            Error::handshake("the peer hung up in the middle of its frame (truncated)")
        }
        _ => peer_error("receiving the handshake frame", e),
    })
}

fn peer_error(op: &str, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::handshake(format!(
            "{op}: the peer sent nothing for {} s",
            TIMEOUT.as_secs()
        )),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
            Error::handshake(format!("{op}: the peer hung up"))
        }
        _ => Error::handshake(format!("{op}: {e}")),
    }
}
