//! The reclaimer: scans the pending entries of every partition and claims an
//! entry only when it has been idle for its own backoff and past any
//! not-before time its last attempt asked for (`{P:pN}:retry-at`), then hands
//! it to the worker's processing, within the same limits as the worker's own
//! entries. An entry past `retry.max_age`, or whose attempts are used up, is
//! claimed at once and settled without a push (its failing devices
//! dead-lettered). Entries deleted or trimmed while pending leave a tombstone.
//!
//! On its interval it also sweeps held events whose TTL is over, removes
//! consumers that are idle with nothing pending, and applies retention.
//!
//! Several reclaimers may run at once: `XCLAIM` with a minimum idle time lets
//! only the first claim an entry (claiming resets its idle time).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::future::join_all;
use redis::{Script, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::deliver::{EntryOutcome, Hint, Worker};
use crate::recover::retention::Retention;
use crate::shared::config::Settings;
use crate::shared::retry::seed_for;
use crate::shared::stream::{
    entry_exists, id_time, info_number, info_text, is_nogroup, parse_entry_list, Entry, Info,
};

/// What one scan of one partition did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Pending entries looked at.
    pub scanned: usize,
    /// Entries claimed and processed, with their outcomes.
    pub processed: Vec<(String, EntryOutcome)>,
    /// Entries found deleted while pending (tombstones written).
    pub tombstones: usize,
}

/// One pending entry as `XPENDING` describes it.
struct Pending {
    id: String,
    idle: Duration,
    deliveries: u64,
}

/// A pending entry found due, and how to claim it.
struct Due<'a> {
    pending: &'a Pending,
    /// Its last attempt sent nothing: the claim keeps the delivery count.
    uncounted: bool,
    min_idle: Duration,
}

/// The reclaimer. `run` it, or step it with [`Reclaimer::scan`].
pub struct Reclaimer {
    worker: Worker,
    retention: Retention,
    retention_interval: Duration,
    interval: Duration,
    scan_batch: usize,
    consumer_idle_timeout: Duration,
    grace: Duration,
}

static DELETE_IDLE_CONSUMER: OnceLock<Script> = OnceLock::new();

fn delete_idle_consumer() -> &'static Script {
    crate::shared::db::script(
        &DELETE_IDLE_CONSUMER,
        include_str!("delete_idle_consumer.lua"),
    )
}

impl Reclaimer {
    /// A reclaimer that claims under its own consumer name (`<consumer>-reclaimer`)
    /// and shares everything else with `worker`.
    pub fn new(worker: Worker, settings: &Settings) -> Reclaimer {
        let name = format!("{}-reclaimer", worker.consumer());
        Reclaimer {
            retention: Retention::new(worker.db().clone(), settings.retention.clone()),
            retention_interval: settings.retention.interval,
            worker: worker.with_consumer(name),
            interval: settings.reclaimer.interval,
            scan_batch: settings.reclaimer.scan_batch,
            consumer_idle_timeout: settings.reclaimer.consumer_idle_timeout,
            grace: settings.worker.shutdown_grace,
        }
    }

    pub fn consumer(&self) -> &str {
        self.worker.consumer()
    }

