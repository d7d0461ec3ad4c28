//! The Kafka broker dies (SIGKILL) mid-stream and comes back on the same
//! log directory: sluice reconnects, holds no more memory while the broker
//! is gone, and what lands is every record exactly once. The test runs its
//! own broker (scripts/kafka-broker) so the shared one stays up for the
//! tests running beside it.

use std::time::Duration;

use sluice::sample::{self, Produced};

use crate::support::{self, Broker, Sink, SinkSpec, check_exactly_once, ends, reference_sample};

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sigkill_and_restart_lose_and_duplicate_nothing() {
    const PARTITIONS: i32 = 2;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let brokers = broker.address();
    let topic = support::unique("orders");
    let bucket = support::unique("sluice-broker");
    support::create_bucket(&bucket).await;
    sample::ensure_topic(&brokers, &topic, PARTITIONS)
        .await
        .unwrap();
    let sample = reference_sample();
    let first = sample::produce(&brokers, &topic, PARTITIONS, &sample, 0..20_000)
        .await
        .unwrap();

    let storage = format!("s3://{bucket}/raw");
    let mut sink = Sink::new(SinkSpec {
        topic: &topic,
        storage_url: &storage,
        queue_url: None,
        interval: "1s",
    });
    let config = std::fs::read_to_string(&sink.config)
        .unwrap()
        .replace(&support::brokers(), &brokers);
    std::fs::write(&sink.config, config).unwrap();
    sink.start();
    let (group, t) = (sink.group.clone(), topic.clone());
    let committed = |b: &str| support::committed_on(b, &group, &t, PARTITIONS);
    support::wait_until("a first commit", Duration::from_secs(120), || {
        committed(&brokers).iter().any(|&o| o > 0)
    });

    broker.kill();
    let before = rss_bytes(sink.pid().unwrap());
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        sink.is_running(),
        "sluice must survive the broker's death:\n{}",
        sink.logs()
    );
    let during = rss_bytes(sink.pid().unwrap());
    assert!(
        during < before + 64 * 1024 * 1024,
        "memory grew from {before} to {during} bytes while the broker was gone"
    );

    broker.restart();
    let second = sample::produce(&brokers, &topic, PARTITIONS, &sample, 20_000..30_000)
        .await
        .unwrap();
    let all: Vec<Produced> = first.into_iter().chain(second).collect();
    let target = ends(&all, PARTITIONS);
    support::wait_until(
        "everything committed after the restart",
        Duration::from_secs(180),
        || committed(&brokers) == target,
    );
    assert!(sink.stop().success(), "{}", sink.logs());
    drop(broker);
    let read = support::read_back_committed(&storage, None);
    check_exactly_once(&read, &all, &sample);
}
