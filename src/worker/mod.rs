//! A consumer in the group: read entries with `XREADGROUP`, route each to its
//! subscriptions, push, and `XACK` once every target reached a terminal
//! outcome: delivered, gone (deleted), or dead-lettered. Anything else stays
//! pending for the reclaimer. Nothing is acknowledged that was not delivered or
//! deliberately dropped, and a device that already has an event is not pushed
//! it again: per-event outcome markers say which devices are done.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::{FutureExt, StreamExt};
use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::alerts::Alerts;
use crate::config::{Settings, Unroutable};
use crate::db::{script, Db};
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::event::Event;
use crate::holding::{Held, Holding};
use crate::ordering::{Order, Ordering};
use crate::push::{Outcome, PushReport, Pusher};
use crate::retry::RetryPolicy;
use crate::routing::Router;
use crate::subscriptions::{Store, Subscription};

/// One entry as read from a stream.
#[derive(Debug, Clone)]
pub struct Entry {
    pub stream: String,
    pub id: String,
    /// `None` when the entry was deleted or trimmed while pending.
    pub fields: Option<HashMap<String, String>>,
    /// Deliveries of this entry including this one; 0 when unknown (a re-read of the own pending list).
    pub deliveries: u64,
}

/// What processing one entry came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// Every target reached a terminal outcome; the entry is acknowledged.
    Acked {
        delivered: usize,
        gone: usize,
        dead: usize,
    },
    /// The event names nobody who could receive it; acknowledged and counted.
    NoTarget,
    /// A direct event for a user without a subscription: held for the user, acknowledged.
    Held,
    /// At least one target needs another attempt; the entry stays pending.
    Pending { reason: String },
    /// The whole entry went to the dead-letter stream and was acknowledged.
    DeadLettered { reason: String },
    /// A newer event of the same key was applied already: acknowledged, not pushed.
    Superseded { by: String },
    /// Another consumer claimed the entry meanwhile (this one was stopped or slow): left to it.
    TakenOver,
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
            .filter(|(_, o)| !matches!(o, EntryOutcome::Pending { .. } | EntryOutcome::TakenOver))
            .count()
    }
}

static BEGIN: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
static REFRESH: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
static RELEASE: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();

/// How long a worker keeps trying to record a device's outcome while Redis is away.
const MARKER_PATIENCE: Duration = Duration::from_secs(30);

/// How often an entry in progress refreshes its idle time and lease: twice per base delay.
fn heartbeat_interval(base_delay: Duration) -> Duration {
    (base_delay / 2).max(Duration::from_millis(50))
}

/// How long a lease (or a key's lock) lasts without a heartbeat: several heartbeats, at least a second.
fn lease(base_delay: Duration) -> Duration {
    (heartbeat_interval(base_delay) * 3).max(Duration::from_secs(1))
}

