//! `Backend::Auto`'s order and its error, as documented: `Kernel`, then
//! `Userfault`, otherwise `Error::NoBackend` naming each backend tried, why
//! it failed, and the explicit choices (`Doorbell`, `Poll`); never
//! `UserfaultAsync`. `Backend::Unmodified`: `Kernel`, else `Poll`.
//!
//! On the host, what `Auto` picks is compared with what each backend asked
//! by name says. Then a seccomp filter on one thread (filters are
//! per-thread: the rest of the process is untouched) makes the
//! `memfd_tripwire` syscall and `userfaultfd(2)` fail there with a chosen
//! errno, so that the fallback and the error are seen on any host.

use memfd_tripwire::blocking::Tripwire;
use memfd_tripwire::{Backend, BackendKind, Error};

mod support;

/// The RFC's syscall number, the crate's default for `Kernel`.
const MEMFD_TRIPWIRE_NR: i64 = 472;

fn kind_of(backend: Backend) -> Result<BackendKind, Error> {
    Tripwire::builder(4096)
        .backend(backend)
        .create()
        .map(|tw| tw.backend())
}

/// What `Auto` must do here, from each backend asked for by name.
fn expected_auto() -> Result<BackendKind, Vec<(BackendKind, String)>> {
    let mut tried = Vec::new();
    for kind in [BackendKind::Kernel, BackendKind::Userfault] {
        let backend = match kind {
            BackendKind::Kernel => Backend::Kernel,
            _ => Backend::Userfault,
        };
        match kind_of(backend) {
            Ok(k) => {
                assert_eq!(k, kind);
                return Ok(kind);
            }
            Err(Error::Unavailable { backend, reason }) => {
                assert_eq!(backend, kind);
                tried.push((kind, reason));
            }
            Err(e) => panic!("{kind}: not Unavailable but {e}"),
        }
    }
    Err(tried)
}

/// Checks a `NoBackend` error against what each backend said by name:
/// `Kernel` then `Userfault`, each with its reason, and the explicit
/// choices in the message.
fn check_no_backend(e: &Error, tried: &[(BackendKind, String)]) {
    let Error::NoBackend { tried: got } = e else {
        panic!("not NoBackend: {e}");
    };
    assert_eq!(got, tried, "{e}");
    let text = e.to_string();
    for (kind, why) in tried {
        assert!(text.contains(&format!("{kind}: {why}")), "{text}");
    }
    assert!(
        text.contains("Backend::Doorbell") && text.contains("Backend::Poll"),
        "the explicit choices are missing: {text}"
    );
    assert_eq!(
        std::io::Error::from(Error::NoBackend { tried: got.clone() }).kind(),
        std::io::ErrorKind::Unsupported
    );
}

/// On this host, `Auto` picks what the documented order says, given what
/// each backend says when asked by name; `Unmodified` likewise.
#[test]
fn auto_follows_the_documented_order_on_this_host() {
    let expected = expected_auto();
    match (&expected, kind_of(Backend::Auto)) {
        (Ok(kind), Ok(got)) => {
            assert_eq!(got, *kind);
            println!("Auto picked {got}");
        }
        (Err(tried), Err(e)) => {
            check_no_backend(&e, tried);
            println!("Auto refused, as expected: {e}");
        }
        (expected, got) => panic!("Auto gave {got:?}, expected {expected:?}"),
    }
    let unmodified = kind_of(Backend::Unmodified).expect("Unmodified");
    let kernel = kind_of(Backend::Kernel).is_ok();
    assert_eq!(
        unmodified,
        if kernel {
            BackendKind::Kernel
        } else {
            BackendKind::Poll
        }
    );
}

/// Runs `f` on a thread of its own whose `memfd_tripwire` syscall fails
/// with `kernel_errno` and whose `userfaultfd(2)` fails with `uffd_errno`
/// (0: allowed). `None` (after a `skipping:` line) where the filter cannot
/// be installed.
fn with_denied<R: Send + 'static>(
    kernel_errno: i32,
    uffd_errno: i32,
    f: impl FnOnce() -> R + Send + 'static,
) -> Option<R> {
    std::thread::spawn(move || {
        if let Err(why) = seccomp::deny(&[
            (MEMFD_TRIPWIRE_NR, kernel_errno),
            (libc::SYS_userfaultfd, uffd_errno),
        ]) {
            // No requirement names a seccomp filter: said, never required.
            support::say_skipping(&format!(
                "cannot filter the test thread's system calls: {why}"
            ));
            return None;
        }
        Some(f())
    })
    .join()
    .expect("thread")
}

