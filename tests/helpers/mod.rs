//! What the integration tests share: a real `redis-server` per test on a free
//! port, herald's roles in-process on port 0 with a key prefix of their own,
//! and the sink, a push service that really verifies and decrypts.
#![allow(dead_code)]

pub mod browser;
pub mod cluster;
pub mod sentinel;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::deliver::push::vapid::VapidKey;
use herald::deliver::push::{PushHook, Pusher};
use herald::deliver::Worker;
use herald::intake::api::Api;
use herald::operate::sink::{Sink, SinkHandle, SinkOptions};
use herald::shared::alerts::Alerts;
use herald::shared::config::{Secret, Settings};
use herald::shared::db::Db;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The summary form of `XPENDING stream group`: count, smallest id, largest id, per-consumer counts.
pub type PendingSummary = (
    u64,
    Option<String>,
    Option<String>,
    Option<Vec<(String, String)>>,
);

/// What a redis-server that must not lose accepted events runs with: AOF,
/// fsync every second, no eviction.
pub const DURABLE: &[&str] = &[
    "--appendonly",
    "yes",
    "--appendfsync",
    "everysec",
    "--maxmemory-policy",
    "noeviction",
];

/// A redis-server child on a free port, killed when dropped.
pub struct TestRedis {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl TestRedis {
    /// Starts redis-server without persistence. Fails the test, saying how to install it, when it cannot.
    pub fn start() -> TestRedis {
        TestRedis::start_with(&["--appendonly", "no"])
    }

    /// Starts redis-server with AOF (`appendfsync everysec`), for tests that restart it.
    pub fn start_durable() -> TestRedis {
        TestRedis::start_with(DURABLE)
    }

    fn start_with(extra: &[&str]) -> TestRedis {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let port = herald::operate::embedded_redis::free_port().expect("a free port");
        let child = spawn_redis(dir.path(), port, extra);
        let redis = TestRedis {
            child,
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        redis.wait_ready();
        redis
    }

    /// Kills the server (SIGKILL: no chance to flush anything).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and directory (with AOF, it reloads its data).
    pub fn restart(&mut self) {
        self.kill();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.child = spawn_redis(self.dir.path(), self.port, &extra);
        self.wait_ready();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let client = redis::Client::open(self.url()).expect("redis url");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut conn) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer within 10s",
            self.port
        );
    }

    /// A synchronous connection for assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_connection()
            .expect("connect to the test redis")
    }
}

/// redis-server on `port` with its data in `dir`, then `extra`; a
/// configuration file among them (an absolute path ending in `.conf`, as a
/// sentinel's) goes first, where redis-server wants it.
pub fn spawn_redis(dir: &std::path::Path, port: u16, extra: &[&str]) -> Child {
    let (file, rest): (Vec<&str>, Vec<&str>) = extra
        .iter()
        .partition(|a| a.ends_with(".conf") && a.starts_with('/'));
    Command::new("redis-server")
        .args(file)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .arg("--dir")
        .arg(dir)
        .args(rest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start redis-server ({e}): these tests need a real Redis. \
                 Install it with `sudo apt-get install redis-server`, or run scripts/test.sh, which does"
            )
        })
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Settings for one test: its own key prefix, fast timings, insecure endpoints allowed for the sink.
pub fn settings(redis: &TestRedis, data_dir: &std::path::Path) -> Settings {
    let mut s = base_settings(data_dir);
    s.redis.url = Secret::new(redis.url());
    s
}

/// [`settings`] for a Redis Cluster, through its seed nodes.
pub fn cluster_settings(cluster: &cluster::TestCluster, data_dir: &std::path::Path) -> Settings {
    let mut s = base_settings(data_dir);
    s.redis.cluster_nodes = cluster.seeds().into_iter().map(Secret::new).collect();
    s
}

