//! Amazon S3 (or any S3-protocol server) through aws-sdk-s3. Endpoint,
//! region and credentials come from the SDK's standard environment
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, …).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _, stream};

use super::{ObjectMeta, ObjectStore, PutMode, StoreError, Upload};
use crate::failpoint;

/// Bodies at least this large go up as a multipart upload.
const MULTIPART_FROM: usize = 32 * 1024 * 1024;
/// Size of each part (S3 wants at least 5 MiB but the last).
const PART_BYTES: usize = 16 * 1024 * 1024;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// `x-amz-copy-source` is URL-encoded except for `/`.
const COPY_SOURCE_ESCAPE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    region: String,
    protection: Protection,
    /// Whether object bodies are hashed into each request's signature.
    /// Off, requests carry `UNSIGNED-PAYLOAD`: the body's CRC32 checksum,
    /// which S3 verifies, still catches corruption, and TLS protects it in
    /// transit.
    sign_payload: bool,
}

/// What every request carries: the encryption of the objects written and
/// the account that must own the bucket.
#[derive(Debug, Clone, Default)]
pub struct Protection {
    /// `AES256` (SSE-S3) or `aws:kms` (SSE-KMS) on every object written
    /// (puts, multipart uploads, copies).
    pub encryption: Option<ServerSideEncryption>,
    pub kms_key_id: Option<String>,
    pub bucket_key: Option<bool>,
    /// `x-amz-expected-bucket-owner` (and, on copies, the source's).
    pub expected_owner: Option<String>,
}

impl S3Store {
    /// `force_path_style`: `None` picks path style when a custom endpoint
    /// is configured (local S3 servers rarely resolve bucket subdomains).
    /// `request_timeout`: the longest one attempt of a call may take.
    /// Bodies are signed only when the endpoint is plain HTTP (as the AWS
    /// SDK for Java does): over HTTPS, hashing every byte with SHA-256 adds
    /// nothing TLS and the checksum do not already give.
    pub async fn new(
        bucket: String,
        force_path_style: Option<bool>,
        request_timeout: Duration,
    ) -> S3Store {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| sdk.endpoint_url().map(str::to_owned));
        let custom_endpoint = endpoint.is_some();
        let config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(force_path_style.unwrap_or(custom_endpoint))
            .timeout_config(crate::store::timeouts(request_timeout))
            .build();
        S3Store {
            region: sdk.region().map(ToString::to_string).unwrap_or_default(),
            client: Client::from_conf(config),
            bucket,
            protection: Protection::default(),
            sign_payload: signs_payload(endpoint.as_deref()),
        }
    }

    /// The same store, signing object bodies (`true`) or not, whatever the
    /// endpoint's scheme.
    pub fn with_payload_signing(self, sign_payload: bool) -> S3Store {
        S3Store {
            sign_payload,
            ..self
        }
    }

    /// The same store, its requests carrying `protection`.
    pub fn with_protection(self, protection: Protection) -> S3Store {
        S3Store { protection, ..self }
    }

    fn owner(&self) -> Option<String> {
        self.protection.expected_owner.clone()
    }
}

/// Whether bodies are signed by default: only over plain HTTP. No
/// endpoint configured means AWS's own, over HTTPS.
fn signs_payload(endpoint: Option<&str>) -> bool {
    endpoint.is_some_and(|url| {
        !url.get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    })
}

/// Error codes S3 uses for conditions that pass: some come with a 5xx
/// status, some inside a `200 OK` (CopyObject, CompleteMultipartUpload).
const TRANSIENT_CODES: [&str; 5] = [
    "InternalError",
    "SlowDown",
    "ServiceUnavailable",
    "RequestTimeout",
    "OperationAborted",
];

/// A `200 OK` without the result it must carry (S3 sends some errors that
/// way): the call did not happen, try again.
fn no_result(op: &'static str, key: &str) -> StoreError {
    StoreError::Other {
        op,
        key: key.to_owned(),
        message: "S3 answered 200 OK without a result".to_owned(),
        retryable: true,
    }
}

