//! One shard: a glommio executor pinned to a core, with its own listener on the broker's port, its
//! share of the partitions, and its end of the shard mesh.
//!
//! Every shard accepts connections itself (`SO_REUSEPORT`: the kernel spreads them) and serves them
//! on its executor. A shard owns the partitions that `topics::owner` assigns to its id and is the only
//! one to touch their logs. A shard never busy-spins unless `spin_before_park_us` asks for it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use glommio::sync::Semaphore;
use glommio::{LocalExecutorBuilder, Placement};
use mlog_storage::Log;
use mlog_wire::protocol::messages::{NewTopic, TopicResult};
use mlog_wire::protocol::ErrorCode;

use crate::config::BrokerConfig;
use crate::connection;
use crate::group_offsets::{self, GroupOffsets, OFFSETS_PARTITIONS, OFFSETS_TOPIC};
use crate::mesh::{self, FetchItem, Mesh, Op, ProduceItem, RemoteFetch, Reply};
use crate::partition::{Acks, Fetched, Offsets, Partition, Produced};
use crate::producer_ids::ProducerIds;
use crate::topics::{self, TopicRecord, TopicTable};

/// How often idle loops look at the stop flag.
pub(crate) const STOP_POLL: Duration = Duration::from_millis(50);
/// Longest a stopping shard waits for the others to finish their connections (a shard that failed
/// to start never reports).
const ALL_SERVED_GRACE: Duration = Duration::from_secs(30);
/// The shard that changes the topic table.
pub(crate) const CONTROLLER: usize = 0;

/// The per-shard listener addresses, indexed by shard id (filled in as shards start).
pub(crate) type Endpoints = Arc<Mutex<Vec<Option<SocketAddr>>>>;

/// A partition: `(topic, index)`.
pub(crate) type PartitionKey = (String, u32);

/// Everything one shard owns.
pub(crate) struct Shard {
    pub config: BrokerConfig,
    pub stopping: Arc<AtomicBool>,
    /// Shards still serving client connections (see `spawn`).
    serving: Arc<AtomicUsize>,
    pub mesh: Mesh,
    /// Each shard's own listener, by shard (mesh) id, as the shards report them.
    pub endpoints: Endpoints,
    /// Ids for idempotent producers, shared by every shard.
    pub producer_ids: Arc<ProducerIds>,
    /// Bytes of large requests this shard's connections may buffer at once
    /// (`max_request_memory_bytes`; see `connection`).
    pub request_memory: Rc<Semaphore>,
    /// The newest topic table this shard applied.
    pub topics: RefCell<Rc<TopicTable>>,
    /// The partitions this shard owns.
    pub partitions: RefCell<HashMap<PartitionKey, Rc<Partition>>>,
    /// Table applications run one at a time, in revision order.
    apply_lock: Semaphore,
    /// (Controller) one topic change at a time.
    change_lock: Semaphore,
    /// Notified each time a table has been applied.
    table_applied: event_listener::Event,
}

impl Shard {
    pub(crate) fn id(&self) -> usize {
        self.mesh.id
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Returns once the broker is stopping (checked every `STOP_POLL`): the other side of a race
    /// that must end at shutdown.
    pub(crate) async fn until_stopping(&self) {
        while !self.stopping() {
            glommio::timer::sleep(STOP_POLL).await;
        }
    }

    /// Marks this shard's connections finished (`token`), then waits (at most `ALL_SERVED_GRACE`)
    /// until every shard's are: until then another shard may forward a request here, which must
    /// find the partitions open and be answered by what it did (an answer of "stopping" for a
    /// request that was stored would have a client resend it).
    async fn wait_until_no_shard_serves(&self, token: ServingToken) {
        drop(token);
        let deadline = Instant::now() + ALL_SERVED_GRACE;
        while self.serving.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            glommio::timer::sleep(STOP_POLL).await;
        }
    }

