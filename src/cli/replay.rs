//! `sluice replay --config <file> --from <time> --to <time> --prefix <p>`:
//! re-reads the Kafka records of a time window (offsets for the times, per
//! partition) with a consumer of its own, writes them under another prefix
//! with the normal writer and manifests, stops at the window's end offsets
//! and reports. Nothing is committed to the sink's group and nothing is
//! announced; the live prefix is refused. Run again into the same prefix,
//! it resumes after what it committed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::run::{self, Replay};
use super::time_arg;
use crate::config::{Config, StorageUrl};
use crate::layout;
use crate::manifest::Manifest;
use crate::source;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The sink's TOML config file.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    pub config: PathBuf,
    /// Start of the window, by Kafka record time (RFC 3339, or -2h).
    #[arg(long, value_parser = time_arg::parse, allow_hyphen_values = true)]
    pub from: DateTime<Utc>,
    /// End of the window, exclusive.
    #[arg(long, value_parser = time_arg::parse, default_value = "now", allow_hyphen_values = true)]
    pub to: DateTime<Utc>,
    /// Key prefix (in the sink's bucket or directory) to write under.
    #[arg(long)]
    pub prefix: String,
}

const TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) fn execute(args: ReplayArgs) -> anyhow::Result<()> {
    let mut config = Config::load(&args.config)?;
    time_arg::window(args.from, args.to)?;
    let live = match config.storage_url().map_err(anyhow::Error::msg)? {
        StorageUrl::S3 { prefix, .. } => prefix,
        StorageUrl::Local { .. } => String::new(),
    };
    let prefix = args.prefix.trim_matches('/').to_owned();
    refuse_live(&prefix, &live, &config.event.name)?;
    // A group of its own: the sink's group never sees the replay.
    config.kafka.group_id = format!("{}-replay-{}", config.kafka.group_id, std::process::id());

    let offsets = window_offsets(&config, args.from, args.to)?;
    if offsets.is_empty() {
        println!("replay: no records between {} and {}", args.from, args.to);
        return Ok(());
    }
    check_prefix_history(&replayed(&config, &prefix)?, &prefix, &offsets)?;
    run::start(
        &config,
        Some(Replay {
            prefix: prefix.clone(),
            offsets: offsets.clone(),
        }),
    )?;
    report(&config, &prefix, &offsets)
}

/// Refuses a prefix that is the live one or inside its data, dead letters
/// or progress.
fn refuse_live(prefix: &str, live: &str, event: &str) -> anyhow::Result<()> {
    let inside = [
        layout::data_root(live, event),
        layout::under(live, "_sluice/"),
        layout::under(live, "_dead_letters/"),
    ];
    if prefix == live
        || inside
            .iter()
            .any(|root| format!("{prefix}/").starts_with(root))
    {
        anyhow::bail!(
            "refusing to replay into {prefix:?}: it is the live prefix {live:?} or inside its data; pick another prefix"
        );
    }
    Ok(())
}

/// Per partition, the first offset at or after `from` and the first at or
/// after `to` (the high watermark when none); partitions with nothing in
/// the window are left out.
fn window_offsets(
    config: &Config,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let kafka = &config.kafka;
    let consumer = source::lookup_client(kafka, "sluice-replay")?;
    let partitions =
        source::topic_partitions(&consumer, kafka, TIMEOUT).map_err(anyhow::Error::msg)?;
    let at = |time: DateTime<Utc>| -> anyhow::Result<BTreeMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(&kafka.topic, p, Offset::Offset(time.timestamp_millis()))?;
        }
        let found = consumer.offsets_for_times(tpl, TIMEOUT)?;
        let mut out = BTreeMap::new();
        for e in found.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                _ => {
                    consumer
                        .fetch_watermarks(&kafka.topic, e.partition(), TIMEOUT)?
                        .1
                }
            };
            out.insert(e.partition(), offset);
        }
        Ok(out)
    };
    let (starts, ends) = (at(from)?, at(to)?);
    Ok(starts
        .into_iter()
        .filter_map(|(p, start)| {
            let end = *ends.get(&p)?;
            (start < end).then_some((p, (start, end)))
        })
        .collect())
}

/// A prefix holding an earlier replay that ends before this window would
/// resume from there and take records before `--from`: refused.
fn check_prefix_history(
    manifests: &[Manifest],
    prefix: &str,
    offsets: &BTreeMap<i32, (i64, i64)>,
) -> anyhow::Result<()> {
    for (&partition, &(start, _)) in offsets {
        if let Some(last) = last_committed(manifests, partition)
            && last + 1 < start
        {
            anyhow::bail!(
                "{prefix:?} holds a replay of partition {partition} up to offset {last}, before this window (from offset {start}); pick another prefix"
            );
        }
    }
    Ok(())
}

/// The manifests already under the replay prefix.
fn replayed(config: &Config, prefix: &str) -> anyhow::Result<Vec<Manifest>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (_, _, manifests) = super::open_manifests(config, Some(prefix)).await?;
        Ok(manifests.all().await?)
    })
}

fn last_committed(manifests: &[Manifest], partition: i32) -> Option<i64> {
    manifests
        .iter()
        .filter(|m| m.partition == partition)
        .map(|m| m.range.to)
        .max()
}

/// What the prefix now holds for the window.
fn report(
    config: &Config,
    prefix: &str,
    offsets: &BTreeMap<i32, (i64, i64)>,
) -> anyhow::Result<()> {
    let manifests = replayed(config, prefix)?;
    let mut total = 0;
    for (&partition, &(start, end)) in offsets {
        let rows: u64 = manifests
            .iter()
            .filter(|m| m.partition == partition)
            .flat_map(|m| &m.files)
            .filter(|f| f.kind.is_data())
            .map(|f| f.rows)
            .sum();
        let last = last_committed(&manifests, partition);
        total += rows;
        println!(
            "partition {partition}: offsets {start}..{end}, committed up to {}, {rows} rows",
            last.map_or("-".to_owned(), |l| l.to_string())
        );
    }
    println!("replay into {prefix}: {total} rows");
    Ok(())
}
