//! The registry client against an HTTP server this test starts, speaking
//! the Confluent endpoints sluice uses (no Confluent Schema Registry can run
//! on this machine): schema by id, subject versions, references.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::*;

const COMMON: &str = r#"syntax = "proto3";
package shop.common;
message Money { string currency = 1; int64 cents = 2; }"#;

const ORDER: &str = r#"syntax = "proto3";
package shop;
import "shop/common.proto";
import "google/protobuf/timestamp.proto";
message Order { string id = 1; shop.common.Money total = 2; google.protobuf.Timestamp at = 3; }"#;

/// Serves `routes` (path → JSON body; anything else is 404), counting
/// requests and remembering the Authorization headers seen.
struct Server {
    url: String,
    requests: Arc<AtomicUsize>,
    auth: Arc<Mutex<Vec<String>>>,
}

fn serve(routes: HashMap<String, String>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let auth = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (requests.clone(), auth.clone());
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
                if let Some(value) = header.strip_prefix("authorization: ") {
                    seen.lock().unwrap().push(value.trim().to_owned());
                }
                if header.trim().is_empty() {
                    break;
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            let (status, body) = match routes.get(&path) {
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
    }
}

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

#[test]
fn latest_version_of_a_subject() {
    let server = serve(routes());
    let registry = ConfluentRegistry::new(&server.url);
    let (id, pool) = registry.latest("orders-value").unwrap();
    assert_eq!(id, 7);
    assert!(pool.get_message_by_name("shop.Order").is_some());
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
