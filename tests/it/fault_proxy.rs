//! An HTTP proxy between sluice and moto that injects the faults S3 and SQS
//! show in production: 500 `InternalError` and 503 `SlowDown`, SQS JSON
//! errors, `200 OK` with an `<Error>` body (CopyObject,
//! CompleteMultipartUpload), partial `SendMessageBatch` failures, reset
//! connections, stalls, and requests applied by moto whose response is
//! lost. sluice reaches it through `AWS_ENDPOINT_URL`, so S3 and SQS calls
//! both pass through it.
//!
//! Faults follow a plan, not chance: each rule gives every `every`-th
//! request of an operation the next fault of its list that applies to it,
//! so a run that makes enough requests meets every fault on every
//! operation, and [`FaultProxy::injected`] tells which ones it met.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderValue, TRANSFER_ENCODING};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

/// What a request does, as far as faults are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// PUT of a manifest (`…/_sluice/manifests/….json`, `If-None-Match: *`).
    ManifestPut,
    /// PUT of a `.notified` marker.
    MarkerPut,
    /// Any other PUT of a whole object (data and dead-letter files).
    ObjectPut,
    CreateUpload,
    UploadPart,
    CompleteUpload,
    /// CopyObject (publishing a staged or streamed file).
    Copy,
    /// DeleteObject, AbortMultipartUpload.
    Delete,
    /// GET, HEAD and listings.
    Read,
    SendMessageBatch,
    /// Other SQS calls.
    Sqs,
}

impl Op {
    pub const ALL: [Op; 11] = [
        Op::ManifestPut,
        Op::MarkerPut,
        Op::ObjectPut,
        Op::CreateUpload,
        Op::UploadPart,
        Op::CompleteUpload,
        Op::Copy,
        Op::Delete,
        Op::Read,
        Op::SendMessageBatch,
        Op::Sqs,
    ];

    fn of(request: &Request<Incoming>) -> Op {
        let headers = request.headers();
        if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
            return if target.ends_with(".SendMessageBatch") {
                Op::SendMessageBatch
            } else {
                Op::Sqs
            };
        }
        let path = request.uri().path();
        let query = request.uri().query().unwrap_or("");
        let has = |name: &str| {
            query
                .split('&')
                .any(|p| p == name || p.starts_with(&format!("{name}=")))
        };
        match request.method().as_str() {
            "PUT" if headers.contains_key("x-amz-copy-source") => Op::Copy,
            "PUT" if has("partNumber") => Op::UploadPart,
            "PUT" if path.contains("/_sluice/manifests/") && path.ends_with(".json") => {
                Op::ManifestPut
            }
            "PUT" if path.ends_with(".notified") => Op::MarkerPut,
            "PUT" => Op::ObjectPut,
            "POST" if has("uploads") => Op::CreateUpload,
            "POST" if has("uploadId") => Op::CompleteUpload,
            "POST" if has("delete") => Op::Delete,
            "DELETE" => Op::Delete,
            _ => Op::Read,
        }
    }

    fn is_sqs(self) -> bool {
        matches!(self, Op::SendMessageBatch | Op::Sqs)
    }

    /// Whether the request changes something, so that losing its response
    /// differs from failing it.
    fn mutates(self) -> bool {
        !matches!(self, Op::Read | Op::Sqs)
    }
}

/// One way a request can go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// S3: `500` with `<Code>InternalError</Code>`; not applied.
    InternalError,
    /// S3: `503` with `<Code>SlowDown</Code>`; not applied.
    SlowDown,
    /// S3 CopyObject and CompleteMultipartUpload: `200 OK` whose body is an
    /// `<Error>`; not applied.
    ErrorIn200,
    /// SQS: `500` with a JSON `InternalError`; not applied.
    SqsError,
    /// SendMessageBatch: some entries reach the queue, the others come back
    /// in `Failed`.
    PartialBatch,
    /// The connection is closed before the request reaches moto.
    Reset,
    /// The answer comes after [`Plan::stall`] (longer than sluice's request
    /// timeout in the tests that use it, so the attempt is abandoned); the
    /// request is applied all the same.
    Stall,
    /// moto applies the request, the connection is closed before the
    /// response.
    ResponseLost,
}

impl Fault {
    pub const ALL: [Fault; 8] = [
        Fault::InternalError,
        Fault::SlowDown,
        Fault::ErrorIn200,
        Fault::SqsError,
        Fault::PartialBatch,
        Fault::Reset,
        Fault::Stall,
        Fault::ResponseLost,
    ];

