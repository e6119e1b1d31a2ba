//! Byte frames' alternatives (#24): the same variable-size frames as
//! `frames.rs` between two pinned processes, through what a Rust user would
//! pick instead of this crate's `ring::frames`:
//!
//! - `unix-stream`: a `UnixStream::pair()`, each frame an 8-byte
//!   little-endian length and then its payload, written through a
//!   `BufWriter` of 64 KiB (flushed at the end) and read through a
//!   `BufReader` of 64 KiB with `read_exact` of the length, then of the
//!   payload into one reused `Vec<u8>`;
//! - `shmem-ipc`: shmem-ipc 0.3's memfd byte ring
//!   (`sharedring::{Sender, Receiver}<u8>`, `CAP` bytes) carrying the same
//!   length-prefixed frames as a byte stream (a frame may wrap), through
//!   `send_raw`/`receive_raw`; each side blocks on the crate's eventfds
//!   (`block_until_writable`/`block_until_readable`) when the ring is full
//!   or empty. The producer copies the length and the payload in one
//!   `send_raw` when they fit before the ring's end, and the consumer takes
//!   as much of a frame as one `receive_raw` offers: one update of the
//!   ring's shared count per frame and side, the crate's best case;
//! - `ipc-channel`: servo's ipc-channel 0.23 bytes channel
//!   (`ipc::bytes_channel()`), one `IpcBytesSender::send(&frame)` and one
//!   `IpcBytesReceiver::recv()` (a fresh `Vec<u8>`) per frame. On Linux a
//!   `SOCK_SEQPACKET` socket pair: a frame up to the socket's send buffer
//!   (less the crate's reserve for fds, about 207 KiB with the default
//!   `net.core.wmem_default`) goes in one packet; a larger one goes as the
//!   crate sends it, in fragments over a socket pair made for that frame.
//!
//! # Harness
//!
//! As `frames.rs`'s: the binary re-executes itself as the producer (env
//! `MEMFD_TRIPWIRE_BENCH_ROLE=frames-peers-peer`, the case in
//! `MEMFD_TRIPWIRE_FRAMES_PEERS_CASE`), the consumer pinned to CPU0 and the
//! producer to CPU1. The child's stdin is a Unix stream socket: the data
//! stream itself (`unix-stream`), or the socket over which the consumer
//! passes the ring's memfd and eventfds (`shmem-ipc`, `SCM_RIGHTS`);
//! `ipc-channel` connects through an `IpcOneShotServer` (its name in
//! `MEMFD_TRIPWIRE_FRAMES_PEERS_IPC`), over which the producer sends the
//! receiving end of a bytes channel it made. The child's stdout is a
//! control socket: once attached it says ready; the parent starts its
//! clock, says go, and receives `n` frames (as many as make `BYTES` of
//! payload), checking each one's length and sequence number (its first 8
//! bytes); the clock stops at the last frame. Then, outside the clock, the
//! stream must end (EOF for `unix-stream`, `Disconnected` for
//! `ipc-channel`, an empty ring once the producer has exited for
//! `shmem-ipc`) and the producer must exit cleanly.
//!
//! # Output
//!
//! One line per case on stdout, as `frames.rs`'s (so that the same scripts
//! read both; `spin_us`, `rearms` and `sleeps` have no meaning here, `cap`
//! is the shmem-ipc ring's and is printed for every mechanism):
//!
//! ```text
//! FRAMES backend=unix-stream size=64 pair=blocking:blocking spin_us=- cap=4194304 n=.. secs=.. mframes=.. gbytes=.. rearms=0 sleeps=0
//! ```
//!
//! `gbytes` is payload GB/s (10^9 bytes), `mframes` M frames/s.
//!
//! # Knobs (env)
//!
//! | env | default | meaning |
//! |---|---|---|
//! | `PEERS` | `unix-stream shmem-ipc ipc-channel` | mechanisms |
//! | `SIZES` | `64 1024 65536` | payload bytes per frame |
//! | `BYTES` | 1073741824 | payload per case (n = BYTES / size, at least 1000) |
//! | `CAP` | 4194304 | the shmem-ipc ring's capacity, bytes |
//! | `CONSUMER_CPU`, `PRODUCER_CPU` | 0, 1 | pinning |
//!
//! Run: `cargo bench -p memfd-tripwire-bench --bench frames_peers`.

mod common;
use common::{ROLE_ENV, env_num, env_words, pin};

use std::io::{BufReader, BufWriter, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use ipc_channel::IpcError;
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcOneShotServer, IpcSender};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use shmem_ipc::sharedring::{Receiver as RingReceiver, Sender as RingSender};

