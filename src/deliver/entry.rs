//! One entry from read to acknowledgement: decode, claim, route, push each
//! device, settle.

use std::collections::HashMap;

use super::fanout::TargetResult;
use super::*;

impl Worker {
    /// Processes one entry to its outcome. Never panics: a panic while processing
    /// dead-letters the entry, and the worker goes on.
    pub async fn process_entry(&self, entry: Entry) -> EntryOutcome {
        let work = AssertUnwindSafe(self.process_inner(&entry)).catch_unwind();
        tokio::pin!(work);
        // While an entry takes long (slow push services), keep its idle time low so
        // that no reclaimer takes it for abandoned and pushes it a second time.
        // Polled alongside the work, never instead of it: the work may hold a pooled
        // connection, and a heartbeat waiting for one must not stop it from finishing.
        let beat = self.heartbeat_interval();
        let heartbeat = async {
            loop {
                tokio::time::sleep(beat).await;
                self.heartbeat(&entry).await;
            }
        };
        let caught = tokio::select! {
            caught = &mut work => caught,
            never = heartbeat => never,
        };
        match caught {
            Ok(outcome) => {
                if matches!(outcome, EntryOutcome::Pending { .. }) {
                    self.release(&entry).await;
                }
                outcome
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                let why = DeadLetter {
                    reason: "panic".into(),
                    last_error: Some(format!("processing panicked: {message}")),
                    attempts: entry.deliveries,
                    ..DeadLetter::default()
                };
                self.dead_letter_entry(&entry, why).await
            }
        }
    }

