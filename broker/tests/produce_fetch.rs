//! Produce, fetch and list offsets against the real broker process, across both shards, and a
//! crash test: acks=all producers and repeated `kill -9`.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use mlog_wire::protocol::messages::*;
use mlog_wire::protocol::{ApiKey, ErrorCode};
use mlog_wire::{NewRecord, RecordBatch, RecordBatchBuilder};

fn batch(tag: &str, records: usize, ts: i64) -> Vec<u8> {
    let mut b = RecordBatchBuilder::new();
    for i in 0..records {
        let value = format!("{tag}-{i}-{}", "v".repeat(i % 7));
        b.push(NewRecord::new(
            ts + i as i64,
            Some(tag.as_bytes()),
            Some(value.as_bytes()),
        ))
        .unwrap();
    }
    b.build().unwrap()
}

/// A Produce request with one partition's records, as `send_only` and `call` take it.
fn produce_request<'a>(
    topic: &'a str,
    partition: u32,
    acks: i8,
    records: &'a [u8],
) -> ProduceRequest<'a> {
    ProduceRequest {
        acks,
        timeout_ms: 10_000,
        topics: vec![ProduceTopic {
            name: topic,
            partitions: vec![ProducePartition {
                partition,
                records: mlog_wire::protocol::RawBytes(records),
            }],
        }],
    }
}

fn produce(
    s: &mut std::net::TcpStream,
    topic: &str,
    partition: u32,
    acks: i8,
    records: &[u8],
) -> ProducePartitionResponse {
    let r: ProduceResponse = call(
        s,
        ApiKey::Produce,
        11,
        &produce_request(topic, partition, acks, records),
    );
    r.topics
        .into_iter()
        .next()
        .unwrap()
        .partitions
        .into_iter()
        .next()
        .unwrap()
}

/// Fetches one partition; returns (error, high watermark, raw batch bytes).
fn fetch(
    s: &mut std::net::TcpStream,
    topic: &str,
    partition: u32,
    offset: i64,
    max_wait_ms: u32,
    min_bytes: u32,
) -> (ErrorCode, i64, Vec<u8>) {
    let req = FetchRequest {
        max_wait_ms,
        min_bytes,
        max_bytes: 4 << 20,
        topics: vec![FetchTopic {
            name: topic.into(),
            partitions: vec![FetchPartition {
                partition,
                fetch_offset: offset,
                max_bytes: 1 << 20,
            }],
        }],
    };
    call_owned(s, ApiKey::Fetch, 12, &req, |body| {
        let r: FetchResponse<'_> = mlog_wire::protocol::frame::decode_body(body, "fetch").unwrap();
        let p = &r.topics[0].partitions[0];
        (p.error, p.high_watermark, p.records.0.to_vec())
    })
}

fn split(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let b = RecordBatch::parse(data).expect("fetched batches are valid");
        out.push(b.as_bytes().to_vec());
        data = &data[b.total_len()..];
    }
    out
}

fn stored(batch: &[u8], base: i64) -> Vec<u8> {
    let mut b = batch.to_vec();
    mlog_wire::set_base_offset(&mut b, base);
    b
}

