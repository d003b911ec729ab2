//! Integration tests: the real `mlog-broker` binary as a process on 127.0.0.1 with an ephemeral
//! port and a temporary data directory, spoken to over TCP.

mod common;

use std::io::{Read, Write};
use std::process::Command;

use common::*;
use mlog_wire::protocol::frame::decode_body;
use mlog_wire::protocol::messages::*;
use mlog_wire::protocol::{ApiKey, ErrorCode};

#[test]
fn serves_api_versions_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    // Several connections land on both shards (SO_REUSEPORT); each is served.
    for i in 0..8 {
        let mut s = broker.connect();
        api_versions_ok(&mut s, i);
        api_versions_ok(&mut s, i + 100); // pipelined requests on one connection
    }
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn bad_input_gets_an_error_or_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--max-frame-bytes", "65536"]);
    let mut good = broker.connect();
    api_versions_ok(&mut good, 1);

    // Unknown API key: an error response, and the connection goes on.
    let mut s = broker.connect();
    let mut frame = request(ApiKey::ApiVersions, 5, &ApiVersionsRequest {});
    frame[4..6].copy_from_slice(&999u16.to_be_bytes());
    s.write_all(&frame).unwrap();
    let (h, body) = read_response(&mut s);
    assert_eq!((h.correlation_id, h.error), (5, ErrorCode::UnsupportedApi));
    assert!(decode_body::<String>(&body, "message")
        .unwrap()
        .contains("999"));
    // Unsupported version.
    let mut frame = request(ApiKey::ApiVersions, 6, &ApiVersionsRequest {});
    frame[6..8].copy_from_slice(&7u16.to_be_bytes());
    s.write_all(&frame).unwrap();
    assert_eq!(read_response(&mut s).0.error, ErrorCode::UnsupportedVersion);
    // Undecodable body (trailing bytes).
    let mut frame = request(ApiKey::ApiVersions, 7, &ApiVersionsRequest {});
    frame.extend_from_slice(&[1, 2, 3]);
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&frame).unwrap();
    assert_eq!(read_response(&mut s).0.error, ErrorCode::InvalidRequest);
    api_versions_ok(&mut s, 8);

    // A length prefix over max_frame_bytes closes that connection, without an allocation.
    let mut bad = broker.connect();
    bad.write_all(&[0x7f, 0xff, 0xff, 0xff]).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(bad.read(&mut byte).unwrap_or(0), 0, "connection closed");
    // A client that disconnects mid-frame.
    let mut half = broker.connect();
    half.write_all(&[0, 0, 1, 0, 0, 0]).unwrap();
    drop(half);
    // Everyone else is still served.
    api_versions_ok(&mut good, 2);
    api_versions_ok(&mut s, 9);
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn requests_naming_too_many_items_are_refused_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    // Counts beyond what one request may hold: refused before the broker builds anything for them
    // (100,000 empty names are 200 KB on the wire but would be MBs of strings and answers).
    let names = |n: usize| MetadataRequest {
        topics: Some(vec![String::new(); n]),
    };
    s.write_all(&request(ApiKey::Metadata, 10, &names(100_000)))
        .unwrap();
    assert_eq!(read_response(&mut s).0.error, ErrorCode::InvalidRequest);
    s.write_all(&request(ApiKey::Metadata, 11, &names(10_001)))
        .unwrap();
    assert_eq!(read_response(&mut s).0.error, ErrorCode::InvalidRequest);
    let topic = |i: usize| NewTopic {
        name: format!("many-{i}"),
        partitions: 5_001,
        configs: vec![],
    };
    let create = CreateTopicsRequest {
        topics: vec![topic(0), topic(1)],
    };
    s.write_all(&request(ApiKey::CreateTopics, 12, &create))
        .unwrap();
    assert_eq!(read_response(&mut s).0.error, ErrorCode::InvalidRequest);
    assert!(metadata(&mut s, None)
        .topics
        .iter()
        .all(|t| !t.name.starts_with("many-")));
    // A topic named many times is described once: the answer is no bigger than the table.
    assert_eq!(
        common::create(&mut s, "wide", 100, &[]).error,
        ErrorCode::None
    );
    let m = metadata(&mut s, Some(vec!["wide".to_string(); 10_000]));
    assert_eq!(m.topics.len(), 1);
    assert_eq!(m.topics[0].partitions.len(), 100);
    api_versions_ok(&mut s, 13);
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn topics_cannot_take_more_partitions_than_the_broker_allows() {
    let dir = tempfile::tempdir().unwrap();
    // Two shards (the test broker's) of 10: 20 partitions, of which the internal offsets topic
    // holds 16.
    let broker = Broker::start(dir.path(), &["--max-partitions-per-shard", "10"]);
    let mut s = broker.connect();
    assert_eq!(create(&mut s, "fits", 4, &[]).error, ErrorCode::None);
    let over = create(&mut s, "over", 1, &[]);
    assert_eq!(over.error, ErrorCode::InvalidPartitions);
    assert!(over.message.unwrap_or_default().contains("at most 20"));
    assert_eq!(broker.terminate(), 0);
    // A limit below the internal topic's 16 partitions still lets the broker create it and serve.
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--max-partitions-per-shard", "1"]);
    let mut s = broker.connect();
    assert!(metadata(&mut s, None)
        .topics
        .iter()
        .any(|t| t.name == "__consumer_offsets"));
    assert_eq!(
        create(&mut s, "one", 1, &[]).error,
        ErrorCode::InvalidPartitions
    );
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn a_created_topic_whose_partition_cannot_open_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    // A file where the partition's directory must go: its log cannot be opened.
    std::fs::write(dir.path().join("blocked-0"), b"not a directory").unwrap();
    let r = create(&mut s, "blocked", 1, &[]);
    assert_eq!(r.error, ErrorCode::StorageError);
    assert!(r
        .message
        .unwrap_or_default()
        .contains("could not be opened"));
    assert_eq!(create(&mut s, "fine", 1, &[]).error, ErrorCode::None);
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn a_second_broker_on_the_same_data_dir_or_port_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_mlog-broker"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another mlog-broker"), "{err}");

    let other = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mlog-broker"))
        .args(["--listen", &broker.addr.to_string(), "--data-dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_mlog-broker"))
        .args(["--shards", "zero"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn a_data_dir_missing_its_table_or_holding_foreign_dirs_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    assert_eq!(create(&mut s, "kept", 1, &[]).error, ErrorCode::None);
    assert_eq!(broker.terminate(), 0);
    // Something else in the data directory, named like a partition of no topic.
    let foreign = dir.path().join("build-2");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), b"mine").unwrap();
    let broker = Broker::start(dir.path(), &[]);
    assert_eq!(broker.terminate(), 0);
    assert!(
        foreign.join("notes.txt").exists(),
        "a foreign directory was removed"
    );
    // Without its topic table, the broker refuses to start rather than treat every partition as
    // deleted.
    std::fs::remove_file(dir.path().join("topics.meta")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mlog-broker"))
        .args(["--listen", "127.0.0.1:0", "--shards", "2", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no topics.meta"), "{err}");
    assert!(
        dir.path().join("kept-0").exists(),
        "partition data was removed"
    );
}

#[test]
fn topics_are_created_described_spread_over_shards_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    let r = create(
        &mut s,
        "orders",
        8,
        &[("retention.ms", "3600000"), ("flush.policy", "always")],
    );
    assert_eq!(r.error, ErrorCode::None, "{:?}", r.message);
    // Validation errors, one per topic.
    assert_eq!(
        create(&mut s, "orders", 1, &[]).error,
        ErrorCode::TopicAlreadyExists
    );
    assert_eq!(
        create(&mut s, "bad/name", 1, &[]).error,
        ErrorCode::InvalidTopic
    );
    assert_eq!(
        create(&mut s, "zero", 0, &[]).error,
        ErrorCode::InvalidPartitions
    );
    assert_eq!(
        create(&mut s, "cfg", 1, &[("retention.ms", "soon")]).error,
        ErrorCode::InvalidConfig
    );
    // Any connection (either shard) sees the topic right away.
    for _ in 0..4 {
        let mut other = broker.connect();
        let m = metadata(&mut other, Some(vec!["orders".into(), "nope".into()]));
        assert_eq!(m.endpoints.len(), 2);
        assert_eq!(m.topics[0].partitions.len(), 8);
        let shards: std::collections::BTreeSet<u16> =
            m.topics[0].partitions.iter().map(|p| p.shard).collect();
        assert_eq!(shards.len(), 2, "partitions spread over both shards");
        assert_eq!(m.topics[1].error, ErrorCode::UnknownTopicOrPartition);
    }
    for p in 0..8 {
        assert!(
            dir.path().join(format!("orders-{p}")).is_dir(),
            "partition {p} has its log directory"
        );
    }
    let before = metadata(&mut s, None);
    assert_eq!(broker.terminate(), 0);

    let broker = Broker::start(dir.path(), &[]);
    let mut s = broker.connect();
    let after = metadata(&mut s, None);
    assert_eq!(after.topics, before.topics, "topics survive a restart");
    let d: DeleteTopicsResponse = call(
        &mut s,
        ApiKey::DeleteTopics,
        3,
        &DeleteTopicsRequest {
            names: vec!["orders".into(), "nope".into()],
        },
    );
    assert_eq!(d.results[0].error, ErrorCode::None);
    assert_eq!(d.results[1].error, ErrorCode::UnknownTopicOrPartition);
    assert!(metadata(&mut s, None)
        .topics
        .iter()
        .all(|t| t.name != "orders"));
    for p in 0..8 {
        assert!(
            !dir.path().join(format!("orders-{p}")).exists(),
            "partition {p} data deleted"
        );
    }
    assert_eq!(broker.terminate(), 0);
}

#[test]
fn large_requests_wait_for_the_shards_request_memory_while_small_ones_go_on() {
    let dir = tempfile::tempdir().unwrap();
    // Room for two frames of about 1 MB per shard.
    let broker = Broker::start(
        dir.path(),
        &[
            "--max-frame-bytes",
            "1100000",
            "--max-request-memory-bytes",
            "2200000",
            // Frames must arrive within 5 s plus 1 s per MiB.
            "--slow-peer-grace-ms",
            "5000",
            "--slow-peer-min-bytes-per-sec",
            "1048576",
        ],
    );
    let mut admin = broker.connect();
    assert_eq!(create(&mut admin, "big", 1, &[]).error, ErrorCode::None);
    // Every connection below goes to shard 0's own listener, so they share one budget.
    let shard0 = metadata(&mut admin, None)
        .endpoints
        .into_iter()
        .find(|e| e.shard == 0)
        .expect("shard 0 listener");
    let connect = || {
        let s = std::net::TcpStream::connect((shard0.host.as_str(), shard0.port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        s
    };
    let mut b = mlog_wire::RecordBatchBuilder::new();
    for i in 0..900 {
        b.push(mlog_wire::NewRecord::new(i, None, Some(&[7u8; 1000][..])))
            .unwrap();
    }
    let records = b.build().unwrap();
    let produce = ProduceRequest {
        acks: 1,
        timeout_ms: 10_000,
        topics: vec![ProduceTopic {
            name: "big",
            partitions: vec![ProducePartition {
                partition: 0,
                records: mlog_wire::protocol::RawBytes(&records),
            }],
        }],
    };
    let frame = request(ApiKey::Produce, 7, &produce);
    assert!(frame.len() > 900_000 && frame.len() < 1_100_000);
    let half = frame.len() / 2;
    // Two connections start large frames: together they hold the whole budget.
    let (mut first, mut second) = (connect(), connect());
    first.write_all(&frame[..half]).unwrap();
    second.write_all(&frame[..half]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // A third large frame must wait: no answer while the budget is taken...
    let mut third = connect();
    third.write_all(&frame).unwrap();
    third
        .set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .unwrap();
    let mut byte = [0u8; 1];
    let waited = third.read(&mut byte);
    assert!(
        matches!(&waited, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "answered before any memory was free: {waited:?}"
    );
    // ...while small requests on the same shard are served.
    let mut small = connect();
    api_versions_ok(&mut small, 3);
    // Once the first frame is whole and answered, its memory lets the third one in.
    first.write_all(&frame[half..]).unwrap();
    let (h, _) = read_response(&mut first);
    assert_eq!((h.correlation_id, h.error), (7, ErrorCode::None));
    third
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let (h, body) = read_response(&mut third);
    assert_eq!((h.correlation_id, h.error), (7, ErrorCode::None));
    let r: ProduceResponse = decode_body(&body, "produce").unwrap();
    assert_eq!(r.topics[0].partitions[0].error, ErrorCode::None);
    second.write_all(&frame[half..]).unwrap();
    let (h, _) = read_response(&mut second);
    assert_eq!(h.error, ErrorCode::None);
    // Peers that start large frames and then stall are cut off once their frames are overdue (5 s
    // plus 1 s per MiB), and the frame waiting behind them goes in.
    let (mut slow1, mut slow2) = (connect(), connect());
    slow1.write_all(&frame[..half]).unwrap();
    slow2.write_all(&frame[..half]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let mut waiting = connect();
    waiting.write_all(&frame).unwrap();
    let (h, _) = read_response(&mut waiting);
    assert_eq!((h.correlation_id, h.error), (7, ErrorCode::None));
    assert!(
        started.elapsed() > std::time::Duration::from_secs(4),
        "answered after {:?}, before the stalled frames were overdue",
        started.elapsed()
    );
    for slow in [&mut slow1, &mut slow2] {
        let closed = slow.read(&mut byte);
        assert!(
            matches!(&closed, Ok(0))
                || matches!(&closed, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "a stalled connection is closed: {closed:?}"
        );
    }
    assert_eq!(broker.terminate(), 0);
}
