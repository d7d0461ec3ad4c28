//! Sink configuration: one TOML file per event pipeline.
//!
//! Loading: parse the file, apply `SLUICE_<SECTION>__<KEY>` environment
//! overrides (`SLUICE_KAFKA__SECURITY__PROTOCOL` for a nested table),
//! replace `${VAR}` in every string with the environment's value,
//! deserialize into [`Config`] (unknown keys rejected), read the secrets
//! that `…_file` keys name, then [`Config::validate`] checks what serde
//! cannot. Every error names the file, the key and what was expected. This
//! module never touches the network.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dlq::Stage;
use crate::security::SecurityConfig;

/// A configuration problem a user can fix from the message alone.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read config file: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: not valid TOML: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

/// The whole sink configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The event type this process sinks.
    pub event: EventConfig,
    /// Where the records come from.
    pub kafka: KafkaConfig,
    /// Where the payload schema comes from.
    pub schema: SchemaConfig,
    /// Where Parquet files go.
    pub storage: StorageConfig,
    /// When buffered rows become committed files.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// When a file is closed before the checkpoint interval.
    #[serde(default)]
    pub files: FilesConfig,
    /// How Parquet files are encoded.
    #[serde(default)]
    pub parquet: ParquetConfig,
    /// Limits on what sluice keeps in memory.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// The threads that read, decode and write.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// What happens to records that cannot become rows.
    #[serde(default)]
    pub errors: ErrorsConfig,
    /// Tenants and test traffic sharing the topic.
    #[serde(default)]
    pub tenants: TenantsConfig,
    /// Where committed files are announced.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The file this configuration was read from, for error messages.
    #[serde(skip)]
    pub source_file: PathBuf,
}

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
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024 * 1024;

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

impl KafkaConfig {
    /// Every secret of the Kafka settings (`[kafka.security]`'s, and
    /// pass-through properties whose names say password, secret, token or
    /// JAAS),
    /// to be kept out of log lines and errors.
    pub fn secrets(&self) -> Vec<&str> {
        let mut secrets: Vec<&str> = self.security.secrets().collect();
        secrets.extend(
            self.properties
                .iter()
                .filter(|(key, _)| is_secret_key(key))
                .map(|(_, value)| value.as_str()),
        );
        secrets
    }
}

impl Config {
    /// The effective configuration as JSON with secrets masked: values
    /// whose key says password, secret, token, JAAS or PEM key (Kafka's
    /// SASL and SSL properties), and the password of any URL
    /// (`scheme://user:password@host`).
    pub fn redacted(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        redact(&mut value, "");
        value
    }

