//! The dead-letter stream: entries (or one device's share of an event) that
//! cannot be delivered, with the original fields and why, written atomically
//! with the acknowledgement; and the operator's side: list, show, replay, purge.
//!
//! A dead letter's own fields start with `dlq.` (`dlq.reason`, `dlq.last_error`,
//! `dlq.last_status`, `dlq.attempts`, `dlq.source_stream`, `dlq.source_id`,
//! `dlq.consumer`, `dlq.first_seen`, `dlq.dead_at`, `dlq.subscription`); every
//! other field is the original entry's, so `XRANGE` shows both.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Script;
use serde::Serialize;

use crate::shared::alerts::Alerts;
use crate::shared::db::{script, Db};
use crate::shared::event::format_time;

/// Why and how something died.
#[derive(Debug, Clone, Default)]
pub struct DeadLetter {
    /// A short, bounded reason: `undecodable`, `push_bad_request`, `max_deliveries`, ...
    pub reason: String,
    pub last_error: Option<String>,
    pub last_status: Option<u16>,
    /// Deliveries of the entry so far.
    pub attempts: u64,
    /// The one device that failed, when the rest of the event went through.
    pub subscription: Option<String>,
}

/// A dead letter as read back.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterEntry {
    /// Its id in the dead-letter stream.
    pub id: String,
    pub partition: u32,
    pub reason: String,
    pub dead_at: String,
    pub event_id: Option<String>,
    pub topic: Option<String>,
    pub user: Option<String>,
    pub subscription: Option<String>,
    /// Every field, original and `dlq.*`.
    pub fields: BTreeMap<String, String>,
}

/// Which dead letters a command applies to.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub reason: Option<String>,
    pub topic: Option<String>,
    pub user: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only the dead letters of this event.
    pub event_id: Option<String>,
}

impl Filter {
    /// Whether it lets every dead letter through.
    pub fn is_empty(&self) -> bool {
        self.reason.is_none()
            && self.topic.is_none()
            && self.user.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.event_id.is_none()
    }

    pub fn matches(&self, e: &DeadLetterEntry) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        let dead_at = DateTime::parse_from_rfc3339(&e.dead_at)
            .ok()
            .map(|t| t.with_timezone(&Utc));
        self.reason.as_ref().is_none_or(|r| &e.reason == r)
            && eq(&self.topic, &e.topic)
            && eq(&self.user, &e.user)
            && eq(&self.event_id, &e.event_id)
            && self.since.is_none_or(|s| dead_at.is_some_and(|d| d >= s))
            && self.until.is_none_or(|u| dead_at.is_some_and(|d| d < u))
    }
}

static DEAD_LETTER: OnceLock<Script> = OnceLock::new();
static TOMBSTONE: OnceLock<Script> = OnceLock::new();
static REPLAY: OnceLock<Script> = OnceLock::new();

/// Writes and reads dead letters. Cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    db: Db,
    group: String,
    alerts: Alerts,
    /// Lifetime of per-event outcome markers (beyond the retry horizon).
    outcomes_ttl: Duration,
    /// How an entry's missing fields are filled in (its TTL).
    defaults: crate::shared::event::EventDefaults,
}

impl DeadLetters {
    pub fn new(
        db: Db,
        group: &str,
        alerts: Alerts,
        outcomes_ttl: Duration,
        defaults: crate::shared::event::EventDefaults,
    ) -> DeadLetters {
        DeadLetters {
            db,
            group: group.to_string(),
            alerts,
            outcomes_ttl,
            defaults,
        }
    }

