//! A real `mlog-broker` process for tests (client, CLI and bench tests share this file).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The broker binary, built by the same workspace test run (next to this test's `deps` directory).
fn broker_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("mlog-broker")
}

/// Starts a 2-shard broker on `listen` with its data in `dir`; returns it once it listens, with the
/// address it reports.
fn spawn(dir: &Path, listen: &str) -> (Child, String) {
    let mut child = Command::new(broker_binary())
        .args(["--listen", listen, "--shards", "2", "--data-dir"])
        .arg(dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the mlog-broker binary is built with the workspace");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("mlog-broker listening address=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("broker started");
    (child, addr)
}

pub struct Broker(Child, String);

impl Broker {
    /// A broker on an ephemeral port of 127.0.0.1.
    pub fn start(dir: &Path) -> Broker {
        let (child, addr) = spawn(dir, "127.0.0.1:0");
        Broker(child, addr)
    }

    /// Stops the broker (SIGKILL) and starts it again on the same data and port.
    pub fn restart(&mut self, dir: &Path) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        self.0 = spawn(dir, &self.1).0;
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the broker process: a broker that answers nothing for a
    /// while, though the kernel still accepts its connections' bytes.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([signal, &self.0.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {signal}");
    }

    /// Creates a topic with the default configuration (the test fails if that fails).
    pub async fn create_topic(&self, name: &str, partitions: u32) {
        mlog_client::Admin::connect(self.addr())
            .await
            .expect("admin connects")
            .create_topic(name, partitions, &[])
            .await
            .expect("topic created");
    }

    /// The broker's address.
    pub fn addr(&self) -> &str {
        &self.1
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