    /// Runs an operation another shard (or this one) asked for.
    pub(crate) async fn run_op(self: &Rc<Self>, op: Op) -> Reply {
        match op {
            Op::ApplyTable(table) => Reply::Applied(self.apply(table).await),
            Op::Create(topics) => Reply::TopicResults(self.create_topics(topics).await),
            Op::Delete(names) => Reply::TopicResults(self.delete_topics(names).await),
            Op::Produce { acks, items } => Reply::Produced(self.produce_owned(acks, items).await),
            Op::Fetch {
                items,
                budget,
                have_data,
            } => {
                let fetched = self.fetch_owned_many(&items, budget, have_data).await;
                Reply::Fetched(
                    fetched
                        .into_iter()
                        .map(|f| RemoteFetch {
                            error: f.error,
                            high_watermark: f.high_watermark,
                            log_start_offset: f.log_start_offset,
                            data: f.data.to_vec(),
                        })
                        .collect(),
                )
            }
            Op::WaitForData {
                parts,
                deadline,
                cancelled,
            } => {
                self.wait_for_data(&parts, deadline, &cancelled).await;
                Reply::Done
            }
            Op::CommitOffsets { group, commits } => {
                let p = self.partition(OFFSETS_TOPIC, group_offsets::partition_for(&group));
                Reply::Committed(match p {
                    Some(p) => {
                        let exists = |t: &str| self.topics.borrow().get(t).is_some();
                        p.commit_offsets(&group, commits, exists).await
                    }
                    None => ErrorCode::StorageError,
                })
            }
            Op::FetchOffsets { group, wanted } => {
                let p = self.partition(OFFSETS_TOPIC, group_offsets::partition_for(&group));
                Reply::GroupOffsets(p.and_then(|p| p.fetch_offsets(&group, wanted)))
            }
            Op::ListOffset {
                topic,
                partition,
                timestamp,
            } => Reply::Offsets(match self.partition(&topic, partition) {
                Some(p) => p.list_offset(timestamp).await,
                None => Offsets {
                    error: ErrorCode::UnknownTopicOrPartition,
                    offset: -1,
                    log_start_offset: -1,
                    log_end_offset: -1,
                    high_watermark: -1,
                },
            }),
        }
    }

    /// Waits until the high watermark of any of `parts` (partitions this shard owns, with the
    /// watermark the fetch saw) rises above it, `deadline`, `cancelled`, or the broker stopping.
    pub(crate) async fn wait_for_data(
        &self,
        parts: &[(String, u32, i64)],
        deadline: Instant,
        cancelled: &AtomicBool,
    ) {
        let owned: Vec<(Rc<Partition>, i64)> = parts
            .iter()
            .filter_map(|(topic, partition, seen)| {
                Some((self.partition(topic, *partition)?, *seen))
            })
            .collect();
        if !owned.is_empty() {
            Partition::wait_for_any(&owned, deadline, &self.stopping, cancelled).await;
        }
    }

    /// Appends to partitions this shard owns, all at once, answering in `items` order.
    pub(crate) async fn produce_owned(
        self: &Rc<Self>,
        acks: Acks,
        items: Vec<ProduceItem>,
    ) -> Vec<Produced> {
        let tasks: Vec<_> = items
            .into_iter()
            .map(|item| {
                let shard = self.clone();
                glommio::spawn_local(async move {
                    match shard.partition(&item.topic, item.partition) {
                        Some(p) => p.produce(item.records, acks).await,
                        None => Produced {
                            error: ErrorCode::UnknownTopicOrPartition,
                            base_offset: -1,
                            log_start_offset: -1,
                        },
                    }
                })
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await);
        }
        out
    }

