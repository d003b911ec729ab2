//! Functional tests of the partition log: appends and reads, roll, reopen, retention, truncation,
//! timestamps, group commit.

mod common;

use std::rc::Rc;
use std::time::{Duration, SystemTime};

use common::*;
use mlog_storage::{FlushPolicy, Log, LogConfig, StorageError};
use rand::SeedableRng;

/// Reads every batch from `from` to the log end, checking each read returns whole batches that
/// continue where the previous read stopped.
async fn read_all(log: &Log, from: u64, max_bytes: usize) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = from;
    let end = log.log_end_offset();
    let mut reads = 0;
    while offset < end {
        reads += 1;
        assert!(reads < 100_000, "read loop does not advance");
        let r = log.read(offset, max_bytes).await.expect("read");
        let batches = split_batches(&r.to_vec());
        assert!(
            !batches.is_empty(),
            "no batch at {offset} below the end {end}"
        );
        let last = mlog_wire::RecordBatch::parse(&batches.last().unwrap().1).unwrap();
        assert_eq!(r.next_offset, last.next_offset() as u64);
        offset = r.next_offset;
        out.extend(batches);
    }
    out
}

/// Appends `n` random batches, returning (base offset, stored bytes) of each.
async fn append_random(
    log: &Log,
    rng: &mut rand::rngs::StdRng,
    n: usize,
    ts: i64,
) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..n {
        let b = random_batch(rng, ts + i as i64 * 10);
        let info = log.append(bytes(&b)).await.expect("append");
        out.push((info.base_offset, as_stored(&b, info.base_offset)));
    }
    out
}

#[test]
fn append_then_read_back_byte_for_byte() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let written = append_random(&log, &mut rng, 300, 0).await;
        // Offsets are contiguous.
        for w in written.windows(2) {
            let first = mlog_wire::RecordBatch::parse(&w[0].1).unwrap();
            assert_eq!(first.next_offset() as u64, w[1].0);
        }
        assert!(log.segment_bases().len() > 3, "small segments roll");
        for max_bytes in [1, 5000, 1 << 20] {
            assert_eq!(read_all(&log, 0, max_bytes).await, written);
        }
        // Every batch start, and an offset in the middle of every batch, reads back from that batch.
        for (i, (base, bytes)) in written.iter().enumerate() {
            let last = mlog_wire::RecordBatch::parse(bytes).unwrap().last_offset() as u64;
            for offset in [*base, last] {
                let r = log.read(offset, 1).await.unwrap();
                assert_eq!(r.to_vec(), written[i].1, "offset {offset}");
            }
        }
        let end = log.log_end_offset();
        assert!(log.read(end, 100).await.unwrap().is_empty());
        assert!(matches!(
            log.read(end + 1, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        // Flushed reads come from disk once the cache has moved on.
        log.flush().await.unwrap();
        assert_eq!(read_all(&log, 0, 1 << 20).await, written);
        log.close().await.unwrap();
    });
}

#[test]
fn reopen_after_clean_close_needs_no_scan() {
    let dir = tempfile::tempdir().unwrap();
    let written = run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let w = append_random(&log, &mut rng, 200, 0).await;
        log.set_high_watermark(100);
        log.close().await.unwrap();
        assert!(matches!(
            log.append(bytes(&batch(1, 1, 1, 0))).await,
            Err(StorageError::Closed)
        ));
        w
    });
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        let stats = log.recovery_stats().clone();
        assert!(stats.clean_shutdown);
        assert_eq!(stats.segments_scanned, 0);
        assert_eq!(stats.batches_scanned, 0);
        assert_eq!(log.high_watermark(), 100);
        assert_eq!(read_all(&log, 0, 1 << 16).await, written);
        // Appends continue right after the last offset.
        let end = log.log_end_offset();
        let info = log.append(bytes(&batch(9, 3, 10, 0))).await.unwrap();
        assert_eq!(info.base_offset, end);
        // A crash now (no close) must not be mistaken for a clean stop.
        log.flush().await.unwrap();
    });
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert!(!log.recovery_stats().clean_shutdown);
        assert!(log.recovery_stats().segments_scanned >= 1);
        let all = read_all(&log, 0, 1 << 16).await;
        assert_eq!(&all[..written.len()], &written[..]);
        assert_eq!(all.len(), written.len() + 1);
    });
}

#[test]
fn unclean_reopen_scans_only_from_the_recovery_point() {
    let dir = tempfile::tempdir().unwrap();
    let written = run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let w = append_random(&log, &mut rng, 300, 0).await;
        log.flush().await.unwrap();
        w
    });
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        let stats = log.recovery_stats().clone();
        assert!(!stats.clean_shutdown);
        // The segment sealed by the last roll is finished (trimmed, then trusted) in the
        // background, which the end of the first run may have cut short.
        assert!(
            (1..=2).contains(&stats.segments_scanned),
            "only the active segment, and at most the one sealed last, are past the recovery point: {stats:?}"
        );
        assert!(log.segment_bases().len() > 3);
        assert_eq!(read_all(&log, 0, 1 << 16).await, written);
    });
}

