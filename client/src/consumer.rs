//! The consumer: assigned partitions, positions, long-poll fetches, and group offsets.
//!
//! A poll sends one long-poll Fetch for every assigned partition to the bootstrap broker (which
//! forwards to the owning shards), returns the records at or past each partition's position, and
//! advances the positions. A partition whose position fell out of range (retention) restarts from
//! `ConsumerConfig::reset`. Committed offsets are "the next offset to read", as in Kafka.

use std::time::Duration;

use mlog_wire::protocol::messages::*;
use mlog_wire::protocol::{ApiKey, ErrorCode};
use mlog_wire::RecordBatch;

use crate::admin::OffsetSpec;
use crate::connection::Connection;
use crate::error::{ClientError, Result};

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Consumer group for `commit` and `committed` (none: positions are not stored).
    pub group: Option<String>,
    /// Longest a poll waits for records.
    pub max_wait: Duration,
    /// A poll answers as soon as this many bytes are available.
    pub min_bytes: u32,
    /// Most bytes fetched per partition per poll.
    pub partition_max_bytes: u32,
    /// Where a partition restarts when its position is out of range, and where a newly assigned
    /// partition starts without a committed offset.
    pub reset: OffsetSpec,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group: None,
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            partition_max_bytes: 1 << 20,
            reset: OffsetSpec::Earliest,
        }
    }
}

/// One record read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: i64,
    /// Timestamp (ms).
    pub timestamp: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

#[derive(Debug, Clone)]
struct Assignment {
    topic: String,
    partition: u32,
    position: i64,
}

/// Reads records from assigned partitions.
///
/// ```no_run
/// # async fn example() -> Result<(), mlog_client::ClientError> {
/// use mlog_client::{Consumer, ConsumerConfig};
/// let config = ConsumerConfig { group: Some("billing".into()), ..ConsumerConfig::default() };
/// let mut consumer = Consumer::connect("127.0.0.1:9092", config).await?;
/// consumer.assign("orders", None).await?;
/// for record in consumer.poll().await? {
///     println!("{}@{}: {:?}", record.partition, record.offset, record.value);
/// }
/// consumer.commit().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Consumer {
    bootstrap: String,
    conn: Connection,
    config: ConsumerConfig,
    assigned: Vec<Assignment>,
}

impl Consumer {
    /// Connects to a broker of the cluster.
    pub async fn connect(bootstrap: &str, config: ConsumerConfig) -> Result<Consumer> {
        Ok(Consumer {
            bootstrap: bootstrap.to_string(),
            conn: Connection::connect(bootstrap).await?,
            config,
            assigned: Vec::new(),
        })
    }

    /// Assigns partitions of `topic` (all of them when `None`). Each starts at the group's committed
    /// offset if there is one, else at `reset`.
    pub async fn assign(&mut self, topic: &str, partitions: Option<Vec<u32>>) -> Result<()> {
        let partitions = match partitions {
            Some(p) => p,
            None => {
                let m: MetadataResponse = self
                    .conn
                    .request(
                        ApiKey::Metadata,
                        &MetadataRequest {
                            topics: Some(vec![topic.to_string()]),
                        },
                    )
                    .await?;
                let t =
                    m.topics.into_iter().next().ok_or_else(|| {
                        ClientError::Protocol("metadata without the topic".into())
                    })?;
                if t.error != ErrorCode::None {
                    return Err(ClientError::broker(t.error, Some(topic.to_string())));
                }
                t.partitions.iter().map(|p| p.partition).collect()
            }
        };
        for partition in partitions {
            let position = match self.committed(topic, partition).await? {
                Some(offset) => offset,
                None => self.lookup(topic, partition, self.config.reset).await?,
            };
            self.assigned
                .retain(|a| !(a.topic == topic && a.partition == partition));
            self.assigned.push(Assignment {
                topic: topic.to_string(),
                partition,
                position,
            });
        }
        Ok(())
    }

    /// Moves a partition's position.
    pub async fn seek(&mut self, topic: &str, partition: u32, to: OffsetSpec) -> Result<()> {
        let position = self.lookup(topic, partition, to).await?;
        self.set_position(topic, partition, position)
    }

    /// Moves a partition's position to `offset`.
    pub fn seek_to_offset(&mut self, topic: &str, partition: u32, offset: i64) -> Result<()> {
        self.set_position(topic, partition, offset)
    }

    fn set_position(&mut self, topic: &str, partition: u32, position: i64) -> Result<()> {
        let a = self
            .assigned
            .iter_mut()
            .find(|a| a.topic == topic && a.partition == partition)
            .ok_or_else(|| ClientError::Protocol(format!("{topic}-{partition} is not assigned")))?;
        a.position = position;
        Ok(())
    }

    /// The next offset this consumer reads from a partition.
    pub fn position(&self, topic: &str, partition: u32) -> Option<i64> {
        self.assigned
            .iter()
            .find(|a| a.topic == topic && a.partition == partition)
            .map(|a| a.position)
    }

    async fn lookup(&mut self, topic: &str, partition: u32, spec: OffsetSpec) -> Result<i64> {
        let p = self.conn.list_offset(topic, partition, spec).await?;
        // No record that recent: start at the end.
        Ok(if p.offset < 0 {
            p.high_watermark
        } else {
            p.offset
        })
    }

