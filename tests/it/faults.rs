//! sluice behind a fault proxy ([`crate::fault_proxy`]) between it and
//! moto: every S3 and SQS failure the proxy knows, on every protocol step,
//! alone and together with SIGKILLs, paused members (zombies) and a broker
//! restart. What lands is read back with pyarrow and must hold each record
//! exactly once, every committed file live and announced as its manifest
//! lists it, and nothing announced or published that is not committed.

use std::time::Duration;

use serde_json::Value;
use sluice::sample::{self, Produced};

use crate::fault_proxy::{Fault, FaultProxy, Op, Plan};
use crate::support::{
    self, Broker, FAST_GROUP, Sink, SinkSpec, check_exactly_once, check_published_and_announced,
    check_rows, ends, reference_sample,
};

/// Where moto listens (the proxy's upstream).
pub fn moto() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

/// The environment that sends a sink's S3 and SQS calls through `proxy`,
/// with request timeouts shorter than the proxy's stalls.
fn through(proxy: &FaultProxy) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", proxy.url.clone()),
        ("SLUICE_STORAGE__REQUEST_TIMEOUT", "6s".into()),
        ("SLUICE_NOTIFY__REQUEST_TIMEOUT", "6s".into()),
        ("SLUICE_STORAGE__BUCKET_NOTIFICATIONS", "true".into()),
    ]
}

