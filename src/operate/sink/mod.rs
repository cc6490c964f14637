//! `herald sink`: a local push service for development, tests and benchmarks.
//!
//! It makes subscriptions the way a browser does, and for every push it
//! verifies the VAPID token and decrypts the body (unless in fast mode), then
//! records the arrival as a JSON line. It can answer with scripted failures
//! per subscription, to exercise retries and hostile push services: a status,
//! any `Retry-After` text, a delay, and a misbehaviour ([`Misbehaviour`]: a
//! body that never ends, a trickle, no answer, a connection reset).
//!
//! Routes: `POST /push/{id}` (the endpoints), and for tools and tests
//! `POST /admin/subscriptions?count=N`, `POST /admin/faults/{id|*}`,
//! `GET /admin/arrivals`, `GET /admin/count`.

pub mod crypto;
pub mod formats;
mod hostile;
mod tls;

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::shared::event::format_time;
pub use crypto::UserAgentKeys;
pub use hostile::Misbehaviour;
use hostile::{Peer, Resets, SinkListener};

/// How the sink runs.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub listen: SocketAddr,
    /// Skip VAPID verification and decryption (benchmarks): only count arrivals.
    pub fast: bool,
    /// Write every arrival as a JSON line here.
    pub record: Option<Box<SinkRecord>>,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1) with a certificate authority made at
    /// start ([`SinkHandle::ca_pem`]): a push service's real transport.
    pub tls: bool,
}

/// Where arrivals are written.
#[derive(Debug, Clone)]
pub enum SinkRecord {
    Stdout,
    File(std::path::PathBuf),
}

/// A scripted answer, used once, in order, before the sink answers 201 again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fault {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    /// Wait this long before answering, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// How the answer misbehaves beyond its status.
    #[serde(default)]
    pub misbehaviour: Misbehaviour,
}

impl Fault {
    /// Answer `status` once, at once, without `Retry-After`.
    pub fn status(status: u16) -> Fault {
        Fault {
            status,
            retry_after: None,
            delay_ms: None,
            misbehaviour: Misbehaviour::None,
        }
    }

    /// Answer `status` with this `Retry-After` text, whatever it says.
    pub fn retry_after(status: u16, value: &str) -> Fault {
        Fault {
            retry_after: Some(value.to_string()),
            ..Fault::status(status)
        }
    }

    /// Answer `status`, misbehaving as told (a status is unused by `hang` and `reset`).
    pub fn misbehaving(status: u16, misbehaviour: Misbehaviour) -> Fault {
        Fault {
            misbehaviour,
            ..Fault::status(status)
        }
    }

    /// The same answer, `ms` later.
    pub fn delayed(self, ms: u64) -> Fault {
        Fault {
            delay_ms: Some(ms),
            ..self
        }
    }

    /// Reads `--fail` of `herald sink`: `503`, `429:2`, `429:Thu, 01 Jan 2099 00:00:00 GMT`
    /// (any `Retry-After` text after the colon), `hang`, `reset`, `endless-body:500`, `trickle:500`.
    pub fn parse(spec: &str) -> anyhow::Result<Fault> {
        let status = |text: &str| {
            text.parse::<u16>()
                .ok()
                .filter(|s| (100..=599).contains(s))
                .ok_or_else(|| anyhow::anyhow!("--fail {spec:?}: {text:?} is not an HTTP status; write 503, 429:2, hang, reset, endless-body:500 or trickle:500"))
        };
        Ok(match spec.split_once(':') {
            None if spec == "hang" => Fault::misbehaving(504, Misbehaviour::Hang),
            None if spec == "reset" => Fault::misbehaving(502, Misbehaviour::Reset),
            Some(("endless-body", s)) => Fault::misbehaving(status(s)?, Misbehaviour::EndlessBody),
            Some(("trickle", s)) => Fault::misbehaving(status(s)?, Misbehaviour::Trickle),
            Some((s, retry_after)) => Fault::retry_after(status(s)?, retry_after),
            None => Fault::status(status(spec)?),
        })
    }
}

/// One push as the sink received it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Arrival {
    /// herald's id of the subscription (derived from the endpoint, as herald derives it).
    pub subscription: String,
    /// The `id` of the decrypted payload, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The decrypted payload (JSON when it parses, a string otherwise); absent in fast mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<Value>,
    /// What the payload is: `herald` (herald's JSON) or `declarative`
    /// (Declarative Web Push); absent when neither, or in fast mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// What a browser would refuse in a declarative message (empty: it would show it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub format_problems: Vec<String>,
    pub headers: BTreeHeaders,
    /// The status the sink answered.
    pub status: u16,
    /// Why the push was refused, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: String,
    /// The request's HTTP version (`HTTP/1.1`, `HTTP/2.0`).
    #[serde(default)]
    pub http: String,
}