#[test]
fn retention_deletes_whole_segments_only() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            retention_bytes: Some(200 << 10),
            ..small_config()
        };
        // Written without a limit (a roll applies retention too), then reopened with one.
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let written = append_random(&log, &mut rng, 2000, 0).await;
        log.close().await.unwrap();
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        let before = log.segment_bases();
        let deleted = log.enforce_retention(SystemTime::UNIX_EPOCH).await.unwrap();
        assert!(deleted > 0);
        let after = log.segment_bases();
        assert_eq!(
            &before[deleted..],
            &after[..],
            "the oldest segments went, whole"
        );
        assert!(log.size_bytes() >= 200 << 10, "never below the limit");
        assert_eq!(log.log_start_offset(), after[0]);
        assert!(matches!(
            log.read(0, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        let start = log.log_start_offset();
        let kept: Vec<_> = written
            .iter()
            .filter(|(b, _)| *b >= start)
            .cloned()
            .collect();
        assert_eq!(read_all(&log, start, 1 << 16).await, kept);

        let log_aged = log;
        // delete_before moves the start inside a segment; whole segments below go; it persists.
        let target = log_aged.log_end_offset() - 1;
        log_aged.delete_before(target).await.unwrap();
        assert_eq!(log_aged.log_start_offset(), target);
        assert_eq!(log_aged.segment_bases().len(), 1);
        log_aged.close().await.unwrap();
        let log = Log::open(dir.path(), config).await.unwrap();
        assert_eq!(log.log_start_offset(), target);
    });
}

fn files_with_suffix(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == suffix))
        .collect();
    v.sort();
    v
}

fn inode(path: &std::path::Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

/// Appends `n` batches of exactly one 4 KiB block each, returning (base offset, stored bytes) of
/// each. New data then always ends on a block boundary (no zero padding after it) where a stale
/// batch of a recycled file begins: the case recovery must not mistake for more data.
async fn append_fixed(log: &Log, n: usize) -> Vec<(u64, Vec<u8>)> {
    static VALUE_BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let value_bytes = *VALUE_BYTES.get_or_init(|| {
        (3900..4096)
            .find(|&v| batch(0, 1, v, 0).len() == 4096)
            .expect("a value size that makes a 4 KiB batch")
    });
    let mut out = Vec::new();
    for i in 0..n {
        let b = batch(i as u64 % 10, 1, value_bytes, 0);
        let info = log.append(bytes(&b)).await.expect("append");
        out.push((info.base_offset, as_stored(&b, info.base_offset)));
    }
    out
}

/// Two 64 KiB segments' worth of retention: every roll past that deletes one and leaves a spare.
fn retaining_config() -> LogConfig {
    LogConfig {
        retention_bytes: Some(128 << 10),
        ..small_config()
    }
}

#[test]
fn retired_segment_files_are_reused_and_their_stale_batches_never_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = retaining_config();
    let written = run(|| async {
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        let mut written = Vec::new();
        let mut reused = 0;
        let mut spare_inode_before_last_roll = None;
        for _ in 0..20 {
            // Append until a roll: it takes the spare (if any), and its retention leaves a new one.
            let spare = files_with_suffix(dir.path(), "spare");
            assert!(spare.len() <= 1, "at most one spare: {spare:?}");
            let spare_inode = spare.first().map(|p| inode(p));
            let active = log.segment_bases().last().copied();
            while log.segment_bases().last().copied() == active {
                written.extend(append_fixed(&log, 1).await);
            }
            let new_active = files_with_suffix(dir.path(), "log").pop().unwrap();
            if spare_inode == Some(inode(&new_active)) {
                reused += 1;
            }
            spare_inode_before_last_roll = spare_inode;
        }
        assert!(reused >= 15, "rolls reused spare files: {reused} of 20");
        let active = files_with_suffix(dir.path(), "log").pop().unwrap();
        assert_eq!(
            spare_inode_before_last_roll,
            Some(inode(&active)),
            "the active segment, which the reopen scans, is a recycled file"
        );
        // A few durable appends into the recycled active segment, then an unclean stop.
        written.extend(append_fixed(&log, 3).await);
        log.flush().await.unwrap();
        let start = log.log_start_offset();
        written.retain(|(b, _)| *b >= start);
        assert_eq!(files_with_suffix(dir.path(), "spare").len(), 1);
        written
    });
    run(|| async {
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        // A roll's rename of the spare is made durable only by the next round, so after an unclean
        // stop a file named spare may hold newer batches: it goes.
        assert!(files_with_suffix(dir.path(), "spare").is_empty());
        let start = log.log_start_offset();
        assert_eq!(start, written[0].0);
        assert_eq!(read_all(&log, start, 1 << 16).await, written);
        let end = log.log_end_offset();
        let more = append_fixed(&log, 2).await;
        assert_eq!(more[0].0, end, "appends continue the recovered log");
        log.close().await.unwrap();
    });
}

