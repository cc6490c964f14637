//! `herald replay`: re-processes history still in the streams. Each chosen
//! entry is added again to its stream as a copy (`replay_of` = the original
//! stream id) and goes through the worker, retry and dead-letter machinery like
//! any event. The copy keeps the event id, so the event's outcome markers skip
//! the devices that received it already; with `--force` the copy carries a run
//! id (`replay_run`) under which the devices are tracked afresh, so every one
//! gets it again (once per run), and the ordering check of its key is skipped.
//!
//! Copies of earlier replays are not replayed again. Outcome markers live for
//! the retry horizon (at least 48 h): an event older than that reaches every
//! device again even without `--force`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::deliver::route::trie::PatternTrie;
use crate::shared::db::Db;
use crate::shared::event::EventDefaults;
use crate::shared::stream::{REPLAY_OF, REPLAY_RUN};

/// Entries read per `XRANGE` page, and copies added per pipeline.
const PAGE: usize = 500;

/// Where a replay starts or ends: a stream id, or a time (the first id at or after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound(String);

impl Bound {
    /// `1700000000000-0`, `1700000000000`, an RFC 3339 time, or a duration meaning that long ago.
    pub fn parse(text: &str, end: bool) -> anyhow::Result<Bound> {
        if crate::shared::stream::is_id(text) {
            return Ok(Bound(text.to_string()));
        }
        let when: DateTime<Utc> = crate::operate::dlq::parse_when(text).map_err(|_| {
            anyhow::anyhow!("{text:?} is neither a stream id (1700000000000-0), an RFC 3339 time (2026-11-21T10:00:00Z) nor a duration ago (30m, 2h)")
        })?;
        let ms = when.timestamp_millis().max(0);
        // A time as the end includes every entry of that millisecond.
        Ok(Bound(if end {
            format!("{ms}-18446744073709551615")
        } else {
            format!("{ms}-0")
        }))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct Plan {
    pub from: Bound,
    pub to: Option<Bound>,
    /// Only events whose topic matches this pattern.
    pub topic: Option<String>,
    pub force: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Entries added again to their streams.
    pub replayed: u64,
    /// Entries in the range whose topic did not match `--topic`.
    pub skipped_topic: u64,
    /// Copies of earlier replays in the range, not replayed again.
    pub skipped_copies: u64,
    /// Events whose TTL is over (counted from when they were due): nothing left to deliver.
    pub skipped_expired: u64,
    /// The run id forced copies carry (`--force` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

/// Whether an entry is chosen, and why not.
enum Choice {
    Replay,
    OtherTopic,
    Copy,
    /// Its TTL is over: every push of it would be settled as expired.
    Expired,
}

fn choose(
    fields: &HashMap<String, String>,
    topic: Option<&PatternTrie>,
    defaults: &EventDefaults,
) -> Choice {
    if fields.contains_key(REPLAY_OF) {
        return Choice::Copy;
    }
    if crate::shared::event::Event::from_fields(fields, defaults)
        .is_ok_and(|e| e.ttl_left(chrono::Utc::now()).is_none())
    {
        return Choice::Expired;
    }
    if let Some(trie) = topic {
        let mut hits = std::collections::HashSet::new();
        trie.matches(fields.get("topic").map_or("", String::as_str), &mut hits);
        if hits.is_empty() {
            return Choice::OtherTopic;
        }
    }
    Choice::Replay
}

type Page = Vec<(String, HashMap<String, String>)>;

/// Replays history. Cheap to clone.
#[derive(Clone)]
pub struct Replayer {
    db: Db,
    defaults: EventDefaults,
}

impl Replayer {
    pub fn new(db: Db, defaults: EventDefaults) -> Replayer {
        Replayer { db, defaults }
    }

    fn trie(plan: &Plan) -> anyhow::Result<Option<PatternTrie>> {
        let Some(pattern) = &plan.topic else {
            return Ok(None);
        };
        crate::shared::subscriptions::check_pattern(pattern)
            .map_err(|e| anyhow::anyhow!("--topic {pattern:?}: {e}"))?;
        let mut trie = PatternTrie::default();
        trie.insert(pattern, 0);
        Ok(Some(trie))
    }

    /// One page of entries, read as the workers read them (any bytes; the
    /// fields a plain XADD left out filled in, so a copy keeps its derived id).
    async fn page(&self, stream: &str, start: &str, end: &str) -> anyhow::Result<Page> {
        let mut conn = self.db.conn();
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(PAGE)
            .query_async(&mut conn)
            .await?;
        Ok(crate::shared::stream::parse_entry_list(stream, reply, 0)?
            .into_iter()
            .filter_map(|e| Some((e.id, e.fields?)))
            .collect())
    }

    /// Walks the chosen range of every partition, page by page, calling `each` per page.
    /// Returns the entries that existed when the walk started (its upper end per partition).
    async fn walk<F, Fut>(&self, plan: &Plan, mut each: F) -> anyhow::Result<()>
    where
        F: FnMut(u32, Page) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        for partition in 0..self.db.keys.partitions() {
            let stream = self.db.keys.stream(partition);
            // Copies are added behind the newest entry: end the walk where it stood at the start.
            let end = match &plan.to {
                Some(to) => to.as_str().to_string(),
                None => {
                    let mut conn = self.db.conn();
                    let newest: Page = redis::cmd("XREVRANGE")
                        .arg(&stream)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut conn)
                        .await?;
                    match newest.into_iter().next() {
                        Some((id, _)) => id,
                        None => continue,
                    }
                }
            };
            let mut start = plan.from.as_str().to_string();
            loop {
                let page = self.page(&stream, &start, &end).await?;
                let full = page.len() == PAGE;
                let last = page.last().map(|(id, _)| id.clone());
                each(partition, page).await?;
                match (full, last) {
                    (true, Some(last)) => start = format!("({last}"),
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// How many entries the plan would replay (for the progress bar).
    pub async fn count(&self, plan: &Plan) -> anyhow::Result<u64> {
        let trie = Self::trie(plan)?;
        let mut n = 0;
        self.walk(plan, |_, page| {
            n += page
                .iter()
                .filter(|(_, f)| matches!(choose(f, trie.as_ref(), &self.defaults), Choice::Replay))
                .count() as u64;
            async { Ok(()) }
        })
        .await?;
        Ok(n)
    }

    /// Adds a copy of every chosen entry to its stream; `progress` is told how many after each page.
    pub async fn run(&self, plan: &Plan, mut progress: impl FnMut(u64)) -> anyhow::Result<Summary> {
        let trie = Self::trie(plan)?;
        let run = plan.force.then(|| uuid::Uuid::now_v7().to_string());
        let mut summary = Summary {
            run: run.clone(),
            ..Summary::default()
        };
        let db = self.db.clone();
        let defaults = &self.defaults;
        let summary_ref = &mut summary;
        let progress_ref = &mut progress;
        self.walk(plan, |partition, page| {
            let mut pipe = redis::pipe();
            let stream = db.keys.stream(partition);
            let mut added = 0;
            for (id, fields) in &page {
                match choose(fields, trie.as_ref(), defaults) {
                    Choice::Copy => summary_ref.skipped_copies += 1,
                    Choice::OtherTopic => summary_ref.skipped_topic += 1,
                    Choice::Expired => summary_ref.skipped_expired += 1,
                    Choice::Replay => {
                        let mut cmd = redis::cmd("XADD");
                        cmd.arg(&stream).arg("*");
                        let mut sorted: Vec<(&String, &String)> = fields.iter().collect();
                        sorted.sort();
                        for (k, v) in sorted {
                            cmd.arg(k).arg(v);
                        }
                        cmd.arg(REPLAY_OF).arg(id);
                        if let Some(run) = &run {
                            cmd.arg(REPLAY_RUN).arg(run);
                        }
                        pipe.add_command(cmd).ignore();
                        added += 1;
                    }
                }
            }
            summary_ref.replayed += added;
            progress_ref(added);
            let db = db.clone();
            async move {
                if added > 0 {
                    let mut conn = db.conn();
                    pipe.query_async::<()>(&mut conn).await?;
                }
                Ok(())
            }
        })
        .await?;
        Ok(summary)
    }
}

/// `herald replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// First entry: a stream id (1700000000000-0), an RFC 3339 time, or a duration ago (2h).
    #[arg(long, value_name = "TIME|ID")]
    pub from: String,
    /// Last entry (inclusive), same forms; default: the newest entry when the replay starts.
    #[arg(long, value_name = "TIME|ID")]
    pub to: Option<String>,
    /// Only events whose topic matches this pattern (`*` one word, `#` any words).
    #[arg(long, value_name = "PATTERN")]
    pub topic: Option<String>,
    /// Push again to devices that received an event already.
    #[arg(long)]
    pub force: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `herald replay`: a progress bar on a terminal, a summary at the end.
pub async fn run_cli(
    settings: crate::shared::config::Settings,
    args: ReplayArgs,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let plan = Plan {
        from: Bound::parse(&args.from, false).map_err(|e| anyhow::anyhow!("--from: {e}"))?,
        to: args
            .to
            .map(|t| Bound::parse(&t, true))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--to: {e}"))?,
        topic: args.topic,
        force: args.force,
    };
    let db = Db::connect(&settings).await?;
    let replayer = Replayer::new(db, settings.events.defaults());
    let bar = if std::io::stderr().is_terminal() {
        let total = replayer.count(&plan).await?;
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "replaying {bar:40} {pos}/{len} events ({elapsed} so far, {eta} left)",
            )
            .expect("a valid template"),
        );
        Some(bar)
    } else {
        None
    };
    let summary = replayer
        .run(&plan, |n| {
            if let Some(bar) = &bar {
                bar.inc(n);
            }
        })
        .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "replayed {} event(s); skipped {} of other topics, {} copies of earlier replays and {} whose TTL is over",
            summary.replayed, summary.skipped_topic, summary.skipped_copies, summary.skipped_expired
        );
        match &summary.run {
            Some(run) => println!("--force: every device gets them again (replay run {run})"),
            None => println!(
                "devices that received an event already are skipped; --force pushes to them again"
            ),
        }
    }
    Ok(())
}
