//! Every Prometheus metric herald exports, named in one place, and the
//! functions that record them. Names follow Prometheus conventions: `herald_`
//! prefix, `_total` counters, base units (seconds). Labels are bounded: an
//! outcome, a reason from a fixed list, a push-service class, a partition, a
//! consumer group; never a user, an endpoint or an event id.
//!
//! | metric | type | labels | what |
//! | --- | --- | --- | --- |
//! | `herald_build_info` | gauge | `version` | always 1 |
//! | `herald_events_ingested_total` | counter | `result` (`added`, `duplicate`, `scheduled`, `spooled`) | events the API accepted |
//! | `herald_events_rejected_total` | counter | `reason` (the API's error code) | requests refused, and events refused for a conflicting id (`conflict`) |
//! | `herald_api_refused_total` | counter | `reason` (`unauthorized`: no valid token, `forbidden`: a scope or user it lacks) | API requests refused for their credential |
//! | `herald_api_rate_limited_total` | counter | `limit` (the setting: `api.limits.token_requests`, `api.limits.token_events`, `api.limits.subscriber_requests`) | API requests answered `429` |
//! | `herald_events_processed_total` | counter | `outcome` (`acked`, `unroutable` (a topic event nobody matches), `no_target` (a direct event not held), `held`, `pending`, `dead_lettered`, `superseded`, `taken_over`) | entries a worker finished processing |
//! | `herald_pushes_total` | counter | `outcome` (`delivered`, `gone`, `retry`, `dead_lettered`, `not_sent` (breaker open, subscription waiting, service full), `expired` (TTL over: not sent)), `service` | push attempts |
//! | `herald_push_duration_seconds` | histogram | `service` | one push request, sent to answered |
//! | `herald_delivery_latency_seconds` | histogram | | the event entering the stream to the push service accepting it |
//! | `herald_entries_reclaimed_total` | counter | | pending entries the reclaimer claimed for a retry |
//! | `herald_dead_letters_total` | counter | `reason` | dead letters written |
//! | `herald_spool_depth_events` | gauge | | events in the API's spool, waiting for Redis |
//! | `herald_breakers_open` | gauge | `service` | push-service origins whose breaker is open |
//! | `herald_subscriptions_waiting` | gauge | | subscriptions this worker leaves alone after their `429` |
//! | `herald_spool_quarantined_total` | counter | | spool records that could not be read, moved aside to `quarantine.log` |
//! | `herald_routing_index_refreshes_total` | counter | `how` (`rebuilt` from every subscription, `updated` from the changes since) | a worker's topic-routing index catching up with subscription changes |
//! | `herald_stream_length` | gauge | `partition` | `XLEN` of the event stream |
//! | `herald_group_lag` | gauge | `partition`, `group` | entries the group has not read yet |
//! | `herald_group_pending` | gauge | `partition`, `group` | entries read and not acknowledged |
//! | `herald_group_oldest_pending_age_seconds` | gauge | `partition`, `group` | age of the oldest pending entry (0 when none) |
//! | `herald_group_consumers` | gauge | `partition`, `group` | consumers in the group |
//! | `herald_dead_letter_length` | gauge | `partition` | `XLEN` of the dead-letter stream |
//! | `herald_scheduled_events` | gauge | `partition` | delayed events not due yet |
//! | `herald_held_events` | gauge | `partition` | direct events waiting for their user's first subscription |
//! | `herald_held_expired_events` | gauge | `partition` | held events whose TTL ran out before their user subscribed (a count kept in Redis) |
//!
//! The gauges sampled from Redis (stream, group, dead letters, scheduled,
//! held) come from the reclaimer role, every `admin.sample_interval`
//! (see `operate::stats::sample_loop`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets of one push request, in seconds.
const PUSH_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of publish-to-push latency, in seconds: includes retries, so up to hours.
const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0,
];

/// Installs the process-wide recorder (once; later calls return the same handle).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("herald_push_duration_seconds".into()),
                PUSH_BUCKETS,
            )
            .expect("buckets are not empty")
            .set_buckets_for_metric(
                Matcher::Full("herald_delivery_latency_seconds".into()),
                LATENCY_BUCKETS,
            )
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (a test harness); herald's own handle still renders.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed already; /metrics shows herald's only if it is this one");
        }
        gauge!("herald_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        // Series that exist from the start, at their true value, so that
        // `increase()` sees the first event and dashboards show 0, not "no data".
        counter!("herald_entries_reclaimed_total").increment(0);
        counter!("herald_spool_quarantined_total").increment(0);
        for service in ["fcm", "mozilla", "apple", "windows", "other"] {
            gauge!("herald_breakers_open", "service" => service).increment(0.0);
        }
        // Histogram samples queue until they are folded into their buckets: at
        // every scrape, and here, so that a process nobody scrapes (admin off,
        // no Prometheus) does not keep every sample it ever recorded.
        let upkeep = handle.clone();
        let started = std::thread::Builder::new()
            .name("herald-metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histogram samples are folded only when /metrics is scraped");
        }
        handle
    })
}

