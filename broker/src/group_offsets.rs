//! Consumer group offsets, stored in the internal topic `__consumer_offsets`.
//!
//! A group's commits go to partition `hash(group) % OFFSETS_PARTITIONS` of the internal topic, so
//! one shard (that partition's owner) serves the group. A commit is appended as one record batch
//! (one record per partition: key `(group, topic, partition)`, value `(offset, metadata)`) and
//! synced to disk before it is applied to the in-memory table and acknowledged; at start the table
//! is rebuilt by replaying the partition, the last record for a key winning. A record with a key and
//! no value (a tombstone) removes the key: when a topic is deleted, every shard that owns internal
//! partitions writes tombstones for that topic's offsets (at every table it applies, also at start,
//! so a crash in between only delays them), so that a topic created again under the same name
//! starts with no committed offsets, as in Kafka.
//!
//! Compaction keeps the partition's size bounded by the table's, not by the number of commits
//! (retention is off for the internal topic, since a group's offsets must outlive any age limit).
//! Once the log holds a sealed segment, and at least as many records were appended since the last
//! compaction as the table has entries (so compaction at most doubles the writes), the owner
//! appends the whole table (`snapshot`), syncs it, and moves the log start to where the snapshot
//! began, which deletes every whole segment before it. It runs under the partition's commit lock,
//! so the table is exactly what replaying the log gives: a crash at any step replays to the same
//! table (an old prefix plus part of a snapshot of it, or the whole snapshot alone).

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

