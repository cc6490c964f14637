//! A consumer in the group: read entries with `XREADGROUP`, route each to its
//! subscriptions, push, and `XACK` only once every target reached a terminal
//! outcome (delivered, or gone and deleted). Anything else stays pending for a
//! reclaim: nothing is acknowledged that was not delivered or deliberately dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Settings;
use crate::db::Db;
use crate::event::Event;
use crate::push::{Outcome, Pusher};
use crate::routing::Router;
use crate::subscriptions::Store;

/// One entry as read from a stream; `fields` is `None` when the entry was
/// deleted or trimmed while pending.
#[derive(Debug, Clone)]
pub struct Entry {
    pub stream: String,
    pub id: String,
    pub fields: Option<HashMap<String, String>>,
}

/// What processing one entry came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// Every target reached a terminal outcome; the entry is acknowledged.
    Acked { delivered: usize, gone: usize },
    /// The event names nobody who could receive it; acknowledged and counted.
    NoTarget,
    /// At least one target needs another attempt; the entry stays pending.
    Pending { reason: String },
    /// The entry cannot be processed as it is; it stays pending (never acked unprocessed).
    Poison { reason: String },
}

/// The outcomes of one read.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub entries: Vec<(String, EntryOutcome)>,
}

impl BatchOutcome {
    pub fn acked(&self) -> usize {
        self.entries
            .iter()
            .filter(|(_, o)| matches!(o, EntryOutcome::Acked { .. } | EntryOutcome::NoTarget))
            .count()
    }
}

/// A worker process's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    db: Db,
    pusher: Arc<Pusher>,
    router: Router,
    store: Store,
    group: String,
    consumer: String,
    batch_size: usize,
    block: Duration,
    grace: Duration,
    /// Pushes in flight, across all entries of this process.
    push_permits: Arc<Semaphore>,
    /// Entries in flight: bounds memory when pushes are slow.
    entry_permits: Arc<Semaphore>,
}

