//! Request and response bodies of every API (version 0). Field order is the encoding: see
//! `docs/protocol.md`. Produce requests and fetch responses carry record batches as `RawBytes`,
//! borrowed from the frame when decoded, so batch bytes are never copied into intermediate
//! structures.

use super::codec::RawBytes;
use super::error::ErrorCode;
use crate::wire_struct;

// ---- ApiVersions (0) ----

wire_struct! {
    /// The handshake request: no fields.
    pub struct ApiVersionsRequest {}
}

wire_struct! {
    /// One API and the versions served.
    pub struct ApiVersionRange {
        /// The API key.
        pub api_key: u16,
        /// Oldest version served.
        pub min_version: u16,
        /// Newest version served.
        pub max_version: u16,
    }
}

wire_struct! {
    /// The APIs the broker serves.
    pub struct ApiVersionsResponse {
        /// One entry per API.
        pub apis: Vec<ApiVersionRange>,
    }
}

// ---- Metadata (1) ----

wire_struct! {
    /// Asks for the cluster's brokers and some or all topics.
    pub struct MetadataRequest {
        /// Topics to describe; absent for every topic.
        pub topics: Option<Vec<String>>,
    }
}

wire_struct! {
    /// A listener that serves one shard of a broker.
    pub struct ShardEndpoint {
        /// The broker's node id.
        pub node_id: u32,
        /// The shard (core) index on that broker.
        pub shard: u16,
        /// Host to connect to.
        pub host: String,
        /// Port to connect to.
        pub port: u16,
    }
}

wire_struct! {
    /// Where a partition lives.
    pub struct PartitionMetadata {
        /// `None`, or why this partition could not be described.
        pub error: ErrorCode,
        /// The partition index.
        pub partition: u32,
        /// Node id of the leader.
        pub leader: u32,
        /// Shard of the leader that owns the partition (connect to it to skip a hop).
        pub shard: u16,
        /// The leader's epoch.
        pub leader_epoch: i32,
    }
}

wire_struct! {
    /// One topic.
    pub struct TopicMetadata {
        /// `None`, `UnknownTopicOrPartition`, ...
        pub error: ErrorCode,
        /// The topic name.
        pub name: String,
        /// Its partitions, by index.
        pub partitions: Vec<PartitionMetadata>,
        /// Its configuration as key/value pairs (see `docs/protocol.md`).
        pub configs: Vec<ConfigEntry>,
    }
}

wire_struct! {
    /// A configuration entry.
    pub struct ConfigEntry {
        /// The key, e.g. `retention.ms`.
        pub key: String,
        /// The value, as text.
        pub value: String,
    }
}

wire_struct! {
    /// Brokers, shards and topics.
    pub struct MetadataResponse {
        /// Revision of the metadata this answer reflects; it only grows.
        pub revision: u64,
        /// Every shard listener of every broker.
        pub endpoints: Vec<ShardEndpoint>,
        /// The topics asked for (or all).
        pub topics: Vec<TopicMetadata>,
    }
}

// ---- CreateTopics (2) / DeleteTopics (3) ----

wire_struct! {
    /// One topic to create.
    pub struct NewTopic {
        /// Name: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
        pub name: String,
        /// Number of partitions (at least 1).
        pub partitions: u32,
        /// Configuration overrides.
        pub configs: Vec<ConfigEntry>,
    }
}

wire_struct! {
    /// Creates topics.
    pub struct CreateTopicsRequest {
        /// The topics.
        pub topics: Vec<NewTopic>,
    }
}

wire_struct! {
    /// The outcome for one topic of a create or delete.
    pub struct TopicResult {
        /// The topic name.
        pub name: String,
        /// `None` or why it failed.
        pub error: ErrorCode,
        /// Details when it failed.
        pub message: Option<String>,
    }
}

wire_struct! {
    /// One result per requested topic, in request order.
    pub struct CreateTopicsResponse {
        /// The results.
        pub results: Vec<TopicResult>,
    }
}

wire_struct! {
    /// Deletes topics and their data.
    pub struct DeleteTopicsRequest {
        /// Topic names.
        pub names: Vec<String>,
    }
}

wire_struct! {
    /// One result per requested topic, in request order.
    pub struct DeleteTopicsResponse {
        /// The results.
        pub results: Vec<TopicResult>,
    }
}

// ---- Produce (4) ----

wire_struct! {
    /// Record batches for one partition.
    pub struct ProducePartition<'a> {
        /// The partition index.
        pub partition: u32,
        /// One or more Kafka v2 record batches, back to back.
        pub records: RawBytes<'a>,
    }
}

