//! Request dispatch: decode the header, check the API and version, run the handler, encode the
//! answer. Every failure to decode becomes an error response; nothing here panics on input.

use bytes::BytesMut;
use mlog_wire::protocol::frame::{
    decode_body, decode_request, encode_error_response, encode_response,
};
use mlog_wire::protocol::messages::{ApiVersionRange, ApiVersionsRequest, ApiVersionsResponse};
use mlog_wire::protocol::{ApiKey, ErrorCode};

use crate::shard::ShardContext;

/// The APIs this broker serves. The others answer `UnsupportedApi` until they are built.
pub(crate) const SERVED: &[ApiKey] = &[ApiKey::ApiVersions];

/// Handles one whole request frame, appending the response frame (if any) to `out`.
pub(crate) async fn handle(_ctx: &ShardContext, frame: &[u8], out: &mut BytesMut) {
    let (header, body) = match decode_request(frame) {
        Ok(x) => x,
        Err(e) => {
            // The frame length was valid, so the header fits; this is unreachable in practice but
            // answered rather than assumed.
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
    match api {
        ApiKey::ApiVersions => {
            match decode_body::<ApiVersionsRequest>(body, "ApiVersionsRequest") {
                Ok(_) => encode_response(out, id, &api_versions()),
                Err(e) => encode_error_response(out, id, ErrorCode::InvalidRequest, &e.to_string()),
            }
        }
        _ => encode_error_response(out, id, ErrorCode::UnsupportedApi, "not served"),
    }
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
