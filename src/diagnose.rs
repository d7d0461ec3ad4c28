//! Why a connection to Kafka fails, in one line naming the step: TCP, the
//! TLS handshake, SASL authentication or authorization.
//!
//! librdkafka reports these as log lines and error callbacks with its own
//! wording (and, for TLS, the same "certificate verify failed" whether the
//! CA is unknown or the host name does not match). [`classify`] turns
//! them into one line; [`probe_tls`] makes a handshake of its own with
//! the same CA, certificate and key, which tells those cases apart and
//! reports the negotiated version and the broker's certificate.

use std::fmt;
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::pkey::PKey;
use openssl::ssl::{HandshakeError, SslConnector, SslMethod};
use openssl::x509::X509;
use rdkafka::ClientContext;
use rdkafka::client::OAuthToken;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::KafkaConfig;
use crate::msk_iam::MskIam;
use crate::security::{Protocol, SecurityConfig, scrub};

/// The step of connecting that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Tcp,
    Tls,
    Sasl,
    Authorization,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Tcp => "TCP",
            Step::Tls => "TLS handshake",
            Step::Sasl => "SASL authentication",
            Step::Authorization => "authorization",
        })
    }
}

/// A failed step and what happened, for one line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub step: Step,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.message)
    }
}

impl Failure {
    fn new(step: Step, message: impl Into<String>) -> Failure {
        Failure {
            step,
            message: message.into(),
        }
    }

    /// Whether retrying cannot help: credentials, certificates or ACLs
    /// must change first.
    pub fn is_auth(&self) -> bool {
        matches!(self.step, Step::Tls | Step::Sasl | Step::Authorization)
    }
}

/// Who sluice is to the brokers, for messages.
pub fn principal(security: &SecurityConfig) -> String {
    match (&security.sasl_username, security.sasl_mechanism) {
        (Some(user), _) if security.protocol.sasl() => format!("user `{user}`"),
        (_, Some(mechanism)) if security.protocol.sasl() => {
            format!("the {} principal", mechanism.name())
        }
        _ if security.cert_file.is_some() => "the client certificate's principal".to_owned(),
        _ => "ANONYMOUS".to_owned(),
    }
}

/// The one-line reason for an error librdkafka reported, if it is a
/// connection failure (`None` for anything else).
pub fn classify(
    code: Option<RDKafkaErrorCode>,
    reason: &str,
    security: &SecurityConfig,
) -> Option<Failure> {
    // "sasl_ssl://host:9094/bootstrap: <what> (after 3ms in state X)"
    let what = reason
        .split_once("/bootstrap: ")
        .or_else(|| reason.split_once(": "))
        .map_or(reason, |(_, rest)| rest);
    let what = what.split(" (after ").next().unwrap_or(what).trim();
    let broker = broker_of(reason);
    if let Some(detail) = what.strip_prefix("SASL authentication error: ") {
        let mechanism = security.sasl_mechanism.map_or("SASL", |m| m.name());
        return Some(Failure::new(
            Step::Sasl,
            format!(
                "{broker} refused {} with {mechanism}: {detail}",
                principal(security)
            ),
        ));
    }
    if what.contains("SASL") && code == Some(RDKafkaErrorCode::Authentication) {
        return Some(Failure::new(Step::Sasl, format!("{broker}: {what}")));
    }
    if what.contains("certificate verify failed") {
        return Some(Failure::new(
            Step::Tls,
            format!(
                "{broker}'s certificate could not be verified: its CA is not in `ca_file`/`ca_pem` (or the system's), or it does not name the host connected to"
            ),
        ));
    }
    if what.contains("alert bad certificate")
        || what.contains("certificate required")
        || what.contains("alert unknown ca")
    {
        return Some(Failure::new(
            Step::Tls,
            if security.cert_file.is_none() {
                format!(
                    "{broker} requires a client certificate (mTLS): set `kafka.security.cert_file` and `key_file`"
                )
            } else {
                format!(
                    "{broker} refused the client certificate (is it signed by a CA the broker trusts?)"
                )
            },
        ));
    }
    if what.contains("connecting to a PLAINTEXT broker listener") {
        return Some(Failure::new(
            Step::Tls,
            format!(
                "{broker} does not speak TLS: is `kafka.security.protocol` right for this listener?"
            ),
        ));
    }
    if what.contains("incorrect security.protocol") {
        return Some(Failure::new(
            Step::Tls,
            format!(
                "{broker} closed the connection: is `kafka.security.protocol` right for this listener? ({what})"
            ),
        ));
    }
    if what.starts_with("Connect to ") || what.starts_with("Failed to resolve") {
        return Some(Failure::new(Step::Tcp, what.to_owned()));
    }
    if code == Some(RDKafkaErrorCode::Authentication) || code == Some(RDKafkaErrorCode::SSL) {
        let step = if code == Some(RDKafkaErrorCode::SSL) {
            Step::Tls
        } else {
            Step::Sasl
        };
        return Some(Failure::new(step, format!("{broker}: {what}")));
    }
    None
}