pub fn base_settings(data_dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.redis.key_prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    s.api.listen = "127.0.0.1:0".parse().expect("addr");
    s.worker.block = Duration::from_millis(100);
    s.worker.consumer = format!("test-{}", std::process::id());
    s.push.allow_insecure_endpoints = true;
    s.push.vapid_subject = "mailto:tests@herald.invalid".into();
    s.push.request_timeout = Duration::from_secs(5);
    s.push.connect_timeout = Duration::from_secs(2);
    s.data_dir = data_dir.to_path_buf();
    // Retries in milliseconds, so failure tests run fast.
    s.retry.base_delay = Duration::from_millis(100);
    s.retry.max_delay = Duration::from_millis(400);
    s.retry.max_deliveries = 3;
    s.retry.jitter = 0.0;
    s.reclaimer.interval = Duration::from_millis(50);
    s
}

/// herald's API and a (not yet running) worker against a test Redis, with a
/// sink; everything but the Redis is a [`Herald`], which it derefs to.
pub struct TestApp {
    /// First, so its shutdown comes before the Redis goes.
    pub herald: Herald,
    pub redis: TestRedis,
}

impl std::ops::Deref for TestApp {
    type Target = Herald;
    fn deref(&self) -> &Herald {
        &self.herald
    }
}

impl std::ops::DerefMut for TestApp {
    fn deref_mut(&mut self) -> &mut Herald {
        &mut self.herald
    }
}

/// herald's API and a (not yet running) worker against whatever Redis (or
/// Redis Cluster) its settings name, with a sink.
pub struct Herald {
    pub settings: Settings,
    pub db: Db,
    pub api_url: String,
    pub worker: Worker,
    pub pusher: Arc<Pusher>,
    pub sink: SinkHandle,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub data: tempfile::TempDir,
}

impl TestApp {
    pub async fn start() -> TestApp {
        TestApp::start_with(|_| {}).await
    }

    /// Starts against a Redis with AOF, for tests that kill and restart it.
    pub async fn start_durable() -> TestApp {
        TestApp::start_on(TestRedis::start_durable(), false, |_| {}).await
    }

    /// Starts with a sink in fast mode: it records arrivals without decrypting them
    /// (no event ids), for large fan-outs.
    pub async fn start_with_fast_sink(adjust: impl FnOnce(&mut Settings)) -> TestApp {
        TestApp::start_on(TestRedis::start(), true, adjust).await
    }

    /// Starts with settings adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
        TestApp::start_on(TestRedis::start(), false, adjust).await
    }

    /// Starts with a pusher that calls `hook` before every push (it may panic).
    pub async fn start_hooked(adjust: impl FnOnce(&mut Settings), hook: PushHook) -> TestApp {
        TestApp::start_full(TestRedis::start(), false, adjust, Some(hook)).await
    }

    async fn start_on(
        redis: TestRedis,
        fast_sink: bool,
        adjust: impl FnOnce(&mut Settings),
    ) -> TestApp {
        TestApp::start_full(redis, fast_sink, adjust, None).await
    }

    async fn start_full(
        redis: TestRedis,
        fast_sink: bool,
        adjust: impl FnOnce(&mut Settings),
        hook: Option<PushHook>,
    ) -> TestApp {
        let data = tempfile::tempdir().expect("temp dir");
        let mut settings = settings(&redis, data.path());
        adjust(&mut settings);
        let herald = Herald::start(settings, data, fast_sink, hook).await;
        TestApp { redis, herald }
    }

    /// Number of entries pending in the group (delivered to a consumer, not acknowledged).
    pub fn pending(&self) -> u64 {
        let summary: PendingSummary = redis::cmd("XPENDING")
            .arg(self.stream())
            .arg(&self.settings.worker.group)
            .query(&mut self.redis.conn())
            .expect("XPENDING");
        summary.0
    }

    pub fn stream_len(&self) -> u64 {
        redis::cmd("XLEN")
            .arg(self.stream())
            .query(&mut self.redis.conn())
            .expect("XLEN")
    }

    /// Every entry of the stream, oldest first: its id and fields.
    pub fn entries(&self) -> Vec<(String, std::collections::HashMap<String, String>)> {
        redis::cmd("XRANGE")
            .arg(self.stream())
            .arg("-")
            .arg("+")
            .query(&mut self.redis.conn())
            .expect("XRANGE")
    }
}

