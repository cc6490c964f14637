//! The local spool: where the API puts accepted events while Redis cannot take
//! them, so that a `202` still means "durable". An append-only file of
//! records (`u32 length | u32 crc32 | JSON`), fsync'd before the `202`; a
//! drainer moves them into the streams in order, ids kept (the idempotent
//! publish makes a drain repeated after a crash harmless), and empties the
//! file once everything is in Redis. A torn tail (a crash mid-append) is cut
//! off on open.
//!
//! Files in `spool.dir` (default `<data_dir>/spool`): `events.log` (records)
//! and `events.offset` (how far the drain got, 8 bytes).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::intake::publish::{PublishOutcome, Publisher, Ready};

const HEADER: usize = 8;
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
}

impl Depth {
    /// Reads the depth of the spool in `dir` without taking its lock (read only).
    pub fn read(dir: &Path) -> anyhow::Result<Depth> {
        let mut file = File::open(dir.join("events.log")).context("cannot open the spool")?;
        let mut raw = [0u8; 8];
        let drained = File::open(dir.join("events.offset"))
            .and_then(|mut f| f.read_exact(&mut raw))
            .map(|()| u64::from_be_bytes(raw))
            .unwrap_or(0);
        let (len, starts) = scan(&mut file)?;
        Ok(Depth {
            records: starts.iter().filter(|s| **s >= drained).count() as u64,
            bytes: len,
        })
    }
}

struct Inner {
    file: File,
    offset_file: File,
    /// Bytes of whole, valid records in the file.
    len: u64,
    /// Bytes already drained into Redis.
    drained: u64,
    /// Records not yet drained.
    backlog: u64,
}

/// One API process's spool. Cheap to share behind an `Arc`.
pub struct Spool {
    inner: Mutex<Inner>,
    path: PathBuf,
    max_bytes: u64,
    /// Held for the life of the spool: one process per spool directory.
    _lock: File,
}

impl Spool {
    /// Opens (creating) the spool in `dir`, recovers from a torn tail, and locks it.
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
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut offset_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("events.offset"))
            .context("cannot open the spool offset file")?;
        let mut raw = [0u8; 8];
        let drained = match offset_file.read_exact(&mut raw) {
            Ok(()) => u64::from_be_bytes(raw),
            Err(_) => 0,
        };
        let (len, records) = scan(&mut file)?;
        let on_disk = file.metadata()?.len();
        if on_disk > len {
            tracing::warn!(path = %path.display(), dropped_bytes = on_disk - len, "spool ends with a torn record (a crash mid-append); cutting it off");
            file.set_len(len)?;
            file.sync_all()?;
        }
        let drained = drained.min(len);
        let mut inner = Inner {
            file,
            offset_file,
            len,
            drained,
            backlog: 0,
        };
        inner.backlog = records.iter().filter(|start| **start >= drained).count() as u64;
        crate::shared::metrics::spool_depth(inner.backlog);
        if inner.backlog > 0 {
            tracing::warn!(records = inner.backlog, path = %path.display(), "spool holds events from before; they will be drained into Redis");
        }
        Ok(Spool {
            inner: Mutex::new(inner),
            path,
            max_bytes,
            _lock: lock,
        })
    }

    /// Records not yet in Redis.
    pub fn backlog(&self) -> u64 {
        self.inner.lock().expect("spool lock").backlog
    }

    /// Bytes of the spool file.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().expect("spool lock").len
    }

    /// Appends a batch and fsyncs it: when this returns `Ok`, the events survive a crash.
    /// Blocking: call it from `spawn_blocking`.
    pub fn append(&self, batch: &[Ready]) -> Result<(), SpoolError> {
        let mut buf = Vec::new();
        for ready in batch {
            let json = serde_json::to_vec(ready).expect("a ready event serializes");
            buf.extend_from_slice(&(json.len() as u32).to_be_bytes());
            buf.extend_from_slice(&crc32fast::hash(&json).to_be_bytes());
            buf.extend_from_slice(&json);
        }
        let mut inner = self.inner.lock().expect("spool lock");
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
            // Cut off whatever part was written, so the file stays whole records.
            let len = inner.len;
            let _ = inner.file.set_len(len);
            return Err(e.into());
        }
        inner.len += buf.len() as u64;
        inner.backlog += batch.len() as u64;
        crate::shared::metrics::spool_depth(inner.backlog);
        Ok(())
    }

    /// Moves spooled events into Redis, oldest first; returns how many.
    pub async fn drain(&self, publisher: &Publisher) -> anyhow::Result<u64> {
        let mut moved = 0;
        loop {
            let (start, end) = {
                let inner = self.inner.lock().expect("spool lock");
                (inner.drained, inner.len)
            };
            if start >= end {
                self.reset_if_drained()?;
                return Ok(moved);
            }
            let path = self.path.clone();
            let (batch, next) =
                tokio::task::spawn_blocking(move || read_records(&path, start, end, DRAIN_BATCH))
                    .await
                    .context("spool reader panicked")??;
            let outcomes = publisher.publish(&batch).await?;
            for (ready, outcome) in batch.iter().zip(outcomes) {
                if let PublishOutcome::Conflict { id, stream_id } = outcome {
                    // Accepted while Redis was away; another event took the id meanwhile.
                    tracing::error!(event_id = %id, original_stream_id = %stream_id, fields = ?ready.fields, "a spooled event's id was published meanwhile with other content; it was not added");
                }
            }
            let mut inner = self.inner.lock().expect("spool lock");
            inner.drained = next;
            inner.backlog = inner.backlog.saturating_sub(batch.len() as u64);
            crate::shared::metrics::spool_depth(inner.backlog);
            write_offset(&mut inner.offset_file, next)?;
            moved += batch.len() as u64;
        }
    }

    /// Empties the file once every record is in Redis (appends wait for the lock).
    fn reset_if_drained(&self) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().expect("spool lock");
        if inner.len > 0 && inner.drained == inner.len {
            inner.file.set_len(0)?;
            inner.file.sync_all()?;
            inner.len = 0;
            inner.drained = 0;
            inner.backlog = 0;
            crate::shared::metrics::spool_depth(inner.backlog);
            write_offset(&mut inner.offset_file, 0)?;
        }
        Ok(())
    }
}

