//! The Confluent Schema Registry client and wire format, against an HTTP
//! server this test starts that speaks the registry endpoints sluice uses
//! (no Confluent Schema Registry can run on this machine): schema by id,
//! subject versions, references; then the whole pipeline reading records in
//! the Confluent wire format from the real Kafka broker.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice::framing::confluent_header;
use sluice::sample::{self, Produced};
use sluice::schema::ConfluentRegistry;

use crate::support::{self, Sink, SinkSpec, check_rows, reference_sample, serve};

const COMMON: &str = r#"syntax = "proto3";
package shop.common;
message Money { string currency = 1; int64 cents = 2; }"#;

const ORDER: &str = r#"syntax = "proto3";
package shop;
import "shop/common.proto";
import "google/protobuf/timestamp.proto";
message Order { string id = 1; shop.common.Money total = 2; google.protobuf.Timestamp at = 3; }"#;

fn routes() -> HashMap<String, String> {
    let schema = |text: &str, refs: &str, id: u32| {
        format!(
            r#"{{"id": {id}, "schemaType": "PROTOBUF", "schema": {}, "references": [{refs}]}}"#,
            serde_json::to_string(text).unwrap()
        )
    };
    let order_refs = r#"{"name": "shop/common.proto", "subject": "shop-common", "version": 3}"#;
    HashMap::from([
        ("/schemas/ids/7".to_owned(), schema(ORDER, order_refs, 7)),
        (
            "/subjects/shop-common/versions/3".to_owned(),
            schema(COMMON, "", 5),
        ),
        (
            "/subjects/orders-value/versions/latest".to_owned(),
            schema(ORDER, order_refs, 7),
        ),
        (
            "/subjects/orders-value/versions/1".to_owned(),
            schema(ORDER, order_refs, 6),
        ),
        (
            "/schemas/ids/9".to_owned(),
            r#"{"schema": "{\"type\": \"string\"}"}"#.to_owned(),
        ),
    ])
}

#[test]
fn schema_by_id_resolves_references_and_is_cached() {
    let server = serve(routes());
    let registry = ConfluentRegistry::new(&server.url);
    let pool = registry.schema(7).unwrap();
    let order = pool.get_message_by_name("shop.Order").unwrap();
    let total = order.get_field_by_name("total").unwrap();
    assert_eq!(
        total.kind().as_message().unwrap().full_name(),
        "shop.common.Money"
    );
    let after_first = server.requests.load(Ordering::SeqCst);
    assert_eq!(after_first, 2, "the schema and its one reference");
    registry.schema(7).unwrap();
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        after_first,
        "second lookup is a cache hit"
    );
}

/// A file imported by its path, as Confluent's serializers register it.
pub const MONEY: &str = r#"syntax = "proto3";
package acme.common.v1;
message Money { string currency = 1; int64 cents = 2; }"#;

/// The message read (`Placed`) third in its file: index path `[2]`.
pub const ORDERS: &str = r#"syntax = "proto3";
package acme.orders.v1;
import "acme/common/v1/money.proto";
message Header { string id = 1; }
message LineItem { string sku = 1; int32 quantity = 2; }
message Placed { string order_id = 1; acme.common.v1.Money total = 2; }"#;

/// `files` (name → `.proto` text) compiled, each as Confluent's Python
/// serializer registers it: a base64 serialized `FileDescriptorProto`.
pub fn serialized(files: &[(&str, &str)]) -> HashMap<String, String> {
    use base64::Engine as _;
    use prost::Message as _;
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    let set = protox::compile(&names, [dir.path()]).unwrap();
    set.file
        .iter()
        .filter(|f| names.contains(&f.name()))
        .map(|f| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(f.encode_to_vec());
            (f.name().to_owned(), encoded)
        })
        .collect()
}

