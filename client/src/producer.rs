//! The producer: per-partition batching, partitioning, acks, retries and bounded memory.
//!
//! A record enters its partition's open batch (a Kafka v2 `RecordBatchBuilder`). The batch closes
//! when it reaches `batch_bytes`, when `linger` has passed since its first record, or on `flush`;
//! closed batches queue per partition, in order. Each broker endpoint (the listener of the shard
//! that owns a partition, from Metadata) has one sender task with one connection and one request in
//! flight. A request carries the queued batches of every partition that endpoint owns, up to
//! `max_request_bytes`: while a request waits for its acknowledgement (an fdatasync with acks=all),
//! records pile up, so under load batches grow and requests merge without any tuning.
//!
//! Invariants:
//! * order: a partition's records are stored in the order their `begin_send` calls enqueued them
//!   (calls awaited one after another, or polled in order); a call that has to wait (for metadata or
//!   memory) makes every later call wait behind it. A partition has at most one request in flight,
//!   and a failed request's batches go back to the front of their queues, so retries never reorder
//!   a partition;
//! * memory: records buffered or in flight hold `buffer_bytes` permits until their batch is
//!   answered; `send` waits for room (back-pressure, not growth);
//! * acknowledgement: the records of a batch share one completion; a record's [`SendFuture`]
//!   resolves to the batch's base offset plus the record's index.
//!
//! Retries resend a batch after a retriable error (connection lost, broker stopping, not the owner,
//! timeout) with exponential backoff and a metadata refresh.
//!
//! Idempotence (`ProducerConfig::idempotence`, on by default, as in Kafka 3): the producer gets a
//! producer id from the broker (InitProducerId) and stamps every batch with it and with the
//! sequence number of its first record, counted per partition. A resent batch carries the same
//! numbers, and the broker answers a batch it already stored with the offsets it got the first time
//! instead of storing it again, also across a broker restart (a partition's producer state is
//! durable). So every record is stored at most once and, once acknowledged, exactly once. Without
//! idempotence, delivery on a broken connection is at-least-once: a batch whose connection broke
//! after the broker appended it is resent and stored twice, and a timed-out produce is not resent
//! (the broker is then most likely still working on it).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mlog_wire::protocol::frame::decode_body;
use mlog_wire::protocol::messages::*;
use mlog_wire::protocol::{ApiKey, ErrorCode};
use mlog_wire::{NewRecord, RecordBatchBuilder, RecordHeader};
use tokio::sync::{Notify, Semaphore, TryAcquireError};
use tokio::time::Instant;

use crate::connection::Connection;
use crate::error::{ClientError, Result};
use crate::produce_frame::{PartitionBatches, ProduceFrame};

/// The acknowledgement a producer waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// No response at all: a record counts as sent once written to the socket. A failure (unknown
    /// topic, invalid batch) makes the broker close the connection. Nothing is reported: records
    /// sent after the failure, until a write finds the connection closed, may be lost silently; the
    /// request whose write fails is retried on a new connection.
    None,
    /// The leader appended the batch.
    Leader,
    /// Durable on every in-sync replica (single node: synced to disk on `flush.policy=always`
    /// topics).
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
///
/// ```
/// use std::time::Duration;
/// use mlog_client::{Acks, ProducerConfig};
/// // Lowest latency: send as soon as a partition has no request in flight, answered on append.
/// let config = ProducerConfig { acks: Acks::Leader, linger: Duration::ZERO, ..ProducerConfig::default() };
/// assert_eq!(config.batch_bytes, 256 << 10);
/// ```
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Acknowledgement level.
    pub acks: Acks,
    /// How long a batch waits for more records after its first. Zero sends a batch as soon as its
    /// partition has no request in flight; records arriving meanwhile still form batches.
    pub linger: Duration,
    /// A batch is closed once it holds this many bytes.
    pub batch_bytes: usize,
    /// A request carries at most this many bytes of batches (one batch always fits).
    pub max_request_bytes: usize,
    /// Records buffered or in flight, in bytes, before `send` waits.
    pub buffer_bytes: usize,
    /// Attempts after the first for a batch that failed with a retriable error.
    pub retries: u32,
    /// Wait before the first retry (doubling each time, up to 32 times this).
    pub retry_backoff: Duration,
    /// How long the broker may take to acknowledge (acks=all). The producer gives up on an answer
    /// 5 s after that.
    pub request_timeout: Duration,
    /// Stamp batches with a producer id and sequence numbers so that the broker stores a resent
    /// batch once (see the module docs).
    pub idempotence: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes: 256 << 10,
            max_request_bytes: 8 << 20,
            buffer_bytes: 32 << 20,
            retries: 5,
            retry_backoff: Duration::from_millis(50),
            request_timeout: Duration::from_secs(30),
            idempotence: true,
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