    /// Reads, overrides from the process environment, deserializes and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Self::from_text(path, &text, env)
    }

    /// As [`Config::load_with_env`], from the text of the file at `path`.
    pub fn from_text(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = Self::parse(path, text, env)?;
        config.source_file = path.to_owned();
        let base = path.parent().unwrap_or(Path::new("."));
        config
            .kafka
            .security
            .read_secret_files(base)
            .map_err(|e| config.security_error(e))?;
        config.validate()?;
        Ok(config)
    }

    fn parse(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: path.to_owned(),
            message: e.message().to_owned() + &location(text, e.span()),
        })?;
        let env: Vec<(String, String)> = env.into_iter().collect();
        apply_env_overrides(&mut table, env.iter().cloned());
        let vars: BTreeMap<&str, &str> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        interpolate_table(&mut table, "", &vars).map_err(|(key, message)| {
            ConfigError::Invalid {
                file: path.to_owned(),
                key,
                message,
            }
        })?;
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let mut key = e.path().to_string();
            let mut message = e.inner().message().to_owned();
            if let Some(field) = missing_field(&message) {
                key = if key == "." {
                    field
                } else {
                    format!("{key}.{field}")
                };
                message = "required key is missing".into();
            }
            if message.ends_with("expected a duration") {
                message.push_str(" like `60s`, `5m` or `1h 30m`");
            }
            ConfigError::Invalid {
                file: path.to_owned(),
                key,
                message,
            }
        })
    }

    fn security_error(&self, e: crate::security::Invalid) -> ConfigError {
        ConfigError::Invalid {
            file: self.source_file.clone(),
            key: format!("kafka.security.{}", e.key),
            message: e.message,
        }
    }

    /// Checks what deserialization cannot: forms of URLs, names and numbers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            file: self.source_file.clone(),
            key: key.to_owned(),
            message,
        };
        let name = &self.event.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c))
        {
            return Err(bad(
                "event.name",
                format!("expected lowercase letters, digits, `_`, `-` or `.`, got {name:?}"),
            ));
        }
        if self.event.message.is_empty() {
            return Err(bad(
                "event.message",
                "expected a fully qualified message name".into(),
            ));
        }
        for (key, value) in [
            ("kafka.brokers", &self.kafka.brokers),
            ("kafka.topic", &self.kafka.topic),
            ("kafka.group_id", &self.kafka.group_id),
        ] {
            if value.trim().is_empty() {
                return Err(bad(key, "must not be empty".into()));
            }
        }
        self.kafka
            .security
            .validate()
            .map_err(|e| self.security_error(e))?;
        if self.pipeline.workers == Some(0) {
            return Err(bad(
                "pipeline.workers",
                "expected at least 1 worker thread, got 0".into(),
            ));
        }
        if !["earliest", "latest"].contains(&self.kafka.auto_offset_reset.as_str()) {
            return Err(bad(
                "kafka.auto_offset_reset",
                format!(
                    "expected `earliest` or `latest`, got {:?}",
                    self.kafka.auto_offset_reset
                ),
            ));
        }
        self.schema_source()
            .map_err(|m| bad("schema.registry", m))?;
        if self.schema.subject.is_some() && self.schema.subject_strategy.is_some() {
            return Err(bad(
                "schema.subject_strategy",
                "expected either schema.subject or schema.subject_strategy, got both".into(),
            ));
        }
        self.storage_url().map_err(|m| bad("storage.url", m))?;
        if let Some(url) = &self.notify.queue_url {
            let host = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"))
                .and_then(|rest| rest.split_once('/'))
                .filter(|(host, path)| !host.is_empty() && !path.is_empty());
            if host.is_none() {
                return Err(bad(
                    "notify.queue_url",
                    format!(
                        "expected a queue URL like `https://sqs.<region>.amazonaws.com/<account>/<queue>`, got {url:?}"
                    ),
                ));
            }
        }
        let storage = &self.storage;
        if storage.server_side_encryption != Some(Encryption::AwsKms) {
            for (key, given) in [
                ("storage.kms_key_id", storage.kms_key_id.is_some()),
                ("storage.bucket_key", storage.bucket_key.is_some()),
            ] {
                if given {
                    return Err(bad(
                        key,
                        "is an SSE-KMS setting: set `storage.server_side_encryption = \"aws:kms\"`"
                            .into(),
                    ));
                }
            }
        }
        if let Some(owner) = &storage.expected_bucket_owner
            && !(owner.len() == 12 && owner.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(bad(
                "storage.expected_bucket_owner",
                format!("expected a 12-digit AWS account id, got {owner:?}"),
            ));
        }
        if self.storage.upload_concurrency == 0 {
            return Err(bad(
                "storage.upload_concurrency",
                "expected at least 1".into(),
            ));
        }
        if self.checkpoint.interval.is_zero() {
            return Err(bad(
                "checkpoint.interval",
                "expected a positive duration such as `60s`".into(),
            ));
        }
        if self.memory.max_buffer_bytes < 1024 * 1024 {
            return Err(bad(
                "memory.max_buffer_bytes",
                "expected at least 1MiB".into(),
            ));
        }
        if let Some(url) = &self.notify.queue_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(bad(
                "notify.queue_url",
                format!("expected an SQS queue URL (https://…), got {url:?}"),
            ));
        }
        self.metrics_listen()
            .map_err(|m| bad("metrics.listen", m))?;
        crate::layout::PathTemplate::parse(&self.files.path).map_err(|m| bad("files.path", m))?;
        crate::partitioning::TimeSource::parse(&self.files.time)
            .map_err(|m| bad("files.time", m))?;
        if self.files.max_rows == Some(0) {
            return Err(bad("files.max_rows", "expected at least 1".into()));
        }
        if self.files.max_bytes < 1024 * 1024 {
            return Err(bad("files.max_bytes", "expected at least 1MiB".into()));
        }
        if self.files.max_bytes > MAX_FILE_BYTES {
            // A streamed file is copied to its key, and S3 copies at most
            // 5 GiB in one request; a file may pass max_bytes by a batch.
            return Err(bad(
                "files.max_bytes",
                "expected at most 4GiB (streamed files are copied to their key; S3 copies up to 5 GiB)".into(),
            ));
        }
        let parquet = &self.parquet;
        let level_range = match parquet.compression {
            Codec::Zstd => Some(1..=22),
            Codec::Gzip => Some(0..=9),
            _ => None,
        };
        match (parquet.compression_level, level_range) {
            (Some(level), Some(range)) if !range.contains(&level) => {
                return Err(bad(
                    "parquet.compression_level",
                    format!(
                        "expected {}–{} for {}, got {level}",
                        range.start(),
                        range.end(),
                        parquet.compression.name()
                    ),
                ));
            }
            (Some(_), None) => {
                return Err(bad(
                    "parquet.compression_level",
                    format!(
                        "{} takes no level; remove the key",
                        parquet.compression.name()
                    ),
                ));
            }
            _ => {}
        }
        if parquet.row_group_rows == 0 {
            return Err(bad("parquet.row_group_rows", "expected at least 1".into()));
        }
        if parquet.data_page_bytes < 1024 {
            return Err(bad(
                "parquet.data_page_bytes",
                "expected at least 1KiB".into(),
            ));
        }
        Ok(())
    }

    /// The directory of `.proto` files named by `schema.registry`.
    pub fn schema_source(&self) -> Result<SchemaSource, String> {
        let registry = &self.schema.registry;
        match registry.strip_prefix("file://") {
            Some(dir) if !dir.is_empty() => Ok(SchemaSource::Local(PathBuf::from(dir))),
            _ if registry.starts_with("http://") || registry.starts_with("https://") => {
                Ok(SchemaSource::Confluent {
                    url: registry.clone(),
                    subject: self.schema.subject.clone().unwrap_or_else(|| {
                        self.schema
                            .subject_strategy
                            .unwrap_or(SubjectStrategy::TopicNameStrategy)
                            .subject(&self.kafka.topic, &self.event.message)
                    }),
                    version: self.schema.version,
                })
            }
            _ => Err(format!(
                "expected `file://<directory of .proto files>` or a registry URL `https://host:port`, got {:?}",
                registry
            )),
        }
    }

    /// Where files wait for their commit when `storage.bucket_notifications`
    /// is on (`None` when off): a key prefix in the store.
    pub fn staging_prefix(&self, prefix: &str) -> Option<String> {
        if !self.storage.bucket_notifications {
            return None;
        }
        Some(match &self.storage.staging_prefix {
            Some(p) => p.trim_matches('/').to_owned(),
            None => crate::layout::under(prefix, "_sluice/staging"),
        })
    }

    pub fn storage_url(&self) -> Result<StorageUrl, String> {
        parse_storage_url(&self.storage.url)
    }

    pub fn metrics_listen(&self) -> Result<SocketAddr, String> {
        self.metrics.listen.parse().map_err(|_| {
            format!(
                "expected `host:port` such as `0.0.0.0:9464`, got {:?}",
                self.metrics.listen
            )
        })
    }
}