    /// Dead-letters a stream entry. With `ack`, the entry is acknowledged in the
    /// same script; with a `subscription` in `why`, that device is marked dead for
    /// this event so that retries skip it.
    pub async fn write(
        &self,
        stream: &str,
        stream_id: &str,
        fields: &HashMap<String, String>,
        consumer: &str,
        why: &DeadLetter,
        ack: bool,
    ) -> anyhow::Result<String> {
        let keys = &self.db.keys;
        let partition = keys
            .partition_of(stream)
            .ok_or_else(|| anyhow::anyhow!("{stream} is not one of herald's streams"))?;
        let event_id = fields.get("id").map(String::as_str).unwrap_or("-");
        let mut inv = script(&DEAD_LETTER, include_str!("dead_letter.lua")).prepare_invoke();
        inv.key(keys.dead_letters(partition))
            .key(stream)
            .key(keys.entry_outcomes(partition, event_id, fields))
            .key(keys.retry_at(partition))
            .arg(&self.group)
            .arg(stream_id)
            .arg(if ack { "ack" } else { "keep" })
            .arg(why.subscription.as_deref().unwrap_or(""))
            .arg(self.outcomes_ttl.as_secs().max(1));
        let mut original: Vec<(&String, &String)> = fields
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq."))
            .collect();
        original.sort();
        for (k, v) in original {
            inv.arg(k).arg(v);
        }
        for (k, v) in metadata(stream, stream_id, consumer, why) {
            inv.arg(k).arg(v);
        }
        let mut conn = self.db.conn();
        let id: String = inv.invoke_async(&mut conn).await?;
        tracing::error!(
            reason = %why.reason,
            stream,
            stream_id,
            event_id,
            subscription = why.subscription.as_deref().unwrap_or(""),
            attempts = why.attempts,
            last_status = ?why.last_status,
            last_error = why.last_error.as_deref().unwrap_or(""),
            dead_letter_id = %id,
            "dead-lettered"
        );
        self.alerts.dead_letter(&why.reason);
        crate::shared::metrics::dead_lettered(&why.reason);
        Ok(id)
    }

    /// Records, once, an entry deleted or trimmed while pending; drops it from the pending list.
    pub async fn tombstone(
        &self,
        stream: &str,
        stream_id: &str,
        consumer: &str,
    ) -> anyhow::Result<Option<String>> {
        let keys = &self.db.keys;
        let partition = keys
            .partition_of(stream)
            .ok_or_else(|| anyhow::anyhow!("{stream} is not one of herald's streams"))?;
        let why = DeadLetter {
            reason: "deleted_while_pending".into(),
            last_error: Some(
                "the entry was deleted or trimmed from the stream before it was processed".into(),
            ),
            ..DeadLetter::default()
        };
        let mut inv = script(&TOMBSTONE, include_str!("tombstone.lua")).prepare_invoke();
        inv.key(keys.dead_letters(partition))
            .key(keys.tombstone(partition, stream_id))
            .key(stream)
            .key(keys.retry_at(partition))
            .arg(&self.group)
            .arg(stream_id)
            .arg(self.outcomes_ttl.as_secs().max(1));
        for (k, v) in metadata(stream, stream_id, consumer, &why) {
            inv.arg(k).arg(v);
        }
        let mut conn = self.db.conn();
        let id: Option<String> = inv.invoke_async(&mut conn).await?;
        if let Some(id) = &id {
            tracing::error!(reason = "deleted_while_pending", stream, stream_id, dead_letter_id = %id, "dead-lettered");
            self.alerts.dead_letter("deleted_while_pending");
            crate::shared::metrics::dead_lettered("deleted_while_pending");
        }
        Ok(id)
    }

    /// How many dead letters match `filter`, and the oldest `keep` of them;
    /// each partition's stream read from `from` (a stream id) on. Memory stays
    /// within `keep` whatever the streams hold; without a filter the count is
    /// their lengths and only `keep` are read.
    pub async fn count_and_list(
        &self,
        filter: &Filter,
        from: Option<&str>,
        keep: usize,
    ) -> anyhow::Result<(u64, Vec<DeadLetterEntry>)> {
        let mut conn = self.db.conn();
        let unfiltered = filter.is_empty() && from.is_none();
        if unfiltered {
            let mut total = 0u64;
            for partition in 0..self.db.keys.partitions() {
                let n: u64 = redis::cmd("XLEN")
                    .arg(self.db.keys.dead_letters(partition))
                    .query_async(&mut conn)
                    .await?;
                total += n;
            }
            return Ok((total, self.list(filter, keep).await?));
        }
        self.scan(filter, from, keep, false).await
    }