struct Inner {
    bootstrap: String,
    config: ProducerConfig,
    /// Producer id and epoch, with idempotence.
    producer: Option<(i64, i16)>,
    /// Permits are bytes of records buffered or in flight.
    memory: Arc<Semaphore>,
    state: Mutex<State>,
    /// Sends that must wait (metadata, memory); while there are any, every send queues on `order`.
    waiting_sends: AtomicUsize,
    order: tokio::sync::Mutex<()>,
    /// `close` began: sends are refused from then on (checked under `state`, so every record
    /// accepted before is one `close`'s flush waits for).
    closing: AtomicBool,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, TopicState>,
    endpoints: HashMap<String, Arc<Endpoint>>,
}

struct TopicState {
    partitions: Vec<PartitionState>,
    /// Where keyless records go until that partition's batch closes ("sticky" partitioning: whole
    /// batches instead of one record per partition per batch).
    sticky: u32,
}

struct PartitionState {
    endpoint: Arc<Endpoint>,
    /// Size of the last batch closed: a new batch reserves about that much, so a busy partition's
    /// batches never regrow and a quiet one's stay small.
    last_batch_bytes: usize,
    open: Option<OpenBatch>,
    queued: VecDeque<ClosedBatch>,
    in_flight: bool,
    /// Sequence number of the next batch's first record (with idempotence).
    next_sequence: i32,
}

/// The listener of one shard, served by one sender task.
struct Endpoint {
    addr: String,
    wake: Notify,
}

struct OpenBatch {
    builder: RecordBatchBuilder,
    done: Arc<BatchDone>,
    /// `buffer_bytes` permits the batch holds: its reserved room's and, beyond that room, its
    /// records'.
    memory: usize,
    /// Room reserved (and charged) when the batch opened, for records after its first.
    reserved: usize,
    /// Of that room, what records have taken: a record charges only what the rest cannot hold.
    used: usize,
    deadline: Instant,
}

struct ClosedBatch {
    records: Vec<u8>,
    count: i64,
    done: Arc<BatchDone>,
    memory: usize,
    attempts: u32,
}

impl PartitionState {
    /// Moves the open batch (if any) to the queue; true if there was one.
    fn close_open(&mut self) -> Result<bool> {
        let Some(open) = self.open.take() else {
            return Ok(false);
        };
        let count = open.builder.len() as i64;
        self.last_batch_bytes = open.builder.encoded_len();
        // Sequences wrap from i32::MAX to 0, as the broker counts them.
        self.next_sequence = ((i64::from(self.next_sequence) + count) % (1 << 31)) as i32;
        // Build errors are impossible for a non-empty builder; report one rather than panic.
        let records = open
            .builder
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.queued.push_back(ClosedBatch {
            records,
            count,
            done: open.done,
            memory: open.memory,
            attempts: 0,
        });
        Ok(true)
    }
}

/// Batches of one partition in one request with idempotence: the broker remembers a producer's last
/// 5 batches per partition (as Kafka's `max.in.flight.requests.per.connection` limit of 5).
const IDEMPOTENT_BATCHES_PER_REQUEST: usize = 5;

