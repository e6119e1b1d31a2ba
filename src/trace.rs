//! The crate's `tracing` events, behind one switch: with feature `tracing`,
//! `debug!` and `warn!` are `tracing::debug!` and `tracing::warn!` (the
//! event's target is the module it is emitted from, under
//! `memfd_tripwire`); without it they expand to a block that never runs
//! (`if false`: the values type-check and count as used, none is computed,
//! and no dependency is built). The only `cfg(feature = "tracing")` of the
//! crate is here.
//!
//! What is emitted, and where (the OS layer, `sys/`, emits nothing: the
//! layers above it know what an OS event means):
//!
//! - debug: a handshake completed or failed, on both sides
//!   (`blocking::Tripwire::share_on`, `Producer::connect_on`); a producer
//!   that said goodbye and hung up (`backend::peers`); a ring whose Sender
//!   closed it (`ring::step`);
//! - warn: a producer that hung up without a goodbye (`backend::peers`), a
//!   ring whose Sender died (`ring::step`), an ACK that timed out
//!   (`backend::userfault::wire`), a ring index from the peer that is
//!   impossible (`ring::core`).
//!
//! Arguments are written as for `tracing`'s macros, in the subset the
//! featureless expansion knows: fields `name = %value` (`Display`) or
//! `name = value`, each followed by a comma, then the message, a literal
//! (`debug!(backend = %kind, peers = n, "...")`).

#[cfg(feature = "tracing")]
macro_rules! debug_event {
    ($($arg:tt)+) => { ::tracing::debug!($($arg)+) };
}

#[cfg(feature = "tracing")]
macro_rules! warn_event {
    ($($arg:tt)+) => { ::tracing::warn!($($arg)+) };
}

#[cfg(not(feature = "tracing"))]
macro_rules! debug_event {
    ($($arg:tt)+) => { if false { $crate::trace::unused!($($arg)+); } };
}

#[cfg(not(feature = "tracing"))]
macro_rules! warn_event {
    ($($arg:tt)+) => { if false { $crate::trace::unused!($($arg)+); } };
}

/// Without the feature: each field's value, borrowed in a block that never
/// runs (`if false`, removed by the compiler), so that the values still
/// type-check and count as used. The fields this crate writes: `name =
/// %value`, `name = value`, then the message, a literal.
#[cfg(not(feature = "tracing"))]
macro_rules! unused {
    ($message:literal) => {};
    ($field:ident = % $value:expr, $($rest:tt)+) => {
        let _ = &$value;
        $crate::trace::unused!($($rest)+)
    };
    ($field:ident = $value:expr, $($rest:tt)+) => {
        let _ = &$value;
        $crate::trace::unused!($($rest)+)
    };
}

#[cfg(not(feature = "tracing"))]
pub(crate) use unused;

/// A routine event: a handshake, a clean close.
pub(crate) use debug_event as debug;
/// Something the user should look at: a death, a time-out, a corrupt peer.
pub(crate) use warn_event as warn;