#[test]
fn serialized_schemas_references_by_import_path_and_every_message_index_checked() {
    let encoded = serialized(&[
        ("acme/common/v1/money.proto", MONEY),
        ("acme/orders/v1/orders.proto", ORDERS),
    ]);
    let answer = |schema: &str, refs: &str, id: u32| {
        format!(
            r#"{{"id": {id}, "schemaType": "PROTOBUF", "schema": "{schema}", "references": [{refs}]}}"#
        )
    };
    let refs = r#"{"name": "acme/common/v1/money.proto", "subject": "acme/common/v1/money.proto", "version": 1}"#;
    // The registry answers the reference's subject only percent-encoded,
    // as real registries route it.
    let server = serve(HashMap::from([
        (
            "/schemas/ids/21".to_owned(),
            answer(&encoded["acme/orders/v1/orders.proto"], refs, 21),
        ),
        (
            "/subjects/acme%2Fcommon%2Fv1%2Fmoney.proto/versions/1".to_owned(),
            answer(&encoded["acme/common/v1/money.proto"], "", 20),
        ),
    ]));
    let registry = std::sync::Arc::new(ConfluentRegistry::new(&server.url));
    let pool = registry.schema(21).unwrap_or_else(|e| panic!("{e}"));
    let placed = pool.get_message_by_name("acme.orders.v1.Placed").unwrap();
    let total = placed.get_field_by_name("total").unwrap();
    assert_eq!(
        total.kind().as_message().unwrap().full_name(),
        "acme.common.v1.Money"
    );

    // The sink's message is third in its file: index path [2]. A record
    // framed with the start-up id and [0] (Header) or [1] (LineItem) is
    // another message, whatever its bytes would decode to.
    let mut framing = sluice::framing::Framing::confluent(registry, 21, placed, 3);
    let placed_frame = [0, 0, 0, 0, 21, 2, 4, 0x0a, 1, b'x'];
    let framed = framing.payload(&placed_frame, None).unwrap();
    assert_eq!(framed.payload, &placed_frame[7..]);
    for other in [&confluent_header(21)[..], &[0, 0, 0, 0, 21, 2, 2][..]] {
        let mut value = other.to_vec();
        value.extend_from_slice(b"\x0a\x15LINEITEM-NOT-AN-ORDER\x10\x07");
        let error = framing.payload(&value, None).unwrap_err().to_string();
        assert!(
            error.contains("acme.orders.v1.Header") || error.contains("acme.orders.v1.LineItem"),
            "{error}"
        );
    }
}

#[test]
fn latest_or_pinned_version_of_a_subject() {
    let server = serve(routes());
    let registry = ConfluentRegistry::new(&server.url);
    let (id, pool) = registry.latest("orders-value").unwrap();
    assert_eq!(id, 7);
    assert!(pool.get_message_by_name("shop.Order").is_some());
    // A pinned version (`schema.version`).
    let (id, _) = registry.subject_version("orders-value", Some(1)).unwrap();
    assert_eq!(id, 6);
}

#[test]
fn unknown_ids_and_non_protobuf_schemas_are_clear_errors() {
    let server = serve(routes());
    let registry = ConfluentRegistry::new(&server.url);
    let missing = registry.schema(404).unwrap_err().to_string();
    assert!(missing.contains("/schemas/ids/404 not found"), "{missing}");
    let avro = registry.schema(9).unwrap_err().to_string();
    assert!(
        avro.contains("schema 9") && avro.contains("AVRO, not PROTOBUF"),
        "{avro}"
    );
}

#[test]
fn credentials_in_the_url_become_basic_auth_and_stay_out_of_debug() {
    let server = serve(routes());
    let url = server.url.replace("http://", "http://svc:s3cret@");
    let registry = ConfluentRegistry::new(&url);
    registry.schema(7).unwrap();
    let seen = server.auth.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|a| a == "Basic c3ZjOnMzY3JldA=="),
        "{seen:?}"
    );
    assert!(!format!("{registry:?}").contains("s3cret"));
}

#[test]
fn registry_down_is_a_clear_error_after_retries() {
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let registry = ConfluentRegistry::new(&format!("http://127.0.0.1:{port}"));
    let e = registry.schema(7).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "schema registry http://127.0.0.1:{port} unreachable"
        )),
        "{e}"
    );
}