/// What a send needs before it can be buffered.
enum Enqueued {
    Done(SendFuture),
    NeedsMetadata,
    NeedsMemory(u32),
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
        let mut conn = Connection::connect(bootstrap).await?;
        let producer = if config.idempotence {
            let resp: InitProducerIdResponse = conn
                .request(ApiKey::InitProducerId, &InitProducerIdRequest {})
                .await?;
            if resp.error != ErrorCode::None {
                return Err(ClientError::broker(resp.error, None));
            }
            Some((resp.producer_id, resp.producer_epoch))
        } else {
            None
        };
        Ok(Producer {
            inner: Arc::new(Inner {
                producer,
                bootstrap: bootstrap.to_string(),
                memory: Arc::new(Semaphore::new(config.buffer_bytes)),
                config,
                state: Mutex::new(State::default()),
                waiting_sends: AtomicUsize::new(0),
                order: tokio::sync::Mutex::new(()),
                closing: AtomicBool::new(false),
            }),
        })
    }

    /// Sends one record. The partition is the key's hash, or for records without a key the
    /// topic's current "sticky" partition (it moves on, round-robin, each time its batch closes).
    /// Resolves once the broker acknowledged the record's batch at the configured level.
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

    /// Buffers one record (to `partition`, or as [`Producer::send`] chooses) and returns the future
    /// of its acknowledgement. Records buffered by calls awaited one after another are stored in that
    /// order within a partition, while their acknowledgements can be awaited later: this is how to
    /// keep many records in flight (`mlog produce` and `mlog-bench` do). Returns without waiting when
    /// the topic's metadata is known and buffer memory is free; waits for them otherwise.
    ///
    /// ```no_run
    /// # async fn example(producer: mlog_client::Producer) -> Result<(), mlog_client::ClientError> {
    /// let mut acks = Vec::new();
    /// for i in 0..1000 {
    ///     let value = format!("event {i}");
    ///     acks.push(producer.begin_send("events", Some(0), None, value.as_bytes(), &[]).await?);
    /// }
    /// for ack in acks {
    ///     let stored = ack.await?; // offsets follow the send order: partition 0, one by one
    ///     assert_eq!(stored.partition, 0);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn begin_send(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> Result<SendFuture> {
        let inner = &self.inner;
        if inner.waiting_sends.load(Ordering::SeqCst) == 0 {
            if let Enqueued::Done(f) = inner.enqueue(topic, partition, key, value, headers, 0)? {
                return Ok(f);
            }
        }
        // Slow path: from here until this record is buffered, later sends queue behind it.
        inner.waiting_sends.fetch_add(1, Ordering::SeqCst);
        let _counted = WaitingSend(inner);
        let _order = inner.order.lock().await;
        // Memory taken while waiting stays a permit until the record is buffered: an error or a
        // cancelled call gives it back.
        let mut held: Option<tokio::sync::SemaphorePermit<'_>> = None;
        loop {
            let memory = held.as_ref().map_or(0, |p| p.num_permits());
            match inner.enqueue(topic, partition, key, value, headers, memory)? {
                Enqueued::Done(f) => {
                    if let Some(p) = held {
                        p.forget(); // now counted in the record's batch
                    }
                    return Ok(f);
                }
                Enqueued::NeedsMetadata => inner.refresh(topic).await?,
                Enqueued::NeedsMemory(units) => {
                    held = Some(
                        inner
                            .memory
                            .acquire_many(units)
                            .await
                            .map_err(|_| closed())?,
                    );
                }
            }
        }
    }

    /// Sends every buffered record now and waits until all are acknowledged (or failed).
    pub async fn flush(&self) -> Result<()> {
        self.inner.close_all_open()?;
        // Every permit back means nothing is buffered or in flight.
        let all = u32::try_from(self.inner.config.buffer_bytes).unwrap_or(u32::MAX);
        let permits = self
            .inner
            .memory
            .acquire_many(all)
            .await
            .map_err(|_| closed())?;
        drop(permits);
        Ok(())
    }

    /// Refuses further sends, then flushes what was sent before.
    pub async fn close(&self) -> Result<()> {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.flush().await?;
        self.inner.memory.close();
        Ok(())
    }
}

/// Counts a send on the slow path for as long as it lives (also when its future is dropped).
struct WaitingSend<'a>(&'a Inner);

impl Drop for WaitingSend<'_> {
    fn drop(&mut self) {
        self.0.waiting_sends.fetch_sub(1, Ordering::SeqCst);
    }
}

