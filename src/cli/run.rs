//! `sluice run --config <file>`: the daemon.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prost_reflect::MessageDescriptor;
use tracing::{info, warn};

use crate::buffer::{Buffers, FileLimits};
use crate::commit::{self, Committer};
use crate::config::{Config, ParquetConfig, SchemaSource};
use crate::dlq::{self, DeadLetters};
use crate::framing::Framing;
use crate::health::{self, Health};
use crate::layout::{self, PathTemplate};
use crate::manifest::Manifests;
use crate::partitioning::{Partitioning, TimeSource};
use crate::pipeline::{self, Pipeline, WorkerParts};
use crate::schema::{ConfluentRegistry, LocalRegistry, MessagePlan};
use crate::source::SourceContext;
use crate::telemetry::Telemetry;
use crate::tenancy::Tenancy;
use crate::upload::Streams;
use crate::{notify, source, store, writer};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The sink's TOML config file.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    pub config: PathBuf,
}

pub(crate) fn execute(args: RunArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    start(&config, None)
}

/// A bounded re-read of Kafka into another prefix (`sluice replay`).
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    /// Key prefix in the sink's store the files and manifests go to.
    pub prefix: String,
    /// Per partition, the first offset to read and the first not to.
    pub offsets: BTreeMap<i32, (i64, i64)>,
}

