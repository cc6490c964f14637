//! Settling: each device's state for the event (`settle.lua`), dead letters,
//! a held event, the acknowledgement, and for an entry left pending its retry
//! hint (`{P:pN}:retry-at`: not before when, and whether the attempt counted).
//!
//! Round trips: the states of devices settled during a fan-out are written in
//! batches (one write in flight, the others gather behind it); the last ones
//! go with the acknowledgement and the release of the entry's lease and key
//! lock, in one round trip. So a single-device event costs one round trip
//! after its push.
//!
//! An entry is acknowledged once every device is settled. A device still
//! failing is dead-lettered, with its last status, once the entry used up
//! `retry.max_deliveries` attempts (reason `max_deliveries`, or `panic` when
//! pushing to it panicked) or is older than `retry.max_age` (`retry_expired`).
//! An attempt that sent nothing at all (an open breaker, a subscription waiting
//! out a `429`, a busy key or device, a full service) does not count.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::batch::Call;
use super::claim::{Begun, EntryCtx, Verdict, CHUNK};
use super::holding::Held;
use super::push::{Outcome, PushReport};
use super::route::Target;
use super::{EntryOutcome, Worker};
use crate::shared::dead_letter::DeadLetter;
use crate::shared::event::Event;
use crate::shared::stream::Entry;

/// How long a worker keeps trying to record a device's settled state while Redis is away.
const MARKER_PATIENCE: Duration = Duration::from_secs(30);
/// Most of a push service's error kept in a device's failed state.
const FAILURE_TEXT: usize = 300;

/// Settled devices of one attempt, by kind.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub delivered: usize,
    pub gone: usize,
    pub dead: usize,
    pub superseded: usize,
    pub expired: usize,
    /// The newer event that superseded this one, for the log.
    pub superseded_by: Option<String>,
}

impl Tally {
    pub(super) fn count(&mut self, state: &str) {
        match state {
            "delivered" => self.delivered += 1,
            "gone" => self.gone += 1,
            "superseded" => self.superseded += 1,
            "expired" => self.expired += 1,
            _ => self.dead += 1,
        }
    }
}

/// A device that is not settled after this attempt.
#[derive(Debug)]
pub(super) struct Failure {
    pub sub: String,
    pub report: PushReport,
    /// The state of its previous failed attempt (`failed <status> <error>`), if any.
    pub previous: Option<String>,
    /// Another processor is pushing it right now: its answer settles it.
    pub elsewhere: bool,
}

/// What one attempt at every device came to.
#[derive(Debug, Default)]
pub(super) struct Attempt {
    pub tally: Tally,
    pub failures: Vec<Failure>,
}

/// How a device's state is written (see `settle.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A settled state, always written.
    Mark,
    /// The last failure, while the device is still claimed by this processor.
    Fail,
    /// Nothing was sent: the previous state goes back (same condition).
    Unclaim,
}

/// What else one settling round trip does (see `settle.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The states only.
    Nothing,
    /// The end of an attempt: the entry's lease and key lock are released.
    Release,
    /// The end of the entry: acknowledged, its retry hint forgotten, released.
    Finish,
}

impl Worker {
    /// Writes a device's state (see [`Worker::settle_states`]).
    pub(super) async fn settle_device(
        &self,
        ctx: &EntryCtx<'_>,
        sub: &str,
        mode: Mode,
        state: &str,
    ) {
        if let Err(e) = self
            .settle_states(ctx, &[(mode, sub, state)], End::Nothing)
            .await
        {
            tracing::warn!(subscription = %sub, error = %format!("{e:#}"), "cannot record the device's state; its claim expires by itself");
        }
    }

