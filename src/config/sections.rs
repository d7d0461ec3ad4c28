//! The sections of a sink's configuration file, one struct per TOML table,
//! with their defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::de;
use crate::dlq::Stage;
use crate::security::SecurityConfig;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventConfig {
    /// Short name of the event type; the first folder under the storage
    /// prefix and the `event` label of every metric. Lowercase letters,
    /// digits, `_`, `-` and `.`.
    pub name: String,
    /// Fully qualified Protobuf message name of the payload, e.g.
    /// `sluice.examples.OrderPlaced`.
    pub message: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (`host:port,host:port`).
    pub brokers: String,
    /// The one topic this process consumes.
    pub topic: String,
    /// Consumer group; instances with the same group split the partitions.
    pub group_id: String,
    /// Where a partition without committed progress starts: `earliest`
    /// (default, as Kafka Connect sinks do) or `latest`.
    #[serde(default = "default_offset_reset")]
    pub auto_offset_reset: String,
    /// TLS, client certificates and SASL.
    #[serde(default)]
    pub security: SecurityConfig,
    /// librdkafka properties passed through as they are (fetch sizes, …).
    /// Applied after `security` (a property given here wins); the settings
    /// sluice depends on override them.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// `file://<dir>`: a directory of `.proto` files compiled at start-up,
    /// payloads are plain Protobuf. `http(s)://host:port`: a Confluent
    /// Schema Registry, payloads in the Confluent wire format
    /// (`https://user:password@host` for basic auth).
    pub registry: String,
    /// Registry subject whose latest version the sink starts with; defaults
    /// to the one `subject_strategy` names.
    #[serde(default)]
    pub subject: Option<String>,
    /// How producers name the subject, as their serializer's
    /// `subject.name.strategy`: `TopicNameStrategy` (`<topic>-value`, the
    /// default), `RecordNameStrategy` (`<message>`) or
    /// `TopicRecordNameStrategy` (`<topic>-<message>`).
    #[serde(default)]
    pub subject_strategy: Option<SubjectStrategy>,
    /// The subject's version to start with: `latest` (the default) or a
    /// version number, to pin the sink while an incompatible version is
    /// sorted out. Newer compatible versions are still picked up as records
    /// bring them.
    #[serde(default, deserialize_with = "de::version")]
    pub version: Option<u32>,
    /// How many levels a recursive message is expanded into columns; below
    /// that, the field is written as its canonical JSON (a string column).
    #[serde(default = "default_recursion_depth", deserialize_with = "de::usize")]
    pub recursion_depth: usize,
}

/// Confluent's subject name strategies (the class names, with or without
/// their package).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SubjectStrategy {
    #[serde(alias = "io.confluent.kafka.serializers.subject.TopicNameStrategy")]
    TopicNameStrategy,
    #[serde(alias = "io.confluent.kafka.serializers.subject.RecordNameStrategy")]
    RecordNameStrategy,
    #[serde(alias = "io.confluent.kafka.serializers.subject.TopicRecordNameStrategy")]
    TopicRecordNameStrategy,
}

impl SubjectStrategy {
    pub fn subject(self, topic: &str, message: &str) -> String {
        match self {
            SubjectStrategy::TopicNameStrategy => format!("{topic}-value"),
            SubjectStrategy::RecordNameStrategy => message.to_owned(),
            SubjectStrategy::TopicRecordNameStrategy => format!("{topic}-{message}"),
        }
    }
}

fn default_recursion_depth() -> usize {
    3
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `s3://<bucket>/<prefix>` or `file:///<dir>`.
    pub url: String,
    /// Address S3 buckets by path (`endpoint/bucket/key`) instead of by
    /// virtual host. Defaults to true when `AWS_ENDPOINT_URL` (or
    /// `AWS_ENDPOINT_URL_S3`) points at a custom endpoint, false otherwise.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub force_path_style: Option<bool>,
    /// Hash object bodies into each request's SigV4 signature. Unset: only
    /// when the endpoint is plain HTTP; over HTTPS (AWS itself) bodies go
    /// as `UNSIGNED-PAYLOAD`, protected by TLS and their CRC32 checksum,
    /// which saves a SHA-256 pass over every byte uploaded.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub sign_payload: Option<bool>,
    /// How many files upload at once.
    #[serde(default = "default_upload_concurrency", deserialize_with = "de::usize")]
    pub upload_concurrency: usize,
    /// For loaders that listen to the bucket's own event notifications
    /// (Snowpipe AUTO_INGEST): upload under `staging_prefix` and copy into
    /// the live prefix only after the manifest is written, so the live
    /// prefix only ever holds committed files.
    #[serde(default, deserialize_with = "de::bool")]
    pub bucket_notifications: bool,
    /// Where files wait for their commit in that mode (a key prefix in the
    /// same bucket); defaults to `<prefix>/_sluice/staging`.
    #[serde(default)]
    pub staging_prefix: Option<String>,
    /// How long one S3 request may take, body included (humantime: `60s`).
    /// A request that stalls longer is abandoned and retried like a failed
    /// one.
    #[serde(with = "humantime_serde", default = "default_storage_request_timeout")]
    pub request_timeout: Duration,
    /// Server-side encryption of every object sluice writes: `AES256`
    /// (SSE-S3) or `aws:kms` (SSE-KMS); unset: the bucket's default.
    #[serde(default)]
    pub server_side_encryption: Option<Encryption>,
    /// SSE-KMS: the key (id, ARN or alias); unset: the account's AWS
    /// managed key.
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// SSE-KMS: use an S3 Bucket Key (fewer KMS calls); unset: the
    /// bucket's setting.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub bucket_key: Option<bool>,
    /// The account that must own the bucket (12 digits): every request
    /// says so, and S3 refuses it (403) if another account owns it.
    #[serde(default)]
    pub expected_bucket_owner: Option<String>,
}

