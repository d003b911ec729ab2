//! Crash tests: damaged files after simulated crashes, and a real writer process killed with SIGKILL.
//!
//! Model: a log whose files were cut or had bits flipped must reopen to exactly the longest valid
//! prefix of batches, every batch that was flushed before the damage point must read back byte for
//! byte, offsets must stay contiguous, and appends must continue right after the prefix.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use mlog_storage::{FlushPolicy, Log, LogConfig};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

async fn read_all(log: &Log) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let r = log.read(offset, 1 << 20).await.expect("read");
        assert!(!r.is_empty());
        out.extend(split_batches(&r.to_vec()));
        offset = r.next_offset;
    }
    out
}

fn segment_log_file(dir: &Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().expect("a segment")
}

#[derive(Debug, Clone)]
enum Damage {
    /// Cut the file at this fraction of the bytes past the flushed point.
    Truncate(f64),
    /// Flip this bit at this fraction of the bytes past the flushed point.
    FlipBit(f64, u8),
}

/// Writes `n` batches (flushing after `flushed` of them), "crashes" (drops the log without closing),
/// damages the active segment past the flushed point, reopens and checks the model.
fn crash_and_recover(seed: u64, n: usize, flushed: usize, damage: Damage, multi_segment: bool) {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: if multi_segment { 48 << 10 } else { 64 << 20 },
        ..small_config()
    };
    let (written, flushed_end) = run(|| async {
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut written = Vec::new();
        for i in 0..n {
            if i == flushed {
                log.flush().await.unwrap();
            }
            let b = random_batch(&mut rng, i as i64);
            let info = log.append(bytes(&b)).await.unwrap();
            written.push((info.base_offset, as_stored(&b, info.base_offset)));
        }
        let flushed_end = if flushed >= n {
            log.flush().await.unwrap()
        } else {
            log.flushed_offset()
        };
        // Let the unflushed writes land too, so the damage hits real bytes; then crash (no close).
        log.flush().await.unwrap();
        (written, flushed_end)
    });
    // Positions of the batches in the active (last) segment.
    let active = segment_log_file(dir.path());
    let active_base: u64 = active
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut pos = 0u64;
    let mut in_active = Vec::new(); // (index in `written`, position)
    for (i, (base, b)) in written.iter().enumerate() {
        if *base >= active_base {
            in_active.push((i, pos));
            pos += b.len() as u64;
        }
    }
    let data_end = pos;
    let flushed_pos = in_active
        .iter()
        .find(|(i, _)| written[*i].0 >= flushed_end)
        .map_or(data_end, |(_, p)| *p);
    let span = data_end - flushed_pos;
    let mut expected = written.clone();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&active)
        .unwrap();
    match damage {
        Damage::Truncate(f) => {
            let cut = flushed_pos + (span as f64 * f) as u64;
            file.set_len(cut).unwrap();
            expected.retain(|(base, b)| {
                *base < active_base || {
                    let (_, p) = in_active
                        .iter()
                        .find(|(i, _)| written[*i].0 == *base)
                        .unwrap();
                    p + b.len() as u64 <= cut
                }
            });
        }
        Damage::FlipBit(f, bit) => {
            if span == 0 {
                return;
            }
            let at = flushed_pos + ((span as f64 * f) as u64).min(span - 1);
            let mut byte = [0u8; 1];
            file.read_exact_at(&mut byte, at).unwrap();
            byte[0] ^= 1 << (bit % 8);
            file.write_all_at(&byte, at).unwrap();
            let (hit, hit_pos) = *in_active.iter().rev().find(|(_, p)| *p <= at).unwrap();
            let within = at - hit_pos;
            if (12..16).contains(&within) {
                // The partition leader epoch is outside the CRC by design: the batch stays valid.
                expected[hit].1[within as usize] ^= 1 << (bit % 8);
            } else {
                expected.truncate(hit);
            }
        }
    }
    drop(file);
    run(|| async {
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        let recovered = read_all(&log).await;
        assert_eq!(recovered.len(), expected.len(), "recovered batch count");
        assert_eq!(
            recovered, expected,
            "recovered exactly the longest valid prefix"
        );
        // Every flushed batch survived.
        assert!(log.log_end_offset() >= flushed_end);
        // Appends continue right after the prefix, and survive another crash.
        let next = log.log_end_offset();
        let b = batch(seed ^ 0xabc, 2, 50, 0);
        assert_eq!(log.append(bytes(&b)).await.unwrap().base_offset, next);
        log.flush().await.unwrap();
        expected.push((next, as_stored(&b, next)));
    });
    run(|| async {
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        assert_eq!(read_all(&log).await, expected);
    });
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0.0..=1.0f64).prop_map(Damage::Truncate),
        (0.0..1.0f64, any::<u8>()).prop_map(|(f, b)| Damage::FlipBit(f, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn recovers_longest_valid_prefix_one_segment(seed in any::<u64>(), n in 1usize..120, flushed_frac in 0.0..=1.0f64, damage in damage()) {
        let flushed = (n as f64 * flushed_frac) as usize;
        crash_and_recover(seed, n, flushed, damage, false);
    }

    #[test]
    fn recovers_longest_valid_prefix_many_segments(seed in any::<u64>(), n in 50usize..300, flushed_frac in 0.0..=1.0f64, damage in damage()) {
        let flushed = (n as f64 * flushed_frac) as usize;
        crash_and_recover(seed, n, flushed, damage, true);
    }
}

#[test]
fn truncation_anywhere_recovers_the_prefix_before_the_cut() {
    // Cuts before the flushed point too (a lying disk): the log still opens to the valid prefix.
    for seed in 0..12 {
        crash_and_recover(seed, 60, 0, Damage::Truncate(seed as f64 / 11.0), false);
    }
}

#[test]
fn missing_or_corrupt_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let written = run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(77);
        let mut w = Vec::new();
        for i in 0..400 {
            let b = random_batch(&mut rng, i);
            let info = log.append(bytes(&b)).await.unwrap();
            w.push((info.base_offset, as_stored(&b, info.base_offset)));
        }
        log.close().await.unwrap();
        w
    });
    let mut indexes: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .collect();
    indexes.sort();
    assert!(indexes.len() >= 3);
    std::fs::remove_file(&indexes[0]).unwrap();
    std::fs::write(&indexes[1], vec![0xffu8; 64]).unwrap();
    run(|| async {
        let log = Log::open(dir.path(), small_config()).await.unwrap();
        assert!(log.recovery_stats().segments_scanned >= 2);
        assert_eq!(read_all(&log).await, written);
        // Reads that start mid-segment (they use the rebuilt index) are right too.
        for (base, b) in written.iter().step_by(7) {
            assert_eq!(log.read(*base, 1).await.unwrap().to_vec(), *b);
        }
    });
}

