//! Idempotent producers' state of one partition: the last batches each producer appended, by
//! sequence number, so that a batch sent again (a retry after a lost answer or a broker restart) is
//! recognised and answered with the offsets it got the first time instead of being stored twice.
//!
//! Rules (those of Kafka's idempotent producer, with one leniency):
//! * a batch without a producer id (`-1`) is always appended;
//! * a batch whose sequence range equals one of its producer's last `BATCHES_KEPT` batches is a
//!   duplicate;
//! * a batch from an older epoch than its producer's is fenced;
//! * a batch whose first sequence lies after the producer's last one (gaps allowed: a client may
//!   have given up on a batch it never managed to send), from a new epoch, or from a producer not
//!   remembered, is appended; any other (a stale retry of an older batch) is out of order.
//!
//! Sequences wrap from `i32::MAX` to 0. A partition remembers at most `MAX_PRODUCERS` producers;
//! the one that appended least recently is forgotten first, so memory is bounded by configuration
//! and the snapshot fits a checkpoint.
//!
//! Durability: the log writes a snapshot at every roll and at close, and rebuilds the state after
//! an unclean stop from the newest snapshot plus the batch headers stored after it, so the state
//! covers every batch that survived the stop.

use std::collections::{HashMap, VecDeque};

use mlog_wire::batch::BatchHeader;

/// Batches remembered per producer (Kafka's `max.in.flight.requests.per.connection` limit).
pub(crate) const BATCHES_KEPT: usize = 5;
/// Producers remembered per partition.
pub(crate) const MAX_PRODUCERS: usize = 1024;
/// Memory the state of one partition can take: per producer a map entry (id, epoch, queue header)
/// and room for 8 batches (the queue's capacity once it held 5), with the map's own overhead.
pub(crate) const MEMORY_BOUND_BYTES: u64 = MAX_PRODUCERS as u64 * (64 + 8 * 24) * 2;
/// Offsets of a batch `check_all` assumed stored.
const UNSTORED: u64 = u64::MAX;
/// Bytes of one snapshot entry: id, epoch, batch count, then the batches.
const ENTRY_HEADER_BYTES: usize = 8 + 2 + 1;
const BATCH_BYTES: usize = 4 + 4 + 8 + 8;

/// One stored batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SeqBatch {
    first_seq: i32,
    last_seq: i32,
    base_offset: u64,
    last_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Producer {
    epoch: i16,
    /// Oldest first.
    batches: VecDeque<SeqBatch>,
}

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Store it.
    Append,
    /// Already stored at `[base_offset, last_offset]`.
    Duplicate { base_offset: u64, last_offset: u64 },
    /// From an epoch older than the producer's current one.
    Fenced { epoch: i16, current: i16 },
    /// A sequence that is neither next nor one of the remembered batches.
    OutOfOrder { first_seq: i32, last_seq: i32 },
}

/// The producers of one partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Producers {
    by_id: HashMap<i64, Producer>,
}

/// The last sequence of a batch of `count` records starting at `first` (wrapping past `i32::MAX`).
pub(crate) fn last_seq(first: i32, count: i32) -> i32 {
    ((i64::from(first) + i64::from(count) - 1).rem_euclid(1 << 31)) as i32
}

/// Whether `seq` lies after `last` in the wrapping sequence space (within half of it).
fn is_after(seq: i32, last: i32) -> bool {
    let d = (i64::from(seq) - i64::from(last)).rem_euclid(1 << 31);
    d > 0 && d < 1 << 30
}

