//! Child-process roles: the same test binary, re-run with `ROLE_ENV` set.
//! fd 0 is the handshake socket (or, for `from_fd_write`, the tripwire fd).

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use memfd_tripwire::{Backend, Producer, blocking::Tripwire};

pub const ROLE_ENV: &str = "MEMFD_TRIPWIRE_CHILD";

fn env_u64(key: &str) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fail(&format!("child: missing or bad {key}")))
}

/// The backend named (as `BackendKind`'s Display) in `BACKEND`.
fn env_backend() -> Backend {
    match std::env::var("BACKEND").as_deref() {
        Ok("Kernel") => Backend::Kernel,
        Ok("Userfault") => Backend::Userfault,
        Ok("UserfaultAsync") => Backend::UserfaultAsync,
        Ok("Doorbell") => Backend::Doorbell,
        Ok("Poll") => Backend::Poll,
        other => fail(&format!("child: bad BACKEND {other:?}")),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(2)
}

fn stdin_fd() -> OwnedFd {
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .unwrap_or_else(|e| fail(&format!("child: dup stdin: {e}")))
}

/// Says "ready" on stdout and lives until killed (or the watchdog).
fn ready_then_linger() -> ! {
    println!("ready");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Points fd 0 (the handshake socket) at /dev/null: with the Producer
/// gone, no fd of this process holds the socket any more.
fn close_stdin() {
    let null = std::fs::File::open("/dev/null").unwrap_or_else(|e| fail(&format!("child: {e}")));
    rustix::stdio::dup2_stdin(&null).unwrap_or_else(|e| fail(&format!("child: dup2: {e}")));
}

fn connect() -> Producer {
    Producer::connect(UnixStream::from(stdin_fd()))
        .unwrap_or_else(|e| fail(&format!("child: connect: {e}")))
}

fn write_u64(p: &Producer, offset: usize, v: u64) {
    p.region()
        .write(offset, &v)
        .unwrap_or_else(|e| fail(&format!("child: write: {e}")));
    p.notify()
        .unwrap_or_else(|e| fail(&format!("child: notify: {e}")));
}

/// Runs `role` and exits; never returns to the test harness.
pub fn run(role: &str) -> ! {
    // No orphan outlives its test by much, whatever happens to the parent.
    let limit = Duration::from_secs(120) * crate::util::scale();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        fail("child: watchdog expired");
    });
    match role {
        "raw_writer" => raw_writer(),
        "write_once" => {
            let p = connect();
            write_u64(&p, env_u64("OFFSET") as usize, env_u64("VALUE"));
        }
        "from_fd_write" => {
            let p = Producer::from_fd(stdin_fd())
                .unwrap_or_else(|e| fail(&format!("child: from_fd: {e}")));
            write_u64(&p, 0, env_u64("VALUE"));
        }
        "rounds" => {
            // stdout is the sync socket: one byte from the parent per round.
            let p = connect();
            let mut sync = UnixStream::from(
                std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .unwrap_or_else(|e| fail(&format!("child: dup stdout: {e}"))),
            );
            for i in 1..=env_u64("ROUNDS") {
                write_u64(&p, 0, i);
                let mut go = [0u8];
                if sync.read_exact(&mut go).is_err() {
                    fail("child: parent went away");
                }
            }
        }
        "writer_slot" => {
            // stdout is the sync socket: "d" once every store returned,
            // then the producer stays connected until the parent closes it.
            let p = connect();
            let mut sync = UnixStream::from(
                std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .unwrap_or_else(|e| fail(&format!("child: dup stdout: {e}"))),
            );
            let offset = (env_u64("SLOT") * env_u64("STRIDE")) as usize;
            for v in 1..=env_u64("COUNT") {
                write_u64(&p, offset, v);
                if v % 64 == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            sync.write_all(b"d")
                .unwrap_or_else(|e| fail(&format!("child: sync: {e}")));
            let mut end = [0u8];
            let _ = sync.read(&mut end); // EOF (or a byte): exit
            drop(p);
        }
        "write_then_linger" => {
            let p = connect();
            write_u64(&p, 0, env_u64("VALUE"));
            ready_then_linger();
        }
        "write_drop_linger" => {
            // A clean close: the Producer is dropped, the process lives on.
            let p = connect();
            write_u64(&p, 0, env_u64("VALUE"));
            drop(p);
            close_stdin();
            ready_then_linger();
        }
        "write_panic_linger" => {
            // A panic unwinds past the Producer on a thread; the process
            // lives on.
            let p = connect();
            let _ = std::thread::spawn(move || {
                write_u64(&p, 0, env_u64("VALUE"));
                std::panic::set_hook(Box::new(|_| {}));
                panic!("child: on purpose, with the Producer in scope");
            })
            .join();
            close_stdin();
            ready_then_linger();
        }
        "consumer_then_exit" => {
            let backend = env_backend();
            let mut tw = Tripwire::builder(4096)
                .backend(backend)
                .create()
                .unwrap_or_else(|e| fail(&format!("child: create: {e}")));
            tw.share(UnixStream::from(stdin_fd()))
                .unwrap_or_else(|e| fail(&format!("child: share: {e}")));
            if std::env::var_os("LINGER").is_some() {
                ready_then_linger();
            }
        }
        "ring_sender" => {
            let sock = UnixStream::from(stdin_fd());
            let mut tx = memfd_tripwire::ring::Sender::<crate::scenarios::Msg>::connect_with_tag(
                sock,
                crate::scenarios::RING_TAG,
            )
            .unwrap_or_else(|e| fail(&format!("child: ring connect: {e}")));
            let count = env_u64("COUNT");
            let size = std::env::var("BATCH").map_or(64, |_| env_u64("BATCH") as usize);
            let mut batch = Vec::with_capacity(size);
            let mut i = 0;
            while i < count {
                batch.clear();
                while batch.len() < size && i < count {
                    batch.push(crate::scenarios::msg(i));
                    i += 1;
                }
                tx.blocking_send_many(&batch)
                    .unwrap_or_else(|e| fail(&format!("child: ring send: {e}")));
            }
            if std::env::var_os("LINGER").is_some() {
                println!("sent");
                let _ = std::io::stdout().flush();
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        "ring_receiver_then_exit" => {
            let backend = env_backend();
            let mut rx = memfd_tripwire::ring::SharedRing::<crate::scenarios::Msg>::builder(8)
                .backend(backend)
                .type_tag(crate::scenarios::RING_TAG)
                .create()
                .unwrap_or_else(|e| fail(&format!("child: ring create: {e}")));
            rx.share(UnixStream::from(stdin_fd()))
                .unwrap_or_else(|e| fail(&format!("child: ring share: {e}")));
        }
        "exhaust_fds" => {
            // A low limit of open files, then tripwires until one fails:
            // the error must say what to do.
            let limit = rustix::process::Rlimit {
                current: Some(64),
                maximum: rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum,
            };
            rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                .unwrap_or_else(|e| fail(&format!("child: setrlimit: {e}")));
            let mut held = Vec::new();
            loop {
                match Tripwire::builder(4096).backend(env_backend()).create() {
                    Ok(tw) => held.push(tw),
                    Err(e) => {
                        println!("{} {e}", held.len());
                        std::process::exit(0);
                    }
                }
                if held.len() > 1000 {
                    fail("child: 1000 tripwires under a limit of 64 fds");
                }
            }
        }
        "count_fds" => {
            // What one tripwire costs this process in fds, counted where no
            // other test opens any: created, shared with a producer in
            // another process, registered with tokio. Twice: the first
            // also starts what the process keeps once (Poll's threads and
            // their epoll), the second is what each tripwire adds.
            let fds = || {
                std::fs::read_dir("/proc/self/fd")
                    .unwrap_or_else(|e| fail(&format!("child: /proc/self/fd: {e}")))
                    .count()
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| fail(&format!("child: runtime: {e}")));
            let mut kept = Vec::new();
            let mut counts = Vec::new();
            for _ in 0..2 {
                let base = fds();
                let mut tw = Tripwire::builder(4096)
                    .backend(env_backend())
                    .create()
                    .unwrap_or_else(|e| fail(&format!("child: create: {e}")));
                let created = fds() - base;
                let (ours, theirs) =
                    UnixStream::pair().unwrap_or_else(|e| fail(&format!("child: socketpair: {e}")));
                let mut producer =
                    crate::util::spawn("connect_then_linger", &[], theirs.into(), None)
                        .unwrap_or_else(|e| fail(&format!("child: spawn: {e:?}")));
                tw.share(ours)
                    .unwrap_or_else(|e| fail(&format!("child: share: {e}")));
                // The producer's stdout pipe is the harness's, not the
                // tripwire's.
                drop(producer.stdout.take());
                let shared = fds() - base;
                let (tw, registered) = rt.block_on(async {
                    let tw = memfd_tripwire::Tripwire::new(tw)
                        .unwrap_or_else(|e| fail(&format!("child: register: {e}")));
                    (tw, fds() - base)
                });
                kept.push((tw, producer));
                counts.push(format!("{created} {shared} {registered}"));
            }
            for (tw, mut producer) in kept {
                let _enter = rt.enter();
                drop(tw);
                let _ = producer.kill();
                let _ = producer.wait();
            }
            println!("{}", counts.join(" "));
            std::process::exit(0);
        }
        "connect_then_linger" => {
            let _p = connect();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "connect_until_closed" => {
            // Says "ready", then "closed" once its Producer says the
            // consumer dropped it (an eviction), and lingers.
            let p = connect();
            println!("ready");
            let _ = std::io::stdout().flush();
            while !p.is_closed() {
                std::thread::sleep(Duration::from_millis(10));
            }
            println!("closed");
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "store_then_unmap" => {
            // Stores into one page of its mapping, then unmaps that page
            // (as a hostile or careless producer may), then reports on
            // stdout and lingers.
            let p = connect();
            let offset = env_u64("OFFSET") as usize;
            write_u64(&p, offset, 1);
            let base = region_address().unwrap_or_else(|| fail("child: mapping not found"));
            // SAFETY (test code): the page lies inside the producer's own
            // mapping of the region; nothing in this process touches it
            // again (the Producer's drop unmaps the whole range, which
            // tolerates the hole).
            unsafe { rustix::mm::munmap((base + offset) as *mut _, 4096) }
                .unwrap_or_else(|e| fail(&format!("child: munmap: {e}")));
            let mut out = std::io::stdout();
            let _ = out.write_all(b"u");
            let _ = out.flush();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        other => fail(&format!("child: unknown role {other}")),
    }
    std::process::exit(0)
}

/// The address of this process's mapping of the region memfd (named
/// `memfd-tripwire`), from `/proc/self/maps`.
fn region_address() -> Option<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .find(|l| l.ends_with("/memfd:memfd-tripwire (deleted)"))
        .and_then(|l| l.split('-').next())
        .and_then(|a| usize::from_str_radix(a, 16).ok())
}

/// `tests/unmodified/writer.c` in Rust, for where there is no C compiler
/// (the RFC VM): maps the fd it gets and stores, with no call into this
/// crate. Same arguments.
fn raw_writer() -> ! {
    use std::sync::atomic::{AtomicU64, Ordering};
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> u64 {
        args.get(i)
            .and_then(|a| {
                a.strip_prefix("0x")
                    .map_or_else(|| a.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
            })
            .unwrap_or_else(|| fail(&format!("raw_writer: bad argument {i} in {args:?}")))
    };
    let len = num(1) as usize;
    let map = |fd: &OwnedFd| -> &'static [AtomicU64] {
        // SAFETY: a fresh shared mapping of `len` bytes (null hint, no
        // MAP_FIXED), never unmapped (the process exits): the slice of
        // atomics lives as long as the process, and other processes'
        // stores into it are atomic accesses as far as this one can tell.
        unsafe {
            let p = rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )
            .unwrap_or_else(|e| fail(&format!("raw_writer: mmap: {e}")));
            std::slice::from_raw_parts(p.cast::<AtomicU64>(), len / 8)
        }
    };
    match args.first().map(String::as_str) {
        Some("inherit") => map(&stdin_fd())[0].store(num(2), Ordering::Release),
        Some("rounds") => {
            let mut sock = UnixStream::from(stdin_fd());
            let fd = recv_fd(&sock);
            let m = map(&fd);
            for i in 1..=num(2) {
                m[0].store(i, Ordering::Release);
                let mut byte = [b'S'];
                sock.write_all(&byte)
                    .unwrap_or_else(|e| fail(&format!("raw_writer: {e}")));
                sock.read_exact(&mut byte)
                    .unwrap_or_else(|e| fail(&format!("raw_writer: {e}")));
            }
        }
        Some("free") => {
            let m = map(&stdin_fd());
            let slot = num(3) as usize;
            for i in 1..=num(2) {
                m[slot].store(i, Ordering::Release);
            }
        }
        other => fail(&format!("raw_writer: unknown mode {other:?}")),
    }
    println!("done");
    let _ = std::io::stdout().flush();
    std::process::exit(0)
}

/// One fd received with one byte (`SCM_RIGHTS`).
fn recv_fd(sock: &UnixStream) -> OwnedFd {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8];
    rustix::net::recvmsg(
        sock,
        &mut [std::io::IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::empty(),
    )
    .unwrap_or_else(|e| fail(&format!("raw_writer: recvmsg: {e}")));
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
            if let Some(fd) = fds.next() {
                return fd;
            }
        }
    }
    fail("raw_writer: no fd came")
}
