//! `herald stats`: what an operator asks first. Per stream its length; per
//! group its lag, pending entries and the age of the oldest; per consumer its
//! pending entries and idle time; the dead letters and their top reasons; the
//! local spool's depth. Read from Redis with `XINFO`/`XPENDING`, nothing cached.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::Path;

use redis::Value;
use serde::Serialize;

use crate::shared::db::Db;
use crate::shared::stream::{id_ms, info_number, info_text, Info};

/// Everything `herald stats` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub streams: Vec<StreamStats>,
    /// What each worker last reported of its push services.
    pub push_services: Vec<PushServices>,
    /// The spool of the API whose data directory this is, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool: Option<crate::intake::spool::Depth>,
}

/// One worker's report of its push services (`{P:ops}:push-state`).
#[derive(Debug, Clone, Serialize)]
pub struct PushServices {
    pub consumer: String,
    /// Milliseconds since the report (reports come every `admin.sample_interval`;
    /// an old one is from a worker that stopped without saying so).
    pub age_ms: u64,
    /// Origins whose breaker is open, with the seconds left at the report.
    pub open_breakers: Vec<(String, f64)>,
    /// Subscriptions left alone after their `429`.
    pub waiting_subscriptions: u64,
    /// Pushes accepted since that worker started (rates come from two reports).
    pub delivered: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamStats {
    pub partition: u32,
    pub stream: String,
    pub length: u64,
    pub groups: Vec<GroupStats>,
    pub dead_letters: u64,
    /// Reasons of the newest dead letters (up to 1000 looked at), most frequent first.
    pub dead_letter_reasons: Vec<(String, u64)>,
    /// Delayed events waiting for their `deliver_at`.
    pub scheduled: u64,
    /// Direct events waiting for their user's first subscription.
    pub held: u64,
    /// Held events whose TTL ran out before their user subscribed (a counter).
    pub held_expired: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupStats {
    pub name: String,
    pub pending: u64,
    /// Entries not yet read by the group (`null` when Redis cannot tell).
    pub lag: Option<u64>,
    pub last_delivered_id: String,
    pub oldest_pending_id: Option<String>,
    /// Milliseconds since the oldest pending entry entered the stream.
    pub oldest_pending_age_ms: Option<u64>,
    pub consumers: Vec<ConsumerStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStats {
    pub name: String,
    pub pending: u64,
    pub idle_ms: u64,
}

/// Reads the numbers from Redis (and the spool in `spool_dir`, if it exists).
pub async fn collect(
    db: &Db,
    group_filter: Option<&str>,
    spool_dir: Option<&Path>,
) -> anyhow::Result<Stats> {
    let mut conn = db.conn();
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let mut streams = Vec::new();
    for partition in 0..db.keys.partitions() {
        let stream = db.keys.stream(partition);
        let dlq = db.keys.dead_letters(partition);
        let length: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await?;
        let dead_letters: u64 = redis::cmd("XLEN").arg(&dlq).query_async(&mut conn).await?;
        let (scheduled, held, held_expired): (u64, u64, Option<u64>) = redis::pipe()
            .zcard(db.keys.scheduled(partition))
            .hlen(db.keys.held_events(partition))
            .get(db.keys.held_expired(partition))
            .query_async(&mut conn)
            .await?;
        let groups_info: Vec<Info> = if length > 0 || exists(&mut conn, &stream).await? {
            redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query_async(&mut conn)
                .await?
        } else {
            Vec::new()
        };
        let mut groups = Vec::new();
        for g in groups_info {
            let Some(name) = info_text(&g, "name") else {
                continue;
            };
            if group_filter.is_some_and(|f| f != name) {
                continue;
            }
            let pending = info_number(&g, "pending").unwrap_or(0);
            let (mut oldest_pending_id, mut oldest_pending_age_ms) = (None, None);
            if pending > 0 {
                let summary: (u64, Option<String>, Option<String>, Value) = redis::cmd("XPENDING")
                    .arg(&stream)
                    .arg(&name)
                    .query_async(&mut conn)
                    .await?;
                if let Some(id) = summary.1 {
                    oldest_pending_age_ms = Some(now_ms.saturating_sub(id_ms(&id)));
                    oldest_pending_id = Some(id);
                }
            }
            let consumers_info: Vec<Info> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&stream)
                .arg(&name)
                .query_async(&mut conn)
                .await?;
            let consumers = consumers_info
                .iter()
                .filter_map(|c| {
                    Some(ConsumerStats {
                        name: info_text(c, "name")?,
                        pending: info_number(c, "pending").unwrap_or(0),
                        idle_ms: info_number(c, "idle").unwrap_or(0),
                    })
                })
                .collect();
            groups.push(GroupStats {
                name,
                pending,
                lag: info_number(&g, "lag"),
                last_delivered_id: info_text(&g, "last-delivered-id").unwrap_or_default(),
                oldest_pending_id,
                oldest_pending_age_ms,
                consumers,
            });
        }
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        if dead_letters > 0 {
            let newest: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
                .arg(&dlq)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            for (_, fields) in newest {
                let reason = fields
                    .get("dlq.reason")
                    .cloned()
                    .unwrap_or_else(|| "unknown".into());
                *reasons.entry(reason).or_default() += 1;
            }
        }
        let mut dead_letter_reasons: Vec<(String, u64)> = reasons.into_iter().collect();
        dead_letter_reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        streams.push(StreamStats {
            partition,
            stream,
            length,
            groups,
            dead_letters,
            dead_letter_reasons,
            scheduled,
            held,
            held_expired: held_expired.unwrap_or(0),
        });
    }
    let reports: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(db.keys.push_state())
        .query_async(&mut conn)
        .await?;
    let push_services = reports
        .into_iter()
        .filter_map(|(consumer, json)| {
            let report: serde_json::Value = serde_json::from_str(&json).ok()?;
            let at = report["at_ms"].as_u64().unwrap_or(0);
            Some(PushServices {
                consumer,
                age_ms: now_ms.saturating_sub(at),
                open_breakers: serde_json::from_value(report["open_breakers"].clone())
                    .unwrap_or_default(),
                waiting_subscriptions: report["waiting_subscriptions"].as_u64().unwrap_or(0),
                delivered: report["delivered"].as_u64().unwrap_or(0),
            })
        })
        .collect();
    let spool = match spool_dir {
        Some(dir) if dir.join("events.log").exists() => {
            Some(crate::intake::spool::Depth::read(dir)?)
        }
        _ => None,
    };
    Ok(Stats {
        streams,
        push_services,
        spool,
    })
}

async fn exists(conn: &mut crate::shared::db::Conn, key: &str) -> anyhow::Result<bool> {
    let n: u64 = redis::cmd("EXISTS").arg(key).query_async(conn).await?;
    Ok(n == 1)
}

fn age(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
}

/// The terminal table.
pub fn table(stats: &Stats) -> String {
    let mut out = String::new();
    for s in &stats.streams {
        let _ = writeln!(
            out,
            "stream {}  length {}  dead letters {}  scheduled {}  held {} ({} expired)",
            s.stream, s.length, s.dead_letters, s.scheduled, s.held, s.held_expired
        );
        if !s.dead_letter_reasons.is_empty() {
            let reasons: Vec<String> = s
                .dead_letter_reasons
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "  dead-letter reasons (newest 1000): {}",
                reasons.join(", ")
            );
        }
        if s.groups.is_empty() {
            let _ = writeln!(out, "  no consumer group yet (no worker has run)");
        }
        for g in &s.groups {
            let lag = g.lag.map_or("unknown".to_string(), |l| l.to_string());
            let oldest = match (&g.oldest_pending_id, g.oldest_pending_age_ms) {
                (Some(id), Some(ms)) => format!("  oldest pending {id} ({} old)", age(ms)),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  group {}  lag {lag}  pending {}{oldest}",
                g.name, g.pending
            );
            for c in &g.consumers {
                let _ = writeln!(
                    out,
                    "    consumer {:<40} pending {:<6} idle {}",
                    c.name,
                    c.pending,
                    age(c.idle_ms)
                );
            }
        }
    }
    for p in &stats.push_services {
        let breakers: Vec<String> = p
            .open_breakers
            .iter()
            .map(|(origin, left)| format!("{origin} ({left:.0}s left)"))
            .collect();
        let _ = writeln!(
            out,
            "push services of {} (reported {} ago): breakers open: {}; subscriptions waiting out a 429: {}",
            p.consumer,
            age(p.age_ms),
            if breakers.is_empty() { "none".to_string() } else { breakers.join(", ") },
            p.waiting_subscriptions
        );
    }
    if let Some(spool) = &stats.spool {
        let _ = writeln!(
            out,
            "spool  {} event(s) waiting, {} bytes, {} piece(s) quarantined",
            spool.records, spool.bytes, spool.quarantined
        );
    }
    out
}

/// `herald stats`.
#[derive(clap::Args)]
pub struct StatsArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Refresh every this many seconds until Ctrl-C.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<u64>,
    /// Only this consumer group.
    #[arg(long)]
    pub group: Option<String>,
}

