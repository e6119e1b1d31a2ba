//! A VFIO-user device whose doorbell page is a tripwire, driven by rust-vmm's
//! `vfio_user::Client` the way a VMM drives a vfio-user device.
//!
//! ```text
//! cargo run --release --example vfio_user_device                  # Unmodified: Kernel, else Poll
//! cargo run --release --example vfio_user_device -- --backend poll --requests 20000
//! cargo run --release --example vfio_user_device -- --backend poll --busy-poll-us 0
//! cargo run --release --example vfio_user_device -- --doorbell message  # today's trapped path
//! ```
//!
//! `--doorbell message` rings the same device the way a vfio-user device
//! server is rung today when its doorbell is a trapped register: the client
//! sends a `region_write` of the DOORBELL register per request, and the
//! server thread serves the queue in its callback. The two paths share
//! everything else (queues, interrupt, latency measurement), for comparing
//! them in one session.
//!
//! One binary, two processes. The **device** (this process) is a
//! `vfio_user::Server` on a unix socket under the temp dir. Its BAR0 is two
//! pages:
//!
//! - page 0, the doorbell page: the memory of a tripwire created with
//!   `Backend::Unmodified`. BAR0's region info advertises it as a sparse-mmap
//!   area and carries the tripwire's `producer_fd()`, so the client maps it
//!   and rings by a plain store: no `notify()`, no message per doorbell;
//! - page 1, trapped registers (ID, STATUS, queue addresses, CONTROL, a
//!   served counter), served by `ServerBackend::region_read`/`region_write`:
//!   a socket message per access, used only to set the device up.
//!
//! `Server::run` blocks, so it runs on a std thread; the device loop runs on
//! a tokio current-thread runtime beside it and wakes on `changed().await`.
//!
//! The **client** (this program again, as a child process) uses
//! `vfio_user::Client` as a VMM does (cloud-hypervisor's vfio-user device
//! does the same steps): it connects, takes BAR0's region info with its
//! sparse-mmap area and fd, and maps `file_offset.start() + area.offset`
//! itself; it `dma_map`s a memfd as guest RAM, gives an eventfd for the
//! MSI-X vector with `set_irqs`, and programs the queues through trapped
//! register writes. Then, for each request, it writes a descriptor into
//! guest RAM, stores the new submission-queue tail into the doorbell page,
//! and waits for the interrupt and the completion. The device reads the
//! descriptors through its own mapping of the `dma_map`ped fd, writes the
//! completions there and signals the eventfd. The client prints the latency
//! from doorbell store to completion seen, the device the backend and how
//! many trapped accesses the run took (a constant, whatever `--requests`).
//!
//! What differs from a full VMM/device pair, and why:
//!
//! - the "guest" is the client process itself: it stores into its mapping of
//!   the doorbell page, where a VMM would map that page into the guest
//!   (KVM memory slot) and the guest driver would store;
//! - guest RAM must be a memfd sealed against resizing: the device maps it
//!   with `SharedMemory::from_fd`, which refuses other fds, so that a client
//!   cannot shrink it under the device's mapping (SIGBUS); a VMM's guest RAM
//!   would need those seals too;
//! - no PCI config space (its region is empty): the client knows the device.
//!   Registers have no vendor-defined capability list either;
//! - `vfio_user::Client` does not look at the error bit of the server's
//!   replies (`dma_map` or `set_irqs` refused by the device return `Ok`), and
//!   a `region_read` that the server answers with an error would leave the
//!   client waiting for a reply it never gets. So this device answers every
//!   register access (unknown offsets read as zero, writes to them are
//!   ignored), and the client checks what the device accepted by reading
//!   STATUS instead of trusting the `Ok`;
//! - `Client::resettable()` is the inverse of the device's RESET flag in
//!   vfio_user 0.1.7 (`flags & RESET != RESET`): the client resets when it
//!   says so, as cloud-hypervisor does, which for this resettable device is
//!   never (nothing depends on it: the device starts reset);
//! - a store into the doorbell page through `region_write` (a VMM that did
//!   not map the area) also works: the device writes it into the page, which
//!   trips the wire like the client's own store.
//!
//! Neither process hangs if the other dies: the device watches the child and
//! the server thread, the client waits for each interrupt with a time-out
//! and checks that its parent (the device) is still there.

use std::error::Error;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use memfd_tripwire::{Backend, Region, SharedMemory, Tripwire, blocking};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::mm::{MapFlags, ProtFlags};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_NUM_IRQS,
    VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE, vfio_region_info, vfio_region_sparse_mmap_area,
};
use vfio_user::{
    Client, DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion, SparseArea,
};

#[path = "common/requests.rs"]
mod requests;
use requests::{CQE_LEN, Cqe, DESC_LEN, Desc};

type Res<T> = Result<T, Box<dyn Error>>;

