//! A push to each device of an event. Devices are claimed in chunks as the
//! pushes go, at most `worker.concurrency` pushes of one event are started at
//! once, and only futures for those exist: a fan-out to 100,000 devices holds
//! bounded memory.
//!
//! Per device: settled already → counted; claimed → its TTL checked (what is
//! left of it goes in the `TTL` header; none left → settled as `expired`, not
//! sent), pushed, and its state settled. A panic while handling one device is
//! that device's failed attempt, never the event's or the process's.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::Either;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use super::claim::{Begun, EntryCtx, Settling, Verdict, CHUNK};
use super::entry::panic_message;
use super::push::{Outcome, PushReport};
use super::route::{Device, Target};
use super::settle::{Attempt, Failure, Mode};
use super::Worker;
use crate::shared::dead_letter::DeadLetter;

/// What one of the fan-out's concurrent pieces of work came to.
enum Work<'t> {
    Device(DeviceOutcome),
    Claimed(&'t [Target], Vec<Verdict>),
}

enum DeviceOutcome {
    /// Settled by this attempt.
    Settled(&'static str),
    /// Settled already, by an earlier attempt or another processor.
    Done(String),
    Superseded(String),
    Failed(Failure),
}

impl Worker {
    /// Pushes to every device of `devices` not settled yet. `first` holds the
    /// claims of the first chunk, made with the entry's own claim.
    pub(super) async fn fan_out(
        &self,
        ctx: &EntryCtx<'_>,
        devices: &[Target],
        first: Vec<Verdict>,
    ) -> Attempt {
        let (head, rest) = devices.split_at(first.len().min(devices.len()));
        let mut claimed: VecDeque<(&Target, Verdict)> = head.iter().zip(first).collect();
        let mut chunks = rest.chunks(CHUNK);
        // Claims and pushes run side by side in one set: the next chunk is claimed
        // while the claimed devices are being pushed.
        let mut running = FuturesUnordered::new();
        let mut claiming = false;
        let mut attempt = Attempt::default();
        ctx.remaining.store(devices.len(), Ordering::Relaxed);
        loop {
            while running.len() < self.fanout_width + 1 {
                let Some((target, verdict)) = claimed.pop_front() else {
                    break;
                };
                running.push(Either::Left(async move {
                    Work::Device(self.device(ctx, target, verdict).await)
                }));
            }
            // Claim the next chunk while the claimed ones are still being pushed.
            if !claiming && claimed.len() < CHUNK {
                if let Some(chunk) = chunks.next() {
                    claiming = true;
                    running.push(Either::Right(async move {
                        Work::Claimed(chunk, self.claim_chunk(ctx, chunk).await)
                    }));
                }
            }
            let done = running.next().await;
            if matches!(done, Some(Work::Device(_))) {
                ctx.remaining.fetch_sub(1, Ordering::Relaxed);
            }
            match done {
                Some(Work::Claimed(chunk, verdicts)) => {
                    claiming = false;
                    claimed.extend(chunk.iter().zip(verdicts));
                }
                Some(Work::Device(DeviceOutcome::Settled(state))) => attempt.tally.count(state),
                Some(Work::Device(DeviceOutcome::Done(state))) => attempt.tally.count(&state),
                Some(Work::Device(DeviceOutcome::Superseded(by))) => {
                    attempt.tally.superseded += 1;
                    attempt.tally.superseded_by.get_or_insert(by);
                }
                Some(Work::Device(DeviceOutcome::Failed(failure))) => {
                    attempt.failures.push(failure.kept())
                }
                None => return attempt,
            }
        }
    }

    /// Claims one more chunk of devices; a failure to claim leaves them for a retry.
    async fn claim_chunk(&self, ctx: &EntryCtx<'_>, chunk: &[Target]) -> Vec<Verdict> {
        let ids: Vec<&str> = chunk.iter().map(Target::id).collect();
        match self.claim(ctx, false, &ids, false).await {
            Ok(Begun::Ok(verdicts)) => verdicts,
            Ok(_) => vec![Verdict::Busy; chunk.len()],
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot claim devices; they are retried later");
                vec![Verdict::State(format!("cannot claim: {e:#}")); chunk.len()]
            }
        }
    }

