//! The reclaimer: scans the pending entries of every partition and claims an
//! entry only when it has been idle for its own backoff (and past any
//! `Retry-After`), then processes it exactly as the worker does. Entries that
//! have used up `retry.max_deliveries` go to the dead-letter stream; entries
//! deleted or trimmed while pending leave a tombstone there. It also removes
//! consumers that are idle with nothing pending, and applies retention.
//!
//! Several reclaimers may run at once: `XCLAIM` with a minimum idle time lets
//! only the first claim an entry (claiming resets its idle time).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::future::join_all;
use redis::{Script, Value};
use tokio_util::sync::CancellationToken;

use crate::deliver::{EntryOutcome, Worker};
use crate::recover::retention::Retention;
use crate::shared::config::Settings;
use crate::shared::dead_letter::DeadLetter;
use crate::shared::retry::seed_for;
use crate::shared::stream::{info_number, info_text, is_nogroup, parse_entry_list, Entry, Info};

/// What one scan of one partition did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Pending entries looked at.
    pub scanned: usize,
    /// Entries claimed and processed, with their outcomes.
    pub processed: Vec<(String, EntryOutcome)>,
    /// Entries dead-lettered for having used up their deliveries.
    pub exhausted: usize,
    /// Entries found deleted while pending (tombstones written).
    pub tombstones: usize,
}

/// One pending entry as `XPENDING` describes it.
struct Pending {
    id: String,
    idle: Duration,
    deliveries: u64,
}

/// The reclaimer. `run` it, or step it with [`Reclaimer::scan`].
pub struct Reclaimer {
    worker: Worker,
    retention: Retention,
    retention_interval: Duration,
    interval: Duration,
    scan_batch: usize,
    consumer_idle_timeout: Duration,
}

static DELETE_IDLE_CONSUMER: OnceLock<Script> = OnceLock::new();

fn delete_idle_consumer() -> &'static Script {
    crate::shared::db::script(
        &DELETE_IDLE_CONSUMER,
        include_str!("delete_idle_consumer.lua"),
    )
}

impl Reclaimer {
    /// A reclaimer that claims under its own consumer name (`<consumer>-reclaimer`).
    pub fn new(worker: Worker, settings: &Settings) -> Reclaimer {
        let name = format!("{}-reclaimer", worker.consumer());
        Reclaimer {
            retention: Retention::new(worker.db().clone(), settings.retention.clone()),
            retention_interval: settings.retention.interval,
            worker: worker.with_consumer(name),
            interval: settings.reclaimer.interval,
            scan_batch: settings.reclaimer.scan_batch,
            consumer_idle_timeout: settings.reclaimer.consumer_idle_timeout,
        }
    }

    pub fn consumer(&self) -> &str {
        self.worker.consumer()
    }

