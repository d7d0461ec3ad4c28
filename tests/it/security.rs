//! Secured Kafka: the local broker's SASL_SSL, mTLS and SASL_PLAINTEXT
//! listeners (scripts/kafka-broker with the certificates scripts/dev-pki
//! makes; users and ACLs from scripts/kafka-security). Records are produced
//! over the PLAINTEXT listener; sluice reads them over a secured one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::{
    self, Sink, check_exactly_once, check_published_and_announced, ends, reference_sample,
};

fn pki() -> PathBuf {
    std::env::var_os("KAFKA_PKI_DIR").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sluice-dev/run/pki"),
        PathBuf::from,
    )
}

fn listener(variable: &str, offset: u16) -> String {
    std::env::var(variable).unwrap_or_else(|_| format!("localhost:{}", 9092 + offset))
}

fn sasl_ssl() -> String {
    listener("KAFKA_SASL_SSL_BROKERS", 2)
}

fn mtls() -> String {
    listener("KAFKA_MTLS_BROKERS", 3)
}

fn sasl_plaintext() -> String {
    std::env::var("KAFKA_SASL_PLAINTEXT_BROKERS").unwrap_or_else(|_| "127.0.0.1:9096".into())
}

/// `[kafka.security]` for SCRAM-SHA-512 over TLS as `user`, then `more`.
fn scram(user: &str, more: &str) -> String {
    format!(
        "[kafka.security]\nprotocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
         sasl_username = \"{user}\"\nca_file = \"{}\"\n{more}\n",
        pki().join("ca.pem").display()
    )
}

/// `[kafka.security]` for mutual TLS, the key's password from its file.
fn mutual_tls() -> String {
    let pki = pki();
    format!(
        "[kafka.security]\nprotocol = \"ssl\"\nca_file = \"{}\"\ncert_file = \"{}\"\n\
         key_file = \"{}\"\nkey_password_file = \"{}\"\n",
        pki.join("ca.pem").display(),
        pki.join("client.crt").display(),
        pki.join("client.key").display(),
        pki.join("client.key.password").display(),
    )
}

