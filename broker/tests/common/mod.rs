//! Helpers shared by the broker's process-level tests.
#![allow(dead_code)]

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

pub const TIMEOUT: Duration = Duration::from_secs(20);

pub struct Broker {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Broker {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Broker {
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
                // The broker's log goes to the test's stderr, which the runner shows on failure.
                eprintln!("[broker] {line}");
                if !line.contains("mlog-broker listening") {
                    continue;
                }
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

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.addr, TIMEOUT).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s
    }

    pub fn terminate(mut self) -> i32 {
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

pub fn request<'a>(api: ApiKey, id: u32, body: &impl Wire<'a>) -> BytesMut {
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
pub fn read_response(s: &mut TcpStream) -> (ResponseHeader, Vec<u8>) {
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
pub fn call<'a, Resp: for<'b> Wire<'b>>(
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

pub fn create(
    s: &mut TcpStream,
    name: &str,
    partitions: u32,
    configs: &[(&str, &str)],
) -> TopicResult {
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

pub fn metadata(s: &mut TcpStream, topics: Option<Vec<String>>) -> MetadataResponse {
    call(s, ApiKey::Metadata, 2, &MetadataRequest { topics })
}

pub fn api_versions_ok(s: &mut TcpStream, id: u32) {
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

/// Sends a request that gets no response (acks=0).
pub fn send_only<'a>(s: &mut TcpStream, api: ApiKey, id: u32, body: &impl Wire<'a>) {
    s.write_all(&request(api, id, body)).unwrap();
}

/// Sends a request and hands the successful response body to `f` (for responses that borrow).
pub fn call_owned<'a, T>(
    s: &mut TcpStream,
    api: ApiKey,
    id: u32,
    body: &impl Wire<'a>,
    f: impl FnOnce(&[u8]) -> T,
) -> T {
    s.write_all(&request(api, id, body)).unwrap();
    let (h, body) = read_response(s);
    assert_eq!(h.correlation_id, id);
    assert_eq!(h.error, ErrorCode::None);
    f(&body)
}

/// Reads one response body, or `None` if the connection closed or failed first.
pub fn try_read_response(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    loop {
        if let Some(n) = check_frame(&buf, RESPONSE_HEADER_BYTES, 1 << 30).ok()? {
            let (h, body) = decode_response(&buf[..n]).ok()?;
            return (h.error == ErrorCode::None).then(|| body.to_vec());
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
