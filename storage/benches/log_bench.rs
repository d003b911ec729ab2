//! Storage benchmark: the log's append and read throughput next to the raw DMA write speed of the
//! same disk, measured right before each row, reported as medians of several runs and as ratios.
//! (The disk of the VM this was written on bursts: raw speed right after a pause can be twice its
//! speed a few seconds into writing, so one raw figure per run flattered early rows and penalised
//! late ones.)
//!
//! Run: `cargo bench -p mlog-storage --bench log_bench` (options after `--`: `--runs N`,
//! `--dir DIR` for the disk to measure, `--quick` for a short smoke run, `--only TEXT` to run the
//! measurements whose name contains TEXT). Tuning experiments override the log's defaults with the
//! environment variables `WB` (write_buffer_bytes), `WIF` (max_writes_in_flight), `PREALLOC`
//! (preallocate_bytes) and `IOMEM` (glommio io_memory).

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use mlog_storage::{FlushPolicy, Log, LogConfig};
use mlog_wire::batch::{NewRecord, RecordBatchBuilder};

const MIB: f64 = 1024.0 * 1024.0;

struct Opts {
    runs: usize,
    dir: PathBuf,
    quick: bool,
    /// Only measurements whose name contains this.
    only: Option<String>,
}

fn parse_opts() -> Opts {
    let mut opts = Opts {
        runs: 3,
        dir: std::env::temp_dir(),
        quick: false,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => opts.runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--dir" => opts.dir = args.next().map(PathBuf::from).expect("--dir DIR"),
            "--quick" => opts.quick = true,
            "--only" => opts.only = args.next(),
            _ => {} // cargo passes --bench
        }
    }
    opts
}

/// A batch of `batch_bytes` (approximately) made of 1 KiB records, or one record for smaller sizes.
fn make_batch(batch_bytes: usize) -> Vec<u8> {
    let record_value = 1000.min(batch_bytes - 100);
    let records = (batch_bytes / (record_value + 30)).max(1);
    let value = vec![0x5au8; record_value];
    let mut b = RecordBatchBuilder::new();
    for i in 0..records {
        b.push(NewRecord::new(i as i64, None, Some(&value)))
            .expect("push");
    }
    b.build().expect("build")
}

/// The raw speeds of the disk, measured right before the row they are references for.
#[derive(Clone, Copy)]
struct Raw {
    /// Sequential DMA writes into freshly preallocated space (unwritten extents), as a new log's
    /// segments get them.
    fresh: f64,
    /// The same writes over blocks already written, as a recycled segment gets them.
    overwrite: f64,
    /// Sequential DMA reads of the written file.
    read: f64,
}

/// Raw sequential DMA I/O of 1 MiB buffers, 8 in flight, on one preallocated file: a write pass
/// into fresh space, then one fdatasync; a second write pass over the written blocks, then one
/// fdatasync; then a read pass. The disk's limits as the log sees them.
async fn raw_mb_s(dir: &Path, total_bytes: usize) -> Raw {
    let path = dir.join("raw.dat");
    let file = Rc::new(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(&path)
            .await
            .expect("open raw file"),
    );
    file.pre_allocate(total_bytes as u64, false)
        .await
        .expect("fallocate");
    let fresh = raw_pass(&file, total_bytes, true).await;
    let overwrite = raw_pass(&file, total_bytes, true).await;
    let read = raw_pass(&file, total_bytes, false).await;
    drop(file);
    let _ = std::fs::remove_file(&path);
    Raw {
        fresh,
        overwrite,
        read,
    }
}

/// One sequential pass over `file` (writes, then an fdatasync; or reads), in MB/s.
async fn raw_pass(file: &Rc<DmaFile>, total_bytes: usize, write: bool) -> f64 {
    let chunk = 1 << 20;
    let sem = Rc::new(glommio::sync::Semaphore::new(8));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total_bytes / chunk {
        let permit = sem.acquire_static_permit(1).await.expect("permit");
        let file = file.clone();
        let pos = (i * chunk) as u64;
        let buf = write.then(|| {
            let mut buf = file.alloc_dma_buffer(chunk);
            buf.as_bytes_mut().fill(0x5a);
            buf
        });
        tasks.push(glommio::spawn_local(async move {
            match buf {
                Some(buf) => {
                    file.write_at(buf, pos).await.expect("write");
                }
                None => {
                    file.read_at_aligned(pos, chunk).await.expect("read");
                }
            }
            drop(permit);
        }));
    }
    for t in tasks {
        t.await;
    }
    if write {
        file.fdatasync().await.expect("fdatasync");
    }
    total_bytes as f64 / MIB / start.elapsed().as_secs_f64()
}

