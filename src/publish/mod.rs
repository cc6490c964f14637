//! Putting validated events into their streams: one idempotent script per event
//! (dedup record + `XADD`, atomic), a whole batch in one pipeline.

use std::time::Duration;

use redis::Script;
use serde::Serialize;

use crate::db::Db;
use crate::event::Event;

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
            script: crate::db::script(&PUBLISH, include_str!("publish.lua")),
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
