//! What makes a broker process the only owner of its data directory and port.
//!
//! glommio sets `SO_REUSEPORT` on every listener so that all shards can accept on one port; the same
//! flag would let a second broker bind that port silently and take half the connections. So before
//! any shard binds, the broker takes an exclusive lock on `<data_dir>/.lock` (held for the life of
//! the process, released by the kernel even on `kill -9`), claims its listen addresses among mlog
//! brokers (`lock_port`, so two starting at once cannot both take one), and checks that nothing
//! else answers on them.

use std::fs::{File, TryLockError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why the broker refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another mlog-broker process")]
    DataDirInUse(PathBuf),
    /// Something else serves the port.
    #[error("address {0} is already in use by another process")]
    AddressInUse(SocketAddr),
    /// An I/O error while preparing.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path or address involved.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The exclusive lock on a data directory; released when dropped or when the process dies.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Creates `dir` if needed and locks it for this process.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, StartError> {
    let io = |op, source| StartError::Io {
        op,
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io("creating data directory", e))?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(|e| io("opening lock file in", e))?;
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(TryLockError::WouldBlock) => Err(StartError::DataDirInUse(dir.to_path_buf())),
        Err(TryLockError::Error(e)) => Err(io("locking", e)),
    }
}

/// A claim on a listen address among mlog brokers of this network namespace: an abstract Unix
/// socket named after the address, which only one process can bind and which the kernel releases
/// when the process dies (even on `kill -9`). Closes the window in which two brokers starting at
/// once both find the port free and both bind it (`SO_REUSEPORT`). The claim is per address as
/// written: brokers on `0.0.0.0:P` and `127.0.0.1:P` starting at the same instant are not caught by
/// it (the port check still finds one already serving).
#[derive(Debug)]
pub struct PortLock {
    _socket: std::os::unix::net::UnixListener,
}

/// Claims `addr` for this process (port 0 needs no claim: it is always a fresh port).
pub fn lock_port(addr: SocketAddr) -> Result<Option<PortLock>, StartError> {
    use std::os::linux::net::SocketAddrExt;
    if addr.port() == 0 {
        return Ok(None);
    }
    let io = |source| StartError::Io {
        op: "claiming",
        path: addr.to_string(),
        source,
    };
    let name = std::os::unix::net::SocketAddr::from_abstract_name(format!("mlog-broker {addr}"))
        .map_err(io)?;
    match std::os::unix::net::UnixListener::bind_addr(&name) {
        Ok(socket) => Ok(Some(PortLock { _socket: socket })),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(StartError::AddressInUse(addr)),
        Err(e) => Err(io(e)),
    }
}

/// How long a port must stay served before the broker refuses to start on it.
const PORT_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Fails if another process already serves `addr` (port 0 is always free): something answers a
/// connection to it. (A bind probe cannot tell: `SO_REUSEPORT` lets a second listener bind, and
/// the closing connections a killed broker leaves on its port make a plain bind fail although
/// nothing serves it.)
pub fn check_port_free(addr: SocketAddr) -> Result<(), StartError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let target = match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    };
    // A broker killed a moment ago leaves its listeners open until the kernel has torn down its
    // io_uring rings (asynchronously, after the process is gone): give that a few seconds.
    let deadline = std::time::Instant::now() + PORT_RELEASE_WAIT;
    loop {
        let served = match std::net::TcpStream::connect_timeout(
            &target,
            std::time::Duration::from_secs(1),
        ) {
            // A connection to itself (the kernel picked the target port as the source port,
            // possible when nothing listens on an ephemeral port) means the port is free.
            Ok(s) => s.local_addr().ok() != s.peer_addr().ok(),
            Err(_) => false,
        };
        if !served {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(StartError::AddressInUse(addr));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_process_at_a_time_claims_an_address() {
        // A port no test broker uses (they listen on port 0 or on their own fixed ports).
        let addr = SocketAddr::from(([127, 0, 0, 1], 61000 + (std::process::id() % 1000) as u16));
        let first = lock_port(addr).unwrap();
        assert!(first.is_some());
        assert!(matches!(lock_port(addr), Err(StartError::AddressInUse(_))));
        drop(first);
        assert!(
            lock_port(addr).unwrap().is_some(),
            "released when its holder goes"
        );
        assert!(lock_port(SocketAddr::from(([127, 0, 0, 1], 0)))
            .unwrap()
            .is_none());
    }
    use std::net::TcpListener;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_data_dir(dir.path()).unwrap();
        assert!(matches!(
            lock_data_dir(dir.path()),
            Err(StartError::DataDirInUse(_))
        ));
        drop(first);
        lock_data_dir(dir.path()).unwrap();
    }

    #[test]
    fn a_served_port_is_refused() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        assert!(matches!(
            check_port_free(addr),
            Err(StartError::AddressInUse(_))
        ));
        drop(held);
        check_port_free(addr).unwrap();
    }
}
