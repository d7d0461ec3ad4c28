//! Shared test plumbing: the stack's addresses, unique names, a sluice
//! process under test, and reading results back with pyarrow.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

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

pub async fn create_queue(name: &str) -> String {
    let out = aws_sdk_sqs::Client::new(&sdk().await)
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create queue on moto");
    out.queue_url().unwrap().to_owned()
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
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
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

pub struct SinkSpec<'a> {
    pub topic: &'a str,
    pub storage_url: &'a str,
    pub queue_url: Option<&'a str>,
    pub interval: &'a str,
}

impl Sink {
    pub fn new(spec: SinkSpec<'_>) -> Sink {
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

    pub fn log_path(&self, run: usize) -> PathBuf {
        self.dir.path().join(format!("sluice-{run}.log"))
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.runs += 1;
        let log = std::fs::File::create(self.log_path(self.runs)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("SLUICE_LOG", "info,sluice=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice");
        self.child = Some(child);
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("not running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "sluice did not stop within 60s of SIGTERM; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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
                    "offsets {:?} not committed (have {:?}); sluice log:\n{}",
                    ends,
                    committed(&group, &topic, partitions),
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

/// What pyarrow finds under `url`, and the messages drained from `queue`.
pub fn read_back(url: &str, queue: Option<&str>) -> Value {
    let mut command = Command::new(python());
    command
        .arg(repo().join("tests/py/read_back.py"))
        .arg(url)
        .arg("--rows");
    if let Some(q) = queue {
        command.args(["--queue", q]);
    }
    let output = command.output().expect("run read_back.py");
    assert!(
        output.status.success(),
        "read_back.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("read_back.py prints JSON")
}

pub fn schemas_dir() -> PathBuf {
    repo().join("schemas")
}