#[test]
fn produce_then_fetch_byte_for_byte_on_every_partition_and_acks_level() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    assert_eq!(create(&mut s, "events", 4, &[]).error, ErrorCode::None);
    for p in 0..4u32 {
        let mut expected = Vec::new();
        for (i, acks) in [-1i8, 1, -1, 1].into_iter().enumerate() {
            let b = batch(&format!("p{p}-b{i}"), 3, 1000 * i as i64);
            let r = produce(&mut s, "events", p, acks, &b);
            assert_eq!(r.error, ErrorCode::None);
            assert_eq!(r.base_offset, 3 * i as i64);
            expected.push(stored(&b, r.base_offset));
        }
        // acks=0: no response; the next request's answer proves it was processed in order.
        let b0 = batch(&format!("p{p}-fire"), 2, 9000);
        send_only(
            &mut s,
            ApiKey::Produce,
            99,
            &ProduceRequest {
                acks: 0,
                timeout_ms: 1000,
                topics: vec![ProduceTopic {
                    name: "events",
                    partitions: vec![ProducePartition {
                        partition: p,
                        records: mlog_wire::protocol::RawBytes(&b0),
                    }],
                }],
            },
        );
        expected.push(stored(&b0, 12));
        // Requests on one connection are served in order: this answer means the fire-and-forget
        // produce above was processed.
        metadata(&mut s, None);
        // Read it all back from another connection (maybe the other shard): byte for byte. The
        // acks=0 and acks=1 batches become visible with the group commit that follows them, so the
        // fetch waits (long poll) until everything is there.
        let mut other = broker.connect();
        let all_bytes = expected.iter().map(Vec::len).sum::<usize>() as u32;
        let (err, hw, data) = fetch(&mut other, "events", p, 0, 10_000, all_bytes);
        assert_eq!(err, ErrorCode::None);
        assert_eq!(hw, 14);
        assert_eq!(split(&data), expected, "partition {p}");
        // Offsets.
        let lo: ListOffsetsResponse = call(
            &mut other,
            ApiKey::ListOffsets,
            13,
            &ListOffsetsRequest {
                topics: vec![ListOffsetsTopic {
                    name: "events".into(),
                    partitions: vec![
                        ListOffsetsPartition {
                            partition: p,
                            timestamp: EARLIEST_TIMESTAMP,
                        },
                        ListOffsetsPartition {
                            partition: p,
                            timestamp: LATEST_TIMESTAMP,
                        },
                        ListOffsetsPartition {
                            partition: p,
                            timestamp: 2000,
                        },
                        ListOffsetsPartition {
                            partition: p,
                            timestamp: 1_000_000,
                        },
                    ],
                }],
            },
        );
        let offs: Vec<i64> = lo.topics[0].partitions.iter().map(|x| x.offset).collect();
        assert_eq!(offs, vec![0, 14, 6, -1]);
        // Out of range.
        assert_eq!(
            fetch(&mut other, "events", p, 15, 0, 0).0,
            ErrorCode::OffsetOutOfRange
        );
    }
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn bad_produces_get_errors_while_another_client_keeps_producing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut good = broker.connect();
    assert_eq!(
        create(&mut good, "t", 2, &[("max.message.bytes", "4096")]).error,
        ErrorCode::None
    );
    let mut bad = broker.connect();
    let mut corrupt = batch("x", 2, 0);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    for round in 0..5 {
        assert_eq!(
            produce(&mut bad, "t", 0, -1, &corrupt).error,
            ErrorCode::CorruptBatch
        );
        assert_eq!(
            produce(&mut bad, "t", 1, -1, &batch("big", 400, 0)).error,
            ErrorCode::MessageTooLarge
        );
        assert_eq!(
            produce(&mut bad, "nope", 0, -1, &batch("y", 1, 0)).error,
            ErrorCode::UnknownTopicOrPartition
        );
        assert_eq!(
            produce(&mut bad, "t", 7, -1, &batch("y", 1, 0)).error,
            ErrorCode::UnknownTopicOrPartition
        );
        assert_eq!(
            produce(&mut bad, "t", 0, 5, &batch("y", 1, 0)).error,
            ErrorCode::InvalidAcks
        );
        let r = produce(&mut good, "t", 0, -1, &batch("ok", 1, 0));
        assert_eq!((r.error, r.base_offset), (ErrorCode::None, round));
    }
    // A deleted topic refuses produces.
    let _: DeleteTopicsResponse = call(
        &mut good,
        ApiKey::DeleteTopics,
        3,
        &DeleteTopicsRequest {
            names: vec!["t".into()],
        },
    );
    assert_eq!(
        produce(&mut good, "t", 0, -1, &batch("late", 1, 0)).error,
        ErrorCode::UnknownTopicOrPartition
    );
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn a_long_poll_fetch_is_woken_by_the_append() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    assert_eq!(create(&mut s, "poll", 2, &[]).error, ErrorCode::None);
    for p in 0..2u32 {
        let mut reader = broker.connect();
        let start = Instant::now();
        let waiter = std::thread::spawn(move || {
            let r = fetch(&mut reader, "poll", p, 0, 10_000, 1);
            (r, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        let b = batch("wake", 1, 0);
        assert_eq!(produce(&mut s, "poll", p, 1, &b).error, ErrorCode::None);
        let ((err, _, data), waited) = waiter.join().unwrap();
        assert_eq!(err, ErrorCode::None);
        assert_eq!(split(&data), vec![stored(&b, 0)]);
        assert!(
            waited < Duration::from_secs(8),
            "woken by the append, not the timeout ({waited:?})"
        );
        assert!(
            waited >= Duration::from_millis(250),
            "it did wait for data ({waited:?})"
        );
    }
    // With nothing to wait for, the timeout answers with no data.
    let start = Instant::now();
    let (err, _, data) = fetch(&mut s, "poll", 0, 1, 200, 1);
    assert_eq!(err, ErrorCode::None);
    assert!(data.is_empty());
    assert!(start.elapsed() >= Duration::from_millis(180));
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn a_long_poll_over_both_shards_waits_until_min_bytes_arrived_in_all() {
    // One fetch names a partition of each shard and wants more than one batch: the first append
    // wakes it, it reads, still has too little, and waits again from what it saw; the second append
    // (on the other shard) completes it. Each wait is one per owner shard, cancelled once it ends.
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    assert_eq!(create(&mut s, "both", 2, &[]).error, ErrorCode::None);
    let one = batch("first", 1, 0);
    let two = batch("second", 1, 0);
    let min_bytes = (one.len() + two.len()) as u32;
    let mut reader = broker.connect();
    let start = Instant::now();
    let waiter = std::thread::spawn(move || {
        let req = FetchRequest {
            max_wait_ms: 20_000,
            min_bytes,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                name: "both".into(),
                partitions: (0..2)
                    .map(|partition| FetchPartition {
                        partition,
                        fetch_offset: 0,
                        max_bytes: 1 << 20,
                    })
                    .collect(),
            }],
        };
        let sizes = call_owned(&mut reader, ApiKey::Fetch, 13, &req, |body| {
            let r: FetchResponse<'_> =
                mlog_wire::protocol::frame::decode_body(body, "fetch").unwrap();
            r.topics[0]
                .partitions
                .iter()
                .map(|p| (p.error, p.records.0.len()))
                .collect::<Vec<_>>()
        });
        (sizes, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(produce(&mut s, "both", 0, -1, &one).error, ErrorCode::None);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(produce(&mut s, "both", 1, -1, &two).error, ErrorCode::None);
    let (sizes, waited) = waiter.join().unwrap();
    assert_eq!(
        sizes,
        vec![(ErrorCode::None, one.len()), (ErrorCode::None, two.len())]
    );
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(10),
        "answered once both appends arrived ({waited:?})"
    );
    api_versions_ok(&mut s, 14);
    assert_eq!(broker.terminate(), 0);
}

/// Fetches a whole partition from offset 0.
fn fetch_all(s: &mut std::net::TcpStream, topic: &str, partition: u32) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut offset = 0i64;
    loop {
        let (err, hw, data) = fetch(s, topic, partition, offset, 0, 0);
        assert_eq!(err, ErrorCode::None);
        let batches = split(&data);
        if batches.is_empty() {
            assert_eq!(offset, hw, "no data below the high watermark");
            return out;
        }
        for b in batches {
            let parsed = RecordBatch::parse(&b).unwrap();
            if parsed.last_offset() >= offset {
                assert_eq!(parsed.base_offset(), offset, "offsets are contiguous");
                offset = parsed.next_offset();
                out.push(b);
            }
        }
    }
}

#[test]
fn kill_9_never_loses_an_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let partitions = 4u32;
    {
        let broker = Broker::start(dir.path(), &[]);
        let mut s = broker.connect();
        assert_eq!(
            create(&mut s, "durable", partitions, &[]).error,
            ErrorCode::None
        );
        // kill -9 right away: the topic must survive too.
    }
    let mut acked: Vec<(u32, i64, Vec<u8>)> = Vec::new();
    let mut seed = 0x9e37_79b9_u64;
    for round in 0..20u32 {
        let broker = Broker::start(dir.path(), &[]);
        let producers: Vec<_> = (0..partitions)
            .map(|p| {
                let mut s = broker.connect();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    for i in 0.. {
                        let b = batch(&format!("r{round}-p{p}-{i}"), 1 + (i % 4), i as i64);
                        let req = ProduceRequest {
                            acks: -1,
                            timeout_ms: 10_000,
                            topics: vec![ProduceTopic {
                                name: "durable",
                                partitions: vec![ProducePartition {
                                    partition: p,
                                    records: mlog_wire::protocol::RawBytes(&b),
                                }],
                            }],
                        };
                        if std::io::Write::write_all(
                            &mut s,
                            &request(ApiKey::Produce, i as u32, &req),
                        )
                        .is_err()
                        {
                            break;
                        }
                        let Some(body) = try_read_response(&mut s) else {
                            break;
                        };
                        let r: ProduceResponse =
                            mlog_wire::protocol::frame::decode_body(&body, "produce").unwrap();
                        let r = &r.topics[0].partitions[0];
                        assert_eq!(r.error, ErrorCode::None);
                        got.push((p, r.base_offset, stored(&b, r.base_offset)));
                    }
                    got
                })
            })
            .collect();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(100 + seed % 300));
        drop(broker); // SIGKILL
        for t in producers {
            acked.extend(t.join().unwrap());
        }
    }
    assert!(
        acked.len() > 100,
        "only {} acknowledged batches",
        acked.len()
    );
    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    for p in 0..partitions {
        let stored_batches = fetch_all(&mut s, "durable", p);
        let by_offset: std::collections::HashMap<i64, &Vec<u8>> = stored_batches
            .iter()
            .map(|b| (RecordBatch::parse(b).unwrap().base_offset(), b))
            .collect();
        for (_, offset, bytes) in acked.iter().filter(|a| a.0 == p) {
            assert_eq!(
                by_offset.get(offset).map(|b| b.as_slice()),
                Some(bytes.as_slice()),
                "partition {p} offset {offset}"
            );
        }
    }
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn group_offsets_are_committed_fetched_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let commit = |s: &mut std::net::TcpStream,
                  group: &str,
                  entries: &[(&str, u32, i64)]|
     -> Vec<ErrorCode> {
        let mut topics: Vec<CommitTopic> = Vec::new();
        for (t, p, o) in entries {
            let part = CommitPartition {
                partition: *p,
                offset: *o,
                metadata: format!("m{o}"),
            };
            match topics.iter_mut().find(|x| x.name == *t) {
                Some(x) => x.partitions.push(part),
                None => topics.push(CommitTopic {
                    name: t.to_string(),
                    partitions: vec![part],
                }),
            }
        }
        let r: OffsetCommitResponse = call(
            s,
            ApiKey::OffsetCommit,
            21,
            &OffsetCommitRequest {
                group: group.into(),
                topics,
            },
        );
        r.topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error))
            .collect()
    };
    let fetch_offsets =
        |s: &mut std::net::TcpStream, group: &str| -> Vec<(String, u32, i64, String)> {
            let r: OffsetFetchResponse = call(
                s,
                ApiKey::OffsetFetch,
                22,
                &OffsetFetchRequest {
                    group: group.into(),
                    topics: None,
                },
            );
            assert_eq!(r.error, ErrorCode::None);
            r.topics
                .into_iter()
                .flat_map(|t| {
                    t.partitions
                        .into_iter()
                        .map(move |p| (t.name.clone(), p.partition, p.offset, p.metadata))
                })
                .collect()
        };
    {
        let broker = Broker::start(dir.path(), &[]);
        let mut s = broker.connect();
        assert_eq!(create(&mut s, "a", 3, &[]).error, ErrorCode::None);
        assert_eq!(
            commit(&mut s, "g1", &[("a", 0, 5), ("a", 2, 9)]),
            vec![ErrorCode::None; 2]
        );
        assert_eq!(commit(&mut s, "g1", &[("a", 0, 7)]), vec![ErrorCode::None]);
        assert_eq!(
            commit(&mut s, "g2", &[("a", 1, 1), ("nope", 0, 1), ("a", 9, 1)]),
            vec![
                ErrorCode::None,
                ErrorCode::UnknownTopicOrPartition,
                ErrorCode::UnknownTopicOrPartition
            ]
        );
        assert_eq!(
            commit(&mut s, "bad group", &[("a", 0, 1)]),
            vec![ErrorCode::InvalidGroup]
        );
        let r: OffsetFetchResponse = call(
            &mut s,
            ApiKey::OffsetFetch,
            23,
            &OffsetFetchRequest {
                group: "bad group".into(),
                topics: None,
            },
        );
        assert_eq!(r.error, ErrorCode::InvalidGroup);
        // Specific partitions, with -1 where nothing was stored.
        let r: OffsetFetchResponse = call(
            &mut s,
            ApiKey::OffsetFetch,
            24,
            &OffsetFetchRequest {
                group: "g1".into(),
                topics: Some(vec![OffsetFetchTopic {
                    name: "a".into(),
                    partitions: vec![0, 1],
                }]),
            },
        );
        let got: Vec<i64> = r.topics[0].partitions.iter().map(|p| p.offset).collect();
        assert_eq!(got, vec![7, -1]);
        // Each partition is answered once, however often it is asked for.
        let r: OffsetFetchResponse = call(
            &mut s,
            ApiKey::OffsetFetch,
            26,
            &OffsetFetchRequest {
                group: "g1".into(),
                topics: Some(vec![
                    OffsetFetchTopic {
                        name: "a".into(),
                        partitions: vec![0; 1000],
                    },
                    OffsetFetchTopic {
                        name: "a".into(),
                        partitions: vec![0, 2, 2],
                    },
                ]),
            },
        );
        let got: Vec<(u32, i64)> = r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition, p.offset))
            .collect();
        assert_eq!((r.topics.len(), got), (1, vec![(0, 7), (2, 9)]));
        // Metadata over 4096 bytes is refused for its partition only.
        let r: OffsetCommitResponse = call(
            &mut s,
            ApiKey::OffsetCommit,
            27,
            &OffsetCommitRequest {
                group: "g3".into(),
                topics: vec![CommitTopic {
                    name: "a".into(),
                    partitions: vec![
                        CommitPartition {
                            partition: 0,
                            offset: 1,
                            metadata: "m".repeat(4097),
                        },
                        CommitPartition {
                            partition: 1,
                            offset: 2,
                            metadata: "m".repeat(4096),
                        },
                    ],
                }],
            },
        );
        let errors: Vec<ErrorCode> = r.topics[0].partitions.iter().map(|p| p.error).collect();
        assert_eq!(
            errors,
            vec![ErrorCode::OffsetMetadataTooLarge, ErrorCode::None]
        );
        // kill -9: commits were fsynced before they were acknowledged.
    }
    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    assert_eq!(
        fetch_offsets(&mut s, "g1"),
        vec![
            ("a".to_string(), 0, 7, "m7".to_string()),
            ("a".to_string(), 2, 9, "m9".to_string())
        ]
    );
    assert_eq!(
        fetch_offsets(&mut s, "g2"),
        vec![("a".to_string(), 1, 1, "m1".to_string())]
    );
    assert!(fetch_offsets(&mut s, "nobody").is_empty());
    assert_eq!(
        fetch_offsets(&mut s, "g3"),
        vec![("a".to_string(), 1, 2, "m".repeat(4096))]
    );
    // A deleted topic's offsets go with it: created again, it starts with none, also after a restart.
    assert_eq!(
        call::<DeleteTopicsResponse>(
            &mut s,
            ApiKey::DeleteTopics,
            25,
            &DeleteTopicsRequest {
                names: vec!["a".into()]
            }
        )
        .results[0]
            .error,
        ErrorCode::None
    );
    assert_eq!(create(&mut s, "a", 3, &[]).error, ErrorCode::None);
    assert!(fetch_offsets(&mut s, "g1").is_empty());
    assert!(fetch_offsets(&mut s, "g2").is_empty());
    assert_eq!(commit(&mut s, "g2", &[("a", 1, 3)]), vec![ErrorCode::None]);
    assert_eq!(broker.terminate(), 0);
    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    assert!(fetch_offsets(&mut s, "g1").is_empty());
    assert_eq!(
        fetch_offsets(&mut s, "g2"),
        vec![("a".to_string(), 1, 3, "m3".to_string())]
    );
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn metadata_advertises_each_shards_own_listener_and_it_serves_the_owned_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    assert_eq!(create(&mut s, "direct", 6, &[]).error, ErrorCode::None);
    let m = metadata(&mut s, Some(vec!["direct".into()]));
    assert_eq!(m.endpoints.len(), 2);
    let ports: std::collections::BTreeSet<u16> = m.endpoints.iter().map(|e| e.port).collect();
    assert_eq!(ports.len(), 2, "each shard has its own port");
    assert!(!ports.contains(&broker.addr.port()));
    for p in &m.topics[0].partitions {
        let e = m
            .endpoints
            .iter()
            .find(|e| e.shard == p.shard)
            .expect("owner's endpoint");
        let addr: std::net::SocketAddr = format!("{}:{}", e.host, e.port).parse().unwrap();
        let mut owner = std::net::TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
        owner.set_read_timeout(Some(TIMEOUT)).unwrap();
        let b = batch("direct", 2, 0);
        let r = produce(&mut owner, "direct", p.partition, -1, &b);
        assert_eq!((r.error, r.base_offset), (ErrorCode::None, 0));
        assert_eq!(
            split(&fetch(&mut owner, "direct", p.partition, 0, 0, 0).2),
            vec![stored(&b, 0)]
        );
    }
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn retention_runs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--retention-check-ms", "100"]);
    let mut s = broker.connect();
    let configs = [
        ("segment.bytes", "65536"),
        ("max.message.bytes", "16384"),
        ("retention.bytes", "131072"),
    ];
    assert_eq!(create(&mut s, "short", 1, &configs).error, ErrorCode::None);
    // Current timestamps, so that only retention.bytes deletes (1970's would also expire by age and
    // leave nothing but the newest batches); acks=all, so that every batch is visible to the fetch
    // below as soon as it is answered (acks=1 batches become visible with the next group commit).
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // About 1.2 KiB a batch: 400 of them are several segments past retention.bytes.
    for i in 0..400 {
        let b = batch(&format!("r{i}"), 40, now_ms + i);
        assert_eq!(produce(&mut s, "short", 0, -1, &b).error, ErrorCode::None);
    }
    let earliest = |s: &mut std::net::TcpStream| -> i64 {
        let lo: ListOffsetsResponse = call(
            s,
            ApiKey::ListOffsets,
            31,
            &ListOffsetsRequest {
                topics: vec![ListOffsetsTopic {
                    name: "short".into(),
                    partitions: vec![ListOffsetsPartition {
                        partition: 0,
                        timestamp: EARLIEST_TIMESTAMP,
                    }],
                }],
            },
        );
        lo.topics[0].partitions[0].offset
    };
    // Retention runs at every roll and every `retention-check-ms`: either moves the start.
    let deadline = Instant::now() + Duration::from_secs(15);
    while earliest(&mut s) == 0 {
        assert!(Instant::now() < deadline, "retention never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    // What remains is readable from the new start, once retention has settled (passes run every
    // 100 ms; one may still move the start after the first did).
    let mut start = earliest(&mut s);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = earliest(&mut s);
        if now == start {
            break;
        }
        assert!(Instant::now() < deadline, "retention never settled");
        start = now;
    }
    let (err, _, data) = fetch(&mut s, "short", 0, start, 0, 0);
    assert_eq!(err, ErrorCode::None);
    assert!(!split(&data).is_empty());
    assert_eq!(
        fetch(&mut s, "short", 0, 0, 0, 0).0,
        ErrorCode::OffsetOutOfRange
    );
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn one_request_spanning_both_shards_is_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    assert_eq!(create(&mut s, "wide", 6, &[]).error, ErrorCode::None);
    let batches: Vec<Vec<u8>> = (0..6)
        .map(|p| batch(&format!("wide-{p}"), 2 + p, 0))
        .collect();
    let req = ProduceRequest {
        acks: -1,
        timeout_ms: 10_000,
        topics: vec![ProduceTopic {
            name: "wide",
            partitions: (0..6u32)
                .rev()
                .map(|p| ProducePartition {
                    partition: p,
                    records: mlog_wire::protocol::RawBytes(&batches[p as usize]),
                })
                .collect(),
        }],
    };
    let r: ProduceResponse = call(&mut s, ApiKey::Produce, 40, &req);
    let order: Vec<u32> = r.topics[0].partitions.iter().map(|p| p.partition).collect();
    assert_eq!(order, vec![5, 4, 3, 2, 1, 0]);
    assert!(r.topics[0]
        .partitions
        .iter()
        .all(|p| p.error == ErrorCode::None && p.base_offset == 0));
    let fetch_all_partitions =
        |s: &mut std::net::TcpStream, max_bytes: u32| -> Vec<(u32, Vec<u8>)> {
            let req = FetchRequest {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes,
                topics: vec![FetchTopic {
                    name: "wide".into(),
                    partitions: (0..6u32)
                        .map(|p| FetchPartition {
                            partition: p,
                            fetch_offset: 0,
                            max_bytes: 1 << 20,
                        })
                        .collect(),
                }],
            };
            call_owned(s, ApiKey::Fetch, 41, &req, |body| {
                let r: FetchResponse<'_> =
                    mlog_wire::protocol::frame::decode_body(body, "fetch").unwrap();
                r.topics[0]
                    .partitions
                    .iter()
                    .map(|p| (p.partition, p.records.0.to_vec()))
                    .collect()
            })
        };
    let all = fetch_all_partitions(&mut s, 4 << 20);
    for (p, data) in &all {
        assert_eq!(
            split(data),
            vec![stored(&batches[*p as usize], 0)],
            "partition {p}"
        );
    }
    // A tiny response limit: the first partition still comes whole, the rest empty.
    let limited = fetch_all_partitions(&mut s, 1);
    assert_eq!(split(&limited[0].1), vec![stored(&batches[0], 0)]);
    assert!(limited[1..].iter().all(|(_, d)| d.is_empty()));
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn long_polls_respect_min_bytes_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    assert_eq!(create(&mut s, "lp", 1, &[]).error, ErrorCode::None);
    let b = batch("small", 1, 0);
    assert_eq!(produce(&mut s, "lp", 0, -1, &b).error, ErrorCode::None);
    // Less than min_bytes is available: the answer comes at max_wait_ms, with what there is.
    let start = Instant::now();
    let (err, _, data) = fetch(&mut s, "lp", 0, 0, 300, 1 << 20);
    assert_eq!(err, ErrorCode::None);
    assert_eq!(split(&data), vec![stored(&b, 0)]);
    assert!(
        start.elapsed() >= Duration::from_millis(280),
        "{:?}",
        start.elapsed()
    );
    // Too many partitions in one request: refused as a whole.
    let req = FetchRequest {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 1024,
        topics: vec![FetchTopic {
            name: "lp".into(),
            partitions: (0..10_001)
                .map(|_| FetchPartition {
                    partition: 0,
                    fetch_offset: 0,
                    max_bytes: 1,
                })
                .collect(),
        }],
    };
    std::io::Write::write_all(&mut s, &request(ApiKey::Fetch, 50, &req)).unwrap();
    assert_eq!(read_response(&mut s).0.error, ErrorCode::InvalidRequest);
    // A fetch parked for a long time does not hold up a SIGTERM.
    let mut parked = broker.connect();
    let waiter = std::thread::spawn(move || {
        let req = FetchRequest {
            max_wait_ms: u32::MAX,
            min_bytes: 1 << 30,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                name: "lp".into(),
                partitions: vec![FetchPartition {
                    partition: 0,
                    fetch_offset: 1,
                    max_bytes: 1 << 20,
                }],
            }],
        };
        let _ = std::io::Write::write_all(&mut parked, &request(ApiKey::Fetch, 51, &req));
        try_read_response(&mut parked)
    });
    std::thread::sleep(Duration::from_millis(200));
    let stopped = Instant::now();
    assert_eq!(broker.terminate(), 0);
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "shutdown waited for the long poll"
    );
    let _ = waiter.join();
}

