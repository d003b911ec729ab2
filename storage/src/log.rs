//! One partition's log: an ordered set of segments with appends, reads, group commit, roll,
//! retention, truncation and recovery.
//!
//! Concurrency: a `Log` belongs to one glommio executor (it is `!Send`); many tasks of that executor
//! may call it at once. State lives in a `RefCell` that is only borrowed inside synchronous helpers,
//! never across an `.await`. Appends are serialized by `append_lock` (they only await for a roll, a
//! preallocation or back-pressure). A caller waiting for durability either finds its offset covered
//! by a running group-commit round or starts the next one, which covers every append made before it
//! started — many appenders, one sync (an `fdatasync`, or none when the round's writes went out
//! with `O_DSYNC`: see `appender`).
//!
//! Durability invariants:
//! * `flushed_offset` only moves forward past data that is durable (written with `O_DSYNC`, or
//!   covered by an `fdatasync`), and sealed segments are synced before the active one, so a durable
//!   offset never depends on an unsynced older segment;
//! * the recovery-point checkpoint names a segment base below which every segment is synced and
//!   trimmed, so recovery scans only from there;
//! * a roll waits for no I/O but creating the new segment: the next round makes its name durable
//!   (before anything in it is acknowledged), and a background task trims and syncs the sealed
//!   segment after its data is durable. Recovery therefore keeps the segments after a sealed one
//!   with an untrimmed tail when the next segment starts right after its last valid batch;
//! * a clean-shutdown checkpoint is removed (and the removal synced) before the first new append can
//!   reach the disk, so a crash after reopening is never mistaken for a clean stop;
//! * an idempotent producer's batch already stored (`producers`) is answered with its first offsets,
//!   never stored again; at open that state is the newest snapshot cut back to the recovered log end
//!   plus every batch stored after it, so it knows exactly the batches that survived.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use event_listener::Event;
use glommio::io::ReadResult;
use glommio::sync::Semaphore;
use mlog_wire::batch::{self, BatchHeader, RecordBatch, HEADER_LEN};

use crate::appender::Appender;
use crate::batch_cache::{BatchCache, CachedBatch};
use crate::checkpoint::{self, Kind};
use crate::config::{FlushPolicy, LogConfig};
use crate::error::{IoContext, Result, StorageError};
use crate::index::IndexWrite;
use crate::producers::{self, Producers, Verdict};
use crate::recovery::scan_batches;
use crate::segment::{self, BatchMeta, Segment};
use crate::valid_batch::ValidBatch;

/// Group-commit rounds that may run at once. Rounds are independent (a later fdatasync covers every
/// write completed before it was issued), so more than one is correct. With two, an append made
/// during a round starts its own at once instead of waiting for that one to end, which halves the
/// worst wait. Measured on ext4 over a virtio disk, interleaved against one: produce p99 at 570 k
/// msgs/s 4.4 ms (median of six 8 s runs) against 4.9, peak acks=all 1286 MB/s against 1215,
/// 64 appenders x 16 KiB 881-957 MB/s against 823-883. (Before writes stopped going through
/// io_uring's worker threads, two measured worse: ~580 MB/s against ~700.)
const MAX_SYNC_ROUNDS: usize = 2;

/// Wall-clock age a segment created by this process needs before it may roll by age (see
/// `Log::roll_if_needed`).
const MIN_WALL_AGE: Duration = Duration::from_secs(60);

/// A verdict as `duplicate_of` reports it.
fn verdict_outcome(header: &BatchHeader, verdict: Verdict) -> Result<Option<AppendInfo>> {
    match verdict {
        Verdict::Append => Ok(None),
        Verdict::Duplicate {
            base_offset,
            last_offset,
        } => Ok(Some(AppendInfo {
            base_offset,
            last_offset,
        })),
        Verdict::Fenced { epoch, current } => Err(StorageError::ProducerFenced {
            producer_id: header.producer_id,
            epoch,
            current,
        }),
        Verdict::OutOfOrder {
            first_seq,
            last_seq,
        } => Err(StorageError::OutOfOrderSequence {
            producer_id: header.producer_id,
            first_seq,
            last_seq,
        }),
    }
}

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset assigned to the batch's first record.
    pub base_offset: u64,
    /// Offset of the batch's last record.
    pub last_offset: u64,
}

/// One piece of a read: bytes from the batch cache or a slice of a DMA read buffer. Either way the
/// bytes are exactly those appended.
#[derive(Debug, Clone)]
pub enum ReadChunk {
    /// A batch served from memory.
    Cached(Bytes),
    /// A run of batches read from a segment file.
    Disk(ReadResult),
}

impl std::ops::Deref for ReadChunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ReadChunk::Cached(b) => b,
            ReadChunk::Disk(r) => r,
        }
    }
}

/// Whole batches returned by `Log::read`, in offset order.
#[derive(Debug, Clone, Default)]
pub struct LogRead {
    /// The batches' bytes, possibly in several chunks.
    pub chunks: Vec<ReadChunk>,
    /// Offset after the last returned batch (the next offset to read).
    pub next_offset: u64,
}

impl LogRead {
    /// Total bytes.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }

    /// True when no batch was returned.
    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(|c| c.is_empty())
    }

    /// The bytes in one buffer (copies; for tests and tools).
    pub fn to_vec(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    /// Drops every batch whose base offset is `>= limit` (a broker serves consumers only up to its
    /// high watermark). Chunks are cut without copying.
    pub fn keep_below(&mut self, limit: u64) {
        let mut kept = Vec::with_capacity(self.chunks.len());
        let mut next = None;
        'chunks: for chunk in self.chunks.drain(..) {
            let mut end = 0usize;
            while let Some(h) = chunk
                .get(end..)
                .and_then(|rest| BatchHeader::parse(rest).ok())
            {
                if h.base_offset as u64 >= limit || end + h.total_len() > chunk.len() {
                    break;
                }
                end += h.total_len();
                next = Some(h.next_offset() as u64);
            }
            let whole = end == chunk.len();
            match chunk {
                _ if end == 0 => break 'chunks,
                c if whole => kept.push(c),
                ReadChunk::Cached(b) => kept.push(ReadChunk::Cached(b.slice(..end))),
                ReadChunk::Disk(r) => match ReadResult::slice(&r, 0, end) {
                    Some(cut) => kept.push(ReadChunk::Disk(cut)),
                    None => break 'chunks,
                },
            }
            if !whole {
                break;
            }
        }
        self.chunks = kept;
        if let Some(n) = next {
            self.next_offset = n;
        }
    }
}

/// What `Log::open` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// The previous stop was clean: nothing was scanned.
    pub clean_shutdown: bool,
    /// Segments whose batches were scanned and indexes rebuilt.
    pub segments_scanned: usize,
    /// Batches validated by the scans.
    pub batches_scanned: u64,
    /// Bytes cut off at invalid tails.
    pub bytes_truncated: u64,
    /// Whole segments removed because they followed an invalid byte.
    pub segments_removed: usize,
}

/// One entry of the leader-epoch history: `epoch` began at `start_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// The leader epoch.
    pub epoch: i32,
    /// First offset written in that epoch.
    pub start_offset: u64,
}

struct State {
    segments: BTreeMap<u64, Segment>,
    log_start: u64,
    log_end: u64,
    /// Every offset below is durable (written with `O_DSYNC`, or covered by an fdatasync).
    flushed: u64,
    /// Last checkpointed recovery point (a segment base).
    recovery_point: u64,
    high_watermark: u64,
    epochs: Vec<EpochEntry>,
    cache: BatchCache,
    failed: Option<String>,
    closed: bool,
    /// Group-commit rounds run (each covers every append made before it started).
    syncs: u64,
    /// Sync rounds in progress (see `Log::flush_upto`).
    syncs_running: usize,
    /// The log end the newest started round covers.
    sync_covering: u64,
    /// Rolls so far, and how many of them a directory fsync covered: a round that carries appends
    /// past a roll first makes the new segment's name durable.
    rolls: u64,
    rolls_named_durably: u64,
    /// A retired segment file the next roll reuses (`LogConfig::recycle_segments`). It holds stale
    /// batches of offsets below the log start, which no scan accepts after newer data: a scan wants
    /// each batch to continue the offsets before it, and offsets only grow (`restart_at`, the one
    /// way down, deletes the spare first).
    spare: Option<Spare>,
    /// Idempotent producers' last batches (see `producers`).
    producers: Producers,
}

/// A retired segment file kept for reuse.
struct Spare {
    path: PathBuf,
    /// The retired segment's open file, while this log still has it open: a read that began before
    /// the segment was retired holds a clone, and the file is not reused (overwritten) under it.
    file: Option<Rc<glommio::io::DmaFile>>,
}

impl Spare {
    fn in_use(&self) -> bool {
        self.file.as_ref().is_some_and(|f| Rc::strong_count(f) > 1)
    }
}

impl State {
    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn check_writable(&self) -> Result<()> {
        if self.closed {
            return Err(StorageError::Closed);
        }
        if let Some(why) = &self.failed {
            return Err(StorageError::Failed(why.clone()));
        }
        Ok(())
    }

    fn evict_cache(&mut self) {
        let segments = &self.segments;
        self.cache.evict(|b| {
            segments
                .get(&b.segment)
                .and_then(|s| s.appender.as_ref())
                .is_none_or(|a| a.state().written_upto() >= b.end_position)
        });
    }
}

/// A partition's durable log. See the module docs for its concurrency and durability rules.
pub struct Log {
    /// This log, for the background task that finishes a sealed segment after a roll.
    me: Weak<Log>,
    dir: PathBuf,
    config: LogConfig,
    st: RefCell<State>,
    append_lock: Semaphore,
    /// Notified whenever a sync round ends.
    sync_done: Event,
    /// Serializes checkpoint file writes.
    checkpoint_lock: Semaphore,
    /// Serializes the finishing of sealed segments (`finish_sealed`).
    finish_lock: Semaphore,
    recovery: RecoveryStats,
}

