//! An in-memory store for component tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectMeta, ObjectStore, PutMode, StoreError, content_tag};

#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, (Bytes, String)>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Bytes, String)>> {
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
        objects.insert(key.to_owned(), (body, tag.clone()));
        Ok(tag)
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.objects()
            .get(key)
            .map(|(body, _)| body.clone())
            .ok_or_else(|| StoreError::NotFound(key.to_owned()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        Ok(self
            .objects()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (body, tag))| ObjectMeta {
                key: k.clone(),
                size: body.len() as u64,
                e_tag: tag.clone(),
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.objects().remove(key);
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