fn start(sink: &mut Sink, env: &[(&'static str, String)]) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    sink.start_with_env(&env);
}

/// The (operation, fault) pairs of `ops` that `faults` apply to and the
/// proxy never injected.
fn missed(proxy: &FaultProxy, ops: &[Op], faults: &[Fault]) -> Vec<(Op, Fault)> {
    let injected = proxy.injected();
    ops.iter()
        .flat_map(|&op| faults.iter().map(move |&f| (op, f)))
        .filter(|&(op, f)| f.applies_to(op) && !injected.contains_key(&(op, f)))
        .collect()
}

/// The live prefix (what S3 event notifications would announce) holds
/// committed files only, each record once.
fn check_live_prefix(storage: &str, read: &Value, produced: &[Produced]) {
    let live = support::read_back(&format!("{storage}/order_placed"), None);
    let listed: std::collections::HashSet<&str> = read["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["files"].as_array().unwrap())
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    for file in live["files"].as_array().unwrap() {
        let key = file["key"].as_str().unwrap();
        assert!(listed.contains(key), "{key} is live but not committed");
    }
    let counts = check_rows(&live, produced, &reference_sample());
    assert!(
        counts.values().all(|&c| c == 1),
        "live prefix holds duplicates"
    );
}

/// Large files stream in parts while every S3 and SQS call meets each
/// fault in turn: errors, `200 OK` errors on CompleteMultipartUpload and
/// CopyObject, resets, stalls past the request timeout, and calls applied
/// whose answer is lost. The sink never stops for good (a call that fails
/// on every retry stops it, and it is restarted as an orchestrator would);
/// in the end each record is committed once and every file is live and
/// announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_files_survive_every_store_and_queue_fault() {
    const RECORDS: u64 = 600;
    let f = support::fixture(1).await;
    let sample = reference_sample();
    let produced = support::produce_padded(&f.topic, &sample, 0..RECORDS, 100_000).await;
    // Uncompressed 100 kB records in one folder, files closed at 6 MiB: about
    // ten streamed files, each a 5 MiB part and a tail; with every other
    // call failing, each operation meets each of its faults.
    let mut sink = f.sink_with(
        "5s",
        "[parquet]\ncompression = \"none\"\n[memory]\nmax_buffer_bytes = \"64MiB\"\n\
         [files]\npath = \"{event}/all\"\nmax_bytes = \"6MiB\"\n",
    );
    let proxy = FaultProxy::start(&moto(), Plan::everything(2, Duration::from_secs(8)));
    let env = through(&proxy);
    start(&mut sink, &env);
    let target = ends(&produced, 1);
    let (group, t) = (sink.group.clone(), f.topic.clone());
    let mut restarts = 0;
    support::wait_until(
        "every record committed through the faults",
        Duration::from_secs(400),
        || {
            if !sink.is_running() {
                // A call that failed on every retry: the process exits and
                // its restart resumes from the last manifest.
                restarts += 1;
                assert!(restarts <= 5, "{}", sink.logs());
                sink.wait_exit(Duration::from_secs(5));
                start(&mut sink, &env);
            }
            support::committed(&group, &t, 1) == target
        },
    );
    proxy.set_enabled(false);
    assert!(sink.stop().success(), "{}", sink.logs());
    let missing = missed(
        &proxy,
        &[
            Op::CreateUpload,
            Op::UploadPart,
            Op::CompleteUpload,
            Op::Copy,
            Op::ManifestPut,
            Op::MarkerPut,
            Op::SendMessageBatch,
        ],
        &Fault::ALL,
    );
    println!(
        "streamed faults: injected {:?}, restarts {restarts}",
        proxy.injected()
    );
    assert!(missing.is_empty(), "faults never injected: {missing:?}");
    // The proxy speaks plain HTTP: by default every body is signed.
    assert!(
        proxy.unsigned().is_empty(),
        "unsigned bodies over plain HTTP: {:?}",
        proxy.unsigned()
    );

    let read = f.read();
    check_exactly_once(&read, &produced, &sample);
    check_published_and_announced(&read);
    check_live_prefix(&f.storage, &read, &produced);
    let streamed = read["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["files"].as_array().unwrap())
        .filter(|f| {
            f["staged_key"]
                .as_str()
                .is_some_and(|k| k.contains("/_sluice/streams/"))
        })
        .count();
    assert!(streamed >= 5, "{streamed} streamed files");
}

/// An operator's chaos run: two members of one group behind the fault
/// proxy (every other call of each kind fails, each time another way), SIGKILLs, a member paused past its
/// session timeout and resumed (a zombie), and the broker killed and
/// restarted, while a producer writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_faults_kills_zombies_and_a_broker_restart() {
    const PARTITIONS: i32 = 4;
    const CHUNKS: u64 = 12;
    const PER_CHUNK: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let brokers = broker.address();
    let topic = support::unique("orders");
    let bucket = support::unique("sluice-chaos");
    support::create_bucket(&bucket).await;
    let queue = support::create_queue(&support::unique("files")).await;
    sample::ensure_topic(&brokers, &topic, PARTITIONS)
        .await
        .unwrap();
    let storage = format!("s3://{bucket}/raw");
    let spec = SinkSpec {
        topic: &topic,
        storage_url: &storage,
        queue_url: Some(&queue),
        interval: "1s",
    };
    let mut sinks = [
        Sink::with_extra(spec, FAST_GROUP),
        Sink::with_extra(spec, FAST_GROUP),
    ];
    let group = sinks[0].group.clone();
    for sink in &mut sinks {
        sink.set_group(&group);
        let text = std::fs::read_to_string(&sink.config)
            .unwrap()
            .replace(&support::brokers(), &brokers);
        std::fs::write(&sink.config, text).unwrap();
    }
    let proxy = FaultProxy::start(&moto(), Plan::everything(2, Duration::from_secs(8)));
    let env = through(&proxy);
    for sink in &mut sinks {
        start(sink, &env);
    }

    let sample = reference_sample();
    let mut produced = Vec::new();
    let mut rand = support::random(0x9E37_79B9_7F4A_7C15u64);
    let (mut kills, mut zombies) = (0, 0);
    for chunk in 0..CHUNKS {
        let seqs = chunk * PER_CHUNK..(chunk + 1) * PER_CHUNK;
        produced.extend(
            sample::produce(&brokers, &topic, PARTITIONS, &sample, seqs)
                .await
                .unwrap(),
        );
        let victim = rand(2) as usize;
        match chunk {
            // Once, midway: the broker dies and comes back on its data.
            6 => {
                broker.kill();
                tokio::time::sleep(Duration::from_secs(3)).await;
                broker.restart();
            }
            // A zombie: paused past the session timeout (6 s), resumed
            // after its partitions moved.
            _ if chunk % 4 == 1 => {
                sinks[victim].signal("STOP");
                tokio::time::sleep(Duration::from_secs(9)).await;
                sinks[victim].signal("CONT");
                zombies += 1;
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(500 + rand(2_500))).await;
                sinks[victim].kill();
                kills += 1;
                tokio::time::sleep(Duration::from_millis(rand(1_000))).await;
                start(&mut sinks[victim], &env);
            }
        }
        for sink in &mut sinks {
            // A call that failed on every retry stops a member; restart it
            // as an orchestrator would.
            if !sink.is_running() {
                sink.wait_exit(Duration::from_secs(5));
                start(sink, &env);
            }
        }
    }
    let target = ends(&produced, PARTITIONS);
    support::wait_until(
        "the group to commit everything",
        Duration::from_secs(300),
        || {
            for sink in &mut sinks {
                if !sink.is_running() {
                    sink.wait_exit(Duration::from_secs(5));
                    start(sink, &env);
                }
            }
            support::committed_on(&brokers, &group, &topic, PARTITIONS) == target
        },
    );
    // Faults off for the final checkpoints: a stopping member gives up on
    // notifications that keep failing, and its successor re-sends them.
    proxy.set_enabled(false);
    for sink in &mut sinks {
        assert!(sink.stop().success(), "{}", sink.logs());
    }
    drop(broker);
    // Every kind of fault met the protocol's steps (each step meets each
    // kind in the streamed-files test above).
    let injected = proxy.injected();
    for fault in Fault::ALL {
        assert!(
            injected.keys().any(|(_, f)| *f == fault),
            "{fault:?} never injected: {injected:?}"
        );
    }
    for op in [
        Op::ManifestPut,
        Op::MarkerPut,
        Op::Copy,
        Op::SendMessageBatch,
    ] {
        assert!(
            injected.keys().filter(|(o, _)| *o == op).count() >= 2,
            "{op:?} met too few faults: {injected:?}"
        );
    }

    let read = support::read_back_committed(&storage, Some(&queue));
    check_exactly_once(&read, &produced, &sample);
    check_published_and_announced(&read);
    check_live_prefix(&storage, &read, &produced);
    println!(
        "chaos behind the fault proxy: {} events, {kills} SIGKILLs, {zombies} zombies, 1 broker restart, \
         {} faults injected over {} calls ({:?}), {} manifests, {} messages",
        produced.len(),
        injected.values().sum::<u64>(),
        proxy.seen().values().sum::<u64>(),
        proxy.seen(),
        read["manifests"].as_array().unwrap().len(),
        read["messages"].as_array().unwrap().len(),
    );
}

/// Uploads held at the store: sluice goes on reading past its first sealed
/// checkpoint (checkpoints are pipelined), stops at its memory bound, stays
/// in its group (ready, no revocation) well past the session timeout, and
/// once the store answers again commits everything exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_uploads_fill_the_memory_bound_without_losing_the_group() {
    const EVENTS: u64 = 300_000;
    let f = support::fixture(2).await;
    let produced = f.produce(0..EVENTS).await;
    let proxy = held_store(Op::ObjectPut);
    let mut sink = f.sink_with("500ms", "[memory]\nmax_buffer_bytes = \"16MiB\"\n");
    start(
        &mut sink,
        &[
            ("AWS_ENDPOINT_URL", proxy.url.clone()),
            ("SLUICE_STORAGE__REQUEST_TIMEOUT", "300s".into()),
        ],
    );
    let consumed =
        |sink: &Sink| support::metric(&sink.metrics(), "sluice_records_consumed_total", &[]);
    // Reading goes on while the first checkpoints' uploads hang …
    support::wait_until(
        "reading to stop at the memory bound",
        Duration::from_secs(120),
        || {
            let before = consumed(&sink);
            std::thread::sleep(Duration::from_secs(3));
            let after = consumed(&sink);
            before > 0.0 && before == after
        },
    );
    let stopped_at = consumed(&sink);
    assert!(
        stopped_at < EVENTS as f64,
        "everything was read ({stopped_at}): the bound did not hold"
    );
    let metrics = sink.metrics();
    assert_eq!(
        support::metric(&metrics, "sluice_records_committed_total", &[]),
        0.0,
        "nothing is committed while its uploads hang"
    );
    let checkpoints = support::metric(&metrics, "sluice_memory_checkpoints_total", &[]);
    assert!(checkpoints >= 1.0, "the bound was reached: {metrics:?}");
    // One checkpoint uploads at most a file per partition and hour folder
    // (2 × 3 here): more uploads waiting means later checkpoints were read
    // and sealed while the first could not commit.
    let uploads = proxy.seen().get(&Op::ObjectPut).copied().unwrap_or(0);
    assert!(
        uploads > 6,
        "{uploads} uploads held: reading stopped at the first checkpoint"
    );
    // … and the process stays in its group, ready, past the session timeout.
    std::thread::sleep(Duration::from_secs(10));
    let (status, body) =
        support::http_get(&format!("http://127.0.0.1:{}/readyz", sink.metrics_port));
    assert_eq!(status, 200, "{body}");
    assert!(
        !sink.logs().contains("partitions revoked"),
        "{}",
        sink.logs()
    );
    assert_eq!(
        consumed(&sink),
        stopped_at,
        "no reading while the bound holds"
    );

    proxy.release();
    sink.wait_committed(&ends(&produced, f.partitions), Duration::from_secs(180));
    assert!(sink.stop().success(), "{}", sink.logs());
    let read = f.read();
    check_exactly_once(&read, &produced, &reference_sample());
    check_published_and_announced(&read);
    println!(
        "held uploads: reading stopped at {stopped_at} of {EVENTS} records, {uploads} uploads held"
    );
}