    pub fn applies_to(self, op: Op) -> bool {
        match self {
            Fault::InternalError | Fault::SlowDown => !op.is_sqs(),
            Fault::ErrorIn200 => matches!(op, Op::Copy | Op::CompleteUpload),
            Fault::SqsError => op.is_sqs(),
            Fault::PartialBatch => op == Op::SendMessageBatch,
            Fault::Reset | Fault::Stall => true,
            Fault::ResponseLost => op.mutates(),
        }
    }
}

/// Every `every`-th request of one of `ops` gets a fault: the next of
/// `faults` that applies to its operation.
#[derive(Debug, Clone)]
pub struct Rule {
    pub ops: Vec<Op>,
    pub faults: Vec<Fault>,
    pub every: u64,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub rules: Vec<Rule>,
    /// How long a [`Fault::Stall`] holds the answer back.
    pub stall: Duration,
}

impl Plan {
    /// Every fault on every operation it applies to, every `every`-th
    /// request of each operation.
    pub fn everything(every: u64, stall: Duration) -> Plan {
        Plan {
            rules: vec![Rule {
                ops: Op::ALL.to_vec(),
                faults: Fault::ALL.to_vec(),
                every,
            }],
            stall,
        }
    }

    fn pick(&self, op: Op, nth: u64) -> Option<Fault> {
        self.rules.iter().find_map(|rule| {
            if !rule.ops.contains(&op) || rule.every == 0 || !nth.is_multiple_of(rule.every) {
                return None;
            }
            let usable: Vec<Fault> = rule
                .faults
                .iter()
                .copied()
                .filter(|f| f.applies_to(op))
                .collect();
            let turn = (nth / rule.every - 1) as usize;
            (!usable.is_empty()).then(|| usable[turn % usable.len()])
        })
    }
}

struct State {
    upstream: SocketAddr,
    plan: Plan,
    enabled: AtomicBool,
    /// Operations whose requests wait until they are released.
    held: Mutex<Vec<Op>>,
    released: tokio::sync::Notify,
    seen: Mutex<BTreeMap<Op, u64>>,
    /// Per S3 operation, requests without `x-amz-expected-bucket-owner`.
    ownerless: Mutex<BTreeMap<Op, u64>>,
    /// Per S3 operation, requests whose body was not signed
    /// (`x-amz-content-sha256` of an `UNSIGNED` kind).
    unsigned: Mutex<BTreeMap<Op, u64>>,
    injected: Mutex<BTreeMap<(Op, Fault), u64>>,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`: the value for `AWS_ENDPOINT_URL`.
    pub url: String,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FaultProxy {
    /// Proxies to `upstream` (`http://host:port`, moto) following `plan`.
    pub fn start(upstream: &str, plan: Plan) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("the upstream is http://ip:port");
        let state = Arc::new(State {
            upstream,
            plan,
            enabled: AtomicBool::new(true),
            held: Mutex::new(Vec::new()),
            released: tokio::sync::Notify::new(),
            seen: Mutex::new(BTreeMap::new()),
            ownerless: Mutex::new(BTreeMap::new()),
            unsigned: Mutex::new(BTreeMap::new()),
            injected: Mutex::new(BTreeMap::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stopped) = tokio::sync::oneshot::channel();
        let serving = state.clone();
        // A runtime of its own: the tests block their threads while they wait.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    _ = accept(listener, serving) => {}
                    _ = stopped => {}
                }
            });
            runtime.shutdown_background();
        });
        FaultProxy {
            url,
            state,
            shutdown: Some(shutdown),
        }
    }

    /// Stops or resumes injecting faults (requests pass either way).
    pub fn set_enabled(&self, enabled: bool) {
        self.state.enabled.store(enabled, Ordering::SeqCst);
    }

    /// Requests of `op` wait (before reaching moto) until [`Self::release`].
    pub fn hold(&self, op: Op) {
        self.state.held.lock().unwrap().push(op);
    }

    /// Lets held requests through, and those that follow.
    pub fn release(&self) {
        self.state.held.lock().unwrap().clear();
        self.state.released.notify_waiters();
    }

    /// How often each fault was injected into each operation.
    pub fn injected(&self) -> BTreeMap<(Op, Fault), u64> {
        self.state.injected.lock().unwrap().clone()
    }

    /// Requests seen per operation.
    pub fn seen(&self) -> BTreeMap<Op, u64> {
        self.state.seen.lock().unwrap().clone()
    }

    /// S3 requests per operation that did not say which account must own
    /// the bucket (`x-amz-expected-bucket-owner`).
    pub fn ownerless(&self) -> BTreeMap<Op, u64> {
        self.state.ownerless.lock().unwrap().clone()
    }

    /// S3 requests per operation whose body was not part of the signature.
    pub fn unsigned(&self) -> BTreeMap<Op, u64> {
        self.state.unsigned.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { handle(&state, request).await }
            });
            // A fault that closes the connection ends it with an error.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Closes the connection without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the fault proxy")
    }
}

