//! One connection to a broker: framed requests, answered in order.
//!
//! Invariant: a response is accepted only if its correlation id is the request's; a frame longer
//! than `max_frame_bytes` is refused before it is buffered.

use std::io::IoSlice;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mlog_wire::protocol::frame::{
    check_frame, decode_body, decode_response, encode_request, DEFAULT_MAX_FRAME_BYTES,
    RESPONSE_HEADER_BYTES,
};
use mlog_wire::protocol::messages::{
    ListOffsetsPartition, ListOffsetsPartitionResponse, ListOffsetsRequest, ListOffsetsResponse,
    ListOffsetsTopic, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP,
};
use mlog_wire::protocol::{ApiKey, ErrorCode, RequestHeader, Wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::admin::OffsetSpec;
use crate::error::{ClientError, Result};

/// Largest request buffer kept for reuse between requests.
const KEEP_OUT_BYTES: usize = 16 << 20;

/// A connection to one broker listener, for requests the higher-level types do not make (any message
/// of `docs/protocol.md`).
///
/// ```no_run
/// # async fn example() -> Result<(), mlog_client::ClientError> {
/// use mlog_client::Connection;
/// use mlog_wire::protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
/// use mlog_wire::protocol::ApiKey;
/// let mut conn = Connection::connect("127.0.0.1:9092").await?;
/// let versions: ApiVersionsResponse = conn.request(ApiKey::ApiVersions, &ApiVersionsRequest {}).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    addr: String,
    next_id: u32,
    buf: BytesMut,
    /// The request being written; kept between requests so that its capacity is reused.
    out: BytesMut,
    max_frame_bytes: usize,
    /// The stream failed, or a write was cancelled part-way (a frame may be half sent): the next
    /// write first connects again.
    broken: bool,
}

impl Connection {
    /// Connects to `addr` (for example `"127.0.0.1:9092"`).
    pub async fn connect(addr: impl ToSocketAddrs + std::fmt::Display) -> Result<Connection> {
        let name = addr.to_string();
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Io {
                addr: name.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            stream,
            addr: name,
            next_id: 0,
            buf: BytesMut::with_capacity(64 << 10),
            out: BytesMut::new(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            broken: false,
        })
    }

    /// Connects again if the stream broke, so that a long-lived connection (an `Admin`'s, a
    /// consumer's to its bootstrap broker) outlives a broker restart or a cancelled request: the
    /// call that meets the failure reports it, the next one works. Answers still owed on the old
    /// stream are lost with it.
    async fn reopen_if_broken(&mut self) -> Result<()> {
        if self.broken {
            *self = Connection::connect(self.addr.as_str()).await?;
        }
        Ok(())
    }

    /// Makes the next request connect again first (the broker behind it may have restarted).
    pub(crate) fn reconnect_next(&mut self) {
        self.broken = true;
    }

