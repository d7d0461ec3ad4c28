//! An in-memory store for component tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectMeta, ObjectStore, PutMode, StoreError, Upload, content_tag, now_secs};

#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Object>>,
    /// Open multipart uploads by id: the upload and its parts by number.
    uploads: Mutex<HashMap<String, OpenUpload>>,
    next_upload: AtomicU64,
}

/// An upload and its parts by number.
type OpenUpload = (Upload, BTreeMap<i32, Bytes>);

#[derive(Debug, Clone)]
struct Object {
    body: Bytes,
    tag: String,
    modified: i64,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Object>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open_uploads(&self) -> std::sync::MutexGuard<'_, HashMap<String, OpenUpload>> {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<String, StoreError> {
        let mut objects = self.objects();
        if mode == PutMode::Create && objects.contains_key(key) {
            return Err(StoreError::AlreadyExists(key.to_owned()));
        }
        let tag = content_tag(&body);
        let modified = now_secs();
        objects.insert(
            key.to_owned(),
            Object {
                body,
                tag: tag.clone(),
                modified,
            },
        );
        Ok(tag)
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.objects()
            .get(key)
            .map(|o| o.body.clone())
            .ok_or_else(|| StoreError::NotFound(key.to_owned()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        Ok(self
            .objects()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| ObjectMeta {
                key: k.clone(),
                size: o.body.len() as u64,
                e_tag: o.tag.clone(),
                last_modified: o.modified,
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.objects().remove(key);
        Ok(())
    }

    async fn copy(&self, from: &str, to: &str) -> Result<String, StoreError> {
        let mut objects = self.objects();
        let mut object = objects
            .get(from)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(from.to_owned()))?;
        object.modified = now_secs();
        let tag = object.tag.clone();
        objects.insert(to.to_owned(), object);
        Ok(tag)
    }

    fn multipart(&self) -> bool {
        true
    }

    async fn create_upload(&self, key: &str) -> Result<Upload, StoreError> {
        let upload = Upload {
            key: key.to_owned(),
            id: format!(
                "upload-{}",
                self.next_upload.fetch_add(1, Ordering::Relaxed)
            ),
            initiated: now_secs(),
        };
        self.open_uploads()
            .insert(upload.id.clone(), (upload.clone(), BTreeMap::new()));
        Ok(upload)
    }

    async fn upload_part(
        &self,
        upload: &Upload,
        number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        let tag = content_tag(&body);
        self.open_uploads()
            .get_mut(&upload.id)
            .ok_or_else(|| StoreError::NotFound(upload.key.clone()))?
            .1
            .insert(number, body);
        Ok(tag)
    }

    async fn complete_upload(
        &self,
        upload: &Upload,
        parts: &[(i32, String)],
    ) -> Result<String, StoreError> {
        let (_, held) = self
            .open_uploads()
            .remove(&upload.id)
            .ok_or_else(|| StoreError::NotFound(upload.key.clone()))?;
        let mut body = Vec::new();
        for (number, tag) in parts {
            match held.get(number) {
                Some(part) if content_tag(part) == *tag => body.extend_from_slice(part),
                _ => {
                    return Err(StoreError::Other {
                        op: "put",
                        key: upload.key.clone(),
                        message: format!("part {number} was not uploaded with ETag {tag}"),
                        retryable: false,
                    });
                }
            }
        }
        self.put(&upload.key, Bytes::from(body), PutMode::Overwrite)
            .await
    }

    async fn uploads(&self, prefix: &str) -> Result<Vec<Upload>, StoreError> {
        let mut open: Vec<Upload> = self
            .open_uploads()
            .values()
            .filter(|(u, _)| u.key.starts_with(prefix))
            .map(|(u, _)| u.clone())
            .collect();
        open.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(open)
    }

    async fn abort_upload(&self, upload: &Upload) -> Result<(), StoreError> {
        self.open_uploads().remove(&upload.id);
        Ok(())
    }

    fn bucket(&self) -> &str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conforms() {
        super::super::conformance::run(&super::MemoryStore::new()).await;
    }
}
