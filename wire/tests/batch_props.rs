//! Property tests for the record batch codec, through the public API only.

use mlog_wire::batch::{
    ATTRIBUTES_OFFSET, CRC_OFFSET, MAGIC, MAGIC_OFFSET, PARTITION_LEADER_EPOCH_OFFSET,
    RECORDS_OFFSET,
};
use mlog_wire::{
    peek_total_len, set_base_offset, set_partition_leader_epoch, BatchError, BatchHeader,
    Compression, NewRecord, Record, RecordBatch, RecordBatchBuilder, RecordHeader, TimestampType,
    HEADER_LEN, LOG_OVERHEAD,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

/// A record to push, owning its data.
#[derive(Debug, Clone)]
struct OwnedRecord {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Builder settings.
#[derive(Debug, Clone)]
struct Config {
    base_offset: i64,
    partition_leader_epoch: i32,
    producer: (i64, i16, i32),
    timestamp_type: TimestampType,
    transactional: bool,
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// Mostly realistic timestamps, sometimes anything (deltas wrap like Kafka's).
fn arb_timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![4 => 0..(1i64 << 50), 1 => any::<i64>()]
}

fn arb_record(max_len: usize) -> impl Strategy<Value = OwnedRecord> {
    (
        arb_timestamp(),
        option::of(arb_bytes(max_len)),
        option::of(arb_bytes(max_len)),
        vec((arb_bytes(20), option::of(arb_bytes(40))), 0..=3),
    )
        .prop_map(|(timestamp, key, value, headers)| OwnedRecord {
            timestamp,
            key,
            value,
            headers,
        })
}

fn arb_config() -> impl Strategy<Value = Config> {
    (
        0..(1i64 << 62),
        any::<i32>(),
        (any::<i64>(), any::<i16>(), any::<i32>()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(base_offset, partition_leader_epoch, producer, log_append_time, transactional)| {
                Config {
                    base_offset,
                    partition_leader_epoch,
                    producer,
                    timestamp_type: if log_append_time {
                        TimestampType::LogAppendTime
                    } else {
                        TimestampType::CreateTime
                    },
                    transactional,
                }
            },
        )
}

/// A small built batch, for properties that do per-byte work.
fn arb_small_batch() -> impl Strategy<Value = Vec<u8>> {
    (arb_config(), vec(arb_record(40), 1..=5))
        .prop_map(|(config, records)| build(&config, &records))
}

fn build(config: &Config, records: &[OwnedRecord]) -> Vec<u8> {
    let (producer_id, producer_epoch, base_sequence) = config.producer;
    let mut builder = RecordBatchBuilder::new()
        .with_base_offset(config.base_offset)
        .with_partition_leader_epoch(config.partition_leader_epoch)
        .with_producer(producer_id, producer_epoch, base_sequence)
        .with_timestamp_type(config.timestamp_type)
        .with_transactional(config.transactional);
    for record in records {
        let headers: Vec<RecordHeader<'_>> = record
            .headers
            .iter()
            .map(|(key, value)| RecordHeader {
                key,
                value: value.as_deref(),
            })
            .collect();
        builder
            .push(NewRecord {
                timestamp: record.timestamp,
                key: record.key.as_deref(),
                value: record.value.as_deref(),
                headers: &headers,
            })
            .expect("push");
    }
    assert_eq!(builder.len(), records.len());
    let encoded_len = builder.encoded_len();
    let bytes = builder.build().expect("build");
    assert_eq!(bytes.len(), encoded_len);
    bytes
}

/// Recomputes and stores the CRC-32C of bytes `ATTRIBUTES_OFFSET..`.
fn fix_crc(batch: &mut [u8]) {
    let crc = mlog_wire::checksum::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// A header with a correct length and CRC around arbitrary record bytes.
fn batch_around(
    records: &[u8],
    record_count: i32,
    last_offset_delta: i32,
    attributes: i16,
) -> Vec<u8> {
    let header = BatchHeader {
        base_offset: 1000,
        batch_length: i32::try_from(HEADER_LEN - LOG_OVERHEAD + records.len()).unwrap(),
        partition_leader_epoch: 0,
        magic: MAGIC,
        crc: 0,
        attributes,
        last_offset_delta,
        base_timestamp: 0,
        max_timestamp: 0,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        record_count,
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend_from_slice(records);
    fix_crc(&mut bytes);
    bytes
}

/// Exercises every read-only entry point; must never panic.
fn poke(buf: &[u8]) {
    let _ = peek_total_len(buf);
    if let Ok(header) = BatchHeader::parse(buf) {
        let _ = (
            header.total_len(),
            header.last_offset(),
            header.next_offset(),
        );
        let _ = (header.compression(), header.timestamp_type());
        let _ = (header.is_transactional(), header.is_control());
    }
    let _ = RecordBatch::parse(buf);
    if let Ok(batch) = RecordBatch::parse_header_and_crc(buf) {
        if let Ok(records) = batch.records() {
            let _ = records.count();
        }
    }
}

/// Checks that `parse` agrees with walking the records of a header-checked
/// batch, and that an accepted batch's records are consistent with its header.
fn check_consistency(buf: &[u8]) -> Result<(), TestCaseError> {
    let Ok(batch) = RecordBatch::parse_header_and_crc(buf) else {
        prop_assert!(RecordBatch::parse(buf).is_err());
        return Ok(());
    };
    let Ok(records) = batch.records() else {
        prop_assert_ne!(batch.compression(), Compression::None);
        prop_assert!(RecordBatch::parse(buf).is_ok());
        return Ok(());
    };
    let walked: Result<Vec<Record<'_>>, BatchError> = records.collect();
    let parsed = RecordBatch::parse(buf);
    prop_assert!(walked.is_ok() == parsed.is_ok(), "{walked:?} vs {parsed:?}");
    if let Ok(records) = walked {
        prop_assert_eq!(
            records.len(),
            usize::try_from(batch.record_count()).unwrap()
        );
        for pair in records.windows(2) {
            prop_assert!(pair[0].offset < pair[1].offset);
        }
        for record in &records {
            prop_assert!((batch.base_offset()..=batch.last_offset()).contains(&record.offset));
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn build_then_parse_round_trips(
        config in arb_config(),
        records in vec(arb_record(300), 1..=50),
    ) {
        let bytes = build(&config, &records);
        let batch = RecordBatch::parse(&bytes)?;
        let header = *batch.header();
        let count = records.len();

        prop_assert_eq!(batch.as_bytes(), bytes.as_slice());
        prop_assert_eq!(header.total_len(), bytes.len());
        prop_assert_eq!(peek_total_len(&bytes), Ok(Some(bytes.len())));
        prop_assert_eq!(header.base_offset, config.base_offset);
        prop_assert_eq!(header.partition_leader_epoch, config.partition_leader_epoch);
        prop_assert_eq!(header.magic, MAGIC);
        prop_assert_eq!(
            (header.producer_id, header.producer_epoch, header.base_sequence),
            config.producer
        );
        prop_assert_eq!(header.timestamp_type(), config.timestamp_type);
        prop_assert_eq!(header.is_transactional(), config.transactional);
        prop_assert!(!header.is_control());
        prop_assert_eq!(batch.compression(), Compression::None);
        prop_assert_eq!(usize::try_from(batch.record_count()).unwrap(), count);
        prop_assert_eq!(usize::try_from(header.last_offset_delta).unwrap(), count - 1);
        prop_assert_eq!(batch.next_offset(), config.base_offset + i64::try_from(count).unwrap());
        prop_assert_eq!(batch.base_timestamp(), records[0].timestamp);
        prop_assert_eq!(
            Some(batch.max_timestamp()),
            records.iter().map(|r| r.timestamp).max()
        );

        let parsed: Vec<Record<'_>> = batch.records()?.collect::<Result<_, _>>()?;
        prop_assert_eq!(parsed.len(), count);
        for (i, (got, want)) in parsed.iter().zip(&records).enumerate() {
            prop_assert_eq!(got.offset, config.base_offset + i64::try_from(i).unwrap());
            prop_assert_eq!(got.timestamp, want.timestamp);
            prop_assert_eq!(got.key, want.key.as_deref());
            prop_assert_eq!(got.value, want.value.as_deref());
            let want_headers: Vec<RecordHeader<'_>> = want
                .headers
                .iter()
                .map(|(key, value)| RecordHeader { key, value: value.as_deref() })
                .collect();
            prop_assert_eq!(&got.headers, &want_headers);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(buf in arb_bytes(2048)) {
        poke(&buf);
        check_consistency(&buf)?;
        if let Ok(Some(total)) = peek_total_len(&buf) {
            prop_assert!(total >= HEADER_LEN);
        }
        if let Ok(batch) = RecordBatch::parse(&buf) {
            prop_assert_eq!(batch.as_bytes().len(), batch.header().total_len());
        }
    }

    #[test]
    fn arbitrary_records_behind_a_valid_crc_never_panic(
        records in arb_bytes(2048),
        record_count in -2..40i32,
        last_offset_delta in -2..60i32,
        attributes in prop_oneof![3 => Just(0i16), 1 => any::<i16>()],
    ) {
        let buf = batch_around(&records, record_count, last_offset_delta, attributes);
        poke(&buf);
        check_consistency(&buf)?;
    }

    #[test]
    fn mutated_records_behind_a_valid_crc_never_panic(
        bytes in arb_small_batch(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..=4),
    ) {
        let mut buf = bytes;
        let records_len = buf.len() - RECORDS_OFFSET;
        prop_assume!(records_len > 0);
        for (at, byte) in edits {
            buf[RECORDS_OFFSET + at.index(records_len)] = byte;
        }
        fix_crc(&mut buf);
        poke(&buf);
        check_consistency(&buf)?;
    }

    #[test]
    fn every_truncation_is_an_error(bytes in arb_small_batch()) {
        for len in 0..bytes.len() {
            let short = &bytes[..len];
            let is_truncated = matches!(
                RecordBatch::parse(short),
                Err(BatchError::Truncated { available, .. }) if available == len
            );
            prop_assert!(is_truncated, "length {len}");
            poke(short);
        }
    }

    #[test]
    fn a_covered_bit_flip_is_detected(
        bytes in arb_small_batch(),
        at in any::<prop::sample::Index>(),
        bit in 0..8u8,
    ) {
        // Bytes 0..8 (baseOffset) and 12..16 (partitionLeaderEpoch) are not
        // covered by the CRC by design: the broker rewrites them on append.
        let covered: Vec<usize> = (8..bytes.len())
            .filter(|i| !(PARTITION_LEADER_EPOCH_OFFSET..MAGIC_OFFSET).contains(i))
            .collect();
        let mut flipped = bytes;
        flipped[*at.get(&covered)] ^= 1 << bit;
        prop_assert!(RecordBatch::parse(&flipped).is_err());
        prop_assert!(RecordBatch::parse_header_and_crc(&flipped).is_err());
    }

    #[test]
    fn rewrites_touch_only_their_fields(
        bytes in arb_small_batch(),
        base_offset in 0..(1i64 << 62),
        epoch in any::<i32>(),
    ) {
        let original = RecordBatch::parse(&bytes)?;
        let original_records: Vec<Record<'_>> = original.records()?.collect::<Result<_, _>>()?;
        let mut rewritten = bytes.clone();
        set_base_offset(&mut rewritten, base_offset);
        set_partition_leader_epoch(&mut rewritten, epoch);

        let batch = RecordBatch::parse(&rewritten)?;
        prop_assert_eq!(batch.base_offset(), base_offset);
        prop_assert_eq!(batch.header().partition_leader_epoch, epoch);
        prop_assert_eq!(batch.header().crc, original.header().crc);
        prop_assert_eq!(&rewritten[8..12], &bytes[8..12]);
        prop_assert_eq!(&rewritten[MAGIC_OFFSET..], &bytes[MAGIC_OFFSET..]);
        let records: Vec<Record<'_>> = batch.records()?.collect::<Result<_, _>>()?;
        for (new, old) in records.iter().zip(&original_records) {
            prop_assert_eq!(new.offset - base_offset, old.offset - original.base_offset());
            prop_assert_eq!((new.key, new.value), (old.key, old.value));
        }
    }
}