    /// The address this connection was made to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request and returns the body of its (successful) response, for responses that
    /// borrow from it (`FetchResponse`). A frame-level error becomes `ClientError::Broker`.
    pub async fn request_raw<'a>(&mut self, api: ApiKey, body: &impl Wire<'a>) -> Result<Bytes> {
        let id = self.write_request(api, body).await?;
        self.response(id).await
    }

    /// Reads the body of the (successful) response to request `id`. Cancellation-safe: bytes read
    /// stay buffered, so a later call picks up where a dropped one stopped.
    pub(crate) async fn response(&mut self, id: u32) -> Result<Bytes> {
        // Responses come in request order; one for an earlier request whose caller gave up (its
        // future was dropped) is read and discarded.
        let (frame, header, body) = loop {
            let frame = self.read_frame().await?;
            let (header, body) = decode_response(&frame)?;
            let (header, range) = (header, frame.slice_ref(body));
            if header.correlation_id == id {
                break (frame, header, range);
            }
            if header.correlation_id.wrapping_sub(id) as i32 > 0 {
                return Err(ClientError::Protocol(format!(
                    "response {} to request {id}",
                    header.correlation_id
                )));
            }
        };
        let body = &body[..];
        if header.error != ErrorCode::None {
            let message = decode_body::<String>(body, "error message").ok();
            return Err(ClientError::broker(header.error, message));
        }
        Ok(frame.slice_ref(body))
    }

    /// Sends a request that gets no response (a Produce with acks=0).
    pub async fn send_only<'a>(&mut self, api: ApiKey, body: &impl Wire<'a>) -> Result<()> {
        self.write_request(api, body).await.map(|_| ())
    }

    /// The correlation id of the next request, taken (for requests encoded by the caller).
    pub(crate) fn take_correlation_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Writes one request frame given as pieces, with vectored writes (no copy into one buffer).
    pub(crate) async fn write_parts(&mut self, parts: &[&[u8]]) -> Result<()> {
        self.reopen_if_broken().await?;
        self.broken = true; // until the whole frame is written
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        IoSlice::advance_slices(&mut rest, 0); // skip leading empty pieces
        while !rest.is_empty() {
            let n = match self.stream.write_vectored(rest).await {
                Ok(0) => return Err(self.io(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => n,
                Err(e) => return Err(self.io(e)),
            };
            IoSlice::advance_slices(&mut rest, n);
        }
        self.broken = false;
        Ok(())
    }

    /// Encodes and writes one request (version 0) under the next correlation id, returned.
    pub(crate) async fn write_request<'a>(
        &mut self,
        api: ApiKey,
        body: &impl Wire<'a>,
    ) -> Result<u32> {
        self.reopen_if_broken().await?;
        let id = self.take_correlation_id();
        let header = RequestHeader {
            api_key: api as u16,
            api_version: 0,
            correlation_id: id,
        };
        self.out.clear();
        encode_request(&mut self.out, &header, body);
        self.broken = true; // until the whole frame is written
        let written = self.stream.write_all(&self.out).await;
        if self.out.capacity() > KEEP_OUT_BYTES {
            self.out = BytesMut::new(); // do not pin a rare huge request's buffer
        }
        written.map_err(|e| self.io(e))?;
        self.broken = false;
        Ok(id)
    }

    /// Looks up one offset of a partition (ListOffsets) and returns the partition's answer.
    pub(crate) async fn list_offset(
        &mut self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<ListOffsetsPartitionResponse> {
        let timestamp = match spec {
            OffsetSpec::Earliest => EARLIEST_TIMESTAMP,
            OffsetSpec::Latest => LATEST_TIMESTAMP,
            OffsetSpec::Timestamp(ts) => ts,
        };
        let req = ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: topic.to_string(),
                partitions: vec![ListOffsetsPartition {
                    partition,
                    timestamp,
                }],
            }],
        };
        let resp: ListOffsetsResponse = self.request(ApiKey::ListOffsets, &req).await?;
        let p = resp
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .next()
            .ok_or_else(|| ClientError::Protocol("empty ListOffsets response".into()))?;
        match p.error {
            ErrorCode::None => Ok(p),
            code => Err(ClientError::broker(code, None)),
        }
    }

    /// Runs `call` on this connection, giving up after `limit`: a stalled broker must not stall the
    /// caller for good. On expiry the connection is marked broken (an answer may still come), so
    /// the next request connects again; the error is an I/O one (retriable).
    pub(crate) async fn within<T>(
        &mut self,
        limit: Duration,
        call: impl AsyncFnOnce(&mut Connection) -> Result<T>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, call(self)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.broken = true;
                Err(self.io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {limit:?}"),
                )))
            }
        }
    }

    /// Sends one request and decodes its response.
    pub async fn request<'a, Resp: for<'b> Wire<'b>>(
        &mut self,
        api: ApiKey,
        body: &impl Wire<'a>,
    ) -> Result<Resp> {
        let body = self.request_raw(api, body).await?;
        Ok(decode_body(&body, "response")?)
    }

    async fn read_frame(&mut self) -> Result<Bytes> {
        let frame = self.read_frame_inner().await;
        if frame.is_err() {
            self.broken = true; // bytes of a frame may be left unread: the stream is out of step
        }
        frame
    }

    async fn read_frame_inner(&mut self) -> Result<Bytes> {
        loop {
            if let Some(n) = check_frame(&self.buf, RESPONSE_HEADER_BYTES, self.max_frame_bytes)? {
                return Ok(self.buf.split_to(n).freeze());
            }
            self.buf.reserve(64 << 10);
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(self.io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            addr: self.addr.clone(),
            source,
        }
    }
}
