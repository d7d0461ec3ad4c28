//! The exactly-once contract against the real stack: crashes between every
//! step of the commit protocol, SIGKILLs during rebalances, and a paused
//! zombie. Each ends with what loaders may see (files listed by manifests,
//! read with pyarrow) holding every produced record exactly once.

use std::time::Duration;

use sluice::sample::{self, Produced};

use crate::support::{
    self, Sink, check_exactly_once, check_published_and_announced, decode_key, ends,
    reference_sample,
};

#[cfg(feature = "failpoints")]
mod crash_points {
    use std::time::Duration;

    use sluice::failpoint::*;

    use crate::support::{FAST_GROUP, check_exactly_once, ends, reference_sample};

    /// Crashes (abort, as SIGKILL would) at `point` during the first checkpoint
    /// that reaches it, restarts, and checks the outcome.
    pub(super) async fn crash_at(point: &str) {
        let f = crate::support::fixture(2).await;
        let produced = f.produce(0..6_000).await;
        let mut sink = f.sink("1s");
        sink.start_with_env(&[("SLUICE_FAILPOINT", &format!("{point}:1"))]);
        let status = sink.wait_exit(Duration::from_secs(120));
        assert!(
            !status.success(),
            "expected a crash at {point}; log:\n{}",
            sink.logs()
        );
        assert!(
            sink.logs().contains(&format!("failpoint {point} reached")),
            "{}",
            sink.logs()
        );
        sink.start();
        // After a crash past the Kafka commit the group's offsets are already
        // at the end: wait for the restart to own its partitions (and to
        // handle SIGTERM) before stopping it.
        crate::support::wait_until("the restart's assignment", Duration::from_secs(60), || {
            let logs = sink.logs();
            let restart = logs
                .rsplit("----- restart -----")
                .next()
                .unwrap_or_default();
            restart.contains("partition assigned")
        });
        sink.wait_committed(&ends(&produced, f.partitions), Duration::from_secs(120));
        assert!(sink.stop().success(), "{}", sink.logs());
        let read = f.read();
        check_exactly_once(&read, &produced, &reference_sample());
        crate::support::check_published_and_announced(&read);
        // Orphans of the crashed attempt are never announced (checked above);
        // a retry that batches the same offsets overwrites them in place.
    }

    /// Bucket-notifications mode: files wait under the staging prefix until
    /// their manifest exists, so the live prefix (what S3 event
    /// notifications announce) never holds an uncommitted file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn staged_mode_live_prefix_only_holds_committed_files() {
        let staged = ("SLUICE_STORAGE__BUCKET_NOTIFICATIONS", "true");
        let f = crate::support::fixture(2).await;
        let produced = f.produce(0..4_000).await;
        let mut sink = f.sink("1s");
        sink.start_with_env(&[staged, ("SLUICE_FAILPOINT", "after_upload:1")]);
        assert!(!sink.wait_exit(Duration::from_secs(120)).success());
        let live = format!("{}/order_placed", f.storage);
        let staging = format!("{}/_sluice/staging", f.storage);
        let crashed_live = crate::support::read_back(&live, None);
        assert!(
            crashed_live["files"].as_array().unwrap().is_empty(),
            "{crashed_live}"
        );
        let crashed_staging = crate::support::read_back(&staging, None);
        assert!(!crashed_staging["files"].as_array().unwrap().is_empty());

