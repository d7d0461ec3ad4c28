//! The registry client against an HTTP server this test starts, for what a
//! real registry cannot be made to do or show: count the requests (the
//! cache), show the Authorization header sent, answer 503 in bursts, hold
//! references under any subject. Everything else — the pipeline, evolution,
//! outages, subject strategies, records of Confluent's own serializer — runs
//! against Apicurio Registry in `apicurio.rs`.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::Ordering;

use sluice::framing::confluent_header;
use sluice::schema::ConfluentRegistry;

use crate::support::serve;

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
fn bursts_of_503_are_retried() {
    let server = serve(routes());
    server.fail_next.store(2, Ordering::SeqCst);
    let registry = ConfluentRegistry::new(&server.url);
    let pool = registry.schema(7).unwrap_or_else(|e| panic!("{e}"));
    assert!(pool.get_message_by_name("shop.Order").is_some());
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        4,
        "two 503s, then the schema and its reference"
    );
    // More 503s in a row than attempts: a clear error naming the answer.
    server.fail_next.store(10, Ordering::SeqCst);
    let fresh = ConfluentRegistry::new(&server.url);
    let e = fresh.schema(7).unwrap_err().to_string();
    assert!(e.contains("unreachable") && e.contains("503"), "{e}");
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
