//! Makes glommio's io_uring poll-ring probe see the truth.
//!
//! glommio decides, once per thread and block device, whether DMA reads and writes may use an
//! `IORING_SETUP_IOPOLL` ring: it issues a 4 KiB read at offset 0 of the *first* DMA file opened on
//! that device and enables polling unless the kernel answers `EOPNOTSUPP`. When that first file is
//! empty (a new segment), the kernel answers the read without reaching the device, glommio enables
//! polling, and on a device without poll queues (virtio disks, most cloud volumes) every later
//! DMA read then fails with `EOPNOTSUPP`. Opening a file that holds a real block first makes the
//! probe exercise the device, so the answer is right for the rest of the thread's life.

use std::cell::RefCell;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use glommio::io::DmaFile;

use crate::error::{IoContext, Result};

thread_local! {
    /// Devices (`st_dev`) whose probe this thread already ran.
    static PROBED: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Name of the scratch file; it ends in `.tmp`, so a leftover is removed like any temp file.
const PROBE_FILE: &str = ".dma-probe.tmp";

/// Runs glommio's poll-ring probe against a real 4 KiB block in `dir`, once per thread and device.
/// Call it before the first DMA file of a device is opened on this executor.
pub async fn ensure_probed(dir: &Path) -> Result<()> {
    let device = std::fs::metadata(dir)
        .ctx("reading directory metadata", dir)?
        .dev();
    if PROBED.with_borrow(|p| p.contains(&device)) {
        return Ok(());
    }
    let path = dir.join(PROBE_FILE);
    std::fs::write(&path, [0xa5u8; 4096]).ctx("writing DMA probe file", &path)?;
    let opened = DmaFile::open(&path)
        .await
        .ctx("opening DMA probe file", &path);
    if let Ok(file) = opened {
        let _ = file.close().await;
    }
    std::fs::remove_file(&path).ctx("removing DMA probe file", &path)?;
    PROBED.with_borrow_mut(|p| p.insert(device));
    Ok(())
}