    /// Dead letters of every partition, oldest first, that match `filter`; at most `limit`.
    pub async fn list(
        &self,
        filter: &Filter,
        limit: usize,
    ) -> anyhow::Result<Vec<DeadLetterEntry>> {
        Ok(self.scan(filter, None, limit, true).await?.1)
    }

    /// Reads every partition's dead letters from `from` (or the start) on,
    /// counting those `filter` lets through and keeping the first `keep`;
    /// with `stop_when_kept`, stops reading once it has them (the count is
    /// then `keep`).
    async fn scan(
        &self,
        filter: &Filter,
        from: Option<&str>,
        keep: usize,
        stop_when_kept: bool,
    ) -> anyhow::Result<(u64, Vec<DeadLetterEntry>)> {
        let mut conn = self.db.conn();
        let (mut total, mut kept) = (0u64, Vec::new());
        for partition in 0..self.db.keys.partitions() {
            let key = self.db.keys.dead_letters(partition);
            let mut start = from.unwrap_or("-").to_string();
            loop {
                let page: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut conn)
                    .await?;
                let Some((last, _)) = page.last() else { break };
                start = format!("({last}");
                let full = page.len() == 500;
                for (id, fields) in page {
                    let entry = entry(partition, id, fields);
                    if !filter.matches(&entry) {
                        continue;
                    }
                    total += 1;
                    if kept.len() < keep {
                        kept.push(entry);
                    }
                    if stop_when_kept && kept.len() >= keep {
                        return Ok((total, kept));
                    }
                }
                if !full {
                    break;
                }
            }
        }
        Ok((total, kept))
    }

    /// One dead letter of one partition's stream.
    pub async fn show_at(
        &self,
        partition: u32,
        id: &str,
    ) -> anyhow::Result<Option<DeadLetterEntry>> {
        if partition >= self.db.keys.partitions() {
            return Ok(None);
        }
        let found: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(self.db.keys.dead_letters(partition))
            .arg(id)
            .arg(id)
            .query_async(&mut self.db.conn())
            .await?;
        Ok(found
            .into_iter()
            .next()
            .map(|(id, fields)| entry(partition, id, fields)))
    }

    /// One dead letter by id (searched in every partition).
    pub async fn show(&self, id: &str) -> anyhow::Result<Option<DeadLetterEntry>> {
        let mut conn = self.db.conn();
        for partition in 0..self.db.keys.partitions() {
            let found: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(self.db.keys.dead_letters(partition))
                .arg(id)
                .arg(id)
                .query_async(&mut conn)
                .await?;
            if let Some((id, fields)) = found.into_iter().next() {
                return Ok(Some(entry(partition, id, fields)));
            }
        }
        Ok(None)
    }

    /// Puts a dead letter back into its source stream (event id kept) and removes
    /// it from the dead-letter stream, in one script. Returns the new stream id.
    /// A device's dead letter is replayed to that device only (`replay_only`), so
    /// the devices that had the event are never pushed again, however old it is;
    /// a whole entry's dead letter (nobody got it) goes to every device again.
    pub async fn replay(&self, dead: &DeadLetterEntry) -> anyhow::Result<String> {
        let keys = &self.db.keys;
        let source = dead
            .fields
            .get("dlq.source_stream")
            .cloned()
            .unwrap_or_else(|| keys.stream(dead.partition));
        anyhow::ensure!(
            keys.partition_of(&source) == Some(dead.partition),
            "dead letter {} names source stream {source}, which is not its partition's stream",
            dead.id
        );
        let event_id = dead.event_id.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "dead letter {} is a tombstone: there is no event to replay",
                dead.id
            )
        })?;
        // A forced replay copy's devices are tracked under its run: clear the state there.
        let fields: HashMap<String, String> = dead
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Its TTL counts from when it was due, as for any retry: once it is over there is
        // nothing left to deliver, and the dead letter stays (rather than vanish quietly).
        if let Ok(event) = crate::shared::event::Event::from_fields(&fields, &self.defaults) {
            if event.ttl_left(Utc::now()).is_none() {
                anyhow::bail!(
                    "dead letter {}: the event's TTL ({} s from {}) is over, so a push service would drop it; nothing replayed (publish it again with a new id, or purge it with `herald dlq purge {} --yes`)",
                    dead.id,
                    event.ttl,
                    format_time(event.due_at()),
                    dead.id
                );
            }
        }
        let outcomes = keys.entry_outcomes(dead.partition, event_id, &fields);
        let mut conn = self.db.conn();
        let id: String = script(&REPLAY, include_str!("replay.lua"))
            .key(keys.dead_letters(dead.partition))
            .key(&source)
            .key(outcomes)
            .arg(&dead.id)
            .arg(crate::shared::stream::REPLAY_ONLY)
            .invoke_async(&mut conn)
            .await?;
        tracing::info!(dead_letter_id = %dead.id, event_id, stream_id = %id, "replayed a dead letter");
        Ok(id)
    }

    /// Deletes dead letters for good. Returns how many were deleted.
    pub async fn purge(&self, dead: &[DeadLetterEntry]) -> anyhow::Result<u64> {
        let mut conn = self.db.conn();
        let mut deleted = 0;
        for e in dead {
            let n: u64 = redis::cmd("XDEL")
                .arg(self.db.keys.dead_letters(e.partition))
                .arg(&e.id)
                .query_async(&mut conn)
                .await?;
            deleted += n;
        }
        Ok(deleted)
    }
}

