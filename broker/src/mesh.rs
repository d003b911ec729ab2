//! Requests between shards over glommio's channel mesh.
//!
//! Every shard joins one full mesh; its position in the mesh is its shard id (the id partitions
//! are assigned by). `call` sends an operation to a peer and waits for the reply, matched by a
//! request id; a call to oneself runs the operation directly (the mesh has no channel to self).
//! Partition operations carry whole requests' worth of batches, never single records; a
//! shard-aware client that connects to the owning shard skips this hop entirely.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use futures_lite::StreamExt;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use mlog_wire::protocol::messages::{NewTopic, TopicResult};

use crate::group_offsets::Commit;
use crate::partition::{Acks, Offsets, Produced};
use crate::shard::Shard;
use crate::topics::TopicTable;

/// Messages in flight per pair of shards before senders wait.
pub(crate) const CHANNEL_CAPACITY: usize = 256;
/// How long, once the broker stops, a call waits for a peer that does not answer (see `call`).
const STOPPED_PEER_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// An operation one shard asks another to run.
#[derive(Debug)]
pub(crate) enum Op {
    /// Apply this table if it is newer than the one the shard has.
    ApplyTable(TopicTable),
    /// (To the controller) create topics.
    Create(Vec<NewTopic>),
    /// (To the controller) delete topics.
    Delete(Vec<String>),
    /// Append batches to partitions this shard owns (every partition of one request that this
    /// shard owns travels in one message).
    Produce { acks: Acks, items: Vec<ProduceItem> },
    /// Read partitions this shard owns (the bytes are copied into the reply), at most `budget`
    /// bytes in all, at least one batch unless `have_data` (see `dispatch::read_all`).
    Fetch {
        items: Vec<FetchItem>,
        budget: usize,
        have_data: bool,
    },
    /// Return once the high watermark of any of these partitions this shard owns is above the one
    /// given (what the fetch saw), at `deadline`, or once the fetch sets `cancelled`.
    WaitForData {
        parts: Vec<(String, u32, i64)>,
        deadline: Instant,
        cancelled: Arc<AtomicBool>,
    },
    /// Look up an offset of a partition this shard owns.
    ListOffset {
        topic: String,
        partition: u32,
        timestamp: i64,
    },
    /// Store a group's offsets (this shard owns the group's internal partition).
    CommitOffsets { group: String, commits: Vec<Commit> },
    /// Read a group's offsets (absent: all of them).
    FetchOffsets {
        group: String,
        wanted: Option<Vec<(String, Vec<u32>)>>,
    },
}

/// The answer to an `Op`.
#[derive(Debug)]
pub(crate) enum Reply {
    Done,
    /// A table was applied; the partitions that could not be opened.
    Applied(Vec<crate::shard::OpenFailure>),
    TopicResults(Vec<TopicResult>),
    Produced(Vec<Produced>),
    Fetched(Vec<RemoteFetch>),
    Offsets(Offsets),
    Committed(mlog_wire::protocol::ErrorCode),
    /// `None`: the group's offsets partition is not loaded here.
    GroupOffsets(Option<Vec<Commit>>),
}

/// Batches for one partition of a produce request.
#[derive(Debug)]
pub(crate) struct ProduceItem {
    pub topic: String,
    pub partition: u32,
    pub records: bytes::BytesMut,
}

/// One partition of a fetch request.
#[derive(Debug, Clone)]
pub(crate) struct FetchItem {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub max_bytes: usize,
}

