//! `herald audit`: an extra consumer group on the event streams (`audit.group`)
//! that writes every event as one JSON line to a file or stdout. It has its own
//! position in the streams, so it sees every event whatever the workers do:
//! the several-independent-readers property of consumer groups, in a form
//! operators use (who was told what, and when).
//!
//! Lines are written and flushed (fsync'd, for a file) before the entries are
//! acknowledged; a crash in between writes those lines again on the next start
//! (at-least-once, like everything else). Run one audit process per group.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::shared::db::Db;
use crate::shared::event::{format_time, Content, Event};
use crate::shared::stream::{is_nogroup, parse_entries, Entry};

/// `herald audit`.
#[derive(clap::Args)]
pub struct AuditArgs {
    /// The audit's consumer group (overrides audit.group).
    #[arg(long)]
    pub group: Option<String>,
    /// Append to this file instead of stdout (overrides audit.out; `-` is stdout).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Entries read per partition per round.
const BATCH: usize = 200;
/// How long to wait when no partition had anything new.
const IDLE: Duration = Duration::from_millis(200);

/// Where the lines go.
enum Sink {
    Stdout(std::io::Stdout),
    File(std::fs::File),
}

impl Sink {
    fn open(path: &Path) -> anyhow::Result<Sink> {
        if path.as_os_str().is_empty() || path == Path::new("-") {
            return Ok(Sink::Stdout(std::io::stdout()));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot open the audit log {} (audit.out): {e}",
                    path.display()
                )
            })?;
        Ok(Sink::File(file))
    }

    /// Writes the lines and makes them durable before returning.
    fn write_durably(&mut self, lines: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => {
                let mut out = out.lock();
                out.write_all(lines)?;
                out.flush()
            }
            Sink::File(file) => {
                file.write_all(lines)?;
                file.sync_data()
            }
        }
    }
}

/// The audit reader. Not cloned: one per process.
pub struct Audit {
    db: Db,
    group: String,
    consumer: String,
    out: PathBuf,
    defaults: crate::shared::event::EventDefaults,
}

/// One entry as an audit line: the event as the API took it, or, when the
/// entry cannot be read as an event, its raw fields and why.
pub fn line(entry: &Entry, defaults: &crate::shared::event::EventDefaults) -> Value {
    let mut line = json!({"stream": entry.stream, "stream_id": entry.id});
    if let Some(original) = entry
        .fields
        .as_ref()
        .and_then(|f| f.get(crate::shared::stream::REPLAY_OF))
    {
        line["replay_of"] = json!(original);
    }
    if let Some(trace) = entry
        .fields
        .as_ref()
        .and_then(|f| f.get(crate::shared::telemetry::TRACEPARENT_FIELD))
    {
        line["traceparent"] = json!(trace);
    }
    match entry
        .fields
        .as_ref()
        .map(|f| Event::from_fields(f, defaults))
    {
        Some(Ok(e)) => {
            line["event"] = json!({
                "id": e.id,
                "topic": e.topic,
                "user": e.user,
                "key": e.key,
                "headers": e.headers,
                "publish_at": format_time(e.publish_at),
                "deliver_at": e.deliver_at.map(format_time),
                "ttl": e.ttl,
                "urgency": e.urgency.as_str(),
            });
            match &e.content {
                Content::Notification(n) => line["event"]["notification"] = json!(n),
                Content::Data(data) => line["event"]["data"] = json!(data),
            }
        }
        Some(Err(problem)) => {
            line["error"] = json!(problem.to_string());
            let fields: std::collections::BTreeMap<_, _> = entry.fields.iter().flatten().collect();
            line["fields"] = json!(fields);
        }
        None => line["error"] = json!("deleted from the stream before the audit read it"),
    }
    line
}

impl Audit {
    pub fn new(
        db: Db,
        group: &str,
        consumer: &str,
        out: PathBuf,
        defaults: crate::shared::event::EventDefaults,
    ) -> Audit {
        Audit {
            db,
            defaults,
            group: group.to_string(),
            consumer: consumer.to_string(),
            out,
        }
    }

    /// Creates the audit group on every stream from id `0`, when missing: an audit
    /// log starts with everything still in the streams.
    pub async fn ensure_groups(&self) -> anyhow::Result<()> {
        self.db.ensure_group(&self.group, "0").await
    }

    /// Writes every event until shutdown: first this consumer's own pending
    /// entries (lines a crash left unacknowledged), then new ones.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut sink = Sink::open(&self.out)?;
        self.ensure_groups().await?;
        tracing::info!(group = %self.group, consumer = %self.consumer, out = %self.out.display(), "audit started");
        let partitions = self.db.keys.partitions();
        // Per partition: where to read from; "0" (own pending) until they are all written.
        let mut start: Vec<String> = vec!["0".into(); partitions as usize];
        let mut written: u64 = 0;
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let mut any = false;
            for partition in 0..partitions {
                let at = &mut start[partition as usize];
                match self.round(partition, at, &mut sink).await {
                    Ok(n) => {
                        failures = 0;
                        written += n as u64;
                        any |= n > 0;
                    }
                    Err(e) if e.downcast_ref::<std::io::Error>().is_some() => {
                        // The lines were not acknowledged: nothing is lost, they are written on the next start.
                        return Err(e.context(format!(
                            "cannot write the audit log ({}); stopping",
                            if self.out.as_os_str().is_empty() {
                                "stdout".into()
                            } else {
                                self.out.display().to_string()
                            }
                        )));
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(error = %format!("{e:#}"), "audit read failed; will retry");
                        }
                        if is_nogroup(&e) {
                            self.ensure_groups().await.ok();
                        }
                    }
                }
            }
            if !any {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(IDLE) => {}
                }
            }
        }
        tracing::info!(written, "audit stopped");
        Ok(())
    }

    /// Reads, writes and acknowledges one batch of one partition; returns how many.
    async fn round(
        &self,
        partition: u32,
        start: &mut String,
        sink: &mut Sink,
    ) -> anyhow::Result<usize> {
        let stream = self.db.keys.stream(partition);
        let mut conn = self.db.conn();
        let reply: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(BATCH)
            .arg("STREAMS")
            .arg(&stream)
            .arg(start.as_str())
            .query_async(&mut conn)
            .await?;
        let entries = parse_entries(reply, 1)?;
        if start != ">" {
            match entries.last() {
                Some(last) => *start = last.id.clone(),
                None => *start = ">".into(),
            }
        }
        if entries.is_empty() {
            return Ok(0);
        }
        let mut lines = Vec::new();
        for entry in &entries {
            serde_json::to_writer(&mut lines, &line(entry, &self.defaults))?;
            lines.push(b'\n');
        }
        // A short blocking write: this process does nothing else meanwhile.
        sink.write_durably(&lines)?;
        let mut ack = redis::cmd("XACK");
        ack.arg(&stream).arg(&self.group);
        for entry in &entries {
            ack.arg(&entry.id);
        }
        ack.query_async::<u64>(&mut conn).await?;
        Ok(entries.len())
    }
}