wire_struct! {
    /// Record batches for partitions of one topic.
    pub struct ProduceTopic<'a> {
        /// The topic name.
        pub name: &'a str,
        /// The partitions.
        pub partitions: Vec<ProducePartition<'a>>,
    }
}

wire_struct! {
    /// Appends record batches.
    pub struct ProduceRequest<'a> {
        /// 0: no response is sent; 1: answered once the leader appended; -1: once durable on every
        /// in-sync replica.
        pub acks: i8,
        /// How long the broker may wait for `acks`, in milliseconds.
        pub timeout_ms: u32,
        /// The topics.
        pub topics: Vec<ProduceTopic<'a>>,
    }
}

wire_struct! {
    /// The outcome for one partition.
    pub struct ProducePartitionResponse {
        /// The partition index.
        pub partition: u32,
        /// `None` or why nothing was appended.
        pub error: ErrorCode,
        /// Offset of the first record of the first batch (-1 on error).
        pub base_offset: i64,
        /// The log start offset after the append.
        pub log_start_offset: i64,
    }
}

wire_struct! {
    /// Outcomes for one topic.
    pub struct ProduceTopicResponse {
        /// The topic name.
        pub name: String,
        /// The partitions, in request order.
        pub partitions: Vec<ProducePartitionResponse>,
    }
}

wire_struct! {
    /// Outcomes of a produce, in request order.
    pub struct ProduceResponse {
        /// The topics.
        pub topics: Vec<ProduceTopicResponse>,
    }
}

// ---- Fetch (5) ----

wire_struct! {
    /// Where to read in one partition.
    pub struct FetchPartition {
        /// The partition index.
        pub partition: u32,
        /// The first offset wanted.
        pub fetch_offset: i64,
        /// Most bytes to return for this partition (at least one whole batch is returned).
        pub max_bytes: u32,
    }
}

wire_struct! {
    /// Partitions of one topic to read.
    pub struct FetchTopic {
        /// The topic name.
        pub name: String,
        /// The partitions.
        pub partitions: Vec<FetchPartition>,
    }
}

wire_struct! {
    /// Reads record batches; waits up to `max_wait_ms` until `min_bytes` are available.
    pub struct FetchRequest {
        /// Longest wait, in milliseconds.
        pub max_wait_ms: u32,
        /// Answer as soon as this many bytes are available (0: at once).
        pub min_bytes: u32,
        /// Most bytes in the whole response.
        pub max_bytes: u32,
        /// The topics.
        pub topics: Vec<FetchTopic>,
    }
}

wire_struct! {
    /// Data of one partition.
    pub struct FetchPartitionResponse<'a> {
        /// The partition index.
        pub partition: u32,
        /// `None`, `OffsetOutOfRange`, ...
        pub error: ErrorCode,
        /// Offsets below it are committed and readable.
        pub high_watermark: i64,
        /// The first offset still stored.
        pub log_start_offset: i64,
        /// Whole record batches, exactly as stored (the first may start before `fetch_offset`).
        pub records: RawBytes<'a>,
    }
}

wire_struct! {
    /// Data of one topic.
    pub struct FetchTopicResponse<'a> {
        /// The topic name.
        pub name: &'a str,
        /// The partitions, in request order.
        pub partitions: Vec<FetchPartitionResponse<'a>>,
    }
}

wire_struct! {
    /// The data read, in request order.
    pub struct FetchResponse<'a> {
        /// The topics.
        pub topics: Vec<FetchTopicResponse<'a>>,
    }
}

// ---- ListOffsets (6) ----

/// `ListOffsetsPartition::timestamp` asking for the log start offset.
pub const EARLIEST_TIMESTAMP: i64 = -2;
/// `ListOffsetsPartition::timestamp` asking for the high watermark.
pub const LATEST_TIMESTAMP: i64 = -1;

wire_struct! {
    /// Which offset of one partition.
    pub struct ListOffsetsPartition {
        /// The partition index.
        pub partition: u32,
        /// `EARLIEST_TIMESTAMP` (-2), `LATEST_TIMESTAMP` (-1), or a timestamp in ms: the first
        /// offset whose record timestamp is at least this.
        pub timestamp: i64,
    }
}

wire_struct! {
    /// Partitions of one topic.
    pub struct ListOffsetsTopic {
        /// The topic name.
        pub name: String,
        /// The partitions.
        pub partitions: Vec<ListOffsetsPartition>,
    }
}