/// Contents of the clean-shutdown checkpoint.
struct CleanShutdown {
    log_end: u64,
    active_base: u64,
    active_size: u64,
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering from an unclean stop if needed. Must run on a
    /// glommio executor. A torn or corrupt tail never makes it fail; an unreadable directory or a
    /// file it cannot interpret does.
    pub async fn open(dir: impl Into<PathBuf>, config: LogConfig) -> Result<Rc<Log>> {
        config.validate()?;
        let dir = dir.into();
        if !dir.exists() {
            std::fs::create_dir_all(&dir).ctx("creating log directory", &dir)?;
            // The new directory's entry must be durable before files in it are trusted.
            if let Some(parent) = dir.parent() {
                checkpoint::sync_dir(parent)?;
            }
        }
        crate::dma_probe::ensure_probed(&dir).await?;
        let (bases, mut spares) = list_segments(&dir)?;
        let clean = read_clean_shutdown(&dir)?;
        // After an unclean stop the spare may not be what its name says: a roll renames it to the
        // new segment's name without waiting for a directory fsync (the next round does that before
        // anything in it is acknowledged), so a power loss can keep the old name over new,
        // unacknowledged batches whose offsets are not below the log start.
        let spare = if config.recycle_segments && clean.is_some() {
            spares.pop().map(|path| Spare { path, file: None })
        } else {
            None
        };
        for path in spares {
            std::fs::remove_file(&path).ctx("removing spare segment", &path)?;
        }
        let recovery_point = read_u64(&dir, Kind::RecoveryPoint)?.unwrap_or(0);
        let mut log_start = read_u64(&dir, Kind::LogStartOffset)?.unwrap_or(0);
        let high_watermark = read_u64(&dir, Kind::HighWatermark)?.unwrap_or(0);
        let mut epochs = read_epochs(&dir)?;

        let mut stats = RecoveryStats {
            clean_shutdown: clean.is_some(),
            ..RecoveryStats::default()
        };
        // An empty segment that is not the last one can only be left by a roll that failed before
        // any append reached it: it holds nothing and must not break the offset sequence.
        let bases: Vec<u64> = match bases.split_last() {
            Some((last, rest)) => {
                let mut kept = Vec::with_capacity(bases.len());
                for &b in rest {
                    let log = segment::file_path(&dir, b, segment::LOG_SUFFIX);
                    if std::fs::metadata(&log)
                        .ctx("reading segment size", &log)?
                        .len()
                        == 0
                    {
                        remove_segment_files(&dir, b)?;
                    } else {
                        kept.push(b);
                    }
                }
                kept.push(*last);
                kept
            }
            None => bases,
        };
        // Segments wholly below the checkpointed log start are ones retention was deleting when the
        // log stopped (it checkpoints the new start first): finish that, so that unlinks a crash kept
        // only some of can not look like a gap in the offsets.
        let holding_start = bases.iter().rposition(|&b| b <= log_start).unwrap_or(0);
        for &b in &bases[..holding_start] {
            remove_segment_files(&dir, b)?;
        }
        let bases = if bases.is_empty() {
            vec![log_start]
        } else {
            bases[holding_start..].to_vec()
        };
        let mut segments = BTreeMap::new();
        let mut expected_next: Option<u64> = None;
        for (i, &base) in bases.iter().enumerate() {
            let next_base = bases.get(i + 1).copied();
            if expected_next.is_some_and(|e| e != base) {
                // A gap or overlap after a recovered segment: everything from here on is unusable.
                for &b in &bases[i..] {
                    remove_segment_files(&dir, b)?;
                    stats.segments_removed += 1;
                }
                break;
            }
            let is_last = next_base.is_none();
            let mut seg = Segment::open(&dir, base, config.index_max_bytes, is_last).await?;
            let clean_here = clean
                .as_ref()
                .filter(|c| !is_last || (c.active_base == base && c.active_size == seg.allocated));
            let trusted = clean_here.is_some() || next_base.is_some_and(|nb| nb <= recovery_point);
            let mut needs_scan = !trusted;
            if trusted {
                seg.size = seg.allocated;
                seg.next_offset = match (next_base, clean_here) {
                    (Some(nb), _) => nb,
                    (None, Some(c)) => c.log_end,
                    (None, None) => base,
                };
                let offsets = seg.next_offset.saturating_sub(base);
                needs_scan = seg.next_offset < base
                    || seg.indexes_missing
                    || !seg.index.is_sane(seg.size, offsets)
                    || !seg.time_index.is_sane(offsets);
                if !needs_scan {
                    seg.load_max_timestamp();
                    seg.bytes_since_index = seg.size - seg.index.last_position();
                }
            }
            let mut truncated = false;
            if needs_scan {
                truncated = recover_segment(&mut seg, &config, &mut stats).await?;
            }
            expected_next = Some(seg.next_offset);
            // A sealed segment is trimmed after the next one took appends (off the acknowledgement
            // path), so a crash can leave its preallocated or recycled tail: when the next segment
            // starts right after its valid batches, nothing is missing and the cut was that tail.
            if truncated && !is_last && next_base != Some(seg.next_offset) {
                // Later segments cannot continue an invalid byte: drop them (see module docs).
                for &b in &bases[i + 1..] {
                    remove_segment_files(&dir, b)?;
                    stats.segments_removed += 1;
                }
                segments.insert(base, seg);
                break;
            }
            segments.insert(base, seg);
        }
        // The last surviving segment becomes the active one.
        let (&active_base, active) = segments
            .iter_mut()
            .next_back()
            .expect("at least one segment");
        if active.sealed {
            active.reopen_indexes_for_append()?;
        }
        let appender = Appender::new(
            active.file.clone(),
            active.log_path.clone(),
            active.size,
            config.write_buffer_bytes,
        )
        .await?;
        // Recovered bytes may sit in the device's volatile cache after a crash: make them durable
        // before anything is acknowledged on top of them.
        active
            .file
            .fdatasync()
            .await
            .ctx("fdatasync", &active.log_path)?;
        active.appender = Some(appender);
        let log_end = active.next_offset;
        let first_base = *segments.keys().next().expect("at least one segment");
        // The spare's stale offsets lie below the checkpointed start, so below every offset the log
        // will write, unless recovery left the log ending before that start: then it goes.
        let spare = match spare {
            Some(s) if log_end < log_start => {
                std::fs::remove_file(&s.path).ctx("removing spare segment", &s.path)?;
                // Gone for good before the lower start below is written.
                checkpoint::sync_dir(&dir)?;
                None
            }
            s => s,
        };
        let checkpointed_start = log_start;
        log_start = log_start.max(first_base).min(log_end);
        if log_start != checkpointed_start {
            // A checkpointed start past the recovered end must not outlive this open: the next one
            // would take the segments written from here on for ones below the start.
            checkpoint::write(
                &dir,
                Kind::LogStartOffset,
                &checkpoint::u64_payload(log_start),
            )?;
        }
        let known_epochs = epochs.len();
        epochs.retain(|e| e.start_offset < log_end);
        if epochs.len() < known_epochs {
            // Written back, or a dropped entry would return at the next open once the log grew past
            // its start again.
            checkpoint::write(&dir, Kind::LeaderEpochs, &encode_epochs(&epochs))?;
        }
        if clean.is_some() {
            checkpoint::remove(&dir, Kind::CleanShutdown)?;
        }
        checkpoint::write(
            &dir,
            Kind::RecoveryPoint,
            &checkpoint::u64_payload(active_base),
        )?;
        checkpoint::sync_dir(&dir)?;

        let log = Rc::new_cyclic(|me| Log {
            me: me.clone(),
            st: RefCell::new(State {
                segments,
                log_start,
                log_end,
                flushed: log_end,
                recovery_point: active_base,
                high_watermark: high_watermark.clamp(log_start, log_end),
                epochs,
                cache: BatchCache::new(config.batch_cache_bytes),
                failed: None,
                closed: false,
                syncs: 0,
                syncs_running: 0,
                sync_covering: log_end,
                rolls: 0,
                rolls_named_durably: 0,
                spare,
                producers: Producers::default(),
            }),
            append_lock: Semaphore::new(1),
            sync_done: Event::new(),
            checkpoint_lock: Semaphore::new(1),
            finish_lock: Semaphore::new(1),
            recovery: stats,
            dir,
            config,
        });
        log.load_producers().await?;
        if let FlushPolicy::Interval(every) = log.config.flush {
            spawn_interval_flusher(Rc::downgrade(&log), every);
        }
        Ok(log)
    }

