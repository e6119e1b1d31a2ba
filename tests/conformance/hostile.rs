//! The hostile peer (DESIGN.md section 6): each scenario plays a peer that
//! uses what it legitimately holds (its copies of the fds, the shared memory,
//! its socket) against us, and checks that we neither block, nor panic, nor
//! leak, nor lose a write. Frames are crafted by hand where the peer must
//! misbehave inside the handshake (the wire format is in `src/handoff.rs`).

use std::io::{BufRead, BufReader, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

use libtest_mimic::Failed;
use memfd_tripwire::{Backend, BackendKind, Error, Producer, Tripwire, blocking};
use rustix::fs::{MemfdFlags, OFlags, SealFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::util::{Ctx, Outcome, create, ensure, expect_trip, ms, pair, runtime, spawn};

type Scenario = (&'static str, fn(&Ctx) -> Outcome, &'static [BackendKind]);
const ANY: &[BackendKind] = &[];

pub const ALL: &[Scenario] = &[
    (
        "hostile_producer_cannot_jam_the_doorbell",
        producer_cannot_jam_the_doorbell,
        &[BackendKind::Doorbell],
    ),
    (
        "hostile_consumer_cannot_jam_notify",
        consumer_cannot_jam_notify,
        &[BackendKind::Doorbell],
    ),
    (
        "hostile_producer_parking_its_socket_in_itself_still_dies",
        producer_parking_its_socket_in_itself_still_dies,
        ANY,
    ),
    (
        "hostile_producer_that_rang_and_left_loses_no_ring",
        producer_that_rang_and_left_loses_no_ring,
        &[BackendKind::Doorbell],
    ),
    (
        "hostile_sender_cannot_jam_the_ring_receiver",
        sender_cannot_jam_the_ring_receiver,
        &[BackendKind::Poll],
    ),
    (
        "hostile_registered_before_share_learns_of_death",
        registered_before_share_learns_of_death,
        ANY,
    ),
    (
        "hostile_ring_polled_before_share_learns_of_death",
        ring_polled_before_share_learns_of_death,
        ANY,
    ),
    (
        "hostile_live_peer_writing_its_socket_is_not_dead",
        live_peer_writing_its_socket_is_not_dead,
        ANY,
    ),
    (
        "hostile_1000_producers_leave_no_threads_or_fds",
        thousand_producers_leave_no_trace,
        ANY,
    ),
    (
        "hostile_store_then_partial_unmap_trips",
        store_then_partial_unmap_trips,
        &[BackendKind::UserfaultAsync],
    ),
    (
        "hostile_reply_carrying_a_uffd_is_refused",
        reply_carrying_a_uffd_is_refused,
        &[BackendKind::Userfault, BackendKind::UserfaultAsync],
    ),
    (
        "hostile_consumer_gets_no_fd_and_cannot_stall_the_producer",
        consumer_gets_no_fd_and_cannot_stall_the_producer,
        &[BackendKind::Userfault, BackendKind::UserfaultAsync],
    ),
    (
        "hostile_producer_leaving_loses_no_page",
        producer_leaving_loses_no_page,
        &[BackendKind::Userfault, BackendKind::UserfaultAsync],
    ),
    (
        "hostile_stalled_producer_is_evicted_the_others_keep_notifications",
        stalled_producer_is_evicted_the_others_keep_notifications,
        &[BackendKind::Userfault, BackendKind::UserfaultAsync],
    ),
    (
        "hostile_stopped_producer_times_out_the_ack_and_loses_no_page",
        stopped_producer_times_out_the_ack_and_loses_no_page,
        &[BackendKind::Userfault, BackendKind::UserfaultAsync],
    ),
    (
        "hostile_stopped_producer_cannot_block_the_runtime",
        stopped_producer_cannot_block_the_runtime,
        &[BackendKind::Userfault, BackendKind::UserfaultAsync],
    ),
    (
        "hostile_stopped_mid_ack_times_out_async_changed",
        stopped_mid_ack_times_out_async_changed,
        ANY,
    ),
    (
        "hostile_stopped_mid_ack_times_out_ring_recv",
        stopped_mid_ack_times_out_ring_recv,
        ANY,
    ),
    (
        "hostile_stopped_mid_ack_mio_step_never_blocks",
        stopped_mid_ack_mio_step_never_blocks,
        ANY,
    ),
    (
        "hostile_extreme_durations_are_handled",
        extreme_durations_are_handled,
        ANY,
    ),
];

const OFFER_MAGIC: [u8; 8] = *b"MFDTWIRE";
/// An offer's length (from handshake version 5), and its last field for a
/// plain tripwire (not a ring).
const OFFER_LEN: usize = 32;
const PLAIN: [u8; 8] = [0; 8];
const REPLY_MAGIC: [u8; 8] = *b"MFDTWACK";
const DOORBELL: u16 = 2;
const PAGE: usize = 4096;

/// Runs `f` on its own thread: `Err` if it has not returned within `limit`
/// (it is then left blocked: the hang is the finding).
fn bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failed> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .map_err(|_| format!("{what}: blocked for more than {limit:?}").into())
}

/// One frame of `n` bytes and the fds that came with it.
fn recv_frame(sock: &UnixStream, n: usize) -> Result<(Vec<u8>, Vec<OwnedFd>), Failed> {
    let mut frame = vec![0u8; n];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [std::io::IoSliceMut::new(&mut frame)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    (&*sock).read_exact(&mut frame[msg.bytes..])?;
    Ok((frame, fds))
}

fn send_frame(sock: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Outcome {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        ensure(control.push(SendAncillaryMessage::ScmRights(fds)), || {
            "cmsg space".into()
        })?;
    }
    rustix::net::sendmsg(
        sock,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// The reply frame of handshake `version` (status ok) with `address`.
fn ok_reply(version: [u8; 2], address: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(24);
    f.extend_from_slice(&REPLY_MAGIC);
    f.extend_from_slice(&version);
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&address.to_le_bytes());
    f
}

/// Plays a producer that takes the offer and replies "attached" with
/// `address` and `fds`; returns the offer's version and fds.
fn fake_producer(
    sock: &UnixStream,
    address: u64,
    fds: &[BorrowedFd<'_>],
) -> Result<([u8; 2], Vec<OwnedFd>), Failed> {
    let (frame, received) = recv_frame(sock, OFFER_LEN)?;
    ensure(frame[..8] == OFFER_MAGIC, || "not an offer".into())?;
    let version = [frame[8], frame[9]];
    send_frame(sock, &ok_reply(version, address), fds)?;
    Ok((version, received))
}

/// Clears `O_NONBLOCK` on the open file description behind `fd`: what a
/// peer sharing it can do to us. The attack must take: `F_SETFL` succeeds
/// and `F_GETFL` then shows the flag gone.
fn clear_nonblock(fd: BorrowedFd<'_>) -> Outcome {
    rustix::fs::fcntl_setfl(fd, OFlags::empty())
        .map_err(|e| format!("the attack's fcntl(F_SETFL) failed: {e}"))?;
    let flags = rustix::fs::fcntl_getfl(fd)?;
    ensure(!flags.contains(OFlags::NONBLOCK), || {
        format!("O_NONBLOCK still set after the attack cleared it: {flags:?}")
    })
}

/// Reads what `fd` has to read now, as a peer draining what it shares
/// would (polling first, so that its own read cannot block): the number of
/// bytes read. A read that `poll` promised must succeed with data.
fn drain_readable(fd: BorrowedFd<'_>) -> Result<usize, Failed> {
    let mut p = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    if rustix::event::poll(&mut p, Some(&rustix::event::Timespec::default()))? == 0 {
        return Ok(0);
    }
    let mut buf = [0u8; 64];
    let n = rustix::io::read(fd, &mut buf)
        .map_err(|e| format!("the attack's read of a readable fd failed: {e}"))?;
    ensure(n > 0, || {
        "the attack's read of a readable fd read nothing".into()
    })?;
    Ok(n)
}

/// Sends `msg(i)` for i = 0, 1, ... with `MSG_DONTWAIT` until the queue is
/// full (`EAGAIN`) or `cap` messages went: how many went, and whether the
/// queue was found full. Each send must take the whole message; any error
/// but `EAGAIN` fails the attack.
fn flood(sock: impl AsFd, cap: u64, msg: impl Fn(u64) -> Vec<u8>) -> Result<(u64, bool), Failed> {
    let mut sent = 0;
    while sent < cap {
        let m = msg(sent);
        match rustix::net::send(&sock, &m, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(n) if n == m.len() => sent += 1,
            Ok(n) => return Err(format!("the flood sent {n} of {} bytes", m.len()).into()),
            Err(rustix::io::Errno::AGAIN) => return Ok((sent, true)),
            Err(e) => return Err(format!("the flood failed after {sent} sends: {e}").into()),
        }
    }
    Ok((sent, false))
}

/// Floods `sock` until its queue is full: how many messages went (at
/// least one: an attack that sent nothing proves nothing).
fn flood_full(sock: impl AsFd, msg: &[u8]) -> Result<u64, Failed> {
    let (sent, full) = flood(sock, 100_000_000, |_| msg.to_vec())?;
    ensure(full && sent > 0, || {
        format!("the flood sent {sent} messages, queue full: {full}")
    })?;
    Ok(sent)
}

/// A sealed memfd of `len` bytes, as the crate makes them.
fn sealed_memfd(name: &str, len: u64) -> Result<OwnedFd, Failed> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// A producer that holds the Doorbell's fds and its handshake socket (its
/// bell) clears `O_NONBLOCK` on each, drains whatever it can read and
/// floods the bell. The consumer's `try_changed`, `wait_timeout` and
/// `changed().await` must still return: the flood is a trip (each ring a
/// spurious one), taken in bounded parts until the wire goes quiet, and
/// never an error. (With the eventfd bell of c7b7db3 they blocked in `read`
/// forever.)
fn producer_cannot_jam_the_doorbell(ctx: &Ctx) -> Outcome {
    let mut tw = create(ctx, 4096)?;
    let (ours, theirs) = UnixStream::pair()?;
    let hostile = std::thread::spawn(move || -> Result<_, Failed> {
        let (_, fds) = fake_producer(&theirs, 0, &[])?;
        ensure(fds.len() == 1, || {
            format!("a Doorbell offer carries 1 fd, not {}", fds.len())
        })?;
        let mut drained = 0;
        for fd in fds.iter().map(|f| f.as_fd()).chain([theirs.as_fd()]) {
            clear_nonblock(fd)?;
            drained += drain_readable(fd)?;
        }
        // The memfd is always readable: the drain did read something.
        ensure(drained > 0, || "the drain read nothing".into())?;
        // Flood the bell (the handshake socket) until it is full.
        let rings = flood_full(&theirs, &[7; 64])?;
        Ok((theirs, fds, rings))
    });
    tw.share(ours)?;
    let (theirs, _fds, rings) = hostile.join().map_err(|_| "hostile thread panicked")??;
    let limit = ms(5_000);
    let (tw, first) = bounded("try_changed", limit, move || {
        let r = tw.try_changed().map_err(|e| e.to_string());
        (tw, r)
    })?;
    ensure(matches!(first, Ok(Some(_))), || {
        format!("a flooded bell gave {first:?}, not a (spurious) trip")
    })?;
    // Each look takes a bounded part of the flood (a trip), then the wire
    // goes quiet; never an error.
    let (tw, quiet) = bounded("wait_timeout", limit, move || {
        let mut tw = tw;
        let mut trips = 0u64;
        let r = loop {
            match tw.wait_timeout(Duration::from_millis(20)) {
                Ok(Some(_)) if trips < rings => trips += 1,
                Ok(Some(_)) => break Err(format!("{trips} trips from {rings} rings")),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.to_string()),
            }
        };
        (tw, r)
    })?;
    quiet?;
    bounded("changed().await", limit, move || -> Outcome {
        let rt = runtime()?;
        rt.block_on(async {
            let mut tw = Tripwire::new(tw)?;
            // Quiet: changed() stays pending, and the runtime's timer fires.
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(50), tw.changed()).await {
                return Err(format!("changed() on a quiet bell gave {r:?}").into());
            }
            // Flooded again: a trip.
            flood_full(&theirs, &[7; 64])?;
            match tokio::time::timeout(limit, tw.changed()).await {
                Ok(Ok(_)) => Ok(()),
                other => Err(format!("changed() on a flooded bell gave {other:?}").into()),
            }
        })
    })?
}

/// A producer sends its own end of the handshake socket over that socket
/// (`SCM_RIGHTS`), then exits: the end lives on in the consumer's receive
/// queue, so no hang-up would ever come unless the consumer reads (and so
/// closes) it. The consumer must still report the producer gone.
fn producer_parking_its_socket_in_itself_still_dies(ctx: &Ctx) -> Outcome {
    let mut tw = create(ctx, 4096)?;
    let (ours, theirs) = UnixStream::pair()?;
    let producer = std::thread::spawn(move || Producer::connect(theirs));
    tw.share(ours)?;
    let producer = producer.join().map_err(|_| "producer panicked")??;
    let own = producer
        .handshake_socket()
        .ok_or("no handshake socket")?
        .try_clone_to_owned()?;
    send_frame(&UnixStream::from(own.try_clone()?), b"x", &[own.as_fd()])?;
    drop(own);
    drop(producer);
    let deadline = std::time::Instant::now() + ms(5_000);
    loop {
        match tw.wait_timeout(ms(100)) {
            // It dropped its Producer: a goodbye, then the hang-up.
            Err(e) if Error::is_closed(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
            Ok(_) if std::time::Instant::now() > deadline => {
                return Err("a producer that parked its socket in itself never died".into());
            }
            Ok(_) => {}
        }
    }
}

/// A Doorbell producer rings through its handshake socket, stores, rings and
/// leaves: its socket then holds a ring and the hang-up. Sharing the
/// tripwire with another producer reaps the sockets of the producers that
/// left; the ring must survive it (a socket is closed only once its rings
/// are taken), and the dead producer must still count as gone.
fn producer_that_rang_and_left_loses_no_ring(ctx: &Ctx) -> Outcome {
    let mut tw = create(ctx, 4096)?;
    let attach = |tw: &mut blocking::Tripwire| -> Result<Producer, Failed> {
        let (ours, theirs) = UnixStream::pair()?;
        let producer = std::thread::spawn(move || Producer::connect(theirs));
        tw.share(ours)?;
        Ok(producer.join().map_err(|_| "producer panicked")??)
    };
    let leaving = attach(&mut tw)?;
    let staying = attach(&mut tw)?;
    leaving.region().write(0, &42u64)?;
    leaving.notify()?;
    drop(leaving);
    let _newcomer = attach(&mut tw)?;
    let got = tw.try_changed();
    ensure(matches!(got, Ok(Some(_))), || {
        format!("the ring of a producer that left was lost when another came: {got:?}")
    })?;
    ensure(tw.region().read::<u64>(0)? == 42, || "its store".into())?;
    drop(staying);
    ensure(!tw.producers_gone()?, || "the newcomer lives".into())
}

/// The handshake version this build speaks, learned from a real offer.
fn handshake_version() -> Result<[u8; 2], Failed> {
    let (a, b) = UnixStream::pair()?;
    let probe = std::thread::spawn(move || recv_frame(&b, OFFER_LEN).map(|(f, _)| [f[8], f[9]]));
    let mut tw = blocking::Tripwire::builder(64)
        .backend(Backend::Poll)
        .create()?;
    // The probe never replies: it hangs up.
    let refused = tw.share(a);
    let version = probe.join().map_err(|_| "probe panicked")??;
    ensure(matches!(refused, Err(Error::Handshake { .. })), || {
        format!("an offer nobody answered gave {refused:?}")
    })?;
    Ok(version)
}

/// Offers a Doorbell (one memfd: a 4096-byte region, then the control
/// page) to a real `Producer::connect`; returns the producer and the
/// consumer's end of the handshake socket, the producer's bell.
fn offer_doorbell(memfd: &OwnedFd) -> Result<(Producer, UnixStream, UnixStream), Failed> {
    let (ours, theirs) = UnixStream::pair()?;
    // What a consumer that made the pair keeps: a copy of the producer's end.
    let their_copy = theirs.try_clone()?;
    let producer = std::thread::spawn(move || Producer::connect(theirs));
    let mut offer = Vec::with_capacity(OFFER_LEN);
    offer.extend_from_slice(&OFFER_MAGIC);
    offer.extend_from_slice(&handshake_version()?);
    offer.extend_from_slice(&DOORBELL.to_le_bytes());
    offer.extend_from_slice(&1u32.to_le_bytes());
    offer.extend_from_slice(&4096u64.to_le_bytes());
    offer.extend_from_slice(&PLAIN);
    send_frame(&ours, &offer, &[memfd.as_fd()])?;
    let (reply, _) = recv_frame(&ours, 24)?;
    let producer = producer.join().map_err(|_| "producer panicked")??;
    ensure(reply[10..12] == [0, 0], || {
        "the producer attached but replied with an error".into()
    })?;
    Ok((producer, ours, their_copy))
}

/// Calls `notify()` 100 times with the consumer armed (the flag at the
/// control page's start, 4096 in the memfd); each must return.
fn notify_rounds(producer: Producer, memfd: &OwnedFd) -> Outcome {
    let producer = std::sync::Arc::new(producer);
    for round in 0..100 {
        rustix::io::pwrite(memfd, &1u32.to_ne_bytes(), 4096)?; // armed
        let p = producer.clone();
        bounded(&format!("notify() round {round}"), ms(5_000), move || {
            p.region()
                .write(0, &(round as u64))
                .map_err(|e| e.to_string())?;
            p.notify().map_err(|e| e.to_string())
        })??;
    }
    Ok(())
}

/// A consumer jams the bell: the producer rings through its handshake
/// socket, of which the consumer (who made the pair) keeps a copy of the
/// producer's end, clears `O_NONBLOCK` on that shared description and on
/// its own, and never reads, so the queue is full. `notify()` must return
/// at once, every time. (The eventfd bell of c7b7db3, one description
/// both held, made `notify()` block in `write`; version 4 offers no bell
/// fd at all, see tests/handshake.rs.)
fn consumer_cannot_jam_notify(_: &Ctx) -> Outcome {
    let memfd = sealed_memfd("hostile-doorbell", 8192)?;
    let (producer, ours, their_copy) = offer_doorbell(&memfd)?;
    // Fill the queue the producer rings into, then block both descriptions.
    flood_full(&their_copy, &[1; 4096])?;
    clear_nonblock(their_copy.as_fd())?;
    clear_nonblock(ours.as_fd())?;
    notify_rounds(producer, &memfd)
}

/// A ring Sender that clears `O_NONBLOCK` on the space bell and never reads
/// it, while announcing that it waits for space after every batch: the
/// Receiver rings it each time and must never block doing so.
fn sender_cannot_jam_the_ring_receiver(ctx: &Ctx) -> Outcome {
    const CAP: u64 = 8;
    let mut rx = memfd_tripwire::ring::SharedRing::<u64>::builder(CAP as usize)
        .backend(ctx.backend)
        .create()?;
    let (ours, theirs) = UnixStream::pair()?;
    let hostile = std::thread::spawn(move || -> Result<_, Failed> {
        let (version, mut fds) = fake_producer(&theirs, 0, &[])?;
        let (ring, ring_fds) = recv_frame(&theirs, 16)?;
        ensure(ring[..8] == *b"MFDTRING", || "not the ring frame".into())?;
        send_frame(&theirs, &ok_reply(version, 0), &[])?;
        // The space bell (fd 1): fill it as an eventfd counter would be
        // filled (on a socket this only sends 8 bytes our way), then clear
        // O_NONBLOCK on everything received.
        ensure(ring_fds.len() == 3, || {
            format!("the ring frame carries 3 fds, not {}", ring_fds.len())
        })?;
        let n = rustix::io::write(&ring_fds[1], &(u64::MAX - 1).to_ne_bytes())
            .map_err(|e| format!("the attack's write to the space bell failed: {e}"))?;
        ensure(n == 8, || format!("the attack wrote {n} of 8 bytes"))?;
        for fd in &ring_fds {
            clear_nonblock(fd.as_fd())?;
        }
        fds.extend(ring_fds);
        Ok((theirs, fds))
    });
    rx.share(ours)?;
    let (_sock, fds) = hostile.join().map_err(|_| "hostile thread panicked")??;
    let region = fds[0].try_clone()?;
    let space = fds[fds.len() - 2].try_clone()?;
    let mut head = 0u64;
    let mut got = 0u64;
    for _ in 0..2_000 {
        head += CAP;
        rustix::io::pwrite(&region, &2u64.to_ne_bytes(), 8)?; // state: waiting
        rustix::io::pwrite(&region, &head.to_ne_bytes(), 0)?; // a full ring
        let (r, n) = bounded("try_recv", ms(5_000), move || {
            let mut n = 0;
            let outcome = loop {
                match rx.try_recv() {
                    Ok(_) => n += 1,
                    Err(memfd_tripwire::ring::TryRecvError::Empty) => break Ok(()),
                    Err(e) => break Err(e.to_string()),
                }
            };
            (rx, (outcome, n))
        })?;
        rx = r;
        n.0?;
        got += n.1;
    }
    ensure(got == head, || format!("received {got} of {head}"))?;
    // The Receiver did ring the bell it was told the Sender waits on (so
    // the rings above met the queue the attack left unread).
    let rung = rustix::io::ioctl_fionread(&space)?;
    ensure(rung > 0, || {
        "the Receiver never rang the space bell of a waiting Sender".into()
    })
}

/// Kills `child` after `delay`, from another thread; joining it says
/// whether the kill took (the child was killed by `SIGKILL`).
fn kill_later(
    mut child: std::process::Child,
    delay: Duration,
) -> std::thread::JoinHandle<Result<(), String>> {
    use std::os::unix::process::ExitStatusExt;
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        child.kill().map_err(|e| format!("kill: {e}"))?;
        let status = child.wait().map_err(|e| format!("wait: {e}"))?;
        match status.signal() {
            Some(libc::SIGKILL) => Ok(()),
            _ => Err(format!("the producer was to be killed, but {status}")),
        }
    })
}

/// Joins a [`kill_later`] thread: the kill must have taken.
fn killed(killer: std::thread::JoinHandle<Result<(), String>>) -> Outcome {
    Ok(killer.join().map_err(|_| "the killer panicked")??)
}

/// Registered with mio before `share`, then shared with a producer that
/// never writes and is killed while we sleep in `poll`: the registration
/// must report the death (c7b7db3 registered only the fds that existed at
/// registration, and slept forever).
fn registered_before_share_learns_of_death(ctx: &Ctx) -> Outcome {
    let mut tw = create(ctx, 4096)?;
    let mut poll = mio::Poll::new()?;
    poll.registry()
        .register(&mut tw, mio::Token(1), mio::Interest::READABLE)?;
    let child = crate::util::share_with_child(&mut tw, "connect_then_linger", &[])?;
    let killer = kill_later(child, ms(200));
    let mut events = mio::Events::with_capacity(8);
    let deadline = std::time::Instant::now() + ms(10_000);
    let outcome = loop {
        // Edge-triggered: take everything before sleeping again.
        let done = loop {
            match tw.try_changed() {
                Ok(Some(_)) => {}
                Ok(None) => break None,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break Some(Ok(())),
                Err(e) => break Some(Err(e.into())),
            }
        };
        if let Some(outcome) = done {
            break outcome;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break Err("no BrokenPipe: a registration made before share missed the death".into());
        }
        poll.poll(&mut events, Some(left))?;
        if events.is_empty() {
            break Err("mio reported nothing after the producer died".into());
        }
    };
    killed(killer)?;
    outcome
}

/// A ring Receiver first polled before `share`, then waiting in `recv()`
/// when its Sender is killed: `recv()` must end with `PeerDied`, not stay
/// pending (c7b7db3 registered the peer set only if it existed at the
/// first poll). Since #23 that first poll is refused at once with
/// `NotShared` (it was pending for ever), before any registration.
fn ring_polled_before_share_learns_of_death(ctx: &Ctx) -> Outcome {
    let rt = runtime()?;
    rt.block_on(async {
        let mut rx = memfd_tripwire::ring::SharedRing::<crate::scenarios::Msg>::builder(8)
            .backend(ctx.backend)
            .type_tag(crate::scenarios::RING_TAG)
            .create()?;
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let first = rx.poll_recv(&mut cx);
        ensure(
            matches!(first, std::task::Poll::Ready(Err(Error::NotShared { .. }))),
            || format!("never shared, polled: {first:?}"),
        )?;
        let (ours, theirs) = UnixStream::pair()?;
        let mut child = spawn(
            "ring_sender",
            &[("COUNT", "3".into()), ("LINGER", "1".into())],
            theirs.into(),
            None,
        )?;
        rx.share(ours)?;
        let mut line = [0u8; 5];
        child
            .stdout
            .take()
            .ok_or("no stdout")?
            .read_exact(&mut line)?;
        for _ in 0..3 {
            match tokio::time::timeout(ms(10_000), rx.recv()).await {
                Ok(Ok(Some(_))) => {}
                other => return Err(format!("receiving what was sent: {other:?}").into()),
            }
        }
        // Now pending, with nothing more to come: the Sender dies.
        let killer = kill_later(child, ms(200));
        // Not `timeout`: it polls `recv` once more when its timer fires,
        // which would find the death without any wake-up from it.
        let outcome = tokio::select! {
            biased;
            _ = tokio::time::sleep(ms(10_000)) => {
                Err(Failed::from("recv() still pending after the Sender died"))
            }
            r = rx.recv() => match r {
                Ok(v) => Err(format!("a killed Sender gave {v:?}").into()),
                Err(Error::PeerDied) => Ok(()),
                Err(e) => Err(e.into()),
            },
        };
        killed(killer)?;
        outcome
    })
}

/// A live peer that writes bytes to its handshake socket is not a dead one:
/// neither side may report `PeerDied`/`BrokenPipe` for it. No waiting: a
/// unix stream write is in the peer's queue when it returns, and each side
/// looks at its socket in the calls below (the consumer takes the byte).
fn live_peer_writing_its_socket_is_not_dead(ctx: &Ctx) -> Outcome {
    let mut tw = create(ctx, 4096)?;
    let (ours, theirs) = UnixStream::pair()?;
    let mut their_copy = theirs.try_clone()?;
    let mut our_copy = ours.try_clone()?;
    let producer = std::thread::spawn(move || Producer::connect(theirs));
    tw.share(ours)?;
    let producer = producer.join().map_err(|_| "producer panicked")??;
    their_copy.write_all(b"x")?;
    our_copy.write_all(b"y")?;
    let queued = |s: &UnixStream| rustix::io::ioctl_fionread(s);
    ensure(queued(&our_copy)? == 1 && queued(&their_copy)? == 1, || {
        "each byte is queued for its peer".into()
    })?;
    // On Doorbell the producer rings through its socket: its byte is a
    // (spurious) ring, taken once; never a death.
    if ctx.kind == BackendKind::Doorbell {
        let first = tw.try_changed();
        ensure(matches!(first, Ok(Some(_))), || {
            format!("a byte from a live Doorbell producer is a ring, got {first:?}")
        })?;
    }
    let next = tw.try_changed();
    ensure(matches!(next, Ok(None)), || {
        format!("a byte from a live producer: {next:?}")
    })?;
    // The consumer did look at the byte: it read and dropped it.
    ensure(queued(&our_copy)? == 0, || {
        "the consumer never read the producer's byte".into()
    })?;
    ensure(!tw.producers_gone()?, || {
        "a byte from a live producer was taken for its death".into()
    })?;
    ensure(!producer.is_closed(), || {
        "a byte from a live consumer was taken for its death".into()
    })?;
    // And the pair still works.
    producer.region().write(0, &1u64)?;
    producer.notify()?;
    expect_trip(&mut tw, ms(5_000), "a store after the bytes")?;
    drop(producer);
    Ok(())
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

/// The inodes of the sockets among this process's open fds.
fn open_socket_inodes() -> Result<std::collections::HashSet<u64>, Failed> {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        // An fd closed since the listing has no link: skipped.
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(ino) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(ino.parse()?);
        }
    }
    Ok(inodes)
}

