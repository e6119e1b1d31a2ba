// The suite's one skip convention, shared by the integration tests
// (tests/support/mod.rs) and the library's unit tests (include!d into a
// cfg(test) module): plain items and `//` comments only, so both can
// include it.
//
// A test that cannot run here prints exactly one line, `skipping: <why>`,
// on the process's real stderr (not through eprintln!, which libtest
// captures: the line shows in `cargo test` output without --nocapture, and
// .ci/run counts these lines), then returns. If the thing it lacks is named
// in `TRIPWIRE_REQUIRE` (comma-separated), it panics instead: a required
// skip is a failure. An unknown name in `TRIPWIRE_REQUIRE` is an error too.

/// What `TRIPWIRE_REQUIRE` can name, and what each means.
pub const REQUIRABLE: &[(&str, &str)] = &[
    ("kernel", "the memfd_tripwire(2) syscall (Backend::Kernel)"),
    ("userfault", "userfaultfd write-protect (Backend::Userfault)"),
    (
        "userfault_async",
        "UFFD_FEATURE_WP_ASYNC and PAGEMAP_SCAN (Backend::UserfaultAsync)",
    ),
    ("doorbell", "Backend::Doorbell"),
    ("poll", "Backend::Poll"),
    ("root", "running as root (tests that switch uid)"),
    (
        "fd_limit",
        "a hard limit of open files high enough for tests/scale.rs",
    ),
];

/// The names in `TRIPWIRE_REQUIRE`; `Err` names the unknown ones and lists
/// the valid names.
pub fn required() -> Result<Vec<String>, String> {
    let raw = std::env::var("TRIPWIRE_REQUIRE").unwrap_or_default();
    let names: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let unknown: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !REQUIRABLE.iter().any(|(valid, _)| valid == n))
        .collect();
    if unknown.is_empty() {
        return Ok(names);
    }
    let valid: Vec<String> = REQUIRABLE
        .iter()
        .map(|(name, what)| format!("  {name}: {what}"))
        .collect();
    Err(format!(
        "TRIPWIRE_REQUIRE={raw:?} names {unknown:?}, which is not a requirement; the valid names are:\n{}",
        valid.join("\n")
    ))
}

/// Whether `TRIPWIRE_REQUIRE` names `requirement` (one of [`REQUIRABLE`]);
/// panics on a misspelt `TRIPWIRE_REQUIRE` or `requirement`.
pub fn is_required(requirement: &str) -> bool {
    assert!(
        REQUIRABLE.iter().any(|(n, _)| *n == requirement),
        "{requirement:?} is not in REQUIRABLE"
    );
    match required() {
        Ok(names) => names.iter().any(|n| n == requirement),
        Err(e) => panic!("{e}"),
    }
}

/// Prints `skipping: <why>` as one line on the real stderr (fd 2), where
/// libtest's capture does not reach.
pub fn say_skipping(why: &str) {
    use std::io::Write;
    let line = format!("skipping: {why}\n");
    // One write: lines of tests running in parallel do not interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The test lacks `requirement`, because `why`: panics if
/// `TRIPWIRE_REQUIRE` names it, else says `skipping: <why>`. The caller
/// returns next.
pub fn skipping(requirement: &str, why: &str) {
    if is_required(requirement) {
        panic!("required by TRIPWIRE_REQUIRE ({requirement}) but skipped: {why}");
    }
    say_skipping(why);
}
