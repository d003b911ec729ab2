//! Administration: topics, offsets and cluster metadata.

use mlog_wire::protocol::messages::*;
use mlog_wire::protocol::{ApiKey, ErrorCode};
use tokio::net::ToSocketAddrs;
use tokio::sync::Mutex;

use crate::connection::Connection;
use crate::error::{ClientError, Result};

/// A topic as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: u32,
}

/// One partition of a described topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    /// Index.
    pub partition: u32,
    /// Node id of the leader.
    pub leader: u32,
    /// Shard of the leader that owns it.
    pub shard: u16,
    /// First offset stored.
    pub log_start_offset: i64,
    /// Next offset to be written.
    pub log_end_offset: i64,
    /// Offsets below it are committed (readable by consumers).
    pub high_watermark: i64,
}

/// A topic with its partitions' owners and offsets, and its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// Name.
    pub name: String,
    /// Partitions, by index.
    pub partitions: Vec<PartitionDescription>,
    /// Configuration overrides.
    pub configs: Vec<(String, String)>,
}

/// Which offset `Admin::list_offset` looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first offset stored.
    Earliest,
    /// The high watermark (the next offset a consumer at the end would read).
    Latest,
    /// The first offset whose record timestamp (ms) is at least this.
    Timestamp(i64),
}

/// Administrative operations against one broker.
///
/// ```no_run
/// # async fn example() -> Result<(), mlog_client::ClientError> {
/// use mlog_client::{Admin, OffsetSpec};
/// let admin = Admin::connect("127.0.0.1:9092").await?;
/// admin.create_topic("events", 4, &[]).await?;
/// let d = admin.describe_topic("events").await?;
/// assert_eq!(d.partitions.len(), 4);
/// let end = admin.list_offset("events", 0, OffsetSpec::Latest).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Admin {
    conn: Mutex<Connection>,
}

impl Admin {
    /// Connects to a broker (`bootstrap`, e.g. `"127.0.0.1:9092"`).
    pub async fn connect(bootstrap: impl ToSocketAddrs + std::fmt::Display) -> Result<Admin> {
        Ok(Admin {
            conn: Mutex::new(Connection::connect(bootstrap).await?),
        })
    }

    /// Creates a topic with `partitions` partitions and configuration overrides (see the README's
    /// topic configuration keys).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: &[(&str, &str)],
    ) -> Result<()> {
        let req = CreateTopicsRequest {
            topics: vec![NewTopic {
                name: name.to_string(),
                partitions,
                configs: configs
                    .iter()
                    .map(|(k, v)| ConfigEntry {
                        key: k.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
            }],
        };
        let resp: CreateTopicsResponse = self
            .conn
            .lock()
            .await
            .request(ApiKey::CreateTopics, &req)
            .await?;
        first_result(resp.results)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let req = DeleteTopicsRequest {
            names: vec![name.to_string()],
        };
        let resp: DeleteTopicsResponse = self
            .conn
            .lock()
            .await
            .request(ApiKey::DeleteTopics, &req)
            .await?;
        first_result(resp.results)
    }

    /// The cluster's brokers, shards and topics.
    pub async fn metadata(&self, topics: Option<Vec<String>>) -> Result<MetadataResponse> {
        self.conn
            .lock()
            .await
            .request(ApiKey::Metadata, &MetadataRequest { topics })
            .await
    }

    /// Every topic, by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        Ok(self
            .metadata(None)
            .await?
            .topics
            .into_iter()
            .map(|t| TopicInfo {
                name: t.name,
                partitions: t.partitions.len() as u32,
            })
            .collect())
    }

    /// A topic's partitions (owner and offsets) and configuration.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let m = self.metadata(Some(vec![name.to_string()])).await?;
        let t = m
            .topics
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("metadata without the topic".into()))?;
        if t.error != ErrorCode::None {
            return Err(ClientError::broker(t.error, None));
        }
        let req = ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: name.to_string(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| ListOffsetsPartition {
                        partition: p.partition,
                        timestamp: EARLIEST_TIMESTAMP,
                    })
                    .collect(),
            }],
        };
        let offsets: ListOffsetsResponse = self
            .conn
            .lock()
            .await
            .request(ApiKey::ListOffsets, &req)
            .await?;
        let offsets = offsets
            .topics
            .into_iter()
            .next()
            .map(|t| t.partitions)
            .unwrap_or_default();
        let partitions = t
            .partitions
            .iter()
            .zip(offsets)
            .map(|(p, o)| PartitionDescription {
                partition: p.partition,
                leader: p.leader,
                shard: p.shard,
                log_start_offset: o.log_start_offset,
                log_end_offset: o.log_end_offset,
                high_watermark: o.high_watermark,
            })
            .collect();
        Ok(TopicDescription {
            name: t.name,
            partitions,
            configs: t.configs.into_iter().map(|c| (c.key, c.value)).collect(),
        })
    }

    /// Looks up one offset of a partition (`-1` from `Timestamp` when no record is that recent).
    pub async fn list_offset(&self, topic: &str, partition: u32, spec: OffsetSpec) -> Result<i64> {
        let p = self
            .conn
            .lock()
            .await
            .list_offset(topic, partition, spec)
            .await?;
        Ok(p.offset)
    }
}

fn first_result(results: Vec<TopicResult>) -> Result<()> {
    let r = results
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Protocol("empty topic results".into()))?;
    match r.error {
        ErrorCode::None => Ok(()),
        code => Err(ClientError::broker(code, r.message)),
    }
}
