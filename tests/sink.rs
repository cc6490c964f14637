//! The sink as a push service: what it accepts, refuses and records, and the
//! pusher's reading of its answers over real HTTP.

mod helpers;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald::deliver::push::vapid::VapidKey;
use herald::deliver::push::{Outcome, Pusher};
use herald::operate::sink::{Fault, Sink, SinkHandle, SinkOptions};
use herald::shared::config::Settings;
use herald::shared::event::{EventDefaults, EventInput};
use herald::shared::subscriptions::{Subscription, SubscriptionInput};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn sink(fast: bool) -> (SinkHandle, CancellationToken) {
    sink_with(fast, false).await
}

async fn sink_with(fast: bool, tls: bool) -> (SinkHandle, CancellationToken) {
    let sink = Sink::bind(SinkOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        fast,
        record: None,
        tls,
    })
    .await
    .expect("bind");
    let handle = sink.handle();
    let stop = CancellationToken::new();
    tokio::spawn(sink.run(stop.clone()));
    (handle, stop)
}

fn pusher() -> Pusher {
    pusher_trusting(None).expect("pusher")
}

fn pusher_trusting(extra_ca_file: Option<&std::path::Path>) -> anyhow::Result<Pusher> {
    pusher_with(|s| {
        if let Some(path) = extra_ca_file {
            s.push.extra_ca_file = path.to_path_buf();
        }
    })
}

fn pusher_with(adjust: impl FnOnce(&mut Settings)) -> anyhow::Result<Pusher> {
    let mut settings = Settings::default();
    settings.push.allow_insecure_endpoints = true;
    settings.push.vapid_subject = "mailto:tests@herald.invalid".into();
    adjust(&mut settings);
    Pusher::new(&settings, VapidKey::generate().0)
}

