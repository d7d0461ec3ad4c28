//! The commit protocol: how a checkpoint's rows become committed, exactly
//! once, published and announced.
//!
//! **The invariant this module keeps above all:** a partition's manifest
//! N+1 is never created while manifest N lacks its `.notified` marker.
//! Manifest N's files are published (copied to their live keys) and
//! announced, and its marker written, first — in normal running and after
//! recovery alike ([`Committer::commit_sealed`] empties the partition's
//! [`Outbox`] before it commits anything, and each partition's sealed
//! checkpoints go through it one after the other, [`crate::chain`]). So at any moment at most the last manifest of a
//! partition lacks its marker, and a successor that finishes it loses
//! nothing. Recovery does not rely on that alone: on assignment every
//! unmarked manifest of the partition is found, not only the last
//! ([`crate::manifest::Manifests::recover`]), and finished in order.
//!
//! Order of a checkpoint, per partition (the uploads of checkpoint N+1 may
//! run while N goes through steps 2–4):
//! 0. finish the outbox: manifests committed earlier (by this process, or
//!    found unmarked on assignment) whose marker is missing;
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
//! 5. (the run loop, asynchronously) commit `to + 1` to Kafka — advice for
//!    lag dashboards, never read back while a manifest exists.
//!
//! Other invariants:
//! - A record is committed iff a manifest's range holds it; ranges of a
//!   partition chain without gaps or overlaps ([`crate::checkpoint`]), because
//!   each starts where the one before ended and two manifests cannot share a
//!   start key.
//! - A file is visible to loaders only through a manifest: it is announced
//!   (and, when staged or streamed, copied to its live key) after its
//!   manifest exists, never before. Files uploaded by an attempt whose
//!   manifest was never written are orphans that no one announces.
//! - A writer that loses the race for a start key (a zombie after a
//!   rebalance, or a successor that was slower) is told so
//!   ([`PartitionOutcome::Fenced`]); it drops that partition's work and
//!   resumes after the winner's range.
//! - Publishing and announcing are idempotent: a manifest finished twice
//!   (a crash between its notifications and its marker) is announced twice
//!   with the same bodies — loaders may see a file twice (the key is in
//!   every message to dedupe on), never a file that is not committed.
//!
//! DESIGN.md lists what a crash between each step leaves behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use std::collections::{BTreeMap, HashMap};

use crate::buffer::{Body, FileKind, FinishedFile};
use crate::checkpoint::Range;
use crate::failpoint;
use crate::layout;
use crate::manifest::{
    CommitOutcome, FORMAT_VERSION, Manifest, ManifestError, ManifestFile, Manifests,
};
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
    #[error("a commit task ended unexpectedly: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(
        "stopping before {pending} notification(s) were accepted (they are re-sent on the next start): {source}"
    )]
    NotifyAbandoned {
        pending: usize,
        source: crate::notify::NotifyError,
    },
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
    /// Files uploading at once, all partitions (`storage.upload_concurrency`).
    pub uploads: Arc<tokio::sync::Semaphore>,
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

/// What a checkpoint seals for one partition: the offsets it read since
/// its last commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    pub partition: i32,
    pub range: Range,
    /// Records of the range that became neither a row nor a dead letter.
    pub skipped: u64,
}

/// What became of one partition's part of a checkpoint. Losing the race
/// and losing the partition are normal outcomes, not errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionOutcome {
    /// The manifest is written, and by the time the checkpoint returns its
    /// files are published and announced.
    Committed(Manifest),
    /// Another writer already committed a manifest starting at this range:
    /// resume after `other_to`.
    Fenced { other_writer: String, other_to: i64 },
    /// The partition was revoked while the checkpoint ran: nothing is
    /// committed for it, the new owner reads the range again, and what was
    /// uploaded for it stays an orphan.
    Revoked,
    /// Sealed before an earlier checkpoint of the partition was fenced:
    /// dropped with the rest of that epoch's work, uploads left as orphans.
    Dropped,
}

