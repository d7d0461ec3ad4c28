//! Type mappings read back with pyarrow, an independent Parquet reader:
//! maps, durations, wrappers and JSON-mapped well-known types as written by
//! sluice's buffers and writer, and the kitchen-sink message (every row of
//! DESIGN.md's mapping table) through the whole daemon.

use std::process::Command;
use std::sync::Arc;

use prost::Message as _;
use prost_reflect::{DynamicMessage, MapKey, Value};
use serde_json::json;
use sluice::buffer::{Buffers, Record};
use sluice::envelope::{Encoding, Envelope};
use sluice::schema::{LocalRegistry, MessagePlan};

use crate::support;

fn write_one(message: &str, payload: &[u8], dir: &std::path::Path) -> std::path::PathBuf {
    let registry = LocalRegistry::open(&support::schemas_dir()).unwrap();
    let descriptor = registry.message(message).unwrap();
    let plan = Arc::new(MessagePlan::new(&descriptor, 3).unwrap());
    let mut buffers = Buffers::new(descriptor, plan, &Default::default(), vec![]);
    let envelope = Envelope {
        id: Some("id-1"),
        source: None,
        time_micros: 1_767_225_600_000_000,
        encoding: Encoding::Protobuf,
        extensions: vec![("traceparent", "00-ab-cd-01")],
        tenant_header: None,
        dataschema: None,
    };
    let route = 0;
    let record = Record {
        partition: 0,
        offset: 0,
        kafka_timestamp_ms: None,
        envelope,
        payload,
        route,
    };
    buffers.push(&record).unwrap();
    let file = buffers.finish_all().unwrap().remove(0);
    let path = dir.join("one.parquet");
    std::fs::write(&path, file.body.whole().unwrap()).unwrap();
    path
}