fn closed() -> ClientError {
    ClientError::Protocol("the producer is closed".into())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// Buffers one record if metadata and memory allow, without waiting. `memory_held` is memory
    /// the caller already took for it (0 if none); it becomes the batch's once `Done` is returned,
    /// and stays the caller's otherwise.
    fn enqueue(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&[u8], &[u8])],
        memory_held: usize,
    ) -> Result<Enqueued> {
        let size = 32
            + key.map_or(0, <[u8]>::len)
            + value.len()
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>();
        let memory = size.min(self.config.buffer_bytes);
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

        let mut st = lock(&self.state);
        if self.closing.load(Ordering::SeqCst) {
            return Err(closed());
        }
        let Some(t) = st.topics.get_mut(topic) else {
            return Ok(Enqueued::NeedsMetadata);
        };
        let count = t.partitions.len() as u32;
        let p = match (partition, key) {
            (Some(p), _) if p < count => p,
            (Some(p), _) => {
                return Err(ClientError::broker(
                    ErrorCode::UnknownTopicOrPartition,
                    Some(format!("{topic}-{p}")),
                ))
            }
            (None, Some(k)) => (hash(k) % count as u64) as u32,
            (None, None) => {
                // The sticky partition's batch closed (full, lingered, or taken by its sender):
                // the next batch goes to the next partition.
                if t.partitions[(t.sticky % count) as usize].open.is_none() {
                    t.sticky = t.sticky.wrapping_add(1);
                }
                t.sticky % count
            }
        };
        let part = &mut t.partitions[p as usize];
        // A record that would overflow the open batch closes it first (a record larger than
        // `batch_bytes` gets a batch of its own).
        let closes_open = part.open.as_ref().is_some_and(|o| {
            !o.builder.is_empty() && o.builder.encoded_len() + size > self.config.batch_bytes
        });
        // A record that lands in room its batch already paid for is not charged again.
        let from_room = match &part.open {
            Some(o) if !closes_open => (o.reserved - o.used).min(memory),
            _ => 0,
        };
        let charge = memory - from_room;
        if memory_held < memory && charge > 0 {
            match self.memory.try_acquire_many(charge as u32) {
                Ok(permit) => permit.forget(),
                Err(TryAcquireError::NoPermits) => return Ok(Enqueued::NeedsMemory(memory as u32)),
                Err(TryAcquireError::Closed) => return Err(closed()),
            }
        }
        let mut wake = false;
        if closes_open {
            wake |= part.close_open()?;
        }
        let (last_batch_bytes, sequence) = (part.last_batch_bytes, part.next_sequence);
        let open = part.open.get_or_insert_with(|| {
            wake = true; // the sender learns the new batch's linger deadline
            self.open_batch(last_batch_bytes, size, sequence)
        });
        if let Err(e) = open.builder.push(record) {
            if open.builder.is_empty() {
                // No record, no future: an empty batch must never be closed. Its reservation goes.
                self.memory.add_permits(open.memory);
                part.open = None;
            }
            if memory_held < memory {
                self.memory.add_permits(charge); // taken here (the caller returns what it held)
            }
            if closes_open {
                part.endpoint.wake.notify_one(); // the batch closed above waits to be sent
            }
            return Err(ClientError::Protocol(e.to_string()));
        }
        let index = (open.builder.len() - 1) as u32;
        open.used += from_room;
        open.memory += charge;
        if memory_held >= memory {
            // The caller took the whole size; the part the batch's room covers goes back.
            self.memory.add_permits(from_room);
        }
        let future = SendFuture {
            done: open.done.clone(),
            partition: p,
            index,
            waker_slot: None,
        };
        if open.builder.encoded_len() >= self.config.batch_bytes {
            wake |= part.close_open()?;
        }
        let endpoint = wake.then(|| part.endpoint.clone());
        drop(st);
        if let Some(e) = endpoint {
            e.wake.notify_one();
        }
        Ok(Enqueued::Done(future))
    }

    /// Closes every open batch and wakes every sender (for `flush`).
    fn close_all_open(&self) -> Result<()> {
        let endpoints: Vec<Arc<Endpoint>> = {
            let mut st = lock(&self.state);
            for t in st.topics.values_mut() {
                for part in &mut t.partitions {
                    part.close_open()?;
                }
            }
            st.endpoints.values().cloned().collect()
        };
        for e in endpoints {
            e.wake.notify_one();
        }
        Ok(())
    }

    /// Takes the next request's batches for `endpoint`: the queued batches of its partitions that
    /// have none in flight (closing open batches whose linger passed), up to `max_request_bytes`
    /// (and, with idempotence, `IDEMPOTENT_BATCHES_PER_REQUEST` per partition, a resent one alone).
    /// With nothing to send, returns when the next open batch's linger ends.
    /// `turn` rotates where the request starts, so that when the queued batches outgrow a request
    /// no partition is always the one left out.
    fn collect(&self, endpoint: &Arc<Endpoint>, turn: usize) -> Result<Collected> {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let mut next_deadline: Option<Instant> = None;
        let mut ready: Vec<(String, usize)> = Vec::new();
        for (topic, t) in st.topics.iter_mut() {
            for (p, part) in t.partitions.iter_mut().enumerate() {
                if part.in_flight || !Arc::ptr_eq(&part.endpoint, endpoint) {
                    continue;
                }
                if let Some(open) = &part.open {
                    if open.deadline <= now {
                        part.close_open()?;
                    } else if part.queued.is_empty() {
                        next_deadline =
                            Some(next_deadline.map_or(open.deadline, |d| d.min(open.deadline)));
                    }
                }
                if !part.queued.is_empty() {
                    ready.push((topic.clone(), p));
                }
            }
        }
        if !ready.is_empty() {
            let start = turn % ready.len();
            ready.rotate_left(start);
        }
        let mut work = Vec::new();
        let mut bytes = 0usize;
        for (topic, p) in ready {
            let Some(part) = st.topics.get_mut(&topic).map(|t| &mut t.partitions[p]) else {
                continue;
            };
            let mut batches: Vec<ClosedBatch> = Vec::new();
            while let Some(b) = part.queued.front() {
                if bytes > 0 && bytes + b.records.len() > self.config.max_request_bytes {
                    break;
                }
                // Idempotent batches: at most as many per request as the broker remembers per
                // producer (a resend of the whole request must find every one), and a resent batch
                // alone (it may be stored already; new batches after it would have to continue it
                // at the log end, which another producer's appends may have moved).
                if self.producer.is_some()
                    && (batches.len() == IDEMPOTENT_BATCHES_PER_REQUEST
                        || batches.first().is_some_and(|f| f.attempts > 0)
                        || (!batches.is_empty() && b.attempts > 0))
                {
                    break;
                }
                bytes += b.records.len();
                batches.extend(part.queued.pop_front());
            }
            if !batches.is_empty() {
                part.in_flight = true;
                work.push(PartitionWork {
                    topic,
                    partition: p as u32,
                    batches,
                });
            }
        }
        Ok(if work.is_empty() {
            Collected::Idle(next_deadline)
        } else {
            Collected::Request(work)
        })
    }

    /// Forgets `endpoint` if no partition is routed to it any more (a restarted broker's shards
    /// listen on new ports): its sender then ends, instead of idling for the producer's lifetime. A
    /// later route to the same address makes a new endpoint and sender.
    fn retire_if_unused(&self, endpoint: &Arc<Endpoint>) -> bool {
        let mut st = lock(&self.state);
        let used = st
            .topics
            .values()
            .flat_map(|t| &t.partitions)
            .any(|p| Arc::ptr_eq(&p.endpoint, endpoint));
        if used {
            return false;
        }
        if st
            .endpoints
            .get(&endpoint.addr)
            .is_some_and(|e| Arc::ptr_eq(e, endpoint))
        {
            st.endpoints.remove(&endpoint.addr);
        }
        true
    }

    /// Sends one request and settles its batches: acknowledged, failed, or back in their queues.
    /// Returns whether anything is to be retried.
    async fn send_request(
        &self,
        endpoint: &Endpoint,
        conn: &mut Option<Connection>,
        work: Vec<PartitionWork>,
    ) -> bool {
        let partitions: Vec<PartitionBatches<'_>> = work
            .iter()
            .map(|w| PartitionBatches {
                topic: &w.topic,
                partition: w.partition,
                batches: w.batches.iter().map(|b| &b.records[..]).collect(),
            })
            .collect();
        let outcome = self.exchange(endpoint, conn, &partitions).await;
        drop(partitions);
        let results: Vec<std::result::Result<i64, ClientError>> = match outcome {
            Ok(None) => work.iter().map(|_| Ok(-1)).collect(),
            Ok(Some(resp)) => answers_in_order(&work, resp),
            Err(e) => work.iter().map(|_| Err(clone_error(&e))).collect(),
        };
        let mut any_retry = false;
        for (w, result) in work.into_iter().zip(results) {
            let mut back = Vec::new();
            match result {
                Ok(base) => {
                    // A partition's batches were appended back to back.
                    let mut offset = base;
                    for b in w.batches {
                        let count = b.count;
                        self.settle(b, Ok(offset));
                        if offset >= 0 {
                            offset += count;
                        }
                    }
                }
                Err(e) => {
                    // A timed-out batch may be stored already: resent only when the broker can
                    // tell (idempotence).
                    let retry = e.is_retriable() && (self.producer.is_some() || !is_timeout(&e));
                    any_retry |= retry;
                    for mut b in w.batches {
                        b.attempts += 1;
                        if retry && b.attempts <= self.config.retries {
                            back.push(b);
                        } else {
                            self.settle(b, Err(clone_error(&e)));
                        }
                    }
                }
            }
            self.end_flight(&w.topic, w.partition, back);
        }
        any_retry
    }

    /// Writes the request and reads its answer (`None` with acks=none, which has none).
    async fn exchange(
        &self,
        endpoint: &Endpoint,
        conn: &mut Option<Connection>,
        partitions: &[PartitionBatches<'_>],
    ) -> Result<Option<ProduceResponse>> {
        let limit = self.config.request_timeout + Duration::from_secs(5);
        let acks = self.config.acks;
        let timeout_ms = self
            .config
            .request_timeout
            .as_millis()
            .min(u32::MAX as u128) as u32;
        let attempt = async {
            let c = match conn {
                Some(c) => c,
                None => conn.insert(Connection::connect(endpoint.addr.as_str()).await?),
            };
            let id = c.take_correlation_id();
            let frame = ProduceFrame::encode(id, acks.wire(), timeout_ms, partitions);
            c.write_parts(&frame.parts()).await?;
            if acks == Acks::None {
                return Ok(None);
            }
            let body = c.response(id).await?;
            Ok(Some(decode_body::<ProduceResponse>(
                &body,
                "ProduceResponse",
            )?))
        };
        let outcome = tokio::time::timeout(limit, attempt)
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        if let Err(e) = &outcome {
            if !matches!(e, ClientError::Broker { .. }) || is_timeout(e) {
                *conn = None; // the connection's state is unknown: make a new one
            }
        }
        outcome
    }

    /// Answers a batch's records and returns its memory.
    fn settle(&self, batch: ClosedBatch, outcome: Result<i64>) {
        batch.done.complete(outcome);
        self.memory.add_permits(batch.memory);
    }

    /// Ends a partition's request: `back` (batches to retry) return to the front of its queue.
    /// Its sender is woken if work remains: a metadata refresh may have moved the partition to
    /// another endpoint while the request was in flight, and that endpoint's sender skipped it.
    fn end_flight(&self, topic: &str, partition: u32, back: Vec<ClosedBatch>) {
        let mut st = lock(&self.state);
        if let Some(part) = st
            .topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(partition as usize))
        {
            for b in back.into_iter().rev() {
                part.queued.push_front(b);
            }
            part.in_flight = false;
            let pending = !part.queued.is_empty() || part.open.is_some();
            let endpoint = part.endpoint.clone();
            drop(st);
            if pending {
                endpoint.wake.notify_one();
            }
        } else {
            drop(st);
            for b in back {
                self.settle(b, Err(closed()));
            }
        }
    }

    /// A new open batch for a partition whose last batch held `last_batch_bytes`, starting with a
    /// record of `size`. It reserves room for about a batch like the last one (so a busy partition's
    /// batches are not regrown), and that room counts against `buffer_bytes` like records do: held
    /// by the batch until it is answered. Without room to spare it starts at the record's size.
    fn open_batch(&self, last_batch_bytes: usize, size: usize, sequence: i32) -> OpenBatch {
        let want = (last_batch_bytes.max(4096) + size).min(self.config.batch_bytes + size);
        let extra = want - size;
        let charged = u32::try_from(extra)
            .ok()
            .and_then(|n| self.memory.try_acquire_many(n).ok())
            .map(|permit| permit.forget());
        let (capacity, memory) = match charged {
            Some(()) => (want, extra),
            None => (size, 0),
        };
        let builder = RecordBatchBuilder::with_capacity(capacity);
        OpenBatch {
            builder: match self.producer {
                Some((id, epoch)) => builder.with_producer(id, epoch, sequence),
                None => builder,
            },
            done: Arc::new(BatchDone::default()),
            memory,
            reserved: memory,
            used: 0,
            deadline: Instant::now() + self.config.linger,
        }
    }

    /// Reads the topic's partitions and their owners' shard endpoints from Metadata, starting a
    /// sender for every endpoint not seen before.
    async fn refresh(self: &Arc<Self>, topic: &str) -> Result<()> {
        // Bounded: a stalled bootstrap broker must not stop this endpoint's sender (and every send,
        // flush and close waiting on it) for good. A timeout is an I/O error, retried with backoff.
        let lookup = async {
            let mut conn = Connection::connect(self.bootstrap.as_str()).await?;
            crate::routes::topic_routes(&mut conn, &self.bootstrap, topic).await
        };
        let routes = tokio::time::timeout(self.config.request_timeout, lookup)
            .await
            .map_err(|_| ClientError::Io {
                addr: self.bootstrap.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no metadata within request_timeout",
                ),
            })??;
        let mut woken = Vec::new();
        {
            let mut st = lock(&self.state);
            let State { topics, endpoints } = &mut *st;
            let mut endpoint = |addr: String| {
                endpoints
                    .entry(addr.clone())
                    .or_insert_with(|| {
                        let e = Arc::new(Endpoint {
                            addr,
                            wake: Notify::new(),
                        });
                        start_sender(Arc::downgrade(self), e.clone());
                        e
                    })
                    .clone()
            };
            let ts = topics
                .entry(topic.to_string())
                .or_insert_with(|| TopicState {
                    partitions: Vec::new(),
                    sticky: rand_start(),
                });
            // Routes come in partition order without gaps, so partition i is at index i.
            for (i, (_, addr)) in routes.into_iter().enumerate() {
                let e = endpoint(addr);
                match ts.partitions.get_mut(i) {
                    Some(part) => {
                        if !Arc::ptr_eq(&part.endpoint, &e) {
                            part.endpoint = e.clone();
                            woken.push(e);
                        }
                    }
                    None => ts.partitions.push(PartitionState {
                        endpoint: e,
                        last_batch_bytes: 0,
                        open: None,
                        queued: VecDeque::new(),
                        in_flight: false,
                        next_sequence: 0,
                    }),
                }
            }
        }
        for e in woken {
            e.wake.notify_one();
        }
        Ok(())
    }
}