/// Whether the broker closed `s` (a read sees the end of the stream, not a timeout).
fn closed_by_broker(s: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut byte = [0u8; 1];
    matches!(s.read(&mut byte), Ok(0))
}

#[test]
fn a_failed_acks0_produce_closes_its_connection_and_nothing_else() {
    // acks=0 has no response to carry an error: the broker closes the connection instead, as Kafka
    // does, so the client learns that something went wrong.
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut bystander = broker.connect();
    assert_eq!(
        create(&mut bystander, "events", 1, &[]).error,
        ErrorCode::None
    );
    let good = batch("good", 2, 0);
    let mut corrupt = batch("corrupt", 2, 0);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x40; // the CRC covers it

    let mut unknown_topic = broker.connect();
    send_only(
        &mut unknown_topic,
        ApiKey::Produce,
        1,
        &produce_request("nope", 0, 0, &good),
    );
    assert!(closed_by_broker(&mut unknown_topic), "unknown topic");

    let mut bad_batch = broker.connect();
    send_only(
        &mut bad_batch,
        ApiKey::Produce,
        1,
        &produce_request("events", 0, 0, &corrupt),
    );
    assert!(closed_by_broker(&mut bad_batch), "corrupt batch");

    // A body that cannot be decoded past `acks`: with acks=0 the connection closes, with acks=1 the
    // client gets InvalidRequest and the connection stays open.
    for acks in [0u8, 1] {
        let mut s = broker.connect();
        let mut frame = request(
            ApiKey::Produce,
            3,
            &produce_request("events", 0, acks as i8, &good),
        );
        frame.truncate(frame.len() - 5);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        std::io::Write::write_all(&mut s, &frame).unwrap();
        if acks == 0 {
            assert!(closed_by_broker(&mut s), "undecodable acks=0 body");
        } else {
            assert_eq!(read_response(&mut s).0.error, ErrorCode::InvalidRequest);
            api_versions_ok(&mut s, 4);
        }
    }

    // A good acks=0 produce keeps its connection; nothing failed was stored.
    let mut s = broker.connect();
    send_only(
        &mut s,
        ApiKey::Produce,
        5,
        &produce_request("events", 0, 0, &good),
    );
    let r = produce(&mut s, "events", 0, 1, &good);
    assert_eq!((r.error, r.base_offset), (ErrorCode::None, 2));
    api_versions_ok(&mut bystander, 6);
    assert_eq!(broker.terminate(), 0);
}