/// `sasl_ssl://localhost:9094` from a librdkafka reason.
fn broker_of(reason: &str) -> String {
    let reason = match reason.strip_prefix("[thrd:") {
        Some(rest) => rest.split_once("]: ").map_or(rest, |(_, rest)| rest),
        None => reason,
    };
    let name = reason.split(": ").next().unwrap_or_default();
    let name = name.strip_suffix("/bootstrap").unwrap_or(name);
    let name = name.rsplit_once('/').map_or(name, |(host, id)| {
        if id.chars().all(|c| c.is_ascii_digit()) {
            host
        } else {
            name
        }
    });
    if name.contains("://") {
        format!("the broker {name}")
    } else {
        "the broker".to_owned()
    }
}

/// An authorization error the brokers returned, as one line.
pub fn denied(
    code: RDKafkaErrorCode,
    security: &SecurityConfig,
    topic: &str,
    group: &str,
) -> Option<Failure> {
    let (what, name) = match code {
        RDKafkaErrorCode::TopicAuthorizationFailed => ("topic", topic),
        RDKafkaErrorCode::GroupAuthorizationFailed => ("consumer group", group),
        RDKafkaErrorCode::ClusterAuthorizationFailed => ("cluster", ""),
        _ => return None,
    };
    Some(Failure::new(
        Step::Authorization,
        format!(
            "the brokers' ACLs deny {} the {what} {name} ({code})",
            principal(security)
        )
        .replace("  ", " "),
    ))
}

/// Records what the client reports, scrubbed of secrets, so that a failed
/// request can say why and a run can tell how long Kafka has been refusing
/// it. Logs nothing itself.
pub struct Recorder {
    security: SecurityConfig,
    /// Kept out of everything recorded.
    secrets: Vec<String>,
    /// Signs OAUTHBEARER tokens (AWS_MSK_IAM).
    tokens: Option<Arc<MskIam>>,
    topic: String,
    group: String,
    state: Mutex<Recorded>,
}

