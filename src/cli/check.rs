//! `sluice check --config <file>`: validates the config, then checks each
//! service the sink needs — Kafka (the topic and its partitions), the
//! store (a probe object written and deleted), the queue, the schema —
//! and prints the files' Arrow and Parquet schemas. Every check runs and
//! reports; the exit code is non-zero if any failed.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use tokio::runtime::Runtime;

use crate::buffer;
use crate::config::Config;
use crate::schema::MessagePlan;
use crate::store::PutMode;
use crate::{diagnose, layout, notify, source};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The sink's TOML config file.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    pub config: PathBuf,
}

/// How long each service gets to answer.
const TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) fn execute(args: CheckArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    println!("ok    config  {}", args.config.display());
    println!(
        "\nEffective config (secrets masked):\n{}\n",
        serde_json::to_string_pretty(&config.redacted()).unwrap_or_default()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut failed = Vec::new();
    let mut report = |name: &'static str, result: Result<String, String>| match result {
        Ok(what) => println!("ok    {name:<7} {what}"),
        Err(why) => {
            println!("FAIL  {name:<7} {why}");
            failed.push(name);
        }
    };
    report("kafka", kafka(&config));
    report("store", within(&runtime, probe_store(&config)));
    report("queue", within(&runtime, probe_queue(&config)));
    let schema = super::run::schema(&config).map_err(|e| format!("{e:#}"));
    report(
        "schema",
        schema
            .as_ref()
            .map(|(d, id, _)| match id {
                Some(id) => format!("{} (registry schema id {id})", d.full_name()),
                None => d.full_name().to_owned(),
            })
            .map_err(Clone::clone),
    );
    if let Ok((descriptor, _, _)) = &schema {
        match MessagePlan::new(descriptor, config.schema.recursion_depth) {
            Ok(plan) => print_schemas(&plan),
            Err(e) => report("schema", Err(e.to_string())),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} check(s) failed: {}", failed.len(), failed.join(", "))
    }
}

/// Runs `check` on the runtime, giving up after [`TIMEOUT`].
fn within(
    runtime: &Runtime,
    check: impl Future<Output = Result<String, String>>,
) -> Result<String, String> {
    runtime.block_on(async {
        tokio::time::timeout(TIMEOUT, check)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {TIMEOUT:?}")))
    })
}

/// The topic's partitions, from the brokers' metadata, and the group's
/// committed offsets (which the group's ACL must allow), over the
/// configured security; on failure, the step that failed.
fn kafka(config: &Config) -> Result<String, String> {
    let kafka = &config.kafka;
    let security = &kafka.security;
    let mut how = vec![security.protocol.name().to_owned()];
    if let Some(mechanism) = security.sasl_mechanism.filter(|_| security.protocol.sasl()) {
        how.push(format!(
            "{} as {}",
            mechanism.name(),
            diagnose::principal(security)
        ));
    }
    if security.protocol.tls() {
        let first = kafka.brokers.split(',').next().unwrap_or_default().trim();
        let tls = diagnose::probe_tls(first, security, TIMEOUT).map_err(|f| f.to_string())?;
        how.push(tls.to_string());
    }
    let consumer = source::lookup_client(kafka, "sluice-check").map_err(|e| e.to_string())?;
    let partitions = source::topic_partitions(&consumer, kafka, TIMEOUT)?;
    // The group's ACL: reading its committed offsets needs it.
    let mut offsets = TopicPartitionList::new();
    for &partition in &partitions {
        offsets.add_partition(&kafka.topic, partition);
    }
    source::ask(
        &consumer,
        kafka,
        TIMEOUT,
        &format!("group {}", kafka.group_id),
        |attempt| consumer.committed_offsets(offsets.clone(), attempt),
    )?;
    Ok(format!(
        "topic {}: {} partition(s) on {} ({})",
        kafka.topic,
        partitions.len(),
        kafka.brokers,
        how.join(", ")
    ))
}

/// Writes a probe object under the sink's prefix and deletes it.
async fn probe_store(config: &Config) -> Result<String, String> {
    let (store, prefix, _) = super::open_manifests(config, None)
        .await
        .map_err(|e| e.to_string())?;
    let key = layout::under(
        &prefix,
        &format!("_sluice/check/{}-{}", config.event.name, std::process::id()),
    );
    store
        .put(
            &key,
            Bytes::from_static(b"sluice check"),
            PutMode::Overwrite,
        )
        .await
        .map_err(|e| format!("{}: cannot write: {e}", config.storage.url))?;
    store
        .delete(&key)
        .await
        .map_err(|e| format!("{}: cannot delete the probe {key}: {e}", config.storage.url))?;
    Ok(format!("{} writable", config.storage.url))
}

async fn probe_queue(config: &Config) -> Result<String, String> {
    let notifier: Arc<dyn notify::Notifier> = notify::from_config(
        config.notify.queue_url.as_deref(),
        config.notify.request_timeout,
    )
    .await;
    notifier.probe().await
}

fn print_schemas(plan: &MessagePlan) {
    let schema = buffer::table_schema(plan);
    println!("\nArrow schema of the files:");
    for field in schema.fields() {
        let null = if field.is_nullable() { "" } else { " not null" };
        println!("  {}: {}{null}", field.name(), field.data_type());
    }
    match parquet::arrow::ArrowSchemaConverter::new().convert(&schema) {
        Ok(descriptor) => {
            println!("\nParquet schema of the files:");
            let mut out = Vec::new();
            parquet::schema::printer::print_schema(&mut out, descriptor.root_schema());
            println!("{}", String::from_utf8_lossy(&out));
        }
        Err(e) => println!("\nno Parquet schema: {e}"),
    }
}