    /// Scans every `reclaimer.interval` until shutdown; claimed entries are
    /// processed in the background and finish (within the grace period) first.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.worker.ensure_groups().await?;
        tracing::info!(consumer = %self.consumer(), "reclaimer started");
        let tracker = TaskTracker::new();
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
                match self.reclaim(partition, &tracker).await {
                    Ok((claimed, tombstones)) if claimed > 0 || tombstones > 0 => {
                        crate::shared::metrics::reclaimed(claimed as u64);
                        tracing::info!(partition, claimed, tombstones, "reclaimed pending entries")
                    }
                    Ok(_) => {}
                    Err(e) if is_nogroup(&e) => {
                        tracing::warn!(partition, "consumer group is missing; recreating it");
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
            match self.worker.holding().sweep().await {
                Ok(0) => {}
                Ok(expired) => tracing::info!(
                    expired,
                    "held events whose TTL is over were dropped and counted"
                ),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot sweep expired held events; will retry")
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
        let finished = crate::shared::shutdown::wait(&tracker, self.grace).await;
        tracing::info!(consumer = %self.consumer(), finished_cleanly = finished, "reclaimer stopped");
        Ok(())
    }

    /// Claims the due entries of one partition, as many as the worker has free
    /// slots for, and starts their processing. Returns (claimed, tombstones).
    async fn reclaim(
        &self,
        partition: u32,
        tracker: &TaskTracker,
    ) -> anyhow::Result<(usize, usize)> {
        let mut permits = self.worker.try_permits(self.scan_batch);
        if permits.is_empty() {
            return Ok((0, 0));
        }
        let (entries, tombstones, _) = self.claim_due(partition, permits.len()).await?;
        let claimed = entries.len();
        for entry in entries {
            let permit = permits.pop().expect("never more entries than permits");
            self.worker.start(entry, permit, tracker);
        }
        Ok((claimed, tombstones))
    }

    /// Claims and processes the due pending entries of one partition, waiting for
    /// their outcomes: the step a test takes instead of running the loop.
    pub async fn scan(&self, partition: u32) -> anyhow::Result<ScanOutcome> {
        let (entries, tombstones, scanned) = self.claim_due(partition, usize::MAX).await?;
        let processed = join_all(entries.into_iter().map(|entry| async move {
            let id = entry.id.clone();
            (id, self.worker.process_entry(entry).await)
        }))
        .await;
        Ok(ScanOutcome {
            scanned,
            processed,
            tombstones,
        })
    }

    /// Claims up to `limit` due entries of one partition; returns them, the
    /// tombstones written, and how many pending entries were looked at.
    async fn claim_due(
        &self,
        partition: u32,
        limit: usize,
    ) -> anyhow::Result<(Vec<Entry>, usize, usize)> {
        let db = self.worker.db();
        let stream = db.keys.stream(partition);
        let policy = *self.worker.policy();
        let (mut claimed, mut tombstones, mut scanned) = (Vec::new(), 0, 0);
        let mut start = "-".to_string();
        while claimed.len() < limit {
            let page = self.pending_page(&stream, &start).await?;
            let Some(last) = page.last() else { break };
            start = format!("({}", last.id);
            let full = page.len() == self.scan_batch;
            scanned += page.len();

            let listed: Vec<(&str, u64)> =
                page.iter().map(|p| (p.id.as_str(), p.deliveries)).collect();
            let hints = {
                let mut conn = db.conn();
                Hint::read(&mut conn, &db.keys.retry_at(partition), &listed).await?
            };
            let now = chrono::Utc::now();
            let mut due: Vec<Due> = Vec::new();
            for (p, hint) in page.iter().zip(hints) {
                // Past retry.max_age: claimed now, whatever it waits for, to be settled.
                if id_time(&p.id).is_some_and(|added| policy.past_max_age(added, now)) {
                    due.push(Due {
                        pending: p,
                        uncounted: false,
                        min_idle: policy.base_delay,
                    });
                    continue;
                }
                let uncounted = hint.is_some_and(|h| !h.counted);
                let wait_left =
                    hint.map_or(Duration::ZERO, |h| h.wait_left(now.timestamp_millis()));
                let seed = seed_for(&p.id);
                if policy.is_due(p.idle, p.deliveries, seed, wait_left) {
                    let min_idle = policy.backoff(p.deliveries, seed);
                    due.push(Due {
                        pending: p,
                        uncounted,
                        min_idle,
                    });
                }
            }
            due.truncate(limit - claimed.len());
            // An entry someone is still working on (its lease is alive) is not claimed:
            // the claim would only use up one of its attempts.
            let busy = self.leased(partition, &due).await?;
            let due: Vec<Due> = due
                .into_iter()
                .zip(busy)
                .filter(|(_, busy)| !busy)
                .map(|(d, _)| d)
                .collect();
            if !due.is_empty() {
                for (d, result) in due.iter().zip(self.claim(&stream, &due).await?) {
                    match result {
                        Claim::Entry(mut entry) => {
                            // An attempt that sent nothing does not use one up.
                            entry.deliveries = if d.uncounted {
                                d.pending.deliveries
                            } else {
                                d.pending.deliveries + 1
                            };
                            claimed.push(entry);
                        }
                        Claim::Deleted => {
                            if self
                                .worker
                                .dead_letters()
                                .tombstone(&stream, &d.pending.id, self.consumer())
                                .await?
                                .is_some()
                            {
                                tombstones += 1;
                            }
                        }
                        Claim::TakenByAnother => {}
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok((claimed, tombstones, scanned))
    }

    /// `XPENDING stream group IDLE <base> (start + COUNT n`: entries idle at least the shortest backoff.
    async fn pending_page(&self, stream: &str, start: &str) -> anyhow::Result<Vec<Pending>> {
        let db = self.worker.db();
        let base = self.worker.policy().base_delay;
        let mut conn = db.conn();
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

    /// Whether each entry's lease is held (someone is processing it right now).
    async fn leased(&self, partition: u32, due: &[Due<'_>]) -> anyhow::Result<Vec<bool>> {
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.worker.db();
        let mut cmd = redis::cmd("MGET");
        for d in due {
            cmd.arg(db.keys.lease(partition, &d.pending.id));
        }
        let mut conn = db.conn();
        let holders: Vec<Option<String>> = cmd.query_async(&mut conn).await?;
        // 'ended <holder>' is a released lease (see settle.lua): free.
        Ok(holders
            .into_iter()
            .map(|h| h.is_some_and(|h| !h.starts_with("ended ")))
            .collect())
    }

    /// One `XCLAIM` per entry (each with its own minimum idle time), pipelined.
    async fn claim(&self, stream: &str, due: &[Due<'_>]) -> anyhow::Result<Vec<Claim>> {
        let db = self.worker.db();
        let mut pipe = redis::pipe();
        for d in due {
            pipe.cmd("XCLAIM")
                .arg(stream)
                .arg(self.worker.group())
                .arg(self.consumer())
                .arg(d.min_idle.as_millis() as u64)
                .arg(&d.pending.id);
            if d.uncounted {
                pipe.arg("RETRYCOUNT").arg(d.pending.deliveries);
            }
        }
        let mut conn = db.conn();
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        let mut claims = Vec::with_capacity(due.len());
        let mut unanswered = Vec::new();
        for (d, reply) in due.iter().zip(replies) {
            let mut entries = parse_entry_list(stream, reply, 0)?;
            match entries.pop() {
                Some(entry) if entry.fields.is_some() => claims.push(Claim::Entry(entry)),
                Some(_) => claims.push(Claim::Deleted),
                None => {
                    unanswered.push((claims.len(), d.pending.id.clone()));
                    claims.push(Claim::TakenByAnother);
                }
            }
        }
        // Not claimed: another reclaimer was first, or the entry no longer exists
        // (Redis 7 drops deleted entries from the pending list as it claims them).
        for (index, id) in unanswered {
            if !entry_exists(&mut conn, stream, &id).await? {
                claims[index] = Claim::Deleted;
            }
        }
        Ok(claims)
    }

    /// Removes consumers idle past `reclaimer.consumer_idle_timeout` with nothing pending.
    pub async fn remove_idle_consumers(&self) -> anyhow::Result<Vec<String>> {
        let db = self.worker.db();
        let mut conn = db.conn();
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
