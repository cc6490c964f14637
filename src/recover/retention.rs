//! Retention: keeps each event stream within `retention.max_age` /
//! `retention.max_len` with `XTRIM MINID`, never past the oldest entry that any
//! consumer group still needs (pending, or not yet read); and the dead-letter
//! streams within their own limits. Run by the reclaimer.

use redis::Value;

use crate::shared::config::RetentionSettings;
use crate::shared::db::Db;
use crate::shared::stream::{compare_ids, info_number, info_text, successor, Info};

/// What one pass trimmed, per partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Trimmed {
    pub events: u64,
    pub dead_letters: u64,
}

/// Trims streams. Cheap to clone.
#[derive(Clone)]
pub struct Retention {
    db: Db,
    settings: RetentionSettings,
}

impl Retention {
    pub fn new(db: Db, settings: RetentionSettings) -> Retention {
        Retention { db, settings }
    }

    /// One pass over one partition.
    pub async fn trim(&self, partition: u32) -> anyhow::Result<Trimmed> {
        let stream = self.db.keys.stream(partition);
        let dlq = self.db.keys.dead_letters(partition);
        let s = &self.settings;
        let mut trimmed = Trimmed::default();
        if let Some(cut) = self
            .cut(&stream, s.max_age.as_millis() as u64, s.max_len)
            .await?
        {
            // Never beyond what a group still needs.
            if let Some(floor) = self.floor(&stream).await? {
                let minid = std::cmp::min_by(cut, floor, |a, b| compare_ids(a, b));
                trimmed.events = self.xtrim(&stream, &minid).await?;
            }
        }
        if let Some(cut) = self
            .cut(
                &dlq,
                s.dead_letter_max_age.as_millis() as u64,
                s.dead_letter_max_len,
            )
            .await?
        {
            trimmed.dead_letters = self.xtrim(&dlq, &cut).await?;
        }
        if trimmed.events > 0 || trimmed.dead_letters > 0 {
            tracing::info!(
                partition,
                events = trimmed.events,
                dead_letters = trimmed.dead_letters,
                "trimmed by retention"
            );
        }
        Ok(trimmed)
    }

    /// The oldest id to keep by age and by length (the stricter of the two), if any limit applies.
    async fn cut(
        &self,
        key: &str,
        max_age_ms: u64,
        max_len: u64,
    ) -> anyhow::Result<Option<String>> {
        let mut cuts = Vec::new();
        if max_age_ms > 0 {
            let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
            cuts.push(format!("{}-0", now.saturating_sub(max_age_ms)));
        }
        if max_len > 0 {
            let mut conn = self.db.conn();
            // Fields as raw values: only the ids matter, and a producer's XADD may hold any bytes.
            let newest: Vec<(String, redis::Value)> = redis::cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(max_len)
                .query_async(&mut conn)
                .await?;
            if newest.len() as u64 == max_len {
                if let Some((oldest_kept, _)) = newest.last() {
                    cuts.push(oldest_kept.clone());
                }
            }
        }
        Ok(cuts.into_iter().max_by(|a, b| compare_ids(a, b)))
    }

    /// The oldest id some group still needs: its oldest pending entry, or the
    /// first it has not read. `None` when the stream has no group (nothing is safe).
    async fn floor(&self, stream: &str) -> anyhow::Result<Option<String>> {
        let mut conn = self.db.conn();
        let groups: Vec<Info> = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut conn)
            .await
        {
            Ok(groups) => groups,
            Err(e) if e.to_string().contains("no such key") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut floor: Option<String> = None;
        for group in groups {
            let (Some(name), Some(last)) = (
                info_text(&group, "name"),
                info_text(&group, "last-delivered-id"),
            ) else {
                continue;
            };
            let mut needed = successor(&last);
            let pending = info_number(&group, "pending").unwrap_or(0);
            if pending > 0 {
                let summary: (u64, Option<String>, Option<String>, Value) = redis::cmd("XPENDING")
                    .arg(stream)
                    .arg(&name)
                    .query_async(&mut conn)
                    .await?;
                if let Some(oldest) = summary.1 {
                    needed = std::cmp::min_by(needed, oldest, |a, b| compare_ids(a, b));
                }
            }
            floor = Some(match floor {
                Some(f) => std::cmp::min_by(f, needed, |a, b| compare_ids(a, b)),
                None => needed,
            });
        }
        Ok(floor)
    }

    async fn xtrim(&self, key: &str, minid: &str) -> anyhow::Result<u64> {
        let mut conn = self.db.conn();
        Ok(redis::cmd("XTRIM")
            .arg(key)
            .arg("MINID")
            .arg(minid)
            .query_async(&mut conn)
            .await?)
    }
}
