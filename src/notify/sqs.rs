//! Amazon SQS (or any SQS-protocol server) through aws-sdk-sqs.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use super::{FileNotification, Notifier, NotifyError};

/// SQS accepts at most this many messages per batch call.
const BATCH: usize = 10;

#[derive(Debug, Clone)]
pub struct SqsNotifier {
    client: Client,
    queue_url: String,
    fifo: bool,
}

impl SqsNotifier {
    /// `request_timeout`: the longest one attempt of a call may take.
    pub async fn new(queue_url: String, request_timeout: Duration) -> SqsNotifier {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let config = aws_sdk_sqs::config::Builder::from(&sdk)
            .timeout_config(crate::store::timeouts(request_timeout))
            .build();
        SqsNotifier {
            client: Client::from_conf(config),
            fifo: queue_url.ends_with(".fifo"),
            queue_url,
        }
    }

    fn entry(
        &self,
        index: usize,
        file: &FileNotification,
    ) -> Result<SendMessageBatchRequestEntry, String> {
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(index.to_string())
            .message_body(file.body());
        if self.fifo {
            // The key identifies the file; a re-sent file is dropped by SQS
            // within its deduplication window.
            entry = entry
                .message_group_id(format!("{}-{}", file.topic, file.partition))
                .message_deduplication_id(dedup_id(&file.key));
        }
        entry.build().map_err(|e| e.to_string())
    }
}

/// SQS deduplication ids are at most 128 characters.
fn dedup_id(key: &str) -> String {
    if key.len() <= 128 {
        return key.to_owned();
    }
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    format!("{}…{:016x}", &key[key.len() - 100..], hasher.finish())
}

#[async_trait]
impl Notifier for SqsNotifier {
    async fn probe(&self) -> Result<String, String> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| format!("queue {}: {}", self.queue_url, DisplayErrorContext(&e)))?;
        let arn = out
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
            .cloned()
            .unwrap_or_default();
        Ok(format!("queue {} ({arn})", self.queue_url))
    }

    async fn send(&self, files: &[FileNotification]) -> Result<(), NotifyError> {
        let mut failed = Vec::new();
        let mut message = String::new();
        for chunk in files.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, f)| self.entry(i, f))
                .collect::<Result<Vec<_>, _>>();
            let result = match entries {
                Ok(entries) => self
                    .client
                    .send_message_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| DisplayErrorContext(&e).to_string()),
                Err(e) => Err(e),
            };
            match result {
                Ok(out) => {
                    for f in out.failed() {
                        if let Some(file) = f.id().parse::<usize>().ok().and_then(|i| chunk.get(i))
                        {
                            failed.push(file.key.clone());
                        }
                        message = f.message().unwrap_or(f.code()).to_owned();
                    }
                }
                Err(e) => {
                    failed.extend(chunk.iter().map(|f| f.key.clone()));
                    message = e;
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(NotifyError {
                queue: self.queue_url.clone(),
                message,
                failed,
            })
        }
    }
}