#[test]
fn batches_larger_than_the_scan_window_are_validated_and_cut_when_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 64 << 20,
        max_batch_bytes: 4 << 20,
        write_buffer_bytes: 1 << 20,
        ..small_config()
    };
    let big = batch(1, 3, 1 << 20, 0); // ~3 MiB: three scan windows
    let small = batch(2, 1, 10, 0);
    run(|| async {
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        for b in [&small, &big, &small, &big] {
            log.append(bytes(b)).await.unwrap();
        }
        log.flush().await.unwrap();
    });
    run(|| async {
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        assert_eq!(log.recovery_stats().batches_scanned, 4);
        assert_eq!(log.log_end_offset(), 8);
        assert_eq!(log.read(1, 1).await.unwrap().to_vec(), as_stored(&big, 1));
        log.flush().await.unwrap();
    });
    // Flip a bit deep inside the second big batch: recovery keeps the first three batches.
    let path = segment_log_file(dir.path());
    let second_big_at = (small.len() + big.len() + small.len()) as u64;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, second_big_at + 2_000_000)
        .unwrap();
    file.write_all_at(&[b[0] ^ 0x10], second_big_at + 2_000_000)
        .unwrap();
    drop(file);
    run(|| async {
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        assert_eq!(log.log_end_offset(), 5);
        assert_eq!(log.read(4, 1).await.unwrap().to_vec(), as_stored(&small, 4));
    });
}

// ---- kill -9 of a real writer process ----

/// What a crash can leave past the data of a segment a roll sealed but had not trimmed yet.
enum SealedTail {
    /// Preallocated space.
    Zeros,
    /// A recycled file's stale batches (valid CRCs, offsets of an older segment).
    StaleBatch,
    /// The same, after the segment's last batch lost its final byte: a batch really is missing.
    ZerosAfterATornLastBatch,
}

