//! The consumer: assigned partitions, positions, long-poll fetches, and group offsets.
//!
//! Each assigned partition is fetched from the listener of its owner shard (from Metadata), one
//! long-poll Fetch in flight per listener. A poll returns the records of the first answer at or past
//! each partition's position, advances the positions, and sends the next fetch before returning
//! (prefetch: it fills while the application works). A partition whose position fell out of range (retention) restarts from
//! `ConsumerConfig::reset`. Committed offsets are "the next offset to read", as in Kafka.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use mlog_wire::protocol::frame::DEFAULT_MAX_FRAME_BYTES;
use mlog_wire::protocol::messages::*;
use mlog_wire::protocol::{ApiKey, ErrorCode};
use mlog_wire::RecordBatch;

use crate::admin::OffsetSpec;
use crate::connection::Connection;
use crate::error::{ClientError, Result};
use crate::routes::topic_routes;

/// How long past `max_wait` a fetch's answer may take before the connection counts as lost.
const FETCH_ANSWER_MARGIN: Duration = Duration::from_secs(30);

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Consumer group for `commit` and `committed` (none: positions are not stored).
    pub group: Option<String>,
    /// Longest a poll waits for records.
    pub max_wait: Duration,
    /// A poll answers as soon as this many bytes are available.
    pub min_bytes: u32,
    /// Most bytes fetched per partition per poll.
    pub partition_max_bytes: u32,
    /// Where a partition restarts when its position is out of range, and where a newly assigned
    /// partition starts without a committed offset.
    pub reset: OffsetSpec,
    /// Longest wait for an answer from the bootstrap broker (metadata, offsets, group offsets);
    /// then the call fails with a retriable I/O error and the next one connects again.
    pub request_timeout: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group: None,
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            partition_max_bytes: 1 << 20,
            reset: OffsetSpec::Earliest,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// One record read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic (shared by the records of a partition).
    pub topic: Arc<str>,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: i64,
    /// Timestamp (ms).
    pub timestamp: i64,
    /// Key (a zero-copy slice of the fetch response).
    pub key: Option<Bytes>,
    /// Value (a zero-copy slice of the fetch response).
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

#[derive(Debug, Clone)]
struct Assignment {
    topic: Arc<str>,
    partition: u32,
    position: i64,
    /// The listener of the shard that owns the partition.
    addr: String,
}

/// One partition of a fetch in flight, and the position it was asked from.
#[derive(Debug)]
struct Asked {
    topic: Arc<str>,
    partition: u32,
    offset: i64,
}

/// Fetches from one listener, with at most one request in flight.
#[derive(Debug)]
struct Fetcher {
    addr: String,
    conn: Option<Connection>,
    /// The fetch in flight: its correlation id, what it asked for, and when its answer is overdue.
    in_flight: Option<(u32, Vec<Asked>, Instant)>,
}

impl Fetcher {
    /// Reads the answer to the fetch in flight, waiting until it is overdue (then the connection is
    /// dropped and the error is an I/O one, so the poll reroutes and asks again). The deadline was
    /// set when the fetch was sent, so polls that another listener answers first do not push it
    /// back. Cancellation-safe (see `Connection::response`).
    async fn read(&mut self) -> Result<(Bytes, Vec<Asked>)> {
        let (Some(conn), Some((id, _, deadline))) = (self.conn.as_mut(), &self.in_flight) else {
            return Err(ClientError::Protocol("no fetch in flight".into()));
        };
        let answer = match tokio::time::timeout_at((*deadline).into(), conn.response(*id)).await {
            Ok(answer) => answer,
            Err(_) => Err(ClientError::Io {
                addr: self.addr.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no fetch answer within max_wait plus 30 s",
                ),
            }),
        };
        let asked = self.in_flight.take().map(|(_, a, _)| a).unwrap_or_default();
        // After anything but a frame-level error answer, the connection's state is unknown (an
        // oversized or undecodable response leaves bytes unread): the next fetch gets a new one.
        if matches!(answer, Err(ref e) if !matches!(e, ClientError::Broker { .. })) {
            self.conn = None;
        }
        answer.map(|body| (body, asked))
    }
}