    /// Rebuilds the idempotent producers' state: the newest snapshot, minus what it knows past the
    /// recovered log end (a tail an unclean stop lost), plus the headers of the batches stored after
    /// it. Snapshots are written at every roll and at close, so after a clean stop nothing is read,
    /// and after an unclean one at most about a segment. Without a usable snapshot (none yet, or
    /// damaged) the whole log is read once, and the state written as a snapshot.
    async fn load_producers(&self) -> Result<()> {
        let snapshot = match checkpoint::read(&self.dir, Kind::ProducerSnapshot) {
            Ok(Some(bytes)) => match Producers::decode(&bytes) {
                Ok(s) => Some(s),
                Err(why) => {
                    tracing::warn!(dir = %self.dir.display(), why, "ignoring the producer snapshot");
                    None
                }
            },
            Ok(None) => None,
            // Only a shortcut: a damaged one costs a longer rebuild, never the partition.
            Err(e @ StorageError::CorruptCheckpoint { .. }) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "ignoring the producer snapshot");
                None
            }
            Err(e) => return Err(e),
        };
        let (log_start, log_end) = {
            let st = self.st.borrow();
            (st.log_start, st.log_end)
        };
        // A snapshot past the log end knows batches that are gone (offsets from the end on will
        // hold others): it must be written back. Without one, the rebuilt state is written so that
        // the next unclean open need not read the whole log again (a shortcut only).
        let (mut producers, from, stale, missing) = match snapshot {
            Some((mut p, upto)) => {
                p.truncate(log_end);
                (p, upto.min(log_end), upto > log_end, false)
            }
            None => (Producers::default(), log_start, false, log_end > log_start),
        };
        let mut offset = from.max(log_start);
        while offset < log_end {
            let read = self.read(offset, 1 << 20).await?;
            for chunk in &read.chunks {
                let mut bytes: &[u8] = chunk;
                while !bytes.is_empty() {
                    let h = BatchHeader::parse(bytes).map_err(|e| {
                        StorageError::Failed(format!("reading producer state at {offset}: {e}"))
                    })?;
                    let base = h.base_offset as u64;
                    if h.last_offset() as u64 >= from {
                        producers.record(&h, base, h.last_offset() as u64);
                    }
                    bytes = &bytes[h.total_len().min(bytes.len())..];
                }
            }
            if read.next_offset <= offset {
                break;
            }
            offset = read.next_offset;
        }
        self.st.borrow_mut().producers = producers;
        if stale {
            self.persist(Kind::ProducerSnapshot).await?;
        } else if missing {
            if let Err(e) = self.persist(Kind::ProducerSnapshot).await {
                tracing::warn!(dir = %self.dir.display(), error = %e, "writing the producer snapshot failed");
            }
        }
        Ok(())
    }

    /// Appends a batch, assigning its offsets, after checking its header and CRC
    /// (`ValidBatch::check`). The batch's base offset field is rewritten, and its partition leader
    /// epoch is set to the newest epoch of the history (if any); nothing else is changed. Returns
    /// once the batch is buffered, or, with `FlushPolicy::Always`, once a sync round made it
    /// durable.
    pub async fn append(&self, batch: BytesMut) -> Result<AppendInfo> {
        self.append_valid(ValidBatch::check(batch)?).await
    }

    /// `append` for a batch checked already (a broker checks every record of a client's batch).
    pub async fn append_valid(&self, batch: ValidBatch) -> Result<AppendInfo> {
        self.append_inner(batch, None).await
    }

    /// Like `append`, stamping `leader_epoch`; a newer epoch starts a new leader-epoch history entry
    /// at this batch's base offset (checkpointed before the append). Older epochs are refused.
    pub async fn append_with_epoch(
        &self,
        batch: BytesMut,
        leader_epoch: i32,
    ) -> Result<AppendInfo> {
        self.append_inner(ValidBatch::check(batch)?, Some(leader_epoch))
            .await
    }

    async fn append_inner(
        &self,
        batch: ValidBatch,
        leader_epoch: Option<i32>,
    ) -> Result<AppendInfo> {
        let len = batch.len();
        if len > self.config.max_batch_bytes {
            return Err(StorageError::BatchTooLarge {
                size: len,
                limit: self.config.max_batch_bytes,
            });
        }
        let ValidBatch {
            bytes: mut batch,
            header,
        } = batch;
        let _permit = lock(&self.append_lock).await?;
        self.st.borrow().check_writable()?;
        if let Some(first) = self.duplicate_of(&header)? {
            // Stored before: answered as the first time, once it is as durable as then.
            drop(_permit);
            if self.config.flush == FlushPolicy::Always {
                self.flush_upto(first.last_offset + 1).await?;
            }
            return Ok(first);
        }
        if let Some(epoch) = leader_epoch {
            self.record_epoch(epoch).await?;
        }
        self.roll_if_needed(
            len as u64,
            header.last_offset_delta as u64,
            header.max_timestamp,
        )
        .await?;
        self.preallocate_for(len as u64).await?;

        let (info, write_state) = {
            let mut guard = self.st.borrow_mut();
            let st = &mut *guard;
            let base_offset = st.log_end;
            batch::set_base_offset(&mut batch, base_offset as i64);
            if let Some(e) = st.epochs.last() {
                batch::set_partition_leader_epoch(&mut batch, e.epoch);
            }
            let meta = BatchMeta {
                base_offset,
                last_offset: base_offset + header.last_offset_delta as u64,
                max_timestamp: header.max_timestamp,
                len: len as u64,
            };
            let interval = self.config.index_interval_bytes;
            let active = st.active_mut();
            let position = active.size;
            let appender = active
                .appender
                .as_mut()
                .ok_or_else(|| StorageError::Failed("the active segment has no appender".into()))?;
            appender.check()?;
            appender.append(&batch);
            let write_state = appender.state().clone();
            active.track_batch(meta, position, interval);
            let segment = active.base_offset;
            let end_position = active.size;
            st.log_end = meta.last_offset + 1;
            st.producers.record(&header, base_offset, meta.last_offset);
            st.cache.push(CachedBatch {
                base_offset,
                next_offset: st.log_end,
                segment,
                end_position,
                bytes: batch.freeze(),
            });
            st.evict_cache();
            let info = AppendInfo {
                base_offset,
                last_offset: meta.last_offset,
            };
            (info, write_state)
        };
        // Back-pressure: the next appender waits (behind the lock) until the disk caught up.
        write_state
            .wait_room(self.config.max_writes_in_flight)
            .await?;
        drop(_permit);
        if self.config.flush == FlushPolicy::Always {
            self.flush_upto(info.last_offset + 1).await?;
        }
        Ok(info)
    }

    /// Where a batch with this header was stored, if it is an idempotent producer's batch stored
    /// before (a resend); `Ok(None)` if it is to be appended; an error if `append` would refuse it
    /// (a stale sequence, a fenced epoch).
    pub fn duplicate_of(&self, header: &BatchHeader) -> Result<Option<AppendInfo>> {
        verdict_outcome(header, self.st.borrow().producers.check(header))
    }

    /// Checks batches that are to be appended one after another (a produce request's), before any
    /// is, without changing anything: each must be appendable once the ones before it are (so that
    /// none fails half-way), and, since one base offset answers them all, they must land back to
    /// back: batches stored before (resends) first, each continuing the previous one, then new
    /// ones, which continue them only if nothing was appended since.
    pub fn check_batches(&self, batches: &[ValidBatch]) -> Result<()> {
        if batches.iter().all(|b| b.header.producer_id < 0) {
            return Ok(());
        }
        let st = self.st.borrow();
        let verdicts = st.producers.check_all(batches.iter().map(|b| &b.header));
        let mut stored_end = None;
        let mut new_seen = false;
        for (i, (b, v)) in batches.iter().zip(verdicts).enumerate() {
            let out_of_order = || StorageError::OutOfOrderSequence {
                producer_id: b.header.producer_id,
                first_seq: b.header.base_sequence,
                last_seq: producers::last_seq(b.header.base_sequence, b.header.record_count),
            };
            match verdict_outcome(&b.header, v)? {
                Some(first) => {
                    let back_to_back = stored_end.map_or(i == 0, |end| end == first.base_offset);
                    if new_seen || !back_to_back {
                        return Err(out_of_order());
                    }
                    stored_end = Some(first.last_offset + 1);
                }
                None => {
                    if !new_seen && stored_end.is_some_and(|end| end != st.log_end) {
                        return Err(out_of_order());
                    }
                    new_seen = true;
                }
            }
        }
        Ok(())
    }

    async fn record_epoch(&self, epoch: i32) -> Result<()> {
        let (entries, entry) = {
            let st = self.st.borrow();
            let start_offset = st.log_end;
            match st.epochs.last() {
                Some(last) if last.epoch == epoch => return Ok(()),
                Some(last) if last.epoch > epoch => {
                    return Err(StorageError::StaleLeaderEpoch {
                        epoch,
                        latest: last.epoch,
                    })
                }
                _ => {}
            }
            let entry = EpochEntry {
                epoch,
                start_offset,
            };
            let mut entries = st.epochs.clone();
            entries.push(entry);
            (entries, entry)
        };
        // Durable first: a batch is never stamped with an epoch the history on disk lacks.
        self.write_checkpoint(Kind::LeaderEpochs, encode_epochs(&entries))
            .await?;
        self.st.borrow_mut().epochs.push(entry);
        Ok(())
    }

    /// Rolls if an append of this batch must go to a new segment.
    ///
    /// Record timestamps are the producers' to choose, so age alone would let a producer roll a
    /// segment at every batch (each a `segment_ms` later than the last) and run the broker out of
    /// file descriptors. A segment this process created therefore also has to be `MIN_WALL_AGE` (or
    /// `segment_ms`, if shorter) old by the wall clock: at most one roll by age per minute.
    async fn roll_if_needed(&self, len: u64, last_delta: u64, max_timestamp: i64) -> Result<()> {
        let too_old = match self.config.segment_ms {
            Some(limit) if self.st.borrow().active().size > 0 => {
                let young = {
                    let st = self.st.borrow();
                    st.active().fresh && st.active().created.elapsed() < limit.min(MIN_WALL_AGE)
                };
                !young && self.active_segment_age(max_timestamp).await? >= limit
            }
            _ => false,
        };
        let roll = {
            let st = self.st.borrow();
            let active = st.active();
            active.size > 0
                && (too_old
                    || !active.fits(len, st.log_end + last_delta, self.config.segment_bytes))
        };
        if roll {
            self.roll().await?;
            self.spawn_after_roll();
        }
        Ok(())
    }

    /// The active segment's age for `segment_ms`, as Kafka measures it: the new batch's max
    /// timestamp minus that of the segment's first batch, so that a restart does not restart the
    /// clock (a broker restarted more often than `segment_ms` would otherwise never roll by age, and
    /// age retention, which deletes only sealed segments, would never delete). When either batch
    /// carries no timestamp, the time since this process opened the segment. Callers hold
    /// `append_lock`, so the active segment cannot change during the header read.
    async fn active_segment_age(&self, new_max_timestamp: i64) -> Result<Duration> {
        let known = self.st.borrow().active().first_batch_timestamp;
        let first = match known {
            Some(t) => t,
            None => {
                let (file, path) = {
                    let st = self.st.borrow();
                    (st.active().file.clone(), st.active().log_path.clone())
                };
                let t = segment::read_first_batch_timestamp(&file, &path).await?;
                self.st.borrow_mut().active_mut().first_batch_timestamp = Some(t);
                t
            }
        };
        Ok(if first >= 0 && new_max_timestamp >= 0 {
            Duration::from_millis(new_max_timestamp.saturating_sub(first).max(0) as u64)
        } else {
            self.st.borrow().active().created.elapsed()
        })
    }

    /// Creates an empty segment at `base`, ready for appends, in the spare file if there is one (its
    /// stale bytes are never read: the segment's size starts at 0). The caller syncs the directory.
    async fn new_active_segment(&self, base: u64) -> Result<Segment> {
        // Files left by an earlier failed attempt at this base must not lend it stale entries.
        remove_segment_files(&self.dir, base)?;
        let spare = {
            let mut st = self.st.borrow_mut();
            st.spare.take_if(|s| !s.in_use())
        };
        if let Some(spare) = spare {
            let log_path = segment::file_path(&self.dir, base, segment::LOG_SUFFIX);
            std::fs::rename(&spare.path, &log_path).ctx("reusing spare segment", &spare.path)?;
        }
        let mut seg = Segment::open(&self.dir, base, self.config.index_max_bytes, true).await?;
        seg.fresh = true;
        let appender = Appender::new(
            seg.file.clone(),
            seg.log_path.clone(),
            0,
            self.config.write_buffer_bytes,
        )
        .await?;
        seg.appender = Some(appender);
        Ok(seg)
    }

    /// Seals the active segment and starts a new one at the log end. Must hold `append_lock`.
    async fn roll(&self) -> Result<()> {
        let new_base = self.st.borrow().log_end;
        // Until the new segment is in the log, its files are removed if the roll fails or its future
        // is dropped: appends may go on in the old segment past `new_base`, and a later open would
        // read a file left there (a recycled one is full of old batches) as a segment out of place.
        let mut new_files = UnfinishedSegment {
            dir: &self.dir,
            base: Some(new_base),
        };
        // At most one sealed segment is unfinished, so the recovery point lags by one segment at
        // most: a log that rolls faster than segments finish (tiny segments) waits here.
        if self.st.borrow().segments.values().any(|s| s.unfinished) {
            self.finish_sealed().await?;
        }
        // The old segment's last writes go out while the new one is created; its appender (and
        // buffers) go once they landed, so a roll never doubles the writes in flight.
        let (end, written) = {
            let mut st = self.st.borrow_mut();
            let a = st.active_mut().appender.as_mut();
            let a =
                a.ok_or_else(|| StorageError::Failed("the active segment has no appender".into()))?;
            (a.submit_tail(), a.state().clone())
        };
        let seg = self.new_active_segment(new_base).await?;
        written.wait_written(end).await?;
        // Nothing else waits here: the next round syncs the sealed data and makes the new name
        // durable (before anything appended to it is acknowledged), and the sealed segment is
        // trimmed in the background (`spawn_after_roll`).
        {
            let mut st = self.st.borrow_mut();
            let active = st.active_mut();
            active.appender = None;
            active.unfinished = true;
            active.seal();
            st.segments.insert(new_base, seg);
            st.rolls += 1;
            new_files.base = None;
        }
        // Retention at the roll keeps a log at its limit from growing by more than one segment
        // between periodic checks, and hands the next roll a spare file to reuse. It is
        // housekeeping: its failure must not fail the append that rolled (files it left behind lie
        // below the log start, and the next open removes them).
        if let Err(e) = self.apply_retention(SystemTime::now()).await {
            tracing::warn!(dir = %self.dir.display(), error = %e, "retention at roll failed");
        }
        Ok(())
    }

    async fn preallocate_for(&self, len: u64) -> Result<()> {
        let job = {
            let st = self.st.borrow();
            let active = st.active();
            let need = active.size + len;
            (need > active.allocated).then(|| {
                let target = (active.allocated + self.config.preallocate_bytes)
                    .min(self.config.segment_bytes)
                    .max(need);
                (active.file.clone(), active.log_path.clone(), target)
            })
        };
        if let Some((file, path, target)) = job {
            file.pre_allocate(target, false)
                .await
                .ctx("preallocating segment", &path)?;
            self.st.borrow_mut().active_mut().allocated = target;
        }
        Ok(())
    }

    /// Makes every append made before this call durable (one sync round shared with concurrent
    /// callers). Returns the offset below which everything is durable.
    pub async fn flush(&self) -> Result<u64> {
        let target = self.st.borrow().log_end;
        self.flush_upto(target).await?;
        Ok(self.st.borrow().flushed)
    }

    async fn flush_upto(&self, target: u64) -> Result<()> {
        // Waiters never queue behind a lock: they sleep until a round ends and look again, so everyone
        // a round covered returns at once. A waiter that no running round covers starts a new one
        // once fewer than `MAX_SYNC_ROUNDS` run; at the limit, an append made during a round waits
        // for a round to end and then for the next, which carries every append made meanwhile.
        loop {
            let listener = {
                let st = self.st.borrow();
                if st.flushed >= target {
                    return Ok(());
                }
                if let Some(why) = &st.failed {
                    return Err(StorageError::Failed(why.clone()));
                }
                if st.sync_covering < target && st.syncs_running < MAX_SYNC_ROUNDS {
                    None
                } else {
                    Some(self.sync_done.listen())
                }
            };
            match listener {
                Some(l) => l.await,
                None => {
                    self.start_round();
                    let _round = RoundGuard(self);
                    // Let every task that is ready to run (typically appenders just released by the
                    // previous round) append first: one yield costs no I/O and lets this round carry
                    // them all instead of leaving them for the next one.
                    futures_lite::future::yield_now().await;
                    self.sync_all().await?;
                }
            }
        }
    }

    /// Counts a round as running; pair with a `RoundGuard`, which ends it even if the round's future
    /// is dropped half-way (a cancelled caller must not leave the count, and every waiter, stuck).
    fn start_round(&self) {
        let mut st = self.st.borrow_mut();
        st.syncs_running += 1;
        st.sync_covering = st.sync_covering.max(st.log_end);
    }

    /// Flushes, finishes every sealed segment, then waits until no sync round runs. Callers hold
    /// `append_lock`, so no append can start a new round or roll; what follows may then change
    /// segments' files (truncate, close) with only the active segment unfinished and no round
    /// still working on them.
    async fn flush_and_quiesce(&self) -> Result<()> {
        self.flush().await?;
        self.finish_sealed().await?;
        loop {
            let listener = {
                if self.st.borrow().syncs_running == 0 {
                    return Ok(());
                }
                self.sync_done.listen()
            };
            if self.st.borrow().syncs_running == 0 {
                return Ok(());
            }
            listener.await;
        }
    }

    /// One group-commit round: syncs every segment with unsynced data (and, after a roll, the
    /// directory), covering every append made before it started.
    async fn sync_all(&self) -> Result<()> {
        let (end, rolls, sealed, active) = {
            let mut st = self.st.borrow_mut();
            let end = st.log_end;
            let rolls = (st.rolls > st.rolls_named_durably).then_some(st.rolls);
            let flushed = st.flushed;
            let sealed: Vec<(Rc<glommio::io::DmaFile>, PathBuf)> = st
                .segments
                .values()
                .filter(|s| s.unfinished && end_offset_of(&st, s.base_offset) > flushed)
                .map(|s| (s.file.clone(), s.log_path.clone()))
                .collect();
            let active = st.active_mut();
            let path = active.log_path.clone();
            let active = active
                .appender
                .as_mut()
                .map(|a| (a.file().clone(), a.state().clone(), path, a.submit_tail()));
            (end, rolls, sealed, active)
        };
        // Sealed segments first: a durable offset never depends on an unsynced older segment. The
        // directory fsync runs beside them, on the blocking pool.
        let data = async {
            for (file, path) in &sealed {
                if let Err(e) = file.fdatasync().await.ctx("fdatasync", path) {
                    // Failed at once, not when this round ends: an overlapping round's fdatasync of
                    // the same file may return clean (this one took the error report) and must not
                    // report durability meanwhile.
                    self.st
                        .borrow_mut()
                        .failed
                        .get_or_insert_with(|| e.to_string());
                    return Err(e);
                }
            }
            if let Some((file, state, path, position)) = &active {
                Appender::sync_upto(file, state, path, *position).await?;
            }
            Ok(())
        };
        let names = async {
            match rolls {
                Some(_) => checkpoint::sync_dir_off_executor(&self.dir).await,
                None => Ok(()),
            }
        };
        let (data, names) = futures_lite::future::zip(data, names).await;
        let outcome = data.and(names);
        let mut st = self.st.borrow_mut();
        match outcome {
            // An overlapping round may have failed after this one's fdatasync consumed the error
            // report: a failed log never reports anything as newly durable.
            Ok(()) if st.failed.is_some() => {
                Err(StorageError::Failed(st.failed.clone().unwrap_or_default()))
            }
            Ok(()) => {
                st.flushed = st.flushed.max(end);
                st.syncs += 1;
                if let Some(r) = rolls {
                    st.rolls_named_durably = st.rolls_named_durably.max(r);
                }
                Ok(())
            }
            Err(e) => {
                st.failed.get_or_insert_with(|| e.to_string());
                Err(e)
            }
        }
    }

    /// Starts `after_roll` as a task of its own, so that neither the append that rolled nor the
    /// ones behind it wait for it.
    fn spawn_after_roll(&self) {
        let me = self.me.clone();
        glommio::spawn_local(async move {
            if let Some(log) = me.upgrade() {
                if let Err(e) = log.after_roll().await {
                    tracing::warn!(dir = %log.dir.display(), error = %e, "finishing a sealed segment failed");
                }
            }
        })
        .detach();
    }

    /// Finishes the segment a roll sealed, then writes a producer snapshot: one per segment bounds
    /// what an unclean open reads to rebuild the producers (a shortcut only: without it the open
    /// reads from an older snapshot, with none the whole log).
    async fn after_roll(&self) -> Result<()> {
        let _permit = lock(&self.finish_lock).await?;
        if self.st.borrow().closed {
            return Ok(());
        }
        // A segment already finished by someone else (the next roll) still gets its snapshot here.
        // No close can begin meanwhile: it finishes sealed segments first, under `finish_lock`.
        self.finish_sealed_locked().await?;
        self.persist(Kind::ProducerSnapshot).await
    }

    /// Finishes every unfinished sealed segment: waits until its data is durable (in a round shared
    /// with appends), trims its file to its data, syncs it and its indexes, and then advances the
    /// recovery point past it. This is off the acknowledgement path, which a crash before it
    /// completes cannot hurt: recovery keeps the segments after a sealed one whose untrimmed tail
    /// follows complete batches (see `open`).
    async fn finish_sealed(&self) -> Result<()> {
        let _permit = lock(&self.finish_lock).await?;
        self.finish_sealed_locked().await
    }

    /// `finish_sealed` for a holder of `finish_lock`.
    async fn finish_sealed_locked(&self) -> Result<()> {
        let mut finished = false;
        loop {
            let job = {
                let st = self.st.borrow();
                st.segments.values().find(|s| s.unfinished).map(|s| {
                    (
                        s.base_offset,
                        end_offset_of(&st, s.base_offset),
                        s.file.clone(),
                        s.log_path.clone(),
                        s.size,
                    )
                })
            };
            let Some((base, data_end, file, path, size)) = job else {
                break;
            };
            self.flush_upto(data_end).await?;
            let outcome = self.finish_segment(base, &file, &path, size).await;
            self.fail_on_error(outcome)?;
            finished = true;
        }
        let advanced = {
            let mut st = self.st.borrow_mut();
            // Never past the active segment, whose file is not trimmed (a truncation may be
            // rebuilding it as the active one at this very moment).
            let active = st.active().base_offset;
            let rp = st
                .segments
                .values()
                .find(|s| s.unfinished)
                .map_or(active, |s| s.base_offset.min(active));
            let advanced = finished && rp > st.recovery_point;
            if advanced {
                st.recovery_point = rp;
            }
            advanced
        };
        if advanced {
            // A stale recovery point only means more scanning after a crash: logged, not failed.
            if let Err(e) = self.persist(Kind::RecoveryPoint).await {
                tracing::warn!(dir = %self.dir.display(), error = %e, "writing the recovery point failed");
            }
        }
        Ok(())
    }

    /// Trims a sealed segment whose data is durable, syncs the trim, and writes and syncs its indexes
    /// (also the active segment's at close).
    async fn finish_segment(
        &self,
        base: u64,
        file: &glommio::io::DmaFile,
        path: &Path,
        size: u64,
    ) -> Result<()> {
        file.truncate(size).await.ctx("trimming segment", path)?;
        file.fdatasync().await.ctx("fdatasync", path)?;
        let writes = match self.st.borrow().segments.get(&base) {
            Some(seg) => Some(seg.index_writes()?),
            None => None,
        };
        if let Some(writes) = writes {
            write_indexes_off_executor(writes).await?;
        }
        if let Some(seg) = self.st.borrow_mut().segments.get_mut(&base) {
            seg.indexes_written()?;
            seg.unfinished = false;
            seg.allocated = size;
        }
        Ok(())
    }

    /// Reads whole batches starting with the one that holds `offset`, up to `max_bytes` (at least one
    /// batch, even a larger one). Reading at the log end returns no batches.
    pub async fn read(&self, offset: u64, max_bytes: usize) -> Result<LogRead> {
        let plan = {
            let st = self.st.borrow();
            if offset < st.log_start || offset > st.log_end {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    log_start: st.log_start,
                    log_end: st.log_end,
                });
            }
            if offset == st.log_end {
                return Ok(LogRead {
                    chunks: Vec::new(),
                    next_offset: offset,
                });
            }
            if st.cache.first_offset().is_some_and(|first| first <= offset) {
                let chunks = st.cache.read(offset, max_bytes);
                let next_offset = chunks
                    .last()
                    .and_then(|b| BatchHeader::parse(b).ok())
                    .map_or(offset, |h| h.next_offset() as u64);
                return Ok(LogRead {
                    chunks: chunks.into_iter().map(ReadChunk::Cached).collect(),
                    next_offset,
                });
            }
            let seg = st
                .segments
                .range(..=offset)
                .next_back()
                .map(|(_, s)| s)
                .filter(|s| offset < s.next_offset)
                .ok_or(StorageError::OffsetOutOfRange {
                    offset,
                    log_start: st.log_start,
                    log_end: st.log_end,
                })?;
            DiskRead {
                file: seg.file.clone(),
                path: seg.log_path.clone(),
                position: seg.scan_start(offset),
                limit: seg.readable_upto(),
            }
        };
        plan.run(offset, max_bytes, self.config.index_interval_bytes as usize)
            .await
    }

    /// The earliest offset whose record timestamp is `>= timestamp`, or `None` if every record is
    /// older.
    pub async fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>> {
        let range = {
            let st = self.st.borrow();
            st.segments
                .values()
                .find(|s| {
                    s.size > 0 && s.next_offset > st.log_start && s.max_timestamp >= timestamp
                })
                .map(|s| {
                    let from = s
                        .time_index
                        .last_below(timestamp)
                        .map_or(s.base_offset, |e| {
                            s.base_offset + e.relative_offset as u64 + 1
                        });
                    (from.max(st.log_start), s.next_offset)
                })
        };
        let Some((from, end)) = range else {
            return Ok(None);
        };
        let mut offset = from;
        while offset < end {
            let read = self.read(offset, 256 << 10).await?;
            if read.is_empty() {
                break;
            }
            for chunk in &read.chunks {
                let mut rest: &[u8] = chunk;
                while !rest.is_empty() {
                    let b = RecordBatch::parse(rest)?;
                    if b.header().max_timestamp >= timestamp {
                        return Ok(Some(first_record_at_or_after(&b, timestamp, from)));
                    }
                    rest = &rest[b.as_bytes().len()..];
                }
            }
            offset = read.next_offset;
        }
        Ok(None)
    }

    /// Removes every batch that holds an offset `>= offset` (the whole batch containing `offset`
    /// goes, so the new log end may be below `offset`). Durable when it returns. Truncating at or
    /// below the log start empties the log and restarts it at `offset`.
    ///
    /// Order (so a crash at any point reopens to either the old or the new log, never a mix): find
    /// the cut without changing anything; lower the recovery point durably to the kept segment, so
    /// recovery rescans it; unlink the later segments and sync the directory; cut and sync the file;
    /// rebuild the kept segment's metadata. Any error fails the log (reopening recovers it): the
    /// batches it was to remove may still be there, and no append may follow them.
    pub async fn truncate_suffix(&self, offset: u64) -> Result<()> {
        let _permit = lock(&self.append_lock).await?;
        self.st.borrow().check_writable()?;
        let outcome = self.truncate_suffix_locked(offset).await;
        self.fail_on_error(outcome)
    }

    /// `truncate_suffix`, under `append_lock`.
    async fn truncate_suffix_locked(&self, offset: u64) -> Result<()> {
        // Every write must have landed before bytes are cut from under it.
        self.flush_and_quiesce().await?;
        let (log_start, log_end) = {
            let st = self.st.borrow();
            (st.log_start, st.log_end)
        };
        if offset >= log_end {
            return Ok(());
        }
        if offset <= log_start {
            return self.restart_guarded(offset).await;
        }
        let (file, path, keep_base, from, limit) =
            {
                let st = self.st.borrow();
                let (_, seg) = st.segments.range(..=offset).next_back().ok_or(
                    StorageError::OffsetOutOfRange {
                        offset,
                        log_start,
                        log_end,
                    },
                )?;
                (
                    seg.file.clone(),
                    seg.log_path.clone(),
                    seg.base_offset,
                    seg.scan_start(offset),
                    seg.size,
                )
            };
        let from_offset = self.offset_at_position(keep_base, from).await?;
        let mut cut = None;
        let end = scan_batches(&file, &path, from, from_offset, limit, |meta, pos| {
            if meta.last_offset >= offset {
                cut = Some((pos, meta.base_offset));
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await?;
        let (cut_position, new_end) = match (cut, end.invalid) {
            (Some(cut), _) => cut,
            (None, Some(reason)) => {
                return Err(StorageError::Corrupt {
                    path,
                    position: end.valid_upto,
                    reason,
                })
            }
            // The offset lies past this segment's data (it ends the segment): nothing to cut here.
            (None, None) => (limit, end_offset_of(&self.st.borrow(), keep_base)),
        };
        if new_end <= log_start {
            // The cut batch starts below the log start: nothing readable would remain.
            return self.restart_guarded(offset).await;
        }
        {
            let mut st = self.st.borrow_mut();
            st.recovery_point = st.recovery_point.min(keep_base);
        }
        self.persist(Kind::RecoveryPoint).await?;
        let guard = FailUnlessDone(self);
        let outcome = self
            .cut_segments(keep_base, cut_position, new_end, file, path)
            .await;
        guard.done();
        self.fail_on_error(outcome)
    }

    /// `restart_at`, failing the log if it errs or is dropped half-way.
    async fn restart_guarded(&self, offset: u64) -> Result<()> {
        let guard = FailUnlessDone(self);
        let outcome = self.restart_at(offset).await;
        guard.done();
        self.fail_on_error(outcome)
    }

    /// The destructive half of `truncate_suffix`.
    async fn cut_segments(
        &self,
        keep_base: u64,
        cut_position: u64,
        new_end: u64,
        file: Rc<glommio::io::DmaFile>,
        path: PathBuf,
    ) -> Result<()> {
        let doomed: Vec<u64> = {
            let mut st = self.st.borrow_mut();
            let doomed: Vec<u64> = st
                .segments
                .range(keep_base + 1..)
                .map(|(b, _)| *b)
                .collect();
            for b in &doomed {
                st.segments.remove(b);
            }
            st.log_end = new_end;
            st.flushed = st.flushed.min(new_end);
            st.sync_covering = st.sync_covering.min(new_end);
            st.high_watermark = st.high_watermark.min(new_end);
            st.cache.truncate_from(new_end);
            st.epochs.retain(|e| e.start_offset < new_end);
            st.producers.truncate(new_end);
            doomed
        };
        // Cut the kept file first: a crash before the unlinks below reopens (from the lowered recovery
        // point) to exactly the new log, since later segments no longer continue it.
        file.truncate(cut_position)
            .await
            .ctx("truncating segment", &path)?;
        file.fdatasync().await.ctx("fdatasync", &path)?;
        // Every segment file past the kept one goes, including any a failed roll left behind.
        for b in bases_on_disk(&self.dir, segment::LOG_SUFFIX)?
            .into_iter()
            .filter(|b| *b > keep_base)
        {
            remove_segment_files(&self.dir, b)?;
        }
        debug_assert!(doomed.iter().all(|b| *b > keep_base));
        checkpoint::sync_dir_off_executor(&self.dir).await?;
        // Rebuild the kept segment's metadata and indexes from what is left.
        let mut rebuilt = Vec::new();
        scan_batches(&file, &path, 0, keep_base, cut_position, |meta, pos| {
            rebuilt.push((meta, pos));
            ControlFlow::Continue(())
        })
        .await?;
        let appender =
            Appender::new(file, path, cut_position, self.config.write_buffer_bytes).await?;
        {
            let mut st = self.st.borrow_mut();
            let interval = self.config.index_interval_bytes;
            let seg = st.active_mut();
            debug_assert_eq!(seg.base_offset, keep_base);
            if seg.sealed {
                seg.reopen_indexes_for_append()?;
            }
            reset_segment(seg);
            for (meta, pos) in rebuilt {
                seg.track_batch(meta, pos, interval);
            }
            seg.allocated = cut_position;
            seg.appender = Some(appender);
        }
        self.persist(Kind::HighWatermark).await?;
        self.persist(Kind::LeaderEpochs).await?;
        self.persist(Kind::ProducerSnapshot).await
    }

    /// Marks the log failed when a destructive step could not complete: its memory no longer
    /// matches its files, and only a reopen (recovery) reconciles them.
    fn fail_on_error(&self, outcome: Result<()>) -> Result<()> {
        if let Err(e) = &outcome {
            self.st
                .borrow_mut()
                .failed
                .get_or_insert_with(|| e.to_string());
        }
        outcome
    }

    /// The base offset of the batch at `position` of segment `base` (positions come from the index).
    async fn offset_at_position(&self, base: u64, position: u64) -> Result<u64> {
        if position == 0 {
            return Ok(base);
        }
        let (file, path) = {
            let st = self.st.borrow();
            let seg = st.segments.get(&base).ok_or(StorageError::Closed)?;
            (seg.file.clone(), seg.log_path.clone())
        };
        let head = file
            .read_at(position, HEADER_LEN)
            .await
            .ctx("reading segment", &path)?;
        let h = BatchHeader::parse(&head).map_err(|e| StorageError::Corrupt {
            path,
            position,
            reason: e.to_string(),
        })?;
        Ok(h.base_offset as u64)
    }

    /// Deletes every segment and starts an empty one at `offset`. Holds `append_lock`.
    async fn restart_at(&self, offset: u64) -> Result<()> {
        {
            let mut st = self.st.borrow_mut();
            st.recovery_point = st.recovery_point.min(offset);
        }
        self.persist(Kind::RecoveryPoint).await?;
        for b in bases_on_disk(&self.dir, segment::LOG_SUFFIX)? {
            remove_segment_files(&self.dir, b)?;
        }
        // The new offsets may be lower than a spare's stale ones: none may be reused.
        self.st.borrow_mut().spare = None;
        for base in bases_on_disk(&self.dir, segment::SPARE_SUFFIX)? {
            let path = segment::file_path(&self.dir, base, segment::SPARE_SUFFIX);
            std::fs::remove_file(&path).ctx("removing spare segment", &path)?;
        }
        checkpoint::sync_dir_off_executor(&self.dir).await?;
        let seg = self.new_active_segment(offset).await?;
        {
            let mut st = self.st.borrow_mut();
            st.segments.clear();
            st.segments.insert(offset, seg);
            st.log_start = offset;
            st.log_end = offset;
            st.flushed = offset;
            st.sync_covering = offset;
            st.high_watermark = offset;
            st.recovery_point = offset;
            st.epochs.clear();
            st.cache.clear();
            st.producers.clear();
        }
        checkpoint::sync_dir_off_executor(&self.dir).await?;
        for kind in [
            Kind::LogStartOffset,
            Kind::RecoveryPoint,
            Kind::HighWatermark,
            Kind::LeaderEpochs,
            Kind::ProducerSnapshot,
        ] {
            self.persist(kind).await?;
        }
        Ok(())
    }

    /// Moves the log start up to `offset` (clamped to the log end) and deletes the segments wholly
    /// below it. The active segment is never deleted. Returns the number of segments deleted.
    pub async fn delete_before(&self, offset: u64) -> Result<usize> {
        let _permit = lock(&self.append_lock).await?;
        let new_start = {
            let st = self.st.borrow();
            offset.max(st.log_start).min(st.log_end)
        };
        // The start must never be durable ahead of the data: after a crash it would lie past the
        // recovered log end. Only finished segments are deleted: finish the sealed ones first.
        self.flush_upto(new_start).await?;
        self.finish_sealed().await?;
        self.delete_segments(new_start).await
    }

    /// Applies `retention_bytes` and `retention_ms` (measured against `now`), deleting whole sealed
    /// segments from the oldest. Returns the number deleted. Every roll also does this.
    pub async fn enforce_retention(&self, now: SystemTime) -> Result<usize> {
        let _permit = lock(&self.append_lock).await?;
        // Only finished segments are deleted: finish the sealed ones first.
        self.finish_sealed().await?;
        self.apply_retention(now).await
    }

    /// `enforce_retention` for a holder of `append_lock`.
    async fn apply_retention(&self, now: SystemTime) -> Result<usize> {
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let new_start = {
            let st = self.st.borrow();
            let mut excess = self
                .config
                .retention_bytes
                .map_or(0, |limit| self.size_bytes_of(&st).saturating_sub(limit));
            let mut by_size = 0usize;
            // Only finished segments go: an unfinished one (the one the running roll sealed) may
            // hold data not yet durable, and a start past it must not be.
            for s in st.segments.values() {
                if s.size > excess || !s.sealed || s.unfinished {
                    break;
                }
                excess -= s.size;
                by_size += 1;
            }
            let by_age = self.config.retention_ms.map_or(0, |age| {
                let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                let cutoff = now_ms.saturating_sub(age_ms);
                st.segments
                    .values()
                    .take_while(|s| s.sealed && !s.unfinished && newest_record_ms(s) < cutoff)
                    .count()
            });
            let n = by_size.max(by_age);
            if n == 0 {
                return Ok(0);
            }
            let next_base = st
                .segments
                .values()
                .nth(n)
                .map_or(st.log_end, |s| s.base_offset);
            next_base.max(st.log_start)
        };
        self.delete_segments(new_start).await
    }

    /// Raises the log start to `new_start` (durably) and then deletes the sealed, synced segments
    /// wholly below it; never the last segment. Holds `append_lock`.
    async fn delete_segments(&self, new_start: u64) -> Result<usize> {
        {
            let mut st = self.st.borrow_mut();
            st.log_start = new_start;
            st.high_watermark = st.high_watermark.max(new_start);
            st.cache.drop_before(new_start);
        }
        // The new start is durable before any file goes, so a crash can't resurrect deleted data.
        self.persist(Kind::LogStartOffset).await?;
        let (doomed, kept) = {
            let mut st = self.st.borrow_mut();
            let last = st.active().base_offset;
            let doomed: Vec<u64> = st
                .segments
                .values()
                .filter(|s| {
                    s.base_offset != last && s.sealed && !s.unfinished && s.next_offset <= new_start
                })
                .map(|s| s.base_offset)
                .collect();
            let mut newest = None;
            for b in &doomed {
                newest = st.segments.remove(b);
            }
            let keep = self.config.recycle_segments && st.spare.is_none();
            (doomed, newest.filter(|_| keep))
        };
        // Oldest first and the kept file last, the unlinks durable before the rename: a crash never
        // leaves an older segment next to a newer one's spare (`open` also drops whatever lies
        // wholly below the checkpointed start, so unlinks a crash half kept cannot look like a gap).
        // Unlinking a large file frees its extents (milliseconds): done on the blocking pool, so the
        // shard's other partitions are not held up.
        let older = doomed[..doomed.len() - usize::from(kept.is_some())].to_vec();
        if !older.is_empty() {
            let dir = self.dir.clone();
            let sync_first = kept.is_some();
            glommio::executor()
                .spawn_blocking(move || {
                    for b in older {
                        remove_segment_files(&dir, b)?;
                    }
                    if sync_first {
                        checkpoint::sync_dir(&dir)?;
                    }
                    Ok::<_, StorageError>(())
                })
                .await?;
        }
        if let Some(seg) = kept {
            let to = segment::file_path(&self.dir, seg.base_offset, segment::SPARE_SUFFIX);
            std::fs::rename(&seg.log_path, &to).ctx("keeping spare segment", &seg.log_path)?;
            // Tracked at once: a spare the log does not know of would escape `restart_at`.
            self.st.borrow_mut().spare = Some(Spare {
                path: to,
                file: Some(seg.file),
            });
            remove_segment_files(&self.dir, seg.base_offset)?;
        }
        if !doomed.is_empty() {
            checkpoint::sync_dir_off_executor(&self.dir).await?;
        }
        Ok(doomed.len())
    }

    /// Flushes, finishes every segment (trim, index sync), writes every checkpoint and marks the stop
    /// as clean, so the next open needs no scan. Further calls fail with `Closed`.
    pub async fn close(&self) -> Result<()> {
        let _permit = lock(&self.append_lock).await?;
        self.st.borrow().check_writable()?;
        self.flush_and_quiesce().await?;
        let (file, path, clean) = {
            let mut st = self.st.borrow_mut();
            st.closed = true;
            let log_end = st.log_end;
            let active = st.active_mut();
            active.seal();
            active.appender = None;
            let clean = CleanShutdown {
                log_end,
                active_base: active.base_offset,
                active_size: active.size,
            };
            (active.file.clone(), active.log_path.clone(), clean)
        };
        self.finish_segment(clean.active_base, &file, &path, clean.active_size)
            .await?;
        for kind in [
            Kind::HighWatermark,
            Kind::LogStartOffset,
            Kind::LeaderEpochs,
            Kind::RecoveryPoint,
            Kind::ProducerSnapshot,
        ] {
            self.persist(kind).await?;
        }
        let mut payload = Vec::with_capacity(24);
        payload.extend_from_slice(&clean.log_end.to_be_bytes());
        payload.extend_from_slice(&clean.active_base.to_be_bytes());
        payload.extend_from_slice(&clean.active_size.to_be_bytes());
        self.write_checkpoint(Kind::CleanShutdown, payload).await?;
        self.append_lock.close();
        Ok(())
    }

    /// Writes the high-watermark and recovery-point checkpoints.
    pub async fn checkpoint(&self) -> Result<()> {
        self.persist(Kind::HighWatermark).await?;
        self.persist(Kind::RecoveryPoint).await
    }

    /// Writes the checkpoint of `kind` from the state as it is once the checkpoint lock is held, so
    /// an older value can never overwrite a newer one.
    async fn persist(&self, kind: Kind) -> Result<()> {
        let _permit = lock(&self.checkpoint_lock).await?;
        let payload = {
            let st = self.st.borrow();
            match kind {
                Kind::RecoveryPoint => checkpoint::u64_payload(st.recovery_point).to_vec(),
                Kind::HighWatermark => checkpoint::u64_payload(st.high_watermark).to_vec(),
                Kind::LogStartOffset => checkpoint::u64_payload(st.log_start).to_vec(),
                Kind::LeaderEpochs => encode_epochs(&st.epochs),
                Kind::ProducerSnapshot => st.producers.encode(st.log_end),
                Kind::CleanShutdown => {
                    return Err(StorageError::InvalidConfig("not a state checkpoint"))
                }
            }
        };
        self.write_file(kind, payload).await
    }

    /// Writes a checkpoint whose payload the caller built (serialized with `persist`).
    async fn write_checkpoint(&self, kind: Kind, payload: Vec<u8>) -> Result<()> {
        let _permit = lock(&self.checkpoint_lock).await?;
        self.write_file(kind, payload).await
    }

    async fn write_file(&self, kind: Kind, payload: Vec<u8>) -> Result<()> {
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || checkpoint::write(&dir, kind, &payload))
            .await
    }

    /// Sets the high watermark (clamped to `[log_start, log_end]`); persisted by `checkpoint`/`close`.
    pub fn set_high_watermark(&self, offset: u64) {
        let mut st = self.st.borrow_mut();
        st.high_watermark = offset.max(st.log_start).min(st.log_end);
    }

    /// The high watermark.
    pub fn high_watermark(&self) -> u64 {
        self.st.borrow().high_watermark
    }

    /// First readable offset.
    pub fn log_start_offset(&self) -> u64 {
        self.st.borrow().log_start
    }

    /// Offset the next appended record gets.
    pub fn log_end_offset(&self) -> u64 {
        self.st.borrow().log_end
    }

    /// Every offset below this is durable (written with `O_DSYNC`, or covered by an fdatasync).
    pub fn flushed_offset(&self) -> u64 {
        self.st.borrow().flushed
    }

    /// Group-commit rounds run so far: each makes every append made before it began durable (an
    /// `fdatasync` per segment with unsynced data, none for writes that went out with `O_DSYNC`).
    pub fn sync_count(&self) -> u64 {
        self.st.borrow().syncs
    }

    /// The leader-epoch history, oldest first.
    pub fn leader_epochs(&self) -> Vec<EpochEntry> {
        self.st.borrow().epochs.clone()
    }

    /// Bytes of log data in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes_of(&self.st.borrow())
    }

    fn size_bytes_of(&self, st: &State) -> u64 {
        st.segments.values().map(|s| s.size).sum()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.st.borrow().segments.keys().copied().collect()
    }

    /// What `open` had to do.
    pub fn recovery_stats(&self) -> &RecoveryStats {
        &self.recovery
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }
}

