//! Delivery: a consumer in the group. In: stream entries. Out: Web Push
//! messages, one per device an event is meant for, and the entry
//! acknowledged (`XACK`) once every device reached a terminal outcome
//! (delivered, gone, dead-lettered); anything else stays pending for
//! [`crate::recover`].
//!
//! The way of an entry, one file each:
//!
//! 1. [`read`]: `XREADGROUP` on a connection of its own per partition.
//! 2. [`entry`]: one entry from start to end, the order of the steps below.
//! 3. [`claim`]: the entry is still this consumer's and nobody else works on it;
//!    which devices are done already; heartbeats while it runs.
//! 4. [`route`]: which subscriptions the event goes to ([`ordering`] lets only
//!    the newest update of a key through; [`holding`] keeps direct events for
//!    users without a subscription yet).
//! 5. [`fanout`]: a push to each device ([`push`]: encryption, VAPID, the
//!    answer classified, a breaker per push service).
//! 6. [`settle`]: each device's outcome marker, dead letters, the retry's
//!    not-before time, and the acknowledgement.

mod claim;
mod entry;
mod fanout;
pub mod holding;
pub mod ordering;
pub mod push;
mod read;
pub mod route;
mod settle;

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

use crate::deliver::holding::{Held, Holding};
use crate::deliver::ordering::{Order, Ordering};
use crate::deliver::push::{Outcome, PushReport, Pusher};
use crate::deliver::route::Router;
use crate::shared::alerts::Alerts;
use crate::shared::config::{Settings, Unroutable};
use crate::shared::db::{script, Db};
use crate::shared::dead_letter::{DeadLetter, DeadLetters};
use crate::shared::event::Event;
use crate::shared::retry::RetryPolicy;
use crate::shared::stream::{is_nogroup, parse_entries, Entry};
use crate::shared::subscriptions::{Store, Subscription};

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
        crate::shared::metrics::install();
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
                claim::lease(policy.base_delay),
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
            noack: settings.worker.delivery == crate::shared::config::Delivery::AtMostOnce,
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
        let finished = crate::shared::shutdown::wait(&tracker, self.grace).await;
        tracing::info!(consumer = %self.consumer, finished_cleanly = finished, "worker stopped");
        Ok(())
    }
}