/// Set (to the socket path) in the client process.
const CLIENT_SOCKET_ENV: &str = "VFIO_USER_EXAMPLE_SOCKET";
const CLIENT_REQUESTS_ENV: &str = "VFIO_USER_EXAMPLE_REQUESTS";
/// Set (to anything) when the client rings by `region_write` messages.
const CLIENT_BY_MESSAGE_ENV: &str = "VFIO_USER_EXAMPLE_DOORBELL_MESSAGE";

const BAR0: u32 = VFIO_PCI_BAR0_REGION_INDEX;
/// In BAR0's page 0 (the doorbell page): the submission-queue tail, a u32
/// the driver stores and the device only reads.
const DOORBELL: usize = 0;

/// Trapped registers, at these offsets in BAR0's page 1 (little endian).
const REG_ID: usize = 0x00; // u32, RO: DEVICE_ID
const REG_STATUS: usize = 0x04; // u32, RO: STATUS_* bits
const REG_SQ_ADDR: usize = 0x08; // u64: guest address of the submission queue
const REG_CQ_ADDR: usize = 0x10; // u64: guest address of the completion queue
const REG_ENTRIES: usize = 0x18; // u32, RO: ENTRIES
const REG_CONTROL: usize = 0x1c; // u32: CONTROL_ENABLE
const REG_SERVED: usize = 0x20; // u32, RO: requests completed since enable
const REG_DOORBELL: usize = 0x24; // u32, WO: the trapped doorbell (`--doorbell message`)
const REGS_LEN: usize = 0x28;

const DEVICE_ID: u32 = u32::from_le_bytes(*b"MFTW");
const STATUS_DMA: u32 = 1 << 0;
const STATUS_IRQ: u32 = 1 << 1;
const STATUS_ENABLED: u32 = 1 << 2;
const STATUS_FAULT: u32 = 1 << 3;
const CONTROL_ENABLE: u32 = 1 << 0;

/// Queues in guest RAM: ENTRIES descriptors, ENTRIES completions followed
/// by the completion tail (u32, written by the device).
const ENTRIES: u32 = 64;
const CQ_TAIL: usize = ENTRIES as usize * CQE_LEN;
const CQ_LEN: usize = CQ_TAIL + 4;
/// The client's guest RAM: where it lives in the guest's address space, its
/// size, and where the queues are in it.
const GUEST_RAM_ADDR: u64 = 0x8000_0000;
const GUEST_RAM_LEN: usize = 64 * 1024;
const SQ_OFFSET: usize = 0;
const CQ_OFFSET: usize = 0x1000;

