//! The conformance suite: one body of scenarios, run against every backend.
//!
//! A custom harness (libtest-mimic) so that the same binary can also be its
//! own child process: with `MEMFD_TRIPWIRE_CHILD=<role>` set, `main` plays a
//! producer (or consumer) role from `child.rs` instead of running tests. That
//! is what `run-in-vm` needs: it ships exactly one binary into the VM.
//!
//! Environment:
//! - `TRIPWIRE_REQUIRE=kernel,userfault,userfault_async,doorbell,poll`: a
//!   required backend that is unavailable fails its tests instead of
//!   skipping them.
//! - `TRIPWIRE_TIME_SCALE=N`: multiply every time-out (slow emulated VMs).

mod child;
mod hostile;
mod scenarios;
mod unmodified;
mod util;

use libtest_mimic::{Arguments, Failed, Trial};
use memfd_tripwire::{Backend, BackendKind, Error, blocking::Tripwire};

/// The backends under test, with the name `TRIPWIRE_REQUIRE` uses.
const BACKENDS: &[(Backend, BackendKind, &str)] = &[
    (Backend::Kernel, BackendKind::Kernel, "kernel"),
    (Backend::Userfault, BackendKind::Userfault, "userfault"),
    (
        Backend::UserfaultAsync,
        BackendKind::UserfaultAsync,
        "userfault_async",
    ),
    (Backend::Doorbell, BackendKind::Doorbell, "doorbell"),
    (Backend::Poll, BackendKind::Poll, "poll"),
];

fn main() {
    if let Ok(role) = std::env::var(child::ROLE_ENV) {
        child::run(&role);
    }
    let args = Arguments::from_args();
    let required = std::env::var("TRIPWIRE_REQUIRE").unwrap_or_default();
    let required: Vec<&str> = required.split(',').map(str::trim).collect();

    let mut trials = Vec::new();
    for &(backend, kind, name) in BACKENDS {
        let skip = match Tripwire::builder(4096).backend(backend).create() {
            Ok(_) => None,
            Err(Error::Unavailable { reason, .. }) => Some(reason),
            Err(e) => Some(e.to_string()),
        };
        let required = required.contains(&name);
        for &(scenario, f, only) in scenarios::ALL
            .iter()
            .chain(hostile::ALL)
            .chain(unmodified::ALL)
        {
            if !only.is_empty() && !only.contains(&kind) {
                continue;
            }
            let test_name = format!("{name}::{scenario}");
            let ctx = util::Ctx { backend, kind };
            match (&skip, required) {
                (Some(reason), false) => {
                    eprintln!("skipping: {reason} [{test_name}]");
                    trials.push(Trial::test(test_name, || Ok(())).with_ignored_flag(true));
                }
                (Some(reason), true) => {
                    let reason = format!("required by TRIPWIRE_REQUIRE but unavailable: {reason}");
                    trials.push(Trial::test(test_name, move || Err(Failed::from(reason))));
                }
                (None, _) => {
                    trials.push(Trial::test(test_name, move || util::with_watchdog(&ctx, f)))
                }
            }
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
