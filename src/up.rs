//! The roles as the binary runs them: `herald up` (everything in one process,
//! with an embedded Redis when none is configured), `herald api`, `herald worker`.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Secret, Settings};
use crate::db::{redacted_url, Db};
use crate::embedded_redis::EmbeddedRedis;
use crate::ingest::Api;
use crate::push::vapid::VapidKey;
use crate::push::Pusher;
use crate::worker::Worker;

/// `herald up`: API and worker in one process; starts and supervises a
/// redis-server when `redis.url` is empty; creates VAPID keys on first run.
pub async fn up(mut settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let redis_stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let embedded = if settings.redis.url.is_empty() {
        let redis = EmbeddedRedis::start(&settings.data_dir, settings.redis.embedded_port).await?;
        settings.redis.url = Secret::new(redis.url());
        tracing::info!(url = %redis.url(), dir = %redis.dir().display(), "embedded redis-server started (AOF on, noeviction)");
        Some(tasks.spawn(redis.supervise(redis_stop.clone())))
    } else {
        None
    };
    let result = run_roles(&settings, shutdown).await;
    redis_stop.cancel();
    if let Some(handle) = embedded {
        handle
            .await
            .context("embedded redis supervisor panicked")??;
    }
    result
}

/// `herald api`.
pub async fn api(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let db = Db::connect(&settings).await?;
    let key = VapidKey::load_or_create(&settings.vapid_key_path(), settings.push.create_vapid_key)?;
    Api::bind(&settings, db, key.public_key)
        .await?
        .run(shutdown)
        .await
}

/// `herald worker`.
pub async fn worker(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let db = Db::connect(&settings).await?;
    let key = VapidKey::load_or_create(&settings.vapid_key_path(), settings.push.create_vapid_key)?;
    let pusher = Arc::new(Pusher::new(&settings.push, key)?);
    Worker::new(db, pusher, &settings).run(shutdown).await
}

async fn run_roles(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let db = Db::connect(settings).await?;
    let key = VapidKey::load_or_create(&settings.vapid_key_path(), true)?;
    let pusher = Arc::new(Pusher::new(&settings.push, key)?);
    let api = Api::bind(settings, db.clone(), pusher.public_key().to_string()).await?;
    let worker = Worker::new(db, pusher.clone(), settings);
    print_banner(
        settings,
        api.local_addr(),
        pusher.public_key(),
        worker.consumer(),
    );
    // If one role fails, stop the others too rather than run half a herald.
    let stop = shutdown.child_token();
    let api_task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let r = api.run(stop.clone()).await;
            stop.cancel();
            r
        }
    });
    let worker_task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let r = worker.run(stop.clone()).await;
            stop.cancel();
            r
        }
    });
    let (a, w) = tokio::join!(api_task, worker_task);
    a.context("api task panicked")?.context("api failed")?;
    w.context("worker task panicked")?
        .context("worker failed")?;
    Ok(())
}

fn print_banner(settings: &Settings, api: std::net::SocketAddr, public_key: &str, consumer: &str) {
    let url = redacted_url(settings.redis.url.expose());
    println!(
        r#"
herald is up
  api        http://{api}   (POST /v1/events, POST /v1/subscriptions, GET /readyz)
  worker     consumer {consumer} in group {group}
  redis      {url}
  data       {data}
  VAPID key  {public_key}

Send a first notification:
  1. in another terminal, start a local push service that registers one device for user u-42:
       herald sink --register 1 --user u-42 --api http://{api}
     (needs push.allow_insecure_endpoints, e.g. `herald up --allow-insecure-endpoints`)
  2. publish an event for that user:
       curl -s -X POST http://{api}/v1/events -H 'content-type: application/json' \
         -d '{{"topic":"parking.lot-7.entry","user":"u-42","notification":{{"title":"Entry","body":"12가3456 entered lot 7"}}}}'
  3. the sink prints the decrypted notification as a JSON line.
Stop with Ctrl-C.
"#,
        group = settings.worker.group,
        data = settings.data_dir.display(),
    );
}
