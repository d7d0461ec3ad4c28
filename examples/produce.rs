//! Produces reference events (`sluice.examples.OrderPlaced`) to a topic,
//! creating it if needed. Used by `scripts/demo` and the end-to-end bench.
//!
//! cargo run --release --example produce -- --brokers 127.0.0.1:9092 \
//!     --topic orders.order_placed --partitions 4 --count 5000

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use prost_reflect::MessageDescriptor;
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
    /// A Confluent-compatible schema registry: the schema is registered
    /// there (under `--subject`) and values are in its wire format.
    #[arg(long)]
    registry: Option<String>,
    /// The registry subject; `<topic>-value` by default.
    #[arg(long)]
    subject: Option<String>,
    #[arg(long, env = "SCHEMA_REGISTRY_USER")]
    registry_user: Option<String>,
    #[arg(long, env = "SCHEMA_REGISTRY_PASSWORD", hide_env_values = true)]
    registry_password: Option<String>,
}

/// Registers the `.proto` file of `descriptor` under `subject`; its id.
fn register(args: &Args, url: &str, descriptor: &MessageDescriptor) -> anyhow::Result<u32> {
    let file = descriptor.parent_file();
    let text = std::fs::read_to_string(args.schemas.join(file.name()))?;
    let subject = args
        .subject
        .clone()
        .unwrap_or_else(|| format!("{}-value", args.topic));
    let subject =
        percent_encoding::utf8_percent_encode(&subject, percent_encoding::NON_ALPHANUMERIC);
    let mut request = ureq::post(format!("{url}/subjects/{subject}/versions"))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json");
    if let (Some(user), Some(password)) = (&args.registry_user, &args.registry_password) {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request = request.header("Authorization", format!("Basic {token}"));
    }
    let body = serde_json::json!({"schemaType": "PROTOBUF", "schema": text});
    let answer: serde_json::Value = request
        .send_json(body)
        .with_context(|| format!("registering {} at {url}", file.name()))?
        .body_mut()
        .read_json()?;
    let id = answer["id"]
        .as_u64()
        .context("the registry answered no id")?;
    Ok(u32::try_from(id)?)
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
    if let Some(url) = &args.registry {
        // Index path [0]: OrderPlaced is the first message of its file.
        anyhow::ensure!(descriptor.parent_file().messages().next().as_ref() == Some(&descriptor));
        let id = register(&args, url, &descriptor)?;
        println!("registered {} as schema id {id}", descriptor.full_name());
        sample = sample.with_framing(sluice::framing::confluent_header(id).to_vec());
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
