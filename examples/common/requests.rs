//! The requests that the device examples (`doorbell_device`,
//! `vfio_user_device`) serve, shared so that both speak one queue format: a
//! 64-byte descriptor asks for the checksum of up to 48 bytes, a 16-byte
//! completion answers it. Also what their drivers report, and the short wait
//! a device makes on `Kernel` for a doorbell store to land.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Size of a [`Desc`] in a submission queue.
pub const DESC_LEN: usize = 64;
/// Size of a [`Cqe`] in a completion queue.
pub const CQE_LEN: usize = 16;

const OP_CHECKSUM: u32 = 1;

/// A submission: checksum `len` bytes of `payload`.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Desc {
    id: u64,
    len: u32,
    op: u32,
    payload: [u8; 48],
}

/// A completion.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Cqe {
    id: u64,
    status: u32,
    result: u32,
}

fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().map(|&b| u32::from(b)).sum()
}

impl Desc {
    /// Request number `id`: the checksum of 48 bytes that depend on it.
    pub fn checksum_request(id: u64) -> Desc {
        let mut payload = [0u8; 48];
        for (i, b) in payload.iter_mut().enumerate() {
            *b = (id as u8).wrapping_add(i as u8);
        }
        Desc {
            id,
            len: 48,
            op: OP_CHECKSUM,
            payload,
        }
    }

    /// What the device answers. The descriptor is the driver's: anything
    /// it wrote gets an answer (status 1 for what is not a valid request).
    pub fn execute(&self) -> Cqe {
        let (status, result) = match self.op {
            OP_CHECKSUM if self.len as usize <= self.payload.len() => {
                (0, checksum(&self.payload[..self.len as usize]))
            }
            _ => (1, 0),
        };
        Cqe {
            id: self.id,
            status,
            result,
        }
    }
}

impl Cqe {
    /// Whether this is the right answer to `request`.
    pub fn check(&self, request: &Desc) -> Result<(), String> {
        let want = request.execute();
        if self.id != want.id || self.status != want.status || self.result != want.result {
            return Err(format!(
                "request {}: bad completion (id {}, status {}, result {})",
                request.id, self.id, self.status, self.result
            ));
        }
        Ok(())
    }
}

/// On `Kernel` the trip fires when the store faults, just before it lands:
/// waits up to 50 µs for the doorbell to move from `head` (re-arming at once
/// would make the store fault again).
pub fn settle(doorbell: &AtomicU32, head: u32) {
    let until = Instant::now() + Duration::from_micros(50);
    while doorbell.load(Ordering::Acquire) == head && Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// "N requests in T (R req/s); latency p50 …, p90 …, p99 …, max …", from
/// each request's latency (sorted here) and the time of the whole run.
pub fn summary(latencies: &mut [Duration], total: Duration) -> String {
    latencies.sort();
    let n = latencies.len();
    let Some(&max) = latencies.last() else {
        return "no requests".into();
    };
    let pct = |p: f64| latencies[((n - 1) as f64 * p) as usize];
    format!(
        "{n} requests in {total:.2?} ({:.0} req/s); latency p50 {:.1?}, p90 {:.1?}, p99 {:.1?}, \
         max {max:.1?}",
        n as f64 / total.as_secs_f64(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
    )
}