    pub(super) async fn process_inner(&self, entry: &Entry) -> EntryOutcome {
        let Some(fields) = &entry.fields else {
            return match self
                .dead_letters
                .tombstone(&entry.stream, &entry.id, &self.consumer)
                .await
            {
                Ok(_) => EntryOutcome::DeadLettered {
                    reason: "deleted_while_pending".into(),
                },
                Err(e) => EntryOutcome::Pending {
                    reason: format!("cannot record a tombstone: {e:#}"),
                },
            };
        };
        let event = match Event::from_fields(fields) {
            Ok(event) => event,
            Err(problem) => {
                let why = DeadLetter {
                    reason: "undecodable".into(),
                    last_error: Some(problem),
                    attempts: entry.deliveries,
                    ..DeadLetter::default()
                };
                return self.dead_letter_entry(entry, why).await;
            }
        };
        let span = tracing::info_span!(
            "event",
            event_id = %event.id,
            stream_id = %entry.id,
            topic = %event.topic,
            trace_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        if let Some(trace) = fields
            .get(crate::shared::telemetry::TRACEPARENT_FIELD)
            .and_then(|t| crate::shared::telemetry::TraceParent::parse(t))
        {
            span.record("trace_id", trace.trace_id.as_str());
            span.record("parent_span_id", trace.parent_id.as_str());
            crate::shared::telemetry::continue_trace(&span, &trace);
        }
        let outcome = self
            .deliver(entry, fields, &event)
            .instrument(span.clone())
            .await;
        crate::shared::metrics::event_processed(match &outcome {
            EntryOutcome::Acked { .. } => "acked",
            EntryOutcome::NoTarget if event.user.is_none() => "unroutable",
            EntryOutcome::NoTarget => "no_target",
            EntryOutcome::Held => "held",
            EntryOutcome::Pending { .. } => "pending",
            EntryOutcome::DeadLettered { .. } => "dead_lettered",
            EntryOutcome::Superseded { .. } => "superseded",
            EntryOutcome::TakenOver => "taken_over",
        });
        let _enter = span.enter();
        match &outcome {
            EntryOutcome::Acked {
                delivered,
                gone,
                dead,
            } => tracing::info!(delivered, gone, dead, "event done"),
            EntryOutcome::Held => {
                tracing::info!("the user has no subscription yet; held until one is registered or the TTL is over")
            }
            EntryOutcome::NoTarget => {
                tracing::warn!(user = ?event.user, "no subscription to deliver to; acknowledged")
            }
            EntryOutcome::Pending { reason } if self.noack => tracing::warn!(
                reason,
                "not delivered, and not retried: worker.delivery is at-most-once"
            ),
            EntryOutcome::Pending { reason } => tracing::warn!(
                reason,
                deliveries = entry.deliveries,
                "event left pending for a retry"
            ),
            EntryOutcome::DeadLettered { reason } => tracing::error!(reason, "event dead-lettered"),
            EntryOutcome::TakenOver => {
                tracing::warn!("another consumer took this entry over; not pushing it")
            }
            EntryOutcome::Superseded { by } => {
                tracing::info!(key = ?event.key, newer = %by, "superseded by a newer event of its key; not pushed")
            }
        }
        outcome
    }

    pub(super) async fn deliver(
        &self,
        entry: &Entry,
        fields: &HashMap<String, String>,
        event: &Event,
    ) -> EntryOutcome {
        let keys = &self.db.keys;
        let partition = keys.partition_of(&entry.stream).unwrap_or(0);
        // A forced replay pushes history again on purpose, past newer events of its key.
        if fields.contains_key(crate::shared::stream::REPLAY_RUN) {
            return self
                .deliver_to_targets(entry, fields, event, partition)
                .await;
        }
        match self.ordering.apply(partition, &entry.id, event).await {
            Ok(Order::Newest) => {}
            Ok(Order::Superseded { by }) => {
                return self.ack(entry, EntryOutcome::Superseded { by }).await
            }
            Ok(Order::Busy) => {
                return EntryOutcome::Pending {
                    reason: "another event of its key is still being processed".into(),
                }
            }
            Err(e) => {
                return EntryOutcome::Pending {
                    reason: format!("cannot check the ordering of its key: {e:#}"),
                }
            }
        }
        let outcome = self
            .deliver_to_targets(entry, fields, event, partition)
            .await;
        if let Err(e) = self.ordering.release(partition, &entry.id, event).await {
            tracing::debug!(error = %format!("{e:#}"), "cannot unlock the key; the lock expires by itself");
        }
        outcome
    }

    pub(super) async fn deliver_to_targets(
        &self,
        entry: &Entry,
        fields: &HashMap<String, String>,
        event: &Event,
        partition: u32,
    ) -> EntryOutcome {
        // A forced replay tracks its devices afresh, under its run (see crate::operate::replay).
        let outcomes_key = self.db.keys.entry_outcomes(partition, &event.id, fields);
        let targets = match self.router.targets(event).await {
            Ok(targets) => targets,
            Err(e) => {
                return EntryOutcome::Pending {
                    reason: format!("cannot read subscriptions: {e:#}"),
                }
            }
        };
        if targets.is_empty() {
            if event.user.is_none() && self.unroutable == Unroutable::DeadLetter {
                let why = DeadLetter {
                    reason: "unroutable".into(),
                    last_error: Some(format!("no subscription matches topic {}", event.topic)),
                    attempts: entry.deliveries,
                    ..DeadLetter::default()
                };
                return self.dead_letter_entry(entry, why).await;
            }
            if let (Some(user), true) = (&event.user, self.holding.enabled()) {
                return self.hold(entry, partition, user, event).await;
            }
            return self.ack(entry, EntryOutcome::NoTarget).await;
        }
        // Still ours? And which devices are done already (an earlier attempt, another worker)?
        let done: HashMap<String, String> = match self.begin(entry, &outcomes_key).await {
            Ok(Some(done)) => done,
            Ok(None) => return EntryOutcome::TakenOver,
            Err(e) => {
                return EntryOutcome::Pending {
                    reason: format!("cannot read the event's outcome markers: {e:#}"),
                }
            }
        };
        let mut tally: HashMap<&'static str, usize> = HashMap::new();
        for marker in done.values() {
            match marker.as_str() {
                "delivered" => *tally.entry("delivered").or_default() += 1,
                "gone" => *tally.entry("gone").or_default() += 1,
                _ => *tally.entry("dead").or_default() += 1,
            }
        }
        let mut failures: Vec<(String, PushReport)> = Vec::new();
        for bad in targets
            .unreadable
            .iter()
            .filter(|b| !done.contains_key(&b.id))
        {
            let why = DeadLetter {
                reason: "invalid_subscription".into(),
                last_error: Some(bad.problem.clone()),
                attempts: entry.deliveries,
                subscription: Some(bad.id.clone()),
                ..DeadLetter::default()
            };
            match self.dead_letter_device(entry, fields, &why).await {
                Ok(_) => *tally.entry("dead").or_default() += 1,
                Err(e) => failures.push((
                    bad.id.clone(),
                    PushReport::unsent(format!("cannot dead-letter: {e:#}")),
                )),
            }
        }
        let todo: Vec<&Subscription> = targets
            .subscriptions
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| !done.contains_key(&s.id))
            .collect();
        // At most `fanout_width` pushes of one event are started at once, so a
        // 100,000-device fan-out holds a bounded number of futures in memory.
        // The iterator makes each push's future only when a slot frees up.
        // (Indexes, not references, in the closure: it keeps the future `Send` for any lifetime.)
        let pushes =
            (0..todo.len()).map(|i| self.push_one(entry, fields, event, todo[i], &outcomes_key));
        let results: Vec<TargetResult> = futures::stream::iter(pushes)
            .buffer_unordered(self.fanout_width)
            .collect()
            .await;
        for result in results {
            match result {
                TargetResult::Done(kind) => *tally.entry(kind).or_default() += 1,
                TargetResult::Failed { sub, report } => failures.push((sub, report)),
            }
        }
        let acked = |tally: &HashMap<&'static str, usize>| EntryOutcome::Acked {
            delivered: tally.get("delivered").copied().unwrap_or(0),
            gone: tally.get("gone").copied().unwrap_or(0),
            dead: tally.get("dead").copied().unwrap_or(0),
        };
        if failures.is_empty() {
            return self.ack(entry, acked(&tally)).await;
        }
        // A failure while the service's breaker is open does not use up an attempt.
        let counted: Vec<&(String, PushReport)> =
            failures.iter().filter(|(_, r)| !r.held).collect();
        if !counted.is_empty() && entry.deliveries > 0 && self.policy.exhausted(entry.deliveries) {
            let mut still_failing = failures.iter().filter(|(_, r)| r.held).count();
            for (sub, report) in &counted {
                let why = DeadLetter {
                    reason: "max_deliveries".into(),
                    last_error: report.error.clone(),
                    last_status: report.status,
                    attempts: entry.deliveries,
                    subscription: Some(sub.clone()),
                };
                match self.dead_letter_device(entry, fields, &why).await {
                    Ok(_) => *tally.entry("dead").or_default() += 1,
                    Err(_) => still_failing += 1,
                }
            }
            if still_failing == 0 {
                return self.ack(entry, acked(&tally)).await;
            }
        }
        self.remember_retry_after(entry, partition, &failures).await;
        EntryOutcome::Pending {
            reason: failures
                .iter()
                .map(|(sub, r)| {
                    format!(
                        "subscription {sub}: {} ({})",
                        r.outcome.name(),
                        r.error.as_deref().unwrap_or("no detail")
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}
