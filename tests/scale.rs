//! Many tripwires on one runtime (#16): 1,000 Doorbell tripwires, each
//! shared with its own producer and watched by its own task on one
//! current-thread runtime; every producer rings in turn, and exactly its
//! task wakes, with the value it stored. Host only, sized for 2 cores.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use memfd_tripwire::{Backend, Producer, Tripwire, blocking};

mod support;
use support::skip;

const N: usize = 1_000;

/// Raises the soft limit of open files to the hard one: each tripwire and
/// its producer hold 4 in this one process (3 and 1), 6 counted to be safe.
fn enough_fds() -> Result<(), String> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let need = (N * 6) as u64;
    if limit.maximum.is_some_and(|max| max < need) {
        return Err(format!(
            "the hard limit of open files is {:?}, under the {need} this test needs",
            limit.maximum
        ));
    }
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit).map_err(|e| format!("setrlimit: {e}"))
}

#[test]
fn a_thousand_tripwires_on_one_runtime() {
    if let Err(why) = enough_fds() {
        skip!("fd_limit", "a_thousand_tripwires_on_one_runtime: {why}");
    }
    let mut producers = Vec::with_capacity(N);
    let mut wires = Vec::with_capacity(N);
    for _ in 0..N {
        let mut tw = blocking::Tripwire::builder(64)
            .backend(Backend::Doorbell)
            .create()
            .expect("tripwire");
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let producer = std::thread::spawn(move || Producer::connect(theirs));
        tw.share(ours).expect("share");
        producers.push(producer.join().expect("thread").expect("connect"));
        wires.push(tw);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let woken: Arc<Vec<AtomicU64>> = Arc::new((0..N).map(|_| AtomicU64::new(0)).collect());
    rt.block_on(async move {
        let mut tasks = Vec::with_capacity(N);
        for (i, tw) in wires.into_iter().enumerate() {
            let woken = woken.clone();
            tasks.push(tokio::spawn(async move {
                let mut tw = Tripwire::new(tw).expect("register");
                tw.changed().await.expect("changed");
                let v: u64 = tw.region().read(0).expect("read");
                woken[i].store(v, Ordering::Relaxed);
                tw
            }));
        }
        // Let every task reach its first wait, then ring each in turn from
        // a thread (a producer stores, then notifies).
        tokio::task::yield_now().await;
        let ringer = std::thread::spawn(move || {
            for (i, p) in producers.iter().enumerate() {
                p.region().write(0, &(i as u64 + 1)).expect("store");
                p.notify().expect("notify");
            }
            producers
        });
        for (i, task) in tasks.into_iter().enumerate() {
            let tw = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .unwrap_or_else(|_| panic!("tripwire {i} never woke"))
                .expect("task");
            assert_eq!(
                woken[i].load(Ordering::Relaxed),
                i as u64 + 1,
                "tripwire {i} woke with another's value"
            );
            // Nothing else rang this one.
            let mut tw = tw;
            assert_eq!(tw.try_changed().expect("look"), None, "tripwire {i}");
        }
        drop(ringer.join().expect("ringer"));
    });
}
