//! Consumer group offsets, stored in the internal topic `__consumer_offsets`.
//!
//! A group's commits go to partition `hash(group) % OFFSETS_PARTITIONS` of the internal topic, so
//! one shard (that partition's owner) serves the group. A commit is appended as one record batch
//! (one record per partition: key `(group, topic, partition)`, value `(offset, metadata)`) and
//! fdatasynced before it is applied to the in-memory table and acknowledged; at start the table is
//! rebuilt by replaying the partition, the last record for a key winning. A record with a key and
//! no value (a tombstone) removes the key: when a topic is deleted, every shard that owns internal
//! partitions writes tombstones for that topic's offsets (at every table it applies, also at start,
//! so a crash in between only delays them), so that a topic created again under the same name
//! starts with no committed offsets, as in Kafka.
//!
//! Not yet done: compaction. The internal topic keeps every commit (retention is off for it), so it
//! grows with the number of commits.

use std::collections::HashMap;

use bytes::BytesMut;
use mlog_storage::Log;
use mlog_wire::protocol::messages::ConfigEntry;
use mlog_wire::protocol::{ErrorCode, Reader, Wire};
use mlog_wire::{NewRecord, RecordBatch, RecordBatchBuilder};

/// The internal topic's name.
pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Its partition count (fixed: changing it would move groups).
pub(crate) const OFFSETS_PARTITIONS: u32 = 16;

/// The internal topic's configuration: keep everything, sync every commit.
pub(crate) fn offsets_topic_configs() -> Vec<ConfigEntry> {
    vec![ConfigEntry {
        key: "retention.ms".into(),
        value: "-1".into(),
    }]
}

/// The internal partition that holds `group`'s offsets.
pub(crate) fn partition_for(group: &str) -> u32 {
    crate::topics::owner(group, 0, OFFSETS_PARTITIONS as usize) as u32
}

mlog_wire::wire_struct! {
    /// Key of an offset record.
    pub struct OffsetKey {
        /// The group.
        pub group: String,
        /// The topic.
        pub topic: String,
        /// The partition.
        pub partition: u32,
    }
}

mlog_wire::wire_struct! {
    /// Value of an offset record.
    pub struct OffsetValue {
        /// The next offset the group will consume.
        pub offset: i64,
        /// Free-form metadata.
        pub metadata: String,
    }
}

/// One commit entry: `(topic, partition, offset, metadata)`.
pub(crate) type Commit = (String, u32, i64, String);

/// One stored offset's key: `(group, topic, partition)`.
pub(crate) type OffsetEntry = (String, String, u32);

/// Tombstones per batch: keys are at most ~500 bytes (names of 249 bytes), so a batch stays far
/// below the internal topic's 1 MiB batch limit.
const TOMBSTONES_PER_BATCH: usize = 1000;

/// One group's stored positions: `(topic, partition) -> (offset, metadata)`.
type Positions = HashMap<(String, u32), (i64, String)>;

/// The committed offsets of the groups one internal partition holds.
#[derive(Default)]
pub(crate) struct GroupOffsets {
    offsets: HashMap<String, Positions>,
}

