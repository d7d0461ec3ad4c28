//! Amazon S3 (or any S3-protocol server) through aws-sdk-s3. Endpoint,
//! region and credentials come from the SDK's standard environment
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, …).

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::{ObjectMeta, ObjectStore, PutMode, StoreError};

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
}

impl S3Store {
    /// `force_path_style`: `None` picks path style when a custom endpoint
    /// is configured (local S3 servers rarely resolve bucket subdomains).
    pub async fn new(bucket: String, force_path_style: Option<bool>) -> S3Store {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let custom_endpoint = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
        let config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(force_path_style.unwrap_or(custom_endpoint))
            .build();
        S3Store {
            client: Client::from_conf(config),
            bucket,
        }
    }
}

/// Maps an SDK error to what it means for the caller.
fn classify<E>(op: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
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
    ) || matches!(status, Some(409 | 429 | 500..=599));
    StoreError::Other {
        op,
        key: key.to_owned(),
        message: DisplayErrorContext(&err).to_string(),
        retryable,
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<String, StoreError> {
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .set_if_none_match((mode == PutMode::Create).then(|| "*".to_owned()))
            .send()
            .await
            .map_err(|e| classify("put", key, e))?;
        Ok(out.e_tag().unwrap_or_default().to_owned())
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
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
            .key(to)
            .copy_source(source)
            .send()
            .await
            .map_err(|e| classify("copy", from, e))?;
        Ok(out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_owned())
    }

    fn bucket(&self) -> &str {
        &self.bucket
    }
}