/// Which raw figure of its run a row is compared with.
#[derive(Clone, Copy)]
enum Reference {
    Fresh,
    Overwrite,
    Read,
    /// No disk involved (cached reads).
    None,
}

impl Reference {
    fn of(self, raw: Raw) -> Option<f64> {
        match self {
            Reference::Fresh => Some(raw.fresh),
            Reference::Overwrite => Some(raw.overwrite),
            Reference::Read => Some(raw.read),
            Reference::None => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Reference::Fresh => "raw write",
            Reference::Overwrite => "raw overwrite",
            Reference::Read => "raw read",
            Reference::None => "-",
        }
    }
}

/// A table row: its figure in each run, its sync rounds in each run, and its reference.
struct Row {
    name: String,
    mb_s: Vec<f64>,
    syncs: Vec<f64>,
    reference: Reference,
    /// The reference's raw figure measured right before the row, per run.
    refs: Vec<f64>,
}

struct AppendResult {
    mb_s: f64,
    syncs: u64,
}

/// `appenders` tasks append copies of `batch` until `total_bytes` are written or `max_time` passes,
/// then a final flush; returns MB/s including that flush. With `recycled`, the log is first filled
/// to its retention limit (untimed), so every roll of the timed run reuses a retired segment file:
/// the steady state of a log that retention keeps at its size.
async fn append_mb_s(
    dir: &Path,
    batch: &[u8],
    appenders: usize,
    flush: FlushPolicy,
    total_bytes: usize,
    max_time: Duration,
    recycled: bool,
) -> AppendResult {
    let log_dir = tempfile::tempdir_in(dir).expect("temp dir");
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    let defaults = LogConfig::default();
    let config = LogConfig {
        flush,
        max_batch_bytes: 2 << 20,
        write_buffer_bytes: env("WB").unwrap_or(defaults.write_buffer_bytes),
        max_writes_in_flight: env("WIF").unwrap_or(defaults.max_writes_in_flight),
        preallocate_bytes: env("PREALLOC").map_or(defaults.preallocate_bytes, |v| v as u64),
        ..defaults
    };
    let config = if recycled {
        LogConfig {
            segment_bytes: 256 << 20,
            retention_bytes: Some(512 << 20),
            retention_ms: None,
            ..config
        }
    } else {
        config
    };
    let log = Log::open(log_dir.path(), config).await.expect("open log");
    if recycled {
        let fill = make_batch(1 << 20);
        let has_spare = || {
            std::fs::read_dir(log_dir.path())
                .expect("list log dir")
                .any(|e| {
                    e.expect("dir entry")
                        .path()
                        .extension()
                        .is_some_and(|x| x == "spare")
                })
        };
        while !has_spare() {
            log.append(BytesMut::from(&fill[..])).await.expect("fill");
        }
        log.flush().await.expect("flush");
    }
    let syncs_before = log.sync_count();
    let per_task = (total_bytes / batch.len() / appenders).max(1);
    // One template shared by every appender, made before the clock starts (64 private copies of a
    // 1 MiB batch cost 64 MiB of page faults inside the timed run).
    let batch: Rc<[u8]> = batch.into();
    let start = Instant::now();
    let deadline = start + max_time;
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let log = log.clone();
            let batch = batch.clone();
            glommio::spawn_local(async move {
                let mut bytes = 0usize;
                for _ in 0..per_task {
                    // Each append gets a buffer of its own, filled the way a broker's receive fills
                    // one: a copy of bytes that are hot in the CPU cache.
                    let b = BytesMut::from(&batch[..]);
                    bytes += b.len();
                    log.append(b).await.expect("append");
                    if Instant::now() > deadline {
                        break;
                    }
                }
                bytes
            })
        })
        .collect();
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await;
    }
    log.flush().await.expect("flush");
    let secs = start.elapsed().as_secs_f64();
    let syncs = log.sync_count() - syncs_before;
    log.close().await.expect("close");
    AppendResult {
        mb_s: bytes as f64 / MIB / secs,
        syncs,
    }
}

