//! Claiming an entry before pushing: still this consumer's, nobody else on it
//! (a lease), and which devices are done already; heartbeats while it is in
//! progress.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

static BEGIN: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
static REFRESH: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
static RELEASE: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();

/// How often an entry in progress refreshes its idle time and lease: twice per base delay.
pub(super) fn heartbeat_interval(base_delay: Duration) -> Duration {
    (base_delay / 2).max(Duration::from_millis(50))
}

/// How long a lease (or a key's lock) lasts without a heartbeat: several heartbeats, at least a second.
pub(super) fn lease(base_delay: Duration) -> Duration {
    (heartbeat_interval(base_delay) * 3).max(Duration::from_secs(1))
}

impl Worker {
    /// The event's outcome markers, or `None` when another consumer took the entry over.
    pub(super) async fn begin(
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

    /// Resets the entry's idle time while it is still ours (see `refresh.lua`).
    pub(super) async fn heartbeat(&self, entry: &Entry) {
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

    /// Lets others retry an entry left pending, without waiting for the lease to expire.
    pub(super) async fn release(&self, entry: &Entry) {
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

    /// `XCLAIM ... 0 id JUSTID` to ourselves: resets the idle time, not the delivery count.
    pub(super) fn lease_key(&self, entry: &Entry) -> String {
        let partition = self.db.keys.partition_of(&entry.stream).unwrap_or(0);
        self.db.keys.lease(partition, &entry.id)
    }

    /// How long a lease lasts without a heartbeat: several heartbeats, at least a second.
    pub(super) fn lease_ms(&self) -> u64 {
        (self.heartbeat_interval() * 3)
            .max(Duration::from_secs(1))
            .as_millis() as u64
    }

    pub(super) fn heartbeat_interval(&self) -> Duration {
        (self.policy.base_delay / 2).max(Duration::from_millis(50))
    }
}
