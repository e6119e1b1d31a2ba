//! What one call costs when nothing waits, with criterion: the ring's
//! per-message and per-batch paths, `Producer::notify()` on `Doorbell`
//! (armed or not), and `Region` copies (8 and 64 bytes with `read`/`write`,
//! an unaligned `u32`, 4096 bytes with `read_bytes`/`write_bytes`). One
//! process, one thread, so these are the crate's own overheads: no
//! cache-line transfer between CPUs, no wake-up. The two-process figures (wake-up latency, throughput between
//! pinned processes, trapped stores) are `doorbell_latency`, `userfault` and
//! `ring` (see `scripts/bench-*`).
//!
//! Run: `cargo bench -p memfd-tripwire-bench --bench ops` (criterion's options after `--`, e.g.
//! `cargo bench -p memfd-tripwire-bench --bench ops -- ring`).

use std::hint::black_box;
use std::os::unix::net::UnixStream;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use memfd_tripwire::ring::{Receiver, Sender, SharedRing};
use memfd_tripwire::{Backend, Producer, blocking};

type Msg = [u64; 8];
const BATCH: usize = 256;

/// A ring and its Sender in this process (the handshake needs both ends).
fn ring_pair(backend: Backend) -> (Receiver<Msg>, Sender<Msg>) {
    let mut rx = SharedRing::<Msg>::builder(1024)
        .backend(backend)
        .create()
        .expect("ring");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let tx = std::thread::spawn(move || Sender::<Msg>::connect(theirs));
    rx.share(ours).expect("share");
    (rx, tx.join().expect("connect thread").expect("connect"))
}

/// A tripwire and its Producer in this process.
fn wire_pair(backend: Backend) -> (blocking::Tripwire, Producer) {
    let mut tw = blocking::Tripwire::builder(4096)
        .backend(backend)
        .create()
        .expect("tripwire");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let p = std::thread::spawn(move || Producer::connect(theirs));
    tw.share(ours).expect("share");
    (tw, p.join().expect("connect thread").expect("connect"))
}

fn ring(c: &mut Criterion) {
    for (name, backend) in [
        ("doorbell", Backend::Doorbell),
        ("userfault", Backend::Userfault),
    ] {
        let (mut rx, mut tx) = ring_pair(backend);
        let mut g = c.benchmark_group(format!("ring_64B_{name}"));
        g.throughput(Throughput::Elements(1));
        let mut i = 0u64;
        g.bench_function("try_send+try_recv", |b| {
            b.iter(|| {
                i += 1;
                tx.try_send([i; 8]).expect("room");
                black_box(rx.try_recv().expect("a message"))
            })
        });
        g.throughput(Throughput::Elements(BATCH as u64));
        let batch: Vec<Msg> = (0..BATCH as u64).map(|i| [i; 8]).collect();
        let mut buf = Vec::with_capacity(BATCH);
        g.bench_function("send_many+recv_many_256", |b| {
            b.iter(|| {
                tx.blocking_send_many(&batch).expect("room");
                buf.clear();
                let mut n = 0;
                while n < BATCH {
                    n += rx.blocking_recv_many(&mut buf, BATCH).expect("recv");
                }
                black_box(&buf);
            })
        });
        g.finish();
    }
}

fn notify(c: &mut Criterion) {
    let (mut tw, p) = wire_pair(Backend::Doorbell);
    let mut g = c.benchmark_group("doorbell_notify");
    // Not armed: the consumer has not re-armed since the last ring, so
    // notify() is the fence and the flag swap, nothing else.
    tw.ack().expect("ack");
    p.notify().expect("ring once");
    g.bench_function("not_armed", |b| b.iter(|| p.notify().expect("notify")));
    // Armed every time: the consumer's ACK (re-arm, eventfd drain) and the
    // producer's ring (an eventfd write), as in a ping-pong without waiting.
    g.bench_function("ack+notify_armed", |b| {
        b.iter(|| {
            tw.ack().expect("ack");
            p.notify().expect("notify");
        })
    });
    g.finish();
}

fn region(c: &mut Criterion) {
    let (tw, _p) = wire_pair(Backend::Poll);
    let region = tw.region();
    // Fixed-size copies at an 8-aligned offset: whole words only.
    let mut g = c.benchmark_group("region_8B");
    g.bench_function("write", |b| {
        b.iter(|| {
            region
                .write(black_box(128), &black_box(7u64))
                .expect("write")
        })
    });
    g.bench_function("read", |b| {
        b.iter(|| black_box(region.read::<u64>(black_box(128)).expect("read")))
    });
    g.finish();
    let mut g = c.benchmark_group("region_64B");
    g.bench_function("write", |b| {
        b.iter(|| region.write(black_box(128), &[7u64; 8]).expect("write"))
    });
    g.bench_function("read", |b| {
        b.iter(|| black_box(region.read::<Msg>(black_box(128)).expect("read")))
    });
    g.finish();
    // Half a word: a store merged into its word, a load of the whole word.
    let mut g = c.benchmark_group("region_4B_unaligned");
    g.bench_function("write", |b| {
        b.iter(|| {
            region
                .write(black_box(132), &black_box(7u32))
                .expect("write")
        })
    });
    g.bench_function("read", |b| {
        b.iter(|| black_box(region.read::<u32>(black_box(132)).expect("read")))
    });
    g.finish();
    // The whole region, as the ring's batches and Poll's snapshots copy.
    let mut g = c.benchmark_group("region_4096B");
    g.throughput(Throughput::Bytes(4096));
    let src = [7u8; 4096];
    let mut dst = vec![0u8; 4096];
    g.bench_function("write_bytes", |b| {
        b.iter(|| region.write_bytes(black_box(0), &src).expect("write"))
    });
    g.bench_function("read_bytes", |b| {
        b.iter(|| {
            region.read_bytes(black_box(0), &mut dst).expect("read");
            black_box(&dst);
        })
    });
    g.finish();
}

criterion_group!(benches, ring, notify, region);
criterion_main!(benches);
