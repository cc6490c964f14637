//! The roles as the binary runs them: `herald up` (everything in one process,
//! with an embedded Redis when none is configured), `herald api`,
//! `herald worker`, `herald reclaimer`.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::deliver::push::vapid::VapidKey;
use crate::deliver::push::Pusher;
use crate::deliver::Worker;
use crate::intake::api::Api;
use crate::operate::admin::Admin;
use crate::operate::embedded_redis::EmbeddedRedis;
use crate::recover::reclaimer::Reclaimer;
use crate::recover::scheduler::Scheduler;
use crate::shared::alerts::{self, AlertLoop, Alerts};
use crate::shared::config::{Secret, Settings};
use crate::shared::db::{redacted_url, Db};

/// `herald up`: API, worker and reclaimer in one process; starts and supervises a
/// redis-server when no Redis is configured (`redis.url`, `redis.cluster_nodes`, `redis.sentinel`);
/// creates VAPID keys on first run.
pub async fn up(mut settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let redis_stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let embedded = if settings.redis.url.is_empty()
        && settings.redis.cluster_nodes.is_empty()
        && !settings.redis.sentinel.is_set()
    {
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
    let db = connect(&settings, true).await?;
    let key = VapidKey::from_settings(&settings, settings.push.create_vapid_key)?;
    Api::bind(&settings, db, key.public_key)
        .await?
        .run(shutdown)
        .await
}

/// `herald worker`.
pub async fn worker(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let parts = Parts::connect(&settings, settings.push.create_vapid_key, false).await?;
    let worker = parts.worker(&settings);
    let mut roles = Roles::new(shutdown);
    let admin = Admin::bind(&settings, "worker", parts.db.clone(), roles.stop()).await?;
    roles.spawn("worker", worker.run(roles.stop()));
    parts.spawn_alerts(&mut roles);
    with_admin(admin, roles.wait()).await
}

/// `herald audit`: the audit group's reader, with its admin listener.
pub async fn audit(
    settings: Settings,
    args: crate::operate::audit::AuditArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let crate::operate::audit::AuditArgs { group, out } = args;
    let db = connect(&settings, false).await?;
    // The audit's own consumer name: stable across restarts, so it re-reads what it left pending.
    let consumer = if settings.worker.consumer.is_empty() {
        "audit".to_string()
    } else {
        settings.worker.consumer.clone()
    };
    let group = group.unwrap_or_else(|| settings.audit.group.clone());
    let out = out.unwrap_or_else(|| settings.audit.out.clone());
    let mut roles = Roles::new(shutdown);
    let admin = Admin::bind(&settings, "audit", db.clone(), roles.stop()).await?;
    roles.spawn(
        "audit",
        crate::operate::audit::Audit::new(db, &group, &consumer, out, settings.events.defaults())
            .run(roles.stop()),
    );
    with_admin(admin, roles.wait()).await
}

/// Serves the admin listener (when there is one) until the roles have finished.
async fn with_admin(
    admin: Option<Admin>,
    roles: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let served = admin.map(|admin| tokio::spawn(admin.run(stop.clone())));
    let result = roles.await;
    stop.cancel();
    if let Some(served) = served {
        served.await.context("admin listener panicked")??;
    }
    result
}

/// `herald reclaimer`.
pub async fn reclaimer(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let parts = Parts::connect(&settings, settings.push.create_vapid_key, false).await?;
    let reclaimer = Reclaimer::new(parts.worker(&settings), &settings);
    let mut roles = Roles::new(shutdown);
    let admin = Admin::bind(&settings, "reclaimer", parts.db.clone(), roles.stop()).await?;
    roles.spawn("reclaimer", reclaimer.run(roles.stop()));
    roles.spawn("scheduler", parts.scheduler(&settings).run(roles.stop()));
    roles.spawn("metrics sampler", parts.sampler(&settings, roles.stop()));
    parts.spawn_alerts(&mut roles);
    with_admin(admin, roles.wait()).await
}

async fn run_roles(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let parts = Parts::connect(settings, true, true).await?;
    let api = Api::bind(
        settings,
        parts.db.clone(),
        parts.pusher.public_key().to_string(),
    )
    .await?;
    // One worker: the reclaimer shares its subscription index, push services and limits.
    let worker = parts.worker(settings);
    let reclaimer = Reclaimer::new(worker.clone(), settings);
    print_banner(
        settings,
        api.local_addr(),
        parts.pusher.public_key(),
        worker.consumer(),
    );
    let mut roles = Roles::new(shutdown);
    roles.spawn("api", api.run(roles.stop()));
    roles.spawn("worker", worker.run(roles.stop()));
    roles.spawn("reclaimer", reclaimer.run(roles.stop()));
    roles.spawn("scheduler", parts.scheduler(settings).run(roles.stop()));
    roles.spawn("metrics sampler", parts.sampler(settings, roles.stop()));
    parts.spawn_alerts(&mut roles);
    roles.wait().await
}

/// Connects, checks that Redis keeps what it accepts (`redis.require_durable`)
/// and loads the publish functions, so producers can `FCALL herald_publish`
/// as soon as any herald role runs. A role that does not publish goes on when
/// its Redis user may not load them: least privilege gives `FUNCTION LOAD`
/// to the API's user only (README, "Redis ACLs per role").
async fn connect(settings: &Settings, publishes: bool) -> anyhow::Result<Db> {
    let db = Db::connect(settings).await?;
    db.check_durability(settings.redis.require_durable).await?;
    match crate::intake::publish::library::load(&db, settings).await {
        Ok(()) => {}
        Err(e) if !publishes && refused_by_acl(&e) => tracing::warn!(
            error = %format!("{e:#}"),
            "this role's Redis user may not load herald's function library; it does not publish, so it goes on (the API's user loads it)"
        ),
        Err(e) => return Err(e),
    }
    Ok(db)
}

/// Whether Redis refused a command for the user's ACL (`NOPERM`).
fn refused_by_acl(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|cause| cause.downcast_ref::<redis::RedisError>())
        .any(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm))
}