const ROLE: &str = "frames-peers-peer";
const CASE_ENV: &str = "MEMFD_TRIPWIRE_FRAMES_PEERS_CASE";
const IPC_NAME_ENV: &str = "MEMFD_TRIPWIRE_FRAMES_PEERS_IPC";
/// The `BufWriter`'s and `BufReader`'s buffer (`unix-stream`).
const STREAM_BUF: usize = 64 << 10;
/// A length prefix beyond this is a corrupt stream, not a frame to allocate.
const MAX_FRAME: usize = 1 << 30;

type BoxError = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    common::run_peer_or_cases("frames_peers", ROLE, peer_main, consumer_main)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mech {
    UnixStream,
    ShmemIpc,
    IpcChannel,
}

impl Mech {
    fn parse(name: &str) -> Result<Mech, BoxError> {
        Ok(match name {
            "unix-stream" => Mech::UnixStream,
            "shmem-ipc" => Mech::ShmemIpc,
            "ipc-channel" => Mech::IpcChannel,
            other => return Err(format!("unknown mechanism {other:?}").into()),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Mech::UnixStream => "unix-stream",
            Mech::ShmemIpc => "shmem-ipc",
            Mech::IpcChannel => "ipc-channel",
        }
    }
}

/// One case, as its line names it (and `CASE_ENV` carries it).
#[derive(Debug, Clone)]
struct Case {
    mech: Mech,
    size: usize,
    cap: usize,
    n: u64,
}

impl Case {
    fn line(&self) -> String {
        format!(
            "backend={} size={} pair=blocking:blocking spin_us=- cap={} n={}",
            self.mech.name(),
            self.size,
            self.cap,
            self.n
        )
    }

    fn parse(line: &str) -> Result<Case, BoxError> {
        let get = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                .ok_or_else(|| format!("case {line:?} lacks {k}"))
        };
        Ok(Case {
            mech: Mech::parse(get("backend")?)?,
            size: get("size")?.parse()?,
            cap: get("cap")?.parse()?,
            n: get("n")?.parse()?,
        })
    }
}

fn cases() -> Result<Vec<Case>, BoxError> {
    let bytes: u64 = env_num("BYTES", 1 << 30)?;
    let cap: usize = env_num("CAP", 4 << 20)?;
    let mut cases = Vec::new();
    for mech in env_words("PEERS", "unix-stream shmem-ipc ipc-channel") {
        for size in env_words("SIZES", "64 1024 65536") {
            let size: usize = size.parse()?;
            if size > MAX_FRAME {
                return Err(format!("size {size} above {MAX_FRAME}").into());
            }
            cases.push(Case {
                mech: Mech::parse(&mech)?,
                size,
                cap,
                n: (bytes / size.max(1) as u64).max(1000),
            });
        }
    }
    Ok(cases)
}

fn consumer_main() -> Result<bool, BoxError> {
    common::print_cases("frames_peers", "FRAMES", cases()?, Case::line, tput)
}

/// The consumer's end of a case's mechanism, set up before the producer
/// starts (`ipc-channel`'s receiver arrives after: `accept`).
enum Rx {
    Stream(BufReader<UnixStream>),
    Ring(RingReceiver<u8>),
    Ipc(
        Option<IpcOneShotServer<IpcBytesReceiver>>,
        Option<IpcBytesReceiver>,
    ),
}

