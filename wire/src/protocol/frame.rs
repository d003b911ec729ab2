//! Framing: every request and response is a length-prefixed frame.
//!
//! ```text
//! request:  length u32 | api_key u16 | api_version u16 | correlation_id u32 | body
//! response: length u32 | correlation_id u32 | error_code i16 | body
//! ```
//!
//! `length` counts the bytes after itself. A receiver checks it against its `max_frame_bytes`
//! before allocating anything ([`check_frame`]); a frame that is too large or too short to hold a
//! header breaks framing, and the only safe answer is to close that connection. A response with a
//! non-zero `error_code` is a frame-level error (unsupported API or version, undecodable request):
//! its body is a `string` message. Otherwise the body is the API's response.

use bytes::{BufMut, BytesMut};

use super::codec::{DecodeError, Reader, Wire};
use super::error::ErrorCode;

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;
/// Bytes of a request header after the length.
pub const REQUEST_HEADER_BYTES: usize = 8;
/// Bytes of a response header after the length.
pub const RESPONSE_HEADER_BYTES: usize = 6;
/// Default limit of a frame's length field (a 1 MiB batch plus headroom for many partitions).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 << 20;

/// The APIs of the protocol. Numbers are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKey {
    /// Versions the broker serves; the handshake.
    ApiVersions = 0,
    /// Brokers, shards, topics, partitions and their owners.
    Metadata = 1,
    /// Create topics.
    CreateTopics = 2,
    /// Delete topics.
    DeleteTopics = 3,
    /// Append record batches.
    Produce = 4,
    /// Read record batches.
    Fetch = 5,
    /// Offsets by position (earliest, latest) or timestamp.
    ListOffsets = 6,
    /// Store consumer group offsets.
    OffsetCommit = 7,
    /// Read consumer group offsets.
    OffsetFetch = 8,
    /// Obtain an idempotent producer id.
    InitProducerId = 9,
}

impl ApiKey {
    /// Every API, in numeric order.
    pub const ALL: [ApiKey; 10] = [
        ApiKey::ApiVersions,
        ApiKey::Metadata,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::InitProducerId,
    ];

    /// The API with this number.
    pub fn from_u16(key: u16) -> Option<ApiKey> {
        ApiKey::ALL.get(key as usize).copied()
    }

    /// The versions this implementation speaks: `(min, max)`.
    pub fn versions(self) -> (u16, u16) {
        (0, 0)
    }
}

/// Why a frame cannot be read; the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field exceeds the receiver's limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// The length field is too small to hold a header.
    #[error("frame of {len} bytes is shorter than its header")]
    TooShort {
        /// The announced length.
        len: usize,
    },
}

/// Checks the frame at the start of `buf`: `Ok(None)` when more bytes are needed, `Ok(Some(n))` when
/// the first `n` bytes are a whole frame (length prefix included).
pub fn check_frame(
    buf: &[u8],
    header_bytes: usize,
    max_frame_bytes: usize,
) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.first_chunk::<LENGTH_BYTES>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    if len < header_bytes {
        return Err(FrameError::TooShort { len });
    }
    Ok((buf.len() >= LENGTH_BYTES + len).then_some(LENGTH_BYTES + len))
}

crate::wire_struct! {
    /// The header of every request.
    pub struct RequestHeader {
        /// Which API (an [`ApiKey`] number).
        pub api_key: u16,
        /// Which version of it.
        pub api_version: u16,
        /// Echoed in the response, so a client can match responses to requests.
        pub correlation_id: u32,
    }
}

crate::wire_struct! {
    /// The header of every response.
    pub struct ResponseHeader {
        /// The request's correlation id.
        pub correlation_id: u32,
        /// `None` (0), or a frame-level error whose body is a message string.
        pub error: ErrorCode,
    }
}

/// Reserves the length prefix in `out` and returns where it is, for `finish_frame`.
fn start_frame(out: &mut BytesMut) -> usize {
    let at = out.len();
    out.put_u32(0);
    at
}

/// Fills in the length prefix reserved by `start_frame`.
fn finish_frame(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at - LENGTH_BYTES) as u32;
    out[at..at + LENGTH_BYTES].copy_from_slice(&len.to_be_bytes());
}

/// Appends a whole request frame to `out`.
pub fn encode_request<'a>(out: &mut BytesMut, header: &RequestHeader, body: &impl Wire<'a>) {
    let at = start_frame(out);
    header.encode(out);
    body.encode(out);
    finish_frame(out, at);
}

/// Appends a whole successful response frame to `out`.
pub fn encode_response<'a>(out: &mut BytesMut, correlation_id: u32, body: &impl Wire<'a>) {
    let at = start_frame(out);
    ResponseHeader {
        correlation_id,
        error: ErrorCode::None,
    }
    .encode(out);
    body.encode(out);
    finish_frame(out, at);
}

/// Appends a frame-level error response to `out`.
pub fn encode_error_response(
    out: &mut BytesMut,
    correlation_id: u32,
    error: ErrorCode,
    message: &str,
) {
    let at = start_frame(out);
    ResponseHeader {
        correlation_id,
        error,
    }
    .encode(out);
    message.encode(out);
    finish_frame(out, at);
}

/// Splits a whole request frame (as `check_frame` delimited it) into its header and body.
pub fn decode_request(frame: &[u8]) -> Result<(RequestHeader, &[u8]), DecodeError> {
    let mut r = Reader::new(frame.get(LENGTH_BYTES..).unwrap_or_default());
    let header = RequestHeader::decode(&mut r, "request header")?;
    let body = r.take(r.remaining(), "request body")?;
    Ok((header, body))
}

/// Splits a whole response frame into its header and body.
pub fn decode_response(frame: &[u8]) -> Result<(ResponseHeader, &[u8]), DecodeError> {
    let mut r = Reader::new(frame.get(LENGTH_BYTES..).unwrap_or_default());
    let header = ResponseHeader::decode(&mut r, "response header")?;
    let body = r.take(r.remaining(), "response body")?;
    Ok((header, body))
}

/// Array items one request may hold in all (topics, partitions, names, configs). A broker serves at
/// most 10,000 topics and 10,000 partitions per request, each topic created with at most one entry
/// per config key (6 keys): at most 70,000 items, so this bounds what a request's counts can make
/// the broker allocate (about 10 MB) without refusing anything it would serve.
pub const MAX_REQUEST_ITEMS: usize = 1 << 17;

/// Decodes a whole body as `T`, refusing trailing bytes and more than `DEFAULT_MAX_ITEMS` array
/// items (responses: Metadata lists every partition).
pub fn decode_body<'a, T: Wire<'a>>(body: &'a [u8], what: &'static str) -> Result<T, DecodeError> {
    decode_body_bounded(body, what, super::codec::DEFAULT_MAX_ITEMS)
}

/// Decodes a whole request body as `T`, refusing trailing bytes and more than
/// [`MAX_REQUEST_ITEMS`] array items.
pub fn decode_request_body<'a, T: Wire<'a>>(
    body: &'a [u8],
    what: &'static str,
) -> Result<T, DecodeError> {
    decode_body_bounded(body, what, MAX_REQUEST_ITEMS)
}

fn decode_body_bounded<'a, T: Wire<'a>>(
    body: &'a [u8],
    what: &'static str,
    max_items: usize,
) -> Result<T, DecodeError> {
    let mut r = Reader::with_max_items(body, max_items);
    let value = T::decode(&mut r, what)?;
    r.finish(what)?;
    Ok(value)
}
