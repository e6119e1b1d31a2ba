//! Builder mistakes (#23): every argument out of range is
//! `Error::InvalidArgument`, naming the argument, the value and what is
//! allowed (converting to `io::ErrorKind::InvalidInput`), on every backend
//! it concerns, before anything is created; a region too large for memory
//! is an error, never an abort or a panic.
//!
//! Before #23: a ring's bad capacity or element type was `LayoutMismatch`
//! ("the ring's two ends disagree", with no second end); a bad interval or
//! busy-poll window `Error::Io` with the argument as the operation; a length
//! over the Userfaults' limit `Unavailable`; `usize::MAX` an `Error::Io`
//! from `ftruncate`; a 1 TiB `Poll` region aborted the process (the
//! allocation of its snapshot); a ring on `Poll` with
//! `poll_interval(Duration::MAX)` panicked on its first wait (an overflowing
//! `Duration` sum).

use std::io;
use std::process::Command;
use std::time::Duration;

use memfd_tripwire::ring::SharedRing;
use memfd_tripwire::{Backend, Error, blocking::Tripwire};

mod support;
use support::BACKENDS;

/// Every backend, and the two that are not one mechanism.
const ALL: [Backend; 7] = [
    Backend::Auto,
    Backend::Unmodified,
    Backend::Kernel,
    Backend::Doorbell,
    Backend::Poll,
    Backend::Userfault,
    Backend::UserfaultAsync,
];

/// `r` is `InvalidArgument` naming `arg`, with `value` in its value and
/// its message, an `allowed` that says something, and it converts to
/// `InvalidInput`.
#[track_caller]
fn names<T: std::fmt::Debug>(r: Result<T, Error>, arg: &str, value: &str, case: &str) {
    let e = match r {
        Err(e @ Error::InvalidArgument(_)) => e,
        other => panic!("{case}: {other:?}, not InvalidArgument naming {arg}"),
    };
    let Error::InvalidArgument(a) = &e else {
        unreachable!()
    };
    assert_eq!(a.what(), arg, "{case}: {e}");
    assert!(a.value().contains(value), "{case}: {e}");
    assert!(!a.allowed().is_empty(), "{case}: {e}");
    let text = e.to_string();
    assert!(
        text.contains(arg) && text.contains(value),
        "{case}: {text:?} should name {arg} and {value}"
    );
    assert_eq!(
        io::Error::from(e).kind(),
        io::ErrorKind::InvalidInput,
        "{case}"
    );
}

#[test]
fn a_rings_capacity_and_element_type_are_named() {
    for (name, backend) in BACKENDS {
        for capacity in [1000usize, 0, 1 << 25, usize::MAX] {
            names(
                SharedRing::<u64>::builder(capacity)
                    .backend(backend)
                    .create(),
                "capacity",
                &capacity.to_string(),
                &format!("{name}: capacity {capacity}"),
            );
        }
        names(
            SharedRing::<()>::builder(8).backend(backend).create(),
            "T",
            "0 bytes",
            &format!("{name}: a zero-sized T"),
        );
        names(
            SharedRing::<[u8; 1 << 32]>::builder(1)
                .backend(backend)
                .create(),
            "T",
            "4294967296 bytes",
            &format!("{name}: a 4 GiB T"),
        );
    }
}

#[test]
fn a_length_over_a_backends_limit_is_named() {
    for backend in ALL {
        names(
            Tripwire::builder(usize::MAX).backend(backend).create(),
            "len",
            &usize::MAX.to_string(),
            &format!("{backend:?}: usize::MAX bytes"),
        );
    }
    for backend in [Backend::Userfault, Backend::UserfaultAsync] {
        let len = (16 << 30) + 1;
        names(
            Tripwire::builder(len).backend(backend).create(),
            "len",
            &len.to_string(),
            &format!("{backend:?}: 16 GiB + 1"),
        );
    }
    assert!(matches!(
        Tripwire::builder(0).create(),
        Err(Error::ZeroLength)
    ));
    names(
        memfd_tripwire::SharedMemory::options().create(usize::MAX),
        "len",
        &usize::MAX.to_string(),
        "SharedMemory: usize::MAX bytes",
    );
}