impl Worker {
    pub fn new(db: Db, pusher: Arc<Pusher>, settings: &Settings) -> Worker {
        let store = Store::new(db.clone());
        let concurrency = settings.worker.concurrency;
        Worker {
            router: Router::new(store.clone()),
            store,
            pusher,
            group: settings.worker.group.clone(),
            consumer: settings.consumer_name(),
            batch_size: settings.worker.batch_size,
            block: settings.worker.block,
            grace: settings.worker.shutdown_grace,
            push_permits: Arc::new(Semaphore::new(concurrency)),
            entry_permits: Arc::new(Semaphore::new(concurrency.max(settings.worker.batch_size))),
            db,
        }
    }

    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Creates the group on every stream when missing, from id `0` so that
    /// nothing already in the stream is skipped.
    pub async fn ensure_groups(&self) -> anyhow::Result<()> {
        let mut conn = self.db.conn().await?;
        for stream in self.db.keys.streams() {
            let created: redis::RedisResult<String> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(&self.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Ok(_) => tracing::info!(stream, group = %self.group, "created consumer group"),
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

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
            .read(&mut conn, &stream, ">", self.batch_size, Some(block))
            .await?;
        let outcomes = join_all(entries.into_iter().map(|entry| async move {
            let id = entry.id.clone();
            (id, self.process_entry(entry).await)
        }))
        .await;
        Ok(BatchOutcome { entries: outcomes })
    }

    /// Reads and processes until `shutdown`; then lets in-flight entries finish
    /// within the grace period and returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.ensure_groups().await?;
        tracing::info!(consumer = %self.consumer, group = %self.group, partitions = self.db.keys.partitions(), "worker started");
        let tracker = TaskTracker::new();
        let readers = TaskTracker::new();
        for partition in 0..self.db.keys.partitions() {
            let worker = self.clone();
            let shutdown = shutdown.clone();
            let tracker = tracker.clone();
            readers.spawn(async move { worker.read_loop(partition, shutdown, tracker).await });
        }
        readers.close();
        readers.wait().await;
        let finished = crate::shutdown::wait(&tracker, self.grace).await;
        tracing::info!(consumer = %self.consumer, finished_cleanly = finished, "worker stopped");
        Ok(())
    }

    /// One partition's reader: its own connection, first this consumer's own
    /// pending entries (a restart under the same name), then new ones.
    async fn read_loop(&self, partition: u32, shutdown: CancellationToken, tracker: TaskTracker) {
        let stream = self.db.keys.stream(partition);
        let mut conn: Option<MultiplexedConnection> = None;
        // This consumer's own pending entries are read first, after the id of the
        // last one taken (so none is taken twice); `None` once they are all taken.
        let mut own_pending_after: Option<String> = Some("0".into());
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            // Take permits before reading, so what is read can start at once.
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = self.entry_permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let mut permits: Vec<OwnedSemaphorePermit> = vec![first];
            while permits.len() < self.batch_size {
                match self.entry_permits.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
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
            let (start, block) = match &own_pending_after {
                Some(after) => (after.as_str(), None),
                None => (">", Some(self.block)),
            };
            let entries = match self.read(c, &stream, start, permits.len(), block).await {
                Ok(entries) => {
                    failures = 0;
                    entries
                }
                Err(e) => {
                    failures += 1;
                    if is_nogroup(&e) {
                        tracing::warn!(stream, group = %self.group, "consumer group is missing; recreating it from id 0");
                        if let Err(e) = self.ensure_groups().await {
                            tracing::warn!(error = %format!("{e:#}"), "cannot recreate the consumer group");
                        }
                    } else {
                        tracing::warn!(error = %format!("{e:#}"), stream, "read failed; will retry");
                        conn = None;
                    }
                    backoff(failures, &shutdown).await;
                    continue;
                }
            };
            if own_pending_after.is_some() {
                own_pending_after = match entries.last() {
                    Some(last) if entries.len() == permits.len() => Some(last.id.clone()),
                    _ => None,
                };
            }
            for entry in entries {
                let permit = permits
                    .pop()
                    .expect("never more entries than permits (COUNT)");
                let worker = self.clone();
                tracker.spawn(async move {
                    worker.process_entry(entry).await;
                    drop(permit);
                });
            }
        }
    }

    /// `XREADGROUP GROUP g c COUNT n [BLOCK ms] STREAMS stream start`.
    async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        stream: &str,
        start: &str,
        count: usize,
        block: Option<Duration>,
    ) -> anyhow::Result<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(stream).arg(start);
        let reply: Value = cmd.query_async(conn).await?;
        parse_read_reply(reply)
    }

    /// Processes one entry to its outcome; acknowledges when every target is done.
    pub async fn process_entry(&self, entry: Entry) -> EntryOutcome {
        let Some(fields) = &entry.fields else {
            let reason = "entry was deleted or trimmed while pending".to_string();
            tracing::error!(stream = %entry.stream, stream_id = %entry.id, reason, "poison entry left pending");
            return EntryOutcome::Poison { reason };
        };
        let event = match Event::from_fields(fields) {
            Ok(event) => event,
            Err(reason) => {
                tracing::error!(stream = %entry.stream, stream_id = %entry.id, reason, "undecodable entry left pending");
                return EntryOutcome::Poison { reason };
            }
        };
        let span = tracing::info_span!("event", event_id = %event.id, stream_id = %entry.id, topic = %event.topic);
        let outcome = self.deliver(&entry, &event).instrument(span.clone()).await;
        let _enter = span.enter();
        match &outcome {
            EntryOutcome::Acked { delivered, gone } => {
                tracing::info!(delivered, gone, "event done")
            }
            EntryOutcome::NoTarget => {
                tracing::warn!(user = ?event.user, "no subscription to deliver to; acknowledged")
            }
            EntryOutcome::Pending { reason } => {
                tracing::warn!(reason, "event left pending for a retry")
            }
            EntryOutcome::Poison { reason } => tracing::error!(reason, "poison event left pending"),
        }
        outcome
    }

    async fn deliver(&self, entry: &Entry, event: &Event) -> EntryOutcome {
        let targets = match self.router.targets(event).await {
            Ok(Some(targets)) => targets,
            Ok(None) => return self.ack(entry, EntryOutcome::NoTarget).await,
            Err(e) => {
                return EntryOutcome::Pending {
                    reason: format!("cannot read subscriptions: {e:#}"),
                }
            }
        };
        if targets.subscriptions.is_empty() && targets.unreadable.is_empty() {
            return self.ack(entry, EntryOutcome::NoTarget).await;
        }
        let reports = join_all(targets.subscriptions.iter().map(|sub| async move {
            let _permit = self
                .push_permits
                .acquire()
                .await
                .expect("the semaphore is never closed");
            (sub, self.pusher.push(sub, event).await)
        }))
        .await;
        let mut delivered = 0;
        let mut gone = 0;
        let mut failures: Vec<String> = targets.unreadable.clone();
        for (sub, report) in reports {
            match &report.outcome {
                Outcome::Delivered => delivered += 1,
                Outcome::Gone => match self.store.delete(&sub.id).await {
                    Ok(_) => {
                        gone += 1;
                        tracing::info!(subscription = %sub.id, status = ?report.status, "subscription gone; deleted");
                    }
                    Err(e) => failures.push(format!(
                        "subscription {} is gone but could not be deleted: {e:#}",
                        sub.id
                    )),
                },
                other => {
                    let error = report.error.as_deref().unwrap_or("no detail");
                    tracing::warn!(subscription = %sub.id, outcome = other.name(), status = ?report.status, error, "push not delivered");
                    failures.push(format!(
                        "subscription {}: {} ({error})",
                        sub.id,
                        other.name()
                    ));
                }
            }
        }
        if failures.is_empty() {
            self.ack(entry, EntryOutcome::Acked { delivered, gone })
                .await
        } else {
            EntryOutcome::Pending {
                reason: failures.join("; "),
            }
        }
    }

    async fn ack(&self, entry: &Entry, done: EntryOutcome) -> EntryOutcome {
        let acked: anyhow::Result<i64> = async {
            let mut conn = self.db.conn().await?;
            Ok(redis::cmd("XACK")
                .arg(&entry.stream)
                .arg(&self.group)
                .arg(&entry.id)
                .query_async(&mut conn)
                .await?)
        }
        .await;
        match acked {
            Ok(_) => done,
            // Not acknowledged means it will be processed again; the pushes are not lost.
            Err(e) => EntryOutcome::Pending {
                reason: format!("processed, but XACK failed: {e:#}"),
            },
        }
    }
}