/// Committed manifests whose files are not yet published, announced and
/// marked — per partition, oldest first. A partition with a manifest here
/// gets no newer manifest until this one is finished.
#[derive(Debug, Default)]
pub struct Outbox {
    pending: BTreeMap<i32, Vec<Manifest>>,
}

impl Outbox {
    pub fn push(&mut self, manifest: Manifest) {
        let queue = self.pending.entry(manifest.partition).or_default();
        debug_assert!(
            queue
                .last()
                .is_none_or(|m| m.range.to <= manifest.range.from),
            "outbox of partition {} out of order",
            manifest.partition
        );
        queue.push(manifest);
    }

    /// Whether `partition` has a committed manifest not yet finished.
    pub fn holds(&self, partition: i32) -> bool {
        self.pending.contains_key(&partition)
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Every manifest, partition by partition, each partition's oldest first.
    fn manifests(&self) -> Vec<Manifest> {
        self.pending.values().flatten().cloned().collect()
    }
}

impl Committer {
    /// Step 2 and what follows it, for one sealed checkpoint of one
    /// partition whose files are `uploaded`: finish the outbox (manifests
    /// committed earlier whose marker is missing), create the manifest —
    /// unless the partition's `lease` was lost — and finish the outbox again
    /// (publish, announce, mark).
    pub async fn commit_sealed(
        &self,
        sealed: Sealed,
        uploaded: Vec<ManifestFile>,
        outbox: &mut Outbox,
        lease: &AtomicBool,
    ) -> Result<PartitionOutcome, CommitError> {
        // Manifests committed earlier come first: the partition may not get
        // a newer manifest before they are announced.
        self.finish(outbox).await?;
        if !lease.load(Ordering::SeqCst) {
            return Ok(PartitionOutcome::Revoked);
        }
        let manifest = Manifest {
            version: FORMAT_VERSION,
            event: self.event.clone(),
            topic: self.topic.clone(),
            partition: sealed.partition,
            range: sealed.range,
            files: uploaded,
            skipped: sealed.skipped,
            committed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            writer: self.writer.clone(),
        };
        let outcome = match self.commit(&manifest, outbox).await? {
            CommitOutcome::Committed => {
                failpoint::hit(failpoint::AFTER_MANIFEST);
                outbox.push(manifest.clone());
                PartitionOutcome::Committed(manifest)
            }
            CommitOutcome::Fenced {
                other_writer,
                other_to,
            } => PartitionOutcome::Fenced {
                other_writer,
                other_to,
            },
        };
        self.finish(outbox).await?;
        failpoint::hit(failpoint::AFTER_MARKERS);
        Ok(outcome)
    }

    /// Publishes, announces and marks every manifest of the outbox, in
    /// order, and empties it. Idempotent: what an earlier attempt (or a
    /// crashed process) did already is done again harmlessly.
    pub async fn finish(&self, outbox: &mut Outbox) -> Result<(), CommitError> {
        if outbox.is_empty() {
            return Ok(());
        }
        self.announce(&outbox.manifests()).await?;
        *outbox = Outbox::default();
        Ok(())
    }

    /// Step 1: uploads the files of one sealed checkpoint; at most
    /// `upload_concurrency` files are uploading at once across all
    /// partitions.
    pub async fn upload(&self, files: Vec<FinishedFile>) -> Result<Vec<ManifestFile>, CommitError> {
        let count = files.len().max(1);
        stream::iter(files.into_iter().map(|file| async {
            // The semaphore is never closed.
            let _permit = self.uploads.acquire().await.ok();
            self.upload_one(file).await
        }))
        .buffer_unordered(count)
        .try_collect()
        .await
    }

    async fn upload_one(&self, file: FinishedFile) -> Result<ManifestFile, CommitError> {
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
        Ok(ManifestFile {
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
        })
    }

