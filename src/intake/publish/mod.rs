//! Putting validated events into their streams: one idempotent script per event
//! (dedup record + `XADD`, atomic), a whole batch in one pipeline.

use std::time::Duration;

use redis::Script;
use serde::Serialize;

use crate::shared::db::Db;
use crate::shared::event::Event;

/// What became of one published event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    pub id: String,
    /// The stream entry; empty while the event waits for its `deliver_at`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stream_id: String,
    /// True when this id was already published with the same content: no second entry.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// True when the event waits in the schedule for its `deliver_at`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub scheduled: bool,
}

/// The outcome of one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    Accepted(Published),
    /// The id was published before with other content; `stream_id` is the original entry.
    Conflict {
        id: String,
        stream_id: String,
    },
}

/// An event ready to publish: validated and flattened into its stream fields,
/// with the digest of its content. This is also what the spool keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Ready {
    pub id: String,
    /// What chooses the partition: the event's `key`, or its id.
    pub partition_key: String,
    pub digest: String,
    /// `deliver_at` in unix milliseconds, 0 for none.
    #[serde(default)]
    pub deliver_at_ms: i64,
    pub fields: Vec<(String, String)>,
}

impl Ready {
    pub fn new(event: &Event, digest: String) -> Ready {
        Ready {
            id: event.id.clone(),
            partition_key: event.key.clone().unwrap_or_else(|| event.id.clone()),
            digest,
            deliver_at_ms: event.deliver_at.map_or(0, |t| t.timestamp_millis().max(0)),
            fields: event.to_fields(),
        }
    }
}

/// Adds events to the streams. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    db: Db,
    script: &'static Script,
    dedup_window: Duration,
}

static PUBLISH: std::sync::OnceLock<Script> = std::sync::OnceLock::new();

impl Publisher {
    pub fn new(db: Db, dedup_window: Duration) -> Publisher {
        Publisher {
            db,
            script: crate::shared::db::script(&PUBLISH, include_str!("publish.lua")),
            dedup_window,
        }
    }

    /// Publishes a batch in one round trip; results are in the order given.
    pub async fn publish(&self, batch: &[Ready]) -> anyhow::Result<Vec<PublishOutcome>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &self.db.keys;
        let window_ms = self.dedup_window.as_millis().max(1) as u64;
        let mut pipe = redis::pipe();
        let mut invocations = Vec::with_capacity(batch.len());
        for ready in batch {
            let partition = keys.partition_for(&ready.partition_key);
            let mut inv = self.script.prepare_invoke();
            inv.key(keys.stream(partition))
                .key(keys.dedup(partition, &ready.id))
                .key(keys.scheduled(partition))
                .key(keys.scheduled_events(partition))
                .arg(&ready.digest)
                .arg(window_ms)
                .arg(ready.deliver_at_ms)
                .arg(&ready.id);
            for (field, value) in &ready.fields {
                inv.arg(field).arg(value);
            }
            invocations.push(inv);
        }
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let mut conn = self.db.conn().await?;
        let replies: Vec<(String, String)> = match pipe.query_async(&mut conn).await {
            Ok(replies) => replies,
            // First use on this server, or after a restart or SCRIPT FLUSH: load it once and
            // go again (nothing ran: Redis refuses EVALSHA of an unknown script before running).
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.script.load_async(&mut conn).await?;
                pipe.query_async(&mut conn).await?
            }
            Err(e) => return Err(e.into()),
        };
        batch
            .iter()
            .zip(replies)
            .map(|(ready, (outcome, stream_id))| {
                let id = ready.id.clone();
                let scheduled = stream_id == "scheduled";
                let stream_id = if scheduled { String::new() } else { stream_id };
                match outcome.as_str() {
                    "added" | "duplicate" | "scheduled" => {
                        Ok(PublishOutcome::Accepted(Published {
                            id,
                            stream_id,
                            duplicate: outcome == "duplicate",
                            scheduled,
                        }))
                    }
                    "conflict" => Ok(PublishOutcome::Conflict { id, stream_id }),
                    other => anyhow::bail!("publish script answered {other:?}"),
                }
            })
            .collect()
    }
}

/// `herald publish`: events from the shell, also a load generator.
#[derive(clap::Args)]
pub struct PublishArgs {
    #[arg(long, default_value = "herald.test")]
    pub topic: String,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long, default_value = "Hello from herald")]
    pub title: String,
    #[arg(long)]
    pub body: Option<String>,
    /// How many events (each gets its own id).
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Events per second; 0 means as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Events sent to Redis in one pipeline.
    #[arg(long, default_value_t = 100)]
    pub batch: u64,
}

/// `herald publish`.
pub async fn run_cli(
    settings: crate::shared::config::Settings,
    args: PublishArgs,
) -> anyhow::Result<()> {
    use crate::shared::event::{EventInput, Notification};
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    let db = Db::connect(&settings).await?;
    let publisher = Publisher::new(db, settings.events.dedup_window);
    let defaults = settings.events.defaults();
    let per_batch = args.batch as f64;
    let interval =
        (args.rate > 0.0).then(|| std::time::Duration::from_secs_f64(per_batch / args.rate));
    let started = std::time::Instant::now();
    let mut sent: u64 = 0;
    let mut round: u32 = 0;
    while sent < args.count {
        let size = (args.count - sent).min(args.batch);
        let mut batch = Vec::with_capacity(size as usize);
        for _ in 0..size {
            let input = EventInput {
                id: None,
                topic: args.topic.clone(),
                user: args.user.clone(),
                key: args.key.clone(),
                headers: Default::default(),
                notification: Notification {
                    title: args.title.clone(),
                    body: args.body.clone(),
                    url: None,
                    icon: None,
                    tag: None,
                },
                publish_at: None,
                deliver_at: None,
                ttl: None,
                urgency: None,
            };
            let event = input
                .validate(defaults, chrono::Utc::now())
                .map_err(|e| anyhow::anyhow!("--{e}"))?;
            batch.push(Ready::new(&event, input.digest()));
        }
        for outcome in publisher.publish(&batch).await? {
            if let (PublishOutcome::Accepted(p), 1) = (outcome, args.count) {
                println!("{}", serde_json::to_string(&p)?);
            }
        }
        sent += size;
        round += 1;
        if let Some(interval) = interval {
            tokio::time::sleep_until((started + interval * round).into()).await;
        }
    }
    if args.count > 1 {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "published {} events in {secs:.2}s ({:.0}/s)",
            args.count,
            args.count as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}
