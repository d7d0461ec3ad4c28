//! The deployment examples in config/ hold together: the Kubernetes
//! manifests carry a sink config sluice accepts and probe the port it
//! serves them on. (The dashboard's metrics are checked against a live
//! scrape in `operability`.)

use serde_json::Value;
use sluice::config::Config;

use crate::support;

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifests"))
}

/// The documents of `config/k8s/<file>`, and the sink config its
/// ConfigMap holds, loaded from a temporary directory after `prepare`
/// (which may rewrite paths and put files beside it).
fn manifests(
    file: &str,
    prepare: impl FnOnce(&std::path::Path, String) -> String,
) -> (Vec<Value>, Config) {
    let path = support::repo().join("config/k8s").join(file);
    let docs = support::python_json("yaml_json.py", &[&path]);
    let docs = docs.as_array().unwrap().clone();
    let toml = kind(&docs, "ConfigMap")["data"]["sink.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let toml = prepare(dir.path(), toml);
    let sink = dir.path().join("sink.toml");
    std::fs::write(&sink, toml).unwrap();
    let config = Config::load(&sink).unwrap_or_else(|e| panic!("{file}: {e}"));
    (docs, config)
}

#[test]
fn kubernetes_manifests_hold_a_valid_sink_and_probe_its_port() {
    let (docs, config) = manifests("order_placed.yaml", |_, toml| toml);
    let docs = &docs;
    let port = config.metrics_listen().unwrap().port();

    let deployment = kind(docs, "Deployment");
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        pod["metadata"]["labels"]
    );
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"], port);
    assert_eq!(container["ports"][0]["name"], "metrics");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "metrics");
    let mount = &container["volumeMounts"][0]["mountPath"];
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == mount),
        "the container runs the mounted config"
    );
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() > 1);

    let service = kind(docs, "Service");
    assert_eq!(service["spec"]["selector"], pod["metadata"]["labels"]);
    let monitor = kind(docs, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
}

/// Every metric the dashboard queries, by name.
pub fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let text =
        std::fs::read_to_string(support::repo().join("config/grafana-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("sluice_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

/// The secured examples: their sinks load (the secret file read from where
/// the Secret is mounted, here a temporary copy) and mount what they name.
#[test]
fn secured_kubernetes_examples_hold_valid_sinks() {
    for (file, mechanism) in [
        ("msk_iam.yaml", "AWS_MSK_IAM"),
        ("scram.yaml", "SCRAM-SHA-512"),
    ] {
        let (docs, config) = manifests(file, |dir, toml| {
            std::fs::write(dir.join("password"), "from-the-secret\n").unwrap();
            toml.replace("/var/run/secrets/kafka", &dir.display().to_string())
        });
        let docs = &docs;
        let security = &config.kafka.security;
        assert_eq!(security.sasl_mechanism.unwrap().name(), mechanism, "{file}");
        if let Some(password) = &security.sasl_password {
            assert_eq!(password.expose(), "from-the-secret", "{file}");
            let mounts = &kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
            assert!(
                mounts
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["mountPath"] == "/var/run/secrets/kafka"),
                "{file}: the secret is mounted where the sink reads it"
            );
        }
    }
}
