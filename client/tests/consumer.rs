//! The consumer against a real broker: read back what was produced, group offsets, seeks, and a
//! broker restart in the middle.

mod common;

use std::time::Duration;

use common::Broker;
use mlog_client::{Consumer, ConsumerConfig, OffsetSpec, Producer, ProducerConfig};

async fn consume_until(consumer: &mut Consumer, count: usize) -> Vec<mlog_client::ConsumerRecord> {
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while out.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {count} records arrived",
            out.len()
        );
        out.extend(consumer.poll().await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_read_everything_in_order_resume_from_commits_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    broker.create_topic("c", 3).await;
    let producer = Producer::connect(broker.addr(), ProducerConfig::default())
        .await
        .unwrap();
    let mut sent = Vec::new();
    for i in 0..300u32 {
        let m = producer
            .send(
                "c",
                Some(format!("k{}", i % 7).as_bytes()),
                format!("v{i}").as_bytes(),
                &[],
            )
            .await
            .unwrap();
        sent.push((m.partition, m.offset, format!("v{i}")));
    }
    producer.close().await.unwrap();

    let config = ConsumerConfig {
        group: Some("g".into()),
        max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::connect(broker.addr(), config.clone())
        .await
        .unwrap();
    consumer.assign("c", None).await.unwrap();
    let got = consume_until(&mut consumer, 300).await;
    assert_eq!(got.len(), 300, "no duplicates");
    for p in 0..3u32 {
        let offsets: Vec<i64> = got
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset)
            .collect();
        assert_eq!(
            offsets,
            (0..offsets.len() as i64).collect::<Vec<_>>(),
            "partition {p} in order"
        );
    }
    let mut expected: Vec<(u32, i64, String)> = sent.clone();
    expected.sort();
    let mut actual: Vec<(u32, i64, String)> = got
        .iter()
        .map(|r| {
            (
                r.partition,
                r.offset,
                String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap(),
            )
        })
        .collect();
    actual.sort();
    assert_eq!(actual, expected);

    // Commit halfway through partition 0, then a new consumer of the group resumes there.
    consumer.seek_to_offset("c", 0, 10).unwrap();
    consumer.commit().await.unwrap();
    let mut again = Consumer::connect(broker.addr(), config.clone())
        .await
        .unwrap();
    again.assign("c", Some(vec![0])).await.unwrap();
    assert_eq!(again.position("c", 0), Some(10));

    // Seek by timestamp and to the end.
    again.seek("c", 0, OffsetSpec::Timestamp(0)).await.unwrap();
    assert_eq!(again.position("c", 0), Some(0));
    again.seek("c", 0, OffsetSpec::Latest).await.unwrap();
    assert!(again.poll().await.unwrap().is_empty());

    // The broker restarts; the consumer reconnects and reads on, without loss or duplicates.
    let end = again.position("c", 0).unwrap();
    broker.restart(dir.path());
    let producer = Producer::connect(broker.addr(), ProducerConfig::default())
        .await
        .unwrap();
    let m = producer
        .send_to("c", 0, None, b"after restart", &[])
        .await
        .unwrap();
    assert_eq!(m.offset, end);
    let more = consume_until(&mut again, 1).await;
    assert_eq!(more.len(), 1);
    assert_eq!(
        (more[0].offset, more[0].value.as_deref()),
        (end, Some(&b"after restart"[..]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topic_does_not_stop_the_others_and_can_be_unassigned() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    // Both topics' partition 0 belong to the same shard, so one fetch carries both.
    broker.create_topic("kept", 1).await;
    broker.create_topic("removed", 1).await;
    let config = ConsumerConfig {
        max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::connect(broker.addr(), config).await.unwrap();
    consumer.assign("kept", None).await.unwrap();
    consumer.assign("removed", None).await.unwrap();
    mlog_client::Admin::connect(broker.addr())
        .await
        .unwrap()
        .delete_topic("removed")
        .await
        .unwrap();
    let producer = Producer::connect(broker.addr(), ProducerConfig::default())
        .await
        .unwrap();
    producer
        .send_to("kept", 0, None, b"still read", &[])
        .await
        .unwrap();
    // Polls report the deleted partition only when they have nothing else; the record arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut errors = 0;
    let record = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the record never came"
        );
        match consumer.poll().await {
            Ok(records) if !records.is_empty() => break records[0].clone(),
            Ok(_) => {}
            Err(_) => errors += 1,
        }
    };
    assert_eq!(record.value.as_deref(), Some(&b"still read"[..]));
    // The deleted topic's error shows while nothing else arrives, until it is unassigned.
    let mut saw_error = errors > 0;
    for _ in 0..20 {
        saw_error |= consumer.poll().await.is_err();
    }
    assert!(saw_error, "the deleted topic's error is reported");
    consumer.unassign("removed", None);
    for _ in 0..5 {
        assert!(consumer.poll().await.unwrap().is_empty());
    }
    producer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_stalled_broker_time_out_and_work_again_once_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("s", 1).await;
    let config = ConsumerConfig {
        group: Some("g".into()),
        max_wait: Duration::from_millis(100),
        request_timeout: Duration::from_secs(1),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::connect(broker.addr(), config).await.unwrap();
    consumer.assign("s", None).await.unwrap();
    broker.freeze(true);
    let start = std::time::Instant::now();
    let stalled = consumer.commit().await;
    let waited = start.elapsed();
    broker.freeze(false);
    let err = stalled.expect_err("a frozen broker answers nothing");
    assert!(err.is_retriable(), "{err}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // The next call connects again and is answered.
    consumer.commit().await.unwrap();
    assert_eq!(consumer.committed("s", 0).await.unwrap(), Some(0));
}
