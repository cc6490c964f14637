//! Ordering of updates: for events with a `key` (the vehicle), the newest
//! `(publish_at, id)` wins (for a delayed event, its `deliver_at`: see
//! [`Event::due_at`]). Events of one key are processed one at a time (a
//! short lock per key, across workers); an older event processed after a newer
//! one is superseded: acknowledged, counted, not pushed. The register is
//! compared and updated in one script.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::Script;
use sha2::{Digest, Sha256};

use crate::shared::db::{script, Db};
use crate::shared::event::{hex_lower, Event};

/// Whether an event may be pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// The newest for its key (or it has no key); its key is locked until [`Ordering::release`].
    Newest,
    /// A newer event of the same key was applied: `<publish_at ms> <id>` of it.
    Superseded { by: String },
    /// Another event of the key was still being processed after `wait`.
    Busy,
}

static APPLY: OnceLock<Script> = OnceLock::new();
static UNLOCK: OnceLock<Script> = OnceLock::new();

/// Applies events to their key's register.
#[derive(Clone)]
pub struct Ordering {
    db: Db,
    ttl: Duration,
    lock: Duration,
}

impl Ordering {
    /// `ttl`: how long a register outlives its last event; `lock`: how long a key
    /// stays locked if its holder dies.
    pub fn new(db: Db, ttl: Duration, lock: Duration) -> Ordering {
        Ordering { db, ttl, lock }
    }

    /// Checks `event` (entry `stream_id`) against its key's newest applied event,
    /// waiting up to the lock time while another event of the key is in progress.
    pub async fn apply(
        &self,
        partition: u32,
        stream_id: &str,
        event: &Event,
    ) -> anyhow::Result<Order> {
        let Some(key) = &event.key else {
            return Ok(Order::Newest);
        };
        let digest = key_digest(key);
        let deadline = Instant::now() + self.lock;
        loop {
            let mut conn = self.db.conn().await?;
            let (answer, detail): (i64, String) = script(&APPLY, include_str!("apply.lua"))
                .key(self.db.keys.order(partition, &digest))
                .key(self.db.keys.order_lock(partition, &digest))
                .arg(event.due_at().timestamp_millis().max(0))
                .arg(&event.id)
                .arg(self.ttl.as_secs().max(1))
                .arg(stream_id)
                .arg(self.lock.as_millis() as u64)
                .invoke_async(&mut conn)
                .await?;
            drop(conn);
            match answer {
                1 => return Ok(Order::Newest),
                0 => return Ok(Order::Superseded { by: detail }),
                _ if Instant::now() >= deadline => return Ok(Order::Busy),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Unlocks the event's key once its processing is over.
    pub async fn release(
        &self,
        partition: u32,
        stream_id: &str,
        event: &Event,
    ) -> anyhow::Result<()> {
        let Some(key) = &event.key else { return Ok(()) };
        let mut conn = self.db.conn().await?;
        let _: i64 = script(&UNLOCK, include_str!("unlock.lua"))
            .key(self.db.keys.order_lock(partition, &key_digest(key)))
            .arg(stream_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}

/// Keys are free text (`12가3456`): a digest keeps Redis key names plain.
fn key_digest(key: &str) -> String {
    hex_lower(&Sha256::digest(key.as_bytes())[..16])
}
