//! Producers that write to the streams themselves, as README's "Publishing
//! with XADD or FCALL" tells them: a plain `XADD` with the documented fields,
//! `FCALL herald_publish` (idempotent), entries that break the contract, and
//! the redis-cli and Python examples run as a producer would run them.

mod helpers;

use std::process::Command;

use helpers::TestApp;
use herald::deliver::EntryOutcome;

/// The titles a device got, in order.
fn titles(app: &TestApp, device: &str) -> Vec<String> {
    app.sink
        .delivered()
        .into_iter()
        .filter(|a| a.subscription == device)
        .filter_map(|a| {
            a.plaintext
                .map(|p| p["title"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

fn xadd(app: &TestApp, fields: &[(&str, &str)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(app.stream()).arg("*");
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    cmd.query(&mut app.redis.conn()).expect("XADD")
}

fn fcall(app: &TestApp, fields: &[(&str, &str)]) -> redis::RedisResult<(String, String)> {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("herald_publish").arg(1).arg(app.stream());
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    cmd.query(&mut app.redis.conn())
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
        vec!["Vehicle entered lot 2", "Lot 2 closes at 22:00"]
    );
}
