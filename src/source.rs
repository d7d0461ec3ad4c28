//! The Kafka side: a consumer in the sink's group, subscribed to its topic.
//!
//! Defaults first (cooperative-sticky assignment), then pass-through
//! librdkafka properties, then the settings the commit protocol depends on.
//! On assignment, each partition starts right after its last manifest in
//! the store; Kafka group offsets are only advice (lag dashboards, the very
//! first start).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tracing::{debug, error, info, warn};

use crate::chain::Lease;
use crate::config::KafkaConfig;
use crate::diagnose::{Failure, Recorder};
use crate::health::Health;
use crate::manifest::{ManifestError, Manifests, Recovered};

/// Settings sluice needs whatever the pass-through properties say.
const FORCED: [(&str, &str); 2] = [
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// librdkafka's message, scrubbed of secrets (it quotes the values of
    /// properties it refuses).
    #[error("cannot create the Kafka consumer: {0}")]
    Create(String),
    #[error("{0}")]
    Tokens(String),
    #[error("cannot subscribe to topic {topic}: {source}")]
    Subscribe { topic: String, source: KafkaError },
}

impl SourceError {
    fn create(kafka: &KafkaConfig, error: &KafkaError) -> SourceError {
        SourceError::Create(crate::security::scrub(&error.to_string(), kafka.secrets()))
    }
}

/// The queue of one partition's records, read by the worker that owns it.
pub type Queue = PartitionQueue<SourceContext>;

/// A change of ownership the run loop must act on, queued by the
/// rebalance callback (which runs inside `poll`).
pub enum Assignment {
    /// The partition is ours; the consumer is already positioned right
    /// after its last manifest, and its unmarked manifests are to be
    /// finished before anything else is committed. Its records arrive on
    /// `queue`, not on the consumer's.
    Assigned {
        partition: i32,
        recovered: Recovered,
        queue: Queue,
    },
    /// The partition is no longer ours: drop what is buffered for it.
    Revoked { partition: i32 },
    /// Progress could not be read from the store; the process stops.
    Failed {
        partition: i32,
        error: ManifestError,
    },
    /// The client gave no queue of its own for the partition.
    Unsplit { partition: i32 },
}

impl std::fmt::Debug for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Assignment::Assigned {
                partition,
                recovered,
                ..
            } => f
                .debug_struct("Assigned")
                .field("partition", partition)
                .field("recovered", recovered)
                .finish_non_exhaustive(),
            Assignment::Revoked { partition } => f
                .debug_struct("Revoked")
                .field("partition", partition)
                .finish(),
            Assignment::Failed { partition, error } => f
                .debug_struct("Failed")
                .field("partition", partition)
                .field("error", error)
                .finish(),
            Assignment::Unsplit { partition } => f
                .debug_struct("Unsplit")
                .field("partition", partition)
                .finish(),
        }
    }
}

/// Reads progress from the store when partitions are assigned, so that
/// consumption starts right after the last manifest, not at the group's
/// (advisory) Kafka offset.
pub struct SourceContext {
    topic: String,
    manifests: Manifests,
    runtime: Handle,
    events: Arc<Mutex<Vec<Assignment>>>,
    /// Whether `events` may hold something: the main thread looks at it
    /// after every poll, without taking the lock.
    has_events: AtomicBool,
    /// Told whether the consumer is in its group.
    health: Arc<Health>,
    /// Each partition's high watermark, from the client's statistics.
    high_watermarks: Mutex<BTreeMap<i32, i64>>,
    /// Leases of the partitions owned now: made on assignment, cleared in
    /// the revocation callback itself, so a commit chain learns of a lost
    /// partition before the run loop does.
    leases: Mutex<HashMap<i32, Lease>>,
    /// The consumer this is the context of: assigned partitions are split
    /// onto queues of their own before their fetch starts.
    consumer: OnceLock<Weak<KafkaConsumer>>,
    /// What the client reported about connecting (TLS, SASL, ACLs).
    recorder: Recorder,
    /// `kafka.security.auth_failure_timeout`.
    refused_timeout: Duration,
}

