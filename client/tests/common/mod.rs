//! Helpers shared by the client's tests: a real `mlog-broker` process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
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

pub struct Broker(Child, String);

impl Broker {
    pub fn start(dir: &std::path::Path) -> Broker {
        let mut child = Command::new(broker_binary())
            .args(["--listen", "127.0.0.1:0", "--shards", "2", "--data-dir"])
            .arg(dir)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("the mlog-broker binary is built with the workspace");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("mlog-broker listening") {
                    if let Some(rest) = line.split("address=").nth(1) {
                        let _ = tx.send(
                            rest.split_whitespace()
                                .next()
                                .unwrap_or_default()
                                .to_string(),
                        );
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("broker started");
        Broker(child, addr)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Broker {
    /// Stops the broker (SIGKILL) and starts it again on the same data and port.
    pub fn restart(&mut self, dir: &std::path::Path) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let port = self.1.rsplit(':').next().unwrap_or_default().to_string();
        let mut child = Command::new(broker_binary())
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--shards",
                "2",
                "--data-dir",
            ])
            .arg(dir)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("restart mlog-broker");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("mlog-broker listening") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("broker restarted");
        self.0 = child;
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

    /// The broker's address.
    pub fn addr(&self) -> &str {
        &self.1
    }
}