/// Runs the pipeline: the daemon, or with `replay` a bounded re-read that
/// stops at its end offsets, commits nothing to the group, announces
/// nothing and serves no metrics.
pub(crate) fn start(config: &Config, replay: Option<Replay>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("sluice-io")
        .build()
        .context("cannot start the async runtime")?;
    let handle = runtime.handle().clone();

    let listen = config.metrics_listen().map_err(anyhow::Error::msg)?;
    let metrics = match replay {
        None => Some(health::install_recorder().map_err(anyhow::Error::msg)?),
        Some(_) => None,
    };

    let (descriptor, schema_id, framing) = schema(config)?;
    let plan = Arc::new(MessagePlan::new(
        &descriptor,
        config.schema.recursion_depth,
    )?);

    let (store, live_prefix) = runtime.block_on(store::from_config(config))?;
    let prefix = replay
        .as_ref()
        .map_or(live_prefix.clone(), |r| r.prefix.clone());
    let queue_url = match replay {
        None => config.notify.queue_url.as_deref(),
        Some(_) => None,
    };
    let notifier = runtime.block_on(notify::from_config(
        queue_url,
        config.notify.request_timeout,
    ));
    let manifests = Manifests::new(
        store.clone(),
        &prefix,
        &config.event.name,
        &config.kafka.topic,
    );
    let health = Health::new(
        store.clone(),
        layout::manifests_root(&prefix, &config.event.name, &config.kafka.topic),
    );
    if let Some(metrics) = metrics {
        runtime
            .block_on(health::serve(listen, metrics, health.clone()))
            .map_err(anyhow::Error::msg)?;
    }
    let context = SourceContext::new(&config.kafka, manifests.clone(), handle.clone(), health)?;
    // The memory budget: a quarter for the Kafka client, which is told an
    // eighth (its buffers overshoot what it is told by up to as much
    // again); the rest for open files.
    let budget = config.memory.max_buffer_bytes;
    let kafka_bytes = budget / 8;
    let files_bytes = usize::try_from(budget - budget / 4).unwrap_or(usize::MAX);
    let streaming = Streaming::within(files_bytes);
    let client_id = format!("sluice-{}", config.event.name);
    let (consumer, partitions) = match &replay {
        None => {
            let partitions = topic_partitions(config, &client_id);
            let consumer =
                source::connect(&config.kafka, &client_id, kafka_bytes, partitions, context)?;
            (consumer, partitions)
        }
        Some(replay) => {
            let starts = replay
                .offsets
                .iter()
                .map(|(&p, &(start, _))| (p, start))
                .collect();
            let consumer =
                source::assigned(&config.kafka, &client_id, kafka_bytes, context, &starts)?;
            (consumer, starts.len())
        }
    };
    let workers = config.pipeline.workers(partitions);

    let telemetry = Telemetry::new(&config.event.name);
    telemetry.memory_budget(budget);
    telemetry.register_reasons();
    if let Some(id) = schema_id {
        telemetry.schema_in_use(id, false);
    }
    let stop = pipeline::stop_on_signals(&handle);
    let metadata = vec![
        ("sluice.event", config.event.name.clone()),
        ("sluice.message", config.event.message.clone()),
        ("sluice.topic", config.kafka.topic.clone()),
        ("sluice.version", env!("CARGO_PKG_VERSION").to_owned()),
    ];
    let partitioning = Partitioning::new(
        &config.event.name,
        PathTemplate::parse(&config.files.path).map_err(anyhow::Error::msg)?,
        TimeSource::parse(&config.files.time).map_err(anyhow::Error::msg)?,
        &descriptor,
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", config.source_file.display()))?;
    let letters_parquet = ParquetConfig {
        bloom_filters: Vec::new(),
        ..config.parquet.clone()
    };
    let limits = FileLimits {
        max_rows: config.files.max_rows,
        max_bytes: usize::try_from(config.files.max_bytes).unwrap_or(usize::MAX),
        row_group_bytes: streaming.row_group_bytes,
        part_bytes: store.multipart().then_some(streaming.part_bytes),
    };
    let parts: Vec<WorkerParts> = (0..workers)
        .map(|index| WorkerParts {
            framing: framing.clone(),
            buffers: Buffers::new(
                descriptor.clone(),
                plan.clone(),
                &config.parquet,
                metadata.clone(),
            )
            .with_schema_id(schema_id)
            .with_partitioning(partitioning.clone())
            .with_limits(limits)
            .with_streams_numbered(index, workers),
            dead_letters: DeadLetters::new(
                writer::properties(&letters_parquet, &dlq::schema(), &[]),
                metadata.clone(),
            ),
        })
        .collect();
    let buffers = &parts[0].buffers;
    for column in &config.parquet.bloom_filters {
        if buffers.schema().field_with_name(column).is_err() {
            let columns: Vec<&str> = buffers
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            anyhow::bail!(
                "{}: parquet.bloom_filters: no column `{column}` in the files (columns: {})",
                config.source_file.display(),
                columns.join(", ")
            );
        }
    }
    let staging = match replay {
        None => config.staging_prefix(&prefix),
        Some(_) => None,
    };
    let writer_id = commit::writer_id();
    let streams = Streams::new(
        store.clone(),
        handle.clone(),
        format!(
            "{}{writer_id}/",
            layout::streams_root(&prefix, &config.event.name)
        ),
        streaming.parts_in_flight,
        telemetry.clone(),
    );
    let committer = Committer {
        store,
        manifests,
        prefix,
        event: config.event.name.clone(),
        topic: config.kafka.topic.clone(),
        writer: writer_id,
        notifier,
        staging,
        tenancy: Tenancy::new(&config.tenants),
        uploads: Arc::new(tokio::sync::Semaphore::new(
            config.storage.upload_concurrency.max(1),
        )),
        telemetry: telemetry.clone(),
        stopping: stop.clone(),
        streams,
    };
    info!(
        event = %config.event.name,
        topic = %config.kafka.topic,
        group = %config.kafka.group_id,
        storage = %config.storage.url,
        config = %config.redacted(),
        "sluice running"
    );
    info!(workers, partitions, "worker threads");
    let pipeline = Pipeline::new(
        consumer,
        parts,
        config.errors.clone(),
        committer,
        handle,
        telemetry,
        config.checkpoint.interval,
        files_bytes,
    );
    match replay {
        None => pipeline.run(&stop)?,
        Some(replay) => pipeline
            .bounded(
                replay
                    .offsets
                    .iter()
                    .map(|(&p, &(_, end))| (p, end))
                    .collect(),
            )
            .run(&stop)?,
    }
    info!("stopped cleanly");
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(())
}

/// A topic whose partitions the brokers did not tell at start-up is
/// read as if it had this many.
const UNKNOWN_PARTITIONS: usize = 64;

/// How many partitions the sink's topic has: a process never owns more.
/// They size the client's queues (one per partition) and cap the workers.
fn topic_partitions(config: &Config, client_id: &str) -> usize {
    let found = source::lookup_client(&config.kafka, client_id)
        .map_err(|e| e.to_string())
        .and_then(|client| {
            source::topic_partitions(&client, &config.kafka, Duration::from_secs(10))
        });
    match found {
        Ok(partitions) if !partitions.is_empty() => partitions.len(),
        Ok(_) => UNKNOWN_PARTITIONS,
        Err(e) => {
            warn!(error = %e, assumed = UNKNOWN_PARTITIONS, "cannot tell the topic's partitions");
            UNKNOWN_PARTITIONS
        }
    }
}

/// How much of a file is in memory at once, from the files' share of the
/// memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Streaming {
    /// A row group closes at this many bytes of pages (if not at
    /// `row_group_rows` first).
    row_group_bytes: usize,
    /// Streamed files go up in parts of this size.
    part_bytes: usize,
    /// Parts of all files held for upload at once.
    parts_in_flight: usize,
}