fn metadata(
    stream: &str,
    stream_id: &str,
    consumer: &str,
    why: &DeadLetter,
) -> Vec<(&'static str, String)> {
    let mut m = vec![
        ("dlq.reason", why.reason.clone()),
        ("dlq.attempts", why.attempts.to_string()),
        ("dlq.source_stream", stream.to_string()),
        ("dlq.source_id", stream_id.to_string()),
        ("dlq.consumer", consumer.to_string()),
        ("dlq.first_seen", first_seen(stream_id)),
        ("dlq.dead_at", format_time(Utc::now())),
    ];
    if let Some(e) = &why.last_error {
        m.push(("dlq.last_error", e.clone()));
    }
    if let Some(s) = why.last_status {
        m.push(("dlq.last_status", s.to_string()));
    }
    if let Some(s) = &why.subscription {
        m.push(("dlq.subscription", s.clone()));
    }
    m
}

/// When an entry entered its stream: the milliseconds part of its id.
fn first_seen(stream_id: &str) -> String {
    crate::shared::stream::id_time(stream_id)
        .map(format_time)
        .unwrap_or_default()
}

fn entry(partition: u32, id: String, fields: Vec<(String, String)>) -> DeadLetterEntry {
    let fields: BTreeMap<String, String> = fields.into_iter().collect();
    DeadLetterEntry {
        id,
        partition,
        reason: fields.get("dlq.reason").cloned().unwrap_or_default(),
        dead_at: fields.get("dlq.dead_at").cloned().unwrap_or_default(),
        event_id: fields.get("id").cloned(),
        topic: fields.get("topic").cloned(),
        user: fields.get("user").cloned(),
        subscription: fields.get("dlq.subscription").cloned(),
        fields,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn first_seen_is_read_from_the_stream_id() {
        assert_eq!(
            super::first_seen("1763717000000-3"),
            "2025-11-21T09:23:20.000Z"
        );
        assert_eq!(super::first_seen("garbage"), "");
    }
}