/// The Web Push request headers worth recording.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BTreeHeaders {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub urgency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
}

/// Arrivals recorded per chunk: recording one never copies those before it. (One
/// growing `Vec` did, at each doubling, while every request waited on its
/// lock: stalls of 10 to 30 ms at 8,000, 16,000 and 32,000 arrivals, which
/// the benchmark's latency figures counted as herald's.)
#[derive(Default)]
struct Arrivals {
    chunks: Vec<Vec<Arrival>>,
    len: usize,
    /// Those answered 201.
    delivered: usize,
}

impl Arrivals {
    const CHUNK: usize = 1024;

    fn push(&mut self, arrival: Arrival) {
        self.len += 1;
        self.delivered += usize::from(arrival.status == 201);
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < Self::CHUNK => chunk.push(arrival),
            _ => {
                let mut chunk = Vec::with_capacity(Self::CHUNK);
                chunk.push(arrival);
                self.chunks.push(chunk);
            }
        }
    }

    fn to_vec(&self) -> Vec<Arrival> {
        self.chunks.iter().flatten().cloned().collect()
    }
}

struct SinkState {
    base_url: String,
    /// The certificate authority a client must trust, when serving HTTPS.
    ca_pem: Option<String>,
    fast: bool,
    /// Every push waits this long (ms) before it is handled: a slow push service.
    delay_ms: std::sync::atomic::AtomicU64,
    /// Devices by the id in their endpoint's path.
    subs: Mutex<HashMap<String, Device>>,
    faults: Mutex<HashMap<String, VecDeque<Fault>>>,
    arrivals: Mutex<Arrivals>,
    /// Connections to reset instead of answering.
    resets: Resets,
    out: Option<Mutex<Box<dyn Write + Send>>>,
}

/// One subscribed "browser".
#[derive(Clone)]
struct Device {
    keys: UserAgentKeys,
    /// herald's id for this subscription, so the sink's records match herald's.
    subscription: String,
}

/// A running sink's handle: make subscriptions, script faults, read arrivals.
#[derive(Clone)]
pub struct SinkHandle {
    state: Arc<SinkState>,
}

/// The browser's `PushSubscription.toJSON()` for a sink subscription.
pub fn browser_json(endpoint: &str, keys: &UserAgentKeys) -> Value {
    json!({
        "endpoint": endpoint,
        "expirationTime": null,
        "keys": {"p256dh": keys.p256dh_b64(), "auth": keys.auth_b64()},
    })
}

impl SinkHandle {
    /// The origin push requests must be addressed to (the VAPID `aud`).
    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }

    /// The certificate authority (PEM) to trust, when the sink serves HTTPS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.state.ca_pem.as_deref()
    }

    /// A new subscription, as a browser would make it; returns herald's id for it
    /// (derived from the endpoint) and the `PushSubscription.toJSON()` to register.
    pub fn new_subscription(&self) -> (String, Value) {
        let path_id = uuid::Uuid::new_v4().simple().to_string();
        let keys = UserAgentKeys::generate();
        let endpoint = format!("{}/push/{path_id}", self.state.base_url);
        let json = browser_json(&endpoint, &keys);
        let subscription = crate::shared::subscriptions::id_for_endpoint(&endpoint);
        let device = Device {
            keys,
            subscription: subscription.clone(),
        };
        self.state.subs.lock().insert(path_id, device);
        (subscription, json)
    }

    /// `n` new subscriptions sharing one key pair: quick to make in bulk, for large fan-outs.
    pub fn new_subscriptions(&self, n: usize) -> Vec<(String, Value)> {
        let keys = UserAgentKeys::generate();
        let mut subs = self.state.subs.lock();
        (0..n)
            .map(|_| {
                let path_id = uuid::Uuid::new_v4().simple().to_string();
                let endpoint = format!("{}/push/{path_id}", self.state.base_url);
                let subscription = crate::shared::subscriptions::id_for_endpoint(&endpoint);
                let device = Device {
                    keys: keys.clone(),
                    subscription: subscription.clone(),
                };
                subs.insert(path_id, device);
                (subscription, browser_json(&endpoint, &keys))
            })
            .collect()
    }

    /// Forgets a subscription (by herald's id): pushes to it then get 410, like an unsubscribed browser.
    pub fn unsubscribe(&self, subscription: &str) {
        self.state
            .subs
            .lock()
            .retain(|_, d| d.subscription != subscription);
    }

    /// Makes every push wait this long before it is handled, like a slow push service.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Queues answers for one subscription (herald's id) or `*` for any.
    pub fn add_faults(&self, target: &str, faults: Vec<Fault>) {
        self.state
            .faults
            .lock()
            .entry(target.to_string())
            .or_default()
            .extend(faults);
    }

    /// How many pushes arrived, without copying them (cheap to poll).
    pub fn arrival_count(&self) -> usize {
        self.state.arrivals.lock().len
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.state.arrivals.lock().to_vec()
    }

    /// Arrivals answered 201, i.e. notifications a device shows.
    pub fn delivered(&self) -> Vec<Arrival> {
        self.arrivals()
            .into_iter()
            .filter(|a| a.status == 201)
            .collect()
    }
}

