//! mlog-client: the Rust client of mlog, on tokio.
//!
//! Status: [`Admin`] (topics, offsets, cluster metadata) over a [`Connection`]. The batching
//! producer and the consumer come next (issue #5).
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
mod error;
mod producer;

pub use admin::{Admin, OffsetSpec, PartitionDescription, TopicDescription, TopicInfo};
pub use connection::Connection;
pub use error::{ClientError, Result};
pub use mlog_wire::protocol::ErrorCode;
pub use producer::{Acks, Producer, ProducerConfig, RecordMetadata};
