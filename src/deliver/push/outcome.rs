//! What a push service's answer means for herald: a pure classifier, so the
//! retry decisions are data that tests can read (see reference/webpush.md).

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The fate of one push to one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The push service accepted the message.
    Delivered,
    /// The subscription no longer exists: delete it, never retry.
    Gone,
    /// Try again later, not before `after` when the service said so.
    Retry { after: Option<Duration> },
    /// Retrying cannot help: dead-letter the message.
    DeadLetter { reason: &'static str },
}

impl Outcome {
    /// Delivered and gone are final for that subscription; the rest leave the entry pending.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Outcome::Delivered | Outcome::Gone)
    }

    /// A short, bounded name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Gone => "gone",
            Outcome::Retry { .. } => "retry",
            Outcome::DeadLetter { .. } => "dead_letter",
        }
    }
}

/// Classifies an HTTP answer. `host` is the push service's host (WNS answers 406 for throttling);
/// `body` is looked at only to tell a key mismatch from a bad token on 403. A
/// `Retry-After` longer than `max_wait` (or unreadable) is not honoured: the
/// retry then waits its ordinary backoff.
pub fn classify(
    status: u16,
    retry_after: Option<&str>,
    host: &str,
    body: &str,
    now: DateTime<Utc>,
    max_wait: Duration,
) -> Outcome {
    let after = retry_after.and_then(|v| parse_retry_after(v, now, max_wait));
    match status {
        200..=299 => Outcome::Delivered,
        404 | 410 => Outcome::Gone,
        429 => Outcome::Retry { after },
        406 if host.ends_with(".notify.windows.com") => Outcome::Retry { after },
        500..=599 => Outcome::Retry { after },
        // The subscription belongs to another VAPID key: it can never work for us.
        403 if is_key_mismatch(body) => Outcome::Gone,
        400 => Outcome::DeadLetter {
            reason: "push_bad_request",
        },
        401 | 403 => Outcome::DeadLetter {
            reason: "push_unauthorized",
        },
        413 => Outcome::DeadLetter {
            reason: "payload_too_large",
        },
        408 => Outcome::Retry { after },
        _ => Outcome::DeadLetter {
            reason: "push_rejected",
        },
    }
}

/// A failure before any answer (connect, TLS, timeout, reset) is transient.
pub fn classify_transport_error() -> Outcome {
    Outcome::Retry { after: None }
}

fn is_key_mismatch(body: &str) -> bool {
    let lower = body.to_ascii_lowercase();
    lower.contains("vapidpkhashmismatch") || lower.contains("mismatch") && lower.contains("sender")
}

/// `Retry-After` is either delay-seconds or an HTTP date (RFC 9110 §10.2.3).
/// Whatever a push service sends, the answer is a wait of at most `max_wait`, or
/// `None` (no wait honoured): for anything unreadable (negative, fractional,
/// empty, garbage) and for anything longer than `max_wait` (a huge number, a
/// date years ahead). A date already past means no wait. No arithmetic here can
/// overflow.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>, max_wait: Duration) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "longer than max_wait".
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let when: DateTime<Utc> = httpdate::parse_http_date(value).ok()?.into();
        // A date before now is no wait; chrono's subtraction of two valid times cannot overflow.
        (when - now).to_std().unwrap_or(Duration::ZERO)
    };
    (wait <= max_wait).then_some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(status: u16) -> Outcome {
        classify(status, None, "push.example.net", "", Utc::now(), HOUR)
    }

    #[test]
    fn statuses_follow_the_reference_table() {
        assert_eq!(at(201), Outcome::Delivered);
        assert_eq!(at(204), Outcome::Delivered);
        assert_eq!(at(404), Outcome::Gone);
        assert_eq!(at(410), Outcome::Gone);
        assert_eq!(at(429), Outcome::Retry { after: None });
        assert_eq!(at(500), Outcome::Retry { after: None });
        assert_eq!(at(503), Outcome::Retry { after: None });
        assert_eq!(
            at(400),
            Outcome::DeadLetter {
                reason: "push_bad_request"
            }
        );
        assert_eq!(
            at(401),
            Outcome::DeadLetter {
                reason: "push_unauthorized"
            }
        );
        assert_eq!(
            at(403),
            Outcome::DeadLetter {
                reason: "push_unauthorized"
            }
        );
        assert_eq!(
            at(413),
            Outcome::DeadLetter {
                reason: "payload_too_large"
            }
        );
        assert_eq!(
            at(406),
            Outcome::DeadLetter {
                reason: "push_rejected"
            }
        );
    }

    #[test]
    fn wns_throttling_is_a_retry() {
        let o = classify(406, None, "db5p.notify.windows.com", "", Utc::now(), HOUR);
        assert_eq!(o, Outcome::Retry { after: None });
    }

    #[test]
    fn a_key_mismatch_means_the_subscription_is_gone() {
        let o = classify(
            403,
            None,
            "web.push.apple.com",
            "{\"reason\":\"VapidPkHashMismatch\"}",
            Utc::now(),
            HOUR,
        );
        assert_eq!(o, Outcome::Gone);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let now = Utc::now();
        assert_eq!(
            parse_retry_after("2", now, HOUR),
            Some(Duration::from_secs(2))
        );
        assert_eq!(parse_retry_after(" 0 ", now, HOUR), Some(Duration::ZERO));
        let later = now + chrono::Duration::seconds(90);
        let date = httpdate::fmt_http_date(later.into());
        let parsed = parse_retry_after(&date, now, HOUR).expect("a date parses");
        assert!(
            parsed >= Duration::from_secs(88) && parsed <= Duration::from_secs(90),
            "{parsed:?}"
        );
        let o = classify(429, Some("7"), "x", "", now, HOUR);
        assert_eq!(
            o,
            Outcome::Retry {
                after: Some(Duration::from_secs(7))
            }
        );
    }

    #[test]
    fn a_hostile_retry_after_never_panics_and_never_waits_past_the_cap() {
        let now = Utc::now();
        let past = httpdate::fmt_http_date((now - chrono::Duration::days(3)).into());
        let far = "Thu, 01 Jan 2099 00:00:00 GMT";
        for (value, expected) in [
            ("18446744073709551615", None),
            ("18446744073709551616", None),
            ("99999999999999999999999999999999", None),
            ("3601", None),
            ("3600", Some(HOUR)),
            ("-5", None),
            ("1.5", None),
            ("", None),
            ("   ", None),
            ("soon", None),
            ("+7", None),
            ("0x10", None),
            ("7 seconds", None),
            ("\u{1F600}", None),
            (far, None),
            (past.as_str(), Some(Duration::ZERO)),
            ("Mon, 32 Foo 2026 99:99:99 GMT", None),
        ] {
            assert_eq!(parse_retry_after(value, now, HOUR), expected, "{value:?}");
        }
        // Even with no cap at all, the largest number and the farthest date are arithmetic-safe.
        assert_eq!(
            parse_retry_after("18446744073709551615", now, Duration::MAX),
            Some(Duration::from_secs(u64::MAX))
        );
        assert!(parse_retry_after(far, now, Duration::MAX).is_some());
        assert_eq!(
            classify(429, Some("18446744073709551615"), "x", "", now, HOUR),
            Outcome::Retry { after: None }
        );
    }
}