#[test]
fn a_roll_dropped_half_way_leaves_no_segment_file_behind() {
    // A roll renames the spare (a recycled file full of old batches) to the new segment's name, then
    // opens it. If the append's future is dropped in between, that file must not stay: appends go on
    // in the old segment past its base, and the next open would read it as a segment out of place
    // (and drop every segment after it).
    let dir = tempfile::tempdir().unwrap();
    let config = retaining_config();
    let written = run(|| async {
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        let mut written = Vec::new();
        while files_with_suffix(dir.path(), "spare").is_empty() {
            written.extend(append_fixed(&log, 1).await);
        }
        // Leave two free blocks (of 16) in the active segment, then try a batch of three.
        let active = *log.segment_bases().last().unwrap();
        while log.log_end_offset() - active < 14 {
            written.extend(append_fixed(&log, 1).await);
        }
        assert_eq!(*log.segment_bases().last().unwrap(), active);
        let big = batch(99, 3, 4000, 0);
        {
            let mut append = std::pin::pin!(log.append(bytes(&big)));
            // Polled until the roll renamed the spare (it may first wait for the segment the last
            // roll sealed to be finished); its next step, opening the file, waits for the disk.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !files_with_suffix(dir.path(), "spare").is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the roll never took the spare"
                );
                assert!(futures_lite::future::poll_once(&mut append).await.is_none());
                futures_lite::future::yield_now().await;
            }
        }
        let stray = log.log_end_offset();
        // Appends that fit go on in the old segment, past the stray base; then a real roll.
        while *log.segment_bases().last().unwrap() == active {
            written.extend(append_fixed(&log, 1).await);
        }
        written.extend(append_fixed(&log, 3).await);
        log.flush().await.unwrap();
        assert!(
            !log.segment_bases().contains(&stray) && written.last().unwrap().0 > stray,
            "the test appended past the dropped roll's base {stray}"
        );
        let start = log.log_start_offset();
        written.retain(|(b, _)| *b >= start);
        written
    });
    run(|| async {
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        let start = log.log_start_offset();
        assert_eq!(read_all(&log, start, 1 << 16).await, written);
        log.close().await.unwrap();
    });
}

#[test]
fn a_restart_below_the_log_start_deletes_the_spare() {
    let dir = tempfile::tempdir().unwrap();
    let config = retaining_config();
    run(|| async {
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        // 64 blocks are two 64 KiB segments past the 128 KiB limit: retention has run by then.
        for _ in 0..64 {
            append_fixed(&log, 1).await;
        }
        assert_eq!(files_with_suffix(dir.path(), "spare").len(), 1);
        // Offsets restart at 0, below the spare's stale ones: that file must never be reused.
        log.truncate_suffix(0).await.unwrap();
        assert!(files_with_suffix(dir.path(), "spare").is_empty());
        let written = append_fixed(&log, 40).await;
        assert_eq!(written[0].0, 0);
        assert_eq!(read_all(&log, 0, 1 << 16).await, written);
    });
}

#[test]
fn segments_below_the_log_start_that_a_crash_left_behind_are_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (written, bases) = run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        let written = append_fixed(&log, 80).await;
        log.close().await.unwrap();
        (written, log.segment_bases())
    });
    assert!(bases.len() >= 4, "{bases:?}");
    let first = files_with_suffix(dir.path(), "log").remove(0);
    let saved = std::fs::read(&first).unwrap();
    let start = bases[2];
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        log.delete_before(start).await.unwrap();
        assert_eq!(log.segment_bases()[0], start);
    });
    // The crash the log must survive: the first segment's unlink was lost (the second segment's
    // file went, or became the spare), and the recovery point is gone, so every segment is scanned.
    std::fs::write(&first, saved).unwrap();
    std::fs::remove_file(dir.path().join("recovery-point.ckpt")).unwrap();
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.log_start_offset(), start);
        assert_eq!(log.segment_bases()[0], start, "the stray segment went");
        let kept: Vec<_> = written
            .iter()
            .filter(|(b, _)| *b >= start)
            .cloned()
            .collect();
        assert_eq!(
            read_all(&log, start, 1 << 16).await,
            kept,
            "nothing after the start was lost"
        );
    });
}

#[test]
fn a_checkpointed_start_past_the_recovered_end_is_lowered_for_good() {
    // A log-start checkpoint of 50 over a log that recovery ends at 40 (as a crash after an
    // unsynced start could leave): the log restarts at 40, and what it writes from there must
    // survive the next open, which must not read 50 again.
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        append_fixed(&log, 40).await;
        log.close().await.unwrap();
        let log = Log::open(other.path(), small_config()).await.unwrap();
        append_fixed(&log, 60).await;
        log.delete_before(50).await.unwrap();
        log.close().await.unwrap();
    });
    let ckpt = "log-start-offset.ckpt";
    std::fs::copy(other.path().join(ckpt), dir.path().join(ckpt)).unwrap();
    let written = run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.log_start_offset(), 40);
        let written = append_fixed(&log, 20).await;
        log.flush().await.unwrap();
        written
    });
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.log_start_offset(), 40);
        assert_eq!(read_all(&log, 40, 1 << 16).await, written);
    });
}

