//! mlog-client: the Rust client of mlog, on tokio.
//!
//! [`Admin`] (topics, offsets, cluster metadata), [`Producer`] (batching, partitioning, acks,
//! retries, back-pressure) and [`Consumer`] (assign, seek, long-poll, group offsets), each over
//! [`Connection`]s that speak the protocol.
//!
//! ```no_run
//! # async fn example() -> Result<(), mlog_client::ClientError> {
//! let admin = mlog_client::Admin::connect("127.0.0.1:9092").await?;
//! admin.create_topic("orders", 3, &[("retention.ms", "86400000")]).await?;
//! for t in admin.list_topics().await? {
//!     println!("{} ({} partitions)", t.name, t.partitions);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Invariant: the client never depends on the broker or on glommio; it speaks only the protocol in
//! `mlog-wire` (`docs/protocol.md`).

#![warn(missing_docs)]

mod admin;
mod connection;
mod consumer;
mod error;
mod produce_frame;
mod producer;
mod routes;

pub use admin::{Admin, OffsetSpec, PartitionDescription, TopicDescription, TopicInfo};
pub use bytes::Bytes;
pub use connection::Connection;
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord};
pub use error::{ClientError, Result};
pub use mlog_wire::protocol::ErrorCode;
pub use producer::{Acks, Producer, ProducerConfig, RecordMetadata, SendFuture};
