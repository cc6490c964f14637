//! Messaging patterns through the real API and worker: direct, topic with
//! wildcards, fan-out, header filters, unroutable events.

mod helpers;

use std::collections::BTreeSet;
use std::time::Duration;

use helpers::TestApp;
use herald::deliver::EntryOutcome;
use herald::shared::config::Unroutable;
use serde_json::{json, Value};

/// Registers a sink device with these interests; returns its id.
async fn subscribe(app: &TestApp, interests: Value) -> String {
    let (id, subscription) = app.sink.new_subscription();
    let mut body = interests;
    body["subscription"] = subscription;
    let (status, answer) = app.post("/v1/subscriptions", &body).await;
    assert_eq!(status, 201, "{answer}");
    id
}

async fn publish(app: &TestApp, event: Value) {
    let (status, body) = app.post("/v1/events", &event).await;
    assert_eq!(status, 202, "{body}");
}

/// Which devices got the event with this title.
fn receivers(app: &TestApp, title: &str) -> BTreeSet<String> {
    app.sink
        .delivered()
        .into_iter()
        .filter(|a| a.plaintext.as_ref().is_some_and(|p| p["title"] == title))
        .map(|a| a.subscription)
        .collect()
}

#[tokio::test]
async fn topic_wildcards_fan_out_and_header_filters_pick_the_devices() {
    let app = TestApp::start().await;
    let lot7 = subscribe(&app, json!({"topics": ["parking.lot-7.*"]})).await;
    let everyone = subscribe(&app, json!({"topics": ["#"]})).await;
    let entries = subscribe(
        &app,
        json!({"topics": ["parking.#"], "headers": {"match": "all", "values": {"kind": "entry"}}}),
    )
    .await;
    let lot9_any = subscribe(
        &app,
        json!({"headers": {"match": "any", "values": {"lot": "9", "vip": "yes"}}}),
    )
    .await;
    let direct = subscribe(&app, json!({"user": "u-1"})).await;

    publish(&app, json!({"topic": "parking.lot-7.entry", "headers": {"lot": "7", "kind": "entry"}, "notification": {"title": "a"}})).await;
    publish(&app, json!({"topic": "parking.lot-9.exit", "headers": {"lot": "9", "kind": "exit"}, "notification": {"title": "b"}})).await;
    publish(
        &app,
        json!({"topic": "billing.paid", "notification": {"title": "c"}}),
    )
    .await;
    // Direct wins: only the user's devices, whatever their topics.
    publish(
        &app,
        json!({"topic": "parking.lot-7.entry", "user": "u-1", "notification": {"title": "d"}}),
    )
    .await;
    let batch = app.step().await;
    assert_eq!(batch.acked(), 4, "{batch:?}");

    assert_eq!(
        receivers(&app, "a"),
        BTreeSet::from([lot7.clone(), everyone.clone(), entries.clone()])
    );
    assert_eq!(
        receivers(&app, "b"),
        BTreeSet::from([everyone.clone(), lot9_any.clone()])
    );
    assert_eq!(receivers(&app, "c"), BTreeSet::from([everyone.clone()]));
    assert_eq!(receivers(&app, "d"), BTreeSet::from([direct]));
}

