//! Small state files written atomically: temp file, `fsync`, `rename`, `fsync` of the directory.
//!
//! Invariant: a checkpoint file on disk is either absent or a complete, CRC-checked record of one
//! write; a torn write can only leave a `*.tmp` file behind, which `Log::open` removes.
//!
//! Layout (big-endian): magic `MLCK` (4) | version u8 = 1 | kind u8 | payload length u32 | payload |
//! CRC-32C u32 of everything before it.
//!
//! These functions block; the log runs them on glommio's blocking thread pool.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result, StorageError};

const MAGIC: &[u8; 4] = b"MLCK";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 10;
/// Largest checkpoint payload accepted when reading (leader-epoch history is the biggest: 12 bytes an
/// entry); bounds the allocation a damaged file can cause.
const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Suffix of a checkpoint being written; leftovers are removed at open.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// Which state a checkpoint holds (stored in the file so a mixed-up name is caught).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    RecoveryPoint = 1,
    HighWatermark = 2,
    LogStartOffset = 3,
    LeaderEpochs = 4,
    CleanShutdown = 5,
    ProducerSnapshot = 6,
}

impl Kind {
    pub(crate) fn file_name(self) -> &'static str {
        match self {
            Kind::RecoveryPoint => "recovery-point.ckpt",
            Kind::HighWatermark => "high-watermark.ckpt",
            Kind::LogStartOffset => "log-start-offset.ckpt",
            Kind::LeaderEpochs => "leader-epoch.ckpt",
            Kind::CleanShutdown => "clean-shutdown.ckpt",
            Kind::ProducerSnapshot => "producer-snapshot.ckpt",
        }
    }

    pub(crate) const ALL: [Kind; 6] = [
        Kind::RecoveryPoint,
        Kind::HighWatermark,
        Kind::LogStartOffset,
        Kind::LeaderEpochs,
        Kind::CleanShutdown,
        Kind::ProducerSnapshot,
    ];
}

/// Encodes a checkpoint file's bytes.
pub(crate) fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + 4);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    let crc = mlog_wire::checksum::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes a checkpoint file's bytes, returning the payload.
pub(crate) fn decode(kind: u8, bytes: &[u8]) -> std::result::Result<&[u8], &'static str> {
    if bytes.len() < HEADER_LEN + 4 {
        return Err("shorter than a checkpoint header");
    }
    if &bytes[..4] != MAGIC {
        return Err("bad magic");
    }
    if bytes[4] != VERSION {
        return Err("unsupported version");
    }
    if bytes[5] != kind {
        return Err("checkpoint kind does not match its file name");
    }
    let len = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]) as usize;
    if len > MAX_PAYLOAD_BYTES || bytes.len() != HEADER_LEN + len + 4 {
        return Err("length disagrees with file size");
    }
    let (body, crc) = bytes.split_at(HEADER_LEN + len);
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if mlog_wire::checksum::crc32c(body) != stored {
        return Err("CRC mismatch");
    }
    Ok(&body[HEADER_LEN..])
}

/// Atomically replaces `dir/kind` with `payload`.
pub(crate) fn write(dir: &Path, kind: Kind, payload: &[u8]) -> Result<()> {
    write_bytes(dir, kind.file_name(), &encode(kind as u8, payload))
}

/// Atomically replaces `dir/name` with a checkpoint of `kind` (a number of the caller's choosing,
/// checked on read) holding `payload`. For other crates' small state files (the broker's topic
/// table).
pub fn write_named(dir: &Path, name: &str, kind: u8, payload: &[u8]) -> Result<()> {
    write_bytes(dir, name, &encode(kind, payload))
}

/// Reads `dir/name` written by `write_named`: `Ok(None)` if absent, an error if damaged.
pub fn read_named(dir: &Path, name: &str, kind: u8) -> Result<Option<Vec<u8>>> {
    read_bytes(dir, name, kind)
}

fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = tmp_path(&path);
    let mut f = File::create(&tmp).ctx("creating checkpoint", &tmp)?;
    f.write_all(bytes).ctx("writing checkpoint", &tmp)?;
    f.sync_all().ctx("syncing checkpoint", &tmp)?;
    drop(f);
    fs::rename(&tmp, &path).ctx("renaming checkpoint", &path)?;
    sync_dir(dir)
}