#[test]
fn a_leader_epoch_lost_with_a_torn_tail_does_not_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let first = batch(1, 1, 100, 0);
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        log.append_with_epoch(bytes(&first), 1).await.unwrap();
        log.flush().await.unwrap();
        // Epoch 2 is checkpointed when it starts, but its batch is lost: the log is dropped
        // unflushed, and its bytes (if any reached the file) are wiped.
        log.append_with_epoch(bytes(&batch(2, 1, 100, 0)), 2)
            .await
            .unwrap();
    });
    let segment = files_with_suffix(dir.path(), "log").remove(0);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0u8; 4096], first.len() as u64).unwrap();
    drop(file);
    let epochs = |log: &Log| -> Vec<(i32, u64)> {
        log.leader_epochs()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    };
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.log_end_offset(), 1);
        assert_eq!(epochs(&log), vec![(1, 0)]);
        // The log grows past where epoch 2 started, still in epoch 1.
        log.append_with_epoch(bytes(&batch(3, 1, 100, 0)), 1)
            .await
            .unwrap();
        log.append_with_epoch(bytes(&batch(4, 1, 100, 0)), 1)
            .await
            .unwrap();
        // Another unclean stop: a clean close would rewrite the epochs anyway.
        log.flush().await.unwrap();
    });
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(epochs(&log), vec![(1, 0)]);
        log.append_with_epoch(bytes(&batch(5, 1, 100, 0)), 1)
            .await
            .unwrap();
        log.close().await.unwrap();
    });
}

#[test]
fn truncate_suffix_then_append_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let kept = run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let written = append_random(&log, &mut rng, 400, 0).await;
        log.append_with_epoch(bytes(&batch(1, 1, 1, 0)), 3)
            .await
            .unwrap();
        assert_eq!(log.leader_epochs().len(), 1);
        // Cut in the middle of a batch: the whole batch goes.
        let (cut_base, cut_bytes) = written[150].clone();
        let cut_in = mlog_wire::RecordBatch::parse(&cut_bytes)
            .unwrap()
            .last_offset() as u64;
        log.set_high_watermark(log.log_end_offset());
        log.truncate_suffix(cut_in).await.unwrap();
        assert_eq!(log.log_end_offset(), cut_base);
        assert_eq!(log.high_watermark(), cut_base);
        assert!(
            log.leader_epochs().is_empty(),
            "the epoch started past the cut"
        );
        let mut kept = written[..150].to_vec();
        assert_eq!(read_all(&log, 0, 1 << 16).await, kept);
        // Appends continue at the cut.
        kept.extend(append_random(&log, &mut rng, 50, 0).await);
        assert_eq!(kept[150].0, cut_base);
        assert_eq!(read_all(&log, 0, 1 << 16).await, kept);
        log.flush().await.unwrap();
        kept
    });
    // Unclean reopen: the truncated bytes must not come back.
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(read_all(&log, 0, 1 << 16).await, kept);
        // Truncating below the start empties the log and restarts it there.
        log.truncate_suffix(0).await.unwrap();
        assert_eq!(log.log_end_offset(), 0);
        let info = log.append(bytes(&batch(7, 2, 5, 0))).await.unwrap();
        assert_eq!(info.base_offset, 0);
        log.close().await.unwrap();
    });
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.log_end_offset(), 2);
        assert_eq!(log.segment_bases(), vec![0]);
    });
}

#[test]
fn offset_for_timestamp_matches_a_brute_force_model() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        // Mostly increasing timestamps with some going backwards, as real producers send them.
        let mut records: Vec<(u64, i64)> = Vec::new();
        let mut ts = 1_000i64;
        for i in 0..400u64 {
            ts += rand::Rng::gen_range(&mut rng, -30i64..100);
            let b = batch(i, 3, 200, ts);
            let info = log.append(bytes(&b)).await.unwrap();
            for r in 0..3 {
                records.push((info.base_offset + r, ts + r as i64));
            }
        }
        let max_ts = records.iter().map(|r| r.1).max().unwrap();
        for probe in (0..max_ts + 50)
            .step_by(37)
            .chain([i64::MIN, 0, max_ts, max_ts + 1])
        {
            let expected = records.iter().find(|r| r.1 >= probe).map(|r| r.0);
            assert_eq!(
                log.offset_for_timestamp(probe).await.unwrap(),
                expected,
                "probe {probe}"
            );
        }
        log.close().await.unwrap();
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        for probe in (0..max_ts).step_by(101) {
            let expected = records.iter().find(|r| r.1 >= probe).map(|r| r.0);
            assert_eq!(
                log.offset_for_timestamp(probe).await.unwrap(),
                expected,
                "probe {probe}"
            );
        }
    });
}

