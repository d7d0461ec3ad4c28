//! Against a real Confluent-compatible registry: Apicurio Registry, which
//! `scripts/dev-up` runs with basic auth on. Schemas are registered through
//! its Confluent API as Confluent's serializers register them (references
//! under their import paths, serialized descriptors) and read back by
//! sluice's client.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::framing::confluent_header;
use sluice::sample::{self, Produced};
use sluice::schema::ConfluentRegistry;

use crate::registry::{MONEY, ORDERS, serialized};
use crate::support::{self, Sink, SinkSpec, check_rows, reference_sample};
use crate::tcp_gate::TcpGate;

fn url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".into())
}

fn credentials() -> (String, String) {
    (
        std::env::var("SCHEMA_REGISTRY_USER").unwrap_or_else(|_| "sluice".into()),
        std::env::var("SCHEMA_REGISTRY_PASSWORD").unwrap_or_else(|_| "registry-secret".into()),
    )
}

/// `host:port` of the registry.
fn registry_host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let url = url();
        url.trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_owned()
    })
}

/// `url()` with the credentials in it, as a sink's `schema.registry` gives them.
fn url_with(user: &str, password: &str) -> String {
    url().replacen("http://", &format!("http://{user}:{password}@"), 1)
}

/// Registers the Protobuf `schema` under `subject` (percent-encoded, as
/// clients send it); the registry's answer (`{"id": …}`).
fn register(subject: &str, schema: &str, references: Value) -> Value {
    register_as("PROTOBUF", subject, schema, references)
}

fn register_as(kind: &str, subject: &str, schema: &str, references: Value) -> Value {
    let body = json!({"schemaType": kind, "schema": schema, "references": references});
    write_registry(
        "POST",
        &format!("/subjects/{}/versions", encoded(subject)),
        &body,
    )
}

fn encoded(subject: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(subject, percent_encoding::NON_ALPHANUMERIC)
}

/// Sends `body` to the registry's Confluent API at `path` with `method`,
/// as an administrator would with curl; its JSON answer.
fn write_registry(method: &str, path: &str, body: &Value) -> Value {
    let (user, password) = credentials();
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-f",
            "-u",
            &format!("{user}:{password}"),
            "-X",
            method,
        ])
        .args(["-H", "Content-Type: application/vnd.schemaregistry.v1+json"])
        .args(["--data", &body.to_string()])
        .arg(format!("{}{path}", url()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{method} {path}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_by_import_path_and_serialized_schemas_from_apicurio() {
    let encoded = serialized(&[
        ("acme/common/v1/money.proto", MONEY),
        ("acme/orders/v1/orders.proto", ORDERS),
    ]);
    // The imported file under its import path, a test's own (the registry
    // outlives the test).
    let import = format!("{}/acme/common/v1/money.proto", support::unique("apicurio"));
    register(&import, &encoded["acme/common/v1/money.proto"], json!([]));
    let subject = format!("{}-value", support::unique("orders"));
    let references =
        json!([{"name": "acme/common/v1/money.proto", "subject": import, "version": 1}]);
    let id = register(
        &subject,
        &encoded["acme/orders/v1/orders.proto"],
        references,
    )["id"]
        .as_u64()
        .unwrap() as u32;

    let (user, password) = credentials();
    let registry = ConfluentRegistry::new(&url_with(&user, &password));
    let (latest, pool) = registry.latest(&subject).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(latest, id);
    let placed = pool.get_message_by_name("acme.orders.v1.Placed").unwrap();
    assert_eq!(
        placed
            .get_field_by_name("total")
            .unwrap()
            .kind()
            .as_message()
            .unwrap()
            .full_name(),
        "acme.common.v1.Money"
    );
    assert!(registry.schema(id).is_ok(), "by id too");

    let wrong = ConfluentRegistry::new(&url_with(&user, "not-the-password"));
    let error = wrong.latest(&subject).unwrap_err().to_string();
    assert!(
        error.contains("refused the request") && error.contains("HTTP 401"),
        "{error}"
    );
    assert!(!error.contains("not-the-password"), "{error}");

    // `sluice check` resolves the sink's subject, references and message.
    sample::ensure_topic(&support::brokers(), "orders.order_placed", 4)
        .await
        .unwrap();
    let sink = Sink::new(SinkSpec {
        topic: "orders.order_placed",
        storage_url: "file:///tmp/sluice-check-apicurio",
        queue_url: None,
        interval: "10s",
    });
    let registry_url = url_with(&user, &password);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&sink.config)
        .env("SLUICE_SCHEMA__REGISTRY", &registry_url)
        .env("SLUICE_SCHEMA__SUBJECT", &subject)
        .env("SLUICE_EVENT__MESSAGE", "acme.orders.v1.Placed")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "ok    schema  acme.orders.v1.Placed (registry schema id {id})"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("total: Struct"),
        "the referenced message is a column: {stdout}"
    );
    assert!(!stdout.contains(&password), "{stdout}");
}

