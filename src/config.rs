//! Sink configuration: one TOML file per event pipeline.
//!
//! Loading: parse the file, apply `SLUICE_<SECTION>__<KEY>` environment
//! overrides (`SLUICE_KAFKA__SECURITY__PROTOCOL` for a nested table),
//! replace `${VAR}` in every string with the environment's value,
//! deserialize into [`Config`] (unknown keys rejected), read the secrets
//! that `…_file` keys name, then [`Config::validate`] checks what serde
//! cannot. Every error names the file, the key and what was expected. This
//! module never touches the network.
//!
//! Here: [`Config`], loading and validation. `sections`: one struct per
//! TOML table, with its defaults. `env`: the overrides and `${VAR}`s. `de`:
//! deserializers that take a value or its string form. `redact`: secrets
//! masked in the effective configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub(crate) mod de;
mod env;
mod redact;
mod sections;

use env::{apply_env_overrides, interpolate_table};
use redact::{is_secret_key, redact};
pub use sections::*;

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

#[cfg(test)]
mod tests;