    /// Writes devices' states, and what `end` says, in one round trip. Settled
    /// states are retried while Redis is unreachable (up to `MARKER_PATIENCE`;
    /// a refusal, such as out of memory, is not waited out):
    /// those devices have the event, and a state lost to a Redis blip would mean
    /// a second push on the retry. Everything in it may be written twice.
    pub(super) async fn settle_states(
        &self,
        ctx: &EntryCtx<'_>,
        states: &[(Mode, &str, &str)],
        end: End,
    ) -> anyhow::Result<()> {
        let patient = states.iter().any(|(mode, _, _)| *mode == Mode::Mark);
        let deadline = std::time::Instant::now() + MARKER_PATIENCE;
        loop {
            match self.settle_once(ctx, states, end).await {
                Ok(()) => return Ok(()),
                Err(e)
                    if !patient
                        || !e.downcast_ref().is_some_and(crate::shared::db::unreachable)
                        || std::time::Instant::now() >= deadline =>
                {
                    return Err(e)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn settle_once(
        &self,
        ctx: &EntryCtx<'_>,
        states: &[(Mode, &str, &str)],
        end: End,
    ) -> anyhow::Result<()> {
        let (lock, lock_holder) = ctx.lock();
        let mut call = Call::default();
        call.key(&ctx.outcomes)
            .key(&ctx.entry.stream)
            .key(self.db.keys.retry_at(ctx.partition))
            .key(&ctx.lease)
            .key(lock)
            .arg(self.outcomes_life.as_secs().max(1))
            .arg(&ctx.holder)
            .arg(match end {
                End::Nothing => "",
                End::Release => "release",
                // Nothing can come looking for a lease no heartbeat refreshed, and
                // no key lock was taken: it expires by itself.
                End::Finish if ctx.quiet_end() => "ack",
                End::Finish => "finish",
            })
            .arg(&self.group)
            .arg(&ctx.entry.id)
            .arg(&self.consumer)
            .arg(lock_holder)
            .arg(self.policy.lease().as_millis() as u64)
            .arg(
                if ctx
                    .first_claim
                    .lock()
                    .is_some_and(|sent| sent.elapsed() < self.outcomes_margin)
                {
                    "kept"
                } else {
                    "refresh"
                },
            );
        for (mode, sub, state) in states {
            call.arg(match mode {
                Mode::Mark => "mark",
                Mode::Fail => "fail",
                Mode::Unclaim => "unclaim",
            })
            .arg(*sub)
            .arg(*state);
        }
        let _: i64 = redis::from_redis_value(self.settles.call(&ctx.entry.stream, call).await?)?;
        Ok(())
    }

    /// A device got the event (or is gone): its state is written in a batch
    /// with others settled meanwhile while the fan-out goes on (one write at a
    /// time, the others gather behind it); the last device's goes with the
    /// entry's end (its acknowledgement), in the same round trip.
    pub(super) async fn mark(&self, ctx: &EntryCtx<'_>, sub: &str, state: &'static str) {
        ctx.marks.lock().push((sub.to_string(), state));
        if ctx.remaining.load(Ordering::Relaxed) <= 1 {
            return;
        }
        self.write_marks(ctx).await;
    }

    /// Writes the states gathered so far, one batch at a time, until none is
    /// left. A batch leaves `ctx.marks` only once written: if this is cut
    /// short (a panic elsewhere in the fan-out) or fails, the entry's end
    /// writes it.
    pub(super) async fn write_marks(&self, ctx: &EntryCtx<'_>) {
        let Ok(_writing) = ctx.writing_marks.try_lock() else {
            return;
        };
        loop {
            let batch = ctx.marks.lock().clone();
            if batch.is_empty() {
                return;
            }
            match self
                .settle_states(ctx, &settled(&batch), End::Nothing)
                .await
            {
                // Only this writer removes, and others only append.
                Ok(()) => drop(ctx.marks.lock().drain(..batch.len())),
                Err(e) => {
                    tracing::warn!(devices = batch.len(), error = %format!("{e:#}"), "cannot record the devices' states yet; the end of the entry tries again");
                    return;
                }
            }
        }
    }

    /// The states not written yet, taken for the entry's end.
    fn unwritten_marks(ctx: &EntryCtx<'_>) -> Vec<(String, &'static str)> {
        std::mem::take(&mut *ctx.marks.lock())
    }

    /// Acknowledges the entry, with the states not written yet, forgets its
    /// retry hint and releases its lease and key lock: one round trip. When
    /// that fails (Redis refusing writes when out of memory, say), a plain
    /// `XACK` still ends the entry, as it did before states and ack shared a
    /// script; the release at the end of the attempt tries the states again.
    pub(super) async fn finish(&self, ctx: &EntryCtx<'_>, done: EntryOutcome) -> EntryOutcome {
        let marks = Self::unwritten_marks(ctx);
        match self.settle_states(ctx, &settled(&marks), End::Finish).await {
            Ok(()) => {
                ctx.released.store(true, Ordering::Relaxed);
                done
            }
            Err(e) => {
                ctx.marks.lock().extend(marks);
                tracing::warn!(stream_id = %ctx.entry.id, error = %format!("{e:#}"), "cannot write the last device states with the acknowledgement; acknowledging alone");
                match self.ack(ctx.entry, done).await {
                    EntryOutcome::Pending { reason } => EntryOutcome::Pending {
                        reason: format!(
                            "processed, but neither the last device states nor the acknowledgement could be written: {e:#}; {reason}"
                        ),
                    },
                    acked => acked,
                }
            }
        }
    }

    /// The end of an attempt that did not finish the entry: writes the states
    /// not written yet and releases the entry's lease and its key's lock, so
    /// that the next event of the key, or a retry, need not wait for them to expire.
    pub(super) async fn release(&self, ctx: &EntryCtx<'_>) {
        if ctx.released.load(Ordering::Relaxed) {
            return;
        }
        let marks = Self::unwritten_marks(ctx);
        if let Err(e) = self
            .settle_states(ctx, &settled(&marks), End::Release)
            .await
        {
            tracing::warn!(stream_id = %ctx.entry.id, devices = marks.len(), error = %format!("{e:#}"), "cannot record the last states or release the lease; they expire by themselves");
        }
    }

    /// Records a failed attempt at a device (`failed <status> <error>`), or, when
    /// nothing was sent, gives its claim back with the previous state.
    pub(super) async fn fail_device(
        &self,
        ctx: &EntryCtx<'_>,
        sub: &str,
        report: &PushReport,
        previous: Option<&str>,
    ) {
        if report.not_sent {
            self.settle_device(ctx, sub, Mode::Unclaim, previous.unwrap_or(""))
                .await;
            return;
        }
        let status = report.status.map_or("-".to_string(), |s| s.to_string());
        let mut error: String = report.error.as_deref().unwrap_or("no detail").to_string();
        shorten(&mut error);
        let state = format!("failed {status} {error}");
        self.settle_device(ctx, sub, Mode::Fail, &state).await;
    }

    /// Dead-letters one device's share of an event; the entry stays for the other devices.
    pub(super) async fn dead_letter_device(
        &self,
        ctx: &EntryCtx<'_>,
        why: &DeadLetter,
    ) -> anyhow::Result<String> {
        let id = self
            .dead_letters
            .write(
                &ctx.entry.stream,
                &ctx.entry.id,
                ctx.fields,
                &self.consumer,
                why,
                false,
            )
            .await?;
        if let Some(sub) = &why.subscription {
            self.unorder(ctx, sub).await;
        }
        Ok(id)
    }

    /// The event ended for a device without reaching it: it no longer supersedes
    /// older events of its key there.
    pub(super) async fn unorder(&self, ctx: &EntryCtx<'_>, sub: &str) {
        if let Some(order) = &ctx.order {
            if let Err(e) = order.forget(&self.db, sub).await {
                tracing::warn!(subscription = %sub, error = %format!("{e:#}"), "cannot clear the key's register for the device; an older event of the key may be skipped for it");
            }
        }
    }

    pub(super) async fn dead_letter_entry(&self, entry: &Entry, why: DeadLetter) -> EntryOutcome {
        let empty = HashMap::new();
        let fields = entry.fields.as_ref().unwrap_or(&empty);
        match self
            .dead_letters
            .write(&entry.stream, &entry.id, fields, &self.consumer, &why, true)
            .await
        {
            Ok(_) => EntryOutcome::DeadLettered { reason: why.reason },
            Err(e) => EntryOutcome::Pending {
                reason: format!("cannot dead-letter ({}): {e:#}", why.reason),
            },
        }
    }

    /// After an attempt at every device: acknowledge, dead-letter what has had
    /// enough, or leave the entry pending with its retry hint.
    pub(super) async fn settle_entry(&self, ctx: &EntryCtx<'_>, attempt: Attempt) -> EntryOutcome {
        let Attempt {
            mut tally,
            failures,
        } = attempt;
        if failures.is_empty() {
            return self.finish(ctx, acked(tally)).await;
        }
        // Dead letters and a retry hint come first: write the states of the
        // devices that got the event now, not behind them.
        self.write_marks(ctx).await;
        let sent_any = failures.iter().any(|f| !f.report.not_sent);
        let exhausted =
            sent_any && ctx.entry.deliveries > 0 && self.policy.exhausted(ctx.entry.deliveries);
        let expired = !self.noack
            && ctx
                .entry
                .added_at()
                .is_some_and(|added| self.policy.past_max_age(added, chrono::Utc::now()));
        if exhausted || expired {
            let mut still_failing = 0;
            for failure in &failures {
                // Used-up attempts concern the devices that were tried; age concerns them
                // all, but for one another processor is pushing right now.
                if failure.elsewhere || (!expired && failure.report.not_sent) {
                    still_failing += 1;
                    continue;
                }
                let reason = if failure.report.panicked {
                    "panic"
                } else if expired {
                    "retry_expired"
                } else {
                    "max_deliveries"
                };
                let why = last_failure(ctx, failure, reason);
                match self.dead_letter_device(ctx, &why).await {
                    Ok(_) => tally.dead += 1,
                    Err(_) => still_failing += 1,
                }
            }
            if still_failing == 0 {
                return self.finish(ctx, acked(tally)).await;
            }
        }
        self.pending(ctx, &failures).await
    }

    /// The entry has used up its attempts before this one, or is too old: dead-letter
    /// every device not settled yet (with its last failure), push nothing.
    pub(super) async fn give_up(
        &self,
        ctx: &EntryCtx<'_>,
        devices: &[Target],
        first: Vec<Verdict>,
        reason: &'static str,
    ) -> EntryOutcome {
        let mut tally = Tally::default();
        let mut left = 0;
        let mut states = first;
        for (i, chunk) in devices.chunks(CHUNK).enumerate() {
            if i > 0 {
                let ids: Vec<&str> = chunk.iter().map(Target::id).collect();
                states = match self.claim(ctx, false, &ids, true).await {
                    Ok(Begun::Ok(states)) => states,
                    _ => {
                        left += chunk.len();
                        continue;
                    }
                };
            }
            for (target, verdict) in chunk.iter().zip(std::mem::take(&mut states)) {
                let Verdict::State(state) = verdict else {
                    left += 1;
                    continue;
                };
                let word = state.split(' ').next().unwrap_or("");
                if matches!(
                    word,
                    "delivered" | "gone" | "dead" | "superseded" | "expired"
                ) {
                    tally.count(word);
                    continue;
                }
                if pushed_by_another(&state, &ctx.holder) {
                    // Another processor is pushing it right now: its answer settles it.
                    left += 1;
                    continue;
                }
                let failure = Failure {
                    sub: target.id().to_string(),
                    report: PushReport::unsent(String::new()),
                    previous: (word == "failed").then_some(state),
                    elsewhere: false,
                };
                let mut why = last_failure(ctx, &failure, reason);
                if why.last_error.as_deref().is_none_or(str::is_empty) {
                    why.last_error = Some(match reason {
                        "retry_expired" => {
                            "retry.max_age passed before this device was reached".into()
                        }
                        _ => "retry.max_deliveries attempts used up before this device was reached"
                            .into(),
                    });
                }
                match self.dead_letter_device(ctx, &why).await {
                    Ok(_) => tally.dead += 1,
                    Err(_) => left += 1,
                }
            }
        }
        if left > 0 {
            self.write_hint(ctx.entry, ctx.partition, self.policy.heartbeat(), false)
                .await;
            return EntryOutcome::Pending {
                reason: format!(
                    "giving up ({reason}): {left} device(s) still being pushed elsewhere or not dead-lettered yet"
                ),
            };
        }
        self.finish(ctx, acked(tally)).await
    }

    /// Leaves the entry pending: records when it may be retried, and whether this
    /// attempt counted (it did only if something was sent).
    async fn pending(&self, ctx: &EntryCtx<'_>, failures: &[Failure]) -> EntryOutcome {
        let counted = failures.iter().any(|f| !f.report.not_sent);
        let wait = failures
            .iter()
            .filter_map(|f| match f.report.outcome {
                Outcome::Retry { after } => after,
                _ => None,
            })
            .max()
            .unwrap_or(Duration::ZERO);
        self.write_hint(ctx.entry, ctx.partition, wait, counted)
            .await;
        EntryOutcome::Pending {
            reason: failures
                .iter()
                .take(20)
                .map(|f| {
                    format!(
                        "subscription {}: {} ({})",
                        f.sub,
                        if f.report.not_sent {
                            "not sent"
                        } else {
                            f.report.outcome.name()
                        },
                        f.report.error.as_deref().unwrap_or("no detail")
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    /// Nothing was tried (the key stayed busy): retry soon, without counting an attempt.
    pub(super) async fn not_attempted(&self, ctx: &EntryCtx<'_>, why: &str) -> EntryOutcome {
        self.write_hint(ctx.entry, ctx.partition, Duration::ZERO, false)
            .await;
        EntryOutcome::Pending {
            reason: format!("not attempted: {why}"),
        }
    }

    /// `{P:pN}:retry-at`: see [`Hint`].
    async fn write_hint(&self, entry: &Entry, partition: u32, wait: Duration, counted: bool) {
        let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        let until = chrono::Utc::now()
            .timestamp_millis()
            .saturating_add(wait_ms);
        let value = format!(
            "{until} {} {}",
            if counted { "counted" } else { "held" },
            entry.deliveries
        );
        let written: anyhow::Result<()> = async {
            let mut conn = self.db.conn();
            redis::cmd("HSET")
                .arg(self.db.keys.retry_at(partition))
                .arg(&entry.id)
                .arg(value)
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        }
        .await;
        if let Err(e) = written {
            tracing::warn!(error = %format!("{e:#}"), "cannot record the retry hint; the entry may be retried sooner");
        }
    }

    /// Holds a direct event for a user without a subscription (see [`super::holding`]).
    pub(super) async fn hold(
        &self,
        entry: &Entry,
        partition: u32,
        user: &str,
        event: &Event,
    ) -> EntryOutcome {
        let held = match self.holding.hold(partition, user, event).await {
            Ok(held) => held,
            Err(e) => {
                return EntryOutcome::Pending {
                    reason: format!("cannot hold the event for its user: {e:#}"),
                }
            }
        };
        match held {
            Held::Held => {
                // The user may have subscribed since the routing looked (see super::holding).
                match self.holding.user_subscribed(user).await {
                    Ok(false) => {}
                    Ok(true) => {
                        if let Err(e) = self.holding.release(user).await {
                            tracing::warn!(error = %format!("{e:#}"), "cannot release held events; the next registration or the TTL settles them");
                        }
                    }
                    Err(e) => {
                        return EntryOutcome::Pending {
                            reason: format!(
                                "held, but cannot check the user's subscriptions: {e:#}"
                            ),
                        }
                    }
                }
                self.ack(entry, EntryOutcome::Held).await
            }
            Held::Expired => self.ack(entry, EntryOutcome::NoTarget).await,
            Held::Full => {
                let why = DeadLetter {
                    reason: "hold_full".into(),
                    last_error: Some(
                        "the user has no subscription and routing.hold_per_user events are held for them already".into(),
                    ),
                    attempts: entry.deliveries,
                    ..DeadLetter::default()
                };
                self.dead_letter_entry(entry, why).await
            }
        }
    }

    /// `XACK`, and forget any retry hint of the entry.
    pub(super) async fn ack(&self, entry: &Entry, done: EntryOutcome) -> EntryOutcome {
        let partition = self.db.keys.partition_of(&entry.stream).unwrap_or(0);
        let acked: anyhow::Result<()> = async {
            let mut conn = self.db.conn();
            redis::pipe()
                .cmd("XACK")
                .arg(&entry.stream)
                .arg(&self.group)
                .arg(&entry.id)
                .ignore()
                .cmd("HDEL")
                .arg(self.db.keys.retry_at(partition))
                .arg(&entry.id)
                .ignore()
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        }
        .await;
        match acked {
            Ok(()) => done,
            // Not acknowledged means it will be processed again; the device states keep devices from a second push.
            Err(e) => EntryOutcome::Pending {
                reason: format!("processed, but XACK failed: {e:#}"),
            },
        }
    }
}

/// The retry hint an attempt leaves for a pending entry, in `{P:pN}:retry-at`:
/// `<not before, unix ms> <counted|held> <deliveries>`. The delivery count ties
/// the hint to the attempt that wrote it: once the entry was delivered again, a
/// hint left from before is stale and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint {
    pub until_ms: i64,
    /// The attempt sent something (a retry of it counts); `held` otherwise.
    pub counted: bool,
}

impl Hint {
    /// How long the entry must still wait at `now_ms`.
    pub fn wait_left(&self, now_ms: i64) -> Duration {
        Duration::from_millis(u64::try_from(self.until_ms.saturating_sub(now_ms)).unwrap_or(0))
    }

    /// The current hint of each `(stream id, delivery count)` listed, from the
    /// partition's `retry-at` hash (`key`).
    pub async fn read(
        conn: &mut crate::shared::db::Conn,
        key: &str,
        entries: &[(&str, u64)],
    ) -> anyhow::Result<Vec<Option<Hint>>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(key);
        for (id, _) in entries {
            cmd.arg(*id);
        }
        let values: Vec<Option<String>> = cmd.query_async(conn).await?;
        Ok(entries
            .iter()
            .zip(values)
            .map(|((_, deliveries), value)| {
                let text = value?;
                let mut parts = text.split(' ');
                let until_ms = parts.next()?.parse::<i64>().ok()?;
                let counted = parts.next()? == "counted";
                let written_at = parts.next()?.parse::<u64>().ok()?;
                (written_at == *deliveries).then_some(Hint { until_ms, counted })
            })
            .collect())
    }
}

/// Settled states to write, as `settle.lua` takes them.
fn settled<'m>(marks: &'m [(String, &'static str)]) -> Vec<(Mode, &'m str, &'m str)> {
    marks
        .iter()
        .map(|(sub, state)| (Mode::Mark, sub.as_str(), *state))
        .collect()
}

/// Cuts a push service's error text to `FAILURE_TEXT` bytes (at a character boundary).
fn shorten(text: &mut String) {
    if text.len() > FAILURE_TEXT {
        let cut = (0..=FAILURE_TEXT)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(cut);
    }
}

impl Failure {
    /// A device that failed at this processor (not one another is pushing).
    pub(super) fn new(sub: &str, report: PushReport, previous: Option<String>) -> Failure {
        Failure {
            sub: sub.to_string(),
            report,
            previous,
            elsewhere: false,
        }
    }

    /// The failure as an attempt keeps it until it settles: texts cut short, so a
    /// fan-out to many failing devices holds a bounded amount per device.
    pub(super) fn kept(mut self) -> Failure {
        if let Some(error) = self.report.error.as_mut() {
            shorten(error);
        }
        if let Some(previous) = self.previous.as_mut() {
            shorten(previous);
        }
        self
    }
}

/// Whether a device's state is a live claim of another processor (`pushing <holder> <until ms>`).
fn pushed_by_another(state: &str, holder: &str) -> bool {
    let mut parts = state.split(' ');
    if parts.next() != Some("pushing") {
        return false;
    }
    let who = parts.next().unwrap_or("");
    let until = parts
        .next()
        .and_then(|u| u.parse::<i64>().ok())
        .unwrap_or(0);
    who != holder && until > chrono::Utc::now().timestamp_millis()
}

/// What an acknowledged entry came to: superseded when every device had a newer event.
fn acked(tally: Tally) -> EntryOutcome {
    let others = tally.delivered + tally.gone + tally.dead + tally.expired;
    match tally.superseded_by {
        Some(by) if others == 0 => EntryOutcome::Superseded { by },
        _ => EntryOutcome::Acked {
            delivered: tally.delivered,
            gone: tally.gone,
            dead: tally.dead,
            superseded: tally.superseded,
            expired: tally.expired,
        },
    }
}

/// A device's dead letter: this attempt's status and error when something was
/// sent, else those of its previous failed attempt.
fn last_failure(ctx: &EntryCtx<'_>, failure: &Failure, reason: &str) -> DeadLetter {
    let (mut status, mut error) = (failure.report.status, failure.report.error.clone());
    if failure.report.not_sent || status.is_none() && error.as_deref().is_none_or(str::is_empty) {
        if let Some(previous) = failure
            .previous
            .as_deref()
            .and_then(|p| p.strip_prefix("failed "))
        {
            let (code, text) = previous.split_once(' ').unwrap_or((previous, ""));
            status = code.parse().ok();
            error = Some(text.to_string());
        }
    }
    DeadLetter {
        reason: reason.to_string(),
        last_error: error,
        last_status: status,
        attempts: ctx.entry.deliveries,
        subscription: Some(failure.sub.clone()),
    }
}
