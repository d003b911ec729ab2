//! The topic table: which topics exist, their partition counts and configuration.
//!
//! Invariants: shard 0 (the controller) is the only writer. Every change gets the next revision, is
//! written to `<data_dir>/topics.meta` (atomically, fsynced) before any shard applies it, and is then
//! sent to every shard as a whole table stamped with its revision; a shard applies a table only if
//! its revision is newer than the one it has, so all shards see changes in the same order. (Whole
//! tables rather than deltas: the table is small, and a lost or reordered message can then never
//! leave a shard with a gap.)

use std::path::Path;
use std::time::Duration;

use mlog_storage::{FlushPolicy, LogConfig};
use mlog_wire::protocol::messages::ConfigEntry;
use mlog_wire::protocol::{ErrorCode, Reader, Wire};

/// File of the topic table in the data directory.
const TABLE_FILE: &str = "topics.meta";
/// Checkpoint kind byte of the topic table file.
const TABLE_KIND: u8 = 0x21;
/// Most partitions one topic may have.
pub(crate) const MAX_PARTITIONS: u32 = 10_000;

mlog_wire::wire_struct! {
    /// One topic as stored.
    pub struct TopicRecord {
        /// Name.
        pub name: String,
        /// Partition count.
        pub partitions: u32,
        /// Configuration overrides, validated at creation.
        pub configs: Vec<ConfigEntry>,
    }
}

mlog_wire::wire_struct! {
    /// The table as stored and as sent between shards.
    pub struct TopicTable {
        /// Grows with every change.
        pub revision: u64,
        /// Topics, sorted by name.
        pub topics: Vec<TopicRecord>,
    }
}

/// The topic and partition a data-directory entry's name (`<topic>-<n>`) stands for, if it is named
/// like a partition's directory.
pub(crate) fn parse_partition_dir_name(name: &std::ffi::OsStr) -> Option<(&str, u32)> {
    let (topic, partition) = name.to_str()?.rsplit_once('-')?;
    let partition = partition.parse().ok()?;
    validate_name(topic).ok()?;
    Some((topic, partition))
}

/// Directories of `data_dir` named like a partition's that hold a log with data.
fn partition_log_dirs(data_dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            parse_partition_dir_name(&e.file_name()).is_some()
                && mlog_storage::is_log_dir(&e.path(), true)
        })
        .map(|e| e.path())
        .collect()
}

impl TopicTable {
    /// Reads the table from `data_dir` (empty at revision 0 if there is none).
    pub(crate) fn load(data_dir: &Path) -> Result<TopicTable, String> {
        let payload = mlog_storage::checkpoint::read_named(data_dir, TABLE_FILE, TABLE_KIND)
            .map_err(|e| e.to_string())?;
        let Some(payload) = payload else {
            // No table but partition logs: a damaged or partly restored directory. Starting would
            // treat every partition as deleted and remove its data.
            if let Some(dir) = partition_log_dirs(data_dir).first() {
                return Err(format!(
                    "{} holds partition data ({}) but no {TABLE_FILE}: restore {TABLE_FILE} or move \
                     the partition directories away",
                    data_dir.display(),
                    dir.display()
                ));
            }
            return Ok(TopicTable {
                revision: 0,
                topics: Vec::new(),
            });
        };
        // Our own file: its size, not a peer, bounds it.
        let mut r = Reader::with_max_items(&payload, usize::MAX);
        let table =
            TopicTable::decode(&mut r, "topic table").map_err(|e| format!("{TABLE_FILE}: {e}"))?;
        r.finish("topic table")
            .map_err(|e| format!("{TABLE_FILE}: {e}"))?;
        Ok(table)
    }

    /// Writes the table to `data_dir` durably (blocking: run it on the blocking pool).
    pub(crate) fn store(&self, data_dir: &Path) -> Result<(), String> {
        let mut buf = bytes::BytesMut::new();
        self.encode(&mut buf);
        mlog_storage::checkpoint::write_named(data_dir, TABLE_FILE, TABLE_KIND, &buf)
            .map_err(|e| e.to_string())
    }