/// A bound sink; `run` serves it until shutdown.
pub struct Sink {
    listener: SinkListener,
    handle: SinkHandle,
}

impl Sink {
    pub async fn bind(options: SinkOptions) -> anyhow::Result<Sink> {
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|e| anyhow::anyhow!("sink cannot listen on {}: {e}", options.listen))?;
        let addr = listener.local_addr()?;
        let out: Option<Box<dyn Write + Send>> = match options.record.as_deref() {
            None => None,
            Some(SinkRecord::Stdout) => Some(Box::new(std::io::stdout())),
            Some(SinkRecord::File(path)) => Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        anyhow::anyhow!("cannot open {} for arrivals: {e}", path.display())
                    })?,
            )),
        };
        let resets = Resets::default();
        let tls = options.tls.then(tls::SinkTls::generate).transpose()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ca_pem = tls.as_ref().map(|t| t.ca_pem.clone());
        Ok(Sink {
            listener: SinkListener {
                inner: listener,
                resets: resets.clone(),
                tls: tls.map(|t| hostile::TlsHandshakes::new(t.acceptor)),
            },
            handle: SinkHandle {
                state: Arc::new(SinkState {
                    base_url: format!("{scheme}://{addr}"),
                    ca_pem,
                    fast: options.fast,
                    delay_ms: std::sync::atomic::AtomicU64::new(0),
                    subs: Mutex::new(HashMap::new()),
                    faults: Mutex::new(HashMap::new()),
                    arrivals: Mutex::new(Arrivals::default()),
                    resets,
                    out: out.map(Mutex::new),
                }),
            },
        })
    }

    pub fn handle(&self) -> SinkHandle {
        self.handle.clone()
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let app = Router::new()
            .route("/push/{id}", post(receive))
            .route("/admin/subscriptions", post(admin_subscriptions))
            .route("/admin/faults/{target}", post(admin_faults))
            .route("/admin/arrivals", get(admin_arrivals))
            .route("/admin/count", get(admin_count))
            .with_state(self.handle.clone());
        axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<Peer>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
        Ok(())
    }
}

