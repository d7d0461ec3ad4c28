//! The commit protocol: how a checkpoint's rows become committed, exactly
//! once, and announced.
//!
//! Order of a checkpoint, per partition:
//! 1. upload the data files (keys hold topic, partition, first and last
//!    offset, so a retry overwrites only its own attempt); large files
//!    were streamed to a key of their own while written
//!    ([`crate::upload`]) and are completed there;
//! 2. create the manifest for the range `(from, to]` with `If-None-Match: *`
//!    at a key made of `from + 1` — **the commit point**;
//! 3. copy each staged file (bucket-notifications mode, streamed files)
//!    from its staged key to its live key; then send one notification per
//!    file of the manifest;
//! 4. write the manifest's `.notified` marker;
//! 5. commit `to + 1` to Kafka — advice for lag dashboards, never read back
//!    while a manifest exists.
//!
//! Invariants:
//! - A record is committed iff a manifest's range holds it; ranges of a
//!   partition chain without gaps or overlaps ([`crate::checkpoint`]), because
//!   each starts where the one before ended and two manifests cannot share a
//!   start key.
//! - A file is visible to loaders only through a manifest: it is announced
//!   after its manifest exists, never before. Files uploaded by an attempt
//!   whose manifest was never written are orphans that no one announces.
//! - A writer that loses the race for a start key (a zombie after a
//!   rebalance, or a successor that was slower) is told so
//!   ([`CommitOutcome::Fenced`]); it drops that partition's work and resumes
//!   after the winner's range.
//! - A manifest without a `.notified` marker is announced again when its
//!   partition is next assigned: loaders may see a file twice (the key is in
//!   every message to dedupe on), never a file that is not committed.
//!
//! DESIGN.md lists what a crash between each step leaves behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use std::collections::HashMap;

use crate::buffer::{Body, FileKind, FinishedFile};
use crate::layout;
use crate::manifest::{CommitOutcome, Manifest, ManifestError, ManifestFile, Manifests};
use crate::notify::{FileNotification, Notifier};
use crate::store::{ObjectStore, PutMode, StoreError, e_tag_of, retry};
use crate::telemetry::Telemetry;
use crate::tenancy::Tenancy;
use crate::upload::Streams;

/// Backoff between attempts to send notifications.
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("upload failed: {0}")]
    Upload(#[from] StoreError),
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error(
        "stopping before {0} notification(s) were accepted (they are re-sent on the next start): {1}"
    )]
    NotifyAbandoned(usize, String),
}

/// Uploads, commits and announces the files of checkpoints.
#[derive(Debug)]
pub struct Committer {
    pub store: Arc<dyn ObjectStore>,
    pub manifests: Manifests,
    pub prefix: String,
    pub event: String,
    pub topic: String,
    /// Names this process in manifests and stream keys
    /// ([`writer_id`]).
    pub writer: String,
    pub notifier: Arc<dyn Notifier>,
    /// Bucket-notifications mode: files are uploaded under this prefix and
    /// copied to their live key after the manifest.
    pub staging: Option<String>,
    /// Where routed tenants' files go ([`crate::tenancy::Route::Prefix`]).
    pub tenancy: Tenancy,
    pub concurrency: usize,
    pub telemetry: Telemetry,
    /// Set on shutdown: notification retries give up instead of waiting on.
    pub stopping: Arc<AtomicBool>,
    /// Files being streamed while written.
    pub streams: Streams,
}

/// A name for this process, unique across restarts and hosts.
pub fn writer_id() -> String {
    format!(
        "{}-{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "sluice".into()),
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    )
}

impl Committer {
    /// Step 1: uploads every file, at most `concurrency` at a time.
    pub async fn upload(
        &self,
        files: Vec<FinishedFile>,
    ) -> Result<Vec<(i32, ManifestFile)>, CommitError> {
        stream::iter(files.into_iter().map(|file| self.upload_one(file)))
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await
    }

    async fn upload_one(&self, file: FinishedFile) -> Result<(i32, ManifestFile), CommitError> {
        let tenant = file
            .route
            .checked_sub(1)
            .and_then(|i| self.tenancy.prefix(i));
        let prefix = tenant.map_or(self.prefix.as_str(), |(_, p)| p.as_str());
        let key = match file.kind {
            FileKind::Data => layout::file_key(
                prefix,
                &file.folder,
                &self.topic,
                file.partition,
                file.first_offset,
                file.last_offset,
            ),
            FileKind::DeadLetters => layout::dead_letter_key(
                prefix,
                &self.event,
                file.hour,
                &self.topic,
                file.partition,
                file.first_offset,
                file.last_offset,
            ),
        };
        let size = file.body.size();
        let started = Instant::now();
        let (staged_key, e_tag) = match file.body {
            Body::Streamed {
                stream,
                parts,
                tail,
                ..
            } => {
                let (staged, e_tag) = self.streams.finish(stream, parts, tail).await?;
                (Some(staged), e_tag)
            }
            Body::Whole(bytes) => {
                let staged_key = match (file.kind, tenant) {
                    (FileKind::Data, None) => self.staging.as_ref().map(|s| format!("{s}/{key}")),
                    _ => None,
                };
                let upload_key = staged_key.as_deref().unwrap_or(&key);
                let body = Bytes::from(bytes);
                let e_tag = retry(
                    upload_key,
                    &self.telemetry,
                    StoreError::is_retryable,
                    || self.store.put(upload_key, body.clone(), PutMode::Overwrite),
                )
                .await?;
                (staged_key, e_tag)
            }
        };
        self.telemetry
            .file_uploaded(&key, file.rows, size, started.elapsed());
        Ok((
            file.partition,
            ManifestFile {
                key,
                staged_key,
                kind: file.kind,
                tenant: tenant.map(|(t, _)| t.clone()),
                rows: file.rows,
                size,
                e_tag,
                first_offset: file.first_offset,
                last_offset: file.last_offset,
                min_event_time_micros: file.min_time_micros,
                max_event_time_micros: file.max_time_micros,
                schema_id: file.schema_id,
            },
        ))
    }

