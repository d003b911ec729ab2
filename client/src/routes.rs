//! Partition routing from Metadata: which listener (broker shard) owns each partition.
//!
//! A broker answers for every partition on any listener (it forwards between shards), so routing
//! is an optimization that never affects correctness: a partition whose owner shard has no
//! advertised listener goes to the bootstrap address.

use mlog_wire::protocol::messages::{MetadataRequest, MetadataResponse};
use mlog_wire::protocol::{ApiKey, ErrorCode};

use crate::connection::Connection;
use crate::error::{ClientError, Result};

/// The partitions of `topic`, in partition order (at least one, no gaps), each with the address of
/// its owner's listener.
pub(crate) async fn topic_routes(
    conn: &mut Connection,
    bootstrap: &str,
    topic: &str,
) -> Result<Vec<(u32, String)>> {
    let m: MetadataResponse = conn
        .request(
            ApiKey::Metadata,
            &MetadataRequest {
                topics: Some(vec![topic.to_string()]),
            },
        )
        .await?;
    let Some(t) = m.topics.into_iter().next() else {
        return Err(ClientError::Protocol("metadata without the topic".into()));
    };
    if t.error != ErrorCode::None {
        return Err(ClientError::broker(t.error, Some(topic.to_string())));
    }
    let mut routes: Vec<(u32, String)> = t
        .partitions
        .iter()
        .map(|p| {
            let addr = m.endpoints.iter().find(|e| e.shard == p.shard).map_or_else(
                || bootstrap.to_string(),
                |e| format!("{}:{}", e.host, e.port),
            );
            (p.partition, addr)
        })
        .collect();
    routes.sort_by_key(|r| r.0);
    if routes.is_empty() || routes.iter().enumerate().any(|(i, r)| r.0 != i as u32) {
        return Err(ClientError::Protocol(format!(
            "metadata of {topic} lists no partitions or skips one"
        )));
    }
    Ok(routes)
}
