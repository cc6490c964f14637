//! The local spool: where the API puts accepted events while Redis cannot take
//! them, so that a `202` still means "durable". An append-only file of
//! records, fsync'd before the `202`; a drainer moves them into the streams in
//! order, ids kept (the idempotent publish makes a drain repeated after a
//! crash harmless), and empties the file once everything is in Redis.
//!
//! Files in `spool.dir` (default `<data_dir>/spool`):
//!
//! - `events.log`: the header `HSPOOL2\n`, then records
//!   `magic (f5 0b 5e a1) | u32 length | u32 crc32 | JSON`. The magic bytes
//!   never occur in JSON (they are not UTF-8), so a reader that meets a
//!   damaged record finds the next whole one after it: one bad record never
//!   hides the ones behind it.
//! - `drain.offset`: how far the drain got (8 bytes). (The first layout, without
//!   a header, kept its offset in `events.offset`; such a spool is rewritten in
//!   this layout at the API's start.)
//! - `quarantine.log`: what could not be read (a torn tail, a damaged or
//!   unparsable record), one JSON line each with its bytes in base64; kept,
//!   counted (`herald_spool_quarantined_total`, `herald stats`) and logged at
//!   error level, never silently dropped.
//!
//! All file work happens on blocking threads, never on the async runtime's.
//! A drain reads each record once (linear in the spool's size). A failed
//! append is cut off before anything else is appended, and a torn tail left
//! by a crash is moved to the quarantine at the next start; neither can cost
//! a record that was answered `202`.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::intake::publish::{PublishOutcome, Publisher, Ready};

/// The first bytes of a spool file of this layout.
const FILE_HEADER: &[u8; 8] = b"HSPOOL2\n";
/// The first bytes of every record.
const MAGIC: [u8; 4] = [0xf5, 0x0b, 0x5e, 0xa1];
/// Magic, length and CRC.
const RECORD_HEADER: usize = 12;
/// A record claiming to be longer is damaged (an event is at most a few KiB).
const MAX_RECORD: usize = 4 << 20;
/// How far the drain got, for the current layout.
const OFFSET: &str = "drain.offset";
/// The same for a spool of the first layout.
const V1_OFFSET: &str = "events.offset";
/// Records per drain round trip.
const DRAIN_BATCH: usize = 500;

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({used} of {max} bytes); nothing was accepted")]
    Full { used: u64, max: u64 },
    #[error("cannot write the spool: {0}")]
    Io(#[from] std::io::Error),
}

/// How much waits in a spool, as read from its files (by `herald stats`, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Depth {
    /// Events not yet in Redis.
    pub records: u64,
    /// Size of the spool file.
    pub bytes: u64,
    /// Pieces moved aside to `quarantine.log` because they could not be read.
    pub quarantined: u64,
}

impl Depth {
    /// Reads the depth of the spool in `dir` without taking its lock (read only).
    pub fn read(dir: &Path) -> anyhow::Result<Depth> {
        let mut file = File::open(dir.join("events.log")).context("cannot open the spool")?;
        let bytes = file.metadata()?.len();
        let mut records = 0;
        let mut head = [0u8; 8];
        let current = file.read_exact(&mut head).is_ok() && &head == FILE_HEADER;
        let drained = read_offset(&dir.join(if current { OFFSET } else { V1_OFFSET })).unwrap_or(0);
        if !current && bytes > 0 {
            // The first layout, not rewritten yet (the API does that at its next start).
            let data = std::fs::read(dir.join("events.log"))?;
            let (found, _) = v1_records(&data);
            records = found
                .iter()
                .filter(|(start, _)| *start as u64 >= drained)
                .count() as u64;
        } else if bytes >= FILE_HEADER.len() as u64 {
            let mut reader = Records::new(file, drained.max(FILE_HEADER.len() as u64), bytes)?;
            while let Some(piece) = reader.next_piece()? {
                if let Piece::Record { .. } = piece {
                    records += 1;
                }
            }
        }
        Ok(Depth {
            records,
            bytes,
            quarantined: quarantined_count(dir),
        })
    }
}