/// When a segment's newest record was written, for age retention: its max timestamp or, when its
/// batches carry none (`-1`, Kafka's "no timestamp"), its file's modification time, as Kafka does.
/// A segment that cannot be dated is kept.
fn newest_record_ms(segment: &Segment) -> i64 {
    if segment.max_timestamp >= 0 {
        return segment.max_timestamp;
    }
    std::fs::metadata(&segment.log_path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(i64::MAX, |d| {
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Removes the files of a segment being created at `base` when dropped, unless `base` was cleared
/// (the segment joined the log).
struct UnfinishedSegment<'a> {
    dir: &'a Path,
    base: Option<u64>,
}

impl Drop for UnfinishedSegment<'_> {
    fn drop(&mut self) {
        if let Some(base) = self.base {
            let _ = remove_segment_files(self.dir, base);
        }
    }
}

/// Ends a sync round (see `Log::start_round`) when dropped, even when the round's future is.
struct RoundGuard<'a>(&'a Log);

impl Drop for RoundGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.st.borrow_mut();
        st.syncs_running -= 1;
        if st.syncs_running == 0 {
            // A round dropped half-way covered nothing: waiters must not count on it.
            st.sync_covering = st.flushed;
        }
        drop(st);
        self.0.sync_done.notify(usize::MAX);
    }
}

