//! The producer: batching by partition, key partitioning, acks, retries and bounded memory.
//!
//! Records are appended to a per-partition batch (a Kafka v2 `RecordBatchBuilder`); a batch is sent
//! when it reaches `batch_bytes` or `linger` after its first record, to the shard that owns the
//! partition (found in Metadata). One batch per partition is in flight at a time, sent by that
//! partition's sender task in the order the batches were taken, so a partition's records are stored
//! in the order their sends were enqueued: sends awaited one after another, or polled in order (as
//! `join_all` does) while buffer memory is available. Memory is bounded: `send` waits while `buffer_bytes` of
//! records are buffered or in flight (back-pressure instead of unbounded growth).
//!
//! Retries resend a batch after a retriable error (connection lost, timeout, broker stopping) with
//! exponential backoff; without idempotence a retried batch can be stored twice if the first
//! attempt was in fact appended.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mlog_wire::protocol::messages::*;
use mlog_wire::protocol::{ApiKey, ErrorCode, RawBytes};
use mlog_wire::{NewRecord, RecordBatchBuilder, RecordHeader};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::connection::Connection;
use crate::error::{ClientError, Result};

/// The acknowledgement a producer waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// No response at all.
    None,
    /// The leader appended the batch.
    Leader,
    /// Durable on every in-sync replica (single node: fdatasynced on `flush.policy=always` topics).
    All,
}

impl Acks {
    fn wire(self) -> i8 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Acknowledgement level.
    pub acks: Acks,
    /// How long a batch waits for more records after its first.
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes.
    pub batch_bytes: usize,
    /// Records buffered or in flight, in bytes, before `send` waits.
    pub buffer_bytes: usize,
    /// Attempts after the first for a batch that failed with a retriable error.
    pub retries: u32,
    /// Wait before the first retry (doubling each time).
    pub retry_backoff: Duration,
    /// How long the broker may take to acknowledge (acks=all).
    pub request_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes: 256 << 10,
            buffer_bytes: 32 << 20,
            retries: 5,
            retry_backoff: Duration::from_millis(50),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Where a record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Partition.
    pub partition: u32,
    /// Offset (`-1` with `Acks::None`, which gets no answer).
    pub offset: i64,
}

type Waiter = oneshot::Sender<Result<RecordMetadata>>;
/// `(topic, partition)`.
type Slot = (String, u32);
/// A connection, made on first use and dropped after a failure.
type SharedConnection = Arc<tokio::sync::Mutex<Option<Connection>>>;

/// A batch being filled.
struct Pending {
    id: u64,
    builder: RecordBatchBuilder,
    waiters: Vec<Waiter>,
    /// The buffer memory its records hold, released when the batch completes.
    permit: Option<OwnedSemaphorePermit>,
}

struct Inner {
    bootstrap: String,
    config: ProducerConfig,
    memory: Arc<Semaphore>,
    /// Batches being filled, by topic then partition (looked up without allocating).
    pending: Mutex<HashMap<String, HashMap<u32, Pending>>>,
    /// Each partition's sender task, fed its batches in order.
    senders: Mutex<HashMap<Slot, tokio::sync::mpsc::UnboundedSender<Pending>>>,
    /// The listener of each partition's owner shard.
    routes: Mutex<HashMap<Slot, String>>,
    partition_counts: Mutex<HashMap<String, u32>>,
    connections: Mutex<HashMap<String, SharedConnection>>,
    next_batch: AtomicU64,
    round_robin: AtomicU64,
    /// Serializes the entry of records into the buffers (see `Producer::begin_send`).
    order: tokio::sync::Mutex<()>,
}

