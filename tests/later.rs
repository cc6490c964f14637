//! Events that are not for now: delayed delivery (`deliver_at`), direct events
//! held for a user who has no subscription yet, and changing a subscription's
//! interests with PATCH.

mod helpers;

use std::time::Duration;

use chrono::{DateTime, Utc};
use helpers::TestApp;
use herald::deliver::holding::Holding;
use herald::deliver::EntryOutcome;
use herald::recover::scheduler::Scheduler;
use serde_json::{json, Value};

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("an RFC 3339 time")
        .with_timezone(&Utc)
}

async fn publish(app: &TestApp, body: Value) -> Value {
    let (status, answer) = app.post("/v1/events", &body).await;
    assert_eq!(status, 202, "{answer}");
    answer["events"][0].clone()
}

fn delayed(title: &str, user: &str, deliver_at: DateTime<Utc>) -> Value {
    json!({
        "id": title,
        "topic": "parking.lot-7.entry",
        "user": user,
        "deliver_at": deliver_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "notification": {"title": title},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_events_are_delivered_in_due_order_and_never_early() {
    let app = TestApp::start().await;
    app.register_device("u-1").await;
    let now = Utc::now();
    let due = [
        ("late", now + chrono::Duration::milliseconds(2600)),
        ("early", now + chrono::Duration::milliseconds(1200)),
        ("middle", now + chrono::Duration::milliseconds(1900)),
    ];
    for (title, deliver_at) in due {
        let answer = publish(&app, delayed(title, "u-1", deliver_at)).await;
        assert_eq!(answer["scheduled"], json!(true), "{answer}");
        assert!(
            answer.get("stream_id").is_none(),
            "not in the stream yet: {answer}"
        );
    }
    // A deliver_at in the past means now.
    let past = publish(
        &app,
        delayed("past", "u-1", now - chrono::Duration::hours(1)),
    )
    .await;
    assert!(past["stream_id"].is_string(), "{past}");
    // Publishing a scheduled event again is a duplicate, still scheduled.
    let again = publish(&app, delayed("late", "u-1", due[0].1)).await;
    assert_eq!(again["duplicate"], json!(true), "{again}");
    assert_eq!(again["scheduled"], json!(true), "{again}");

    let stats = herald::operate::stats::collect(&app.db, None, None)
        .await
        .expect("stats");
    assert_eq!(
        stats.streams[0].scheduled, 3,
        "herald stats shows the scheduled events"
    );
    assert_eq!(app.stream_len(), 1, "only the past one is in the stream");

    // Two schedulers at once, as two reclaimer processes would run them.
    let stop = app.shutdown.child_token();
    for _ in 0..2 {
        let scheduler = Scheduler::new(app.db.clone(), Duration::from_millis(50));
        tokio::spawn(scheduler.run(stop.clone()));
    }
    let run = app.run_worker();
    helpers::eventually("all four delivered", Duration::from_secs(20), || {
        app.sink.delivered().len() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = app.sink.delivered();
    let titles: Vec<String> = delivered
        .iter()
        .map(|a| a.event_id.clone().expect("an event id"))
        .collect();
    assert_eq!(
        titles,
        ["past", "early", "middle", "late"],
        "due order, each once"
    );
    for arrival in &delivered[1..] {
        let id = arrival.event_id.as_deref().expect("id");
        let deliver_at = due.iter().find(|(t, _)| *t == id).expect("known").1;
        let arrived = at(&arrival.at);
        assert!(
            arrived >= deliver_at,
            "{id} arrived at {arrived}, before its deliver_at {deliver_at}"
        );
        eprintln!(
            "{id}: {} ms after its deliver_at",
            (arrived - deliver_at).num_milliseconds()
        );
    }
    let stats = herald::operate::stats::collect(&app.db, None, None)
        .await
        .expect("stats");
    assert_eq!(stats.streams[0].scheduled, 0);
    assert_eq!(app.stream_len(), 4, "each moved into the stream once");
    stop.cancel();
    app.shutdown.cancel();
    run.await.expect("joins").expect("the worker stops cleanly");
}

#[tokio::test]
async fn a_deliver_at_too_far_ahead_is_refused_with_its_field() {
    let app = TestApp::start().await;
    let (status, body) = app
        .post(
            "/v1/events",
            &delayed("far", "u-1", Utc::now() + chrono::Duration::days(400)),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], json!("deliver_at"), "{body}");
}

#[tokio::test]
async fn a_direct_event_waits_for_its_users_first_subscription() {
    let app = TestApp::start().await;
    let id = app.publish_to("u-new", "welcome").await;
    let batch = app.step().await;
    assert_eq!(batch.entries[0].1, EntryOutcome::Held, "{batch:?}");
    assert_eq!(app.pending(), 0, "held events are acknowledged");
    let stats = herald::operate::stats::collect(&app.db, None, None)
        .await
        .expect("stats");
    assert_eq!(stats.streams[0].held, 1);

    // Registering the user's first device releases it into the stream.
    let device = app.register_device("u-new").await;
    let batch = app.step().await;
    assert!(
        matches!(batch.entries[0].1, EntryOutcome::Acked { delivered: 1, .. }),
        "{batch:?}"
    );
    let delivered = app.sink.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].subscription, device);
    assert_eq!(delivered[0].event_id.as_deref(), Some(id.as_str()));
    let stats = herald::operate::stats::collect(&app.db, None, None)
        .await
        .expect("stats");
    assert_eq!(stats.streams[0].held, 0);
    assert_eq!(stats.streams[0].held_expired, 0);
}

#[tokio::test]
async fn held_events_expire_with_their_ttl_and_are_counted() {
    let app = TestApp::start().await;
    for title in ["short", "gone already"] {
        let ttl = if title == "short" { 1 } else { 0 };
        publish(
            &app,
            json!({"topic": "parking.lot-7.exit", "user": "u-late", "ttl": ttl, "notification": {"title": title}}),
        )
        .await;
    }
    let batch = app.step().await;
    let mut outcomes: Vec<EntryOutcome> = batch.entries.into_iter().map(|(_, o)| o).collect();
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        outcomes,
        [EntryOutcome::Held, EntryOutcome::NoTarget],
        "a TTL of 0 is over at once"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let holding = Holding::new(app.db.clone(), 100);
    assert_eq!(holding.sweep().await.expect("sweep"), 1);
    let stats = herald::operate::stats::collect(&app.db, None, None)
        .await
        .expect("stats");
    assert_eq!(
        (stats.streams[0].held, stats.streams[0].held_expired),
        (0, 2)
    );
    app.register_device("u-late").await;
    let batch = app.step().await;
    assert!(
        batch.entries.is_empty(),
        "nothing expired comes back: {batch:?}"
    );
    assert!(app.sink.delivered().is_empty());
}

#[tokio::test]
async fn more_held_events_than_the_cap_are_dead_lettered() {
    let app = TestApp::start_with(|s| s.routing.hold_per_user = 2).await;
    for n in 0..3 {
        app.publish_to("u-busy", &format!("event {n}")).await;
        app.step().await;
    }
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, "hold_full");
    app.register_device("u-busy").await;
    app.step().await;
    assert_eq!(app.sink.delivered().len(), 2, "the two held ones arrive");
}

#[tokio::test]
async fn a_hold_that_crosses_a_registration_is_released_by_the_worker() {
    // The worker read "no subscription", then the user registered (and the API's
    // release found nothing held yet), then the worker held the event.
    let app = TestApp::start().await;
    app.register_device("u-race").await;
    let holding = Holding::new(app.db.clone(), 100);
    let event = herald::shared::event::EventInput {
        user: Some("u-race".into()),
        ..serde_json::from_value(
            json!({"topic": "parking.lot-1.entry", "notification": {"title": "raced"}}),
        )
        .expect("an event")
    }
    .validate(&app.settings.events.defaults(), Utc::now())
    .expect("valid");
    assert_eq!(
        holding.hold(0, "u-race", &event).await.expect("hold"),
        herald::deliver::holding::Held::Held
    );
    assert!(holding.user_subscribed("u-race").await.expect("check"));
    assert_eq!(holding.release("u-race").await.expect("release"), (1, 0));
    assert_eq!(
        holding.release("u-race").await.expect("release"),
        (0, 0),
        "once only"
    );
    let batch = app.step().await;
    assert!(
        matches!(batch.entries[0].1, EntryOutcome::Acked { delivered: 1, .. }),
        "{batch:?}"
    );
}

#[tokio::test]
async fn patch_changes_a_subscriptions_interests_in_place() {
    let app = TestApp::start().await;
    let id = app.register_device("u-7").await;
    let path = format!("/v1/subscriptions/{id}");
    let patch = |body: Value| {
        let http = app.http.clone();
        let url = format!("{}{path}", app.api_url);
        async move {
            let response = http.patch(url).json(&body).send().await.expect("answers");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    let (status, body) = patch(json!({"topics": ["parking.lot-7.#"], "user": null})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["topics"], json!(["parking.lot-7.#"]));
    assert!(body.get("user").is_none(), "{body}");
    let (_, list) = app.get("/v1/subscriptions?user=u-7").await;
    assert_eq!(list["subscriptions"], json!([]), "no longer u-7's");

    // The topic now routes to it; direct events for u-7 do not.
    publish(
        &app,
        json!({"topic": "parking.lot-7.exit", "notification": {"title": "by topic"}}),
    )
    .await;
    app.step().await;
    assert_eq!(app.sink.delivered().len(), 1);

    for (body, field) in [
        (json!({"topics": ["a..b"]}), "topics[0]"),
        (json!({"topics": [], "user": null}), "user"),
        (json!({}), "user"),
        (json!({"endpoint": "https://x"}), "endpoint"),
    ] {
        let (status, answer) = patch(body.clone()).await;
        assert_eq!(status, 422, "{body} → {answer}");
        assert_eq!(answer["error"]["field"], json!(field), "{body} → {answer}");
    }
    let (status, _) = app
        .http
        .patch(format!(
            "{}/v1/subscriptions/{}",
            app.api_url,
            "0".repeat(32)
        ))
        .json(&json!({"user": "u-1"}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .expect("answers");
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_events_survive_a_redis_restart() {
    let mut app = TestApp::start_durable().await;
    app.register_device("u-1").await;
    let deliver_at = Utc::now() + chrono::Duration::milliseconds(1500);
    publish(&app, delayed("after-restart", "u-1", deliver_at)).await;
    app.redis.restart();
    let scheduler = Scheduler::new(app.db.clone(), Duration::from_millis(50));
    let mut moved = 0;
    for _ in 0..100 {
        // The pool reconnects after the restart; a failed attempt is just retried.
        moved += scheduler.move_due().await.unwrap_or(0);
        if moved > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        moved, 1,
        "the scheduled event was still there after the restart"
    );
    assert!(Utc::now() >= deliver_at, "moved before it was due");
    app.step().await;
    let delivered = app.sink.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].event_id.as_deref(), Some("after-restart"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_event_is_not_superseded_by_what_was_published_before_it_was_due() {
    let app = TestApp::start().await;
    app.register_device("u-1").await;
    let mut reminder = delayed(
        "reminder",
        "u-1",
        Utc::now() + chrono::Duration::milliseconds(800),
    );
    reminder["key"] = json!("12가3456");
    publish(&app, reminder).await;
    publish(
        &app,
        json!({"id": "entry", "topic": "parking.lot-7.entry", "user": "u-1", "key": "12가3456", "notification": {"title": "entry"}}),
    )
    .await;
    app.step().await;
    let scheduler = Scheduler::new(app.db.clone(), Duration::from_millis(50));
    let mut moved = 0;
    while moved == 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        moved = scheduler.move_due().await.expect("move");
    }
    let batch = app.step().await;
    assert!(
        matches!(batch.entries[0].1, EntryOutcome::Acked { delivered: 1, .. }),
        "the reminder is newer than the entry: {batch:?}"
    );
    let order: Vec<String> = app
        .sink
        .delivered()
        .into_iter()
        .filter_map(|a| a.event_id)
        .collect();
    assert_eq!(order, ["entry", "reminder"]);
}
