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

    #[test]
    fn the_pieces_are_exactly_the_generic_encoding() {
        let (a, b, c) = (vec![1u8; 70], vec![2u8; 5], vec![3u8; 300]);
        let partitions = vec![
            PartitionBatches {
                topic: "orders",
                partition: 3,
                batches: vec![&a, &b],
            },
            PartitionBatches {
                topic: "orders",
                partition: 0,
                batches: vec![&c],
            },
            PartitionBatches {
                topic: "audit",
                partition: 1,
                batches: vec![&b],
            },
        ];
        let frame = ProduceFrame::encode(77, -1, 30_000, &partitions);
        let gathered: Vec<u8> = frame.parts().concat();

        let joined: Vec<u8> = [&a[..], &b[..]].concat();
        let req = ProduceRequest {
            acks: -1,
            timeout_ms: 30_000,
            topics: vec![
                ProduceTopic {
                    name: "orders",
                    partitions: vec![
                        ProducePartition {
                            partition: 3,
                            records: RawBytes(&joined),
                        },
                        ProducePartition {
                            partition: 0,
                            records: RawBytes(&c),
                        },
                    ],
                },
                ProduceTopic {
                    name: "audit",
                    partitions: vec![ProducePartition {
                        partition: 1,
                        records: RawBytes(&b),
                    }],
                },
            ],
        };
        let mut expected = BytesMut::new();
        let header = RequestHeader {
            api_key: ApiKey::Produce as u16,
            api_version: 0,
            correlation_id: 77,
        };
        encode_request(&mut expected, &header, &req);
        assert_eq!(gathered, &expected[..]);
    }
}