#[test]
fn latest_or_pinned_version_unknown_ids_and_other_schema_types() {
    let subject = format!("{}-value", support::unique("versions"));
    let v1 = "syntax = \"proto3\"; package shop; message Order { string id = 1; }";
    let v2 = "syntax = \"proto3\"; package shop; message Order { string id = 1; int64 cents = 2; }";
    let id = |answer: Value| answer["id"].as_u64().unwrap() as u32;
    let (id1, id2) = (
        id(register(&subject, v1, json!([]))),
        id(register(&subject, v2, json!([]))),
    );
    let (user, password) = credentials();
    let registry = ConfluentRegistry::new(&url_with(&user, &password));
    let (latest, pool) = registry.latest(&subject).unwrap();
    assert_eq!(latest, id2);
    let order = pool.get_message_by_name("shop.Order").unwrap();
    assert!(order.get_field_by_name("cents").is_some());
    // A pinned version (`schema.version`).
    assert_eq!(registry.subject_version(&subject, Some(1)).unwrap().0, id1);

    let missing = registry.schema(UNKNOWN_ID).unwrap_err().to_string();
    assert!(
        missing.contains(&format!("/schemas/ids/{UNKNOWN_ID} not found")),
        "{missing}"
    );
    let avro = id(register_as(
        "AVRO",
        &format!("{}-value", support::unique("avro")),
        r#"{"type": "record", "name": "Order", "fields": [{"name": "id", "type": "string"}]}"#,
        json!([]),
    ));
    let e = registry.schema(avro).unwrap_err().to_string();
    assert!(
        e.contains(&format!("schema {avro}")) && e.contains("AVRO, not PROTOBUF"),
        "{e}"
    );
}

/// A sink of `topic` writing under the directory `dir`; its storage URL.
fn file_sink(topic: &str, dir: &std::path::Path, interval: &str) -> (Sink, String) {
    let storage = format!("file://{}", dir.display());
    let sink = Sink::new(SinkSpec {
        topic,
        storage_url: &storage,
        queue_url: None,
        interval,
    });
    (sink, storage)
}

/// Sets `subject`'s compatibility level, as an operator would to register
/// a breaking version.
fn set_compatibility(subject: &str, level: &str) {
    let body = json!({ "compatibility": level });
    write_registry("PUT", &format!("/config/{}", encoded(subject)), &body);
}

/// `files` (name → `.proto` text) compiled into a serialized
/// `FileDescriptorSet`, imports first, in a file `confluent_produce.py` reads.
fn descriptors(dir: &std::path::Path, label: &str, files: &[(&str, &str)]) -> String {
    use prost::Message as _;
    let sources = dir.join(format!("{label}-src"));
    for (name, text) in files {
        let path = sources.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    let set = protox::compile(&names, [&sources]).unwrap();
    let path = dir.join(format!("{label}.pb"));
    std::fs::write(&path, set.encode_to_vec()).unwrap();
    path.display().to_string()
}

/// Where Confluent's serializer put a record, and the schema id it wrote.
#[derive(Debug, Clone, serde::Deserialize)]
struct Written {
    partition: Option<i32>,
    offset: Option<i64>,
    schema_id: u32,
    value_hex: String,
}

/// Runs `tests/py/confluent_produce.py` with `spec` (see there), against
/// the local broker and registry.
fn confluent_produce(mut spec: Value) -> Vec<Written> {
    let (user, password) = credentials();
    spec["brokers"] = support::brokers().into();
    spec["registry"] = json!({"url": url(), "user": user, "password": password});
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), spec.to_string()).unwrap();
    serde_json::from_value(support::python_json("confluent_produce.py", &[file.path()])).unwrap()
}

