//! How sluice authenticates to Kafka: `[kafka.security]`, mapped onto
//! librdkafka's properties, and the secrets it holds.
//!
//! A secret is given in the config (usually as `${ENV_VAR}`) or read from
//! the file its `…_file` key names when the config is loaded (a Kubernetes
//! secret mount). Secrets print as `***` in `Debug`, in the effective
//! config and in errors, and [`SecurityConfig::secrets`] lists them so that
//! librdkafka's own log lines can be scrubbed of them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that must never be shown: a password, a client secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// `kafka.security.protocol`: librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Plaintext => "PLAINTEXT",
            Protocol::Ssl => "SSL",
            Protocol::SaslPlaintext => "SASL_PLAINTEXT",
            Protocol::SaslSsl => "SASL_SSL",
        }
    }

    pub fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
        let text = String::deserialize(d)?;
        [
            Protocol::Plaintext,
            Protocol::Ssl,
            Protocol::SaslPlaintext,
            Protocol::SaslSsl,
        ]
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(text.trim()))
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`, got {text:?}"
            ))
        })
    }
}

/// `kafka.security.sasl_mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth 2 client credentials from an OIDC token endpoint.
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
    /// Amazon MSK's IAM access control: OAUTHBEARER with a token signed
    /// with the AWS credentials sluice uses for S3 and SQS.
    #[serde(rename = "AWS_MSK_IAM")]
    AwsMskIam,
}

impl Mechanism {
    const ALL: [Mechanism; 5] = [
        Mechanism::Plain,
        Mechanism::ScramSha256,
        Mechanism::ScramSha512,
        Mechanism::OAuthBearer,
        Mechanism::AwsMskIam,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::AwsMskIam => "AWS_MSK_IAM",
        }
    }

    /// The mechanism librdkafka speaks.
    fn librdkafka(self) -> &'static str {
        match self {
            Mechanism::AwsMskIam => "OAUTHBEARER",
            other => other.name(),
        }
    }

    fn takes_password(self) -> bool {
        matches!(
            self,
            Mechanism::Plain | Mechanism::ScramSha256 | Mechanism::ScramSha512
        )
    }
}

impl<'de> Deserialize<'de> for Mechanism {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Mechanism, D::Error> {
        let text = String::deserialize(d)?;
        Mechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "expected `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `OAUTHBEARER` or `AWS_MSK_IAM`, got {text:?}"
                ))
            })
    }
}

/// `[kafka.security]`: TLS, client certificates and SASL.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub protocol: Protocol,
    /// PEM file of the CAs the brokers' certificates chain to; default:
    /// the system's CA store.
    pub ca_file: Option<PathBuf>,
    /// The same as PEM text in the config.
    pub ca_pem: Option<String>,
    /// Check that the broker's certificate names the host connected to
    /// (default `true`).
    #[serde(default = "yes", deserialize_with = "crate::config::de::bool")]
    pub verify_hostname: bool,
    /// Client certificate (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM, may be encrypted).
    pub key_file: Option<PathBuf>,
    /// The key's password.
    pub key_password: Option<Secret>,
    /// A file holding the key's password.
    pub key_password_file: Option<PathBuf>,
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `OAUTHBEARER` or `AWS_MSK_IAM`.
    pub sasl_mechanism: Option<Mechanism>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<Secret>,
    /// A file holding the SASL password.
    pub sasl_password_file: Option<PathBuf>,
    /// OAUTHBEARER: the OIDC token endpoint (client credentials grant).
    pub oauth_token_endpoint_url: Option<String>,
    pub oauth_client_id: Option<String>,
    pub oauth_client_secret: Option<Secret>,
    /// A file holding the OAuth client secret.
    pub oauth_client_secret_file: Option<PathBuf>,
    pub oauth_scope: Option<String>,
    /// AWS_MSK_IAM: the cluster's region; default: the AWS SDK's.
    pub aws_region: Option<String>,
    /// How long authentication or authorization may keep failing before
    /// `run` stops with an error (default 60s).
    #[serde(default = "default_auth_failure_timeout", with = "humantime_serde")]
    pub auth_failure_timeout: Duration,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            protocol: Protocol::Plaintext,
            ca_file: None,
            ca_pem: None,
            verify_hostname: true,
            cert_file: None,
            key_file: None,
            key_password: None,
            key_password_file: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            oauth_token_endpoint_url: None,
            oauth_client_id: None,
            oauth_client_secret: None,
            oauth_client_secret_file: None,
            oauth_scope: None,
            aws_region: None,
            auth_failure_timeout: default_auth_failure_timeout(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_auth_failure_timeout() -> Duration {
    Duration::from_secs(60)
}

/// A problem with `[kafka.security]`: the key (under `kafka.security.`)
/// and what is wrong.
#[derive(Debug)]
pub struct Invalid {
    pub key: &'static str,
    pub message: String,
}

fn invalid(key: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        key,
        message: message.into(),
    }
}