/// Fails the log if dropped before `done`: a destructive change (truncation) interrupted half-way
/// leaves memory and files disagreeing, and only a reopen reconciles them.
struct FailUnlessDone<'a>(&'a Log);

impl FailUnlessDone<'_> {
    fn done(self) {
        std::mem::forget(self);
    }
}

impl Drop for FailUnlessDone<'_> {
    fn drop(&mut self) {
        self.0
            .st
            .borrow_mut()
            .failed
            .get_or_insert_with(|| "a truncation was interrupted".into());
    }
}

/// The next offset of segment `base`: the following segment's base, or the log end.
fn end_offset_of(st: &State, base: u64) -> u64 {
    st.segments
        .range(base + 1..)
        .next()
        .map_or(st.log_end, |(b, _)| *b)
}

fn encode_epochs(epochs: &[EpochEntry]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(4 + epochs.len() * 12);
    payload.extend_from_slice(&(epochs.len() as u32).to_be_bytes());
    for e in epochs {
        payload.extend_from_slice(&e.epoch.to_be_bytes());
        payload.extend_from_slice(&e.start_offset.to_be_bytes());
    }
    payload
}

/// A disk read, captured so no borrow is held while it runs.
struct DiskRead {
    file: Rc<glommio::io::DmaFile>,
    path: PathBuf,
    position: u64,
    limit: u64,
}

