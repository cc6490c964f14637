//! Delayed delivery: events published with a `deliver_at` still ahead wait in a
//! sorted set per partition (`publish.lua` puts them there); this loop, run by
//! the reclaimer role, moves the due ones into the stream with one script
//! (`XADD` + `ZREM`), so that several schedulers never move one event twice and
//! a restart loses nothing. From the stream on, a delayed event is an event
//! like any other.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::shared::db::{script, Db};

static MOVE_DUE: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();

/// Events moved per script call: bounds how long one call holds Redis.
const MOVE_BATCH: usize = 500;

/// Moves due events into their streams. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    db: Db,
    interval: Duration,
}

impl Scheduler {
    pub fn new(db: Db, interval: Duration) -> Scheduler {
        Scheduler { db, interval }
    }

    /// Moves every due event of every partition; returns how many moved.
    pub async fn move_due(&self) -> anyhow::Result<u64> {
        let keys = &self.db.keys;
        let mut conn = self.db.conn();
        let mut moved = 0;
        for partition in 0..keys.partitions() {
            loop {
                let n: u64 = script(&MOVE_DUE, include_str!("move_due.lua"))
                    .key(keys.scheduled(partition))
                    .key(keys.scheduled_events(partition))
                    .key(keys.stream(partition))
                    .arg(MOVE_BATCH)
                    .invoke_async(&mut conn)
                    .await?;
                moved += n;
                if n < MOVE_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(moved)
    }

    /// Events waiting for their `deliver_at`, over all partitions.
    pub async fn scheduled(db: &Db) -> anyhow::Result<u64> {
        let mut conn = db.conn();
        let mut pipe = redis::pipe();
        for partition in 0..db.keys.partitions() {
            pipe.zcard(db.keys.scheduled(partition));
        }
        let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
        Ok(counts.into_iter().sum())
    }

    /// Moves due events every `interval` until shutdown.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(interval = ?self.interval, "scheduler started");
        let mut failing = false;
        while !shutdown.is_cancelled() {
            match self.move_due().await {
                Ok(moved) => {
                    if failing {
                        tracing::info!("moving due scheduled events works again");
                    }
                    failing = false;
                    if moved > 0 {
                        tracing::info!(moved, "scheduled events are due; moved into the stream");
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %format!("{e:#}"), "cannot move due scheduled events; will retry");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        tracing::info!("scheduler stopped");
        Ok(())
    }
}
