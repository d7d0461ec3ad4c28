use std::time::Duration;

use super::de::parse_byte_size;
use super::*;

const MINIMAL: &str = r#"
[event]
name = "order_placed"
message = "sluice.examples.OrderPlaced"
[kafka]
brokers = "127.0.0.1:9092"
topic = "orders"
group_id = "g"
[schema]
registry = "file://schemas"
[storage]
url = "s3://bucket/prefix"
"#;

fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let path = Path::new("sinks/test.toml");
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let mut config = Config::parse(path, text, env)?;
    config.source_file = path.to_owned();
    config.validate()?;
    Ok(config)
}

fn error(text: &str, env: &[(&str, &str)]) -> String {
    match parse(text, env) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let config = parse(MINIMAL, &[]).unwrap();
    assert_eq!(config.checkpoint.interval, Duration::from_secs(60));
    assert_eq!(config.kafka.auto_offset_reset, "earliest");
    assert_eq!(
        config.storage_url().unwrap(),
        StorageUrl::S3 {
            bucket: "bucket".into(),
            prefix: "prefix".into()
        }
    );
    assert!(config.notify.queue_url.is_none());
}

#[test]
fn environment_overrides_any_key() {
    let config = parse(
        MINIMAL,
        &[
            ("SLUICE_KAFKA__BROKERS", "kafka:29092"),
            ("SLUICE_CHECKPOINT__INTERVAL", "5s"),
            ("SLUICE_NOTIFY__QUEUE_URL", "http://localhost:4566/1/q"),
            ("SLUICE_STORAGE__FORCE_PATH_STYLE", "true"),
            ("SLUICE_MEMORY__MAX_BUFFER_BYTES", "64MiB"),
            ("SLUICE_CACHE", "ignored: no section separator"),
            ("SLUICE_METRICS__LISTEN", ""),
        ],
    )
    .unwrap();
    assert_eq!(config.kafka.brokers, "kafka:29092");
    assert_eq!(config.checkpoint.interval, Duration::from_secs(5));
    assert_eq!(
        config.notify.queue_url.as_deref(),
        Some("http://localhost:4566/1/q")
    );
    assert_eq!(config.storage.force_path_style, Some(true));
    assert_eq!(config.errors.policy, ErrorPolicy::DeadLetter);
    let skip = parse(MINIMAL, &[("SLUICE_ERRORS__POLICY", "skip")]).unwrap();
    assert_eq!(skip.errors.policy, ErrorPolicy::Skip);
    assert_eq!(config.memory.max_buffer_bytes, 64 << 20);
    assert_eq!(
        config.metrics.listen, "0.0.0.0:9464",
        "empty means the default"
    );
}