/// `storage.server_side_encryption`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Encryption {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    AwsKms,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// How often buffered rows are written, uploaded and committed
    /// (humantime: `60s`, `5m`).
    #[serde(with = "humantime_serde", default = "default_interval")]
    pub interval: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            interval: default_interval(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// The folder of a data file below the prefix; see
    /// [`crate::layout::PathTemplate`].
    #[serde(default = "default_path")]
    pub path: String,
    /// The time files are partitioned by: `event`, `kafka`, `ingestion` or
    /// `field:<top-level Timestamp field>`.
    #[serde(default = "default_time")]
    pub time: String,
    /// A file closes (its partition checkpoints early) at this many rows.
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub max_rows: Option<u64>,
    /// A file closes (its partition checkpoints early) at about this many
    /// encoded bytes: 128MiB by default, the size warehouses load best.
    #[serde(default = "default_max_file_bytes", deserialize_with = "de::byte_size")]
    pub max_bytes: u64,
}

fn default_path() -> String {
    crate::layout::DEFAULT_PATH.to_owned()
}

fn default_time() -> String {
    "event".to_owned()
}

/// The largest `files.max_bytes`.
pub(super) const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024 * 1024;

fn default_max_file_bytes() -> u64 {
    128 * 1024 * 1024
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            path: default_path(),
            time: default_time(),
            max_rows: None,
            max_bytes: default_max_file_bytes(),
        }
    }
}

/// Parquet encoding. Defaults favour warehouse loading and measured speed
/// (DESIGN.md, Parquet settings): zstd level 1, dictionaries on string,
/// binary and enum columns, chunk statistics, format 1.0 pages that every
/// reader takes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    #[serde(default)]
    pub compression: Codec,
    /// zstd 1–22 (1 when unset), gzip 0–9 (6 when unset); other codecs
    /// take no level.
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub compression_level: Option<u64>,
    /// Rows per row group.
    #[serde(default = "default_row_group_rows", deserialize_with = "de::usize")]
    pub row_group_rows: usize,
    /// Target size of one data page before compression.
    #[serde(
        default = "default_data_page_bytes",
        deserialize_with = "de::byte_size"
    )]
    pub data_page_bytes: u64,
    /// Dictionary encoding: `auto` (default) on byte-array columns (strings,
    /// enum names, bytes), where values repeat and a dictionary pays, and
    /// off for numbers, booleans and times, which the codec compresses
    /// better plain; `true` on every column; `false` on none. Always off for
    /// `_event_id`, `_event_time`, `_kafka_offset`, `_kafka_timestamp`.
    #[serde(default, deserialize_with = "de::dictionary")]
    pub dictionary: Dictionary,
    #[serde(default)]
    pub statistics: Statistics,
    /// Top-level columns that get a bloom filter.
    #[serde(default)]
    pub bloom_filters: Vec<String>,
    #[serde(default)]
    pub writer_version: ParquetVersion,
}

fn default_row_group_rows() -> usize {
    128 * 1024
}

fn default_data_page_bytes() -> u64 {
    1024 * 1024
}

impl Default for ParquetConfig {
    fn default() -> Self {
        Self {
            compression: Codec::default(),
            compression_level: None,
            row_group_rows: default_row_group_rows(),
            data_page_bytes: default_data_page_bytes(),
            dictionary: Dictionary::Auto,
            statistics: Statistics::default(),
            bloom_filters: Vec::new(),
            writer_version: ParquetVersion::default(),
        }
    }
}

