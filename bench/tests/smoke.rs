//! `mlog-bench` runs against a real broker and prints a parseable JSON result.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn produce_consume_and_e2e_report_json() {
    let dir = tempfile::tempdir().unwrap();
    let broker_bin = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("mlog-broker");
    let mut broker = Command::new(broker_bin)
        .args(["--listen", "127.0.0.1:0", "--shards", "2", "--data-dir"])
        .arg(dir.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the mlog-broker binary is built with the workspace");
    let stderr = broker.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("mlog-broker listening address=").nth(1) {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    for args in [
        vec![
            "produce",
            "--messages",
            "2000",
            "--message-size",
            "100",
            "--warmup",
            "0",
        ],
        vec!["consume", "--messages", "2000", "--warmup", "0"],
        vec![
            "e2e",
            "--duration",
            "1",
            "--rate",
            "2000",
            "--message-size",
            "64",
            "--warmup",
            "0",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mlog-bench"))
            .args(&args)
            .args(["--bootstrap", &addr, "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["messages"].as_u64().unwrap() > 0, "{args:?}: {v}");
        assert!(v["throughput_mb_s"].as_f64().unwrap() > 0.0);
        for q in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_us"][q].is_u64(), "{q} in {v}");
        }
        if args[0] != "consume" {
            assert!(v["latency_us"]["max"].as_u64().unwrap() > 0);
        }
    }
    let _ = broker.kill();
    let _ = broker.wait();
}
