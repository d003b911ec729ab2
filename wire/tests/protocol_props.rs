//! Protocol codec properties: every message round-trips, frames delimit correctly, and arbitrary
//! bytes never panic a decoder or make it allocate beyond the input.

use bytes::BytesMut;
use mlog_wire::protocol::codec::{RawBytes, Wire};
use mlog_wire::protocol::frame::{
    check_frame, decode_body, decode_request, decode_request_body, decode_response,
    encode_error_response, encode_request, encode_response, FrameError, MAX_REQUEST_ITEMS,
    REQUEST_HEADER_BYTES, RESPONSE_HEADER_BYTES,
};
use mlog_wire::protocol::messages::*;
use mlog_wire::protocol::{ApiKey, DecodeError, ErrorCode, RequestHeader};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{0,24}"
}

fn code() -> impl Strategy<Value = ErrorCode> {
    (0..ErrorCode::ALL.len()).prop_map(|i| ErrorCode::ALL[i])
}

fn config() -> impl Strategy<Value = ConfigEntry> {
    (name(), ".{0,16}").prop_map(|(key, value)| ConfigEntry { key, value })
}

fn metadata_response() -> impl Strategy<Value = MetadataResponse> {
    let endpoint = (any::<u32>(), any::<u16>(), name(), any::<u16>()).prop_map(
        |(node_id, shard, host, port)| ShardEndpoint {
            node_id,
            shard,
            host,
            port,
        },
    );
    let partition = (
        code(),
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
        any::<i32>(),
    )
        .prop_map(
            |(error, partition, leader, shard, leader_epoch)| PartitionMetadata {
                error,
                partition,
                leader,
                shard,
                leader_epoch,
            },
        );
    let topic = (
        code(),
        name(),
        prop::collection::vec(partition, 0..4),
        prop::collection::vec(config(), 0..3),
    )
        .prop_map(|(error, name, partitions, configs)| TopicMetadata {
            error,
            name,
            partitions,
            configs,
        });
    (
        any::<u64>(),
        prop::collection::vec(endpoint, 0..4),
        prop::collection::vec(topic, 0..4),
    )
        .prop_map(|(revision, endpoints, topics)| MetadataResponse {
            revision,
            endpoints,
            topics,
        })
}

/// Encodes, checks the encoding is exactly consumed, and returns the decoded value.
fn round_trip<'a, T: Wire<'a> + PartialEq + std::fmt::Debug>(
    value: &T,
    buf: &'a mut BytesMut,
) -> T {
    value.encode(buf);
    decode_body::<T>(&buf[..], "test").expect("decodes")
}

