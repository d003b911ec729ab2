//! Integration tests: the real `mlog-broker` binary as a process on 127.0.0.1 with an ephemeral
//! port and a temporary data directory, spoken to over TCP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mlog_wire::protocol::frame::{
    check_frame, decode_body, decode_response, encode_request, RESPONSE_HEADER_BYTES,
};
use mlog_wire::protocol::messages::*;
use mlog_wire::protocol::{ApiKey, ErrorCode, RequestHeader, ResponseHeader, Wire};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Broker {
    child: Child,
    addr: SocketAddr,
}

impl Broker {
    fn start(data_dir: &Path, extra: &[&str]) -> Broker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mlog-broker"))
            .args(["--listen", "127.0.0.1:0", "--shards", "2", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("MLOG_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mlog-broker");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("address=").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx.recv_timeout(TIMEOUT).expect("broker logs its address");
        Broker {
            child,
            addr: addr.parse().expect("address parses"),
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.addr, TIMEOUT).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s
    }

    fn terminate(mut self) -> i32 {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "broker did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn request<'a>(api: ApiKey, id: u32, body: &impl Wire<'a>) -> BytesMut {
    let mut out = BytesMut::new();
    let header = RequestHeader {
        api_key: api as u16,
        api_version: 0,
        correlation_id: id,
    };
    encode_request(&mut out, &header, body);
    out
}

/// Reads one response frame.
fn read_response(s: &mut TcpStream) -> (ResponseHeader, Vec<u8>) {
    let mut buf = Vec::new();
    loop {
        if let Some(n) = check_frame(&buf, RESPONSE_HEADER_BYTES, 1 << 30).unwrap() {
            let (h, body) = decode_response(&buf[..n]).unwrap();
            return (h, body.to_vec());
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).expect("read response");
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends one request and decodes its (successful) response.
fn call<'a, Resp: for<'b> Wire<'b>>(
    s: &mut TcpStream,
    api: ApiKey,
    id: u32,
    body: &impl Wire<'a>,
) -> Resp {
    s.write_all(&request(api, id, body)).unwrap();
    let (h, body) = read_response(s);
    assert_eq!(h.correlation_id, id);
    assert_eq!(
        h.error,
        ErrorCode::None,
        "{:?}",
        decode_body::<String>(&body, "message")
    );
    decode_body(&body, "response").unwrap()
}

fn create(s: &mut TcpStream, name: &str, partitions: u32, configs: &[(&str, &str)]) -> TopicResult {
    let topics = vec![NewTopic {
        name: name.into(),
        partitions,
        configs: configs
            .iter()
            .map(|(k, v)| ConfigEntry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
    }];
    let r: CreateTopicsResponse = call(s, ApiKey::CreateTopics, 1, &CreateTopicsRequest { topics });
    r.results.into_iter().next().unwrap()
}

fn metadata(s: &mut TcpStream, topics: Option<Vec<String>>) -> MetadataResponse {
    call(s, ApiKey::Metadata, 2, &MetadataRequest { topics })
}

fn api_versions_ok(s: &mut TcpStream, id: u32) {
    s.write_all(&request(ApiKey::ApiVersions, id, &ApiVersionsRequest {}))
        .unwrap();
    let (h, body) = read_response(s);
    assert_eq!(h.correlation_id, id);
    assert_eq!(h.error, ErrorCode::None);
    let v: ApiVersionsResponse = decode_body(&body, "ApiVersionsResponse").unwrap();
    assert!(v
        .apis
        .iter()
        .any(|a| a.api_key == ApiKey::ApiVersions as u16));
}

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
    assert!(metadata(&mut s, None).topics.is_empty());
    for p in 0..8 {
        assert!(
            !dir.path().join(format!("orders-{p}")).exists(),
            "partition {p} data deleted"
        );
    }
    assert_eq!(broker.terminate(), 0);
}