/// A `Placed` record `i` as protobuf JSON, with its CloudEvents headers;
/// `coupon` is a string (v2), a number (v3) or absent (v1).
fn placed(schema: usize, i: i64, partition: i32, coupon: Option<Value>) -> Value {
    let mut value =
        json!({"orderId": format!("o-{i}"), "total": {"currency": "EUR", "cents": i * 100}});
    if let Some(coupon) = coupon {
        value["coupon"] = coupon;
    }
    json!({
        "schema": schema,
        "partition": partition,
        "value": value,
        "headers": {
            "ce_id": format!("o-{i}"),
            "ce_source": "/shop/checkout",
            "ce_type": "acme.orders.v1.Placed",
            "ce_specversion": "1.0",
            "ce_time": "2026-11-27T10:00:00Z",
        },
    })
}

/// `orders.proto` with `Placed` given a field 3 `coupon` of `kind`.
fn orders_with_coupon(kind: &str) -> String {
    let with = ORDERS.replace(
        "acme.common.v1.Money total = 2; }",
        &format!("acme.common.v1.Money total = 2; {kind} coupon = 3; }}"),
    );
    assert_ne!(with, ORDERS);
    with
}

/// Every data row under the file:// storage `dir`, read with pyarrow:
/// (partition, offset) → row.
fn rows_by_position(dir: &std::path::Path) -> HashMap<(i64, i64), Value> {
    let read = support::python_json("rows.py", &[dir]);
    let mut rows = HashMap::new();
    for row in read["rows"].as_array().unwrap() {
        let at = (
            row["_kafka_partition"].as_i64().unwrap(),
            row["_kafka_offset"].as_i64().unwrap(),
        );
        assert!(rows.insert(at, row.clone()).is_none(), "{at:?} twice");
    }
    rows
}

