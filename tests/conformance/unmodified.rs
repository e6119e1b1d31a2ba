//! Producers that know nothing of this crate (issue #14): they get the fd
//! to map (`Tripwire::producer_fd`) by inheritance or `SCM_RIGHTS`, map it
//! and store, as an existing program or a VFIO-user client would. The RFC
//! selftest's scenarios against them: one store, 1,000 synchronised rounds,
//! a free-running writer whose last store must be seen, and several writer
//! processes at once.
//!
//! The writer is `tests/unmodified/writer.c`, built with `cc` where there is
//! one (the host); inside the RFC VM, which has no compiler, the same
//! program in Rust (the `raw_writer` role: `mmap` and atomic stores, no
//! call into the crate).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use memfd_tripwire::{BackendKind, blocking::Tripwire};

use crate::scenarios::KillOnDrop;
use crate::util::{Ctx, Outcome, create, ensure, ms, settles};

type Scenario = (&'static str, fn(&Ctx) -> Outcome, &'static [BackendKind]);

const PASSIVE: &[BackendKind] = &[BackendKind::Kernel, BackendKind::Poll];

pub const ALL: &[Scenario] = &[
    ("unmodified_one_store_is_seen", one_store_is_seen, PASSIVE),
    (
        "unmodified_1000_synchronised_rounds",
        synchronised_rounds,
        PASSIVE,
    ),
    (
        "unmodified_free_running_writer_last_store_seen",
        free_running_writer_last_store_seen,
        PASSIVE,
    ),
    (
        "unmodified_several_writer_processes",
        several_writer_processes,
        PASSIVE,
    ),
];

const LEN: usize = 4096;

/// The C writer, built once per run, or `None` (no `cc`, or
/// `TRIPWIRE_WRITER=rust`): then the Rust one.
fn c_writer() -> Option<&'static str> {
    static BUILT: OnceLock<Option<String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if std::env::var("TRIPWIRE_WRITER").as_deref() == Ok("rust") {
                eprintln!(
                    "  unmodified: TRIPWIRE_WRITER=rust: the raw_writer role plays the writer"
                );
                return None;
            }
            let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/unmodified/writer.c");
            let out =
                std::env::temp_dir().join(format!("memfd-tripwire-writer-{}", std::process::id()));
            let built = Command::new("cc")
                .args(["-O2", "-o"])
                .arg(&out)
                .arg(src)
                .status();
            match built {
                Ok(s) if s.success() => Some(out.to_string_lossy().into_owned()),
                other => {
                    eprintln!(
                        "  unmodified: no C writer ({other:?}, e.g. no cc or no source in the VM): \
                         the Rust raw_writer role plays it"
                    );
                    None
                }
            }
        })
        .as_deref()
}

/// Starts the writer with `args` (see writer.c) and `stdin` as its fd 0.
fn writer(args: &[String], stdin: OwnedFd) -> Result<KillOnDrop, Failed> {
    let mut cmd = match c_writer() {
        Some(path) => Command::new(path),
        None => {
            let mut cmd = Command::new(std::env::current_exe()?);
            cmd.env(crate::child::ROLE_ENV, "raw_writer");
            cmd
        }
    };
    let child: Child = cmd
        .args(args)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .spawn()?;
    Ok(KillOnDrop(child))
}

