//! Type mappings read back with pyarrow, an independent Parquet reader:
//! maps, durations, wrappers and JSON-mapped well-known types, as written
//! by sluice's own buffers and writer.

use std::process::Command;
use std::sync::Arc;

use prost::Message as _;
use prost_reflect::{DynamicMessage, MapKey, Value};
use sluice::buffer::{Buffers, Record};
use sluice::envelope::{Encoding, Envelope};
use sluice::schema::{LocalRegistry, MessagePlan};

use crate::support;

fn write_one(message: &str, payload: &[u8], dir: &std::path::Path) -> std::path::PathBuf {
    let registry = LocalRegistry::open(&support::schemas_dir()).unwrap();
    let descriptor = registry.message(message).unwrap();
    let plan = Arc::new(MessagePlan::new(&descriptor, 3).unwrap());
    let mut buffers = Buffers::new(descriptor, plan, sluice::writer::properties(&[]), vec![]);
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
    std::fs::write(&path, file.bytes).unwrap();
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
