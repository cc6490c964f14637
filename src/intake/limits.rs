//! Rate limits per credential: token buckets (`governor`) for a service
//! token's requests and events and for a subscriber's requests, so that one
//! runaway producer or one script with a user's token cannot fill Redis or
//! starve the others. Beyond a bucket the API answers `429` with `Retry-After`.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::intake::auth::Caller;
use crate::shared::config::{LimitSettings, Rate};

/// A request over a limit: which setting, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// The setting that limits it (`api.limits.token_events`, …).
    pub limit: &'static str,
    pub retry_after: Duration,
}

struct Bucket {
    setting: &'static str,
    limiter: DefaultKeyedRateLimiter<String>,
}

/// The buckets of every credential.
pub struct Limits {
    token_requests: Option<Bucket>,
    token_events: Option<Bucket>,
    subscriber_requests: Option<Bucket>,
    /// Checks since the idle keys were last dropped.
    checks: AtomicU64,
}

/// Every this many checks, buckets full again are forgotten (subscriber keys come and go).
const SWEEP_EVERY: u64 = 4096;

fn bucket(setting: &'static str, rate: Rate) -> Option<Bucket> {
    let per_second = NonZeroU32::new(rate.per_second)?;
    let burst = NonZeroU32::new(rate.burst).unwrap_or(per_second);
    Some(Bucket {
        setting,
        limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
    })
}

impl Limits {
    pub fn from_settings(settings: &LimitSettings) -> Limits {
        Limits {
            token_requests: bucket("api.limits.token_requests", settings.token_requests),
            token_events: bucket("api.limits.token_events", settings.token_events),
            subscriber_requests: bucket(
                "api.limits.subscriber_requests",
                settings.subscriber_requests,
            ),
            checks: AtomicU64::new(0),
        }
    }

    /// One request by `caller` (open mode is not limited: loopback only).
    pub fn request(&self, caller: &Caller) -> Result<(), Limited> {
        self.sweep();
        match caller {
            Caller::Open => Ok(()),
            Caller::Service { name, .. } => take(self.token_requests.as_ref(), name, 1),
            Caller::Subscriber { user, .. } => take(self.subscriber_requests.as_ref(), user, 1),
        }
    }

    /// `count` events published by `caller`.
    pub fn events(&self, caller: &Caller, count: usize) -> Result<(), Limited> {
        match caller {
            Caller::Service { name, .. } => take(self.token_events.as_ref(), name, count),
            Caller::Open | Caller::Subscriber { .. } => Ok(()),
        }
    }

    fn sweep(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            for bucket in [
                &self.token_requests,
                &self.token_events,
                &self.subscriber_requests,
            ]
            .into_iter()
            .flatten()
            {
                bucket.limiter.retain_recent();
            }
        }
    }
}

fn take(bucket: Option<&Bucket>, key: &str, count: usize) -> Result<(), Limited> {
    let Some(bucket) = bucket else { return Ok(()) };
    let Some(n) = u32::try_from(count).ok().and_then(NonZeroU32::new) else {
        return Ok(());
    };
    let key = key.to_string();
    match bucket.limiter.check_key_n(&key, n) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => Err(Limited {
            limit: bucket.setting,
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        }),
        // More than the burst at once can never pass; validation keeps the
        // events' burst at least api.max_batch, so this is a bucket of requests.
        Err(_) => Err(Limited {
            limit: bucket.setting,
            retry_after: Duration::from_secs(1),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::config::Scope;

    fn service(name: &str) -> Caller {
        Caller::Service {
            name: name.into(),
            scopes: vec![Scope::Publish],
        }
    }

    #[test]
    fn each_credential_has_its_own_bucket_and_hears_when_to_come_back() {
        let limits = Limits::from_settings(&LimitSettings {
            token_requests: Rate {
                per_second: 1,
                burst: 2,
            },
            token_events: Rate {
                per_second: 10,
                burst: 100,
            },
            subscriber_requests: Rate {
                per_second: 0,
                burst: 0,
            },
        });
        assert!(limits.request(&service("a")).is_ok());
        assert!(limits.request(&service("a")).is_ok());
        let limited = limits.request(&service("a")).expect_err("over the burst");
        assert_eq!(limited.limit, "api.limits.token_requests");
        assert!(
            limited.retry_after > Duration::ZERO && limited.retry_after <= Duration::from_secs(1)
        );
        assert!(
            limits.request(&service("b")).is_ok(),
            "another token is not slowed"
        );
        assert!(limits.events(&service("a"), 100).is_ok());
        assert_eq!(
            limits.events(&service("a"), 1).expect_err("spent").limit,
            "api.limits.token_events"
        );
        let user = Caller::Subscriber {
            user: "u".into(),
            topics: vec![],
        };
        for _ in 0..100 {
            assert!(limits.request(&user).is_ok(), "0 per second is no limit");
        }
        assert!(limits.request(&Caller::Open).is_ok());
    }
}