/// The internal topic's configuration: no retention (compaction bounds it), sync every commit, and
/// segments small enough that compaction frees space early (Kafka's offsets topic uses 100 MiB).
pub(crate) fn offsets_topic_configs() -> Vec<ConfigEntry> {
    vec![
        ConfigEntry {
            key: "retention.ms".into(),
            value: "-1".into(),
        },
        ConfigEntry {
            key: "segment.bytes".into(),
            value: (16 << 20).to_string(),
        },
    ]
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

/// A batch of tombstones or of a snapshot closes once it holds this many bytes, far below the
/// internal topic's 1 MiB batch limit (a single larger entry gets a batch of its own: it fitted in
/// one when it was committed).
const BATCH_BUDGET_BYTES: usize = 256 << 10;

/// One group's stored positions: `(topic, partition) -> (offset, metadata)`.
type Positions = HashMap<(String, u32), (i64, String)>;

/// The committed offsets of the groups one internal partition holds.
#[derive(Default)]
pub(crate) struct GroupOffsets {
    offsets: HashMap<String, Positions>,
    /// Where the last compaction's snapshot ended in the log (the log start when replayed).
    pub(crate) compacted_upto: u64,
}

impl GroupOffsets {
    /// Rebuilds the table from the partition's log.
    pub(crate) async fn replay(log: &Log) -> Result<GroupOffsets, String> {
        let mut table = GroupOffsets {
            compacted_upto: log.log_start_offset(),
            ..GroupOffsets::default()
        };
        let mut offset = log.log_start_offset();
        while offset < log.log_end_offset() {
            let read = log.read(offset, 1 << 20).await.map_err(|e| e.to_string())?;
            if read.is_empty() {
                break;
            }
            for chunk in &read.chunks {
                table.apply_batches(chunk)?;
            }
            offset = read.next_offset;
        }
        Ok(table)
    }

    /// Applies the records of consecutive whole batches, in order.
    fn apply_batches(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            let batch = RecordBatch::parse(bytes).map_err(|e| e.to_string())?;
            // Only the broker writes this topic; a batch it cannot read is skipped, not allowed to
            // keep every group of the partition from loading.
            match batch.records() {
                Ok(records) => {
                    for record in records.flatten() {
                        match (record.key, record.value) {
                            (Some(k), Some(v)) => self.apply_record(k, v),
                            (Some(k), None) => self.apply_tombstone(k),
                            _ => {}
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable offsets batch"),
            }
            bytes = &bytes[batch.total_len()..];
        }
        Ok(())
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

    /// The record batches that remove `entries` (tombstones: the key, no value).
    pub(crate) fn tombstones(entries: &[OffsetEntry]) -> Result<Vec<BytesMut>, ErrorCode> {
        record_batches(
            entries
                .iter()
                .map(|(group, topic, partition)| (key(group, topic, *partition), None)),
            BATCH_BUDGET_BYTES,
        )
    }

    /// The record batch that stores `commits` of `group`.
    pub(crate) fn batch(group: &str, commits: &[Commit]) -> Result<BytesMut, ErrorCode> {
        let records = commits.iter().map(|(topic, partition, offset, metadata)| {
            (
                key(group, topic, *partition),
                Some(value(*offset, metadata)),
            )
        });
        let mut batches = record_batches(records, usize::MAX)?;
        batches.pop().ok_or(ErrorCode::InvalidRequest)
    }

    /// Record batches holding every stored entry: replayed alone, they rebuild this table.
    pub(crate) fn snapshot(&self) -> Result<Vec<BytesMut>, ErrorCode> {
        let records = self.offsets.iter().flat_map(|(group, positions)| {
            positions
                .iter()
                .map(|((topic, partition), (offset, metadata))| {
                    (
                        key(group, topic, *partition),
                        Some(value(*offset, metadata)),
                    )
                })
        });
        record_batches(records, BATCH_BUDGET_BYTES)
    }

    /// Entries stored, over all groups.
    pub(crate) fn len(&self) -> usize {
        self.offsets.values().map(HashMap::len).sum()
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

fn key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    encode(&OffsetKey {
        group: group.to_string(),
        topic: topic.to_string(),
        partition,
    })
}

fn value(offset: i64, metadata: &str) -> Vec<u8> {
    encode(&OffsetValue {
        offset,
        metadata: metadata.to_string(),
    })
}

/// Builds `(key, value)` records (no value: a tombstone) into batches, closing each once it holds
/// `budget` bytes or more.
fn record_batches(
    records: impl Iterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    budget: usize,
) -> Result<Vec<BytesMut>, ErrorCode> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let build = |builder: RecordBatchBuilder| {
        builder
            .build()
            .map(|b| BytesMut::from(&b[..]))
            .map_err(|_| ErrorCode::MessageTooLarge)
    };
    let mut batches = Vec::new();
    let mut builder = RecordBatchBuilder::new();
    for (key, value) in records {
        builder
            .push(NewRecord::new(now, Some(&key), value.as_deref()))
            .map_err(|_| ErrorCode::MessageTooLarge)?;
        if builder.encoded_len() >= budget {
            batches.push(build(std::mem::take(&mut builder))?);
        }
    }
    if !builder.is_empty() {
        batches.push(build(builder)?);
    }
    Ok(batches)
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Everything a table stores, sorted.
    fn contents(table: &GroupOffsets) -> Vec<(String, Commit)> {
        let mut all: Vec<(String, Commit)> = table
            .offsets
            .keys()
            .flat_map(|g| table.fetch(g, None).into_iter().map(|c| (g.clone(), c)))
            .collect();
        all.sort();
        all
    }

    /// A table's changes, as the log records them: commits, and tombstones of whole topics.
    #[derive(Debug, Clone)]
    enum Change {
        Commit(String, Vec<Commit>),
        ForgetTopic(String),
    }

    fn change() -> impl Strategy<Value = Change> {
        let name = prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from);
        let commit = (name.clone(), 0u32..4, any::<i64>(), ".{0,300}");
        prop_oneof![
            4 => (name.clone(), prop::collection::vec(commit, 1..6)).prop_map(|(g, c)| {
                Change::Commit(g, c)
            }),
            1 => name.prop_map(Change::ForgetTopic),
        ]
    }

    proptest! {
        /// Compaction's premise: a snapshot replayed alone, or after the records it summarizes
        /// (a crash before the log start moved), rebuilds exactly the table it was taken from.
        #[test]
        fn a_snapshot_replays_to_the_table_it_was_taken_from(
            changes in prop::collection::vec(change(), 0..40)
        ) {
            let mut table = GroupOffsets::default();
            let mut log: Vec<BytesMut> = Vec::new();
            for c in changes {
                match c {
                    Change::Commit(group, commits) => {
                        log.push(GroupOffsets::batch(&group, &commits).unwrap());
                        table.apply(&group, commits);
                    }
                    Change::ForgetTopic(topic) => {
                        let entries = table.of_missing_topics(|t| t != topic);
                        log.extend(GroupOffsets::tombstones(&entries).unwrap());
                        table.remove(&entries);
                    }
                }
            }
            // The table is what its records replay to.
            let mut replayed = GroupOffsets::default();
            for b in &log {
                replayed.apply_batches(b).unwrap();
            }
            prop_assert_eq!(contents(&replayed), contents(&table));
            let snapshot = table.snapshot().unwrap();
            let mut alone = GroupOffsets::default();
            for b in &snapshot {
                alone.apply_batches(b).unwrap();
            }
            prop_assert_eq!(contents(&alone), contents(&table));
            prop_assert_eq!(alone.len(), table.len());
            for b in &snapshot {
                replayed.apply_batches(b).unwrap();
            }
            prop_assert_eq!(contents(&replayed), contents(&table));
        }
    }

    #[test]
    fn a_large_snapshot_is_split_into_batches_the_log_accepts() {
        let mut table = GroupOffsets::default();
        let commits: Vec<Commit> = (0..300)
            .map(|p| ("t".to_string(), p, i64::from(p), "m".repeat(2048)))
            .collect();
        table.apply("g", commits);
        let snapshot = table.snapshot().unwrap();
        assert!(snapshot.len() >= 3, "{} batches", snapshot.len());
        let mut alone = GroupOffsets::default();
        for b in &snapshot {
            assert!(b.len() < BATCH_BUDGET_BYTES + 4096, "{}", b.len());
            alone.apply_batches(b).unwrap();
        }
        assert_eq!(contents(&alone), contents(&table));
    }
}