fn is_nogroup(e: &anyhow::Error) -> bool {
    e.downcast_ref::<redis::RedisError>()
        .is_some_and(|e| e.code() == Some("NOGROUP"))
}

/// Waits a little longer after each consecutive failure (100 ms doubling to 5 s), or until shutdown.
async fn backoff(failures: u32, shutdown: &CancellationToken) {
    let delay = Duration::from_millis(100u64 << failures.min(6)).min(Duration::from_secs(5));
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

/// Parses an `XREADGROUP` reply: `[[stream, [[id, [field, value, ...] | nil], ...]], ...]`
/// (RESP2), or the same as a map (RESP3). A nil reply (BLOCK timed out) is no entries.
pub fn parse_read_reply(reply: Value) -> anyhow::Result<Vec<Entry>> {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let entries = pair.pop().expect("len 2");
                    let name = pair.pop().expect("len 2");
                    Ok((name, entries))
                }
                other => anyhow::bail!("unexpected XREADGROUP stream element: {other:?}"),
            })
            .collect::<anyhow::Result<_>>()?,
        Value::Map(pairs) => pairs,
        other => anyhow::bail!("unexpected XREADGROUP reply: {other:?}"),
    };
    let mut out = Vec::new();
    for (name, entries) in streams {
        let stream: String = redis::from_redis_value(name)?;
        let Value::Array(entries) = entries else {
            anyhow::bail!("unexpected XREADGROUP entries for {stream}");
        };
        for entry in entries {
            let Value::Array(mut parts) = entry else {
                anyhow::bail!("unexpected XREADGROUP entry in {stream}");
            };
            anyhow::ensure!(
                parts.len() == 2,
                "unexpected XREADGROUP entry shape in {stream}"
            );
            let body = parts.pop().expect("len 2");
            let id: String = redis::from_redis_value(parts.pop().expect("len 2"))?;
            let fields = match body {
                Value::Nil => None,
                Value::Array(flat) => {
                    let mut map = HashMap::with_capacity(flat.len() / 2);
                    let mut it = flat.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        // Non-UTF-8 text becomes U+FFFD and fails validation later, as poison.
                        map.insert(lossy(k), lossy(v));
                    }
                    Some(map)
                }
                other => anyhow::bail!("unexpected fields of {stream} {id}: {other:?}"),
            };
            out.push(Entry {
                stream: stream.clone(),
                id,
                fields,
            });
        }
    }
    Ok(out)
}

fn lossy(v: Value) -> String {
    match v {
        Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Value::SimpleString(s) => s,
        Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}
