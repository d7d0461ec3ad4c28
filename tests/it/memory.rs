//! The memory budget holds against what breaks JVM sinks: many partitions,
//! late events spread over many folders, and records from 100 B to 1 MiB.
//! Peak RSS is read from /proc (VmHWM), not estimated.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice::sample;

use crate::support::{self, Sink, SinkSpec, reference_sample};

const PARTITIONS: i32 = 64;
const HOURS: u64 = 48;
const RECORDS: u64 = 6000;
const MIB: u64 = 1 << 20;
const BUDGET: u64 = 64 * MIB;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Size of record `seq`: nine in ten between 100 B and 10 kB, the rest
/// log-uniform up to 1 MiB, every 500th exactly 1 MiB.
fn size_of(seq: u64) -> usize {
    let r = splitmix(seq);
    if seq % 500 == 7 {
        return MIB as usize;
    }
    if r % 10 < 9 {
        return 100 + (r >> 8) as usize % 9_900;
    }
    let u = ((r >> 11) % 1_000_000) as f64 / 1_000_000.0;
    (10_000.0 * (MIB as f64 / 10_000.0).powf(u)) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_partitions_folders_and_large_records_stay_within_the_budget() {
    let topic = support::unique("memory");
    sample::ensure_topic(&support::brokers(), &topic, PARTITIONS)
        .await
        .unwrap();
    let sample = reference_sample();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", support::brokers())
        .set("message.max.bytes", (4 * MIB).to_string())
        .set("linger.ms", "10")
        .create()
        .unwrap();
    // Event times over 48 hours: every partition writes to every folder.
    let base_ms = 1_767_225_600_000i64;
    let mut produced: HashMap<(i32, i64), u64> = HashMap::new();
    let mut total_bytes = 0u64;
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(200) {
        let mut pending = Vec::new();
        for &seq in chunk {
            let size = size_of(seq);
            let value = support::padded_event(&sample, seq, size);
            total_bytes += value.len() as u64;
            let time = chrono::DateTime::from_timestamp_millis(
                base_ms - ((seq % HOURS) * 3600 * 1000) as i64,
            )
            .unwrap()
            .to_rfc3339();
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
            let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(&topic)
                .partition((seq % PARTITIONS as u64) as i32)
                .payload(value.as_slice())
                .headers(headers);
            let delivery = producer.send_result(record).map_err(|(e, _)| e).unwrap();
            pending.push((seq, delivery));
        }
        for (seq, delivery) in pending {
            let delivered = delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
            produced.insert((delivered.partition, delivered.offset), seq);
        }
    }
    assert!(
        total_bytes > 2 * BUDGET,
        "{total_bytes} bytes is not enough to test"
    );

    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", dir.path().display());
    let mut sink = Sink::with_extra(
        SinkSpec {
            topic: &topic,
            storage_url: &storage,
            queue_url: None,
            // Long enough that the budget, not the timer, closes most files;
            // the timer commits what is left at the end.
            interval: "20s",
        },
        &format!("[memory]\nmax_buffer_bytes = {BUDGET}\n"),
    );
    sink.start_with_env(&support::AS_DEPLOYED);
    let mut ends = vec![0i64; PARTITIONS as usize];
    for (partition, offset) in produced.keys() {
        ends[*partition as usize] = ends[*partition as usize].max(offset + 1);
    }
    sink.wait_committed(&ends, Duration::from_secs(600));
    let pid = sink.pid().unwrap();
    let peak = support::peak_rss(pid);
    let metrics = sink.metrics();
    assert!(sink.stop().success(), "{}", sink.logs());
    let early = metrics
        .iter()
        .find(|(k, _)| k.starts_with("sluice_memory_checkpoints_total"))
        .map_or(0.0, |(_, v)| *v);
    println!(
        "{RECORDS} records, {} MiB, {PARTITIONS} partitions × {HOURS} folders, budget {} MiB: \
         peak RSS {} MiB, {early} early checkpoints",
        total_bytes / MIB,
        BUDGET / MIB,
        peak / MIB
    );
    assert!(
        peak <= BUDGET + support::MARGIN,
        "peak RSS {} MiB over budget {} MiB + margin {} MiB",
        peak / MIB,
        BUDGET / MIB,
        support::MARGIN / MIB
    );
    let early = metrics
        .iter()
        .find(|(k, _)| k.starts_with("sluice_memory_checkpoints_total"))
        .map_or(0.0, |(_, v)| *v);
    assert!(
        early > 0.0,
        "the budget, not the interval, drove the commits"
    );

    // Every record is exactly one row (or, over the per-record limit of an
    // eighth of the budget, one dead letter: none here, 1 MiB < 8 MiB).
    let read = support::read_back_committed(&storage, None);
    assert_eq!(read["dead_letters"].as_array().unwrap().len(), 0);
    let mut seen: HashMap<(i32, i64), usize> = HashMap::new();
    for row in read["rows"].as_array().unwrap() {
        let key = (row[0].as_i64().unwrap() as i32, row[1].as_i64().unwrap());
        let seq = produced
            .get(&key)
            .unwrap_or_else(|| panic!("unexpected row {key:?}"));
        assert_eq!(row[2], format!("order-{seq:08}"));
        *seen.entry(key).or_default() += 1;
    }
    assert_eq!(seen.len(), produced.len(), "every record committed");
    assert!(seen.values().all(|&c| c == 1), "no duplicates");
}

/// A record over an eighth of the files' memory share is a dead letter,
/// kept whole; the records around it are committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_the_budget_is_a_dead_letter() {
    let topic = support::unique("large");
    sample::ensure_topic(&support::brokers(), &topic, 1)
        .await
        .unwrap();
    let sample = reference_sample();
    let producer = support::producer();
    // Budget 1 MiB: files get 768 KiB, one record at most 96 KiB.
    let sizes = [300, 90_000, 200_000, 300];
    for (seq, size) in sizes.iter().enumerate() {
        let headers = sample.headers(seq as u64);
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        let value = support::padded_event(&sample, seq as u64, *size);
        support::send_raw(&producer, &topic, &value, &headers).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", dir.path().display());
    let mut sink = Sink::with_extra(
        SinkSpec {
            topic: &topic,
            storage_url: &storage,
            queue_url: None,
            interval: "1s",
        },
        "[memory]\nmax_buffer_bytes = \"1MiB\"\n",
    );
    sink.start();
    sink.wait_committed(&[sizes.len() as i64], Duration::from_secs(60));
    assert!(sink.stop().success(), "{}", sink.logs());
    let read = support::read_back_committed(&storage, None);
    let offsets: Vec<i64> = read["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[1].as_i64().unwrap())
        .collect();
    assert_eq!(offsets.len(), 3, "{offsets:?}");
    assert!(!offsets.contains(&2), "{offsets:?}");
    let letters = read["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0][1], 2);
    assert_eq!(letters[0][2], "too_large");
    let reason = letters[0][3].as_str().unwrap();
    assert!(
        reason.contains("over the limit of 98304 bytes per record"),
        "{reason}"
    );
    // Kept whole: the value as it was in Kafka.
    assert_eq!(
        letters[0][4].as_str().unwrap().len(),
        2 * support::padded_event(&sample, 2, 200_000).len()
    );
}

/// Near the bound, the open row groups of the files holding the most close
/// first: their pages shrink to their compressed size, their compressors
/// go, and the files stay open — so files end made of several row groups,
/// and nothing is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_closes_row_groups_and_keeps_files_open() {
    const PARTITIONS: i32 = 4;
    const RECORDS: u64 = 120_000;
    let f = support::fixture(PARTITIONS).await;
    let produced = f.produce(0..RECORDS).await;
    // Events over three hours: each partition writes three files at once.
    // At 64 MiB a worker's open files may hold 12 MiB (half its share of
    // three quarters): six open row groups at ~330 bytes a row while their
    // pages are not compressed pass that after ~40,000 rows, long before
    // one of them reaches the 6 MiB at which a row group closes anyway.
    let mut sink = f.sink_with("5s", "[memory]\nmax_buffer_bytes = \"64MiB\"\n");
    sink.start();
    sink.wait_committed(
        &support::ends(&produced, PARTITIONS),
        Duration::from_secs(300),
    );
    let metrics = sink.metrics();
    assert!(sink.stop().success(), "{}", sink.logs());
    let closed = support::metric(&metrics, "sluice_memory_row_groups_total", &[]);
    assert!(
        closed >= 1.0,
        "no row group closed early: {metrics:?}\n{}",
        sink.logs()
    );

    let read = support::read_back_committed(&f.storage, Some(&f.queue));
    support::check_exactly_once(&read, &produced, &reference_sample());
    support::check_published_and_announced(&read);
    // Each early close is a row group of a committed file (a file sealed
    // right after one ends with it), and files went on after them.
    let files = read["files"].as_array().unwrap();
    let row_groups: Vec<u64> = files
        .iter()
        .map(|f| f["row_groups"].as_u64().unwrap())
        .collect();
    println!("{closed} row groups closed early; row groups per file: {row_groups:?}");
    assert!(
        row_groups.iter().sum::<u64>() as f64 >= closed,
        "{closed} closed early; row groups per file: {row_groups:?}"
    );
    assert!(
        row_groups.iter().any(|&n| n >= 2),
        "no file went on after an early close: {row_groups:?}"
    );
}
