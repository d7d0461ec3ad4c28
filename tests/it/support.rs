//! Shared test plumbing: the stack's addresses, unique names, a sluice
//! process under test, and reading results back with pyarrow.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use sluice::sample::{OrderSample, Produced};
use sluice::schema::LocalRegistry;

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A name no other test or run uses: lowercase, valid for topics and buckets.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{name}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn sdk() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

pub async fn create_bucket(name: &str) {
    let config = aws_sdk_s3::config::Builder::from(&sdk().await)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
        .create_bucket()
        .bucket(name)
        .send()
        .await
        .expect("create bucket on moto");
}

pub async fn put_object(bucket: &str, key: &str, body: &[u8]) {
    let config = aws_sdk_s3::config::Builder::from(&sdk().await)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.to_vec().into())
        .send()
        .await
        .expect("put object on moto");
}

pub async fn create_queue(name: &str) -> String {
    let out = aws_sdk_sqs::Client::new(&sdk().await)
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create queue on moto");
    out.queue_url().unwrap().to_owned()
}

/// A repeatable stream of numbers below `n` (xorshift) for tests that
/// pick victims and delays.
pub fn random(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut state = seed;
    move |n| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    }
}

/// Polls `check` until it returns true or `limit` passes.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The group's committed offset per partition (-1 where none).
pub fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    committed_on(&brokers(), group, topic, partitions)
}

pub fn committed_on(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let Ok(offsets) = consumer.committed_offsets(tpl, Duration::from_secs(5)) else {
        return vec![-1; partitions as usize];
    };
    (0..partitions)
        .map(
            |p| match offsets.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            },
        )
        .collect()
}

/// A topic on the shared broker, a bucket and a queue of a test's own.
pub struct Fixture {
    pub topic: String,
    pub queue: String,
    /// `s3://<bucket>/raw`.
    pub storage: String,
    pub partitions: i32,
}

/// Makes a fixture with a topic of `partitions` partitions.
pub async fn fixture(partitions: i32) -> Fixture {
    let topic = unique("orders");
    let bucket = unique("sluice-eo");
    create_bucket(&bucket).await;
    let queue = create_queue(&unique("files")).await;
    sluice::sample::ensure_topic(&brokers(), &topic, partitions)
        .await
        .unwrap();
    let storage = format!("s3://{bucket}/raw");
    Fixture {
        topic,
        queue,
        storage,
        partitions,
    }
}

impl Fixture {
    /// A sink of the fixture with group timeouts for tests that kill members.
    pub fn sink(&self, interval: &str) -> Sink {
        self.sink_with(interval, "")
    }

    /// The same, its config ending with `extra` (more TOML tables).
    pub fn sink_with(&self, interval: &str, extra: &str) -> Sink {
        Sink::with_extra(
            SinkSpec {
                topic: &self.topic,
                storage_url: &self.storage,
                queue_url: Some(&self.queue),
                interval,
            },
            &format!("{FAST_GROUP}\n{extra}"),
        )
    }

    /// Reference events `seqs` spread over the partitions.
    pub async fn produce(&self, seqs: std::ops::Range<u64>) -> Vec<Produced> {
        sluice::sample::produce(
            &brokers(),
            &self.topic,
            self.partitions,
            &reference_sample(),
            seqs,
        )
        .await
        .unwrap()
    }

    /// What loaders may see, the queue drained.
    pub fn read(&self) -> Value {
        read_back_committed(&self.storage, Some(&self.queue))
    }

    /// What the store holds now, without draining the queue.
    pub fn peek(&self) -> Value {
        read_back_committed(&self.storage, None)
    }
}

/// One sink configuration and the sluice processes run with it.
pub struct Sink {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub metrics_port: u16,
    pub group: String,
    pub topic: String,
    child: Option<Child>,
    runs: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct SinkSpec<'a> {
    pub topic: &'a str,
    pub storage_url: &'a str,
    pub queue_url: Option<&'a str>,
    pub interval: &'a str,
}