#[test]
fn concurrent_appenders_share_syncs() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush: FlushPolicy::Always,
            ..small_config()
        };
        let log = Log::open(dir.path(), config).await.unwrap();
        let tasks: Vec<_> = (0..64u64)
            .map(|t| {
                let log = Rc::clone(&log);
                glommio::spawn_local(async move {
                    let mut acked = Vec::new();
                    for i in 0..10 {
                        let b = batch(t * 1000 + i, 1, 100, 0);
                        let info = log.append(bytes(&b)).await.unwrap();
                        // Acknowledged means durable.
                        assert!(log.flushed_offset() > info.last_offset);
                        acked.push((info.base_offset, as_stored(&b, info.base_offset)));
                    }
                    acked
                })
            })
            .collect();
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await);
        }
        acked.sort();
        assert_eq!(acked.len(), 640);
        assert_eq!(read_all(&log, 0, 1 << 16).await, acked);
        assert!(
            log.sync_count() <= 640 / 4,
            "{} syncs for 640 appends: group commit did not group",
            log.sync_count()
        );
    });
}

#[test]
fn bad_batches_are_refused_and_nothing_is_stored() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        let good = batch(1, 2, 10, 0);
        let mut bad_crc = good.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 1;
        assert!(matches!(
            log.append(bytes(&bad_crc)).await,
            Err(StorageError::InvalidBatch(_))
        ));
        assert!(log.append(bytes(&good[..good.len() - 1])).await.is_err());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            log.append(bytes(&trailing)).await,
            Err(StorageError::BatchLengthMismatch { .. })
        ));
        let huge = batch(2, 1, 40 << 10, 0);
        assert!(matches!(
            log.append(bytes(&huge)).await,
            Err(StorageError::BatchTooLarge { .. })
        ));
        assert_eq!(log.log_end_offset(), 0);
        assert_eq!(log.append(bytes(&good)).await.unwrap().base_offset, 0);
    });
}

#[test]
fn foreign_files_are_refused_and_temp_files_cleaned() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("recovery-point.ckpt.tmp"), b"torn").unwrap();
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        log.close().await.unwrap();
        assert!(!dir.path().join("recovery-point.ckpt.tmp").exists());
        std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
        match Log::open(dir.path(), small_config()).await {
            Err(StorageError::ForeignFile(p)) => assert!(p.ends_with("notes.txt")),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("opened a directory with a foreign file"),
        }
    });
}

#[test]
fn retention_by_age_deletes_only_segments_whose_newest_record_expired() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let hour_ms = 3_600_000i64;
        let now_ms = 1_800_000_000_000i64;
        let config = LogConfig {
            retention_ms: Some(Duration::from_millis(hour_ms as u64)),
            retention_bytes: None,
            ..small_config()
        };
        let log = Log::open(dir.path(), config).await.unwrap();
        // Three hours of data, one batch a minute, then a few more recent ones.
        for minute in 0..180i64 {
            let ts = now_ms - 3 * hour_ms + minute * 60_000;
            log.append(bytes(&batch(minute as u64, 2, 900, ts)))
                .await
                .unwrap();
        }
        let before = log.segment_bases().len();
        assert!(before > 5);
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms as u64);
        let deleted = log.enforce_retention(now).await.unwrap();
        assert!(
            deleted > 0 && deleted < before,
            "deleted {deleted} of {before}"
        );
        // Everything still readable is at most about an hour old (whole segments go, so a little
        // older data may remain in the first kept segment), and nothing younger was deleted.
        let start = log.log_start_offset();
        let first = log.read(start, 1).await.unwrap().to_vec();
        let first_ts = mlog_wire::RecordBatch::parse(&first)
            .unwrap()
            .max_timestamp();
        assert!(
            first_ts >= now_ms - hour_ms - 30 * 60_000,
            "kept a batch from {first_ts}"
        );
        let cutoff_offset = log
            .offset_for_timestamp(now_ms - hour_ms)
            .await
            .unwrap()
            .unwrap();
        assert!(
            start <= cutoff_offset,
            "deleted records younger than the retention"
        );
        // A second pass deletes nothing more.
        assert_eq!(log.enforce_retention(now).await.unwrap(), 0);
    });
}

#[test]
fn retention_by_age_dates_segments_without_timestamps_by_their_file() {
    // Batches may carry no timestamp (-1): such a segment is as old as its last write, not older
    // than everything (which would delete it at the first roll).
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let config = LogConfig {
            retention_ms: Some(hour),
            retention_bytes: None,
            ..small_config()
        };
        let log = Log::open(dir.path(), config).await.unwrap();
        for i in 0..200u64 {
            log.append(bytes(&batch(i, 1, 1800, -1))).await.unwrap();
        }
        let before = log.segment_bases().len();
        assert!(before > 3, "{before} segments");
        assert_eq!(log.enforce_retention(SystemTime::now()).await.unwrap(), 0);
        assert_eq!(log.log_start_offset(), 0);
        // Two hours on, every sealed segment has expired; the active one stays.
        let later = SystemTime::now() + 2 * hour;
        assert_eq!(log.enforce_retention(later).await.unwrap(), before - 1);
    });
}

