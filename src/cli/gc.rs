//! `sluice gc --config <file> [--older-than 24h] [--delete]`: finds data
//! files that no manifest lists (uploads of attempts that crashed or lost a
//! commit) and multipart uploads never completed (a crash mid-upload) and,
//! with `--delete`, removes them. Lists only by default.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::gc;

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// The sink's TOML config file.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    pub config: PathBuf,
    /// Only files at least this old count as orphans: younger ones may belong
    /// to a checkpoint in flight.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub older_than: Duration,
    /// Delete the orphans (without it, only list them).
    #[arg(long)]
    pub delete: bool,
}

pub(crate) fn execute(args: GcArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (store, prefix, manifests) = super::open_manifests(&config, None).await?;
        let staging = config.staging_prefix(&prefix);
        let orphans = gc::find_orphans(
            &*store,
            &manifests,
            &prefix,
            &config.event.name,
            staging.as_deref(),
            args.older_than,
        )
        .await?;
        let uploads = gc::find_abandoned_uploads(
            &*store,
            &prefix,
            &config.event.name,
            staging.as_deref(),
            args.older_than,
        )
        .await?;
        let bytes: u64 = orphans.iter().map(|o| o.size).sum();
        for orphan in &orphans {
            println!("orphan {} ({} bytes)", orphan.key, orphan.size);
        }
        for upload in &uploads {
            println!("abandoned upload {} ({})", upload.key, upload.id);
        }
        if args.delete {
            gc::delete(&*store, &orphans).await?;
            gc::abort(&*store, &uploads).await?;
            println!(
                "deleted {} orphan(s), {bytes} bytes; aborted {} abandoned upload(s)",
                orphans.len(),
                uploads.len()
            );
        } else {
            println!(
                "{} orphan(s), {bytes} bytes, {} abandoned upload(s); run again with --delete to remove them",
                orphans.len(),
                uploads.len()
            );
        }
        anyhow::Ok(())
    })
}
