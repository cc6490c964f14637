//! Claiming, before anything is pushed (`claim.lua`): the entry is still this
//! consumer's and nobody else works on it (its lease); its ordering key is not
//! busy with another event (the key's lock); and each device is claimed for
//! this processor until it is settled, so that two processors (a reclaimer and
//! a slow worker, a replay copy next to its pending original) never push one
//! device at the same time. Heartbeats keep the entry's idle time low and
//! extend its lease, its key's lock and the claims of its devices not settled
//! yet while it runs, on a connection of their own. A device's claim lasts a
//! whole push and a lease past the last heartbeat, so it covers a push waiting
//! for a slot however long, and a request sent just before this process froze.
//! A processor whose heartbeats stopped landing (paused, cut off from Redis) or
//! that lost its entry sends nothing more: see [`EntryCtx::may_send`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::Script;

use super::batch::Call;
use super::ordering::Order;
use super::push::Notice;
use super::Worker;
use crate::shared::db::script;
use crate::shared::event::Event;
use crate::shared::stream::Entry;

static REFRESH: OnceLock<Script> = OnceLock::new();

/// [`EntryCtx::beats`]: no heartbeat sent yet; one sent; acknowledged without one.
const QUIET: u8 = 0;
const BEATING: u8 = 1;
const ENDING: u8 = 2;

/// Devices claimed per call.
pub(super) const CHUNK: usize = 64;

/// One entry in progress, and the names it goes by in Redis.
pub(super) struct EntryCtx<'a> {
    pub entry: &'a Entry,
    pub fields: &'a HashMap<String, String>,
    pub event: &'a Event,
    /// What every device of the event gets, made once.
    pub notice: Notice,
    pub partition: u32,
    /// The event's per-device states (a forced replay copy's own, under its run).
    pub outcomes: String,
    pub lease: String,
    pub order: Option<Order>,
    /// Who holds the device claims and the key's lock: `<consumer>/<entry id>`.
    pub holder: String,
    /// Devices claimed and not settled yet: their claims are extended by heartbeats.
    pub claimed: Mutex<HashSet<String>>,
    /// When the entry's claim or last heartbeat landed.
    last_beat: Mutex<Instant>,
    /// When the entry's first claim was sent, once it landed: the outcome
    /// markers' expiry it set lasts their life past any write made within the
    /// worker's margin (see settle.lua, 'kept').
    pub first_claim: Mutex<Option<Instant>>,
    /// Whether a heartbeat of this attempt was sent (one may still be on its
    /// way when the attempt ends, so its release must leave the lease marked
    /// ended), or the entry is being acknowledged without that (and no
    /// heartbeat is sent any more): see [`EntryCtx::quiet_end`].
    beats: AtomicU8,
    /// Another consumer took the entry over.
    lost: AtomicBool,
    /// How long without a landed heartbeat this processor may still send.
    send_window: Duration,
    /// Settled states not written yet (`(subscription, state)`): written in
    /// batches while the fan-out goes on, the last ones with the entry's end.
    pub marks: Mutex<Vec<(String, &'static str)>>,
    /// One batch of states written at a time; the others gather meanwhile.
    pub writing_marks: tokio::sync::Mutex<()>,
    /// Devices of the fan-out not done yet.
    pub remaining: AtomicUsize,
    /// The entry's lease and key lock were released (with its acknowledgement).
    pub released: AtomicBool,
}