#[test]
fn truncate_then_always_appends_and_close_do_not_hang() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush: FlushPolicy::Always,
            ..small_config()
        };
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        append_random(&log, &mut rng, 200, 0).await;
        log.truncate_suffix(50).await.unwrap();
        let more = append_random(&log, &mut rng, 200, 0).await;
        assert!(more[0].0 <= 50);
        log.truncate_suffix(0).await.unwrap();
        append_random(&log, &mut rng, 10, 0).await;
        log.close().await.unwrap();
        let log = Log::open(dir.path(), config).await.unwrap();
        assert!(log.recovery_stats().clean_shutdown);
    });
}

#[test]
fn cancelled_appends_leave_the_log_usable() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush: FlushPolicy::Always,
            ..small_config()
        };
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        // Start appends that wait for their sync round, then drop them half-way.
        for i in 0..20u64 {
            let l = Rc::clone(&log);
            let task =
                glommio::spawn_local(async move { l.append(bytes(&batch(i, 1, 100, 0))).await });
            futures_lite::future::yield_now().await;
            drop(task);
        }
        let info = log.append(bytes(&batch(99, 1, 100, 0))).await.unwrap();
        assert!(log.flushed_offset() > info.last_offset);
        log.close().await.unwrap();
        let log = Log::open(dir.path(), config).await.unwrap();
        assert_eq!(log.log_end_offset(), info.last_offset + 1);
    });
}

/// The active segment's index entries stay in memory (stores into a file mapping can stall the
/// executor); a segment's finish, or the close, writes them. Every entry then points at the start of
/// the batch it names.
#[test]
fn index_files_are_written_when_segments_are_finished() {
    let dir = tempfile::tempdir().unwrap();
    let files = |suffix: &str| files_with_suffix(dir.path(), suffix);
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        // 4 KiB batches, 16 per segment: three full segments and four batches in the active one.
        append_fixed(&log, 52).await;
        assert_eq!(log.segment_bases().len(), 4);
        let active = *log.segment_bases().last().unwrap();
        let active_index = dir.path().join(format!("{active:020}.index"));
        assert_eq!(std::fs::metadata(&active_index).unwrap().len(), 0);
        log.close().await.unwrap();
    });
    let (indexes, time_indexes) = (files("index"), files("timeindex"));
    assert_eq!(indexes.len(), 4);
    assert_eq!(time_indexes.len(), 4);
    for path in time_indexes {
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(
            len > 0 && len % 12 == 0,
            "{} is {len} bytes",
            path.display()
        );
    }
    for path in indexes {
        let base: u64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let data = std::fs::read(path.with_extension("log")).unwrap();
        let mut starts = std::collections::HashMap::new();
        let mut position = 0;
        for (offset, bytes) in split_batches(&data) {
            starts.insert(position as u32, offset);
            position += bytes.len();
        }
        let entries = std::fs::read(&path).unwrap();
        assert!(
            !entries.is_empty() && entries.len() % 8 == 0,
            "{} is {} bytes",
            path.display(),
            entries.len()
        );
        for e in entries.chunks(8) {
            let relative = u32::from_be_bytes(e[..4].try_into().unwrap()) as u64;
            let at = u32::from_be_bytes(e[4..].try_into().unwrap());
            assert_eq!(
                starts.get(&at),
                Some(&(base + relative)),
                "{}",
                path.display()
            );
        }
    }
}

#[test]
fn close_right_after_a_roll_finishes_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let written = run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut w = Vec::new();
        // Append until a roll happens, then close at once.
        while log.segment_bases().len() < 3 {
            w.extend(append_random(&log, &mut rng, 1, 0).await);
        }
        log.close().await.unwrap();
        w
    });
    // Every sealed segment's file is trimmed to its data.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let len = std::fs::metadata(&path).unwrap().len();
            assert!(
                len <= small_config().segment_bytes,
                "{} is {len} bytes",
                path.display()
            );
        }
    }
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.recovery_stats().segments_scanned, 0);
        assert_eq!(read_all(&log, 0, 1 << 16).await, written);
    });
}

#[test]
fn interval_policy_flushes_in_the_background() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush: FlushPolicy::Interval(Duration::from_millis(20)),
            ..small_config()
        };
        let log = Log::open(dir.path(), config).await.unwrap();
        let info = log.append(bytes(&batch(1, 3, 100, 0))).await.unwrap();
        // Buffered, not yet durable: only the timer can make it so.
        assert_eq!(log.flushed_offset(), 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log.flushed_offset() <= info.last_offset {
            assert!(
                std::time::Instant::now() < deadline,
                "the interval flusher never ran"
            );
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(log.sync_count(), 1);
    });
}

