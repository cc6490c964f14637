//! Delivery: a consumer in the group. In: stream entries. Out: Web Push
//! messages, one per device an event is meant for, and the entry
//! acknowledged (`XACK`) once every device reached a settled state
//! (delivered, gone, dead-lettered, superseded by a newer update, expired);
//! anything else stays pending for [`crate::recover`].
//!
//! The way of an entry, one file each:
//!
//! 1. [`read`]: `XREADGROUP` on a connection of its own per partition; this
//!    consumer's own pending entries first, without counting an attempt.
//! 2. [`entry`]: one entry from start to end, the order of the steps below.
//! 3. [`route`]: which subscriptions the event goes to ([`holding`] keeps
//!    direct events for users without a subscription yet).
//! 4. [`claim`]: the entry is still this consumer's and nobody else works on
//!    it (a lease), its key is not busy ([`ordering`]), and each device is
//!    claimed before it is pushed, so no two processors push one device.
//! 5. [`fanout`]: a push to each claimed device ([`push`]: encryption, VAPID,
//!    the answer classified, a breaker and pacing per push service).
//! 6. [`settle`]: each device's state, dead letters, the retry's not-before
//!    time, and the acknowledgement (with the last states and the release of
//!    the lease, in one round trip).

pub mod batch;
mod claim;
mod entry;
mod fanout;
pub mod holding;
pub mod ordering;
pub mod push;
mod read;
pub mod route;
mod settle;

pub use settle::Hint;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::deliver::holding::Holding;
use crate::deliver::push::Pusher;
use crate::deliver::route::Router;
use crate::shared::alerts::Alerts;
use crate::shared::config::{GroupStart, Settings, Unroutable};
use crate::shared::db::Db;
use crate::shared::dead_letter::DeadLetters;
use crate::shared::retry::RetryPolicy;
use crate::shared::stream::Entry;
use crate::shared::subscriptions::Store;

/// What processing one entry came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// Every target device is settled; the entry is acknowledged.
    Acked {
        delivered: usize,
        gone: usize,
        dead: usize,
        /// Devices that got (or are getting) a newer event of the same key.
        superseded: usize,
        /// Devices whose push was not sent because the event's TTL was over.
        expired: usize,
    },
    /// The event names nobody who could receive it; acknowledged and counted.
    NoTarget,
    /// A direct event for a user without a subscription: held for the user, acknowledged.
    Held,
    /// At least one device needs another attempt; the entry stays pending.
    Pending { reason: String },
    /// The whole entry went to the dead-letter stream and was acknowledged.
    DeadLettered { reason: String },
    /// Every target device had a newer event of the same key: acknowledged, nothing pushed.
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

/// A worker process's shared state. Cheap to clone; clones share the subscription
/// index, the push service state and the limits on work in flight.
#[derive(Clone)]
pub struct Worker {
    db: Db,
    /// How an entry's missing fields are filled in (README's entry contract).
    event_defaults: crate::shared::event::EventDefaults,
    pusher: Arc<Pusher>,
    router: Router,
    store: Store,
    holding: Holding,
    dead_letters: DeadLetters,
    policy: RetryPolicy,
    group: String,
    consumer: String,
    batch_size: usize,
    block: Duration,
    grace: Duration,
    /// Read with NOACK (at-most-once).
    noack: bool,
    new_group_start: GroupStart,
    /// Pushes of one event started at once.
    fanout_width: usize,
    /// What becomes of a topic event that matches no subscription.
    unroutable: Unroutable,
    /// How long a key's ordering register outlives its last event.
    register_ttl: Duration,
    /// How long a device's claim lasts past the last heartbeat: a whole push (a
    /// wait for its service's slot, the request) and a lease more, so a push
    /// already sent stays covered even if this process freezes right after.
    claim_life: Duration,
    /// How long the outcome markers live after a write: `retry.markers_ttl`
    /// and `outcomes_margin`.
    outcomes_life: Duration,
    /// How long after the entry's first claim its expiry of the markers still
    /// covers their whole life past a settlement.
    outcomes_margin: Duration,
    /// Tells this process's claims from another's with the same consumer name.
    nonce: u32,
    /// How often the push services' state is reported to Redis (for `herald stats`).
    report_every: Duration,
    /// Entries in flight: bounds memory when pushes are slow.
    entry_permits: Arc<Semaphore>,
    /// Ids of the entries in progress in this process.
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// Claims (`claim.lua`) and settlements (`settle.lua`) of the entries in
    /// flight, many in one round trip (see [`batch`]).
    claims: Arc<batch::Batcher>,
    settles: Arc<batch::Batcher>,
}