    /// Scans every `reclaimer.interval` until shutdown; the scan in progress finishes first.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.worker.ensure_groups().await?;
        tracing::info!(consumer = %self.consumer(), "reclaimer started");
        // Right after a start, or after Redis was unreachable, every pending entry looks
        // idle (heartbeats could not land): give live workers a heartbeat round first.
        let quiet = self.worker.policy().base_delay;
        let mut quiet_until = Instant::now() + quiet;
        let mut last_hygiene: Option<Instant> = None;
        let mut last_trim: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            if Instant::now() < quiet_until {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep_until(quiet_until.into()) => {}
                }
                continue;
            }
            for partition in 0..self.worker.db().keys.partitions() {
                match self.scan(partition).await {
                    Ok(o) if !o.processed.is_empty() || o.exhausted > 0 || o.tombstones > 0 => {
                        crate::shared::metrics::reclaimed(o.processed.len() as u64);
                        tracing::info!(
                            partition,
                            claimed = o.processed.len(),
                            exhausted = o.exhausted,
                            tombstones = o.tombstones,
                            "reclaimed pending entries"
                        )
                    }
                    Ok(_) => {}
                    Err(e) if is_nogroup(&e) => {
                        tracing::warn!(
                            partition,
                            "consumer group is missing; recreating it from id 0"
                        );
                        if let Err(e) = self.worker.ensure_groups().await {
                            tracing::warn!(error = %format!("{e:#}"), "cannot recreate the consumer group");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(partition, error = %format!("{e:#}"), "pending scan failed; will retry");
                        quiet_until = Instant::now() + quiet;
                    }
                }
            }
            if last_trim.is_none_or(|t| t.elapsed() >= self.retention_interval) {
                last_trim = Some(Instant::now());
                for partition in 0..self.worker.db().keys.partitions() {
                    if let Err(e) = self.retention.trim(partition).await {
                        tracing::warn!(partition, error = %format!("{e:#}"), "retention trim failed");
                    }
                }
            }
            if last_hygiene.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                last_hygiene = Some(Instant::now());
                if let Err(e) = self.remove_idle_consumers().await {
                    tracing::warn!(error = %format!("{e:#}"), "consumer clean-up failed");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        tracing::info!(consumer = %self.consumer(), "reclaimer stopped");
        Ok(())
    }

    /// Claims and processes the due pending entries of one partition.
    pub async fn scan(&self, partition: u32) -> anyhow::Result<ScanOutcome> {
        let db = self.worker.db();
        let stream = db.keys.stream(partition);
        let policy = *self.worker.policy();
        let mut outcome = ScanOutcome::default();
        let mut start = "-".to_string();
        loop {
            let page = self.pending_page(&stream, &start).await?;
            let Some(last) = page.last() else { break };
            start = format!("({}", last.id);
            let full = page.len() == self.scan_batch;
            outcome.scanned += page.len();

            let waits = self.not_before(partition, &page).await?;
            let now_ms = chrono::Utc::now().timestamp_millis();
            let mut due: Vec<(&Pending, bool, Duration)> = Vec::new();
            for (p, wait) in page.iter().zip(waits) {
                let (until_ms, held) = wait.unwrap_or((0, false));
                let wait_left = Duration::from_millis((until_ms - now_ms).max(0) as u64);
                let min_idle = policy.backoff(p.deliveries, seed_for(&p.id));
                if p.idle >= min_idle && wait_left.is_zero() {
                    due.push((p, held, min_idle));
                }
            }
            // An entry someone is still working on (its lease is alive) is not claimed:
            // the claim would only use up one of its attempts.
            let busy = self.leased(partition, &due).await?;
            let due: Vec<(&Pending, bool, Duration)> = due
                .into_iter()
                .zip(busy)
                .filter(|(_, busy)| !busy)
                .map(|(d, _)| d)
                .collect();
            if due.is_empty() {
                if full {
                    continue;
                }
                break;
            }
            let claimed = self.claim(&stream, &due).await?;
            let mut to_process = Vec::new();
            for ((p, held, _), result) in due.iter().zip(claimed) {
                match result {
                    Claim::Entry(mut entry) => {
                        // A wait behind an open breaker does not use up an attempt.
                        entry.deliveries = if *held {
                            p.deliveries
                        } else {
                            p.deliveries + 1
                        };
                        if !*held && policy.exhausted(p.deliveries) {
                            self.dead_letter_exhausted(&entry).await?;
                            outcome.exhausted += 1;
                        } else {
                            to_process.push(entry);
                        }
                    }
                    Claim::Deleted => {
                        if self
                            .worker
                            .dead_letters()
                            .tombstone(&stream, &p.id, self.consumer())
                            .await?
                            .is_some()
                        {
                            outcome.tombstones += 1;
                        }
                    }
                    Claim::TakenByAnother => {}
                }
            }
            outcome.processed.extend(
                join_all(to_process.into_iter().map(|entry| async move {
                    let id = entry.id.clone();
                    (id, self.worker.process_entry(entry).await)
                }))
                .await,
            );
            if !full {
                break;
            }
        }
        Ok(outcome)
    }

    /// `XPENDING stream group IDLE <base> (start + COUNT n`: entries idle at least the shortest backoff.
    async fn pending_page(&self, stream: &str, start: &str) -> anyhow::Result<Vec<Pending>> {
        let db = self.worker.db();
        let base = self.worker.policy().base_delay;
        let mut conn = db.conn().await?;
        let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(self.worker.group())
            .arg("IDLE")
            .arg(base.as_millis() as u64)
            .arg(start)
            .arg("+")
            .arg(self.scan_batch)
            .query_async(&mut conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, _consumer, idle_ms, deliveries)| Pending {
                id,
                idle: Duration::from_millis(idle_ms),
                deliveries,
            })
            .collect())
    }

    /// The recorded not-before time (unix ms) of each entry, and whether it was an open breaker's.
    async fn not_before(
        &self,
        partition: u32,
        page: &[Pending],
    ) -> anyhow::Result<Vec<Option<(i64, bool)>>> {
        let db = self.worker.db();
        let mut conn = db.conn().await?;
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(db.keys.retry_at(partition));
        for p in page {
            cmd.arg(&p.id);
        }
        let values: Vec<Option<String>> = cmd.query_async(&mut conn).await?;
        Ok(values
            .into_iter()
            .map(|v| {
                v.and_then(|text| {
                    let (ms, held) = match text.strip_suffix(":held") {
                        Some(ms) => (ms, true),
                        None => (text.as_str(), false),
                    };
                    ms.parse::<i64>().ok().map(|ms| (ms, held))
                })
            })
            .collect())
    }

    /// Whether each entry's lease is held (someone is processing it right now).
    async fn leased(
        &self,
        partition: u32,
        due: &[(&Pending, bool, Duration)],
    ) -> anyhow::Result<Vec<bool>> {
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.worker.db();
        let mut cmd = redis::cmd("MGET");
        for (p, _, _) in due {
            cmd.arg(db.keys.lease(partition, &p.id));
        }
        let mut conn = db.conn().await?;
        let holders: Vec<Option<String>> = cmd.query_async(&mut conn).await?;
        Ok(holders.into_iter().map(|h| h.is_some()).collect())
    }

    /// One `XCLAIM` per entry (each with its own minimum idle time), pipelined.
    async fn claim(
        &self,
        stream: &str,
        due: &[(&Pending, bool, Duration)],
    ) -> anyhow::Result<Vec<Claim>> {
        let db = self.worker.db();
        let mut pipe = redis::pipe();
        for (p, held, min_idle) in due {
            pipe.cmd("XCLAIM")
                .arg(stream)
                .arg(self.worker.group())
                .arg(self.consumer())
                .arg(min_idle.as_millis() as u64)
                .arg(&p.id);
            if *held {
                pipe.arg("RETRYCOUNT").arg(p.deliveries);
            }
        }
        let mut conn = db.conn().await?;
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        let mut claims = Vec::with_capacity(due.len());
        let mut unanswered = Vec::new();
        for ((p, _, _), reply) in due.iter().zip(replies) {
            let mut entries = parse_entry_list(stream, reply, 0)?;
            match entries.pop() {
                Some(entry) if entry.fields.is_some() => claims.push(Claim::Entry(entry)),
                Some(_) => claims.push(Claim::Deleted),
                None => {
                    unanswered.push((claims.len(), p.id.clone()));
                    claims.push(Claim::TakenByAnother);
                }
            }
        }
        // Not claimed: another reclaimer was first, or the entry no longer exists
        // (Redis 7 drops deleted entries from the pending list as it claims them).
        for (index, id) in unanswered {
            let exists: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
                .arg(stream)
                .arg(&id)
                .arg(&id)
                .query_async(&mut conn)
                .await?;
            if exists.is_empty() {
                claims[index] = Claim::Deleted;
            }
        }
        Ok(claims)
    }

    async fn dead_letter_exhausted(&self, entry: &Entry) -> anyhow::Result<()> {
        let why = DeadLetter {
            reason: "max_deliveries".into(),
            last_error: Some(format!(
                "delivered {} times without completing (retry.max_deliveries = {})",
                entry.deliveries.saturating_sub(1),
                self.worker.policy().max_deliveries
            )),
            attempts: entry.deliveries.saturating_sub(1),
            ..DeadLetter::default()
        };
        let fields = entry.fields.clone().unwrap_or_default();
        self.worker
            .dead_letters()
            .write(
                &entry.stream,
                &entry.id,
                &fields,
                self.consumer(),
                &why,
                true,
            )
            .await?;
        Ok(())
    }

    /// Removes consumers idle past `reclaimer.consumer_idle_timeout` with nothing pending.
    pub async fn remove_idle_consumers(&self) -> anyhow::Result<Vec<String>> {
        let db = self.worker.db();
        let mut conn = db.conn().await?;
        let mut removed = Vec::new();
        let min_idle = self.consumer_idle_timeout.as_millis() as u64;
        for stream in db.keys.streams() {
            let consumers: Vec<Info> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&stream)
                .arg(self.worker.group())
                .query_async(&mut conn)
                .await?;
            for info in consumers {
                let Some(name) = info_text(&info, "name") else {
                    continue;
                };
                let pending = info_number(&info, "pending").unwrap_or(1);
                let idle = info_number(&info, "idle").unwrap_or(0);
                if pending > 0 || idle < min_idle || name == self.consumer() {
                    continue;
                }
                let gone: i64 = delete_idle_consumer()
                    .key(&stream)
                    .arg(self.worker.group())
                    .arg(&name)
                    .arg(min_idle)
                    .invoke_async(&mut conn)
                    .await?;
                if gone == 1 {
                    tracing::info!(stream, consumer = %name, "removed an idle consumer with nothing pending");
                    removed.push(name);
                }
            }
        }
        Ok(removed)
    }
}

enum Claim {
    Entry(Entry),
    Deleted,
    TakenByAnother,
}