struct Inner {
    file: File,
    offset_file: File,
    /// Bytes of the file up to the end of its last whole record.
    len: u64,
    /// Where the drain goes on from.
    drained: u64,
    /// Records not yet drained.
    backlog: u64,
    /// An append failed and its bytes could not be cut off yet: cut before the next one.
    dirty: bool,
}

/// One API process's spool. Cheap to share behind an `Arc`.
pub struct Spool {
    inner: Mutex<Inner>,
    dir: PathBuf,
    max_bytes: u64,
    /// Held for the life of the spool: one process per spool directory.
    _lock: File,
}

impl Spool {
    /// Opens (creating) the spool in `dir`, moves a torn tail to the quarantine,
    /// and locks it. Blocking.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<Spool> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create spool directory {}", dir.display()))?;
        let lock = File::create(dir.join("lock")).context("cannot create the spool lock file")?;
        // SAFETY: flock(2) on a descriptor we own.
        let locked = unsafe {
            libc::flock(
                std::os::unix::io::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        anyhow::ensure!(
            locked == 0,
            "another herald process uses the spool in {}; give each API process its own spool.dir",
            dir.display()
        );
        let path = dir.join("events.log");
        migrate_v1(dir)?;
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if file.metadata()?.len() == 0 {
            file.write_all(FILE_HEADER)?;
            file.sync_all()?;
        }
        let offset_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join(OFFSET))
            .context("cannot open the spool offset file")?;
        let on_disk = file.metadata()?.len();
        let drained = read_offset(&dir.join(OFFSET))
            .unwrap_or(0)
            .clamp(FILE_HEADER.len() as u64, on_disk);
        // One pass: count what waits, and find where the last whole record ends.
        let mut reader = Records::new(file.try_clone()?, FILE_HEADER.len() as u64, on_disk)?;
        let (mut len, mut backlog) = (FILE_HEADER.len() as u64, 0);
        while let Some(piece) = reader.next_piece()? {
            if let Piece::Record { start, end, .. } = piece {
                len = end;
                if start >= drained {
                    backlog += 1;
                }
            }
        }
        if on_disk > len {
            // A crash mid-append (never answered 202): kept aside, then cut off.
            let torn = read_range(&path, len, on_disk)?;
            quarantine(
                dir,
                len,
                "a torn record at the end (a crash while appending)",
                &torn,
            )?;
            tracing::warn!(path = %path.display(), bytes = on_disk - len, "spool ends with a torn record; moved to quarantine.log and cut off");
            file.set_len(len)?;
            file.sync_all()?;
        }
        let inner = Inner {
            file,
            offset_file,
            len,
            drained: drained.min(len),
            backlog,
            dirty: false,
        };
        crate::shared::metrics::spool_depth(inner.backlog);
        if inner.backlog > 0 {
            tracing::warn!(records = inner.backlog, path = %path.display(), "spool holds events from before; they will be drained into Redis");
        }
        Ok(Spool {
            inner: Mutex::new(inner),
            dir: dir.to_path_buf(),
            max_bytes,
            _lock: lock,
        })
    }

    /// Records not yet in Redis.
    pub fn backlog(&self) -> u64 {
        self.inner.lock().backlog
    }