/// Reads `dir/kind`: `Ok(None)` if absent, an error if present but damaged.
pub(crate) fn read(dir: &Path, kind: Kind) -> Result<Option<Vec<u8>>> {
    read_bytes(dir, kind.file_name(), kind as u8)
}

fn read_bytes(dir: &Path, name: &str, kind: u8) -> Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    // At most one byte more than the largest valid file: a damaged, huge file is refused below
    // without being read whole.
    let limit = (HEADER_LEN + MAX_PAYLOAD_BYTES + 4 + 1) as u64;
    let mut bytes = Vec::new();
    match File::open(&path).and_then(|f| f.take(limit).read_to_end(&mut bytes)) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("reading checkpoint", path, e)),
    }
    match decode(kind, &bytes) {
        Ok(payload) => Ok(Some(payload.to_vec())),
        Err(reason) => Err(StorageError::CorruptCheckpoint { path, reason }),
    }
}

/// Removes `dir/kind` durably (the directory is synced), ignoring absence.
pub(crate) fn remove(dir: &Path, kind: Kind) -> Result<()> {
    let path = dir.join(kind.file_name());
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("removing checkpoint", path, e)),
    }
}

/// `fsync`s a directory so that creations, renames and removals in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("syncing directory", dir)
}

/// `sync_dir` on the executor's blocking pool: a directory fsync takes milliseconds (it waits for a
/// journal commit), and the executor meanwhile serves every other partition of its shard.
pub(crate) async fn sync_dir_off_executor(dir: &Path) -> Result<()> {
    let dir = dir.to_path_buf();
    glommio::executor()
        .spawn_blocking(move || sync_dir(&dir))
        .await
}

/// A temp name no other write uses: a write whose caller was cancelled may still be running on
/// the blocking pool, and two writes must never share a temp file.
fn tmp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{}-{n}{TMP_SUFFIX}", std::process::id()));
    PathBuf::from(s)
}

/// A u64 payload.
pub(crate) fn u64_payload(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Parses a u64 payload.
pub(crate) fn parse_u64(path: &Path, payload: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = payload
        .try_into()
        .map_err(|_| StorageError::CorruptCheckpoint {
            path: path.to_path_buf(),
            reason: "payload is not 8 bytes",
        })?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_damage_is_detected() {
        let bytes = encode(Kind::HighWatermark as u8, &u64_payload(42));
        assert_eq!(
            decode(Kind::HighWatermark as u8, &bytes).unwrap(),
            &42u64.to_be_bytes()
        );
        assert!(decode(Kind::RecoveryPoint as u8, &bytes).is_err());
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode(Kind::HighWatermark as u8, &b).is_err(), "bit {i}");
        }
        for k in 0..bytes.len() {
            assert!(decode(Kind::HighWatermark as u8, &bytes[..k]).is_err());
        }
    }

    #[test]
    fn a_huge_damaged_checkpoint_is_refused_without_reading_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), Kind::RecoveryPoint, &u64_payload(7)).unwrap();
        // A sparse 64 GiB file: read whole, it would not fit in memory.
        let path = dir.path().join(Kind::RecoveryPoint.file_name());
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(64 << 30)
            .unwrap();
        let err = read(dir.path(), Kind::RecoveryPoint).unwrap_err();
        assert!(
            matches!(err, StorageError::CorruptCheckpoint { .. }),
            "{err}"
        );
    }

    #[test]
    fn write_read_remove() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path(), Kind::RecoveryPoint).unwrap().is_none());
        write(dir.path(), Kind::RecoveryPoint, &u64_payload(7)).unwrap();
        let p = read(dir.path(), Kind::RecoveryPoint).unwrap().unwrap();
        assert_eq!(parse_u64(dir.path(), &p).unwrap(), 7);
        remove(dir.path(), Kind::RecoveryPoint).unwrap();
        assert!(read(dir.path(), Kind::RecoveryPoint).unwrap().is_none());
        std::fs::write(dir.path().join(Kind::RecoveryPoint.file_name()), b"garbage").unwrap();
        assert!(matches!(
            read(dir.path(), Kind::RecoveryPoint),
            Err(StorageError::CorruptCheckpoint { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode(Kind::LeaderEpochs as u8, &bytes);
        }
    }
}