fn parse_storage_url(url: &str) -> Result<StorageUrl, String> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.len() < 3 {
            return Err(format!(
                "expected `s3://<bucket>/<prefix>` with a bucket name of at least 3 characters, got {url:?}"
            ));
        }
        return Ok(StorageUrl::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        });
    }
    if let Some(dir) = url.strip_prefix("file://")
        && dir.starts_with('/')
    {
        return Ok(StorageUrl::Local {
            dir: PathBuf::from(dir),
        });
    }
    Err(format!(
        "expected `s3://<bucket>/<prefix>` or `file:///<absolute dir>`, got {url:?}"
    ))
}

/// `SLUICE_KAFKA__BROKERS=…` sets `kafka.brokers`. Values go in as strings;
/// the few non-string keys accept their string forms. An empty value removes
/// the key (as if the file did not set it), the way container environments
/// unset a variable.
fn apply_env_overrides(table: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("SLUICE_") else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let [tables @ .., key] = path.as_slice() else {
            continue;
        };
        if tables.is_empty() {
            continue;
        }
        override_key(table, tables, key, value);
    }
}

/// Sets (or, for an empty value, removes) `key` in the table at `tables`,
/// making the tables that are missing; a path through a non-table is left
/// alone (deserialization then names the key).
fn override_key(table: &mut toml::Table, tables: &[String], key: &str, value: String) {
    match tables.split_first() {
        Some((name, rest)) => {
            let entry = table
                .entry(name.as_str())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = entry {
                override_key(inner, rest, key, value);
            }
        }
        None if value.is_empty() => {
            table.remove(key);
        }
        None => {
            table.insert(key.to_owned(), toml::Value::String(value));
        }
    }
}

/// Replaces `${VAR}` in every string of `table` with the variable's value
/// (`$${` stands for a literal `${`); an unset variable is an error naming
/// the key and the variable.
fn interpolate_table(
    table: &mut toml::Table,
    prefix: &str,
    vars: &BTreeMap<&str, &str>,
) -> Result<(), (String, String)> {
    for (name, value) in table.iter_mut() {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        interpolate_value(value, &key, vars)?;
    }
    Ok(())
}

