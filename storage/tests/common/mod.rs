//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::future::Future;

use bytes::BytesMut;
use glommio::{LocalExecutorBuilder, Placement};
use mlog_storage::{FlushPolicy, LogConfig};
use mlog_wire::batch::{NewRecord, RecordBatchBuilder};
use rand::{Rng, RngCore, SeedableRng};

/// Runs `f` on a fresh glommio executor in this thread (small I/O memory: tests run side by side).
pub fn run<T, F: Future<Output = T>>(f: impl FnOnce() -> F) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("glommio executor")
        .run(f())
}

/// A batch of `records` records whose contents derive from `seed`, with `value_bytes` per value and
/// timestamps starting at `timestamp`.
pub fn batch(seed: u64, records: usize, value_bytes: usize, timestamp: i64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut b = RecordBatchBuilder::new();
    let mut values = Vec::with_capacity(records);
    for _ in 0..records {
        let mut v = vec![0u8; value_bytes];
        rng.fill_bytes(&mut v);
        values.push(v);
    }
    for (i, v) in values.iter().enumerate() {
        let key = format!("key-{seed}-{i}");
        b.push(NewRecord::new(
            timestamp + i as i64,
            Some(key.as_bytes()),
            Some(v),
        ))
        .expect("push");
    }
    b.build().expect("build")
}

/// A batch with random size from a seeded generator.
pub fn random_batch(rng: &mut impl Rng, timestamp: i64) -> Vec<u8> {
    let records = rng.gen_range(1..8);
    let value_bytes = rng.gen_range(0..600);
    batch(rng.gen(), records, value_bytes, timestamp)
}

/// The bytes a batch has once appended at `base_offset` (only the base offset field changes).
pub fn as_stored(batch: &[u8], base_offset: u64) -> Vec<u8> {
    let mut b = batch.to_vec();
    mlog_wire::batch::set_base_offset(&mut b, base_offset as i64);
    b
}

pub fn bytes(b: &[u8]) -> BytesMut {
    BytesMut::from(b)
}

/// A config with small segments, indexes and buffers so tests cross every boundary.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        index_interval_bytes: 1024,
        write_buffer_bytes: 16 << 10,
        max_writes_in_flight: 4,
        batch_cache_bytes: 32 << 10,
        preallocate_bytes: 32 << 10,
        max_batch_bytes: 32 << 10,
        flush: FlushPolicy::Never,
        // Test records carry 1970 timestamps: age retention (a roll applies it) would delete them.
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// Splits concatenated batches into (base offset, bytes) pairs.
pub fn split_batches(mut data: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let b = mlog_wire::RecordBatch::parse(data).expect("stored batches parse");
        out.push((b.base_offset() as u64, b.as_bytes().to_vec()));
        data = &data[b.as_bytes().len()..];
    }
    out
}