/// The partitions of one request, with their batches in queue order.
struct PartitionWork {
    topic: String,
    partition: u32,
    batches: Vec<ClosedBatch>,
}

enum Collected {
    Request(Vec<PartitionWork>),
    /// Nothing to send; the earliest linger deadline of an open batch, if any.
    Idle(Option<Instant>),
}

/// Retry backoff doubles up to this multiple of `retry_backoff`.
const MAX_BACKOFF_FACTOR: u32 = 32;

/// Starts an endpoint's sender. (A plain function: spawning from inside the async code that the
/// sender itself awaits would make the compiler's `Send` check circular.)
fn start_sender(inner: Weak<Inner>, endpoint: Arc<Endpoint>) {
    tokio::spawn(run_sender(inner, endpoint));
}

/// One endpoint's sender: collects, sends, settles; after a failed attempt, backs off and refreshes
/// the metadata of the topics involved. Holds the producer weakly, so dropping every `Producer`
/// ends it (`Inner`'s drop wakes it).
async fn run_sender(inner: Weak<Inner>, endpoint: Arc<Endpoint>) {
    let mut conn = None;
    let mut backoff = None::<Duration>;
    let mut turn = 0usize;
    loop {
        let Some(this) = inner.upgrade() else { return };
        let notified = endpoint.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        turn = turn.wrapping_add(1);
        let collected = match this.collect(&endpoint, turn) {
            Ok(c) => c,
            Err(_) => Collected::Idle(None),
        };
        match collected {
            Collected::Request(work) => {
                let mut topics: Vec<String> = work.iter().map(|w| w.topic.clone()).collect();
                topics.sort();
                topics.dedup();
                if this.send_request(&endpoint, &mut conn, work).await {
                    let cap = this.config.retry_backoff.saturating_mul(MAX_BACKOFF_FACTOR);
                    let wait =
                        backoff.map_or(this.config.retry_backoff, |b| b.saturating_mul(2).min(cap));
                    backoff = Some(wait);
                    tokio::time::sleep(wait).await;
                    for t in topics {
                        let _ = this.refresh(&t).await; // the same routes are kept if it fails
                    }
                } else {
                    backoff = None;
                }
            }
            Collected::Idle(deadline) => {
                if deadline.is_none() && this.retire_if_unused(&endpoint) {
                    return;
                }
                drop(this);
                match deadline {
                    Some(d) => {
                        tokio::select! {
                            _ = &mut notified => {}
                            _ = tokio::time::sleep_until(d) => {}
                        }
                    }
                    None => notified.await,
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        // Records still buffered will never be sent: their futures learn it now.
        for t in st.topics.values_mut() {
            for part in &mut t.partitions {
                // Oldest first: queued batches, then the open one.
                let open = part.open.take().map(|o| o.done);
                for done in part.queued.drain(..).map(|b| b.done).chain(open) {
                    done.complete(Err(closed()));
                }
            }
        }
        // The senders wait for work with no producer to work for: wake them, so they end.
        for e in st.endpoints.values() {
            e.wake.notify_one();
        }
    }
}

/// Matches a response's partitions (in request order) with the request's.
fn answers_in_order(work: &[PartitionWork], resp: ProduceResponse) -> Vec<Result<i64>> {
    let mut answers = resp
        .topics
        .into_iter()
        .flat_map(|t| t.partitions.into_iter().map(move |p| (t.name.clone(), p)));
    work.iter()
        .map(|w| match answers.next() {
            Some((name, p)) if name == w.topic && p.partition == w.partition => match p.error {
                ErrorCode::None => Ok(p.base_offset),
                code => Err(ClientError::broker(code, None)),
            },
            _ => Err(ClientError::Protocol(
                "produce response does not match the request".into(),
            )),
        })
        .collect()
}

fn timed_out() -> ClientError {
    ClientError::broker(
        ErrorCode::RequestTimedOut,
        Some("no answer within request_timeout".into()),
    )
}

fn is_timeout(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Broker {
            code: ErrorCode::RequestTimedOut,
            ..
        }
    )
}

/// Completion shared by the records of one batch.
#[derive(Default)]
struct BatchDone {
    state: Mutex<DoneState>,
}

#[derive(Default)]
struct DoneState {
    /// The batch's base offset (-1 with acks=none), once answered.
    outcome: Option<Result<i64>>,
    wakers: Vec<Waker>,
}

impl BatchDone {
    fn complete(&self, outcome: Result<i64>) {
        let wakers = {
            let mut s = lock(&self.state);
            s.outcome = Some(outcome);
            std::mem::take(&mut s.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// The acknowledgement of one record (from [`Producer::begin_send`]): resolves once its batch is
/// answered, to where the record was stored.
#[must_use = "a record is only known to be stored once its future resolves"]
pub struct SendFuture {
    done: Arc<BatchDone>,
    partition: u32,
    index: u32,
    /// This future's entry in the batch's wakers, once it registered one.
    waker_slot: Option<usize>,
}

impl SendFuture {
    /// The partition the record went to (known at once). A partition's records are acknowledged in
    /// the order they were sent (while the producer lives: dropping it fails the records it still
    /// buffers at once, ahead of a request in flight), so a caller tracking many sends needs to
    /// watch only the oldest of each partition. Once resolved, polling again gives the same answer.
    pub fn partition(&self) -> u32 {
        self.partition
    }
}

impl Future for SendFuture {
    type Output = Result<RecordMetadata>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut s = lock(&this.done.state);
        if let Some(outcome) = &s.outcome {
            return Poll::Ready(match outcome {
                Ok(base) => Ok(RecordMetadata {
                    partition: this.partition,
                    offset: if *base < 0 {
                        -1
                    } else {
                        base + this.index as i64
                    },
                }),
                Err(e) => Err(clone_error(e)),
            });
        }
        // Until completion the wakers only grow, so the slot stays valid.
        match this.waker_slot {
            Some(i) => {
                if !s.wakers[i].will_wake(cx.waker()) {
                    s.wakers[i] = cx.waker().clone();
                }
            }
            None => {
                this.waker_slot = Some(s.wakers.len());
                s.wakers.push(cx.waker().clone());
            }
        }
        Poll::Pending
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

/// A per-producer starting point for sticky partitioning, so producers spread over partitions.
fn rand_start() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// FNV-1a of a key: stable across runs and platforms, so a key always maps to one partition.
fn hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