impl std::fmt::Debug for SourceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceContext")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl SourceContext {
    pub fn new(
        kafka: &KafkaConfig,
        manifests: Manifests,
        runtime: Handle,
        health: Arc<Health>,
    ) -> Result<SourceContext, SourceError> {
        let tokens = crate::msk_iam::tokens(&kafka.security).map_err(SourceError::Tokens)?;
        Ok(SourceContext {
            topic: kafka.topic.clone(),
            manifests,
            runtime,
            events: Arc::new(Mutex::new(Vec::new())),
            has_events: AtomicBool::new(false),
            health,
            high_watermarks: Mutex::new(BTreeMap::new()),
            leases: Mutex::new(HashMap::new()),
            consumer: OnceLock::new(),
            recorder: Recorder::new(kafka, tokens),
            refused_timeout: kafka.security.auth_failure_timeout,
        })
    }

    /// Takes in an error the client reported with its reason: a refusal
    /// (TLS, SASL, ACL) is logged once as one line and makes `/readyz` say
    /// why; anything else is logged as librdkafka put it.
    pub fn report(&self, error: &KafkaError, reason: &str) {
        let reason = self.recorder.scrub(reason);
        if !self.refusal(error.rdkafka_error_code(), &reason) {
            let error = self.recorder.scrub(&error.to_string());
            warn!(target: "librdkafka", error, "{reason}");
        }
    }

    /// Takes in an error a poll returned: ACL denials are refusals; the
    /// client's other errors reached [`ClientContext::error`] with their
    /// reasons already.
    pub fn report_poll(&self, error: &KafkaError) {
        use rdkafka::error::RDKafkaErrorCode as Code;
        let code = error.rdkafka_error_code();
        let line = self.recorder.scrub(&error.to_string());
        let denial = matches!(
            code,
            Some(
                Code::TopicAuthorizationFailed
                    | Code::GroupAuthorizationFailed
                    | Code::ClusterAuthorizationFailed
            )
        );
        if denial && self.refusal(code, &line) {
            return;
        }
        if matches!(
            code,
            Some(Code::Authentication | Code::SSL | Code::AllBrokersDown)
        ) {
            debug!(target: "librdkafka", "{line}");
        } else {
            warn!(error = %line, "kafka poll error");
        }
    }

    /// Whether `line` (scrubbed) tells of a refusal; if so it is logged
    /// once as one line, and `/readyz` says why.
    fn refusal(&self, code: Option<rdkafka::error::RDKafkaErrorCode>, line: &str) -> bool {
        match self.recorder.record(code, line) {
            Some((failure, new)) if failure.is_auth() => {
                self.health.set_refused(Some(failure.to_string()));
                if new {
                    error!(
                        step = %failure.step,
                        "Kafka refused sluice: {}; the run stops if this lasts {}",
                        failure.message,
                        humantime::format_duration(self.refused_timeout)
                    );
                }
                debug!(target: "librdkafka", "{line}");
                true
            }
            _ => false,
        }
    }

    /// How long Kafka may refuse sluice before the run stops.
    pub fn refused_timeout(&self) -> Duration {
        self.refused_timeout
    }

    /// The refusal that has lasted `kafka.security.auth_failure_timeout`.
    pub fn refused(&self) -> Option<Failure> {
        self.recorder.refused_for(self.refused_timeout)
    }

    /// Ties the context to its consumer, before it is first polled.
    fn attach(consumer: &Arc<KafkaConsumer>) {
        let _ = consumer.context().consumer.set(Arc::downgrade(consumer));
    }

    /// `partition`'s own queue: its records no longer reach the consumer's.
    fn split(&self, partition: i32) -> Option<Queue> {
        let consumer = self.consumer.get()?.upgrade()?;
        consumer.split_partition_queue(&self.topic, partition)
    }

    /// The lease of `partition`, while it is owned.
    pub fn lease(&self, partition: i32) -> Option<Lease> {
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&partition)
            .cloned()
    }

    /// The last known high watermark of each partition of the topic.
    pub fn high_watermarks(&self) -> BTreeMap<i32, i64> {
        self.high_watermarks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes the queued ownership changes.
    pub fn take_events(&self) -> Vec<Assignment> {
        if !self.has_events.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn push_events(&self, events: impl IntoIterator<Item = Assignment>) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(events);
        self.has_events.store(true, Ordering::Release);
    }

    fn recover(&self, partition: i32) -> Result<Recovered, ManifestError> {
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match self.runtime.block_on(self.manifests.recover(partition)) {
                Err(e) if e.is_retryable() && attempt < RECOVERY_ATTEMPTS => {
                    warn!(partition, attempt, error = %e, "reading progress failed, retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let mut events = Vec::with_capacity(partitions.len());
        for partition in partitions {
            match self.recover(partition) {
                Ok(recovered) => {
                    // Split before the fetch starts: no record of the
                    // partition reaches the consumer's own queue.
                    let Some(queue) = self.split(partition) else {
                        events.push(Assignment::Unsplit { partition });
                        continue;
                    };
                    self.leases
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(partition, Arc::new(AtomicBool::new(true)));
                    let from = recovered.last.as_ref().map(|m| m.range.to + 1);
                    if let Some(next) = from {
                        let _ =
                            tpl.set_partition_offset(&self.topic, partition, Offset::Offset(next));
                    }
                    info!(
                        partition,
                        from,
                        unannounced = recovered.unmarked.len(),
                        "partition assigned"
                    );
                    events.push(Assignment::Assigned {
                        partition,
                        recovered,
                        queue,
                    });
                }
                Err(error) => events.push(Assignment::Failed { partition, error }),
            }
        }
        self.push_events(events);
        let assigned = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        match assigned {
            Ok(()) => self.health.set_joined(true),
            Err(e) => warn!(error = %e, "partition assignment failed"),
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        {
            let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            for element in tpl.elements() {
                if let Some(lease) = leases.remove(&element.partition()) {
                    lease.store(false, Ordering::SeqCst);
                }
            }
        }
        let revoked: Vec<Assignment> = tpl
            .elements()
            .iter()
            .map(|e| Assignment::Revoked {
                partition: e.partition(),
            })
            .collect();
        info!(partitions = %partitions(tpl), "partitions revoked");
        self.push_events(revoked);
        let unassigned = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(e) = unassigned {
            warn!(error = %e, "partition unassignment failed");
        }
    }
}

impl ClientContext for SourceContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    /// AWS_MSK_IAM tokens, when librdkafka asks (at connect, then at 80 %
    /// of the last one's lifetime).
    fn generate_oauth_token(
        &self,
        _: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.recorder.oauth_token()
    }

    /// librdkafka's log lines, without secrets, at their level; a refusal
    /// as one line of sluice's.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        let line = self.recorder.scrub(line);
        let serious = (level as i32) <= (RDKafkaLogLevel::Warning as i32);
        if serious && self.refusal(None, &line) {
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(target: "librdkafka", facility, "{line}"),
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", facility, "{line}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", facility, "{line}")
            }
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", facility, "{line}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.report(&error, reason);
    }

    /// Every [`STATISTICS_INTERVAL_MS`]: group membership for `/readyz`,
    /// high watermarks for the lag gauges.
    fn stats(&self, statistics: Statistics) {
        if let Some(group) = &statistics.cgrp {
            let joined = group.state == "up" && group.join_state == "steady";
            self.health.set_joined(joined);
            if joined {
                self.recorder.clear();
                self.health.set_refused(None);
            }
        }
        if let Some(topic) = statistics.topics.get(&self.topic) {
            let mut marks = self
                .high_watermarks
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (partition, stats) in &topic.partitions {
                if *partition >= 0 && stats.hi_offset >= 0 {
                    marks.insert(*partition, stats.hi_offset);
                }
            }
        }
    }
}

/// How long the client waits to fetch again for a partition whose local
/// queue is full (unless set otherwise).
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// The least a partition's queue of fetched records is allowed.
const MIN_QUEUE_KBYTES: u64 = 16;

/// How often the client reports statistics (unless set otherwise).
const STATISTICS_INTERVAL_MS: &str = "1000";

impl ConsumerContext for SourceContext {
    /// Offsets are committed asynchronously as advice; a failure only
    /// delays the group's view: the run loop advises every partition again
    /// at each checkpoint interval.
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(e) = result {
            warn!(error = %e, "committing offsets to the group failed");
        }
    }

    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                warn!(error = ?other, "rebalance error; giving up the assignment");
                self.revoke(consumer, tpl);
            }
        }
    }
}

