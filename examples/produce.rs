//! Produces reference events (`sluice.examples.OrderPlaced`) to a topic,
//! creating it if needed. Used by `scripts/demo` and the end-to-end bench.
//!
//! cargo run --release --example produce -- --brokers 127.0.0.1:9092 \
//!     --topic orders.order_placed --partitions 4 --count 5000

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use sluice::sample::{self, OrderSample};
use sluice::schema::LocalRegistry;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long, default_value_t = 5000)]
    count: u64,
    /// First sequence number (events are numbered from here).
    #[arg(long, default_value_t = 0)]
    start: u64,
    #[arg(long, default_value = "schemas")]
    schemas: PathBuf,
    /// Spread event times over the three hours before now (default: before
    /// 2026-01-01T00:00Z, which makes runs reproducible).
    #[arg(long)]
    now: bool,
    /// Produce nothing when the topic already holds `count` records or
    /// more (benchmarks reuse a topic).
    #[arg(long)]
    if_missing: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let registry = LocalRegistry::open(&args.schemas)?;
    let descriptor = registry.message("sluice.examples.OrderPlaced")?;
    let mut sample = OrderSample::new(&descriptor).context("OrderPlaced lacks placed_at")?;
    if args.now {
        sample = sample.with_base_micros(chrono::Utc::now().timestamp_micros());
    }
    sample::ensure_topic(&args.brokers, &args.topic, args.partitions).await?;
    if args.if_missing {
        let held = sample::records_in(&args.brokers, &args.topic)?;
        if held >= args.count as i64 {
            println!("{} already holds {held} events", args.topic);
            return Ok(());
        }
    }
    let started = std::time::Instant::now();
    let produced = sample::produce(
        &args.brokers,
        &args.topic,
        args.partitions,
        &sample,
        args.start..args.start + args.count,
    )
    .await?;
    println!(
        "produced {} events to {} in {:.1}s",
        produced.len(),
        args.topic,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