/// With no `Kernel`, `Auto` picks `Userfault` (where it works), never
/// `UserfaultAsync`.
#[test]
fn auto_falls_back_to_userfault_without_the_syscall() {
    let Some((auto, userfault)) = with_denied(libc::ENOSYS, 0, || {
        (kind_of(Backend::Auto), kind_of(Backend::Userfault))
    }) else {
        return;
    };
    match (auto, userfault) {
        (Ok(got), Ok(_)) => assert_eq!(got, BackendKind::Userfault),
        (Err(e), Err(Error::Unavailable { reason, .. })) => {
            support::skipping(
                "userfault",
                &format!("Userfault unavailable here ({reason}); Auto said {e}"),
            );
        }
        (auto, userfault) => panic!("Auto: {auto:?}; Userfault by name: {userfault:?}"),
    }
}

/// With neither the syscall nor `userfaultfd(2)`, `Auto` fails with
/// `NoBackend`, naming `Kernel` (ENOSYS: no RFC patch) and `Userfault`
/// (ENOSYS: no CONFIG_USERFAULTFD, or EPERM: how to allow it), each with
/// the reason it gives when asked by name, and the explicit choices.
#[test]
fn auto_names_each_backend_tried_and_why() {
    for (uffd_errno, says) in [
        (libc::ENOSYS, "CONFIG_USERFAULTFD"),
        (libc::EPERM, "vm.unprivileged_userfaultfd"),
    ] {
        let Some((auto, kernel, userfault, unmodified)) =
            with_denied(libc::ENOSYS, uffd_errno, || {
                (
                    kind_of(Backend::Auto),
                    kind_of(Backend::Kernel),
                    kind_of(Backend::Userfault),
                    kind_of(Backend::Unmodified),
                )
            })
        else {
            return;
        };
        let reason = |r: Result<BackendKind, Error>| match r {
            Err(Error::Unavailable { reason, .. }) => reason,
            other => panic!("not Unavailable: {other:?}"),
        };
        let tried = vec![
            (BackendKind::Kernel, reason(kernel)),
            (BackendKind::Userfault, reason(userfault)),
        ];
        assert!(tried[0].1.contains("ENOSYS"), "{}", tried[0].1);
        assert!(tried[1].1.contains(says), "{}", tried[1].1);
        let e = auto.expect_err("Auto with neither backend");
        check_no_backend(&e, &tried);
        assert_eq!(unmodified.expect("Unmodified"), BackendKind::Poll);
        println!("{e}");
    }
}

/// A seccomp filter for the calling thread (and threads it starts) that
/// fails chosen system calls with chosen errnos.
mod seccomp {
    /// `AUDIT_ARCH_X86_64`, `AUDIT_ARCH_AARCH64` (linux/audit.h).
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7;

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    pub fn deny(calls: &[(i64, i32)]) -> Result<(), String> {
        use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, sock_filter};
        let stmt = |code: u32, k: u32| sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let jump = |k: u32, jt: u8, jf: u8| sock_filter {
            code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
            jt,
            jf,
            k,
        };
        // struct seccomp_data: nr at 0, arch at 4.
        let mut prog = vec![
            stmt(BPF_LD | BPF_W | BPF_ABS, 4),
            jump(ARCH, 1, 0),
            stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
            stmt(BPF_LD | BPF_W | BPF_ABS, 0),
        ];
        for &(nr, errno) in calls.iter().filter(|&&(_, errno)| errno != 0) {
            prog.push(jump(nr as u32, 0, 1));
            prog.push(stmt(
                BPF_RET | BPF_K,
                libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA),
            ));
        }
        prog.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_mut_ptr(),
        };
        // SAFETY: prctl with these options takes the arguments given; the
        // filter outlives the call (the kernel copies it).
        let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if ret != 0 {
            return Err(format!(
                "prctl(PR_SET_NO_NEW_PRIVS): {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: as above; `fprog` points at `prog`, alive here.
        let ret = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
            )
        };
        if ret != 0 {
            return Err(format!(
                "prctl(PR_SET_SECCOMP): {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub fn deny(_: &[(i64, i32)]) -> Result<(), String> {
        Err("no seccomp filter for this architecture in the test".into())
    }
}