impl Worker {
    pub fn new(db: Db, pusher: Arc<Pusher>, settings: &Settings, alerts: Alerts) -> Worker {
        crate::shared::metrics::install();
        let store = Store::new(db.clone());
        let concurrency = settings.worker.concurrency;
        let policy = RetryPolicy::from_settings(&settings.retry);
        let claim_life = settings
            .push
            .connect_timeout
            .saturating_mul(2)
            .saturating_add(settings.push.request_timeout)
            .saturating_add(policy.lease());
        // Every write of the outcome markers during an attempt gives them their
        // life and a margin (whole seconds: EXPIRE's unit), so a settlement
        // within the margin after the first claim need not give it again (see
        // settle.lua, 'kept'). The margin is at most a tenth of their life, and
        // none when that is under a second.
        let markers = Duration::from_secs(policy.markers_ttl().as_secs().max(1));
        let outcomes_margin = Duration::from_secs(claim_life.min(markers / 10).as_secs());
        let outcomes_life = markers + outcomes_margin;
        Worker {
            router: Router::new(store.clone()),
            store,
            holding: Holding::new(db.clone(), settings.routing.hold_per_user),
            pusher,
            dead_letters: DeadLetters::new(
                db.clone(),
                &settings.worker.group,
                alerts,
                outcomes_life,
                settings.events.defaults(),
            ),
            event_defaults: settings.events.defaults(),
            register_ttl: policy.markers_ttl().max(settings.events.dedup_window),
            claim_life,
            outcomes_life,
            outcomes_margin,
            nonce: rand::random(),
            policy,
            group: settings.worker.group.clone(),
            consumer: settings.consumer_name(),
            batch_size: settings.worker.batch_size,
            block: settings.worker.block,
            noack: settings.worker.delivery == crate::shared::config::Delivery::AtMostOnce,
            new_group_start: settings.worker.new_group_start,
            fanout_width: concurrency,
            unroutable: settings.routing.unroutable,
            report_every: settings.admin.sample_interval,
            grace: settings.worker.shutdown_grace,
            entry_permits: Arc::new(Semaphore::new(concurrency.max(settings.worker.batch_size))),
            in_flight: Arc::default(),
            claims: batch::Batcher::new(db.clone(), batch::CLAIM_SCRIPT),
            settles: batch::Batcher::new(db.clone(), batch::SETTLE_SCRIPT),
            db,
        }
    }

    /// The same worker under another consumer name (the reclaimer claims as itself),
    /// sharing everything else.
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

    pub fn holding(&self) -> &Holding {
        &self.holding
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Creates the group on every stream when missing, starting where
    /// `worker.new_group_start` says (by default at the history the outcome
    /// markers cover: older entries could reach devices that had them already).
    pub async fn ensure_groups(&self) -> anyhow::Result<()> {
        let start = match self.new_group_start {
            GroupStart::Beginning => "0".to_string(),
            GroupStart::Now => "$".to_string(),
            GroupStart::Markers => {
                let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
                let covered = self.policy.markers_ttl().as_millis() as u64;
                format!("{}-0", now.saturating_sub(covered))
            }
        };
        self.db.ensure_group(&self.group, &start).await
    }

    /// Free entry slots, at most `n`, without waiting: what the reclaimer may take on.
    pub fn try_permits(&self, n: usize) -> Vec<OwnedSemaphorePermit> {
        (0..n)
            .map_while(|_| self.entry_permits.clone().try_acquire_owned().ok())
            .collect()
    }

    /// Processes `entry` in the background within the process's limits (`permit` is its
    /// entry slot). Returns false, doing nothing, when the entry is in progress here already.
    pub fn start(&self, entry: Entry, permit: OwnedSemaphorePermit, tracker: &TaskTracker) -> bool {
        if !self.in_flight.lock().insert(entry.id.clone()) {
            return false;
        }
        let worker = self.clone();
        tracker.spawn(async move {
            let id = entry.id.clone();
            worker.process_entry(entry).await;
            worker.in_flight.lock().remove(&id);
            drop(permit);
        });
        true
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
        let reporter = tokio::spawn(self.clone().report_loop(shutdown.clone()));
        readers.close();
        readers.wait().await;
        let finished = crate::shared::shutdown::wait(&tracker, self.grace).await;
        let _ = reporter.await;
        tracing::info!(consumer = %self.consumer, finished_cleanly = finished, "worker stopped");
        Ok(())
    }

    /// Reports the push services' state (open breakers, waiting subscriptions) to
    /// Redis and the metrics every `admin.sample_interval`, until shutdown; then
    /// removes this consumer's report.
    async fn report_loop(self, shutdown: CancellationToken) {
        let key = self.db.keys.push_state();
        loop {
            let state = self.pusher.state();
            crate::shared::metrics::subscriptions_waiting(state.waiting_subscriptions);
            let report = serde_json::json!({
                "at_ms": chrono::Utc::now().timestamp_millis(),
                "open_breakers": state.open_breakers,
                "waiting_subscriptions": state.waiting_subscriptions,
                "delivered": state.delivered,
            });
            let written: anyhow::Result<()> = async {
                let mut conn = self.db.conn();
                redis::cmd("HSET")
                    .arg(&key)
                    .arg(&self.consumer)
                    .arg(report.to_string())
                    .query_async::<()>(&mut conn)
                    .await?;
                Ok(())
            }
            .await;
            if let Err(e) = written {
                tracing::debug!(error = %format!("{e:#}"), "cannot report the push services' state; next time");
            }
            self.forget_stale_reports(&key).await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.report_every) => {}
            }
        }
        let _: redis::RedisResult<()> = redis::cmd("HDEL")
            .arg(&key)
            .arg(&self.consumer)
            .query_async(&mut self.db.conn())
            .await;
    }

    /// Removes the reports of workers that stopped reporting ten intervals ago
    /// (killed, not stopped), so `herald stats` does not show them for ever.
    async fn forget_stale_reports(&self, key: &str) {
        let mut conn = self.db.conn();
        let Ok(reports) = redis::cmd("HGETALL")
            .arg(key)
            .query_async::<std::collections::HashMap<String, String>>(&mut conn)
            .await
        else {
            return;
        };
        let now = chrono::Utc::now().timestamp_millis();
        let stale_ms =
            i64::try_from(self.report_every.saturating_mul(10).as_millis()).unwrap_or(i64::MAX);
        for (consumer, report) in reports {
            let at = serde_json::from_str::<serde_json::Value>(&report)
                .ok()
                .and_then(|r| r["at_ms"].as_i64())
                .unwrap_or(0);
            if now.saturating_sub(at) > stale_ms {
                let _: redis::RedisResult<()> = redis::cmd("HDEL")
                    .arg(key)
                    .arg(&consumer)
                    .query_async(&mut conn)
                    .await;
            }
        }
    }
}