    /// Bytes of the spool file.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().len
    }

    /// Appends a batch and fsyncs it: when this returns `Ok`, the events survive a crash.
    /// Blocking: call it from `spawn_blocking`.
    pub fn append(&self, batch: &[Ready]) -> Result<(), SpoolError> {
        let mut buf = Vec::new();
        for ready in batch {
            let json = serde_json::to_vec(ready).expect("a ready event serializes");
            buf.extend_from_slice(&MAGIC);
            buf.extend_from_slice(&(json.len() as u32).to_be_bytes());
            buf.extend_from_slice(&crc32fast::hash(&json).to_be_bytes());
            buf.extend_from_slice(&json);
        }
        let mut inner = self.inner.lock();
        if inner.dirty {
            // What a failed append left must go before anything else is added after it.
            let len = inner.len;
            inner.file.set_len(len)?;
            inner.file.sync_data()?;
            inner.dirty = false;
        }
        if inner.len + buf.len() as u64 > self.max_bytes {
            return Err(SpoolError::Full {
                used: inner.len,
                max: self.max_bytes,
            });
        }
        if let Err(e) = inner
            .file
            .write_all(&buf)
            .and_then(|()| inner.file.sync_data())
        {
            // Cut off whatever part was written, so the file stays whole records; if even
            // that fails (a full disk), try again before the next append.
            let len = inner.len;
            inner.dirty = inner
                .file
                .set_len(len)
                .and_then(|()| inner.file.sync_data())
                .is_err();
            return Err(e.into());
        }
        inner.len += buf.len() as u64;
        inner.backlog += batch.len() as u64;
        crate::shared::metrics::spool_depth(inner.backlog);
        Ok(())
    }

    /// Moves spooled events into Redis, oldest first; returns how many.
    pub async fn drain(self: &Arc<Self>, publisher: &Publisher) -> anyhow::Result<u64> {
        let mut moved = 0;
        loop {
            let (start, end) = {
                let inner = self.inner.lock();
                (inner.drained, inner.len)
            };
            if start >= end {
                let spool = self.clone();
                tokio::task::spawn_blocking(move || spool.reset_if_drained())
                    .await
                    .context("spool task panicked")??;
                return Ok(moved);
            }
            let path = self.dir.join("events.log");
            let Batch {
                events: batch,
                unreadable,
                next,
            } = tokio::task::spawn_blocking(move || read_batch(&path, start, end))
                .await
                .context("spool reader panicked")??;
            let outcomes = publisher.publish(&batch).await?;
            let mut unreadable = unreadable;
            for (ready, outcome) in batch.iter().zip(outcomes) {
                match outcome {
                    // Accepted while Redis was away; another event took the id meanwhile.
                    PublishOutcome::Conflict { id, stream_id } => {
                        tracing::error!(event_id = %id, original_stream_id = %stream_id, fields = ?ready.fields, "a spooled event's id was published meanwhile with other content; it was not added")
                    }
                    // Not expected (the API validated it with the same rules): kept
                    // aside in quarantine.log with the reason, never dropped, not retried forever.
                    PublishOutcome::Invalid { id, error } => {
                        tracing::error!(event_id = %id, error = %error, fields = ?ready.fields, "herald_publish_batch refused a spooled event; it is kept in quarantine.log");
                        let bytes = serde_json::to_vec(ready).expect("a spooled event serializes");
                        unreadable.push((
                            0,
                            format!("refused by herald_publish_batch: {error}"),
                            bytes,
                        ));
                    }
                    PublishOutcome::Accepted(_) => {}
                }
            }
            // Only once the readable ones are in Redis: a failed publish repeats the step,
            // and must not count the unreadable ones twice.
            let spool = self.clone();
            let done = batch.len() as u64;
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                for (offset, why, bytes) in unreadable {
                    quarantine(&spool.dir, offset, &why, &bytes)?;
                }
                Ok(spool.advance(next, done)?)
            })
            .await
            .context("spool task panicked")??;
            moved += done;
        }
    }

    /// Records that the drain got to `next`, `done` records later. Blocking.
    fn advance(&self, next: u64, done: u64) -> std::io::Result<()> {
        let mut inner = self.inner.lock();
        inner.drained = next;
        inner.backlog = inner.backlog.saturating_sub(done);
        crate::shared::metrics::spool_depth(inner.backlog);
        write_offset(&mut inner.offset_file, next)
    }

    /// Empties the file once every record is in Redis (appends wait for the lock). Blocking.
    fn reset_if_drained(&self) -> anyhow::Result<()> {
        let mut inner = self.inner.lock();
        let header = FILE_HEADER.len() as u64;
        if inner.len > header && inner.drained == inner.len {
            inner.file.set_len(header)?;
            inner.file.sync_all()?;
            inner.len = header;
            inner.drained = header;
            inner.backlog = 0;
            crate::shared::metrics::spool_depth(inner.backlog);
            write_offset(&mut inner.offset_file, header)?;
        }
        Ok(())
    }
}

