//! Request dispatch: decode the header, check the API and version, run the handler, encode the
//! answer. Every failure to decode becomes an error response, except in a Produce with acks=0,
//! which has no response: a failure of its body or of any partition closes the connection instead
//! (an unknown API or version is still answered: the body's layout, and so `acks`, is unknown).
//! Nothing here panics on input.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use mlog_storage::ReadChunk;
use mlog_wire::protocol::frame::{
    decode_request, decode_request_body, encode_error_response, encode_response,
    RESPONSE_HEADER_BYTES,
};
use mlog_wire::protocol::messages::*;
use mlog_wire::protocol::{ApiKey, DecodeError, ErrorCode, Wire};

use crate::group_offsets;
use crate::mesh::{FetchItem, Op, ProduceItem, Reply};
use crate::partition::{Acks, Offsets, Produced};
use crate::shard::{Shard, CONTROLLER};
use crate::topics;

/// One piece of a response frame, written in order: encoded bytes, or batch bytes sent as they are
/// (from the batch cache or a DMA read buffer, or copied from another shard).
pub(crate) enum Piece {
    Encoded(BytesMut),
    Batches(ReadChunk),
    Copied(Vec<u8>),
}

impl Piece {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Piece::Encoded(b) => b,
            Piece::Batches(c) => c,
            Piece::Copied(v) => v,
        }
    }
}

/// What the connection does after a request.
pub(crate) enum After {
    /// Send `pieces` (none for an acks=0 Produce) and read the next request.
    Continue,
    /// Close the connection: an acks=0 Produce failed, and it has no response to carry the error
    /// (Kafka does the same, so that the client learns something went wrong).
    Close,
    /// Send `pieces`, then finish these appends before reading the next request.
    Unfinished(Unfinished),
}

/// Appends an acks=all produce stopped waiting for when its `timeout_ms` passed (it was answered
/// `RequestTimedOut`, and they go on). The connection finishes them before its next request, so a
/// client cannot pile up work, and the frames it holds, faster than the logs take it. Dropped
/// unfinished (the connection ended), they go on in the background.
pub(crate) struct Unfinished(Vec<glommio::Task<Vec<Produced>>>);

impl Unfinished {
    pub(crate) async fn finish(mut self) {
        while let Some(task) = self.0.last_mut() {
            task.await;
            self.0.pop();
        }
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        for task in self.0.drain(..) {
            task.detach();
        }
    }
}

/// Handles one whole request frame, appending the response frame (if any) to `pieces`. The frame is
/// owned so that produced batches can be split off it instead of copied.
pub(crate) async fn handle(shard: &Rc<Shard>, frame: BytesMut, pieces: &mut Vec<Piece>) -> After {
    let mut out = BytesMut::new();
    let after = handle_into(shard, frame, &mut out, pieces).await;
    if !out.is_empty() {
        pieces.push(Piece::Encoded(out));
    }
    after
}

async fn handle_into(
    shard: &Rc<Shard>,
    frame: BytesMut,
    out: &mut BytesMut,
    pieces: &mut Vec<Piece>,
) -> After {
    let (header, body_at) = match decode_request(&frame) {
        Ok((header, body)) => (header, frame.len() - body.len()),
        Err(e) => {
            // The frame length was valid, so the header fits; answered rather than assumed.
            encode_error_response(out, 0, ErrorCode::InvalidRequest, &e.to_string());
            return After::Continue;
        }
    };
    let id = header.correlation_id;
    let Some(api) = ApiKey::from_u16(header.api_key) else {
        let msg = format!("API key {} is not served by this broker", header.api_key);
        encode_error_response(out, id, ErrorCode::UnsupportedApi, &msg);
        return After::Continue;
    };
    let (min, max) = api.versions();
    if header.api_version < min || header.api_version > max {
        let msg = format!(
            "{api:?} v{} is not served (v{min}-v{max} are)",
            header.api_version
        );
        encode_error_response(out, id, ErrorCode::UnsupportedVersion, &msg);
        return After::Continue;
    }
    // A Produce body starts with `acks`: known even when the rest cannot be decoded.
    let fire_and_forget = api == ApiKey::Produce && frame.get(body_at) == Some(&0);
    match serve_api(shard, api, id, frame, body_at, out, pieces).await {
        Ok(after) => after,
        Err(_) if fire_and_forget => After::Close,
        Err(e) => {
            out.clear();
            pieces.clear();
            encode_error_response(out, id, ErrorCode::InvalidRequest, &e.to_string());
            After::Continue
        }
    }
}