/// Attempts at reading a partition's progress before giving up on it.
const RECOVERY_ATTEMPTS: u32 = 12;

fn partitions(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| e.partition().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub type KafkaConsumer = BaseConsumer<SourceContext>;

/// The librdkafka configuration of the sink's consumer.
/// `kafka_bytes`: the memory share of the client's fetch buffers — half
/// for fetched records waiting to be read, shared by `queues` queues (the
/// client bounds each partition's queue on its own once it is split off),
/// half for one fetch response (at least 1 MiB, what the broker's default
/// record size limit needs). Pass-through properties may set them
/// otherwise.
pub fn client_config(
    kafka: &KafkaConfig,
    client_id: &str,
    kafka_bytes: u64,
    queues: usize,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("partition.assignment.strategy", "cooperative-sticky");
    let half = kafka_bytes / 2;
    let per_queue = (half / queues.max(1) as u64 / 1024).max(MIN_QUEUE_KBYTES);
    config.set("queued.max.messages.kbytes", per_queue.to_string());
    // A partition below its bound is fetched again, whatever the others
    // hold: each fetch of it brings at most its share, so the queues
    // together stay near twice their bound. (A batch larger than this
    // still comes whole, one at a time.)
    config.set(
        "max.partition.fetch.bytes",
        (per_queue * 1024).min(1 << 20).to_string(),
    );
    config.set("fetch.max.bytes", half.max(1 << 20).to_string());
    // When the local queue reaches its bound (always, for a consumer slower
    // than the fetcher), librdkafka stops fetching that partition for this
    // long; its default, 1 s, lets the queue run dry and the consumer idle
    // (measured: 178 k vs 1.09 M records/s for a consumer touching every
    // header). A short backoff keeps the queue fed within the same bound.
    config.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    config.set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    kafka.security.apply(&mut config);
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

/// Creates the consumer and subscribes it to the topic, whose partitions
/// are at most `partitions`.
pub fn connect(
    kafka: &KafkaConfig,
    client_id: &str,
    kafka_bytes: u64,
    partitions: usize,
    context: SourceContext,
) -> Result<Arc<KafkaConsumer>, SourceError> {
    let consumer: Arc<KafkaConsumer> = Arc::new(
        client_config(kafka, client_id, kafka_bytes, partitions)
            .create_with_context(context)
            .map_err(|e| SourceError::create(kafka, &e))?,
    );
    SourceContext::attach(&consumer);
    consumer
        .subscribe(&[&kafka.topic])
        .map_err(|source| SourceError::Subscribe {
            topic: kafka.topic.clone(),
            source,
        })?;
    Ok(consumer)
}

/// Creates a consumer of the partitions in `starts` (partition → first
/// offset), outside any group's assignment: each starts after its last
/// manifest if that is later. Offsets are never committed to the group.
pub fn assigned(
    kafka: &KafkaConfig,
    client_id: &str,
    kafka_bytes: u64,
    context: SourceContext,
    starts: &BTreeMap<i32, i64>,
) -> Result<Arc<KafkaConsumer>, SourceError> {
    let consumer: Arc<KafkaConsumer> = Arc::new(
        client_config(kafka, client_id, kafka_bytes, starts.len())
            .create_with_context(context)
            .map_err(|e| SourceError::create(kafka, &e))?,
    );
    SourceContext::attach(&consumer);
    let mut tpl = TopicPartitionList::new();
    for (&partition, &start) in starts {
        tpl.add_partition_offset(&kafka.topic, partition, Offset::Offset(start))
            .map_err(|e| SourceError::create(kafka, &e))?;
    }
    consumer.context().assign(&consumer, &mut tpl);
    Ok(consumer)
}

/// A consumer for metadata and offset lookups (no subscription). It logs
/// nothing: what it reports is kept, and [`topic_partitions`] says why a
/// lookup failed, once.
pub fn lookup_client(
    kafka: &KafkaConfig,
    client_id: &str,
) -> Result<BaseConsumer<Recorder>, SourceError> {
    let tokens = crate::msk_iam::tokens(&kafka.security).map_err(SourceError::Tokens)?;
    lookup_client_with(kafka, client_id, Recorder::new(kafka, tokens))
}

/// As [`lookup_client`], with the client's reports going to `context`.
pub fn lookup_client_with<C: ConsumerContext>(
    kafka: &KafkaConfig,
    client_id: &str,
    context: C,
) -> Result<BaseConsumer<C>, SourceError> {
    client_config(kafka, client_id, 1 << 20, 1)
        .set("statistics.interval.ms", "0")
        .create_with_context(context)
        .map_err(|e| SourceError::create(kafka, &e))
}

/// The partitions of the sink's topic, from the brokers' metadata.
pub fn topic_partitions(
    consumer: &BaseConsumer<Recorder>,
    kafka: &KafkaConfig,
    timeout: Duration,
) -> Result<Vec<i32>, String> {
    let metadata = ask(
        consumer,
        kafka,
        timeout,
        &format!("brokers {}", kafka.brokers),
        |attempt| consumer.fetch_metadata(Some(&kafka.topic), attempt),
    )?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == kafka.topic)
        .ok_or_else(|| format!("topic {} not in the brokers' metadata", kafka.topic))?;
    if let Some(error) = topic.error() {
        let code = rdkafka::error::RDKafkaErrorCode::from(error);
        return Err(
            crate::diagnose::denied(code, &kafka.security, &kafka.topic, &kafka.group_id)
                .map_or_else(
                    || format!("topic {}: {code}", kafka.topic),
                    |f| f.to_string(),
                ),
        );
    }
    Ok(topic.partitions().iter().map(|p| p.id()).collect())
}

/// Makes `request` (given how long one attempt may take) until it succeeds
/// or `timeout` has passed, polling the client between attempts: its
/// errors, and AWS_MSK_IAM tokens, are served by polls. A refusal (TLS,
/// SASL, ACL) ends the wait at once; the error says why, else names
/// `what` failed.
pub fn ask<T>(
    consumer: &BaseConsumer<Recorder>,
    kafka: &KafkaConfig,
    timeout: Duration,
    what: &str,
    mut request: impl FnMut(Duration) -> Result<T, KafkaError>,
) -> Result<T, String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let _ = consumer.poll(Duration::ZERO);
        let attempt = deadline
            .saturating_duration_since(std::time::Instant::now())
            .min(LOOKUP_ATTEMPT);
        let e = match request(attempt) {
            Ok(answer) => return Ok(answer),
            Err(e) => e,
        };
        let _ = consumer.poll(Duration::ZERO);
        let failure = consumer.context().failure();
        if let Some(failure) = failure.as_ref().filter(|f| f.is_auth()) {
            return Err(failure.to_string());
        }
        if let KafkaError::OffsetFetch(code) | KafkaError::MetadataFetch(code) = e
            && let Some(denied) =
                crate::diagnose::denied(code, &kafka.security, &kafka.topic, &kafka.group_id)
        {
            return Err(denied.to_string());
        }
        if std::time::Instant::now() >= deadline {
            return Err(failure.map_or_else(|| format!("{what}: {e}"), |f| f.to_string()));
        }
    }
}