/// A roll makes the new segment take appends before the sealed one is trimmed (off the
/// acknowledgement path), so a crash can leave a sealed segment with a tail past its batches. Every
/// batch after it must survive when none of its own is missing, and the ones after a hole must not.
fn sealed_segment_tail_recovery(tail: SealedTail) {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 32 << 10,
        ..small_config()
    };
    let written = run(|| async {
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut written = Vec::new();
        while log.segment_bases().len() < 4 {
            let b = random_batch(&mut rng, 0);
            let info = log.append(bytes(&b)).await.unwrap();
            written.push((info.base_offset, as_stored(&b, info.base_offset)));
        }
        log.close().await.unwrap();
        written
    });
    let bases = run(|| async {
        Log::open(dir.path(), config.clone())
            .await
            .unwrap()
            .segment_bases()
    });
    // An unclean stop from before the second segment was finished: everything is scanned.
    for ckpt in ["clean-shutdown.ckpt", "recovery-point.ckpt"] {
        let _ = std::fs::remove_file(dir.path().join(ckpt));
    }
    let sealed = dir.path().join(format!("{:020}.log", bases[1]));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&sealed)
        .unwrap();
    let len = file.metadata().unwrap().len();
    let mut expected = written.clone();
    match tail {
        SealedTail::Zeros => file.set_len(len + 12_288).unwrap(),
        SealedTail::StaleBatch => file.write_all_at(&written[0].1, len).unwrap(),
        SealedTail::ZerosAfterATornLastBatch => {
            expected.retain(|(base, _)| *base < bases[2]);
            // Half its bytes gone (a record's last byte is often zero: one byte would not do).
            let last = expected.pop().unwrap().1.len() as u64;
            file.set_len(len - last / 2).unwrap();
            file.set_len(len + 12_288).unwrap();
        }
    }
    drop(file);
    run(|| async {
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        let stats = log.recovery_stats().clone();
        assert!(read_all(&log).await == expected, "recovered batches differ");
        let kept = match tail {
            SealedTail::ZerosAfterATornLastBatch => 2,
            _ => bases.len(),
        };
        assert_eq!(log.segment_bases(), &bases[..kept]);
        assert_eq!(stats.segments_scanned, kept, "{stats:?}");
        assert_eq!(stats.segments_removed, bases.len() - kept, "{stats:?}");
        // The tail is gone from the file, and the log goes on where it ends.
        let next = log.log_end_offset();
        let b = batch(11, 2, 50, 0);
        assert_eq!(log.append(bytes(&b)).await.unwrap().base_offset, next);
        log.close().await.unwrap();
        expected.push((next, as_stored(&b, next)));
    });
    let kept = std::fs::metadata(&sealed).map_or(0, |m| m.len());
    let sealed_data: usize = expected
        .iter()
        .filter(|(base, _)| (bases[1]..bases[2]).contains(base))
        .map(|(_, b)| b.len())
        .sum();
    assert_eq!(
        kept, sealed_data as u64,
        "the sealed file is trimmed to its batches"
    );
    run(|| async {
        let log = Log::open(dir.path(), config.clone()).await.unwrap();
        assert_eq!(read_all(&log).await, expected);
    });
}

#[test]
fn a_sealed_segment_with_a_zero_tail_keeps_the_segments_after_it() {
    sealed_segment_tail_recovery(SealedTail::Zeros);
}

#[test]
fn a_sealed_segment_with_stale_batches_past_its_end_keeps_the_segments_after_it() {
    sealed_segment_tail_recovery(SealedTail::StaleBatch);
}

#[test]
fn a_sealed_segment_missing_its_last_batch_drops_the_segments_after_it() {
    sealed_segment_tail_recovery(SealedTail::ZerosAfterATornLastBatch);
}

const CHILD_ENV: &str = "MLOG_CRASH_CHILD_DIR";
/// Set for the recycling variant: the child's log keeps only ~128 KiB, so its rolls reuse the files
/// of the segments retention deletes.
const RETAIN_ENV: &str = "MLOG_CRASH_RETAIN";

/// The log configuration of the kill test's child (and of its checks).
fn kill_test_config(retain: bool) -> LogConfig {
    LogConfig {
        flush: FlushPolicy::Always,
        retention_bytes: retain.then_some(128 << 10),
        ..small_config()
    }
}