#[test]
fn a_dropped_flush_does_not_hang_later_flushes_or_close() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        log.append(bytes(&batch(1, 1, 10, 0))).await.unwrap();
        // Start a flush and drop it half-way (it yields before syncing).
        assert!(futures_lite::future::poll_once(log.flush()).await.is_none());
        log.flush().await.unwrap();
        log.close().await.unwrap();
    });
}

#[test]
fn truncating_inside_the_batch_that_holds_the_log_start_restarts_the_log() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        log.append(bytes(&batch(1, 10, 10, 0))).await.unwrap(); // offsets 0..9
        log.append(bytes(&batch(2, 10, 10, 0))).await.unwrap(); // offsets 10..19
        log.delete_before(15).await.unwrap();
        log.truncate_suffix(17).await.unwrap();
        assert!(log.log_end_offset() >= log.log_start_offset());
        assert_eq!(log.log_end_offset(), 17);
        let info = log.append(bytes(&batch(3, 2, 10, 0))).await.unwrap();
        assert_eq!(info.base_offset, 17);
    });
}

#[test]
fn an_empty_segment_left_by_a_failed_roll_is_ignored_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let written = run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let w = append_random(&log, &mut rng, 300, 0).await;
        log.close().await.unwrap();
        w
    });
    // An empty segment file whose base lies inside an existing segment.
    let bases: Vec<u64> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log").map(|b| b.parse().unwrap())
        })
        .collect();
    let inside = bases.iter().min().unwrap() + 1;
    std::fs::write(dir.path().join(format!("{inside:020}.log")), b"").unwrap();
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(read_all(&log, 0, 1 << 16).await, written);
    });
}

#[test]
fn segments_roll_by_age_in_record_time_across_a_reopen() {
    // As in Kafka, a segment's age is the new batch's timestamp minus its first batch's: a restart
    // must not restart the clock, or a broker restarted more often than segment_ms never rolls.
    let dir = tempfile::tempdir().unwrap();
    let hour_ms = 3_600_000i64;
    let config = || LogConfig {
        segment_bytes: 1 << 20,
        segment_ms: Some(Duration::from_millis(hour_ms as u64)),
        ..small_config()
    };
    let t0 = 1_700_000_000_000i64;
    run(|| async {
        let log = Log::open(dir.path(), config()).await.unwrap();
        // One record each: a batch's max timestamp is its last record's.
        log.append(bytes(&batch(1, 1, 10, t0))).await.unwrap();
        log.append(bytes(&batch(2, 1, 10, t0 + 10 * 60_000)))
            .await
            .unwrap();
        assert_eq!(log.segment_bases().len(), 1);
        log.close().await.unwrap();
    });
    run(|| async {
        // Reopened from disk: the first batch's timestamp is read back from the file.
        let log = Log::open(dir.path(), config()).await.unwrap();
        log.append(bytes(&batch(3, 1, 10, t0 + hour_ms - 1)))
            .await
            .unwrap();
        assert_eq!(log.segment_bases().len(), 1, "59:59.999 is not an hour");
        let info = log
            .append(bytes(&batch(4, 1, 10, t0 + hour_ms)))
            .await
            .unwrap();
        assert_eq!(
            log.segment_bases(),
            vec![0, info.base_offset],
            "an hour of record time rolls"
        );
        // The new segment's clock starts at its own first batch.
        log.append(bytes(&batch(5, 1, 10, t0 + 2 * hour_ms - 1)))
            .await
            .unwrap();
        assert_eq!(log.segment_bases().len(), 2);
        log.close().await.unwrap();
    });
}

#[test]
fn producers_cannot_roll_segments_with_their_timestamps() {
    // Each batch a segment_ms of record time after the last. Only the segment opened from disk may
    // roll at once; the ones this process creates need a minute of wall time too.
    let dir = tempfile::tempdir().unwrap();
    let hour_ms = 3_600_000i64;
    let config = LogConfig {
        segment_bytes: 1 << 20,
        segment_ms: Some(Duration::from_millis(hour_ms as u64)),
        ..small_config()
    };
    let t0 = 1_700_000_000_000i64;
    run(|| async {
        let log = Log::open(dir.path(), config).await.unwrap();
        for i in 0..40 {
            let ts = t0 + i * hour_ms;
            log.append(bytes(&batch(i as u64, 1, 10, ts)))
                .await
                .unwrap();
        }
        assert_eq!(log.segment_bases().len(), 2, "one roll by age, not 39");
        log.close().await.unwrap();
    });
}

