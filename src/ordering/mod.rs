//! Ordering of updates: for events with a `key` (the vehicle), the newest
//! `(publish_at, id)` wins. An older event processed after a newer one is
//! superseded: acknowledged, counted, not pushed. The register is compared and
//! updated in one script.

use std::sync::OnceLock;
use std::time::Duration;

use redis::Script;
use sha2::{Digest, Sha256};

use crate::db::Db;
use crate::event::{hex_lower, Event};

/// Whether an event may be pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// The newest for its key (or it has no key).
    Newest,
    /// A newer event of the same key was applied: `<publish_at ms> <id>` of it.
    Superseded { by: String },
}

static APPLY: OnceLock<Script> = OnceLock::new();

fn script() -> &'static Script {
    crate::db::script(&APPLY, include_str!("apply.lua"))
}

/// Applies events to their key's register.
#[derive(Clone)]
pub struct Ordering {
    db: Db,
    ttl: Duration,
}

impl Ordering {
    /// `ttl`: how long a register outlives its last event (beyond any retry).
    pub fn new(db: Db, ttl: Duration) -> Ordering {
        Ordering { db, ttl }
    }

    /// Checks `event` against its key's newest applied event, in the partition of `stream`.
    pub async fn apply(&self, partition: u32, event: &Event) -> anyhow::Result<Order> {
        let Some(key) = &event.key else {
            return Ok(Order::Newest);
        };
        let register = self.db.keys.order(partition, &key_digest(key));
        let mut conn = self.db.conn().await?;
        let (newest, by): (i64, String) = script()
            .key(register)
            .arg(event.publish_at.timestamp_millis().max(0))
            .arg(&event.id)
            .arg(self.ttl.as_secs().max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(if newest == 1 {
            Order::Newest
        } else {
            Order::Superseded { by }
        })
    }
}

/// Keys are free text (`12가3456`): a digest keeps Redis key names plain.
fn key_digest(key: &str) -> String {
    hex_lower(&Sha256::digest(key.as_bytes())[..16])
}
