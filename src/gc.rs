//! Orphans: data files that no manifest lists. They come from attempts that
//! uploaded and then crashed before their manifest, or lost the commit to
//! another writer. No one announces them; this module finds and removes
//! them. Only files older than a threshold count, so a checkpoint in flight
//! (uploaded, manifest not yet written) is never touched.

use std::collections::HashSet;
use std::time::Duration;

use crate::layout;
use crate::manifest::{ManifestError, Manifests};
use crate::store::{ObjectMeta, ObjectStore, StoreError, Upload, now_secs};

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every prefix where the sink writes files: data, dead letters, streamed
/// files and (bucket-notifications mode) staging.
fn roots(prefix: &str, event: &str, staging: Option<&str>) -> Vec<String> {
    let mut roots = vec![
        layout::data_root(prefix, event),
        layout::dead_letters_root(prefix, event),
        layout::streams_root(prefix, event),
    ];
    roots.extend(staging.map(|s| format!("{s}/")));
    roots
}

/// Data files under `<prefix>/<event>/`, streamed files under
/// [`layout::streams_root`] (and the staging prefix, if any) that no
/// manifest lists and that are older than `older_than`.
pub async fn find_orphans(
    store: &dyn ObjectStore,
    manifests: &Manifests,
    prefix: &str,
    event: &str,
    staging: Option<&str>,
    older_than: Duration,
) -> Result<Vec<ObjectMeta>, GcError> {
    // Listing data before manifests: a file committed in between is then
    // seen in a manifest, never mistaken for an orphan.
    let mut data = Vec::new();
    for root in roots(prefix, event, staging) {
        data.extend(store.list(&root).await?);
    }
    let listed: HashSet<String> = manifests
        .all()
        .await?
        .into_iter()
        .flat_map(|m| m.files.into_iter())
        .flat_map(|f| [Some(f.key), f.staged_key].into_iter().flatten())
        .collect();
    let cutoff = now_secs() - older_than.as_secs() as i64;
    Ok(data
        .into_iter()
        .filter(|o| o.key.ends_with(".parquet"))
        .filter(|o| !listed.contains(&o.key))
        .filter(|o| o.last_modified <= cutoff)
        .collect())
}

/// Multipart uploads under the sink's data, dead-letter, streams and
/// staging prefixes begun at least `older_than` ago and never completed: left by a
/// process that died mid-upload (a failed upload aborts its own).
pub async fn find_abandoned_uploads(
    store: &dyn ObjectStore,
    prefix: &str,
    event: &str,
    staging: Option<&str>,
    older_than: Duration,
) -> Result<Vec<Upload>, GcError> {
    let mut uploads = Vec::new();
    for root in roots(prefix, event, staging) {
        uploads.extend(store.uploads(&root).await?);
    }
    let cutoff = now_secs() - older_than.as_secs() as i64;
    Ok(uploads
        .into_iter()
        .filter(|u| u.initiated <= cutoff)
        .collect())
}

pub async fn abort(store: &dyn ObjectStore, uploads: &[Upload]) -> Result<(), GcError> {
    for upload in uploads {
        store.abort_upload(upload).await?;
    }
    Ok(())
}

pub async fn delete(store: &dyn ObjectStore, orphans: &[ObjectMeta]) -> Result<(), GcError> {
    for orphan in orphans {
        store.delete(&orphan.key).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::checkpoint::Range;
    use crate::manifest::{FORMAT_VERSION, Manifest, ManifestFile};
    use crate::store::{MemoryStore, PutMode};

    #[tokio::test]
    async fn only_unlisted_files_are_orphans() {
        let store = Arc::new(MemoryStore::new());
        let manifests = Manifests::new(store.clone(), "raw", "ev", "t");
        for key in [
            "raw/ev/dt=x/hr=00/t-0-1-2.parquet",
            "raw/ev/dt=x/hr=00/t-0-1-5.parquet",
        ] {
            store
                .put(key, Bytes::from_static(b"x"), PutMode::Overwrite)
                .await
                .unwrap();
        }
        let file = |key: &str| ManifestFile {
            key: key.into(),
            staged_key: None,
            kind: Default::default(),
            tenant: None,
            rows: 1,
            size: 1,
            e_tag: String::new(),
            first_offset: 1,
            last_offset: 5,
            min_event_time_micros: 0,
            max_event_time_micros: 0,
            schema_id: None,
        };
        manifests
            .commit(&Manifest {
                version: FORMAT_VERSION,
                event: "ev".into(),
                topic: "t".into(),
                partition: 0,
                range: Range { from: 0, to: 5 },
                files: vec![file("raw/ev/dt=x/hr=00/t-0-1-5.parquet")],
                skipped: 0,
                committed_at: String::new(),
                writer: "w".into(),
            })
            .await
            .unwrap();
        let orphans = find_orphans(&*store, &manifests, "raw", "ev", None, Duration::ZERO)
            .await
            .unwrap();
        let keys: Vec<_> = orphans.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["raw/ev/dt=x/hr=00/t-0-1-2.parquet"]);
        // Young files are left alone.
        let young = find_orphans(
            &*store,
            &manifests,
            "raw",
            "ev",
            None,
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
        assert!(young.is_empty());
        delete(&*store, &orphans).await.unwrap();
        assert_eq!(store.list("raw/ev/").await.unwrap().len(), 1);
    }
}
