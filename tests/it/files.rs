//! When files close: `files.max_rows`, `files.max_bytes`, the checkpoint
//! interval on a quiet topic. Real Kafka, files read back with pyarrow.

use std::time::Duration;

use sluice::sample;

use crate::support::{self, Sink, SinkSpec, check_exactly_once, reference_sample};

/// Runs a sink with `extra` config over `events` reference events in one
/// partition until `early` of them are committed while it runs (so by a
/// rotation or the timer, not by stopping), then stops it (which commits
/// the rest); returns what pyarrow read.
async fn run(extra: &str, interval: &str, events: u64, early: i64) -> serde_json::Value {
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
    sink.start();
    let (group, t) = (sink.group.clone(), topic.clone());
    support::wait_until("early commits", Duration::from_secs(120), || {
        support::committed(&group, &t, 1)[0] >= early
    });
    assert!(sink.stop().success(), "{}", sink.logs());
    // Stopping commits what was read; records not read yet are not lost,
    // they are the next run's.
    let end = support::committed(&group, &t, 1)[0];
    assert!(end >= early);
    let read_part: Vec<_> = produced.into_iter().filter(|p| p.offset < end).collect();
    let read = support::read_back_committed(&storage, None);
    check_exactly_once(&read, &read_part, &sample);
    read
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
    // 2000 committed while running: the 10-minute interval never fired.
    let read = run("[files]\nmax_rows = 500\n", "10m", 3000, 2000).await;
    let files = data_files(&read);
    assert!(files.len() >= 6, "{} files", files.len());
    for file in files {
        assert!(file["rows"].as_u64().unwrap() <= 500, "{file}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_close_near_max_bytes() {
    const MIB: u64 = 1 << 20;
    let read = run("[files]\nmax_bytes = \"1MiB\"\n", "10m", 150_000, 1).await;
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
    // All 10 committed while running, with nothing arriving after them.
    let read = run("", "2s", 10, 10).await;
    assert_eq!(
        data_files(&read)
            .iter()
            .map(|f| f["rows"].as_u64().unwrap())
            .sum::<u64>(),
        10
    );
}

/// Rows of the data files under `dir`, each with its `_file`.
fn rows_in(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let read = support::python_json("rows.py", &[dir]);
    read["rows"].as_array().unwrap().clone()
}

/// One topic read by four sinks, one per time source and path template:
/// every row lands in the folder its time and field say, and a late event
/// gets a folder and a file of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_follow_the_template_and_the_time_source() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;

    let topic = support::unique("paths");
    // Its records carry a Kafka time months back: the broker's retention
    // check (every 5 minutes; it rolls and deletes even the active segment)
    // would otherwise remove them while the later sinks still read them.
    sample::ensure_topic_with(&support::brokers(), &topic, 1, &[("retention.ms", "-1")])
        .await
        .unwrap();
    let sample = reference_sample();
    let producer = support::producer();
    let event_time = "2026-03-01T10:15:00Z";
    let late_time = "2026-03-01T05:59:59Z";
    let kafka_ms = 1_777_957_200_000i64; // 2026-05-05T05:00:00Z
    const EVENTS: u64 = 40;
    for seq in 0..=EVENTS {
        // The last one is late: five hours before the others.
        let time = if seq == EVENTS { late_time } else { event_time };
        let id = format!("order-{seq:08}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "ce_id",
                value: Some(id.as_bytes()),
            })
            .insert(Header {
                key: "ce_time",
                value: Some(time.as_bytes()),
            });
        let payload = sample.encode(seq);
        let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(&topic)
            .partition(0)
            .timestamp(kafka_ms)
            .payload(payload.as_slice())
            .headers(headers);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }
    let today = || chrono::Utc::now().format("%Y-%m-%d").to_string();
    let day_before = today();
    let sinks = [
        ("", "event"),
        (
            "path = \"{event}/{date}/{hour}{minute}\"\ntime = \"kafka\"",
            "kafka",
        ),
        (
            "path = \"{event}/dt={date}\"\ntime = \"ingestion\"",
            "ingestion",
        ),
        (
            "path = \"{event}/city={field:city}/dt={date}/hr={hour}\"\ntime = \"field:placed_at\"",
            "field",
        ),
    ];
    let mut dirs = Vec::new();
    for (files, _) in &sinks {
        let dir = tempfile::tempdir().unwrap();
        let storage = format!("file://{}", dir.path().display());
        let mut sink = Sink::with_extra(
            SinkSpec {
                topic: &topic,
                storage_url: &storage,
                queue_url: None,
                interval: "1s",
            },
            &format!("[files]\n{files}\n"),
        );
        sink.start();
        sink.wait_committed(&[EVENTS as i64 + 1], Duration::from_secs(60));
        assert!(sink.stop().success(), "{}", sink.logs());
        dirs.push(dir);
    }
    let day_after = today();

    for ((_, source), dir) in sinks.iter().zip(&dirs) {
        let rows = rows_in(dir.path());
        assert_eq!(rows.len(), EVENTS as usize + 1, "{source}");
        for row in &rows {
            let offset = row["_kafka_offset"].as_u64().unwrap();
            let file = row["_file"].as_str().unwrap();
            let folder = file.rsplit_once('/').unwrap().0;
            let fields = sample.fields(offset);
            let expected = match *source {
                "event" if offset == EVENTS => "order_placed/dt=2026-03-01/hr=05".to_owned(),
                "event" => "order_placed/dt=2026-03-01/hr=10".to_owned(),
                "kafka" => "order_placed/2026-05-05/0500".to_owned(),
                "ingestion" => {
                    assert!(
                        folder == format!("order_placed/dt={day_before}")
                            || folder == format!("order_placed/dt={day_after}"),
                        "{folder}"
                    );
                    continue;
                }
                _ => {
                    let t =
                        chrono::DateTime::from_timestamp_micros(fields.placed_at_micros).unwrap();
                    format!(
                        "order_placed/city={}/dt={}",
                        fields.city,
                        t.format("%Y-%m-%d/hr=%H")
                    )
                }
            };
            assert_eq!(folder, expected, "{source}, offset {offset}");
        }
        if *source == "event" {
            let late: Vec<_> = rows
                .iter()
                .filter(|r| r["_file"].as_str().unwrap().contains("/hr=05/"))
                .collect();
            assert_eq!(late.len(), 1, "the late event alone in its file");
        }
    }
}
