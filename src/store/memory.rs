//! An in-memory store for component tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectMeta, ObjectStore, PutMode, StoreError, content_tag, now_secs};

#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Object>>,
}

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
