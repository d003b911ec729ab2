//! Broker configuration: defaults, overridden by a TOML file, overridden by `MLOG_*` environment
//! variables, overridden by command-line flags. `mlog-broker` alone runs a single node on
//! 127.0.0.1:9092 with its data in `./mlog-data`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

/// Most shards a broker runs.
const MAX_SHARDS: usize = 1024;

/// Everything the broker runs with, after merging all sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Address every shard listens on (`SO_REUSEPORT`: the kernel spreads connections). Port 0 picks
    /// a free port, which the broker logs.
    pub listen: SocketAddr,
    /// Directory holding all data; locked for exclusive use.
    pub data_dir: PathBuf,
    /// Shards (one glommio executor pinned to one core each).
    pub shards: usize,
    /// Shard `i` also listens on `shard_port_base + i`, an address that reaches that shard only, so
    /// that shard-aware clients can talk to a partition's owner directly (Metadata advertises
    /// these). `None`: each shard takes a free port.
    pub shard_port_base: Option<u16>,
    /// Host name or address Metadata gives clients for the shard listeners (as Kafka's
    /// `advertised.listeners`). `None`: the address each shard listens on, which is wrong for remote
    /// clients when that is `0.0.0.0`.
    pub advertised_host: Option<String>,
    /// Largest frame a peer may send; larger length fields close the connection.
    pub max_frame_bytes: usize,
    /// Bytes of large requests (over 64 KiB) a shard buffers at once, over all its connections: a
    /// connection whose next frame does not fit waits (stops reading) until others' are served, so
    /// many clients sending large produces at once cannot run the broker out of memory (as Kafka's
    /// `queued.max.request.bytes`). At least `max_frame_bytes`.
    pub max_request_memory_bytes: usize,
    /// How often each shard applies its partitions' retention (`retention.ms`, `retention.bytes`).
    pub retention_check_ms: u64,
    /// Microseconds an idle shard spins before parking (0: park at once, no busy-spinning).
    pub spin_before_park_us: u64,
    /// The CPU time slice, in microseconds, each shard thread asks the kernel's EEVDF scheduler for
    /// (Linux 6.12+; older kernels ignore it). A short slice gets a woken shard onto its core ahead
    /// of threads with the default slice (a few ms); the shard still gets only its fair share. 0
    /// keeps the kernel's default.
    pub shard_slice_us: u64,
    /// I/O memory each shard registers with io_uring (counts against `RLIMIT_MEMLOCK`).
    pub io_memory_bytes: usize,
    /// Partitions the broker holds at most, per shard (all topics, the internal one included):
    /// each open partition costs file descriptors, index maps and buffers, so CreateTopics refuses
    /// to go past `shards` times this (as Redpanda's `topic_partitions_per_shard`).
    pub max_partitions_per_shard: u32,
    /// A large frame (one that holds request memory) must arrive, and every answer must be taken,
    /// within this many milliseconds plus its size at `slow_peer_min_bytes_per_sec`, or the
    /// connection is closed: peers that send or read slowly (or never) cannot keep the shard's
    /// memory for as long as they like.
    pub slow_peer_grace_ms: u64,
    /// See `slow_peer_grace_ms`.
    pub slow_peer_min_bytes_per_sec: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            data_dir: PathBuf::from("mlog-data"),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            shard_port_base: None,
            advertised_host: None,
            max_frame_bytes: mlog_wire::protocol::frame::DEFAULT_MAX_FRAME_BYTES,
            max_request_memory_bytes: 256 << 20,
            retention_check_ms: 60_000,
            spin_before_park_us: 0,
            shard_slice_us: 300,
            io_memory_bytes: 2 << 20,
            max_partitions_per_shard: 1000,
            slow_peer_grace_ms: 30_000,
            slow_peer_min_bytes_per_sec: 256 << 10,
        }
    }
}

/// The TOML file: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    shards: Option<usize>,
    shard_port_base: Option<u16>,
    advertised_host: Option<String>,
    max_frame_bytes: Option<usize>,
    max_request_memory_bytes: Option<usize>,
    retention_check_ms: Option<u64>,
    spin_before_park_us: Option<u64>,
    shard_slice_us: Option<u64>,
    io_memory_bytes: Option<usize>,
    max_partitions_per_shard: Option<u32>,
    slow_peer_grace_ms: Option<u64>,
    slow_peer_min_bytes_per_sec: Option<u64>,
}

