//! Against a real Confluent-compatible registry: Apicurio Registry, which
//! `scripts/dev-up` runs with basic auth on. Schemas are registered through
//! its Confluent API as Confluent's serializers register them (references
//! under their import paths, serialized descriptors) and read back by
//! sluice's client.

use serde_json::{Value, json};
use sluice::schema::ConfluentRegistry;

use crate::registry::{MONEY, ORDERS, serialized};
use crate::support;

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

/// `url()` with the credentials in it, as a sink's `schema.registry` gives them.
fn url_with(user: &str, password: &str) -> String {
    url().replacen("http://", &format!("http://{user}:{password}@"), 1)
}

/// Registers `schema` under `subject` (percent-encoded, as clients send
/// it); the registry's answer (`{"id": …}`).
fn register(subject: &str, schema: &str, references: Value) -> Value {
    let (user, password) = credentials();
    let subject =
        percent_encoding::utf8_percent_encode(subject, percent_encoding::NON_ALPHANUMERIC);
    let body = json!({"schemaType": "PROTOBUF", "schema": schema, "references": references});
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-f",
            "-u",
            &format!("{user}:{password}"),
            "-X",
            "POST",
        ])
        .args(["-H", "Content-Type: application/vnd.schemaregistry.v1+json"])
        .args(["--data", &body.to_string()])
        .arg(format!("{}/subjects/{subject}/versions", url()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "registering {subject}: {}",
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
    assert!(error.contains("401"), "{error}");
    assert!(!error.contains("not-the-password"), "{error}");

    // `sluice check` resolves the sink's subject, references and message.
    sluice::sample::ensure_topic(&support::brokers(), "orders.order_placed", 4)
        .await
        .unwrap();
    let sink = support::Sink::new(support::SinkSpec {
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