impl SecurityConfig {
    /// Reads the secrets that `…_file` keys name (relative paths are taken
    /// from `base`, the config file's directory). One trailing newline is
    /// dropped.
    pub fn read_secret_files(&mut self, base: &Path) -> Result<(), Invalid> {
        let pairs = [
            (
                &mut self.sasl_password,
                &self.sasl_password_file,
                "sasl_password_file",
            ),
            (
                &mut self.key_password,
                &self.key_password_file,
                "key_password_file",
            ),
            (
                &mut self.oauth_client_secret,
                &self.oauth_client_secret_file,
                "oauth_client_secret_file",
            ),
        ];
        for (secret, file, key) in pairs {
            let Some(file) = file else { continue };
            if secret.is_some() {
                return Err(invalid(
                    key,
                    format!(
                        "give either `{}` or `{key}`, not both",
                        key.trim_end_matches("_file")
                    ),
                ));
            }
            let path = base.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
            let text = text
                .strip_suffix("\r\n")
                .or_else(|| text.strip_suffix('\n'))
                .unwrap_or(&text);
            *secret = Some(Secret::new(text));
        }
        Ok(())
    }

    /// Checks that the keys given fit the protocol and mechanism.
    pub fn validate(&self) -> Result<(), Invalid> {
        let protocol = self.protocol;
        let tls_keys = [
            ("ca_file", self.ca_file.is_some()),
            ("ca_pem", self.ca_pem.is_some()),
            ("cert_file", self.cert_file.is_some()),
            ("key_file", self.key_file.is_some()),
            ("key_password", self.key_password.is_some()),
        ];
        if !protocol.tls()
            && let Some((key, _)) = tls_keys.iter().find(|(_, given)| *given)
        {
            return Err(invalid(
                key,
                format!(
                    "is a TLS setting, but `protocol` is `{}`: use `ssl` or `sasl_ssl`",
                    protocol.name().to_ascii_lowercase()
                ),
            ));
        }
        if self.ca_file.is_some() && self.ca_pem.is_some() {
            return Err(invalid(
                "ca_pem",
                "give either `ca_file` or `ca_pem`, not both",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            let missing = if self.cert_file.is_some() {
                "key_file"
            } else {
                "cert_file"
            };
            return Err(invalid(
                missing,
                "a client certificate needs both `cert_file` and `key_file`",
            ));
        }
        if let Some(pem) = &self.ca_pem
            && !pem.contains("-----BEGIN CERTIFICATE-----")
        {
            return Err(invalid(
                "ca_pem",
                "expected PEM text with `-----BEGIN CERTIFICATE-----`",
            ));
        }
        let sasl_keys = [
            ("sasl_username", self.sasl_username.is_some()),
            ("sasl_password", self.sasl_password.is_some()),
            (
                "oauth_token_endpoint_url",
                self.oauth_token_endpoint_url.is_some(),
            ),
            ("aws_region", self.aws_region.is_some()),
        ];
        let Some(mechanism) = self.sasl_mechanism else {
            if protocol.sasl() {
                return Err(invalid(
                    "sasl_mechanism",
                    format!(
                        "`protocol` {} needs a mechanism: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `OAUTHBEARER` or `AWS_MSK_IAM`",
                        protocol.name().to_ascii_lowercase()
                    ),
                ));
            }
            if let Some((key, _)) = sasl_keys.iter().find(|(_, given)| *given) {
                return Err(invalid(
                    key,
                    "is a SASL setting, but no `sasl_mechanism` is set",
                ));
            }
            return Ok(());
        };
        if !protocol.sasl() {
            return Err(invalid(
                "sasl_mechanism",
                format!(
                    "SASL needs `protocol` = `sasl_ssl` (or `sasl_plaintext`), got `{}`",
                    protocol.name().to_ascii_lowercase()
                ),
            ));
        }
        if mechanism.takes_password() {
            if self.sasl_username.as_deref().is_none_or(str::is_empty) {
                return Err(invalid(
                    "sasl_username",
                    format!("{} needs a user name", mechanism.name()),
                ));
            }
            if self.sasl_password.is_none() {
                return Err(invalid(
                    "sasl_password",
                    format!(
                        "{} needs a password: `sasl_password` (e.g. \"${{KAFKA_PASSWORD}}\") or `sasl_password_file`",
                        mechanism.name()
                    ),
                ));
            }
        } else if let Some(key) = ["sasl_username", "sasl_password"]
            .into_iter()
            .find(|k| sasl_keys.iter().any(|(key, given)| key == k && *given))
        {
            return Err(invalid(
                key,
                format!("{} takes no user name or password", mechanism.name()),
            ));
        }
        if mechanism == Mechanism::OAuthBearer {
            let url = self.oauth_token_endpoint_url.as_deref().unwrap_or_default();
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid(
                    "oauth_token_endpoint_url",
                    format!("OAUTHBEARER needs the OIDC token endpoint (https://…), got {url:?}"),
                ));
            }
            if self.oauth_client_id.is_none() {
                return Err(invalid("oauth_client_id", "OAUTHBEARER needs a client id"));
            }
            if self.oauth_client_secret.is_none() {
                return Err(invalid(
                    "oauth_client_secret",
                    "OAUTHBEARER needs a client secret: `oauth_client_secret` or `oauth_client_secret_file`",
                ));
            }
        } else if let Some(key) = [
            (
                "oauth_token_endpoint_url",
                self.oauth_token_endpoint_url.is_some(),
            ),
            ("oauth_client_id", self.oauth_client_id.is_some()),
            ("oauth_client_secret", self.oauth_client_secret.is_some()),
            ("oauth_scope", self.oauth_scope.is_some()),
        ]
        .into_iter()
        .find_map(|(key, given)| given.then_some(key))
        {
            return Err(invalid(
                key,
                format!(
                    "is an OAUTHBEARER setting, but `sasl_mechanism` is {}",
                    mechanism.name()
                ),
            ));
        }
        if mechanism != Mechanism::AwsMskIam && self.aws_region.is_some() {
            return Err(invalid(
                "aws_region",
                format!(
                    "is an AWS_MSK_IAM setting, but `sasl_mechanism` is {}",
                    mechanism.name()
                ),
            ));
        }
        Ok(())
    }