/// The checkpoints in flight (sealed, not yet committed) of a running sink.
fn in_flight(sink: &Sink) -> f64 {
    support::metric(&sink.metrics(), "sluice_checkpoints_in_flight", &[])
}

fn consumed(sink: &Sink) -> f64 {
    support::metric(&sink.metrics(), "sluice_records_consumed_total", &[])
}

/// Reads three waves of records while the store holds every upload, each
/// wave sealed before the next is produced, so that partitions have
/// checkpoints queued behind each other; returns what was produced.
async fn queue_three_checkpoints(f: &support::Fixture, sink: &Sink) -> Vec<Produced> {
    const WAVE: u64 = 4_000;
    let mut produced = Vec::new();
    for wave in 0..3u64 {
        produced.extend(f.produce(wave * WAVE..(wave + 1) * WAVE).await);
        let sealed = (f.partitions as u64 * (wave + 1)) as f64;
        support::wait_until(
            "a wave to be read and sealed",
            Duration::from_secs(60),
            || consumed(sink) >= ((wave + 1) * WAVE) as f64 && in_flight(sink) >= sealed,
        );
    }
    assert_eq!(
        support::metric(&sink.metrics(), "sluice_records_committed_total", &[]),
        0.0,
        "nothing commits while its uploads are held"
    );
    produced
}

