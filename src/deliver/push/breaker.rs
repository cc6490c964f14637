//! A circuit breaker per push-service origin, opened only on evidence that the
//! service as a whole is failing: `breaker.failures_to_open` distinct
//! subscriptions whose pushes failed (connect errors, timeouts, 5xx, 429,
//! 401/403) within `breaker.window`, failures being at least half of the
//! service's answers in that window. One device's failures, however many, only
//! concern that device (see [`super::pacing`]).
//!
//! While open (`breaker.open_for`: no one device's `Retry-After` decides for
//! the whole service), nothing is sent there: pushes come back "not sent, retry
//! after the breaker closes" without a request. When the time is up one push
//! goes through (half-open); its success closes the breaker, its failure opens
//! it again, except a `429`, which is about that one device. The probe's slot is given back on every way out of a push (an
//! [`Admission`] dropped without an answer), so a breaker always closes again
//! once the service answers well.
//!
//! The state lives behind a lock that a panic cannot poison, and no time is
//! computed from outside input without a bound.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::shared::config::BreakerSettings;

/// How long pushes wait while a half-open probe is in flight.
const PROBE_WAIT: Duration = Duration::from_secs(1);
/// Answer counts are kept in this many buckets over `breaker.window`.
const BUCKETS: u32 = 10;
/// Origins tracked before closed, quiet ones are forgotten.
const MAX_ORIGINS: usize = 10_000;

#[derive(Debug, Default)]
struct State {
    open_until: Option<Instant>,
    /// A half-open probe is in flight: everyone else keeps waiting.
    probing: bool,
    /// Answers per time bucket within the window: `(bucket start, ok, failed)`.
    answers: VecDeque<(Instant, u32, u32)>,
    /// Recent failures: when, and which subscription (hashed).
    failures: VecDeque<(Instant, u64)>,
}

/// What one answer says about the push service's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal<'a> {
    /// The service works (any answer that says nothing against its health is this too).
    Healthy,
    /// A connect error, timeout, 5xx, 429 or 401/403 for this subscription;
    /// `throttled` for a 429 (or WNS's 406): about that device first.
    Failure {
        subscription: &'a str,
        throttled: bool,
    },
}

/// Breakers of every origin of one process.
pub struct Breakers {
    settings: BreakerSettings,
    states: Mutex<HashMap<String, State>>,
}

/// Leave to send one push. Tell it the answer with [`Admission::record`]; dropped
/// without one (the push ended early), it gives a half-open probe's slot back.
pub struct Admission<'a> {
    breakers: &'a Breakers,
    origin: &'a str,
    probe: bool,
}

impl Admission<'_> {
    pub fn record(mut self, signal: Signal<'_>) {
        let probe = std::mem::take(&mut self.probe);
        self.breakers
            .record(self.origin, signal, probe, Instant::now());
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.probe {
            if let Some(state) = self.breakers.states.lock().get_mut(self.origin) {
                state.probing = false;
            }
        }
    }
}