/// Command line (each flag also reads its `MLOG_*` environment variable).
#[derive(Debug, Parser)]
#[command(
    name = "mlog-broker",
    version,
    about = "The mlog broker: a thread-per-core commit log.",
    after_help = "Examples:\n  mlog-broker\n  mlog-broker --listen 0.0.0.0:9092 --data-dir /var/lib/mlog --shards 4\n  mlog-broker --config /etc/mlog/broker.toml"
)]
pub struct Args {
    /// TOML configuration file (keys: listen, data_dir, shards, shard_port_base, advertised_host,
    /// max_frame_bytes, max_request_memory_bytes, retention_check_ms, spin_before_park_us,
    /// shard_slice_us, io_memory_bytes, max_partitions_per_shard, slow_peer_grace_ms,
    /// slow_peer_min_bytes_per_sec).
    #[arg(long, env = "MLOG_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:9092].
    #[arg(long, env = "MLOG_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory [default: ./mlog-data].
    #[arg(long, env = "MLOG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of shards [default: number of cores].
    #[arg(long, env = "MLOG_SHARDS")]
    pub shards: Option<usize>,
    /// First port of the per-shard listeners (shard i: base + i) [default: free ports].
    #[arg(long, env = "MLOG_SHARD_PORT_BASE")]
    pub shard_port_base: Option<u16>,
    /// Host clients are told to connect to for the shard listeners [default: the listen address].
    #[arg(long, env = "MLOG_ADVERTISED_HOST")]
    pub advertised_host: Option<String>,
    /// Largest accepted frame in bytes [default: 64 MiB].
    #[arg(long, env = "MLOG_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Bytes of large requests each shard buffers at once [default: 256 MiB].
    #[arg(long, env = "MLOG_MAX_REQUEST_MEMORY_BYTES")]
    pub max_request_memory_bytes: Option<usize>,
    /// Milliseconds between retention passes [default: 60000].
    #[arg(long, env = "MLOG_RETENTION_CHECK_MS")]
    pub retention_check_ms: Option<u64>,
    /// Spin this many microseconds before parking an idle shard [default: 0].
    #[arg(long, env = "MLOG_SPIN_BEFORE_PARK_US")]
    pub spin_before_park_us: Option<u64>,
    /// CPU time slice each shard thread asks the scheduler for, in microseconds (0: the kernel's
    /// default) [default: 300].
    #[arg(long, env = "MLOG_SHARD_SLICE_US")]
    pub shard_slice_us: Option<u64>,
    /// io_uring I/O memory per shard in bytes [default: 2 MiB].
    #[arg(long, env = "MLOG_IO_MEMORY_BYTES")]
    pub io_memory_bytes: Option<usize>,
    /// Most partitions per shard, all topics together [default: 1000].
    #[arg(long, env = "MLOG_MAX_PARTITIONS_PER_SHARD")]
    pub max_partitions_per_shard: Option<u32>,
    /// Milliseconds a large frame or an answer may take beyond its size at
    /// --slow-peer-min-bytes-per-sec before the connection is closed [default: 30000].
    #[arg(long, env = "MLOG_SLOW_PEER_GRACE_MS")]
    pub slow_peer_grace_ms: Option<u64>,
    /// Slowest transfer of a large frame or an answer, in bytes per second [default: 262144].
    #[arg(long, env = "MLOG_SLOW_PEER_MIN_BYTES_PER_SEC")]
    pub slow_peer_min_bytes_per_sec: Option<u64>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(&'static str),
}

impl BrokerConfig {
    /// How long a peer may take to send a large frame or take an answer of `bytes`.
    pub fn slow_peer_allowance(&self, bytes: usize) -> std::time::Duration {
        std::time::Duration::from_millis(self.slow_peer_grace_ms)
            + std::time::Duration::from_secs_f64(
                bytes as f64 / self.slow_peer_min_bytes_per_sec as f64,
            )
    }