/// How one target device of an event fared.
enum TargetResult {
    Done(&'static str),
    Failed { sub: String, report: PushReport },
}

/// A worker process's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    db: Db,
    pusher: Arc<Pusher>,
    router: Router,
    store: Store,
    holding: Holding,
    ordering: Ordering,
    dead_letters: DeadLetters,
    policy: RetryPolicy,
    group: String,
    consumer: String,
    batch_size: usize,
    block: Duration,
    grace: Duration,
    /// Read with NOACK (at-most-once).
    noack: bool,
    /// Pushes of one event started at once.
    fanout_width: usize,
    /// What becomes of a topic event that matches no subscription.
    unroutable: Unroutable,
    /// Pushes in flight, across all entries of this process.
    push_permits: Arc<Semaphore>,
    /// Entries in flight: bounds memory when pushes are slow.
    entry_permits: Arc<Semaphore>,
    /// Ids of the entries in progress in this process.
    in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Worker {
    pub fn new(db: Db, pusher: Arc<Pusher>, settings: &Settings, alerts: Alerts) -> Worker {
        crate::metrics::install();
        let store = Store::new(db.clone());
        let concurrency = settings.worker.concurrency;
        let policy = RetryPolicy::from_settings(&settings.retry);
        Worker {
            router: Router::new(store.clone()),
            store,
            holding: Holding::new(db.clone(), settings.routing.hold_per_user),
            pusher,
            ordering: Ordering::new(
                db.clone(),
                policy.horizon().max(settings.events.dedup_window),
                lease(policy.base_delay),
            ),
            dead_letters: DeadLetters::new(
                db.clone(),
                &settings.worker.group,
                alerts,
                policy.horizon(),
            ),
            policy,
            group: settings.worker.group.clone(),
            consumer: settings.consumer_name(),
            batch_size: settings.worker.batch_size,
            block: settings.worker.block,
            noack: settings.worker.delivery == crate::config::Delivery::AtMostOnce,
            fanout_width: concurrency,
            unroutable: settings.routing.unroutable,
            grace: settings.worker.shutdown_grace,
            push_permits: Arc::new(Semaphore::new(concurrency)),
            entry_permits: Arc::new(Semaphore::new(concurrency.max(settings.worker.batch_size))),
            in_flight: Arc::default(),
            db,
        }
    }

    /// The same worker under another consumer name (the reclaimer claims as itself).
    pub fn with_consumer(mut self, consumer: String) -> Worker {
        self.consumer = consumer;
        self
    }

    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Creates the group on every stream when missing, from id `0` so that
    /// nothing already in the stream is skipped.
    pub async fn ensure_groups(&self) -> anyhow::Result<()> {
        self.db.ensure_group(&self.group).await
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
                        // A read lost with the connection may have taken entries: look at our own first.
                        own_pending_after = Some("0".into());
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
                // A re-read of our own pending list returns entries still in progress here.
                if !self
                    .in_flight
                    .lock()
                    .expect("in-flight lock")
                    .insert(entry.id.clone())
                {
                    continue;
                }
                let permit = permits
                    .pop()
                    .expect("never more entries than permits (COUNT)");
                let worker = self.clone();
                tracker.spawn(async move {
                    let id = entry.id.clone();
                    worker.process_entry(entry).await;
                    worker.in_flight.lock().expect("in-flight lock").remove(&id);
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
        if self.noack {
            cmd.arg("NOACK");
        }
        cmd.arg("STREAMS").arg(stream).arg(start);
        let reply: Value = cmd.query_async(conn).await?;
        // New entries are on their first delivery; a re-read of the pending list does not say.
        let deliveries = if start == ">" { 1 } else { 0 };
        parse_entries(reply, deliveries)
    }

    /// Processes one entry to its outcome. Never panics: a panic while processing
    /// dead-letters the entry, and the worker goes on.
    pub async fn process_entry(&self, entry: Entry) -> EntryOutcome {
        let work = AssertUnwindSafe(self.process_inner(&entry)).catch_unwind();
        tokio::pin!(work);
        // While an entry takes long (slow push services), keep its idle time low so
        // that no reclaimer takes it for abandoned and pushes it a second time.
        // Polled alongside the work, never instead of it: the work may hold a pooled
        // connection, and a heartbeat waiting for one must not stop it from finishing.
        let beat = self.heartbeat_interval();
        let heartbeat = async {
            loop {
                tokio::time::sleep(beat).await;
                self.heartbeat(&entry).await;
            }
        };
        let caught = tokio::select! {
            caught = &mut work => caught,
            never = heartbeat => never,
        };
        match caught {
            Ok(outcome) => {
                if matches!(outcome, EntryOutcome::Pending { .. }) {
                    self.release(&entry).await;
                }
                outcome
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                let why = DeadLetter {
                    reason: "panic".into(),
                    last_error: Some(format!("processing panicked: {message}")),
                    attempts: entry.deliveries,
                    ..DeadLetter::default()
                };
                self.dead_letter_entry(&entry, why).await
            }
        }
    }

    /// `XCLAIM ... 0 id JUSTID` to ourselves: resets the idle time, not the delivery count.
    fn lease_key(&self, entry: &Entry) -> String {
        let partition = self.db.keys.partition_of(&entry.stream).unwrap_or(0);
        self.db.keys.lease(partition, &entry.id)
    }

    /// How long a lease lasts without a heartbeat: several heartbeats, at least a second.
    fn lease_ms(&self) -> u64 {
        (self.heartbeat_interval() * 3)
            .max(Duration::from_secs(1))
            .as_millis() as u64
    }

    fn heartbeat_interval(&self) -> Duration {
        (self.policy.base_delay / 2).max(Duration::from_millis(50))
    }

    /// Lets others retry an entry left pending, without waiting for the lease to expire.
    async fn release(&self, entry: &Entry) {
        let released: anyhow::Result<i64> = async {
            let mut conn = self.db.conn().await?;
            Ok(script(&RELEASE, include_str!("release.lua"))
                .key(self.lease_key(entry))
                .arg(&self.consumer)
                .invoke_async(&mut conn)
                .await?)
        }
        .await;
        if let Err(e) = released {
            tracing::debug!(stream_id = %entry.id, error = %format!("{e:#}"), "cannot release the lease; it expires by itself");
        }
    }

    /// Resets the entry's idle time while it is still ours (see `refresh.lua`).
    async fn heartbeat(&self, entry: &Entry) {
        if self.noack {
            return;
        }
        let refreshed: anyhow::Result<i64> = async {
            let mut conn = self.db.conn().await?;
            Ok(script(&REFRESH, include_str!("refresh.lua"))
                .key(&entry.stream)
                .key(self.lease_key(entry))
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(&entry.id)
                .arg(self.lease_ms())
                .invoke_async(&mut conn)
                .await?)
        }
        .await;
        match refreshed {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!(stream_id = %entry.id, "another consumer took this entry over while it was in progress")
            }
            Err(e) => {
                tracing::debug!(stream_id = %entry.id, error = %format!("{e:#}"), "heartbeat failed")
            }
        }
    }

    async fn process_inner(&self, entry: &Entry) -> EntryOutcome {
        let Some(fields) = &entry.fields else {
            return match self
                .dead_letters
                .tombstone(&entry.stream, &entry.id, &self.consumer)
                .await
            {
                Ok(_) => EntryOutcome::DeadLettered {
                    reason: "deleted_while_pending".into(),
                },
                Err(e) => EntryOutcome::Pending {
                    reason: format!("cannot record a tombstone: {e:#}"),
                },
            };
        };
        let event = match Event::from_fields(fields) {
            Ok(event) => event,
            Err(problem) => {
                let why = DeadLetter {
                    reason: "undecodable".into(),
                    last_error: Some(problem),
                    attempts: entry.deliveries,
                    ..DeadLetter::default()
                };
                return self.dead_letter_entry(entry, why).await;
            }
        };
        let span = tracing::info_span!(
            "event",
            event_id = %event.id,
            stream_id = %entry.id,
            topic = %event.topic,
            trace_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        if let Some(trace) = fields
            .get(crate::telemetry::TRACEPARENT_FIELD)
            .and_then(|t| crate::telemetry::TraceParent::parse(t))
        {
            span.record("trace_id", trace.trace_id.as_str());
            span.record("parent_span_id", trace.parent_id.as_str());
            crate::telemetry::continue_trace(&span, &trace);
        }
        let outcome = self
            .deliver(entry, fields, &event)
            .instrument(span.clone())
            .await;
        crate::metrics::event_processed(match &outcome {
            EntryOutcome::Acked { .. } => "acked",
            EntryOutcome::NoTarget if event.user.is_none() => "unroutable",
            EntryOutcome::NoTarget => "no_target",
            EntryOutcome::Held => "held",
            EntryOutcome::Pending { .. } => "pending",
            EntryOutcome::DeadLettered { .. } => "dead_lettered",
            EntryOutcome::Superseded { .. } => "superseded",
            EntryOutcome::TakenOver => "taken_over",
        });
        let _enter = span.enter();
        match &outcome {
            EntryOutcome::Acked {
                delivered,
                gone,
                dead,
            } => tracing::info!(delivered, gone, dead, "event done"),
            EntryOutcome::Held => {
                tracing::info!("the user has no subscription yet; held until one is registered or the TTL is over")
            }
            EntryOutcome::NoTarget => {
                tracing::warn!(user = ?event.user, "no subscription to deliver to; acknowledged")
            }
            EntryOutcome::Pending { reason } if self.noack => tracing::warn!(
                reason,
                "not delivered, and not retried: worker.delivery is at-most-once"
            ),
            EntryOutcome::Pending { reason } => tracing::warn!(
                reason,
                deliveries = entry.deliveries,
                "event left pending for a retry"
            ),
            EntryOutcome::DeadLettered { reason } => tracing::error!(reason, "event dead-lettered"),
            EntryOutcome::TakenOver => {
                tracing::warn!("another consumer took this entry over; not pushing it")
            }
            EntryOutcome::Superseded { by } => {
                tracing::info!(key = ?event.key, newer = %by, "superseded by a newer event of its key; not pushed")
            }
        }
        outcome
    }

    /// Dead-letters one device's share of an event; the entry stays for the other devices.
    async fn dead_letter_device(
        &self,
        entry: &Entry,
        fields: &HashMap<String, String>,
        why: &DeadLetter,
    ) -> anyhow::Result<String> {
        self.dead_letters
            .write(&entry.stream, &entry.id, fields, &self.consumer, why, false)
            .await
    }

    async fn dead_letter_entry(&self, entry: &Entry, why: DeadLetter) -> EntryOutcome {
        let empty = HashMap::new();
        let fields = entry.fields.as_ref().unwrap_or(&empty);
        match self
            .dead_letters
            .write(&entry.stream, &entry.id, fields, &self.consumer, &why, true)
            .await
        {
            Ok(_) => EntryOutcome::DeadLettered { reason: why.reason },
            Err(e) => EntryOutcome::Pending {
                reason: format!("cannot dead-letter ({}): {e:#}", why.reason),
            },
        }
    }

    async fn deliver(
        &self,
        entry: &Entry,
        fields: &HashMap<String, String>,
        event: &Event,
    ) -> EntryOutcome {
        let keys = &self.db.keys;
        let partition = keys.partition_of(&entry.stream).unwrap_or(0);
        // A forced replay pushes history again on purpose, past newer events of its key.
        if fields.contains_key(crate::replay::REPLAY_RUN) {
            return self
                .deliver_to_targets(entry, fields, event, partition)
                .await;
        }
        match self.ordering.apply(partition, &entry.id, event).await {
            Ok(Order::Newest) => {}
            Ok(Order::Superseded { by }) => {
                return self.ack(entry, EntryOutcome::Superseded { by }).await
            }
            Ok(Order::Busy) => {
                return EntryOutcome::Pending {
                    reason: "another event of its key is still being processed".into(),
                }
            }
            Err(e) => {
                return EntryOutcome::Pending {
                    reason: format!("cannot check the ordering of its key: {e:#}"),
                }
            }
        }
        let outcome = self
            .deliver_to_targets(entry, fields, event, partition)
            .await;
        if let Err(e) = self.ordering.release(partition, &entry.id, event).await {
            tracing::debug!(error = %format!("{e:#}"), "cannot unlock the key; the lock expires by itself");
        }
        outcome
    }

    async fn deliver_to_targets(
        &self,
        entry: &Entry,
        fields: &HashMap<String, String>,
        event: &Event,
        partition: u32,
    ) -> EntryOutcome {
        // A forced replay tracks its devices afresh, under its run (see crate::replay).
        let outcomes_key = crate::replay::outcomes_key(&self.db.keys, partition, &event.id, fields);
        let targets = match self.router.targets(event).await {
            Ok(targets) => targets,
            Err(e) => {
                return EntryOutcome::Pending {
                    reason: format!("cannot read subscriptions: {e:#}"),
                }
            }
        };
        if targets.is_empty() {
            if event.user.is_none() && self.unroutable == Unroutable::DeadLetter {
                let why = DeadLetter {
                    reason: "unroutable".into(),
                    last_error: Some(format!("no subscription matches topic {}", event.topic)),
                    attempts: entry.deliveries,
                    ..DeadLetter::default()
                };
                return self.dead_letter_entry(entry, why).await;
            }
            if let (Some(user), true) = (&event.user, self.holding.enabled()) {
                return self.hold(entry, partition, user, event).await;
            }
            return self.ack(entry, EntryOutcome::NoTarget).await;
        }
        // Still ours? And which devices are done already (an earlier attempt, another worker)?
        let done: HashMap<String, String> = match self.begin(entry, &outcomes_key).await {
            Ok(Some(done)) => done,
            Ok(None) => return EntryOutcome::TakenOver,
            Err(e) => {
                return EntryOutcome::Pending {
                    reason: format!("cannot read the event's outcome markers: {e:#}"),
                }
            }
        };
        let mut tally: HashMap<&'static str, usize> = HashMap::new();
        for marker in done.values() {
            match marker.as_str() {
                "delivered" => *tally.entry("delivered").or_default() += 1,
                "gone" => *tally.entry("gone").or_default() += 1,
                _ => *tally.entry("dead").or_default() += 1,
            }
        }
        let mut failures: Vec<(String, PushReport)> = Vec::new();
        for bad in targets
            .unreadable
            .iter()
            .filter(|b| !done.contains_key(&b.id))
        {
            let why = DeadLetter {
                reason: "invalid_subscription".into(),
                last_error: Some(bad.problem.clone()),
                attempts: entry.deliveries,
                subscription: Some(bad.id.clone()),
                ..DeadLetter::default()
            };
            match self.dead_letter_device(entry, fields, &why).await {
                Ok(_) => *tally.entry("dead").or_default() += 1,
                Err(e) => failures.push((
                    bad.id.clone(),
                    PushReport::unsent(format!("cannot dead-letter: {e:#}")),
                )),
            }
        }
        let todo: Vec<&Subscription> = targets
            .subscriptions
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| !done.contains_key(&s.id))
            .collect();
        // At most `fanout_width` pushes of one event are started at once, so a
        // 100,000-device fan-out holds a bounded number of futures in memory.
        // The iterator makes each push's future only when a slot frees up.
        // (Indexes, not references, in the closure: it keeps the future `Send` for any lifetime.)
        let pushes =
            (0..todo.len()).map(|i| self.push_one(entry, fields, event, todo[i], &outcomes_key));
        let results: Vec<TargetResult> = futures::stream::iter(pushes)
            .buffer_unordered(self.fanout_width)
            .collect()
            .await;
        for result in results {
            match result {
                TargetResult::Done(kind) => *tally.entry(kind).or_default() += 1,
                TargetResult::Failed { sub, report } => failures.push((sub, report)),
            }
        }
        let acked = |tally: &HashMap<&'static str, usize>| EntryOutcome::Acked {
            delivered: tally.get("delivered").copied().unwrap_or(0),
            gone: tally.get("gone").copied().unwrap_or(0),
            dead: tally.get("dead").copied().unwrap_or(0),
        };
        if failures.is_empty() {
            return self.ack(entry, acked(&tally)).await;
        }
        // A failure while the service's breaker is open does not use up an attempt.
        let counted: Vec<&(String, PushReport)> =
            failures.iter().filter(|(_, r)| !r.held).collect();
        if !counted.is_empty() && entry.deliveries > 0 && self.policy.exhausted(entry.deliveries) {
            let mut still_failing = failures.iter().filter(|(_, r)| r.held).count();
            for (sub, report) in &counted {
                let why = DeadLetter {
                    reason: "max_deliveries".into(),
                    last_error: report.error.clone(),
                    last_status: report.status,
                    attempts: entry.deliveries,
                    subscription: Some(sub.clone()),
                };
                match self.dead_letter_device(entry, fields, &why).await {
                    Ok(_) => *tally.entry("dead").or_default() += 1,
                    Err(_) => still_failing += 1,
                }
            }
            if still_failing == 0 {
                return self.ack(entry, acked(&tally)).await;
            }
        }
        self.remember_retry_after(entry, partition, &failures).await;
        EntryOutcome::Pending {
            reason: failures
                .iter()
                .map(|(sub, r)| {
                    format!(
                        "subscription {sub}: {} ({})",
                        r.outcome.name(),
                        r.error.as_deref().unwrap_or("no detail")
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    /// Pushes to one device and settles its fate: a marker on success or gone, a
    /// dead letter for a permanent refusal, a failure to retry otherwise.
    async fn push_one(
        &self,
        entry: &Entry,
        fields: &HashMap<String, String>,
        event: &Event,
        sub: &Subscription,
        outcomes_key: &str,
    ) -> TargetResult {
        let report = {
            let _permit = self
                .push_permits
                .acquire()
                .await
                .expect("the semaphore is never closed");
            self.pusher.push(sub, event).await
        };
        let marker = match &report.outcome {
            Outcome::Delivered => {
                crate::metrics::delivery_latency(&entry.id);
                "delivered"
            }
            Outcome::Gone => {
                if let Err(e) = self.store.delete(&sub.id).await {
                    let report = PushReport::unsent(format!(
                        "subscription is gone but could not be deleted: {e:#}"
                    ));
                    return TargetResult::Failed {
                        sub: sub.id.clone(),
                        report,
                    };
                }
                tracing::info!(subscription = %sub.id, status = ?report.status, "subscription gone; deleted");
                "gone"
            }
            Outcome::DeadLetter { reason } => {
                let why = DeadLetter {
                    reason: reason.to_string(),
                    last_error: report.error.clone(),
                    last_status: report.status,
                    attempts: entry.deliveries,
                    subscription: Some(sub.id.clone()),
                };
                return match self.dead_letter_device(entry, fields, &why).await {
                    Ok(_) => TargetResult::Done("dead"),
                    Err(e) => TargetResult::Failed {
                        sub: sub.id.clone(),
                        report: PushReport::unsent(format!("cannot dead-letter: {e:#}")),
                    },
                };
            }
            Outcome::Retry { .. } => {
                tracing::warn!(subscription = %sub.id, status = ?report.status, held = report.held, error = report.error.as_deref().unwrap_or(""), "push not delivered");
                return TargetResult::Failed {
                    sub: sub.id.clone(),
                    report,
                };
            }
        };
        // Right after the push service's answer, so a retry never pushes this device again.
        if let Err(e) = self.mark(outcomes_key, &sub.id, marker).await {
            tracing::warn!(subscription = %sub.id, error = %format!("{e:#}"), "cannot write the outcome marker; a retry may push this device again");
        }
        TargetResult::Done(marker)
    }

    /// Writes a device's marker, retrying while Redis is unreachable (up to
    /// `MARKER_PATIENCE`): the device already has the event, and a marker lost to a
    /// Redis blip would mean a second push on the retry.
    async fn mark(&self, outcomes_key: &str, sub: &str, marker: &str) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + MARKER_PATIENCE;
        loop {
            match self.mark_once(outcomes_key, sub, marker).await {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn mark_once(&self, outcomes_key: &str, sub: &str, marker: &str) -> anyhow::Result<()> {
        let mut conn = self.db.conn().await?;
        redis::pipe()
            .cmd("HSET")
            .arg(outcomes_key)
            .arg(sub)
            .arg(marker)
            .ignore()
            .cmd("EXPIRE")
            .arg(outcomes_key)
            .arg(self.policy.horizon().as_secs())
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// The event's outcome markers, or `None` when another consumer took the entry over.
    async fn begin(
        &self,
        entry: &Entry,
        outcomes_key: &str,
    ) -> anyhow::Result<Option<HashMap<String, String>>> {
        let mut conn = self.db.conn().await?;
        let reply: Vec<String> = script(&BEGIN, include_str!("begin.lua"))
            .key(&entry.stream)
            .key(outcomes_key)
            .key(self.lease_key(entry))
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(&entry.id)
            .arg(if self.noack { "1" } else { "0" })
            .arg(self.lease_ms())
            .invoke_async(&mut conn)
            .await?;
        let mut items = reply.into_iter();
        if items.next().as_deref() != Some("1") {
            return Ok(None);
        }
        let mut done = HashMap::new();
        while let (Some(sub), Some(marker)) = (items.next(), items.next()) {
            done.insert(sub, marker);
        }
        Ok(Some(done))
    }

    /// Records the latest not-before time any failed push asked for (`Retry-After`,
    /// or an open breaker), so the reclaimer does not claim the entry sooner.
    async fn remember_retry_after(
        &self,
        entry: &Entry,
        partition: u32,
        failures: &[(String, PushReport)],
    ) {
        let wait = failures
            .iter()
            .filter_map(|(_, r)| match r.outcome {
                Outcome::Retry { after } => after.map(|a| (a, r.held)),
                _ => None,
            })
            .max_by_key(|(a, _)| *a);
        let Some((after, _)) = wait else { return };
        let held = failures.iter().all(|(_, r)| r.held);
        let until = chrono::Utc::now().timestamp_millis() + after.as_millis() as i64;
        let value = if held {
            format!("{until}:held")
        } else {
            until.to_string()
        };
        let written: anyhow::Result<()> = async {
            let mut conn = self.db.conn().await?;
            redis::cmd("HSET")
                .arg(self.db.keys.retry_at(partition))
                .arg(&entry.id)
                .arg(value)
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        }
        .await;
        if let Err(e) = written {
            tracing::warn!(error = %format!("{e:#}"), "cannot record Retry-After; the entry may be retried sooner");
        }
    }

    /// `XACK`, and forget any not-before time of the entry.
    /// Holds a direct event for a user without a subscription (see [`crate::holding`]).
    async fn hold(&self, entry: &Entry, partition: u32, user: &str, event: &Event) -> EntryOutcome {
        let held = match self.holding.hold(partition, user, event).await {
            Ok(held) => held,
            Err(e) => {
                return EntryOutcome::Pending {
                    reason: format!("cannot hold the event for its user: {e:#}"),
                }
            }
        };
        match held {
            Held::Held => {
                // The user may have subscribed since the routing looked (see crate::holding).
                match self.holding.user_subscribed(user).await {
                    Ok(false) => {}
                    Ok(true) => {
                        if let Err(e) = self.holding.release(user).await {
                            tracing::warn!(error = %format!("{e:#}"), "cannot release held events; the next registration or the TTL settles them");
                        }
                    }
                    Err(e) => {
                        return EntryOutcome::Pending {
                            reason: format!(
                                "held, but cannot check the user's subscriptions: {e:#}"
                            ),
                        }
                    }
                }
                self.ack(entry, EntryOutcome::Held).await
            }
            Held::Expired => self.ack(entry, EntryOutcome::NoTarget).await,
            Held::Full => {
                let why = DeadLetter {
                    reason: "hold_full".into(),
                    last_error: Some(
                        "the user has no subscription and routing.hold_per_user events are held for them already".into(),
                    ),
                    attempts: entry.deliveries,
                    ..DeadLetter::default()
                };
                self.dead_letter_entry(entry, why).await
            }
        }
    }

    async fn ack(&self, entry: &Entry, done: EntryOutcome) -> EntryOutcome {
        let partition = self.db.keys.partition_of(&entry.stream).unwrap_or(0);
        let acked: anyhow::Result<()> = async {
            let mut conn = self.db.conn().await?;
            redis::pipe()
                .cmd("XACK")
                .arg(&entry.stream)
                .arg(&self.group)
                .arg(&entry.id)
                .ignore()
                .cmd("HDEL")
                .arg(self.db.keys.retry_at(partition))
                .arg(&entry.id)
                .ignore()
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        }
        .await;
        match acked {
            Ok(()) => done,
            // Not acknowledged means it will be processed again; the markers keep devices from a second push.
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

/// Parses an `XREADGROUP` (or `XAUTOCLAIM`-style) reply: `[[stream, [[id, [field, value, ...] | nil], ...]], ...]`
/// (RESP2), or the same as a map (RESP3). A nil reply (BLOCK timed out) is no entries.
pub fn parse_entries(reply: Value, deliveries: u64) -> anyhow::Result<Vec<Entry>> {
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
        out.extend(parse_entry_list(&stream, entries, deliveries)?);
    }
    Ok(out)
}

/// Parses a list of entries, `[[id, [field, value, ...] | nil], ...]`, as
/// `XREADGROUP` gives per stream and `XCLAIM` gives whole.
pub fn parse_entry_list(
    stream: &str,
    entries: Value,
    deliveries: u64,
) -> anyhow::Result<Vec<Entry>> {
    let entries = match entries {
        Value::Array(entries) => entries,
        Value::Nil => return Ok(Vec::new()),
        other => anyhow::bail!("unexpected entry list for {stream}: {other:?}"),
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        // XCLAIM may answer nil for an entry that no longer exists.
        let mut parts = match entry {
            Value::Array(parts) => parts,
            Value::Nil => continue,
            other => anyhow::bail!("unexpected entry in {stream}: {other:?}"),
        };
        anyhow::ensure!(parts.len() == 2, "unexpected entry shape in {stream}");
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
            stream: stream.to_string(),
            id,
            fields,
            deliveries,
        });
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