/// What the pushing roles share: Redis, the pusher, the alert channel.
struct Parts {
    db: Db,
    pusher: Arc<Pusher>,
    alerts: Alerts,
    alert_loop: Option<AlertLoop>,
}

impl Parts {
    /// `publishes`: whether these roles publish (so need the function library).
    async fn connect(
        settings: &Settings,
        create_key: bool,
        publishes: bool,
    ) -> anyhow::Result<Parts> {
        let db = connect(settings, publishes).await?;
        let key = VapidKey::from_settings(settings, create_key)?;
        let pusher = Arc::new(Pusher::new(settings, key)?);
        let (alerts, alert_loop) = alerts::channel(&settings.alerts);
        Ok(Parts {
            db,
            pusher,
            alerts,
            alert_loop,
        })
    }

    fn worker(&self, settings: &Settings) -> Worker {
        Worker::new(
            self.db.clone(),
            self.pusher.clone(),
            settings,
            self.alerts.clone(),
        )
    }

    fn sampler(
        &self,
        settings: &Settings,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static {
        crate::operate::stats::sample_loop(self.db.clone(), settings.admin.sample_interval, stop)
    }

    fn scheduler(&self, settings: &Settings) -> Scheduler {
        Scheduler::new(self.db.clone(), settings.reclaimer.schedule_interval)
    }

    fn spawn_alerts(self, roles: &mut Roles) {
        if let Some(alert_loop) = self.alert_loop {
            let stop = roles.stop();
            roles.spawn("alerts", async move {
                alert_loop.run(stop).await;
                Ok(())
            });
        }
    }
}

/// Roles running in one process: if one ends with an error, the others are
/// stopped too rather than leave half a herald running.
struct Roles {
    stop: CancellationToken,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<anyhow::Result<()>>)>,
}

impl Roles {
    fn new(shutdown: CancellationToken) -> Roles {
        Roles {
            stop: shutdown.child_token(),
            tasks: Vec::new(),
        }
    }

    fn stop(&self) -> CancellationToken {
        self.stop.clone()
    }

    fn spawn(
        &mut self,
        name: &'static str,
        role: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let stop = self.stop.clone();
        self.tasks.push((
            name,
            tokio::spawn(async move {
                let result = role.await;
                if result.is_err() {
                    stop.cancel();
                }
                result
            }),
        ));
    }

    /// Waits for every role; the first error (or panic) is returned, named.
    async fn wait(self) -> anyhow::Result<()> {
        let mut first_error = None;
        for (name, task) in self.tasks {
            let result = match task.await {
                Ok(result) => result.with_context(|| format!("{name} failed")),
                Err(e) => Err(anyhow::anyhow!("{name} panicked: {e}")),
            };
            if let Err(e) = result {
                tracing::error!(role = name, error = %format!("{e:#}"), "role ended with an error");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn print_banner(settings: &Settings, api: std::net::SocketAddr, public_key: &str, consumer: &str) {
    let url = redacted_url(settings.redis.url.expose());
    println!(
        r#"
herald is up
  api        http://{api}   (POST /v1/events, POST /v1/subscriptions, GET /readyz, GET /metrics)
  worker     consumer {consumer} in group {group}
  reclaimer  retries pending entries with backoff, dead-letters what keeps failing
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