/// The verdict for a batch from producer `p` (`None`: not remembered).
fn verdict(p: Option<&Producer>, h: &BatchHeader) -> Verdict {
    if h.producer_id < 0 {
        return Verdict::Append;
    }
    let Some(p) = p else {
        return Verdict::Append;
    };
    if h.producer_epoch < p.epoch {
        return Verdict::Fenced {
            epoch: h.producer_epoch,
            current: p.epoch,
        };
    }
    if h.producer_epoch > p.epoch {
        return Verdict::Append;
    }
    let first_seq = h.base_sequence;
    let last = last_seq(first_seq, h.record_count);
    if let Some(b) = p
        .batches
        .iter()
        .find(|b| b.first_seq == first_seq && b.last_seq == last)
    {
        return Verdict::Duplicate {
            base_offset: b.base_offset,
            last_offset: b.last_offset,
        };
    }
    match p.batches.back() {
        Some(newest) if !is_after(first_seq, newest.last_seq) => Verdict::OutOfOrder {
            first_seq,
            last_seq: last,
        },
        _ => Verdict::Append,
    }
}

/// Adds a batch stored at `[base_offset, last_offset]` to producer `p`'s window.
fn push(p: &mut Producer, h: &BatchHeader, base_offset: u64, last_offset: u64) {
    if h.producer_epoch != p.epoch {
        p.epoch = h.producer_epoch;
        p.batches.clear();
    }
    if p.batches.len() == BATCHES_KEPT {
        p.batches.pop_front();
    }
    p.batches.push_back(SeqBatch {
        first_seq: h.base_sequence,
        last_seq: last_seq(h.base_sequence, h.record_count),
        base_offset,
        last_offset,
    });
}

impl Producers {
    /// Decides what to do with a batch with this header.
    pub(crate) fn check(&self, h: &BatchHeader) -> Verdict {
        verdict(self.by_id.get(&h.producer_id), h)
    }