#[derive(Default)]
struct Recorded {
    failures: Vec<Failure>,
    /// When the first failure no retry mends was reported, since the
    /// last [`Recorder::clear`].
    refused_since: Option<Instant>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// How many distinct failures are kept.
const KEPT: usize = 16;

impl Recorder {
    pub fn new(kafka: &KafkaConfig, tokens: Option<Arc<MskIam>>) -> Recorder {
        Recorder {
            security: kafka.security.clone(),
            secrets: kafka.secrets().into_iter().map(str::to_owned).collect(),
            tokens,
            topic: kafka.topic.clone(),
            group: kafka.group_id.clone(),
            state: Mutex::new(Recorded::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most telling failure reported so far: authentication and TLS
    /// before TCP.
    pub fn failure(&self) -> Option<Failure> {
        let state = self.state();
        state
            .failures
            .iter()
            .find(|f| f.step != Step::Tcp)
            .or_else(|| state.failures.first())
            .cloned()
    }

    /// `line` without the secrets of the config.
    pub fn scrub(&self, line: &str) -> String {
        scrub(line, self.secrets.iter().map(String::as_str))
    }

    /// Takes in an error the client reported (`reason` already scrubbed).
    /// Returns the failure it means, and whether it is new since the last
    /// [`Recorder::clear`].
    pub fn record(&self, code: Option<RDKafkaErrorCode>, reason: &str) -> Option<(Failure, bool)> {
        let failure = code
            .and_then(|code| denied(code, &self.security, &self.topic, &self.group))
            .or_else(|| classify(code, reason, &self.security))?;
        let mut state = self.state();
        if failure.is_auth() {
            state.refused_since.get_or_insert_with(Instant::now);
        }
        let new = !state.failures.contains(&failure);
        if new && state.failures.len() < KEPT {
            state.failures.push(failure.clone());
        }
        Some((failure, new))
    }

    /// The client works now (e.g. it joined its group): what it reported
    /// before no longer holds.
    pub fn clear(&self) {
        let mut state = self.state();
        if state.refused_since.is_some() || !state.failures.is_empty() {
            *state = Recorded::default();
        }
    }

    /// The failure no retry mends, once it has lasted `timeout`.
    pub fn refused_for(&self, timeout: Duration) -> Option<Failure> {
        let since = self.state().refused_since?;
        if since.elapsed() < timeout {
            return None;
        }
        self.failure().filter(Failure::is_auth)
    }
}

impl Recorder {
    /// A token for librdkafka's OAUTHBEARER refresh, from the token source.
    pub fn oauth_token(&self) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let tokens = self
            .tokens
            .as_ref()
            .ok_or("no OAUTHBEARER token source is configured")?;
        tokens.token()
    }
}

impl ClientContext for Recorder {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.oauth_token()
    }

    fn log(&self, level: RDKafkaLogLevel, _: &str, line: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            self.record(None, &self.scrub(line));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.record(error.rdkafka_error_code(), &self.scrub(reason));
    }
}

impl ConsumerContext for Recorder {}

/// What a TLS handshake with a broker negotiated.
#[derive(Debug, Clone)]
pub struct Tls {
    pub version: &'static str,
    /// The broker certificate's subject, `CN=…`.
    pub subject: String,
    /// When it expires, as OpenSSL prints it.
    pub not_after: String,
}

impl fmt::Display for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, broker certificate {} (expires {})",
            self.version, self.subject, self.not_after
        )
    }
}

// OpenSSL's X509_V_ERR_* numbers (x509_vfy.h) that name what went wrong.
const CERT_NOT_YET_VALID: i32 = 9;
const CERT_HAS_EXPIRED: i32 = 10;
const DEPTH_ZERO_SELF_SIGNED_CERT: i32 = 18;
const SELF_SIGNED_CERT_IN_CHAIN: i32 = 19;
const UNABLE_TO_GET_ISSUER_CERT_LOCALLY: i32 = 20;
const UNABLE_TO_VERIFY_LEAF_SIGNATURE: i32 = 21;
const HOSTNAME_MISMATCH: i32 = 62;
const IP_ADDRESS_MISMATCH: i32 = 64;