#[tokio::test]
async fn a_new_subscription_is_routed_to_without_a_restart() {
    let app = TestApp::start().await;
    publish(
        &app,
        json!({"topic": "news.today", "notification": {"title": "before"}}),
    )
    .await;
    let batch = app.step().await;
    assert_eq!(batch.entries[0].1, EntryOutcome::NoTarget);
    let metrics = herald::shared::metrics::render();
    assert!(
        metrics.contains(r#"herald_events_processed_total{outcome="unroutable"} 1"#),
        "an unroutable event is counted:\n{metrics}"
    );
    let reader = subscribe(&app, json!({"topics": ["news.*"]})).await;
    tokio::time::sleep(herald::deliver::route::REFRESH_EVERY + Duration::from_millis(50)).await;
    publish(
        &app,
        json!({"topic": "news.today", "notification": {"title": "after"}}),
    )
    .await;
    app.step().await;
    assert_eq!(receivers(&app, "after"), BTreeSet::from([reader]));
}

/// How many times this process's workers refreshed their routing index, `how`.
fn refreshes(how: &str) -> u64 {
    let metrics = herald::shared::metrics::render();
    let line = format!("herald_routing_index_refreshes_total{{how=\"{how}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.parse().expect("a count"))
}

async fn wait_for_refresh() {
    tokio::time::sleep(herald::deliver::route::REFRESH_EVERY + Duration::from_millis(50)).await;
}

#[tokio::test]
async fn subscription_changes_update_the_index_without_reading_every_subscription() {
    let app = TestApp::start().await;
    let first = subscribe(&app, json!({"topics": ["news.*"]})).await;
    let (moved, browser) = app.sink.new_subscription();
    let (status, answer) = app
        .post(
            "/v1/subscriptions",
            &json!({"subscription": browser, "topics": ["news.*"]}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    publish(
        &app,
        json!({"topic": "news.a", "notification": {"title": "a"}}),
    )
    .await;
    app.step().await;
    assert_eq!(
        receivers(&app, "a"),
        BTreeSet::from([first.clone(), moved.clone()])
    );
    assert_eq!((refreshes("rebuilt"), refreshes("updated")), (1, 0));

    // A new one, one deleted, one whose interests change (registered again).
    let added = subscribe(&app, json!({"topics": ["news.#"]})).await;
    let url = format!("{}/v1/subscriptions/{first}", app.api_url);
    assert_eq!(
        app.http
            .delete(&url)
            .send()
            .await
            .expect("an answer")
            .status(),
        204
    );
    let (status, answer) = app
        .post(
            "/v1/subscriptions",
            &json!({"subscription": browser, "topics": ["sports.*"]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    wait_for_refresh().await;
    publish(
        &app,
        json!({"topic": "news.b", "notification": {"title": "b"}}),
    )
    .await;
    publish(
        &app,
        json!({"topic": "sports.b", "notification": {"title": "sports"}}),
    )
    .await;
    app.step().await;
    assert_eq!(receivers(&app, "b"), BTreeSet::from([added.clone()]));
    assert_eq!(receivers(&app, "sports"), BTreeSet::from([moved]));
    assert_eq!(
        (refreshes("rebuilt"), refreshes("updated")),
        (1, 1),
        "the three changes were applied at once, and nothing was read in full again"
    );

    // A version moved with no change recorded (as a herald from before the
    // changes stream does): the index cannot follow, so it reads everything.
    let _: i64 = redis::cmd("INCR")
        .arg(app.db.keys.subscriptions_version())
        .query(&mut app.redis.conn())
        .expect("INCR");
    wait_for_refresh().await;
    publish(
        &app,
        json!({"topic": "news.c", "notification": {"title": "c"}}),
    )
    .await;
    app.step().await;
    assert_eq!(receivers(&app, "c"), BTreeSet::from([added]));
    assert_eq!((refreshes("rebuilt"), refreshes("updated")), (2, 1));
}

#[tokio::test]
async fn unroutable_topic_events_are_dead_lettered_when_configured() {
    let app = TestApp::start_with(|s| s.routing.unroutable = Unroutable::DeadLetter).await;
    subscribe(&app, json!({"topics": ["parking.#"]})).await;
    publish(
        &app,
        json!({"topic": "billing.paid", "notification": {"title": "nobody"}}),
    )
    .await;
    let batch = app.step().await;
    assert_eq!(
        batch.entries[0].1,
        EntryOutcome::DeadLettered {
            reason: "unroutable".into()
        }
    );
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "unroutable");
    assert_eq!(app.pending(), 0);
}

/// A subscriber's pattern cannot pin a worker: `#.#.#.…` (the longest the API
/// takes; stored collapsed, and matched memoised in any case) against the
/// longest topic, and the events behind it, and the other subscribers, go on
/// as usual.
#[tokio::test]
async fn hostile_patterns_cannot_stall_routing() {
    let app = TestApp::start().await;
    let hostile = vec!["#"; 128].join(".");
    let mut attackers = Vec::new();
    for n in 0..5 {
        let nested = format!("{}.x{n}", vec!["#"; 125].join("."));
        attackers.push(subscribe(&app, json!({"topics": [hostile.clone(), nested]})).await);
    }
    let bystander = subscribe(&app, json!({"topics": ["w.#"]})).await;
    // The longest topic the API takes: 32 words.
    let topic = vec!["w"; 32].join(".");
    publish(
        &app,
        json!({"topic": topic, "notification": {"title": "long"}}),
    )
    .await;
    publish(
        &app,
        json!({"topic": "w.short", "notification": {"title": "short"}}),
    )
    .await;
    app.step().await;
    let mut expected: BTreeSet<String> = attackers.into_iter().collect();
    expected.insert(bystander.clone());
    assert_eq!(
        receivers(&app, "long"),
        expected,
        "every '#' pattern matches, once"
    );
    assert!(receivers(&app, "short").contains(&bystander));
}
