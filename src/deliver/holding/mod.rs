//! Direct events for a user with no subscription yet are held for that user,
//! in the event's partition, until the event's TTL is over, at most
//! `routing.hold_per_user` live ones per user (expired ones do not count).
//! When the user registers a subscription the held events go back into the
//! stream (one script per partition) and are delivered like new ones; the
//! ones that expire first are dropped and counted, by the reclaimer's sweep
//! (every `reclaimer.interval`) or at the release. A user's set of held events
//! expires by itself after its last event, so memory per user stays bounded.
//!
//! A registration and a hold can cross: the API releases after it stored the
//! subscription, and the worker, after it held an event, looks for the user's
//! subscriptions once more and releases itself when it finds one. Whichever
//! runs second sees the other's write, and a release is one script, so a held
//! event goes back into the stream exactly once.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::shared::db::{script, Db};
use crate::shared::event::Event;

static HOLD: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
static RELEASE: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
static SWEEP: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();

/// Expired held events dropped per sweep call.
const SWEEP_BATCH: usize = 500;

/// What holding an event came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Held until the user subscribes or the TTL is over.
    Held,
    /// Its TTL is over already: counted as expired, not held.
    Expired,
    /// The user has `routing.hold_per_user` held events already.
    Full,
}

/// Held events in Redis. Cheap to clone.
#[derive(Clone)]
pub struct Holding {
    db: Db,
    per_user: usize,
}

/// When an event's TTL is over: its TTL counted from when it was due.
pub fn expires_at(event: &Event) -> DateTime<Utc> {
    event.due_at() + chrono::Duration::seconds(i64::from(event.ttl))
}

impl Holding {
    pub fn new(db: Db, per_user: usize) -> Holding {
        Holding { db, per_user }
    }

    /// Whether direct events are held at all (`routing.hold_per_user` > 0).
    pub fn enabled(&self) -> bool {
        self.per_user > 0
    }

    /// Holds a direct event of `partition` for its user.
    pub async fn hold(&self, partition: u32, user: &str, event: &Event) -> anyhow::Result<Held> {
        let keys = &self.db.keys;
        let fields: Vec<String> = event
            .to_fields()
            .into_iter()
            .flat_map(|(k, v)| [k, v])
            .collect();
        let record = json!({"user": user, "fields": fields}).to_string();
        let mut conn = self.db.conn();
        let answer: String = script(&HOLD, include_str!("hold.lua"))
            .key(keys.held(partition, user))
            .key(keys.held_events(partition))
            .key(keys.held_expiry(partition))
            .key(keys.held_expired(partition))
            .arg(&event.id)
            .arg(expires_at(event).timestamp_millis())
            .arg(self.per_user)
            .arg(record)
            .invoke_async(&mut conn)
            .await?;
        match answer.as_str() {
            "held" => Ok(Held::Held),
            "expired" => Ok(Held::Expired),
            "full" => Ok(Held::Full),
            other => anyhow::bail!("hold script answered {other:?}"),
        }
    }

    /// Whether the user has a subscription now.
    pub async fn user_subscribed(&self, user: &str) -> anyhow::Result<bool> {
        let mut conn = self.db.conn();
        let n: u64 = redis::cmd("SCARD")
            .arg(self.db.keys.user_subscriptions(user))
            .query_async(&mut conn)
            .await?;
        Ok(n > 0)
    }

    /// Moves the user's held events back into their streams; returns (moved, expired).
    pub async fn release(&self, user: &str) -> anyhow::Result<(u64, u64)> {
        release(&self.db, user).await
    }

    /// Drops and counts the held events whose TTL is over; returns how many.
    pub async fn sweep(&self) -> anyhow::Result<u64> {
        let keys = &self.db.keys;
        let mut conn = self.db.conn();
        let mut expired = 0;
        for partition in 0..keys.partitions() {
            loop {
                let n: u64 = script(&SWEEP, include_str!("sweep.lua"))
                    .key(keys.held_expiry(partition))
                    .key(keys.held_events(partition))
                    .key(keys.held_expired(partition))
                    .arg(SWEEP_BATCH)
                    .invoke_async(&mut conn)
                    .await?;
                expired += n;
                if n < SWEEP_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(expired)
    }
}

/// The one thing the way in asks of holding: a user has a subscription now, so
/// their held events go back into the streams (one script per partition).
/// Returns (moved, expired).
pub async fn release(db: &Db, user: &str) -> anyhow::Result<(u64, u64)> {
    let keys = &db.keys;
    let mut conn = db.conn();
    let (mut moved, mut expired) = (0, 0);
    for partition in 0..keys.partitions() {
        let (m, e): (u64, u64) = script(&RELEASE, include_str!("release.lua"))
            .key(keys.held(partition, user))
            .key(keys.held_events(partition))
            .key(keys.held_expiry(partition))
            .key(keys.held_expired(partition))
            .key(keys.stream(partition))
            .invoke_async(&mut conn)
            .await?;
        moved += m;
        expired += e;
    }
    if moved > 0 || expired > 0 {
        tracing::info!(
            moved,
            expired,
            "released the events held for a user who subscribed"
        );
    }
    Ok((moved, expired))
}