/// Reads records from assigned partitions.
///
/// ```no_run
/// # async fn example() -> Result<(), mlog_client::ClientError> {
/// use mlog_client::{Consumer, ConsumerConfig};
/// let config = ConsumerConfig { group: Some("billing".into()), ..ConsumerConfig::default() };
/// let mut consumer = Consumer::connect("127.0.0.1:9092", config).await?;
/// consumer.assign("orders", None).await?;
/// for record in consumer.poll().await? {
///     println!("{}@{}: {:?}", record.partition, record.offset, record.value);
/// }
/// consumer.commit().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Consumer {
    bootstrap: String,
    /// To the bootstrap broker: metadata, offsets, group offsets.
    conn: Connection,
    config: ConsumerConfig,
    assigned: Vec<Assignment>,
    fetchers: Vec<Fetcher>,
    /// Rotates which listener a poll serves first, so a busy one cannot starve the others.
    turn: usize,
    /// Records whose positions already moved but that a poll has not returned yet (it was
    /// cancelled while sending the prefetch): the next poll returns them first.
    ready: Vec<ConsumerRecord>,
    /// A partition answered with a retriable error: look the routes up again before the next fetch.
    reroute_pending: bool,
}

impl Consumer {
    /// Connects to a broker of the cluster.
    pub async fn connect(bootstrap: &str, config: ConsumerConfig) -> Result<Consumer> {
        let conn = tokio::time::timeout(config.request_timeout, Connection::connect(bootstrap))
            .await
            .map_err(|_| ClientError::Io {
                addr: bootstrap.to_string(),
                source: std::io::ErrorKind::TimedOut.into(),
            })??;
        Ok(Consumer {
            bootstrap: bootstrap.to_string(),
            conn,
            config,
            assigned: Vec::new(),
            fetchers: Vec::new(),
            turn: 0,
            ready: Vec::new(),
            reroute_pending: false,
        })
    }

    /// Assigns partitions of `topic` (all of them when `None`). Each starts at the group's committed
    /// offset if there is one, else at `reset`.
    pub async fn assign(&mut self, topic: &str, partitions: Option<Vec<u32>>) -> Result<()> {
        let routes = self.routes(topic).await?;
        let partitions = partitions.unwrap_or_else(|| routes.iter().map(|r| r.0).collect());
        for partition in partitions {
            let Some((_, addr)) = routes.get(partition as usize) else {
                return Err(ClientError::broker(
                    ErrorCode::UnknownTopicOrPartition,
                    Some(format!("{topic}-{partition}")),
                ));
            };
            let position = match self.committed(topic, partition).await? {
                Some(offset) => offset,
                None => self.lookup(topic, partition, self.config.reset).await?,
            };
            self.assigned
                .retain(|a| !(&*a.topic == topic && a.partition == partition));
            self.ready
                .retain(|r| !(&*r.topic == topic && r.partition == partition));
            self.assigned.push(Assignment {
                topic: topic.into(),
                partition,
                position,
                addr: addr.clone(),
            });
            self.abandon_fetch(addr);
        }
        Ok(())
    }

    /// Stops reading partitions of `topic` (all of them when `None`), e.g. of a deleted topic,
    /// whose error a poll would otherwise report whenever no other partition has records.
    pub fn unassign(&mut self, topic: &str, partitions: Option<&[u32]>) {
        let gone = |t: &str, p: u32| t == topic && partitions.is_none_or(|ps| ps.contains(&p));
        let addrs: Vec<String> = self
            .assigned
            .iter()
            .filter(|a| gone(&a.topic, a.partition))
            .map(|a| a.addr.clone())
            .collect();
        self.assigned.retain(|a| !gone(&a.topic, a.partition));
        self.ready.retain(|r| !gone(&r.topic, r.partition));
        for addr in &addrs {
            self.abandon_fetch(addr);
        }
    }

