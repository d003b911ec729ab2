//! Sends lines of standard input to a topic, one record each, and prints where each was stored.
//!
//! Run a broker (`cargo run --release --bin mlog-broker`), create a topic
//! (`mlog topic create greetings --partitions 3`), then:
//!
//! ```text
//! printf 'hello\nworld\n' | cargo run -p mlog-client --example producer -- greetings
//! ```
//!
//! The bootstrap address is `MLOG_BOOTSTRAP`, or 127.0.0.1:9092.

use mlog_client::{Producer, ProducerConfig};
use tokio::io::AsyncBufReadExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let topic = std::env::args().nth(1).ok_or("usage: producer TOPIC")?;
    let bootstrap =
        std::env::var("MLOG_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_string());
    let producer = Producer::connect(&bootstrap, ProducerConfig::default()).await?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    // Buffer every line first (they keep their order), then wait for the acknowledgements: the
    // records travel in batches instead of one round trip each.
    let mut acks = Vec::new();
    while let Some(line) = lines.next_line().await? {
        acks.push(
            producer
                .begin_send(&topic, None, None, line.as_bytes(), &[])
                .await?,
        );
    }
    for ack in acks {
        let stored = ack.await?;
        println!("partition {} offset {}", stored.partition, stored.offset);
    }
    producer.close().await?;
    Ok(())
}
