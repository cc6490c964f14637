//! Putting validated events into their streams: one `FCALL
//! herald_publish_batch` per partition's events (per event a dedup record and
//! an `XADD`, atomic; see `library.lua`, whose `herald_publish` producers may
//! call too), a whole request in one pipeline. An event's stream is its key's
//! partition; its id's dedup record is also kept in the id's own partition
//! (`herald_reserve`), so the same id published with another key is found and
//! refused (`409`) rather than added twice.

pub mod library;

use serde::Serialize;

use crate::shared::db::Db;
use crate::shared::event::{Event, EventInput};

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
    /// The function refused the event. Not expected from herald's own calls
    /// (`herald_publish_batch`, which takes the fields herald checked itself).
    Invalid {
        id: String,
        error: String,
    },
}

/// An event ready to publish: validated, as the fields of its stream entry.
/// This is also what the spool keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Ready {
    pub id: String,
    /// What chooses the partition: the event's `key`, or its id.
    pub partition_key: String,
    /// The fields as the producer gave them (what the idempotent publish
    /// compares), times written in one format.
    pub fields: Vec<(String, String)>,
    /// What herald filled in for fields not given (`publish_at`, `ttl`,
    /// `urgency`): written to the entry, not compared. Readers would fill them
    /// the same way; they are written so that the entries read the same by
    /// workers of the previous version during a rolling upgrade.
    #[serde(default)]
    pub defaults: Vec<(String, String)>,
}

impl Ready {
    /// The content's digest, as `herald_publish` computes it for a producer's
    /// call (library.lua, `check`): SHA-1 over the fields but `id`, `v` and
    /// `traceparent`, sorted by name, each `<len>:<name>=<len>:<value>`, one per line.
    pub fn digest(&self) -> String {
        let mut content: Vec<&(String, String)> = self
            .fields
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "id" | "v" | "traceparent"))
            .collect();
        content.sort();
        // Fed to the hash piece by piece: no text built per field.
        let mut hash = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
        let mut digits = [0u8; 20];
        for (i, (name, value)) in content.iter().enumerate() {
            if i > 0 {
                hash.update(b"\n");
            }
            hash.update(decimal(name.len(), &mut digits));
            hash.update(b":");
            hash.update(name.as_bytes());
            hash.update(b"=");
            hash.update(decimal(value.len(), &mut digits));
            hash.update(b":");
            hash.update(value.as_bytes());
        }
        crate::shared::event::hex_lower(hash.finish().as_ref())
    }

    /// `deliver_at` in unix ms, 0 when there is none.
    pub fn deliver_at_ms(&self) -> i64 {
        self.fields
            .iter()
            .find(|(name, _)| name == "deliver_at")
            .and_then(|(_, at)| chrono::DateTime::parse_from_rfc3339(at).ok())
            .map_or(0, |at| at.timestamp_millis().max(1))
    }

    /// `input`, which validated as `event` (whose id it takes, generated or given).
    pub fn new(input: &EventInput, event: &Event) -> Ready {
        // The event's fields, split into what the producer gave and what
        // validation filled in; `v` is the function's to write.
        let filled = |name: &str| match name {
            "publish_at" => input.publish_at.is_none(),
            "ttl" => input.ttl.is_none(),
            "urgency" => input.urgency.is_none(),
            _ => false,
        };
        let (defaults, fields) = event
            .to_fields()
            .into_iter()
            .filter(|(name, _)| name != "v")
            .partition(|(name, _)| filled(name));
        Ready {
            id: event.id.clone(),
            partition_key: event.key.clone().unwrap_or_else(|| event.id.clone()),
            fields,
            defaults,
        }
    }
}

/// `n` in decimal, written into `digits`.
fn decimal(mut n: usize, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[start..];
        }
    }
}

/// A function's `{text, text}` answer.
fn pair(value: redis::Value) -> redis::RedisResult<(String, String)> {
    redis::from_redis_value(value).map_err(redis::RedisError::from)
}

