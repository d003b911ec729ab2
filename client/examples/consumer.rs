//! Reads a topic from the beginning and prints every record, committing progress for a group.
//!
//! ```text
//! cargo run -p mlog-client --example consumer -- greetings
//! ```
//!
//! Stops after 5 seconds without records. The bootstrap address is `MLOG_BOOTSTRAP`, or
//! 127.0.0.1:9092; run it twice and the second run resumes after what the first committed.

use std::time::{Duration, Instant};

use mlog_client::{Consumer, ConsumerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let topic = std::env::args().nth(1).ok_or("usage: consumer TOPIC")?;
    let bootstrap =
        std::env::var("MLOG_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_string());
    let config = ConsumerConfig {
        group: Some("example".into()),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::connect(&bootstrap, config).await?;
    consumer.assign(&topic, None).await?;
    let mut last_record = Instant::now();
    while last_record.elapsed() < Duration::from_secs(5) {
        let records = consumer.poll().await?;
        if records.is_empty() {
            continue;
        }
        last_record = Instant::now();
        for r in &records {
            let value = r.value.as_deref().unwrap_or_default();
            println!(
                "{}@{}: {}",
                r.partition,
                r.offset,
                String::from_utf8_lossy(value)
            );
        }
        consumer.commit().await?;
    }
    Ok(())
}
