//! `sluice status --config <file> [--json]`: where each partition stands —
//! the last offset committed in the store, the group's Kafka offset, the
//! high watermark, the lag, the last commit's time and whether it was
//! announced — plus the open outbox and the orphans.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::Config;
use crate::gc;
use crate::source;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The sink's TOML config file.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    pub config: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Files no manifest lists count as orphans from this age (as `sluice gc`).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub orphans_older_than: Duration,
}

const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Serialize)]
struct PartitionStatus {
    partition: i32,
    /// Last offset a manifest covers.
    committed_offset: Option<i64>,
    /// The group's committed offset (the next to read; advice only).
    group_offset: Option<i64>,
    high_watermark: i64,
    /// Records after the last committed one.
    lag: i64,
    last_commit: Option<String>,
    /// Whether the last commit's files were announced.
    announced: Option<bool>,
    /// Commits of this partition whose files are not announced yet
    /// (manifests without their `.notified` marker).
    unannounced: usize,
}

#[derive(Debug, Serialize)]
struct Status {
    event: String,
    topic: String,
    group: String,
    partitions: Vec<PartitionStatus>,
    /// Commits, all partitions, whose files are not announced yet.
    outbox: usize,
    orphan_files: usize,
    orphan_bytes: u64,
}

pub(crate) fn execute(args: StatusArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let kafka = &config.kafka;
    let consumer = source::lookup_client(kafka, "sluice-status")?;
    let partitions =
        source::topic_partitions(&consumer, kafka, TIMEOUT).map_err(anyhow::Error::msg)?;
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition(&kafka.topic, p);
    }
    let group = consumer
        .committed_offsets(tpl, TIMEOUT)
        .map_err(|e| anyhow::anyhow!("group {} offsets: {e}", kafka.group_id))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(async {
        let (store, prefix, manifests) = super::open_manifests(&config, None).await?;
        let mut rows = Vec::new();
        for &partition in &partitions {
            let (_, high) = consumer
                .fetch_watermarks(&kafka.topic, partition, TIMEOUT)
                .map_err(|e| anyhow::anyhow!("partition {partition} watermarks: {e}"))?;
            let recovered = manifests.recover(partition).await?;
            let last = recovered.last.as_ref();
            let group_offset = group
                .find_partition(&kafka.topic, partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let committed = last.map(|m| m.range.to);
            let next = committed.map(|c| c + 1).or(group_offset).unwrap_or(0);
            rows.push(PartitionStatus {
                partition,
                committed_offset: committed,
                group_offset,
                high_watermark: high,
                lag: (high - next).max(0),
                last_commit: last.map(|m| m.committed_at.clone()),
                announced: last.map(|m| !recovered.unmarked.contains(m)),
                unannounced: recovered.unmarked.len(),
            });
        }
        let staging = config.staging_prefix(&prefix);
        let orphans = gc::find_orphans(
            &*store,
            &manifests,
            &prefix,
            &config.event.name,
            staging.as_deref(),
            args.orphans_older_than,
        )
        .await?;
        anyhow::Ok(Status {
            event: config.event.name.clone(),
            topic: kafka.topic.clone(),
            group: kafka.group_id.clone(),
            outbox: rows.iter().map(|r| r.unannounced).sum(),
            orphan_files: orphans.len(),
            orphan_bytes: orphans.iter().map(|o| o.size).sum(),
            partitions: rows,
        })
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_table(&status, args.orphans_older_than);
    }
    Ok(())
}

fn print_table(status: &Status, older_than: Duration) {
    let show = |o: Option<i64>| o.map_or("-".to_owned(), |o| o.to_string());
    println!(
        "{} · topic {} · group {}",
        status.event, status.topic, status.group
    );
    println!(
        "{:>9}  {:>14}  {:>12}  {:>14}  {:>10}  {:<24}  announced",
        "partition", "committed (S3)", "group offset", "high watermark", "lag", "last commit"
    );
    for p in &status.partitions {
        println!(
            "{:>9}  {:>14}  {:>12}  {:>14}  {:>10}  {:<24}  {}",
            p.partition,
            show(p.committed_offset),
            show(p.group_offset),
            p.high_watermark,
            p.lag,
            p.last_commit.as_deref().unwrap_or("-"),
            match p.announced {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            }
        );
    }
    println!(
        "outbox: {} unannounced commit(s); orphans: {} file(s), {} bytes (older than {})",
        status.outbox,
        status.orphan_files,
        status.orphan_bytes,
        humantime::format_duration(older_than)
    );
}