#[test]
fn segments_without_timestamps_roll_by_time_since_open() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let config = LogConfig {
            segment_bytes: 1 << 20,
            // Long enough that opening the log (its syncs) and two appends fit on a slow disk.
            segment_ms: Some(Duration::from_millis(1000)),
            ..small_config()
        };
        let log = Log::open(dir.path(), config).await.unwrap();
        log.append(bytes(&batch(1, 1, 10, -1))).await.unwrap();
        log.append(bytes(&batch(2, 1, 10, -1))).await.unwrap();
        assert_eq!(log.segment_bases().len(), 1);
        glommio::timer::sleep(Duration::from_millis(1100)).await;
        log.append(bytes(&batch(3, 1, 10, -1))).await.unwrap();
        assert_eq!(log.segment_bases().len(), 2);
        log.close().await.unwrap();
    });
}

/// A batch of `records` records from idempotent producer `id`, starting at sequence `seq`.
fn idempotent_batch(id: i64, seq: i32, records: usize) -> Vec<u8> {
    let mut b = mlog_wire::batch::RecordBatchBuilder::new().with_producer(id, 0, seq);
    for i in 0..records {
        let value = format!("producer {id} sequence {}", seq as usize + i);
        b.push(mlog_wire::batch::NewRecord::new(
            0,
            None,
            Some(value.as_bytes()),
        ))
        .unwrap();
    }
    b.build().unwrap()
}

#[test]
fn a_resent_idempotent_batch_is_stored_once_across_clean_and_unclean_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let config = || LogConfig {
        segment_bytes: 4 << 10,
        max_batch_bytes: 4 << 10,
        ..small_config()
    };
    // Producer 1 appends 60 batches of 3 records over many segments; producer 2 interleaves.
    let first = run(|| async {
        let log = Log::open(dir.path(), config()).await.unwrap();
        let mut first = Vec::new();
        for i in 0..60 {
            let info = log
                .append(bytes(&idempotent_batch(1, i * 3, 3)))
                .await
                .unwrap();
            first.push(info.base_offset);
            log.append(bytes(&idempotent_batch(2, i, 1))).await.unwrap();
        }
        // A resend of the newest batch: its first offsets, and nothing stored.
        let end = log.log_end_offset();
        let again = log
            .append(bytes(&idempotent_batch(1, 59 * 3, 3)))
            .await
            .unwrap();
        assert_eq!(again.base_offset, first[59]);
        assert_eq!(log.log_end_offset(), end);
        // A stale resend (older than the batches remembered) is refused, not stored.
        let stale = log.append(bytes(&idempotent_batch(1, 3, 3))).await;
        assert!(
            matches!(stale, Err(StorageError::OutOfOrderSequence { .. })),
            "{stale:?}"
        );
        log.close().await.unwrap();
        first
    });
    // After a clean close the snapshot alone answers; the producers then go on, and the log stops
    // uncleanly (no close) after a flush.
    run(|| async {
        let log = Log::open(dir.path(), config()).await.unwrap();
        assert!(log.recovery_stats().clean_shutdown);
        let end = log.log_end_offset();
        let again = log
            .append(bytes(&idempotent_batch(1, 59 * 3, 3)))
            .await
            .unwrap();
        assert_eq!((again.base_offset, log.log_end_offset()), (first[59], end));
        for i in 60..70 {
            log.append(bytes(&idempotent_batch(1, i * 3, 3)))
                .await
                .unwrap();
        }
        log.flush().await.unwrap();
    });
    // After the unclean stop the state is rebuilt from the newest snapshot and the batches after it.
    run(|| async {
        let log = Log::open(dir.path(), config()).await.unwrap();
        assert!(!log.recovery_stats().clean_shutdown);
        let end = log.log_end_offset();
        let again = log
            .append(bytes(&idempotent_batch(1, 69 * 3, 3)))
            .await
            .unwrap();
        assert_eq!(again.last_offset + 1, end);
        assert_eq!(log.log_end_offset(), end);
        let again = log
            .append(bytes(&idempotent_batch(2, 59, 1)))
            .await
            .unwrap();
        assert!(again.base_offset < end);
        assert_eq!(log.log_end_offset(), end);
        // Truncation forgets the batches it removes: sent again, they are stored again.
        log.truncate_suffix(again.base_offset).await.unwrap();
        let stored = log
            .append(bytes(&idempotent_batch(2, 59, 1)))
            .await
            .unwrap();
        assert_eq!(stored.base_offset, again.base_offset);
        log.close().await.unwrap();
    });
    // A damaged snapshot costs a rebuild from the whole log, never the partition: the newest
    // batches of both producers (the truncation above left producer 1's of the first run, in an
    // early segment) are still known.
    std::fs::write(dir.path().join("producer-snapshot.ckpt"), b"damaged").unwrap();
    run(|| async {
        let log = Log::open(dir.path(), config()).await.unwrap();
        let end = log.log_end_offset();
        let again = log
            .append(bytes(&idempotent_batch(1, 59 * 3, 3)))
            .await
            .unwrap();
        assert_eq!(again.base_offset, first[59]);
        let again = log
            .append(bytes(&idempotent_batch(2, 59, 1)))
            .await
            .unwrap();
        assert_eq!(again.last_offset + 1, end);
        assert_eq!(log.log_end_offset(), end);
        log.close().await.unwrap();
    });
}