/// With `redis.wait_replicas`: the events were written, but fewer replicas
/// than asked confirmed them in time. `outcomes` are the events' (an accepted
/// one may still be lost with its primary, so it is to be spooled and published
/// again, which is idempotent; a conflict or a refusal stands).
#[derive(Debug, thiserror::Error)]
#[error("only {confirmed} of redis.wait_replicas = {replicas} replicas confirmed the publish within {wait_ms} ms")]
pub struct NotReplicated {
    pub confirmed: u64,
    pub replicas: u32,
    pub wait_ms: u64,
    pub outcomes: Vec<PublishOutcome>,
}

/// Most events in one `herald_publish_batch` call: a call runs alone on Redis
/// (about 8 µs per event), so a bigger request goes as several, between which
/// other clients' commands run.
const BATCH_CALL: usize = 100;

/// What one reply of a publish pipeline answers.
enum Answer {
    /// A `herald_publish_batch` call: its events' indexes in the batch.
    Events(Vec<usize>),
    /// The `WAIT` after a partition's calls.
    Wait,
}

/// Adds events to the streams, through the `herald` Redis Function library. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    db: Db,
    /// The function library's code, loaded again should Redis lose it.
    library: std::sync::Arc<str>,
    /// `events.dedup_window` in ms, passed with each call: this process's
    /// setting, whatever another role wrote into the loaded library.
    window_ms: u64,
    /// `redis.wait_replicas` and `redis.wait_timeout` (ms).
    wait: (u32, u64),
}