    /// Reads partitions this shard owns, in order, at most `budget` bytes of batches in all: once
    /// the budget is spent (and some data was found, here or before: `have_data`), the remaining
    /// partitions answer with their offsets only. So a fetch never reads more than its budget plus
    /// one batch, however many partitions (or repeats of one) it names.
    pub(crate) async fn fetch_owned_many(
        &self,
        items: &[FetchItem],
        mut budget: usize,
        mut have_data: bool,
    ) -> Vec<Fetched> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let max = (!have_data || budget > 0).then(|| item.max_bytes.min(budget).max(1));
            let f = match self.partition(&item.topic, item.partition) {
                Some(p) => p.fetch(item.offset, max).await,
                None => Fetched {
                    error: self.gone_error(),
                    high_watermark: -1,
                    log_start_offset: -1,
                    data: Default::default(),
                },
            };
            let len = f.data.len();
            budget = budget.saturating_sub(len);
            have_data |= len > 0;
            out.push(f);
        }
        out
    }

    /// The error for a partition this shard should own but has not open: the broker is stopping,
    /// or the topic was just deleted.
    pub(crate) fn gone_error(&self) -> ErrorCode {
        if self.stopping() {
            ErrorCode::ShuttingDown
        } else {
            ErrorCode::UnknownTopicOrPartition
        }
    }

    /// A partition this shard owns.
    pub(crate) fn partition(&self, topic: &str, partition: u32) -> Option<Rc<Partition>> {
        self.partitions
            .borrow()
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Applies the table read from disk at start, whatever its revision.
    async fn apply_initial(&self, table: TopicTable) {
        self.apply_table(table, true).await;
    }

    /// Applies `table` if it is newer: opens the logs of partitions this shard now owns, closes and
    /// deletes those of topics that are gone.
    /// Returns the partitions it could not open, with why.
    pub(crate) async fn apply(&self, table: TopicTable) -> Vec<OpenFailure> {
        self.apply_table(table, false).await
    }

    async fn apply_table(&self, table: TopicTable, initial: bool) -> Vec<OpenFailure> {
        let mut failures = Vec::new();
        let Ok(_permit) = self.apply_lock.acquire_permit(1).await else {
            return failures;
        };
        if !initial && table.revision <= self.topics.borrow().revision {
            return failures;
        }
        let wanted: Vec<PartitionKey> = table
            .topics
            .iter()
            .flat_map(|t| (0..t.partitions).map(move |p| (t.name.clone(), p)))
            .filter(|(t, p)| topics::owner(t, *p, self.mesh.shards) == self.id())
            .collect();
        let gone: Vec<PartitionKey> = self
            .partitions
            .borrow()
            .keys()
            .filter(|k| table.get(&k.0).is_none_or(|t| k.1 >= t.partitions))
            .cloned()
            .collect();
        for key in gone {
            let partition = self.partitions.borrow_mut().remove(&key);
            if let Some(p) = partition {
                // A produce appending to it ends first (see the shutdown below).
                let _no_request_appending = p.produce_lock.acquire_permit(1).await;
                let _ = p.log.close().await;
            }
            // On the blocking pool: a partition can hold many GiB of segments, and unlinking them
            // must not stall this shard's other partitions. Awaited, so that a table applied next
            // (a topic created again under the same name) never races the removal.
            let dir = self.partition_dir(&key);
            let removed = glommio::executor()
                .spawn_blocking({
                    let dir = dir.clone();
                    move || std::fs::remove_dir_all(dir)
                })
                .await;
            if let Err(e) = removed {
                tracing::warn!(dir = %dir.display(), error = %e, "removing a deleted partition failed");
            }
        }
        let previous = self.topics.borrow().clone();
        if initial && self.id() == CONTROLLER {
            self.remove_stray_partition_dirs(&table);
        }
        for key in wanted {
            if self.partitions.borrow().contains_key(&key) {
                continue;
            }
            let Some(record) = table.get(&key.0) else {
                continue;
            };
            let is_new = !initial && previous.get(&key.0).is_none_or(|t| key.1 >= t.partitions);
            if is_new {
                // A directory left by an earlier topic of the same name (its deletion interrupted)
                // must not lend the new topic its records.
                let _ = std::fs::remove_dir_all(self.partition_dir(&key));
            }
            match self.open_partition(&key, record).await {
                Ok(log) => {
                    let groups = if key.0 == OFFSETS_TOPIC {
                        match GroupOffsets::replay(&log).await {
                            Ok(g) => Some(RefCell::new(g)),
                            Err(e) => {
                                tracing::error!(partition = key.1, error = %e, "replaying group offsets failed");
                                failures.push((key.0.clone(), key.1, e));
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    let partition = Partition {
                        log,
                        sync_on_ack: topics::sync_on_ack(&record.configs),
                        appended: event_listener::Event::new(),
                        groups,
                        commit_lock: Semaphore::new(1),
                        produce_lock: Semaphore::new(1),
                        appending_from: Cell::new(None),
                    };
                    self.partitions.borrow_mut().insert(key, Rc::new(partition));
                }
                Err(e) => {
                    tracing::error!(topic = %key.0, partition = key.1, error = %e, "opening partition failed");
                    failures.push((key.0.clone(), key.1, e));
                }
            }
        }
        // Offsets of deleted topics go (also at start: a crash may have come between the delete and
        // this), so that a topic created again under the same name starts without them. The table
        // is in place first: a commit stored after this pass checks its topics against it.
        let table = Rc::new(table);
        *self.topics.borrow_mut() = table.clone();
        let offsets: Vec<Rc<Partition>> = self
            .partitions
            .borrow()
            .iter()
            .filter(|(key, _)| key.0 == OFFSETS_TOPIC)
            .map(|(_, p)| p.clone())
            .collect();
        for p in offsets {
            match p.forget_deleted_topics(|t| table.get(t).is_some()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(entries = n, "removed the group offsets of deleted topics"),
                Err(e) => {
                    tracing::warn!(error = %e, "removing the group offsets of deleted topics failed")
                }
            }
        }
        self.table_applied.notify(usize::MAX);
        failures
    }

    /// (Controller) creates the internal offsets topic if the table lacks it, retrying each second
    /// until it succeeds or the broker stops (a full disk at first start may be freed).
    async fn ensure_offsets_topic(self: &Rc<Self>) {
        while !self.stopping() && self.topics.borrow().get(OFFSETS_TOPIC).is_none() {
            let internal = NewTopic {
                name: OFFSETS_TOPIC.into(),
                partitions: OFFSETS_PARTITIONS,
                configs: group_offsets::offsets_topic_configs(),
            };
            for r in self.create_topics(vec![internal]).await {
                if r.error != ErrorCode::None && r.error != ErrorCode::TopicAlreadyExists {
                    tracing::error!(error = %r.error, message = ?r.message, "creating the offsets topic failed; retrying");
                    glommio::timer::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Waits until this shard has applied a table with the offsets topic (the controller creates it
    /// at first start): before that, group requests would find no partition to store in. Clients'
    /// connections wait in the listen backlog meanwhile, as a Kafka broker opens its listeners only
    /// once started.
    async fn wait_for_offsets_topic(&self) {
        while !self.stopping() {
            let applied = self.table_applied.listen();
            if self.topics.borrow().get(OFFSETS_TOPIC).is_some() {
                return;
            }
            futures_lite::future::or(applied, glommio::timer::sleep(STOP_POLL)).await;
        }
    }

    async fn open_partition(
        &self,
        key: &PartitionKey,
        record: &TopicRecord,
    ) -> Result<Rc<Log>, String> {
        let config = topics::log_config(&record.configs).map_err(|(_, why)| why)?;
        let log = Log::open(self.partition_dir(key), config)
            .await
            .map_err(|e| e.to_string())?;
        // A single node is its own in-sync set: everything in its log is committed.
        log.set_high_watermark(log.log_end_offset());
        Ok(log)
    }

    /// Removes partition directories of topics (or partitions) the table no longer has: what a
    /// crash between a delete and its cleanup left behind.
    fn remove_stray_partition_dirs(&self, table: &TopicTable) {
        let Ok(entries) = std::fs::read_dir(&self.config.data_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some((topic, partition)) = topics::parse_partition_dir_name(&name) else {
                continue;
            };
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let known = table.get(topic).is_some_and(|t| partition < t.partitions);
            if !is_dir || known {
                continue;
            }
            // Only what is surely a partition's log goes; anything else named like one stays.
            if mlog_storage::is_log_dir(&entry.path(), false) {
                tracing::warn!(dir = %entry.path().display(), "removing the data of a deleted partition");
                let _ = std::fs::remove_dir_all(entry.path());
            } else {
                tracing::warn!(dir = %entry.path().display(), "leaving a directory named like a partition that holds other files");
            }
        }
    }

    pub(crate) fn partition_dir(&self, key: &PartitionKey) -> PathBuf {
        self.config.data_dir.join(format!("{}-{}", key.0, key.1))
    }

    /// (Controller) creates topics: validate, write the new table, then have every shard apply it
    /// before answering, so that a client sees its topic on any shard right after.
    pub(crate) async fn create_topics(
        self: &Rc<Self>,
        requested: Vec<NewTopic>,
    ) -> Vec<TopicResult> {
        let Ok(_permit) = self.change_lock.acquire_permit(1).await else {
            return fail_all(
                requested.iter().map(|t| t.name.clone()),
                ErrorCode::ShuttingDown,
                "stopping",
            );
        };
        let mut table = (**self.topics.borrow()).clone();
        let mut results = Vec::with_capacity(requested.len());
        let limit = u64::from(self.config.max_partitions_per_shard) * self.mesh.shards as u64;
        let mut held: u64 = table.topics.iter().map(|t| u64::from(t.partitions)).sum();
        for t in requested {
            let verdict = if let Err(why) = topics::validate_name(&t.name) {
                Err((ErrorCode::InvalidTopic, why))
            } else if t.partitions == 0 || t.partitions > topics::MAX_PARTITIONS {
                Err((
                    ErrorCode::InvalidPartitions,
                    format!("partitions must be 1 to {}", topics::MAX_PARTITIONS),
                ))
            } else if table.get(&t.name).is_some() {
                Err((
                    ErrorCode::TopicAlreadyExists,
                    format!("topic {} exists", t.name),
                ))
            } else if held + u64::from(t.partitions) > limit && t.name != OFFSETS_TOPIC {
                // (The internal topic is always created: without it the broker serves nothing.)
                Err((
                    ErrorCode::InvalidPartitions,
                    format!(
                        "the broker holds {held} partitions of at most {limit} \
                         (max_partitions_per_shard x shards)"
                    ),
                ))
            } else {
                topics::validate_new_configs(&t.configs)
            };
            results.push(match verdict {
                Ok(()) => {
                    held += u64::from(t.partitions);
                    table = table.with_topic(TopicRecord {
                        name: t.name.clone(),
                        partitions: t.partitions,
                        configs: t.configs,
                    });
                    ok(t.name)
                }
                Err((error, message)) => TopicResult {
                    name: t.name,
                    error,
                    message: Some(message),
                },
            });
        }
        self.publish(table, &mut results).await;
        results
    }

    /// (Controller) deletes topics and their data.
    pub(crate) async fn delete_topics(self: &Rc<Self>, names: Vec<String>) -> Vec<TopicResult> {
        let Ok(_permit) = self.change_lock.acquire_permit(1).await else {
            return fail_all(names.into_iter(), ErrorCode::ShuttingDown, "stopping");
        };
        let mut table = (**self.topics.borrow()).clone();
        let mut results = Vec::with_capacity(names.len());
        for name in names {
            if name == OFFSETS_TOPIC {
                let message = Some("the internal offsets topic cannot be deleted".into());
                results.push(TopicResult {
                    name,
                    error: ErrorCode::InvalidTopic,
                    message,
                });
            } else if table.get(&name).is_some() {
                table = table.without_topic(&name);
                results.push(ok(name));
            } else {
                let message = Some(format!("unknown topic {name}"));
                results.push(TopicResult {
                    name,
                    error: ErrorCode::UnknownTopicOrPartition,
                    message,
                });
            }
        }
        self.publish(table, &mut results).await;
        results
    }

    /// Writes a changed table durably, then applies it on every shard. If it cannot be written,
    /// every change in `results` becomes a `StorageError`.
    async fn publish(self: &Rc<Self>, table: TopicTable, results: &mut [TopicResult]) {
        if table.revision == self.topics.borrow().revision {
            return;
        }
        let data_dir = self.config.data_dir.clone();
        let to_store = table.clone();
        let stored = glommio::executor()
            .spawn_blocking(move || to_store.store(&data_dir))
            .await;
        if let Err(why) = stored {
            for r in results.iter_mut().filter(|r| r.error == ErrorCode::None) {
                r.error = ErrorCode::StorageError;
                r.message = Some(why.clone());
            }
            return;
        }
        for peer in 0..self.mesh.shards {
            match self
                .mesh
                .call(self, peer, Op::ApplyTable(table.clone()))
                .await
            {
                Ok(Reply::Applied(failures)) => {
                    // The topic exists (its table is durable), but a partition that did not open
                    // answers StorageError until a restart: the creator is told, not answered OK.
                    for (topic, partition, why) in failures {
                        if let Some(r) = results
                            .iter_mut()
                            .find(|r| r.name == topic && r.error == ErrorCode::None)
                        {
                            r.error = ErrorCode::StorageError;
                            r.message = Some(format!(
                                "created, but partition {partition} could not be opened ({why}); \
                                 it answers StorageError until the broker restarts"
                            ));
                        }
                    }
                }
                Ok(_) => {}
                Err(why) => {
                    tracing::error!(shard = peer, error = %why, "a shard did not apply the topic table")
                }
            }
        }
    }
}

fn ok(name: String) -> TopicResult {
    TopicResult {
        name,
        error: ErrorCode::None,
        message: None,
    }
}

fn fail_all(names: impl Iterator<Item = String>, error: ErrorCode, why: &str) -> Vec<TopicResult> {
    names
        .map(|name| TopicResult {
            name,
            error,
            message: Some(why.to_string()),
        })
        .collect()
}

/// A partition a shard could not open: topic, partition, why.
pub(crate) type OpenFailure = (String, u32, String);

/// Starts shard thread `index` (pinned to a core). It binds `listen`, reports the bound address on
/// `bound`, joins the mesh, opens its partitions, serves until `stopping` is set, then finishes its
/// connections' in-flight requests, closes its logs and returns.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    index: usize,
    config: BrokerConfig,
    listen: SocketAddr,
    mesh: mesh::Builder,
    endpoints: Endpoints,
    producer_ids: Arc<ProducerIds>,
    stopping: Arc<AtomicBool>,
    serving: Arc<AtomicUsize>,
    bound: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = LocalExecutorBuilder::new(Placement::Fixed(index % cores))
        .name(&format!("shard-{index}"))
        .io_memory(config.io_memory_bytes);
    if config.spin_before_park_us > 0 {
        builder = builder.spin_before_park(Duration::from_micros(config.spin_before_park_us));
    }
    let slice_us = config.shard_slice_us;
    std::thread::Builder::new().name(format!("shard-{index}")).spawn(move || {
        // Counted as serving until its connections are done, or until the thread ends for any
        // reason (a shard that fails must not keep the others waiting at shutdown).
        let token = ServingToken(serving.clone());
        if slice_us > 0 {
            if let Err(e) = request_time_slice(slice_us) {
                tracing::warn!(shard = index, error = %e, "could not set the shard's time slice");
            }
        }
        let executor = match builder.make() {
            Ok(e) => e,
            Err(e) => {
                let _ = bound.send(Err(format!("starting shard {index}: {e}")));
                return;
            }
        };
        executor.run(async move {
            let listener = match TcpListener::bind(listen) {
                Ok(l) => l,
                Err(e) => {
                    let _ = bound.send(Err(format!("shard {index} binding {listen}: {e}")));
                    return;
                }
            };
            let shared_addr = listener.local_addr().unwrap_or(listen);
            let own_port = config.shard_port_base.map_or(0, |b| b + index as u16);
            let own = match TcpListener::bind(SocketAddr::new(listen.ip(), own_port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = bound.send(Err(format!("shard {index} binding port {own_port}: {e}")));
                    return;
                }
            };
            let _ = bound.send(Ok(shared_addr));
            let (mesh, receivers) = match Mesh::join(mesh).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(shard = index, error = %e, "shard cannot join the mesh");
                    return;
                }
            };
            if let (Ok(addr), Ok(mut all)) = (own.local_addr(), endpoints.lock()) {
                if let Some(slot) = all.get_mut(mesh.id) {
                    *slot = Some(addr);
                }
                tracing::info!(shard = mesh.id, address = %addr, "shard listener");
            }
            let table = match TopicTable::load(&config.data_dir) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(shard = index, error = %e, "cannot read the topic table");
                    return;
                }
            };
            let request_memory = Rc::new(Semaphore::new(config.max_request_memory_bytes as u64));
            let shard = Rc::new(Shard {
                config,
                stopping,
                serving,
                mesh,
                endpoints,
                producer_ids,
                request_memory,
                topics: RefCell::new(Rc::new(TopicTable { revision: 0, topics: Vec::new() })),
                partitions: RefCell::new(HashMap::new()),
                apply_lock: Semaphore::new(1),
                change_lock: Semaphore::new(1),
                table_applied: event_listener::Event::new(),
            });
            // Every shard reads the same file at start; afterwards only the controller changes it.
            shard.apply_initial(table).await;
            Mesh::serve(shard.clone(), receivers);
            if shard.id() == CONTROLLER {
                shard.ensure_offsets_topic().await;
            }
            shard.wait_for_offsets_topic().await;
            // A stop during startup: connections waiting in the backlog are never served.
            if !shard.stopping() {
                spawn_retention(shard.clone());
                futures_lite::future::zip(serve(listener, shard.clone()), serve(own, shard.clone())).await;
            }
            shard.wait_until_no_shard_serves(token).await;
            // No table is applied from here on: one in progress ends first, later ones are refused
            // (one would reopen partitions drained below, and leave them unclosed).
            let _applying = shard.apply_lock.acquire_permit(1).await;
            shard.apply_lock.close();
            let partitions: Vec<(PartitionKey, Rc<Partition>)> = shard.partitions.borrow_mut().drain().collect();
            for (key, p) in partitions {
                // A produce request still appending (one forwarded from another shard may be) ends
                // first: closing between two of its batches would leave the first ones behind, with
                // the client told nothing was stored.
                let _no_request_appending = p.produce_lock.acquire_permit(1).await;
                // Likewise a group commit: it is then answered as stored, not as ShuttingDown.
                let _no_commit_storing = p.commit_lock.acquire_permit(1).await;
                if let Err(e) = p.log.close().await {
                    tracing::error!(topic = %key.0, partition = key.1, error = %e, "closing partition failed");
                }
            }
        });
    })
}

/// One shard counted in `Shard::serving` while it lives.
struct ServingToken(Arc<AtomicUsize>);

impl Drop for ServingToken {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Asks the scheduler for a `us`-microsecond time slice for the calling thread (EEVDF's custom
/// slice, Linux 6.12+; older kernels accept and ignore it). Measured on a 2-core machine shared
/// with the load generator: shards waiting runnable for 8-22 ms behind other threads, seen by a
/// watchdog in most fixed-rate produce runs, all but disappeared.
fn request_time_slice(us: u64) -> std::io::Result<()> {
    let attr = libc::sched_attr {
        size: std::mem::size_of::<libc::sched_attr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: us * 1000,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: sched_setattr(0 = this thread, a valid attr of the size it states, no flags); it
    // reads the struct and writes nothing.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Applies retention to this shard's partitions every `retention_check_ms`, until stopping.
fn spawn_retention(shard: Rc<Shard>) {
    glommio::spawn_local(async move {
        let every = Duration::from_millis(shard.config.retention_check_ms);
        let mut next = std::time::Instant::now() + every;
        while !shard.stopping() {
            glommio::timer::sleep(STOP_POLL.min(every)).await;
            if std::time::Instant::now() < next {
                continue;
            }
            next += every;
            let partitions: Vec<(PartitionKey, Rc<Partition>)> = shard
                .partitions
                .borrow()
                .iter()
                .map(|(k, p)| (k.clone(), p.clone()))
                .collect();
            for (key, p) in partitions {
                match p.log.enforce_retention(std::time::SystemTime::now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(topic = %key.0, partition = key.1, segments = n, "retention deleted segments"),
                    Err(e) => tracing::warn!(topic = %key.0, partition = key.1, error = %e, "retention failed"),
                }
            }
        }
    })
    .detach();
}

/// Accepts until stopping, then waits for every connection task to finish.
async fn serve(listener: TcpListener, shard: Rc<Shard>) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.until_stopping().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                let (shard, open) = (shard.clone(), open.clone());
                open.set(open.get() + 1);
                glommio::spawn_local(async move {
                    connection::serve(stream, shard).await;
                    open.set(open.get() - 1);
                })
                .detach();
            }
            Some(Err(e)) => {
                // Running out of file descriptors or a reset during accept: keep serving.
                tracing::warn!(shard = shard.id(), error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop(listener);
    // Connections notice the stop flag between requests and close; in-flight requests finish.
    while open.get() > 0 {
        glommio::timer::sleep(STOP_POLL).await;
    }
    tracing::info!(shard = shard.id(), "shard stopped");
}

#[cfg(test)]
mod tests {
    /// The slice a shard asks for is the one the kernel applies (where the kernel reports it: EEVDF
    /// kernels show `se.slice` in `/proc/thread-self/sched`).
    #[test]
    fn a_shard_thread_gets_the_time_slice_it_asks_for() {
        std::thread::spawn(|| {
            super::request_time_slice(300).expect("sched_setattr");
            let sched = std::fs::read_to_string("/proc/thread-self/sched").unwrap_or_default();
            let slice = sched
                .lines()
                .find(|l| l.starts_with("se.slice"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string());
            if let Some(ns) = slice {
                assert_eq!(ns, "300000");
            }
        })
        .join()
        .expect("thread");
    }
}