/// One consumer serves 1,000 short-lived producers in turn: it must close
/// the handshake socket of every producer that left (each one is found by
/// its inode, so the trials running beside this one do not count), and
/// its process's threads and fds must stay flat (c7b7db3 kept a resolver
/// thread and a uffd for each on Userfault). Those counts are
/// process-wide: other trials run in parallel, so they are allowed a
/// margin, and waited for (hang-ups are noticed asynchronously) rather
/// than slept for.
fn thousand_producers_leave_no_trace(ctx: &Ctx) -> Outcome {
    let n = (1000 / crate::util::scale() as usize).max(100);
    let mut tw = create(ctx, 4096)?;
    let mut base = None;
    let mut handed = Vec::with_capacity(n);
    for i in 0..n {
        let (ours, theirs) = UnixStream::pair()?;
        handed.push(rustix::fs::fstat(&ours)?.st_ino);
        let producer = std::thread::spawn(move || -> Result<(), Error> {
            let p = Producer::connect(theirs)?;
            p.region().write(0, &(i as u64))?;
            p.notify().map_err(|e| Error::Io {
                op: "notify",
                source: e,
            })
        });
        tw.share(ours)?;
        producer.join().map_err(|_| "producer panicked")??;
        match tw.try_changed() {
            Ok(_) => {}
            Err(e) if Error::is_closed(&e) => {}
            Err(e) => return Err(e.into()),
        }
        if i == 20 {
            base = Some((count("/proc/self/task"), count("/proc/self/fd")));
        }
    }
    let (threads0, fds0) = base.ok_or("no baseline")?;
    // Every producer left (dropped): the looks end in `Closed`, once the last
    // trip is taken, and by then every socket is closed.
    let deadline = std::time::Instant::now() + ms(10_000);
    let outcome = loop {
        let last = tw.try_changed();
        let open = open_socket_inodes()?;
        let left = handed.iter().filter(|ino| open.contains(ino)).count();
        let (threads, fds) = (count("/proc/self/task"), count("/proc/self/fd"));
        let flat = threads <= threads0 + 40 && fds <= fds0 + 60;
        let gone = matches!(&last, Err(e) if Error::is_closed(e));
        if gone && left == 0 && flat {
            break Ok(());
        }
        if std::time::Instant::now() > deadline {
            break Err(format!(
                "after {n} producers left: the last look gave {last:?}, {left} of their \
                 sockets are open, {threads} threads (were {threads0} after 20), {fds} fds \
                 (were {fds0})"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(outcome?)
}

/// A producer stores into a page and unmaps that page before the scanner
/// looks: the record of the store goes with the page tables, so the wire
/// must trip anyway (c7b7db3 checked only the first page and lost it).
fn store_then_partial_unmap_trips(ctx: &Ctx) -> Outcome {
    let mut tw = blocking::Tripwire::builder(4 * PAGE)
        .backend(ctx.backend)
        .poll_interval(ms(300))
        .create()?;
    let (ours, theirs) = UnixStream::pair()?;
    let (sync_ours, sync_theirs) = UnixStream::pair()?;
    let child = spawn(
        "store_then_unmap",
        &[("OFFSET", (2 * PAGE).to_string())],
        theirs.into(),
        Some(sync_theirs.into()),
    )?;
    let _child = crate::scenarios::KillOnDrop(child);
    tw.share(ours)?;
    let mut done = [0u8; 1];
    (&sync_ours).read_exact(&mut done)?;
    expect_trip(
        &mut tw,
        ms(5_000),
        "a store into a page unmapped before the scan",
    )
}

/// A producer replies with a real uffd (and a pagemap fd), as producers of
/// handshake versions before 3 did, and with a mapping address whose range
/// runs past the end of any address space: the consumer takes no fd from a
/// reply (c7b7db3 took them, then overflowed on the address).
fn reply_carrying_a_uffd_is_refused(ctx: &Ctx) -> Outcome {
    let mut tw = create(ctx, 2 * PAGE)?;
    let (ours, theirs) = UnixStream::pair()?;
    let uffd = open_uffd()?;
    let pagemap = std::fs::File::open("/proc/self/pagemap")?;
    // The reply carries 2 fds for UserfaultAsync (uffd, pagemap), 1 for Userfault.
    let with_pagemap = ctx.kind == BackendKind::UserfaultAsync;
    let hostile = std::thread::spawn(move || -> Result<_, Failed> {
        let mut fds = vec![uffd.as_fd()];
        if with_pagemap {
            fds.push(pagemap.as_fd());
        }
        fake_producer(&theirs, 0xFFFF_FFFF_FFFF_F000, &fds)?;
        Ok(theirs)
    });
    let refused = tw.share(ours);
    // The attack took: the reply with its fds went.
    let _sock = hostile.join().map_err(|_| "hostile thread panicked")??;
    ensure(
        matches!(&refused, Err(Error::Handshake { reason }) if reason.contains("unexpected fds")),
        || format!("a reply carrying a uffd gave {refused:?}"),
    )
}

fn open_uffd() -> Result<OwnedFd, Failed> {
    // SAFETY (test code): userfaultfd takes one int of flags and returns a
    // new fd or -1. O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC | libc::O_NONBLOCK | 1,
        )
    };
    if ret < 0 {
        return Err(format!("userfaultfd: {}", std::io::Error::last_os_error()).into());
    }
    // SAFETY (test code): a new fd, ours alone.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ret as i32) })
}

/// A consumer offers a Userfault(Async) tripwire by hand to a real
/// `Producer::connect`. The reply must carry no fd at all (c7b7db3 sent the
/// producer's uffd, and with it the power to register, write-protect or
/// fill any range of the producer). Then the consumer fills its own queue
/// (the agent's replies find it full: it holds a copy of the agent's end),
/// floods the agent's channel with ACKs and garbage and never reads: the
/// producer's stores to every page must still complete at once (on
/// `Userfault`, each one that faulted was resolved by the agent), the agent
/// must still serve once the consumer reads again (it reports the next
/// store), and dropping the producer while jammed must not hang.
fn consumer_gets_no_fd_and_cannot_stall_the_producer(ctx: &Ctx) -> Outcome {
    const PAGES: usize = 8;
    const ROUNDS: u64 = 50;
    let region = sealed_memfd("hostile-uffd-region", (PAGES * PAGE) as u64)?;
    let (chan_ours, chan_theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    let (ours, theirs) = UnixStream::pair()?;
    let producer = std::thread::spawn(move || Producer::connect(theirs));
    let code: u16 = if ctx.kind == BackendKind::UserfaultAsync {
        5
    } else {
        4
    };
    let mut offer = Vec::with_capacity(OFFER_LEN);
    offer.extend_from_slice(&OFFER_MAGIC);
    offer.extend_from_slice(&handshake_version()?);
    offer.extend_from_slice(&code.to_le_bytes());
    offer.extend_from_slice(&2u32.to_le_bytes());
    offer.extend_from_slice(&((PAGES * PAGE) as u64).to_le_bytes());
    offer.extend_from_slice(&PLAIN);
    send_frame(&ours, &offer, &[region.as_fd(), chan_theirs.as_fd()])?;
    let (reply, fds) = recv_frame(&ours, 24)?;
    let producer = producer.join().map_err(|_| "producer panicked")??;
    ensure(reply[10..12] == [0, 0], || format!("refused: {reply:?}"))?;
    ensure(fds.is_empty(), || {
        format!(
            "the producer's reply carried {} fds to the consumer",
            fds.len()
        )
    })?;
    // Dropped only at the end, within a bound: an agent the attack blocked
    // would hang the drop, so a failure on the way leaks it instead.
    let producer = std::sync::Arc::new(std::mem::ManuallyDrop::new(producer));
    jam_agent_channel(&chan_ours, &chan_theirs, "first flood")?;
    let p = producer.clone();
    let trapped = bounded("stores with a hostile consumer", ms(10_000), move || {
        for round in 0..ROUNDS {
            for page in 0..PAGES {
                p.region()
                    .write(page * PAGE, &round)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok::<_, String>(p.trapped_stores())
    })??;
    // Every store landed.
    for page in 0..PAGES {
        let mut v = [0u8; 8];
        let n = rustix::io::pread(&region, &mut v, (page * PAGE) as u64)?;
        ensure(n == 8 && u64::from_ne_bytes(v) == ROUNDS - 1, || {
            format!("page {page} holds {v:?} after the stores")
        })?;
    }
    // On Userfault the region starts write-protected: the first store to
    // each page faulted, and the agent resolved it (or the store would not
    // have returned); UserfaultAsync's faults never reach it.
    if ctx.kind == BackendKind::Userfault {
        ensure(trapped >= PAGES as u64, || {
            format!("{trapped} faults resolved for stores to {PAGES} protected pages")
        })?;
    } else {
        ensure(trapped == 0, || {
            format!("{trapped} faults trapped on UserfaultAsync")
        })?;
    }
    ensure(!producer.is_closed(), || {
        "the agent gave up under the flood (the producer's socket is shut down)".into()
    })?;
    // The consumer reads again: the agent answers every request in order,
    // and reports a store made after the last of them.
    let (chan_ours, first) = bounded("ACK after the flood", ms(10_000), move || {
        let r = ack_round(&chan_ours, 0xfeed_0001).map(|_| ());
        (chan_ours, r)
    })?;
    first?;
    let p = producer.clone();
    bounded("a store after the flood", ms(10_000), move || {
        p.region().write(3 * PAGE, &7u64).map_err(|e| e.to_string())
    })??;
    let (chan_ours, pages) = bounded("ACK of the store", ms(10_000), move || {
        let r = ack_round(&chan_ours, 0xfeed_0002);
        (chan_ours, r)
    })?;
    let pages = pages?;
    ensure(pages.iter().any(|r| r.contains(&3)), || {
        format!("the agent reported pages {pages:?}, not page 3")
    })?;
    // Jammed again; the producer goes: stopping its agent must not hang.
    jam_agent_channel(&chan_ours, &chan_theirs, "second flood")?;
    let producer = std::sync::Arc::into_inner(producer).ok_or("the producer is still shared")?;
    bounded("dropping the producer", ms(10_000), move || {
        drop(std::mem::ManuallyDrop::into_inner(producer));
    })?;
    drop((ours, chan_ours, chan_theirs));
    Ok(())
}

/// The consumer's jam of an agent channel (it made the pair, so it holds
/// `ours` and a copy of the agent's end, `theirs`): its own queue filled,
/// so that every reply and trip of the agent finds no room; then ACK
/// requests (each re-protects what was written) and garbage, until the
/// agent's queue is full or it kept up with 100,000; then `O_NONBLOCK`
/// cleared on the agent's end.
fn jam_agent_channel(ours: &OwnedFd, theirs: &OwnedFd, what: &str) -> Outcome {
    flood_full(theirs, &[0xee; 64])?;
    let msg = |i: u64| {
        if i % 3 == 2 {
            vec![0xff; 64]
        } else {
            let mut ack = vec![b'A', 0, 0, 0];
            ack.extend_from_slice(&(i as u32).to_le_bytes());
            ack
        }
    };
    let (sent, _) = flood(ours, 100_000, msg)?;
    ensure(sent >= 3, || {
        format!("{what}: the flood sent {sent} messages")
    })?;
    clear_nonblock(theirs.as_fd())?;
    // Wait until the agent took a message of the flood (the first is an
    // ACK: it then replies into the full queue).
    let flooded: u64 = (0..sent).map(|i| msg(i).len() as u64).sum();
    let deadline = std::time::Instant::now() + ms(10_000);
    while rustix::io::ioctl_fionread(theirs)? >= flooded {
        ensure(std::time::Instant::now() < deadline, || {
            format!("{what}: the agent took none of the {flooded} bytes sent to it")
        })?;
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Plays the consumer's side of one ACK on the agent channel `chan`: takes
/// everything queued, sends ACK `seq`, and waits for its PAGES reply
/// (skipping trips and the replies to earlier requests); the page ranges
/// it lists. (The wire format is in `src/backend/userfault/agent.rs`.)
fn ack_round(chan: &OwnedFd, seq: u32) -> Result<Vec<std::ops::Range<u32>>, String> {
    let mut buf = vec![0u8; 1 << 16];
    let recv = |buf: &mut [u8]| rustix::net::recv(chan, buf, rustix::net::RecvFlags::DONTWAIT);
    loop {
        match recv(&mut buf) {
            Ok(_) => {}
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => return Err(format!("draining the agent channel: {e}")),
        }
    }
    let mut ack = [0u8; 8];
    ack[0] = b'A';
    ack[4..8].copy_from_slice(&seq.to_le_bytes());
    let n = rustix::net::send(chan, &ack, SendFlags::DONTWAIT | SendFlags::NOSIGNAL)
        .map_err(|e| format!("sending ACK {seq:#x}: {e}"))?;
    if n != 8 {
        return Err(format!("sent {n} of the ACK's 8 bytes"));
    }
    loop {
        let mut p = [rustix::event::PollFd::new(
            chan,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut p, None).map_err(|e| e.to_string())?;
        let (n, _) = recv(&mut buf).map_err(|e| format!("reading the agent channel: {e}"))?;
        let msg = &buf[..n];
        let u32_at = |o: usize| u32::from_le_bytes(msg[o..o + 4].try_into().expect("4 bytes"));
        if n == 0 {
            return Err("the agent closed its channel".into());
        }
        if msg[0] != b'P' || n < 16 || u32_at(4) != seq {
            continue; // a trip, or the reply to an earlier ACK
        }
        if msg[1] != 0 {
            return Err(format!("ACK {seq:#x}: the agent lost track of its pages"));
        }
        let count = u32_at(8) as usize;
        if n != 16 + 8 * count {
            return Err(format!("a PAGES reply of {n} bytes listing {count} ranges"));
        }
        return Ok((0..count)
            .map(|i| u32_at(16 + 8 * i)..u32_at(20 + 8 * i))
            .collect());
    }
}

/// Looks until a trip comes, and returns its pages (or fails after
/// `limit`). An error before the trip fails: a pending trip is returned
/// before any error, a producer's death included.
fn pages_of_next_trip(
    tw: &mut blocking::Tripwire,
    limit: Duration,
) -> Result<Vec<std::ops::Range<usize>>, Failed> {
    let deadline = std::time::Instant::now() + limit;
    let mut pages = Vec::new();
    loop {
        match tw.try_changed_with_pages(&mut pages) {
            Ok(Some(_)) => return Ok(pages),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(None) => return Err(format!("no trip within {limit:?}").into()),
            Err(e) => return Err(format!("before the trip: {e}").into()),
        }
    }
}

/// A producer writes a page and drops its `Producer` (its agent goes with
/// the record of that page) before the consumer ACKs: the page must still
/// be among those reported. (Found by a review of the agent: the page list
/// came back empty.)
fn producer_leaving_loses_no_page(ctx: &Ctx) -> Outcome {
    let (mut tw, producer) = pair(ctx, 4 * PAGE)?;
    producer.region().write(2 * PAGE, &7u32)?;
    drop(producer);
    let pages = pages_of_next_trip(&mut tw, ms(5_000))?;
    ensure(pages.iter().any(|p| p.contains(&(2 * PAGE))), || {
        format!("page 2 missing from {pages:?}")
    })
}

/// Two producers; one is stopped (SIGSTOP) when the consumer ACKs: the ACK
/// fails with `TimedOut` after its bound (never a hang), and the page the
/// other producer wrote, whose agent already answered and forgot it, is
/// still reported by the next ACK that succeeds. The time-out is counted
/// (`stats().ack_timeouts`).
fn stopped_producer_times_out_the_ack_and_loses_no_page(ctx: &Ctx) -> Outcome {
    use rustix::process::{Pid, Signal, kill_process};
    let (mut tw, a) = pair(ctx, 4 * PAGE)?;
    let child = crate::util::share_with_child(&mut tw, "connect_then_linger", &[])?;
    let child = crate::scenarios::KillOnDrop(child);
    let pid = Pid::from_child(&child.0);
    tw.ack()?;
    a.region().write(PAGE, &9u32)?;
    kill_process(pid, Signal::STOP)?;
    // A stop reaches the other threads of a process only once one of its
    // threads took the signal: wait until all are stopped.
    crate::scenarios::wait_until_stopped(child.0.id(), ms(5_000))?;
    let start = std::time::Instant::now();
    let first = tw.ack();
    let took = start.elapsed();
    ensure(
        matches!(&first, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        || format!("an ACK with a stopped producer gave {first:?}"),
    )?;
    ensure(took < ms(5_000), || format!("the ACK took {took:?}"))?;
    let stats = tw.stats();
    ensure(stats.ack_timeouts == 1, || {
        format!("the time-out is counted once: {stats:?}")
    })?;
    kill_process(pid, Signal::CONT)?;
    let pages = pages_of_next_trip(&mut tw, ms(5_000))?;
    ensure(pages.iter().any(|p| p.contains(&PAGE)), || {
        format!("page 1 missing from {pages:?} after a timed-out ACK")
    })
}

/// Two producers; one is stopped (SIGSTOP) and stays so: the first ACK
/// fails once, saying it evicted that producer; from then on the other's
/// stores trip and ACK as before (without eviction every ACK failed with
/// `TimedOut` for as long as the stopped one lived). Continued, the evicted
/// producer learns of it (`is_closed`).
fn stalled_producer_is_evicted_the_others_keep_notifications(ctx: &Ctx) -> Outcome {
    use rustix::process::{Pid, Signal, kill_process};
    let (mut tw, a) = pair(ctx, 4 * PAGE)?;
    let child = crate::util::share_with_child(&mut tw, "connect_until_closed", &[])?;
    let mut child = crate::scenarios::KillOnDrop(child);
    let mut out = BufReader::new(child.0.stdout.take().ok_or("no child stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    ensure(line.trim() == "ready", || format!("child said {line:?}"))?;
    let pid = Pid::from_child(&child.0);
    tw.ack()?;
    kill_process(pid, Signal::STOP)?;
    crate::scenarios::wait_until_stopped(child.0.id(), ms(5_000))?;
    a.region().write(PAGE, &1u32)?;
    let first = tw.wait_timeout(ms(10_000));
    ensure(
        matches!(&first, Err(e) if e.kind() == std::io::ErrorKind::TimedOut
            && e.to_string().contains("evicted 1 producer")),
        || format!("the ACK with a stalled producer gave {first:?}"),
    )?;
    for round in 0..3u32 {
        // The failed ACK left the wire tripped: the first look re-arms.
        while tw.wait_timeout(ms(0))?.is_some() {}
        a.region().write(PAGE, &(round + 2))?;
        let got = tw.wait_timeout(ms(10_000));
        ensure(matches!(got, Ok(Some(_))), || {
            format!("round {round}: the live producer's store after the eviction: {got:?}")
        })?;
    }
    kill_process(pid, Signal::CONT)?;
    line.clear();
    let got = bounded("the evicted producer's report", ms(10_000), move || {
        out.read_line(&mut line).map(|_| line)
    })??;
    ensure(got.trim() == "closed", || {
        format!("the evicted producer said {got:?}, not that it was closed")
    })
}

/// A producer that stops answering ACKs (SIGSTOP; a hostile one can just
/// ignore them) must not block the runtime thread of an async consumer:
/// the look that takes a trip sends the ACK and returns `Pending` at once
/// (the blocking ACK used to hold the thread for its 1 s deadline, then
/// gave `TimedOut`), other tasks run while the ACK is in flight, and once
/// the producer answers, the trip comes with its page. No clock decides:
/// the trip is queued before the look, and the look must be `Pending`.
fn stopped_producer_cannot_block_the_runtime(ctx: &Ctx) -> Outcome {
    use rustix::process::{Pid, Signal, kill_process};
    use std::future::Future;
    use std::task::Poll;
    let (mut tw, a) = pair(ctx, 4 * PAGE)?;
    let child = crate::util::share_with_child(&mut tw, "connect_then_linger", &[])?;
    let child = crate::scenarios::KillOnDrop(child);
    let pid = Pid::from_child(&child.0);
    tw.ack()?;
    kill_process(pid, Signal::STOP)?;
    crate::scenarios::wait_until_stopped(child.0.id(), ms(5_000))?;
    a.region().write(PAGE, &9u32)?;
    // The trip of that store is queued (UserfaultAsync's agent sends it
    // after its next scan): the tripwire's fd turns readable.
    let mut p = [rustix::event::PollFd::new(
        &tw,
        rustix::event::PollFlags::IN,
    )];
    let limit = ms(5_000);
    let ts = rustix::event::Timespec {
        tv_sec: limit.as_secs() as i64,
        tv_nsec: limit.subsec_nanos().into(),
    };
    ensure(rustix::event::poll(&mut p, Some(&ts))? == 1, || {
        format!("no trip within {limit:?} of a store")
    })?;
    let rt = runtime()?;
    rt.block_on(async move {
        let mut tw = Tripwire::new(tw)?;
        let mut pages = Vec::new();
        {
            let mut changed = std::pin::pin!(tw.changed_with_pages(&mut pages));
            let first = std::future::poll_fn(|cx| Poll::Ready(changed.as_mut().poll(cx))).await;
            ensure(first.is_pending(), || {
                format!("changed() with a stopped producer gave {first:?}, not Pending")
            })?;
            // Another task runs while the ACK is in flight.
            let other = tokio::spawn(async {
                tokio::task::yield_now().await;
                7
            });
            ensure(other.await? == 7, || "the other task".into())?;
            kill_process(pid, Signal::CONT)?;
            let epoch = tokio::time::timeout(ms(5_000), changed).await;
            ensure(matches!(epoch, Ok(Ok(_))), || {
                format!("after the producer went on: {epoch:?}")
            })?;
        }
        ensure(pages.iter().any(|p| p.contains(&PAGE)), || {
            format!("page 1 missing from {pages:?}")
        })
    })
}

/// `wait_timeout(Duration::MAX)` is "forever", not an `Instant` overflow,
/// and `wait_timeout(ZERO)` a look; a poll interval under the 10 µs
/// minimum is refused with `Error::InvalidArgument` naming `poll_interval`
/// (not a spinning thread), the minimum is taken, and `Duration::MAX` too
/// on `Poll` (the longest interval clamps, never overflows) but not on
/// `UserfaultAsync` (over its 10 s); a busy-poll window of `Duration::MAX`
/// is refused, naming `busy_poll`.
fn extreme_durations_are_handled(ctx: &Ctx) -> Outcome {
    let (mut tw, producer) = pair(ctx, 4096)?;
    producer.region().write(0, &1u64)?;
    producer.notify()?;
    let (mut tw, r) = bounded("wait_timeout(Duration::MAX)", ms(10_000), move || {
        let r = tw.wait_timeout(Duration::MAX).map_err(|e| e.to_string());
        (tw, r)
    })?;
    ensure(matches!(r, Ok(Some(_))), || {
        format!("wait_timeout(MAX) gave {r:?}")
    })?;
    let r = tw.wait_timeout(Duration::ZERO);
    ensure(matches!(r, Ok(None)), || {
        format!("wait_timeout(ZERO) on a quiet wire gave {r:?}")
    })?;
    // Where UserfaultAsync cannot work, a valid interval is `Unavailable`.
    let async_ok = !matches!(
        blocking::Tripwire::builder(64)
            .backend(Backend::UserfaultAsync)
            .create(),
        Err(Error::Unavailable { .. })
    );
    // A builder mistake names its argument (#23: it was `Error::Io` with
    // the argument as the operation; tests/builder_args.rs checks the
    // `InvalidInput` kind it converts to).
    let refused = |r: &Result<(), Error>, arg: &str| matches!(r, Err(Error::InvalidArgument(a)) if a.what() == arg);
    for backend in [Backend::Poll, Backend::UserfaultAsync] {
        for (interval, valid) in [
            (Duration::ZERO, false),
            (Duration::from_nanos(9_999), false),
            (Duration::from_micros(10), true),
            // UserfaultAsync's agent scans at most every 10 s: a longer
            // interval is refused (it was clamped, silently).
            (Duration::MAX, matches!(backend, Backend::Poll)),
        ] {
            // Created and dropped (a poller stuck on an overflowed due
            // time would hang the drop).
            let r = bounded(
                &format!("create and drop {backend:?} at {interval:?}"),
                ms(10_000),
                move || {
                    blocking::Tripwire::builder(64)
                        .backend(backend)
                        .poll_interval(interval)
                        .create()
                        .map(drop)
                },
            )?;
            let fine = if !valid {
                refused(&r, "poll_interval")
            } else if matches!(backend, Backend::UserfaultAsync) && !async_ok {
                matches!(r, Err(Error::Unavailable { .. }))
            } else {
                r.is_ok()
            };
            ensure(fine, || {
                format!("{backend:?} with a poll interval of {interval:?} gave {r:?}")
            })?;
        }
    }
    let r = blocking::Tripwire::builder(64)
        .backend(Backend::Poll)
        .busy_poll(Duration::MAX)
        .create()
        .map(drop);
    ensure(refused(&r, "busy_poll"), || {
        format!("a busy-poll window of Duration::MAX gave {r:?}")
    })?;
    drop(producer);
    Ok(())
}

/// The ACK deadline the Userfault backends document ("a producer that does
/// not answer within 1 s ... fails it with `TimedOut`").
const ACK_DEADLINE: Duration = Duration::from_secs(1);

/// `Some(why)` where the backend has no ACK round trip to a producer (so
/// no producer can leave an ACK in flight): the scenario is skipped.
fn no_ack_round_trip(ctx: &Ctx) -> Option<&'static str> {
    match ctx.kind {
        BackendKind::Userfault | BackendKind::UserfaultAsync => None,
        _ => Some("no ACK round trip to the producer on this backend"),
    }
}

/// Waits (up to `limit`) until `fd` is readable: a trip is queued.
fn readable_within(fd: BorrowedFd<'_>, limit: Duration) -> Outcome {
    let mut p = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: limit.as_secs() as i64,
        tv_nsec: limit.subsec_nanos().into(),
    };
    ensure(rustix::event::poll(&mut p, Some(&ts))? == 1, || {
        format!("no trip within {limit:?} of the producer's store")
    })
}

/// SIGSTOPs `child` and waits until every thread of it is stopped.
fn stop(child: &std::process::Child) -> Outcome {
    use rustix::process::{Pid, Signal, kill_process};
    kill_process(Pid::from_child(child), Signal::STOP)?;
    crate::scenarios::wait_until_stopped(child.id(), ms(5_000))
}

/// Reads the child's first line from its stdout.
fn child_says(child: &mut std::process::Child, want: &str) -> Outcome {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().ok_or("no child stdout")?).read_line(&mut line)?;
    ensure(line.trim() == want, || format!("the child said {line:?}"))
}

/// A real `Producer` in a child writes once, so its agent trips the wire;
/// then the child is stopped (SIGSTOP) before it can answer an ACK.
fn stopped_mid_ack(
    ctx: &Ctx,
) -> Result<(blocking::Tripwire, crate::scenarios::KillOnDrop), Failed> {
    let mut tw = create(ctx, 4 * PAGE)?;
    let child =
        crate::util::share_with_child(&mut tw, "write_then_linger", &[("VALUE", "1".into())])?;
    let mut child = crate::scenarios::KillOnDrop(child);
    child_says(&mut child.0, "ready")?;
    readable_within(tw.as_fd(), ms(5_000))?;
    stop(&child.0)?;
    Ok((tw, child))
}

/// Is `e` the ACK's `TimedOut`, and did it come neither before the
/// deadline nor much after it?
fn timed_out_in_time(what: &str, e: &std::io::Error, took: Duration) -> Outcome {
    ensure(e.kind() == std::io::ErrorKind::TimedOut, || {
        format!("{what} gave {e:?}, not TimedOut")
    })?;
    let slack = ms(100);
    eprintln!("  {what}: TimedOut after {took:?} (deadline {ACK_DEADLINE:?})");
    ensure(took >= ACK_DEADLINE, || {
        format!("{what}: TimedOut after {took:?}, before the {ACK_DEADLINE:?} deadline")
    })?;
    ensure(took <= ACK_DEADLINE + slack, || {
        format!("{what}: TimedOut after {took:?}, over the deadline {ACK_DEADLINE:?} + {slack:?}")
    })
}

/// A producer stopped in the middle of an ACK: async `changed()`, spawned
/// as its own task with no timer of the caller's, returns `TimedOut`
/// within the ACK deadline (plus a slack), not later and not earlier. (It
/// stayed pending for good: the deadline was armed nowhere.)
fn stopped_mid_ack_times_out_async_changed(ctx: &Ctx) -> Outcome {
    const NAME: &str = "hostile_stopped_mid_ack_times_out_async_changed";
    if let Some(why) = no_ack_round_trip(ctx) {
        return crate::util::skip(ctx, NAME, None, why);
    }
    let (tw, child) = stopped_mid_ack(ctx)?;
    let rt = runtime()?;
    let outcome = bounded(
        "async changed() with a stopped producer",
        ms(10_000),
        move || {
            rt.block_on(async move {
                let mut tw = Tripwire::new(tw)?;
                let start = std::time::Instant::now();
                let task = tokio::spawn(async move {
                    let r = tw.changed().await;
                    (r, start.elapsed())
                });
                Ok::<_, std::io::Error>(task.await?)
            })
        },
    )??;
    drop(child);
    match outcome {
        (Err(e), took) => timed_out_in_time("async changed()", &e, took),
        (Ok(epoch), took) => Err(format!("changed() gave {epoch:?} after {took:?}").into()),
    }
}

/// The same for a ring: its Sender (in a child) sends one message and is
/// stopped before it answers the ACK of the Receiver's re-arm: `recv()`,
/// alone in its task, returns the message, then `TimedOut` within the
/// deadline.
fn stopped_mid_ack_times_out_ring_recv(ctx: &Ctx) -> Outcome {
    const NAME: &str = "hostile_stopped_mid_ack_times_out_ring_recv";
    if let Some(why) = no_ack_round_trip(ctx) {
        return crate::util::skip(ctx, NAME, None, why);
    }
    use crate::scenarios::{Msg, RING_TAG};
    let mut rx = memfd_tripwire::ring::SharedRing::<Msg>::builder(8)
        .backend(ctx.backend)
        .type_tag(RING_TAG)
        .create()?;
    let (ours, theirs) = UnixStream::pair()?;
    let child = spawn(
        "ring_sender",
        &[("COUNT", "1".into()), ("LINGER", "1".into())],
        theirs.into(),
        None,
    )?;
    let mut child = crate::scenarios::KillOnDrop(child);
    rx.share(ours)?;
    child_says(&mut child.0, "sent")?;
    readable_within(rx.as_fd(), ms(5_000))?;
    stop(&child.0)?;
    let rt = runtime()?;
    let outcome = bounded(
        "the ring's recv() with a stopped Sender",
        ms(10_000),
        move || {
            rt.block_on(async move {
                // Another task ticks meanwhile: a receive that held the
                // runtime's thread for the deadline would stop it.
                let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
                let ticker = tokio::spawn({
                    let ticks = ticks.clone();
                    async move {
                        loop {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
                let task = tokio::spawn(async move {
                    let first = rx.recv().await;
                    let start = std::time::Instant::now();
                    let second = rx.recv().await;
                    (first, second, start.elapsed())
                });
                let outcome = task.await;
                ticker.abort();
                outcome.map(|o| (o, ticks.load(std::sync::atomic::Ordering::Relaxed)))
            })
        },
    )??;
    drop(child);
    let ((first, second, took), ticks) = outcome;
    // ~100 over the deadline; 10 is coarse: only a blocked thread gives fewer.
    ensure(ticks >= 10, || {
        format!(
            "another task ticked {ticks} times in {took:?}: recv() blocked the runtime's thread"
        )
    })?;
    ensure(
        matches!(first, Ok(Some(m)) if m == crate::scenarios::msg(0)),
        || format!("the first recv() gave {first:?}"),
    )?;
    match second {
        Err(Error::Io { source, .. }) => timed_out_in_time("the ring's recv()", &source, took),
        other => Err(format!("the second recv() gave {other:?} after {took:?}").into()),
    }
}

/// A mio user, told to step on readiness: the step returns at once while
/// the ACK is in flight (`Ok(None)`; well under the deadline, coarse: this
/// is no latency test), and the next step after the deadline reports
/// `TimedOut`.
fn stopped_mid_ack_mio_step_never_blocks(ctx: &Ctx) -> Outcome {
    const NAME: &str = "hostile_stopped_mid_ack_mio_step_never_blocks";
    if let Some(why) = no_ack_round_trip(ctx) {
        return crate::util::skip(ctx, NAME, None, why);
    }
    let (tw, child) = stopped_mid_ack(ctx)?;
    let outcome = bounded("a mio user's step", ms(10_000), move || -> Outcome {
        let mut tw = tw;
        let mut poll = mio::Poll::new()?;
        poll.registry()
            .register(&mut tw, mio::Token(0), mio::Interest::READABLE)?;
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(ms(5_000)))?;
        ensure(!events.is_empty(), || {
            "no readiness for a queued trip".into()
        })?;
        let start = std::time::Instant::now();
        let step = tw.try_changed();
        let took = start.elapsed();
        eprintln!("  the step with the ACK in flight took {took:?}");
        ensure(matches!(step, Ok(None)), || {
            format!("the step gave {step:?} after {took:?}, not Ok(None)")
        })?;
        ensure(took < ACK_DEADLINE / 2, || {
            format!("the step took {took:?}: it blocked on the ACK")
        })?;
        let deadline = tw.deadline().ok_or("no deadline with the ACK in flight")?;
        ensure(
            deadline > start && deadline <= start + took + ACK_DEADLINE,
            || format!("the deadline is {:?} after the step", deadline - start),
        )?;
        // The user's event loop: poll with the deadline as its time-out,
        // then step again.
        loop {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            poll.poll(&mut events, Some(deadline - now))?;
        }
        let late = tw.try_changed();
        ensure(
            matches!(&late, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
            || format!("the step after the deadline gave {late:?}, not TimedOut"),
        )
    })?;
    drop(child);
    outcome
}
