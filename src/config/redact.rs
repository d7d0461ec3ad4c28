//! Secrets kept out of the effective configuration that sluice prints.

/// Whether a key's name says its value is a secret (Kafka's SASL and SSL
/// properties among them).
pub(super) fn is_secret_key(key: &str) -> bool {
    const SECRET: [&str; 5] = ["password", "secret", "token", "jaas", "ssl.key.pem"];
    let key = key.to_ascii_lowercase();
    SECRET.iter().any(|s| key.contains(s))
}

/// Masks secrets in `value`, found under `key`.
pub(super) fn redact(value: &mut serde_json::Value, key: &str) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                redact(v, k);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| redact(v, key)),
        serde_json::Value::String(text) => {
            if is_secret_key(key) {
                *text = "***".to_owned();
            } else if let Some((scheme, rest)) = text.split_once("://")
                && let Some((userinfo, host)) = rest.split_once('@')
                && !userinfo.contains('/')
            {
                let user = userinfo.split(':').next().unwrap_or_default();
                *text = format!("{scheme}://{user}:***@{host}");
            }
        }
        _ => {}
    }
}
