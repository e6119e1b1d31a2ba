//! What the integration tests share: the skip convention (`skip!`,
//! `TRIPWIRE_REQUIRE`), from skip.rs, which the library's unit tests
//! include too.
#![allow(dead_code, unused_macros, unused_imports)] // each test crate uses part of it

include!("skip.rs");

/// `skip!("userfault", "userfaultfd unavailable: {e}")`: says
/// `skipping: <why>` (or panics if `TRIPWIRE_REQUIRE` names the
/// requirement) and returns from the test.
macro_rules! skip {
    ($requirement:expr, $($why:tt)+) => {{
        $crate::support::skipping($requirement, &format!($($why)+));
        return;
    }};
}
pub(crate) use skip;
