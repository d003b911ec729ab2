//! `mlog-broker`: starts one shard per core, serves until SIGINT or SIGTERM, then drains and exits 0.
//!
//! Exit codes: 0 after a clean stop, 1 when a shard failed, 2 for a configuration or startup error
//! (bad flag or file, data directory or port in use), each reported as one line on stderr.

/// Receive buffers, DMA read buffers and cached batches are large, short-lived and freed far from
/// where they were allocated; mimalloc keeps such memory mapped for reuse instead of returning and
/// re-faulting it (see the dependency notes in docs/architecture.md for what it costs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's option enum (v3; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the OS. By default it purges memory that stayed
/// free for a second, and the next use faults it back in: on the receive path that was a 2 MiB
/// transparent-huge-page fault inside `recv` (calls of 5-8 ms under `perf trace`), stalling every
/// partition of the shard; 40-150 such faults per 10 s half-load run. Never purging keeps the
/// resident set at its high-water mark, which the configuration bounds (docs/architecture.md). It
/// overrides `MIMALLOC_PURGE_DELAY`.
fn keep_freed_memory() {
    // SAFETY: sets one mimalloc option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Raises the open-file limit to its hard limit: every partition holds a few files (its segments'
/// logs and indexes, and a second handle of its active segment for write-through), so the common
/// soft default of 1024 would cap a broker at a few hundred partitions. Returns the limit in force.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

mod config;
mod connection;
mod dispatch;
mod group_offsets;
mod mesh;
mod node;
mod partition;
mod producer_ids;
mod shard;
mod topics;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::config::{Args, BrokerConfig};

/// How long startup waits for a shard to report its listener.
const SHARD_START_TIMEOUT: Duration = Duration::from_secs(30);

enum Event {
    Signal(i32),
    ShardExited(usize),
}

fn main() {
    keep_freed_memory();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MLOG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    std::process::exit(match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("mlog-broker: {message}");
            2
        }
    });
}

fn run(args: &Args) -> Result<i32, String> {
    let config = BrokerConfig::load(args).map_err(|e| e.to_string())?;
    let open_files = raise_open_file_limit();
    let wanted = u64::from(config.max_partitions_per_shard) * config.shards as u64 * 4;
    if open_files < wanted {
        tracing::warn!(
            open_files,
            wanted,
            "the open-file limit may not cover max_partitions_per_shard x shards partitions (a few files each)"
        );
    }
    let _lock = node::lock_data_dir(&config.data_dir).map_err(|e| e.to_string())?;
    // Checked here, before any shard starts, so that a data directory the broker cannot use is one
    // clear line and exit code 2 (each shard reads the table again when it starts).
    topics::TopicTable::load(&config.data_dir)
        .map_err(|e| format!("reading the topic table: {e}"))?;
    let mut addrs = vec![config.listen];
    if let Some(base) = config.shard_port_base {
        addrs.extend(
            (0..config.shards)
                .map(|i| std::net::SocketAddr::new(config.listen.ip(), base + i as u16)),
        );
    }
    let mut _port_locks = Vec::new();
    for addr in addrs {
        _port_locks.push(node::lock_port(addr).map_err(|e| e.to_string())?);
        node::check_port_free(addr).map_err(|e| e.to_string())?;
    }
    let endpoints: shard::Endpoints = Arc::new(std::sync::Mutex::new(vec![None; config.shards]));
    let producer_ids = Arc::new(
        producer_ids::ProducerIds::start(&config.data_dir)
            .map_err(|e| format!("reading the producer id counter: {e}"))?,
    );

    let stopping = Arc::new(AtomicBool::new(false));
    // Shards still serving client connections: none closes its partitions before this is 0.
    let serving = Arc::new(std::sync::atomic::AtomicUsize::new(config.shards));
    let (events_tx, events) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    {
        let tx = events_tx.clone();
        std::thread::spawn(move || {
            for s in signals.forever() {
                if tx.send(Event::Signal(s)).is_err() {
                    break;
                }
            }
        });
    }

    // Shard 0 binds first, so that with port 0 the others join the port it was given.
    let mut listen = config.listen;
    let mut handles = Vec::new();
    let mesh = mesh::Builder::full(config.shards, mesh::CHANNEL_CAPACITY);
    for id in 0..config.shards {
        let (bound_tx, bound) = mpsc::channel();
        let handle = shard::spawn(
            id,
            config.clone(),
            listen,
            mesh.clone(),
            endpoints.clone(),
            producer_ids.clone(),
            stopping.clone(),
            serving.clone(),
            bound_tx,
        )
        .map_err(|e| format!("starting shard {id}: {e}"))?;
        let addr = match bound.recv_timeout(SHARD_START_TIMEOUT) {
            Ok(Ok(addr)) => addr,
            Ok(Err(message)) => return Err(stop_all(&stopping, handles, message)),
            Err(_) => {
                return Err(stop_all(
                    &stopping,
                    handles,
                    format!("shard {id} did not start"),
                ))
            }
        };
        listen = addr;
        let tx = events_tx.clone();
        handles.push(std::thread::spawn(move || {
            let _ = handle.join();
            let _ = tx.send(Event::ShardExited(id));
        }));
    }
    tracing::info!(address = %listen, shards = config.shards, data_dir = %config.data_dir.display(), "mlog-broker listening");

    let code = match events.recv() {
        Ok(Event::Signal(s)) => {
            tracing::info!(signal = s, "stopping: draining connections");
            0
        }
        Ok(Event::ShardExited(id)) => {
            tracing::error!(shard = id, "shard exited unexpectedly; stopping the broker");
            1
        }
        Err(_) => 1,
    };
    stopping.store(true, Ordering::Release);
    for h in handles {
        let _ = h.join();
    }
    tracing::info!("mlog-broker stopped");
    Ok(code)
}

/// Stops the shards already started and returns `message` for the caller to report.
fn stop_all(
    stopping: &AtomicBool,
    handles: Vec<std::thread::JoinHandle<()>>,
    message: String,
) -> String {
    // Not joined: started shards wait in the shard mesh for the one that failed, and they have
    // opened no partition yet; the process exit ends them.
    stopping.store(true, Ordering::Release);
    drop(handles);
    message
}