/// `herald stats`: once, or every `--watch` seconds until Ctrl-C.
pub async fn run_cli(
    settings: crate::shared::config::Settings,
    args: StatsArgs,
) -> anyhow::Result<()> {
    let StatsArgs { json, watch, group } = args;
    let db = Db::connect(&settings).await?;
    let spool_dir = settings.spool_dir();
    loop {
        let stats = collect(&db, group.as_deref(), Some(&spool_dir)).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&stats)?);
        } else {
            if watch.is_some() {
                // Clear the screen and go home, like watch(1).
                print!("\x1b[2J\x1b[H");
                println!(
                    "herald stats, {} (every {}s, Ctrl-C to stop)\n",
                    crate::shared::event::format_time(chrono::Utc::now()),
                    watch.unwrap_or(0)
                );
            }
            print!("{}", table(&stats));
        }
        match watch {
            Some(secs) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    _ = tokio::time::sleep(std::time::Duration::from_secs(secs.max(1))) => {}
                }
            }
            None => return Ok(()),
        }
    }
}

/// Sets the gauges read from Redis.
pub fn sample(stats: &Stats) {
    for s in &stats.streams {
        let p = s.partition.to_string();
        metrics::gauge!("herald_stream_length", "partition" => p.clone()).set(s.length as f64);
        metrics::gauge!("herald_dead_letter_length", "partition" => p.clone())
            .set(s.dead_letters as f64);
        metrics::gauge!("herald_scheduled_events", "partition" => p.clone())
            .set(s.scheduled as f64);
        metrics::gauge!("herald_held_events", "partition" => p.clone()).set(s.held as f64);
        metrics::gauge!("herald_held_expired_events", "partition" => p.clone())
            .set(s.held_expired as f64);
        for g in &s.groups {
            let labels = [("partition", p.clone()), ("group", g.name.clone())];
            metrics::gauge!("herald_group_lag", &labels).set(g.lag.unwrap_or(0) as f64);
            metrics::gauge!("herald_group_pending", &labels).set(g.pending as f64);
            metrics::gauge!("herald_group_oldest_pending_age_seconds", &labels)
                .set(g.oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0);
            metrics::gauge!("herald_group_consumers", &labels).set(g.consumers.len() as f64);
        }
    }
}

/// Samples the Redis gauges every `interval` until shutdown.
pub async fn sample_loop(
    db: Db,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    while !shutdown.is_cancelled() {
        match collect(&db, None, None).await {
            Ok(stats) => sample(&stats),
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "cannot sample the Redis gauges; next time")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
    Ok(())
}
