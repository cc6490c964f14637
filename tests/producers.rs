//! Producers that write to the streams themselves, as README's "Publishing
//! with XADD or FCALL" tells them: a plain `XADD` with the documented fields,
//! `FCALL herald_publish` (idempotent), entries that break the contract, and
//! the redis-cli and Python examples run as a producer would run them.

mod helpers;

use std::process::Command;

use helpers::{fcall, xadd, TestApp};
use herald::deliver::EntryOutcome;

/// The titles a device got, sorted (events without a key may arrive in any order).
fn titles(app: &TestApp, device: &str) -> Vec<String> {
    let mut titles: Vec<String> = app
        .sink
        .delivered()
        .into_iter()
        .filter(|a| a.subscription == device)
        .filter_map(|a| {
            a.plaintext
                .map(|p| p["title"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    titles.sort();
    titles
}

#[tokio::test]
async fn a_plain_xadd_with_topic_user_and_title_reaches_the_users_device() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    let stream_id = xadd(
        &app,
        &[
            ("topic", "parking.lot-1.entry"),
            ("user", "u-1"),
            ("title", "via xadd"),
        ],
    );
    let batch = app.step().await;
    assert!(
        matches!(batch.entries[0].1, EntryOutcome::Acked { delivered: 1, .. }),
        "{batch:?}"
    );
    let arrival = &app.sink.delivered()[0];
    let payload = arrival.plaintext.as_ref().expect("decrypted");
    assert_eq!(arrival.subscription, device);
    assert_eq!(payload["title"], "via xadd");
    assert_eq!(
        payload["id"],
        format!("xadd-{stream_id}"),
        "an id from the stream id"
    );
    assert_eq!(app.pending(), 0);
}

#[tokio::test]
async fn entries_that_break_the_contract_are_dead_lettered_at_once_naming_the_field() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let later = herald::shared::event::format_time(later);
    for (fields, field) in [
        (vec![("topic", "a.b"), ("user", "u-1")], "title"),
        (vec![("user", "u-1"), ("title", "t")], "topic"),
        (
            vec![
                ("topic", "a.b"),
                ("user", "u-1"),
                ("title", "t"),
                ("ttl", "soon"),
            ],
            "ttl",
        ),
        (
            vec![
                ("topic", "a.b"),
                ("user", "u-1"),
                ("title", "t"),
                ("v", "9"),
            ],
            "v",
        ),
        (
            vec![
                ("topic", "a.b"),
                ("user", "u-1"),
                ("title", "t"),
                ("deliver_at", &later),
            ],
            "deliver_at",
        ),
    ] {
        xadd(&app, &fields);
        let batch = app.step().await;
        assert!(
            matches!(&batch.entries[0].1, EntryOutcome::DeadLettered { reason } if reason == "undecodable"),
            "{fields:?}: {batch:?}"
        );
        let dead = app.dead_letters().await.pop().expect("a dead letter");
        let error = dead.fields["dlq.last_error"].clone();
        assert!(
            error.starts_with(&format!("field {field:?}")),
            "{fields:?}: {error}"
        );
        assert_eq!(dead.fields["dlq.attempts"], "1", "never retried");
    }
    xadd(
        &app,
        &[("topic", "a.b"), ("user", "u-1"), ("title", "fine")],
    );
    app.step().await;
    assert_eq!(titles(&app, &device), vec!["fine"]);
    assert_eq!(app.pending(), 0);
}

#[tokio::test]
async fn fcall_herald_publish_is_once_per_id_and_refuses_naming_what_is_wrong() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    let event = [
        ("id", "e-1"),
        ("topic", "a.b"),
        ("user", "u-1"),
        ("title", "once"),
    ];
    let (first, outcome) = fcall(&app, &event).expect("published");
    assert_eq!(outcome, "added");
    let (again, outcome) = fcall(&app, &event).expect("published");
    assert_eq!(
        (again.as_str(), outcome.as_str()),
        (first.as_str(), "duplicate")
    );
    let conflict = fcall(
        &app,
        &[
            ("id", "e-1"),
            ("topic", "a.b"),
            ("user", "u-1"),
            ("title", "other"),
        ],
    )
    .expect_err("other content under the same id");
    assert_eq!(conflict.code(), Some("CONFLICT"));
    assert!(
        conflict.to_string().contains(&first),
        "names the original entry: {conflict}"
    );
    for (fields, field) in [
        (
            vec![("id", "e-2"), ("user", "u-1"), ("title", "t")],
            "topic",
        ),
        (
            vec![
                ("id", "e-2"),
                ("topic", "a.b"),
                ("title", "t"),
                ("ttl", "-5"),
            ],
            "ttl",
        ),
        (vec![("id", "e 2"), ("topic", "a.b"), ("title", "t")], "id"),
        (
            vec![
                ("id", "e-2"),
                ("topic", "a.b"),
                ("title", "t"),
                ("colour", "red"),
            ],
            "colour",
        ),
    ] {
        let refused = fcall(&app, &fields).expect_err("refused");
        assert_eq!(refused.code(), Some("INVALID"), "{fields:?}: {refused}");
        assert!(
            refused
                .detail()
                .is_some_and(|d| d.starts_with(&format!("{field}:"))),
            "{fields:?}: {refused}"
        );
    }
    assert_eq!(app.stream_len(), 1, "refusals add nothing");
    app.step().await;
    assert_eq!(titles(&app, &device), vec!["once"]);
}

#[tokio::test]
async fn publishing_goes_on_after_redis_lost_the_function_library() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query(&mut app.redis.conn())
        .expect("FUNCTION FLUSH");
    app.publish_to("u-1", "after the flush").await;
    app.step().await;
    assert_eq!(titles(&app, &device), vec!["after the flush"]);
    let (_, outcome) = fcall(
        &app,
        &[
            ("id", "e-9"),
            ("topic", "a"),
            ("user", "u-1"),
            ("title", "t"),
        ],
    )
    .expect("loaded again");
    assert_eq!(outcome, "added");
}