impl DiskRead {
    /// Reads from `position` (a batch start at or below the batch holding `offset`) and returns
    /// the batches from the one holding `offset`, whole, within `max_bytes`.
    async fn run(self, offset: u64, max_bytes: usize, index_interval: usize) -> Result<LogRead> {
        let window = max_bytes.saturating_add(index_interval).max(64 << 10);
        let mut position = self.position;
        loop {
            let want = (self.limit.saturating_sub(position)).min(window as u64) as usize;
            if want < HEADER_LEN {
                return Err(
                    self.corrupt(position, "offset not found before the end of the segment")
                );
            }
            let data = self
                .file
                .read_at(position, want)
                .await
                .ctx("reading segment", &self.path)?;
            // Skip batches below `offset`.
            let mut p = 0usize;
            let mut first = None;
            while let Some(h) = self.header_at(&data, position, p)? {
                if (h.last_offset() as u64) >= offset {
                    first = Some(h);
                    break;
                }
                p += h.total_len();
            }
            let Some(h) = first else {
                if p == 0 {
                    return Err(
                        self.corrupt(position, "batch header does not fit the readable range")
                    );
                }
                position += p as u64;
                continue;
            };
            if p + h.total_len() > data.len() {
                // The first batch is only partly in the window: read it whole.
                let start = position + p as u64;
                if start + h.total_len() as u64 > self.limit {
                    return Err(self.corrupt(start, "batch runs past the readable range"));
                }
                let data = self
                    .file
                    .read_at(start, h.total_len())
                    .await
                    .ctx("reading segment", &self.path)?;
                if data.len() < h.total_len() {
                    return Err(self.corrupt(start, "batch runs past the readable range"));
                }
                return Ok(LogRead {
                    chunks: vec![ReadChunk::Disk(data)],
                    next_offset: h.next_offset() as u64,
                });
            }
            let mut end = p + h.total_len();
            let mut next_offset = h.next_offset() as u64;
            while let Some(n) = self.header_at(&data, position, end)? {
                if end + n.total_len() > data.len() || end - p + n.total_len() > max_bytes {
                    break;
                }
                end += n.total_len();
                next_offset = n.next_offset() as u64;
            }
            let chunk = ReadResult::slice(&data, p, end - p)
                .ok_or_else(|| self.corrupt(position, "slice outside the read buffer"))?;
            return Ok(LogRead {
                chunks: vec![ReadChunk::Disk(chunk)],
                next_offset,
            });
        }
    }