fn pyarrow_row(path: &std::path::Path) -> serde_json::Value {
    let script = r#"
import json, sys, datetime
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
row = {}
for name in t.column_names:
    v = t.column(name).to_pylist()[0]
    if isinstance(v, datetime.timedelta):
        v = {"duration_us": v // datetime.timedelta(microseconds=1)}
    elif isinstance(v, datetime.datetime):
        v = str(v)
    row[name] = {"type": str(t.schema.field(name).type), "value": v}
print(json.dumps(row, default=str))
"#;
    let out = Command::new(support::python())
        .args(["-c", script])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn maps_durations_wrappers_and_json_types_read_back_with_pyarrow() {
    let registry = LocalRegistry::open(&support::schemas_dir()).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut maps = DynamicMessage::new(registry.message("sluice.testing.WithMaps").unwrap());
    maps.get_field_by_name_mut("counts")
        .unwrap()
        .as_map_mut()
        .unwrap()
        .insert(MapKey::String("a".into()), Value::I64(7));
    let row = pyarrow_row(&write_one(
        "sluice.testing.WithMaps",
        &maps.encode_to_vec(),
        dir.path(),
    ));
    let map_type = row["counts"]["type"].as_str().unwrap();
    assert!(map_type.starts_with("map<string, int64"), "{map_type}");
    assert_eq!(row["counts"]["value"], serde_json::json!([["a", 7]]));

    let wk = registry.message("sluice.testing.WellKnown").unwrap();
    let mut m = DynamicMessage::new(wk.clone());
    let mut wrapper = DynamicMessage::new(registry.message("google.protobuf.Int64Value").unwrap());
    wrapper.set_field_by_name("value", Value::I64(-3));
    m.set_field_by_name("w_int64", Value::Message(wrapper));
    let mut d = DynamicMessage::new(registry.message("google.protobuf.Duration").unwrap());
    d.set_field_by_name("seconds", Value::I64(2));
    m.set_field_by_name("d", Value::Message(d));
    let mut v = DynamicMessage::new(registry.message("google.protobuf.Value").unwrap());
    v.set_field_by_name("number_value", Value::F64(1.5));
    m.set_field_by_name("v", Value::Message(v));
    let row = pyarrow_row(&write_one(
        "sluice.testing.WellKnown",
        &m.encode_to_vec(),
        dir.path(),
    ));
    assert_eq!(row["w_int64"]["type"], "int64");
    assert_eq!(row["w_int64"]["value"], -3);
    assert_eq!(row["w_string"]["value"], serde_json::Value::Null);
    assert_eq!(row["d"]["type"], "duration[us]");
    assert_eq!(row["d"]["value"]["duration_us"], 2_000_000);
    assert_eq!(row["v"]["type"], "string");
    assert_eq!(row["v"]["value"], "1.5");
    assert_eq!(row["_event_time"]["type"], "timestamp[us, tz=UTC]");
    assert_eq!(
        row["_extensions"]["value"],
        r#"{"traceparent":"00-ab-cd-01"}"#
    );
}

/// The kitchen-sink message in canonical Protobuf JSON: every field set,
/// extremes, an enum number the schema does not know, wrappers present but
/// holding their default, a tree deeper than `schema.recursion_depth`.
const KITCHEN_SINK: &str = r#"{
  "fDouble": -2.25, "fFloat": 1.5,
  "fInt32": -2147483648, "fSint32": -7, "fSfixed32": 2147483647,
  "fInt64": "-9223372036854775808", "fSint64": "-9", "fSfixed64": "9223372036854775807",
  "fUint32": 4294967295, "fFixed32": 1, "fUint64": "18446744073709551615", "fFixed64": "2",
  "fBool": true, "fString": "Grüße, 東京", "fBytes": "AP8=",
  "fEnum": "COLOR_GREEN", "fEnumUnknown": 99,
  "fMessage": {"x": -1, "y": 2, "label": "p"},
  "fPacked": ["-1", "0", "3"], "fUnpacked": [4, 5], "fStrings": ["a", ""],
  "fMessages": [{"x": 1}, {}], "fEnums": ["COLOR_RED", "COLOR_UNSPECIFIED"],
  "fMap": {"k": "1"}, "fMapMessages": {"3": {"label": "three"}},
  "fTimestamp": "2026-01-02T03:04:05.123456789Z", "fDuration": "-1.500001s",
  "wInt32": 0, "wInt64": "-5", "wUint32": 6, "wUint64": "7", "wFloat": 0.5,
  "wDouble": 8.25, "wBool": false, "wString": "", "wBytes": "AQ==",
  "fStruct": {"n": 1.5, "list": [true, null], "obj": {"s": "t"}},
  "fValue": "text", "fListValue": [1.5, "x"],
  "fAny": {"@type": "type.googleapis.com/sluice.testing.Point", "x": 3},
  "fOptional": "0",
  "choicePoint": {"y": 4},
  "fTree": {"name": "1", "children": [{"name": "2", "children": [{"name": "3",
            "children": [{"name": "4", "children": [{"name": "5"}]}]}]}]},
  "fLegacy": {"withDefault": 0, "id": "5", "values": [1, 2]}
}"#;

/// Every row of the mapping table through the whole daemon (Kafka → sluice
/// → Parquet), read back with pyarrow: the full message as Protobuf, the
/// same as JSON, and an empty message (all defaults and nulls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kitchen_sink_reads_back_field_by_field_with_pyarrow() {
    let registry = LocalRegistry::open(&support::schemas_dir()).unwrap();
    let descriptor = registry.message("sluice.testing.KitchenSink").unwrap();
    let mut json = serde_json::Deserializer::from_str(KITCHEN_SINK);
    let full = DynamicMessage::deserialize(descriptor.clone(), &mut json).unwrap();
    let topic = support::unique("kitchen");
    sluice::sample::ensure_topic(&support::brokers(), &topic, 1)
        .await
        .unwrap();
    let producer = support::producer();
    let records: [(&[u8], &[u8]); 3] = [
        (&full.encode_to_vec(), b"application/protobuf"),
        (KITCHEN_SINK.as_bytes(), b"application/json"),
        (&[], b"application/protobuf"),
    ];
    for (i, (value, content_type)) in records.iter().enumerate() {
        let id = format!("ks-{i}");
        let headers: support::Headers = vec![
            ("ce_id", id.as_bytes()),
            ("ce_source", b"/kitchen"),
            ("ce_time", b"2026-01-02T03:04:05.5Z"),
            ("ce_traceparent", b"00-ab-cd-01"),
            ("content-type", content_type),
        ];
        support::send_raw(&producer, &topic, value, &headers).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", dir.path().display());
    let mut sink = support::Sink::new(support::SinkSpec {
        topic: &topic,
        storage_url: &storage,
        queue_url: None,
        interval: "1s",
    });
    sink.start_with_env(&[("SLUICE_EVENT__MESSAGE", "sluice.testing.KitchenSink")]);
    sink.wait_committed(&[3], std::time::Duration::from_secs(60));
    assert!(sink.stop().success(), "{}", sink.logs());

    let read = support::python_json("rows.py", &[dir.path()]);
    assert_eq!(read["dead_letters"], json!([]), "every record is a row");
    let rows = read["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let point = |x: i64, y: i64, label: &str| json!({"x": x, "y": y, "label": label});
    let tree_leaf_json = r#"{"name":"5"}"#;
    // Column: pyarrow type, value in the full message, value in the empty one.
    let expected: Vec<(&str, &str, serde_json::Value, serde_json::Value)> = vec![
        ("f_double", "double", json!(-2.25), json!(0.0)),
        ("f_float", "float", json!(1.5), json!(0.0)),
        ("f_int32", "int32", json!(i32::MIN), json!(0)),
        ("f_sint32", "int32", json!(-7), json!(0)),
        ("f_sfixed32", "int32", json!(i32::MAX), json!(0)),
        ("f_int64", "int64", json!(i64::MIN), json!(0)),
        ("f_sint64", "int64", json!(-9), json!(0)),
        ("f_sfixed64", "int64", json!(i64::MAX), json!(0)),
        ("f_uint32", "uint32", json!(u32::MAX), json!(0)),
        ("f_fixed32", "uint32", json!(1), json!(0)),
        ("f_uint64", "uint64", json!(u64::MAX), json!(0)),
        ("f_fixed64", "uint64", json!(2), json!(0)),
        ("f_bool", "bool", json!(true), json!(false)),
        ("f_string", "string", json!("Grüße, 東京"), json!("")),
        (
            "f_bytes",
            "binary",
            json!({"hex": "00ff"}),
            json!({"hex": ""}),
        ),
        (
            "f_enum",
            "string",
            json!("COLOR_GREEN"),
            json!("COLOR_UNSPECIFIED"),
        ),
        (
            "f_enum_unknown",
            "string",
            json!("99"),
            json!("COLOR_UNSPECIFIED"),
        ),
        (
            "f_message",
            "struct<x: int32, y: int32, label: string>",
            point(-1, 2, "p"),
            json!(null),
        ),
        (
            "f_packed",
            "list<item: int64>",
            json!([-1, 0, 3]),
            json!([]),
        ),
        ("f_unpacked", "list<item: int32>", json!([4, 5]), json!([])),
        (
            "f_strings",
            "list<item: string>",
            json!(["a", ""]),
            json!([]),
        ),
        (
            "f_messages",
            "list<item: struct<x: int32, y: int32, label: string>>",
            json!([point(1, 0, ""), point(0, 0, "")]),
            json!([]),
        ),
        (
            "f_enums",
            "list<item: string>",
            json!(["COLOR_RED", "COLOR_UNSPECIFIED"]),
            json!([]),
        ),
        (
            "f_map",
            "map<string, int64 ('f_map')>",
            json!([["k", 1]]),
            json!([]),
        ),
        (
            "f_map_messages",
            "map<int32, struct<x: int32, y: int32, label: string> ('f_map_messages')>",
            json!([[3, point(0, 0, "three")]]),
            json!([]),
        ),
        // Nanoseconds truncate to microseconds.
        (
            "f_timestamp",
            "timestamp[us, tz=UTC]",
            json!(1_767_323_045_123_456i64),
            json!(null),
        ),
        ("f_duration", "duration[us]", json!(-1_500_001), json!(null)),
        // Wrappers: present but holding the default is the default, not null.
        ("w_int32", "int32", json!(0), json!(null)),
        ("w_int64", "int64", json!(-5), json!(null)),
        ("w_uint32", "uint32", json!(6), json!(null)),
        ("w_uint64", "uint64", json!(7), json!(null)),
        ("w_float", "float", json!(0.5), json!(null)),
        ("w_double", "double", json!(8.25), json!(null)),
        ("w_bool", "bool", json!(false), json!(null)),
        ("w_string", "string", json!(""), json!(null)),
        ("w_bytes", "binary", json!({"hex": "01"}), json!(null)),
        ("f_optional", "int64", json!(0), json!(null)),
        ("choice_text", "string", json!(null), json!(null)),
        (
            "choice_point",
            "struct<x: int32, y: int32, label: string>",
            point(0, 4, ""),
            json!(null),
        ),
        (
            "f_tree",
            "struct<name: string, children: list<item: struct<name: string, children: \
             list<item: struct<name: string, children: list<item: struct<name: string, \
             children: list<item: string> not null>> not null>> not null>> not null>",
            json!({"name": "1", "children": [{"name": "2", "children": [{"name": "3",
                   "children": [{"name": "4", "children": [tree_leaf_json]}]}]}]}),
            json!(null),
        ),
        // proto2: presence on every field; a custom default is not
        // materialised (absent reads as null), an explicit 0 is kept.
        (
            "f_legacy",
            "struct<with_default: int32, name: string, id: int64, values: list<item: int32> not null>",
            json!({"with_default": 0, "name": null, "id": 5, "values": [1, 2]}),
            json!(null),
        ),
        (
            "_event_time",
            "timestamp[us, tz=UTC]",
            json!(1_767_323_045_500_000i64),
            json!(1_767_323_045_500_000i64),
        ),
        ("_source", "string", json!("/kitchen"), json!("/kitchen")),
        ("_kafka_partition", "int32", json!(0), json!(0)),
        (
            "_extensions",
            "string",
            json!(r#"{"traceparent":"00-ab-cd-01"}"#),
            json!(r#"{"traceparent":"00-ab-cd-01"}"#),
        ),
    ];
    // Well-known JSON types: compared as JSON (key order is the writer's).
    let json_columns: Vec<(&str, serde_json::Value)> = vec![
        (
            "f_struct",
            json!({"n": 1.5, "list": [true, null], "obj": {"s": "t"}}),
        ),
        ("f_value", json!("text")),
        ("f_list_value", json!([1.5, "x"])),
        (
            "f_any",
            json!({"@type": "type.googleapis.com/sluice.testing.Point", "x": 3}),
        ),
    ];
    let types = &read["types"];
    for (column, arrow_type, full, empty) in &expected {
        assert_eq!(types[column], *arrow_type, "type of {column}");
        assert_eq!(rows[0][column], *full, "{column} from Protobuf");
        assert_eq!(rows[1][column], *full, "{column} from JSON");
        assert_eq!(rows[2][column], *empty, "{column} when absent");
    }
    for (column, value) in &json_columns {
        assert_eq!(types[column], "string", "type of {column}");
        for row in &rows[..2] {
            let text = row[column]
                .as_str()
                .unwrap_or_else(|| panic!("{column}: {row}"));
            let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(parsed, *value, "{column}");
        }
        assert_eq!(rows[2][column], json!(null), "{column} when absent");
    }
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["_event_id"], format!("ks-{i}"));
        assert_eq!(row["_kafka_offset"], i);
        assert!(row["_kafka_timestamp"].is_i64(), "{row}");
    }
    // Nothing unaccounted for: every column is one the table names.
    let named: std::collections::BTreeSet<&str> = expected
        .iter()
        .map(|e| e.0)
        .chain(json_columns.iter().map(|c| c.0))
        .chain(["_event_id", "_kafka_offset", "_kafka_timestamp"])
        .collect();
    let written: std::collections::BTreeSet<&str> = types
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(written, named);

    // The DuckDB DDL sluice prints creates a table these files load into,
    // column for column.
    let ddl = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "ddl",
            "--dialect",
            "duckdb",
            "--table",
            "kitchen",
            "--config",
        ])
        .arg(&sink.config)
        .env("SLUICE_EVENT__MESSAGE", "sluice.testing.KitchenSink")
        .output()
        .unwrap();
    assert!(
        ddl.status.success(),
        "{}",
        String::from_utf8_lossy(&ddl.stderr)
    );
    let sql = dir.path().join("kitchen.sql");
    std::fs::write(&sql, &ddl.stdout).unwrap();
    let loaded = support::python_json("duckdb_load.py", &[sql.as_os_str(), "kitchen".as_ref()]);
    assert_eq!(loaded["count"], 3, "{loaded}");
    let duck_types = loaded["types"].as_object().unwrap();
    assert_eq!(
        duck_types
            .keys()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        written
    );
    assert_eq!(duck_types["f_uint64"], "UBIGINT");
    assert_eq!(duck_types["f_packed"], "BIGINT[]");
    assert_eq!(duck_types["_event_time"], "TIMESTAMP WITH TIME ZONE");
    let full_row = &loaded["rows"][0];
    assert_eq!(full_row["f_int64"], json!(i64::MIN));
    assert_eq!(full_row["f_uint64"], json!(u64::MAX));
    assert_eq!(full_row["f_string"], "Grüße, 東京");
    assert_eq!(full_row["_event_id"], "ks-0");
}