/// The environment an example runs with: this app's Redis and key prefix.
fn example(app: &TestApp, program: &str, args: &[&str]) -> String {
    let repo = env!("CARGO_MANIFEST_DIR");
    let output = Command::new(program)
        .args(args)
        .current_dir(repo)
        .env("REDIS_URL", app.redis.url())
        .env("HERALD_PREFIX", &app.settings.redis.key_prefix)
        .env("HERALD_USER", "u-42")
        .env("PYTHONPATH", format!("{repo}/target/pydeps"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {stdout}{stderr}{}",
        if stderr.contains("No module named 'redis'") {
            "\nredis-py is missing: scripts/test.sh installs it (python3 -m pip install --target target/pydeps 'redis>=5,<6')"
        } else {
            ""
        }
    );
    stdout
}

#[tokio::test]
async fn the_redis_cli_example_publishes_and_its_repeated_fcall_pushes_once() {
    let app = TestApp::start().await;
    let device = app.register_device("u-42").await;
    let printed = example(&app, "sh", &["examples/redis-cli.sh"]);
    assert!(printed.contains("duplicate"), "{printed}");
    app.step().await;
    assert_eq!(
        titles(&app, &device),
        vec!["Vehicle entered lot 1", "Vehicle left lot 1"]
    );
}

#[tokio::test]
async fn the_python_example_publishes_once_per_id_and_is_refused_clearly() {
    let app = TestApp::start().await;
    let device = app.register_device("u-42").await;
    let printed = example(&app, "python3", &["examples/python/publish.py"]);
    assert!(printed.contains("attempt 1: added"), "{printed}");
    assert!(printed.contains("attempt 2: duplicate"), "{printed}");
    assert!(
        printed.contains("refused: CONFLICT event id visit-982-entry"),
        "{printed}"
    );
    assert!(printed.contains("refused: INVALID topic"), "{printed}");
    app.step().await;
    assert_eq!(
        titles(&app, &device),
        vec!["Lot 2 closes at 22:00", "Vehicle entered lot 2"]
    );
}

#[tokio::test]
async fn a_value_that_is_not_utf8_is_dead_lettered_naming_its_field() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    let _: String = redis::cmd("XADD")
        .arg(app.stream())
        .arg("*")
        .arg("topic")
        .arg("a.b")
        .arg("user")
        .arg("u-1")
        .arg("title")
        .arg(&b"caf\xe9"[..])
        .query(&mut app.redis.conn())
        .expect("XADD");
    let batch = app.step().await;
    assert!(
        matches!(&batch.entries[0].1, EntryOutcome::DeadLettered { reason } if reason == "undecodable"),
        "{batch:?}"
    );
    let dead = app.dead_letters().await.pop().expect("a dead letter");
    assert!(
        dead.fields["dlq.last_error"].starts_with("field \"title\" is not UTF-8"),
        "{dead:?}"
    );
    assert!(titles(&app, &device).is_empty());
}

