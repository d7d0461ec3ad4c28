//! A local directory as the store: for trying sluice without S3.
//! Objects are files under the root; writes go to a temporary file first and
//! are renamed (or hard-linked, for create-only writes) into place, so a
//! reader never sees half a file.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectMeta, ObjectStore, PutMode, StoreError, content_tag};

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> LocalStore {
        LocalStore { root }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        if key.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(other(
                "resolve",
                key,
                "key has an empty or `..` segment".into(),
                false,
            ));
        }
        Ok(self.root.join(key))
    }
}

fn other(op: &'static str, key: &str, message: String, retryable: bool) -> StoreError {
    StoreError::Other {
        op,
        key: key.to_owned(),
        message,
        retryable,
    }
}

fn io_error(op: &'static str, key: &str, e: std::io::Error) -> StoreError {
    match e.kind() {
        ErrorKind::NotFound => StoreError::NotFound(key.to_owned()),
        ErrorKind::AlreadyExists => StoreError::AlreadyExists(key.to_owned()),
        _ => other(op, key, e.to_string(), false),
    }
}

fn put_file(path: &Path, body: &[u8], mode: PutMode) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, body)?;
    let placed = match mode {
        PutMode::Overwrite => std::fs::rename(&tmp, path),
        PutMode::Create => std::fs::hard_link(&tmp, path),
    };
    let _ = std::fs::remove_file(&tmp);
    placed
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if !path
            .extension()
            .is_some_and(|e| e.to_string_lossy().starts_with("tmp-"))
        {
            out.push(path);
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<String, StoreError> {
        let path = self.path(key)?;
        let tag = content_tag(&body);
        tokio::task::spawn_blocking(move || put_file(&path, &body, mode))
            .await
            .map_err(|e| other("put", key, e.to_string(), false))?
            .map_err(|e| io_error("put", key, e))?;
        Ok(tag)
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        tokio::fs::read(&path)
            .await
            .map(Bytes::from)
            .map_err(|e| io_error("get", key, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let root = self.root.clone();
        let files = tokio::task::spawn_blocking(move || {
            let mut files = Vec::new();
            walk(&root, &mut files).map(|_| files)
        })
        .await
        .map_err(|e| other("list", prefix, e.to_string(), false))?
        .map_err(|e| io_error("list", prefix, e))?;
        let mut out = Vec::new();
        for path in files {
            let Ok(relative) = path.strip_prefix(&self.root) else {
                continue;
            };
            let key = relative.to_string_lossy().replace('\\', "/");
            if !key.starts_with(prefix) {
                continue;
            }
            let body = tokio::fs::read(&path)
                .await
                .map_err(|e| io_error("list", &key, e))?;
            let last_modified = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            out.push(ObjectMeta {
                size: body.len() as u64,
                e_tag: content_tag(&body),
                key,
                last_modified,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("delete", key, e)),
        }
    }

    async fn copy(&self, from: &str, to: &str) -> Result<String, StoreError> {
        let body = self.get(from).await?;
        self.put(to, body, PutMode::Overwrite).await
    }

    fn bucket(&self) -> &str {
        "local"
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conforms() {
        let dir = tempfile::tempdir().unwrap();
        super::super::conformance::run(&super::LocalStore::new(dir.path().to_owned())).await;
    }
}
