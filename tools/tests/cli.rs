//! The `mlog` CLI, run as a process against a real broker.

#[path = "../../client/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::Broker;

fn mlog(broker: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlog"))
        .args(["--bootstrap", broker])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn topics_produce_consume_and_groups_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let b = broker.addr();
    ok(mlog(
        b,
        &[
            "topic",
            "create",
            "lines",
            "--partitions",
            "2",
            "--config",
            "retention.ms=3600000",
        ],
        b"",
    ));
    let list: serde_json::Value =
        serde_json::from_str(&ok(mlog(b, &["topic", "list", "-o", "json"], b""))).unwrap();
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "lines" && t["partitions"] == 2));
    let described: serde_json::Value = serde_json::from_str(&ok(mlog(
        b,
        &["topic", "describe", "lines", "-o", "json"],
        b"",
    )))
    .unwrap();
    assert_eq!(described["partitions"].as_array().unwrap().len(), 2);
    assert_eq!(described["configs"]["retention.ms"], "3600000");

    // Produce to one partition, so that consuming it returns the lines in order, byte for byte.
    let input: String = (0..50)
        .map(|i| format!("line {i} with some ünïcödé\n"))
        .collect();
    let offsets = ok(mlog(
        b,
        &["produce", "lines", "--partition", "1", "--print-offsets"],
        input.as_bytes(),
    ));
    let expected_offsets: String = (0..50).map(|i| format!("1 {i}\n")).collect();
    assert_eq!(
        offsets, expected_offsets,
        "one PARTITION OFFSET line per input line, in order"
    );
    let consumed = ok(mlog(
        b,
        &[
            "consume",
            "lines",
            "--partition",
            "1",
            "--from-beginning",
            "--max-messages",
            "50",
            "--timeout-ms",
            "5000",
        ],
        b"",
    ));
    assert_eq!(consumed, input);

    // Keys, formats and groups.
    ok(mlog(
        b,
        &[
            "produce",
            "lines",
            "--key-separator",
            ":",
            "--partition",
            "0",
        ],
        b"k1:v1\nk2:v2\n",
    ));
    let formatted = ok(mlog(
        b,
        &[
            "consume",
            "lines",
            "--partition",
            "0",
            "--offset",
            "0",
            "--max-messages",
            "2",
            "--timeout-ms",
            "5000",
            "--format",
            "{partition}/{offset} {key}={value}",
            "--group",
            "readers",
        ],
        b"",
    ));
    assert_eq!(formatted, "0/0 k1=v1\n0/1 k2=v2\n");
    let group: serde_json::Value = serde_json::from_str(&ok(mlog(
        b,
        &["group", "offsets", "readers", "-o", "json"],
        b"",
    )))
    .unwrap();
    assert!(group["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["partition"] == 0 && o["offset"] == 2));
    let status: serde_json::Value =
        serde_json::from_str(&ok(mlog(b, &["cluster", "status", "-o", "json"], b""))).unwrap();
    assert_eq!(status["endpoints"].as_array().unwrap().len(), 2);

    // A group that stops after a few records commits only what it printed.
    let twenty: String = (0..20).map(|i| format!("g{i}\n")).collect();
    ok(mlog(
        b,
        &["produce", "lines", "--partition", "0"],
        twenty.as_bytes(),
    ));
    let first = ok(mlog(
        b,
        &[
            "consume",
            "lines",
            "--partition",
            "0",
            "--offset",
            "2",
            "--group",
            "pager",
            "--max-messages",
            "5",
            "--timeout-ms",
            "5000",
            "--format",
            "{offset}",
        ],
        b"",
    ));
    assert_eq!(first, "2\n3\n4\n5\n6\n");
    let next = ok(mlog(
        b,
        &[
            "consume",
            "lines",
            "--partition",
            "0",
            "--group",
            "pager",
            "--max-messages",
            "5",
            "--timeout-ms",
            "5000",
            "--format",
            "{offset}",
        ],
        b"",
    ));
    assert_eq!(
        next, "7\n8\n9\n10\n11\n",
        "resumes right after the last printed record"
    );

    ok(mlog(b, &["topic", "delete", "lines"], b""));
    let out = mlog(b, &["topic", "describe", "lines"], b"");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    assert!(err.contains("unknown topic"), "{err}");
}

#[test]
fn produce_takes_lines_in_any_encoding_and_zero_max_messages_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let b = broker.addr();
    ok(mlog(
        b,
        &["topic", "create", "raw", "--partitions", "1"],
        b"",
    ));
    // Latin-1 and stray bytes are records too, not a reason to stop.
    let offsets = ok(mlog(
        b,
        &["produce", "raw", "--print-offsets"],
        b"caf\xe9\n\xff\xfe\r\nplain\n",
    ));
    assert_eq!(offsets, "0 0\n0 1\n0 2\n");
    let consumed = ok(mlog(
        b,
        &[
            "consume",
            "raw",
            "--from-beginning",
            "--max-messages",
            "3",
            "--timeout-ms",
            "5000",
            "-o",
            "json",
        ],
        b"",
    ));
    let values: Vec<serde_json::Value> = consumed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["value"].clone())
        .collect();
    assert_eq!(values, ["caf\u{fffd}", "\u{fffd}\u{fffd}", "plain"]);
    // Records without a key say so in JSON.
    let first: serde_json::Value = serde_json::from_str(consumed.lines().next().unwrap()).unwrap();
    assert!(first["key"].is_null(), "{first}");
    // Zero messages wanted: done at once, even on an empty topic and with no timeout.
    ok(mlog(
        b,
        &["topic", "create", "empty", "--partitions", "1"],
        b"",
    ));
    let none = ok(mlog(
        b,
        &[
            "consume",
            "empty",
            "--from-beginning",
            "--max-messages",
            "0",
        ],
        b"",
    ));
    assert_eq!(none, "");
}