/// An event's entry fields as README's entry contract writes them: the
/// notification's members flat (text as is, true/false, digits, JSON text for
/// vibrate, actions and data), `data` of a data push as JSON text.
fn contract_fields(event: &serde_json::Value) -> Vec<(String, String)> {
    let flat = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut fields = Vec::new();
    for (name, value) in event.as_object().expect("an object") {
        match name.as_str() {
            "notification" => {
                for (member, value) in value.as_object().expect("an object") {
                    fields.push((member.clone(), flat(value)));
                }
            }
            _ => fields.push((name.clone(), flat(value))),
        }
    }
    fields
}

/// The largest `n` for which the API takes `make(n, id)` (its payload limit, exactly).
async fn largest(
    app: &TestApp,
    round: usize,
    make: &dyn Fn(usize, &str) -> serde_json::Value,
) -> usize {
    let (mut ok, mut too_big) = (0, 4000);
    while too_big - ok > 1 {
        let n = (ok + too_big) / 2;
        let (status, body) = app
            .post("/v1/events", &make(n, &format!("p{round:02}{n:04}")))
            .await;
        match status {
            202 => ok = n,
            422 => too_big = n,
            _ => panic!("{status}: {body}"),
        }
    }
    ok
}

#[tokio::test]
async fn the_function_takes_exactly_the_payloads_the_api_takes() {
    let app = TestApp::start().await;
    let every_option = serde_json::json!({
        "title": "Exit", "icon": "/i/car.png", "image": "https://cdn.example/plate.jpg",
        "badge": "/i/b.png", "url": "/visits/981", "tag": "visit-981", "renotify": true,
        "require_interaction": true, "silent": false, "timestamp": 1764580000000u64, "lang": "ko-KR",
        "dir": "rtl", "vibrate": [200, 100, 200],
        "actions": [{"action": "pay", "title": "Pay \"now\"", "url": "/pay/981", "icon": "/i/pay.png"},
                    {"action": "later", "title": "Later"}],
        "data": {"visit": 981, "fee": 3.5, "note": "é\u{1}"}, "app_badge": 7, "mutable": true});
    type Make = Box<dyn Fn(&str, usize, &str) -> serde_json::Value>;
    let shapes: Vec<(&str, Make, &[&str])> = vec![
        // ASCII, characters JSON escapes in two bytes, in six, and multi-byte UTF-8.
        (
            "title and body",
            Box::new(|unit, n, id| {
                serde_json::json!({"id": id, "topic": "a.b", "user": "u-1",
            "notification": {"title": "t", "body": unit.repeat(n)}})
            }),
            &["x", "\"", "\u{1}", "é"],
        ),
        (
            "every option",
            Box::new(move |unit, n, id| {
                let mut notification = every_option.clone();
                notification["body"] = serde_json::json!(unit.repeat(n));
                serde_json::json!({"id": id, "topic": "a.b", "user": "u-1", "notification": notification})
            }),
            &["x", "\u{1}"],
        ),
        (
            "a data push",
            Box::new(|unit, n, id| {
                serde_json::json!({"id": id, "topic": "a.b", "user": "u-1",
            "data": {"note": unit.repeat(n)}})
            }),
            &["x", "é"],
        ),
    ];
    let mut round = 0;
    for (shape, make, units) in &shapes {
        for unit in units.iter() {
            round += 1;
            let n = largest(&app, round, &|n, id| make(unit, n, id)).await;
            assert!(n > 0, "{shape}: nothing fits");
            let fits = contract_fields(&make(unit, n, &format!("f{round:02}{n:04}")));
            let fits: Vec<(&str, &str)> =
                fits.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(
                fcall(&app, &fits).expect("fits").1,
                "added",
                "{shape}: {unit:?} x {n}"
            );
            let over = contract_fields(&make(unit, n + 1, &format!("o{round:02}{n:04}")));
            let over: Vec<(&str, &str)> =
                over.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let refused = fcall(&app, &over).expect_err("one more is too big");
            assert!(
                refused
                    .detail()
                    .is_some_and(|d| d.starts_with("notification:") || d.starts_with("data:")),
                "{shape}: {unit:?}: {refused}"
            );
        }
    }
}

