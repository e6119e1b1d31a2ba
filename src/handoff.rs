//! The handshake that hands a tripwire to a producer over a `UnixStream`.
//!
//! One frame each way, little-endian, fds in `SCM_RIGHTS`:
//!
//! ```text
//! offer (consumer -> producer), 32 bytes + fds:
//!   magic "MFDTWIRE" | version u16 | backend u16 | fd count u32 | region length u64
//!   | protocol [u8; 8] (from version 5: all zero for a plain tripwire, else
//!   the tag of the extra frame that follows the reply: "MFDTRING" for a ring)
//!   fds: Kernel [tripwire]; Doorbell [memfd: the region rounded up to a
//!        page, then the control page; up to version 3 a bell socket and a
//!        control memfd came apart]; Poll [memfd];
//!        Userfault, UserfaultAsync [memfd, the agent's channel (a unix
//!        seqpacket socket end; from version 3)]
//! reply (producer -> consumer), 24 bytes + message, never fds (from
//! version 3; before, Userfault sent its uffd, which handed the consumer
//! the producer's address space):
//!   magic "MFDTWACK" | version u16 | status u16 | message length u32
//!   | protocol [u8; 8]
//!   status: 0 ok, 1 error (the message says why), 2 wrong protocol (from
//!   version 5: the producer expected the protocol in the last field, all
//!   zero for a plain tripwire; up to version 4 that field was an address,
//!   always 0, ignored)
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
//! [`Error::Handshake`] and every fd received is closed. An offer of
//! another protocol than the producer's call expects (a ring's `share`
//! against `Producer::connect`, a plain `share` against `Sender::connect`)
//! is refused at once with status 2, and both sides fail naming what was
//! offered and what was expected. After the handshake the socket carries
//! nothing but, on Doorbell, the producer's rings (one byte each), and the
//! producer's goodbye (one byte, `0xff`, sent when its `Producer` is
//! dropped: see `sys::bell`): its hang-up is how each side learns that the
//! other is gone, the goodbye before it whether that was a clean close.
//!
//! One core, thin drivers: each frame moves by a non-blocking step
//! (`MSG_DONTWAIT`; what was sent or received so far is kept) and the
//! exchanges are written once, as `async fn`s over [`Wait`], the driver's
//! way of sleeping until the socket is ready or the exchange's deadline
//! (data: one per exchange, so a peer that trickles bytes cannot stretch
//! it) has passed. [`Blocking`] sleeps in `poll(2)` (`sys::wait`), run by
//! [`block_on`]; `handoff/tokio.rs` waits on the tokio reactor and a tokio
//! timer. Waiting never depends on the socket's own settings, which the
//! caller (or the peer, through a shared file description) chooses, so a
//! non-blocking socket works as well as a blocking one, and `O_NONBLOCK`
//! and `SO_RCVTIMEO` are left as they were.
//!
//! The parsing of each frame is pure (`parse_*`, no I/O): the cargo-fuzz
//! targets in `fuzz/` call it through `memfd_tripwire::__fuzz`.

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::{BackendKind, Error};

#[cfg(feature = "tokio")]
mod tokio;
#[cfg(feature = "tokio")]
pub(crate) use self::tokio::Reactor;

