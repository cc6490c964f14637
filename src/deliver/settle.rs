//! Settling: a device's outcome marker, dead letters, a held event, the
//! not-before time of a retry, and the acknowledgement.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

/// How long a worker keeps trying to record a device's outcome while Redis is away.
const MARKER_PATIENCE: Duration = Duration::from_secs(30);

impl Worker {
    /// Writes a device's marker, retrying while Redis is unreachable (up to
    /// `MARKER_PATIENCE`): the device already has the event, and a marker lost to a
    /// Redis blip would mean a second push on the retry.
    pub(super) async fn mark(
        &self,
        outcomes_key: &str,
        sub: &str,
        marker: &str,
    ) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + MARKER_PATIENCE;
        loop {
            match self.mark_once(outcomes_key, sub, marker).await {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub(super) async fn mark_once(
        &self,
        outcomes_key: &str,
        sub: &str,
        marker: &str,
    ) -> anyhow::Result<()> {
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

    /// Records the latest not-before time any failed push asked for (`Retry-After`,
    /// or an open breaker), so the reclaimer does not claim the entry sooner.
    pub(super) async fn remember_retry_after(
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

    /// Dead-letters one device's share of an event; the entry stays for the other devices.
    pub(super) async fn dead_letter_device(
        &self,
        entry: &Entry,
        fields: &HashMap<String, String>,
        why: &DeadLetter,
    ) -> anyhow::Result<String> {
        self.dead_letters
            .write(&entry.stream, &entry.id, fields, &self.consumer, why, false)
            .await
    }

    pub(super) async fn dead_letter_entry(&self, entry: &Entry, why: DeadLetter) -> EntryOutcome {
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

    /// `XACK`, and forget any not-before time of the entry.
    /// Holds a direct event for a user without a subscription (see [`crate::deliver::holding`]).
    pub(super) async fn hold(
        &self,
        entry: &Entry,
        partition: u32,
        user: &str,
        event: &Event,
    ) -> EntryOutcome {
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
                // The user may have subscribed since the routing looked (see crate::deliver::holding).
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

    pub(super) async fn ack(&self, entry: &Entry, done: EntryOutcome) -> EntryOutcome {
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