#[tokio::test]
async fn the_api_is_not_bound_by_limits_another_role_loaded() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    // Another role, with a tighter clock skew and dedup window, loaded its version last.
    let mut other = app.settings.clone();
    other.events.max_clock_skew = std::time::Duration::from_secs(10);
    other.events.dedup_window = std::time::Duration::from_millis(1);
    herald::intake::publish::library::load(&app.db, &other)
        .await
        .expect("loaded");
    let ahead =
        herald::shared::event::format_time(chrono::Utc::now() + chrono::Duration::seconds(60));
    let event = serde_json::json!({"id": "e-ahead", "topic": "a.b", "user": "u-1",
        "publish_at": ahead, "notification": {"title": "a minute ahead"}});
    let (status, body) = app.post("/v1/events", &event).await;
    assert_eq!(status, 202, "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (status, body) = app.post("/v1/events", &event).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["events"][0]["duplicate"], true,
        "the API's own dedup window: {body}"
    );
    app.step().await;
    assert_eq!(titles(&app, &device), vec!["a minute ahead"]);
}

#[tokio::test]
async fn the_api_and_a_producers_fcall_agree_on_what_is_the_same_event() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    // A body over 100 bytes: lengths of one, two and three digits in the digest.
    let long_body = format!("Lot 7, {}", "level 2 ".repeat(14));
    let event = serde_json::json!({"id": "e-same", "topic": "a.b", "user": "u-1", "key": "k-1",
        "headers": {"lot": "7", "a_c": "1", "ab": "2", "B": "3"}, "ttl": 60,
        "notification": {"title": "Entry", "body": long_body}});
    let (status, body) = app.post("/v1/events", &event).await;
    assert_eq!(status, 202, "{body}");
    let first = body["events"][0]["stream_id"]
        .as_str()
        .expect("added")
        .to_string();
    let same = [
        ("h.lot", "7"),
        // Names that sort differently by bytes and by a locale's collation:
        // both sides must sort by bytes, whatever the server's locale.
        ("h.ab", "2"),
        ("h.B", "3"),
        ("h.a_c", "1"),
        ("body", long_body.as_str()),
        ("title", "Entry"),
        ("ttl", "60"),
        ("key", "k-1"),
        ("user", "u-1"),
        ("topic", "a.b"),
        ("id", "e-same"),
    ];
    let (stream_id, outcome) = fcall(&app, &same).expect("published");
    assert_eq!(
        (stream_id.as_str(), outcome.as_str()),
        (first.as_str(), "duplicate")
    );
    let other = [
        ("id", "e-same"),
        ("topic", "a.b"),
        ("user", "u-1"),
        ("title", "Exit"),
    ];
    assert_eq!(
        fcall(&app, &other).expect_err("other content").code(),
        Some("CONFLICT")
    );
    // And the other way round: a producer first, then the API.
    let (first, _) = fcall(
        &app,
        &[
            ("id", "e-p"),
            ("topic", "a.b"),
            ("user", "u-1"),
            ("title", "P"),
        ],
    )
    .expect("published");
    let (status, body) = app
        .post(
            "/v1/events",
            &serde_json::json!({"id": "e-p", "topic": "a.b", "user": "u-1", "notification": {"title": "P"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["events"][0]["duplicate"], true, "{body}");
    assert_eq!(body["events"][0]["stream_id"], first.as_str());
    app.step().await;
    assert_eq!(titles(&app, &device), vec!["Entry", "P"]);
}