/// Reads the whole log sequentially with 1 MiB reads: from disk after a reopen (cold: O_DIRECT has
/// no page cache), and the tail that fits the batch cache right after appending (cached).
async fn read_mb_s(dir: &Path, batch: &[u8], total_bytes: usize) -> (f64, f64) {
    let log_dir = tempfile::tempdir_in(dir).expect("temp dir");
    let config = LogConfig {
        flush: FlushPolicy::Never,
        batch_cache_bytes: 64 << 20,
        max_batch_bytes: 2 << 20,
        ..LogConfig::default()
    };
    let log = Log::open(log_dir.path(), config.clone())
        .await
        .expect("open");
    for _ in 0..total_bytes / batch.len() {
        log.append(BytesMut::from(batch)).await.expect("append");
    }
    log.flush().await.expect("flush");
    // Cached: the newest 48 MiB, read 5 times over.
    let end = log.log_end_offset();
    let per_batch = mlog_wire::RecordBatch::parse(batch)
        .expect("batch")
        .record_count() as u64;
    let cached_from = end.saturating_sub((48 << 20) / batch.len() as u64 * per_batch);
    let start = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..5 {
        let mut offset = cached_from;
        while offset < end {
            let r = log.read(offset, 1 << 20).await.expect("read");
            bytes += r.len();
            offset = r.next_offset;
        }
    }
    let cached = bytes as f64 / MIB / start.elapsed().as_secs_f64();
    log.close().await.expect("close");
    let log = Log::open(log_dir.path(), config).await.expect("reopen");
    let start = Instant::now();
    let mut bytes = 0usize;
    let mut offset = 0;
    while offset < end {
        let r = log.read(offset, 1 << 20).await.expect("read");
        bytes += r.len();
        offset = r.next_offset;
    }
    let cold = bytes as f64 / MIB / start.elapsed().as_secs_f64();
    log.close().await.expect("close");
    (cached, cold)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Makes glibc keep freed memory for reuse, as a long-running server's allocator does (the broker
/// runs on mimalloc). By default glibc maps each allocation of 128 KiB or more afresh and unmaps it
/// when freed, so every 1 MiB batch the bench receives (and every DMA buffer beyond glommio's
/// registered memory) faults in 256 new zeroed pages. Measured on 64 appenders of 1 MiB batches
/// with flush=never, in interleaved runs of that row alone: 0.84-0.88 of raw without this, 0.93-0.95
/// with it.
fn keep_freed_memory() {
    // SAFETY: mallopt only changes glibc's allocator parameters; it takes the allocator's lock.
    let set = unsafe {
        // 32 MiB is the largest mmap threshold glibc accepts on 64-bit.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20)
            + libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX)
    };
    assert_eq!(set, 2, "glibc refused a mallopt setting");
}

/// (steal, total) jiffies of all CPUs so far, from /proc/stat (zeros where it cannot be read).
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    (fields.get(7).copied().unwrap_or(0), fields.iter().sum())
}