proptest! {
    #[test]
    fn metadata_round_trips(m in metadata_response()) {
        let mut buf = BytesMut::new();
        prop_assert_eq!(round_trip(&m, &mut buf), m);
    }

    #[test]
    fn produce_request_round_trips_borrowing_batches(
        acks in prop::sample::select(vec![0i8, 1, -1]),
        timeout_ms in any::<u32>(),
        topics in prop::collection::vec((name(), prop::collection::vec((any::<u32>(), prop::collection::vec(any::<u8>(), 0..200)), 0..4)), 0..4),
    ) {
        let req = ProduceRequest {
            acks,
            timeout_ms,
            topics: topics.iter().map(|(n, ps)| ProduceTopic {
                name: n.as_str(),
                partitions: ps.iter().map(|(p, data)| ProducePartition { partition: *p, records: RawBytes(data) }).collect(),
            }).collect(),
        };
        let mut buf = BytesMut::new();
        req.encode(&mut buf);
        let back: ProduceRequest<'_> = decode_body(&buf[..], "produce").unwrap();
        prop_assert_eq!(&back, &req);
        // Batches are borrowed from the frame, not copied.
        for t in &back.topics {
            for p in &t.partitions {
                let range = buf.as_ptr_range();
                prop_assert!(p.records.0.is_empty() || range.contains(&p.records.0.as_ptr()));
            }
        }
    }

    #[test]
    fn fetch_and_offsets_round_trip(
        max_wait_ms in any::<u32>(), min_bytes in any::<u32>(), max_bytes in any::<u32>(),
        parts in prop::collection::vec((any::<u32>(), any::<i64>(), any::<u32>()), 0..5),
        hw in any::<i64>(), data in prop::collection::vec(any::<u8>(), 0..300), err in code(),
    ) {
        let req = FetchRequest {
            max_wait_ms, min_bytes, max_bytes,
            topics: vec![FetchTopic {
                name: "t".into(),
                partitions: parts.iter().map(|&(partition, fetch_offset, max_bytes)| FetchPartition { partition, fetch_offset, max_bytes }).collect(),
            }],
        };
        let mut buf = BytesMut::new();
        prop_assert_eq!(round_trip(&req, &mut buf), req);
        let resp = FetchResponse { topics: vec![FetchTopicResponse { name: "t", partitions: vec![FetchPartitionResponse {
            partition: 3, error: err, high_watermark: hw, log_start_offset: 0, records: RawBytes(&data),
        }]}]};
        let mut buf = BytesMut::new();
        prop_assert_eq!(round_trip(&resp, &mut buf), resp);
        let lo = ListOffsetsResponse { topics: vec![ListOffsetsTopicResponse { name: "x".into(), partitions: vec![ListOffsetsPartitionResponse {
            partition: 1, error: err, offset: hw, log_start_offset: 0, log_end_offset: hw, high_watermark: hw,
        }]}]};
        let mut buf = BytesMut::new();
        prop_assert_eq!(round_trip(&lo, &mut buf), lo);
        let ip = InitProducerIdResponse { error: err, producer_id: hw, producer_epoch: max_wait_ms as i16 };
        let mut buf = BytesMut::new();
        prop_assert_eq!(round_trip(&ip, &mut buf), ip);
    }

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let b = &bytes[..];
        let _ = decode_body::<ApiVersionsRequest>(b, "x");
        let _ = decode_body::<ApiVersionsResponse>(b, "x");
        let _ = decode_body::<MetadataRequest>(b, "x");
        let _ = decode_body::<MetadataResponse>(b, "x");
        let _ = decode_body::<CreateTopicsRequest>(b, "x");
        let _ = decode_body::<CreateTopicsResponse>(b, "x");
        let _ = decode_body::<DeleteTopicsRequest>(b, "x");
        let _ = decode_body::<DeleteTopicsResponse>(b, "x");
        let _ = decode_body::<ProduceRequest<'_>>(b, "x");
        let _ = decode_body::<ProduceResponse>(b, "x");
        let _ = decode_body::<FetchRequest>(b, "x");
        let _ = decode_body::<FetchResponse<'_>>(b, "x");
        let _ = decode_body::<ListOffsetsRequest>(b, "x");
        let _ = decode_body::<ListOffsetsResponse>(b, "x");
        let _ = decode_body::<OffsetCommitRequest>(b, "x");
        let _ = decode_body::<OffsetCommitResponse>(b, "x");
        let _ = decode_body::<OffsetFetchRequest>(b, "x");
        let _ = decode_body::<OffsetFetchResponse>(b, "x");
        let _ = decode_body::<InitProducerIdRequest>(b, "x");
        let _ = decode_body::<InitProducerIdResponse>(b, "x");
        let _ = check_frame(b, REQUEST_HEADER_BYTES, 1 << 20);
        let _ = decode_request(b);
        let _ = decode_response(b);
    }

    #[test]
    fn every_truncation_of_a_request_is_an_error(m in metadata_response()) {
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        for k in 0..buf.len() {
            prop_assert!(decode_body::<MetadataResponse>(&buf[..k], "m").is_err());
        }
    }
}

#[test]
fn a_huge_count_is_refused_before_allocating() {
    // Claims 2^32-1 topics in 4 bytes: must fail at once, not reserve memory for them.
    let body = [0xff, 0xff, 0xff, 0xff];
    let err = decode_body::<DeleteTopicsRequest>(&body, "d").unwrap_err();
    assert!(matches!(err, DecodeError::Malformed { .. }), "{err:?}");
}

