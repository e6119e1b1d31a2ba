//! The one check every blocking call of the crate makes before it sleeps
//! (not on every call: the probe below costs ~530 ns where a runtime
//! context exists, as inside `spawn_blocking`): may this thread block? With feature `tokio`, not when it drives a runtime's async
//! tasks (a task, or a `block_on`): the call panics there, naming the async
//! method to use, as tokio's own `blocking_recv` does, instead of stalling
//! every task of the thread (#23: a `blocking_recv` on a current-thread
//! runtime stalled it for 3 s, silently). Without the feature there is no
//! runtime to stall, and the check is nothing.
//!
//! tokio's own rule (`runtime::context::try_enter_blocking_region`) is
//! "the thread has entered a runtime", which its public API does not
//! expose. Its coop budget tracks the same thing: tokio sets a finite
//! budget around every poll of a task and of a `block_on`'s future, and
//! lifts it (unconstrained) in `spawn_blocking` and `block_in_place`; a
//! thread outside the runtime has none. So the rule here, with public API
//! only: the thread has a runtime context (`Handle::try_current()`) *and*
//! the budget runs out when spent (`coop::poll_proceed` until
//! `coop::has_budget_remaining()` says no, at most [`PROBE`] units). It
//! differs from tokio's in one case: a future wrapped in
//! `tokio::task::coop::unconstrained` has no budget, so a blocking call in
//! it is not caught (tokio's own would panic).

/// More units than a tokio budget holds (128, in a `u8`): a budget that
/// lasts this long is unconstrained.
#[cfg(feature = "tokio")]
const PROBE: usize = 256;

/// Panics if this thread drives a tokio runtime's async tasks (see the
/// module docs for the exact rule): `call` would stall them; `instead`
/// names the async method to use. Nothing without feature `tokio`.
#[track_caller]
#[inline]
pub(crate) fn assert_may_block(call: &'static str, instead: &'static str) {
    #[cfg(feature = "tokio")]
    if drives_async_tasks() {
        panic!(
            "{call} cannot block the current thread from within a tokio runtime: this thread \
             drives async tasks, which would all stall while it waits. Use `{instead}` \
             instead, or call it inside tokio::task::spawn_blocking"
        );
    }
    #[cfg(not(feature = "tokio"))]
    let _ = (call, instead);
}

/// `true` in a task or a `block_on` of a tokio runtime; `false` outside
/// one, in `spawn_blocking` and in `block_in_place`.
#[cfg(feature = "tokio")]
fn drives_async_tasks() -> bool {
    use ::tokio::task::coop;
    // The cheap test first: a thread with no runtime (the common case of a
    // blocking caller) costs one thread-local look.
    if ::tokio::runtime::Handle::try_current().is_err() {
        return false;
    }
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    for _ in 0..PROBE {
        if !coop::has_budget_remaining() {
            // A finite budget: a task's or a block_on's. Spending it does
            // not matter: the caller panics.
            return true;
        }
        match coop::poll_proceed(&mut cx) {
            // Kept spent (dropped as is, it would be given back).
            std::task::Poll::Ready(unit) => unit.made_progress(),
            std::task::Poll::Pending => return true,
        }
    }
    false
}