/// A fetch answered by another shard: its bytes, copied.
#[derive(Debug)]
pub(crate) struct RemoteFetch {
    pub error: mlog_wire::protocol::ErrorCode,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub(crate) enum Envelope {
    Request { from: usize, id: u64, op: Op },
    Response { id: u64, reply: Reply },
}

pub(crate) type Builder = MeshBuilder<Envelope, Full>;

/// Removes a call's pending slot when the call ends, however it ends.
struct Forget<'a>(&'a Mesh, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

/// This shard's end of the mesh.
pub(crate) struct Mesh {
    pub id: usize,
    pub shards: usize,
    senders: Senders<Envelope>,
    pending: RefCell<HashMap<u64, Option<Reply>>>,
    next_id: Cell<u64>,
    arrived: event_listener::Event,
}

impl Mesh {
    /// Joins the mesh (waits until every shard joined) and returns this end and the receivers that
    /// `serve` consumes.
    pub(crate) async fn join(builder: Builder) -> Result<(Mesh, Receivers<Envelope>), String> {
        let (senders, receivers) = builder
            .join()
            .await
            .map_err(|e| format!("joining the shard mesh: {e}"))?;
        let mesh = Mesh {
            id: senders.peer_id(),
            shards: senders.nr_consumers(),
            senders,
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            arrived: event_listener::Event::new(),
        };
        Ok((mesh, receivers))
    }

    /// Runs `op` on shard `peer` and returns its reply.
    pub(crate) async fn call(
        &self,
        shard: &Rc<Shard>,
        peer: usize,
        op: Op,
    ) -> Result<Reply, String> {
        if peer == self.id {
            // Boxed: running an op can itself call shards (the controller publishing a table).
            let local: Pin<Box<dyn Future<Output = Reply> + '_>> = Box::pin(shard.run_op(op));
            return Ok(local.await);
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.pending.borrow_mut().insert(id, None);
        // A caller that gives up (a fetch's long poll ends, a cancelled send) must not leave its
        // slot behind.
        let _forget = Forget(self, id);
        if self
            .senders
            .send_to(
                peer,
                Envelope::Request {
                    from: self.id,
                    id,
                    op,
                },
            )
            .await
            .is_err()
        {
            self.pending.borrow_mut().remove(&id);
            return Err(format!("shard {peer} is gone"));
        }
        // When to stop waiting: set once the broker stops (see below), never moved after.
        let mut give_up_at: Option<Instant> = None;
        loop {
            let listener = self.arrived.listen();
            if let Some(reply) = self.take(id) {
                return Ok(reply);
            }
            // A running peer always answers: shards serve each other until every shard's
            // connections are finished (`shard::spawn`). Only a peer that failed and exited never
            // does: given up on once the broker has been stopping for `STOPPED_PEER_GRACE`.
            if give_up_at.is_none() && shard.stopping() {
                give_up_at = Some(Instant::now() + STOPPED_PEER_GRACE);
            }
            let woken_by_reply = futures_lite::future::or(
                async {
                    listener.await;
                    true
                },
                async {
                    match give_up_at {
                        Some(at) => {
                            glommio::timer::sleep(at.saturating_duration_since(Instant::now()))
                                .await
                        }
                        None => shard.until_stopping().await,
                    }
                    false
                },
            )
            .await;
            if !woken_by_reply && give_up_at.is_some_and(|at| Instant::now() >= at) {
                return self
                    .take(id)
                    .ok_or_else(|| format!("shard {peer} did not answer: stopping"));
            }
        }
    }

    fn take(&self, id: u64) -> Option<Reply> {
        let mut pending = self.pending.borrow_mut();
        if pending.get(&id).is_some_and(Option::is_some) {
            return pending.remove(&id).flatten();
        }
        None
    }

    fn forget(&self, id: u64) {
        self.pending.borrow_mut().remove(&id);
    }

    /// Serves requests from the other shards and routes their replies, until the mesh closes.
    pub(crate) fn serve(shard: Rc<Shard>, mut receivers: Receivers<Envelope>) {
        for (_, stream) in receivers.streams() {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let mut stream = stream;
                while let Some(envelope) = stream.next().await {
                    match envelope {
                        Envelope::Request { from, id, op } => {
                            let shard = shard.clone();
                            glommio::spawn_local(async move {
                                let reply = shard.run_op(op).await;
                                let _ = shard
                                    .mesh
                                    .senders
                                    .send_to(from, Envelope::Response { id, reply })
                                    .await;
                            })
                            .detach();
                        }
                        Envelope::Response { id, reply } => {
                            if let Some(slot) = shard.mesh.pending.borrow_mut().get_mut(&id) {
                                *slot = Some(reply);
                            }
                            shard.mesh.arrived.notify(usize::MAX);
                        }
                    }
                }
            })
            .detach();
        }
    }
}