#[test]
fn intervals_and_busy_poll_windows_out_of_range_are_named() {
    let us = Duration::from_micros;
    for backend in [Backend::Poll, Backend::Unmodified, Backend::UserfaultAsync] {
        for interval in [Duration::ZERO, us(9)] {
            names(
                Tripwire::builder(4096)
                    .backend(backend)
                    .poll_interval(interval)
                    .create(),
                "poll_interval",
                &format!("{interval:?}"),
                &format!("{backend:?}: poll_interval {interval:?}"),
            );
        }
    }
    names(
        Tripwire::builder(4096)
            .backend(Backend::UserfaultAsync)
            .poll_interval(Duration::from_secs(11))
            .create(),
        "poll_interval",
        "11s",
        "UserfaultAsync: an 11 s interval (its agent scans at least every 10 s)",
    );
    for backend in [
        Backend::Auto,
        Backend::Kernel,
        Backend::Doorbell,
        Backend::Userfault,
        Backend::UserfaultAsync,
    ] {
        names(
            Tripwire::builder(4096)
                .backend(backend)
                .busy_poll(us(200))
                .create(),
            "busy_poll",
            "200µs",
            &format!("{backend:?}: busy_poll"),
        );
    }
    for backend in [Backend::Poll, Backend::Unmodified] {
        names(
            Tripwire::builder(1 << 20)
                .backend(backend)
                .busy_poll(us(200))
                .create(),
            "busy_poll",
            "1048576 bytes",
            &format!("{backend:?}: busy_poll on 1 MiB"),
        );
        names(
            Tripwire::builder(4096)
                .backend(backend)
                .busy_poll(Duration::MAX)
                .create(),
            "busy_poll",
            &format!("{:?}", Duration::MAX),
            &format!("{backend:?}: busy_poll(Duration::MAX)"),
        );
    }
    // The ring hands its interval to its tripwire, which names it.
    names(
        SharedRing::<u64>::builder(8)
            .backend(Backend::Poll)
            .poll_interval(Duration::ZERO)
            .create(),
        "poll_interval",
        "0ns",
        "a ring on Poll with a zero interval",
    );
}

/// A ring on `Poll` with the longest interval waits without panicking (its
/// spin budget adds the interval: it overflowed).
#[test]
fn a_ring_with_the_longest_interval_waits() {
    let rx = SharedRing::<u64>::builder(8)
        .backend(Backend::Poll)
        .poll_interval(Duration::MAX)
        .create()
        .expect("create");
    let (mut rx, mut tx) = support::with_sender(rx);
    tx.blocking_send(7).expect("send");
    drop(tx);
    assert_eq!(rx.blocking_recv().expect("recv"), Some(7));
    assert_eq!(rx.blocking_recv().expect("recv"), None);
}

/// Set in the child process of
/// [`a_region_too_large_for_memory_is_an_error_not_an_abort`]: the backend
/// to try.
const CHILD: &str = "MEMFD_TRIPWIRE_BUILDER_ARGS_CHILD";

/// A 1 TiB region on `Poll` (and `Unmodified`, which falls back to it
/// without the kernel's tripwire) is an error (or, on a host with a TiB to
/// spare, a tripwire). Run in a child process, so that an abort fails the
/// test instead of ending the run.
#[test]
fn a_region_too_large_for_memory_is_an_error_not_an_abort() {
    if let Ok(which) = std::env::var(CHILD) {
        let backend = which.parse::<Backend>().expect("backend");
        match Tripwire::builder(1 << 40).backend(backend).create() {
            Err(Error::Io { op, source }) if source.kind() == io::ErrorKind::OutOfMemory => {
                println!("child: an error: {op}: {source}");
            }
            Ok(tw) => println!("child: created {} bytes", tw.region().len()),
            Err(e) => println!("child: another error: {e:?}"),
        }
        return;
    }
    for which in ["poll", "unmodified"] {
        let out = Command::new(std::env::current_exe().expect("current_exe"))
            .args([
                "--exact",
                "a_region_too_large_for_memory_is_an_error_not_an_abort",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, which)
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success()
                && (stdout.contains("child: an error") || stdout.contains("child: created")),
            "{which}: 1 TiB gave {}\n{stdout}\n{stderr}",
            out.status
        );
    }
}