#[test]
fn bad_arguments_and_unreachable_brokers_are_one_line_and_non_zero() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = mlog(&format!("127.0.0.1:{port}"), &["topic", "list"], b"");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&port.to_string()), "{err}");

    let out = mlog("127.0.0.1:9", &["topic", "create"], b"");
    assert_ne!(out.status.code(), Some(0));
    let out = mlog(
        "127.0.0.1:9",
        &["produce", "t", "--key", "k", "--key-separator", ":"],
        b"",
    );
    assert_ne!(out.status.code(), Some(0));
    let help = Command::new(env!("CARGO_BIN_EXE_mlog"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8(help.stdout)
        .unwrap()
        .contains("Examples:"));
    let completions = Command::new(env!("CARGO_BIN_EXE_mlog"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(completions.status.success() && !completions.stdout.is_empty());
}

#[test]
fn consume_prints_bytes_as_stored_and_fills_each_placeholder_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let b = broker.addr();
    ok(mlog(
        b,
        &["topic", "create", "bytes", "--partitions", "1"],
        b"",
    ));
    ok(mlog(
        b,
        &["produce", "bytes", "--key-separator", ":"],
        b"k{value}:caf\xe9\n:\xff\xfe\n",
    ));
    let consume = |format: &str| {
        let out = mlog(
            b,
            &[
                "consume",
                "bytes",
                "--from-beginning",
                "--max-messages",
                "2",
                "--timeout-ms",
                "5000",
                "--format",
                format,
            ],
            b"",
        );
        assert!(out.status.success(), "{:?}", out);
        out.stdout
    };
    assert_eq!(consume("{value}"), b"caf\xe9\n\xff\xfe\n");
    assert_eq!(
        consume("{key}={value} {x}"),
        b"k{value}=caf\xe9 {x}\n=\xff\xfe {x}\n"
    );
    // RFC 3339 with any offset: 01:00 at +01:00 is midnight UTC, long before these records.
    let from_time = mlog(
        b,
        &[
            "consume",
            "bytes",
            "--from-time",
            "2000-01-01T01:00:00+01:00",
            "--max-messages",
            "2",
            "--timeout-ms",
            "5000",
        ],
        b"",
    );
    assert_eq!(from_time.stdout, b"caf\xe9\n\xff\xfe\n");
}

#[test]
fn usage_errors_are_one_line_and_consume_commits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let b = broker.addr();
    for (args, says) in [
        (&["topic", "create"][..], "<NAME>"),
        (&["consume", "t", "--from-time", "yesterday"], "RFC 3339"),
        (
            &["produce", "t", "--acks", "none", "--print-offsets"],
            "--acks",
        ),
    ] {
        let out = mlog(b, args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    ok(mlog(
        b,
        &["topic", "create", "tail", "--partitions", "1"],
        b"",
    ));
    ok(mlog(b, &["produce", "tail"], b"a\nb\nc\n"));
    // No stop condition: it reads until SIGTERM, then commits what it printed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlog"))
        .args([
            "--bootstrap",
            b,
            "consume",
            "tail",
            "--from-beginning",
            "--group",
            "g",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the three records are printed (read on a thread: the wait is bounded).
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let lines: Vec<String> = (0..3)
        .map(|_| rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap())
        .collect();
    assert_eq!(lines, ["a", "b", "c"]);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let offsets: serde_json::Value =
        serde_json::from_str(&ok(mlog(b, &["group", "offsets", "g", "-o", "json"], b""))).unwrap();
    assert_eq!(offsets["offsets"][0]["offset"], 3, "{offsets}");
}