/// One thing found in a spool file.
enum Piece {
    /// A whole record; `payload` is its JSON.
    Record {
        start: u64,
        end: u64,
        payload: Vec<u8>,
    },
    /// Bytes that are no whole record (damaged, or torn), up to the next record.
    Garbage { start: u64, end: u64 },
}

/// Reads a spool file from one offset to another, record by record, once.
struct Records {
    reader: BufReader<File>,
    pos: u64,
    end: u64,
}

impl Records {
    fn new(mut file: File, start: u64, end: u64) -> std::io::Result<Records> {
        file.seek(SeekFrom::Start(start))?;
        Ok(Records {
            reader: BufReader::with_capacity(64 * 1024, file),
            pos: start,
            end,
        })
    }

    /// The next record, or the stretch of garbage before it; `None` at the end.
    fn next_piece(&mut self) -> std::io::Result<Option<Piece>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let start = self.pos;
        if let Some((payload, end)) = self.try_record()? {
            return Ok(Some(Piece::Record {
                start,
                end,
                payload,
            }));
        }
        // Not a whole record here: read on to the next magic that starts one.
        let mut at = start + 1;
        self.seek(at)?;
        loop {
            if at >= self.end {
                self.seek(self.end)?;
                return Ok(Some(Piece::Garbage {
                    start,
                    end: self.end,
                }));
            }
            let mut byte = [0u8; 1];
            self.reader.read_exact(&mut byte)?;
            if byte[0] == MAGIC[0] {
                self.seek(at)?;
                if self.try_record()?.is_some() {
                    self.seek(at)?;
                    return Ok(Some(Piece::Garbage { start, end: at }));
                }
                self.seek(at + 1)?;
            }
            at += 1;
        }
    }

    /// A whole record at the current position (moving past it), or `None` (position unknown).
    fn try_record(&mut self) -> std::io::Result<Option<(Vec<u8>, u64)>> {
        let start = self.pos;
        if self.end - start < RECORD_HEADER as u64 {
            return Ok(None);
        }
        let mut header = [0u8; RECORD_HEADER];
        self.reader.read_exact(&mut header)?;
        if header[..4] != MAGIC {
            return Ok(None);
        }
        let len = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(header[8..].try_into().expect("4 bytes"));
        let end = start + (RECORD_HEADER + len) as u64;
        if len > MAX_RECORD || end > self.end {
            return Ok(None);
        }
        let mut payload = vec![0u8; len];
        self.reader.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            return Ok(None);
        }
        self.pos = end;
        Ok(Some((payload, end)))
    }

    fn seek(&mut self, to: u64) -> std::io::Result<()> {
        self.reader.seek(SeekFrom::Start(to))?;
        self.pos = to;
        Ok(())
    }
}

/// What cannot be read, on its way to the quarantine: offset, why, bytes.
type Unreadable = (u64, String, Vec<u8>);

/// One drain step: up to `DRAIN_BATCH` events from `start`, what could not be read
/// on the way, and where the next step starts. Blocking.
struct Batch {
    events: Vec<Ready>,
    unreadable: Vec<Unreadable>,
    next: u64,
}

