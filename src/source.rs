//! The Kafka side: a consumer in the sink's group, subscribed to its topic.
//!
//! Pass-through librdkafka properties are applied first; the settings the
//! commit protocol depends on are forced on top. Offsets are committed by
//! the run loop only after the files holding them are in the store.

use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tracing::info;

use crate::config::KafkaConfig;

/// Settings sluice needs whatever the pass-through properties say.
const FORCED: [(&str, &str); 2] = [
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot create the Kafka consumer: {0}")]
    Create(KafkaError),
    #[error("cannot subscribe to topic {topic}: {source}")]
    Subscribe { topic: String, source: KafkaError },
}

/// Logs partition assignment changes.
#[derive(Debug, Default)]
pub struct SourceContext;

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => info!(partitions = %partitions(tpl), "partitions assigned"),
            Rebalance::Revoke(tpl) => info!(partitions = %partitions(tpl), "partitions revoked"),
            Rebalance::Error(e) => info!(error = %e, "rebalance error"),
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| e.partition().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub type KafkaConsumer = BaseConsumer<SourceContext>;

/// The librdkafka configuration of the sink's consumer.
pub fn client_config(kafka: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", &kafka.group_id)
        .set("client.id", client_id)
        .set("auto.offset.reset", &kafka.auto_offset_reset);
    for (key, value) in FORCED {
        config.set(key, value);
    }
    config
}

/// Creates the consumer and subscribes it to the topic.
pub fn connect(kafka: &KafkaConfig, client_id: &str) -> Result<KafkaConsumer, SourceError> {
    let consumer: KafkaConsumer = client_config(kafka, client_id)
        .create_with_context(SourceContext)
        .map_err(SourceError::Create)?;
    consumer
        .subscribe(&[&kafka.topic])
        .map_err(|source| SourceError::Subscribe {
            topic: kafka.topic.clone(),
            source,
        })?;
    Ok(consumer)
}

/// Commits `next` (partition → next offset to read) for `topic`.
pub fn commit_offsets(
    consumer: &KafkaConsumer,
    topic: &str,
    next: impl Iterator<Item = (i32, i64)>,
) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in next {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    consumer.commit(&tpl, CommitMode::Sync)
}

/// How long a poll waits for a record before the loop checks its timers.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn forced_settings_win_over_pass_through() {
        let kafka = KafkaConfig {
            brokers: "b:9092".into(),
            topic: "t".into(),
            group_id: "g".into(),
            auto_offset_reset: "earliest".into(),
            properties: BTreeMap::from([
                ("enable.auto.commit".to_owned(), "true".to_owned()),
                ("fetch.max.bytes".to_owned(), "1000000".to_owned()),
            ]),
        };
        let config = client_config(&kafka, "c");
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("fetch.max.bytes"), Some("1000000"));
        assert_eq!(config.get("group.id"), Some("g"));
    }
}
