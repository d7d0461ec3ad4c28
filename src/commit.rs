//! The checkpoint: finished files → store → (Kafka offsets) → notifications.
//!
//! Invariants this module keeps today:
//! - A file is announced only after its upload succeeded.
//! - Kafka offsets are committed (by the run loop, between [`Committer::upload`]
//!   and [`Committer::announce`]) only after every file holding the records
//!   before them is in the store, so a crash loses nothing: at worst records
//!   after the last offset commit are read and written again (at least once).
//! - Data keys are deterministic (topic, partition, first and last offset),
//!   so a retried upload overwrites only its own earlier attempt.
//!
//! Exactly-once (progress stored with the data, fencing) replaces the
//! Kafka-offset step; see DESIGN.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::buffer::FinishedFile;
use crate::layout;
use crate::notify::{FileNotification, Notifier};
use crate::store::{ObjectStore, PutMode, StoreError};
use crate::telemetry::Telemetry;

/// Upload attempts per file before the checkpoint fails.
const UPLOAD_ATTEMPTS: u32 = 8;
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("upload failed: {0}")]
    Upload(#[from] StoreError),
    #[error("shutting down before {0} notification(s) were accepted: {1}")]
    NotifyAbandoned(usize, String),
}

/// A file that is in the store.
#[derive(Debug, Clone)]
pub struct UploadedFile {
    pub key: String,
    pub e_tag: String,
    pub size: u64,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub rows: u64,
}

/// Uploads and announces the files of a checkpoint.
#[derive(Debug)]
pub struct Committer {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: String,
    pub event: String,
    pub topic: String,
    pub notifier: Arc<dyn Notifier>,
    pub concurrency: usize,
    pub telemetry: Telemetry,
    /// Set on shutdown: notification retries give up instead of waiting on.
    pub stopping: Arc<AtomicBool>,
}

impl Committer {
    /// Uploads every file, at most `concurrency` at a time; retryable
    /// errors are retried with backoff.
    pub async fn upload(&self, files: Vec<FinishedFile>) -> Result<Vec<UploadedFile>, CommitError> {
        stream::iter(files.into_iter().map(|file| self.upload_one(file)))
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await
    }

    async fn upload_one(&self, file: FinishedFile) -> Result<UploadedFile, CommitError> {
        let key = layout::data_key(
            &self.prefix,
            &self.event,
            file.hour,
            &self.topic,
            file.partition,
            file.first_offset,
            file.last_offset,
        );
        let size = file.bytes.len() as u64;
        let body = Bytes::from(file.bytes);
        let started = Instant::now();
        let mut backoff = BACKOFF_START;
        let mut attempt = 1;
        let e_tag = loop {
            match self.store.put(&key, body.clone(), PutMode::Overwrite).await {
                Ok(tag) => break tag,
                Err(e) if e.is_retryable() && attempt < UPLOAD_ATTEMPTS => {
                    self.telemetry.upload_retry(&key, attempt, &e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.telemetry
            .file_uploaded(&key, file.rows, size, started.elapsed());
        Ok(UploadedFile {
            key,
            e_tag,
            size,
            partition: file.partition,
            first_offset: file.first_offset,
            last_offset: file.last_offset,
            rows: file.rows,
        })
    }

    /// Sends one notification per file. Failures are retried with backoff
    /// until they succeed or the process is stopping.
    pub async fn announce(&self, files: &[UploadedFile]) -> Result<(), CommitError> {
        let event_time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut pending: Vec<FileNotification> = files
            .iter()
            .map(|f| FileNotification {
                bucket: self.store.bucket().to_owned(),
                key: f.key.clone(),
                size: f.size,
                e_tag: f.e_tag.clone(),
                event_time: event_time.clone(),
                event: self.event.clone(),
                topic: self.topic.clone(),
                partition: f.partition,
                first_offset: f.first_offset,
                last_offset: f.last_offset,
                rows: f.rows,
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
                        .notifications_sent(pending.len() - e.failed.len());
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
        Ok(())
    }
}
