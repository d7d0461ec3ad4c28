//! `sluice ddl --config <file> --dialect snowflake|duckdb`: the SQL that
//! creates the warehouse table for the sink's files and loads them.

use std::path::PathBuf;

use crate::buffer;
use crate::config::{Config, StorageUrl};
use crate::ddl::{self, Dialect, Target};
use crate::layout;
use crate::schema::MessagePlan;

#[derive(Debug, clap::Args)]
pub struct DdlArgs {
    /// The sink's TOML config file.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    pub config: PathBuf,
    #[arg(long, value_enum)]
    pub dialect: Dialect,
    /// The table's name (default: the event's).
    #[arg(long)]
    pub table: Option<String>,
    /// Snowflake: the storage integration of the stage (CREATE STORAGE
    /// INTEGRATION, granted the bucket).
    #[arg(long, default_value = "SLUICE_S3")]
    pub storage_integration: String,
}

pub(crate) fn execute(args: DdlArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let (descriptor, _, _) = super::run::schema(&config)?;
    let plan = MessagePlan::new(&descriptor, config.schema.recursion_depth)?;
    let schema = buffer::table_schema(&plan);
    let location = match config.storage_url().map_err(anyhow::Error::msg)? {
        StorageUrl::S3 { bucket, prefix } => format!(
            "s3://{bucket}/{}",
            layout::data_root(&prefix, &config.event.name)
        ),
        StorageUrl::Local { dir } => format!(
            "{}/{}",
            dir.display().to_string().trim_end_matches('/'),
            layout::data_root("", &config.event.name)
        ),
    };
    let table = args.table.as_deref().unwrap_or(&config.event.name);
    print!(
        "{}",
        ddl::render(
            args.dialect,
            &schema,
            &Target {
                table,
                location: &location,
                storage_integration: &args.storage_integration,
            },
        )
    );
    Ok(())
}
