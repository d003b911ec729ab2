//! `mlog-bench` runs against a real broker and prints a parseable JSON result.

#[path = "../../client/tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::Broker;

#[test]
fn produce_consume_and_e2e_report_json() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let addr = broker.addr();
    for args in [
        vec![
            "produce",
            "--messages",
            "2000",
            // 2000 does not divide by 3: the split must still send exactly 2000.
            "--producers",
            "3",
            "--message-size",
            "100",
            "--warmup",
            "0",
        ],
        vec!["consume", "--messages", "2000", "--warmup", "0"],
        // Fewer than stored: exactly that many, not the rest of the last poll too.
        vec!["consume", "--messages", "500", "--warmup", "0"],
        // No warm-up: the consumers are assigned before the producers start, so none is missed.
        vec!["e2e", "--messages", "2000", "--warmup", "0"],
        vec![
            "produce",
            "--duration",
            "1",
            "--rate",
            "2000",
            "--warmup",
            "0",
        ],
        // Warm-up records are counted by neither side: exactly the records after it arrive.
        vec![
            "e2e",
            "--messages",
            "2000",
            "--rate",
            "4000",
            "--warmup",
            "1",
            "--producers",
            "3",
        ],
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
            .args(["--bootstrap", addr, "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let messages = v["messages"].as_u64().unwrap();
        match args[..3] {
            // Exactly the count asked for, and the rate asked for (the schedule is 2000 in 1 s).
            [_, "--messages", count] => assert_eq!(messages.to_string(), count, "{v}"),
            ["produce", "--duration", _] => assert!((1000..=2001).contains(&messages), "{v}"),
            _ => assert!(messages > 0, "{args:?}: {v}"),
        }
        assert!(v["throughput_mb_s"].as_f64().unwrap() > 0.0);
        for q in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_us"][q].is_u64(), "{q} in {v}");
        }
        if args[0] != "consume" {
            assert!(v["latency_us"]["max"].as_u64().unwrap() > 0);
        }
    }
}

#[test]
fn out_of_range_durations_are_refused_not_a_panic() {
    for flag in ["--warmup", "--duration"] {
        let out = Command::new(env!("CARGO_BIN_EXE_mlog-bench"))
            .args(["produce", flag, "18446744073709551615"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}: {out:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
}
