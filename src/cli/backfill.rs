//! `sluice backfill --config <file> --from <time> --to <time> [--queue <url>]
//! [--dry-run]`: announces again every committed file whose event times
//! overlap the window, with the body it was first announced with — so a
//! loader that deduplicates on the key loads nothing twice, and running it
//! twice sends the same messages again.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};

use super::time_arg;
use crate::backfill;
use crate::config::Config;
use crate::notify::{self, FileNotification};

#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// The sink's TOML config file.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    pub config: PathBuf,
    /// Start of the event-time window (RFC 3339, or relative: -2h).
    #[arg(long, value_parser = time_arg::parse, allow_hyphen_values = true)]
    pub from: DateTime<Utc>,
    /// End of the window, exclusive.
    #[arg(long, value_parser = time_arg::parse, default_value = "now", allow_hyphen_values = true)]
    pub to: DateTime<Utc>,
    /// Send to this queue instead of `notify.queue_url`.
    #[arg(long)]
    pub queue: Option<String>,
    /// Print the message bodies, one per line, instead of sending them.
    #[arg(long)]
    pub dry_run: bool,
}

/// SQS takes up to ten messages per call.
const BATCH: usize = 10;
/// Attempts per batch before its files count as failed.
const ATTEMPTS: u32 = 5;

pub(crate) fn execute(args: BackfillArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let (from, to) = time_arg::window(args.from, args.to)?;
    let queue = args.queue.clone().or(config.notify.queue_url.clone());
    if queue.is_none() && !args.dry_run {
        anyhow::bail!(
            "no queue: pass --queue or set notify.queue_url in {}",
            args.config.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (store, _, manifests) = super::open_manifests(&config, None).await?;
        let files = backfill::announcements(&*store, &manifests, from, to).await?;
        if args.dry_run {
            for file in &files {
                println!("{}", file.body());
            }
            eprintln!(
                "dry run: {} file(s), {} rows, {} bytes would be announced",
                files.len(),
                files.iter().map(|f| f.rows).sum::<u64>(),
                files.iter().map(|f| f.size).sum::<u64>()
            );
            return Ok(());
        }
        let queue = queue.unwrap_or_default();
        let notifier = notify::from_config(Some(&queue), config.notify.request_timeout).await;
        notifier
            .probe()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the queue: {e}"))?;
        let bar = ProgressBar::new(files.len() as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} files {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let (mut rows, mut bytes, mut failed) = (0u64, 0u64, Vec::new());
        for batch in files.chunks(BATCH) {
            match send(&*notifier, batch).await {
                Ok(()) => {
                    rows += batch.iter().map(|f| f.rows).sum::<u64>();
                    bytes += batch.iter().map(|f| f.size).sum::<u64>();
                }
                Err(keys) => failed.extend(keys),
            }
            bar.inc(batch.len() as u64);
            bar.set_message(format!("{rows} rows, {bytes} bytes"));
        }
        bar.finish_and_clear();
        println!(
            "backfill {} .. {}: {} file(s), {rows} rows, {bytes} bytes announced on {queue}; {} failed",
            args.from.to_rfc3339(),
            args.to.to_rfc3339(),
            files.len() - failed.len(),
            failed.len()
        );
        for key in &failed {
            println!("failed: {key}");
        }
        if failed.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("{} file(s) not announced", failed.len())
        }
    })
}

/// Sends one batch, retrying what the queue refused; the keys still
/// refused after [`ATTEMPTS`].
async fn send(
    notifier: &dyn notify::Notifier,
    batch: &[FileNotification],
) -> Result<(), Vec<String>> {
    let mut pending: Vec<FileNotification> = batch.to_vec();
    let mut backoff = Duration::from_millis(200);
    for attempt in 1..=ATTEMPTS {
        match notifier.send(&pending).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "sending failed, retrying");
                pending.retain(|n| e.failed.contains(&n.key));
                if attempt < ATTEMPTS {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }
    Err(pending.into_iter().map(|n| n.key).collect())
}