fn read_batch(path: &Path, start: u64, end: u64) -> anyhow::Result<Batch> {
    let mut reader = Records::new(File::open(path)?, start, end)?;
    let (mut events, mut unreadable) = (Vec::new(), Vec::new());
    while events.len() < DRAIN_BATCH {
        let Some(piece) = reader.next_piece()? else {
            break;
        };
        match piece {
            Piece::Record { start, payload, .. } => match serde_json::from_slice::<Ready>(&payload)
            {
                Ok(ready) => events.push(ready),
                Err(e) => {
                    unreadable.push((start, format!("a record that does not parse: {e}"), payload))
                }
            },
            Piece::Garbage { start, end } => {
                let bytes = read_range(path, start, end)?;
                unreadable.push((start, "damaged bytes between records".into(), bytes));
            }
        }
    }
    Ok(Batch {
        events,
        unreadable,
        next: reader.pos,
    })
}

/// Keeps what could not be read, fsync'd, counted and logged.
fn quarantine(dir: &Path, offset: u64, why: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let line = serde_json::json!({
        "quarantined_at": crate::shared::event::format_time(chrono::Utc::now()),
        "offset": offset,
        "reason": why,
        "length": bytes.len(),
        "bytes_base64": STANDARD.encode(bytes),
    });
    let path = dir.join("quarantine.log");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(file, "{line}")?;
    file.sync_data()?;
    crate::shared::metrics::spool_quarantined();
    tracing::error!(path = %path.display(), offset, length = bytes.len(), reason = why, "a spool record could not be read; moved to the quarantine (the rest of the spool drains on)");
    Ok(())
}

/// Lines of `quarantine.log`.
fn quarantined_count(dir: &Path) -> u64 {
    std::fs::read(dir.join("quarantine.log"))
        .map(|b| b.iter().filter(|c| **c == b'\n').count() as u64)
        .unwrap_or(0)
}

fn read_range(path: &Path, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = vec![0u8; end.saturating_sub(start) as usize];
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn read_offset(path: &Path) -> Option<u64> {
    let mut raw = [0u8; 8];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut raw))
        .ok()?;
    Some(u64::from_be_bytes(raw))
}

fn write_offset(file: &mut File, offset: u64) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&offset.to_be_bytes())?;
    file.sync_data()
}

/// The whole records of a spool of the first layout (`u32 length | u32 crc32 |
/// JSON`): where each starts and its payload; and where the last one ends.
fn v1_records(data: &[u8]) -> (Vec<(usize, &[u8])>, usize) {
    let (mut records, mut pos) = (Vec::new(), 0usize);
    while let Some(header) = data.get(pos..pos + 8) {
        let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(payload) = data.get(pos + 8..pos.saturating_add(8).saturating_add(len)) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        records.push((pos, payload));
        pos += 8 + len;
    }
    (records, pos)
}

/// Rewrites a spool of the first layout (`u32 length | u32 crc32 | JSON`, no
/// header), keeping the records not drained yet, in order. Blocking.
fn migrate_v1(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("events.log");
    let Ok(data) = std::fs::read(&path) else {
        return Ok(());
    };
    if data.is_empty() || data.starts_with(FILE_HEADER) {
        return Ok(());
    }
    let drained = read_offset(&dir.join(V1_OFFSET)).unwrap_or(0) as usize;
    let mut out = FILE_HEADER.to_vec();
    let (records, pos) = v1_records(&data);
    let mut kept = 0;
    for (start, payload) in records {
        if start >= drained {
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
            out.extend_from_slice(payload);
            kept += 1;
        }
    }
    if pos < data.len() {
        quarantine(
            dir,
            pos as u64,
            "the unreadable end of a spool of the first layout",
            &data[pos..],
        )?;
    }
    // The new file holds only what was not drained and starts its own offset file
    // afresh; the rename is the one step that switches layouts, so a crash before it
    // migrates again from the old offset, and after it reads the new file whole.
    let temporary = dir.join("events.log.migrating");
    let mut file = File::create(&temporary)?;
    file.write_all(&out)?;
    file.sync_all()?;
    let _ = std::fs::remove_file(dir.join(OFFSET));
    std::fs::rename(&temporary, &path)?;
    File::open(dir)?.sync_all()?;
    let _ = std::fs::remove_file(dir.join(V1_OFFSET));
    tracing::info!(records = kept, "rewrote the spool in its current layout");
    Ok(())
}

