//! One entry from start to end, in this order: decode the event; route it to
//! its devices; claim the entry and the first devices; push to each claimed
//! device; settle; release. A panic anywhere in here fails this entry only
//! (a panic while pushing to one device fails that device only: see
//! [`super::fanout`]), and the worker goes on.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tracing::Instrument;

use super::claim::{Begun, EntryCtx, CHUNK};
use super::route::Target;
use super::{EntryOutcome, Worker};
use crate::shared::config::Unroutable;
use crate::shared::dead_letter::DeadLetter;
use crate::shared::event::{Event, InvalidField};
use crate::shared::stream::{Entry, REPLAY_ONLY};

impl Worker {
    /// Processes one entry to its outcome. Never panics.
    pub async fn process_entry(&self, entry: Entry) -> EntryOutcome {
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
        let event = Event::from_fields(fields, &self.event_defaults).and_then(|event| {
            // The schedule hands events over once due; only a plain XADD holds one not due yet.
            let skew = chrono::Duration::from_std(self.event_defaults.max_clock_skew)
                .unwrap_or(chrono::Duration::MAX);
            match event.deliver_at {
                Some(at) if at > chrono::Utc::now() + skew => Err(InvalidField::new(
                    "deliver_at",
                    "is ahead of now: a plain XADD cannot schedule an event; publish it with FCALL herald_publish (or the API), which keeps it until it is due",
                )),
                _ => Ok(event),
            }
        });
        let event = match event {
            Ok(event) => event,
            Err(problem) => {
                let why = DeadLetter {
                    reason: "undecodable".into(),
                    last_error: Some(format!("field {:?} {}", problem.field, problem.message)),
                    attempts: entry.deliveries,
                    ..DeadLetter::default()
                };
                return self.dead_letter_entry(&entry, why).await;
            }
        };
        let ctx = EntryCtx::new(self, &entry, fields, &event);
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
        let work = AssertUnwindSafe(self.deliver(&ctx).instrument(span.clone())).catch_unwind();
        tokio::pin!(work);
        // While an entry takes long (slow push services), keep its idle time low and
        // its lease and key lock alive, so that no reclaimer takes it for abandoned.
        // Polled alongside the work, never instead of it.
        let heartbeat = async {
            loop {
                tokio::time::sleep(self.policy.heartbeat()).await;
                self.heartbeat(&ctx).await;
            }
        };
        let caught = tokio::select! {
            caught = &mut work => caught,
            never = heartbeat => never,
        };
        let outcome = match caught {
            Ok(outcome) => outcome,
            Err(panic) => {
                self.release(&ctx).await;
                let why = DeadLetter {
                    reason: "panic".into(),
                    last_error: Some(format!("processing panicked: {}", panic_message(&*panic))),
                    attempts: entry.deliveries,
                    ..DeadLetter::default()
                };
                self.dead_letter_entry(&entry, why).await
            }
        };
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
                superseded,
                expired,
            } => tracing::info!(delivered, gone, dead, superseded, expired, "event done"),
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
                tracing::info!(key = ?event.key, newer = %by, "every device had a newer event of its key; not pushed")
            }
        }
        outcome
    }

    /// Route, claim, push, settle, release.
    async fn deliver(&self, ctx: &EntryCtx<'_>) -> EntryOutcome {
        let give_up = self.give_up_reason(ctx);
        let targets = match self.router.targets(ctx.event, ctx.entry.read_at).await {
            Ok(targets) => targets,
            Err(e) => {
                return self
                    .cannot_go_on(ctx, give_up, format!("cannot read subscriptions: {e:#}"))
                    .await
            }
        };
        // A dead-letter replay of one device's share goes to that device only.
        let mut devices: Vec<Target> = targets.into_devices();
        if let Some(only) = ctx.fields.get(REPLAY_ONLY) {
            devices.retain(|d| d.id() == only);
        }
        if devices.is_empty() {
            return self.no_target(ctx).await;
        }
        let first: Vec<&str> = devices.iter().take(CHUNK).map(Target::id).collect();
        let begun = match self.begin(ctx, &first, give_up.is_some()).await {
            Ok(Some(Begun::Ok(verdicts))) => verdicts,
            Ok(Some(Begun::Taken)) => return EntryOutcome::TakenOver,
            Ok(Some(Begun::KeyBusy(_))) | Ok(None) => {
                return self
                    .not_attempted(ctx, "another event of its key is still being processed")
                    .await
            }
            Err(e) => {
                return self
                    .cannot_go_on(ctx, give_up, format!("cannot claim the entry: {e:#}"))
                    .await
            }
        };
        let outcome = match give_up {
            Some(reason) => self.give_up(ctx, &devices, begun, reason).await,
            None => {
                let attempt = self.fan_out(ctx, &devices, begun).await;
                if ctx.lost() {
                    // Another consumer has the entry now: it settles and acknowledges it.
                    EntryOutcome::TakenOver
                } else {
                    self.settle_entry(ctx, attempt).await
                }
            }
        };
        self.release(ctx).await;
        outcome
    }

    /// Something on herald's side failed before any push (Redis, a stored key of the
    /// wrong type): retry without counting an attempt, or, once the entry is past
    /// its limits, dead-letter it whole with the error, so that even this ends.
    async fn cannot_go_on(
        &self,
        ctx: &EntryCtx<'_>,
        give_up: Option<&'static str>,
        error: String,
    ) -> EntryOutcome {
        match give_up {
            Some(reason) => {
                let why = DeadLetter {
                    reason: reason.into(),
                    last_error: Some(error),
                    attempts: ctx.entry.deliveries,
                    ..DeadLetter::default()
                };
                self.dead_letter_entry(ctx.entry, why).await
            }
            None => self.not_attempted(ctx, &error).await,
        }
    }

    /// Nobody to push to: hold a direct event for its user, dead-letter an
    /// unroutable topic event when configured, or acknowledge.
    async fn no_target(&self, ctx: &EntryCtx<'_>) -> EntryOutcome {
        let event = ctx.event;
        if ctx.fields.contains_key(REPLAY_ONLY) {
            // The one device a dead letter was replayed for is gone meanwhile.
            return self.ack(ctx.entry, EntryOutcome::NoTarget).await;
        }
        if event.user.is_none() && self.unroutable == Unroutable::DeadLetter {
            let why = DeadLetter {
                reason: "unroutable".into(),
                last_error: Some(format!("no subscription matches topic {}", event.topic)),
                attempts: ctx.entry.deliveries,
                ..DeadLetter::default()
            };
            return self.dead_letter_entry(ctx.entry, why).await;
        }
        if let (Some(user), true) = (&event.user, self.holding.enabled()) {
            return self.hold(ctx.entry, ctx.partition, user, event).await;
        }
        self.ack(ctx.entry, EntryOutcome::NoTarget).await
    }

    /// Whether this attempt only settles what is left (dead letters, no push): the
    /// entry used up its attempts before this one, or is past `retry.max_age`.
    fn give_up_reason(&self, ctx: &EntryCtx<'_>) -> Option<&'static str> {
        if self.noack {
            return None;
        }
        let deliveries = ctx.entry.deliveries;
        if deliveries > u64::from(self.policy.max_deliveries) {
            return Some("max_deliveries");
        }
        let added = ctx.entry.added_at()?;
        self.policy
            .past_max_age(added, chrono::Utc::now())
            .then_some("retry_expired")
    }
}

/// What a panic said, as text.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