fn held_store(proxy_op: Op) -> FaultProxy {
    let proxy = FaultProxy::start(
        &moto(),
        Plan {
            rules: Vec::new(),
            stall: Duration::ZERO,
        },
    );
    proxy.hold(proxy_op);
    proxy
}

/// SIGTERM while every partition has several checkpoints queued on held
/// uploads: the process reads no more, waits for each queued checkpoint,
/// commits and announces them in order and exits 0 — nothing is left for a
/// successor, and no successor runs here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_queued_checkpoint() {
    let f = support::fixture(2).await;
    let proxy = held_store(Op::ObjectPut);
    let mut sink = f.sink("500ms");
    start(
        &mut sink,
        &[
            ("AWS_ENDPOINT_URL", proxy.url.clone()),
            ("SLUICE_STORAGE__REQUEST_TIMEOUT", "300s".into()),
        ],
    );
    let produced = queue_three_checkpoints(&f, &sink).await;
    let queued = in_flight(&sink);

    sink.signal("TERM");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        sink.is_running(),
        "sluice exited with {queued} checkpoints unfinished:\n{}",
        sink.logs()
    );
    proxy.release();
    let status = sink.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "{status:?}\n{}", sink.logs());

    let read = f.read();
    check_exactly_once(&read, &produced, &reference_sample());
    check_published_and_announced(&read);
    assert_eq!(
        support::committed(&sink.group, &f.topic, f.partitions),
        ends(&produced, f.partitions),
        "the group was advised of everything before the exit"
    );
    println!("sigterm drained {queued} queued checkpoints");
}

/// A second member joins while the first has several checkpoints per
/// partition waiting on held uploads: the partitions that move are not
/// committed by the first (its lease is gone), the new owner reads them
/// again from the store's progress, and once the store answers every
/// record is in exactly one committed row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_with_checkpoints_in_flight_ends_exactly_once() {
    let f = support::fixture(4).await;
    let proxy = held_store(Op::ObjectPut);
    let env = [
        ("AWS_ENDPOINT_URL", proxy.url.clone()),
        ("SLUICE_STORAGE__REQUEST_TIMEOUT", "300s".into()),
    ];
    let mut first = f.sink("500ms");
    start(&mut first, &env);
    let mut produced = queue_three_checkpoints(&f, &first).await;
    let queued = in_flight(&first);

    let mut second = f.sink("500ms");
    second.set_group(&first.group);
    start(&mut second, &env);
    support::wait_until(
        "the first member to give up partitions",
        Duration::from_secs(60),
        || first.logs().contains("partitions revoked"),
    );
    proxy.release();
    produced.extend(f.produce(12_000..16_000).await);
    let target = ends(&produced, f.partitions);
    let (group, topic) = (first.group.clone(), f.topic.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while support::committed(&group, &topic, f.partitions) != target {
        assert!(
            std::time::Instant::now() < deadline,
            "offsets {target:?} not committed (have {:?});\nfirst member:\n{}\nsecond member:\n{}",
            support::committed(&group, &topic, f.partitions),
            first.logs(),
            second.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for sink in [&mut first, &mut second] {
        assert!(sink.stop().success(), "{}", sink.logs());
    }
    assert!(
        first.logs().contains("its range is left to the new owner"),
        "a checkpoint of a revoked partition was not dropped:\n{}",
        first.logs()
    );
    let read = f.read();
    check_exactly_once(&read, &produced, &reference_sample());
    check_published_and_announced(&read);
    println!("rebalance with {queued} checkpoints in flight");
}