    /// The verdicts for batches to be appended one after another, each judged as if the ones
    /// before it were stored already (nothing is changed). A batch repeating an earlier one of the
    /// same list is out of order.
    pub(crate) fn check_all<'a>(
        &self,
        headers: impl IntoIterator<Item = &'a BatchHeader>,
    ) -> Vec<Verdict> {
        let mut overlay: HashMap<i64, Producer> = HashMap::new();
        headers
            .into_iter()
            .map(|h| {
                let p = overlay
                    .get(&h.producer_id)
                    .or_else(|| self.by_id.get(&h.producer_id));
                let v = match verdict(p, h) {
                    Verdict::Duplicate { base_offset, .. } if base_offset == UNSTORED => {
                        Verdict::OutOfOrder {
                            first_seq: h.base_sequence,
                            last_seq: last_seq(h.base_sequence, h.record_count),
                        }
                    }
                    v => v,
                };
                if v == Verdict::Append && h.producer_id >= 0 {
                    let p = overlay.entry(h.producer_id).or_insert_with(|| {
                        self.by_id.get(&h.producer_id).cloned().unwrap_or(Producer {
                            epoch: h.producer_epoch,
                            batches: VecDeque::new(),
                        })
                    });
                    push(p, h, UNSTORED, UNSTORED);
                }
                v
            })
            .collect()
    }

    /// Remembers a batch stored at `[base_offset, last_offset]` (no-op without a producer id).
    pub(crate) fn record(&mut self, h: &BatchHeader, base_offset: u64, last_offset: u64) {
        if h.producer_id < 0 {
            return;
        }
        if !self.by_id.contains_key(&h.producer_id) && self.by_id.len() >= MAX_PRODUCERS {
            self.forget_least_recent();
        }
        let p = self.by_id.entry(h.producer_id).or_insert(Producer {
            epoch: h.producer_epoch,
            batches: VecDeque::new(),
        });
        push(p, h, base_offset, last_offset);
    }

    fn forget_least_recent(&mut self) {
        let oldest = self
            .by_id
            .iter()
            .min_by_key(|(_, p)| p.batches.back().map_or(0, |b| b.last_offset))
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.by_id.remove(&id);
        }
    }

    /// Forgets batches at or after `offset` (the log was truncated there).
    pub(crate) fn truncate(&mut self, offset: u64) {
        self.by_id.retain(|_, p| {
            p.batches.retain(|b| b.base_offset < offset);
            !p.batches.is_empty()
        });
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.by_id.clear();
    }

    /// The snapshot's bytes, with the offset it covers up to (exclusive).
    pub(crate) fn encode(&self, upto: u64) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(12 + self.by_id.len() * (ENTRY_HEADER_BYTES + 2 * BATCH_BYTES));
        out.extend_from_slice(&upto.to_be_bytes());
        out.extend_from_slice(&(self.by_id.len() as u32).to_be_bytes());
        let mut ids: Vec<_> = self.by_id.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let p = &self.by_id[&id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&p.epoch.to_be_bytes());
            out.push(p.batches.len() as u8);
            for b in &p.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        out
    }

    /// Parses a snapshot: `(state, upto)`.
    pub(crate) fn decode(mut bytes: &[u8]) -> std::result::Result<(Producers, u64), &'static str> {
        fn take<const N: usize>(bytes: &mut &[u8]) -> std::result::Result<[u8; N], &'static str> {
            let (head, rest) = bytes
                .split_first_chunk::<N>()
                .ok_or("producer snapshot is truncated")?;
            *bytes = rest;
            Ok(*head)
        }
        let upto = u64::from_be_bytes(take(&mut bytes)?);
        let count = u32::from_be_bytes(take(&mut bytes)?) as usize;
        if count > MAX_PRODUCERS {
            return Err("producer snapshot holds too many producers");
        }
        let mut by_id = HashMap::with_capacity(count);
        for _ in 0..count {
            let id = i64::from_be_bytes(take(&mut bytes)?);
            let epoch = i16::from_be_bytes(take(&mut bytes)?);
            let n = take::<1>(&mut bytes)?[0] as usize;
            if id < 0 || n == 0 || n > BATCHES_KEPT {
                return Err("producer snapshot entry is invalid");
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(SeqBatch {
                    first_seq: i32::from_be_bytes(take(&mut bytes)?),
                    last_seq: i32::from_be_bytes(take(&mut bytes)?),
                    base_offset: u64::from_be_bytes(take(&mut bytes)?),
                    last_offset: u64::from_be_bytes(take(&mut bytes)?),
                });
            }
            by_id.insert(id, Producer { epoch, batches });
        }
        if !bytes.is_empty() {
            return Err("producer snapshot has trailing bytes");
        }
        Ok((Producers { by_id }, upto))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(id: i64, epoch: i16, seq: i32, count: i32) -> BatchHeader {
        let mut b = mlog_wire::RecordBatchBuilder::new().with_producer(id, epoch, seq);
        for i in 0..count {
            b.push(mlog_wire::NewRecord::new(i64::from(i), None, Some(b"v")))
                .unwrap();
        }
        *mlog_wire::RecordBatch::parse(&b.build().unwrap())
            .unwrap()
            .header()
    }

    #[test]
    fn retries_are_duplicates_and_stale_sequences_are_refused() {
        let mut p = Producers::default();
        let b0 = header(7, 0, 0, 3);
        assert_eq!(p.check(&b0), Verdict::Append);
        p.record(&b0, 100, 102);
        let b1 = header(7, 0, 3, 2);
        assert_eq!(p.check(&b1), Verdict::Append);
        p.record(&b1, 110, 111);
        // The same batches again: their first offsets.
        assert_eq!(
            p.check(&b0),
            Verdict::Duplicate {
                base_offset: 100,
                last_offset: 102
            }
        );
        assert_eq!(
            p.check(&b1),
            Verdict::Duplicate {
                base_offset: 110,
                last_offset: 111
            }
        );
        // Overlapping an old batch without being one: out of order.
        assert!(matches!(
            p.check(&header(7, 0, 1, 1)),
            Verdict::OutOfOrder { .. }
        ));
        // A gap is allowed (a batch the client gave up on), an older epoch is fenced, a newer one
        // starts over, and other producers are independent.
        assert_eq!(p.check(&header(7, 0, 9, 1)), Verdict::Append);
        assert_eq!(p.check(&header(-1, -1, 5, 1)), Verdict::Append);
        p.record(&header(7, 1, 0, 1), 120, 120);
        assert!(matches!(
            p.check(&header(7, 0, 5, 1)),
            Verdict::Fenced { .. }
        ));
        assert_eq!(p.check(&header(8, 0, 40, 1)), Verdict::Append);
    }

    #[test]
    fn only_the_last_batches_are_remembered_and_truncation_forgets_later_ones() {
        let mut p = Producers::default();
        for i in 0..(BATCHES_KEPT as i32 + 2) {
            p.record(&header(1, 0, i, 1), i as u64, i as u64);
        }
        // The two oldest were dropped: a resend of them can no longer be told from a stale one.
        assert!(matches!(
            p.check(&header(1, 0, 0, 1)),
            Verdict::OutOfOrder { .. }
        ));
        assert!(matches!(
            p.check(&header(1, 0, 2, 1)),
            Verdict::Duplicate { .. }
        ));
        p.truncate(4);
        assert_eq!(p.check(&header(1, 0, 4, 1)), Verdict::Append);
        assert!(matches!(
            p.check(&header(1, 0, 3, 1)),
            Verdict::Duplicate { .. }
        ));
        p.truncate(0);
        assert_eq!(p, Producers::default());
    }

    #[test]
    fn a_list_of_batches_is_judged_as_if_appended_in_turn() {
        let mut p = Producers::default();
        p.record(&header(1, 0, 0, 3), 0, 2);
        let (b0, b1, b2) = (header(1, 0, 0, 3), header(1, 0, 3, 2), header(1, 0, 5, 1));
        assert_eq!(
            p.check_all([&b0, &b1, &b2]),
            vec![
                Verdict::Duplicate {
                    base_offset: 0,
                    last_offset: 2
                },
                Verdict::Append,
                Verdict::Append
            ]
        );
        // Inside one list: a batch overlapping, or repeating, one before it is out of order.
        let overlapping = header(1, 0, 4, 1);
        assert!(matches!(
            p.check_all([&b1, &overlapping])[1],
            Verdict::OutOfOrder { .. }
        ));
        assert!(matches!(
            p.check_all([&b1, &b1])[1],
            Verdict::OutOfOrder { .. }
        ));
        // Nothing was changed.
        assert_eq!(p.check(&b1), Verdict::Append);
    }

    #[test]
    fn sequences_wrap_past_the_largest_i32() {
        let mut p = Producers::default();
        let near_end = header(3, 0, i32::MAX - 1, 4);
        p.record(&near_end, 0, 3);
        assert_eq!(p.check(&header(3, 0, 2, 1)), Verdict::Append);
        assert!(matches!(p.check(&near_end), Verdict::Duplicate { .. }));
        assert!(matches!(
            p.check(&header(3, 0, i32::MAX, 1)),
            Verdict::OutOfOrder { .. }
        ));
    }

    #[test]
    fn the_least_recent_producer_is_forgotten_first() {
        let mut p = Producers::default();
        for id in 0..MAX_PRODUCERS as i64 + 1 {
            p.record(&header(id, 0, 0, 1), id as u64, id as u64);
        }
        assert_eq!(p.by_id.len(), MAX_PRODUCERS);
        assert!(!p.by_id.contains_key(&0));
        assert!(p.by_id.contains_key(&(MAX_PRODUCERS as i64)));
    }

    proptest! {
        #[test]
        fn snapshots_round_trip(entries in proptest::collection::vec(
            (0i64..1000, 0i16..3, 0i32..1000, 1i32..50), 0..40), upto in any::<u64>()) {
            let mut p = Producers::default();
            for (i, (id, epoch, seq, count)) in entries.into_iter().enumerate() {
                p.record(&header(id, epoch, seq, count), i as u64 * 100, i as u64 * 100 + 49);
            }
            let (back, back_upto) = Producers::decode(&p.encode(upto)).unwrap();
            prop_assert_eq!(back, p);
            prop_assert_eq!(back_upto, upto);
        }

        #[test]
        fn damaged_snapshots_are_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Producers::decode(&bytes);
        }
    }
}