async fn receive(
    State(sink): State<SinkHandle>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(path_id): Path<String>,
    version: axum::http::Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let delay = sink
        .state
        .delay_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let device = sink.state.subs.lock().get(&path_id).cloned();
    let id = match &device {
        Some(d) => d.subscription.clone(),
        None => crate::shared::subscriptions::id_for_endpoint(&format!(
            "{}/push/{path_id}",
            sink.state.base_url
        )),
    };
    let mut arrival = Arrival {
        http: format!("{version:?}"),
        subscription: id.clone(),
        event_id: None,
        plaintext: None,
        format: None,
        format_problems: Vec::new(),
        headers: BTreeHeaders {
            ttl: header("ttl"),
            urgency: header("urgency"),
            topic: header("topic"),
            content_encoding: header("content-encoding"),
        },
        status: 201,
        error: None,
        at: format_time(chrono::Utc::now()),
    };
    let fault = {
        let mut faults = sink.state.faults.lock();
        let mut next = faults.get_mut(&id).and_then(VecDeque::pop_front);
        if next.is_none() {
            next = faults.get_mut("*").and_then(VecDeque::pop_front);
        }
        next
    };
    let mut retry_after = None;
    let mut misbehaviour = Misbehaviour::None;
    if let Some(fault) = fault {
        if let Some(ms) = fault.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        arrival.status = fault.status;
        arrival.error = Some(format!("scripted fault ({:?})", fault.misbehaviour));
        retry_after = fault.retry_after;
        misbehaviour = fault.misbehaviour;
    } else if let Some(device) = device {
        if !sink.state.fast {
            if let Err((status, error)) =
                check_push(&sink, &device.keys, &headers, &body, &mut arrival)
            {
                arrival.status = status;
                arrival.error = Some(error);
            }
        }
    } else {
        arrival.status = 410;
        arrival.error = Some("no such subscription".into());
    }
    let status = StatusCode::from_u16(arrival.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    record(&sink, arrival);
    match misbehaviour {
        Misbehaviour::Hang => std::future::pending::<()>().await,
        Misbehaviour::Reset => {
            sink.state.resets.lock().insert(peer.0);
        }
        _ => {}
    }
    let mut response = match hostile::body(misbehaviour) {
        Some(body) => (status, body).into_response(),
        None => status.into_response(),
    };
    if let Some(value) = retry_after.and_then(|v| axum::http::HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

/// What a push service and then the browser check; fills in the decrypted payload.
fn check_push(
    sink: &SinkHandle,
    keys: &UserAgentKeys,
    headers: &HeaderMap,
    body: &[u8],
    arrival: &mut Arrival,
) -> Result<(), (u16, String)> {
    let h = &arrival.headers;
    if h.ttl
        .as_deref()
        .and_then(|t| t.parse::<u64>().ok())
        .is_none()
    {
        return Err((400, "TTL header missing or not a number".into()));
    }
    if let Some(u) = &h.urgency {
        if !matches!(u.as_str(), "very-low" | "low" | "normal" | "high") {
            return Err((400, format!("Urgency {u:?} is not valid")));
        }
    }
    if let Some(t) = &h.topic {
        if t.len() > 32
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err((400, "Topic must be at most 32 base64url characters".into()));
        }
    }
    if h.content_encoding.as_deref() != Some("aes128gcm") {
        return Err((415, "Content-Encoding must be aes128gcm".into()));
    }
    if body.len() > 4096 {
        return Err((413, format!("body of {} bytes is over 4096", body.len())));
    }
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    crypto::verify_vapid(
        authorization,
        sink.base_url(),
        chrono::Utc::now().timestamp(),
    )
    .map_err(|r| (r.status, r.reason))?;
    let plaintext = keys.decrypt(body).map_err(|e| (400, e))?;
    let value = serde_json::from_slice::<Value>(&plaintext)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&plaintext).into_owned()));
    arrival.event_id = value.get("id").and_then(|v| v.as_str()).map(str::to_string);
    let (format, problems) = formats::classify(&value);
    arrival.format = format.map(str::to_string);
    arrival.format_problems = problems;
    arrival.plaintext = Some(value);
    Ok(())
}

fn record(sink: &SinkHandle, arrival: Arrival) {
    if let Some(out) = &sink.state.out {
        let line = serde_json::to_string(&arrival).expect("arrival serializes");
        let mut out = out.lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    sink.state.arrivals.lock().push(arrival);
}

#[derive(Deserialize)]
struct CountQuery {
    count: Option<usize>,
}

async fn admin_subscriptions(
    State(sink): State<SinkHandle>,
    Query(q): Query<CountQuery>,
) -> Response {
    let count = q.count.unwrap_or(1).min(100_000);
    let subs: Vec<Value> = (0..count)
        .map(|_| {
            let (id, json) = sink.new_subscription();
            json!({"id": id, "subscription": json})
        })
        .collect();
    Json(json!({"subscriptions": subs})).into_response()
}

async fn admin_faults(
    State(sink): State<SinkHandle>,
    Path(target): Path<String>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<Vec<Fault>>(&body) {
        Ok(faults) => {
            sink.add_faults(&target, faults);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": format!("expected [{{\"status\":503,\"retry_after\":\"2\",\"delay_ms\":0}}]: {e}")})),
        )
            .into_response(),
    }
}

async fn admin_count(State(sink): State<SinkHandle>) -> Response {
    let (arrivals, delivered) = {
        let arrivals = sink.state.arrivals.lock();
        (arrivals.len, arrivals.delivered)
    };
    Json(json!({"arrivals": arrivals, "delivered": delivered})).into_response()
}

async fn admin_arrivals(State(sink): State<SinkHandle>) -> Response {
    Json(json!({"arrivals": sink.arrivals()})).into_response()
}

