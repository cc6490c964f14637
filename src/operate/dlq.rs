//! `herald dlq list / show / replay / purge`: what the operator types, what
//! they read. Tables for a terminal, `--json` for scripts.

use std::fmt::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::shared::dead_letter::{DeadLetterEntry, DeadLetters, Filter};
use clap::{Args, Subcommand};

use crate::shared::config::Settings;
use crate::shared::db::Db;
use crate::shared::retry::RetryPolicy;

/// Reads a time given on the command line: RFC 3339, or a duration meaning "that long ago".
pub fn parse_when(text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        anyhow::anyhow!("{text:?} is neither an RFC 3339 time (2026-11-21T10:00:00Z) nor a duration (30m, 2h, 7days)")
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|ago| Utc::now().checked_sub_signed(ago))
        .ok_or_else(|| anyhow::anyhow!("{text:?} reaches further back than a calendar can"))
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

/// Which dead letters: any combination; all must match.
#[derive(Args, Clone, Default)]
pub struct DlqFilter {
    /// Only this reason (e.g. max_deliveries, push_bad_request, undecodable).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only events of this topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// Only events for this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only dead since this time (RFC 3339, or a duration ago such as 2h).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only dead before this time (RFC 3339, or a duration ago such as 30m).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

impl DlqFilter {
    fn build(&self, older_than: Option<&str>) -> anyhow::Result<(Filter, bool)> {
        let mut until = self.until.as_deref().map(parse_when).transpose()?;
        if let Some(age) = older_than {
            let cut = parse_when(age)?;
            until = Some(until.map_or(cut, |u| u.min(cut)));
        }
        let filter = Filter {
            event_id: None,
            reason: self.reason.clone(),
            topic: self.topic.clone(),
            user: self.user.clone(),
            since: self.since.as_deref().map(parse_when).transpose()?,
            until,
        };
        let narrowed = filter.reason.is_some()
            || filter.topic.is_some()
            || filter.user.is_some()
            || filter.since.is_some()
            || filter.until.is_some();
        Ok((filter, narrowed))
    }
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: DlqFilter,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Every field of one dead letter.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back into their stream (event id kept) for another try.
    Replay {
        /// Dead letter ids; or use filters, or --all.
        ids: Vec<String>,
        #[command(flatten)]
        filter: DlqFilter,
        #[arg(long)]
        all: bool,
        /// At most this many replays per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        #[arg(long)]
        json: bool,
    },
    /// Delete dead letters for good.
    Purge {
        /// Dead letter ids; or use filters, --older-than, or --all.
        ids: Vec<String>,
        #[command(flatten)]
        filter: DlqFilter,
        /// Only those dead longer than this (e.g. 7days).
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
        #[arg(long)]
        all: bool,
        /// Really delete (without it, only says what would be deleted).
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
}

/// `herald dlq …`.
pub async fn run(settings: Settings, command: DlqCommand) -> anyhow::Result<()> {
    let db = Db::connect(&settings).await?;
    let horizon = RetryPolicy::from_settings(&settings.retry).markers_ttl();
    let dl = DeadLetters::new(
        db,
        &settings.worker.group,
        Default::default(),
        horizon,
        settings.events.defaults(),
    );
    match command {
        DlqCommand::List {
            filter,
            limit,
            json,
        } => {
            let (filter, _) = filter.build(None)?;
            let entries = dl.list(&filter, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", table(&entries));
            }
        }
        DlqCommand::Show { id, json } => {
            let entry = dl.show(&id).await?.ok_or_else(|| {
                anyhow::anyhow!("no dead letter has id {id} (see `herald dlq list`)")
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entry)?);
            } else {
                print!("{}", details(&entry));
            }
        }
        DlqCommand::Replay {
            ids,
            filter,
            all,
            rate,
            json,
        } => {
            let (filter, narrowed) = filter.build(None)?;
            let entries = select(&dl, &ids, &filter, narrowed, all).await?;
            let results = replay_all(&dl, &entries, rate).await;
            let failed = results.iter().filter(|(_, r)| r.is_err()).count();
            if json {
                let rows: Vec<_> = results
                    .iter()
                    .map(|(id, r)| match r {
                        Ok(stream_id) => serde_json::json!({"id": id, "stream_id": stream_id}),
                        Err(e) => serde_json::json!({"id": id, "error": e}),
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for (id, r) in &results {
                    match r {
                        Ok(stream_id) => println!("replayed {id} as {stream_id}"),
                        Err(e) => println!("could not replay {id}: {e}"),
                    }
                }
                println!("{} replayed, {failed} failed", results.len() - failed);
            }
            anyhow::ensure!(failed == 0, "{failed} dead letter(s) could not be replayed");
        }
        DlqCommand::Purge {
            ids,
            filter,
            older_than,
            all,
            yes,
            json,
        } => {
            let (filter, narrowed) = filter.build(older_than.as_deref())?;
            let entries = select(&dl, &ids, &filter, narrowed, all).await?;
            if !yes {
                print!("{}", table(&entries));
                anyhow::bail!(
                    "nothing deleted: add --yes to delete these {} dead letter(s)",
                    entries.len()
                );
            }
            let deleted = dl.purge(&entries).await?;
            if json {
                println!("{}", serde_json::json!({"deleted": deleted}));
            } else {
                println!("deleted {deleted} dead letter(s)");
            }
        }
    }
    Ok(())
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
