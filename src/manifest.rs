//! Manifests: the commit record of one checkpoint of one partition, stored
//! next to the data. Writing one is the commit point.
//!
//! A manifest covering `(from, to]` lives at a key derived from `from + 1`
//! and is created with `If-None-Match: *`. Two writers that both believe the
//! partition's progress ends at `from` (a paused zombie and its successor)
//! race for the same key: exactly one wins, the other is told it was fenced.
//! After a manifest's files are announced, an empty `.notified` marker is
//! written beside it; a manifest without one is re-announced on recovery.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::buffer::FileKind;
use crate::checkpoint::Range;
use crate::layout;
use crate::store::{ObjectStore, PutMode, StoreError};

pub const FORMAT_VERSION: u32 = 1;

/// One file a manifest makes visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Where loaders find the file.
    pub key: String,
    /// Where it was uploaded, when that differs (bucket-notifications mode):
    /// it is copied to `key` after the manifest is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_key: Option<String>,
    /// Event rows (`data`, announced) or `dead_letters` (kept, not announced).
    #[serde(default, skip_serializing_if = "FileKind::is_data")]
    pub kind: FileKind,
    /// Set for files of a tenant routed to a prefix of its own: committed,
    /// not announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub rows: u64,
    pub size: u64,
    pub e_tag: String,
    pub first_offset: i64,
    pub last_offset: i64,
    pub min_event_time_micros: i64,
    pub max_event_time_micros: i64,
    /// The registry's id of the schema version the rows were written with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_id: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub event: String,
    pub topic: String,
    pub partition: i32,
    /// The Kafka offsets this commit covers: `(from, to]`.
    pub range: Range,
    pub files: Vec<ManifestFile>,
    /// Records in the range that were counted and skipped (undecodable).
    pub skipped: u64,
    /// RFC 3339 time of the commit; also the `eventTime` of its notifications.
    pub committed_at: String,
    /// Identifies the process that wrote it (diagnostics, and telling our own
    /// earlier attempt from a competitor's after a lost response).
    pub writer: String,
}

/// What became of a commit attempt. Losing the race is a normal outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// Another writer already committed a manifest starting at this offset.
    Fenced {
        other_writer: String,
        other_to: i64,
    },
}

/// A partition's commits as found in the store on assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The partition's last manifest, if it has any: where reading resumes.
    pub last: Option<Manifest>,
    /// Every manifest without its `.notified` marker, in offset order: the
    /// new owner publishes and announces them before it commits anything.
    /// Normally none, or the last one (a crash between its commit and its
    /// marker).
    pub unmarked: Vec<Manifest>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("manifest {key} is not readable: {message}")]
    Corrupt { key: String, message: String },
}

impl ManifestError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ManifestError::Store(e) if e.is_retryable())
    }
}

/// Reads and writes the manifests of one sink.
#[derive(Debug, Clone)]
pub struct Manifests {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    event: String,
    topic: String,
}