/// `now + wait`, never overflowing (a wait that cannot be added is a day).
fn after(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

impl Breakers {
    pub fn new(settings: BreakerSettings) -> Breakers {
        Breakers {
            settings,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// Leave to send now, or `Err(wait)` while the origin's breaker is open.
    pub fn admit<'a>(&'a self, origin: &'a str, now: Instant) -> Result<Admission<'a>, Duration> {
        let mut states = self.states.lock();
        let probe = match states.get_mut(origin) {
            None => false,
            Some(state) => match state.open_until {
                None => false,
                Some(until) if now < until => return Err(until - now),
                // Time is up: one probe goes through; the rest wait for its answer.
                Some(_) if state.probing => return Err(PROBE_WAIT),
                Some(_) => {
                    state.probing = true;
                    true
                }
            },
        };
        Ok(Admission {
            breakers: self,
            origin,
            probe,
        })
    }

    /// Origins whose breaker is open now, with how long they stay so.
    pub fn open(&self, now: Instant) -> Vec<(String, Duration)> {
        self.states
            .lock()
            .iter()
            .filter_map(|(origin, s)| {
                s.open_until
                    .map(|until| (origin.clone(), until.saturating_duration_since(now)))
            })
            .collect()
    }

    fn record(&self, origin: &str, signal: Signal<'_>, probe: bool, now: Instant) {
        let mut states = self.states.lock();
        if !states.contains_key(origin) && states.len() >= MAX_ORIGINS {
            // Many origins (hostile registrations, say): forget the closed, quiet ones.
            states.retain(|_, s| s.open_until.is_some() || !s.failures.is_empty());
        }
        let state = states.entry(origin.to_string()).or_default();
        if probe {
            state.probing = false;
        }
        // A probe refused with one device's 429 says the service answers: it closes.
        let signal = match signal {
            Signal::Failure {
                throttled: true, ..
            } if probe => Signal::Healthy,
            other => other,
        };
        self.count(state, matches!(signal, Signal::Healthy), now);
        match signal {
            Signal::Healthy => {
                // Only the probe's answer closes: a success admitted before the breaker
                // opened says nothing about the service now.
                if probe && state.open_until.take().is_some() {
                    state.failures.clear();
                    tracing::info!(origin, "push service answers again: breaker closed");
                    crate::shared::metrics::breaker_closed(
                        crate::shared::metrics::service_class_of(origin),
                    );
                }
            }
            Signal::Failure { subscription, .. } => {
                let window = self.settings.window;
                state.failures.push_back((now, hash(subscription)));
                while state
                    .failures
                    .front()
                    .is_some_and(|(t, _)| now.saturating_duration_since(*t) > window)
                {
                    state.failures.pop_front();
                }
                let need = self.settings.failures_to_open as usize;
                while state.failures.len() > need.saturating_mul(4).max(16) {
                    state.failures.pop_front();
                }
                // A failed probe opens it again; otherwise only enough evidence opens it.
                if probe || (state.open_until.is_none() && self.service_failing(state)) {
                    self.open_state(origin, state, self.settings.open_for, now);
                }
            }
        }
    }

    /// Counts an answer in its time bucket and drops buckets older than the window.
    fn count(&self, state: &mut State, ok: bool, now: Instant) {
        let width = (self.settings.window / BUCKETS).max(Duration::from_millis(1));
        match state.answers.back_mut() {
            Some((start, o, f)) if now.saturating_duration_since(*start) < width => {
                if ok {
                    *o = o.saturating_add(1);
                } else {
                    *f = f.saturating_add(1);
                }
            }
            _ => state.answers.push_back((now, ok as u32, !ok as u32)),
        }
        while state
            .answers
            .front()
            .is_some_and(|(t, _, _)| now.saturating_duration_since(*t) > self.settings.window)
        {
            state.answers.pop_front();
        }
    }

    /// Enough distinct subscriptions failed, and failures are at least half the answers.
    fn service_failing(&self, state: &State) -> bool {
        let distinct: HashSet<u64> = state.failures.iter().map(|(_, s)| *s).collect();
        let (ok, failed) = state
            .answers
            .iter()
            .fold((0u64, 0u64), |(o, f), (_, a, b)| {
                (o + *a as u64, f + *b as u64)
            });
        distinct.len() >= self.settings.failures_to_open as usize && failed >= ok
    }

    fn open_state(&self, origin: &str, state: &mut State, wait: Duration, now: Instant) {
        if state.open_until.replace(after(now, wait)).is_none() {
            crate::shared::metrics::breaker_opened(crate::shared::metrics::service_class_of(
                origin,
            ));
        }
        state.failures.clear();
        tracing::warn!(origin, open_for = %humantime::format_duration(wait), "breaker open: the push service fails for many subscriptions; no pushes to it until then");
    }
}

fn hash(subscription: &str) -> u64 {
    let mut h = DefaultHasher::new();
    subscription.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "https://p";

    fn breakers() -> Breakers {
        Breakers::new(BreakerSettings {
            failures_to_open: 3,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
        })
    }

    fn fail<'a>(sub: &'a str) -> Signal<'a> {
        Signal::Failure {
            subscription: sub,
            throttled: false,
        }
    }

    #[test]
    fn one_device_failing_again_and_again_never_opens_the_service() {
        let b = breakers();
        let t0 = Instant::now();
        for _ in 0..100 {
            b.record(P, fail("one-device"), false, t0);
        }
        assert!(
            b.admit(P, t0).is_ok(),
            "one device is no evidence about the service"
        );
    }

    #[test]
    fn distinct_devices_failing_open_then_a_probe_decides() {
        let b = breakers();
        let t0 = Instant::now();
        b.record(P, fail("a"), false, t0);
        b.record(P, fail("b"), false, t0);
        assert!(b.admit(P, t0).is_ok());
        b.record(P, fail("c"), false, t0);
        assert_eq!(
            b.admit(P, t0 + Duration::from_secs(1)).err(),
            Some(Duration::from_secs(29))
        );
        assert!(
            b.admit("https://other", t0).is_ok(),
            "other origins are not affected"
        );
        let later = t0 + Duration::from_secs(30);
        let probe = b.admit(P, later).expect("the probe");
        assert_eq!(
            b.admit(P, later).err(),
            Some(PROBE_WAIT),
            "everyone else waits for it"
        );
        drop(probe);
        let _probe = b
            .admit(P, later)
            .expect("a probe that ended early gave its slot back");
        b.record(P, Signal::Healthy, true, later);
        assert!(b.admit(P, later).is_ok(), "the probe's success closed it");
    }

    #[test]
    fn a_failed_probe_opens_again_but_one_devices_429_does_not() {
        let b = breakers();
        let t0 = Instant::now();
        for s in ["a", "b", "c"] {
            b.record(P, fail(s), false, t0);
        }
        let later = t0 + Duration::from_secs(30);
        let _probe = b.admit(P, later).expect("the probe");
        b.record(
            P,
            Signal::Failure {
                subscription: "a",
                throttled: true,
            },
            true,
            later,
        );
        assert!(
            b.admit(P, later).is_ok(),
            "one device's 429 is no verdict on the service"
        );
        for s in ["a", "b", "c"] {
            b.record(P, fail(s), false, later);
        }
        let again = later + Duration::from_secs(30);
        let _probe = b.admit(P, again).expect("the probe");
        b.record(P, fail("d"), true, again);
        assert_eq!(
            b.admit(P, again).err(),
            Some(Duration::from_secs(30)),
            "a probe's 503 opens it again, for breaker.open_for"
        );
    }

    #[test]
    fn failures_among_many_successes_do_not_open() {
        let b = breakers();
        let t0 = Instant::now();
        for _ in 0..50 {
            b.record(P, Signal::Healthy, false, t0);
        }
        for s in ["a", "b", "c", "d"] {
            b.record(P, fail(s), false, t0);
        }
        assert!(
            b.admit(P, t0).is_ok(),
            "4 failures in 54 answers is not a failing service"
        );
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_open() {
        let b = breakers();
        let t0 = Instant::now();
        for (i, s) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            b.record(P, fail(s), false, t0 + Duration::from_secs(11 * i as u64));
        }
        assert!(b.admit(P, t0 + Duration::from_secs(44)).is_ok());
    }

    #[test]
    fn the_longest_wait_cannot_overflow() {
        let b = Breakers::new(BreakerSettings {
            failures_to_open: 3,
            window: Duration::from_secs(10),
            open_for: Duration::MAX,
        });
        let t0 = Instant::now();
        for s in ["a", "b", "c"] {
            b.record(P, fail(s), false, t0);
        }
        assert!(
            b.admit(P, t0).is_err(),
            "open, for as long as an Instant can say"
        );
    }
}