/// Decodes the body (at `body_at` in `frame`) of `api` and appends its response to `out`.
async fn serve_api(
    shard: &Rc<Shard>,
    api: ApiKey,
    id: u32,
    frame: BytesMut,
    body_at: usize,
    out: &mut BytesMut,
    pieces: &mut Vec<Piece>,
) -> Result<After, DecodeError> {
    let body = &frame[body_at..];
    let refuse = |out: &mut BytesMut| {
        let msg = format!(
            "a request may name at most {MAX_REQUEST_PARTITIONS} topics and {MAX_REQUEST_PARTITIONS} partitions"
        );
        encode_error_response(out, id, ErrorCode::InvalidRequest, &msg);
    };
    match api {
        ApiKey::ApiVersions => {
            decode_request_body::<ApiVersionsRequest>(body, "ApiVersionsRequest")?;
            encode_response(out, id, &api_versions());
        }
        ApiKey::Metadata => {
            let req = decode_request_body::<MetadataRequest>(body, "MetadataRequest")?;
            if too_many(req.topics.iter().flatten().map(|_| 0)) {
                refuse(out);
                return Ok(After::Continue);
            }
            encode_response(out, id, &metadata(shard, req));
        }
        ApiKey::CreateTopics => {
            let req = decode_request_body::<CreateTopicsRequest>(body, "CreateTopicsRequest")?;
            if too_many(req.topics.iter().map(|t| t.partitions as usize)) {
                refuse(out);
                return Ok(After::Continue);
            }
            let results = topic_change(shard, Op::Create(req.topics)).await;
            encode_response(out, id, &CreateTopicsResponse { results });
        }
        ApiKey::DeleteTopics => {
            let req = decode_request_body::<DeleteTopicsRequest>(body, "DeleteTopicsRequest")?;
            if too_many(req.names.iter().map(|_| 0)) {
                refuse(out);
                return Ok(After::Continue);
            }
            let results = topic_change(shard, Op::Delete(req.names)).await;
            encode_response(out, id, &DeleteTopicsResponse { results });
        }
        ApiKey::Produce => {
            let (acks, timeout_ms, parts) = {
                let req = decode_request_body::<ProduceRequest<'_>>(body, "ProduceRequest")?;
                if too_many(req.topics.iter().map(|t| t.partitions.len())) {
                    if req.acks == 0 {
                        return Ok(After::Close);
                    }
                    refuse(out);
                    return Ok(After::Continue);
                }
                let start = frame.as_ptr() as usize;
                let parts: Vec<(String, u32, std::ops::Range<usize>)> = req
                    .topics
                    .iter()
                    .flat_map(|t| {
                        t.partitions.iter().map(move |p| {
                            let at = p.records.0.as_ptr() as usize - start;
                            (t.name.to_string(), p.partition, at..at + p.records.0.len())
                        })
                    })
                    .collect();
                (req.acks, req.timeout_ms, parts)
            };
            let items = split_records(frame, parts);
            let (resp, unfinished) = produce(shard, acks, timeout_ms, items).await;
            if acks == 0 {
                let failed = resp
                    .topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .any(|p| p.error != ErrorCode::None);
                return Ok(if failed {
                    After::Close
                } else {
                    After::Continue
                });
            }
            encode_response(out, id, &resp);
            if !unfinished.0.is_empty() {
                return Ok(After::Unfinished(unfinished));
            }
        }
        ApiKey::Fetch => {
            let req = decode_request_body::<FetchRequest>(body, "FetchRequest")?;
            if too_many(req.topics.iter().map(|t| t.partitions.len())) {
                refuse(out);
                return Ok(After::Continue);
            }
            fetch(shard, id, req, pieces).await;
        }
        ApiKey::ListOffsets => {
            let req = decode_request_body::<ListOffsetsRequest>(body, "ListOffsetsRequest")?;
            if too_many(req.topics.iter().map(|t| t.partitions.len())) {
                refuse(out);
                return Ok(After::Continue);
            }
            encode_response(out, id, &list_offsets(shard, req).await);
        }
        ApiKey::OffsetCommit => {
            let req = decode_request_body::<OffsetCommitRequest>(body, "OffsetCommitRequest")?;
            if too_many(req.topics.iter().map(|t| t.partitions.len())) {
                refuse(out);
                return Ok(After::Continue);
            }
            encode_response(out, id, &offset_commit(shard, req).await);
        }
        ApiKey::OffsetFetch => {
            let req = decode_request_body::<OffsetFetchRequest>(body, "OffsetFetchRequest")?;
            if too_many(req.topics.iter().flatten().map(|t| t.partitions.len())) {
                refuse(out);
                return Ok(After::Continue);
            }
            encode_response(out, id, &offset_fetch(shard, req).await);
        }
        ApiKey::InitProducerId => {
            decode_request_body::<InitProducerIdRequest>(body, "InitProducerIdRequest")?;
            let resp = match shard.producer_ids.next() {
                Some(producer_id) => InitProducerIdResponse {
                    error: ErrorCode::None,
                    producer_id,
                    producer_epoch: 0,
                },
                None => InitProducerIdResponse {
                    error: ErrorCode::Unknown,
                    producer_id: -1,
                    producer_epoch: -1,
                },
            };
            encode_response(out, id, &resp);
        }
    }
    Ok(After::Continue)
}

