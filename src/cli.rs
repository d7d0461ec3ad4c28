//! The command line: one file per subcommand.

mod backfill;
mod check;
mod ddl;
mod gc;
mod health;
mod replay;
mod run;
mod status;
mod time_arg;

use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::manifest::Manifests;
use crate::store::{self, ObjectStore};

/// The sink's store, its key prefix (or `prefix` instead) and the
/// manifests under that prefix.
async fn open_manifests(
    config: &Config,
    prefix: Option<&str>,
) -> anyhow::Result<(Arc<dyn ObjectStore>, String, Manifests)> {
    let (store, live) = store::from_config(config).await?;
    let prefix = prefix.map_or(live, str::to_owned);
    let manifests = Manifests::new(
        store.clone(),
        &prefix,
        &config.event.name,
        &config.kafka.topic,
    );
    Ok((store, prefix, manifests))
}

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Kafka → Parquet on S3 → SQS, one event type per process"
)]
pub struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SLUICE_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the topic and commit Parquet files until stopped (SIGTERM/SIGINT).
    Run(run::RunArgs),
    /// List (or with --delete remove) data files that no manifest lists.
    Gc(gc::GcArgs),
    /// Validate the config, reach Kafka, the store, the queue and the
    /// schema, and print the files' schema.
    Check(check::CheckArgs),
    /// Print the SQL that creates the warehouse table and loads the files.
    Ddl(ddl::DdlArgs),
    /// Ask a running sluice's /healthz or /readyz (exit 0 on 200).
    Health(health::HealthArgs),
    /// Announce again the committed files whose event times overlap a window.
    Backfill(backfill::BackfillArgs),
    /// Per partition: committed offset, group offset, high watermark, lag.
    Status(status::StatusArgs),
    /// Re-read a time window from Kafka into another prefix.
    Replay(replay::ReplayArgs),
}

impl Cli {
    pub fn execute(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => run::execute(args),
            Command::Gc(args) => gc::execute(args),
            Command::Check(args) => check::execute(args),
            Command::Ddl(args) => ddl::execute(args),
            Command::Health(args) => health::execute(args),
            Command::Backfill(args) => backfill::execute(args),
            Command::Status(args) => status::execute(args),
            Command::Replay(args) => replay::execute(args),
        }
    }
}