    /// The batch header at `p` of `data`, if a whole header is there.
    fn header_at(&self, data: &[u8], base: u64, p: usize) -> Result<Option<BatchHeader>> {
        let Some(bytes) = data.get(p..p + HEADER_LEN) else {
            return Ok(None);
        };
        match BatchHeader::parse(bytes) {
            Ok(h) if h.total_len() >= HEADER_LEN => Ok(Some(h)),
            Ok(_) => Err(self.corrupt(base + p as u64, "batch length below the header size")),
            Err(e) => Err(self.corrupt(base + p as u64, &e.to_string())),
        }
    }

    fn corrupt(&self, position: u64, reason: &str) -> StorageError {
        StorageError::Corrupt {
            path: self.path.clone(),
            position,
            reason: reason.to_string(),
        }
    }
}

fn first_record_at_or_after(batch: &RecordBatch<'_>, timestamp: i64, from: u64) -> u64 {
    let base = batch.header().base_offset as u64;
    if let Ok(records) = batch.records() {
        for r in records.flatten() {
            if r.timestamp >= timestamp && r.offset as u64 >= from {
                return r.offset as u64;
            }
        }
    }
    // Compressed batches can't be looked into without decompression: answer the batch.
    base.max(from)
}

/// Resets a segment's metadata and indexes before they are rebuilt from a scan.
fn reset_segment(seg: &mut Segment) {
    seg.index.clear();
    seg.time_index.clear();
    seg.size = 0;
    seg.next_offset = seg.base_offset;
    seg.max_timestamp = i64::MIN;
    seg.max_timestamp_offset = seg.base_offset;
    seg.bytes_since_index = 0;
}

