//! The metrics port: `/metrics` (Prometheus text), `/healthz` (the process
//! answers) and `/readyz` (in the consumer group and the store reachable),
//! for Kubernetes probes and scrapers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tracing::debug;

use crate::store::ObjectStore;

/// How long `/readyz` waits for the store.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often histograms are compacted.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// What `/readyz` checks.
#[derive(Debug)]
pub struct Health {
    joined: AtomicBool,
    /// Why Kafka refuses sluice (TLS, SASL, ACLs), while it does.
    refused: Mutex<Option<String>>,
    store: Arc<dyn ObjectStore>,
    /// Listed to check the store answers (the sink's manifests).
    probe_prefix: String,
}

impl Health {
    pub fn new(store: Arc<dyn ObjectStore>, probe_prefix: String) -> Arc<Health> {
        Arc::new(Health {
            joined: AtomicBool::new(false),
            refused: Mutex::new(None),
            store,
            probe_prefix,
        })
    }

    /// Whether the consumer is a member of its group now.
    pub fn set_joined(&self, joined: bool) {
        self.joined.store(joined, Ordering::Relaxed);
    }

    /// Why Kafka refuses sluice now (`None`: it does not).
    pub fn set_refused(&self, why: Option<String>) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// `Ok` when ready to take traffic, else what is missing.
    pub async fn ready(&self) -> Result<(), String> {
        if let Some(why) = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(format!("Kafka refuses sluice: {why}"));
        }
        if !self.joined.load(Ordering::Relaxed) {
            return Err("not a member of the consumer group yet".to_owned());
        }
        match tokio::time::timeout(STORE_PROBE_TIMEOUT, self.store.list(&self.probe_prefix)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("store unreachable: {e}")),
            Err(_) => Err(format!(
                "store unreachable: no answer within {STORE_PROBE_TIMEOUT:?}"
            )),
        }
    }
}

/// Installs the Prometheus recorder. Must be called before any metric is
/// created.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("sluice_commit_latency_seconds".into()),
            &[
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                ],
            )
        })
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))
}

/// Binds `listen` and serves the endpoints in the background. Must be
/// called inside a Tokio runtime.
pub async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    health: Arc<Health>,
) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot serve metrics on {listen}: {e}"))?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (metrics, health) = (metrics.clone(), health.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let (metrics, health) = (metrics.clone(), health.clone());
                    async move { Ok::<_, Infallible>(respond(&request, &metrics, &health).await) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(error = %e, "metrics connection ended");
                }
            });
        }
    });
    Ok(())
}

async fn respond(
    request: &Request<Incoming>,
    metrics: &PrometheusHandle,
    health: &Health,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, metrics.render());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => match health.ready().await {
            Ok(()) => text(StatusCode::OK, "ready\n".to_owned()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