/// Sends records to topics.
///
/// ```no_run
/// # async fn example() -> Result<(), mlog_client::ClientError> {
/// use mlog_client::{Producer, ProducerConfig};
/// let producer = Producer::connect("127.0.0.1:9092", ProducerConfig::default()).await?;
/// let stored = producer.send("orders", Some(b"customer-7"), b"{\"total\": 12}", &[]).await?;
/// println!("partition {} offset {}", stored.partition, stored.offset);
/// producer.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl Producer {
    /// Connects to a broker of the cluster.
    pub async fn connect(bootstrap: &str, config: ProducerConfig) -> Result<Producer> {
        if config.buffer_bytes == 0 || u32::try_from(config.buffer_bytes).is_err() {
            return Err(ClientError::Protocol(
                "buffer_bytes must be between 1 and 4 GiB - 1".into(),
            ));
        }
        // Fail early and clearly if the broker cannot be reached.
        Connection::connect(bootstrap).await?;
        Ok(Producer {
            inner: Arc::new(Inner {
                bootstrap: bootstrap.to_string(),
                memory: Arc::new(Semaphore::new(config.buffer_bytes)),
                config,
                pending: Mutex::new(HashMap::new()),
                senders: Mutex::new(HashMap::new()),
                routes: Mutex::new(HashMap::new()),
                partition_counts: Mutex::new(HashMap::new()),
                connections: Mutex::new(HashMap::new()),
                next_batch: AtomicU64::new(0),
                round_robin: AtomicU64::new(0),
                order: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Sends one record. The partition is the key's hash (or round-robin without a key). Resolves
    /// once the broker acknowledged the record's batch at the configured level.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> Result<RecordMetadata> {
        self.begin_send(topic, None, key, value, headers)
            .await?
            .await
    }

    /// Sends one record to a given partition.
    pub async fn send_to(
        &self,
        topic: &str,
        partition: u32,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> Result<RecordMetadata> {
        self.begin_send(topic, Some(partition), key, value, headers)
            .await?
            .await
    }

    /// Buffers one record (to `partition`, or by key hash / round-robin) and returns the future of
    /// its acknowledgement. Records buffered by `begin_send` calls awaited one after another are
    /// stored in that order within a partition, while the acknowledgements can be awaited later
    /// (what `mlog produce` does to keep input order without waiting for each record).
    pub async fn begin_send(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> Result<impl std::future::Future<Output = Result<RecordMetadata>> + Send + 'static> {
        // One record enters the buffers at a time, in the order the calls arrived (tokio's mutex
        // is fair): a first send that has to look up the topic cannot be overtaken by later ones.
        let _order = self.inner.order.lock().await;
        let partition = match partition {
            Some(p) => p,
            None => {
                let partitions = self.inner.partition_count(topic).await?;
                match key {
                    Some(k) => (hash(k) % partitions as u64) as u32,
                    None => {
                        (self.inner.round_robin.fetch_add(1, Ordering::Relaxed) % partitions as u64)
                            as u32
                    }
                }
            }
        };
        let rx = self.enqueue(topic, partition, key, value, headers).await?;
        Ok(async move {
            rx.await
                .map_err(|_| ClientError::Protocol("the producer was dropped".into()))?
        })
    }

    /// Buffers one record and returns where its acknowledgement will arrive.
    async fn enqueue(
        &self,
        topic: &str,
        partition: u32,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> Result<oneshot::Receiver<Result<RecordMetadata>>> {
        let size = 32
            + key.map_or(0, <[u8]>::len)
            + value.len()
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>();
        // Take the memory without yielding when it is there: a send that yields here (tokio's
        // cooperative budget makes even an available semaphore yield now and then) would be
        // enqueued after sends polled later, and a partition's records keep the order in which
        // their sends are enqueued.
        let units = size.min(self.inner.config.buffer_bytes) as u32;
        let closed = || ClientError::Protocol("the producer is closed".into());
        let permit = match self.inner.memory.clone().try_acquire_many_owned(units) {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(closed()),
            Err(tokio::sync::TryAcquireError::NoPermits) => self
                .inner
                .memory
                .clone()
                .acquire_many_owned(units)
                .await
                .map_err(|_| closed())?,
        };
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let headers: Vec<RecordHeader<'_>> = headers
            .iter()
            .map(|(k, v)| RecordHeader {
                key: k,
                value: Some(v),
            })
            .collect();
        let record = NewRecord::new(timestamp, key, Some(value)).with_headers(&headers);
        let (tx, rx) = oneshot::channel();
        let (full, new_batch) = {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            if !pending.contains_key(topic) {
                pending.insert(topic.to_string(), HashMap::new());
            }
            let Some(partitions) = pending.get_mut(topic) else {
                return Err(ClientError::Protocol("batch table lost a topic".into()));
            };
            let new_batch = !partitions.contains_key(&partition);
            let batch = partitions.entry(partition).or_insert_with(|| Pending {
                id: self.inner.next_batch.fetch_add(1, Ordering::Relaxed),
                builder: RecordBatchBuilder::new(),
                waiters: Vec::new(),
                permit: None,
            });
            batch
                .builder
                .push(record)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            batch.waiters.push(tx);
            match &mut batch.permit {
                Some(p) => p.merge(permit),
                None => batch.permit = Some(permit),
            }
            let full = batch.builder.encoded_len() >= self.inner.config.batch_bytes;
            (full.then_some(batch.id), new_batch.then_some(batch.id))
        };
        let slot = || (topic.to_string(), partition);
        if let Some(id) = full {
            self.inner.clone().dispatch(slot(), id);
        } else if let Some(id) = new_batch {
            let inner = self.inner.clone();
            let linger = inner.config.linger;
            let slot = slot();
            tokio::spawn(async move {
                tokio::time::sleep(linger).await;
                inner.dispatch(slot, id);
            });
        }
        Ok(rx)
    }

    /// Sends every buffered record now and waits until all are acknowledged (or failed).
    pub async fn flush(&self) -> Result<()> {
        let slots: Vec<(Slot, u64)> = {
            let pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending
                .iter()
                .flat_map(|(t, parts)| parts.iter().map(move |(p, b)| ((t.clone(), *p), b.id)))
                .collect()
        };
        for (slot, id) in slots {
            self.inner.clone().dispatch(slot, id);
        }
        // Every permit back means nothing is buffered or in flight.
        let all = u32::try_from(self.inner.config.buffer_bytes).unwrap_or(u32::MAX);
        let permits = self
            .inner
            .memory
            .acquire_many(all)
            .await
            .map_err(|_| ClientError::Protocol("the producer is closed".into()))?;
        drop(permits);
        Ok(())
    }

    /// Flushes, then refuses further sends.
    pub async fn close(&self) -> Result<()> {
        self.flush().await?;
        self.inner.memory.close();
        Ok(())
    }
}

impl Inner {
    /// Takes batch `id` of `slot` (if it is still the pending one) and sends it in the background.
    fn dispatch(self: Arc<Self>, slot: (String, u32), id: u64) {
        let batch = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let partitions = pending.get_mut(&slot.0);
            match partitions {
                Some(parts) if parts.get(&slot.1).is_some_and(|p| p.id == id) => {
                    parts.remove(&slot.1)
                }
                _ => None,
            }
        };
        let Some(batch) = batch else { return };
        // Batches of a partition go out one at a time, in the order they were taken: each
        // partition has one sender task fed through a channel (spawning a task per batch would let
        // the scheduler reorder them).
        let queue = {
            let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
            senders
                .entry(slot.clone())
                .or_insert_with(|| {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    tokio::spawn(partition_sender(Arc::downgrade(&self), slot.clone(), rx));
                    tx
                })
                .clone()
        };
        // The sender task lives as long as the producer; a send can only fail after shutdown, and
        // then the batch's waiters learn it from their dropped channels.
        let _ = queue.send(batch);
    }

    /// Sends one batch with retries; returns its base offset (-1 with acks=none).
    async fn send_batch(&self, topic: &str, partition: u32, records: &[u8]) -> Result<i64> {
        let mut backoff = self.config.retry_backoff;
        let mut attempt = 0;
        loop {
            match self.try_send(topic, partition, records).await {
                Ok(base) => return Ok(base),
                // A timed-out produce is still appended by the broker: resending it would store it
                // twice, so it is reported instead.
                Err(e)
                    if e.is_retriable()
                        && !matches!(
                            e,
                            ClientError::Broker {
                                code: ErrorCode::RequestTimedOut,
                                ..
                            }
                        )
                        && attempt < self.config.retries =>
                {
                    attempt += 1;
                    self.forget_route(topic, partition);
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_send(&self, topic: &str, partition: u32, records: &[u8]) -> Result<i64> {
        let addr = self.route(topic, partition).await?;
        let conn = self.connection(&addr);
        let mut guard = conn.lock().await;
        let c = match guard.as_mut() {
            Some(c) => c,
            None => guard.insert(Connection::connect(addr.as_str()).await?),
        };
        let req = ProduceRequest {
            acks: self.config.acks.wire(),
            timeout_ms: self
                .config
                .request_timeout
                .as_millis()
                .min(u32::MAX as u128) as u32,
            topics: vec![ProduceTopic {
                name: topic,
                partitions: vec![ProducePartition {
                    partition,
                    records: RawBytes(records),
                }],
            }],
        };
        if self.config.acks == Acks::None {
            let sent = c.send_only(ApiKey::Produce, &req).await;
            if sent.is_err() {
                *guard = None;
            }
            return sent.map(|_| -1);
        }
        let resp: Result<ProduceResponse> = c.request(ApiKey::Produce, &req).await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                *guard = None; // reconnect next time
                return Err(e);
            }
        };
        let p = resp
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .next()
            .ok_or_else(|| ClientError::Protocol("empty produce response".into()))?;
        match p.error {
            ErrorCode::None => Ok(p.base_offset),
            code => Err(ClientError::broker(code, None)),
        }
    }

    fn connection(&self, addr: &str) -> SharedConnection {
        let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        conns.entry(addr.to_string()).or_default().clone()
    }

    async fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(n) = self
            .partition_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
        {
            return Ok(*n);
        }
        self.refresh(topic).await?;
        self.partition_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .copied()
            .ok_or_else(|| {
                ClientError::broker(ErrorCode::UnknownTopicOrPartition, Some(topic.to_string()))
            })
    }

    async fn route(&self, topic: &str, partition: u32) -> Result<String> {
        let key = (topic.to_string(), partition);
        if let Some(r) = self
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(r.clone());
        }
        self.refresh(topic).await?;
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
            .ok_or_else(|| {
                ClientError::broker(
                    ErrorCode::UnknownTopicOrPartition,
                    Some(format!("{topic}-{partition}")),
                )
            })
    }

    fn forget_route(&self, topic: &str, partition: u32) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(topic.to_string(), partition));
    }

    /// Reads the topic's partitions and their owners' shard endpoints from Metadata.
    async fn refresh(&self, topic: &str) -> Result<()> {
        let mut conn = Connection::connect(self.bootstrap.as_str()).await?;
        let m: MetadataResponse = conn
            .request(
                ApiKey::Metadata,
                &MetadataRequest {
                    topics: Some(vec![topic.to_string()]),
                },
            )
            .await?;
        let Some(t) = m.topics.into_iter().next() else {
            return Err(ClientError::Protocol("metadata without the topic".into()));
        };
        if t.error != ErrorCode::None {
            return Err(ClientError::broker(t.error, Some(topic.to_string())));
        }
        let endpoint = |shard: u16| {
            m.endpoints.iter().find(|e| e.shard == shard).map_or_else(
                || self.bootstrap.clone(),
                |e| format!("{}:{}", e.host, e.port),
            )
        };
        let partitions = t.partitions.len() as u32;
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for p in &t.partitions {
            routes.insert((topic.to_string(), p.partition), endpoint(p.shard));
        }
        self.partition_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_string(), partitions);
        Ok(())
    }
}

/// Sends one partition's batches in order and answers their records. Holds the producer weakly, so
/// that dropping every `Producer` (and with it the channel's sender) ends the task.
async fn partition_sender(
    inner: std::sync::Weak<Inner>,
    slot: Slot,
    mut batches: tokio::sync::mpsc::UnboundedReceiver<Pending>,
) {
    while let Some(batch) = batches.recv().await {
        let Some(this) = inner.upgrade() else { return };
        let Pending {
            builder,
            waiters,
            permit,
            ..
        } = batch;
        let outcome = match builder.build() {
            Ok(bytes) => this.send_batch(&slot.0, slot.1, &bytes).await,
            Err(e) => Err(ClientError::Protocol(e.to_string())),
        };
        for (i, w) in waiters.into_iter().enumerate() {
            let r = match &outcome {
                Ok(base) => Ok(RecordMetadata {
                    partition: slot.1,
                    offset: if *base < 0 { -1 } else { base + i as i64 },
                }),
                Err(e) => Err(clone_error(e)),
            };
            let _ = w.send(r);
        }
        drop(permit);
    }
}

/// Errors are reported to every record of a batch; they hold no data worth sharing.
fn clone_error(e: &ClientError) -> ClientError {
    match e {
        ClientError::Io { addr, source } => ClientError::Io {
            addr: addr.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        ClientError::Broker { code, message } => ClientError::Broker {
            code: *code,
            message: message.clone(),
        },
        ClientError::Protocol(m) => ClientError::Protocol(m.clone()),
    }
}

/// FNV-1a of a key: stable across runs and platforms, so a key always maps to one partition.
fn hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
