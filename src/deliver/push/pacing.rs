//! How fast herald may push to whom, below the breaker's all-or-nothing:
//!
//! - **A slot per push service.** At most `push.service_share` of
//!   `worker.concurrency` pushes to one origin are in flight at once, so a slow
//!   or hanging service holds that share and no more; the other services'
//!   pushes keep flowing. A push that finds its service's slots taken waits at
//!   most `push.connect_timeout` for one, then is not sent (the entry retries
//!   later without using up an attempt).
//! - **A wait per subscription.** A `429` (or WNS's `406`) is about one device
//!   first: that subscription is left alone for the `Retry-After` asked (or
//!   `retry.base_delay`), in this process. Its other events wait too, and no
//!   other device is slowed.
//!
//! Both maps are bounded and neither lock can be poisoned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Subscriptions remembered as waiting before the expired ones are forgotten.
const MAX_WAITS: usize = 100_000;
/// Origins with a slot semaphore before the idle ones are forgotten.
const MAX_ORIGINS: usize = 10_000;

pub struct Pacing {
    per_origin: usize,
    slot_wait: Duration,
    default_wait: Duration,
    origins: Mutex<HashMap<String, Arc<Semaphore>>>,
    waits: Mutex<HashMap<String, Instant>>,
}

impl Pacing {
    /// `concurrency × share` slots per origin (at least one); a push waits at most
    /// `slot_wait` for one; a `429` without `Retry-After` slows its subscription for `default_wait`.
    pub fn new(
        concurrency: usize,
        share: f64,
        slot_wait: Duration,
        default_wait: Duration,
    ) -> Pacing {
        let per_origin =
            ((concurrency as f64 * share).ceil() as usize).clamp(1, concurrency.max(1));
        Pacing {
            per_origin,
            slot_wait,
            default_wait,
            origins: Mutex::new(HashMap::new()),
            waits: Mutex::new(HashMap::new()),
        }
    }

    /// A slot to push to `origin`, or `None` when its slots stayed taken for `slot_wait`.
    pub async fn slot(&self, origin: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut origins = self.origins.lock();
            if !origins.contains_key(origin) && origins.len() >= MAX_ORIGINS {
                // Forget the origins nobody is pushing to right now.
                origins.retain(|_, s| {
                    Arc::strong_count(s) > 1 || s.available_permits() < self.per_origin
                });
            }
            origins
                .entry(origin.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_origin)))
                .clone()
        };
        tokio::time::timeout(self.slot_wait, semaphore.acquire_owned())
            .await
            .ok()
            .map(|permit| permit.expect("the semaphore is never closed"))
    }

    /// How long `subscription` must still be left alone, if at all.
    pub fn waiting(&self, subscription: &str, now: Instant) -> Option<Duration> {
        let waits = self.waits.lock();
        let until = *waits.get(subscription)?;
        (now < until).then(|| until - now)
    }

    /// The service asked to slow down for this subscription: leave it alone for
    /// `wait` (already bounded by `push.max_retry_after`), or the default wait.
    pub fn slow_down(&self, subscription: &str, wait: Option<Duration>, now: Instant) {
        let wait = wait.unwrap_or(self.default_wait);
        let Some(until) = now.checked_add(wait) else {
            return;
        };
        let mut waits = self.waits.lock();
        if waits.len() >= MAX_WAITS {
            waits.retain(|_, until| *until > now);
            if waits.len() >= MAX_WAITS {
                // Still full of live waits: the entry's own backoff still applies.
                return;
            }
        }
        waits.insert(subscription.to_string(), until);
    }

    /// Subscriptions waiting now (the expired ones are forgotten on the way).
    pub fn waiting_count(&self, now: Instant) -> usize {
        let mut waits = self.waits.lock();
        waits.retain(|_, until| *until > now);
        waits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_service_gets_its_share_of_slots_and_no_more() {
        let pacing = Pacing::new(10, 0.3, Duration::from_millis(50), Duration::from_secs(1));
        let held: Vec<_> =
            futures::future::join_all((0..3).map(|_| pacing.slot("https://slow"))).await;
        assert!(held.iter().all(Option::is_some));
        assert!(
            pacing.slot("https://slow").await.is_none(),
            "a fourth waits, then gives up"
        );
        assert!(
            pacing.slot("https://other").await.is_some(),
            "other services are not held up"
        );
        drop(held);
        assert!(pacing.slot("https://slow").await.is_some());
    }

    #[test]
    fn a_wait_concerns_one_subscription_and_ends() {
        let pacing = Pacing::new(10, 0.5, Duration::from_millis(50), Duration::from_secs(5));
        let t0 = Instant::now();
        pacing.slow_down("a", Some(Duration::from_secs(2)), t0);
        pacing.slow_down("b", None, t0);
        pacing.slow_down("c", Some(Duration::MAX), t0);
        assert_eq!(pacing.waiting("a", t0), Some(Duration::from_secs(2)));
        assert_eq!(pacing.waiting("b", t0), Some(Duration::from_secs(5)));
        assert_eq!(pacing.waiting("z", t0), None);
        assert_eq!(pacing.waiting("a", t0 + Duration::from_secs(3)), None);
        assert_eq!(pacing.waiting_count(t0 + Duration::from_secs(3)), 1);
    }
}