fn main() {
    keep_freed_memory();
    let ticks_at_start = cpu_ticks();
    let opts = parse_opts();
    let io_memory = std::env::var("IOMEM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10 << 20);
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(io_memory)
        .make()
        .expect("glommio executor");
    ex.run(async move {
        let dir = tempfile::tempdir_in(&opts.dir).expect("bench dir");
        let dir = dir.path();
        mlog_storage::dma_probe::ensure_probed(dir).await.expect("probe");
        let total = if opts.quick { 32 << 20 } else { 512 << 20 };
        let max_time = Duration::from_secs(if opts.quick { 1 } else { 4 });
        let sizes = [(1usize << 10, "1 KiB"), (16 << 10, "16 KiB"), (1 << 20, "1 MiB")];
        let appenders = [1usize, 8, 64];

        let mut raw: Vec<Raw> = Vec::new();
        let mut rows: Vec<Row> = Vec::new();
        let mut record = |i: usize, name: &str, mb_s: f64, syncs: Option<u64>, reference: Reference, before: Raw| {
            if rows.len() <= i {
                rows.push(Row { name: name.to_string(), mb_s: Vec::new(), syncs: Vec::new(), reference, refs: Vec::new() });
            }
            rows[i].mb_s.push(mb_s);
            rows[i].syncs.extend(syncs.map(|s| s as f64));
            rows[i].refs.extend(reference.of(before));
        };
        for run in 0..opts.runs {
            eprintln!("run {}/{}", run + 1, opts.runs);
            let mut i = 0;
            for (size, size_name) in sizes {
                let batch = make_batch(size);
                for flush in [FlushPolicy::Never, FlushPolicy::Always] {
                    for &n in &appenders {
                        let name = format!(
                            "append flush={} batch={size_name} appenders={n}",
                            if flush == FlushPolicy::Never { "never" } else { "always" }
                        );
                        if opts.only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
                            continue;
                        }
                        // The row of the flush=always target again, on recycled segments.
                        let recycled = [false, true];
                        let recycled = if flush == FlushPolicy::Always && size == 16 << 10 && n == 64 {
                            &recycled[..]
                        } else {
                            &recycled[..1]
                        };
                        for &recycled in recycled {
                            let (name, reference) = if recycled {
                                (format!("{name}, recycled segments"), Reference::Overwrite)
                            } else {
                                (name.clone(), Reference::Fresh)
                            };
                            let before = raw_mb_s(dir, total).await;
                            raw.push(before);
                            let r = append_mb_s(dir, &batch, n, flush, total, max_time, recycled).await;
                            record(i, &name, r.mb_s, Some(r.syncs), reference, before);
                            i += 1;
                        }
                    }
                }
            }
            if opts.only.as_ref().is_some_and(|o| !"read".contains(o.as_str())) {
                continue;
            }
            let before = raw_mb_s(dir, total).await;
            raw.push(before);
            let (cached, cold) = read_mb_s(dir, &make_batch(16 << 10), total.min(256 << 20)).await;
            record(i, "read cached batch=16 KiB", cached, None, Reference::None, before);
            record(i + 1, "read cold (disk) batch=16 KiB", cold, None, Reference::Read, before);
        }
        let per_run = |f: fn(&Raw) -> f64| raw.iter().map(f).collect::<Vec<f64>>();
        for (what, runs) in [
            ("write into fresh preallocated space", per_run(|r| r.fresh)),
            ("overwrite of written blocks", per_run(|r| r.overwrite)),
            ("read", per_run(|r| r.read)),
        ] {
            let (lo, hi) = runs.iter().fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            println!("raw O_DIRECT sequential {what} (glommio, 1 MiB x 8 in flight): median {:.0} MB/s, {lo:.0}-{hi:.0} over the {} measurements", median(runs.clone()), runs.len());
        }
        // On a shared VM, figures compare only between runs with similar steal.
        let (steal, total) = cpu_ticks();
        let steal_pct = 100.0 * steal.saturating_sub(ticks_at_start.0) as f64
            / total.saturating_sub(ticks_at_start.1).max(1) as f64;
        println!("CPU time stolen by the hypervisor during the bench: {steal_pct:.0}%");
        println!("\nEach ratio is the median over runs of the row's figure divided by its reference measured right before it.\n");
        println!("| measurement | MB/s (median of {}) | ratio | reference | syncs (median) |", opts.runs);
        println!("|---|---:|---:|---|---:|");
        for row in rows {
            let ratios: Vec<f64> = row.mb_s.iter().zip(&row.refs).map(|(v, r)| v / r).collect();
            let ratio = if ratios.is_empty() { String::from("-") } else { format!("{:.2}", median(ratios)) };
            let syncs = if row.syncs.is_empty() { String::from("-") } else { format!("{:.0}", median(row.syncs)) };
            println!("| {} | {:.0} | {ratio} | {} | {syncs} |", row.name, median(row.mb_s), row.reference.name());
        }
    });
}