#[test]
fn item_counts_are_bounded_over_the_whole_message() {
    // Empty names take 2 bytes each on the wire but 24 in memory: a request is bounded by the items
    // it holds, not only by its bytes.
    let names = |n: usize| DeleteTopicsRequest {
        names: vec![String::new(); n],
    };
    let encode = |m: &DeleteTopicsRequest| {
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        buf
    };
    let at_limit = encode(&names(MAX_REQUEST_ITEMS));
    let decoded = decode_request_body::<DeleteTopicsRequest>(&at_limit, "d").unwrap();
    assert_eq!(decoded.names.len(), MAX_REQUEST_ITEMS);
    let over = encode(&names(MAX_REQUEST_ITEMS + 1));
    let err = decode_request_body::<DeleteTopicsRequest>(&over, "d").unwrap_err();
    assert!(matches!(err, DecodeError::Malformed { .. }), "{err:?}");
    // Responses get the larger default bound, which also counts nested arrays.
    assert!(decode_body::<DeleteTopicsRequest>(&over, "d").is_ok());
    let topics = |n: usize, partitions: usize| ProduceResponse {
        topics: (0..n)
            .map(|_| ProduceTopicResponse {
                name: String::new(),
                partitions: (0..partitions)
                    .map(|_| ProducePartitionResponse {
                        partition: 0,
                        error: ErrorCode::None,
                        base_offset: 0,
                        log_start_offset: 0,
                    })
                    .collect(),
            })
            .collect(),
    };
    let mut buf = BytesMut::new();
    topics(1 << 10, (1 << 10) - 1).encode(&mut buf);
    assert!(decode_body::<ProduceResponse>(&buf, "p").is_ok());
    buf.clear();
    topics(1 << 10, 1 << 10).encode(&mut buf);
    assert!(decode_body::<ProduceResponse>(&buf, "p").is_err());
}

#[test]
fn frames_are_delimited_and_limited() {
    let mut out = BytesMut::new();
    let header = RequestHeader {
        api_key: ApiKey::CreateTopics as u16,
        api_version: 0,
        correlation_id: 7,
    };
    let body = CreateTopicsRequest {
        topics: vec![NewTopic {
            name: "orders".into(),
            partitions: 3,
            configs: vec![],
        }],
    };
    encode_request(&mut out, &header, &body);
    let total = out.len();
    // Every prefix needs more bytes; the whole frame is delimited exactly, even with more behind it.
    for k in 0..total {
        assert_eq!(
            check_frame(&out[..k], REQUEST_HEADER_BYTES, 1 << 20),
            Ok(None)
        );
    }
    out.extend_from_slice(b"next frame");
    assert_eq!(
        check_frame(&out, REQUEST_HEADER_BYTES, 1 << 20),
        Ok(Some(total))
    );
    let (h, b) = decode_request(&out[..total]).unwrap();
    assert_eq!(h, header);
    assert_eq!(decode_body::<CreateTopicsRequest>(b, "c").unwrap(), body);
    // Oversized and undersized length fields break framing.
    assert_eq!(
        check_frame(&[0x10, 0, 0, 0], REQUEST_HEADER_BYTES, 1 << 20),
        Err(FrameError::TooLarge {
            len: 0x1000_0000,
            max: 1 << 20
        })
    );
    assert_eq!(
        check_frame(&[0, 0, 0, 3], REQUEST_HEADER_BYTES, 1 << 20),
        Err(FrameError::TooShort { len: 3 })
    );
    // Trailing bytes after a body are refused.
    let mut b = BytesMut::new();
    ApiVersionsRequest {}.encode(&mut b);
    b.extend_from_slice(&[1]);
    assert!(decode_body::<ApiVersionsRequest>(&b, "a").is_err());
}

#[test]
fn responses_carry_frame_level_errors_as_messages() {
    let mut out = BytesMut::new();
    encode_error_response(
        &mut out,
        9,
        ErrorCode::UnsupportedVersion,
        "Produce v3 is not served",
    );
    let n = check_frame(&out, RESPONSE_HEADER_BYTES, 1 << 20)
        .unwrap()
        .unwrap();
    let (h, body) = decode_response(&out[..n]).unwrap();
    assert_eq!(h.correlation_id, 9);
    assert_eq!(h.error, ErrorCode::UnsupportedVersion);
    assert_eq!(
        decode_body::<String>(body, "message").unwrap(),
        "Produce v3 is not served"
    );

    let mut out = BytesMut::new();
    let resp = ApiVersionsResponse {
        apis: ApiKey::ALL
            .iter()
            .map(|k| ApiVersionRange {
                api_key: *k as u16,
                min_version: 0,
                max_version: 0,
            })
            .collect(),
    };
    encode_response(&mut out, 1, &resp);
    let (h, body) = decode_response(&out).unwrap();
    assert_eq!(h.error, ErrorCode::None);
    assert_eq!(decode_body::<ApiVersionsResponse>(body, "v").unwrap(), resp);
}

#[test]
fn api_keys_are_stable_numbers() {
    for (i, k) in ApiKey::ALL.iter().enumerate() {
        assert_eq!(*k as u16 as usize, i);
        assert_eq!(ApiKey::from_u16(i as u16), Some(*k));
    }
    assert_eq!(ApiKey::from_u16(ApiKey::ALL.len() as u16), None);
}