/// How long the client waits for one completion before it gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    let outcome = if let Some(socket) = std::env::var_os(CLIENT_SOCKET_ENV) {
        client(Path::new(&socket)).map_err(|e| format!("client: {e}"))
    } else {
        match args() {
            Ok(args) => device(&args).map_err(|e| format!("device: {e}")),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        }
    };
    if let Err(e) = outcome {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

struct Args {
    backend: Backend,
    requests: u32,
    busy_poll: Duration,
    /// `--doorbell message`: ring by a trapped register write instead.
    by_message: bool,
}

const USAGE: &str = "usage: vfio_user_device [--backend unmodified|kernel|poll] [--requests N] \
                     [--busy-poll-us US (Poll only; 0: off)] [--doorbell store|message]";

fn args() -> Result<Args, String> {
    let mut out = Args {
        backend: Backend::Unmodified,
        requests: 10_000,
        busy_poll: Duration::from_micros(200),
        by_message: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--backend" => {
                out.backend = val()?
                    .parse::<Backend>()
                    .map_err(|e| format!("--backend: {e}"))?;
            }
            "--requests" => {
                out.requests = val()?.parse().map_err(|e| format!("--requests: {e}"))?;
                if out.requests == 0 {
                    return Err("--requests: at least 1".into());
                }
            }
            "--busy-poll-us" => {
                let us: u64 = val()?.parse().map_err(|e| format!("--busy-poll-us: {e}"))?;
                out.busy_poll = Duration::from_micros(us);
            }
            "--doorbell" => {
                out.by_message = match val()?.as_str() {
                    "store" => false,
                    "message" => true,
                    other => {
                        return Err(format!("--doorbell {other:?}: store or message\n{USAGE}"));
                    }
                };
            }
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {a:?}\n{USAGE}")),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- device --

/// What the server thread (register accesses, DMA mappings, interrupts) and
/// the device loop (doorbells) share.
#[derive(Default)]
struct State {
    dma: Vec<Dma>,
    irq: Option<File>,
    sq_addr: u64,
    cq_addr: u64,
    /// Set by a write of CONTROL_ENABLE, when the queues are in guest RAM.
    queues: Option<Queues>,
    /// The next submission to serve (the doorbell value at enable, then
    /// each one served).
    head: u32,
    served: u32,
    fault: bool,
}

/// A `dma_map`ped range of guest RAM, mapped here.
struct Dma {
    addr: u64,
    len: u64,
    mem: Region,
    /// Where `addr` is in `mem` (the offset `dma_map` gave into the fd).
    offset: usize,
}

/// The queues, resolved to this process's mappings of guest RAM.
#[derive(Clone)]
struct Queues {
    sq: Region,
    sq_at: usize,
    cq: Region,
    cq_at: usize,
}

impl State {
    fn status(&self) -> u32 {
        let mut s = 0;
        if !self.dma.is_empty() {
            s |= STATUS_DMA;
        }
        if self.irq.is_some() {
            s |= STATUS_IRQ;
        }
        if self.queues.is_some() {
            s |= STATUS_ENABLED;
        }
        if self.fault {
            s |= STATUS_FAULT;
        }
        s
    }

    /// The registers as the driver sees them.
    fn registers(&self) -> [u8; REGS_LEN] {
        let mut r = [0u8; REGS_LEN];
        let mut put = |at: usize, bytes: &[u8]| r[at..at + bytes.len()].copy_from_slice(bytes);
        put(REG_ID, &DEVICE_ID.to_le_bytes());
        put(REG_STATUS, &self.status().to_le_bytes());
        put(REG_SQ_ADDR, &self.sq_addr.to_le_bytes());
        put(REG_CQ_ADDR, &self.cq_addr.to_le_bytes());
        put(REG_ENTRIES, &ENTRIES.to_le_bytes());
        let control = if self.queues.is_some() {
            CONTROL_ENABLE
        } else {
            0
        };
        put(REG_CONTROL, &control.to_le_bytes());
        put(REG_SERVED, &self.served.to_le_bytes());
        r
    }

    /// `len` bytes of guest RAM at guest address `addr`, in one mapping.
    fn translate(&self, addr: u64, len: usize) -> Option<(Region, usize)> {
        self.dma.iter().find_map(|d| {
            let off = addr.checked_sub(d.addr)?;
            (off.checked_add(len as u64)? <= d.len)
                .then(|| (d.mem.clone(), d.offset + off as usize))
        })
    }

    /// CONTROL_ENABLE: finds the queues in guest RAM; a fault if they are
    /// not there (or misaligned), as a device would report it.
    fn enable(&mut self, doorbell: u32) {
        let queues = (|| {
            if self.sq_addr % 64 != 0 || self.cq_addr % 64 != 0 {
                return Err("queue addresses must be 64-byte aligned".to_owned());
            }
            let (sq, sq_at) = self
                .translate(self.sq_addr, ENTRIES as usize * DESC_LEN)
                .ok_or(format!(
                    "submission queue at {:#x} is not in DMA-mapped guest RAM",
                    self.sq_addr
                ))?;
            let (cq, cq_at) = self.translate(self.cq_addr, CQ_LEN).ok_or(format!(
                "completion queue at {:#x} is not in DMA-mapped guest RAM",
                self.cq_addr
            ))?;
            Ok(Queues {
                sq,
                sq_at,
                cq,
                cq_at,
            })
        })();
        match queues {
            Ok(q) => {
                self.queues = Some(q);
                self.head = doorbell;
                self.served = 0;
                self.fault = false;
            }
            Err(why) => {
                eprintln!("device: enable refused: {why}");
                self.fault = true;
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> io::Result<MutexGuard<'_, State>> {
    state
        .lock()
        .map_err(|_| io::Error::other("the device state was poisoned by a panic"))
}

fn invalid(why: String) -> io::Error {
    eprintln!("device: refused: {why}");
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

/// The `vfio_user::ServerBackend`: what the server thread does for each
/// message.
struct VfioDevice {
    state: Arc<Mutex<State>>,
    /// The doorbell page (BAR0's page 0), for accesses by message.
    bar: Region,
    page: usize,
    /// Region reads and writes served (to show there is none per doorbell).
    trapped: u64,
}

/// Where a BAR0 access of `len` bytes at `offset` lands.
enum Target {
    DoorbellPage(usize),
    Register(usize),
    Nothing,
}

impl VfioDevice {
    fn target(&self, region: u32, offset: u64, len: usize) -> Target {
        let Ok(offset) = usize::try_from(offset) else {
            return Target::Nothing;
        };
        let end = offset.checked_add(len);
        match end {
            Some(end) if region == BAR0 && end <= self.page => Target::DoorbellPage(offset),
            Some(end)
                if region == BAR0
                    && offset >= self.page
                    && end <= self.page + REGS_LEN
                    && len <= 8 =>
            {
                Target::Register(offset - self.page)
            }
            _ => Target::Nothing,
        }
    }
}

impl ServerBackend for VfioDevice {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        self.trapped += 1;
        // Never an error (see the header): what is not a register reads 0.
        data.fill(0);
        match self.target(region, offset, data.len()) {
            Target::DoorbellPage(at) => self.bar.read_bytes(at, data).map_err(io::Error::other),
            Target::Register(at) => {
                let regs = lock(&self.state)?.registers();
                data.copy_from_slice(&regs[at..at + data.len()]);
                Ok(())
            }
            Target::Nothing => Ok(()),
        }
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        self.trapped += 1;
        match self.target(region, offset, data.len()) {
            // A doorbell rung by message: into the page, where it trips the
            // wire as the client's own store does.
            Target::DoorbellPage(at) => self.bar.write_bytes(at, data).map_err(io::Error::other),
            Target::Register(REG_DOORBELL) if data.len() == 4 => {
                // Today's path: the doorbell came as a message; serve the
                // queue here, in the server thread, as a device server does.
                let mut tail = [0u8; 4];
                tail.copy_from_slice(data);
                lock(&self.state)?.serve_to(u32::from_le_bytes(tail))?;
                Ok(())
            }
            Target::Register(at) => {
                let mut st = lock(&self.state)?;
                let mut regs = st.registers();
                regs[at..at + data.len()].copy_from_slice(data);
                let mut word = [0u8; 8];
                word.copy_from_slice(&regs[REG_SQ_ADDR..REG_SQ_ADDR + 8]);
                st.sq_addr = u64::from_le_bytes(word);
                word.copy_from_slice(&regs[REG_CQ_ADDR..REG_CQ_ADDR + 8]);
                st.cq_addr = u64::from_le_bytes(word);
                let mut word = [0u8; 4];
                word.copy_from_slice(&regs[REG_CONTROL..REG_CONTROL + 4]);
                let control = u32::from_le_bytes(word);
                let enable = control & CONTROL_ENABLE != 0;
                if enable && st.queues.is_none() {
                    let doorbell = self
                        .bar
                        .atomic_u32(DOORBELL)
                        .map_err(io::Error::other)?
                        .load(Ordering::Acquire);
                    st.enable(doorbell);
                } else if !enable {
                    st.queues = None;
                }
                Ok(())
            }
            Target::Nothing => {
                eprintln!(
                    "device: ignored a write of {} bytes to region {region} at {offset:#x}",
                    data.len()
                );
                Ok(())
            }
        }
    }

    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> io::Result<()> {
        let fd = fd.ok_or_else(|| {
            invalid(format!(
                "dma_map of {size:#x} bytes at {address:#x} without an fd: this device reads \
                 guest RAM through its own mapping, not by DMA_READ messages"
            ))
        })?;
        if !flags.contains(DmaMapFlags::READ_WRITE) {
            return Err(invalid(format!(
                "dma_map at {address:#x} with flags {flags:?}: the device writes completions, so \
                 it needs read-write"
            )));
        }
        let mem = SharedMemory::options()
            .name("guest RAM")
            .attach(OwnedFd::from(fd))
            .map_err(|e| invalid(format!("dma_map at {address:#x}: {e}")))?;
        let in_fd = offset
            .checked_add(size)
            .is_some_and(|end| size > 0 && end <= mem.region().len() as u64);
        if !in_fd || address.checked_add(size).is_none() {
            return Err(invalid(format!(
                "dma_map of {size:#x} bytes at fd offset {offset:#x}: not within the fd's {} bytes",
                mem.region().len()
            )));
        }
        let mut st = lock(&self.state)?;
        if st
            .dma
            .iter()
            .any(|d| address < d.addr + d.len && d.addr < address + size)
        {
            return Err(invalid(format!(
                "dma_map at {address:#x}: overlaps an existing mapping"
            )));
        }
        st.dma.push(Dma {
            addr: address,
            len: size,
            mem: mem.region().clone(),
            offset: offset as usize,
        });
        Ok(())
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> io::Result<()> {
        let mut st = lock(&self.state)?;
        if flags.contains(DmaUnmapFlags::UNMAP_ALL) {
            st.dma.clear();
        } else {
            st.dma.retain(|d| !(d.addr == address && d.len == size));
        }
        // The queues keep their mappings alive, but a device must not use
        // guest RAM it was told to forget.
        st.queues = None;
        Ok(())
    }

    fn reset(&mut self) -> io::Result<()> {
        let mut st = lock(&self.state)?;
        st.queues = None;
        st.sq_addr = 0;
        st.cq_addr = 0;
        st.served = 0;
        st.fault = false;
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        mut fds: Vec<File>,
    ) -> io::Result<()> {
        if index != VFIO_PCI_MSIX_IRQ_INDEX {
            return Err(invalid(format!(
                "set_irqs for index {index}: only MSI-X (index {VFIO_PCI_MSIX_IRQ_INDEX}) has a vector"
            )));
        }
        let mut st = lock(&self.state)?;
        let trigger = flags & VFIO_IRQ_SET_ACTION_TRIGGER != 0;
        match (
            flags & VFIO_IRQ_SET_DATA_EVENTFD != 0,
            start,
            count,
            fds.len(),
        ) {
            (true, 0, 1, 1) if trigger => st.irq = fds.pop(),
            (_, 0, 0, 0) if trigger => st.irq = None,
            _ => {
                return Err(invalid(format!(
                    "set_irqs flags {flags:#x} start {start} count {count} with {} fds: the one \
                     MSI-X vector takes one eventfd (or none, to disable)",
                    fds.len()
                )));
            }
        }
        Ok(())
    }
}

fn socket_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "memfd-tripwire-vfio-user-{}.sock",
        std::process::id()
    ))
}

/// Removes the socket when the device stops, however it stops.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn device_regions(page: usize, bar_fd: RawFd) -> Vec<ServerRegion> {
    (0..VFIO_PCI_NUM_REGIONS)
        .map(|index| {
            let mut region_info = vfio_region_info {
                argsz: size_of::<vfio_region_info>() as u32,
                index,
                ..Default::default()
            };
            let mut sparse_areas = Vec::new();
            let mut mmap_fd = None;
            if index == BAR0 {
                region_info.size = 2 * page as u64;
                region_info.flags = VFIO_REGION_INFO_FLAG_READ
                    | VFIO_REGION_INFO_FLAG_WRITE
                    | VFIO_REGION_INFO_FLAG_MMAP;
                // The fd backs the region from fd offset 0; only page 0 of
                // it may be mapped.
                region_info.offset = 0;
                sparse_areas.push(SparseArea {
                    area: vfio_region_sparse_mmap_area {
                        offset: DOORBELL as u64,
                        size: page as u64,
                    },
                });
                mmap_fd = Some(bar_fd);
            }
            ServerRegion {
                region_info,
                sparse_areas,
                mmap_fd,
            }
        })
        .collect()
}

fn device_irqs() -> Vec<IrqInfo> {
    (0..VFIO_PCI_NUM_IRQS)
        .map(|index| IrqInfo {
            index,
            flags: if index == VFIO_PCI_MSIX_IRQ_INDEX {
                VFIO_IRQ_INFO_EVENTFD
            } else {
                0
            },
            count: u32::from(index == VFIO_PCI_MSIX_IRQ_INDEX),
        })
        .collect()
}

fn device(args: &Args) -> Res<()> {
    let page = rustix::param::page_size();
    let mut builder = blocking::Tripwire::builder(page).backend(args.backend);
    // Busy-polling is for Poll (and Unmodified when it falls back to Poll),
    // on a region of at most 16 KiB.
    if matches!(args.backend, Backend::Poll | Backend::Unmodified)
        && !args.busy_poll.is_zero()
        && page <= 16 * 1024
    {
        builder = builder.busy_poll(args.busy_poll);
    }
    let bar = builder
        .create()
        .map_err(|e| format!("creating BAR0's doorbell page on {}: {e}", args.backend))?;
    let bar_fd = bar
        .producer_fd()
        .map_err(|e| {
            format!(
                "a vfio-user client only maps the doorbell page and stores, so the backend must \
                 see plain stores (--backend unmodified, kernel or poll): {e}"
            )
        })?
        .try_clone_to_owned()?;
    let kind = bar.backend();

    let path = socket_path();
    // The name is this process's: a file left there was left by a process
    // that had our pid before and is gone.
    let _ = std::fs::remove_file(&path);
    let server = Server::new(
        &path,
        true,
        device_irqs(),
        device_regions(page, bar_fd.as_raw_fd()),
    )
    .map_err(|e| format!("listening on {}: {e}", path.display()))?;
    let socket_file = SocketFile(path.clone());
    let state = Arc::new(Mutex::new(State::default()));
    let mut backend = VfioDevice {
        state: state.clone(),
        bar: bar.region().clone(),
        page,
        trapped: 0,
    };
    println!(
        "device: BAR0 = {} bytes: the doorbell page (sparse mmap, fd of the tripwire) watched by \
         the {kind} backend{}, then trapped registers; listening on {}",
        2 * page,
        if kind == memfd_tripwire::BackendKind::Poll && !args.busy_poll.is_zero() {
            format!(" (busy-poll {:?})", args.busy_poll)
        } else {
            String::new()
        },
        path.display()
    );

    // The device loop stops when the server thread ends (the client hung
    // up) or when the client process ends (even before it connected): each
    // writes a byte here.
    let (done_rx, done_tx) = UnixStream::pair()?;
    let server_done = done_tx.try_clone()?;
    let server_thread = std::thread::Builder::new()
        .name("vfio-user server".into())
        .spawn(move || {
            let outcome = server.run(&mut backend);
            drop(server); // removes the socket
            let _ = (&server_done).write_all(b"s");
            (outcome, backend.trapped)
        })?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(CLIENT_SOCKET_ENV, &path)
        .env(CLIENT_REQUESTS_ENV, args.requests.to_string())
        .envs(args.by_message.then_some((CLIENT_BY_MESSAGE_ENV, "1")))
        .stdin(Stdio::null())
        .spawn()?;
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = (&done_tx).write_all(b"c");
        status
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        // The timer: on Userfault, an ACK in flight has a deadline.
        .enable_time()
        .build()?;
    let served = rt.block_on(async { serve(Tripwire::new(bar)?, &state, done_rx).await });

    // The client has gone, or the device failed: end the server thread if it
    // still waits for its first connection, then collect both.
    if !server_thread.is_finished() {
        let _ = UnixStream::connect(&path);
    }
    let status: io::Result<ExitStatus> = waiter
        .join()
        .map_err(|_| "the thread waiting for the client panicked")?;
    let (run, trapped) = server_thread
        .join()
        .map_err(|_| "the vfio-user server thread panicked")?;
    drop(socket_file);
    let (served, wakeups) = served?;
    run.map_err(|e| format!("vfio-user server: {e}"))?;
    let status = status?;
    if !status.success() {
        return Err(format!("the client failed ({status})").into());
    }
    if args.by_message {
        println!(
            "device: served every request in the server thread, one trapped DOORBELL write \
             each ({trapped} trapped register accesses in all); the client has gone"
        );
    } else {
        println!(
            "device: served {served} requests in {wakeups} wake-ups on the {kind} backend; \
             {trapped} trapped register accesses in all (none per doorbell); the client has gone"
        );
    }
    Ok(())
}

/// The device loop: waits for doorbell stores and serves every submission
/// they announce. Returns (requests served, wake-ups).
async fn serve(mut bar: Tripwire, state: &Mutex<State>, done: UnixStream) -> Res<(u64, u64)> {
    done.set_nonblocking(true)?;
    let done = tokio::net::UnixStream::from_std(done)?;
    let page = bar.region().clone();
    let doorbell = page.atomic_u32(DOORBELL)?;
    let kernel = bar.backend() == memfd_tripwire::BackendKind::Kernel;
    let mut served = 0u64;
    let mut wakeups = 0u64;
    loop {
        tokio::select! {
            epoch = bar.changed() => {
                epoch?;
                wakeups += 1;
            }
            ready = done.readable() => {
                ready?;
                match done.try_read(&mut [0u8; 1]) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    _ => return Ok((served, wakeups)),
                }
            }
        }
        let mut st = lock(state)?;
        if st.queues.is_none() {
            continue; // not enabled: a doorbell means nothing yet
        }
        // On Kernel the trip fires just before the store lands.
        if kernel {
            requests::settle(doorbell, st.head);
        }
        // The register is the driver's: read it once, then validate it.
        let tail = doorbell.load(Ordering::Acquire);
        served += st.serve_to(tail)?;
    }
}

impl State {
    /// Serves the submissions up to `tail` (the driver's doorbell value,
    /// validated here) and raises one interrupt for them; returns how many.
    fn serve_to(&mut self, tail: u32) -> io::Result<u64> {
        let Some(q) = self.queues.clone() else {
            return Ok(0);
        };
        if tail.wrapping_sub(self.head) > ENTRIES {
            self.fault = true;
            self.queues = None;
            eprintln!(
                "device: the driver rang doorbell {tail} with {} served: not a valid tail; \
                 queues stopped (STATUS.FAULT)",
                self.head
            );
            return Ok(0);
        }
        let mut served = 0;
        while self.head != tail {
            let slot = (self.head % ENTRIES) as usize;
            let d: Desc =
                q.sq.read(q.sq_at + slot * DESC_LEN)
                    .map_err(io::Error::other)?;
            q.cq.write(q.cq_at + slot * CQE_LEN, &d.execute())
                .map_err(io::Error::other)?;
            self.head = self.head.wrapping_add(1);
            self.served = self.served.wrapping_add(1);
            q.cq.atomic_u32(q.cq_at + CQ_TAIL)
                .map_err(io::Error::other)?
                .store(self.head, Ordering::Release);
            served += 1;
        }
        // One interrupt for what this doorbell served.
        if served > 0 {
            if let Some(irq) = &self.irq {
                if let Err(e) = (&*irq).write_all(&1u64.to_ne_bytes()) {
                    eprintln!("device: signalling the interrupt eventfd: {e}");
                    self.fault = true;
                }
            }
        }
        Ok(served)
    }
}

// ---------------------------------------------------------------- client --

/// The client's mapping of a sparse-mmap area, as a VMM makes it.
struct AreaMapping {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

impl AreaMapping {
    fn map(fd: &File, offset: u64, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping at an address the kernel chooses;
        // it aliases no Rust object. The fd was checked to be at least
        // offset + len bytes long, so accesses within `len` do not fault.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                offset,
            )?
        };
        Ok(AreaMapping { ptr, len })
    }

    /// The u32 at `offset`, stored to by this process and read by the
    /// device: only ever accessed atomically.
    fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        if offset % 4 != 0 || offset.checked_add(4)? > self.len {
            return None;
        }
        // SAFETY: in bounds and aligned (the mapping is page aligned); the
        // mapping lives as long as `self`, and every access to it, here and
        // in the device, is atomic.
        Some(unsafe { AtomicU32::from_ptr(self.ptr.cast::<u8>().add(offset).cast()) })
    }
}