        sink.start_with_env(&[staged]);
        sink.wait_committed(&ends(&produced, f.partitions), Duration::from_secs(120));
        assert!(sink.stop().success(), "{}", sink.logs());
        let committed = f.read();
        check_exactly_once(&committed, &produced, &reference_sample());
        crate::support::check_published_and_announced(&committed);
        // What a bucket-notification loader would load: the live prefix.
        let live = crate::support::read_back(&live, None);
        let counts = crate::support::check_rows(&live, &produced, &reference_sample());
        assert!(
            counts.values().all(|&c| c == 1),
            "live prefix holds duplicates"
        );
        assert_eq!(live["rows"].as_array().unwrap().len(), produced.len());
        let staged_left = crate::support::read_back(&staging, None);
        let staged_left = staged_left["files"].as_array().unwrap();
        assert!(
            staged_left.iter().all(|f| !committed["manifests"]
                .to_string()
                .contains(f["key"].as_str().unwrap())),
            "published files are removed from staging"
        );
    }

    /// How a sink writes its files, for the double-crash tests.
    #[derive(Debug, Clone, Copy)]
    pub(super) enum Mode {
        /// Files uploaded at their keys, announced on SQS.
        Plain,
        /// `bucket_notifications`: staged, copied to the live prefix after
        /// the commit.
        Staged,
        /// Files of several MiB streamed in parts to a stream key, copied to
        /// their keys after the commit.
        Streamed,
    }

    /// Manifest keys without their marker, per partition, and each
    /// partition's last manifest key.
    fn unmarked_and_last(read: &serde_json::Value) -> (Vec<String>, Vec<String>) {
        let unmarked: Vec<String> = read["unmarked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
        let mut last = std::collections::BTreeMap::new();
        for m in read["manifests"].as_array().unwrap() {
            let (p, from) = (
                m["partition"].as_i64().unwrap(),
                m["range"]["from"].as_i64().unwrap(),
            );
            let entry = last.entry(p).or_insert(from);
            *entry = (*entry).max(from);
        }
        let last = last
            .into_iter()
            .map(|(p, from)| format!("p={p:05}/{:020}.json", from + 1))
            .collect();
        (unmarked, last)
    }

    /// The outbox `sluice status` reports.
    fn status_outbox(sink: &crate::support::Sink) -> i64 {
        let (ok, stdout, stderr) = crate::support::sluice(&["status", "--json"], &sink.config);
        assert!(ok, "{stderr}");
        let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        status["outbox"].as_i64().unwrap()
    }

    /// A commit whose announcement was cut short by a crash, then a
    /// successor that crashes right after its own first commit: its
    /// predecessor's files must be published and announced before that
    /// commit. A third process finishes; in the end every manifest is
    /// marked and every committed file live and announced as listed.
    pub(super) async fn crash_twice(mode: Mode) {
        let sample = reference_sample();
        let streamed = matches!(mode, Mode::Streamed);
        // One partition: the invariant is per partition, and the second crash
        // must come at that partition's next manifest.
        let f = crate::support::fixture(1).await;
        let (batches, interval) = if streamed {
            // 100 kB records in one folder, uncompressed: each checkpoint's
            // file (10 MB) passes the 5 MiB part size and streams.
            ([0..100, 100..200], "5s")
        } else {
            ([0..3_000, 3_000..6_000], "1s")
        };
        let produce = |seqs: std::ops::Range<u64>| async {
            if streamed {
                crate::support::produce_padded(&f.topic, &sample, seqs, 100_000).await
            } else {
                f.produce(seqs).await
            }
        };
        let extra = if streamed {
            format!(
                "{FAST_GROUP}\n[parquet]\ncompression = \"none\"\n[memory]\nmax_buffer_bytes = \"64MiB\"\n\
                 [files]\npath = \"{{event}}/all\"\n"
            )
        } else {
            FAST_GROUP.to_owned()
        };
        let mut sink = crate::support::Sink::with_extra(
            crate::support::SinkSpec {
                topic: &f.topic,
                storage_url: &f.storage,
                queue_url: Some(&f.queue),
                interval,
            },
            &extra,
        );
        let staged = ("SLUICE_STORAGE__BUCKET_NOTIFICATIONS", "true");
        let env = |failpoint: Option<&'static str>| {
            let mut env = Vec::new();
            if matches!(mode, Mode::Staged) {
                env.push(staged);
            }
            if let Some(point) = failpoint {
                env.push(("SLUICE_FAILPOINT", point));
            }
            env
        };
        let crash = "after_manifest:1";

        let [first_batch, second_batch] = batches;
        let mut produced = produce(first_batch).await;
        sink.start_with_env(&env(Some(crash)));
        assert!(
            !sink.wait_exit(Duration::from_secs(120)).success(),
            "{}",
            sink.logs()
        );
        let first = f.peek();
        let (unmarked, _) = unmarked_and_last(&first);
        assert_eq!(unmarked.len(), 1, "one commit left unannounced: {first}");
        let m1 = unmarked[0].clone();
        let staged_under = match mode {
            Mode::Plain => None,
            Mode::Staged => Some("/_sluice/staging/"),
            Mode::Streamed => Some("/_sluice/streams/"),
        };
        for file in first["manifests"][0]["files"].as_array().unwrap() {
            let staged_key = file["staged_key"].as_str();
            match staged_under {
                None => assert!(staged_key.is_none(), "{file}"),
                Some(under) => assert!(staged_key.is_some_and(|k| k.contains(under)), "{file}"),
            }
        }
        assert_eq!(
            status_outbox(&sink),
            1,
            "status shows the unannounced commit"
        );

        produced.extend(produce(second_batch).await);
        sink.start_with_env(&env(Some(crash)));
        assert!(
            !sink.wait_exit(Duration::from_secs(120)).success(),
            "{}",
            sink.logs()
        );
        let second = f.peek();
        let (unmarked, last) = unmarked_and_last(&second);
        assert!(
            !unmarked.contains(&m1),
            "{m1} was not announced before a newer commit: unmarked {unmarked:?}"
        );
        assert!(
            unmarked
                .iter()
                .all(|k| last.iter().any(|l| k.ends_with(l.as_str()))),
            "only a partition's last manifest may lack its marker: unmarked {unmarked:?}, last {last:?}"
        );
        assert!(
            !unmarked.is_empty(),
            "the second crash left its commit unannounced"
        );

        sink.start_with_env(&env(None));
        sink.wait_committed(&ends(&produced, f.partitions), Duration::from_secs(180));
        assert!(sink.stop().success(), "{}", sink.logs());
        let read = f.read();
        check_exactly_once(&read, &produced, &sample);
        crate::support::check_published_and_announced(&read);
        assert_eq!(status_outbox(&sink), 0, "status: nothing left to announce");
        if matches!(mode, Mode::Staged | Mode::Streamed) {
            // What S3 event notifications would announce: the live prefix.
            let live = crate::support::read_back(&format!("{}/order_placed", f.storage), None);
            let counts = crate::support::check_rows(&live, &produced, &sample);
            assert!(
                counts.values().all(|&c| c == 1),
                "live prefix holds duplicates"
            );
            assert_eq!(live["rows"].as_array().unwrap().len(), produced.len());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_twice_plain() {
        crash_twice(Mode::Plain).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_twice_bucket_notifications() {
        crash_twice(Mode::Staged).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_twice_streamed_files() {
        crash_twice(Mode::Streamed).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_after_upload() {
        crash_at(AFTER_UPLOAD).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_after_manifest() {
        crash_at(AFTER_MANIFEST).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_after_notify() {
        crash_at(AFTER_NOTIFY).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_after_markers() {
        crash_at(AFTER_MARKERS).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_after_kafka_commit() {
        crash_at(AFTER_KAFKA_COMMIT).await;
    }
}

/// Two processes in one group, SIGKILLed and restarted at random moments
/// while a producer writes; at the end every record is committed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_two_processes_sigkilled_and_restarted() {
    const EVENTS: u64 = 200_000;
    const KILLS: usize = 20;
    let f = crate::support::fixture(6).await;
    let mut sinks = [f.sink("1s"), f.sink("1s")];
    // Same group for both.
    let group = sinks[0].group.clone();
    let text = std::fs::read_to_string(&sinks[1].config)
        .unwrap()
        .replace(&sinks[1].group, &group);
    std::fs::write(&sinks[1].config, text).unwrap();
    sinks[1].group = group;
    sinks.iter_mut().for_each(Sink::start);

    let producer = {
        let topic = f.topic.clone();
        tokio::spawn(async move {
            let sample = reference_sample();
            let mut all = Vec::new();
            for chunk in 0..20 {
                let seqs = chunk * EVENTS / 20..(chunk + 1) * EVENTS / 20;
                all.extend(
                    sample::produce(&support::brokers(), &topic, 6, &sample, seqs)
                        .await
                        .unwrap(),
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            all
        })
    };
    let mut rand = support::random(0x2545_F491_4F6C_DD1Du64);
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(1000 + rand(3000))).await;
        let victim = rand(2) as usize;
        sinks[victim].kill();
        tokio::time::sleep(Duration::from_millis(rand(1000))).await;
        sinks[victim].start();
    }
    let produced = producer.await.unwrap();
    assert_eq!(produced.len(), EVENTS as usize);
    let target = ends(&produced, f.partitions);
    let group = sinks[0].group.clone();
    support::wait_until(
        "both processes to commit everything",
        Duration::from_secs(300),
        || support::committed(&group, &f.topic, f.partitions) == target,
    );
    for sink in &mut sinks {
        assert!(sink.stop().success(), "{}", sink.logs());
    }
    let read = f.read();
    check_exactly_once(&read, &produced, &reference_sample());
    check_published_and_announced(&read);
    println!(
        "chaos: {} events, {KILLS} SIGKILLs, {} manifests, {} committed files, {} orphans, {} messages",
        produced.len(),
        read["manifests"].as_array().unwrap().len(),
        read["files"].as_array().unwrap().len(),
        read["orphans"].as_array().unwrap().len(),
        read["messages"].as_array().unwrap().len(),
    );
}

/// A process paused past its session timeout loses its partitions; when it
/// resumes and tries to commit what it buffered, the fence rejects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_is_fenced_after_its_partitions_moved() {
    let f = crate::support::fixture(2).await;
    // A long interval: the zombie holds rows when it is paused.
    let mut zombie = f.sink("8s");
    let mut successor = f.sink("1s");
    let group = zombie.group.clone();
    let text = std::fs::read_to_string(&successor.config)
        .unwrap()
        .replace(&successor.group, &group);
    std::fs::write(&successor.config, text).unwrap();
    successor.group = group.clone();

    let first = f.produce(0..2_000).await;
    zombie.start();
    support::wait_until(
        "the zombie to hold its partitions",
        Duration::from_secs(60),
        || zombie.logs().contains("partition assigned"),
    );
    // Let it read (not commit: 8 s interval), then pause it.
    std::thread::sleep(Duration::from_secs(3));
    zombie.signal("STOP");
    successor.start();
    let second = f.produce(2_000..4_000).await;
    let produced: Vec<Produced> = first.into_iter().chain(second).collect();
    // The successor takes over once the zombie's session times out.
    successor.wait_committed(&ends(&produced, f.partitions), Duration::from_secs(120));
    zombie.signal("CONT");
    // Its checkpoint timer ran out while it was paused: it tries to commit
    // what it read before the pause and the fence refuses. It may instead
    // learn from its first heartbeat that the partitions moved and drop its
    // work before committing; both are correct, and which comes first is a
    // race between that heartbeat and the checkpoint.
    const FENCED: &str = "commit lost to another writer";
    let stood_down = |logs: &str| {
        logs.contains(FENCED)
            || logs.contains("revoked during the checkpoint")
            || logs.matches("partitions revoked").count() >= 1
    };
    support::wait_until("the zombie to stand down", Duration::from_secs(60), || {
        stood_down(&zombie.logs())
    });
    if zombie.logs().contains(FENCED) {
        let fenced = zombie
            .metrics()
            .iter()
            .filter(|(k, _)| k.starts_with("sluice_fencing_rejections_total"))
            .map(|(_, v)| *v)
            .sum::<f64>();
        assert!(fenced >= 1.0, "fencing rejections: {fenced}");
        println!("zombie: fenced by the manifest's conditional create");
    } else {
        println!("zombie: learned of the rebalance before committing");
    }
    assert!(zombie.stop().success(), "{}", zombie.logs());
    assert!(successor.stop().success(), "{}", successor.logs());
    let read = f.read();
    check_exactly_once(&read, &produced, &reference_sample());
    check_published_and_announced(&read);
}

/// `sluice gc --older-than 0s` for the sink configured in `config`
/// (`--delete` when told); its output.
fn gc(config: &std::path::Path, delete: bool) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["gc", "--older-than", "0s", "--config"])
        .arg(config);
    if delete {
        command.arg("--delete");
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `sluice gc` lists files no manifest lists, deletes them only when told,
/// and never touches committed files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_lists_and_deletes_orphans_only() {
    let f = crate::support::fixture(1).await;
    let produced = f.produce(0..500).await;
    let mut sink = f.sink("1s");
    sink.start();
    sink.wait_committed(&ends(&produced, f.partitions), Duration::from_secs(60));
    assert!(sink.stop().success());
    // An upload whose manifest was never written.
    let bucket = f
        .storage
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let orphan = "raw/order_placed/dt=2025-12-31/hr=23/x-0-00000000000000000001-00000000000000000002.parquet";
    support::put_object(&bucket, orphan, b"not committed").await;

    let gc = |delete: bool| gc(&sink.config, delete);
    let listed = gc(false);
    assert!(listed.contains(&format!("orphan {orphan}")), "{listed}");
    assert!(listed.contains("1 orphan(s)"), "{listed}");
    let before = support::read_back_committed(&f.storage, None);
    assert_eq!(
        before["orphans"],
        serde_json::json!([orphan]),
        "a dry run deletes nothing"
    );
    let deleted = gc(true);
    assert!(deleted.contains("deleted 1 orphan(s)"), "{deleted}");
    let read = support::read_back_committed(&f.storage, Some(&f.queue));
    assert!(read["orphans"].as_array().unwrap().is_empty());
    check_exactly_once(&read, &produced, &reference_sample());
}

/// A file of ~143 MiB streams to S3 in parts while it is written, with
/// less memory than the file's size. A part that keeps failing aborts the
/// upload and stops the process; the restart commits once. A crash
/// mid-upload leaves the upload for `sluice gc`, and the restart commits
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_uploads_fail_abort_and_commit_exactly_once() {
    const RECORDS: u64 = 1500;
    let f = crate::support::fixture(1).await;
    let sample = reference_sample();
    let mut produced = support::produce_padded(&f.topic, &sample, 0..RECORDS, 100_000).await;
    // One folder and no compression: a file of ~143 MiB that closes at its
    // 1500th row (not at an interval or at the default 128 MiB, which a
    // slow run could reach first), streamed in 5 MiB parts within a 32 MiB
    // budget.
    let mut sink = f.sink_with(
        "10m",
        "[parquet]\ncompression = \"none\"\n[memory]\nmax_buffer_bytes = \"32MiB\"\n\
         [files]\npath = \"{event}/all\"\nmax_rows = 1500\nmax_bytes = \"1GiB\"\n",
    );
    let config = sink.config.clone();
    let gc = |delete: bool| gc(&config, delete);

    // Every part from the third on fails: after its retries the upload is
    // aborted and the checkpoint fails.
    sink.start_with_env(&[("SLUICE_FAILPOINT", "part_upload:3+")]);
    assert!(
        !sink.wait_exit(Duration::from_secs(300)).success(),
        "{}",
        sink.logs()
    );
    assert!(
        sink.logs().contains("injected failure of part 3"),
        "{}",
        sink.logs()
    );
    let listed = gc(false);
    assert!(
        listed.contains("0 abandoned upload(s)"),
        "{listed}\n{}",
        sink.logs()
    );

    // The restart reads from the last manifest and commits once; the
    // streamed object is copied to its key and removed. It runs with the
    // image's allocator settings, under which the process's own memory
    // above the budget is stated (DESIGN.md), far below the file's size.
    sink.start_with_env(&support::AS_DEPLOYED);
    sink.wait_committed(&[RECORDS as i64], Duration::from_secs(300));
    let peak = support::peak_rss(sink.pid().unwrap());
    eprintln!("peak RSS while streaming: {} MiB", peak >> 20);
    assert!(sink.stop().success(), "{}", sink.logs());
    let listed = gc(false);
    assert!(
        listed.contains("0 orphan(s), 0 bytes, 0 abandoned upload(s)"),
        "{listed}"
    );
    let first_file = support::read_back_committed(&f.storage, None)["files"][0]["size"]
        .as_u64()
        .unwrap();
    assert!(
        peak < first_file,
        "peak RSS {} MiB while writing a file of {} MiB",
        peak >> 20,
        first_file >> 20
    );
    assert!(
        peak <= (32 << 20) + support::MARGIN,
        "peak RSS {} MiB: more than the 32 MiB budget and the margin",
        peak >> 20
    );

    // A crash after the second part of the next file: the upload stays
    // open until gc aborts it.
    produced
        .extend(support::produce_padded(&f.topic, &sample, RECORDS..2 * RECORDS, 100_000).await);
    sink.start_with_env(&[("SLUICE_FAILPOINT", "after_part:2")]);
    assert!(
        !sink.wait_exit(Duration::from_secs(300)).success(),
        "{}",
        sink.logs()
    );
    sink.start();
    sink.wait_committed(&[2 * RECORDS as i64], Duration::from_secs(300));
    assert!(sink.stop().success(), "{}", sink.logs());
    let listed = gc(false);
    assert!(listed.contains("1 abandoned upload(s)"), "{listed}");
    let aborted = gc(true);
    assert!(
        aborted.contains("aborted 1 abandoned upload(s)"),
        "{aborted}"
    );
    assert!(gc(false).contains("0 orphan(s), 0 bytes, 0 abandoned upload(s)"));

    let read = f.read();
    check_exactly_once(&read, &produced, &sample);
    let sizes: Vec<u64> = read["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["size"].as_u64().unwrap())
        .collect();
    // One file per start, each of its 1500 rows.
    assert_eq!(sizes.len(), 2, "{sizes:?}");
    assert!(sizes.iter().all(|&size| size >= 140 << 20), "{sizes:?}");
    // Each announcement names the live copy's ETag, not the streamed
    // upload's.
    for file in read["files"].as_array().unwrap() {
        let key = file["key"].as_str().unwrap();
        let tag = file["e_tag"].as_str().unwrap().trim_matches('"');
        let announced: Vec<&str> = read["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["Records"][0]["s3"]["object"])
            .filter(|o| decode_key(o["key"].as_str().unwrap()) == key)
            .map(|o| o["eTag"].as_str().unwrap())
            .collect();
        assert!(!announced.is_empty(), "{key} announced");
        assert!(
            announced.iter().all(|t| *t == tag),
            "{key}: {announced:?} vs {tag}"
        );
    }
}