/// Runs `op` on the shard that owns `group`'s internal offsets partition.
async fn on_group_owner(shard: &Rc<Shard>, group: &str, op: Op) -> Result<Reply, String> {
    let partition = group_offsets::partition_for(group);
    let owner = topics::owner(group_offsets::OFFSETS_TOPIC, partition, shard.mesh.shards);
    shard.mesh.call(shard, owner, op).await
}

/// Stores a group's offsets for the partitions that exist; the others get
/// `UnknownTopicOrPartition`.
async fn offset_commit(shard: &Rc<Shard>, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group_error = topics::validate_name(&req.group)
        .err()
        .map(|_| ErrorCode::InvalidGroup);
    // Each partition's own error, found before anything is stored (None: to be stored).
    let mut refused = Vec::new();
    let mut commits = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            let error = if group_error.is_some() {
                None // the group's error answers every partition
            } else if !exists(shard, &t.name, p.partition) {
                Some(ErrorCode::UnknownTopicOrPartition)
            } else if p.metadata.len() > MAX_OFFSET_METADATA_BYTES {
                Some(ErrorCode::OffsetMetadataTooLarge)
            } else {
                commits.push((t.name.clone(), p.partition, p.offset, p.metadata.clone()));
                None
            };
            refused.push(error);
        }
    }
    let mut refused = refused.into_iter();
    let stored = match group_error {
        Some(e) => e,
        None if commits.is_empty() => ErrorCode::None,
        None => match on_group_owner(
            shard,
            &req.group,
            Op::CommitOffsets {
                group: req.group.clone(),
                commits,
            },
        )
        .await
        {
            Ok(Reply::Committed(code)) => code,
            _ => ErrorCode::Unknown,
        },
    };
    OffsetCommitResponse {
        topics: req
            .topics
            .iter()
            .map(|t| TopicPartitionResults {
                name: t.name.clone(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| PartitionResult {
                        partition: p.partition,
                        error: refused.next().flatten().unwrap_or(stored),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Reads a group's stored offsets (-1 where it stored none).
async fn offset_fetch(shard: &Rc<Shard>, req: OffsetFetchRequest) -> OffsetFetchResponse {
    if topics::validate_name(&req.group).is_err() {
        return OffsetFetchResponse {
            error: ErrorCode::InvalidGroup,
            topics: Vec::new(),
        };
    }
    // Each partition once: a request naming one partition many times must not make an answer
    // many times its size.
    let wanted = req.topics.map(|ts| {
        let mut wanted: Vec<(String, Vec<u32>)> = Vec::new();
        // Per topic name: its place in `wanted` and the partitions already in it.
        let mut seen: HashMap<String, (usize, HashSet<u32>)> = HashMap::new();
        for t in ts {
            let next = wanted.len();
            let (at, partitions) = seen
                .entry(t.name.clone())
                .or_insert_with(|| (next, HashSet::new()));
            if *at == next {
                wanted.push((t.name, Vec::new()));
            }
            let fresh = t.partitions.into_iter().filter(|p| partitions.insert(*p));
            wanted[*at].1.extend(fresh);
        }
        wanted
    });
    let commits = match on_group_owner(
        shard,
        &req.group,
        Op::FetchOffsets {
            group: req.group.clone(),
            wanted,
        },
    )
    .await
    {
        Ok(Reply::GroupOffsets(Some(c))) => c,
        Ok(Reply::GroupOffsets(None)) => {
            return OffsetFetchResponse {
                error: ErrorCode::StorageError,
                topics: Vec::new(),
            }
        }
        _ => {
            return OffsetFetchResponse {
                error: shard.gone_error(),
                topics: Vec::new(),
            }
        }
    };
    let mut topics_out: Vec<OffsetFetchTopicResponse> = Vec::new();
    for (topic, partition, offset, metadata) in commits {
        let entry = OffsetFetchPartition {
            partition,
            offset,
            metadata,
            error: ErrorCode::None,
        };
        match topics_out.last_mut() {
            Some(t) if t.name == topic => t.partitions.push(entry),
            _ => topics_out.push(OffsetFetchTopicResponse {
                name: topic,
                partitions: vec![entry],
            }),
        }
    }
    OffsetFetchResponse {
        error: ErrorCode::None,
        topics: topics_out,
    }
}

/// Longest metadata a committed offset may carry (Kafka's `offset.metadata.max.bytes` default): it
/// is kept in memory for as long as the offset is stored.
const MAX_OFFSET_METADATA_BYTES: usize = 4096;

/// Most topics, and most partitions, one request may name (or create): bounds the work and memory a
/// single frame can cause.
const MAX_REQUEST_PARTITIONS: usize = 10_000;

/// Whether a request names too many topics or partitions, given each topic's partition count (0
/// for a bare name).
fn too_many(partitions_per_topic: impl Iterator<Item = usize>) -> bool {
    let (topics, partitions) = partitions_per_topic.fold((0, 0), |(t, p), n| (t + 1, p + n));
    topics > MAX_REQUEST_PARTITIONS || partitions > MAX_REQUEST_PARTITIONS
}

/// Whether `topic` has partition `partition` in this shard's table.
fn exists(shard: &Shard, topic: &str, partition: u32) -> bool {
    shard
        .topics
        .borrow()
        .get(topic)
        .is_some_and(|t| partition < t.partitions)
}

/// Splits each partition's records off the request frame (ranges in frame order, as decoded)
/// without copying them, when the frame has a buffer of its own (frames over
/// `connection::READ_CHUNK_BYTES`) and the part is at least a quarter of it. Other parts are copied:
/// a part may stay in a partition's batch cache, and must keep alive at most 4 times its size.
fn split_records(
    mut frame: BytesMut,
    parts: Vec<(String, u32, std::ops::Range<usize>)>,
) -> Vec<ProduceItem> {
    let whole = frame.len();
    let mut cut = 0; // bytes of the original frame already cut off the front of `frame`
    parts
        .into_iter()
        .map(|(topic, partition, range)| {
            let (start, end) = (range.start - cut, range.end - cut);
            let records = if whole <= crate::connection::READ_CHUNK_BYTES || range.len() * 4 < whole
            {
                BytesMut::from(&frame[start..end])
            } else {
                bytes::Buf::advance(&mut frame, start);
                cut = range.end;
                frame.split_to(end - start)
            };
            ProduceItem {
                topic,
                partition,
                records,
            }
        })
        .collect()
}

/// Appends to every partition of the request at once: the partitions this shard owns directly, the
/// others in one message per owner shard. Answers in request order.
async fn produce(
    shard: &Rc<Shard>,
    acks_field: i8,
    timeout_ms: u32,
    items: Vec<ProduceItem>,
) -> (ProduceResponse, Unfinished) {
    let failed = |error| Produced {
        error,
        base_offset: -1,
        log_start_offset: -1,
    };
    let acks = Acks::from_i8(acks_field);
    let order: Vec<(String, u32)> = items
        .iter()
        .map(|i| (i.topic.clone(), i.partition))
        .collect();
    let mut results = Vec::new();
    let mut unfinished = Unfinished(Vec::new());
    let mut groups: BTreeMap<usize, (Vec<usize>, Vec<ProduceItem>)> = BTreeMap::new();
    for item in items {
        let index = results.len();
        results.push(failed(ErrorCode::UnknownTopicOrPartition));
        if acks.is_none() {
            results[index] = failed(ErrorCode::InvalidAcks);
        } else if item.topic == group_offsets::OFFSETS_TOPIC {
            // Only the broker writes the internal topic: forged records would rewrite offsets.
            results[index] = failed(ErrorCode::InvalidTopic);
        } else if exists(shard, &item.topic, item.partition) {
            let owner = topics::owner(&item.topic, item.partition, shard.mesh.shards);
            let group = groups.entry(owner).or_default();
            group.0.push(index);
            group.1.push(item);
        }
    }
    if let Some(acks) = acks {
        let tasks: Vec<_> = groups
            .into_iter()
            .map(|(owner, (indexes, items))| {
                let shard = shard.clone();
                let task = glommio::spawn_local(async move {
                    let n = items.len();
                    if owner == shard.id() {
                        return shard.produce_owned(acks, items).await;
                    }
                    match shard
                        .mesh
                        .call(&shard, owner, Op::Produce { acks, items })
                        .await
                    {
                        Ok(Reply::Produced(p)) if p.len() == n => p,
                        _ => vec![failed(shard.gone_error()); n],
                    }
                });
                (indexes, task)
            })
            .collect();
        // With acks=all, `timeout_ms` bounds the wait for durability; appends still under way when
        // it passes go on (as in Kafka, a timeout does not mean "not written"), and the connection
        // waits for them before its next request (`After::Unfinished`). Other acks levels wait for
        // the append only, however long it takes.
        let timeout_ms = if acks == Acks::All {
            timeout_ms as u64
        } else {
            1 << 40
        };
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        for (indexes, mut task) in tasks {
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = futures_lite::future::or(async { Some((&mut task).await) }, async {
                glommio::timer::sleep(left).await;
                None
            })
            .await;
            match outcome {
                Some(answers) => {
                    for (i, r) in indexes.into_iter().zip(answers) {
                        results[i] = r;
                    }
                }
                None => {
                    unfinished.0.push(task);
                    for i in indexes {
                        results[i] = failed(ErrorCode::RequestTimedOut);
                    }
                }
            }
        }
    }
    // Answers in request order, consecutive partitions of a topic under one topic entry.
    let mut topics: Vec<ProduceTopicResponse> = Vec::new();
    for ((topic, partition), r) in order.into_iter().zip(results) {
        let answer = ProducePartitionResponse {
            partition,
            error: r.error,
            base_offset: r.base_offset,
            log_start_offset: r.log_start_offset,
        };
        match topics.last_mut() {
            Some(t) if t.name == topic => t.partitions.push(answer),
            _ => topics.push(ProduceTopicResponse {
                name: topic,
                partitions: vec![answer],
            }),
        }
    }
    (ProduceResponse { topics }, unfinished)
}

/// One partition's answer to a fetch, before encoding.
struct FetchedPartition {
    partition: u32,
    error: ErrorCode,
    high_watermark: i64,
    log_start_offset: i64,
    data: Vec<Piece>,
}

impl FetchedPartition {
    fn len(&self) -> usize {
        self.data.iter().map(|d| d.bytes().len()).sum()
    }
}

/// Longest a fetch may wait for data, whatever it asks for.
const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);

/// Reads every partition of the request; if fewer than `min_bytes` came back (and nothing failed),
/// waits (up to `max_wait_ms`, at most `MAX_FETCH_WAIT`) for the high watermark of any of them to
/// rise and reads again. The batches are written to the socket as stored: local ones without a copy.
async fn fetch(shard: &Rc<Shard>, id: u32, req: FetchRequest, pieces: &mut Vec<Piece>) {
    let wait = Duration::from_millis(req.max_wait_ms as u64).min(MAX_FETCH_WAIT);
    let deadline = Instant::now() + wait;
    loop {
        let answers = read_all(shard, &req).await;
        let parts = || answers.iter().flat_map(|(_, parts)| parts);
        let total: usize = parts().map(FetchedPartition::len).sum();
        let failed = parts().any(|p| p.error != ErrorCode::None);
        let done = failed
            || total >= req.min_bytes as usize
            || Instant::now() >= deadline
            || shard.stopping();
        if done || !wait_for_any(shard, &req, &answers, deadline).await {
            encode_fetch(id, answers, pieces);
            return;
        }
    }
}

/// Reads every partition of the request once: this shard's own directly, the others in one message
/// per owner shard, all within one byte budget (`Shard::fetch_owned_many`): the request's
/// `max_bytes`, capped by `max_frame_bytes`.
async fn read_all(shard: &Rc<Shard>, req: &FetchRequest) -> Vec<(String, Vec<FetchedPartition>)> {
    let failed = |partition, error| FetchedPartition {
        partition,
        error,
        high_watermark: -1,
        log_start_offset: -1,
        data: Vec::new(),
    };
    let mut slots: Vec<FetchedPartition> = Vec::new();
    let mut groups: BTreeMap<usize, (Vec<usize>, Vec<FetchItem>)> = BTreeMap::new();
    for t in &req.topics {
        for p in &t.partitions {
            let index = slots.len();
            slots.push(failed(p.partition, ErrorCode::UnknownTopicOrPartition));
            if exists(shard, &t.name, p.partition) {
                let owner = topics::owner(&t.name, p.partition, shard.mesh.shards);
                let group = groups.entry(owner).or_default();
                group.0.push(index);
                group.1.push(FetchItem {
                    topic: t.name.clone(),
                    partition: p.partition,
                    offset: p.fetch_offset,
                    max_bytes: p.max_bytes as usize,
                });
            }
        }
    }
    let mut budget = (req.max_bytes as usize).min(shard.config.max_frame_bytes / 2);
    let mut have_data = false;
    for (owner, (indexes, items)) in groups {
        let partitions: Vec<u32> = items.iter().map(|i| i.partition).collect();
        let answers: Vec<(ErrorCode, i64, i64, Vec<Piece>)> = if owner == shard.id() {
            shard
                .fetch_owned_many(&items, budget, have_data)
                .await
                .into_iter()
                .map(|f| {
                    (
                        f.error,
                        f.high_watermark,
                        f.log_start_offset,
                        f.data.chunks.into_iter().map(Piece::Batches).collect(),
                    )
                })
                .collect()
        } else {
            let n = items.len();
            match shard
                .mesh
                .call(
                    shard,
                    owner,
                    Op::Fetch {
                        items,
                        budget,
                        have_data,
                    },
                )
                .await
            {
                Ok(Reply::Fetched(answers)) if answers.len() == n => answers
                    .into_iter()
                    .map(|f| {
                        (
                            f.error,
                            f.high_watermark,
                            f.log_start_offset,
                            vec![Piece::Copied(f.data)],
                        )
                    })
                    .collect(),
                _ => (0..n)
                    .map(|_| (shard.gone_error(), -1, -1, Vec::new()))
                    .collect(),
            }
        };
        for ((i, partition), (error, high_watermark, log_start_offset, data)) in
            indexes.into_iter().zip(partitions).zip(answers)
        {
            let slot = FetchedPartition {
                partition,
                error,
                high_watermark,
                log_start_offset,
                data,
            };
            budget = budget.saturating_sub(slot.len());
            have_data |= slot.len() > 0;
            slots[i] = slot;
        }
    }
    let mut slots = slots.into_iter();
    req.topics
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                slots.by_ref().take(t.partitions.len()).collect(),
            )
        })
        .collect()
}

/// Waits until the high watermark of any requested partition is above what `answers` saw, the
/// deadline, or the broker stopping. Returns false at the deadline. One wait per owner shard; the
/// remote ones end (within `STOP_POLL`) once this returns, so a fetch that loops leaves none behind.
async fn wait_for_any(
    shard: &Rc<Shard>,
    req: &FetchRequest,
    answers: &[(String, Vec<FetchedPartition>)],
    deadline: Instant,
) -> bool {
    let mut by_owner: BTreeMap<usize, Vec<(String, u32, i64)>> = BTreeMap::new();
    for (t, (_, seen)) in req.topics.iter().zip(answers) {
        for (p, seen) in t.partitions.iter().zip(seen) {
            if exists(shard, &t.name, p.partition) {
                let owner = topics::owner(&t.name, p.partition, shard.mesh.shards);
                let part = (t.name.clone(), p.partition, seen.high_watermark);
                by_owner.entry(owner).or_default().push(part);
            }
        }
    }
    if by_owner.is_empty() || Instant::now() >= deadline {
        return false;
    }
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel_on_return = CancelOnDrop(cancelled.clone());
    let woke = Rc::new(event_listener::Event::new());
    let listener = woke.listen();
    let waits: Vec<_> = by_owner
        .into_iter()
        .map(|(owner, parts)| {
            let (shard, woke, cancelled) = (shard.clone(), woke.clone(), cancelled.clone());
            glommio::spawn_local(async move {
                if owner == shard.id() {
                    shard.wait_for_data(&parts, deadline, &cancelled).await;
                } else {
                    let op = Op::WaitForData {
                        parts,
                        deadline,
                        cancelled,
                    };
                    let _ = shard.mesh.call(&shard, owner, op).await;
                }
                woke.notify(usize::MAX);
            })
        })
        .collect();
    listener.await;
    drop(waits);
    Instant::now() < deadline && !shard.stopping()
}

/// Sets the flag when dropped: tells remote waits that their fetch no longer waits.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Encodes a fetch response by hand so that batch bytes go to the socket untouched.
fn encode_fetch(id: u32, answers: Vec<(String, Vec<FetchedPartition>)>, pieces: &mut Vec<Piece>) {
    let body_len: usize = 4 + answers
        .iter()
        .map(|(name, parts)| {
            2 + name.len()
                + 4
                + parts
                    .iter()
                    .map(|p| {
                        4 + 2 + 8 + 8 + 4 + p.data.iter().map(|d| d.bytes().len()).sum::<usize>()
                    })
                    .sum::<usize>()
        })
        .sum::<usize>();
    let mut head = BytesMut::new();
    head.put_u32((RESPONSE_HEADER_BYTES + body_len) as u32);
    head.put_u32(id);
    ErrorCode::None.encode(&mut head);
    head.put_u32(answers.len() as u32);
    for (name, parts) in answers {
        name.encode(&mut head);
        head.put_u32(parts.len() as u32);
        for p in parts {
            head.put_u32(p.partition);
            p.error.encode(&mut head);
            head.put_i64(p.high_watermark);
            head.put_i64(p.log_start_offset);
            head.put_u32(p.data.iter().map(|d| d.bytes().len()).sum::<usize>() as u32);
            if !p.data.is_empty() {
                pieces.push(Piece::Encoded(std::mem::take(&mut head)));
                pieces.extend(p.data);
            }
        }
    }
    if !head.is_empty() {
        pieces.push(Piece::Encoded(head));
    }
}

/// Looks up offsets on each partition's owner.
async fn list_offsets(shard: &Rc<Shard>, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut topics_out = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let unknown = Offsets {
                error: ErrorCode::UnknownTopicOrPartition,
                offset: -1,
                log_start_offset: -1,
                log_end_offset: -1,
                high_watermark: -1,
            };
            let o = if !exists(shard, &t.name, p.partition) {
                unknown
            } else {
                let owner = topics::owner(&t.name, p.partition, shard.mesh.shards);
                if owner == shard.id() {
                    match shard.partition(&t.name, p.partition) {
                        Some(part) => part.list_offset(p.timestamp).await,
                        None => Offsets {
                            error: ErrorCode::StorageError,
                            ..unknown
                        },
                    }
                } else {
                    let op = Op::ListOffset {
                        topic: t.name.clone(),
                        partition: p.partition,
                        timestamp: p.timestamp,
                    };
                    match shard.mesh.call(shard, owner, op).await {
                        Ok(Reply::Offsets(o)) => o,
                        _ => Offsets {
                            error: ErrorCode::Unknown,
                            ..unknown
                        },
                    }
                }
            };
            partitions.push(ListOffsetsPartitionResponse {
                partition: p.partition,
                error: o.error,
                offset: o.offset,
                log_start_offset: o.log_start_offset,
                log_end_offset: o.log_end_offset,
                high_watermark: o.high_watermark,
            });
        }
        topics_out.push(ListOffsetsTopicResponse {
            name: t.name,
            partitions,
        });
    }
    ListOffsetsResponse { topics: topics_out }
}