    /// Sets the librdkafka properties for these settings.
    pub fn apply(&self, config: &mut ClientConfig) {
        config.set("security.protocol", self.protocol.name());
        if self.protocol.tls() {
            if let Some(file) = &self.ca_file {
                config.set("ssl.ca.location", file.display().to_string());
            }
            if let Some(pem) = &self.ca_pem {
                config.set("ssl.ca.pem", pem);
            }
            config.set(
                "ssl.endpoint.identification.algorithm",
                if self.verify_hostname {
                    "https"
                } else {
                    "none"
                },
            );
            if let Some(file) = &self.cert_file {
                config.set("ssl.certificate.location", file.display().to_string());
            }
            if let Some(file) = &self.key_file {
                config.set("ssl.key.location", file.display().to_string());
            }
            if let Some(password) = &self.key_password {
                config.set("ssl.key.password", password.expose());
            }
        }
        let Some(mechanism) = self.sasl_mechanism.filter(|_| self.protocol.sasl()) else {
            return;
        };
        config.set("sasl.mechanism", mechanism.librdkafka());
        if let Some(user) = &self.sasl_username {
            config.set("sasl.username", user);
        }
        if let Some(password) = &self.sasl_password {
            config.set("sasl.password", password.expose());
        }
        if mechanism == Mechanism::OAuthBearer {
            config.set("sasl.oauthbearer.method", "oidc");
            for (key, value) in [
                (
                    "sasl.oauthbearer.token.endpoint.url",
                    &self.oauth_token_endpoint_url,
                ),
                ("sasl.oauthbearer.client.id", &self.oauth_client_id),
                ("sasl.oauthbearer.scope", &self.oauth_scope),
            ] {
                if let Some(value) = value {
                    config.set(key, value);
                }
            }
            if let Some(secret) = &self.oauth_client_secret {
                config.set("sasl.oauthbearer.client.secret", secret.expose());
            }
        }
    }