/// Drains the spool into Redis whenever it holds events and Redis answers.
pub struct Drainer {
    spool: Arc<Spool>,
    publisher: Publisher,
    interval: Duration,
}

impl Drainer {
    pub fn new(spool: Arc<Spool>, publisher: Publisher, interval: Duration) -> Drainer {
        Drainer {
            spool,
            publisher,
            interval,
        }
    }

    /// Tries every `interval` until shutdown; a last try on the way out.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut failing = false;
        let mut last_report = std::time::Instant::now();
        loop {
            let backlog = self.spool.backlog();
            if backlog > 0 && last_report.elapsed() >= Duration::from_secs(10) {
                last_report = std::time::Instant::now();
                tracing::warn!(
                    backlog,
                    bytes = self.spool.bytes(),
                    "spool depth: events waiting for Redis"
                );
            }
            let stopping = shutdown.is_cancelled();
            if self.spool.backlog() > 0 {
                match self.spool.drain(&self.publisher).await {
                    Ok(moved) => {
                        if moved > 0 {
                            tracing::info!(moved, "spooled events are now in Redis");
                        }
                        failing = false;
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(backlog = self.spool.backlog(), error = %format!("{e:#}"), "cannot drain the spool yet; will keep trying");
                        }
                        failing = true;
                    }
                }
            }
            if stopping {
                let left = self.spool.backlog();
                if left > 0 {
                    tracing::warn!(
                        backlog = left,
                        "stopping with events in the spool; they will be drained at the next start"
                    );
                }
                return Ok(());
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(n: u32) -> Ready {
        Ready {
            id: format!("evt-{n}"),
            partition_key: format!("evt-{n}"),
            fields: vec![("v".into(), "1".into()), ("id".into(), format!("evt-{n}"))],
            defaults: Vec::new(),
        }
    }

    /// Every event still to drain, read as the drainer reads them.
    fn waiting(dir: &Path) -> Vec<Ready> {
        let path = dir.join("events.log");
        let end = std::fs::metadata(&path).expect("spool file").len();
        let start = read_offset(&dir.join(OFFSET))
            .unwrap_or(0)
            .max(FILE_HEADER.len() as u64);
        let mut all = Vec::new();
        let mut at = start;
        loop {
            let Batch {
                events,
                unreadable,
                next,
            } = read_batch(&path, at, end).expect("read");
            for (offset, why, bytes) in unreadable {
                quarantine(dir, offset, &why, &bytes).expect("quarantine");
            }
            all.extend(events);
            if next >= end || next == at {
                return all;
            }
            at = next;
        }
    }

    fn append_raw(dir: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("events.log"))
            .expect("open log");
        f.write_all(bytes).expect("write");
    }