/// Records written by Confluent's own Protobuf serializer (auto-register,
/// an imported file registered under its import path, the sink's message
/// third in its file), subject by TopicNameStrategy, through the whole
/// pipeline: every one lands exactly once; a compatible v2 registered while
/// sluice runs rolls the files once; an incompatible v3 (registered with the
/// subject set to NONE) and a record of another message of the same file
/// are dead letters with their reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_serializer_records_land_exactly_once_through_evolution() {
    let topic = support::unique("confluent");
    sample::ensure_topic(&support::brokers(), &topic, 2)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let money = ("acme/common/v1/money.proto", MONEY);
    let v1 = descriptors(
        work.path(),
        "v1",
        &[money, ("acme/orders/v1/orders.proto", ORDERS)],
    );
    let (v2_text, v3_text) = (orders_with_coupon("string"), orders_with_coupon("int64"));
    let v2 = descriptors(
        work.path(),
        "v2",
        &[money, ("acme/orders/v1/orders.proto", &v2_text)],
    );
    let v3 = descriptors(
        work.path(),
        "v3",
        &[money, ("acme/orders/v1/orders.proto", &v3_text)],
    );
    let schemas = json!([
        {"descriptors": v1, "message": "acme.orders.v1.Placed"},
        {"descriptors": v1, "message": "acme.orders.v1.LineItem"},
        {"descriptors": v2, "message": "acme.orders.v1.Placed"},
        {"descriptors": v3, "message": "acme.orders.v1.Placed"},
    ]);
    // What each record is: its position → (order number, coupon column
    // value), or the reason it must be a dead letter.
    let mut expected_rows = HashMap::new();
    let mut expected_dead = HashMap::new();
    type At = (i64, i64);
    fn note(
        written: &[Written],
        records: &[Value],
        rows: &mut HashMap<At, Value>,
        dead: &mut HashMap<At, String>,
    ) {
        for (w, r) in written.iter().zip(records) {
            let at = (i64::from(w.partition.unwrap()), w.offset.unwrap());
            let reason = match r["schema"].as_u64().unwrap() {
                1 => "acme.orders.v1.LineItem",
                3 => "field 3 (`coupon`) was string, is now int64",
                _ => {
                    rows.insert(at, r["value"].clone());
                    continue;
                }
            };
            dead.insert(at, reason.to_owned());
        }
    }

    // v1 before sluice starts, and one LineItem: the same file, so the same
    // schema id; only its message index ([1], Placed is [2]) tells.
    let mut records: Vec<Value> = (0..200)
        .map(|i| placed(0, i, (i % 2) as i32, None))
        .collect();
    records.push(json!({"schema": 1, "partition": 0,
        "value": {"sku": "LINEITEM-NOT-AN-ORDER", "quantity": 7}}));
    let written =
        confluent_produce(json!({"topic": topic, "schemas": schemas, "records": records}));
    assert_eq!(written[0].schema_id, written[200].schema_id, "{written:?}");
    assert_eq!(&written[0].value_hex[10..14], "0204", "index path [2]");
    note(&written, &records, &mut expected_rows, &mut expected_dead);

    let storage_dir = work.path().join("storage");
    let (mut sink, storage) = file_sink(&topic, &storage_dir, "2s");
    let (user, password) = credentials();
    let registry = url_with(&user, &password);
    let env = [
        ("SLUICE_SCHEMA__REGISTRY", registry.as_str()),
        ("SLUICE_EVENT__MESSAGE", "acme.orders.v1.Placed"),
    ];
    sink.start_with_env(&env);
    let ends = |rows: &HashMap<(i64, i64), Value>, dead: &HashMap<(i64, i64), String>| {
        let mut ends = vec![0i64; 2];
        for &(p, o) in rows.keys().chain(dead.keys()) {
            ends[p as usize] = ends[p as usize].max(o + 1);
        }
        ends
    };
    sink.wait_committed(
        &ends(&expected_rows, &expected_dead),
        Duration::from_secs(90),
    );

    // v2 (adds `coupon`), registered by the serializer while sluice runs,
    // interleaved with v1.
    let records: Vec<Value> = (200..300)
        .map(|i| match i % 2 {
            0 => placed(2, i, 0, Some(json!(format!("c{i}")))),
            _ => placed(0, i, 1, None),
        })
        .collect();
    let written =
        confluent_produce(json!({"topic": topic, "schemas": schemas, "records": records}));
    assert!(written[0].schema_id > written[1].schema_id, "{written:?}");
    note(&written, &records, &mut expected_rows, &mut expected_dead);
    sink.wait_committed(
        &ends(&expected_rows, &expected_dead),
        Duration::from_secs(90),
    );

    // v3 turns `coupon` into a number: BACKWARD refuses it, so the subject
    // is set to NONE first, as an operator would.
    set_compatibility(&format!("{topic}-value"), "NONE");
    let records: Vec<Value> = (300..360)
        .map(|i| match i % 3 {
            0 => placed(3, i, (i % 2) as i32, Some(json!(i))),
            1 => placed(2, i, (i % 2) as i32, Some(json!(format!("c{i}")))),
            _ => placed(0, i, (i % 2) as i32, None),
        })
        .collect();
    let written =
        confluent_produce(json!({"topic": topic, "schemas": schemas, "records": records}));
    note(&written, &records, &mut expected_rows, &mut expected_dead);
    sink.wait_committed(
        &ends(&expected_rows, &expected_dead),
        Duration::from_secs(90),
    );
    assert!(sink.stop().success(), "{}", sink.logs());
    let logs = sink.logs();
    assert!(logs.contains("newer schema version"), "{logs}");
    assert!(logs.contains("schema version refused"), "{logs}");

    // Read with pyarrow: every Placed exactly once, field by field.
    let rows = rows_by_position(&storage_dir);
    assert_eq!(rows.len(), expected_rows.len());
    for (at, value) in &expected_rows {
        let row = rows.get(at).unwrap_or_else(|| panic!("no row at {at:?}"));
        assert_eq!(row["order_id"], value["orderId"], "{row}");
        assert_eq!(
            row["total"]["cents"].as_i64(),
            value["total"]["cents"].as_i64(),
            "{row}"
        );
        assert_eq!(row["total"]["currency"], "EUR", "{row}");
        if let Some(coupon) = value.get("coupon") {
            assert_eq!(&row["coupon"], coupon, "{row}");
        }
    }
    let read = support::read_back_committed(&storage, None);
    // Each partition's data files switch from v1 to v2 once, never back
    // (partitions roll on their own: they may sit on different workers).
    let mut files: Vec<(String, i64, String)> = read["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| {
            let m = &f["metadata"];
            let id = m.get("sluice.schema_id")?.as_str()?.to_owned();
            let first = m["sluice.first_offset"].as_str()?.parse().ok()?;
            Some((m["sluice.partition"].as_str()?.to_owned(), first, id))
        })
        .collect();
    files.sort();
    for partition in ["0", "1"] {
        let ids: Vec<&str> = files
            .iter()
            .filter(|f| f.0 == partition)
            .map(|f| f.2.as_str())
            .collect();
        let mut switches = ids.windows(2).filter(|w| w[0] != w[1]);
        let switch = switches.next();
        assert!(
            switch.is_some_and(|w| w[0].parse::<u32>().unwrap() < w[1].parse().unwrap()),
            "{partition}: {ids:?}"
        );
        assert!(
            switches.next().is_none(),
            "one roll on {partition}: {ids:?}"
        );
    }
    let letters = read["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), expected_dead.len(), "{letters:?}");
    for letter in letters {
        let at = (letter[0].as_i64().unwrap(), letter[1].as_i64().unwrap());
        let reason = letter[3].as_str().unwrap();
        assert!(reason.contains(&expected_dead[&at]), "{at:?}: {reason}");
    }
}

