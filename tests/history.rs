//! Several readers of one stream, and history read again: the audit log as a
//! second consumer group, and `herald replay` with and without `--force`.

mod helpers;

use std::time::Duration;

use helpers::TestApp;
use herald::operate::audit::Audit;
use herald::operate::replay::{Bound, Plan, Replayer};
use serde_json::{json, Value};

async fn publish(app: &TestApp, topic: &str, title: &str) -> String {
    let (status, body) = app
        .post(
            "/v1/events",
            &json!({"topic": topic, "user": "u-1", "notification": {"title": title}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["events"][0]["stream_id"]
        .as_str()
        .expect("stream id")
        .to_string()
}

fn plan(from: &str, to: Option<&str>, topic: Option<&str>, force: bool) -> Plan {
    Plan {
        from: Bound::parse(from, false).expect("from"),
        to: to.map(|t| Bound::parse(t, true).expect("to")),
        topic: topic.map(str::to_string),
        force,
    }
}

/// Deliveries per device and event.
fn pushes(app: &TestApp) -> std::collections::BTreeMap<(String, String), usize> {
    let mut seen = std::collections::BTreeMap::new();
    for a in app.sink.delivered() {
        *seen
            .entry((
                a.subscription.clone(),
                a.event_id.clone().unwrap_or_default(),
            ))
            .or_default() += 1;
    }
    seen
}

async fn step_until_idle(app: &TestApp) {
    loop {
        let batch = app
            .worker
            .process_batch(0, Duration::from_millis(200))
            .await
            .expect("a batch");
        if batch.entries.is_empty() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_group_sees_every_event_the_workers_see() {
    let app = TestApp::start().await;
    app.register_device("u-1").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(publish(&app, "parking.lot-7.entry", &format!("event {n}")).await);
    }
    step_until_idle(&app).await;
    assert_eq!(
        app.sink.delivered().len(),
        5,
        "the workers' group delivered each"
    );

    let log = app.data.path().join("audit.jsonl");
    let stop = app.shutdown.child_token();
    let audit = tokio::spawn(
        Audit::new(
            app.db.clone(),
            "herald-audit",
            "audit",
            log.clone(),
            app.settings.events.defaults(),
        )
        .run(stop.clone()),
    );
    let read_lines = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    helpers::eventually(
        "the audit wrote five lines",
        Duration::from_secs(10),
        || read_lines().len() >= 5,
    )
    .await;
    // One more while both run: each group gets it.
    ids.push(publish(&app, "parking.lot-7.exit", "event 5").await);
    step_until_idle(&app).await;
    helpers::eventually(
        "the audit wrote the sixth line",
        Duration::from_secs(10),
        || read_lines().len() >= 6,
    )
    .await;
    stop.cancel();
    audit
        .await
        .expect("joins")
        .expect("the audit stops cleanly");

    let lines = read_lines();
    let seen: Vec<&str> = lines
        .iter()
        .map(|l| l["stream_id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        seen,
        ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "each once, in order"
    );
    assert_eq!(lines[5]["event"]["topic"], json!("parking.lot-7.exit"));
    assert_eq!(lines[0]["event"]["notification"]["title"], json!("event 0"));
    assert_eq!(app.sink.delivered().len(), 6);

    // Each group has its own position and nothing pending.
    let mut conn = app.redis.conn();
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(app.stream())
        .query(&mut conn)
        .expect("XINFO GROUPS");
    assert_eq!(groups.len(), 2);
    for g in groups {
        let pending: u64 = redis::from_redis_value(g["pending"].clone()).expect("pending");
        let last: String = redis::from_redis_value(g["last-delivered-id"].clone()).expect("id");
        assert_eq!((pending, last.as_str()), (0, ids[5].as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_skips_devices_that_have_an_event_unless_forced() {
    let app = TestApp::start().await;
    let first = app.register_device("u-1").await;
    let a = publish(&app, "parking.lot-7.entry", "a").await;
    let b = publish(&app, "parking.lot-9.entry", "b").await;
    let c = publish(&app, "parking.lot-7.exit", "c").await;
    step_until_idle(&app).await;
    assert_eq!(app.sink.delivered().len(), 3);
    // A device registered after the events: a replay brings them to it, and only to it.
    let second = app.register_device("u-1").await;
    let replayer = Replayer::new(app.db.clone(), app.settings.events.defaults());

    let summary = replayer
        .run(&plan(&a, Some(&b), None, false), |_| {})
        .await
        .expect("replay");
    assert_eq!(
        (summary.replayed, summary.skipped_topic),
        (2, 0),
        "--to is inclusive"
    );
    step_until_idle(&app).await;
    let seen = pushes(&app);
    assert_eq!(seen.values().sum::<usize>(), 5, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "nobody twice: {seen:?}");
    assert_eq!(seen.keys().filter(|(s, _)| *s == second).count(), 2);

    // With --force, and a topic filter: every matching event to every device again.
    let counted = replayer
        .count(&plan(&a, None, Some("parking.lot-7.*"), true))
        .await
        .expect("count");
    assert_eq!(
        counted, 2,
        "a and c; copies of the first replay are not replayed"
    );
    let summary = replayer
        .run(&plan(&a, None, Some("parking.lot-7.*"), true), |_| {})
        .await
        .expect("replay");
    assert_eq!(
        (
            summary.replayed,
            summary.skipped_topic,
            summary.skipped_copies
        ),
        (2, 1, 2)
    );
    assert!(summary.run.is_some());
    step_until_idle(&app).await;
    let seen = pushes(&app);
    // The second device had a (first replay) but not c, which it gets now for the first time.
    for (device, event, times) in [
        (&first, &a, 2),
        (&first, &c, 2),
        (&second, &a, 2),
        (&second, &c, 1),
    ] {
        let id = event_id_of(&app, event);
        let n = seen
            .get(&(device.to_string(), id.clone()))
            .copied()
            .unwrap_or(0);
        assert_eq!(n, times, "{device} got {id} {n} times: {seen:?}");
    }
    assert_eq!(app.pending(), 0);
}

fn event_id_of(app: &TestApp, stream_id: &str) -> String {
    let mut conn = app.redis.conn();
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(app.stream())
        .arg(stream_id)
        .arg(stream_id)
        .query(&mut conn)
        .expect("XRANGE");
    entries[0].1["id"].clone()
}

#[test]
fn replay_bounds_are_stream_ids_times_or_durations() {
    assert_eq!(
        Bound::parse("1700000000000-3", false).expect("id").as_str(),
        "1700000000000-3"
    );
    assert_eq!(
        Bound::parse("1700000000000", false).expect("ms").as_str(),
        "1700000000000"
    );
    assert_eq!(
        Bound::parse("2023-11-14T22:13:20Z", false)
            .expect("time")
            .as_str(),
        "1700000000000-0"
    );
    assert_eq!(
        Bound::parse("2023-11-14T22:13:20Z", true)
            .expect("time")
            .as_str(),
        "1700000000000-18446744073709551615"
    );
    assert!(Bound::parse("2h", false).is_ok());
    let err = Bound::parse("yesterday", false)
        .expect_err("not a bound")
        .to_string();
    assert!(err.contains("stream id"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_command_prints_a_summary_and_names_a_bad_bound() {
    let app = TestApp::start().await;
    app.register_device("u-1").await;
    publish(&app, "parking.lot-7.entry", "a").await;
    step_until_idle(&app).await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(helpers::herald_bin())
            .args(args)
            .args(["--redis-url", &app.redis.url()])
            .env("HERALD_REDIS__KEY_PREFIX", &app.settings.redis.key_prefix)
            .current_dir(app.data.path())
            .output()
            .expect("run herald");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["replay", "--from", "1h", "--json"]);
    assert!(ok, "{err}");
    let summary: Value = serde_json::from_str(&out).expect("JSON summary");
    assert_eq!(summary["replayed"], json!(1), "{out}");
    let (ok, out, err) = run(&["replay", "--from", "0", "--topic", "parking.#"]);
    assert!(ok, "{err}");
    assert!(out.contains("replayed 1 event(s)"), "{out}");
    assert!(out.contains("--force pushes to them again"), "{out}");
    let (ok, _, err) = run(&["replay", "--from", "yesterday"]);
    assert!(!ok);
    assert!(err.contains("--from") && err.contains("stream id"), "{err}");
    let (ok, _, err) = run(&["replay", "--from", "0", "--topic", "a..b"]);
    assert!(!ok);
    assert!(err.contains("--topic"), "{err}");
    step_until_idle(&app).await;
    assert_eq!(app.sink.delivered().len(), 1, "nobody got an event twice");
}
