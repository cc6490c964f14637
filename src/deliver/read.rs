//! Reading entries: `XREADGROUP … BLOCK` on a connection of its own per
//! partition. At start, and after a read failed, this consumer's own pending
//! entries come first, listed with `XPENDING` and taken back with `XCLAIM`:
//!
//! - one still in progress in this process is left alone;
//! - one whose last attempt left a retry hint is taken back only when it is
//!   due (its backoff and hint, as the reclaimer judges), at start; otherwise
//!   the reclaimer retries it on time;
//! - at start, one without a hint (a crash cut its attempt short) is taken
//!   back at once, and the attempt about to be made counts;
//! - after a read failed, one without a hint was taken by the read that was
//!   lost with its connection and never attempted: taken back without counting
//!   (`RETRYCOUNT`), since its read counted already.
//!
//! (Re-reading them all with `XREADGROUP … 0` would count attempts for entries
//! nobody pushes, and retry waiting ones early.)

use std::collections::HashMap;
use std::time::Duration;

use crate::shared::db::Conn;
use futures::future::join_all;
use redis::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::settle::Hint;
use super::{BatchOutcome, Worker};
use crate::shared::stream::{
    compare_ids, entry_exists, is_nogroup, parse_entries, parse_entry_list, Entry,
};

impl Worker {
    /// Reads and fully processes one batch of new entries from one partition
    /// (waiting at most `block` for them). For tests and tools that step the worker.
    pub async fn process_batch(
        &self,
        partition: u32,
        block: Duration,
    ) -> anyhow::Result<BatchOutcome> {
        let mut conn = self.db.blocking_conn(block).await?;
        let stream = self.db.keys.stream(partition);
        let entries = self
            .read_new(&mut conn, &stream, self.batch_size, block)
            .await?;
        let outcomes = join_all(entries.into_iter().map(|entry| async move {
            let id = entry.id.clone();
            (id, self.process_entry(entry).await)
        }))
        .await;
        Ok(BatchOutcome { entries: outcomes })
    }

