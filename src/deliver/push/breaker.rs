//! A circuit breaker per push-service origin. A 429 opens it at once (for the
//! `Retry-After` asked, or `breaker.open_for`); a burst of 401/403, 5xx or
//! transport failures opens it too. While open, nothing is sent there: pushes
//! come back as "retry after the breaker closes" without a request. When the
//! time is up one push goes through (half-open); its success closes the
//! breaker, its failure opens it again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::shared::config::BreakerSettings;

#[derive(Debug, Default)]
struct State {
    failures: VecDeque<Instant>,
    open_until: Option<Instant>,
    /// A half-open probe is in flight: everyone else keeps waiting.
    probing: bool,
}

/// What happened to one request, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The service works (any answer that says nothing about its health is this too).
    Healthy,
    /// 401/403, 5xx, timeout or connection failure.
    Failure,
    /// 429: the service asks us to slow down, possibly for how long.
    Throttled(Option<Duration>),
}

/// Breakers of every origin of one process.
pub struct Breakers {
    settings: BreakerSettings,
    states: Mutex<HashMap<String, State>>,
}

impl Breakers {
    pub fn new(settings: BreakerSettings) -> Breakers {
        Breakers {
            settings,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok` to send now; `Err(wait)` while the breaker is open.
    pub fn admit(&self, origin: &str, now: Instant) -> Result<(), Duration> {
        let mut states = self.states.lock().expect("breaker lock");
        let Some(state) = states.get_mut(origin) else {
            return Ok(());
        };
        match state.open_until {
            None => Ok(()),
            Some(until) if now < until => Err(until - now),
            // Time is up: one probe goes through; the rest wait for its answer.
            Some(_) if state.probing => Err(Duration::from_secs(1)),
            Some(_) => {
                state.probing = true;
                Ok(())
            }
        }
    }

    /// Records the answer of a request that was admitted.
    pub fn record(&self, origin: &str, signal: Signal, now: Instant) {
        let mut states = self.states.lock().expect("breaker lock");
        let state = states.entry(origin.to_string()).or_default();
        let was_probing = std::mem::take(&mut state.probing);
        match signal {
            Signal::Healthy => {
                if state.open_until.take().is_some() {
                    tracing::info!(origin, "push service answers again: breaker closed");
                    crate::shared::metrics::breaker_closed(
                        crate::shared::metrics::service_class_of(origin),
                    );
                }
                state.failures.clear();
            }
            Signal::Throttled(after) => {
                self.open(origin, state, after.unwrap_or(self.settings.open_for), now)
            }
            Signal::Failure => {
                state.failures.push_back(now);
                while state
                    .failures
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.settings.window)
                {
                    state.failures.pop_front();
                }
                if was_probing || state.failures.len() >= self.settings.failures_to_open as usize {
                    self.open(origin, state, self.settings.open_for, now);
                }
            }
        }
    }

    fn open(&self, origin: &str, state: &mut State, for_: Duration, now: Instant) {
        if state.open_until.replace(now + for_).is_none() {
            crate::shared::metrics::breaker_opened(crate::shared::metrics::service_class_of(
                origin,
            ));
        }
        state.failures.clear();
        tracing::warn!(origin, open_for = %humantime::format_duration(for_), "breaker open: no pushes to this service until then");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers() -> Breakers {
        Breakers::new(BreakerSettings {
            failures_to_open: 3,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
        })
    }

    #[test]
    fn a_429_opens_for_the_time_asked_then_half_opens_for_one_probe() {
        let b = breakers();
        let t0 = Instant::now();
        b.record(
            "https://p",
            Signal::Throttled(Some(Duration::from_secs(2))),
            t0,
        );
        assert_eq!(
            b.admit("https://p", t0 + Duration::from_secs(1)),
            Err(Duration::from_secs(1))
        );
        assert!(
            b.admit("https://other", t0).is_ok(),
            "other origins are not affected"
        );
        let later = t0 + Duration::from_secs(2);
        assert!(b.admit("https://p", later).is_ok(), "the probe");
        assert!(
            b.admit("https://p", later).is_err(),
            "everyone else waits for it"
        );
        b.record("https://p", Signal::Healthy, later);
        assert!(b.admit("https://p", later).is_ok());
    }

    #[test]
    fn a_burst_of_failures_opens_and_a_failed_probe_reopens() {
        let b = breakers();
        let t0 = Instant::now();
        b.record("https://p", Signal::Failure, t0);
        b.record("https://p", Signal::Failure, t0);
        assert!(b.admit("https://p", t0).is_ok());
        b.record("https://p", Signal::Failure, t0);
        assert!(b.admit("https://p", t0).is_err());
        let later = t0 + Duration::from_secs(30);
        assert!(b.admit("https://p", later).is_ok());
        b.record("https://p", Signal::Failure, later);
        assert!(b
            .admit("https://p", later + Duration::from_secs(1))
            .is_err());
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_open() {
        let b = breakers();
        let t0 = Instant::now();
        for i in 0..5 {
            b.record(
                "https://p",
                Signal::Failure,
                t0 + Duration::from_secs(11 * i),
            );
        }
        assert!(b.admit("https://p", t0 + Duration::from_secs(44)).is_ok());
    }
}