fn child_batch(task: u64, seq: u64) -> Vec<u8> {
    batch(
        task << 32 | seq,
        1 + (seq % 5) as usize,
        64 + (seq * 37 % 900) as usize,
        seq as i64,
    )
}

/// The child: appends with flush=always from several tasks and prints `offset task seq` for every
/// acknowledged (durable) batch. Does nothing unless started by `kill_9_never_loses_acknowledged_batches`.
#[test]
#[ignore = "run as a child process by kill_9_never_loses_acknowledged_batches"]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var("MLOG_CRASH_ROUND").unwrap().parse().unwrap();
    let retain = std::env::var(RETAIN_ENV).is_ok();
    run(|| async move {
        let log = Log::open(&dir, kill_test_config(retain)).await.unwrap();
        let tasks: Vec<_> = (0..4u64)
            .map(|t| {
                let log = Rc::clone(&log);
                let task = round * 4 + t;
                glommio::spawn_local(async move {
                    for seq in 0.. {
                        let info = log.append(bytes(&child_batch(task, seq))).await.unwrap();
                        println!("{} {task} {seq}", info.base_offset);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
    });
}

#[test]
fn kill_9_never_loses_acknowledged_batches() {
    kill_9_rounds(false);
}

/// The same with retention at work, so appends land in recycled segment files, over the stale
/// batches of older segments.
#[test]
fn kill_9_never_loses_acknowledged_batches_in_recycled_segments() {
    kill_9_rounds(true);
}

fn kill_9_rounds(retain: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut log_start = 0;
    let mut acked: Vec<(u64, u64, u64)> = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for round in 0..6u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env("MLOG_CRASH_ROUND", round.to_string())
            .env(
                if retain {
                    RETAIN_ENV
                } else {
                    "MLOG_CRASH_NO_RETAIN"
                },
                "1",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            let mut got = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let f: Vec<u64> = line.split(' ').filter_map(|x| x.parse().ok()).collect();
                if f.len() == 3 {
                    got.push((f[0], f[1], f[2]));
                }
            }
            got
        });
        // Let it write for a random while, then SIGKILL it mid-stream.
        let deadline = Instant::now() + Duration::from_millis(rng.gen_range(150..700));
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let got = lines.join().unwrap();
        assert!(
            !got.is_empty() || round > 0,
            "the child acknowledged nothing"
        );
        acked.extend(got);
        // Every acknowledged batch is present and intact, and offsets are contiguous.
        let acked_now = acked.clone();
        let path = dir.path().to_path_buf();
        let start = run(|| async move {
            let log = Log::open(&path, kill_test_config(retain)).await.unwrap();
            let all = read_all(&log).await;
            for w in all.windows(2) {
                let first = mlog_wire::RecordBatch::parse(&w[0].1).unwrap();
                assert_eq!(first.next_offset() as u64, w[1].0, "offsets contiguous");
            }
            let start = log.log_start_offset();
            if retain {
                let spares = std::fs::read_dir(&path)
                    .unwrap()
                    .filter(|e| {
                        e.as_ref()
                            .unwrap()
                            .path()
                            .extension()
                            .is_some_and(|x| x == "spare")
                    })
                    .count();
                assert!(spares <= 1, "one spare at most, not {spares}");
            }
            // Retention may have deleted the oldest acknowledged batches, and only those.
            for (offset, task, seq) in acked_now.iter().filter(|(o, _, _)| *o >= start) {
                let r = log.read(*offset, 1).await.unwrap();
                assert_eq!(
                    r.to_vec(),
                    as_stored(&child_batch(*task, *seq), *offset),
                    "acked batch at {offset}"
                );
            }
            start
        });
        assert!(start >= log_start, "the log start never moves back");
        if retain {
            // Retention deletes whole segments only while the log exceeds its limit.
            let kept = acked
                .iter()
                .filter(|(o, _, _)| *o >= start)
                .map(|(_, t, s)| child_batch(*t, *s).len() as u64)
                .sum::<u64>();
            let limit = 128 << 10;
            assert!(
                start == 0 || kept + (64 << 10) >= limit,
                "retention kept only {kept} acknowledged bytes"
            );
        }
        log_start = start;
    }
    assert!(!retain || log_start > 0, "retention never ran");
    assert!(
        acked.len() > 20,
        "only {} batches acknowledged in all rounds",
        acked.len()
    );
}
