//! The whole path against the real stack: produce to Kafka, run the sluice
//! binary, read the Parquet files back from moto's S3 with pyarrow and the
//! announcements from moto's SQS.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use sluice::sample::{self, Produced};

use crate::support::{self, Sink, SinkSpec, check_rows, decode_key, ends, reference_sample};

/// One message per file, whose key, size and row count match the file.
fn check_messages(read: &Value, bucket: &str, topic: &str) {
    let files: HashMap<String, &Value> = read["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["key"].as_str().unwrap().to_owned(), f))
        .collect();
    let messages = read["messages"].as_array().unwrap();
    assert_eq!(messages.len(), files.len(), "one message per file");
    let mut announced = std::collections::HashSet::new();
    for m in messages {
        let record = &m["Records"][0];
        assert_eq!(record["eventName"], "ObjectCreated:Put");
        assert_eq!(record["s3"]["bucket"]["name"], bucket);
        let key = decode_key(record["s3"]["object"]["key"].as_str().unwrap());
        let file = files
            .get(&key)
            .unwrap_or_else(|| panic!("message for unknown file {key}"));
        assert_eq!(
            record["s3"]["object"]["size"], file["size"],
            "size of {key}"
        );
        assert_eq!(m["sluice"]["rows"], file["rows"], "rows of {key}");
        assert_eq!(m["sluice"]["topic"], topic);
        assert_eq!(
            m["sluice"]["partition"].as_i64().unwrap().to_string(),
            file["metadata"]["sluice.partition"].as_str().unwrap()
        );
        assert!(announced.insert(key.clone()), "{key} announced twice");
    }
}

/// A topic of its own with `partitions`, and a directory for the store
/// (kept while the returned guard lives) with its `file://` URL.
async fn topic_and_store(name: &str, partitions: i32) -> (String, tempfile::TempDir, String) {
    let topic = support::unique(name);
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", dir.path().display());
    sample::ensure_topic(&support::brokers(), &topic, partitions)
        .await
        .unwrap();
    (topic, dir, storage)
}

/// A sink reading `topic` into `storage`, checkpointing every second.
fn file_sink(topic: &str, storage: &str) -> Sink {
    Sink::new(SinkSpec {
        topic,
        storage_url: storage,
        queue_url: None,
        interval: "1s",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_events_land_with_their_values_and_one_message_per_file() {
    const PARTITIONS: i32 = 4;
    let topic = support::unique("orders");
    let bucket = support::unique("sluice-it");
    support::create_bucket(&bucket).await;
    let queue = support::create_queue(&support::unique("files")).await;
    sample::ensure_topic(&support::brokers(), &topic, PARTITIONS)
        .await
        .unwrap();
    let sample = reference_sample();
    let produced = sample::produce(&support::brokers(), &topic, PARTITIONS, &sample, 0..100_000)
        .await
        .unwrap();
    assert_eq!(produced.len(), 100_000);

    let storage = format!("s3://{bucket}/raw");
    // Three workers for four partitions: one owns two.
    let mut sink = Sink::with_extra(
        SinkSpec {
            topic: &topic,
            storage_url: &storage,
            queue_url: Some(&queue),
            interval: "3s",
        },
        "[pipeline]\nworkers = 3\n",
    );
    sink.start();
    sink.wait_committed(&ends(&produced, PARTITIONS), Duration::from_secs(240));
    let metrics = sink.metrics();
    let threads = support::thread_cpu_ticks(sink.pid().unwrap());
    let status = sink.stop();
    assert!(status.success(), "exit {status:?}; log:\n{}", sink.logs());

    let read = support::read_back(&storage, Some(&queue));
    let counts = check_rows(&read, &produced, &sample);
    assert_eq!(
        read["rows"].as_array().unwrap().len(),
        100_000,
        "no duplicates in a clean run"
    );
    assert!(counts.values().all(|&c| c == 1));
    check_messages(&read, &bucket, &topic);
    for file in read["files"].as_array().unwrap() {
        let key = file["key"].as_str().unwrap();
        assert!(
            key.starts_with("raw/order_placed/dt=2025-12-31/hr="),
            "{key}"
        );
        assert_eq!(file["metadata"]["sluice.event"], "order_placed");
    }
    let committed = metrics
        .iter()
        .find(|(k, _)| k.starts_with("sluice_records_committed_total"))
        .map(|(_, v)| *v);
    assert_eq!(committed, Some(100_000.0), "metrics: {metrics:?}");
    // Every worker decoded records of its own partitions.
    for worker in ["sluice-worker-0", "sluice-worker-1", "sluice-worker-2"] {
        assert!(
            threads.get(worker).is_some_and(|&ticks| ticks > 0),
            "{worker} did no work; CPU ticks by thread: {threads:?}"
        );
    }
    assert!(!threads.contains_key("sluice-worker-3"), "{threads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_and_restart_lose_nothing() {
    const PARTITIONS: i32 = 3;
    let (topic, _dir, storage) = topic_and_store("orders", PARTITIONS).await;
    let sample = reference_sample();
    let mut sink = file_sink(&topic, &storage);
    sink.start();
    // Produce while sluice runs; stop it once its first checkpoint committed.
    let first = sample::produce(&support::brokers(), &topic, PARTITIONS, &sample, 0..20_000)
        .await
        .unwrap();
    let (group, t) = (sink.group.clone(), topic.clone());
    support::wait_until("a first offset commit", Duration::from_secs(120), || {
        support::committed(&group, &t, PARTITIONS)
            .iter()
            .any(|&o| o > 0)
    });
    let producer = {
        let sample = sample.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            sample::produce(
                &support::brokers(),
                &topic,
                PARTITIONS,
                &sample,
                20_000..40_000,
            )
            .await
        })
    };
    let status = sink.stop();
    assert!(status.success(), "exit {status:?}; log:\n{}", sink.logs());
    let second = producer.await.unwrap().unwrap();

    sink.start();
    let all: Vec<Produced> = first.into_iter().chain(second).collect();
    sink.wait_committed(&ends(&all, PARTITIONS), Duration::from_secs(120));
    assert!(sink.stop().success());

    let read = support::read_back(&storage, None);
    let counts = check_rows(&read, &all, &sample);
    assert_eq!(counts.len(), 40_000, "every record present");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_become_dead_letters_and_the_rest_land() {
    let (topic, _dir, storage) = topic_and_store("orders", 1).await;
    let sample = reference_sample();
    let producer = support::producer();
    let mut good = Vec::new();
    let truncated = sample.encode(1);
    let bad: [(&[u8], support::Headers<'_>, &str, &str); 5] = [
        (
            b"\xff\xff\xff\xff not protobuf",
            vec![],
            "decode",
            "unsupported wire type 7",
        ),
        (
            &truncated[..truncated.len() - 5],
            vec![("content-type", b"application/protobuf")],
            "decode",
            "payload is truncated",
        ),
        (
            br#"{"totalCents": "lots"}"#,
            vec![("content-type", b"application/json")],
            "decode",
            "JSON payload does not match the schema",
        ),
        (
            b"{}",
            vec![("content-type", b"avro/binary")],
            "envelope",
            "content-type",
        ),
        (b"", vec![("ce_time", b"yesterday")], "envelope", "ce_time"),
    ];
    let mut offset = 0i64;
    let mut bad_offsets = Vec::new();
    for (i, (payload, headers, _, _)) in bad.iter().enumerate() {
        for seq in (i as u64 * 10)..(i as u64 * 10 + 10) {
            // Every other good record arrives as JSON (mobile and web clients).
            let json = seq % 2 == 1;
            let headers_owned = sample.headers(seq);
            let h: Vec<(&str, &[u8])> = headers_owned
                .iter()
                .map(|(k, v)| match (*k, json) {
                    ("content-type", true) => (*k, b"application/json".as_slice()),
                    _ => (*k, v.as_bytes()),
                })
                .collect();
            let payload = if json {
                sample.encode_json(seq)
            } else {
                sample.encode(seq)
            };
            support::send_raw(&producer, &topic, &payload, &h).await;
            good.push(Produced {
                seq,
                partition: 0,
                offset,
            });
            offset += 1;
        }
        support::send_raw(&producer, &topic, payload, headers).await;
        bad_offsets.push(offset);
        offset += 1;
    }
    let mut sink = file_sink(&topic, &storage);
    sink.start();
    sink.wait_committed(&[offset], Duration::from_secs(120));
    assert!(sink.is_running(), "bad records must not stop the daemon");
    support::wait_until(
        "metrics to show every record",
        Duration::from_secs(10),
        || {
            let m = sink.metrics();
            m.iter()
                .any(|(k, v)| k.starts_with("sluice_records_consumed_total") && *v == offset as f64)
        },
    );
    let metrics = sink.metrics();
    let dead = |reason: &str| {
        metrics
            .iter()
            .filter(|(k, _)| {
                k.starts_with("sluice_records_dead_lettered_total")
                    && k.contains(&format!("reason=\"{reason}\""))
            })
            .map(|(_, v)| *v)
            .sum::<f64>()
    };
    assert_eq!(dead("decode"), 3.0, "{metrics:?}");
    assert_eq!(dead("envelope"), 2.0, "{metrics:?}");
    assert!(sink.stop().success());
    let logs = sink.logs();
    assert!(logs.contains("record dead-lettered"), "{logs}");
    assert!(logs.contains("offset=10"), "log names the offset: {logs}");

    let read = support::read_back_committed(&storage, None);
    let counts = check_rows(&read, &good, &sample);
    assert_eq!(counts.len(), good.len());
    // Each bad record is one dead-letter row with its reason and its bytes.
    let letters = read["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), bad.len(), "{letters:?}");
    for ((payload, headers, stage, reason), at) in bad.iter().zip(&bad_offsets) {
        let row = letters
            .iter()
            .find(|r| r[1] == *at)
            .unwrap_or_else(|| panic!("no dead letter for offset {at}: {letters:?}"));
        assert_eq!(row[2], *stage);
        assert!(row[3].as_str().unwrap().contains(reason), "{row}");
        assert_eq!(row[4], support::hex(payload).as_str());
        assert_eq!(row[5].as_array().unwrap().len(), headers.len());
    }
    // One manifest range covers good rows and dead letters alike.
    let covered: i64 = read["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["range"]["to"].as_i64().unwrap() - m["range"]["from"].as_i64().unwrap())
        .sum();
    assert_eq!(covered, offset);
}

/// Kafka takes any bytes for a header key, and rust-rdkafka panics reading
/// one that is not UTF-8: such a header is skipped. Its record lands as any
/// other (no CloudEvents attribute can have that key), an undecodable one
/// is a dead letter with the headers that could be read, and the process
/// neither stops nor reports a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_key_that_is_not_utf8_is_skipped_and_nothing_stops() {
    let (topic, _dir, storage) = topic_and_store("keys", 1).await;
    let sample = reference_sample();
    let producer = support::producer();
    let bad_key: &[u8] = b"trace\xff\xfe";
    let mut good = Vec::new();
    for seq in 0..20u64 {
        let headers = sample.headers(seq);
        let mut h: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        if seq == 10 {
            // Among the CloudEvents headers, not after them.
            h.insert(2, (bad_key, b"00-0af7651916cd43dd-01"));
            support::send_raw_keys(&topic, &sample.encode(seq), &h);
        } else {
            let h: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
            support::send_raw(&producer, &topic, &sample.encode(seq), &h).await;
        }
        good.push(Produced {
            seq,
            partition: 0,
            offset: seq as i64,
        });
    }
    // Undecodable, with the same header: a dead letter at offset 20.
    support::send_raw_keys(
        &topic,
        b"\xff\xff\xff\xff not protobuf",
        &[
            (b"ce_id", b"order-x"),
            (bad_key, b"v"),
            (b"ce_source", b"/x"),
        ],
    );
    let mut sink = file_sink(&topic, &storage);
    sink.start();
    sink.wait_committed(&[21], Duration::from_secs(120));
    assert!(sink.is_running(), "a header key must not stop the daemon");
    assert!(sink.stop().success());
    let logs = sink.logs();
    assert!(!logs.contains("panicked"), "{logs}");

    let read = support::read_back_committed(&storage, None);
    let counts = check_rows(&read, &good, &sample);
    assert_eq!(counts.len(), good.len());
    let letters = read["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0][1], 20);
    assert_eq!(letters[0][2], "decode");
    // The headers it could read, in order.
    let keys: Vec<&str> = letters[0][5]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["ce_id", "ce_source"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_policy_stops_at_the_bad_record_and_commits_nothing_after_it() {
    let (topic, _dir, storage) = topic_and_store("orders", 1).await;
    let sample = reference_sample();
    let good = sample::produce(&support::brokers(), &topic, 1, &sample, 0..50)
        .await
        .unwrap();
    let producer = support::producer();
    support::send_raw(&producer, &topic, b"\xff\xff", &[]).await;
    let mut sink = file_sink(&topic, &storage);
    sink.start_with_env(&[("SLUICE_ERRORS__POLICY", "fail")]);
    let status = sink.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let logs = sink.logs();
    assert!(
        logs.contains("record at partition 0 offset 50 cannot become a row"),
        "{logs}"
    );
    let read = support::read_back_committed(&storage, None);
    assert!(read["dead_letters"].as_array().unwrap().is_empty());
    let to = committed_to(&read);
    assert!(
        to < 50,
        "the bad record must not be committed (committed up to {to})"
    );
    assert!(read["rows"].as_array().unwrap().len() <= good.len());
}

/// Tombstones (null values) never become rows: dead letters with the
/// reason `tombstone` by default, counted and skipped with
/// `errors.tombstones = "skip"`, a stop with `"fail"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_dead_letters_skipped_or_fatal_as_configured() {
    let topic = support::unique("orders");
    sample::ensure_topic(&support::brokers(), &topic, 1)
        .await
        .unwrap();
    let sample = reference_sample();
    let producer = support::producer();
    let mut good = Vec::new();
    let mut tombstones = Vec::new();
    let mut offset = 0i64;
    for (seq_range, tombstone) in [
        (0..20u64, Some(vec![("ce_id", b"deleted-1".as_slice())])),
        (20..40, Some(vec![])),
        (40..50, None),
    ] {
        for seq in seq_range {
            let headers = sample.headers(seq);
            let h: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
            support::send_raw(&producer, &topic, &sample.encode(seq), &h).await;
            good.push(Produced {
                seq,
                partition: 0,
                offset,
            });
            offset += 1;
        }
        if let Some(headers) = tombstone {
            support::send_tombstone(&producer, &topic, b"order-key", &headers).await;
            tombstones.push((offset, headers.len()));
            offset += 1;
        }
    }
    let run = |policy: Option<&'static str>| {
        let dir = tempfile::tempdir().unwrap();
        let storage = format!("file://{}", dir.path().display());
        let mut sink = file_sink(&topic, &storage);
        let env: Vec<(&str, &str)> = policy
            .map(|p| vec![("SLUICE_ERRORS__TOMBSTONES", p)])
            .unwrap_or_default();
        sink.start_with_env(&env);
        (sink, storage, dir)
    };
    // Runs a sink to the end of the topic: tombstones counted in `metric`,
    // what pyarrow reads, every row there and none for a tombstone.
    let run_through = |policy: Option<&'static str>, metric: &str| {
        let (mut sink, storage, _dir) = run(policy);
        sink.wait_committed(&[offset], Duration::from_secs(120));
        let metrics = sink.metrics();
        assert!(sink.stop().success(), "{}", sink.logs());
        let counted = support::metric(&metrics, metric, &["reason=\"tombstone\""]);
        assert_eq!(counted, 2.0, "{metric}");
        let read = support::read_back_committed(&storage, None);
        assert_eq!(check_rows(&read, &good, &sample).len(), good.len());
        assert_eq!(
            read["rows"].as_array().unwrap().len(),
            good.len(),
            "no row for a tombstone"
        );
        read
    };

    // Default: dead letters, key and headers kept, value null.
    let read = run_through(None, "sluice_records_dead_lettered_total");
    let letters = read["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), tombstones.len(), "{letters:?}");
    for (at, headers) in &tombstones {
        let row = letters.iter().find(|r| r[1] == *at).unwrap();
        assert_eq!(row[2], "tombstone", "{row}");
        assert!(row[3].as_str().unwrap().contains("null"), "{row}");
        assert!(row[4].is_null(), "the value stays null: {row}");
        assert_eq!(row[5].as_array().unwrap().len(), *headers, "{row}");
    }

    // Skip: counted, in the manifests' skipped count, nothing written.
    let read = run_through(Some("skip"), "sluice_records_skipped_total");
    assert!(read["dead_letters"].as_array().unwrap().is_empty());
    let skipped: i64 = read["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["skipped"].as_i64().unwrap())
        .sum();
    assert_eq!(skipped, 2);

    // Fail: stops at the first tombstone, naming the setting.
    let (mut sink, storage, _dir) = run(Some("fail"));
    assert!(!sink.wait_exit(Duration::from_secs(60)).success());
    let logs = sink.logs();
    assert!(
        logs.contains(&format!("offset {} cannot become a row", tombstones[0].0))
            && logs.contains("errors.tombstones is `fail`"),
        "{logs}"
    );
    let read = support::read_back_committed(&storage, None);
    let to = committed_to(&read);
    assert!(to < tombstones[0].0, "committed past the tombstone: {to}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_tenants_go_to_their_own_prefix_or_are_dropped() {
    let topic = support::unique("orders");
    let bucket = support::unique("sluice-tenants");
    support::create_bucket(&bucket).await;
    let queue = support::create_queue(&support::unique("files")).await;
    sample::ensure_topic(&support::brokers(), &topic, 1)
        .await
        .unwrap();
    let sample = reference_sample();
    let producer = support::producer();
    let (mut prod, mut test, mut dropped) = (Vec::new(), Vec::new(), 0);
    for seq in 0..90u64 {
        let headers = sample.headers(seq);
        let mut h: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        match seq % 3 {
            0 => h.push(("baggage", b"userId=7,tenant=test")),
            1 => h.push(("baggage", b"tenant=loadtest")),
            _ => {}
        }
        support::send_raw(&producer, &topic, &sample.encode(seq), &h).await;
        let produced = Produced {
            seq,
            partition: 0,
            offset: seq as i64,
        };
        match seq % 3 {
            0 => test.push(produced),
            1 => dropped += 1,
            _ => prod.push(produced),
        }
    }
    let storage = format!("s3://{bucket}/raw");
    let tenants = "[tenants]\ndrop = [\"loadtest\"]\n[tenants.prefixes]\ntest = \"test-raw\"\n";
    let mut sink = Sink::with_extra(
        SinkSpec {
            topic: &topic,
            storage_url: &storage,
            queue_url: Some(&queue),
            interval: "1s",
        },
        tenants,
    );
    sink.start();
    sink.wait_committed(&[90], Duration::from_secs(60));
    let metrics = sink.metrics();
    assert!(sink.stop().success(), "{}", sink.logs());
    let dropped_metric: f64 = metrics
        .iter()
        .filter(|(k, _)| {
            k.starts_with("sluice_records_dropped_total") && k.contains("tenant=\"loadtest\"")
        })
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(dropped_metric, dropped as f64);

    let live = support::read_back(&format!("{storage}/order_placed"), Some(&queue));
    let counts = check_rows(&live, &prod, &sample);
    assert_eq!(live["rows"].as_array().unwrap().len(), prod.len());
    assert!(counts.values().all(|&c| c == 1));
    check_messages(&live, &bucket, &topic);
    let tenant = support::read_back(&format!("s3://{bucket}/test-raw"), None);
    check_rows(&tenant, &test, &sample);
    assert_eq!(tenant["rows"].as_array().unwrap().len(), test.len());
    // One manifest range covers all three kinds of record.
    let committed = support::read_back_committed(&storage, None);
    let skipped: i64 = committed["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["skipped"].as_i64().unwrap())
        .sum();
    assert_eq!(skipped, dropped);
}

/// The last offset the read-back's manifests commit (-1 for none).
fn committed_to(read: &serde_json::Value) -> i64 {
    read["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["range"]["to"].as_i64().unwrap())
        .max()
        .unwrap_or(-1)
}