impl Herald {
    /// Starts the API, the sink and a (not yet running) worker with `settings`
    /// (whose `data_dir` is `data`).
    pub async fn start(
        settings: Settings,
        data: tempfile::TempDir,
        fast_sink: bool,
        hook: Option<PushHook>,
    ) -> Herald {
        // herald's logs, shown with a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("herald=info")),
            )
            .with_test_writer()
            .try_init();
        let db = Db::connect(&settings)
            .await
            .expect("connect to the test redis");
        // As every role does at start: producers may FCALL herald_publish.
        herald::intake::publish::library::load(&db, &settings)
            .await
            .expect("load the function library");
        let key = VapidKey::load_or_create(&settings.vapid_key_path(), true).expect("vapid key");
        let mut pusher = Pusher::new(&settings, key.clone()).expect("pusher");
        if let Some(hook) = hook {
            pusher = pusher.with_hook(hook);
        }
        let pusher = Arc::new(pusher);
        let shutdown = CancellationToken::new();
        let api = Api::bind(&settings, db.clone(), key.public_key.clone())
            .await
            .expect("bind the api");
        let api_url = format!("http://{}", api.local_addr());
        tokio::spawn(api.run(shutdown.clone()));
        let sink = Sink::bind(SinkOptions {
            listen: "127.0.0.1:0".parse().expect("addr"),
            fast: fast_sink,
            record: None,
            tls: false,
        })
        .await
        .expect("bind the sink");
        let sink_handle = sink.handle();
        tokio::spawn(sink.run(shutdown.clone()));
        let worker = Worker::new(db.clone(), pusher.clone(), &settings, Alerts::default());
        worker.ensure_groups().await.expect("create the group");
        Herald {
            settings,
            db,
            api_url,
            worker,
            pusher,
            sink: sink_handle,
            http: reqwest::Client::new(),
            shutdown,
            data,
        }
    }

    /// Reads and processes one batch of partition 0 (waiting up to 1 s for entries).
    pub async fn step(&self) -> herald::deliver::BatchOutcome {
        self.worker
            .process_batch(0, Duration::from_secs(1))
            .await
            .expect("the worker processes a batch")
    }

    /// Runs the worker loop in the background until the app's shutdown.
    pub fn run_worker(&self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        tokio::spawn(self.worker.clone().run(self.shutdown.clone()))
    }

    /// Runs the worker and the reclaimer loops (sharing one worker, as `herald up`
    /// does) in the background until the app's shutdown.
    pub fn run_roles(&self) {
        tokio::spawn(self.worker.clone().run(self.shutdown.clone()));
        tokio::spawn(self.reclaimer().run(self.shutdown.clone()));
    }

    /// Publishes one event (JSON as the API takes it); returns its event id.
    pub async fn publish(&self, event: Value) -> String {
        let (status, body) = self.post("/v1/events", &event).await;
        assert_eq!(status, 202, "publish failed: {body}");
        body["events"][0]["id"].as_str().expect("an id").to_string()
    }

    /// Event ids of the pushes the sink answered 201 for `subscription`.
    pub fn delivered_to(&self, subscription: &str) -> Vec<String> {
        self.sink
            .delivered()
            .into_iter()
            .filter(|a| a.subscription == subscription)
            .map(|a| a.event_id.unwrap_or_default())
            .collect()
    }

    /// Every push the sink saw for `subscription`, whatever it answered.
    pub fn attempts_at(&self, subscription: &str) -> Vec<herald::operate::sink::Arrival> {
        self.sink
            .arrivals()
            .into_iter()
            .filter(|a| a.subscription == subscription)
            .collect()
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.api_url))
            .json(body)
            .send()
            .await
            .expect("the api answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.api_url))
            .send()
            .await
            .expect("the api answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Registers a new sink device for `user` through the API; returns its subscription id,
    /// which the sink's arrivals carry too.
    pub async fn register_device(&self, user: &str) -> String {
        let (id, subscription) = self.sink.new_subscription();
        let (status, body) = self
            .post(
                "/v1/subscriptions",
                &json!({"user": user, "subscription": subscription}),
            )
            .await;
        assert_eq!(status, 201, "registration failed: {body}");
        assert_eq!(body["id"], json!(id), "the sink derives herald's id");
        id
    }

    /// Publishes one event for `user` through the API; returns its event id.
    pub async fn publish_to(&self, user: &str, title: &str) -> String {
        let (status, body) = self
            .post(
                "/v1/events",
                &json!({"topic": "parking.lot-7.entry", "user": user, "notification": {"title": title}}),
            )
            .await;
        assert_eq!(status, 202, "publish failed: {body}");
        body["events"][0]["id"].as_str().expect("an id").to_string()
    }

    pub fn stream(&self) -> String {
        self.db.keys.stream(0)
    }

    /// A reclaimer for this app, stepped with `scan`.
    pub fn reclaimer(&self) -> herald::recover::reclaimer::Reclaimer {
        herald::recover::reclaimer::Reclaimer::new(self.worker.clone(), &self.settings)
    }

    /// Dead letters of partition 0, oldest first.
    pub async fn dead_letters(&self) -> Vec<herald::shared::dead_letter::DeadLetterEntry> {
        self.worker
            .dead_letters()
            .list(&herald::shared::dead_letter::Filter::default(), usize::MAX)
            .await
            .expect("list dead letters")
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The RFC 3339 time `ms` milliseconds before now: a recent `publish_at` (events'
/// TTLs count from it, so a fixed date would have expired them long ago).
pub fn ago(ms: i64) -> String {
    herald::shared::event::format_time(chrono::Utc::now() - chrono::Duration::milliseconds(ms))
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; says what was awaited on failure.
pub async fn eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// The herald binary built for these tests.
pub fn herald_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_herald"))
}

/// A herald role as a real process, configured like `app` (same Redis, prefix,
/// VAPID key, fast retries) through HERALD_* variables.
pub fn spawn_role(app: &Herald, args: &[&str], consumer: &str) -> Proc {
    spawn_role_with(app, args, consumer, &[])
}

/// [`spawn_role`] with more environment variables (set last, so they win).
pub fn spawn_role_with(app: &Herald, args: &[&str], consumer: &str, env: &[(&str, &str)]) -> Proc {
    let s = &app.settings;
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let nodes: Vec<&str> = s.redis.cluster_nodes.iter().map(|n| n.expose()).collect();
    let (redis_var, redis_value) = match nodes.is_empty() {
        true => ("HERALD_REDIS__URL", s.redis.url.expose().to_string()),
        false => ("HERALD_REDIS__CLUSTER_NODES", json!(nodes).to_string()),
    };
    Command::new(herald_bin())
        .args(args)
        .current_dir(app.data.path())
        .env_remove("REDIS_URL")
        .env(redis_var, redis_value)
        .env("HERALD_REDIS__PARTITIONS", s.redis.partitions.to_string())
        .env("HERALD_REDIS__KEY_PREFIX", &s.redis.key_prefix)
        .env("HERALD_DATA_DIR", app.data.path())
        .env("HERALD_PUSH__ALLOW_INSECURE_ENDPOINTS", "true")
        .env("HERALD_PUSH__VAPID_SUBJECT", &s.push.vapid_subject)
        .env("HERALD_WORKER__CONSUMER", consumer)
        .env("HERALD_WORKER__BLOCK", ms(s.worker.block))
        .env("HERALD_RETRY__BASE_DELAY", ms(s.retry.base_delay))
        .env("HERALD_RETRY__MAX_DELAY", ms(s.retry.max_delay))
        .env(
            "HERALD_RETRY__MAX_DELIVERIES",
            s.retry.max_deliveries.to_string(),
        )
        .env("HERALD_RETRY__JITTER", "0")
        .env("HERALD_RECLAIMER__INTERVAL", ms(s.reclaimer.interval))
        .env("HERALD_PUSH__REQUEST_TIMEOUT", ms(s.push.request_timeout))
        .env("HERALD_PUSH__CONNECT_TIMEOUT", ms(s.push.connect_timeout))
        .env("HERALD_ADMIN__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log_file(app, consumer))
        .spawn()
        .map(Proc)
        .expect("start a herald process")
}

/// A child process that is killed when dropped, so a failing test leaves no orphan behind.
pub struct Proc(pub Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `<data dir>/<name>.log`, appended to: a process's logs, kept for a failing test's reader.
fn log_file(app: &Herald, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(app.data.path().join(format!("{name}.log")))
        .expect("a log file for the process")
}

/// The logs of the processes named `name`.
pub fn logs(app: &Herald, name: &str) -> String {
    std::fs::read_to_string(app.data.path().join(format!("{name}.log"))).unwrap_or_default()
}

/// Waits until the process logging to `name` says it started (its signal handlers are in place).
pub async fn wait_started(app: &Herald, name: &str) {
    eventually(&format!("{name} to start"), Duration::from_secs(15), || {
        let logs = logs(app, name);
        logs.contains("worker started") || logs.contains("reclaimer started")
    })
    .await;
}

/// SIGKILL, and reap.
pub fn kill9(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM, and the exit status within `timeout`.
pub fn terminate(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not stop within {timeout:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Posts `count` direct events, one every `every`, to `users` in turn, each
/// in a task of its own (a slow answer does not hold up the next); answers
/// `(status, event id, user)` per event.
/// One event `publish_steadily` sent: the answer's status and id, its user, when it was sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub status: u16,
    pub id: Option<String>,
    pub user: String,
    pub sent_at: chrono::DateTime<chrono::Utc>,
}

pub fn publish_steadily(
    app: &Herald,
    users: Vec<String>,
    count: usize,
    every: Duration,
) -> tokio::task::JoinHandle<Vec<Sent>> {
    let http = app.http.clone();
    let url = format!("{}/v1/events", app.api_url);
    tokio::spawn(async move {
        let mut sent = Vec::new();
        let mut tick = tokio::time::interval(every);
        for i in 0..count {
            tick.tick().await;
            let (http, url) = (http.clone(), url.clone());
            let user = users[i % users.len()].clone();
            sent.push(tokio::spawn(async move {
                let sent_at = chrono::Utc::now();
                let response = http
                    .post(url)
                    .json(&json!({"topic": "parking.lot-7.entry", "user": user,
                                  "notification": {"title": format!("entry {i}")}}))
                    .send()
                    .await
                    .expect("the api answers");
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or_default();
                Sent {
                    status,
                    id: body["events"][0]["id"].as_str().map(str::to_string),
                    user,
                    sent_at,
                }
            }));
        }
        let mut answers = Vec::new();
        for s in sent {
            answers.push(s.await.expect("a post"));
        }
        answers
    })
}

/// Waits (up to `within`) until every accepted event (id → the device it is
/// for) reached its device; returns (lost, duplicates), and fails on a push
/// to a wrong device.
pub async fn delivery_count(
    app: &Herald,
    accepted: &std::collections::HashMap<String, String>,
    within: Duration,
) -> (usize, usize) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let ids: std::collections::HashSet<String> = app
            .sink
            .delivered()
            .into_iter()
            .filter_map(|a| a.event_id)
            .collect();
        if accepted.keys().all(|id| ids.contains(id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Late copies still on their way count too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut times: std::collections::HashMap<String, usize> = Default::default();
    for arrival in app.sink.delivered() {
        let id = arrival.event_id.clone().expect("decrypted");
        assert_eq!(accepted.get(&id), Some(&arrival.subscription), "event {id}");
        *times.entry(id).or_default() += 1;
    }
    let lost = accepted
        .keys()
        .filter(|id| !times.contains_key(*id))
        .count();
    let duplicates = times.values().map(|n| n - 1).sum();
    (lost, duplicates)
}

/// After a load of [`publish_steadily`] ran through a failover: every event
/// was answered `202`, and every accepted one reached its user's device
/// (`device_of`): none lost. Only events in flight across the failover may
/// be pushed twice: those sent before herald was writing to the new primary
/// (the sentinels or the cluster promoted it at `promoted_at`; herald finds
/// it a little later), whose entry or device state was on the old primary
/// and not yet replicated, or could not be written while none served herald.
/// An event sent after that is pushed once. Prints the figures.
pub async fn assert_failover_lost_nothing(
    app: &Herald,
    answers: &[Sent],
    device_of: &std::collections::HashMap<String, String>,
    promoted_at: chrono::DateTime<chrono::Utc>,
) {
    let refused: Vec<_> = answers.iter().filter(|sent| sent.status != 202).collect();
    assert!(
        refused.is_empty(),
        "the API refused some events: {:?}",
        &refused[..refused.len().min(5)]
    );
    let accepted: std::collections::HashMap<String, String> = answers
        .iter()
        .map(|sent| {
            (
                sent.id.clone().expect("an id"),
                device_of[&sent.user].clone(),
            )
        })
        .collect();
    let (lost, duplicates) = delivery_count(app, &accepted, Duration::from_secs(120)).await;
    eprintln!(
        "failover under load: {} accepted, {} delivered, {lost} lost, {duplicates} duplicates",
        accepted.len(),
        accepted.len() - lost
    );
    assert_eq!(lost, 0, "{lost} accepted events were never delivered");
    // When herald wrote to the new primary of every partition again: the
    // first entry each partition's stream took after the promotion (a stream
    // id is its server's clock, in ms). Until then a push's state could not be
    // written anywhere, so the push may be made again.
    let promoted_ms = promoted_at.timestamp_millis();
    let mut switched_ms = promoted_ms;
    let mut conn = app.db.conn();
    for partition in 0..app.db.keys.partitions() {
        let after: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(app.db.keys.stream(partition))
            .arg(format!("{promoted_ms}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .expect("XRANGE");
        if let Some((id, _)) = after.first() {
            let ms: i64 = id
                .split('-')
                .next()
                .and_then(|t| t.parse().ok())
                .expect("a stream id");
            switched_ms = switched_ms.max(ms);
        }
    }
    let switched_at = chrono::DateTime::from_timestamp_millis(switched_ms).expect("a time");
    eprintln!(
        "herald wrote to the new primary {} ms after the promotion",
        switched_ms - promoted_ms
    );
    let mut first: std::collections::HashMap<String, (usize, String)> = Default::default();
    for arrival in app.sink.delivered() {
        let id = arrival.event_id.clone().expect("decrypted");
        let seen = first.entry(id).or_insert((0, arrival.at.clone()));
        seen.0 += 1;
        seen.1 = seen.1.clone().min(arrival.at.clone());
    }
    let sent_at: std::collections::HashMap<&str, chrono::DateTime<chrono::Utc>> = answers
        .iter()
        .filter_map(|sent| sent.id.as_deref().map(|id| (id, sent.sent_at)))
        .collect();
    for (id, (times, at)) in first.into_iter().filter(|(_, (n, _))| *n > 1) {
        let sent = sent_at[id.as_str()];
        assert!(
            sent <= switched_at,
            "event {id} was pushed {times} times (first at {at}) though it was sent at {sent}, after herald wrote to the new primary at {switched_at} (promoted at {promoted_at}; {duplicates} duplicates in all)"
        );
    }
}

/// A plain `XADD` of `fields` to the app's stream, as a producer writes one; its stream id.
pub fn xadd(app: &TestApp, fields: &[(&str, &str)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(app.stream()).arg("*");
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    cmd.query(&mut app.redis.conn()).expect("XADD")
}

/// `FCALL herald_publish 1 <stream> fields…`, as a producer calls it: (stream id, outcome).
pub fn fcall(app: &TestApp, fields: &[(&str, &str)]) -> redis::RedisResult<(String, String)> {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("herald_publish").arg(1).arg(app.stream());
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    cmd.query(&mut app.redis.conn())
}