impl Drop for AreaMapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; no reference into it
        // outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}

fn read_reg<const N: usize>(client: &mut Client, regs: u64, reg: usize) -> Res<[u8; N]> {
    let mut v = [0u8; N];
    client
        .region_read(BAR0, regs + reg as u64, &mut v)
        .map_err(|e| format!("reading register {reg:#x}: {e}"))?;
    Ok(v)
}

fn write_reg(client: &mut Client, regs: u64, reg: usize, value: &[u8]) -> Res<()> {
    client
        .region_write(BAR0, regs + reg as u64, value)
        .map_err(|e| format!("writing register {reg:#x}: {e}").into())
}

fn client(socket: &Path) -> Res<()> {
    let requests: u32 = std::env::var(CLIENT_REQUESTS_ENV)?.parse()?;
    let by_message = std::env::var_os(CLIENT_BY_MESSAGE_ENV).is_some();
    let device_pid = rustix::process::getppid();
    let page = rustix::param::page_size();

    // As a VMM does: connect (the Client negotiates the version and reads
    // every region's info, with its sparse-mmap areas and fd).
    let mut client = Client::new(socket)
        .map_err(|e| format!("connecting to the device at {}: {e}", socket.display()))?;
    if client.resettable() {
        client.reset()?;
    }
    let bar = client.region(BAR0).ok_or("the device has no BAR0")?;
    let want =
        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;
    if bar.flags & want != want {
        return Err(format!(
            "BAR0 flags {:#x}: not a mappable read-write region",
            bar.flags
        )
        .into());
    }
    let bar_size = bar.size;
    let area = *bar
        .sparse_areas
        .iter()
        .find(|a| a.offset == DOORBELL as u64)
        .ok_or("BAR0 has no sparse-mmap area at offset 0 (the doorbell page)")?;
    let file_offset = bar
        .file_offset
        .as_ref()
        .ok_or("BAR0's region info came without an fd")?;
    // Map `file_offset.start() + area.offset`, as cloud-hypervisor does,
    // after checking what the server sent: a page-aligned offset, an area
    // within the region and within the file (a mapping past the file's end
    // would fault on access).
    let fd_offset = file_offset
        .start()
        .checked_add(area.offset)
        .ok_or("sparse-mmap area offset overflows")?;
    let area_len = usize::try_from(area.size).map_err(|_| "sparse-mmap area too large")?;
    let file_len = file_offset.file().metadata()?.len();
    if fd_offset % page as u64 != 0
        || area_len < 4
        || area
            .offset
            .checked_add(area.size)
            .is_none_or(|end| end > bar_size)
        || fd_offset
            .checked_add(area.size)
            .is_none_or(|end| end > file_len)
    {
        return Err(format!(
            "BAR0's sparse-mmap area ({:#x} bytes at {:#x}, fd offset {fd_offset:#x}) does not fit \
             the region ({bar_size:#x} bytes) or the fd ({file_len:#x} bytes)",
            area.size, area.offset
        )
        .into());
    }
    let doorbell_page = AreaMapping::map(file_offset.file(), fd_offset, area_len)
        .map_err(|e| format!("mapping BAR0's doorbell page: {e}"))?;
    let doorbell = doorbell_page
        .atomic_u32(DOORBELL)
        .ok_or("no doorbell in the mapped area")?;
    let regs = page as u64; // BAR0's page 1

    let id = u32::from_le_bytes(read_reg(&mut client, regs, REG_ID)?);
    if id != DEVICE_ID {
        return Err(format!("BAR0 ID register reads {id:#x}: not this example's device").into());
    }

    // Guest RAM: a sealed memfd, DMA-mapped at GUEST_RAM_ADDR.
    let ram = SharedMemory::options()
        .name("guest RAM")
        .create(GUEST_RAM_LEN)?;
    client
        .dma_map(0, GUEST_RAM_ADDR, GUEST_RAM_LEN as u64, ram.as_raw_fd())
        .map_err(|e| format!("dma_map of guest RAM: {e}"))?;

    // The interrupt: an eventfd for the MSI-X vector.
    let irq_info = client.get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)?;
    if irq_info.count < 1 || irq_info.flags & VFIO_IRQ_INFO_EVENTFD == 0 {
        return Err("the device has no MSI-X vector that takes an eventfd".into());
    }
    let irq = File::from(rustix::event::eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?);
    client
        .set_irqs(
            VFIO_PCI_MSIX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            &[irq.as_raw_fd()],
        )
        .map_err(|e| format!("set_irqs: {e}"))?;

    // The queues, then enable; STATUS says what the device accepted (the
    // Client does not report a refusal: see the header).
    let sq_addr = (GUEST_RAM_ADDR + SQ_OFFSET as u64).to_le_bytes();
    let cq_addr = (GUEST_RAM_ADDR + CQ_OFFSET as u64).to_le_bytes();
    let enable = CONTROL_ENABLE.to_le_bytes();
    for (reg, value) in [
        (REG_SQ_ADDR, &sq_addr[..]),
        (REG_CQ_ADDR, &cq_addr[..]),
        (REG_CONTROL, &enable[..]),
    ] {
        write_reg(&mut client, regs, reg, value)?;
    }
    let status = u32::from_le_bytes(read_reg(&mut client, regs, REG_STATUS)?);
    let ready = STATUS_DMA | STATUS_IRQ | STATUS_ENABLED;
    if status & ready != ready || status & STATUS_FAULT != 0 {
        return Err(format!(
            "the device did not come up: STATUS {status:#x} (DMA {}, interrupt {}, enabled {}, \
             fault {}); its messages above say why",
            status & STATUS_DMA != 0,
            status & STATUS_IRQ != 0,
            status & STATUS_ENABLED != 0,
            status & STATUS_FAULT != 0
        )
        .into());
    }
    let entries = u32::from_le_bytes(read_reg(&mut client, regs, REG_ENTRIES)?);
    if entries != ENTRIES {
        return Err(format!("the device has {entries}-entry queues, not {ENTRIES}").into());
    }
    println!(
        "client: mapped BAR0's doorbell page ({area_len} bytes at fd offset {fd_offset:#x}); \
         guest RAM {GUEST_RAM_LEN} bytes DMA-mapped at {GUEST_RAM_ADDR:#x}; MSI-X eventfd set; \
         {requests} requests, each rung by {}",
        if by_message {
            "a region_write message to the trapped DOORBELL register (--doorbell message)"
        } else {
            "one store"
        }
    );

    let mem = ram.region();
    let cq_tail = mem.atomic_u32(CQ_OFFSET + CQ_TAIL)?;
    let start = doorbell.load(Ordering::Acquire);
    let mut lat = Vec::with_capacity(requests as usize);
    let t_all = Instant::now();
    for i in 0..requests {
        let idx = start.wrapping_add(i);
        let slot = (idx % ENTRIES) as usize;
        let request = Desc::checksum_request(u64::from(i));
        mem.write(SQ_OFFSET + slot * DESC_LEN, &request)?;
        let t0 = Instant::now();
        if by_message {
            // Today's trapped doorbell: a region_write message per request.
            write_reg(
                &mut client,
                regs,
                REG_DOORBELL,
                &idx.wrapping_add(1).to_le_bytes(),
            )?;
        } else {
            // The doorbell: a plain store into the mapped page. Nothing else.
            doorbell.store(idx.wrapping_add(1), Ordering::Release);
        }
        let deadline = t0 + REQUEST_TIMEOUT;
        while cq_tail.load(Ordering::Acquire) != idx.wrapping_add(1) {
            wait_interrupt(&irq, deadline, device_pid).map_err(|e| format!("request {i}: {e}"))?;
        }
        lat.push(t0.elapsed());
        let c: Cqe = mem.read(CQ_OFFSET + slot * CQE_LEN)?;
        c.check(&request)?;
    }
    let total = t_all.elapsed();

    // The device's own count, by a trapped read; then tidy up as a VMM
    // would on unplug.
    let served = u32::from_le_bytes(read_reg(&mut client, regs, REG_SERVED)?);
    if served != requests {
        return Err(format!("the device says it served {served}, not {requests}").into());
    }
    write_reg(&mut client, regs, REG_CONTROL, &0u32.to_le_bytes())?;
    client.set_irqs(
        VFIO_PCI_MSIX_IRQ_INDEX,
        VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
        0,
        0,
        &[],
    )?;
    client.dma_unmap(GUEST_RAM_ADDR, GUEST_RAM_LEN as u64)?;

    println!(
        "client: {} (from the doorbell store to the completion seen after the interrupt)",
        requests::summary(&mut lat, total)
    );
    Ok(())
}

/// Waits for the interrupt eventfd (and consumes it) until `deadline`;
/// fails if the device process has gone.
fn wait_interrupt(irq: &File, deadline: Instant, device: Option<rustix::process::Pid>) -> Res<()> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("no completion within {REQUEST_TIMEOUT:?}").into());
        }
        // Look for the device's death every 100 ms.
        let slice = (deadline - now).min(Duration::from_millis(100));
        let ts = Timespec {
            tv_sec: 0,
            tv_nsec: i64::from(slice.subsec_nanos()),
        };
        let mut fds = [PollFd::new(irq, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        if fds[0].revents().contains(PollFlags::IN) {
            let mut count = [0u8; 8];
            match (&*irq).read(&mut count) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        if rustix::process::getppid() != device {
            return Err("the device process has gone".into());
        }
    }
}
