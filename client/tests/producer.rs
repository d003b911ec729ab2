//! The producer against a real broker: batching, key partitioning, offsets, back-pressure.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Broker;
use mlog_client::{Acks, Connection, Producer, ProducerConfig};
use mlog_wire::protocol::messages::*;
use mlog_wire::protocol::ApiKey;
use mlog_wire::RecordBatch;

/// Every record of a partition: (offset, key, value).
async fn read_partition(addr: &str, topic: &str, partition: u32) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let mut conn = Connection::connect(addr).await.unwrap();
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let req = FetchRequest {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 4 << 20,
            topics: vec![FetchTopic {
                name: topic.into(),
                partitions: vec![FetchPartition {
                    partition,
                    fetch_offset: offset,
                    max_bytes: 1 << 20,
                }],
            }],
        };
        let body = conn.request_raw(ApiKey::Fetch, &req).await.unwrap();
        let r: FetchResponse<'_> = mlog_wire::protocol::frame::decode_body(&body, "fetch").unwrap();
        let mut data = r.topics[0].partitions[0].records.0;
        if data.is_empty() {
            return out;
        }
        while !data.is_empty() {
            let b = RecordBatch::parse(data).unwrap();
            for rec in b.records().unwrap() {
                let rec = rec.unwrap();
                if rec.offset >= offset {
                    out.push((
                        rec.offset,
                        rec.key.unwrap_or_default().to_vec(),
                        rec.value.unwrap_or_default().to_vec(),
                    ));
                }
            }
            offset = b.next_offset();
            data = &data[b.total_len()..];
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_batched_partitioned_by_key_and_acknowledged_with_their_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("keyed", 4).await;
    let config = ProducerConfig {
        linger: Duration::from_millis(2),
        batch_bytes: 4096,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(broker.addr(), config).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..400u32 {
        let p = producer.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("key-{}", i % 13);
            let value = format!("value-{i}");
            let m = p
                .send(
                    "keyed",
                    Some(key.as_bytes()),
                    value.as_bytes(),
                    &[(b"h", b"v")],
                )
                .await
                .unwrap();
            (m, key, value)
        }));
    }
    let mut acked: BTreeMap<(u32, i64), (String, String)> = BTreeMap::new();
    let mut key_partition: BTreeMap<String, u32> = BTreeMap::new();
    for t in tasks {
        let (m, key, value) = t.await.unwrap();
        assert!(
            acked
                .insert((m.partition, m.offset), (key.clone(), value))
                .is_none(),
            "two records got one offset"
        );
        // A key always goes to the same partition.
        assert_eq!(
            *key_partition.entry(key).or_insert(m.partition),
            m.partition
        );
    }
    producer.close().await.unwrap();
    assert!(
        producer.send("keyed", None, b"late", &[]).await.is_err(),
        "a closed producer refuses sends"
    );
    for partition in 0..4u32 {
        let stored = read_partition(broker.addr(), "keyed", partition).await;
        let expected: Vec<(i64, Vec<u8>, Vec<u8>)> = acked
            .iter()
            .filter(|((p, _), _)| *p == partition)
            .map(|((_, o), (k, v))| (*o, k.clone().into_bytes(), v.clone().into_bytes()))
            .collect();
        assert_eq!(
            stored, expected,
            "partition {partition}: every acknowledged record, at its offset"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_buffer_applies_back_pressure_instead_of_growing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("bp", 2).await;
    let config = ProducerConfig {
        buffer_bytes: 16 << 10,
        batch_bytes: 4 << 10,
        acks: Acks::Leader,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(broker.addr(), config).await.unwrap();
    let value = vec![7u8; 1000];
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let (p, v) = (producer.clone(), value.clone());
        tasks.push(tokio::spawn(
            async move { p.send("bp", None, &v, &[]).await },
        ));
    }
    let mut offsets = BTreeMap::<u32, Vec<i64>>::new();
    for t in tasks {
        let m = t.await.unwrap().unwrap();
        offsets.entry(m.partition).or_default().push(m.offset);
    }
    let total: usize = offsets.values().map(Vec::len).sum();
    assert_eq!(total, 300);
    for v in offsets.values_mut() {
        v.sort();
        assert_eq!(
            *v,
            (0..v.len() as i64).collect::<Vec<_>>(),
            "contiguous, no gaps or duplicates"
        );
    }
    producer.close().await.unwrap();
    assert!(
        producer.send("bp", None, b"late", &[]).await.is_err(),
        "closed producers refuse sends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_a_partition_keep_their_send_order_across_many_batches() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("ordered", 1).await;
    // Tiny batches: thousands of them, each dispatched as soon as it fills.
    let config = ProducerConfig {
        batch_bytes: 300,
        linger: Duration::from_millis(1),
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(broker.addr(), config).await.unwrap();
    let values: Vec<String> = (0..3000).map(|i| format!("record-{i:05}")).collect();
    // join_all polls the sends in order, so they are enqueued in this order.
    let sends = values
        .iter()
        .map(|v| producer.send_to("ordered", 0, None, v.as_bytes(), &[]));
    let acks = futures_util::future::join_all(sends).await;
    let offsets: Vec<i64> = acks.into_iter().map(|a| a.unwrap().offset).collect();
    assert_eq!(
        offsets,
        (0..3000).collect::<Vec<i64>>(),
        "offsets follow the send order"
    );
    let stored = read_partition(broker.addr(), "ordered", 0).await;
    let stored_values: Vec<String> = stored
        .into_iter()
        .map(|(_, _, v)| String::from_utf8(v).unwrap())
        .collect();
    assert_eq!(stored_values, values);
    producer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_broker_blocks_sends_at_the_memory_bound_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("slow", 1).await;
    let config = ProducerConfig {
        buffer_bytes: 64 << 10,
        batch_bytes: 8 << 10,
        linger: Duration::ZERO,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(broker.addr(), config).await.unwrap();
    // Metadata first, while the broker still answers.
    producer.send("slow", None, b"warm-up", &[]).await.unwrap();

    broker.freeze(true);
    let buffered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sender = {
        let (producer, buffered) = (producer.clone(), buffered.clone());
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..1000u32 {
                let value = format!("{i:04}").repeat(250); // 1000 bytes
                let ack = producer
                    .begin_send("slow", Some(0), None, value.as_bytes(), &[])
                    .await
                    .unwrap();
                acks.push(ack);
                buffered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            let mut offsets = Vec::new();
            for ack in acks {
                offsets.push(ack.await.unwrap().offset);
            }
            offsets
        })
    };
    // While the broker is frozen, sends fill the 64 KiB buffer and then wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled_at = buffered.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=64).contains(&stalled_at),
        "{stalled_at} sends buffered against a 64 KiB bound"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        buffered.load(std::sync::atomic::Ordering::SeqCst),
        stalled_at,
        "no progress while the broker is frozen"
    );
    assert!(!sender.is_finished());

    broker.freeze(false);
    let offsets = tokio::time::timeout(Duration::from_secs(30), sender)
        .await
        .expect("every send completes once the broker answers again")
        .unwrap();
    assert_eq!(
        offsets,
        (1..=1000).collect::<Vec<i64>>(),
        "in order, none lost or repeated"
    );
    producer.close().await.unwrap();
    let stored = read_partition(broker.addr(), "slow", 0).await;
    assert_eq!(stored.len(), 1001);
    for (i, (offset, _, value)) in stored.iter().skip(1).enumerate() {
        assert_eq!(*offset, i as i64 + 1);
        assert_eq!(value, format!("{i:04}").repeat(250).as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_producer_fails_the_records_it_still_held() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("dropped", 1).await;
    let config = ProducerConfig {
        linger: Duration::from_secs(600), // the batch stays open until the producer goes
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(broker.addr(), config).await.unwrap();
    let ack = producer
        .begin_send("dropped", Some(0), None, b"never sent", &[])
        .await
        .unwrap();
    drop(producer);
    let outcome = tokio::time::timeout(Duration::from_secs(10), ack)
        .await
        .expect("the future resolves instead of hanging");
    assert!(outcome.is_err(), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_after_a_broker_restart_are_retried_to_the_new_shard_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    broker.create_topic("restarted", 2).await;
    let config = ProducerConfig {
        linger: Duration::from_millis(1),
        retries: 20,
        retry_backoff: Duration::from_millis(20),
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(broker.addr(), config).await.unwrap();
    let mut acked = Vec::new();
    for round in 0..2 {
        if round == 1 {
            // The shard listeners come back on new ports: the old connections fail, the batches
            // are retried, and the metadata refresh routes them to the new listeners.
            broker.restart(dir.path());
        }
        let mut acks = Vec::new();
        for i in 0..500 {
            let value = format!("round {round} record {i}");
            let ack = producer
                .begin_send(
                    "restarted",
                    None,
                    Some(value.as_bytes()),
                    value.as_bytes(),
                    &[],
                )
                .await
                .unwrap();
            acks.push((value, ack));
        }
        for (value, ack) in acks {
            let m = tokio::time::timeout(Duration::from_secs(30), ack)
                .await
                .expect("acknowledged in time")
                .expect("acknowledged, after retries if need be");
            acked.push((m.partition, m.offset, value));
        }
    }
    producer.close().await.unwrap();
    for partition in 0..2u32 {
        let stored: BTreeMap<i64, Vec<u8>> = read_partition(broker.addr(), "restarted", partition)
            .await
            .into_iter()
            .map(|(offset, _, value)| (offset, value))
            .collect();
        for (_, offset, value) in acked.iter().filter(|(p, _, _)| *p == partition) {
            assert_eq!(
                stored.get(offset).map(Vec::as_slice),
                Some(value.as_bytes()),
                "partition {partition} offset {offset}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_producer_stores_every_record_once_across_a_kill_9_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    broker.create_topic("exactly", 2).await;
    let config = ProducerConfig {
        linger: Duration::from_millis(1),
        batch_bytes: 4 << 10,
        retries: 60,
        retry_backoff: Duration::from_millis(20),
        request_timeout: Duration::from_secs(5),
        ..ProducerConfig::default()
    };
    assert!(config.idempotence, "idempotence is the default");
    let producer = Producer::connect(broker.addr(), config).await.unwrap();
    // Records are in flight when the broker is killed (SIGKILL) and started again: batches it
    // stored but never answered are resent, and must not be stored twice.
    let mut acks = Vec::new();
    for i in 0..6000 {
        if i == 3000 {
            broker.restart(dir.path());
        }
        let value = format!("record {i:05}");
        let ack = producer
            .begin_send("exactly", None, None, value.as_bytes(), &[])
            .await
            .unwrap();
        acks.push((value, ack));
    }
    let mut acked = Vec::new();
    for (value, ack) in acks {
        let m = tokio::time::timeout(Duration::from_secs(60), ack)
            .await
            .expect("answered in time")
            .expect("acknowledged, after retries if need be");
        acked.push((m.partition, m.offset, value));
    }
    producer.close().await.unwrap();
    for partition in 0..2u32 {
        let stored = read_partition(broker.addr(), "exactly", partition).await;
        // Exactly once: no value twice, and every acknowledged record where its answer said.
        let mut seen = std::collections::HashSet::new();
        for (_, _, value) in &stored {
            assert!(
                seen.insert(value.clone()),
                "stored twice: {:?}",
                String::from_utf8_lossy(value)
            );
        }
        let by_offset: BTreeMap<i64, Vec<u8>> =
            stored.into_iter().map(|(o, _, v)| (o, v)).collect();
        let mine: Vec<_> = acked.iter().filter(|(p, _, _)| *p == partition).collect();
        for (_, offset, value) in &mine {
            assert_eq!(
                by_offset.get(offset).map(Vec::as_slice),
                Some(value.as_bytes())
            );
        }
        // In send order within the partition.
        assert!(
            mine.windows(2).all(|w| w[0].1 < w[1].1),
            "partition {partition} out of order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_resent_after_a_timeout_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("timeouts", 1).await;
    let config = ProducerConfig {
        linger: Duration::ZERO,
        request_timeout: Duration::from_secs(1),
        retries: 10,
        retry_backoff: Duration::from_millis(20),
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(broker.addr(), config).await.unwrap();
    let warm = producer
        .send_to("timeouts", 0, None, b"before", &[])
        .await
        .unwrap();
    assert_eq!(warm.offset, 0);
    // The broker stops answering with the request in its socket: the producer gives up on the
    // answer (after request_timeout + 5 s) and resends on a new connection. Once thawed, the broker
    // reads both copies; the second is recognised.
    broker.freeze(true);
    let ack = producer
        .begin_send("timeouts", Some(0), None, b"sent once", &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    broker.freeze(false);
    let m = tokio::time::timeout(Duration::from_secs(30), ack)
        .await
        .expect("answered in time")
        .expect("acknowledged after the resend");
    assert_eq!(m.offset, 1);
    producer.close().await.unwrap();
    let values: Vec<Vec<u8>> = read_partition(broker.addr(), "timeouts", 0)
        .await
        .into_iter()
        .map(|(_, _, v)| v)
        .collect();
    assert_eq!(values, vec![b"before".to_vec(), b"sent once".to_vec()]);
}
