//! Delivery semantics: ordering of updates per key, at-most-once mode,
//! retention that never trims what a group still needs.

mod helpers;

use std::time::Duration;

use helpers::{ago, TestApp};
use herald::deliver::EntryOutcome;
use herald::operate::sink::Fault;
use herald::recover::retention::Retention;
use herald::shared::config::{Delivery, RetentionSettings};
use serde_json::json;

async fn publish_update(app: &TestApp, key: &str, at: &str, title: &str) -> String {
    let (status, body) = app
        .post(
            "/v1/events",
            &json!({"topic": "parking.lot-7.exit", "user": "u-1", "key": key, "publish_at": at, "notification": {"title": title}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["events"][0]["stream_id"]
        .as_str()
        .expect("stream id")
        .to_string()
}

#[tokio::test]
async fn an_older_update_arriving_after_a_newer_one_is_superseded_not_pushed() {
    let app = TestApp::start().await;
    app.register_device("u-1").await;
    publish_update(&app, "12가3456", &ago(1_000), "newer").await;
    let first = app.step().await;
    assert!(matches!(
        first.entries[0].1,
        EntryOutcome::Acked { delivered: 1, .. }
    ));
    // The older update of the same vehicle arrives late; another vehicle's is unaffected.
    publish_update(&app, "12가3456", &ago(5_000), "older").await;
    publish_update(&app, "other-car", &ago(5_000), "other key").await;
    let batch = app.step().await;
    let outcomes: Vec<&EntryOutcome> = batch.entries.iter().map(|(_, o)| o).collect();
    assert!(
        matches!(outcomes[0], EntryOutcome::Superseded { .. }),
        "{outcomes:?}"
    );
    assert!(matches!(
        outcomes[1],
        EntryOutcome::Acked { delivered: 1, .. }
    ));
    let titles: Vec<String> = app
        .sink
        .delivered()
        .iter()
        .map(|a| {
            a.plaintext.as_ref().expect("decrypted")["title"]
                .as_str()
                .expect("title")
                .to_string()
        })
        .collect();
    assert_eq!(
        titles,
        vec!["newer".to_string(), "other key".to_string()],
        "the stale update was not pushed"
    );
    assert_eq!(app.pending(), 0, "the superseded entry is acknowledged");
}

#[tokio::test]
async fn updates_of_one_key_in_one_batch_are_pushed_one_at_a_time_newest_last() {
    let app = TestApp::start().await;
    app.register_device("u-1").await;
    app.sink.set_delay(Duration::from_millis(50));
    for n in 0..4 {
        publish_update(
            &app,
            "car-9",
            &ago(4_000 - n * 1_000),
            &format!("update {n}"),
        )
        .await;
    }
    app.step().await;
    let delivered = app.sink.delivered();
    let last = delivered.last().expect("at least one push");
    assert_eq!(
        last.plaintext.as_ref().expect("decrypted")["title"],
        "update 3",
        "the newest is pushed last"
    );
    assert_eq!(app.pending(), 0);
}

#[tokio::test]
async fn updates_in_order_are_all_pushed_and_a_retry_of_the_newest_is_not_superseded() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    publish_update(&app, "car-1", &ago(2_000), "first").await;
    app.step().await;
    app.sink.add_faults(&device, vec![Fault::status(503)]);
    publish_update(&app, "car-1", &ago(1_000), "second").await;
    app.step().await;
    let reclaimer = app.reclaimer();
    for _ in 0..50 {
        if app.sink.delivered().len() == 2 {
            break;
        }
        reclaimer.scan(0).await.expect("scan");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.sink.delivered().len(),
        2,
        "the retried newest update went through"
    );
}

#[tokio::test]
async fn at_most_once_never_leaves_anything_pending_and_never_retries() {
    let app = TestApp::start_with(|s| s.worker.delivery = Delivery::AtMostOnce).await;
    let device = app.register_device("u-1").await;
    app.sink.add_faults(&device, vec![Fault::status(503)]);
    app.publish_to("u-1", "one").await;
    app.publish_to("u-1", "two").await;
    app.step().await;
    assert_eq!(app.pending(), 0, "NOACK: nothing is pending");
    app.reclaimer().scan(0).await.expect("scan");
    // The two are pushed concurrently: one of them met the failure and is gone for good.
    assert_eq!(
        app.sink.delivered().len(),
        1,
        "the failed one is never retried"
    );
    assert_eq!(app.sink.arrivals().len(), 2);
}

#[tokio::test]
async fn retention_trims_old_entries_but_never_pending_or_unread_ones() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    for n in 0..3 {
        app.publish_to("u-1", &format!("acked {n}")).await;
    }
    app.step().await;
    app.sink.add_faults(&device, vec![Fault::status(503)]);
    app.publish_to("u-1", "pending").await;
    let pending = app.step().await;
    let pending_id = pending.entries[0].0.clone();
    app.publish_to("u-1", "after the pending one, acked").await;
    app.step().await;
    app.publish_to("u-1", "unread").await;
    assert_eq!(app.stream_len(), 6);

    // Everything is older than 1 ms, and at most one entry should be kept: still,
    // the pending entry and everything after it stays.
    let retention = Retention::new(
        app.db.clone(),
        RetentionSettings {
            max_age: Duration::from_millis(1),
            max_len: 1,
            ..RetentionSettings::default()
        },
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let trimmed = retention.trim(0).await.expect("trim");
    assert_eq!(
        trimmed.events, 3,
        "only the three acked entries before the pending one"
    );
    let ids = app.entries();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0].0, pending_id);
    assert_eq!(app.pending(), 1);
}

#[tokio::test]
async fn dead_letters_have_their_own_retention() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    let bad = Fault::status(400);
    app.sink
        .add_faults(&device, vec![bad.clone(), bad.clone(), bad]);
    for n in 0..3 {
        app.publish_to("u-1", &format!("dead {n}")).await;
    }
    app.step().await;
    let before = app.dead_letters().await;
    assert_eq!(before.len(), 3);
    let retention = Retention::new(
        app.db.clone(),
        RetentionSettings {
            dead_letter_max_len: 1,
            ..RetentionSettings::default()
        },
    );
    assert_eq!(retention.trim(0).await.expect("trim").dead_letters, 2);
    let left = app.dead_letters().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, before[2].id, "the newest is kept");
}
