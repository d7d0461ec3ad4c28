//! A bare consumer: reads a topic from the beginning to its current end and
//! reports the rate and the CPU it took. `scripts/bench-e2e` measures sluice
//! against it. It is fair by default: the librdkafka settings sluice derives
//! from its memory budget (`--budget`), and every record's headers and
//! payload touched, as sluice must (CloudEvents binary mode).
//!
//! cargo run --release --example consume -- --topic bench.orders [--plain]
//!
//! Prints one JSON line: records, seconds and CPU seconds over the steady
//! window (the 10th to the 90th percentile of the records), records/s, CPU
//! µs per record, minor page faults per record, peak RSS.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use sluice::config::KafkaConfig;

/// The daemon's allocator, which also serves librdkafka's allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// The memory budget whose Kafka share sluice would give the client
    /// (`memory.max_buffer_bytes`, bytes).
    #[arg(long, default_value_t = 256 << 20)]
    budget: u64,
    /// Neither headers nor payload touched (the earlier baseline).
    #[arg(long)]
    plain: bool,
}

/// utime + stime in seconds and minor faults of this process, from /proc.
fn usage() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    // minflt is field 10, utime 14, stime 15 (1-based, counting pid and
    // comm); `fields` starts at field 3. Clock ticks are 100 per second on
    // Linux.
    let ticks = field(11).unwrap_or(0) + field(12).unwrap_or(0);
    (ticks as f64 / 100.0, field(7).unwrap_or(0))
}

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kafka = KafkaConfig {
        brokers: args.brokers.clone(),
        topic: args.topic.clone(),
        group_id: format!("bare-{}", std::process::id()),
        auto_offset_reset: "earliest".into(),
        security: Default::default(),
        properties: BTreeMap::new(),
    };
    // The same settings as the daemon: its Kafka share of the budget, all
    // of it for the one queue this consumer reads.
    let consumer: BaseConsumer = sluice::source::client_config(&kafka, "bare", args.budget / 8, 1)
        .set("statistics.interval.ms", "0")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0) as i32;
    let mut total = 0i64;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(&args.topic, p, Duration::from_secs(10))?;
        total += high - low;
    }
    consumer.subscribe(&[&args.topic])?;
    let (from, to) = (total / 10, total - total / 10);
    let mut read = 0i64;
    let mut touched = 0usize;
    let mut window_start = None;
    let mut window = None;
    while read < total {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if !args.plain {
                    touched += m
                        .payload()
                        .map_or(0, |p| p.len() + p.first().map_or(0, |b| usize::from(*b)));
                    // As sluice reads them.
                    touched += sluice::source::with_headers(&m, |headers| {
                        headers
                            .map(|(key, value)| key.len() + value.map_or(0, <[u8]>::len))
                            .sum::<usize>()
                    });
                }
                read += 1;
                if read == from {
                    window_start = Some((Instant::now(), usage()));
                } else if read == to
                    && let Some((started, (cpu0, faults0))) = window_start
                {
                    let (cpu1, faults1) = usage();
                    window = Some((
                        started.elapsed().as_secs_f64(),
                        cpu1 - cpu0,
                        faults1 - faults0,
                    ));
                }
            }
            Some(Err(e)) => eprintln!("poll error: {e}"),
            None => {}
        }
    }
    let (seconds, cpu, faults) = window.unwrap_or((0.0, 0.0, 0));
    let records = (to - from) as f64;
    println!(
        "{}",
        serde_json::json!({
            "mode": if args.plain { "plain" } else { "headers+payload" },
            "records": to - from,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "records_per_s": records / seconds.max(1e-9),
            "cpu_us_per_record": cpu * 1e6 / records.max(1.0),
            "faults_per_record": faults as f64 / records.max(1.0),
            "peak_rss_bytes": peak_rss_bytes(),
            "touched": touched,
        })
    );
    Ok(())
}