/// How long one metadata request may take before it is asked again.
const LOOKUP_ATTEMPT: Duration = Duration::from_secs(2);

/// Commits `next` (partition → next offset to read) for `topic`;
/// asynchronously (failures are reported by a later poll) or waiting.
pub fn commit_offsets(
    consumer: &KafkaConsumer,
    topic: &str,
    next: impl Iterator<Item = (i32, i64)>,
    mode: CommitMode,
) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in next {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    consumer.commit(&tpl, mode)
}

/// How long the main thread's poll waits for an event, and an idle worker
/// sleeps, before they look again.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// A record's header: key and value.
pub type Header<'m> = (&'m str, Option<&'m [u8]>);

/// Runs `read` over a record's headers, in order. rust-rdkafka panics
/// reading a header whose key is not UTF-8 (its keys are `&str`), and Kafka
/// takes any bytes for a key (Go clients send them): `read` then runs again
/// over [`headers`], without such headers, rather than letting one record
/// stop the process on every start. One unwinding guard per record, not per
/// header.
pub fn with_headers<'m, T>(
    message: &'m BorrowedMessage<'_>,
    read: impl Fn(&mut dyn Iterator<Item = Header<'m>>) -> T,
) -> T {
    let mut all = message
        .headers()
        .into_iter()
        .flat_map(|h| h.iter())
        .map(|h| (h.key, h.value));
    match quietly(|| read(&mut all)) {
        Ok(value) => value,
        Err(_) => read(&mut headers(message)),
    }
}