/// Connects to `broker` (`host:port`) over TCP and makes a TLS handshake
/// with the CA, client certificate and key of `security`, as librdkafka
/// would. Returns what was negotiated, or the step that failed.
pub fn probe_tls(
    broker: &str,
    security: &SecurityConfig,
    timeout: Duration,
) -> Result<Tls, Failure> {
    debug_assert!(matches!(
        security.protocol,
        Protocol::Ssl | Protocol::SaslSsl
    ));
    let host = broker.rsplit_once(':').map_or(broker, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = |message: String| Failure::new(Step::Tcp, message);
    let address = broker
        .to_socket_addrs()
        .map_err(|e| tcp(format!("cannot resolve {broker}: {e}")))?
        .next()
        .ok_or_else(|| tcp(format!("{broker} resolves to no address")))?;
    let stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| tcp(format!("cannot connect to {broker}: {e}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| tcp(format!("{broker}: {e}")))?;

    let tls = |message: String| Failure::new(Step::Tls, message);
    let mut builder = SslConnector::builder(SslMethod::tls_client())
        .map_err(|e| tls(format!("cannot set up TLS: {e}")))?;
    if let Some(file) = &security.ca_file {
        builder
            .set_ca_file(file)
            .map_err(|e| tls(format!("cannot read `ca_file` {}: {e}", file.display())))?;
    }
    if let Some(pem) = &security.ca_pem {
        let certificates = X509::stack_from_pem(pem.as_bytes())
            .map_err(|e| tls(format!("cannot read `ca_pem`: {e}")))?;
        for certificate in certificates {
            builder
                .cert_store_mut()
                .add_cert(certificate)
                .map_err(|e| tls(format!("cannot use `ca_pem`: {e}")))?;
        }
    }
    if let (Some(cert), Some(key)) = (&security.cert_file, &security.key_file) {
        builder
            .set_certificate_chain_file(cert)
            .map_err(|e| tls(format!("cannot read `cert_file` {}: {e}", cert.display())))?;
        let pem = std::fs::read(key)
            .map_err(|e| tls(format!("cannot read `key_file` {}: {e}", key.display())))?;
        let password = security
            .key_password
            .as_ref()
            .map(|p| p.expose().as_bytes());
        let key_pair = match password {
            Some(password) => PKey::private_key_from_pem_passphrase(&pem, password),
            None => PKey::private_key_from_pem(&pem),
        }
        .map_err(|_| {
            tls(format!(
                "cannot read the client key {}: not a PEM private key, or `key_password` is wrong or missing",
                key.display()
            ))
        })?;
        builder
            .set_private_key(&key_pair)
            .and_then(|()| builder.check_private_key())
            .map_err(|e| tls(format!("the client key does not fit `cert_file`: {e}")))?;
    }
    let mut config = builder
        .build()
        .configure()
        .map_err(|e| tls(format!("cannot set up TLS: {e}")))?;
    config.set_verify_hostname(security.verify_hostname);
    let mut stream = match config.connect(host, stream) {
        Ok(stream) => stream,
        Err(HandshakeError::Failure(mid)) => {
            let result = mid.ssl().verify_result();
            let why = match result.as_raw() {
                0 => {
                    let error = mid.error().to_string();
                    if error.contains("wrong version number") || error.contains("packet length") {
                        format!(
                            "{broker} does not speak TLS: is `kafka.security.protocol` right for this listener?"
                        )
                    } else {
                        format!("{broker}: {error}")
                    }
                }
                HOSTNAME_MISMATCH | IP_ADDRESS_MISMATCH => format!(
                    "{broker}'s certificate does not name `{host}` (host name mismatch); connect by a name it has, or set `verify_hostname = false`"
                ),
                CERT_HAS_EXPIRED => format!("{broker}'s certificate has expired"),
                CERT_NOT_YET_VALID => format!("{broker}'s certificate is not valid yet"),
                UNABLE_TO_GET_ISSUER_CERT_LOCALLY
                | UNABLE_TO_VERIFY_LEAF_SIGNATURE
                | SELF_SIGNED_CERT_IN_CHAIN
                | DEPTH_ZERO_SELF_SIGNED_CERT => format!(
                    "{broker}'s certificate is not signed by a trusted CA ({result}): set `kafka.security.ca_file` to the CA that signed it"
                ),
                _ => format!("{broker}'s certificate was refused: {result}"),
            };
            return Err(tls(why));
        }
        Err(HandshakeError::SetupFailure(e)) => return Err(tls(format!("cannot set up TLS: {e}"))),
        Err(HandshakeError::WouldBlock(_)) => {
            return Err(tls(format!("{broker}: no TLS answer within {timeout:?}")));
        }
    };
    // TLS 1.3 servers refuse a client certificate after the handshake: an
    // alert arrives on the first read. A broker says nothing unasked, so a
    // short read that times out means the certificate was accepted.
    let _ = stream
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)));
    if let Err(e) = stream.read(&mut [0u8; 1]) {
        let text = e.to_string();
        if text.contains("certificate") || text.contains("unknown ca") {
            return Err(tls(if security.cert_file.is_none() {
                format!(
                    "{broker} requires a client certificate (mTLS): set `kafka.security.cert_file` and `key_file`"
                )
            } else {
                format!("{broker} refused the client certificate: {text}")
            }));
        }
    }
    let ssl = stream.ssl();
    let certificate = ssl.peer_certificate();
    let subject = certificate.as_ref().map_or_else(String::new, |c| {
        c.subject_name()
            .entries()
            .map(|e| {
                format!(
                    "{}={}",
                    e.object().nid().short_name().unwrap_or("?"),
                    e.data().to_string().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    });
    Ok(Tls {
        version: ssl.version_str(),
        subject,
        not_after: certificate
            .as_ref()
            .map_or_else(String::new, |c| c.not_after().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scram() -> SecurityConfig {
        toml::from_str(
            "protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
             sasl_username = \"sluice\"\nsasl_password = \"hunter2\"",
        )
        .unwrap()
    }

    #[test]
    fn librdkafka_reasons_become_one_line_naming_the_step() {
        let security = scram();
        let failure = classify(
            Some(RDKafkaErrorCode::Authentication),
            "sasl_ssl://localhost:9094/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 313ms in state AUTH_REQ)",
            &security,
        )
        .unwrap();
        assert_eq!(failure.step, Step::Sasl);
        assert_eq!(
            failure.to_string(),
            "SASL authentication: the broker sasl_ssl://localhost:9094 refused user `sluice` with SCRAM-SHA-512: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"
        );
        let failure = classify(
            Some(RDKafkaErrorCode::BrokerTransportFailure),
            "ssl://localhost:9095/bootstrap: Receive failed: error:0A000412:SSL routines::sslv3 alert bad certificate: SSL alert number 42 (after 0ms in state APIVERSION_QUERY)",
            &SecurityConfig::default(),
        )
        .unwrap();
        assert_eq!(failure.step, Step::Tls);
        assert!(
            failure.message.contains("requires a client certificate"),
            "{failure}"
        );
        let failure = classify(
            None,
            "sasl_ssl://127.0.0.1:9999/bootstrap: Connect to ipv4#127.0.0.1:9999 failed: Connection refused (after 0ms in state CONNECT)",
            &security,
        )
        .unwrap();
        assert_eq!(
            failure.to_string(),
            "TCP: Connect to ipv4#127.0.0.1:9999 failed: Connection refused"
        );
        assert!(classify(None, "1/1 brokers are down", &security).is_none());
    }

    #[test]
    fn the_recorder_prefers_auth_to_tcp_and_scrubs_secrets() {
        let kafka: KafkaConfig = toml::from_str(
            "brokers = \"b\"\ntopic = \"t\"\ngroup_id = \"g\"\n[security]\nprotocol = \"sasl_ssl\"\n\
             sasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"sluice\"\nsasl_password = \"hunter2\"",
        )
        .unwrap();
        let recorder = Recorder::new(&kafka, None);
        recorder.error(
            KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "sasl_ssl://h:1/bootstrap: Connect to ipv4#1.2.3.4:1 failed: Connection refused",
        );
        assert!(
            recorder.refused_for(Duration::ZERO).is_none(),
            "TCP is retried"
        );
        recorder.error(
            KafkaError::Global(RDKafkaErrorCode::Authentication),
            "sasl_ssl://h:1/bootstrap: SASL authentication error: bad password hunter2 (after 1ms in state AUTH_REQ)",
        );
        let failure = recorder.failure().unwrap();
        assert_eq!(failure.step, Step::Sasl);
        assert!(failure.message.contains("bad password ***"), "{failure}");
        assert_eq!(recorder.refused_for(Duration::ZERO), Some(failure));
        assert!(recorder.refused_for(Duration::from_secs(60)).is_none());
        recorder.clear();
        assert!(recorder.refused_for(Duration::ZERO).is_none());
        let (failure, new) = recorder
            .record(
                Some(RDKafkaErrorCode::GroupAuthorizationFailed),
                "FindCoordinator response error: Group authorization failed.",
            )
            .unwrap();
        assert!(new);
        assert_eq!(failure.step, Step::Authorization);
        assert!(
            !recorder
                .record(Some(RDKafkaErrorCode::GroupAuthorizationFailed), "again")
                .unwrap()
                .1
        );
    }

    #[test]
    fn denials_name_the_resource_and_the_principal() {
        let failure = denied(
            RDKafkaErrorCode::GroupAuthorizationFailed,
            &scram(),
            "t",
            "g",
        )
        .unwrap();
        assert_eq!(failure.step, Step::Authorization);
        assert!(
            failure
                .message
                .contains("user `sluice` the consumer group g"),
            "{failure}"
        );
        assert!(denied(RDKafkaErrorCode::UnknownTopic, &scram(), "t", "g").is_none());
    }
}