impl GroupOffsets {
    /// Rebuilds the table from the partition's log.
    pub(crate) async fn replay(log: &Log) -> Result<GroupOffsets, String> {
        let mut table = GroupOffsets::default();
        let mut offset = log.log_start_offset();
        while offset < log.log_end_offset() {
            let read = log.read(offset, 1 << 20).await.map_err(|e| e.to_string())?;
            if read.is_empty() {
                break;
            }
            for chunk in &read.chunks {
                let mut rest: &[u8] = chunk;
                while !rest.is_empty() {
                    let batch = RecordBatch::parse(rest).map_err(|e| e.to_string())?;
                    // Only the broker writes this topic; a batch it cannot read is skipped, not
                    // allowed to keep every group of the partition from loading.
                    match batch.records() {
                        Ok(records) => {
                            for record in records.flatten() {
                                match (record.key, record.value) {
                                    (Some(k), Some(v)) => table.apply_record(k, v),
                                    (Some(k), None) => table.apply_tombstone(k),
                                    _ => {}
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "skipping an unreadable offsets batch")
                        }
                    }
                    rest = &rest[batch.total_len()..];
                }
            }
            offset = read.next_offset;
        }
        Ok(table)
    }

    fn apply_record(&mut self, key: &[u8], value: &[u8]) {
        let (Ok(k), Ok(v)) = (decode::<OffsetKey>(key), decode::<OffsetValue>(value)) else {
            tracing::warn!("skipping an undecodable offset record");
            return;
        };
        self.offsets
            .entry(k.group)
            .or_default()
            .insert((k.topic, k.partition), (v.offset, v.metadata));
    }

    fn apply_tombstone(&mut self, key: &[u8]) {
        let Ok(k) = decode::<OffsetKey>(key) else {
            tracing::warn!("skipping an undecodable offset tombstone");
            return;
        };
        self.remove(&[(k.group, k.topic, k.partition)]);
    }

    /// The stored entries, as `(group, topic, partition)`, of topics for which `exists` is false.
    pub(crate) fn of_missing_topics(&self, exists: impl Fn(&str) -> bool) -> Vec<OffsetEntry> {
        let mut entries: Vec<OffsetEntry> = self
            .offsets
            .iter()
            .flat_map(|(group, positions)| {
                positions
                    .keys()
                    .filter(|(topic, _)| !exists(topic))
                    .map(move |(topic, partition)| (group.clone(), topic.clone(), *partition))
            })
            .collect();
        entries.sort();
        entries
    }

    /// Forgets `entries` (`(group, topic, partition)`); a group left with none goes too.
    pub(crate) fn remove(&mut self, entries: &[OffsetEntry]) {
        for (group, topic, partition) in entries {
            if let Some(positions) = self.offsets.get_mut(group) {
                positions.remove(&(topic.clone(), *partition));
                if positions.is_empty() {
                    self.offsets.remove(group);
                }
            }
        }
    }

    /// The record batches that remove `entries` (tombstones: the key, no value), a bounded number
    /// per batch.
    pub(crate) fn tombstones(entries: &[OffsetEntry]) -> Result<Vec<BytesMut>, ErrorCode> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        entries
            .chunks(TOMBSTONES_PER_BATCH)
            .map(|chunk| {
                let mut builder = RecordBatchBuilder::new();
                for (group, topic, partition) in chunk {
                    let key = encode(&OffsetKey {
                        group: group.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                    });
                    builder
                        .push(NewRecord::new(now, Some(&key), None))
                        .map_err(|_| ErrorCode::MessageTooLarge)?;
                }
                builder
                    .build()
                    .map(|b| BytesMut::from(&b[..]))
                    .map_err(|_| ErrorCode::MessageTooLarge)
            })
            .collect()
    }

    /// The record batch that stores `commits` of `group`.
    pub(crate) fn batch(group: &str, commits: &[Commit]) -> Result<BytesMut, ErrorCode> {
        let mut builder = RecordBatchBuilder::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for (topic, partition, offset, metadata) in commits {
            let key = encode(&OffsetKey {
                group: group.to_string(),
                topic: topic.clone(),
                partition: *partition,
            });
            let value = encode(&OffsetValue {
                offset: *offset,
                metadata: metadata.clone(),
            });
            builder
                .push(NewRecord::new(now, Some(&key), Some(&value)))
                .map_err(|_| ErrorCode::MessageTooLarge)?;
        }
        builder
            .build()
            .map(|b| BytesMut::from(&b[..]))
            .map_err(|_| ErrorCode::MessageTooLarge)
    }

    /// Applies commits that are durable in the log.
    pub(crate) fn apply(&mut self, group: &str, commits: Vec<Commit>) {
        let group_offsets = self.offsets.entry(group.to_string()).or_default();
        for (topic, partition, offset, metadata) in commits {
            group_offsets.insert((topic, partition), (offset, metadata));
        }
    }

    /// The group's committed offsets: of the given partitions (-1 where none), or all.
    pub(crate) fn fetch(
        &self,
        group: &str,
        wanted: Option<Vec<(String, Vec<u32>)>>,
    ) -> Vec<Commit> {
        let empty = HashMap::new();
        let stored = self.offsets.get(group).unwrap_or(&empty);
        match wanted {
            Some(topics) => topics
                .into_iter()
                .flat_map(|(topic, partitions)| {
                    partitions.into_iter().map(move |p| {
                        let (offset, metadata) = stored
                            .get(&(topic.clone(), p))
                            .cloned()
                            .unwrap_or((-1, String::new()));
                        (topic.clone(), p, offset, metadata)
                    })
                })
                .collect(),
            None => {
                let mut all: Vec<Commit> = stored
                    .iter()
                    .map(|((t, p), (o, m))| (t.clone(), *p, *o, m.clone()))
                    .collect();
                all.sort();
                all
            }
        }
    }
}

fn encode<'a>(v: &impl Wire<'a>) -> Vec<u8> {
    let mut b = BytesMut::new();
    v.encode(&mut b);
    b.to_vec()
}

fn decode<'a, T: Wire<'a>>(bytes: &'a [u8]) -> Result<T, mlog_wire::protocol::DecodeError> {
    let mut r = Reader::new(bytes);
    let v = T::decode(&mut r, "offset record")?;
    r.finish("offset record")?;
    Ok(v)
}
