//! Reading entries: `XREADGROUP … BLOCK` on a connection of its own per
//! partition, this consumer's own pending entries first.

use std::time::Duration;

use super::*;

impl Worker {
    /// Reads and fully processes one batch of new entries from one partition
    /// (waiting at most `block` for them). For tests and tools that step the worker.
    pub async fn process_batch(
        &self,
        partition: u32,
        block: Duration,
    ) -> anyhow::Result<BatchOutcome> {
        let mut conn = self.db.blocking_conn(block).await?;
        let stream = self.db.keys.stream(partition);
        let entries = self
            .read(&mut conn, &stream, ">", self.batch_size, Some(block))
            .await?;
        let outcomes = join_all(entries.into_iter().map(|entry| async move {
            let id = entry.id.clone();
            (id, self.process_entry(entry).await)
        }))
        .await;
        Ok(BatchOutcome { entries: outcomes })
    }

    /// One partition's reader: its own connection, first this consumer's own
    /// pending entries (a restart under the same name), then new ones.
    pub(super) async fn read_loop(
        &self,
        partition: u32,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let stream = self.db.keys.stream(partition);
        let mut conn: Option<MultiplexedConnection> = None;
        // This consumer's own pending entries are read first, after the id of the
        // last one taken (so none is taken twice); `None` once they are all taken.
        let mut own_pending_after: Option<String> = Some("0".into());
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            // Take permits before reading, so what is read can start at once.
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = self.entry_permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let mut permits: Vec<OwnedSemaphorePermit> = vec![first];
            while permits.len() < self.batch_size {
                match self.entry_permits.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            if conn.is_none() {
                match self.db.blocking_conn(self.block).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %format!("{e:#}"), stream, "cannot connect for reading; will retry");
                        backoff(failures, &shutdown).await;
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            // The read is not raced with shutdown: an abandoned BLOCK read would still take
            // entries on the server. BLOCK is short, so the stop waits at most that long.
            let (start, block) = match &own_pending_after {
                Some(after) => (after.as_str(), None),
                None => (">", Some(self.block)),
            };
            let entries = match self.read(c, &stream, start, permits.len(), block).await {
                Ok(entries) => {
                    failures = 0;
                    entries
                }
                Err(e) => {
                    failures += 1;
                    if is_nogroup(&e) {
                        tracing::warn!(stream, group = %self.group, "consumer group is missing; recreating it from id 0");
                        if let Err(e) = self.ensure_groups().await {
                            tracing::warn!(error = %format!("{e:#}"), "cannot recreate the consumer group");
                        }
                    } else {
                        tracing::warn!(error = %format!("{e:#}"), stream, "read failed; will retry");
                        conn = None;
                        // A read lost with the connection may have taken entries: look at our own first.
                        own_pending_after = Some("0".into());
                    }
                    backoff(failures, &shutdown).await;
                    continue;
                }
            };
            if own_pending_after.is_some() {
                own_pending_after = match entries.last() {
                    Some(last) if entries.len() == permits.len() => Some(last.id.clone()),
                    _ => None,
                };
            }
            for entry in entries {
                // A re-read of our own pending list returns entries still in progress here.
                if !self
                    .in_flight
                    .lock()
                    .expect("in-flight lock")
                    .insert(entry.id.clone())
                {
                    continue;
                }
                let permit = permits
                    .pop()
                    .expect("never more entries than permits (COUNT)");
                let worker = self.clone();
                tracker.spawn(async move {
                    let id = entry.id.clone();
                    worker.process_entry(entry).await;
                    worker.in_flight.lock().expect("in-flight lock").remove(&id);
                    drop(permit);
                });
            }
        }
    }

    /// `XREADGROUP GROUP g c COUNT n [BLOCK ms] STREAMS stream start`.
    pub(super) async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        stream: &str,
        start: &str,
        count: usize,
        block: Option<Duration>,
    ) -> anyhow::Result<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        if self.noack {
            cmd.arg("NOACK");
        }
        cmd.arg("STREAMS").arg(stream).arg(start);
        let reply: Value = cmd.query_async(conn).await?;
        // New entries are on their first delivery; a re-read of the pending list does not say.
        let deliveries = if start == ">" { 1 } else { 0 };
        parse_entries(reply, deliveries)
    }
}

/// Waits a little longer after each consecutive failure (100 ms doubling to 5 s), or until shutdown.
async fn backoff(failures: u32, shutdown: &CancellationToken) {
    let delay = Duration::from_millis(100u64 << failures.min(6)).min(Duration::from_secs(5));
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}
