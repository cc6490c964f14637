//! Putting validated events into their streams: one idempotent script per event
//! (dedup record + `XADD`, atomic), a whole batch in one pipeline. An event's
//! stream is its key's partition; its id's dedup record is also kept in the
//! id's own partition (`reserve.lua`), so the same id published with another
//! key is found and refused (`409`) rather than added twice.

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
    dedup_window: Duration,
}

static PUBLISH: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
static RESERVE: std::sync::OnceLock<Script> = std::sync::OnceLock::new();

impl Publisher {
    pub fn new(db: Db, dedup_window: Duration) -> Publisher {
        Publisher { db, dedup_window }
    }

    /// Publishes a batch; results are in the order given. One round trip when every
    /// event's id and key fall in the same partition (always, with one partition);
    /// otherwise the ids are first reserved in their own partitions (a second round
    /// trip), so that one id published with two keys is a conflict, not two entries.
    pub async fn publish(&self, batch: &[Ready]) -> anyhow::Result<Vec<PublishOutcome>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &self.db.keys;
        let window_ms = self.dedup_window.as_millis().max(1) as u64;
        let mut conn = self.db.conn();
        let mut outcomes: Vec<Option<PublishOutcome>> = vec![None; batch.len()];

        let split: Vec<usize> = (0..batch.len())
            .filter(|&i| {
                keys.partition_for(&batch[i].id) != keys.partition_for(&batch[i].partition_key)
            })
            .collect();
        if !split.is_empty() {
            let reserve = crate::shared::db::script(&RESERVE, include_str!("reserve.lua"));
            let invocations: Vec<_> = split
                .iter()
                .map(|&i| {
                    let ready = &batch[i];
                    let mut inv = reserve.prepare_invoke();
                    inv.key(keys.dedup(keys.partition_for(&ready.id), &ready.id))
                        .arg(&ready.digest)
                        .arg(window_ms)
                        .arg(format!("p{}", keys.partition_for(&ready.partition_key)));
                    inv
                })
                .collect();
            let replies = run(&mut conn, reserve, &invocations).await?;
            for (&i, (verdict, where_)) in split.iter().zip(replies) {
                if verdict == "conflict" {
                    outcomes[i] = Some(PublishOutcome::Conflict {
                        id: batch[i].id.clone(),
                        stream_id: where_,
                    });
                }
            }
        }

        let todo: Vec<usize> = (0..batch.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        let publish = crate::shared::db::script(&PUBLISH, include_str!("publish.lua"));
        let invocations: Vec<_> = todo
            .iter()
            .map(|&i| {
                let ready = &batch[i];
                let partition = keys.partition_for(&ready.partition_key);
                let mut inv = publish.prepare_invoke();
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
                inv
            })
            .collect();
        let replies = run(&mut conn, publish, &invocations).await?;
        for (&i, (outcome, stream_id)) in todo.iter().zip(replies) {
            let id = batch[i].id.clone();
            let scheduled = stream_id == "scheduled";
            let stream_id = if scheduled { String::new() } else { stream_id };
            outcomes[i] = Some(match outcome.as_str() {
                "added" | "duplicate" | "scheduled" => PublishOutcome::Accepted(Published {
                    id,
                    stream_id,
                    duplicate: outcome == "duplicate",
                    scheduled,
                }),
                "conflict" => PublishOutcome::Conflict { id, stream_id },
                other => anyhow::bail!("publish script answered {other:?}"),
            });
        }

        // A conflict found at the id's home names the partition the id went to: find its entry there.
        for outcome in outcomes.iter_mut() {
            if let Some(PublishOutcome::Conflict { id, stream_id }) = outcome {
                if let Some(partition) = stream_id
                    .strip_prefix('p')
                    .and_then(|n| n.parse::<u32>().ok())
                {
                    let record: Option<String> = redis::cmd("GET")
                        .arg(keys.dedup(partition, id))
                        .query_async(&mut conn)
                        .await?;
                    *stream_id = record
                        .and_then(|r| r.split_once(' ').map(|(_, at)| at.to_string()))
                        .unwrap_or_default();
                }
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every event has an outcome"))
            .collect())
    }
}

/// Runs a pipeline of invocations of one script. On first use on a server (or after
/// a restart or SCRIPT FLUSH) Redis refuses `EVALSHA` before running anything: load
/// the script once and go again.
async fn run(
    conn: &mut crate::shared::db::Conn,
    script: &Script,
    invocations: &[redis::ScriptInvocation<'_>],
) -> anyhow::Result<Vec<(String, String)>> {
    if invocations.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for inv in invocations {
        pipe.invoke_script(inv);
    }
    match pipe.query_async(conn).await {
        Ok(replies) => Ok(replies),
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            Ok(pipe.query_async(conn).await?)
        }
        Err(e) => Err(e.into()),
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
