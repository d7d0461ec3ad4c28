//! What operators watch: `/readyz` follows the consumer group, and the
//! metrics add up against what was produced and committed.

use std::time::Duration;

use sluice::sample;
use tokio::net::TcpListener;

use crate::support::{self, Sink, SinkSpec, metric, reference_sample};

/// A Kafka property holding a secret (unused on a plaintext listener).
const SECRET_PROPERTY: &str = "[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n";

/// Forwards connections on `listener` to the broker. librdkafka only
/// bootstraps through it: the broker advertises its own address.
fn forward_to_broker(listener: TcpListener) {
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(support::brokers()).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_group_and_metrics_add_up() {
    const GOOD: u64 = 3000;
    const PARTITIONS: i32 = 2;
    let topic = support::unique("ops");
    let bucket = support::unique("sluice-ops");
    support::create_bucket(&bucket).await;
    let queue = support::create_queue(&support::unique("ops-files")).await;
    sample::ensure_topic(&support::brokers(), &topic, PARTITIONS)
        .await
        .unwrap();
    let sample = reference_sample();
    let produced = sample::produce(&support::brokers(), &topic, PARTITIONS, &sample, 0..GOOD)
        .await
        .unwrap();
    let producer = support::producer();
    // Two records that cannot become rows: a payload that does not decode,
    // a content type sluice does not read.
    const BAD: u64 = 2;
    support::send_raw(&producer, &topic, b"\xff\xff\xff", &[]).await;
    support::send_raw(
        &producer,
        &topic,
        b"{}",
        &[("content-type", b"avro/binary")],
    )
    .await;

    let storage = format!("s3://{bucket}/raw");
    // A secret in the config never reaches a log line.
    let mut sink = Sink::with_extra(
        SinkSpec {
            topic: &topic,
            storage_url: &storage,
            queue_url: Some(&queue),
            interval: "2s",
        },
        SECRET_PROPERTY,
    );
    // The broker is reached through a port where nothing listens yet: the
    // process is alive but not in its group, so not ready.
    let port = support::free_port();
    sink.start_with_env(&[("SLUICE_KAFKA__BROKERS", &format!("127.0.0.1:{port}"))]);
    let base = format!("http://127.0.0.1:{}", sink.metrics_port);
    support::wait_until("/healthz to answer", Duration::from_secs(30), || {
        support::http_get(&format!("{base}/healthz")).0 == 200
    });
    for _ in 0..6 {
        let (status, body) = support::http_get(&format!("{base}/readyz"));
        assert_eq!(status, 503, "{body}");
        assert!(
            body.contains("not a member of the consumer group"),
            "{body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let health = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["health", "--url", &format!("{base}/readyz")])
        .output()
        .unwrap();
    assert!(!health.status.success(), "not ready yet: {health:?}");
    forward_to_broker(TcpListener::bind(("127.0.0.1", port)).await.unwrap());
    support::wait_until("/readyz to say ready", Duration::from_secs(60), || {
        support::http_get(&format!("{base}/readyz")).0 == 200
    });

    let mut ends = support::ends(&produced, PARTITIONS);
    ends[0] += BAD as i64; // send_raw writes to partition 0
    sink.wait_committed(&ends, Duration::from_secs(120));
    let consumed = GOOD as f64 + BAD as f64;
    support::wait_until("lag gauges to reach 0", Duration::from_secs(30), || {
        let m = sink.metrics();
        metric(&m, "sluice_records_consumed_total", &[]) == consumed
            && (0..PARTITIONS).all(|p| {
                m.keys().any(|k| {
                    k.starts_with("sluice_partition_lag{")
                        && k.contains(&format!("partition=\"{p}\""))
                }) && metric(&m, "sluice_partition_lag", &[&format!("partition=\"{p}\"")]) == 0.0
            })
    });
    let m = sink.metrics();
    // The dashboard queries only metrics a running sink serves.
    let dashboard = crate::deploy::dashboard_metrics();
    assert!(dashboard.len() >= 12, "{dashboard:?}");
    for name in &dashboard {
        assert!(
            m.keys()
                .any(|k| k == name || k.starts_with(&format!("{name}{{"))),
            "the dashboard queries {name}, which /metrics does not serve"
        );
    }
    // The image's health check command.
    let health = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["health", "--url", &format!("{base}/readyz")])
        .output()
        .unwrap();
    assert!(health.status.success(), "{health:?}");
    assert!(sink.stop().success(), "{}", sink.logs());
    assert!(
        sink.logs().contains(r#""sasl.password":"***""#),
        "{}",
        sink.logs()
    );
    assert!(!sink.logs().contains("hunter2"), "{}", sink.logs());

    let read = support::read_back_committed(&storage, Some(&queue));
    let data_files: Vec<&serde_json::Value> = read["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| !f["key"].as_str().unwrap().contains("/_dead_letters/"))
        .collect();
    let committed = metric(&m, "sluice_records_committed_total", &[]);
    let dead = metric(&m, "sluice_records_dead_lettered_total", &[]);
    let skipped = metric(&m, "sluice_records_skipped_total", &[]);
    assert_eq!(committed, GOOD as f64, "{m:?}");
    assert_eq!(dead, BAD as f64, "{m:?}");
    assert_eq!(skipped, 0.0, "{m:?}");
    // The delivery rate dashboards show.
    assert_eq!((committed + dead + skipped) / consumed, 1.0);
    assert_eq!(
        metric(&m, "sluice_files_committed_total", &[]),
        data_files.len() as f64
    );
    assert_eq!(
        metric(&m, "sluice_bytes_committed_total", &[]),
        data_files
            .iter()
            .map(|f| f["size"].as_f64().unwrap())
            .sum::<f64>()
    );
    assert_eq!(
        metric(&m, "sluice_notifications_sent_total", &[]),
        read["messages"].as_array().unwrap().len() as f64
    );
    assert_eq!(
        metric(&m, "sluice_commit_latency_seconds_count", &[]),
        data_files.len() as f64
    );
    assert!(metric(&m, "sluice_checkpoint_duration_seconds_count", &[]) >= 1.0);
    assert!(metric(&m, "sluice_upload_duration_seconds_count", &[]) >= data_files.len() as f64);
    assert!(metric(&m, "sluice_rebalances_total", &["kind=\"assign\""]) >= 1.0);
    assert_eq!(metric(&m, "sluice_buffered_rows", &[]), 0.0);
    assert_eq!(
        metric(&m, "sluice_memory_budget_bytes", &[]),
        (256u64 << 20) as f64
    );
    assert_eq!(metric(&m, "sluice_fencing_rejections_total", &[]), 0.0);
    assert_eq!(metric(&m, "sluice_notification_failures_total", &[]), 0.0);
}

/// `sluice check` and its output; `env` is set for the run.
fn check(config: &std::path::Path, env: &[(&str, String)]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(config)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Passes against the running stack; with each of Kafka, S3 and SQS out
/// of reach (pointed at a port where nothing listens) it fails, naming that
/// service and only that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_and_names_each_service_that_is_down() {
    let topic = support::unique("check");
    let bucket = support::unique("sluice-check");
    support::create_bucket(&bucket).await;
    let queue = support::create_queue(&support::unique("check-files")).await;
    sample::ensure_topic(&support::brokers(), &topic, 3)
        .await
        .unwrap();
    let storage = format!("s3://{bucket}/raw");
    let sink = Sink::with_extra(
        SinkSpec {
            topic: &topic,
            storage_url: &storage,
            queue_url: Some(&queue),
            interval: "5s",
        },
        SECRET_PROPERTY,
    );

    let (ok, out) = check(&sink.config, &[]);
    assert!(ok, "{out}");
    assert!(out.contains(r#""sasl.password": "***""#), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
    assert!(
        out.contains(&format!("ok    kafka   topic {topic}: 3 partition(s)")),
        "{out}"
    );
    assert!(
        out.contains(&format!("ok    store   {storage} writable")),
        "{out}"
    );
    assert!(out.contains("ok    queue   queue "), "{out}");
    assert!(
        out.contains("ok    schema  sluice.examples.OrderPlaced"),
        "{out}"
    );
    assert!(out.contains("  order_id: Utf8"), "{out}");
    assert!(
        out.contains("  _event_time: Timestamp(µs, \"UTC\") not null")
            || out.contains("_event_time: Timestamp("),
        "{out}"
    );
    assert!(out.contains("message arrow_schema"), "{out}");
    let probes = support::read_back(&storage, None);
    assert!(
        probes["files"].as_array().unwrap().is_empty(),
        "the probe object is deleted"
    );

    let dead = format!("127.0.0.1:{}", support::free_port());
    let cases = [
        ("kafka", "SLUICE_KAFKA__BROKERS", dead.clone()),
        ("store", "AWS_ENDPOINT_URL_S3", format!("http://{dead}")),
        ("queue", "AWS_ENDPOINT_URL_SQS", format!("http://{dead}")),
    ];
    for (service, var, value) in cases {
        let env = [(var, value), ("AWS_MAX_ATTEMPTS", "1".to_owned())];
        let (ok, out) = check(&sink.config, &env);
        assert!(!ok, "{service} down must fail: {out}");
        let failed: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
        assert_eq!(failed.len(), 1, "only {service} fails: {out}");
        assert!(failed[0].starts_with(&format!("FAIL  {service}")), "{out}");
        assert!(
            out.contains(&format!("1 check(s) failed: {service}")),
            "{out}"
        );
    }
}