impl<'a> EntryCtx<'a> {
    pub fn new(
        worker: &Worker,
        entry: &'a Entry,
        fields: &'a HashMap<String, String>,
        event: &'a Event,
    ) -> EntryCtx<'a> {
        let keys = &worker.db.keys;
        let partition = keys.partition_of(&entry.stream).unwrap_or(0);
        EntryCtx {
            outcomes: keys.entry_outcomes(partition, &event.id, fields),
            lease: keys.lease(partition, &entry.id),
            order: Order::of(keys, partition, event, fields),
            holder: format!("{}#{:08x}/{}", worker.consumer, worker.nonce, entry.id),
            claimed: Mutex::default(),
            last_beat: Mutex::new(Instant::now()),
            first_claim: Mutex::new(None),
            beats: AtomicU8::new(QUIET),
            lost: AtomicBool::new(false),
            send_window: worker.policy.lease(),
            marks: Mutex::default(),
            writing_marks: tokio::sync::Mutex::default(),
            remaining: AtomicUsize::new(0),
            released: AtomicBool::new(false),
            notice: Notice::of(event, worker.event_defaults.site_url.as_deref()),
            entry,
            fields,
            event,
            partition,
        }
    }

    /// Whether this processor may still send a push for the entry: it still owns
    /// it, and its last heartbeat landed within a lease (so its claims, a lease
    /// longer than a whole push, cover the push about to be sent).
    pub fn may_send(&self) -> bool {
        !self.lost() && self.last_beat.lock().elapsed() < self.send_window
    }

    /// Another consumer took the entry over: this processor sends nothing more
    /// and does not acknowledge it.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Whether the entry may be acknowledged without releasing its lease: no
    /// heartbeat was sent, and from now on none will be (one could otherwise
    /// find the lease taken over after the acknowledgement). Unordered
    /// entries only: a key's lock is always released.
    pub fn quiet_end(&self) -> bool {
        self.order.is_none()
            && match self
                .beats
                .compare_exchange(QUIET, ENDING, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => true,
                // Asked again (the acknowledgement retried while Redis was away).
                Err(now) => now == ENDING,
            }
    }

    /// Whether a heartbeat may go out (none once the entry ends quietly).
    fn may_beat(&self) -> bool {
        match self
            .beats
            .compare_exchange(QUIET, BEATING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(now) => now == BEATING,
        }
    }

    fn beat_landed(&self) {
        *self.last_beat.lock() = Instant::now();
    }

    pub fn lock(&self) -> (&str, &str) {
        match &self.order {
            Some(order) => (order.lock.as_str(), self.holder.as_str()),
            None => (self.lease.as_str(), ""),
        }
    }
}

/// A device as the claim found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Claimed for this processor; `previous` is the last failed attempt's state, if any.
    Claimed { previous: Option<String> },
    /// Settled already: `delivered`, `gone`, `dead`, `superseded` or `expired`.
    Done(String),
    /// Another processor is pushing it right now.
    Busy,
    /// A newer event of the key was claimed for it: settled as superseded.
    Superseded { by: String },
    /// As stored (`inspect`): '' for nothing yet.
    State(String),
}

/// Stops the heartbeats' extension of a device's claim once it is settled (dropped).
pub(super) struct Settling<'c> {
    claimed: &'c Mutex<HashSet<String>>,
    device: &'c str,
}

impl<'c> Settling<'c> {
    pub fn new(ctx: &'c EntryCtx<'_>, device: &'c str) -> Settling<'c> {
        Settling {
            claimed: &ctx.claimed,
            device,
        }
    }
}

impl Drop for Settling<'_> {
    fn drop(&mut self) {
        self.claimed.lock().remove(self.device);
    }
}

/// What the first claim of an entry found.
pub(super) enum Begun {
    Ok(Vec<Verdict>),
    /// Another consumer has the entry, or works on it.
    Taken,
    /// Another event of the key is in progress (its holder).
    KeyBusy(String),
}

