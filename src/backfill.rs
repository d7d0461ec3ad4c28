//! Announcing committed files again: when the warehouse side lost messages
//! or was down longer than the queue keeps them. Files are found from the
//! manifests — the record of what is committed — never by listing data,
//! and each gets the same message body it got when it was first announced.

use crate::commit;
use crate::manifest::{ManifestError, Manifests};
use crate::notify::FileNotification;
use crate::store::{ObjectStore, StoreError, e_tag_of};

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("committed file {0} is not in the store (deleted after its commit?)")]
    Missing(String),
}

/// The announcements of every committed data file whose event times
/// overlap `[from, to)` (µs since the epoch), in manifest order.
pub async fn announcements(
    store: &dyn ObjectStore,
    manifests: &Manifests,
    from_micros: i64,
    to_micros: i64,
) -> Result<Vec<FileNotification>, BackfillError> {
    let mut out = Vec::new();
    for manifest in manifests.all().await? {
        for file in manifest.files.iter().filter(|f| commit::is_announced(f)) {
            if file.min_event_time_micros >= to_micros || file.max_event_time_micros < from_micros {
                continue;
            }
            // A staged file's live copy may carry another ETag than the
            // upload had; the first announcement named the live one.
            let live_tag = match &file.staged_key {
                None => None,
                Some(_) => Some(
                    e_tag_of(store, &file.key)
                        .await?
                        .ok_or_else(|| BackfillError::Missing(file.key.clone()))?,
                ),
            };
            out.push(commit::notification(
                store,
                &manifest,
                file,
                live_tag.as_ref(),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::buffer::FileKind;
    use crate::checkpoint::Range;
    use crate::manifest::{FORMAT_VERSION, Manifest, ManifestFile};
    use crate::store::{MemoryStore, PutMode};

    fn file(key: &str, min: i64, max: i64, kind: FileKind, staged: bool) -> ManifestFile {
        ManifestFile {
            key: key.into(),
            staged_key: staged.then(|| format!("stage/{key}")),
            kind,
            tenant: None,
            rows: 1,
            size: 1,
            e_tag: "\"upload\"".into(),
            first_offset: 0,
            last_offset: 0,
            min_event_time_micros: min,
            max_event_time_micros: max,
            schema_id: None,
        }
    }

    #[tokio::test]
    async fn files_overlapping_the_window_with_their_live_etag() {
        let store = Arc::new(MemoryStore::new());
        let manifests = Manifests::new(store.clone(), "raw", "ev", "t");
        let files = vec![
            file("raw/ev/a.parquet", 0, 99, FileKind::Data, false),
            file("raw/ev/b.parquet", 100, 199, FileKind::Data, true),
            file("raw/ev/c.parquet", 200, 299, FileKind::Data, false),
            file(
                "raw/_dead_letters/ev/d.parquet",
                100,
                199,
                FileKind::DeadLetters,
                false,
            ),
        ];
        store
            .put(
                "raw/ev/b.parquet",
                Bytes::from_static(b"live"),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        let manifest = Manifest {
            version: FORMAT_VERSION,
            event: "ev".into(),
            topic: "t".into(),
            partition: 0,
            range: Range { from: -1, to: 9 },
            files,
            skipped: 0,
            committed_at: "2026-01-01T00:00:00Z".into(),
            writer: "w".into(),
        };
        manifests.commit(&manifest).await.unwrap();
        let found = announcements(&*store, &manifests, 150, 200).await.unwrap();
        let keys: Vec<&str> = found.iter().map(|n| n.key.as_str()).collect();
        assert_eq!(keys, ["raw/ev/b.parquet"]);
        assert_ne!(found[0].e_tag, "\"upload\"", "the live copy's ETag");
        let wide = announcements(&*store, &manifests, 99, 200).await.unwrap();
        assert_eq!(wide.len(), 2, "the window's ends: [from, to)");
        assert!(
            announcements(&*store, &manifests, 300, 400)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