/// Waits for the writer's "done" and its exit 0.
fn finished(mut w: KillOnDrop) -> Outcome {
    let mut line = String::new();
    BufReader::new(w.0.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let status = w.0.wait()?;
    ensure(status.success() && line.trim() == "done", || {
        format!("the writer said {line:?} and exited {status}")
    })
}

/// The fd a producer maps, as an owned duplicate.
fn producer_fd(tw: &Tripwire) -> Result<OwnedFd, Failed> {
    Ok(tw.producer_fd()?.try_clone_to_owned()?)
}

/// Waits (up to `limit`) for a trip.
fn trip(tw: &mut Tripwire, limit: Duration, what: &str) -> Outcome {
    match tw.wait_timeout(limit)? {
        Some(_) => Ok(()),
        None => Err(format!("no trip within {limit:?}: {what}").into()),
    }
}

fn one_store_is_seen(ctx: &Ctx) -> Outcome {
    let mut tw = create(ctx, LEN)?;
    let w = writer(
        &["inherit".into(), LEN.to_string(), "0xC0FFEE".into()],
        producer_fd(&tw)?,
    )?;
    finished(w)?;
    trip(&mut tw, ms(5_000), "one store by an unmodified producer")?;
    let v: u64 = tw.region().read(0)?;
    ensure(v == 0xC0FFEE, || format!("read {v:#x}"))?;
    settles(&mut tw, "after the one store")
}

fn synchronised_rounds(ctx: &Ctx) -> Outcome {
    const ROUNDS: u64 = 1_000;
    let mut tw = create(ctx, LEN)?;
    let (mut ours, theirs) = UnixStream::pair()?;
    let w = writer(
        &["rounds".into(), LEN.to_string(), ROUNDS.to_string()],
        theirs.into(),
    )?;
    // The fd goes over SCM_RIGHTS, as a protocol that passes fds would.
    send_fd(&ours, tw.producer_fd()?)?;
    for i in 1..=ROUNDS {
        let mut byte = [0u8];
        ours.read_exact(&mut byte)?;
        trip(&mut tw, ms(5_000), &format!("round {i}"))?;
        let v: u64 = tw.region().read(0)?;
        ensure(v == i, || format!("round {i}: read {v}"))?;
        ours.write_all(b"A")?;
    }
    finished(w)?;
    settles(&mut tw, "after the last round")
}

fn free_running_writer_last_store_seen(ctx: &Ctx) -> Outcome {
    const COUNT: u64 = 2_000_000;
    let mut tw = create(ctx, LEN)?;
    let w = writer(
        &[
            "free".into(),
            LEN.to_string(),
            COUNT.to_string(),
            "0".into(),
        ],
        producer_fd(&tw)?,
    )?;
    let deadline = Instant::now() + ms(30_000);
    let mut trips = 0u64;
    // Take trips until the last store is seen: the one after the last ACK
    // must trip again, or this times out.
    loop {
        trip(
            &mut tw,
            ms(5_000),
            "the last store of a free-running writer",
        )?;
        trips += 1;
        let v: u64 = tw.region().read(0)?;
        if v == COUNT {
            break;
        }
        ensure(Instant::now() < deadline, || format!("stuck at {v}"))?;
    }
    eprintln!("  {}: {COUNT} stores seen in {trips} trips", ctx.kind);
    finished(w)?;
    settles(&mut tw, "after the last store")
}

fn several_writer_processes(ctx: &Ctx) -> Outcome {
    const WRITERS: u64 = 4;
    const COUNT: u64 = 200_000;
    let mut tw = create(ctx, LEN)?;
    let mut ws = Vec::new();
    for slot in 0..WRITERS {
        ws.push(writer(
            &[
                "free".into(),
                LEN.to_string(),
                COUNT.to_string(),
                slot.to_string(),
            ],
            producer_fd(&tw)?,
        )?);
    }
    let deadline = Instant::now() + ms(30_000);
    loop {
        trip(&mut tw, ms(5_000), "the last stores of several writers")?;
        let seen: [u64; WRITERS as usize] = tw.region().read(0)?;
        if seen.iter().all(|&v| v == COUNT) {
            break;
        }
        ensure(seen.iter().all(|&v| v <= COUNT), || {
            format!("read {seen:?}")
        })?;
        ensure(Instant::now() < deadline, || format!("stuck at {seen:?}"))?;
    }
    for w in ws {
        finished(w)?;
    }
    settles(&mut tw, "after the writers' last stores")
}

/// Sends `fd` over `sock` with one byte (`SCM_RIGHTS`).
fn send_fd(sock: &UnixStream, fd: std::os::fd::BorrowedFd<'_>) -> Outcome {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let fds = [fd];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    ensure(control.push(SendAncillaryMessage::ScmRights(&fds)), || {
        "SCM_RIGHTS does not fit".into()
    })?;
    rustix::net::sendmsg(
        sock.as_fd(),
        &[std::io::IoSlice::new(b"F")],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}