/// Maps an SDK error to what it means for the caller.
fn classify<E>(op: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    match status {
        Some(404) => return StoreError::NotFound(key.to_owned()),
        // If-None-Match: * on an existing key.
        Some(412) if op == "put" => return StoreError::AlreadyExists(key.to_owned()),
        _ => {}
    }
    let retryable = matches!(
        err,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
    ) || matches!(status, Some(409 | 429 | 500..=599))
        || err
            .code()
            .is_some_and(|code| TRANSIENT_CODES.contains(&code));
    StoreError::Other {
        op,
        key: key.to_owned(),
        message: DisplayErrorContext(&err).to_string(),
        retryable,
    }
}

impl S3Store {
    /// A large body in parts, [`PARTS_IN_FLIGHT`] at a time. Any failure
    /// aborts the upload, so no parts are left behind; a crash leaves it
    /// for `sluice gc`.
    async fn put_multipart(&self, key: &str, body: Bytes) -> Result<String, StoreError> {
        let upload = self.create_upload(key).await?;
        let result = self.upload_parts(&upload, &body).await;
        if result.is_err() {
            // Best effort: gc finds what an abort misses.
            let _ = self.abort_upload(&upload).await;
        }
        result
    }

    async fn upload_parts(&self, upload: &Upload, body: &Bytes) -> Result<String, StoreError> {
        let parts = (0..body.len())
            .step_by(PART_BYTES)
            .zip(1..)
            .map(|(start, number)| {
                (
                    number,
                    body.slice(start..(start + PART_BYTES).min(body.len())),
                )
            });
        let mut done: Vec<(i32, String)> = stream::iter(parts.map(|(number, part)| async move {
            let e_tag = self.upload_part(upload, number, part).await?;
            Ok::<_, StoreError>((number, e_tag))
        }))
        .buffer_unordered(PARTS_IN_FLIGHT)
        .try_collect()
        .await?;
        done.sort_unstable();
        self.complete_upload(upload, &done).await
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<String, StoreError> {
        if mode == PutMode::Overwrite && body.len() >= MULTIPART_FROM {
            return match self.put_multipart(key, body).await {
                // The upload is gone: completed by an attempt whose answer
                // was lost, or aborted. Whole puts overwrite, so the caller
                // may put it again.
                Err(StoreError::NotFound(_)) => Err(StoreError::Other {
                    op: "put",
                    key: key.to_owned(),
                    message: "the multipart upload ended before it was completed".to_owned(),
                    retryable: true,
                }),
                other => other,
            };
        }
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.owner())
            .key(key)
            .body(ByteStream::from(body))
            .set_if_none_match((mode == PutMode::Create).then(|| "*".to_owned()))
            .set_server_side_encryption(self.protection.encryption.clone())
            .set_ssekms_key_id(self.protection.kms_key_id.clone())
            .set_bucket_key_enabled(self.protection.bucket_key);
        let mut request = request.customize();
        if !self.sign_payload {
            request = request.disable_payload_signing();
        }
        let out = request.send().await.map_err(|e| classify("put", key, e))?;
        Ok(out.e_tag().unwrap_or_default().to_owned())
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.owner())
            .key(key)
            .send()
            .await
            .map_err(|e| classify("get", key, e))?;
        let body = out.body.collect().await.map_err(|e| StoreError::Other {
            op: "get",
            key: key.to_owned(),
            message: e.to_string(),
            retryable: true,
        })?;
        Ok(body.into_bytes())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .set_expected_bucket_owner(self.owner())
                .set_expected_bucket_owner(self.owner())
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| classify("list", prefix, e))?;
            for object in page.contents() {
                out.push(ObjectMeta {
                    key: object.key().unwrap_or_default().to_owned(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    e_tag: object.e_tag().unwrap_or_default().to_owned(),
                    last_modified: object.last_modified().map_or(0, |t| t.secs()),
                });
            }
            token = page.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.owner())
            .key(key)
            .send()
            .await
            .map_err(|e| classify("delete", key, e))?;
        Ok(())
    }

    async fn copy(&self, from: &str, to: &str) -> Result<String, StoreError> {
        let source = format!(
            "{}/{}",
            self.bucket,
            percent_encoding::utf8_percent_encode(from, COPY_SOURCE_ESCAPE)
        );
        let out = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.owner())
            .key(to)
            .copy_source(source)
            .set_expected_source_bucket_owner(self.owner())
            .set_server_side_encryption(self.protection.encryption.clone())
            .set_ssekms_key_id(self.protection.kms_key_id.clone())
            .set_bucket_key_enabled(self.protection.bucket_key)
            .send()
            .await
            .map_err(|e| classify("copy", from, e))?;
        // S3 may answer `200 OK` with an error document: no result, no copy.
        out.copy_object_result()
            .and_then(|r| r.e_tag())
            .map(str::to_owned)
            .ok_or_else(|| no_result("copy", to))
    }

    fn multipart(&self) -> bool {
        true
    }

    async fn create_upload(&self, key: &str) -> Result<Upload, StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.owner())
            .key(key)
            .set_server_side_encryption(self.protection.encryption.clone())
            .set_ssekms_key_id(self.protection.kms_key_id.clone())
            .set_bucket_key_enabled(self.protection.bucket_key)
            .send()
            .await
            .map_err(|e| classify("put", key, e))?;
        Ok(Upload {
            key: key.to_owned(),
            id: created.upload_id().unwrap_or_default().to_owned(),
            initiated: super::now_secs(),
        })
    }

    async fn upload_part(
        &self,
        upload: &Upload,
        number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        if failpoint::fail(failpoint::PART_UPLOAD) {
            return Err(StoreError::Other {
                op: "put",
                key: upload.key.clone(),
                message: format!("injected failure of part {number}"),
                retryable: true,
            });
        }
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.owner())
            .key(&upload.key)
            .upload_id(&upload.id)
            .part_number(number)
            .body(ByteStream::from(body));
        let mut request = request.customize();
        if !self.sign_payload {
            request = request.disable_payload_signing();
        }
        let out = request
            .send()
            .await
            .map_err(|e| classify("put", &upload.key, e))?;
        failpoint::hit(failpoint::AFTER_PART);
        Ok(out.e_tag().unwrap_or_default().to_owned())
    }

    async fn complete_upload(
        &self,
        upload: &Upload,
        parts: &[(i32, String)],
    ) -> Result<String, StoreError> {
        let parts = parts
            .iter()
            .map(|(number, e_tag)| {
                CompletedPart::builder()
                    .part_number(*number)
                    .e_tag(e_tag)
                    .build()
            })
            .collect();
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.owner())
            .key(&upload.key)
            .upload_id(&upload.id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("put", &upload.key, e))?;
        out.e_tag()
            .map(str::to_owned)
            .ok_or_else(|| no_result("put", &upload.key))
    }

    async fn uploads(&self, prefix: &str) -> Result<Vec<Upload>, StoreError> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .set_expected_bucket_owner(self.owner())
                .set_expected_bucket_owner(self.owner())
                .prefix(prefix)
                .set_key_marker(key_marker)
                .set_upload_id_marker(id_marker)
                .send()
                .await
                .map_err(|e| classify("list", prefix, e))?;
            for upload in page.uploads() {
                out.push(Upload {
                    key: upload.key().unwrap_or_default().to_owned(),
                    id: upload.upload_id().unwrap_or_default().to_owned(),
                    initiated: upload.initiated().map_or(0, |t| t.secs()),
                });
            }
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
        }
        Ok(out)
    }

    async fn abort_upload(&self, upload: &Upload) -> Result<(), StoreError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.owner())
            .key(&upload.key)
            .upload_id(&upload.id)
            .send()
            .await
            .map_err(|e| classify("delete", &upload.key, e))?;
        Ok(())
    }

    fn bucket(&self) -> &str {
        &self.bucket
    }

    fn region(&self) -> &str {
        &self.region
    }
}

#[cfg(test)]
mod tests {
    use super::signs_payload;

    #[test]
    fn bodies_are_signed_by_default_only_over_plain_http() {
        assert!(!signs_payload(None), "AWS's own endpoints are HTTPS");
        assert!(!signs_payload(Some("https://s3.eu-west-1.amazonaws.com")));
        assert!(!signs_payload(Some("HTTPS://minio.internal:9000")));
        assert!(signs_payload(Some("http://127.0.0.1:4566")));
        assert!(signs_payload(Some("http://https.example")));
    }
}