/// Registers `count` new sink subscriptions for `user` with herald's API; returns their herald ids.
pub async fn register(
    sink: &SinkHandle,
    api: &str,
    token: Option<&str>,
    user: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let client = reqwest::Client::new();
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let (_, subscription) = sink.new_subscription();
        let mut request = client
            .post(format!("{}/v1/subscriptions", api.trim_end_matches('/')))
            .json(&json!({"user": user, "subscription": subscription}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach herald's API at {api}: {e}"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!("herald's API refused the subscription ({status}): {body}");
        }
        ids.push(body["id"].as_str().unwrap_or_default().to_string());
    }
    Ok(ids)
}

/// `herald sink`.
#[derive(clap::Args)]
pub struct SinkArgs {
    /// Address to listen on (`sink_listen`, so it does not clash with the API's --listen).
    #[arg(long = "sink-listen", default_value = "127.0.0.1:8090")]
    pub sink_listen: std::net::SocketAddr,
    /// Skip VAPID checks and decryption (for benchmarks).
    #[arg(long)]
    pub fast: bool,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1) with a certificate authority made at start.
    #[arg(long)]
    pub tls: bool,
    /// With --tls: write the certificate authority (PEM) here, for herald's push.extra_ca_file.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub tls_ca_out: Option<std::path::PathBuf>,
    /// Append arrivals as JSON lines to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
    /// Register this many new subscriptions with herald's API at start.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub register: usize,
    /// The user the registered subscriptions belong to.
    #[arg(long, default_value = "u-42")]
    pub user: String,
    /// herald's API, for --register.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// Bearer token for herald's API.
    #[arg(long, env = "HERALD_API_TOKEN")]
    pub token: Option<String>,
    /// Answer the next pushes (to any subscription) like this first, one each, in order:
    /// `503`, `429:2` (a status and any Retry-After text), `hang` (never answer), `reset`
    /// (reset the connection), `endless-body:500`, `trickle:500` (a body that never ends,
    /// or one byte every 200 ms).
    #[arg(long, value_name = "FAULT")]
    pub fail: Vec<String>,
}

/// `herald sink`: serves until shutdown, registering `--register` devices with herald first.
pub async fn run_cli(args: SinkArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let record = match args.out {
        Some(path) => SinkRecord::File(path),
        None => SinkRecord::Stdout,
    };
    let sink = Sink::bind(SinkOptions {
        listen: args.sink_listen,
        fast: args.fast,
        record: Some(Box::new(record)),
        tls: args.tls,
    })
    .await?;
    let handle = sink.handle();
    if let (Some(path), Some(pem)) = (&args.tls_ca_out, handle.ca_pem()) {
        std::fs::write(path, pem)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        eprintln!(
            "the sink's certificate authority is in {} (push.extra_ca_file)",
            path.display()
        );
    }
    let mut faults = Vec::new();
    for spec in &args.fail {
        faults.push(Fault::parse(spec)?);
    }
    handle.add_faults("*", faults);
    eprintln!(
        "herald sink listening on {} (arrivals as JSON lines)",
        handle.base_url()
    );
    let server = tokio::spawn(sink.run(shutdown.clone()));
    if args.register > 0 {
        let ids = register(
            &handle,
            &args.api,
            args.token.as_deref(),
            &args.user,
            args.register,
        )
        .await;
        match ids {
            Ok(ids) => eprintln!(
                "registered {} subscription(s) for user {}: {}",
                ids.len(),
                args.user,
                ids.join(", ")
            ),
            Err(e) => {
                shutdown.cancel();
                let _ = server.await;
                return Err(e);
            }
        }
    }
    server.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_specs_read_as_hostile_answers_and_bad_ones_say_what_to_write() {
        assert_eq!(Fault::parse("503").expect("ok"), Fault::status(503));
        assert_eq!(
            Fault::parse("429:Thu, 01 Jan 2099 00:00:00 GMT").expect("ok"),
            Fault::retry_after(429, "Thu, 01 Jan 2099 00:00:00 GMT")
        );
        assert_eq!(
            Fault::parse("hang").expect("ok").misbehaviour,
            Misbehaviour::Hang
        );
        assert_eq!(
            Fault::parse("reset").expect("ok").misbehaviour,
            Misbehaviour::Reset
        );
        assert_eq!(
            Fault::parse("endless-body:500").expect("ok"),
            Fault::misbehaving(500, Misbehaviour::EndlessBody)
        );
        assert_eq!(
            Fault::parse("trickle:503").expect("ok"),
            Fault::misbehaving(503, Misbehaviour::Trickle)
        );
        for bad in ["", "abc", "999", "trickle:x", "endless-body"] {
            let err = Fault::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("--fail"), "{err}");
        }
    }
}