/// A record's headers, in order, without those whose keys are not UTF-8:
/// no CloudEvents attribute, content type or tenant header can have such
/// a key, so nothing sluice reads is lost.
pub fn headers<'m>(message: &'m BorrowedMessage<'_>) -> impl Iterator<Item = Header<'m>> + 'm {
    let headers = message.headers();
    let count = headers.map_or(0, Headers::count);
    (0..count).filter_map(move |index| {
        let header = quietly(|| headers?.try_get(index)).ok()??;
        Some((header.key, header.value))
    })
}

thread_local! {
    /// Set while [`quietly`] runs `f` on this thread.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, catching a panic in it without reporting it: for library code
/// that panics on input rather than returning an error. Other panics are
/// reported as before.
fn quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|quiet| quiet.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|quiet| quiet.set(false));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_creating_the_client_never_quote_a_secret() {
        let kafka: KafkaConfig = toml::from_str(
            "brokers = \"b\"\ntopic = \"t\"\ngroup_id = \"g\"\n\
             [properties]\n\"sasl.password\" = \"passed-through\"\n\
             [security]\nprotocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\n\
             sasl_username = \"u\"\nsasl_password = \"configured\"",
        )
        .unwrap();
        for secret in ["passed-through", "configured"] {
            let error = KafkaError::ClientConfig(
                rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
                format!("value {secret} refused"),
                "sasl.password".into(),
                secret.into(),
            );
            assert!(error.to_string().contains(secret), "librdkafka quotes it");
            let shown = SourceError::create(&kafka, &error).to_string();
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn forced_settings_win_over_pass_through() {
        let kafka = KafkaConfig {
            brokers: "b:9092".into(),
            topic: "t".into(),
            group_id: "g".into(),
            auto_offset_reset: "earliest".into(),
            security: Default::default(),
            properties: BTreeMap::from([
                ("enable.auto.commit".to_owned(), "true".to_owned()),
                ("fetch.max.bytes".to_owned(), "1000000".to_owned()),
            ]),
        };
        let config = client_config(&kafka, "c", 64 << 20, 1);
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("fetch.max.bytes"), Some("1000000"));
        assert_eq!(config.get("group.id"), Some("g"));
        assert_eq!(config.get("queued.max.messages.kbytes"), Some("32768"));
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("10"));
        // Split per partition: the same share over all of them.
        assert_eq!(config.get("max.partition.fetch.bytes"), Some("1048576"));
        let config = client_config(&kafka, "c", 64 << 20, 64);
        assert_eq!(config.get("queued.max.messages.kbytes"), Some("512"));
        assert_eq!(config.get("max.partition.fetch.bytes"), Some("524288"));
        let config = client_config(&kafka, "c", 8 << 20, 4096);
        assert_eq!(config.get("queued.max.messages.kbytes"), Some("16"));
        assert_eq!(config.get("max.partition.fetch.bytes"), Some("16384"));
    }
}
