//! Object storage: S3, a local directory, or memory (tests).
//!
//! The commit code talks to [`ObjectStore`] and matches on what an error
//! *means* ([`StoreError`]), never on a backend's error codes. Backends do
//! not retry beyond what their SDK does; callers decide with
//! [`StoreError::is_retryable`].

mod local;
mod memory;
mod s3;

pub mod conformance;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use local::LocalStore;
pub use memory::MemoryStore;
pub use s3::S3Store;

use crate::config::{Config, Encryption, StorageUrl};
use crate::telemetry::Telemetry;

/// How a put treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Fail with [`StoreError::AlreadyExists`] if the key exists
    /// (S3 `If-None-Match: *`).
    Create,
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub key: String,
    pub id: String,
    /// Seconds since the epoch.
    pub initiated: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub e_tag: String,
    /// Seconds since the Unix epoch.
    pub last_modified: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object {0} already exists")]
    AlreadyExists(String),
    #[error("{op} {key}: {message}")]
    Other {
        op: &'static str,
        key: String,
        message: String,
        retryable: bool,
    },
}

impl StoreError {
    /// Whether trying the same call again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Other {
                retryable: true,
                ..
            }
        )
    }
}

#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Writes `body` at `key` and returns the object's ETag.
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<String, StoreError>;
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;
    /// Deleting a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Copies `from` to `to` inside the store (server-side on S3) and returns
    /// the new object's ETag.
    async fn copy(&self, from: &str, to: &str) -> Result<String, StoreError>;

    /// Whether the store takes an object in parts ([`Self::create_upload`],
    /// [`Self::upload_part`], [`Self::complete_upload`]). Without, callers
    /// put whole bodies.
    fn multipart(&self) -> bool {
        false
    }

    /// Begins a multipart upload to `key`.
    async fn create_upload(&self, key: &str) -> Result<Upload, StoreError> {
        Err(no_multipart(key))
    }

    /// Uploads part `number` (from 1) and returns its ETag. Every part but
    /// the last must be at least [`MIN_PART_BYTES`].
    async fn upload_part(
        &self,
        upload: &Upload,
        _number: i32,
        _body: Bytes,
    ) -> Result<String, StoreError> {
        Err(no_multipart(&upload.key))
    }

    /// Joins `parts` (number, ETag; in number order) into the object and
    /// returns its ETag.
    async fn complete_upload(
        &self,
        upload: &Upload,
        _parts: &[(i32, String)],
    ) -> Result<String, StoreError> {
        Err(no_multipart(&upload.key))
    }

    /// Multipart uploads begun under `prefix` and neither completed nor
    /// aborted (none for stores without them).
    async fn uploads(&self, _prefix: &str) -> Result<Vec<Upload>, StoreError> {
        Ok(Vec::new())
    }

    async fn abort_upload(&self, _upload: &Upload) -> Result<(), StoreError> {
        Ok(())
    }

    /// The bucket name announced in notifications.
    fn bucket(&self) -> &str;

    /// The region announced in notifications (S3: the client's, which
    /// signs for the bucket's region).
    fn region(&self) -> &str {
        ""
    }
}

/// S3's smallest part but the last.
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;

fn no_multipart(key: &str) -> StoreError {
    StoreError::Other {
        op: "put",
        key: key.to_owned(),
        message: "this store takes no multipart uploads".to_owned(),
        retryable: false,
    }
}

/// Attempts per store call before giving up.
const ATTEMPTS: u32 = 8;
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Runs `op` until it succeeds, fails for good, or has failed [`ATTEMPTS`]
/// times, with exponential backoff between attempts.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    telemetry: &Telemetry,
    is_retryable: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = BACKOFF_START;
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if is_retryable(&e) && attempt < ATTEMPTS => {
                telemetry.store_retry(what, attempt, &e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The store `storage.url` names, and the key prefix inside it.
pub async fn from_config(config: &Config) -> Result<(Arc<dyn ObjectStore>, String), StoreError> {
    let url = config.storage_url().map_err(|message| StoreError::Other {
        op: "open",
        key: config.storage.url.clone(),
        message,
        retryable: false,
    })?;
    Ok(match url {
        StorageUrl::S3 { bucket, prefix } => {
            let storage = &config.storage;
            let store = S3Store::new(bucket, storage.force_path_style, storage.request_timeout)
                .await
                .with_protection(s3::Protection {
                    encryption: storage.server_side_encryption.map(|e| match e {
                        Encryption::Aes256 => aws_sdk_s3::types::ServerSideEncryption::Aes256,
                        Encryption::AwsKms => aws_sdk_s3::types::ServerSideEncryption::AwsKms,
                    }),
                    kms_key_id: storage.kms_key_id.clone(),
                    bucket_key: storage.bucket_key,
                    expected_owner: storage.expected_bucket_owner.clone(),
                });
            let store = match storage.sign_payload {
                Some(sign) => store.with_payload_signing(sign),
                None => store,
            };
            (Arc::new(store), prefix)
        }
        StorageUrl::Local { dir } => (Arc::new(LocalStore::new(dir)), String::new()),
    })
}

/// The ETag of the object at exactly `key`, if there is one.
pub async fn e_tag_of(store: &dyn ObjectStore, key: &str) -> Result<Option<String>, StoreError> {
    Ok(store
        .list(key)
        .await?
        .into_iter()
        .find(|o| o.key == key)
        .map(|o| o.e_tag))
}

/// The AWS SDK's timeouts for one service: a stalled connection or
/// request fails after `request_timeout` and is retried like any failure.
pub fn timeouts(request_timeout: Duration) -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT.min(request_timeout))
        .operation_attempt_timeout(request_timeout)
        .build()
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Seconds since the Unix epoch, the unit of [`ObjectMeta::last_modified`].
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A stable hex digest of `bytes`, the ETag of stores that have no other.
fn content_tag(bytes: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}
