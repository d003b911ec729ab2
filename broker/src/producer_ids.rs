//! Ids for idempotent producers (InitProducerId): never given twice by this broker, across
//! restarts too, since a partition remembers a producer's batches across restarts.
//!
//! An id is `boot << 31 | n`: `boot` counts the broker's starts (stored durably in the data
//! directory before any id of that start is given out), `n` counts ids given since the start.
//! Invariant: ids are positive and unique while fewer than 2^31 ids are asked for per start and
//! fewer than 2^32 starts happen. With a cluster, ids will come in blocks from the metadata
//! raft instead, so that brokers never collide.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// File in the data directory holding the number of starts.
const FILE: &str = "producer-ids.meta";
/// Checkpoint kind of that file.
const KIND: u8 = 0x50;
const PER_BOOT: u32 = 1 << 31;

/// The id source shared by every shard of the broker.
#[derive(Debug)]
pub(crate) struct ProducerIds {
    boot: u32,
    next: AtomicU32,
}

impl ProducerIds {
    /// Counts this start (durably) and returns the source for its ids.
    pub(crate) fn start(data_dir: &Path) -> Result<ProducerIds, String> {
        let boots = match mlog_storage::checkpoint::read_named(data_dir, FILE, KIND)
            .map_err(|e| e.to_string())?
        {
            Some(payload) => {
                let bytes: [u8; 4] = payload
                    .as_slice()
                    .try_into()
                    .map_err(|_| format!("{FILE}: expected 4 bytes, found {}", payload.len()))?;
                u32::from_be_bytes(bytes)
            }
            None => 0,
        };
        let boot = boots
            .checked_add(1)
            .ok_or_else(|| format!("{FILE}: no producer ids left"))?;
        mlog_storage::checkpoint::write_named(data_dir, FILE, KIND, &boot.to_be_bytes())
            .map_err(|e| e.to_string())?;
        Ok(ProducerIds {
            boot,
            next: AtomicU32::new(0),
        })
    }

    /// A new id, or `None` once this start gave out all of its ids.
    pub(crate) fn next(&self) -> Option<i64> {
        let n = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < PER_BOOT).then_some(n + 1)
            })
            .ok()?;
        Some(i64::from(self.boot) << 31 | i64::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let first = ProducerIds::start(dir.path()).unwrap();
        let a = first.next().unwrap();
        let b = first.next().unwrap();
        let second = ProducerIds::start(dir.path()).unwrap();
        let c = second.next().unwrap();
        assert!(a > 0 && a < b && b < c, "{a} {b} {c}");
        first.next.store(PER_BOOT, Ordering::Relaxed);
        assert_eq!(first.next(), None);
    }
}