/// Group timeouts short enough for tests that kill members: the broker's
/// minimum session timeout, so a dead member's partitions move within
/// seconds.
pub const FAST_GROUP: &str = r#"
[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
"#;

/// What a process needs besides its memory budget: code, the async runtime,
/// librdkafka's threads, the AWS SDK, memory the allocator keeps for reuse
/// (with [`AS_DEPLOYED`]). DESIGN.md states it.
pub const MARGIN: u64 = 64 << 20;

/// The allocator settings of the image (Dockerfile): freed memory goes back
/// to the system at once, arenas are committed as they are used. Tests that
/// measure memory run with them.
pub const AS_DEPLOYED: [(&str, &str); 2] = [
    ("MIMALLOC_PURGE_DELAY", "0"),
    ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
];

impl Sink {
    pub fn new(spec: SinkSpec<'_>) -> Sink {
        Sink::with_extra(spec, "")
    }

    /// A sink whose config ends with `extra` (more TOML tables).
    pub fn with_extra(spec: SinkSpec<'_>, extra: &str) -> Sink {
        let dir = tempfile::tempdir().unwrap();
        let group = unique("sluice-test");
        let metrics_port = free_port();
        let notify = spec
            .queue_url
            .map(|q| format!("[notify]\nqueue_url = \"{q}\"\n"))
            .unwrap_or_default();
        let text = format!(
            r#"
[event]
name = "order_placed"
message = "sluice.examples.OrderPlaced"
[kafka]
brokers = "{brokers}"
topic = "{topic}"
group_id = "{group}"
[schema]
registry = "file://{schemas}"
[storage]
url = "{url}"
[checkpoint]
interval = "{interval}"
{notify}
[metrics]
listen = "127.0.0.1:{metrics_port}"
{extra}
"#,
            brokers = brokers(),
            topic = spec.topic,
            schemas = repo().join("schemas").display(),
            url = spec.storage_url,
            interval = spec.interval,
        );
        let config = dir.path().join("sink.toml");
        std::fs::write(&config, text).unwrap();
        Sink {
            dir,
            config,
            metrics_port,
            group,
            topic: spec.topic.to_owned(),
            child: None,
            runs: 0,
        }
    }

    /// Makes this sink a member of `group` (another sink's, say).
    pub fn set_group(&mut self, group: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap().replace(
            &format!("group_id = \"{}\"", self.group),
            &format!("group_id = \"{group}\""),
        );
        std::fs::write(&self.config, text).unwrap();
        self.group = group.to_owned();
    }

    pub fn log_path(&self, run: usize) -> PathBuf {
        self.dir.path().join(format!("sluice-{run}.log"))
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "already running");
        self.runs += 1;
        let log = std::fs::File::create(self.log_path(self.runs)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--config"])
            .arg(&self.config)
            .envs(env.iter().copied())
            .env(
                "SLUICE_METRICS__LISTEN",
                format!("127.0.0.1:{}", self.metrics_port),
            )
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_LOG").unwrap_or_else(|_| "info,sluice=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice");
        self.child = Some(child);
    }

    /// "running", or how the process ended: for failure messages.
    pub fn state(&mut self) -> String {
        match self.child.as_mut().map(Child::try_wait) {
            None => "not started".into(),
            Some(Ok(None)) => "still running".into(),
            Some(Ok(Some(status))) => format!("exited ({status})"),
            Some(Err(e)) => format!("in an unknown state ({e})"),
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`) to the running process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("not running");
        Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
    }

    /// SIGKILL, and reaps the process.
    pub fn kill(&mut self) {
        self.signal("KILL");
        let mut child = self.child.take().expect("not running");
        child.wait().unwrap();
    }

    /// Waits for the process to exit (by itself at a crash point, or after
    /// a signal).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("not running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "sluice did not exit within {limit:?}; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(60))
    }

    pub fn logs(&self) -> String {
        (1..=self.runs)
            .map(|r| std::fs::read_to_string(self.log_path(r)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----- restart -----\n")
    }

    /// Waits until the group has committed `ends` (next offset per partition).
    pub fn wait_committed(&mut self, ends: &[i64], limit: Duration) {
        let partitions = ends.len() as i32;
        let (group, topic) = (self.group.clone(), self.topic.clone());
        let deadline = Instant::now() + limit;
        loop {
            if committed(&group, &topic, partitions).as_slice() == ends {
                return;
            }
            if !self.is_running() || Instant::now() > deadline {
                panic!(
                    "offsets {:?} not committed (have {:?}); sluice {}; log:\n{}",
                    ends,
                    committed(&group, &topic, partitions),
                    self.state(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Scrapes `/metrics`: metric line (name with labels) → value.
    pub fn metrics(&self) -> HashMap<String, f64> {
        let output = Command::new("curl")
            .args([
                "-sf",
                &format!("http://127.0.0.1:{}/metrics", self.metrics_port),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `sluice <args> --config <config>`: success, stdout, stderr.
pub fn sluice(args: &[&str], config: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What pyarrow finds under `url`, and the messages drained from `queue`.
pub fn read_back(url: &str, queue: Option<&str>) -> Value {
    read_back_with(url, queue, &[])
}

/// Only what manifests list: what loaders may see.
pub fn read_back_committed(url: &str, queue: Option<&str>) -> Value {
    read_back_with(url, queue, &["--committed"])
}

/// [`read_back`] with more arguments of `read_back.py`.
pub fn read_back_with(url: &str, queue: Option<&str>, flags: &[&str]) -> Value {
    let mut args = vec![url, "--rows"];
    args.extend_from_slice(flags);
    if let Some(q) = queue {
        args.extend(["--queue", q]);
    }
    python_json("read_back.py", &args)
}

/// Runs `tests/py/<script>` (pyarrow, an independent Parquet reader) with
/// `args` and parses the JSON it prints.
pub fn python_json(script: &str, args: &[impl AsRef<std::ffi::OsStr>]) -> Value {
    let output = Command::new(python())
        .arg(repo().join("tests/py").join(script))
        .args(args)
        .output()
        .expect("run a Python reader");
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the Python reader prints JSON")
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Produces one record to partition 0 of `topic` with header keys given as
/// bytes, which need not be UTF-8: through `tests/go/rawproduce` (Go's
/// client writes any bytes; the Rust and Python ones take keys as strings),
/// which `scripts/dev-up` builds.
pub fn send_raw_keys(topic: &str, payload: &[u8], headers: &[(&[u8], &[u8])]) {
    let program = std::env::var("SLUICE_RAWPRODUCE").expect(
        "SLUICE_RAWPRODUCE names the Go producer scripts/dev-up builds (scripts/lib.sh sets it)",
    );
    let output = Command::new(&program)
        .arg(brokers())
        .arg(topic)
        .arg(hex(payload))
        .args(
            headers
                .iter()
                .map(|(k, v)| format!("{}={}", hex(k), hex(v))),
        )
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn schemas_dir() -> PathBuf {
    repo().join("schemas")
}

pub fn reference_sample() -> OrderSample {
    let registry = LocalRegistry::open(&schemas_dir()).unwrap();
    OrderSample::new(&registry.message("sluice.examples.OrderPlaced").unwrap()).unwrap()
}

/// Next offset per partition after what was produced.
pub fn ends(produced: &[Produced], partitions: i32) -> Vec<i64> {
    let mut ends = vec![0i64; partitions as usize];
    for p in produced {
        ends[p.partition as usize] = ends[p.partition as usize].max(p.offset + 1);
    }
    ends
}

/// Checks that every produced event is a row with its values; returns how
/// many rows each (partition, offset) has.
pub fn check_rows(
    read: &Value,
    produced: &[Produced],
    sample: &OrderSample,
) -> HashMap<(i64, i64), usize> {
    let mut rows: HashMap<(i64, i64), &Value> = HashMap::new();
    let mut counts = HashMap::new();
    for row in read["rows"].as_array().unwrap() {
        let key = (row[0].as_i64().unwrap(), row[1].as_i64().unwrap());
        rows.insert(key, row);
        *counts.entry(key).or_insert(0) += 1;
    }
    for p in produced {
        let row = rows
            .get(&(p.partition as i64, p.offset))
            .unwrap_or_else(|| panic!("no row for partition {} offset {}", p.partition, p.offset));
        let f = sample.fields(p.seq);
        assert_eq!(row[2], f.order_id.as_str(), "order_id at {p:?}");
        assert_eq!(row[3], f.customer_id, "customer_id at {p:?}");
        assert_eq!(row[4], f.total_cents, "total_cents at {p:?}");
        assert_eq!(row[5], f.payment_method, "payment_method at {p:?}");
        assert_eq!(
            row[6].as_str(),
            f.promo_code.as_deref(),
            "promo_code at {p:?}"
        );
        assert_eq!(row[7], f.placed_at_micros, "placed_at at {p:?}");
        assert_eq!(row[8].as_f64(), Some(f.latitude), "latitude at {p:?}");
        assert_eq!(row[9], f.is_first_order, "is_first_order at {p:?}");
        assert_eq!(row[10], f.order_id.as_str(), "_event_id at {p:?}");
        assert_eq!(row[11], f.placed_at_micros, "_event_time at {p:?}");
    }
    counts
}

pub fn decode_key(key: &str) -> String {
    percent_encoding::percent_decode_str(key)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

/// What loaders may see is exactly what was produced: every (partition,
/// offset) in exactly one committed row, manifests chaining without gaps or
/// overlaps, and no announced file outside a manifest.
pub fn check_exactly_once(read: &Value, produced: &[Produced], sample: &OrderSample) {
    let counts = check_rows(read, produced, sample);
    let duplicated: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(
        duplicated.is_empty(),
        "duplicated rows, e.g. {duplicated:?}"
    );
    assert_eq!(
        read["rows"].as_array().unwrap().len(),
        produced.len(),
        "committed rows"
    );
    let mut ranges: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
    let mut listed = std::collections::HashSet::new();
    for m in read["manifests"].as_array().unwrap() {
        let p = m["partition"].as_i64().unwrap();
        let range = (
            m["range"]["from"].as_i64().unwrap(),
            m["range"]["to"].as_i64().unwrap(),
        );
        ranges.entry(p).or_default().push(range);
        for f in m["files"].as_array().unwrap() {
            listed.insert(f["key"].as_str().unwrap().to_owned());
        }
    }
    for (p, rs) in &mut ranges {
        rs.sort();
        for pair in rs.windows(2) {
            assert_eq!(
                pair[0].1, pair[1].0,
                "partition {p}: manifests {pair:?} do not chain"
            );
        }
    }
    for m in read["messages"].as_array().unwrap() {
        let key = decode_key(m["Records"][0]["s3"]["object"]["key"].as_str().unwrap());
        assert!(
            listed.contains(&key),
            "announced file {key} is in no manifest"
        );
    }
    let present: std::collections::HashSet<&str> = read["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    for key in &listed {
        assert!(
            present.contains(key.as_str()),
            "committed file {key} is missing from the store"
        );
    }
}

/// Every committed file is live and announced exactly as its manifest
/// lists it: every manifest has its `.notified` marker; every file it
/// lists is at its key with its size (staged and streamed copies removed);
/// every data file of the sink's own prefix was announced, each message
/// naming its key, size, the live object's ETag, its offsets, rows and the
/// manifest's commit time.
pub fn check_published_and_announced(read: &Value) {
    assert_eq!(
        read["unmarked"],
        serde_json::json!([]),
        "manifests without their .notified marker"
    );
    let live: HashMap<&str, &Value> = read["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["key"].as_str().unwrap(), f))
        .collect();
    let orphans: std::collections::HashSet<&str> = read["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut messages: HashMap<String, Vec<&Value>> = HashMap::new();
    for m in read["messages"].as_array().unwrap() {
        let key = decode_key(m["Records"][0]["s3"]["object"]["key"].as_str().unwrap());
        messages.entry(key).or_default().push(m);
    }
    for manifest in read["manifests"].as_array().unwrap() {
        for file in manifest["files"].as_array().unwrap() {
            let key = file["key"].as_str().unwrap();
            let object = live
                .get(key)
                .unwrap_or_else(|| panic!("committed file {key} is not at its key"));
            assert_eq!(object["size"], file["size"], "{key}: size");
            if let Some(staged) = file["staged_key"].as_str() {
                assert!(!orphans.contains(staged), "{staged} left after publishing");
            }
            let data = file["kind"].is_null() || file["kind"] == "data";
            if !data || !file["tenant"].is_null() {
                continue;
            }
            let sent = messages
                .get(key)
                .unwrap_or_else(|| panic!("committed file {key} never announced"));
            let e_tag = object["e_tag"].as_str().unwrap().trim_matches('"');
            for message in sent {
                let s3 = &message["Records"][0]["s3"]["object"];
                assert_eq!(s3["size"], file["size"], "{key}: announced size");
                assert_eq!(s3["eTag"], e_tag, "{key}: announced ETag");
                assert_eq!(
                    message["Records"][0]["eventTime"], manifest["committed_at"],
                    "{key}: announced time"
                );
                let details = &message["sluice"];
                assert_eq!(details["first_offset"], file["first_offset"], "{key}");
                assert_eq!(details["last_offset"], file["last_offset"], "{key}");
                assert_eq!(details["rows"], file["rows"], "{key}");
                assert_eq!(details["partition"], manifest["partition"], "{key}");
            }
        }
    }
}

/// Serves `routes` (path → JSON body; anything else is 404), counting
/// requests and remembering the Authorization headers seen.
pub struct Server {
    pub url: String,
    pub requests: Arc<AtomicUsize>,
    pub auth: Arc<Mutex<Vec<String>>>,
    /// This many next requests are answered `503 Service Unavailable`.
    pub fail_next: Arc<AtomicUsize>,
}

pub fn serve(routes: HashMap<String, String>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let auth = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (requests.clone(), auth.clone());
    let fail_next = Arc::new(AtomicUsize::new(0));
    let failing = fail_next.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.to_ascii_lowercase().starts_with("authorization: ") {
                    seen.lock()
                        .unwrap()
                        .push(header["authorization: ".len()..].trim().to_owned());
                }
                if header.trim().is_empty() {
                    break;
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            let fail = failing
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let (status, body) = match routes.get(&path) {
                _ if fail => (
                    "503 Service Unavailable",
                    r#"{"error_code":50003,"message":"busy"}"#.to_owned(),
                ),
                Some(body) => ("200 OK", body.clone()),
                None => (
                    "404 Not Found",
                    r#"{"error_code":40403,"message":"Schema not found"}"#.to_owned(),
                ),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Server {
        url,
        requests,
        auth,
        fail_next,
    }
}

/// A Kafka broker of a test's own (scripts/kafka-broker), for tests that
/// kill it: the shared one stays up for the tests running beside them.
pub struct Broker {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker on two free ports in a row (broker, controller)
    /// with its data in `dir`.
    pub fn start(dir: &std::path::Path) -> Broker {
        let port = loop {
            let p = free_port();
            if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        Broker::start_at(port, dir)
    }

    fn start_at(port: u16, dir: &std::path::Path) -> Broker {
        let log = std::fs::File::create(dir.join("broker.log")).unwrap();
        let child = Command::new(repo().join("scripts/kafka-broker"))
            .arg(port.to_string())
            .arg(dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start a broker");
        let broker = Broker {
            port,
            dir: dir.to_owned(),
            child: Some(child),
        };
        let address = broker.address();
        wait_until("the broker to answer", Duration::from_secs(90), || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &address)
                .create()
                .unwrap();
            consumer
                .fetch_metadata(None, Duration::from_secs(2))
                .is_ok_and(|m| !m.brokers().is_empty())
        });
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Broker {
    /// SIGKILL (if running), then the same broker again on its data.
    pub fn restart(&mut self) {
        self.kill();
        let (port, dir) = (self.port, self.dir.clone());
        *self = Broker::start_at(port, &dir);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A producer to the shared broker.
pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap()
}

pub type Headers<'a> = Vec<(&'a str, &'a [u8])>;

fn kafka_headers(headers: &[(&str, &[u8])]) -> OwnedHeaders {
    headers
        .iter()
        .fold(OwnedHeaders::new(), |owned, (key, value)| {
            owned.insert(Header {
                key,
                value: Some(*value),
            })
        })
}

/// Produces one record to partition 0 of `topic`.
pub async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    payload: &[u8],
    headers: &[(&str, &[u8])],
) {
    let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic)
        .partition(0)
        .payload(payload)
        .headers(kafka_headers(headers));
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap();
}

/// Produces a tombstone (a record whose value is null) with `key` and
/// `headers` to partition 0 of `topic`.
pub async fn send_tombstone(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    headers: &[(&str, &[u8])],
) {
    let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
        .partition(0)
        .key(key)
        .headers(kafka_headers(headers));
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap();
}

/// The reference event `seq` with its delivery address padded with barely
/// compressible text to about `size` bytes.
pub fn padded_event(sample: &OrderSample, seq: u64, size: usize) -> Vec<u8> {
    let mut bytes = sample.encode(seq);
    let pad = size.saturating_sub(bytes.len() + 5);
    let mut text = String::with_capacity(pad);
    let mut r = seq.wrapping_add(1);
    while text.len() < pad {
        // xorshift: cheap and good enough to defeat compression.
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        for b in r.to_le_bytes() {
            text.push(char::from(b'a' + b % 26));
        }
    }
    text.truncate(pad);
    prost::encoding::string::encode(23, &text, &mut bytes);
    bytes
}

/// Produces padded reference events `seqs` to partition 0 of `topic`, with
/// their CloudEvents headers.
pub async fn produce_padded(
    topic: &str,
    sample: &OrderSample,
    seqs: std::ops::Range<u64>,
    size: usize,
) -> Vec<Produced> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("message.max.bytes", (4 << 20).to_string())
        .set("linger.ms", "10")
        .create()
        .unwrap();
    let mut produced = Vec::new();
    let all: Vec<u64> = seqs.collect();
    for chunk in all.chunks(100) {
        let mut pending = Vec::new();
        for &seq in chunk {
            let value = padded_event(sample, seq, size);
            let headers = owned_headers(sample, seq);
            let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic)
                .partition(0)
                .payload(value.as_slice())
                .headers(headers);
            let delivery = producer.send_result(record).map_err(|(e, _)| e).unwrap();
            pending.push((seq, delivery));
        }
        for (seq, delivery) in pending {
            let delivered = delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
            produced.push(Produced {
                seq,
                partition: delivered.partition,
                offset: delivered.offset,
            });
        }
    }
    produced
}

/// Peak resident memory of process `pid` (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// CPU time (utime + stime, in clock ticks) of each thread of process
/// `pid`, by thread name.
pub fn thread_cpu_ticks(pid: u32) -> BTreeMap<String, u64> {
    let mut ticks = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // Fields after the parenthesised name: state is the first, utime
        // and stime the 12th and 13th.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<u64> = after
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        *ticks.entry(name.trim().to_owned()).or_default() += fields.iter().sum::<u64>();
    }
    ticks
}

/// GETs `url`: the status (0 when nothing answers) and the body.
pub fn http_get(url: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The sum of every series of metric `name` whose labels contain all of
/// `labels` (`key="value"` strings).
pub fn metric(metrics: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    metrics
        .iter()
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{")))
                && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| *v)
        .sum()
}

/// The CloudEvents headers of the reference event `seq`, as Kafka headers.
pub fn owned_headers(sample: &OrderSample, seq: u64) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    for (key, value) in sample.headers(seq) {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    headers
}