fn tput(case: &Case) -> Result<String, BoxError> {
    let (ours, theirs) = UnixStream::pair()?;
    let (mut ctl, ctl_theirs) = UnixStream::pair()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(ROLE_ENV, ROLE)
        .env(CASE_ENV, case.line())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(ctl_theirs)));
    let mut rx = match case.mech {
        Mech::UnixStream => Rx::Stream(BufReader::with_capacity(STREAM_BUF, ours.try_clone()?)),
        Mech::ShmemIpc => Rx::Ring(RingReceiver::new(case.cap)?),
        Mech::IpcChannel => {
            let (server, name) = IpcOneShotServer::new()?;
            cmd.env(IPC_NAME_ENV, name);
            Rx::Ipc(Some(server), None)
        }
    };
    let mut child = cmd.spawn()?;
    // The child's ends of the sockets, which the Command holds: closed
    // here, so that the child's exit ends our reads.
    drop(cmd);
    let outcome = (|| {
        if let Rx::Ring(ring) = &rx {
            let fds = [
                ring.memfd().as_file().as_fd(),
                ring.empty_signal().as_fd(),
                ring.full_signal().as_fd(),
            ];
            send_fds(&ours, &fds)?;
        }
        drop(ours);
        let mut byte = [0u8];
        ctl.read_exact(&mut byte)?; // the producer is attached and ready
        if let Rx::Ipc(server, receiver) = &mut rx {
            // The producer connected and sent its receiver before it said
            // ready: this does not wait.
            let (_bootstrap, bytes) = server.take().ok_or("no server")?.accept()?;
            *receiver = Some(bytes);
        }
        let start = Instant::now();
        ctl.write_all(b"g")?;
        let mut buf = Vec::new();
        match &mut rx {
            Rx::Stream(r) => receive(case, &mut buf, |buf| stream_read_frame(r, buf))?,
            Rx::Ring(r) => receive(case, &mut buf, |buf| ring_read_frame(r, buf))?,
            Rx::Ipc(_, r) => {
                let r = r.as_ref().ok_or("no receiver")?;
                receive(case, &mut buf, |buf| {
                    *buf = r.recv()?;
                    Ok(())
                })?
            }
        }
        let took = start.elapsed();
        // After the clock: the stream ends here, the producer exits cleanly.
        match &mut rx {
            Rx::Stream(r) => {
                if r.read(&mut byte)? != 0 {
                    return Err(format!("more than {} frames", case.n).into());
                }
            }
            Rx::Ipc(_, r) => match r.as_ref().ok_or("no receiver")?.recv() {
                Err(IpcError::Disconnected) => {}
                Ok(_) => return Err(format!("more than {} frames", case.n).into()),
                Err(e) => return Err(e.into()),
            },
            Rx::Ring(_) => {}
        }
        wait_ok(&mut child)?;
        if let Rx::Ring(r) = &mut rx {
            let left = r.receiver_mut().read_count()?;
            if left != 0 {
                return Err(format!("{left} bytes after {} frames", case.n).into());
            }
        }
        Ok::<_, BoxError>(took)
    })();
    let took = match outcome {
        Ok(took) => took,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let secs = took.as_secs_f64();
    Ok(format!(
        "secs={secs:.3} mframes={:.2} gbytes={:.2} rearms=0 sleeps=0",
        case.n as f64 / secs / 1e6,
        case.n as f64 * case.size as f64 / secs / 1e9,
    ))
}