    /// Step 2: the commit point for one partition.
    async fn commit(
        &self,
        manifest: &Manifest,
        outbox: &Outbox,
    ) -> Result<CommitOutcome, CommitError> {
        debug_assert!(
            !outbox.holds(manifest.partition),
            "partition {}: a manifest is created while an earlier one is not announced",
            manifest.partition
        );
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
    async fn announce(&self, manifests: &[Manifest]) -> Result<(), CommitError> {
        let published = self.publish(manifests).await?;
        let mut pending: Vec<FileNotification> = manifests
            .iter()
            .flat_map(|m| {
                m.files
                    .iter()
                    .filter(|f| is_announced(f))
                    .map(|f| notification(&*self.store, m, f, published.get(&f.key)))
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
                        return Err(CommitError::NotifyAbandoned {
                            pending: pending.len(),
                            source: e,
                        });
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    attempt += 1;
                }
            }
        }
        failpoint::hit(failpoint::AFTER_NOTIFY);
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
    store: &dyn ObjectStore,
    manifest: &Manifest,
    file: &ManifestFile,
    live_tag: Option<&String>,
) -> FileNotification {
    FileNotification {
        bucket: store.bucket().to_owned(),
        region: store.region().to_owned(),
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

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::manifest::CommitOutcome;
    use crate::notify::MemoryNotifier;
    use crate::store::{MemoryStore, ObjectMeta};

    /// A memory store that remembers the keys of its puts, in order, and
    /// holds back puts of keys containing a gated word until it is opened.
    #[derive(Debug, Default)]
    pub(crate) struct Recording {
        inner: MemoryStore,
        pub(crate) puts: Mutex<Vec<String>>,
        gates: Mutex<Vec<(String, Arc<tokio::sync::Notify>)>>,
        /// Puts of keys containing one of these words fail for good.
        pub(crate) failing: Mutex<Vec<String>>,
    }

    impl Recording {
        /// Puts of keys containing `word` wait until [`Recording::open`].
        pub(crate) fn gate(&self, word: &str) {
            let gate = (word.to_owned(), Arc::new(tokio::sync::Notify::new()));
            self.gates.lock().unwrap().push(gate);
        }

        pub(crate) fn open(&self, word: &str) {
            let mut gates = self.gates.lock().unwrap();
            if let Some(i) = gates.iter().position(|(w, _)| w == word) {
                gates.remove(i).1.notify_waiters();
            }
        }
    }

    #[async_trait]
    impl ObjectStore for Recording {
        async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<String, StoreError> {
            let gate = self
                .gates
                .lock()
                .unwrap()
                .iter()
                .find(|(word, _)| key.contains(word.as_str()))
                .map(|(_, gate)| gate.clone());
            if let Some(gate) = gate {
                let opened = gate.notified();
                // Opened between the lookup and here: go on.
                if self
                    .gates
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(_, g)| Arc::ptr_eq(g, &gate))
                {
                    opened.await;
                }
            }
            if self
                .failing
                .lock()
                .unwrap()
                .iter()
                .any(|w| key.contains(w.as_str()))
            {
                return Err(StoreError::Other {
                    op: "put",
                    key: key.to_owned(),
                    message: "refused by the test".to_owned(),
                    retryable: false,
                });
            }
            self.puts.lock().unwrap().push(key.to_owned());
            self.inner.put(key, body, mode).await
        }
        async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
            self.inner.get(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key).await
        }
        async fn copy(&self, from: &str, to: &str) -> Result<String, StoreError> {
            self.inner.copy(from, to).await
        }
        fn bucket(&self) -> &str {
            "b"
        }
    }