    pub(crate) fn get(&self, name: &str) -> Option<&TopicRecord> {
        self.topics
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.topics[i])
    }

    /// The table with `topic` added (kept sorted), at the next revision.
    /// (Takes the table, so that a request creating many topics edits one copy instead of copying
    /// the whole table for each.)
    pub(crate) fn with_topic(mut self, topic: TopicRecord) -> TopicTable {
        let at = self.topics.partition_point(|t| t.name < topic.name);
        self.topics.insert(at, topic);
        self.revision += 1;
        self
    }

    /// The table without `name`, at the next revision.
    pub(crate) fn without_topic(mut self, name: &str) -> TopicTable {
        self.topics.retain(|t| t.name != name);
        self.revision += 1;
        self
    }
}

/// Checks a topic name: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or `..` (Kafka's rule).
pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err("a topic name has 1 to 249 characters".into());
    }
    if name == "." || name == ".." {
        return Err("a topic name cannot be '.' or '..'".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err("a topic name uses only ASCII letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

/// Longest topic configuration value accepted.
const MAX_CONFIG_VALUE_BYTES: usize = 32;

/// Checks the configs of a topic being created: each key at most once (so a topic holds at most one
/// entry per known key, and the table and Metadata answers stay small), every value valid.
pub(crate) fn validate_new_configs(configs: &[ConfigEntry]) -> Result<(), (ErrorCode, String)> {
    // Every value is a number or a word: a longer one (say, a number padded with zeros) would only
    // make every Metadata answer longer.
    if let Some(e) = configs
        .iter()
        .find(|e| e.value.len() > MAX_CONFIG_VALUE_BYTES)
    {
        return Err((
            ErrorCode::InvalidConfig,
            format!(
                "the value of {} is longer than {MAX_CONFIG_VALUE_BYTES} bytes",
                e.key
            ),
        ));
    }
    // First the keys and values (unknown keys refused), then duplicates.
    log_config(configs)?;
    let mut seen = std::collections::HashSet::new();
    match configs.iter().find(|e| !seen.insert(e.key.as_str())) {
        Some(e) => Err((
            ErrorCode::InvalidConfig,
            format!("configuration key {} given twice", e.key),
        )),
        None => Ok(()),
    }
}

/// The log configuration a topic's configuration entries give, or the error for the first bad one.
/// Keys: `retention.ms`, `retention.bytes` (-1: unlimited), `segment.bytes`, `max.message.bytes`,
/// `flush.policy` (`always`, `interval`, `never`) and `flush.interval.ms`.
pub(crate) fn log_config(configs: &[ConfigEntry]) -> Result<LogConfig, (ErrorCode, String)> {
    let mut c = LogConfig::default();
    let mut interval_ms = 1000u64;
    let mut policy = "always".to_string();
    for e in configs {
        let bad = || {
            (
                ErrorCode::InvalidConfig,
                format!("invalid value {:?} for {}", e.value, e.key),
            )
        };
        let num = || e.value.parse::<i64>().map_err(|_| bad());
        match e.key.as_str() {
            "retention.ms" => {
                let v = num()?;
                c.retention_ms = u64::try_from(v).ok().map(Duration::from_millis);
            }
            "retention.bytes" => c.retention_bytes = u64::try_from(num()?).ok(),
            "segment.bytes" => c.segment_bytes = u64::try_from(num()?).map_err(|_| bad())?,
            "max.message.bytes" => {
                c.max_batch_bytes = usize::try_from(num()?).map_err(|_| bad())?
            }
            "flush.interval.ms" => interval_ms = u64::try_from(num()?).map_err(|_| bad())?.max(1),
            "flush.policy" => policy = e.value.clone(),
            _ => {
                return Err((
                    ErrorCode::InvalidConfig,
                    format!("unknown configuration key {}", e.key),
                ))
            }
        }
    }
    c.flush = match policy.as_str() {
        // The broker syncs explicitly for acks=all on `always` topics (one group commit shared by the
        // partition's producers), so the log itself never syncs on append.
        "always" | "never" => FlushPolicy::Never,
        "interval" => FlushPolicy::Interval(Duration::from_millis(interval_ms)),
        _ => {
            return Err((
                ErrorCode::InvalidConfig,
                format!("flush.policy must be always, interval or never, not {policy}"),
            ))
        }
    };
    c.preallocate_bytes = c.preallocate_bytes.min(c.segment_bytes);
    c.validate()
        .map_err(|e| (ErrorCode::InvalidConfig, e.to_string()))?;
    Ok(c)
}

/// Whether acks=all on a topic waits for a sync to disk (`flush.policy` is `always`, the default).
pub(crate) fn sync_on_ack(configs: &[ConfigEntry]) -> bool {
    configs
        .iter()
        .rev()
        .find(|e| e.key == "flush.policy")
        .is_none_or(|e| e.value == "always")
}

/// The shard that owns a partition: a hash of the topic and partition, stable across restarts.
pub(crate) fn owner(topic: &str, partition: u32, shards: usize) -> usize {
    (fnv1a(topic.as_bytes(), &partition.to_be_bytes()) as usize) % shards.max(1)
}

fn fnv1a(a: &[u8], b: &[u8]) -> u32 {
    // FNV-1a: small, stable, and good enough to spread partitions; no dependency needed.
    let mut h: u32 = 0x811c_9dc5;
    for byte in a.iter().chain(b) {
        h ^= *byte as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafkas_rule() {
        assert!(validate_name("orders.v1_2-x").is_ok());
        for bad in ["", ".", "..", "a/b", "sp ace", &"x".repeat(250)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn configs_are_validated() {
        let e = |k: &str, v: &str| ConfigEntry {
            key: k.into(),
            value: v.into(),
        };
        let c = log_config(&[e("retention.ms", "60000"), e("segment.bytes", "1048576")]).unwrap();
        assert_eq!(c.retention_ms, Some(Duration::from_secs(60)));
        assert_eq!(c.segment_bytes, 1 << 20);
        assert!(log_config(&[e("retention.ms", "soon")]).is_err());
        assert!(log_config(&[e("no.such.key", "1")]).is_err());
        assert!(log_config(&[e("flush.policy", "sometimes")]).is_err());
        assert!(log_config(&[e("segment.bytes", "10")]).is_err());
        let twice = [e("retention.ms", "1"), e("retention.ms", "2")];
        assert!(
            log_config(&twice).is_ok(),
            "tables of older versions still open"
        );
        assert!(validate_new_configs(&twice).is_err());
        assert!(validate_new_configs(&[e("retention.ms", "60000")]).is_ok());
        let padded = format!("{:0>40}", 60000);
        assert!(log_config(&[e("retention.ms", &padded)]).is_ok());
        assert!(validate_new_configs(&[e("retention.ms", &padded)]).is_err());
    }

    #[test]
    fn ownership_is_stable_and_spread() {
        let owners: Vec<usize> = (0..64).map(|p| owner("orders", p, 2)).collect();
        assert_eq!(
            owners,
            (0..64).map(|p| owner("orders", p, 2)).collect::<Vec<_>>()
        );
        assert!(owners.contains(&0) && owners.contains(&1));
    }

    #[test]
    fn table_round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TopicTable::load(dir.path()).unwrap().revision, 0);
        let t = TopicTable {
            revision: 0,
            topics: vec![],
        }
        .with_topic(TopicRecord {
            name: "b".into(),
            partitions: 2,
            configs: vec![],
        });
        let t = t.with_topic(TopicRecord {
            name: "a".into(),
            partitions: 1,
            configs: vec![],
        });
        assert_eq!(t.topics[0].name, "a");
        t.store(dir.path()).unwrap();
        assert_eq!(TopicTable::load(dir.path()).unwrap(), t);
        assert_eq!(t.without_topic("a").topics.len(), 1);
    }
}