/// RecordNameStrategy (the subject is the message's full name, here of a
/// package of this test's own), the registry taken away mid-stream and given
/// back, and wrong credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_name_strategy_and_a_registry_outage() {
    let topic = support::unique("recordname");
    sample::ensure_topic(&support::brokers(), &topic, 1)
        .await
        .unwrap();
    let package = format!("acme.orders.{}", topic.replace('-', "_"));
    let file = format!("{}/orders.proto", package.replace('.', "/"));
    let own = |text: &str| text.replace("package acme.orders.v1;", &format!("package {package};"));
    let work = tempfile::tempdir().unwrap();
    let money = ("acme/common/v1/money.proto", MONEY);
    let v1 = descriptors(work.path(), "v1", &[money, (&file, &own(ORDERS))]);
    let v2 = descriptors(
        work.path(),
        "v2",
        &[money, (&file, &own(&orders_with_coupon("string")))],
    );
    let message = format!("{package}.Placed");
    let schemas = json!([
        {"descriptors": v1, "message": message},
        {"descriptors": v2, "message": message},
    ]);
    let records: Vec<Value> = (0..50).map(|i| placed(0, i, 0, None)).collect();
    let spec = |records: &[Value], produce: bool| {
        json!({"topic": topic, "strategy": "record", "schemas": schemas,
               "records": records, "produce": produce})
    };
    confluent_produce(spec(&records, true));

    let storage_dir = work.path().join("storage");
    let (mut sink, storage) = file_sink(&topic, &storage_dir, "1s");
    let (user, password) = credentials();

    // Wrong credentials: `run` stops at start-up with the registry's answer,
    // never the password.
    let wrong = url_with(&user, "not-the-password");
    sink.start_with_env(&[
        ("SLUICE_SCHEMA__REGISTRY", wrong.as_str()),
        ("SLUICE_SCHEMA__SUBJECT_STRATEGY", "RecordNameStrategy"),
        ("SLUICE_EVENT__MESSAGE", &message),
    ]);
    assert!(!sink.wait_exit(Duration::from_secs(60)).success());
    let logs = sink.logs();
    assert!(
        logs.contains("refused the request")
            && logs.contains("HTTP 401")
            && logs.contains(&message),
        "{logs}"
    );
    assert!(!logs.contains("not-the-password"), "{logs}");

    // Through a gate that can take the registry away from this sluice only.
    let gate = TcpGate::start(registry_host());
    let through_gate = url_with(&user, &password).replacen(registry_host(), &gate.addr, 1);
    sink.start_with_env(&[
        ("SLUICE_SCHEMA__REGISTRY", through_gate.as_str()),
        ("SLUICE_SCHEMA__SUBJECT_STRATEGY", "RecordNameStrategy"),
        ("SLUICE_EVENT__MESSAGE", &message),
    ]);
    sink.wait_committed(&[50], Duration::from_secs(90));

    // v2 is registered now, but no record of it has reached sluice.
    let later: Vec<Value> = (50..80)
        .map(|i| match i % 3 {
            0 => placed(1, i, 0, Some(json!(format!("c{i}")))),
            _ => placed(0, i, 0, None),
        })
        .collect();
    let values = confluent_produce(spec(&later, false));
    let producer = support::producer();
    let send = |range: std::ops::Range<usize>| {
        let (producer, topic, values, later) = (
            producer.clone(),
            topic.clone(),
            values.clone(),
            later.clone(),
        );
        async move {
            for i in range {
                let hex = &values[i].value_hex;
                let value: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap())
                    .collect();
                let headers: Vec<(String, String)> = later[i]["headers"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                let headers: Vec<(&str, &[u8])> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_bytes()))
                    .collect();
                support::send_raw(&producer, &topic, &value, &headers).await;
            }
        }
    };
    // Registry down: v1 (cached) keeps landing; v2 (never seen) cannot be
    // checked and is a dead letter.
    gate.set_open(false);
    send(0..15).await;
    sink.wait_committed(&[65], Duration::from_secs(120));
    assert!(sink.is_running(), "a registry outage must not stop sluice");
    // Back: records of the new id land.
    gate.set_open(true);
    send(15..30).await;
    sink.wait_committed(&[80], Duration::from_secs(90));
    assert!(sink.stop().success(), "{}", sink.logs());

    // Record 51 is v2, record 50 v1.
    assert_eq!(later[1]["schema"], 1);
    assert!(values[1].schema_id > values[0].schema_id, "{values:?}");
    let rows = rows_by_position(&storage_dir);
    let read = support::read_back_committed(&storage, None);
    let letters: HashMap<i64, String> = read["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l[1].as_i64().unwrap(), l[3].as_str().unwrap().to_owned()))
        .collect();
    for (i, record) in later.iter().enumerate() {
        let offset = 50 + i as i64;
        let is_v2 = record["schema"] == 1;
        if is_v2 && i < 15 {
            let reason = letters
                .get(&offset)
                .unwrap_or_else(|| panic!("{offset}: {rows:?}"));
            assert!(reason.contains("unreachable"), "{offset}: {reason}");
            assert!(!rows.contains_key(&(0, offset)));
        } else {
            let row = rows
                .get(&(0, offset))
                .unwrap_or_else(|| panic!("no row at {offset}"));
            assert_eq!(row["order_id"], record["value"]["orderId"], "{row}");
            if is_v2 {
                assert_eq!(row["coupon"], record["value"]["coupon"], "{row}");
            }
        }
    }
    assert_eq!(rows.len() + letters.len(), 80);
    assert_eq!(letters.len(), 5, "{letters:?}");
}
/// Ids no registry of a test run reaches.
const UNKNOWN_ID: u32 = 999_999_901;
const NEVER_SEEN_ID: u32 = 999_999_902;