/// How often histogram samples are folded into their buckets without a scrape.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The Prometheus text exposition of everything recorded so far.
pub fn render() -> String {
    install().render()
}

/// The class of a push service, from its endpoint's host: a bounded label.
pub fn service_class(host: &str) -> &'static str {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let under = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
    if under("googleapis.com") {
        "fcm"
    } else if under("mozilla.com") {
        "mozilla"
    } else if under("push.apple.com") {
        "apple"
    } else if under("notify.windows.com") {
        "windows"
    } else {
        "other"
    }
}

/// The class of the push service of an endpoint or origin URL (`other` when it does not parse).
pub fn service_class_of(url: &str) -> &'static str {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(service_class))
        .unwrap_or("other")
}

pub fn event_ingested(result: &'static str) {
    counter!("herald_events_ingested_total", "result" => result).increment(1);
}

pub fn event_rejected(reason: &'static str) {
    counter!("herald_events_rejected_total", "reason" => reason).increment(1);
}

pub fn api_refused(reason: &'static str) {
    counter!("herald_api_refused_total", "reason" => reason).increment(1);
}

pub fn rate_limited(limit: &'static str) {
    counter!("herald_api_rate_limited_total", "limit" => limit).increment(1);
}

pub fn event_processed(outcome: &'static str) {
    counter!("herald_events_processed_total", "outcome" => outcome).increment(1);
}

pub fn push(outcome: &'static str, service: &'static str) {
    counter!("herald_pushes_total", "outcome" => outcome, "service" => service).increment(1);
}

pub fn push_duration(service: &'static str, took: Duration) {
    histogram!("herald_push_duration_seconds", "service" => service).record(took.as_secs_f64());
}

/// From the stream id's time (when the event entered the stream) to now.
pub fn delivery_latency(stream_id: &str) {
    let Some(added) = crate::shared::stream::id_time(stream_id) else {
        return;
    };
    let took = (chrono::Utc::now() - added).num_milliseconds().max(0);
    histogram!("herald_delivery_latency_seconds").record(took as f64 / 1000.0);
}

pub fn reclaimed(entries: u64) {
    counter!("herald_entries_reclaimed_total").increment(entries);
}

/// Dead-letter reasons herald writes; anything else is counted as `other`.
const REASONS: &[&str] = &[
    "max_deliveries",
    "invalid_subscription",
    "push_rejected",
    "push_bad_request",
    "push_unauthorized",
    "payload_too_large",
    "vapid_error",
    "undecodable",
    "deleted_while_pending",
    "unroutable",
    "hold_full",
    "panic",
    "retry_expired",
    "internal",
];

pub fn dead_lettered(reason: &str) {
    let reason = REASONS
        .iter()
        .find(|r| **r == reason)
        .copied()
        .unwrap_or("other");
    counter!("herald_dead_letters_total", "reason" => reason).increment(1);
}

pub fn spool_depth(events: u64) {
    gauge!("herald_spool_depth_events").set(events as f64);
}

pub fn breaker_opened(service: &'static str) {
    gauge!("herald_breakers_open", "service" => service).increment(1.0);
}

pub fn breaker_closed(service: &'static str) {
    gauge!("herald_breakers_open", "service" => service).decrement(1.0);
}

pub fn subscriptions_waiting(n: usize) {
    gauge!("herald_subscriptions_waiting").set(n as f64);
}

pub fn routing_index_refreshed(how: &'static str) {
    counter!("herald_routing_index_refreshes_total", "how" => how).increment(1);
}

pub fn spool_quarantined() {
    counter!("herald_spool_quarantined_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_services_are_classed_by_host() {
        assert_eq!(service_class("fcm.googleapis.com"), "fcm");
        assert_eq!(
            service_class("updates.push.services.mozilla.com"),
            "mozilla"
        );
        assert_eq!(service_class("web.push.apple.com"), "apple");
        assert_eq!(service_class("db5p.notify.windows.com"), "windows");
        assert_eq!(service_class("push.example.org"), "other");
        assert_eq!(service_class("evilgoogleapis.com"), "other");
    }
}