pub(crate) const OFFER_MAGIC: [u8; 8] = *b"MFDTWIRE";
pub(crate) const REPLY_MAGIC: [u8; 8] = *b"MFDTWACK";
/// 2: the Doorbell offer's second fd is a unix socket end, no longer an
/// eventfd. 3: a Userfault(Async) offer carries the agent's channel, and no
/// reply carries fds (the producer's uffd never leaves it). 4: the Doorbell
/// offer is one memfd (region, then control page), and the producer rings
/// through the handshake socket. 5: the offer names its protocol (plain or
/// the extra frame's tag) and a producer that expected another refuses it
/// with status 2, naming its own.
pub(crate) const VERSION: u16 = 5;
pub(crate) const OFFER_LEN: usize = 32;
pub(crate) const REPLY_LEN: usize = 24;
pub(crate) const MAX_MESSAGE: usize = 4096;
/// The most fds any frame carries; the receive buffer fits these (plus
/// alignment slack): many more arrive as `MSG_CTRUNC`, a few more are caught
/// by the fd-count check. Either way every fd received is closed.
const MAX_FDS: usize = 4;
/// How long one side waits for the other's frame.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// A reply's status: attached.
pub(crate) const STATUS_OK: u16 = 0;
/// A reply's status: the producer could not attach; the message says why.
pub(crate) const STATUS_ERROR: u16 = 1;
/// A reply's status: the offer was of another protocol than the one in the
/// reply's last field.
pub(crate) const STATUS_PROTOCOL: u16 = 2;

/// The tag of a ring's extra frame, named as such in errors.
pub(crate) const RING_TAG: [u8; 8] = *b"MFDTRING";
/// The tag of a ring of byte frames' extra frame (the ring's fds, another
/// protocol), named as such in errors.
pub(crate) const FRAMES_TAG: [u8; 8] = *b"MFDTFRMS";

const RECEIVING: &str = "receiving the handshake frame";
const SENDING: &str = "sending the handshake frame";

/// What a handshake hands over, as its offer names it: a plain tripwire
/// (`share` / `Producer::connect`), or a tripwire and then an extra frame
/// tagged so (`share_with_fds` / `Producer::connect_with_fds`; the ring's
/// tag is `MFDTRING`). On the wire, the tag or all zero bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Plain,
    Tagged([u8; 8]),
}

impl Protocol {
    /// The protocol of an extra frame tagged `tag`; an all-zero tag (which
    /// the wire reads as "plain") is refused.
    pub(crate) fn tagged(tag: [u8; 8]) -> Result<Protocol, Error> {
        if tag == [0; 8] {
            return Err(Error::handshake(
                "a second frame's tag must not be all zero bytes (the handshake reads that \
                 as a plain tripwire): choose eight bytes that name your protocol",
            ));
        }
        Ok(Protocol::Tagged(tag))
    }

    /// The offer's (or a status-2 reply's) last 8 bytes.
    pub(crate) fn to_wire(self) -> [u8; 8] {
        match self {
            Protocol::Plain => [0; 8],
            Protocol::Tagged(tag) => tag,
        }
    }

    pub(crate) fn from_wire(field: [u8; 8]) -> Protocol {
        if field == [0; 8] {
            Protocol::Plain
        } else {
            Protocol::Tagged(field)
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Plain => f.write_str("a plain tripwire (Tripwire::share, Producer::connect)"),
            Protocol::Tagged(RING_TAG) => f.write_str(
                "a ring (tag \"MFDTRING\": ring::Receiver::share, ring::Sender::connect)",
            ),
            Protocol::Tagged(FRAMES_TAG) => f.write_str(
                "byte frames (tag \"MFDTFRMS\": FrameReceiver::share, FrameSender::connect)",
            ),
            Protocol::Tagged(tag) => write!(
                f,
                "a tripwire with a second frame tagged {:?} (share_with_fds, connect_with_fds)",
                String::from_utf8_lossy(tag)
            ),
        }
    }
}

/// What a producer was offered.
#[derive(Debug)]
pub(crate) struct Offer {
    pub(crate) kind: BackendKind,
    pub(crate) len: usize,
    pub(crate) fds: Vec<OwnedFd>,
}

// ---------------------------------------------------------------------------
// The frames, encoded and parsed: pure functions of their bytes.

/// The fields of an offer's header that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OfferHeader {
    pub(crate) kind: BackendKind,
    /// At least 1.
    pub(crate) len: usize,
    /// What the offer is for (checked by the producer against what it
    /// expects, not here).
    pub(crate) protocol: Protocol,
}