impl Manifests {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, event: &str, topic: &str) -> Manifests {
        Manifests {
            store,
            prefix: prefix.to_owned(),
            event: event.to_owned(),
            topic: topic.to_owned(),
        }
    }

    fn key(&self, partition: i32, start: i64) -> String {
        layout::manifest_key(&self.prefix, &self.event, &self.topic, partition, start)
    }

    /// Creates the manifest unless one starting at the same offset exists.
    pub async fn commit(&self, manifest: &Manifest) -> Result<CommitOutcome, ManifestError> {
        let key = self.key(manifest.partition, manifest.range.start());
        let body = serde_json::to_vec_pretty(manifest).map_err(|e| ManifestError::Corrupt {
            key: key.clone(),
            message: e.to_string(),
        })?;
        match self
            .store
            .put(&key, Bytes::from(body), PutMode::Create)
            .await
        {
            Ok(_) => Ok(CommitOutcome::Committed),
            Err(StoreError::AlreadyExists(_)) => {
                let existing = self.read(&key).await?;
                // A retried attempt whose first try succeeded finds itself.
                if existing == *manifest {
                    Ok(CommitOutcome::Committed)
                } else {
                    Ok(CommitOutcome::Fenced {
                        other_writer: existing.writer,
                        other_to: existing.range.to,
                    })
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn mark_notified(&self, manifest: &Manifest) -> Result<(), ManifestError> {
        let key = layout::notified_key(&self.key(manifest.partition, manifest.range.start()));
        self.store
            .put(&key, Bytes::new(), PutMode::Overwrite)
            .await?;
        Ok(())
    }

    async fn read(&self, key: &str) -> Result<Manifest, ManifestError> {
        let body = self.store.get(key).await?;
        serde_json::from_slice(&body).map_err(|e| ManifestError::Corrupt {
            key: key.to_owned(),
            message: e.to_string(),
        })
    }

    /// The partition's last manifest and every manifest without a marker.
    /// One listing of the partition's folder; reads only those manifests.
    pub async fn recover(&self, partition: i32) -> Result<Recovered, ManifestError> {
        let dir = layout::manifest_dir(&self.prefix, &self.event, &self.topic, partition);
        let listed = self.store.list(&dir).await?;
        let markers: std::collections::HashSet<&str> = listed
            .iter()
            .map(|m| m.key.as_str())
            .filter(|k| k.ends_with(".notified"))
            .collect();
        let manifests: Vec<&str> = listed
            .iter()
            .map(|m| m.key.as_str())
            .filter(|k| k.ends_with(".json"))
            .collect();
        let mut recovered = Recovered::default();
        for (i, key) in manifests.iter().enumerate() {
            let is_last = i + 1 == manifests.len();
            let marked = markers.contains(layout::notified_key(key).as_str());
            if marked && !is_last {
                continue;
            }
            let manifest = self.read(key).await?;
            if !marked {
                recovered.unmarked.push(manifest.clone());
            }
            if is_last {
                recovered.last = Some(manifest);
            }
        }
        Ok(recovered)
    }

    /// Every manifest of the sink, all partitions, in key order.
    pub async fn all(&self) -> Result<Vec<Manifest>, ManifestError> {
        let dir = layout::manifests_root(&self.prefix, &self.event, &self.topic);
        let mut out = Vec::new();
        for meta in self.store.list(&dir).await? {
            if meta.key.ends_with(".json") {
                out.push(self.read(&meta.key).await?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn manifest(partition: i32, from: i64, to: i64, writer: &str) -> Manifest {
        Manifest {
            version: FORMAT_VERSION,
            event: "e".into(),
            topic: "t".into(),
            partition,
            range: Range { from, to },
            files: vec![],
            skipped: 0,
            committed_at: "2026-01-01T00:00:00Z".into(),
            writer: writer.into(),
        }
    }

    #[tokio::test]
    async fn first_writer_wins_and_the_other_is_fenced() {
        let m = Manifests::new(Arc::new(MemoryStore::new()), "p", "e", "t");
        let ours = manifest(0, -1, 9, "a");
        assert_eq!(m.commit(&ours).await.unwrap(), CommitOutcome::Committed);
        // Our own retry after a lost response is still a commit.
        assert_eq!(m.commit(&ours).await.unwrap(), CommitOutcome::Committed);
        let zombie = manifest(0, -1, 15, "b");
        assert_eq!(
            m.commit(&zombie).await.unwrap(),
            CommitOutcome::Fenced {
                other_writer: "a".into(),
                other_to: 9
            }
        );
    }

    #[tokio::test]
    async fn recovery_finds_the_last_manifest_and_every_unmarked_one_in_order() {
        let m = Manifests::new(Arc::new(MemoryStore::new()), "", "e", "t");
        assert_eq!(m.recover(0).await.unwrap(), Recovered::default());
        let first = manifest(0, -1, 9, "a");
        let second = manifest(0, 9, 120, "a");
        let third = manifest(0, 120, 121, "b");
        m.commit(&first).await.unwrap();
        m.mark_notified(&first).await.unwrap();
        m.commit(&second).await.unwrap();
        m.commit(&manifest(1, 4, 5, "a")).await.unwrap();
        let recovered = m.recover(0).await.unwrap();
        assert_eq!(recovered.last, Some(second.clone()));
        assert_eq!(recovered.unmarked, vec![second.clone()]);
        // A manifest committed while an older one lacked its marker (what
        // an earlier release could leave): both are found, oldest first.
        m.commit(&third).await.unwrap();
        let recovered = m.recover(0).await.unwrap();
        assert_eq!(recovered.last, Some(third.clone()));
        assert_eq!(recovered.unmarked, vec![second.clone(), third.clone()]);
        m.mark_notified(&second).await.unwrap();
        m.mark_notified(&third).await.unwrap();
        let recovered = m.recover(0).await.unwrap();
        assert_eq!(recovered.last, Some(third));
        assert!(recovered.unmarked.is_empty());
        assert_eq!(m.all().await.unwrap().len(), 4);
    }
}