wire_struct! {
    /// Looks up offsets.
    pub struct ListOffsetsRequest {
        /// The topics.
        pub topics: Vec<ListOffsetsTopic>,
    }
}

wire_struct! {
    /// One partition's offsets.
    pub struct ListOffsetsPartitionResponse {
        /// The partition index.
        pub partition: u32,
        /// `None` or why not.
        pub error: ErrorCode,
        /// The offset asked for (-1 when no record is that recent).
        pub offset: i64,
        /// The first offset stored.
        pub log_start_offset: i64,
        /// The next offset to be written.
        pub log_end_offset: i64,
        /// Offsets below it are committed.
        pub high_watermark: i64,
    }
}

wire_struct! {
    /// One topic's offsets.
    pub struct ListOffsetsTopicResponse {
        /// The topic name.
        pub name: String,
        /// The partitions, in request order.
        pub partitions: Vec<ListOffsetsPartitionResponse>,
    }
}

wire_struct! {
    /// Offsets, in request order.
    pub struct ListOffsetsResponse {
        /// The topics.
        pub topics: Vec<ListOffsetsTopicResponse>,
    }
}

// ---- OffsetCommit (7) / OffsetFetch (8) ----

wire_struct! {
    /// A consumer position to store.
    pub struct CommitPartition {
        /// The partition index.
        pub partition: u32,
        /// The next offset the group will consume.
        pub offset: i64,
        /// Free-form metadata stored with it.
        pub metadata: String,
    }
}

wire_struct! {
    /// Positions in one topic.
    pub struct CommitTopic {
        /// The topic name.
        pub name: String,
        /// The partitions.
        pub partitions: Vec<CommitPartition>,
    }
}

wire_struct! {
    /// Stores a consumer group's positions durably.
    pub struct OffsetCommitRequest {
        /// The group: 1-249 characters of `[a-zA-Z0-9._-]`.
        pub group: String,
        /// The topics.
        pub topics: Vec<CommitTopic>,
    }
}

wire_struct! {
    /// The outcome for one partition.
    pub struct PartitionResult {
        /// The partition index.
        pub partition: u32,
        /// `None` or why not.
        pub error: ErrorCode,
    }
}

wire_struct! {
    /// Outcomes for one topic.
    pub struct TopicPartitionResults {
        /// The topic name.
        pub name: String,
        /// The partitions, in request order.
        pub partitions: Vec<PartitionResult>,
    }
}

wire_struct! {
    /// Outcomes of a commit, in request order.
    pub struct OffsetCommitResponse {
        /// The topics.
        pub topics: Vec<TopicPartitionResults>,
    }
}

wire_struct! {
    /// Partitions of one topic to look up.
    pub struct OffsetFetchTopic {
        /// The topic name.
        pub name: String,
        /// The partition indexes.
        pub partitions: Vec<u32>,
    }
}

wire_struct! {
    /// Reads a consumer group's stored positions.
    pub struct OffsetFetchRequest {
        /// The group.
        pub group: String,
        /// Topics to look up; absent for every position the group stored.
        pub topics: Option<Vec<OffsetFetchTopic>>,
    }
}

wire_struct! {
    /// One stored position.
    pub struct OffsetFetchPartition {
        /// The partition index.
        pub partition: u32,
        /// The stored offset, or -1 when the group stored none.
        pub offset: i64,
        /// The metadata stored with it.
        pub metadata: String,
        /// `None` or why not.
        pub error: ErrorCode,
    }
}

wire_struct! {
    /// Stored positions in one topic.
    pub struct OffsetFetchTopicResponse {
        /// The topic name.
        pub name: String,
        /// The partitions.
        pub partitions: Vec<OffsetFetchPartition>,
    }
}

wire_struct! {
    /// A group's stored positions.
    pub struct OffsetFetchResponse {
        /// `None`, or `InvalidGroup`.
        pub error: ErrorCode,
        /// The topics.
        pub topics: Vec<OffsetFetchTopicResponse>,
    }
}

// ---- InitProducerId (9) ----

wire_struct! {
    /// Asks for a producer id for idempotent produce: no fields.
    pub struct InitProducerIdRequest {}
}

wire_struct! {
    /// A producer id no other producer of this cluster was or will be given.
    pub struct InitProducerIdResponse {
        /// `None`, or why no id was given.
        pub error: ErrorCode,
        /// The id, -1 on error.
        pub producer_id: i64,
        /// The id's epoch (0 for a new id), -1 on error.
        pub producer_epoch: i16,
    }
}
