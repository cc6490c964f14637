//! `herald dlq list / show / replay / purge`: what the operator types, what
//! they read. Tables for a terminal, `--json` for scripts.

use std::fmt::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{DeadLetterEntry, DeadLetters, Filter};

/// Reads a time given on the command line: RFC 3339, or a duration meaning "that long ago".
pub fn parse_when(text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        anyhow::anyhow!("{text:?} is neither an RFC 3339 time (2026-11-21T10:00:00Z) nor a duration (30m, 2h, 7days)")
    })?;
    Ok(Utc::now() - chrono::Duration::from_std(ago)?)
}

/// The table `herald dlq list` prints.
pub fn table(entries: &[DeadLetterEntry]) -> String {
    if entries.is_empty() {
        return "no dead letters match\n".into();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<17} {:<24} {:<22} {:<38} {:<12} {:<26} ERROR",
        "ID", "DEAD AT", "REASON", "EVENT", "USER", "TOPIC"
    );
    for e in entries {
        let error = e
            .fields
            .get("dlq.last_error")
            .map(String::as_str)
            .unwrap_or("");
        let error: String = error.chars().take(60).collect();
        let _ = writeln!(
            out,
            "{:<17} {:<24} {:<22} {:<38} {:<12} {:<26} {}",
            e.id,
            e.dead_at,
            e.reason,
            e.event_id.as_deref().unwrap_or("-"),
            e.user.as_deref().unwrap_or("-"),
            e.topic.as_deref().unwrap_or("-"),
            error
        );
    }
    let _ = writeln!(
        out,
        "{} dead letter(s); `herald dlq show ID` for every field",
        entries.len()
    );
    out
}

/// Every field of one dead letter, aligned.
pub fn details(e: &DeadLetterEntry) -> String {
    let width = e.fields.keys().map(String::len).max().unwrap_or(0);
    let mut out = format!("dead letter {} (partition {})\n", e.id, e.partition);
    for (k, v) in &e.fields {
        let _ = writeln!(out, "  {k:<width$}  {v}");
    }
    out
}

/// Replays `entries` at most `rate` per second; returns `(dead letter id, new stream id or error)`.
pub async fn replay_all(
    dl: &DeadLetters,
    entries: &[DeadLetterEntry],
    rate: f64,
) -> Vec<(String, Result<String, String>)> {
    let pause = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let mut results = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
        }
        let result = dl.replay(e).await.map_err(|err| format!("{err:#}"));
        results.push((e.id.clone(), result));
    }
    results
}

/// Selects dead letters by id, or else by filter (`all` required when no filter is given).
pub async fn select(
    dl: &DeadLetters,
    ids: &[String],
    filter: &Filter,
    filtered: bool,
    all: bool,
) -> anyhow::Result<Vec<DeadLetterEntry>> {
    if !ids.is_empty() {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            match dl.show(id).await? {
                Some(e) => found.push(e),
                None => anyhow::bail!("no dead letter has id {id} (see `herald dlq list`)"),
            }
        }
        return Ok(found);
    }
    anyhow::ensure!(
        filtered || all,
        "name dead letters by id, narrow them with --reason/--topic/--user/--since/--until/--older-than, or say --all"
    );
    dl.list(filter, usize::MAX).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        let t = parse_when("2026-11-21T10:00:00Z").expect("rfc 3339");
        assert_eq!(t.to_rfc3339(), "2026-11-21T10:00:00+00:00");
        let ago = parse_when("2h").expect("duration");
        let expected = Utc::now() - chrono::Duration::hours(2);
        assert!((ago - expected).num_seconds().abs() <= 1);
        assert!(parse_when("yesterday-ish").is_err());
    }
}