fn interpolate_value(
    value: &mut toml::Value,
    key: &str,
    vars: &BTreeMap<&str, &str>,
) -> Result<(), (String, String)> {
    match value {
        toml::Value::String(text) if text.contains("${") => {
            *text = interpolate(text, vars).map_err(|m| (key.to_owned(), m))?;
        }
        toml::Value::Table(table) => interpolate_table(table, key, vars)?,
        toml::Value::Array(items) => {
            for item in items {
                interpolate_value(item, key, vars)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn interpolate(text: &str, vars: &BTreeMap<&str, &str>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find('}') else {
            return Err("`${` without a closing `}` (write `$${` for a literal `${`)".into());
        };
        let name = &rest[at + 2..at + end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{name}}}` is not an environment variable name (letters, digits, `_`)"
            ));
        }
        match vars.get(name) {
            Some(value) => out.push_str(value),
            None => return Err(format!("environment variable {name} is not set")),
        }
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    format!(" (line {line})")
}

/// Deserializers that accept a value's native TOML form or its string form
/// (environment overrides are strings).
pub(crate) mod de {
    use serde::{Deserialize, Deserializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Int(u64),
        Str(String),
    }

    pub(super) fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Bool(b) => Ok(Some(b)),
            Raw::Str(s) if s == "true" => Ok(Some(true)),
            Raw::Str(s) if s == "false" => Ok(Some(false)),
            _ => Err(D::Error::custom("expected `true` or `false`")),
        }
    }

    pub(crate) fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        opt_bool(d).map(|b| b.unwrap_or(false))
    }

    /// `auto`, or a boolean (also as text, from the environment).
    pub(super) fn dictionary<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<super::Dictionary, D::Error> {
        use super::Dictionary;
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Dictionary::All),
            Raw::Bool(false) => Ok(Dictionary::None),
            Raw::Str(s) => match s.trim() {
                "auto" => Ok(Dictionary::Auto),
                "true" | "all" => Ok(Dictionary::All),
                "false" | "none" => Ok(Dictionary::None),
                other => Err(D::Error::custom(format!(
                    "expected `auto`, `true` or `false`, got {other:?}"
                ))),
            },
            Raw::Int(_) => Err(D::Error::custom("expected `auto`, `true` or `false`")),
        }
    }

    pub(super) fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Some(n)),
            Raw::Str(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| D::Error::custom(format!("expected a whole number, got {s:?}"))),
            Raw::Bool(_) => Err(D::Error::custom("expected a whole number")),
        }
    }

    pub(super) fn usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Int(n) => usize::try_from(n).map_err(D::Error::custom),
            Raw::Str(s) => s
                .trim()
                .parse()
                .map_err(|_| D::Error::custom(format!("expected a whole number, got {s:?}"))),
            Raw::Bool(_) => Err(D::Error::custom("expected a whole number")),
        }
    }

    pub(super) fn version<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        let expected = || D::Error::custom("expected `latest` or a version number such as 3");
        match Raw::deserialize(d)? {
            Raw::Str(s) if s.trim() == "latest" => Ok(None),
            Raw::Str(s) => s
                .trim()
                .parse()
                .ok()
                .filter(|&v| v > 0)
                .map(Some)
                .ok_or_else(expected),
            Raw::Int(n) => u32::try_from(n)
                .ok()
                .filter(|&v| v > 0)
                .map(Some)
                .ok_or_else(expected),
            Raw::Bool(_) => Err(expected()),
        }
    }

    pub(super) fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(n),
            Raw::Str(s) => super::parse_byte_size(&s).ok_or_else(|| {
                D::Error::custom(format!(
                    "expected a size such as `268435456`, `256MiB` or `1GiB`, got {s:?}"
                ))
            }),
            Raw::Bool(_) => Err(D::Error::custom("expected a size such as `256MiB`")),
        }
    }
}

/// `123`, `64KiB`, `256MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1000).
pub fn parse_byte_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

/// Whether a key's name says its value is a secret (Kafka's SASL and SSL
/// properties among them).
fn is_secret_key(key: &str) -> bool {
    const SECRET: [&str; 5] = ["password", "secret", "token", "jaas", "ssl.key.pem"];
    let key = key.to_ascii_lowercase();
    SECRET.iter().any(|s| key.contains(s))
}

/// Masks secrets in `value`, found under `key`.
fn redact(value: &mut serde_json::Value, key: &str) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                redact(v, k);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| redact(v, key)),
        serde_json::Value::String(text) => {
            if is_secret_key(key) {
                *text = "***".to_owned();
            } else if let Some((scheme, rest)) = text.split_once("://")
                && let Some((userinfo, host)) = rest.split_once('@')
                && !userinfo.contains('/')
            {
                let user = userinfo.split(':').next().unwrap_or_default();
                *text = format!("{scheme}://{user}:***@{host}");
            }
        }
        _ => {}
    }
}
