//! The subcommands engineers run when the warehouse side fails: backfill
//! (announce committed files again) and status (where each partition
//! stands), against a pipeline that ran on the real stack.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice::sample;

use crate::support::{self, Sink, SinkSpec, decode_key, reference_sample, sluice};

/// Key → message body.
fn by_key(messages: &[Value]) -> BTreeMap<String, Value> {
    messages
        .iter()
        .map(|m| {
            let key = decode_key(m["Records"][0]["s3"]["object"]["key"].as_str().unwrap());
            (key, m.clone())
        })
        .collect()
}

/// Backfill re-announces exactly the committed files whose event times
/// overlap the window, each with the body it was first announced with;
/// a second run sends the same; a dry run sends nothing. Status agrees
/// with what was produced and committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_reannounces_the_window_and_status_agrees() {
    const PARTITIONS: i32 = 2;
    let topic = support::unique("backfill");
    let bucket = support::unique("sluice-backfill");
    support::create_bucket(&bucket).await;
    let queue = support::create_queue(&support::unique("backfill-files")).await;
    sample::ensure_topic(&support::brokers(), &topic, PARTITIONS)
        .await
        .unwrap();
    let sample = reference_sample();
    let produced = sample::produce(&support::brokers(), &topic, PARTITIONS, &sample, 0..3000)
        .await
        .unwrap();
    let storage = format!("s3://{bucket}/raw");
    let mut sink = Sink::new(SinkSpec {
        topic: &topic,
        storage_url: &storage,
        queue_url: Some(&queue),
        interval: "2s",
    });
    sink.start();
    let ends = support::ends(&produced, PARTITIONS);
    sink.wait_committed(&ends, Duration::from_secs(120));
    assert!(sink.stop().success(), "{}", sink.logs());
    let first = support::read_back_committed(&storage, Some(&queue));
    let originals = by_key(first["messages"].as_array().unwrap());

    // The sample's events span 21:00–24:00 on 2025-12-31: one hour of it.
    let (from, to) = ("2025-12-31T22:00:00Z", "2025-12-31T23:00:00Z");
    let (from_us, to_us) = (1_767_218_400_000_000i64, 1_767_222_000_000_000i64);
    let expected: BTreeSet<String> = first["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["files"].as_array().unwrap())
        .filter(|f| f.get("kind").is_none())
        .filter(|f| {
            f["min_event_time_micros"].as_i64().unwrap() < to_us
                && f["max_event_time_micros"].as_i64().unwrap() >= from_us
        })
        .map(|f| f["key"].as_str().unwrap().to_owned())
        .collect();
    assert!(!expected.is_empty());
    assert!(
        expected.len() < originals.len(),
        "the window selects some files, not all"
    );

    let window = ["backfill", "--from", from, "--to", to];
    let (ok, stdout, stderr) = sluice(&[&window[..], &["--dry-run"]].concat(), &sink.config);
    assert!(ok, "{stderr}");
    let dry: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        by_key(&dry).keys().cloned().collect::<BTreeSet<_>>(),
        expected
    );
    let drained = support::read_back(&storage, Some(&queue));
    assert!(
        drained["messages"].as_array().unwrap().is_empty(),
        "a dry run sends nothing"
    );

    for run in 1..=2 {
        let (ok, stdout, stderr) = sluice(&window, &sink.config);
        assert!(ok, "run {run}: {stdout}{stderr}");
        assert!(
            stdout.contains(&format!("{} file(s)", expected.len()))
                && stdout.contains("; 0 failed"),
            "{stdout}"
        );
        let again = support::read_back(&storage, Some(&queue));
        let sent = by_key(again["messages"].as_array().unwrap());
        assert_eq!(
            sent.keys().cloned().collect::<BTreeSet<_>>(),
            expected,
            "run {run}"
        );
        for (key, body) in &sent {
            assert_eq!(body, &originals[key], "run {run}: {key} has its first body");
        }
    }

    // Bad ranges and a queue that is not there: clear errors.
    let (ok, _, stderr) = sluice(&["backfill", "--from", to, "--to", from], &sink.config);
    assert!(!ok && stderr.contains("must be before --to"), "{stderr}");
    let (ok, _, stderr) = sluice(&["backfill", "--from", "last tuesday"], &sink.config);
    assert!(!ok && stderr.contains("RFC 3339"), "{stderr}");
    let missing = format!("{}-missing", queue);
    let (ok, _, stderr) = sluice(
        &[&window[..], &["--queue", &missing]].concat(),
        &sink.config,
    );
    assert!(!ok && stderr.contains("cannot reach the queue"), "{stderr}");

    // Status: everything read is committed and announced; records produced
    // since show as lag.
    let more = sample::produce(&support::brokers(), &topic, PARTITIONS, &sample, 3000..3100)
        .await
        .unwrap();
    let after = support::ends(&[produced.clone(), more.clone()].concat(), PARTITIONS);
    let (ok, stdout, stderr) = sluice(
        &["status", "--json", "--orphans-older-than", "0s"],
        &sink.config,
    );
    assert!(ok, "{stderr}");
    let status: Value = serde_json::from_str(&stdout).unwrap();
    for p in 0..PARTITIONS as usize {
        let row = &status["partitions"][p];
        assert_eq!(row["partition"], p);
        assert_eq!(row["committed_offset"], ends[p] - 1, "{status}");
        assert_eq!(row["group_offset"], ends[p], "{status}");
        assert_eq!(row["high_watermark"], after[p], "{status}");
        assert_eq!(row["lag"], after[p] - ends[p], "{status}");
        assert_eq!(row["announced"], true, "{status}");
        assert!(
            row["last_commit"].as_str().unwrap().starts_with("20"),
            "{status}"
        );
    }
    assert_eq!(status["outbox"], 0);
    assert_eq!(status["orphan_files"], 0);
    // An upload no manifest lists is an orphan.
    support::put_object(
        &bucket,
        "raw/order_placed/dt=2025-12-31/hr=22/stray.parquet",
        b"x",
    )
    .await;
    let (ok, stdout, _) = sluice(&["status", "--orphans-older-than", "0s"], &sink.config);
    assert!(ok);
    assert!(stdout.contains("orphans: 1 file(s), 1 bytes"), "{stdout}");
    assert!(stdout.contains("committed (S3)"), "{stdout}");
}

