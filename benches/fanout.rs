//! One topic event to 100,000 devices: how long the fan-out takes and how much
//! memory the worker process holds at its peak. `cargo bench --bench fanout`
//! (`FANOUT_DEVICES=N` for another size). Starts its own redis-server, an
//! in-process sink in fast mode (no decryption) and a release `herald worker`.
//! Figures go to BENCHMARKS.md.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald::intake::publish::{Publisher, Ready};
use herald::operate::sink::{Sink, SinkOptions};
use herald::shared::config::{Secret, Settings};
use herald::shared::db::Db;
use herald::shared::event::EventInput;
use herald::shared::subscriptions::{Store, Subscription};

/// A `/proc/<pid>/status` figure in kB (VmRSS, VmHWM).
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let devices: usize = std::env::var("FANOUT_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let port = herald::operate::embedded_redis::free_port()?;
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot start redis-server ({e}); install it with apt-get install redis-server"
            )
        })?;
    let mut settings = Settings::default();
    settings.redis.url = Secret::new(format!("redis://127.0.0.1:{port}"));
    settings.data_dir = dir.path().to_path_buf();
    settings.push.allow_insecure_endpoints = true;
    let db = loop {
        match Db::connect(&settings).await {
            Ok(db) if db.ping().await.is_ok() => break db,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    herald::deliver::push::vapid::VapidKey::load_or_create(&settings.vapid_key_path(), true)?;

    let sink = Sink::bind(SinkOptions {
        listen: "127.0.0.1:0".parse()?,
        fast: true,
        record: None,
        tls: false,
    })
    .await?;
    let handle = sink.handle();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(sink.run(stop.clone()));

    let started = Instant::now();
    let store = Store::new(db.clone());
    for chunk in handle.new_subscriptions(devices).chunks(1_000) {
        let puts = chunk.iter().map(|(id, json)| {
            let sub = Subscription {
                id: id.clone(),
                user: None,
                endpoint: json["endpoint"].as_str().unwrap_or_default().to_string(),
                p256dh: json["keys"]["p256dh"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                auth: json["keys"]["auth"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                topics: vec!["lot.#".into()],
                headers: None,
                format: Default::default(),
                created_at: String::new(),
            };
            let store = store.clone();
            async move { store.put(&sub).await }
        });
        for put in futures::future::join_all(puts).await {
            put?;
        }
    }
    println!(
        "stored {devices} subscriptions in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut worker = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("worker")
        .env_remove("REDIS_URL")
        .env("HERALD_REDIS__URL", settings.redis.url.expose())
        .env("HERALD_DATA_DIR", dir.path())
        .env("HERALD_PUSH__ALLOW_INSECURE_ENDPOINTS", "true")
        .env("HERALD_PUSH__VAPID_SUBJECT", "mailto:bench@herald.invalid")
        .env("HERALD_ADMIN__ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = status_kb(worker.id(), "VmRSS:");

    let input: EventInput = serde_json::from_value(serde_json::json!({
        "topic": "lot.7.closing",
        "notification": {"title": "Lot 7 closes at 22:00"},
    }))?;
    let event = input
        .validate(&settings.events.defaults(), chrono::Utc::now())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let publisher = Publisher::new(db.clone(), &settings);
    let started = Instant::now();
    publisher.publish(&[Ready::new(&input, &event)]).await?;
    let mut peak_rss = 0;
    while handle.arrival_count() < devices {
        peak_rss = peak_rss.max(status_kb(worker.id(), "VmRSS:"));
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "the fan-out did not finish in 15 minutes ({} of {devices})",
            handle.arrival_count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let hwm = status_kb(worker.id(), "VmHWM:");
    println!(
        "one event to {devices} devices in {secs:.1} s: {:.0} pushes/s; worker RSS {} MB idle, {} MB peak (VmHWM {} MB), concurrency {}",
        devices as f64 / secs,
        idle_rss / 1024,
        peak_rss / 1024,
        hwm / 1024,
        settings.worker.concurrency
    );
    let _ = worker.kill();
    let _ = worker.wait();
    stop.cancel();
    let _ = redis.kill();
    let _ = redis.wait();
    Ok(())
}
