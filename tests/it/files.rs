//! When files close: `files.max_rows`, `files.max_bytes`, the checkpoint
//! interval on a quiet topic. Real Kafka, files read back with pyarrow.

use std::time::{Duration, Instant};

use sluice::sample;

use crate::support::{self, Sink, SinkSpec, check_exactly_once, reference_sample};

/// Runs a sink with `extra` config over `events` reference events in one
/// partition until `early` of them are committed, then stops it (which
/// commits the rest); returns what pyarrow read and how long the first
/// commits took.
async fn run(
    extra: &str,
    interval: &str,
    events: u64,
    early: i64,
) -> (serde_json::Value, Duration) {
    let topic = support::unique("rotating");
    sample::ensure_topic(&support::brokers(), &topic, 1)
        .await
        .unwrap();
    let sample = reference_sample();
    let produced = sample::produce(&support::brokers(), &topic, 1, &sample, 0..events)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", dir.path().display());
    let mut sink = Sink::with_extra(
        SinkSpec {
            topic: &topic,
            storage_url: &storage,
            queue_url: None,
            interval,
        },
        extra,
    );
    let started = Instant::now();
    sink.start();
    let (group, t) = (sink.group.clone(), topic.clone());
    support::wait_until("early commits", Duration::from_secs(120), || {
        support::committed(&group, &t, 1)[0] >= early
    });
    let took = started.elapsed();
    assert!(sink.stop().success(), "{}", sink.logs());
    // Stopping commits what was read; records not read yet are not lost,
    // they are the next run's.
    let end = support::committed(&group, &t, 1)[0];
    assert!(end >= early);
    let read_part: Vec<_> = produced.into_iter().filter(|p| p.offset < end).collect();
    let read = support::read_back_committed(&storage, None);
    check_exactly_once(&read, &read_part, &sample);
    (read, took)
}

fn data_files(read: &serde_json::Value) -> Vec<&serde_json::Value> {
    read["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["metadata"].get("sluice.event").is_some()
                && !f["columns"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c == "reason")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_close_at_max_rows_long_before_the_interval() {
    let (read, took) = run("[files]\nmax_rows = 500\n", "10m", 3000, 2000).await;
    assert!(took < Duration::from_secs(120), "{took:?}");
    let files = data_files(&read);
    assert!(files.len() >= 6, "{} files", files.len());
    for file in files {
        assert!(file["rows"].as_u64().unwrap() <= 500, "{file}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_close_near_max_bytes() {
    const MIB: u64 = 1 << 20;
    let (read, _) = run("[files]\nmax_bytes = \"1MiB\"\n", "10m", 150_000, 1).await;
    // The commit came long before the interval: a file reached the limit.
    let files = data_files(&read);
    // A file closes at the first encoded batch past the limit.
    let sizes: Vec<u64> = files.iter().map(|f| f["size"].as_u64().unwrap()).collect();
    assert!(sizes.iter().all(|&s| s <= 2 * MIB), "{sizes:?}");
    assert!(sizes.iter().any(|&s| s >= MIB), "{sizes:?}");
}

/// The interval fires with no new records arriving: a quiet topic's
/// records land within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_topic_lands_within_the_interval() {
    let (read, took) = run("", "2s", 10, 10).await;
    assert_eq!(
        data_files(&read)
            .iter()
            .map(|f| f["rows"].as_u64().unwrap())
            .sum::<u64>(),
        10
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}
