//! `herald dlq list / show / replay / purge` as an operator runs them.

mod helpers;

use std::process::Command;

use helpers::{herald_bin, TestApp};
use herald::operate::sink::Fault;
use serde_json::Value;

fn dlq(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(herald_bin())
        .arg("dlq")
        .args(args)
        .current_dir(app.data.path())
        .env_remove("REDIS_URL")
        .env("HERALD_REDIS__URL", app.redis.url())
        .env("HERALD_REDIS__KEY_PREFIX", &app.settings.redis.key_prefix)
        .output()
        .expect("run herald dlq");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn an_operator_lists_shows_replays_and_purges_dead_letters() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    app.sink.add_faults(
        &device,
        vec![
            Fault::status(400),
            Fault::status(400),
            Fault::status(400),
            Fault::status(413),
        ],
    );
    for n in 0..4 {
        app.publish_to("u-1", &format!("event {n}")).await;
    }
    app.step().await;

    let (ok, out, err) = dlq(&app, &["list", "--json"]);
    assert!(ok, "{err}");
    let all = json(&out);
    assert_eq!(all.as_array().map(Vec::len), Some(4));

    let (ok, out, _) = dlq(&app, &["list", "--reason", "payload_too_large", "--json"]);
    assert!(ok);
    let too_large = json(&out);
    assert_eq!(too_large.as_array().map(Vec::len), Some(1));
    let id = too_large[0]["id"].as_str().expect("id").to_string();

    let (ok, out, _) = dlq(&app, &["list"]);
    assert!(ok);
    assert!(
        out.contains("push_bad_request") && out.contains("4 dead letter(s)"),
        "{out}"
    );

    let (ok, out, _) = dlq(&app, &["show", &id]);
    assert!(ok);
    assert!(
        out.contains("dlq.reason") && out.contains("payload_too_large"),
        "{out}"
    );
    let (ok, _, err) = dlq(&app, &["show", "0-1"]);
    assert!(!ok);
    assert!(err.contains("no dead letter has id 0-1"), "{err}");

    // Replay needs to be told which.
    let (ok, _, err) = dlq(&app, &["replay"]);
    assert!(!ok);
    assert!(err.contains("--all"), "{err}");
    let (ok, out, err) = dlq(&app, &["replay", "--reason", "push_bad_request", "--json"]);
    assert!(ok, "{err}");
    assert_eq!(json(&out).as_array().map(Vec::len), Some(3));
    app.step().await;
    assert_eq!(
        app.sink.delivered().len(),
        3,
        "the replayed events were delivered"
    );

    // Purge asks for --yes.
    let (ok, out, err) = dlq(&app, &["purge", "--all"]);
    assert!(!ok);
    assert!(
        err.contains("--yes") && out.contains("payload_too_large"),
        "{out} {err}"
    );
    assert_eq!(app.dead_letters().await.len(), 1);
    let (ok, out, err) = dlq(&app, &["purge", "--older-than", "0s", "--yes", "--json"]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["deleted"], 1);
    assert!(app.dead_letters().await.is_empty());
}