    /// Waits (up to `max_wait`) for records past the positions, returns them in offset order per
    /// partition, and advances the positions past them.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>> {
        if self.assigned.is_empty() {
            return Ok(Vec::new());
        }
        let mut topics: Vec<FetchTopic> = Vec::new();
        for a in &self.assigned {
            let p = FetchPartition {
                partition: a.partition,
                fetch_offset: a.position,
                max_bytes: self.config.partition_max_bytes,
            };
            match topics.iter_mut().find(|t| t.name == a.topic) {
                Some(t) => t.partitions.push(p),
                None => topics.push(FetchTopic {
                    name: a.topic.clone(),
                    partitions: vec![p],
                }),
            }
        }
        let req = FetchRequest {
            max_wait_ms: self.config.max_wait.as_millis().min(u32::MAX as u128) as u32,
            min_bytes: self.config.min_bytes,
            max_bytes: 64 << 20,
            topics,
        };
        let body = match self.conn.request_raw(ApiKey::Fetch, &req).await {
            // The broker restarted or the connection dropped: reconnect once and ask again (the
            // positions did not move, so nothing is skipped or read twice).
            Err(ClientError::Io { .. }) => {
                self.conn = Connection::connect(self.bootstrap.as_str()).await?;
                self.conn.request_raw(ApiKey::Fetch, &req).await?
            }
            other => other?,
        };
        let resp: FetchResponse<'_> =
            mlog_wire::protocol::frame::decode_body(&body, "FetchResponse")?;
        // Positions move only once the whole response was read: an error part-way leaves them
        // where they were, so the next poll fetches the same records again instead of losing them.
        let mut out = Vec::new();
        let mut resets = Vec::new();
        let mut moved: Vec<(usize, i64)> = Vec::new();
        for t in &resp.topics {
            for p in &t.partitions {
                let Some(index) = self
                    .assigned
                    .iter()
                    .position(|a| a.topic == t.name && a.partition == p.partition)
                else {
                    continue;
                };
                let a = &self.assigned[index];
                match p.error {
                    ErrorCode::None => {}
                    ErrorCode::OffsetOutOfRange => {
                        resets.push((a.topic.clone(), a.partition));
                        continue;
                    }
                    code => {
                        return Err(ClientError::broker(
                            code,
                            Some(format!("{}-{}", t.name, p.partition)),
                        ))
                    }
                }
                let mut position = a.position;
                let mut data = p.records.0;
                while !data.is_empty() {
                    let batch = RecordBatch::parse(data)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    for record in batch
                        .records()
                        .map_err(|e| ClientError::Protocol(e.to_string()))?
                    {
                        let r = record.map_err(|e| ClientError::Protocol(e.to_string()))?;
                        if r.offset < position {
                            continue;
                        }
                        out.push(ConsumerRecord {
                            topic: a.topic.clone(),
                            partition: a.partition,
                            offset: r.offset,
                            timestamp: r.timestamp,
                            key: r.key.map(<[u8]>::to_vec),
                            value: r.value.map(<[u8]>::to_vec),
                            headers: r
                                .headers
                                .iter()
                                .map(|h| (h.key.to_vec(), h.value.map(<[u8]>::to_vec)))
                                .collect(),
                        });
                    }
                    position = position.max(batch.next_offset());
                    data = &data[batch.total_len()..];
                }
                moved.push((index, position));
            }
        }
        for (index, position) in moved {
            self.assigned[index].position = position;
        }
        for (topic, partition) in resets {
            let position = self.lookup(&topic, partition, self.config.reset).await?;
            self.set_position(&topic, partition, position)?;
        }
        Ok(out)
    }

    /// Stores the current positions as the group's committed offsets.
    pub async fn commit(&mut self) -> Result<()> {
        let group = self.group()?;
        let mut topics: Vec<CommitTopic> = Vec::new();
        for a in &self.assigned {
            let p = CommitPartition {
                partition: a.partition,
                offset: a.position,
                metadata: String::new(),
            };
            match topics.iter_mut().find(|t| t.name == a.topic) {
                Some(t) => t.partitions.push(p),
                None => topics.push(CommitTopic {
                    name: a.topic.clone(),
                    partitions: vec![p],
                }),
            }
        }
        let r: OffsetCommitResponse = self
            .conn
            .request(ApiKey::OffsetCommit, &OffsetCommitRequest { group, topics })
            .await?;
        match r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .find(|p| p.error != ErrorCode::None)
        {
            Some(p) => Err(ClientError::broker(
                p.error,
                Some(format!("partition {}", p.partition)),
            )),
            None => Ok(()),
        }
    }

    /// The group's committed offset of a partition, if any.
    pub async fn committed(&mut self, topic: &str, partition: u32) -> Result<Option<i64>> {
        let Some(group) = self.config.group.clone() else {
            return Ok(None);
        };
        let req = OffsetFetchRequest {
            group,
            topics: Some(vec![OffsetFetchTopic {
                name: topic.to_string(),
                partitions: vec![partition],
            }]),
        };
        let r: OffsetFetchResponse = self.conn.request(ApiKey::OffsetFetch, &req).await?;
        if r.error != ErrorCode::None {
            return Err(ClientError::broker(r.error, None));
        }
        Ok(r.topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .next()
            .map(|p| p.offset)
            .filter(|o| *o >= 0))
    }

    /// Every offset the group committed: `(topic, partition, offset)`, sorted.
    pub async fn all_committed(&mut self) -> Result<Vec<(String, u32, i64)>> {
        let group = self.group()?;
        let r: OffsetFetchResponse = self
            .conn
            .request(
                ApiKey::OffsetFetch,
                &OffsetFetchRequest {
                    group,
                    topics: None,
                },
            )
            .await?;
        if r.error != ErrorCode::None {
            return Err(ClientError::broker(r.error, None));
        }
        Ok(r.topics
            .into_iter()
            .flat_map(|t| {
                t.partitions
                    .into_iter()
                    .map(move |p| (t.name.clone(), p.partition, p.offset))
            })
            .collect())
    }

    fn group(&self) -> Result<String> {
        self.config
            .group
            .clone()
            .ok_or_else(|| ClientError::Protocol("committing needs ConsumerConfig::group".into()))
    }
}