/// The fields of a reply's header that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplyHeader {
    /// 0 ok, 1 error, 2 wrong protocol; anything else is refused by
    /// [`reply_verdict`].
    pub(crate) status: u16,
    /// Bytes of message after the header: at most [`MAX_MESSAGE`].
    pub(crate) msg_len: usize,
    /// Status 2: the protocol the producer expected.
    pub(crate) protocol: Protocol,
}

/// How many fds an offer for `kind` carries.
pub(crate) fn offer_fds(kind: BackendKind) -> usize {
    match kind {
        BackendKind::Kernel | BackendKind::Poll | BackendKind::Doorbell => 1,
        BackendKind::Userfault | BackendKind::UserfaultAsync => 2,
    }
}

pub(crate) fn encode_offer(
    kind: BackendKind,
    len: usize,
    fds: usize,
    protocol: Protocol,
) -> [u8; OFFER_LEN] {
    let mut frame = [0u8; OFFER_LEN];
    frame[..8].copy_from_slice(&OFFER_MAGIC);
    frame[8..10].copy_from_slice(&VERSION.to_le_bytes());
    frame[10..12].copy_from_slice(&kind.wire_code().to_le_bytes());
    frame[12..16].copy_from_slice(&(fds as u32).to_le_bytes());
    frame[16..24].copy_from_slice(&(len as u64).to_le_bytes());
    frame[24..32].copy_from_slice(&protocol.to_wire());
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
    Ok(OfferHeader {
        kind,
        len,
        protocol: Protocol::from_wire(tag_at(frame, 24)),
    })
}

pub(crate) fn encode_reply(status: u16, msg_len: usize, protocol: Protocol) -> [u8; REPLY_LEN] {
    let mut hdr = [0u8; REPLY_LEN];
    hdr[..8].copy_from_slice(&REPLY_MAGIC);
    hdr[8..10].copy_from_slice(&VERSION.to_le_bytes());
    hdr[10..12].copy_from_slice(&status.to_le_bytes());
    hdr[12..16].copy_from_slice(&(msg_len as u32).to_le_bytes());
    hdr[16..24].copy_from_slice(&protocol.to_wire());
    hdr
}

/// Checks a reply's header; the message that follows is up to the caller
/// (and then [`reply_verdict`]).
pub(crate) fn parse_reply(hdr: &[u8; REPLY_LEN]) -> Result<ReplyHeader, Error> {
    check_magic_version(hdr, REPLY_MAGIC, "reply")?;
    let status = u16_at(hdr, 10);
    let msg_len = u32_at(hdr, 12);
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
        protocol: Protocol::from_wire(tag_at(hdr, 16)),
    })
}