/// The sink's schema from the registry, registered as `.proto` text; values
/// in the Confluent wire format. The registry goes away mid-stream (a gate
/// in front of it closes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_format_records_decode_and_bad_framing_becomes_dead_letters() {
    let topic = support::unique("orders");
    let proto =
        std::fs::read_to_string(support::schemas_dir().join("sluice/examples/order_placed.proto"))
            .unwrap();
    let id = register(&format!("{topic}-value"), &proto, json!([]))["id"]
        .as_u64()
        .unwrap() as u32;
    let gate = TcpGate::start(registry_host());
    let (user, password) = credentials();
    let through_gate = url_with(&user, &password).replacen(registry_host(), &gate.addr, 1);
    sample::ensure_topic(&support::brokers(), &topic, 1)
        .await
        .unwrap();
    let sample = reference_sample();
    let producer = support::producer();
    let send = |value: Vec<u8>, seq: u64| {
        let (producer, topic, headers) = (producer.clone(), topic.clone(), sample.headers(seq));
        async move {
            let headers: Vec<(&str, &[u8])> =
                headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
            support::send_raw(&producer, &topic, &value, &headers).await;
        }
    };
    // Event `seq` in the wire format under schema `id`.
    let framed =
        |id: u32, seq: u64| [confluent_header(id).as_slice(), &sample.encode(seq)].concat();
    let mut good = Vec::new();
    for seq in 0..20u64 {
        send(framed(id, seq), seq).await;
        good.push(Produced {
            seq,
            partition: 0,
            offset: seq as i64,
        });
    }
    send(sample.encode(20), 20).await; // plain Protobuf: no magic byte
    send(framed(UNKNOWN_ID, 21), 21).await;

    let dir = tempfile::tempdir().unwrap();
    let (mut sink, storage) = file_sink(&topic, dir.path(), "1s");
    sink.start_with_env(&[("SLUICE_SCHEMA__REGISTRY", &through_gate)]);
    sink.wait_committed(&[22], Duration::from_secs(60));
    // The registry goes down mid-stream: records of the cached id keep
    // landing; a never-seen id cannot be checked and is a dead letter.
    gate.set_open(false);
    for seq in 22..32u64 {
        send(framed(id, seq), seq).await;
        good.push(Produced {
            seq,
            partition: 0,
            offset: seq as i64,
        });
    }
    send(framed(NEVER_SEEN_ID, 32), 32).await;
    sink.wait_committed(&[33], Duration::from_secs(120));
    assert!(sink.is_running(), "a registry outage must not stop sluice");
    assert!(sink.stop().success(), "{}", sink.logs());
    assert!(
        sink.logs().contains("schema from the registry"),
        "{}",
        sink.logs()
    );

    let read = support::read_back_committed(&storage, None);
    let counts = check_rows(&read, &good, &sample);
    assert_eq!(counts.len(), good.len());
    let letters = read["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 3, "{letters:?}");
    let reason = |offset: i64| {
        letters
            .iter()
            .find(|r| r[1] == offset)
            .map(|r| r[3].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert!(
        reason(20).contains("not in the Confluent wire format"),
        "{}",
        reason(20)
    );
    assert!(
        reason(21).contains(&format!("schema id {UNKNOWN_ID}")) && reason(21).contains("not found"),
        "{}",
        reason(21)
    );
    assert!(
        reason(32).contains(&format!("schema id {NEVER_SEEN_ID}"))
            && reason(32).contains("unreachable"),
        "{}",
        reason(32)
    );
}

/// Schema evolution through the whole pipeline: the sink starts on v1 (the
/// latest version of its subject); v2 adds a field, v3 changes that field's
/// type. v2 and v3 are registered under subjects of their own (the registry
/// would refuse v3 beside v2), so v1 stays the latest of the sink's subject.
/// v1 and v2 records interleave in one partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_versions_roll_files_once_and_incompatible_versions_become_dead_letters() {
    let topic = support::unique("evolving");
    let v1 =
        std::fs::read_to_string(support::schemas_dir().join("sluice/examples/order_placed.proto"))
            .unwrap();
    let with_coupon = |field: &str| {
        v1.replace(
            "  string delivery_address = 23;\n",
            &format!("  string delivery_address = 23;\n  {field} coupon = 100;\n"),
        )
    };
    let (v2, v3) = (with_coupon("string"), with_coupon("int64"));
    assert_ne!(v2, v1);
    let id_of = |subject: String, text: &str| {
        register(&subject, text, json!([]))["id"].as_u64().unwrap() as u32
    };
    let ids = [
        id_of(format!("{topic}-value"), &v1),
        id_of(format!("{topic}-v2"), &v2),
        id_of(format!("{topic}-v3"), &v3),
    ];
    assert!(ids[0] < ids[1] && ids[1] < ids[2], "{ids:?}");
    let version = |id: u32| ids.iter().position(|&i| i == id).unwrap() + 1;
    sample::ensure_topic(&support::brokers(), &topic, 1)
        .await
        .unwrap();
    let sample = reference_sample();
    let producer = support::producer();
    // Event `seq` as version `id`: v2 and v3 append field 100 to the v1
    // bytes (Protobuf fields concatenate).
    let event = |id: u32, seq: u64| {
        let mut bytes = sample.encode(seq);
        match version(id) {
            2 => prost::encoding::string::encode(100, &format!("c{seq}"), &mut bytes),
            3 => prost::encoding::int64::encode(100, &(seq as i64), &mut bytes),
            _ => {}
        }
        bytes
    };
    let mut good = Vec::new();
    // What the coupon column must hold per offset: None before the roll
    // (no such column), "" for v1 rows after it, the value for v2 rows.
    let mut coupons = Vec::new();
    let mut dead = Vec::new();
    let mut offset = 0i64;
    let mut rolled = false;
    for seq in 0..60u64 {
        let id = ids[match seq {
            0..10 => 0,
            10..40 => [1, 0][seq as usize % 2],
            _ => [2, 1, 0][seq as usize % 3],
        }];
        let mut headers: Vec<(String, String)> = sample
            .headers(seq)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        // Every fifth record is a plain payload naming its schema in
        // ce_dataschema instead of the wire format.
        let value = if seq % 5 == 4 {
            headers.push((
                "ce_dataschema".into(),
                format!("{}/schemas/ids/{id}", url()),
            ));
            event(id, seq)
        } else {
            [confluent_header(id).as_slice(), &event(id, seq)].concat()
        };
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect();
        support::send_raw(&producer, &topic, &value, &headers).await;
        if version(id) == 3 {
            dead.push(offset);
        } else {
            rolled |= version(id) == 2;
            good.push(Produced {
                seq,
                partition: 0,
                offset,
            });
            coupons.push(match (rolled, version(id)) {
                (false, _) => serde_json::Value::Null,
                (true, 1) => "".into(),
                _ => format!("c{seq}").into(),
            });
        }
        offset += 1;
    }
    // A plain payload whose ce_dataschema is not a schema id.
    let headers = sample.headers(60);
    let mut headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    headers.push(("ce_dataschema", b"https://example.com/order.proto"));
    support::send_raw(&producer, &topic, &event(ids[0], 60), &headers).await;
    dead.push(offset);

    let dir = tempfile::tempdir().unwrap();
    let (mut sink, storage) = file_sink(&topic, dir.path(), "2s");
    let (user, password) = credentials();
    sink.start_with_env(&[("SLUICE_SCHEMA__REGISTRY", &url_with(&user, &password))]);
    sink.wait_committed(&[offset + 1], Duration::from_secs(60));
    assert!(sink.stop().success(), "{}", sink.logs());
    let logs = sink.logs();
    assert_eq!(
        logs.matches("newer schema version").count(),
        1,
        "one roll, for v2: {logs}"
    );
    assert_eq!(
        logs.matches("schema version refused").count(),
        1,
        "v3 is refused once, then known: {logs}"
    );

    let read = support::read_back_with(&storage, None, &["--committed", "--extra", "coupon"]);
    let counts = check_rows(&read, &good, &sample);
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    assert_eq!(counts.len(), good.len());
    let coupon_at: HashMap<i64, serde_json::Value> = read["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[1].as_i64().unwrap(), r[12].clone()))
        .collect();
    for (p, coupon) in good.iter().zip(&coupons) {
        assert_eq!(
            &coupon_at[&p.offset], coupon,
            "coupon at offset {}",
            p.offset
        );
    }

    // Data files in offset order: schema 1 up to the first v2 record, then
    // schema 2 — one switch, never back.
    let mut files: Vec<(i64, i64, String)> = read["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["metadata"].get("sluice.schema_id").is_some())
        .map(|f| {
            let m = &f["metadata"];
            let offset = |k: &str| m[k].as_str().unwrap().parse::<i64>().unwrap();
            (
                offset("sluice.first_offset"),
                offset("sluice.last_offset"),
                m["sluice.schema_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    files.sort();
    let (id1, id2) = (ids[0].to_string(), ids[1].to_string());
    let switch = files.iter().position(|f| f.2 == id2).unwrap();
    assert!(files[..switch].iter().all(|f| f.2 == id1), "{files:?}");
    assert!(files[switch..].iter().all(|f| f.2 == id2), "{files:?}");
    assert_eq!(
        files[switch].0, 10,
        "the roll happens at the first v2 record"
    );
    assert!(files[..switch].iter().all(|f| f.1 < 10), "{files:?}");
    let listed: Vec<u64> = read["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["files"].as_array().unwrap().clone())
        .filter_map(|f| f["schema_id"].as_u64())
        .collect();
    assert!(
        listed.contains(&u64::from(ids[0])) && listed.contains(&u64::from(ids[1])),
        "{listed:?}"
    );

    let letters = read["dead_letters"].as_array().unwrap();
    let mut lettered: Vec<i64> = letters.iter().map(|r| r[1].as_i64().unwrap()).collect();
    lettered.sort();
    assert_eq!(lettered, dead);
    for letter in letters {
        let (offset, stage, reason) = (letter[1].as_i64().unwrap(), &letter[2], &letter[3]);
        if offset == 60 {
            assert!(
                reason
                    .as_str()
                    .unwrap()
                    .contains("does not name a schema id"),
                "{letter:?}"
            );
            continue;
        }
        assert_eq!(stage, "incompatible_schema", "{letter:?}");
        assert_eq!(
            reason.as_str().unwrap(),
            format!(
                "schema id {} is incompatible with schema id {} in use: \
                 field 100 (`coupon`) was string, is now int64",
                ids[2], ids[1]
            ),
        );
    }
}