    /// Every secret held, to be kept out of logs.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        [
            &self.sasl_password,
            &self.key_password,
            &self.oauth_client_secret,
        ]
        .into_iter()
        .flatten()
        .map(Secret::expose)
        .filter(|s| !s.is_empty())
    }
}

/// Secrets shorter than this are not scrubbed: they would mangle every
/// line (and are not worth stealing).
const SCRUB_MIN_LEN: usize = 4;

/// Replaces every occurrence of a secret in `line` with `***`.
pub fn scrub<'a>(line: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut line = line.to_owned();
    for secret in secrets {
        if secret.len() >= SCRUB_MIN_LEN && line.contains(secret) {
            line = line.replace(secret, "***");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SecurityConfig {
        toml::from_str(text).unwrap()
    }

    /// The properties set, secrets in clear (`config_map` hides them).
    fn properties(security: &SecurityConfig) -> std::collections::BTreeMap<String, String> {
        let mut config = ClientConfig::new();
        security.apply(&mut config);
        let keys: Vec<String> = config.config_map().keys().map(|k| k.to_string()).collect();
        keys.into_iter()
            .map(|k| {
                let v = config.get(&k).unwrap().to_owned();
                (k, v)
            })
            .collect()
    }

    #[test]
    fn scram_over_tls_maps_onto_librdkafka() {
        let security = parse(
            "protocol = \"SASL_SSL\"\nsasl_mechanism = \"scram-sha-512\"\n\
             sasl_username = \"sluice\"\nsasl_password = \"hunter2\"\nca_file = \"/ca.pem\"",
        );
        security.validate().unwrap();
        let p = properties(&security);
        assert_eq!(p["security.protocol"], "SASL_SSL");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(p["sasl.username"], "sluice");
        assert_eq!(p["sasl.password"], "hunter2");
        assert_eq!(p["ssl.ca.location"], "/ca.pem");
        assert_eq!(p["ssl.endpoint.identification.algorithm"], "https");
        assert_eq!(security.secrets().collect::<Vec<_>>(), ["hunter2"]);
    }

    #[test]
    fn secrets_never_print() {
        let security = parse(
            "protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\n\
             sasl_password = \"hunter2\"\nkey_password = \"k3y-pass\"",
        );
        let shown = format!("{security:?} {}", serde_json::to_string(&security).unwrap());
        assert!(
            !shown.contains("hunter2") && !shown.contains("k3y"),
            "{shown}"
        );
        assert_eq!(
            scrub("auth failed for hunter2 with k3y-pass", security.secrets()),
            "auth failed for *** with ***"
        );
        // Too short to scrub without mangling every line.
        assert_eq!(scrub("plaintext", ["x"]), "plaintext");
    }

    #[test]
    fn mtls_and_oidc_and_msk_iam() {
        let mtls = parse(
            "protocol = \"ssl\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n\
             key_password = \"pw\"\nverify_hostname = false",
        );
        mtls.validate().unwrap();
        let p = properties(&mtls);
        assert_eq!(p["ssl.certificate.location"], "c.pem");
        assert_eq!(p["ssl.key.location"], "k.pem");
        assert_eq!(p["ssl.key.password"], "pw");
        assert_eq!(p["ssl.endpoint.identification.algorithm"], "none");
        assert!(!p.contains_key("sasl.mechanism"));

        let oidc = parse(
            "protocol = \"sasl_ssl\"\nsasl_mechanism = \"OAUTHBEARER\"\n\
             oauth_token_endpoint_url = \"https://idp/token\"\noauth_client_id = \"sluice\"\n\
             oauth_client_secret = \"s3cret\"\noauth_scope = \"kafka\"",
        );
        oidc.validate().unwrap();
        let p = properties(&oidc);
        assert_eq!(p["sasl.oauthbearer.method"], "oidc");
        assert_eq!(
            p["sasl.oauthbearer.token.endpoint.url"],
            "https://idp/token"
        );
        assert_eq!(p["sasl.oauthbearer.client.secret"], "s3cret");
        assert_eq!(p["sasl.oauthbearer.scope"], "kafka");

        let iam = parse(
            "protocol = \"sasl_ssl\"\nsasl_mechanism = \"AWS_MSK_IAM\"\naws_region = \"eu-west-1\"",
        );
        iam.validate().unwrap();
        let p = properties(&iam);
        assert_eq!(p["sasl.mechanism"], "OAUTHBEARER");
        assert!(!p.contains_key("sasl.oauthbearer.method"));
    }

    #[test]
    fn mismatched_keys_are_named() {
        for (text, key, words) in [
            ("ca_file = \"x\"", "ca_file", "is a TLS setting"),
            (
                "protocol = \"sasl_ssl\"",
                "sasl_mechanism",
                "needs a mechanism",
            ),
            (
                "protocol = \"ssl\"\nsasl_mechanism = \"PLAIN\"",
                "sasl_mechanism",
                "SASL needs `protocol`",
            ),
            (
                "protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"",
                "sasl_password",
                "needs a password",
            ),
            (
                "protocol = \"ssl\"\ncert_file = \"c\"",
                "key_file",
                "needs both",
            ),
            (
                "protocol = \"sasl_ssl\"\nsasl_mechanism = \"OAUTHBEARER\"",
                "oauth_token_endpoint_url",
                "token endpoint",
            ),
            (
                "protocol = \"sasl_ssl\"\nsasl_mechanism = \"AWS_MSK_IAM\"\nsasl_username = \"u\"",
                "sasl_username",
                "takes no user name",
            ),
            (
                "protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"u\"\n\
                 sasl_password = \"p\"\naws_region = \"x\"",
                "aws_region",
                "AWS_MSK_IAM setting",
            ),
        ] {
            let error = parse(text).validate().unwrap_err();
            assert_eq!(error.key, key, "{text}");
            assert!(error.message.contains(words), "{text}: {}", error.message);
        }
    }

    #[test]
    fn secret_files_are_read_once_with_the_newline_dropped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("password"), "from-a-file\n").unwrap();
        let mut security = parse("sasl_password_file = \"password\"");
        security.read_secret_files(dir.path()).unwrap();
        assert_eq!(security.sasl_password.unwrap().expose(), "from-a-file");

        let mut both = parse("sasl_password = \"x\"\nsasl_password_file = \"password\"");
        assert!(
            both.read_secret_files(dir.path())
                .unwrap_err()
                .message
                .contains("not both")
        );
        let mut missing = parse("key_password_file = \"nope\"");
        let error = missing.read_secret_files(dir.path()).unwrap_err();
        assert_eq!(error.key, "key_password_file");
        assert!(error.message.contains("nope"), "{}", error.message);
    }
}