impl Streaming {
    /// Row groups up to an eighth of the share; parts a sixteenth (within
    /// S3's 5 MiB minimum and 16 MiB), as many in flight as fit in another
    /// eighth (one to four).
    fn within(files_bytes: usize) -> Streaming {
        const MAX_PART: usize = 16 * 1024 * 1024;
        let part_bytes = (files_bytes / 16).clamp(store::MIN_PART_BYTES, MAX_PART);
        Streaming {
            row_group_bytes: files_bytes / 8,
            part_bytes,
            parts_in_flight: (files_bytes / 8 / part_bytes).clamp(1, 4),
        }
    }
}

/// The payload message, its registry id and how payloads are framed, from
/// `schema.registry`.
pub(crate) fn schema(config: &Config) -> anyhow::Result<(MessageDescriptor, Option<u32>, Framing)> {
    match config.schema_source().map_err(anyhow::Error::msg)? {
        SchemaSource::Local(dir) => {
            let registry = LocalRegistry::open(&dir)?;
            Ok((
                registry.message(&config.event.message)?,
                None,
                Framing::Plain,
            ))
        }
        SchemaSource::Confluent {
            url,
            subject,
            version,
        } => {
            let registry = Arc::new(ConfluentRegistry::new(&url));
            let (id, pool) = registry.subject_version(&subject, version)?;
            let descriptor = pool
                .get_message_by_name(&config.event.message)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "subject {subject} (schema id {id}) does not define message {}",
                        config.event.message
                    )
                })?;
            info!(subject = %subject, schema_id = id, "schema from the registry");
            let framing = Framing::confluent(
                registry,
                id,
                descriptor.clone(),
                config.schema.recursion_depth,
            );
            Ok((descriptor, Some(id), framing))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Streaming;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn streaming_follows_the_budget() {
        // memory.max_buffer_bytes 64 MiB, 256 MiB, 2 GiB: files get three quarters.
        assert_eq!(
            Streaming::within(48 * MIB),
            Streaming {
                row_group_bytes: 6 * MIB,
                part_bytes: 5 * MIB,
                parts_in_flight: 1
            }
        );
        assert_eq!(
            Streaming::within(192 * MIB),
            Streaming {
                row_group_bytes: 24 * MIB,
                part_bytes: 12 * MIB,
                parts_in_flight: 2
            }
        );
        assert_eq!(
            Streaming::within(1536 * MIB),
            Streaming {
                row_group_bytes: 192 * MIB,
                part_bytes: 16 * MIB,
                parts_in_flight: 4
            }
        );
    }
}