/// The sink's schema from the registry; values in the Confluent wire format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_format_records_decode_and_bad_framing_becomes_dead_letters() {
    let topic = support::unique("orders");
    let proto =
        std::fs::read_to_string(support::schemas_dir().join("sluice/examples/order_placed.proto"))
            .unwrap();
    let answer = format!(
        r#"{{"id": 7, "schemaType": "PROTOBUF", "schema": {}}}"#,
        serde_json::to_string(&proto).unwrap()
    );
    let server = serve(HashMap::from([
        (
            format!("/subjects/{topic}-value/versions/latest"),
            answer.clone(),
        ),
        ("/schemas/ids/7".to_owned(), answer),
    ]));
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
        send(framed(7, seq), seq).await;
        good.push(Produced {
            seq,
            partition: 0,
            offset: seq as i64,
        });
    }
    send(sample.encode(20), 20).await; // plain Protobuf: no magic byte
    send(framed(99, 21), 21).await;

    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", dir.path().display());
    let mut sink = Sink::new(SinkSpec {
        topic: &topic,
        storage_url: &storage,
        queue_url: None,
        interval: "1s",
    });
    sink.start_with_env(&[("SLUICE_SCHEMA__REGISTRY", &server.url)]);
    sink.wait_committed(&[22], Duration::from_secs(60));
    // The registry goes down mid-stream: records of the cached id keep
    // landing; a never-seen id cannot be checked and is a dead letter.
    server.down.store(true, Ordering::SeqCst);
    for seq in 22..32u64 {
        send(framed(7, seq), seq).await;
        good.push(Produced {
            seq,
            partition: 0,
            offset: seq as i64,
        });
    }
    send(framed(8, 32), 32).await;
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
    assert!(reason(21).contains("schema id 99"), "{}", reason(21));
    assert!(
        reason(32).contains("schema id 8") && reason(32).contains("unreachable"),
        "{}",
        reason(32)
    );
}

/// Schema evolution through the whole pipeline: the sink starts on v1 (the
/// latest version when it starts); v2 adds a field, v3 changes that field's
/// type. v1 and v2 records interleave in one partition.
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
    let answer = |id: u32, text: &str| {
        format!(
            r#"{{"id": {id}, "schemaType": "PROTOBUF", "schema": {}}}"#,
            serde_json::to_string(text).unwrap()
        )
    };
    let server = serve(HashMap::from([
        (
            format!("/subjects/{topic}-value/versions/latest"),
            answer(1, &v1),
        ),
        ("/schemas/ids/1".to_owned(), answer(1, &v1)),
        ("/schemas/ids/2".to_owned(), answer(2, &v2)),
        ("/schemas/ids/3".to_owned(), answer(3, &v3)),
    ]));
    sample::ensure_topic(&support::brokers(), &topic, 1)
        .await
        .unwrap();
    let sample = reference_sample();
    let producer = support::producer();
    // Event `seq` as version `id`: v2 and v3 append field 100 to the v1
    // bytes (Protobuf fields concatenate).
    let event = |id: u32, seq: u64| {
        let mut bytes = sample.encode(seq);
        match id {
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
        let id = match seq {
            0..10 => 1,
            10..40 => [2, 1][seq as usize % 2],
            _ => [3, 2, 1][seq as usize % 3],
        };
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
                format!("{}/schemas/ids/{id}", server.url),
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
        if id == 3 {
            dead.push(offset);
        } else {
            rolled |= id == 2;
            good.push(Produced {
                seq,
                partition: 0,
                offset,
            });
            coupons.push(match (rolled, id) {
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
    support::send_raw(&producer, &topic, &event(1, 60), &headers).await;
    dead.push(offset);

    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", dir.path().display());
    let mut sink = Sink::new(SinkSpec {
        topic: &topic,
        storage_url: &storage,
        queue_url: None,
        interval: "2s",
    });
    sink.start_with_env(&[("SLUICE_SCHEMA__REGISTRY", &server.url)]);
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
    let switch = files.iter().position(|f| f.2 == "2").unwrap();
    assert!(files[..switch].iter().all(|f| f.2 == "1"), "{files:?}");
    assert!(files[switch..].iter().all(|f| f.2 == "2"), "{files:?}");
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
    assert!(listed.contains(&1) && listed.contains(&2), "{listed:?}");

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
            reason,
            "schema id 3 is incompatible with schema id 2 in use: \
             field 100 (`coupon`) was string, is now int64",
        );
    }
}
