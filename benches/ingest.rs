//! Events per second into a running `herald api`, and the `XADD` ceiling of
//! its Redis measured the same way, for comparison:
//!
//!   INGEST_API=http://127.0.0.1:8080 INGEST_REDIS=redis://127.0.0.1:6379 \
//!     cargo bench --bench ingest
//!
//! - single events: `INGEST_CLIENTS` (64) keep-alive connections, each posting
//!   one event per request, one request at a time;
//! - batches: the same, 100 events per request;
//! - the `XADD` ceiling: the same number of connections, each sending
//!   pipelines of 100 `XADD`s of the same size to a scratch stream (deleted
//!   afterwards), i.e. what Redis takes with no API, no validation and no
//!   idempotency in front of it.
//!
//! Each runs `INGEST_SECONDS` (5). The load generator shares the machine with
//! herald and Redis, so the figures are floors; it sends bodies serialised
//! once, so that its own share of the cores is small. scripts/bench.sh runs it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn event(n: u64) -> serde_json::Value {
    json!({
        "topic": "parking.lot-7.entry",
        "user": format!("driver-{}", n % 1000),
        "notification": {"title": "Vehicle entered", "body": "AB-123-CD entered Lot 7 at 08:14"},
    })
}

/// Events per second that `clients` tasks reach doing `one` (which returns how many it sent) for `window`.
async fn rate<F, Fut>(clients: usize, window: Duration, one: F) -> anyhow::Result<f64>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let one = one.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = (c as u64) << 32;
            while started.elapsed() < window {
                let k = one(n).await?;
                n += k;
                sent.fetch_add(k, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(sent.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let api = env("INGEST_API", "http://127.0.0.1:8080");
    let redis_url = env("INGEST_REDIS", "redis://127.0.0.1:6379");
    let clients: usize = env("INGEST_CLIENTS", "64").parse()?;
    let window = Duration::from_secs(env("INGEST_SECONDS", "5").parse()?);
    let token = std::env::var("HERALD_API_TOKEN").ok();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let url = format!("{}/v1/events", api.trim_end_matches('/'));

    // The bodies are serialised once, before the clock starts: what is measured
    // is herald taking events, not this load generator building them (the
    // events carry no id, so each post publishes new events).
    let single_body: &'static str = Box::leak(serde_json::to_string(&event(0))?.into_boxed_str());
    let batch_body: &'static str = Box::leak(
        serde_json::to_string(&serde_json::Value::Array((0..100).map(event).collect()))?
            .into_boxed_str(),
    );
    let post = {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        move |body: &'static str| {
            let mut request = http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            async move {
                let response = request.send().await?;
                let status = response.status();
                anyhow::ensure!(
                    status.as_u16() == 202,
                    "the API answered {status}: {}",
                    response.text().await.unwrap_or_default()
                );
                Ok(())
            }
        }
    };
    let single = {
        let post = post.clone();
        rate(clients, window, move |_| {
            let post = post.clone();
            async move {
                post(single_body).await?;
                Ok(1)
            }
        })
        .await?
    };
    let batches = {
        let post = post.clone();
        rate(clients, window, move |_| {
            let post = post.clone();
            async move {
                post(batch_body).await?;
                Ok(100)
            }
        })
        .await?
    };

    let client = redis::Client::open(redis_url.as_str())?;
    let stream = format!("bench-ingest-xadd-{}", std::process::id());
    let fields = serde_json::to_string(&event(0))?;
    // A connection per client, as the API's clients each have theirs.
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(client.get_multiplexed_async_connection().await?);
    }
    let conns = Arc::new(conns);
    let xadd = {
        let stream = stream.clone();
        rate(clients, window, move |n| {
            let mut conn = conns[(n >> 32) as usize].clone();
            let (stream, fields) = (stream.clone(), fields.clone());
            async move {
                let mut pipe = redis::pipe();
                for _ in 0..100 {
                    pipe.cmd("XADD")
                        .arg(&stream)
                        .arg("*")
                        .arg("event")
                        .arg(&fields)
                        .ignore();
                }
                pipe.query_async::<()>(&mut conn).await?;
                Ok(100)
            }
        })
        .await?
    };
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("DEL")
        .arg(&stream)
        .query_async::<()>(&mut conn)
        .await?;

    println!(
        "ingest: single-event POSTs {single:.0} events/s, batches of 100 {batches:.0} events/s, \
         XADD ceiling (pipelines of 100) {xadd:.0} events/s; {clients} keep-alive clients, {} s each",
        window.as_secs()
    );
    Ok(())
}
