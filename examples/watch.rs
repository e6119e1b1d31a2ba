//! Watch a producer process's plain stores with `changed().await`.
//!
//! ```text
//! cargo run --example watch -- --backend doorbell   # any Linux
//! cargo run --example watch -- --backend poll       # any Linux, no producer cooperation
//! cargo run --example watch                         # Auto: the real memfd_tripwire (RFC kernel)
//! ```
//!
//! The consumer creates the tripwire, starts this same program again as the
//! producer (handing it the tripwire over a socket on its stdin), and prints
//! each change it sees until the producer exits.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use memfd_tripwire::{Backend, Producer, Tripwire, blocking};

const PRODUCER_ENV: &str = "WATCH_EXAMPLE_PRODUCER";
const LEN: usize = 4096;

fn main() {
    if std::env::var_os(PRODUCER_ENV).is_some() {
        if let Err(e) = producer() {
            eprintln!("producer: {e}");
            std::process::exit(1);
        }
        return;
    }
    let backend = match parse_backend() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let tw = match blocking::Tripwire::builder(LEN).backend(backend).create() {
        Ok(tw) => tw,
        Err(e) => {
            eprintln!("no usable backend here: {e}");
            std::process::exit(1);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        // The timer: on Userfault, an ACK in flight has a deadline.
        .enable_time()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = rt.block_on(consumer(tw)) {
        eprintln!("consumer: {e}");
        std::process::exit(1);
    }
}

fn parse_backend() -> Result<Backend, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => Ok(Backend::Auto),
        ["--backend", name] => name.parse().map_err(|e| format!("--backend: {e}")),
        _ => Err(
            "usage: watch [--backend auto|kernel|userfault|userfault-async|doorbell|poll]".into(),
        ),
    }
}

async fn consumer(tw: blocking::Tripwire) -> Result<(), Box<dyn std::error::Error>> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(PRODUCER_ENV, "1")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .spawn()?;
    let mut tw = Tripwire::new(tw)?;
    // The async handshake (up to 10 s against a silent producer) leaves the
    // runtime's thread free.
    tw.share(ours).await?;
    println!(
        "consumer: watching {LEN} bytes with the {} backend",
        tw.backend()
    );
    let mut last = [0u8; 64];
    loop {
        match tw.changed().await {
            Ok(epoch) => {
                let now: [u8; 64] = tw.region().read(0)?;
                let changed: Vec<usize> = (0..64).filter(|&i| now[i] != last[i]).collect();
                let counter = u64::from_le_bytes(now[..8].try_into()?);
                let text = String::from_utf8_lossy(&now[8..])
                    .trim_end_matches('\0')
                    .to_string();
                println!(
                    "consumer: epoch {} - {} bytes changed; counter = {counter}, text = {text:?}",
                    epoch.get(),
                    changed.len()
                );
                last = now;
            }
            Err(e) if memfd_tripwire::Error::is_closed(&e) => {
                println!("consumer: the producer closed its end; done");
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    child.wait()?;
    Ok(())
}

fn producer() -> Result<(), Box<dyn std::error::Error>> {
    let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
    let p = Producer::connect(UnixStream::from(stdin))?;
    for i in 1..=5u64 {
        std::thread::sleep(Duration::from_millis(200));
        let mut text = [0u8; 56];
        let msg = format!("hello #{i} from pid {}", std::process::id());
        text[..msg.len()].copy_from_slice(msg.as_bytes());
        // Plain stores into shared memory, then notify() (a no-op except on Doorbell).
        p.region().write(8, &text)?;
        p.region().write(0, &i.to_le_bytes())?;
        p.notify()?;
        println!("producer: stored counter {i}");
    }
    Ok(())
}