#[tokio::test]
async fn over_tls_a_push_goes_by_http2_to_a_service_trusted_through_extra_ca_file() {
    let (sink, _stop) = sink_with(false, true).await;
    assert!(
        sink.base_url().starts_with("https://"),
        "{}",
        sink.base_url()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("sink-ca.pem");
    std::fs::write(&ca, sink.ca_pem().expect("a TLS sink has an authority")).expect("write");
    let sub = subscription(&sink);

    // Not trusted: the handshake fails, the push is a retry and nothing arrives.
    let untrusted = pusher().push(&sub, &event("untrusted"), 60).await;
    assert!(
        matches!(untrusted.outcome, Outcome::Retry { .. }),
        "{untrusted:?}"
    );
    assert!(sink.delivered().is_empty());

    // Trusted: verified, decrypted, and over HTTP/2 (ALPN).
    let pusher = pusher_trusting(Some(&ca)).expect("pusher");
    for i in 0..3 {
        let report = pusher.push(&sub, &event(&format!("n{i}")), 60).await;
        assert_eq!(report.outcome, Outcome::Delivered, "{:?}", report.error);
    }
    let arrivals = sink.delivered();
    assert_eq!(arrivals.len(), 3);
    assert!(
        arrivals.iter().all(|a| a.http == "HTTP/2.0"),
        "{arrivals:?}"
    );
    assert_eq!(
        arrivals[0].plaintext.as_ref().expect("decrypted")["title"],
        "n0"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_tls_handshake_holds_up_no_other() {
    let (sink, _stop) = sink_with(false, true).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("sink-ca.pem");
    std::fs::write(&ca, sink.ca_pem().expect("authority")).expect("write");
    let sub = subscription(&sink);
    // A connection that says nothing: its handshake waits for the sink's own timeout.
    let address = sink.base_url().trim_start_matches("https://").to_string();
    let _silent = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connects");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Shorter than the sink's handshake timeout: a push held up behind the silent one fails.
    let pusher = pusher_with(|s| {
        s.push.extra_ca_file = ca;
        s.push.connect_timeout = Duration::from_secs(3);
        s.push.request_timeout = Duration::from_secs(3);
    })
    .expect("pusher");
    let report = pusher.push(&sub, &event("past the silent one"), 60).await;
    assert_eq!(report.outcome, Outcome::Delivered, "{:?}", report.error);
}

#[test]
fn an_unreadable_extra_ca_file_stops_the_pusher_saying_which_setting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nope.pem");
    let err = pusher_trusting(Some(&missing)).err().expect("refused");
    assert!(format!("{err:#}").contains("push.extra_ca_file"), "{err:#}");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    let err = pusher_trusting(Some(&not_pem)).err().expect("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("push.extra_ca_file") && text.contains("not.pem"),
        "{text}"
    );
}

fn subscription(sink: &SinkHandle) -> Subscription {
    let (_, browser) = sink.new_subscription();
    let input: SubscriptionInput =
        serde_json::from_value(json!({"user": "u-1", "subscription": browser})).expect("input");
    input
        .validate(
            &herald::shared::endpoint::Rules {
                allow_insecure: true,
                ports: vec![443],
                known_services: None,
            },
            Default::default(),
        )
        .expect("valid")
}

fn event(title: &str) -> herald::shared::event::Event {
    let input: EventInput = serde_json::from_value(json!({"topic": "a.b", "user": "u-1", "key": "car-1", "urgency": "low", "notification": {"title": title}}))
        .expect("input");
    input
        .validate(
            &EventDefaults {
                ttl: 60,
                max_clock_skew: Duration::from_secs(300),
                site_url: None,
            },
            chrono::Utc::now(),
        )
        .expect("valid")
}

#[tokio::test]
async fn a_push_is_verified_decrypted_and_recorded() {
    let (sink, _stop) = sink(false).await;
    let sub = subscription(&sink);
    let report = pusher().push(&sub, &event("hello"), 60).await;
    assert_eq!(report.outcome, Outcome::Delivered, "{:?}", report.error);
    assert_eq!(report.status, Some(201));
    let arrivals = sink.delivered();
    assert_eq!(arrivals.len(), 1);
    let a = &arrivals[0];
    assert_eq!(a.subscription, sub.id);
    assert_eq!(a.plaintext.as_ref().expect("decrypted")["title"], "hello");
    assert_eq!(a.headers.ttl.as_deref(), Some("60"));
    assert_eq!(a.headers.urgency.as_deref(), Some("low"));
    assert_eq!(
        a.headers.topic.as_deref(),
        Some(herald::deliver::push::topic_for_key("car-1").as_str())
    );
}

#[tokio::test]
async fn scripted_failures_come_back_classified() {
    let (sink, _stop) = sink(false).await;
    let sub = subscription(&sink);
    let fault = |status| Fault::status(status).delayed(20);
    sink.add_faults(
        &sub.id,
        vec![fault(503), fault(413), fault(400), fault(410)],
    );
    let p = pusher();
    let e = event("x");
    assert_eq!(
        p.push(&sub, &e, 60).await.outcome,
        Outcome::Retry { after: None }
    );
    assert_eq!(
        p.push(&sub, &e, 60).await.outcome,
        Outcome::DeadLetter {
            reason: "payload_too_large"
        }
    );
    assert_eq!(
        p.push(&sub, &e, 60).await.outcome,
        Outcome::DeadLetter {
            reason: "push_bad_request"
        }
    );
    assert_eq!(p.push(&sub, &e, 60).await.outcome, Outcome::Gone);
    // The script is used up: back to normal.
    assert_eq!(p.push(&sub, &e, 60).await.outcome, Outcome::Delivered);
}

#[tokio::test]
async fn a_429_with_retry_after_slows_that_subscription_only_until_then() {
    let (sink, _stop) = sink(false).await;
    let sub = subscription(&sink);
    let other = subscription(&sink);
    sink.add_faults(&sub.id, vec![Fault::retry_after(429, "2")]);
    let p = pusher();
    let e = event("x");
    let first = p.push(&sub, &e, 60).await;
    assert_eq!(
        first.outcome,
        Outcome::Retry {
            after: Some(Duration::from_secs(2))
        }
    );
    assert!(!first.not_sent);
    let second = p.push(&sub, &e, 60).await;
    assert!(second.not_sent, "that device waits: {second:?}");
    assert!(
        matches!(second.outcome, Outcome::Retry { after: Some(wait) } if wait <= Duration::from_secs(2))
    );
    assert_eq!(
        p.push(&other, &e, 60).await.outcome,
        Outcome::Delivered,
        "another device of the same push service is not slowed"
    );
    assert_eq!(p.state().waiting_subscriptions, 1);
    assert!(
        p.state().open_breakers.is_empty(),
        "one device's 429 opens no breaker"
    );
    assert_eq!(
        sink.arrivals().len(),
        2,
        "nothing was sent to the waiting device"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        p.push(&sub, &e, 60).await.outcome,
        Outcome::Delivered,
        "after its wait the device is pushed again"
    );
}

#[tokio::test]
async fn a_push_without_a_valid_vapid_token_is_refused_with_401() {
    let (sink, _stop) = sink(false).await;
    let sub = subscription(&sink);
    let response = reqwest::Client::new()
        .post(&sub.endpoint)
        .header("TTL", "60")
        .header("Content-Encoding", "aes128gcm")
        .body(vec![0u8; 100])
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 401);
    let arrivals = sink.arrivals();
    assert_eq!(arrivals[0].status, 401);
    assert!(arrivals[0]
        .error
        .as_deref()
        .is_some_and(|e| e.contains("Authorization")));
}

#[tokio::test]
async fn an_unknown_subscription_is_gone() {
    let (sink, _stop) = sink(false).await;
    let sub = subscription(&sink);
    sink.unsubscribe(&sub.id);
    assert_eq!(
        pusher().push(&sub, &event("x"), 60).await.outcome,
        Outcome::Gone
    );
}

#[tokio::test]
async fn fast_mode_counts_without_decrypting() {
    let (sink, _stop) = sink(true).await;
    let sub = subscription(&sink);
    assert_eq!(
        pusher().push(&sub, &event("x"), 60).await.outcome,
        Outcome::Delivered
    );
    let arrivals = sink.delivered();
    assert_eq!(arrivals.len(), 1);
    assert!(arrivals[0].plaintext.is_none());
}

#[tokio::test]
async fn an_insecure_endpoint_is_refused_at_send_time_without_the_setting() {
    let (sink, _stop) = sink(false).await;
    let sub = subscription(&sink);
    let strict = Pusher::new(&Settings::default(), VapidKey::generate().0).expect("pusher");
    let report = strict.push(&sub, &event("x"), 60).await;
    assert_eq!(
        report.outcome,
        Outcome::DeadLetter {
            reason: "invalid_subscription"
        }
    );
    assert!(sink.arrivals().is_empty(), "nothing was sent");
}

/// Stored keys are not checked again when read back (edited by hand, written
/// by another version): whatever they hold, the push is refused before anything
/// is sent, as the subscription's fault, and the worker goes on.
#[tokio::test]
async fn stored_keys_of_any_shape_are_refused_before_sending() {
    let (sink, _stop) = sink(false).await;
    let good = subscription(&sink);
    let mut off_curve = URL_SAFE_NO_PAD.decode(&good.p256dh).expect("base64url");
    off_curve[64] ^= 1;
    let cases = [
        (
            "p256dh not base64url",
            "not base64!".to_string(),
            good.auth.clone(),
        ),
        (
            "p256dh off the curve",
            URL_SAFE_NO_PAD.encode(&off_curve),
            good.auth.clone(),
        ),
        (
            "p256dh compressed",
            URL_SAFE_NO_PAD.encode(&off_curve[..33]),
            good.auth.clone(),
        ),
        (
            "p256dh of a megabyte",
            "A".repeat(1 << 20),
            good.auth.clone(),
        ),
        ("p256dh empty", String::new(), good.auth.clone()),
        (
            "auth of 8 bytes",
            good.p256dh.clone(),
            URL_SAFE_NO_PAD.encode([7u8; 8]),
        ),
        (
            "auth of a megabyte",
            good.p256dh.clone(),
            "A".repeat(1 << 20),
        ),
        ("auth not base64url", good.p256dh.clone(), "%%%".into()),
    ];
    let pusher = pusher();
    for (what, p256dh, auth) in cases {
        let sub = Subscription {
            p256dh,
            auth,
            ..good.clone()
        };
        let report = pusher.push(&sub, &event(what), 60).await;
        assert_eq!(
            report.outcome,
            Outcome::DeadLetter {
                reason: "invalid_subscription"
            },
            "{what}: {report:?}"
        );
        assert!(
            report.error.is_some_and(|e| e.len() < 300),
            "{what}: a short error"
        );
    }
    assert!(sink.arrivals().is_empty(), "nothing was sent");
    let report = pusher.push(&good, &event("the good one"), 60).await;
    assert_eq!(report.outcome, Outcome::Delivered, "{:?}", report.error);
}
