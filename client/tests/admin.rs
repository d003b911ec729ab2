//! The client's Admin against a real `mlog-broker` process on 127.0.0.1.

mod common;

use common::Broker;
use mlog_client::{Admin, ClientError, ErrorCode, OffsetSpec};

#[tokio::test]
async fn admin_manages_topics_and_reads_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let admin = Admin::connect(broker.addr()).await.unwrap();
    admin
        .create_topic("orders", 3, &[("retention.ms", "3600000")])
        .await
        .unwrap();
    match admin.create_topic("orders", 3, &[]).await {
        Err(ClientError::Broker { code, .. }) => assert_eq!(code, ErrorCode::TopicAlreadyExists),
        other => panic!("{other:?}"),
    }
    match admin.create_topic("bad name", 1, &[]).await {
        Err(e @ ClientError::Broker { .. }) => assert!(!e.is_retriable(), "{e}"),
        other => panic!("{other:?}"),
    }
    let topics = admin.list_topics().await.unwrap();
    assert!(topics
        .iter()
        .any(|t| t.name == "orders" && t.partitions == 3));
    let d = admin.describe_topic("orders").await.unwrap();
    assert_eq!(d.partitions.len(), 3);
    assert!(d
        .partitions
        .iter()
        .all(|p| p.log_start_offset == 0 && p.high_watermark == 0));
    assert_eq!(
        d.configs,
        vec![("retention.ms".to_string(), "3600000".to_string())]
    );
    assert_eq!(
        admin
            .list_offset("orders", 1, OffsetSpec::Latest)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        admin
            .list_offset("orders", 1, OffsetSpec::Timestamp(5))
            .await
            .unwrap(),
        -1
    );
    assert!(matches!(
        admin.list_offset("nope", 0, OffsetSpec::Earliest).await,
        Err(ClientError::Broker {
            code: ErrorCode::UnknownTopicOrPartition,
            ..
        })
    ));
    admin.delete_topic("orders").await.unwrap();
    assert!(admin.describe_topic("orders").await.is_err());
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_io_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    match Admin::connect(format!("127.0.0.1:{port}")).await {
        Err(e @ ClientError::Io { .. }) => {
            assert!(e.to_string().contains(&port.to_string()));
            assert!(e.is_retriable());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_outlives_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let admin = Admin::connect(broker.addr()).await.unwrap();
    admin.create_topic("before", 1, &[]).await.unwrap();
    broker.restart(dir.path());
    // The call that meets the dead connection reports it; the next one connects again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut failures = 0;
    let topics = loop {
        assert!(std::time::Instant::now() < deadline, "never reconnected");
        match admin.list_topics().await {
            Ok(topics) => break topics,
            Err(e) => {
                assert!(e.is_retriable(), "{e}");
                failures += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    assert!(failures <= 2, "{failures} failed calls before reconnecting");
    assert!(topics.iter().any(|t| t.name == "before"));
}
