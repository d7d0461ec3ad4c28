//! Announcing committed files: one message per file, for loaders such as
//! Snowpipe that start from an S3 event notification.
//!
//! The body is an S3 event notification as S3 itself writes it
//! (`Records[0]`, `eventSource` `aws:s3`, every field S3 sends), so loaders
//! and S3-event models that accept bucket notifications accept it, plus a
//! `sluice` object with the Kafka range the file covers (and which says
//! who sent it). This module only
//! formats and sends; when to send is the commit protocol's business.

mod sqs;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::json;

pub use sqs::SqsNotifier;

/// Everything a message says about one committed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileNotification {
    pub bucket: String,
    /// The bucket's region (`awsRegion`).
    pub region: String,
    pub key: String,
    pub size: u64,
    pub e_tag: String,
    /// RFC 3339 time of the commit.
    pub event_time: String,
    pub event: String,
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub rows: u64,
}

/// The principal named in `userIdentity` and the bucket's `ownerIdentity`.
const PRINCIPAL: &str = "sluice";
/// `requestParameters.sourceIPAddress`: the unspecified address.
const UNKNOWN_ADDRESS: &str = "0.0.0.0";

/// Characters S3 leaves unescaped in notification keys: unreserved and `/`.
const KEY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

impl FileNotification {
    /// The message body: S3 event notification JSON plus `sluice`.
    pub fn body(&self) -> String {
        let key = utf8_percent_encode(&self.key, KEY_ESCAPE).to_string();
        json!({
            "Records": [{
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": self.region,
                "eventTime": self.event_time,
                "eventName": "ObjectCreated:Put",
                // What S3 would name (the writer's principal, its address,
                // its request ids) sluice does not know: stand-ins, the
                // same for the same file, so a re-sent body is identical.
                "userIdentity": { "principalId": PRINCIPAL },
                "requestParameters": { "sourceIPAddress": UNKNOWN_ADDRESS },
                "responseElements": {
                    "x-amz-request-id": self.sequencer(),
                    "x-amz-id-2": format!("sluice/{}/{}/{}-{}", self.topic, self.partition, self.first_offset, self.last_offset),
                },
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "sluice",
                    "bucket": {
                        "name": self.bucket,
                        "ownerIdentity": { "principalId": PRINCIPAL },
                        "arn": format!("arn:aws:s3:::{}", self.bucket),
                    },
                    "object": {
                        "key": key,
                        "size": self.size,
                        "eTag": self.e_tag.trim_matches('"'),
                        "sequencer": self.sequencer(),
                    }
                }
            }],
            "sluice": {
                "event": self.event,
                "topic": self.topic,
                "partition": self.partition,
                "first_offset": self.first_offset,
                "last_offset": self.last_offset,
                "rows": self.rows,
            }
        })
        .to_string()
    }

    /// Orders messages for one key; derived from the file's range so the
    /// same file always gets the same body.
    fn sequencer(&self) -> String {
        format!("{:08X}{:016X}", self.partition, self.last_offset)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot send notifications to {queue}: {message}")]
pub struct NotifyError {
    pub queue: String,
    pub message: String,
    /// Files of the batch that were not accepted.
    pub failed: Vec<String>,
}

#[async_trait]
pub trait Notifier: Send + Sync + std::fmt::Debug {
    /// Sends one message per file. On error, [`NotifyError::failed`] lists
    /// the keys not accepted; the rest were.
    async fn send(&self, files: &[FileNotification]) -> Result<(), NotifyError>;

    /// Checks the queue exists and answers; what it is, for `sluice check`.
    async fn probe(&self) -> Result<String, String> {
        Ok("no queue configured: files are not announced".to_owned())
    }
}

/// No queue configured: nothing is announced.
#[derive(Debug, Default)]
pub struct Disabled;

#[async_trait]
impl Notifier for Disabled {
    async fn send(&self, _: &[FileNotification]) -> Result<(), NotifyError> {
        Ok(())
    }
}

/// Keeps message bodies in memory, for component tests.
#[derive(Debug, Default)]
pub struct MemoryNotifier {
    pub sent: Mutex<Vec<String>>,
}

#[async_trait]
impl Notifier for MemoryNotifier {
    async fn send(&self, files: &[FileNotification]) -> Result<(), NotifyError> {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.extend(files.iter().map(FileNotification::body));
        Ok(())
    }
}

/// The notifier `notify.queue_url` names.
pub async fn from_config(
    queue_url: Option<&str>,
    request_timeout: std::time::Duration,
) -> Arc<dyn Notifier> {
    match queue_url {
        Some(url) => Arc::new(SqsNotifier::new(url.to_owned(), request_timeout).await),
        None => Arc::new(Disabled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_an_s3_event_with_sluice_details() {
        let n = FileNotification {
            bucket: "bkt".into(),
            region: "eu-west-1".into(),
            key: "raw/ev/dt=2026-01-02/hr=03/t-1-5-9.parquet".into(),
            size: 1234,
            e_tag: "\"abc\"".into(),
            event_time: "2026-01-02T03:04:05.000Z".into(),
            event: "ev".into(),
            topic: "t".into(),
            partition: 1,
            first_offset: 5,
            last_offset: 9,
            rows: 5,
        };
        let v: serde_json::Value = serde_json::from_str(&n.body()).unwrap();
        let record = &v["Records"][0];
        assert_eq!(record["eventName"], "ObjectCreated:Put");
        assert_eq!(record["eventSource"], "aws:s3");
        assert_eq!(record["awsRegion"], "eu-west-1");
        for field in ["userIdentity", "requestParameters", "responseElements"] {
            assert!(record[field].is_object(), "{field}");
        }
        assert_eq!(record["s3"]["bucket"]["name"], "bkt");
        assert_eq!(
            record["s3"]["object"]["key"],
            "raw/ev/dt%3D2026-01-02/hr%3D03/t-1-5-9.parquet"
        );
        assert_eq!(record["s3"]["object"]["size"], 1234);
        assert_eq!(record["s3"]["object"]["eTag"], "abc");
        assert_eq!(v["sluice"]["rows"], 5);
        assert_eq!(v["sluice"]["last_offset"], 9);
        assert_eq!(n.body(), n.clone().body(), "same file, same body");
    }
}