/// Produces over PLAINTEXT, runs sluice over `brokers` with `security`
/// (and `env`), and checks that exactly what was produced was committed,
/// published and announced; returns the sink's logs.
async fn pipeline_over(brokers: &str, security: &str, env: &[(&str, &str)]) -> String {
    let fixture = support::fixture(2).await;
    let produced = fixture.produce(0..4_000).await;
    let mut sink = fixture.sink_with("1s", security);
    let mut env = env.to_vec();
    env.push(("SLUICE_KAFKA__BROKERS", brokers));
    env.push(("SLUICE_LOG", "debug"));
    sink.start_with_env(&env);
    sink.wait_committed(
        &ends(&produced, fixture.partitions),
        Duration::from_secs(120),
    );
    let status = sink.stop();
    assert!(status.success(), "exit {status:?}; log:\n{}", sink.logs());
    let read = fixture.read();
    check_exactly_once(&read, &produced, &reference_sample());
    check_published_and_announced(&read);
    sink.logs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_512_over_tls_with_the_password_from_the_environment() {
    let logs = pipeline_over(
        &sasl_ssl(),
        &scram("sluice", "sasl_password = \"${TEST_KAFKA_PASSWORD}\""),
        &[("TEST_KAFKA_PASSWORD", "scram-secret")],
    )
    .await;
    assert!(
        !logs.contains("scram-secret"),
        "the password was logged:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_over_tls_with_the_password_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "plain-secret\n").unwrap();
    let security = format!(
        "[kafka.security]\nprotocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\n\
         sasl_username = \"sluice-plain\"\nsasl_password_file = \"{}\"\nca_file = \"{}\"\n",
        file.display(),
        pki().join("ca.pem").display()
    );
    let logs = pipeline_over(&sasl_ssl(), &security, &[]).await;
    assert!(
        !logs.contains("plain-secret"),
        "the password was logged:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_an_encrypted_key() {
    let password = std::fs::read_to_string(pki().join("client.key.password")).unwrap();
    let logs = pipeline_over(&mtls(), &mutual_tls(), &[]).await;
    assert!(
        !logs.contains(password.trim()),
        "the key's password was logged:\n{logs}"
    );
}

/// `sluice check` of a sink on `brokers` with `security`: its `kafka`
/// line, and the whole output (stdout and stderr).
fn check_kafka(brokers: &str, security: &str, env: &[(&str, &str)]) -> (String, String) {
    check_kafka_without(brokers, security, env, &[])
}

/// As [`check_kafka`], with the variables `unset` removed.
fn check_kafka_without(
    brokers: &str,
    security: &str,
    env: &[(&str, &str)],
    unset: &[&str],
) -> (String, String) {
    let sink = Sink::with_extra(
        support::SinkSpec {
            topic: "orders.order_placed",
            storage_url: "file:///tmp/sluice-check-security",
            queue_url: None,
            interval: "10s",
        },
        security,
    );
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["check", "--config"])
        .arg(&sink.config)
        .env("SLUICE_KAFKA__BROKERS", brokers)
        .envs(env.iter().copied());
    for name in unset {
        command.env_remove(name);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout
        .lines()
        .find(|l| l.contains(" kafka "))
        .unwrap_or_else(|| panic!("no kafka line:\n{all}"))
        .to_owned();
    (line, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_failing_step_in_one_line() {
    // The topic the checks look at.
    sluice::sample::ensure_topic(&support::brokers(), "orders.order_placed", 4)
        .await
        .unwrap();
    let password = "sasl_password = \"scram-secret\"";
    let (ok, all) = check_kafka(&sasl_ssl(), &scram("sluice", password), &[]);
    assert!(ok.starts_with("ok "), "{all}");
    assert!(
        ok.contains("SASL_SSL, SCRAM-SHA-512 as user `sluice`, TLSv1.3, broker certificate CN=localhost (expires "),
        "{ok}"
    );
    let (ok, all) = check_kafka(&mtls(), &mutual_tls(), &[]);
    assert!(ok.starts_with("ok ") && ok.contains("(SSL, TLSv1"), "{all}");

    let other_ca = format!("ca_file = \"{}\"", pki().join("other-ca.pem").display());
    let untrusted = scram("sluice", password).replace(
        &format!("ca_file = \"{}\"", pki().join("ca.pem").display()),
        &other_ca,
    );
    let mismatch_host = sasl_ssl().replace("localhost", "127.0.0.1");
    let cases: [(&str, String, String, &str); 6] = [
        (
            "wrong password",
            sasl_ssl(),
            scram("sluice", "sasl_password = \"not-the-password\""),
            "SASL authentication: the broker sasl_ssl://localhost:",
        ),
        (
            "untrusted CA",
            sasl_ssl(),
            untrusted,
            "certificate is not signed by a trusted CA",
        ),
        (
            "host name mismatch",
            mismatch_host,
            scram("sluice", password),
            "(host name mismatch)",
        ),
        (
            "missing client certificate",
            mtls(),
            format!(
                "[kafka.security]\nprotocol = \"ssl\"\nca_file = \"{}\"\n",
                pki().join("ca.pem").display()
            ),
            "requires a client certificate (mTLS)",
        ),
        (
            "topic ACL",
            sasl_ssl(),
            scram("no-topic", password),
            "authorization: the brokers' ACLs deny user `no-topic` the topic orders.order_placed",
        ),
        (
            "group ACL",
            sasl_ssl(),
            scram("no-group", password),
            "authorization: the brokers' ACLs deny user `no-group` the consumer group",
        ),
    ];
    for (case, brokers, security, expected) in cases {
        let started = Instant::now();
        let (line, all) = check_kafka(&brokers, &security, &[]);
        assert!(line.starts_with("FAIL  kafka "), "{case}: {all}");
        assert!(line.contains(expected), "{case}: {line}");
        assert!(!line.contains("BrokerTransportFailure"), "{case}: {line}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{case}: took {:?}",
            started.elapsed()
        );
        assert!(
            !all.contains("not-the-password") && !all.contains("scram-secret"),
            "{case}: a password was printed:\n{all}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_when_kafka_keeps_refusing_it() {
    let fixture = support::fixture(1).await;
    let security = scram(
        "sluice",
        "sasl_password = \"${TEST_WRONG_PASSWORD}\"\nauth_failure_timeout = \"3s\"",
    );
    let mut sink = fixture.sink_with("1s", &security);
    let started = Instant::now();
    sink.start_with_env(&[
        ("SLUICE_KAFKA__BROKERS", &sasl_ssl()),
        ("TEST_WRONG_PASSWORD", "wrong-password-here"),
        ("SLUICE_LOG", "debug"),
        ("SLUICE_KAFKA__PROPERTIES__DEBUG", "security,broker,conf"),
    ]);
    support::wait_until("/readyz to say why", Duration::from_secs(30), || {
        let (status, body) =
            support::http_get(&format!("http://127.0.0.1:{}/readyz", sink.metrics_port));
        status == 503 && body.contains("SASL authentication")
    });
    let status = sink.wait_exit(Duration::from_secs(60));
    assert!(
        !status.success(),
        "sluice kept running; log:\n{}",
        sink.logs()
    );
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}",
        started.elapsed()
    );
    let logs = sink.logs();
    let refused: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("Kafka refused sluice"))
        .collect();
    assert!(
        refused
            .iter()
            .any(|l| l.contains("SASL authentication") && l.contains("invalid credentials")),
        "{logs}"
    );
    assert!(
        !logs.contains("wrong-password-here"),
        "the password was logged:\n{logs}"
    );
}

/// An unsigned JWS (`alg: none`) for `subject`, valid for an hour: what the
/// broker's unsecured OAUTHBEARER validator accepts.
fn unsigned_jwt(subject: &str) -> String {
    use base64::Engine;
    let encode = |json: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!(
        "{}.{}.",
        encode(serde_json::json!({"alg": "none"})),
        encode(
            serde_json::json!({"sub": subject, "iat": now, "exp": now + 3600, "scope": "kafka"})
        )
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_with_oidc_client_credentials() {
    use base64::Engine;
    let token = serde_json::json!({
        "access_token": unsigned_jwt("sluice-oidc"),
        "token_type": "bearer",
        "expires_in": 3600,
    });
    let endpoint = support::serve(std::collections::HashMap::from([(
        "/oauth2/token".to_owned(),
        token.to_string(),
    )]));
    let security = format!(
        "[kafka.security]\nprotocol = \"sasl_plaintext\"\nsasl_mechanism = \"OAUTHBEARER\"\n\
         oauth_token_endpoint_url = \"{}/oauth2/token\"\noauth_client_id = \"sluice-client\"\n\
         oauth_client_secret = \"${{TEST_OIDC_SECRET}}\"\noauth_scope = \"kafka\"\n",
        endpoint.url
    );
    let logs = pipeline_over(
        &sasl_plaintext(),
        &security,
        &[("TEST_OIDC_SECRET", "oidc-client-secret")],
    )
    .await;
    let basic =
        base64::engine::general_purpose::STANDARD.encode("sluice-client:oidc-client-secret");
    let seen = endpoint.auth.lock().unwrap().clone();
    assert!(
        seen.iter().any(|a| a == &format!("Basic {basic}")),
        "the token endpoint saw {seen:?}"
    );
    assert!(
        !logs.contains("oidc-client-secret"),
        "the client secret was logged:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msk_iam_signs_with_the_sdk_credential_chain() {
    sluice::sample::ensure_topic(&support::brokers(), "orders.order_placed", 4)
        .await
        .unwrap();
    // The container credentials endpoint of the SDK's default chain, served
    // here: no AWS call.
    let expiration = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let credentials = serde_json::json!({
        "AccessKeyId": "ASIALOCALTEST",
        "SecretAccessKey": "local-secret-access-key",
        "Token": "local-session-token",
        "Expiration": expiration,
    });
    let endpoint = support::serve(std::collections::HashMap::from([(
        "/credentials".to_owned(),
        credentials.to_string(),
    )]));
    let security = "[kafka.security]\nprotocol = \"sasl_plaintext\"\n\
                    sasl_mechanism = \"AWS_MSK_IAM\"\naws_region = \"eu-west-1\"\n";
    let full_uri = format!("{}/credentials", endpoint.url);
    let (line, all) = check_kafka_without(
        &sasl_plaintext(),
        security,
        &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full_uri)],
        &[
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        ],
    );
    assert!(
        endpoint.requests.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the credentials endpoint was never asked: {all}"
    );
    // The local broker validates unsigned JWS tokens only, so it refuses
    // the signed MSK token: at the SASL step, after the token was made.
    assert!(line.starts_with("FAIL  kafka "), "{all}");
    assert!(line.contains("SASL authentication"), "{line}");
    assert!(!all.contains("local-secret-access-key"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_kms_encrypted_requests_name_the_owner_and_bodies_go_unsigned() {
    use crate::fault_proxy::{FaultProxy, Op, Plan};
    const RECORDS: u64 = 150;
    let f = support::fixture(1).await;
    let sample = reference_sample();
    // Uncompressed 100 kB records, files closed at 6 MiB: streamed as
    // multipart uploads, staged and copied (bucket notifications on).
    let mut produced = support::produce_padded(&f.topic, &sample, 0..RECORDS, 100_000).await;
    // And records that become dead letters.
    let producer = support::producer();
    for i in 0..3 {
        let delivered = producer
            .send(
                rdkafka::producer::FutureRecord::to(&f.topic)
                    .partition(0)
                    .payload(&b"not protobuf"[..])
                    .key(&format!("bad-{i}")),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        produced.push(sluice::sample::Produced {
            partition: delivered.partition,
            offset: delivered.offset,
            seq: u64::MAX,
        });
    }
    // The queue is KMS-encrypted too: nothing changes for its sender.
    let encrypted = std::process::Command::new(support::python())
        .args([
            "-c",
            "import boto3, sys; boto3.client('sqs').set_queue_attributes(QueueUrl=sys.argv[1], \
             Attributes={'KmsMasterKeyId': 'alias/sluice-test'})",
            &f.queue,
        ])
        .status()
        .unwrap();
    assert!(encrypted.success());
    let mut sink = f.sink_with(
        "5s",
        "[parquet]\ncompression = \"none\"\n[memory]\nmax_buffer_bytes = \"64MiB\"\n\
         [files]\npath = \"{event}/all\"\nmax_bytes = \"6MiB\"\n",
    );
    let proxy = FaultProxy::start(
        &crate::faults::moto(),
        Plan {
            rules: Vec::new(),
            stall: Duration::ZERO,
        },
    );
    sink.start_with_env(&[
        ("AWS_ENDPOINT_URL", &proxy.url),
        ("SLUICE_STORAGE__BUCKET_NOTIFICATIONS", "true"),
        ("SLUICE_STORAGE__SERVER_SIDE_ENCRYPTION", "aws:kms"),
        ("SLUICE_STORAGE__KMS_KEY_ID", "alias/sluice-test"),
        ("SLUICE_STORAGE__BUCKET_KEY", "true"),
        ("SLUICE_STORAGE__EXPECTED_BUCKET_OWNER", "123456789012"),
        // As over HTTPS by default: bodies go as `UNSIGNED-PAYLOAD`, with
        // their checksum.
        ("SLUICE_STORAGE__SIGN_PAYLOAD", "false"),
    ]);
    sink.wait_committed(&ends(&produced, 1), Duration::from_secs(180));
    assert!(sink.stop().success(), "{}", sink.logs());

    let seen = proxy.seen();
    for op in [
        Op::ObjectPut,
        Op::ManifestPut,
        Op::MarkerPut,
        Op::CreateUpload,
        Op::UploadPart,
        Op::CompleteUpload,
        Op::Copy,
        Op::Read,
    ] {
        assert!(
            seen.get(&op).copied().unwrap_or(0) > 0,
            "no {op:?} request: {seen:?}"
        );
    }
    assert!(
        proxy.ownerless().is_empty(),
        "requests without the expected owner: {:?}",
        proxy.ownerless()
    );
    let unsigned = proxy.unsigned();
    for op in [
        Op::ObjectPut,
        Op::ManifestPut,
        Op::MarkerPut,
        Op::UploadPart,
    ] {
        assert_eq!(
            unsigned.get(&op),
            seen.get(&op),
            "{op:?}: bodies signed although told not to ({unsigned:?} of {seen:?})"
        );
    }

    check_published_and_announced(&f.read());

    let bucket = f.storage.trim_end_matches("/raw").to_owned();
    let objects = support::python_json("encryption.py", &[bucket]);
    let objects = objects.as_object().unwrap();
    let kinds = [
        ".parquet",
        "/_sluice/manifests/",
        ".notified",
        "/_dead_letters/",
    ];
    for kind in kinds {
        assert!(
            objects.keys().any(|k| k.contains(kind)),
            "no {kind} object: {:?}",
            objects.keys()
        );
    }
    for (key, encryption) in objects {
        assert_eq!(encryption["sse"], "aws:kms", "{key}: {encryption}");
        assert_eq!(
            encryption["kms_key_id"], "alias/sluice-test",
            "{key}: {encryption}"
        );
        assert_eq!(encryption["bucket_key"], true, "{key}: {encryption}");
    }
}
