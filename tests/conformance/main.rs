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
//!   skipping them. A name that is not a requirement (tests/support/skip.rs)
//!   stops the run at start-up.
//!
//! A backend is skipped only when `create()` says `Error::Unavailable`: one
//! line `skipping: <reason> [<test>]` per trial, at start-up, and the trials
//! are ignored; run with `--include-ignored`, they say "ignored (skipped:
//! ...)" again, never "ok". Any other error from `create()` fails the
//! backend's trials.
//! - `TRIPWIRE_TIME_SCALE=N`: multiply every time-out (slow emulated VMs).

mod child;
mod hostile;
mod scenarios;
#[path = "../support/mod.rs"]
mod support;
mod unmodified;
mod util;

use libtest_mimic::{Arguments, Completion, Failed, Trial};
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
    let required = support::required().unwrap_or_else(|e| {
        eprintln!("conformance: {e}");
        std::process::exit(2);
    });

    let mut trials = Vec::new();
    for &(backend, kind, name) in BACKENDS {
        // Unavailable: a skip (or, if required, a failure); any other error
        // from create() is a failure.
        let (skip, broken) = match Tripwire::builder(4096).backend(backend).create() {
            Ok(_) => (None, None),
            Err(Error::Unavailable { reason, .. }) => (Some(reason), None),
            Err(e) => (
                None,
                Some(format!("creating a {name} tripwire failed: {e}")),
            ),
        };
        let required = required.iter().any(|r| r == name);
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
            match (&skip, &broken, required) {
                (_, Some(error), _) => {
                    let error = error.clone();
                    trials.push(Trial::test(test_name, move || Err(Failed::from(error))));
                }
                (Some(reason), None, false) => {
                    support::say_skipping(&format!("{reason} [{test_name}]"));
                    // Run anyway (--include-ignored, --ignored): says it
                    // skipped, not "ok".
                    let reason = format!("skipped: {reason}");
                    trials.push(
                        Trial::ignorable_test(test_name, move || {
                            Ok(Completion::ignored_with(reason))
                        })
                        .with_ignored_flag(true),
                    );
                }
                (Some(reason), None, true) => {
                    let reason = format!("required by TRIPWIRE_REQUIRE but unavailable: {reason}");
                    trials.push(Trial::test(test_name, move || Err(Failed::from(reason))));
                }
                (None, None, _) => {
                    trials.push(Trial::test(test_name, move || util::with_watchdog(&ctx, f)))
                }
            }
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