    /// Step 2: the commit point for one partition.
    pub async fn commit(&self, manifest: &Manifest) -> Result<CommitOutcome, CommitError> {
        let outcome = retry(
            "manifest",
            &self.telemetry,
            ManifestError::is_retryable,
            || self.manifests.commit(manifest),
        )
        .await?;
        Ok(outcome)
    }

    /// Copies staged files to their live keys and removes the staged
    /// copies. Idempotent, so recovery can run it again. Returns the live
    /// copies' ETags by key: a copy of a streamed (multipart) object has
    /// another ETag than the upload had.
    async fn publish(
        &self,
        manifests: &[Manifest],
    ) -> Result<HashMap<String, String>, CommitError> {
        let mut published = HashMap::new();
        for file in manifests.iter().flat_map(|m| &m.files) {
            let Some(staged) = &file.staged_key else {
                continue;
            };
            let copied = retry(&file.key, &self.telemetry, StoreError::is_retryable, || {
                self.store.copy(staged, &file.key)
            })
            .await;
            let e_tag = match copied {
                Ok(e_tag) => e_tag,
                // Published by an earlier attempt that then crashed.
                Err(StoreError::NotFound(_)) => match e_tag_of(&*self.store, &file.key).await? {
                    Some(e_tag) => e_tag,
                    None => return Err(StoreError::NotFound(staged.clone()).into()),
                },
                Err(e) => return Err(e.into()),
            };
            retry(staged, &self.telemetry, StoreError::is_retryable, || {
                self.store.delete(staged)
            })
            .await?;
            published.insert(file.key.clone(), e_tag);
        }
        Ok(published)
    }

    /// Steps 3 and 4: (publish,) one notification per file, then the
    /// markers. Failed sends are retried with backoff until accepted or the
    /// process stops.
    pub async fn announce(&self, manifests: &[Manifest]) -> Result<(), CommitError> {
        let published = self.publish(manifests).await?;
        let mut pending: Vec<FileNotification> = manifests
            .iter()
            .flat_map(|m| {
                m.files
                    .iter()
                    .filter(|f| is_announced(f))
                    .map(|f| notification(self.store.bucket(), m, f, published.get(&f.key)))
            })
            .collect();
        let mut backoff = BACKOFF_START;
        let mut attempt = 1;
        while !pending.is_empty() {
            match self.notifier.send(&pending).await {
                Ok(()) => {
                    self.telemetry.notifications_sent(pending.len());
                    pending.clear();
                }
                Err(e) => {
                    self.telemetry
                        .notifications_sent(pending.len().saturating_sub(e.failed.len()));
                    pending.retain(|n| e.failed.contains(&n.key));
                    self.telemetry
                        .notification_failed(pending.len(), attempt, &e);
                    if self.stopping.load(Ordering::Relaxed) && attempt >= 3 {
                        return Err(CommitError::NotifyAbandoned(pending.len(), e.to_string()));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    attempt += 1;
                }
            }
        }
        crate::failpoint::hit(crate::failpoint::AFTER_NOTIFY);
        for manifest in manifests {
            retry(
                "marker",
                &self.telemetry,
                ManifestError::is_retryable,
                || self.manifests.mark_notified(manifest),
            )
            .await?;
        }
        Ok(())
    }
}

/// Whether a committed file is announced to loaders: data files of the
/// sink's own prefix (not dead letters, not routed tenants').
pub fn is_announced(file: &ManifestFile) -> bool {
    file.kind.is_data() && file.tenant.is_none()
}

/// The announcement of a committed file; the same file always gets the
/// same body. `live_tag`: the ETag of the file's live copy, when it was
/// staged.
pub fn notification(
    bucket: &str,
    manifest: &Manifest,
    file: &ManifestFile,
    live_tag: Option<&String>,
) -> FileNotification {
    FileNotification {
        bucket: bucket.to_owned(),
        key: file.key.clone(),
        size: file.size,
        e_tag: live_tag.unwrap_or(&file.e_tag).clone(),
        event_time: manifest.committed_at.clone(),
        event: manifest.event.clone(),
        topic: manifest.topic.clone(),
        partition: manifest.partition,
        first_offset: file.first_offset,
        last_offset: file.last_offset,
        rows: file.rows,
    }
}