#[test]
fn unknown_key_names_file_and_key() {
    let e = error(
        &format!("{MINIMAL}\n[checkpoint]\nintervall = \"5s\"\n"),
        &[],
    );
    assert!(
        e.starts_with("sinks/test.toml: key `checkpoint.intervall`"),
        "{e}"
    );
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn missing_key_names_it() {
    let e = error(&MINIMAL.replace("topic = \"orders\"\n", ""), &[]);
    assert_eq!(
        e,
        "sinks/test.toml: key `kafka.topic`: required key is missing"
    );
}

#[test]
fn bad_duration_says_what_was_expected() {
    let e = error(
        &format!("{MINIMAL}\n[checkpoint]\ninterval = \"soon\"\n"),
        &[],
    );
    assert!(
        e.starts_with("sinks/test.toml: key `checkpoint.interval`"),
        "{e}"
    );
    assert!(
        e.ends_with("expected a duration like `60s`, `5m` or `1h 30m`"),
        "{e}"
    );
}

#[test]
fn bad_storage_url_is_rejected() {
    let e = error(&MINIMAL.replace("s3://bucket/prefix", "gs://x/y"), &[]);
    assert!(e.contains("key `storage.url`: expected `s3://"), "{e}");
    let e = error(&MINIMAL.replace("s3://bucket/prefix", "s3://ab/y"), &[]);
    assert!(e.contains("at least 3 characters"), "{e}");
}

#[test]
fn bad_queue_url_is_rejected() {
    for url in ["sluice-files", "sqs://q", "https://"] {
        let e = error(MINIMAL, &[("SLUICE_NOTIFY__QUEUE_URL", url)]);
        assert!(
            e.starts_with(
                "sinks/test.toml: key `notify.queue_url`: expected a queue URL like `https://sqs."
            ),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn unknown_error_policy_lists_the_choices() {
    let e = error(MINIMAL, &[("SLUICE_ERRORS__POLICY", "ignore")]);
    assert!(
        e.starts_with("sinks/test.toml: key `errors.policy`: unknown variant `ignore`"),
        "{e}"
    );
    assert!(e.contains("dead_letter"), "{e}");
}

#[test]
fn workers_are_counted_from_the_cpus_or_set() {
    let default = parse(MINIMAL, &[]).unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(default.pipeline.workers(64), cpus.min(8));
    assert_eq!(
        default.pipeline.workers(1),
        1,
        "no more than the partitions"
    );
    let set = parse(MINIMAL, &[("SLUICE_PIPELINE__WORKERS", "3")]).unwrap();
    assert_eq!((set.pipeline.workers(64), set.pipeline.workers(2)), (3, 2));
    let e = error(MINIMAL, &[("SLUICE_PIPELINE__WORKERS", "0")]);
    assert!(
        e.contains("pipeline.workers") && e.contains("at least 1"),
        "{e}"
    );
    let e = error(MINIMAL, &[("SLUICE_PIPELINE__WORKERS", "two")]);
    assert!(e.contains("pipeline") && e.contains("whole number"), "{e}");
}

#[test]
fn wrong_type_is_rejected() {
    let e = error(&MINIMAL.replace("topic = \"orders\"", "topic = 5"), &[]);
    assert!(
        e.starts_with("sinks/test.toml: key `kafka.topic`: invalid type"),
        "{e}"
    );
}

#[test]
fn syntax_error_names_line() {
    let e = error("[event\nname = 1", &[]);
    assert!(e.starts_with("sinks/test.toml: not valid TOML"), "{e}");
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn byte_sizes() {
    assert_eq!(parse_byte_size("123"), Some(123));
    assert_eq!(parse_byte_size("64MiB"), Some(64 << 20));
    assert_eq!(parse_byte_size("1 GiB"), Some(1 << 30));
    assert_eq!(parse_byte_size("2MB"), Some(2_000_000));
    assert_eq!(parse_byte_size("lots"), None);
}

#[test]
fn registry_subject_and_version() {
    let registry = [("SLUICE_SCHEMA__REGISTRY", "https://registry:8081")];
    let config = parse(MINIMAL, &registry).unwrap();
    assert_eq!(
        config.schema_source().unwrap(),
        SchemaSource::Confluent {
            url: "https://registry:8081".into(),
            subject: "orders-value".into(),
            version: None,
        }
    );
    for (text, expected) in [("latest", None), ("4", Some(4))] {
        let env = [registry[0], ("SLUICE_SCHEMA__VERSION", text)];
        assert_eq!(parse(MINIMAL, &env).unwrap().schema.version, expected);
    }
    for (strategy, subject) in [
        ("TopicNameStrategy", "orders-value"),
        ("RecordNameStrategy", "sluice.examples.OrderPlaced"),
        (
            "io.confluent.kafka.serializers.subject.TopicRecordNameStrategy",
            "orders-sluice.examples.OrderPlaced",
        ),
    ] {
        let env = [registry[0], ("SLUICE_SCHEMA__SUBJECT_STRATEGY", strategy)];
        let source = parse(MINIMAL, &env).unwrap().schema_source().unwrap();
        assert!(
            matches!(&source, SchemaSource::Confluent { subject: s, .. } if s == subject),
            "{strategy}: {source:?}"
        );
    }
    let both = [
        registry[0],
        ("SLUICE_SCHEMA__SUBJECT_STRATEGY", "RecordNameStrategy"),
        ("SLUICE_SCHEMA__SUBJECT", "orders-value"),
    ];
    let e = error(MINIMAL, &both);
    assert!(e.contains("schema.subject_strategy"), "{e}");
    let e = error(
        MINIMAL,
        &[registry[0], ("SLUICE_SCHEMA__SUBJECT_STRATEGY", "ByTopic")],
    );
    assert!(
        e.contains("schema.subject_strategy") && e.contains("RecordNameStrategy"),
        "{e}"
    );
    let pinned = MINIMAL.replace("[storage]", "version = 2\n[storage]");
    assert_eq!(parse(&pinned, &[]).unwrap().schema.version, Some(2));
    let e = error(&MINIMAL.replace("[storage]", "version = 0\n[storage]"), &[]);
    assert!(
        e.contains("schema.version") && e.contains("expected `latest` or a version number"),
        "{e}"
    );
}

#[test]
fn parquet_and_files_sections() {
    let defaults = parse(MINIMAL, &[]).unwrap();
    assert_eq!(defaults.parquet.compression, Codec::Zstd);
    assert_eq!(defaults.parquet.dictionary, Dictionary::Auto);
    assert_eq!(defaults.files.max_bytes, 128 * 1024 * 1024);
    for (value, env, expected) in [
        ("true", None, Dictionary::All),
        ("false", None, Dictionary::None),
        ("\"auto\"", None, Dictionary::Auto),
        ("true", Some("false"), Dictionary::None),
    ] {
        let text = format!("{MINIMAL}\n[parquet]\ndictionary = {value}\n");
        let env: Vec<(&str, &str)> = env
            .map(|v| vec![("SLUICE_PARQUET__DICTIONARY", v)])
            .unwrap_or_default();
        assert_eq!(
            parse(&text, &env).unwrap().parquet.dictionary,
            expected,
            "{value}"
        );
    }
    let tuned = format!(
        "{MINIMAL}\n[parquet]\ncompression = \"gzip\"\ncompression_level = 9\n\
         bloom_filters = [\"order_id\"]\nwriter_version = \"2.0\"\nstatistics = \"page\"\n\
         [files]\nmax_rows = 1000\nmax_bytes = \"64MiB\"\n"
    );
    let config = parse(&tuned, &[]).unwrap();
    assert_eq!(config.parquet.compression, Codec::Gzip);
    assert_eq!(config.parquet.writer_version, ParquetVersion::V2);
    assert_eq!(config.parquet.statistics, Statistics::Page);
    assert_eq!(config.files.max_rows, Some(1000));
    assert_eq!(config.files.max_bytes, 64 * 1024 * 1024);
    let env = [
        ("SLUICE_PARQUET__COMPRESSION", "snappy"),
        ("SLUICE_FILES__MAX_ROWS", "5"),
    ];
    let config = parse(MINIMAL, &env).unwrap();
    assert_eq!(config.parquet.compression, Codec::Snappy);
    assert_eq!(config.files.max_rows, Some(5));

    let cases = [
        ("compression = \"brotli\"", "parquet.compression", "zstd"),
        (
            "compression_level = 23",
            "parquet.compression_level",
            "expected 1–22 for zstd, got 23",
        ),
        (
            "compression = \"snappy\"\ncompression_level = 1",
            "parquet.compression_level",
            "snappy takes no level",
        ),
        ("writer_version = \"3\"", "parquet.writer_version", "1.0"),
        ("row_group_rows = 0", "parquet.row_group_rows", "at least 1"),
        (
            "dictionary = \"some\"",
            "parquet.dictionary",
            "expected `auto`, `true` or `false`",
        ),
    ];
    for (body, key, expected) in cases {
        let e = error(&format!("{MINIMAL}\n[parquet]\n{body}\n"), &[]);
        assert!(e.contains(key) && e.contains(expected), "{body}: {e}");
        assert!(e.contains("sinks/test.toml"), "{e}");
    }
    let e = error(&format!("{MINIMAL}\n[files]\nmax_bytes = \"5GiB\"\n"), &[]);
    assert!(
        e.contains("files.max_bytes") && e.contains("at most 4GiB"),
        "{e}"
    );
}

#[test]
fn redacted_dump_masks_secrets_and_keeps_the_rest() {
    let text = format!(
        "{MINIMAL}\n[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\
         \"sasl.jaas.config\" = \"user=a password=hunter2\"\n\
         \"ssl.keystore.password\" = \"hunter2\"\n\"sasl.username\" = \"svc\"\n"
    );
    let env = [(
        "SLUICE_NOTIFY__QUEUE_URL",
        "https://ops:hunter2@sqs.example/1/q",
    )];
    let dump = parse(&text, &env).unwrap().redacted().to_string();
    assert!(!dump.contains("hunter2"), "{dump}");
    assert!(dump.contains(r#""sasl.password":"***""#), "{dump}");
    assert!(dump.contains(r#""sasl.username":"svc""#), "{dump}");
    assert!(dump.contains("https://ops:***@sqs.example/1/q"), "{dump}");
    assert!(dump.contains(r#""url":"s3://bucket/prefix""#), "{dump}");
}

#[test]
fn environment_variables_fill_values_and_nested_overrides_reach_security() {
    let text = format!(
        "{MINIMAL}[kafka.security]\nprotocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
         sasl_username = \"${{KAFKA_USER}}-sink\"\nsasl_password = \"${{KAFKA_PASSWORD}}\"\n"
    );
    let config = parse(
        &text,
        &[
            ("KAFKA_USER", "sluice"),
            ("KAFKA_PASSWORD", "s3cret-pass"),
            ("SLUICE_KAFKA__SECURITY__CA_FILE", "/etc/ca.pem"),
        ],
    )
    .unwrap();
    let security = &config.kafka.security;
    assert_eq!(security.sasl_username.as_deref(), Some("sluice-sink"));
    assert_eq!(
        security.sasl_password.as_ref().unwrap().expose(),
        "s3cret-pass"
    );
    assert_eq!(security.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
    let shown = format!("{config:?} {}", config.redacted());
    assert!(!shown.contains("s3cret-pass"), "{shown}");

    let unset = error(&text, &[("KAFKA_USER", "sluice")]);
    assert_eq!(
        unset,
        "sinks/test.toml: key `kafka.security.sasl_password`: environment variable KAFKA_PASSWORD is not set"
    );
    let literal = parse(
        &format!("{MINIMAL}[kafka.properties]\n\"client.rack\" = \"$${{not-a-var}}\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(literal.kafka.properties["client.rack"], "${not-a-var}");
}

#[test]
fn security_mistakes_name_the_key() {
    let text = format!("{MINIMAL}[kafka.security]\nprotocol = \"sasl_ssl\"\n");
    assert!(
        error(&text, &[]).starts_with("sinks/test.toml: key `kafka.security.sasl_mechanism`: "),
        "{}",
        error(&text, &[])
    );
    let text = format!("{MINIMAL}[kafka.security]\nprotocol = \"tls\"\n");
    assert!(
        error(&text, &[]).contains("expected `plaintext`, `ssl`"),
        "{}",
        error(&text, &[])
    );
}

#[test]
fn encryption_keys_are_checked() {
    let config = parse(
        MINIMAL,
        &[
            ("SLUICE_STORAGE__SERVER_SIDE_ENCRYPTION", "aws:kms"),
            ("SLUICE_STORAGE__KMS_KEY_ID", "alias/k"),
            ("SLUICE_STORAGE__BUCKET_KEY", "true"),
            ("SLUICE_STORAGE__EXPECTED_BUCKET_OWNER", "123456789012"),
        ],
    )
    .unwrap();
    assert_eq!(
        config.storage.server_side_encryption,
        Some(Encryption::AwsKms)
    );
    assert_eq!(config.storage.bucket_key, Some(true));
    for (env, words) in [
        (
            ("SLUICE_STORAGE__KMS_KEY_ID", "alias/k"),
            "key `storage.kms_key_id`: is an SSE-KMS setting",
        ),
        (
            ("SLUICE_STORAGE__EXPECTED_BUCKET_OWNER", "me"),
            "key `storage.expected_bucket_owner`: expected a 12-digit AWS account id",
        ),
        (
            ("SLUICE_STORAGE__SERVER_SIDE_ENCRYPTION", "kms"),
            "key `storage.server_side_encryption`",
        ),
    ] {
        let message = error(MINIMAL, &[env]);
        assert!(message.contains(words), "{message}");
    }
}