/// A batch of idempotent producer `id` holding `records` records from sequence `seq`.
fn idempotent_batch(id: i64, seq: i32, records: usize) -> Vec<u8> {
    let mut b = RecordBatchBuilder::new().with_producer(id, 0, seq);
    for i in 0..records {
        let value = format!("sequence {}", seq as usize + i);
        b.push(NewRecord::new(0, None, Some(value.as_bytes())))
            .unwrap();
    }
    b.build().unwrap()
}

/// A Produce of one partition carrying `batches` back to back.
fn produce_batches(s: &mut std::net::TcpStream, batches: &[&[u8]]) -> ProducePartitionResponse {
    let records: Vec<u8> = batches.concat();
    produce(s, "once", 0, -1, &records)
}

#[test]
fn a_resent_idempotent_batch_is_stored_once_even_across_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (id, first) = {
        let broker = Broker::start(dir.path(), &[]);
        let mut s = broker.connect();
        assert_eq!(create(&mut s, "once", 1, &[]).error, ErrorCode::None);
        let init: InitProducerIdResponse =
            call(&mut s, ApiKey::InitProducerId, 1, &InitProducerIdRequest {});
        assert_eq!(init.error, ErrorCode::None);
        assert!(init.producer_id > 0);
        let first = produce_batches(&mut s, &[&idempotent_batch(init.producer_id, 0, 3)]);
        assert_eq!((first.error, first.base_offset), (ErrorCode::None, 0));
        // The same batch again (its answer was "lost"): answered from the first time.
        let again = produce_batches(&mut s, &[&idempotent_batch(init.producer_id, 0, 3)]);
        assert_eq!((again.error, again.base_offset), (ErrorCode::None, 0));
        (init.producer_id, first)
        // kill -9: no snapshot is written, the state must come back from the log itself.
    };
    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    let again = produce_batches(&mut s, &[&idempotent_batch(id, 0, 3)]);
    assert_eq!(
        (again.error, again.base_offset),
        (ErrorCode::None, first.base_offset)
    );
    // Another producer appends meanwhile; a new id after the restart is not the old one.
    let other: InitProducerIdResponse =
        call(&mut s, ApiKey::InitProducerId, 2, &InitProducerIdRequest {});
    assert_ne!(other.producer_id, id);
    let b3 = idempotent_batch(id, 3, 2);
    let b5 = idempotent_batch(id, 5, 1);
    let two = produce_batches(&mut s, &[&b3, &b5]);
    assert_eq!((two.error, two.base_offset), (ErrorCode::None, 3));
    // A resend of that two-batch request, and one of its second batch followed by a new one: both
    // land back to back, so both answers are right.
    let resent = produce_batches(&mut s, &[&b3, &b5]);
    assert_eq!((resent.error, resent.base_offset), (ErrorCode::None, 3));
    let b6 = idempotent_batch(id, 6, 1);
    let mixed = produce_batches(&mut s, &[&b5, &b6]);
    assert_eq!((mixed.error, mixed.base_offset), (ErrorCode::None, 5));
    // Once another producer appended after them, stored and new batches can no longer be answered
    // with one base offset: refused, nothing stored.
    let theirs = produce_batches(&mut s, &[&idempotent_batch(other.producer_id, 0, 1)]);
    assert_eq!((theirs.error, theirs.base_offset), (ErrorCode::None, 7));
    let b7 = idempotent_batch(id, 7, 1);
    let refused = produce_batches(&mut s, &[&b6, &b7]);
    assert_eq!(refused.error, ErrorCode::OutOfOrderSequence);
    // A request whose second batch overlaps its first is refused whole, before anything is stored.
    let refused = produce_batches(
        &mut s,
        &[&idempotent_batch(id, 7, 2), &idempotent_batch(id, 8, 1)],
    );
    assert_eq!(refused.error, ErrorCode::OutOfOrderSequence);
    // A stale batch (older than the last five) is refused too.
    let stale = produce_batches(&mut s, &[&idempotent_batch(id, 1, 1)]);
    assert_eq!(stale.error, ErrorCode::OutOfOrderSequence);
    // Exactly one copy of every batch: offsets 0..8 hold 3 + 2 + 1 + 1 + 1 records.
    let stored_batches = fetch_all(&mut s, "once", 0);
    let bases: Vec<i64> = stored_batches
        .iter()
        .map(|b| RecordBatch::parse(b).unwrap().base_offset())
        .collect();
    assert_eq!(bases, vec![0, 3, 5, 6, 7]);
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn a_peer_that_does_not_read_its_answer_is_cut_off_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    // Answers must be taken within 2 s plus 1 s per MiB.
    let broker = Broker::start(
        dir.path(),
        &[
            "--slow-peer-grace-ms",
            "2000",
            "--slow-peer-min-bytes-per-sec",
            "1048576",
        ],
    );
    let mut s = broker.connect();
    assert_eq!(create(&mut s, "wide", 1, &[]).error, ErrorCode::None);
    // Batches of ~900 KB, 2 MiB more than the broker's socket send buffer can hold.
    let send_buffer_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 << 20);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut b = RecordBatchBuilder::new();
    for i in 0..900 {
        b.push(NewRecord::new(now + i, None, Some(&[7u8; 1000][..])))
            .unwrap();
    }
    let big = b.build().unwrap();
    let batches = (send_buffer_max + (2 << 20)).div_ceil(big.len());
    let answer = batches * big.len();
    // The whole answer is asked for (a fetch answers at most half a 64 MiB frame).
    assert!(
        answer < 32 << 20,
        "tcp_wmem max {send_buffer_max} is too large for this test"
    );
    for _ in 0..batches {
        assert_eq!(produce(&mut s, "wide", 0, -1, &big).error, ErrorCode::None);
    }
    // A reader with a tiny receive buffer asks for all of it and reads nothing.
    let mut slow = broker.connect();
    let receive_buffer = |s: &std::net::TcpStream, bytes: libc::c_int| {
        // SAFETY: setsockopt on a socket this test owns, with a c_int option value of its size.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(s),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0);
    };
    receive_buffer(&slow, 4096);
    let req = FetchRequest {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: answer as u32,
        topics: vec![FetchTopic {
            name: "wide".into(),
            partitions: vec![FetchPartition {
                partition: 0,
                fetch_offset: 0,
                max_bytes: answer as u32,
            }],
        }],
    };
    send_only(&mut slow, ApiKey::Fetch, 5, &req);
    let allowed =
        Duration::from_secs(2) + Duration::from_secs_f64(answer as f64 / (1 << 20) as f64);
    // Meanwhile others are served.
    std::thread::sleep(Duration::from_secs(1));
    // A request the broker cannot read while it waits to write: closing with unread bytes resets
    // the connection at once, rather than letting what the kernel already holds trickle out first.
    send_only(&mut slow, ApiKey::ApiVersions, 6, &ApiVersionsRequest {});
    api_versions_ok(&mut s, 7);
    std::thread::sleep(allowed + Duration::from_secs(1));
    // The connection ends, short of the answer.
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    let end = loop {
        match std::io::Read::read(&mut slow, &mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => got += n,
            Err(e) => break Err(e),
        }
    };
    assert!(
        matches!(&end, Ok(()))
            || matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the connection was closed: {end:?} after {got} bytes"
    );
    assert!(
        got < answer,
        "{got} of {answer} bytes: the answer was cut off"
    );
    api_versions_ok(&mut s, 8);
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn a_timed_out_produce_is_appended_before_its_connection_reads_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    assert_eq!(create(&mut s, "late", 1, &[]).error, ErrorCode::None);
    for round in 0..20i64 {
        // timeout_ms 0: answered at once (RequestTimedOut unless the append won the race), while
        // the append and its fdatasync go on.
        let mut req = produce_request("late", 0, -1, &[]);
        let records = batch("r", 1, 0);
        req.topics[0].partitions[0].records = mlog_wire::protocol::RawBytes(&records);
        req.timeout_ms = 0;
        let r: ProduceResponse = call(&mut s, ApiKey::Produce, 30, &req);
        let error = r.topics[0].partitions[0].error;
        assert!(
            matches!(error, ErrorCode::None | ErrorCode::RequestTimedOut),
            "{error}"
        );
        // The next request on the connection is read only once that append is done: the record
        // is there, committed.
        let (error, high_watermark, _) = fetch(&mut s, "late", 0, round, 0, 0);
        assert_eq!((error, high_watermark), (ErrorCode::None, round + 1));
    }
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn metadata_advertises_the_configured_host() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--advertised-host", "localhost"]);
    let mut s = broker.connect();
    let m = metadata(&mut s, None);
    assert_eq!(m.endpoints.len(), 2);
    for e in &m.endpoints {
        assert_eq!(e.host, "localhost");
        // The advertised name reaches the shard's listener.
        let mut shard = std::net::TcpStream::connect((e.host.as_str(), e.port)).unwrap();
        shard.set_read_timeout(Some(TIMEOUT)).unwrap();
        api_versions_ok(&mut shard, 1);
    }
    assert_eq!(broker.terminate(), 0);
}