/// What a reply with `status` and message `msg` says (status 2, a wrong
/// protocol, is told apart by the caller, which knows what it offered).
pub(crate) fn reply_verdict(status: u16, msg: &[u8]) -> Result<(), Error> {
    match status {
        STATUS_OK => Ok(()),
        STATUS_ERROR => Err(Error::handshake(format!(
            "the producer could not attach: {}",
            String::from_utf8_lossy(msg)
        ))),
        STATUS_PROTOCOL => Err(Error::handshake(
            "wrong protocol: the producer expected another",
        )),
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

fn tag_at(b: &[u8], at: usize) -> [u8; 8] {
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&b[at..at + 8]);
    tag
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(le)
}

// ---------------------------------------------------------------------------
// The exchanges: written once, over a `Wait` (how a side waits between two
// non-blocking steps): `Blocking` (poll(2)), or the tokio reactor
// (`handoff/tokio.rs`).

/// Consumer side: sends the offer of `protocol`, waits for the producer's
/// verdict; returns the fds the reply carried (none expected: the caller
/// checks and closes them).
pub(crate) async fn offer<W: Wait>(
    w: &mut W,
    kind: BackendKind,
    len: usize,
    protocol: Protocol,
    fds: &[BorrowedFd<'_>],
) -> Result<Vec<OwnedFd>, Error> {
    let deadline = Instant::now() + TIMEOUT;
    let frame = encode_offer(kind, len, fds.len(), protocol);
    send_frame(w, &frame, fds, deadline).await?;
    recv_reply(w, deadline, protocol).await
}

/// Producer side: receives and checks the offer's frame (not yet its fds'
/// contents: that is the backend's job, see `Producer::connect`). An offer
/// of another protocol than `expected` is refused with a reply that names
/// both; any other bad offer with the reason (best effort: a consumer that
/// hung up gets nothing). Either way the error comes back.
pub(crate) async fn receive_offer<W: Wait>(w: &mut W, expected: Protocol) -> Result<Offer, Error> {
    let deadline = Instant::now() + TIMEOUT;
    let mut frame = [0u8; OFFER_LEN];
    let received = match recv_frame(w, &mut frame, deadline).await {
        Ok(fds) => parse_offer(&frame, fds.len()).map(|hdr| (hdr, fds)),
        Err(e) => Err(e),
    };
    let e = match received {
        Ok((hdr, fds)) if hdr.protocol == expected => {
            return Ok(Offer {
                kind: hdr.kind,
                len: hdr.len,
                fds,
            });
        }
        Ok((hdr, _fds)) => {
            let _ = send_reply(w, Verdict::Protocol(expected)).await;
            return Err(wrong_protocol(hdr.protocol, expected, false));
        }
        Err(e) => e,
    };
    let _ = send_reply(w, Verdict::Refused(&e)).await;
    Err(e)
}

/// Producer side: tells the consumer whether attaching worked.
pub(crate) async fn reply<W: Wait>(w: &mut W, outcome: Result<(), &Error>) -> Result<(), Error> {
    match outcome {
        Ok(()) => send_reply(w, Verdict::Ok).await,
        Err(e) => send_reply(w, Verdict::Refused(e)).await,
    }
}

/// Consumer side of an extra frame (magic, version, fd count; fds): sends
/// it and waits for the producer's verdict (a reply frame, as above).
pub(crate) async fn offer_extra<W: Wait>(
    w: &mut W,
    magic: [u8; 8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), Error> {
    let deadline = Instant::now() + TIMEOUT;
    send_frame(w, &encode_extra(magic, fds.len()), fds, deadline).await?;
    let fds = recv_reply(w, deadline, Protocol::Tagged(magic)).await?;
    if !fds.is_empty() {
        return Err(Error::handshake(
            "the peer's reply carried unexpected fds (closed)",
        ));
    }
    Ok(())
}

/// Producer side of an extra frame: its fds, exactly `want` of them.
pub(crate) async fn receive_extra<W: Wait>(
    w: &mut W,
    magic: [u8; 8],
    want: usize,
) -> Result<Vec<OwnedFd>, Error> {
    let deadline = Instant::now() + TIMEOUT;
    let mut frame = [0u8; EXTRA_LEN];
    let fds = recv_frame(w, &mut frame, deadline).await?;
    parse_extra(&frame, magic, fds.len(), want)?;
    Ok(fds)
}

/// What a producer's reply says: yes, or why not.
#[derive(Debug, Clone, Copy)]
enum Verdict<'a> {
    Ok,
    Refused(&'a Error),
    /// The offer was of another protocol than this one.
    Protocol(Protocol),
}

/// The error of a wrong protocol, as the side that offered
/// (`offering`) or the one that expected says it.
fn wrong_protocol(offered: Protocol, expected: Protocol, offering: bool) -> Error {
    let (us_offered, us_expected) = if offering {
        ("this side offered", "the peer expected")
    } else {
        ("the peer offered", "this side expected")
    };
    Error::handshake(format!(
        "wrong protocol: {us_offered} {offered}, {us_expected} {expected}: both sides \
         must use the same pair of calls"
    ))
}

/// Sends a reply that says `verdict`.
async fn send_reply<W: Wait>(w: &mut W, verdict: Verdict<'_>) -> Result<(), Error> {
    let deadline = Instant::now() + TIMEOUT;
    let (status, protocol, mut msg) = match verdict {
        Verdict::Ok => (STATUS_OK, Protocol::Plain, String::new()),
        Verdict::Refused(e) => (STATUS_ERROR, Protocol::Plain, e.to_string()),
        Verdict::Protocol(expected) => (STATUS_PROTOCOL, expected, String::new()),
    };
    while msg.len() > MAX_MESSAGE {
        msg.pop();
    }
    let mut frame = Vec::with_capacity(REPLY_LEN + msg.len());
    frame.extend_from_slice(&encode_reply(status, msg.len(), protocol));
    frame.extend_from_slice(msg.as_bytes());
    send_frame(w, &frame, &[], deadline).await
}

/// Receives a whole reply (header, message) before `deadline` to an offer
/// of `offered`: its fds if its status is 0, else the producer's reason.
async fn recv_reply<W: Wait>(
    w: &mut W,
    deadline: Instant,
    offered: Protocol,
) -> Result<Vec<OwnedFd>, Error> {
    let mut hdr = [0u8; REPLY_LEN];
    let fds = recv_frame(w, &mut hdr, deadline).await?;
    let hdr = parse_reply(&hdr)?;
    let mut msg = vec![0u8; hdr.msg_len];
    read_rest(w, &mut msg, deadline).await?;
    if hdr.status == STATUS_PROTOCOL {
        return Err(wrong_protocol(offered, hdr.protocol, true));
    }
    reply_verdict(hdr.status, &msg)?;
    Ok(fds)
}

// ---------------------------------------------------------------------------
// The I/O: a non-blocking step (MSG_DONTWAIT) that keeps its progress, and
// a wait for readiness between steps, bounded by the deadline.

/// What a step that could not finish waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Read,
    Write,
}

/// How a side waits between two steps of its handshake. The exchanges
/// above are written once over it; each driver says how it sleeps.
pub(crate) trait Wait {
    /// The handshake socket.
    fn sock(&self) -> &UnixStream;
    /// Waits until the socket may be ready for `need` (or has hung up or
    /// failed: the next step says which): `false` once `deadline` has
    /// passed.
    fn ready(
        &mut self,
        need: Need,
        deadline: Instant,
    ) -> impl std::future::Future<Output = io::Result<bool>> + Send;
    /// The socket, once the handshake is over.
    fn into_stream(self) -> UnixStream;
}

/// The blocking driver: each wait is a `poll(2)` with the time left before
/// the deadline (`sys::wait`). Its futures never return `Pending`: run
/// them with [`block_on`].
#[derive(Debug)]
pub(crate) struct Blocking(pub(crate) UnixStream);

impl Wait for Blocking {
    fn sock(&self) -> &UnixStream {
        &self.0
    }

    async fn ready(&mut self, need: Need, deadline: Instant) -> io::Result<bool> {
        let events = match need {
            Need::Read => PollFlags::IN,
            Need::Write => PollFlags::OUT,
        };
        crate::sys::wait::ready(self.0.as_fd(), events, Some(deadline))
    }

    fn into_stream(self) -> UnixStream {
        self.0
    }
}

/// Runs an exchange over [`Blocking`] to its end: every wait in it blocks
/// in `poll(2)` and then returns, so one poll of the future finishes it.
pub(crate) fn block_on<F: std::future::Future>(exchange: F) -> F::Output {
    let mut exchange = std::pin::pin!(exchange);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        // Never `Pending` over `Blocking`; were it so, polling again is
        // still correct (each step retries its I/O), only not efficient.
        if let Poll::Ready(out) = exchange.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// Sends all of `frame`, `fds` with its first bytes, before `deadline`.
async fn send_frame<W: Wait>(
    w: &mut W,
    frame: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Instant,
) -> Result<(), Error> {
    let mut sent = 0;
    while !send_step(w.sock(), frame, &mut sent, fds)? {
        wait(w, Need::Write, deadline, SENDING).await?;
    }
    Ok(())
}

/// Sends what the socket takes now of `frame[*sent..]` (the fds go with
/// the first bytes), never waiting: `true` once every byte went.
fn send_step(
    sock: &UnixStream,
    frame: &[u8],
    sent: &mut usize,
    fds: &[BorrowedFd<'_>],
) -> Result<bool, Error> {
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    while *sent < frame.len() {
        let result = if *sent == 0 {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(Error::handshake("too many fds for one frame"));
            }
            rustix::net::sendmsg(sock, &[IoSlice::new(frame)], &mut control, flags)
        } else {
            // The fds went with the first bytes.
            rustix::net::send(sock, &frame[*sent..], flags)
        };
        match result {
            Ok(0) => {
                return Err(Error::handshake(format!(
                    "sent {sent} of {} frame bytes",
                    frame.len()
                )));
            }
            Ok(n) => *sent += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(false),
            Err(e) => return Err(peer_error(SENDING, e.into())),
        }
    }
    Ok(true)
}

/// Receives exactly `buf.len()` bytes before `deadline`; the fds come with
/// the first segment.
async fn recv_frame<W: Wait>(
    w: &mut W,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<Vec<OwnedFd>, Error> {
    let (got, fds) = loop {
        match recv_first(w.sock(), buf)? {
            Some(first) => break first,
            None => wait(w, Need::Read, deadline, RECEIVING).await?,
        }
    };
    read_rest(w, &mut buf[got..], deadline).await?;
    Ok(fds)
}

/// The first segment of a frame, if one is there now: how many bytes, and
/// the fds that came with them (all closed on error).
fn recv_first(sock: &UnixStream, buf: &mut [u8]) -> Result<Option<(usize, Vec<OwnedFd>)>, Error> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        ) {
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(None),
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
    Ok(Some((msg.bytes, fds)))
}

/// Fills `buf` before `deadline`.
async fn read_rest<W: Wait>(w: &mut W, buf: &mut [u8], deadline: Instant) -> Result<(), Error> {
    let mut got = 0;
    while !read_step(w.sock(), buf, &mut got)? {
        wait(w, Need::Read, deadline, RECEIVING).await?;
    }
    Ok(())
}

/// Reads what is there now into `buf[*got..]`, never waiting: `true` once
/// `buf` is full.
fn read_step(sock: &UnixStream, buf: &mut [u8], got: &mut usize) -> Result<bool, Error> {
    while *got < buf.len() {
        match rustix::net::recv(sock, &mut buf[*got..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => {
                return Err(Error::handshake(
                    "the peer hung up in the middle of its frame (truncated)",
                ));
            }
            Ok((n, _)) => *got += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(false),
            Err(e) => return Err(peer_error(RECEIVING, e.into())),
        }
    }
    Ok(true)
}

/// Waits until the socket is ready for `need`, or has hung up or failed
/// (the step that follows says which), until `deadline`: after it, the
/// handshake's time-out.
async fn wait<W: Wait>(w: &mut W, need: Need, deadline: Instant, op: &str) -> Result<(), Error> {
    match w.ready(need, deadline).await {
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
            for protocol in [Protocol::Plain, Protocol::Tagged(RING_TAG)] {
                let frame = encode_offer(kind, 4096, n, protocol);
                assert_eq!(
                    parse_offer(&frame, n).unwrap(),
                    OfferHeader {
                        kind,
                        len: 4096,
                        protocol
                    }
                );
            }
        }
    }

    #[test]
    fn a_reply_round_trips_and_its_message_is_bounded() {
        let hdr = encode_reply(1, MAX_MESSAGE, Protocol::Tagged(*b"TESTTEST"));
        let parsed = parse_reply(&hdr).unwrap();
        assert_eq!(
            parsed,
            ReplyHeader {
                status: 1,
                msg_len: MAX_MESSAGE,
                protocol: Protocol::Tagged(*b"TESTTEST")
            }
        );
        let err = parse_reply(&encode_reply(0, MAX_MESSAGE + 1, Protocol::Plain)).unwrap_err();
        assert!(
            err.to_string().contains("4097 bytes (at most 4096)"),
            "{err}"
        );
        assert!(reply_verdict(0, b"").is_ok());
        let err = reply_verdict(1, b"no").unwrap_err();
        assert!(err.to_string().contains("could not attach: no"), "{err}");
        let err = reply_verdict(2, b"").unwrap_err();
        assert!(err.to_string().contains("wrong protocol"), "{err}");
        let err = reply_verdict(3, b"").unwrap_err();
        assert!(err.to_string().contains("unknown reply status 3"), "{err}");
    }

    /// A refusal's reason longer than a reply may carry is cut to
    /// `MAX_MESSAGE` bytes; one of exactly `MAX_MESSAGE` goes whole; the
    /// other side reads either as the producer's reason.
    #[test]
    fn a_long_refusal_is_cut_to_the_largest_message() {
        let prefix = Error::handshake(String::new()).to_string().len();
        for (reason, want) in [
            (MAX_MESSAGE - prefix, MAX_MESSAGE),
            (MAX_MESSAGE * 2, MAX_MESSAGE),
        ] {
            let refusal = Error::handshake("r".repeat(reason));
            let (a, b) = UnixStream::pair().unwrap();
            block_on(send_reply(&mut Blocking(a), Verdict::Refused(&refusal))).unwrap();
            let deadline = Instant::now() + TIMEOUT;
            let got = block_on(recv_reply(&mut Blocking(b), deadline, Protocol::Plain));
            let text = got.unwrap_err().to_string();
            let (_, msg) = text.split_once("could not attach: ").expect("the reason");
            assert_eq!(msg.len(), want, "a reason of {reason} bytes");
        }
    }

    /// Fds that come with a frame are close-on-exec (a child the receiver
    /// spawns does not inherit them), and an empty socket is "nothing yet",
    /// not a wait.
    #[test]
    fn received_fds_are_close_on_exec() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 8];
        assert!(recv_first(&b, &mut buf).unwrap().is_none(), "empty");
        let (x, _y) = UnixStream::pair().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        block_on(send_frame(
            &mut Blocking(a),
            b"hello",
            &[x.as_fd()],
            deadline,
        ))
        .unwrap();
        let (n, fds) = recv_first(&b, &mut buf).unwrap().expect("a frame");
        assert_eq!((n, fds.len()), (5, 1));
        let flags = rustix::io::fcntl_getfd(&fds[0]).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC), "{flags:?}");
    }

    #[test]
    fn an_extra_frame_round_trips() {
        let frame = encode_extra(*b"TESTTEST", 3);
        assert!(parse_extra(&frame, *b"TESTTEST", 3, 3).is_ok());
        assert!(parse_extra(&frame, *b"TESTTEST", 2, 3).is_err());
        assert!(parse_extra(&frame, *b"TESTTEST", 3, 2).is_err());
        assert!(parse_extra(&frame, OFFER_MAGIC, 3, 3).is_err());
    }

    #[test]
    fn a_protocol_names_itself_and_zero_is_plain() {
        assert_eq!(Protocol::from_wire([0; 8]), Protocol::Plain);
        assert!(Protocol::tagged([0; 8]).is_err());
        assert_eq!(
            Protocol::from_wire(Protocol::tagged(RING_TAG).unwrap().to_wire()),
            Protocol::Tagged(RING_TAG)
        );
        assert!(Protocol::Plain.to_string().contains("plain tripwire"));
        assert!(Protocol::Tagged(RING_TAG).to_string().contains("a ring"));
        assert!(
            Protocol::Tagged(*b"MYDEVICE")
                .to_string()
                .contains("\"MYDEVICE\"")
        );
    }
}