impl Publisher {
    /// A publisher through the library with `settings` written in (see [`library::load`]).
    pub fn new(db: Db, settings: &crate::shared::config::Settings) -> Publisher {
        Publisher {
            db,
            library: library::code(settings).into(),
            window_ms: settings.events.dedup_window.as_millis().max(1) as u64,
            wait: (
                settings.redis.wait_replicas,
                settings.redis.wait_timeout.as_millis().max(1) as u64,
            ),
        }
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
        let mut conn = self.db.publish_conn();
        let mut outcomes: Vec<Option<PublishOutcome>> = vec![None; batch.len()];

        let split: Vec<usize> = (0..batch.len())
            .filter(|&i| {
                keys.partition_for(&batch[i].id) != keys.partition_for(&batch[i].partition_key)
            })
            .collect();
        if !split.is_empty() {
            let mut pipe = redis::pipe();
            for &i in &split {
                let ready = &batch[i];
                pipe.cmd("FCALL")
                    .arg("herald_reserve")
                    .arg(1)
                    .arg(keys.dedup(keys.partition_for(&ready.id), &ready.id))
                    .arg(format!("p{}", keys.partition_for(&ready.partition_key)))
                    .arg(self.window_ms);
                for (field, value) in &ready.fields {
                    pipe.arg(field).arg(value);
                }
            }
            for (&i, reply) in split
                .iter()
                .zip(library::call(&self.db, &self.library, &mut conn, &pipe).await?)
            {
                let id = batch[i].id.clone();
                outcomes[i] = match reply.and_then(pair) {
                    Ok((verdict, where_)) if verdict == "conflict" => {
                        Some(PublishOutcome::Conflict {
                            id,
                            stream_id: where_,
                        })
                    }
                    Ok(_) => None,
                    Err(e) => Some(library::refused(id, &e)?),
                };
            }
        }

        // (partition, index) of each event still to publish.
        let mut todo: Vec<(u32, usize)> = (0..batch.len())
            .filter(|&i| outcomes[i].is_none())
            .map(|i| (keys.partition_for(&batch[i].partition_key), i))
            .collect();
        // A partition's events together, in one `herald_publish_batch` call per
        // run of at most BATCH_CALL (each partition followed by its `WAIT`,
        // which goes where they went: on a cluster, their master). Stable: the
        // events of one key keep their order.
        todo.sort_by_key(|&(partition, _)| partition);
        let (replicas, wait_ms) = self.wait;
        let mut pipe = redis::pipe();
        // What each reply of the pipeline answers.
        let mut answers: Vec<Answer> = Vec::new();
        for run in todo.chunk_by(|a, b| a.0 == b.0) {
            let partition = run[0].0;
            for call in run.chunks(BATCH_CALL) {
                let call: Vec<usize> = call.iter().map(|&(_, i)| i).collect();
                pipe.cmd("FCALL")
                    .arg("herald_publish_batch")
                    .arg(3 + call.len())
                    .arg(keys.stream(partition))
                    .arg(keys.scheduled(partition))
                    .arg(keys.scheduled_events(partition));
                for &i in &call {
                    pipe.arg(keys.dedup(partition, &batch[i].id));
                }
                pipe.arg(self.window_ms);
                for &i in &call {
                    let ready = &batch[i];
                    // The whole entry: its version, the fields as given, the defaults.
                    let versioned = ready.fields.iter().any(|(name, _)| name == "v");
                    let count = ready.fields.len() + ready.defaults.len() + usize::from(!versioned);
                    pipe.arg(ready.digest())
                        .arg(ready.deliver_at_ms())
                        .arg(&ready.id)
                        .arg(count);
                    if !versioned {
                        pipe.arg("v").arg(crate::shared::event::ENTRY_VERSION);
                    }
                    for (field, value) in ready.fields.iter().chain(&ready.defaults) {
                        pipe.arg(field).arg(value);
                    }
                }
                answers.push(Answer::Events(call));
            }
            if replicas > 0 {
                pipe.cmd("WAIT").arg(replicas).arg(wait_ms);
                answers.push(Answer::Wait);
            }
        }
        let mut unconfirmed = None;
        for (answer, reply) in answers
            .into_iter()
            .zip(library::call(&self.db, &self.library, &mut conn, &pipe).await?)
        {
            let Answer::Events(answer) = answer else {
                let confirmed: u64 = match reply {
                    Ok(value) => redis::from_redis_value(value).unwrap_or(0),
                    Err(e) => return Err(e.into()),
                };
                if confirmed < u64::from(replicas) {
                    unconfirmed = Some(confirmed);
                }
                continue;
            };
            // A call that failed as a whole (Redis refused it): the publish fails.
            let replies = match reply {
                Ok(redis::Value::Array(replies)) if replies.len() == answer.len() => replies,
                Ok(other) => anyhow::bail!("herald_publish_batch answered {other:?}"),
                Err(e) => anyhow::bail!("herald_publish_batch failed: {e}"),
            };
            for (i, reply) in answer.into_iter().zip(replies) {
                let id = batch[i].id.clone();
                let reply = match reply {
                    redis::Value::ServerError(e) => Err(redis::RedisError::from(e)),
                    value => pair(value),
                };
                outcomes[i] = Some(match reply {
                    Ok((stream_id, outcome)) => match outcome.as_str() {
                        "added" | "duplicate" | "scheduled" => {
                            PublishOutcome::Accepted(Published {
                                id,
                                scheduled: stream_id.is_empty(),
                                stream_id,
                                duplicate: outcome == "duplicate",
                            })
                        }
                        other => anyhow::bail!("herald_publish_batch answered {other:?}"),
                    },
                    Err(e) => library::refused(id, &e)?,
                });
            }
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
        let outcomes: Vec<PublishOutcome> = outcomes
            .into_iter()
            .map(|o| o.expect("every event has an outcome"))
            .collect();
        if let Some(confirmed) = unconfirmed {
            return Err(NotReplicated {
                confirmed,
                replicas,
                wait_ms,
                outcomes,
            }
            .into());
        }
        Ok(outcomes)
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
    library::load(&db, &settings).await?;
    let publisher = Publisher::new(db, &settings);
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
                notification: Some(Notification {
                    title: args.title.clone(),
                    body: args.body.clone(),
                    ..Notification::default()
                }),
                data: None,
                publish_at: None,
                deliver_at: None,
                ttl: None,
                urgency: None,
            };
            let event = input
                .validate(&defaults, chrono::Utc::now())
                .map_err(|e| anyhow::anyhow!("--{e}"))?;
            batch.push(Ready::new(&input, &event));
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
