//! A full disk: the broker answers StorageError, keeps serving, and keeps every acknowledged record.
//! Needs root and loop devices (it mounts a 64 MiB ext4 image); without them it says so and passes.

mod common;

use std::process::Command;

use common::*;
use mlog_wire::protocol::messages::*;
use mlog_wire::protocol::{ApiKey, ErrorCode, RawBytes};
use mlog_wire::{NewRecord, RecordBatch, RecordBatchBuilder};

/// A loop-mounted filesystem, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
    _image: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let image_dir = tempfile::tempdir().ok()?;
        let image = image_dir.path().join("fs.img");
        std::fs::File::create(&image).ok()?.set_len(bytes).ok()?;
        let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
        if !ok(Command::new("mkfs.ext4").arg("-q").arg(&image)) {
            return None;
        }
        let dir = tempfile::tempdir().ok()?;
        if !ok(Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&image)
            .arg(dir.path()))
        {
            return None;
        }
        Some(SmallDisk {
            dir,
            _image: image_dir,
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}

fn batch(i: usize) -> Vec<u8> {
    let mut b = RecordBatchBuilder::new();
    let value = vec![(i % 251) as u8; 64 << 10];
    // Current timestamps: a roll applies age retention, which would delete 1970's records.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for r in 0..4 {
        b.push(NewRecord::new(now_ms + r, None, Some(&value)))
            .unwrap();
    }
    b.build().unwrap()
}

#[test]
fn a_full_disk_gets_storage_errors_and_loses_nothing_acknowledged() {
    let Some(disk) = SmallDisk::mount(64 << 20) else {
        eprintln!("SKIPPED: cannot mount a loop filesystem here (needs root and loop devices)");
        return;
    };
    let data = disk.dir.path().join("data");
    let broker = Broker::start(&data, &[]);
    let mut s = broker.connect();
    let configs = [
        ("segment.bytes", "4194304"),
        ("max.message.bytes", "1048576"),
    ];
    assert_eq!(create(&mut s, "fill", 1, &configs).error, ErrorCode::None);
    let mut acked = Vec::new();
    let mut full = 0;
    for i in 0..400 {
        let b = batch(i);
        let req = ProduceRequest {
            acks: -1,
            timeout_ms: 10_000,
            topics: vec![ProduceTopic {
                name: "fill",
                partitions: vec![ProducePartition {
                    partition: 0,
                    records: RawBytes(&b),
                }],
            }],
        };
        let r: ProduceResponse = call(&mut s, ApiKey::Produce, i as u32, &req);
        let r = &r.topics[0].partitions[0];
        match r.error {
            ErrorCode::None => acked.push((r.base_offset, b)),
            ErrorCode::StorageError => {
                full += 1;
                if full > 5 {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        full > 0,
        "the disk never filled ({} batches acknowledged)",
        acked.len()
    );
    assert!(!acked.is_empty());
    // The broker still serves, and every acknowledged batch reads back.
    let m = metadata(&mut s, Some(vec!["fill".into()]));
    assert_eq!(m.topics[0].error, ErrorCode::None);
    for (offset, b) in &acked {
        let req = FetchRequest {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 2 << 20,
            topics: vec![FetchTopic {
                name: "fill".into(),
                partitions: vec![FetchPartition {
                    partition: 0,
                    fetch_offset: *offset,
                    max_bytes: 1,
                }],
            }],
        };
        let got = call_owned(&mut s, ApiKey::Fetch, 7, &req, |body| {
            let r: FetchResponse<'_> =
                mlog_wire::protocol::frame::decode_body(body, "fetch").unwrap();
            r.topics[0].partitions[0].records.0.to_vec()
        });
        let first = RecordBatch::parse(&got).unwrap();
        let mut expected = b.clone();
        mlog_wire::set_base_offset(&mut expected, *offset);
        assert_eq!(first.as_bytes(), &expected[..], "offset {offset}");
    }
    assert_eq!(broker.terminate(), 0);
}
