//! A bare consumer: reads a topic from the beginning to its current end
//! and reports the rate. The baseline `scripts/bench-e2e` compares sluice
//! against (same client library, same settings, no decoding or writing).
//!
//! cargo run --release --example consume -- --topic bench.orders

use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long)]
    topic: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("bare-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0) as i32;
    let mut remaining = 0i64;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(&args.topic, p, Duration::from_secs(10))?;
        remaining += high - low;
    }
    let total = remaining;
    consumer.subscribe(&[&args.topic])?;
    let mut bytes = 0usize;
    let mut started = None;
    while remaining > 0 {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                started.get_or_insert_with(Instant::now);
                bytes += m.payload().map_or(0, <[u8]>::len);
                remaining -= 1;
            }
            Some(Err(e)) => eprintln!("poll error: {e}"),
            None => {}
        }
    }
    let took = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    println!(
        "bare consumer: {total} records, {bytes} payload bytes in {took:.2}s = {:.0} records/s",
        total as f64 / took.max(1e-9)
    );
    Ok(())
}