    async fn device(&self, ctx: &EntryCtx<'_>, target: &Target, verdict: Verdict) -> DeviceOutcome {
        // However this ends, the device's claim is no longer extended afterwards.
        let _settling = Settling::new(ctx, target.id());
        let previous = match verdict {
            Verdict::Claimed { previous } => previous,
            Verdict::Done(state) => return DeviceOutcome::Done(state),
            Verdict::Superseded { by } => return DeviceOutcome::Superseded(by),
            Verdict::Busy => {
                return DeviceOutcome::Failed(Failure {
                    sub: target.id().to_string(),
                    report: PushReport::not_sent(
                        self.policy.heartbeat(),
                        "another processor is pushing this device right now".into(),
                    ),
                    previous: None,
                    elsewhere: true,
                })
            }
            Verdict::State(problem) => {
                return DeviceOutcome::Failed(Failure::new(
                    target.id(),
                    PushReport::not_sent(self.policy.heartbeat(), problem),
                    None,
                ))
            }
        };
        match target {
            Target::Unreadable(bad) => {
                let why = DeadLetter {
                    reason: "invalid_subscription".into(),
                    last_error: Some(bad.problem.clone()),
                    attempts: ctx.entry.deliveries,
                    subscription: Some(bad.id.clone()),
                    ..DeadLetter::default()
                };
                match self.dead_letter_device(ctx, &why).await {
                    Ok(_) => DeviceOutcome::Settled("dead"),
                    Err(e) => DeviceOutcome::Failed(Failure::new(
                        &bad.id,
                        PushReport::unsent(format!("cannot dead-letter: {e:#}")),
                        previous,
                    )),
                }
            }
            Target::Device(device) => self.push_device(ctx, device, previous).await,
        }
    }

    /// Pushes to one claimed device and settles its state.
    async fn push_device(
        &self,
        ctx: &EntryCtx<'_>,
        device: &Arc<Device>,
        previous: Option<String>,
    ) -> DeviceOutcome {
        let Some(ttl) = ctx.event.ttl_left(chrono::Utc::now()) else {
            // The push service would have dropped it by now: not an error, not a dead letter.
            crate::shared::metrics::push(
                "expired",
                crate::shared::metrics::service_class_of(device.endpoint()),
            );
            tracing::info!(subscription = %device.id(), ttl = ctx.event.ttl, "the event's TTL is over; not sent");
            self.settle_device(ctx, device.id(), Mode::Mark, "expired")
                .await;
            self.unorder(ctx, device.id()).await;
            return DeviceOutcome::Settled("expired");
        };
        let report = {
            let may_send = || ctx.may_send();
            match AssertUnwindSafe(
                self.pusher
                    .push_checked(device, &ctx.notice, ttl, &may_send),
            )
            .catch_unwind()
            .await
            {
                Ok(report) => report,
                Err(panic) => {
                    let message = panic_message(&*panic);
                    tracing::error!(subscription = %device.id(), panic = %message, "pushing to this device panicked; it is retried");
                    PushReport {
                        panicked: true,
                        ..PushReport::unsent(format!("pushing panicked: {message}"))
                    }
                }
            }
        };
        let state = match &report.outcome {
            Outcome::Delivered => {
                crate::shared::metrics::delivery_latency(&ctx.entry.id);
                "delivered"
            }
            Outcome::Gone => {
                if let Err(e) = self.store.delete(device.id()).await {
                    let report = PushReport::unsent(format!(
                        "subscription is gone but could not be deleted: {e:#}"
                    ));
                    self.fail_device(ctx, device.id(), &report, previous.as_deref())
                        .await;
                    return DeviceOutcome::Failed(Failure::new(device.id(), report, previous));
                }
                tracing::info!(subscription = %device.id(), status = ?report.status, "subscription gone; deleted");
                "gone"
            }
            Outcome::DeadLetter { reason } => {
                let why = DeadLetter {
                    reason: reason.to_string(),
                    last_error: report.error.clone(),
                    last_status: report.status,
                    attempts: ctx.entry.deliveries,
                    subscription: Some(device.id().to_string()),
                };
                return match self.dead_letter_device(ctx, &why).await {
                    Ok(_) => DeviceOutcome::Settled("dead"),
                    Err(e) => DeviceOutcome::Failed(Failure::new(
                        device.id(),
                        PushReport::unsent(format!("cannot dead-letter: {e:#}")),
                        previous,
                    )),
                };
            }
            Outcome::Retry { .. } => {
                tracing::warn!(subscription = %device.id(), status = ?report.status, not_sent = report.not_sent, error = report.error.as_deref().unwrap_or(""), "push not delivered");
                self.fail_device(ctx, device.id(), &report, previous.as_deref())
                    .await;
                return DeviceOutcome::Failed(Failure::new(device.id(), report, previous));
            }
        };
        // Soon after the push service's answer, so that no retry pushes this device again.
        self.mark(ctx, device.id(), state).await;
        DeviceOutcome::Settled(state)
    }
}