    /// Moves a partition's position.
    ///
    /// ```no_run
    /// # async fn example(mut consumer: mlog_client::Consumer) -> Result<(), mlog_client::ClientError> {
    /// use mlog_client::OffsetSpec;
    /// // Replay the last hour of partition 0.
    /// let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    /// let ms = hour_ago.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    /// consumer.seek("orders", 0, OffsetSpec::Timestamp(ms)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn seek(&mut self, topic: &str, partition: u32, to: OffsetSpec) -> Result<()> {
        let position = self.lookup(topic, partition, to).await?;
        self.set_position(topic, partition, position)
    }

    /// Moves a partition's position to `offset`.
    pub fn seek_to_offset(&mut self, topic: &str, partition: u32, offset: i64) -> Result<()> {
        self.set_position(topic, partition, offset)
    }

    fn set_position(&mut self, topic: &str, partition: u32, position: i64) -> Result<()> {
        let a = self
            .assigned
            .iter_mut()
            .find(|a| &*a.topic == topic && a.partition == partition)
            .ok_or_else(|| ClientError::Protocol(format!("{topic}-{partition} is not assigned")))?;
        let moved = a.position != position;
        a.position = position;
        if moved {
            let addr = a.addr.clone();
            self.abandon_fetch(&addr);
        }
        // Records held back from a cancelled poll came from the old position.
        self.ready
            .retain(|r| !(&*r.topic == topic && r.partition == partition));
        Ok(())
    }

    /// Drops the fetch in flight to `addr` (and its connection, which would deliver its answer):
    /// it asked for positions that are no longer wanted, and the next poll asks again at once.
    fn abandon_fetch(&mut self, addr: &str) {
        if let Some(f) = self.fetchers.iter_mut().find(|f| f.addr == addr) {
            if f.in_flight.take().is_some() {
                f.conn = None;
            }
        }
    }

    /// The next offset this consumer reads from a partition.
    pub fn position(&self, topic: &str, partition: u32) -> Option<i64> {
        self.assigned
            .iter()
            .find(|a| &*a.topic == topic && a.partition == partition)
            .map(|a| self.delivered(a))
    }

    /// The position the application has seen up to: the fetch position, or the first record held
    /// back from a cancelled poll (it will come with the next one) if that is earlier.
    fn delivered(&self, a: &Assignment) -> i64 {
        self.ready
            .iter()
            .filter(|r| r.topic == a.topic && r.partition == a.partition)
            .map(|r| r.offset)
            .fold(a.position, i64::min)
    }

    /// Runs `call` on the bootstrap connection, bounded by `request_timeout`.
    async fn on_bootstrap<T>(
        &mut self,
        call: impl AsyncFnOnce(&mut Connection) -> Result<T>,
    ) -> Result<T> {
        self.conn.within(self.config.request_timeout, call).await
    }

    /// Each partition of `topic` and the listener of its owner shard.
    async fn routes(&mut self, topic: &str) -> Result<Vec<(u32, String)>> {
        let bootstrap = self.bootstrap.clone();
        self.on_bootstrap(async |c| topic_routes(c, &bootstrap, topic).await)
            .await
    }

    async fn lookup(&mut self, topic: &str, partition: u32, spec: OffsetSpec) -> Result<i64> {
        let p = self
            .on_bootstrap(async |c| c.list_offset(topic, partition, spec).await)
            .await?;
        // No record that recent: start at the end.
        Ok(if p.offset < 0 {
            p.high_watermark
        } else {
            p.offset
        })
    }

    /// Waits (up to `max_wait`) for records past the positions, returns them in offset order per
    /// partition, and advances the positions past them.
    ///
    /// Each owner shard's listener is fetched from directly, with one long-poll fetch in flight;
    /// a poll returns the first answer, and before returning sends the next fetch, which fills
    /// while the application works on these records (prefetch).
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>> {
        if !self.ready.is_empty() {
            return Ok(std::mem::take(&mut self.ready));
        }
        if self.assigned.is_empty() {
            return Ok(Vec::new());
        }
        if std::mem::take(&mut self.reroute_pending) {
            self.fetchers.clear();
            self.reroute().await?;
        }
        match self.poll_once().await {
            // A listener went away (a restarted broker also has new shard ports), or a partition
            // moved or its broker is stopping: look the routes up again and ask once more. Positions
            // did not move, so nothing is skipped or repeated.
            Err(e) if e.is_retriable() => {
                self.fetchers.clear();
                self.conn.reconnect_next();
                self.reroute().await?;
                self.poll_once().await
            }
            other => other,
        }
    }

    /// Looks up the owner listener of every assigned partition again.
    async fn reroute(&mut self) -> Result<()> {
        let mut topics: Vec<Arc<str>> = self.assigned.iter().map(|a| a.topic.clone()).collect();
        topics.dedup();
        for topic in topics {
            let routes = self.routes(&topic).await?;
            for a in self.assigned.iter_mut().filter(|a| a.topic == topic) {
                if let Some((_, addr)) = routes.get(a.partition as usize) {
                    a.addr = addr.clone();
                }
            }
        }
        Ok(())
    }

    async fn poll_once(&mut self) -> Result<Vec<ConsumerRecord>> {
        self.start_fetches().await?;
        let (body, asked) = {
            let mut waits: Vec<_> = self
                .fetchers
                .iter_mut()
                .filter(|f| f.in_flight.is_some())
                .map(|f| Box::pin(f.read()))
                .collect();
            if waits.is_empty() {
                return Ok(Vec::new());
            }
            self.turn = self.turn.wrapping_add(1);
            let turn = self.turn % waits.len();
            waits.rotate_left(turn);
            futures_util::future::select_all(waits).await.0?
        };
        self.ready = self.take_records(&body, &asked).await?;
        // Prefetch: the next fetches are on their way before the caller sees these records. A
        // failure to send one shows in the next poll, which sends it again.
        let _ = self.start_fetches().await;
        Ok(std::mem::take(&mut self.ready))
    }

    /// Sends a fetch to every listener of an assigned partition that has none in flight.
    async fn start_fetches(&mut self) -> Result<()> {
        self.fetchers
            .retain(|f| self.assigned.iter().any(|a| a.addr == f.addr));
        for a in &self.assigned {
            if !self.fetchers.iter().any(|f| f.addr == a.addr) {
                self.fetchers.push(Fetcher {
                    addr: a.addr.clone(),
                    conn: None,
                    in_flight: None,
                });
            }
        }
        let turn = self.turn;
        for f in self.fetchers.iter_mut().filter(|f| f.in_flight.is_none()) {
            let mut asked: Vec<Asked> = self
                .assigned
                .iter()
                .filter(|a| a.addr == f.addr)
                .map(|a| Asked {
                    topic: a.topic.clone(),
                    partition: a.partition,
                    offset: a.position,
                })
                .collect();
            // The broker fills a fetch's byte budget in request order: a different partition goes
            // first each time, so that with a backlog none of them waits behind the others.
            if !asked.is_empty() {
                let first = turn % asked.len();
                asked.rotate_left(first);
            }
            let mut topics: Vec<FetchTopic> = Vec::new();
            for a in &asked {
                let p = FetchPartition {
                    partition: a.partition,
                    fetch_offset: a.offset,
                    max_bytes: self.config.partition_max_bytes,
                };
                match topics.iter_mut().find(|t| *t.name == *a.topic) {
                    Some(t) => t.partitions.push(p),
                    None => topics.push(FetchTopic {
                        name: a.topic.to_string(),
                        partitions: vec![p],
                    }),
                }
            }
            let req = FetchRequest {
                max_wait_ms: self.config.max_wait.as_millis().min(u32::MAX as u128) as u32,
                min_bytes: self.config.min_bytes,
                // Half the largest answer the connection accepts: the broker may add one whole batch
                // past `max_bytes` (so that a large batch is never stuck), which must still fit.
                max_bytes: (DEFAULT_MAX_FRAME_BYTES / 2) as u32,
                topics,
            };
            // Out of `f` while writing: a write cancelled half-way drops the connection with it.
            let mut conn = match f.conn.take() {
                Some(c) => c,
                None => Connection::connect(f.addr.as_str()).await?,
            };
            let id = conn.write_request(ApiKey::Fetch, &req).await?;
            f.conn = Some(conn);
            // The broker answers by max_wait (it caps waits at 30 s); the margin leaves room for
            // the transfer.
            let deadline = Instant::now() + self.config.max_wait + FETCH_ANSWER_MARGIN;
            f.in_flight = Some((id, asked, deadline));
        }
        Ok(())
    }

    /// Decodes a fetch answer into records and moves the positions past them. Partitions whose
    /// position moved since the fetch was sent (a seek) are skipped.
    async fn take_records(&mut self, body: &Bytes, asked: &[Asked]) -> Result<Vec<ConsumerRecord>> {
        let resp: FetchResponse<'_> =
            mlog_wire::protocol::frame::decode_body(body, "FetchResponse")?;
        // Positions move only once the whole response was read: an error part-way leaves them
        // where they were, so the next poll fetches the same records again instead of losing them.
        let mut out = Vec::new();
        let mut resets = Vec::new();
        let mut moved: Vec<(usize, i64)> = Vec::new();
        // A partition's error does not cost the other partitions their records: it is reported only
        // by a poll that has nothing else to return (its position stays, so it is asked again).
        let mut failed = None;
        for t in &resp.topics {
            for p in &t.partitions {
                let Some(index) = self
                    .assigned
                    .iter()
                    .position(|a| *a.topic == *t.name && a.partition == p.partition)
                else {
                    continue;
                };
                let a = &self.assigned[index];
                let still_wanted = asked.iter().any(|x| {
                    x.topic == a.topic && x.partition == a.partition && x.offset == a.position
                });
                if !still_wanted {
                    continue;
                }
                match p.error {
                    ErrorCode::None => {}
                    ErrorCode::OffsetOutOfRange => {
                        resets.push((a.topic.clone(), a.partition));
                        continue;
                    }
                    code => {
                        let why = Some(format!("{}-{}", t.name, p.partition));
                        let e = ClientError::broker(code, why);
                        // A partition that moved (or whose broker is stopping) is looked up again
                        // at the next poll, even if this one has records to return.
                        self.reroute_pending |= e.is_retriable();
                        failed.get_or_insert(e);
                        continue;
                    }
                }
                let mut position = a.position;
                let mut data = p.records.0;
                let bytes = |s: &[u8]| body.slice_ref(s);
                while !data.is_empty() {
                    // The CRC covers the records; iterating them checks each one as it decodes it.
                    let batch = RecordBatch::parse_header_and_crc(data)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    for record in batch
                        .records()
                        .map_err(|e| ClientError::Protocol(e.to_string()))?
                    {
                        let r = record.map_err(|e| ClientError::Protocol(e.to_string()))?;
                        if r.offset < position {
                            continue;
                        }
                        out.push(ConsumerRecord {
                            topic: a.topic.clone(),
                            partition: a.partition,
                            offset: r.offset,
                            timestamp: r.timestamp,
                            key: r.key.map(bytes),
                            value: r.value.map(bytes),
                            headers: r
                                .headers
                                .iter()
                                .map(|h| (bytes(h.key), h.value.map(bytes)))
                                .collect(),
                        });
                    }
                    position = position.max(batch.next_offset());
                    data = &data[batch.total_len()..];
                }
                moved.push((index, position));
            }
        }
        // Every await comes before the first position moves: a poll cancelled here changes nothing.
        let mut reset_to = Vec::with_capacity(resets.len());
        for (topic, partition) in resets {
            let position = self.lookup(&topic, partition, self.config.reset).await?;
            reset_to.push((topic, partition, position));
        }
        for (index, position) in moved {
            self.assigned[index].position = position;
        }
        for (topic, partition, position) in reset_to {
            self.set_position(&topic, partition, position)?;
        }
        match failed {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// Stores the current positions (`position`) as the group's committed offsets.
    pub async fn commit(&mut self) -> Result<()> {
        let group = self.group()?;
        let mut topics: Vec<CommitTopic> = Vec::new();
        for a in &self.assigned {
            let p = CommitPartition {
                partition: a.partition,
                offset: self.delivered(a),
                metadata: String::new(),
            };
            match topics.iter_mut().find(|t| *t.name == *a.topic) {
                Some(t) => t.partitions.push(p),
                None => topics.push(CommitTopic {
                    name: a.topic.to_string(),
                    partitions: vec![p],
                }),
            }
        }
        let req = OffsetCommitRequest { group, topics };
        let r: OffsetCommitResponse = self
            .on_bootstrap(async |c| c.request(ApiKey::OffsetCommit, &req).await)
            .await?;
        match r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .find(|p| p.error != ErrorCode::None)
        {
            Some(p) => Err(ClientError::broker(
                p.error,
                Some(format!("partition {}", p.partition)),
            )),
            None => Ok(()),
        }
    }

    /// The group's committed offset of a partition, if any.
    pub async fn committed(&mut self, topic: &str, partition: u32) -> Result<Option<i64>> {
        let Some(group) = self.config.group.clone() else {
            return Ok(None);
        };
        let req = OffsetFetchRequest {
            group,
            topics: Some(vec![OffsetFetchTopic {
                name: topic.to_string(),
                partitions: vec![partition],
            }]),
        };
        let r: OffsetFetchResponse = self
            .on_bootstrap(async |c| c.request(ApiKey::OffsetFetch, &req).await)
            .await?;
        if r.error != ErrorCode::None {
            return Err(ClientError::broker(r.error, None));
        }
        Ok(r.topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .next()
            .map(|p| p.offset)
            .filter(|o| *o >= 0))
    }

    /// Every offset the group committed: `(topic, partition, offset)`, sorted.
    pub async fn all_committed(&mut self) -> Result<Vec<(String, u32, i64)>> {
        let group = self.group()?;
        let req = OffsetFetchRequest {
            group,
            topics: None,
        };
        let r: OffsetFetchResponse = self
            .on_bootstrap(async |c| c.request(ApiKey::OffsetFetch, &req).await)
            .await?;
        if r.error != ErrorCode::None {
            return Err(ClientError::broker(r.error, None));
        }
        Ok(r.topics
            .into_iter()
            .flat_map(|t| {
                t.partitions
                    .into_iter()
                    .map(move |p| (t.name.clone(), p.partition, p.offset))
            })
            .collect())
    }

    fn group(&self) -> Result<String> {
        self.config
            .group
            .clone()
            .ok_or_else(|| ClientError::Protocol("committing needs ConsumerConfig::group".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fetch_is_overdue_by_its_own_deadline_however_often_polls_give_up_on_it() {
        // A listener that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let _silent = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(socket);
        });
        let mut fetcher = Fetcher {
            addr: addr.clone(),
            conn: Some(Connection::connect(addr.as_str()).await.unwrap()),
            in_flight: Some((0, Vec::new(), Instant::now() + Duration::from_millis(300))),
        };
        let start = Instant::now();
        // Every poll ends after 50 ms (another listener answered first), yet the fetch still
        // becomes overdue, and its connection goes.
        loop {
            match tokio::time::timeout(Duration::from_millis(50), fetcher.read()).await {
                Ok(answer) => {
                    assert!(answer.is_err());
                    break;
                }
                Err(_) => assert!(start.elapsed() < Duration::from_secs(10), "never overdue"),
            }
        }
        assert!(fetcher.in_flight.is_none() && fetcher.conn.is_none());
    }
}