fn wait_ok(child: &mut Child) -> Result<(), BoxError> {
    // The producer has sent everything; it exits at once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                return Err(format!("the peer failed ({status})").into());
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the peer did not exit".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Receives `case.n` frames into `buf` with `next`, checking each.
fn receive(
    case: &Case,
    buf: &mut Vec<u8>,
    mut next: impl FnMut(&mut Vec<u8>) -> Result<(), BoxError>,
) -> Result<(), BoxError> {
    for seq in 0..case.n {
        next(buf)?;
        check(case, seq, buf)?;
    }
    Ok(())
}

/// Frame `seq` arrived whole: its length, and its sequence number in its
/// first bytes.
fn check(case: &Case, seq: u64, buf: &[u8]) -> Result<(), BoxError> {
    let n = case.size.min(8);
    if buf.len() != case.size || buf[..n] != seq.to_le_bytes()[..n] {
        return Err(format!("frame {seq} arrived wrong ({} bytes)", buf.len()).into());
    }
    Ok(())
}

fn frame_len(prefix: [u8; 8]) -> Result<usize, BoxError> {
    let len = u64::from_le_bytes(prefix);
    match usize::try_from(len) {
        Ok(len) if len <= MAX_FRAME => Ok(len),
        _ => Err(format!("length prefix {len} above {MAX_FRAME}").into()),
    }
}

/// Sets `buf`'s length to `len` (no new bytes written when the frames keep
/// their size: the Vec is reused).
fn fit(buf: &mut Vec<u8>, len: usize) {
    if buf.len() != len {
        buf.resize(len, 0);
    }
}

fn stream_read_frame(r: &mut BufReader<UnixStream>, buf: &mut Vec<u8>) -> Result<(), BoxError> {
    let mut prefix = [0u8; 8];
    r.read_exact(&mut prefix)?;
    fit(buf, frame_len(prefix)?);
    r.read_exact(buf)?;
    Ok(())
}

/// One frame out of the ring: the length prefix and then the payload, as
/// much of them as each `receive_raw` offers (a frame may wrap), blocking
/// on the crate's eventfd while the ring is empty.
fn ring_read_frame(r: &mut RingReceiver<u8>, buf: &mut Vec<u8>) -> Result<(), BoxError> {
    let mut prefix = [0u8; 8];
    let mut have_prefix = 0;
    let mut len = None;
    let mut have = 0;
    loop {
        let mut bad = None;
        let mut took = 0;
        r.receive_raw(|p, avail| {
            let mut off = 0;
            if have_prefix < 8 {
                let k = (8 - have_prefix).min(avail);
                // SAFETY: `p` points at `avail` readable bytes of the ring,
                // ours until we return; `prefix` has room for `k`.
                unsafe { std::ptr::copy_nonoverlapping(p, prefix[have_prefix..].as_mut_ptr(), k) };
                have_prefix += k;
                off = k;
                if have_prefix == 8 {
                    match frame_len(prefix) {
                        Ok(l) => {
                            fit(buf, l);
                            len = Some(l);
                        }
                        Err(e) => {
                            bad = Some(e);
                            return off;
                        }
                    }
                }
            }
            if let Some(l) = len {
                let k = (l - have).min(avail - off);
                // SAFETY: as above, `off + k <= avail`; `buf` holds `l`
                // bytes, `have + k <= l`.
                unsafe { std::ptr::copy_nonoverlapping(p.add(off), buf[have..].as_mut_ptr(), k) };
                have += k;
                off += k;
            }
            took = off;
            off
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        if len == Some(have) {
            return Ok(());
        }
        if took == 0 {
            r.block_until_readable()?;
        }
    }
}

/// `parts` into the ring as one byte stream, as much as each `send_raw`
/// takes (a frame may wrap), blocking on the crate's eventfd while the ring
/// is full.
fn ring_write(tx: &mut RingSender<u8>, parts: &[&[u8]]) -> Result<(), BoxError> {
    let mut part = 0;
    let mut done = 0; // of parts[part]
    while part < parts.len() {
        let mut put = 0;
        tx.send_raw(|p, room| {
            while put < room && part < parts.len() {
                let src = &parts[part][done..];
                let k = src.len().min(room - put);
                // SAFETY: `p` points at `room` writable bytes of the ring,
                // ours until we return; `put + k <= room`.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p.add(put), k) };
                put += k;
                done += k;
                if done == parts[part].len() {
                    part += 1;
                    done = 0;
                }
            }
            put
        })?;
        if put == 0 && part < parts.len() {
            tx.block_until_writable()?;
        }
    }
    Ok(())
}

/// The ring's memfd, empty and full eventfds, to the producer.
fn send_fds(sock: &UnixStream, fds: &[BorrowedFd<'_>]) -> Result<(), BoxError> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err("no room for the fds".into());
    }
    let sent = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(b"f")],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != 1 {
        return Err("the fds' byte was not sent".into());
    }
    Ok(())
}

fn recv_fds(sock: &UnixStream) -> Result<Vec<OwnedFd>, BoxError> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8];
    let msg = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if msg.bytes != 1 || fds.len() != 3 {
        return Err(format!("got {} bytes and {} fds, not 1 and 3", msg.bytes, fds.len()).into());
    }
    Ok(fds)
}

fn peer_main() -> Result<(), BoxError> {
    let case = Case::parse(&std::env::var(CASE_ENV)?)?;
    pin(env_num("PRODUCER_CPU", 1)?)?;
    let sock = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut ctl = UnixStream::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let mut frame = vec![0xa5u8; case.size];
    let n = case.size.min(8);
    let prefix = (case.size as u64).to_le_bytes();
    let go = |ctl: &mut UnixStream| -> Result<(), BoxError> {
        ctl.write_all(b"r")?;
        let mut byte = [0u8];
        ctl.read_exact(&mut byte)?;
        Ok(())
    };
    match case.mech {
        Mech::UnixStream => {
            let mut w = BufWriter::with_capacity(STREAM_BUF, sock);
            go(&mut ctl)?;
            for seq in 0..case.n {
                frame[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
                w.write_all(&prefix)?;
                w.write_all(&frame)?;
            }
            w.flush()?;
        }
        Mech::ShmemIpc => {
            let mut fds = recv_fds(&sock)?.into_iter().map(std::fs::File::from);
            let (memfd, empty, full) = (
                fds.next().ok_or("no memfd")?,
                fds.next().ok_or("no empty eventfd")?,
                fds.next().ok_or("no full eventfd")?,
            );
            let mut tx = RingSender::<u8>::open(case.cap, memfd, empty, full)?;
            go(&mut ctl)?;
            for seq in 0..case.n {
                frame[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
                ring_write(&mut tx, &[&prefix, &frame])?;
            }
        }
        Mech::IpcChannel => {
            let name = std::env::var(IPC_NAME_ENV)?;
            let (tx, rx) = ipc::bytes_channel()?;
            IpcSender::<IpcBytesReceiver>::connect(name)?.send(rx)?;
            go(&mut ctl)?;
            for seq in 0..case.n {
                frame[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
                tx.send(&frame)?;
            }
        }
    }
    Ok(())
}