fn write_offset(file: &mut File, offset: u64) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&offset.to_be_bytes())?;
    file.sync_data()
}

/// Reads the whole file: the length covered by valid records, and where each starts.
fn scan(file: &mut File) -> anyhow::Result<(u64, Vec<u64>)> {
    let mut data = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut data)?;
    let mut pos = 0usize;
    let mut starts = Vec::new();
    while let Some(len) = record_at(&data, pos) {
        starts.push(pos as u64);
        pos += HEADER + len;
    }
    Ok((pos as u64, starts))
}

/// The payload length of a whole, valid record at `pos`.
fn record_at(data: &[u8], pos: usize) -> Option<usize> {
    let header = data.get(pos..pos + HEADER)?;
    let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(header[4..].try_into().expect("4 bytes"));
    let payload = data.get(pos + HEADER..pos + HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some(len)
}

fn read_records(
    path: &Path,
    start: u64,
    end: u64,
    max: usize,
) -> anyhow::Result<(Vec<Ready>, u64)> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let mut data = vec![0u8; (end - start) as usize];
    file.read_exact(&mut data)?;
    let mut pos = 0usize;
    let mut batch = Vec::new();
    while batch.len() < max {
        let Some(len) = record_at(&data, pos) else {
            break;
        };
        let ready: Ready = serde_json::from_slice(&data[pos + HEADER..pos + HEADER + len])
            .context("a spool record does not parse")?;
        batch.push(ready);
        pos += HEADER + len;
    }
    Ok((batch, start + pos as u64))
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
            digest: "d".into(),
            deliver_at_ms: 0,
            fields: vec![("v".into(), "1".into()), ("id".into(), format!("evt-{n}"))],
        }
    }

    #[test]
    fn appended_records_survive_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let spool = Spool::open(dir.path(), 1 << 20).expect("open");
            spool.append(&[ready(1), ready(2)]).expect("append");
            spool.append(&[ready(3)]).expect("append");
            assert_eq!(spool.backlog(), 3);
        }
        // A crash in the middle of an append leaves half a record.
        let path = dir.path().join("events.log");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open log");
        f.write_all(&[0, 0, 0, 50, 1, 2, 3]).expect("write garbage");
        drop(f);
        let spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(spool.backlog(), 3);
        let (batch, _) = read_records(&path, 0, spool.bytes(), 10).expect("read");
        assert_eq!(batch, vec![ready(1), ready(2), ready(3)]);
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