    #[test]
    fn appended_records_survive_a_reopen_and_a_torn_tail_is_quarantined() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let spool = Spool::open(dir.path(), 1 << 20).expect("open");
            spool.append(&[ready(1), ready(2)]).expect("append");
            spool.append(&[ready(3)]).expect("append");
            assert_eq!(spool.backlog(), 3);
        }
        // A crash in the middle of an append leaves half a record.
        append_raw(dir.path(), &[0xf5, 0x0b, 0x5e, 0xa1, 0, 0, 0, 50, 1, 2, 3]);
        let spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(spool.backlog(), 3);
        assert_eq!(waiting(dir.path()), vec![ready(1), ready(2), ready(3)]);
        assert_eq!(
            quarantined_count(dir.path()),
            1,
            "the torn bytes are kept aside"
        );
    }

    #[test]
    fn a_damaged_record_in_the_middle_is_moved_aside_and_the_rest_still_drains() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spool = Spool::open(dir.path(), 1 << 20).expect("open");
        spool
            .append(&[ready(1), ready(2), ready(3)])
            .expect("append");
        drop(spool);
        // Flip one byte inside the second record's JSON: its CRC no longer matches.
        let path = dir.path().join("events.log");
        let mut data = std::fs::read(&path).expect("read");
        let second = data
            .windows(7)
            .position(|w| w == b"\"evt-2\"")
            .expect("second record");
        data[second + 2] ^= 0x20;
        std::fs::write(&path, &data).expect("write");
        // Unparsable JSON with a valid CRC, appended after.
        let json = b"{not json";
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&(json.len() as u32).to_be_bytes());
        bad.extend_from_slice(&crc32fast::hash(json).to_be_bytes());
        bad.extend_from_slice(json);
        append_raw(dir.path(), &bad);
        let spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
        spool.append(&[ready(4)]).expect("append after");
        assert_eq!(waiting(dir.path()), vec![ready(1), ready(3), ready(4)]);
        assert_eq!(quarantined_count(dir.path()), 2);
        assert_eq!(Depth::read(dir.path()).expect("depth").quarantined, 2);
    }

    #[test]
    fn a_failed_append_leaves_no_torn_record_before_the_next_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spool = Spool::open(dir.path(), 1 << 20).expect("open");
        spool.append(&[ready(1)]).expect("append");
        // A full disk: every write fails, and so does the cut.
        let real = {
            let mut inner = spool.inner.lock();
            let full = OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .expect("/dev/full");
            std::mem::replace(&mut inner.file, full)
        };
        assert!(matches!(spool.append(&[ready(2)]), Err(SpoolError::Io(_))));
        assert!(spool.inner.lock().dirty, "the cut failed too: remembered");
        // Half of the failed record reached the real file before the disk filled up.
        {
            let mut inner = spool.inner.lock();
            let mut real = real;
            let mut half = MAGIC.to_vec();
            half.extend_from_slice(&[0, 0, 1, 0, 9, 9]);
            real.write_all(&half).expect("write half");
            inner.file = real;
        }
        spool.append(&[ready(3)]).expect("the disk has room again");
        assert_eq!(waiting(dir.path()), vec![ready(1), ready(3)]);
        assert_eq!(
            quarantined_count(dir.path()),
            0,
            "cut off, not left to be skipped"
        );
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(spool.backlog(), 2, "both records answered 202 are there");
    }

    #[test]
    fn a_spool_of_the_first_layout_is_rewritten_keeping_what_was_not_drained() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut data = Vec::new();
        for n in 1..=3 {
            let json = serde_json::to_vec(&ready(n)).expect("json");
            data.extend_from_slice(&(json.len() as u32).to_be_bytes());
            data.extend_from_slice(&crc32fast::hash(&json).to_be_bytes());
            data.extend_from_slice(&json);
            if n == 1 {
                std::fs::write(
                    dir.path().join(V1_OFFSET),
                    (data.len() as u64).to_be_bytes(),
                )
                .expect("offset");
            }
        }
        std::fs::write(dir.path().join("events.log"), &data).expect("v1 file");
        assert_eq!(
            Depth::read(dir.path()).expect("depth").records,
            2,
            "herald stats reads it as it is"
        );
        let spool = Spool::open(dir.path(), 1 << 20).expect("open");
        assert_eq!(spool.backlog(), 2);
        assert_eq!(waiting(dir.path()), vec![ready(2), ready(3)]);
    }

    #[test]
    fn a_full_spool_refuses_and_keeps_what_it_has() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spool = Spool::open(dir.path(), 200).expect("open");
        spool.append(&[ready(1)]).expect("fits");
        let err = spool.append(&[ready(2), ready(3)]).expect_err("too much");
        assert!(matches!(err, SpoolError::Full { .. }));
        assert_eq!(spool.backlog(), 1);
    }

    #[test]
    fn one_process_per_spool_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let _first = Spool::open(dir.path(), 1 << 20).expect("open");
        let second = Spool::open(dir.path(), 1 << 20)
            .err()
            .expect("locked")
            .to_string();
        assert!(second.contains("another herald process"), "{second}");
    }
}