impl std::error::Error for Dropped {}

type Answer = Result<Response<Full<Bytes>>, Dropped>;

async fn handle(state: &State, request: Request<Incoming>) -> Answer {
    let op = Op::of(&request);
    if !matches!(op, Op::SendMessageBatch | Op::Sqs)
        && !request
            .headers()
            .contains_key("x-amz-expected-bucket-owner")
    {
        *state.ownerless.lock().unwrap().entry(op).or_default() += 1;
    }
    if request
        .headers()
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("UNSIGNED"))
    {
        *state.unsigned.lock().unwrap().entry(op).or_default() += 1;
    }
    let nth = {
        let mut seen = state.seen.lock().unwrap();
        let n = seen.entry(op).or_default();
        *n += 1;
        *n
    };
    loop {
        let released = state.released.notified();
        if !state.held.lock().unwrap().contains(&op) {
            break;
        }
        released.await;
    }
    let fault = state
        .enabled
        .load(Ordering::SeqCst)
        .then(|| state.plan.pick(op, nth))
        .flatten();
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    let Some(fault) = fault else {
        return forward(state, &parts, body).await;
    };
    *state
        .injected
        .lock()
        .unwrap()
        .entry((op, fault))
        .or_default() += 1;
    match fault {
        Fault::InternalError => Ok(s3_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "We encountered an internal error. Please try again.",
        )),
        Fault::SlowDown => Ok(s3_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "Please reduce your request rate.",
        )),
        Fault::ErrorIn200 => Ok(s3_error(
            StatusCode::OK,
            "InternalError",
            "We encountered an internal error. Please try again.",
        )),
        Fault::SqsError => Ok(respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/x-amz-json-1.0",
            json!({
                "__type": "com.amazonaws.sqs#InternalError",
                "message": "We encountered an internal error. Please try again."
            })
            .to_string(),
        )),
        Fault::PartialBatch => partial_batch(state, &parts, body).await,
        Fault::Reset => Err(Dropped),
        Fault::Stall => {
            tokio::time::sleep(state.plan.stall).await;
            forward(state, &parts, body).await
        }
        Fault::ResponseLost => {
            forward(state, &parts, body).await?;
            Err(Dropped)
        }
    }
}

/// Sends the request to moto and returns its answer.
async fn forward(state: &State, parts: &hyper::http::request::Parts, body: Bytes) -> Answer {
    let stream = TcpStream::connect(state.upstream)
        .await
        .map_err(|_| Dropped)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Dropped)?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .body(Full::new(body.clone()))
        .map_err(|_| Dropped)?;
    *request.headers_mut() = parts.headers.clone();
    let headers = request.headers_mut();
    headers.remove(TRANSFER_ENCODING);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    let response = sender.send_request(request).await.map_err(|_| Dropped)?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
    let mut response = Response::from_parts(parts, Full::new(body.clone()));
    response.headers_mut().remove(TRANSFER_ENCODING);
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    Ok(response)
}

/// Forwards all entries of a batch but its first (or the only one), and
/// answers for that one with a failure.
async fn partial_batch(state: &State, parts: &hyper::http::request::Parts, body: Bytes) -> Answer {
    let mut batch: Value = serde_json::from_slice(&body).map_err(|_| Dropped)?;
    let entries = batch["Entries"].as_array_mut().ok_or(Dropped)?;
    let refused = entries.remove(0);
    let failed = json!({
        "Id": refused["Id"],
        "SenderFault": false,
        "Code": "InternalError",
        "Message": "injected: this entry was not sent",
    });
    let mut answer = if entries.is_empty() {
        json!({ "Successful": [], "Failed": [] })
    } else {
        let forwarded = forward(state, parts, Bytes::from(batch.to_string())).await?;
        let body = forwarded.into_body().collect().await.map_err(|_| Dropped)?;
        serde_json::from_slice(&body.to_bytes()).map_err(|_| Dropped)?
    };
    match answer["Failed"].as_array_mut() {
        Some(list) => list.push(failed),
        None => answer["Failed"] = json!([failed]),
    }
    Ok(respond(
        StatusCode::OK,
        "application/x-amz-json-1.0",
        answer.to_string(),
    ))
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        "application/xml",
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
        ),
    )
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("text/plain")),
    );
    response
}
