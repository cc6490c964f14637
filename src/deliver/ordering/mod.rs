//! Ordering of updates, per device. For events with a `key` (the vehicle) the
//! newest `(due time, id)` wins **for each device**: an older event is skipped
//! (settled as `superseded`) only for the devices that got, or are getting, a
//! newer event of the same key. Different people, different devices, a topic
//! audience and a direct user never supersede each other. (The due time is
//! `publish_at`, or a later `deliver_at`: see [`Event::due_at`].)
//!
//! Two things in Redis, both in the key's partition:
//!
//! - the key's **register**, a hash of subscription → the newest event of the
//!   key claimed for that device, compared and set as each device is claimed
//!   (`claim.lua`), and forgotten again when that event ends for the device
//!   without reaching it (dead-lettered, expired: `forget.lua`);
//! - the key's **lock**, so that the events of one key are processed one at a
//!   time across workers (an older push can never land after a newer one). It
//!   lives as long as its entry's lease: heartbeats extend both. An event that
//!   finds its key busy waits for it without using up an attempt.
//!
//! A forced replay pushes history again on purpose: it is not ordered.

use std::sync::OnceLock;

use redis::Script;
use sha2::{Digest, Sha256};

use crate::shared::db::{script, Db};
use crate::shared::event::{hex_lower, Event};
use crate::shared::keys::Keys;
use crate::shared::stream::REPLAY_RUN;

/// Where an ordered event stands: its key's lock and register, and its place.
#[derive(Debug, Clone)]
pub struct Order {
    pub lock: String,
    pub register: String,
    /// `<due ms> <event id>`, as the register compares it.
    pub point: String,
}

impl Order {
    /// The order of an event, or `None` when it has no key or is a forced replay copy.
    pub fn of(
        keys: &Keys,
        partition: u32,
        event: &Event,
        fields: &std::collections::HashMap<String, String>,
    ) -> Option<Order> {
        let key = event.key.as_deref()?;
        if fields.contains_key(REPLAY_RUN) {
            return None;
        }
        let digest = key_digest(key);
        Some(Order {
            lock: keys.order_lock(partition, &digest),
            register: keys.order(partition, &digest),
            point: format!("{} {}", event.due_at().timestamp_millis().max(0), event.id),
        })
    }
}

static FORGET: OnceLock<Script> = OnceLock::new();

impl Order {
    /// The event ended for `subscription` without reaching it: unless a newer
    /// event took its place meanwhile, the device's register forgets it.
    pub async fn forget(&self, db: &Db, subscription: &str) -> anyhow::Result<()> {
        let mut conn = db.conn();
        let _: i64 = script(&FORGET, include_str!("forget.lua"))
            .key(&self.register)
            .arg(subscription)
            .arg(&self.point)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}

/// Keys are free text (`12가3456`): a digest keeps Redis key names plain.
fn key_digest(key: &str) -> String {
    hex_lower(&Sha256::digest(key.as_bytes())[..16])
}