/// Which columns get dictionary encoding (`parquet.dictionary`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dictionary {
    /// String, binary and enum columns.
    #[default]
    Auto,
    /// Every column (`true`).
    All,
    /// None (`false`).
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    #[default]
    Zstd,
    Snappy,
    Lz4,
    Gzip,
    None,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Gzip => "gzip",
            Codec::None => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistics {
    None,
    /// Min/max/null count per column chunk.
    #[default]
    Chunk,
    /// Also per page (the page index), for readers that prune pages.
    Page,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ParquetVersion {
    #[default]
    #[serde(rename = "1.0")]
    V1,
    #[serde(rename = "2.0")]
    V2,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Upper bound on buffered rows and open files, in bytes (a number, or a
    /// string such as `256MiB`). Reaching it triggers an early checkpoint.
    #[serde(
        default = "default_max_buffer_bytes",
        deserialize_with = "de::byte_size"
    )]
    pub max_buffer_bytes: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_buffer_bytes: default_max_buffer_bytes(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Worker threads, each owning a group of the assigned partitions
    /// (decoding and Parquet encoding run on them). Default: the CPUs the
    /// process may use (its cgroup quota included), at most
    /// [`MAX_DEFAULT_WORKERS`], and no more than the topic has partitions.
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub workers: Option<u64>,
}

/// The most workers a process starts unless `pipeline.workers` says more.
pub const MAX_DEFAULT_WORKERS: usize = 8;

impl PipelineConfig {
    /// How many workers read a topic of `partitions` partitions.
    pub fn workers(&self, partitions: usize) -> usize {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.workers
            .map_or(cpus.min(MAX_DEFAULT_WORKERS), |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            })
            .min(partitions)
            .max(1)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    /// `dead_letter` (default): keep the record with the reason under
    /// `<prefix>/_dead_letters/`, committed with the good rows; `fail`: stop
    /// the daemon with the reason (nothing after the last commit is
    /// committed); `skip`: count it and go on.
    #[serde(default)]
    pub policy: ErrorPolicy,
    /// What a tombstone (a record whose value is null) becomes. It is not
    /// an event, so never a row: `dead_letter` (default, reason
    /// `tombstone`), `skip` (counted in `sluice_records_skipped_total`, as
    /// Kafka Connect's `behavior.on.null.values = ignore`) or `fail`.
    #[serde(default)]
    pub tombstones: ErrorPolicy,
}

impl ErrorsConfig {
    /// The policy for a record that failed for `reason`, and its key.
    pub fn policy_for(&self, reason: Stage) -> (ErrorPolicy, &'static str) {
        match reason {
            Stage::Tombstone => (self.tombstones, "errors.tombstones"),
            _ => (self.policy, "errors.policy"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsConfig {
    /// The header naming a record's tenant: `baggage` (W3C baggage, the
    /// member named by `key`) or any other header (its whole value).
    #[serde(default = "default_tenant_header")]
    pub header: String,
    /// The baggage member holding the tenant.
    #[serde(default = "default_tenant_key")]
    pub key: String,
    /// Tenants whose records are dropped (and counted).
    #[serde(default)]
    pub drop: Vec<String>,
    /// Tenants whose records are written under a prefix of their own
    /// (`tenant = "prefix"`, same bucket), instead of the sink's. Their files
    /// are committed like the others but not announced.
    #[serde(default)]
    pub prefixes: BTreeMap<String, String>,
}

impl Default for TenantsConfig {
    fn default() -> Self {
        Self {
            header: default_tenant_header(),
            key: default_tenant_key(),
            drop: Vec::new(),
            prefixes: BTreeMap::new(),
        }
    }
}

fn default_tenant_header() -> String {
    "baggage".into()
}
fn default_tenant_key() -> String {
    "tenant".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorPolicy {
    #[default]
    DeadLetter,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// SQS queue URL; one message per committed file. Unset: no notifications.
    #[serde(default)]
    pub queue_url: Option<String>,
    /// How long one SQS request may take (humantime: `30s`); a request that
    /// stalls longer is abandoned and retried like a failed one.
    #[serde(with = "humantime_serde", default = "default_notify_request_timeout")]
    pub request_timeout: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            queue_url: None,
            request_timeout: default_notify_request_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` of the Prometheus `/metrics` endpoint.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
        }
    }
}

fn default_offset_reset() -> String {
    "earliest".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_upload_concurrency() -> usize {
    8
}
fn default_storage_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_notify_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_buffer_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_metrics_listen() -> String {
    "0.0.0.0:9464".into()
}

/// Where schemas come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaSource {
    Local(PathBuf),
    Confluent {
        url: String,
        subject: String,
        /// `None`: the latest version.
        version: Option<u32>,
    },
}

/// The parsed form of `storage.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    S3 { bucket: String, prefix: String },
    Local { dir: PathBuf },
}