fn api_versions() -> ApiVersionsResponse {
    ApiVersionsResponse {
        apis: ApiKey::ALL
            .iter()
            .map(|k| {
                let (min_version, max_version) = k.versions();
                ApiVersionRange {
                    api_key: *k as u16,
                    min_version,
                    max_version,
                }
            })
            .collect(),
    }
}

/// Every shard of this broker, and the requested topics (or all) with each partition's owner.
fn metadata(shard: &Shard, req: MetadataRequest) -> MetadataResponse {
    let table = shard.topics.borrow().clone();
    let shards = shard.mesh.shards;
    let describe = |t: &topics::TopicRecord| TopicMetadata {
        error: ErrorCode::None,
        name: t.name.clone(),
        partitions: (0..t.partitions)
            .map(|p| PartitionMetadata {
                error: ErrorCode::None,
                partition: p,
                leader: 0,
                shard: topics::owner(&t.name, p, shards) as u16,
                leader_epoch: 0,
            })
            .collect(),
        configs: t.configs.clone(),
    };
    let topics = match req.topics {
        None => table.topics.iter().map(describe).collect(),
        // Each topic once: a request naming one topic many times must not make an answer many
        // times its size.
        Some(mut names) => {
            let mut seen = HashSet::new();
            names.retain(|n| seen.insert(n.clone()));
            names
        }
        .into_iter()
        .map(|name| match table.get(&name) {
            Some(t) => describe(t),
            None => TopicMetadata {
                error: ErrorCode::UnknownTopicOrPartition,
                name,
                partitions: Vec::new(),
                configs: Vec::new(),
            },
        })
        .collect(),
    };
    MetadataResponse {
        revision: table.revision,
        // Each shard's own listener: a shard-aware client connects to a partition's owner there
        // and skips the forwarding hop. Every listener accepts every request.
        endpoints: shard
            .endpoints
            .lock()
            .map(|all| all.clone())
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(s, addr)| {
                addr.map(|a| ShardEndpoint {
                    node_id: 0,
                    shard: s as u16,
                    host: shard
                        .config
                        .advertised_host
                        .clone()
                        .unwrap_or_else(|| a.ip().to_string()),
                    port: a.port(),
                })
            })
            .collect(),
        topics,
    }
}

/// Runs a topic change on the controller shard.
async fn topic_change(shard: &Rc<Shard>, op: Op) -> Vec<TopicResult> {
    let names: Vec<String> = match &op {
        Op::Create(t) => t.iter().map(|t| t.name.clone()).collect(),
        Op::Delete(n) => n.clone(),
        _ => Vec::new(),
    };
    match shard.mesh.call(shard, CONTROLLER, op).await {
        Ok(Reply::TopicResults(results)) => results,
        Ok(_) | Err(_) => names
            .into_iter()
            .map(|name| TopicResult {
                name,
                error: ErrorCode::Unknown,
                message: Some("the controller shard did not answer".into()),
            })
            .collect(),
    }
}