    /// Merges defaults, the file named by `args.config`, and the flags/environment in `args`.
    pub fn load(args: &Args) -> Result<BrokerConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let d = BrokerConfig::default();
        let config = BrokerConfig {
            listen: args.listen.or(file.listen).unwrap_or(d.listen),
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or(d.data_dir),
            shards: args.shards.or(file.shards).unwrap_or(d.shards),
            shard_port_base: args.shard_port_base.or(file.shard_port_base),
            advertised_host: args
                .advertised_host
                .clone()
                .or(file.advertised_host)
                .or(d.advertised_host),
            max_frame_bytes: args
                .max_frame_bytes
                .or(file.max_frame_bytes)
                .unwrap_or(d.max_frame_bytes),
            max_request_memory_bytes: args
                .max_request_memory_bytes
                .or(file.max_request_memory_bytes)
                .unwrap_or(d.max_request_memory_bytes),
            retention_check_ms: args
                .retention_check_ms
                .or(file.retention_check_ms)
                .unwrap_or(d.retention_check_ms),
            spin_before_park_us: args
                .spin_before_park_us
                .or(file.spin_before_park_us)
                .unwrap_or(d.spin_before_park_us),
            shard_slice_us: args
                .shard_slice_us
                .or(file.shard_slice_us)
                .unwrap_or(d.shard_slice_us),
            io_memory_bytes: args
                .io_memory_bytes
                .or(file.io_memory_bytes)
                .unwrap_or(d.io_memory_bytes),
            max_partitions_per_shard: args
                .max_partitions_per_shard
                .or(file.max_partitions_per_shard)
                .unwrap_or(d.max_partitions_per_shard),
            slow_peer_grace_ms: args
                .slow_peer_grace_ms
                .or(file.slow_peer_grace_ms)
                .unwrap_or(d.slow_peer_grace_ms),
            slow_peer_min_bytes_per_sec: args
                .slow_peer_min_bytes_per_sec
                .or(file.slow_peer_min_bytes_per_sec)
                .unwrap_or(d.slow_peer_min_bytes_per_sec),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        // Every pair of shards has a channel, and each shard registers its own I/O memory.
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return Err(ConfigError::Invalid("shards must be between 1 and 1024"));
        }
        if self
            .shard_port_base
            .is_some_and(|b| b as usize + self.shards > u16::MAX as usize + 1 || b == 0)
        {
            return Err(ConfigError::Invalid(
                "shard_port_base + shards must be valid ports",
            ));
        }
        if self.retention_check_ms == 0 {
            return Err(ConfigError::Invalid(
                "retention_check_ms must be at least 1",
            ));
        }
        if !(1024..=1 << 30).contains(&self.max_frame_bytes) {
            return Err(ConfigError::Invalid(
                "max_frame_bytes must be between 1024 and 1 GiB",
            ));
        }
        if self.max_request_memory_bytes < self.max_frame_bytes {
            return Err(ConfigError::Invalid(
                "max_request_memory_bytes must be at least max_frame_bytes",
            ));
        }
        if self.slow_peer_min_bytes_per_sec == 0 {
            return Err(ConfigError::Invalid(
                "slow_peer_min_bytes_per_sec must be at least 1",
            ));
        }
        if self.max_partitions_per_shard == 0 {
            return Err(ConfigError::Invalid(
                "max_partitions_per_shard must be at least 1",
            ));
        }
        if self.shard_slice_us != 0 && !(100..=100_000).contains(&self.shard_slice_us) {
            return Err(ConfigError::Invalid(
                "shard_slice_us must be 0 or between 100 and 100000 (the kernel's bounds)",
            ));
        }
        if self.io_memory_bytes < 64 << 10 {
            return Err(ConfigError::Invalid(
                "io_memory_bytes must be at least 65536",
            ));
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("mlog-broker").chain(list.iter().copied())).unwrap()
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:7000\"\nshards = 3\n").unwrap();
        let c = BrokerConfig::load(&args(&[
            "--config",
            file.to_str().unwrap(),
            "--shards",
            "2",
        ]))
        .unwrap();
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 7000)));
        assert_eq!(c.shards, 2);
        assert_eq!(c.data_dir, PathBuf::from("mlog-data"));
    }

    #[test]
    fn bad_files_and_values_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let err = BrokerConfig::load(&args(&["--config", file.to_str().unwrap()])).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        assert!(BrokerConfig::load(&args(&["--shards", "0"])).is_err());
        assert!(BrokerConfig::load(&args(&["--shards", "65535"])).is_err());
        assert!(BrokerConfig::load(&args(&["--max-frame-bytes", "4294967296"])).is_err());
        assert!(BrokerConfig::load(&args(&["--max-partitions-per-shard", "0"])).is_err());
        assert!(BrokerConfig::load(&args(&["--shard-slice-us", "50"])).is_err());
        assert!(BrokerConfig::load(&args(&["--shard-slice-us", "200000"])).is_err());
        assert_eq!(
            BrokerConfig::load(&args(&["--shard-slice-us", "0"]))
                .unwrap()
                .shard_slice_us,
            0
        );
        assert!(BrokerConfig::load(&args(&["--config", "/nonexistent/broker.toml"])).is_err());
    }
}