/// Scans a segment from its start, rebuilding its indexes and cutting any invalid tail. Returns
/// whether a tail was cut.
async fn recover_segment(
    seg: &mut Segment,
    config: &LogConfig,
    stats: &mut RecoveryStats,
) -> Result<bool> {
    let was_sealed = seg.sealed;
    if was_sealed {
        seg.reopen_indexes_for_append()?;
    }
    reset_segment(seg);
    let file = seg.file.clone();
    let path = seg.log_path.clone();
    let interval = config.index_interval_bytes;
    let (base, allocated) = (seg.base_offset, seg.allocated);
    let end = scan_batches(&file, &path, 0, base, allocated, |meta, pos| {
        seg.track_batch(meta, pos, interval);
        ControlFlow::Continue(())
    })
    .await?;
    stats.segments_scanned += 1;
    stats.batches_scanned += end.batches;
    let cut = end.invalid.is_some() && end.valid_upto < seg.allocated;
    if let Some(why) = &end.invalid {
        let garbage = seg.allocated - end.valid_upto;
        // Preallocated zeros past the data are expected, not damage worth a warning.
        tracing::info!(segment = %path.display(), position = end.valid_upto, bytes = garbage, reason = %why, "recovery cut the segment's tail");
        stats.bytes_truncated += garbage;
    }
    // Cut the file to its valid prefix: stale batches past it must never be scanned back in. A file
    // already that size is left alone: a truncate would reset its modification time, which dates
    // timestamp-less segments for retention.
    if allocated != end.valid_upto {
        file.truncate(end.valid_upto)
            .await
            .ctx("truncating segment", &path)?;
    }
    // Synced whether or not it was cut: what the scan accepted may be writes no fdatasync covered
    // before the crash (a segment filled exactly to its size is not cut), and it is about to count
    // as durable, below the recovery point and the high watermark.
    file.fdatasync().await.ctx("fdatasync", &path)?;
    seg.allocated = end.valid_upto;
    if was_sealed {
        seg.seal();
        // The rebuilt indexes must be durable before a recovery point can make them trusted. This
        // blocks the executor briefly, once per rebuilt segment, at open.
        for write in seg.index_writes()? {
            write.run()?;
        }
        seg.indexes_written()?;
    }
    Ok(cut)
}

/// Takes `lock`'s one permit; a closed lock means the log is closed.
async fn lock(lock: &Semaphore) -> Result<glommio::sync::Permit<'_>> {
    lock.acquire_permit(1)
        .await
        .map_err(|_| StorageError::Closed)
}

/// Writes and syncs a segment's two index files on the blocking pool (an fsync waits for the disk,
/// and the executor meanwhile serves every other partition of its shard).
async fn write_indexes_off_executor(writes: [IndexWrite; 2]) -> Result<()> {
    glommio::executor()
        .spawn_blocking(move || writes.into_iter().try_for_each(IndexWrite::run))
        .await
}

fn spawn_interval_flusher(log: Weak<Log>, every: Duration) {
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(every).await;
            let Some(log) = log.upgrade() else { break };
            if log.st.borrow().closed {
                break;
            }
            if let Err(e) = log.flush().await {
                tracing::error!(dir = %log.dir.display(), error = %e, "interval flush failed");
            }
        }
    })
    .detach();
}

/// Lists the base offsets of the segment files with `suffix` (`.log` or `.spare`), ignoring
/// everything else.
fn bases_on_disk(dir: &Path, suffix: &str) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).ctx("listing log directory", dir)? {
        let entry = entry.ctx("listing log directory", dir)?;
        if let Some((base, found)) = entry
            .file_name()
            .to_str()
            .and_then(segment::parse_file_name)
        {
            if found == suffix {
                bases.push(base);
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Whether `dir` is a log directory: a directory holding only files a `Log` writes (segments,
/// indexes, spares, checkpoints, temp files), at least one of them a segment when `with_data`. Lets
/// a caller that cleans up tell a log's directory from anything else that happens to sit beside it.
pub fn is_log_dir(dir: &Path, with_data: bool) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut segments = 0;
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return false;
        };
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            return false;
        }
        match log_file_name(name) {
            None => return false,
            Some(LogFileName::Segment(_, segment::LOG_SUFFIX)) => segments += 1,
            Some(_) => {}
        }
    }
    !with_data || segments > 0
}

/// What a file in a log directory is, by its name.
enum LogFileName<'a> {
    /// A checkpoint's temp file (left by a crash mid-write).
    Temp,
    Checkpoint,
    /// A segment's file: base offset and suffix (log, index, time index, spare).
    Segment(u64, &'a str),
}

/// What `name` is in a log directory; `None` for a name the log never writes.
fn log_file_name(name: &str) -> Option<LogFileName<'_>> {
    if name.ends_with(checkpoint::TMP_SUFFIX) {
        Some(LogFileName::Temp)
    } else if Kind::ALL.iter().any(|k| k.file_name() == name) {
        Some(LogFileName::Checkpoint)
    } else {
        segment::parse_file_name(name).map(|(base, suffix)| LogFileName::Segment(base, suffix))
    }
}

/// At open: lists segment base offsets and spare segment files (both sorted by base offset),
/// removing leftover temp files and orphan indexes, and refusing files the log does not know.
fn list_segments(dir: &Path) -> Result<(Vec<u64>, Vec<PathBuf>)> {
    let mut logs = Vec::new();
    let mut spares = Vec::new();
    let mut indexes = Vec::new();
    for entry in std::fs::read_dir(dir).ctx("listing log directory", dir)? {
        let entry = entry.ctx("listing log directory", dir)?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(StorageError::ForeignFile(path));
        };
        match log_file_name(name) {
            Some(LogFileName::Temp) => {
                // Already gone is as good as removed: a checkpoint write still finishing on a
                // thread of an instance that stopped uncleanly (as crash tests stop one, by dropping
                // its executor) renamed it after the listing.
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).ctx("removing temp file", &path);
                    }
                    _ => {}
                }
            }
            Some(LogFileName::Checkpoint) => {}
            Some(LogFileName::Segment(base, segment::LOG_SUFFIX)) if path.is_file() => {
                logs.push(base)
            }
            Some(LogFileName::Segment(base, segment::SPARE_SUFFIX)) if path.is_file() => {
                spares.push((base, path))
            }
            Some(LogFileName::Segment(base, _)) if path.is_file() => indexes.push((base, path)),
            _ => return Err(StorageError::ForeignFile(path)),
        }
    }
    logs.sort_unstable();
    for (base, path) in indexes {
        if logs.binary_search(&base).is_err() {
            std::fs::remove_file(&path).ctx("removing orphan index", &path)?;
        }
    }
    spares.sort_unstable();
    Ok((logs, spares.into_iter().map(|(_, p)| p).collect()))
}

fn remove_segment_files(dir: &Path, base: u64) -> Result<()> {
    for suffix in [
        segment::LOG_SUFFIX,
        segment::INDEX_SUFFIX,
        segment::TIME_INDEX_SUFFIX,
    ] {
        let path = segment::file_path(dir, base, suffix);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("removing segment file", path, e)),
        }
    }
    Ok(())
}

fn read_u64(dir: &Path, kind: Kind) -> Result<Option<u64>> {
    checkpoint::read(dir, kind)?
        .map(|p| checkpoint::parse_u64(&dir.join(kind.file_name()), &p))
        .transpose()
}

fn read_clean_shutdown(dir: &Path) -> Result<Option<CleanShutdown>> {
    let Some(p) = checkpoint::read(dir, Kind::CleanShutdown)? else {
        return Ok(None);
    };
    let word = |i: usize| {
        p.get(i * 8..i * 8 + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    };
    match (p.len(), word(0), word(1), word(2)) {
        (24, Some(log_end), Some(active_base), Some(active_size)) => Ok(Some(CleanShutdown {
            log_end,
            active_base,
            active_size,
        })),
        _ => Err(StorageError::CorruptCheckpoint {
            path: dir.join(Kind::CleanShutdown.file_name()),
            reason: "clean-shutdown payload is not 24 bytes",
        }),
    }
}

fn read_epochs(dir: &Path) -> Result<Vec<EpochEntry>> {
    let Some(p) = checkpoint::read(dir, Kind::LeaderEpochs)? else {
        return Ok(Vec::new());
    };
    let corrupt = || StorageError::CorruptCheckpoint {
        path: dir.join(Kind::LeaderEpochs.file_name()),
        reason: "leader-epoch payload length disagrees with its count",
    };
    let count = p
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(corrupt)? as usize;
    if p.len() != 4 + count * 12 {
        return Err(corrupt());
    }
    Ok(p[4..]
        .chunks_exact(12)
        .map(|c| EpochEntry {
            epoch: i32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            start_offset: u64::from_be_bytes([c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11]]),
        })
        .collect())
}