    /// One partition's reader: its own connection, first this consumer's own
    /// pending entries (a restart under the same name), then new ones.
    pub(super) async fn read_loop(
        &self,
        partition: u32,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let stream = self.db.keys.stream(partition);
        let mut conn: Option<Conn> = None;
        // This consumer's own pending entries are taken first, after the id of the
        // last one taken (so none is taken twice); `None` once they are all taken.
        let mut own_pending_after: Option<String> = Some("-".into());
        let mut recovery = Recovery::Start;
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            // Read only when a slot is free, and no more than are free now. The slots
            // are not held through the blocking read: the reclaimer shares them.
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = self.entry_permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let count = (1 + self.entry_permits.available_permits()).min(self.batch_size);
            let read = match &own_pending_after {
                Some(after) => match self.own_pending(&stream, after, count, recovery).await {
                    Ok((entries, next)) => {
                        own_pending_after = next;
                        Ok(entries)
                    }
                    Err(e) => Err(e),
                },
                None => {
                    if conn.is_none() {
                        match self.db.blocking_conn(self.block).await {
                            Ok(c) => conn = Some(c),
                            Err(e) => {
                                failures += 1;
                                tracing::warn!(error = %format!("{e:#}"), stream, "cannot connect for reading; will retry");
                                backoff(failures, &shutdown).await;
                                continue;
                            }
                        }
                    }
                    let c = conn.as_mut().expect("connected above");
                    // The read is not raced with shutdown: an abandoned BLOCK read would still take
                    // entries on the server. BLOCK is short, so the stop waits at most that long.
                    self.read_new(c, &stream, count, self.block).await
                }
            };
            let entries = match read {
                Ok(entries) => {
                    failures = 0;
                    entries
                }
                Err(e) => {
                    failures += 1;
                    if is_nogroup(&e) {
                        tracing::warn!(stream, group = %self.group, "consumer group is missing; recreating it");
                        if let Err(e) = self.ensure_groups().await {
                            tracing::warn!(error = %format!("{e:#}"), "cannot recreate the consumer group");
                        }
                    } else {
                        tracing::warn!(error = %format!("{e:#}"), stream, "read failed; will retry");
                        conn = None;
                        // A read lost with the connection may have taken entries: look at our own first.
                        own_pending_after = Some("-".into());
                        recovery = Recovery::LostRead;
                    }
                    backoff(failures, &shutdown).await;
                    continue;
                }
            };
            let mut first = Some(first);
            for entry in entries {
                // What was read is ours (pending): wait for a slot for each, however long.
                let permit = match first.take() {
                    Some(permit) => permit,
                    None => self
                        .entry_permits
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("the semaphore is never closed"),
                };
                // An entry still in progress here (a re-listing of our own) is skipped.
                self.start(entry, permit, &tracker);
            }
        }
    }

    /// `XREADGROUP GROUP g c COUNT n BLOCK ms STREAMS stream >`: new entries, on their first delivery.
    async fn read_new(
        &self,
        conn: &mut Conn,
        stream: &str,
        count: usize,
        block: Duration,
    ) -> anyhow::Result<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64);
        if self.noack {
            cmd.arg("NOACK");
        }
        cmd.arg("STREAMS").arg(stream).arg(">");
        let reply: Value = cmd.query_async(conn).await?;
        parse_entries(reply, 1)
    }

    /// This consumer's own pending entries after `after` (an `XPENDING` range
    /// start), up to `count` listed: the ones neither in progress here nor waiting
    /// for a retry, taken back for an attempt (deleted ones come back without
    /// fields: a tombstone); and where the listing goes on, unless it reached the end.
    async fn own_pending(
        &self,
        stream: &str,
        after: &str,
        count: usize,
        recovery: Recovery,
    ) -> anyhow::Result<(Vec<Entry>, Option<String>)> {
        if self.noack {
            return Ok((Vec::new(), None));
        }
        let mut conn = self.db.conn();
        let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(&self.group)
            .arg(after)
            .arg("+")
            .arg(count)
            .arg(&self.consumer)
            .query_async(&mut conn)
            .await?;
        let Some((last, ..)) = rows.last() else {
            return Ok((Vec::new(), None));
        };
        let (last, full) = (last.clone(), rows.len() == count);
        let idle: Vec<(String, u64, u64)> = {
            let in_flight = self.in_flight.lock();
            rows.into_iter()
                .filter(|(id, ..)| !in_flight.contains(id))
                .map(|(id, _, idle_ms, deliveries)| (id, idle_ms, deliveries))
                .collect()
        };
        let partition = self.db.keys.partition_of(stream).unwrap_or(0);
        let listed: Vec<(&str, u64)> = idle.iter().map(|(id, _, d)| (id.as_str(), *d)).collect();
        let hints = Hint::read(&mut conn, &self.db.keys.retry_at(partition), &listed).await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        // (id, its delivery count, whether this attempt counts)
        let take: Vec<(String, u64, bool)> = idle
            .into_iter()
            .zip(hints)
            .filter_map(|((id, idle_ms, deliveries), hint)| match (hint, recovery) {
                (None, Recovery::Start) => Some((id, deliveries, true)),
                (None, Recovery::LostRead) => Some((id, deliveries, false)),
                (Some(_), Recovery::LostRead) => None,
                (Some(hint), Recovery::Start) => self
                    .policy
                    .is_due(
                        Duration::from_millis(idle_ms),
                        deliveries,
                        crate::shared::retry::seed_for(&id),
                        hint.wait_left(now_ms),
                    )
                    .then_some((id, deliveries, hint.counted)),
            })
            .collect();
        let mut entries = Vec::with_capacity(take.len());
        if !take.is_empty() {
            let mut claim = redis::cmd("XCLAIM");
            claim
                .arg(stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(0);
            for (id, ..) in &take {
                claim.arg(id);
            }
            let reply: Value = claim.query_async(&mut conn).await?;
            let mut claimed: HashMap<String, Entry> = parse_entry_list(stream, reply, 0)?
                .into_iter()
                .map(|e| (e.id.clone(), e))
                .collect();
            let mut keep_count = redis::pipe();
            for (id, deliveries, counts) in take {
                let entry = match claimed.remove(&id) {
                    Some(entry) => entry,
                    None => {
                        // Not claimed: deleted or trimmed while pending (Redis drops it from
                        // the pending list as it tries), or acknowledged meanwhile.
                        if entry_exists(&mut conn, stream, &id).await? {
                            continue;
                        }
                        Entry {
                            stream: stream.to_string(),
                            id,
                            fields: None,
                            deliveries,
                            read_at: std::time::Instant::now(),
                        }
                    }
                };
                let deliveries = if counts {
                    deliveries + 1
                } else {
                    // Its read (or its last attempt, which sent nothing) counted already.
                    keep_count
                        .cmd("XCLAIM")
                        .arg(stream)
                        .arg(&self.group)
                        .arg(&self.consumer)
                        .arg(0)
                        .arg(&entry.id)
                        .arg("RETRYCOUNT")
                        .arg(deliveries)
                        .arg("JUSTID")
                        .ignore();
                    deliveries
                };
                entries.push(Entry {
                    deliveries,
                    ..entry
                });
            }
            if keep_count.cmd_iter().next().is_some() {
                keep_count.query_async::<()>(&mut conn).await?;
            }
        }
        entries.sort_by(|a, b| compare_ids(&a.id, &b.id));
        Ok((entries, full.then(|| format!("({last}"))))
    }
}

/// Why this consumer's own pending entries are being taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// The process (re)started: an attempt cut short by its end counted already,
    /// and the one about to be made counts too.
    Start,
    /// A read failed: what it delivered was lost with its connection, never attempted.
    LostRead,
}

/// Waits a little longer after each consecutive failure (100 ms doubling to 5 s), or until shutdown.
async fn backoff(failures: u32, shutdown: &CancellationToken) {
    let delay = Duration::from_millis(100u64 << failures.min(6)).min(Duration::from_secs(5));
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}