impl Worker {
    /// Claims `devices` (their subscription ids); with `first`, the entry too.
    /// With `inspect`, nothing is claimed: each device's stored state is told.
    pub(super) async fn claim(
        &self,
        ctx: &EntryCtx<'_>,
        first: bool,
        devices: &[&str],
        inspect: bool,
    ) -> anyhow::Result<Begun> {
        let (lock, _) = ctx.lock();
        let register = ctx
            .order
            .as_ref()
            .map_or(ctx.outcomes.as_str(), |o| o.register.as_str());
        let mut call = Call::default();
        call.key(&ctx.entry.stream)
            .key(&ctx.outcomes)
            .key(&ctx.lease)
            .key(lock)
            .key(register)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(&ctx.entry.id)
            .arg(if self.noack { "1" } else { "0" })
            .arg(self.policy.lease().as_millis() as u64)
            .arg(if first { "1" } else { "0" })
            .arg(&ctx.holder)
            .arg(self.claim_life.as_millis() as u64)
            .arg(self.outcomes_life.as_secs().max(1))
            .arg(ctx.order.as_ref().map_or("", |o| o.point.as_str()))
            .arg(self.register_ttl.as_secs().max(1))
            .arg(if inspect { "inspect" } else { "claim" });
        for device in devices {
            call.arg(device);
        }
        let sent = Instant::now();
        let reply: Vec<String> =
            redis::from_redis_value(self.claims.call(&ctx.entry.stream, call).await?)?;
        let mut items = reply.into_iter();
        match items.next().as_deref() {
            Some("ok") => {
                if first {
                    ctx.beat_landed();
                    ctx.first_claim.lock().get_or_insert(sent);
                }
            }
            Some("taken") => {
                ctx.lost.store(true, Ordering::Relaxed);
                return Ok(Begun::Taken);
            }
            Some("busy") => return Ok(Begun::KeyBusy(items.next().unwrap_or_default())),
            other => anyhow::bail!("claim script answered {other:?}"),
        }
        let verdicts: Vec<Verdict> = items
            .map(|item| {
                if inspect {
                    return Verdict::State(item);
                }
                let (word, rest) = item.split_once(' ').unwrap_or((item.as_str(), ""));
                match word {
                    "claimed" => Verdict::Claimed {
                        previous: (!rest.is_empty()).then(|| rest.to_string()),
                    },
                    "done" => Verdict::Done(rest.to_string()),
                    "busy" => Verdict::Busy,
                    "superseded" => Verdict::Superseded {
                        by: rest.to_string(),
                    },
                    _ => Verdict::State(item),
                }
            })
            .collect();
        anyhow::ensure!(
            verdicts.len() == devices.len(),
            "claim script answered for {} of {} devices",
            verdicts.len(),
            devices.len()
        );
        // From now until each is settled, heartbeats keep these claims alive.
        let mut claimed = ctx.claimed.lock();
        for (device, verdict) in devices.iter().zip(&verdicts) {
            if matches!(verdict, Verdict::Claimed { .. }) {
                claimed.insert(device.to_string());
            }
        }
        drop(claimed);
        Ok(Begun::Ok(verdicts))
    }

    /// The first claim of an entry, waiting (up to a lease, without using up an
    /// attempt) while another event of its key is in progress. `Ok(None)` when
    /// the key stayed busy.
    pub(super) async fn begin(
        &self,
        ctx: &EntryCtx<'_>,
        devices: &[&str],
        inspect: bool,
    ) -> anyhow::Result<Option<Begun>> {
        let deadline = tokio::time::Instant::now() + self.policy.lease();
        let mut pause = Duration::from_millis(10);
        loop {
            match self.claim(ctx, true, devices, inspect).await? {
                Begun::KeyBusy(holder) => {
                    if tokio::time::Instant::now() >= deadline {
                        tracing::debug!(
                            holder,
                            "the key stayed busy; the entry waits without using up an attempt"
                        );
                        return Ok(None);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                begun => return Ok(Some(begun)),
            }
        }
    }

    /// Resets the entry's idle time and extends its lease, its key's lock and its
    /// devices' claims while it is still ours (see `refresh.lua`).
    pub(super) async fn heartbeat(&self, ctx: &EntryCtx<'_>) {
        let (lock, holder) = ctx.lock();
        if !ctx.may_beat() {
            return;
        }
        let devices: Vec<String> = ctx.claimed.lock().iter().cloned().collect();
        let call = async {
            let mut conn = self.db.side_conn();
            let mut invocation = script(&REFRESH, include_str!("refresh.lua")).prepare_invoke();
            invocation
                .key(&ctx.entry.stream)
                .key(&ctx.lease)
                .key(lock)
                .key(&ctx.outcomes)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(&ctx.entry.id)
                .arg(self.policy.lease().as_millis() as u64)
                .arg(if self.noack { "1" } else { "0" })
                .arg(holder)
                .arg(&ctx.holder)
                .arg(self.claim_life.as_millis() as u64);
            for device in &devices {
                invocation.arg(device);
            }
            anyhow::Ok(invocation.invoke_async::<i64>(&mut conn).await?)
        };
        // A heartbeat that does not land within one interval is as good as lost: the
        // next one comes one interval later, still within the lease (four intervals).
        let refreshed = tokio::time::timeout(self.policy.heartbeat(), call)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within a heartbeat")));
        match refreshed {
            Ok(1) => ctx.beat_landed(),
            // The attempt ended while this heartbeat was on its way.
            Ok(2) => {}
            Ok(_) => {
                ctx.lost.store(true, Ordering::Relaxed);
                tracing::warn!(stream_id = %ctx.entry.id, "another consumer took this entry over while it was in progress; sending nothing more")
            }
            Err(e) => {
                tracing::debug!(stream_id = %ctx.entry.id, error = %format!("{e:#}"), "heartbeat failed")
            }
        }
    }
}
