//! Request dispatch: decode the header, check the API and version, run the handler, encode the
//! answer. Every failure to decode becomes an error response; nothing here panics on input.

use std::rc::Rc;

use bytes::BytesMut;
use mlog_wire::protocol::frame::{
    decode_body, decode_request, encode_error_response, encode_response,
};
use mlog_wire::protocol::messages::*;
use mlog_wire::protocol::{ApiKey, DecodeError, ErrorCode};

use crate::mesh::{Op, Reply};
use crate::shard::{Shard, CONTROLLER};
use crate::topics;

/// The APIs this broker serves. The others answer `UnsupportedApi` until they are built.
pub(crate) const SERVED: &[ApiKey] = &[
    ApiKey::ApiVersions,
    ApiKey::Metadata,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
];

/// Handles one whole request frame, appending the response frame (if any) to `out`.
pub(crate) async fn handle(shard: &Rc<Shard>, frame: &[u8], out: &mut BytesMut) {
    let (header, body) = match decode_request(frame) {
        Ok(x) => x,
        Err(e) => {
            // The frame length was valid, so the header fits; answered rather than assumed.
            encode_error_response(out, 0, ErrorCode::InvalidRequest, &e.to_string());
            return;
        }
    };
    let id = header.correlation_id;
    let Some(api) = ApiKey::from_u16(header.api_key).filter(|k| SERVED.contains(k)) else {
        let msg = format!("API key {} is not served by this broker", header.api_key);
        encode_error_response(out, id, ErrorCode::UnsupportedApi, &msg);
        return;
    };
    let (min, max) = api.versions();
    if header.api_version < min || header.api_version > max {
        let msg = format!(
            "{api:?} v{} is not served (v{min}-v{max} are)",
            header.api_version
        );
        encode_error_response(out, id, ErrorCode::UnsupportedVersion, &msg);
        return;
    }
    if let Err(e) = serve_api(shard, api, id, body, out).await {
        out.clear();
        encode_error_response(out, id, ErrorCode::InvalidRequest, &e.to_string());
    }
}

/// Decodes the body of `api` and appends its response to `out`.
async fn serve_api(
    shard: &Rc<Shard>,
    api: ApiKey,
    id: u32,
    body: &[u8],
    out: &mut BytesMut,
) -> Result<(), DecodeError> {
    match api {
        ApiKey::ApiVersions => {
            decode_body::<ApiVersionsRequest>(body, "ApiVersionsRequest")?;
            encode_response(out, id, &api_versions());
        }
        ApiKey::Metadata => {
            let req = decode_body::<MetadataRequest>(body, "MetadataRequest")?;
            encode_response(out, id, &metadata(shard, req));
        }
        ApiKey::CreateTopics => {
            let req = decode_body::<CreateTopicsRequest>(body, "CreateTopicsRequest")?;
            let results = topic_change(shard, Op::Create(req.topics)).await;
            encode_response(out, id, &CreateTopicsResponse { results });
        }
        ApiKey::DeleteTopics => {
            let req = decode_body::<DeleteTopicsRequest>(body, "DeleteTopicsRequest")?;
            let results = topic_change(shard, Op::Delete(req.names)).await;
            encode_response(out, id, &DeleteTopicsResponse { results });
        }
        _ => encode_error_response(out, id, ErrorCode::UnsupportedApi, "not served"),
    }
    Ok(())
}

fn api_versions() -> ApiVersionsResponse {
    ApiVersionsResponse {
        apis: SERVED
            .iter()
            .map(|k| {
                let (min_version, max_version) = k.versions();
                ApiVersionRange {
                    api_key: *k as u16,
                    min_version,
                    max_version,
                }
            })
            .collect(),
    }
}

/// Every shard of this broker, and the requested topics (or all) with each partition's owner.
fn metadata(shard: &Shard, req: MetadataRequest) -> MetadataResponse {
    let table = shard.topics.borrow().clone();
    let shards = shard.mesh.shards;
    let describe = |t: &topics::TopicRecord| TopicMetadata {
        error: ErrorCode::None,
        name: t.name.clone(),
        partitions: (0..t.partitions)
            .map(|p| PartitionMetadata {
                error: ErrorCode::None,
                partition: p,
                leader: 0,
                shard: topics::owner(&t.name, p, shards) as u16,
                leader_epoch: 0,
            })
            .collect(),
        configs: t.configs.clone(),
    };
    let topics = match req.topics {
        None => table.topics.iter().map(describe).collect(),
        Some(names) => names
            .into_iter()
            .map(|name| match table.get(&name) {
                Some(t) => describe(t),
                None => TopicMetadata {
                    error: ErrorCode::UnknownTopicOrPartition,
                    name,
                    partitions: Vec::new(),
                    configs: Vec::new(),
                },
            })
            .collect(),
    };
    MetadataResponse {
        revision: table.revision,
        // Every shard listens on the same address today; shard-aware clients cannot yet pick a
        // shard by connecting (per-shard ports come with the produce and fetch paths).
        endpoints: (0..shards)
            .map(|s| ShardEndpoint {
                node_id: 0,
                shard: s as u16,
                host: shard.endpoint.ip().to_string(),
                port: shard.endpoint.port(),
            })
            .collect(),
        topics,
    }
}

/// Runs a topic change on the controller shard.
async fn topic_change(shard: &Rc<Shard>, op: Op) -> Vec<TopicResult> {
    let names: Vec<String> = match &op {
        Op::Create(t) => t.iter().map(|t| t.name.clone()).collect(),
        Op::Delete(n) => n.clone(),
        Op::ApplyTable(_) => Vec::new(),
    };
    match shard.mesh.call(shard, CONTROLLER, op).await {
        Ok(Reply::TopicResults(results)) => results,
        Ok(Reply::Applied) | Err(_) => names
            .into_iter()
            .map(|name| TopicResult {
                name,
                error: ErrorCode::Unknown,
                message: Some("the controller shard did not answer".into()),
            })
            .collect(),
    }
}
