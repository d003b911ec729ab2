//! A Produce request frame written without copying its record batches.
//!
//! The frame is the one `encode_request` makes for a `ProduceRequest` (`docs/protocol.md`), byte for
//! byte (a test checks it), except that it is produced as pieces: the fields and framing go to a
//! small head buffer, and the batches stay where the producer built them, to be written with one
//! vectored write. A partition's batches travel back to back in its records field.

use std::ops::Range;

use bytes::BytesMut;
use mlog_wire::protocol::{ApiKey, RequestHeader, Wire};

/// One partition's batches, in order.
pub(crate) struct PartitionBatches<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: u32,
    pub(crate) batches: Vec<&'a [u8]>,
}

/// A piece of the frame: bytes of the head, or a batch.
enum Piece<'a> {
    Head(Range<usize>),
    Batch(&'a [u8]),
}

/// An encoded frame as pieces.
pub(crate) struct ProduceFrame<'a> {
    head: BytesMut,
    pieces: Vec<Piece<'a>>,
}

impl<'a> ProduceFrame<'a> {
    /// Encodes request `correlation_id`. Consecutive entries of one topic share its topic entry,
    /// as `ProduceRequest` groups them.
    pub(crate) fn encode(
        correlation_id: u32,
        acks: i8,
        timeout_ms: u32,
        partitions: &[PartitionBatches<'a>],
    ) -> Self {
        let mut head = BytesMut::with_capacity(64 + partitions.len() * 32);
        let mut pieces = Vec::with_capacity(partitions.len() * 2 + 1);
        let mut batch_bytes = 0usize;
        head.extend_from_slice(&[0; 4]); // the frame length, filled in last
        RequestHeader {
            api_key: ApiKey::Produce as u16,
            api_version: 0,
            correlation_id,
        }
        .encode(&mut head);
        acks.encode(&mut head);
        timeout_ms.encode(&mut head);
        let mut topics = partitions.chunk_by(|a, b| a.topic == b.topic);
        (topics.clone().count() as u32).encode(&mut head);
        let mut head_from = 0;
        for topic in topics.by_ref() {
            topic[0].topic.encode(&mut head);
            (topic.len() as u32).encode(&mut head);
            for p in topic {
                p.partition.encode(&mut head);
                let len: usize = p.batches.iter().map(|b| b.len()).sum();
                (len as u32).encode(&mut head);
                pieces.push(Piece::Head(head_from..head.len()));
                head_from = head.len();
                pieces.extend(p.batches.iter().map(|b| Piece::Batch(b)));
                batch_bytes += len;
            }
        }
        if head_from < head.len() {
            pieces.push(Piece::Head(head_from..head.len()));
        }
        let frame_len = (head.len() - 4 + batch_bytes) as u32;
        head[..4].copy_from_slice(&frame_len.to_be_bytes());
        ProduceFrame { head, pieces }
    }

    /// The pieces in write order.
    pub(crate) fn parts(&self) -> Vec<&[u8]> {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Head(r) => &self.head[r.clone()],
                Piece::Batch(b) => *b,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlog_wire::protocol::frame::encode_request;
    use mlog_wire::protocol::messages::{ProducePartition, ProduceRequest, ProduceTopic};
    use mlog_wire::protocol::RawBytes;

    /// The generic encoding of the same request, with each partition's batches joined.
    fn generic(id: u32, acks: i8, timeout_ms: u32, parts: &[PartitionBatches<'_>]) -> Vec<u8> {
        let joined: Vec<Vec<u8>> = parts.iter().map(|p| p.batches.concat()).collect();
        let mut topics: Vec<ProduceTopic<'_>> = Vec::new();
        for (p, records) in parts.iter().zip(&joined) {
            let entry = ProducePartition {
                partition: p.partition,
                records: RawBytes(records),
            };
            match topics.last_mut() {
                Some(t) if t.name == p.topic => t.partitions.push(entry),
                _ => topics.push(ProduceTopic {
                    name: p.topic,
                    partitions: vec![entry],
                }),
            }
        }
        let req = ProduceRequest {
            acks,
            timeout_ms,
            topics,
        };
        let header = RequestHeader {
            api_key: ApiKey::Produce as u16,
            api_version: 0,
            correlation_id: id,
        };
        let mut out = BytesMut::new();
        encode_request(&mut out, &header, &req);
        out.to_vec()
    }

    proptest::proptest! {
        #[test]
        fn any_request_gathers_to_the_generic_encoding(
            id: u32,
            acks in proptest::sample::select(vec![-1i8, 0, 1]),
            timeout_ms: u32,
            parts in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["a", "b", "orders"]),
                    0u32..8,
                    proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 0..4),
                ),
                0..6,
            ),
        ) {
            let parts: Vec<PartitionBatches<'_>> = parts
                .iter()
                .map(|(topic, partition, batches)| PartitionBatches {
                    topic,
                    partition: *partition,
                    batches: batches.iter().map(|b| &b[..]).collect(),
                })
                .collect();
            let frame = ProduceFrame::encode(id, acks, timeout_ms, &parts);
            proptest::prop_assert_eq!(frame.parts().concat(), generic(id, acks, timeout_ms, &parts));
        }
    }
}