    pub(crate) fn committer(
        store: Arc<dyn ObjectStore>,
        notifier: Arc<MemoryNotifier>,
    ) -> Committer {
        let telemetry = Telemetry::new("e");
        Committer {
            manifests: Manifests::new(store.clone(), "p", "e", "t"),
            streams: Streams::new(
                store.clone(),
                tokio::runtime::Handle::current(),
                "p/_sluice/streams/e/w/".to_owned(),
                1,
                telemetry.clone(),
            ),
            store,
            prefix: "p".into(),
            event: "e".into(),
            topic: "t".into(),
            writer: "w".into(),
            notifier,
            staging: None,
            tenancy: Tenancy::default(),
            uploads: Arc::new(tokio::sync::Semaphore::new(2)),
            telemetry,
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(crate) fn manifest(from: i64, to: i64, file: &str) -> Manifest {
        Manifest {
            version: FORMAT_VERSION,
            event: "e".into(),
            topic: "t".into(),
            partition: 0,
            range: Range { from, to },
            files: vec![ManifestFile {
                key: file.into(),
                staged_key: None,
                kind: FileKind::Data,
                tenant: None,
                rows: 1,
                size: 1,
                e_tag: "\"x\"".into(),
                first_offset: to,
                last_offset: to,
                min_event_time_micros: 0,
                max_event_time_micros: 0,
                schema_id: None,
            }],
            skipped: 0,
            committed_at: "2026-01-01T00:00:00.000Z".into(),
            writer: "crashed".into(),
        }
    }

    /// A manifest a predecessor committed but did not announce is
    /// announced and marked before the partition's next manifest exists.
    #[tokio::test]
    async fn an_unannounced_manifest_is_finished_before_the_next_is_created() {
        let store = Arc::new(Recording::default());
        let notifier = Arc::new(MemoryNotifier::default());
        let committer = committer(store.clone(), notifier.clone());
        let first = manifest(-1, 9, "p/e/f1.parquet");
        assert_eq!(
            committer.manifests.commit(&first).await.unwrap(),
            CommitOutcome::Committed
        );
        let recovered = committer.manifests.recover(0).await.unwrap();
        assert_eq!(recovered.unmarked, vec![first.clone()]);
        let mut outbox = Outbox::default();
        recovered.unmarked.into_iter().for_each(|m| outbox.push(m));

        let sealed = Sealed {
            partition: 0,
            range: Range { from: 9, to: 20 },
            skipped: 11,
        };
        let lease = AtomicBool::new(true);
        let outcome = committer
            .commit_sealed(sealed, Vec::new(), &mut outbox, &lease)
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            PartitionOutcome::Committed(m) if m.range == sealed.range
        ));
        assert!(outbox.is_empty());
        let puts = store.puts.lock().unwrap().clone();
        let position = |suffix: &str| {
            puts.iter()
                .position(|k| k.ends_with(suffix))
                .unwrap_or_else(|| panic!("no put of {suffix}: {puts:?}"))
        };
        assert!(
            position("00000000000000000000.notified") < position("00000000000000000010.json"),
            "the first manifest is marked before the second is created: {puts:?}"
        );
        assert!(position("00000000000000000010.json") < position("00000000000000000010.notified"));
        let sent = notifier.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1, "the recovered manifest's file is announced");
        assert!(sent[0].contains("f1.parquet"));
        let recovered = committer.manifests.recover(0).await.unwrap();
        assert!(recovered.unmarked.is_empty());
        assert_eq!(recovered.last.map(|m| m.range.to), Some(20));
    }

    /// The commit point refuses (in debug builds) a manifest whose
    /// partition still has an unannounced one.
    #[tokio::test]
    #[should_panic(expected = "while an earlier one is not announced")]
    async fn creating_a_manifest_over_an_unannounced_one_is_a_bug() {
        let store = Arc::new(Recording::default());
        let committer = committer(store, Arc::new(MemoryNotifier::default()));
        let mut outbox = Outbox::default();
        outbox.push(manifest(-1, 9, "p/e/f1.parquet"));
        let _ = committer
            .commit(&manifest(9, 20, "p/e/f2.parquet"), &outbox)
            .await;
    }
}