/// Replay re-reads one time window of Kafka into another prefix: the rows
/// there are exactly the window's records, once, even when run twice; the
/// live prefix is refused and stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_writes_exactly_the_window_into_another_prefix() {
    const PARTITIONS: i32 = 2;
    let topic = support::unique("replay");
    let bucket = support::unique("sluice-replay");
    support::create_bucket(&bucket).await;
    sample::ensure_topic(&support::brokers(), &topic, PARTITIONS)
        .await
        .unwrap();
    let sample = reference_sample();
    let brokers = support::brokers();
    // Three batches a second apart; the window is the middle one's.
    sample::produce(&brokers, &topic, PARTITIONS, &sample, 0..400)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let from = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let window = sample::produce(&brokers, &topic, PARTITIONS, &sample, 400..1000)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let to = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    sample::produce(&brokers, &topic, PARTITIONS, &sample, 1000..1300)
        .await
        .unwrap();

    let storage = format!("s3://{bucket}/raw");
    let sink = Sink::new(SinkSpec {
        topic: &topic,
        storage_url: &storage,
        queue_url: None,
        interval: "2s",
    });
    let (from, to) = (from.to_rfc3339(), to.to_rfc3339());
    let replay = |prefix: &str| {
        sluice(
            &["replay", "--from", &from, "--to", &to, "--prefix", prefix],
            &sink.config,
        )
    };
    for run in 1..=2 {
        let (ok, stdout, stderr) = replay("replays/window");
        assert!(ok, "run {run}: {stdout}{stderr}");
        assert!(
            stdout.contains(&format!(
                "replay into replays/window: {} rows",
                window.len()
            )),
            "run {run}: {stdout}"
        );
        let read = support::read_back_committed(&format!("s3://{bucket}/replays/window"), None);
        let counts = support::check_rows(&read, &window, &sample);
        assert_eq!(counts.len(), window.len(), "only the window's records");
        assert!(counts.values().all(|&c| c == 1), "run {run}: each once");
        assert!(read["orphans"].as_array().unwrap().is_empty());
    }

    for live in ["raw", "raw/order_placed/again", "raw/_sluice/x"] {
        let (ok, _, stderr) = replay(live);
        assert!(!ok, "{live} must be refused");
        assert!(stderr.contains("refusing to replay"), "{stderr}");
    }
    let live = support::read_back(&storage, None);
    assert!(
        live["files"].as_array().unwrap().is_empty(),
        "the live prefix is untouched"
    );
    assert!(
        support::committed(&sink.group, &topic, PARTITIONS)
            .iter()
            .all(|&o| o < 0),
        "the sink's group has no offsets"
    );
}

/// A window written by a transactional producer ends on a commit marker,
/// an offset no consumer is given: the replay still ends, with every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_a_transactional_window_ends_at_its_commit_marker() {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

    const RECORDS: u64 = 200;
    let topic = support::unique("replay-tx");
    let bucket = support::unique("sluice-replay-tx");
    support::create_bucket(&bucket).await;
    sample::ensure_topic(&support::brokers(), &topic, 1)
        .await
        .unwrap();
    let sample = reference_sample();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", support::brokers())
        .set("transactional.id", support::unique("tx"))
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer.begin_transaction().unwrap();
    let mut window = Vec::new();
    for seq in 0..RECORDS {
        let payload = sample.encode(seq);
        let headers = support::owned_headers(&sample, seq);
        let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(&topic)
            .partition(0)
            .payload(payload.as_slice())
            .headers(headers);
        let delivered = producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
        window.push(sample::Produced {
            seq,
            partition: delivered.partition,
            offset: delivered.offset,
        });
    }
    producer
        .commit_transaction(Duration::from_secs(30))
        .unwrap();

    let sink = Sink::new(SinkSpec {
        topic: &topic,
        storage_url: &format!("s3://{bucket}/raw"),
        queue_url: None,
        interval: "2s",
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "replay",
            "--from",
            "-1h",
            "--prefix",
            "replays/tx",
            "--config",
        ])
        .arg(&sink.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("replay did not end at the commit marker");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("{RECORDS} rows")), "{stdout}");
    let read = support::read_back_committed(&format!("s3://{bucket}/replays/tx"), None);
    let counts = support::check_rows(&read, &window, &sample);
    assert_eq!(counts.len(), RECORDS as usize);
    assert!(counts.values().all(|&c| c == 1));
}
