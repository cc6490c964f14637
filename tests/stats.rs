//! `herald stats` agrees with what Redis itself reports.

mod helpers;

use std::process::Command;

use helpers::{herald_bin, TestApp};
use herald::operate::sink::Fault;
use serde_json::Value;

#[tokio::test]
async fn stats_json_agrees_with_xinfo_and_xpending() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    app.publish_to("u-1", "delivered").await;
    app.step().await;
    app.sink
        .add_faults(&device, vec![Fault::status(503), Fault::status(400)]);
    app.publish_to("u-1", "pending").await;
    app.step().await;
    app.publish_to("u-1", "dead").await;
    app.step().await;
    app.publish_to("u-1", "unread").await;

    let out = Command::new(herald_bin())
        .args(["stats", "--json"])
        .current_dir(app.data.path())
        .env_remove("REDIS_URL")
        .env("HERALD_REDIS__URL", app.redis.url())
        .env("HERALD_REDIS__KEY_PREFIX", &app.settings.redis.key_prefix)
        .env("HERALD_DATA_DIR", app.data.path())
        .output()
        .expect("run herald stats");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value = serde_json::from_slice(&out.stdout).expect("json");
    let s = &stats["streams"][0];
    assert_eq!(s["length"], 4);
    assert_eq!(s["dead_letters"], 1);
    assert_eq!(s["dead_letter_reasons"][0][0], "push_bad_request");

    let mut conn = app.redis.conn();
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(app.stream())
        .query(&mut conn)
        .expect("XINFO GROUPS");
    let as_u64 = |v: &redis::Value| redis::from_redis_value::<u64>(v.clone()).expect("number");
    let g = &s["groups"][0];
    assert_eq!(g["name"], "herald");
    assert_eq!(g["pending"], as_u64(&groups[0]["pending"]));
    assert_eq!(g["pending"], 1);
    assert_eq!(g["lag"], as_u64(&groups[0]["lag"]));
    assert_eq!(g["lag"], 1);
    let summary: helpers::PendingSummary = redis::cmd("XPENDING")
        .arg(app.stream())
        .arg("herald")
        .query(&mut conn)
        .expect("XPENDING");
    assert_eq!(
        g["oldest_pending_id"],
        Value::String(summary.1.expect("an oldest id"))
    );
    assert_eq!(g["consumers"][0]["name"], app.worker.consumer());
    assert_eq!(g["consumers"][0]["pending"], 1);
    assert_eq!(stats["spool"]["records"], 0);

    let table = Command::new(herald_bin())
        .arg("stats")
        .current_dir(app.data.path())
        .env_remove("REDIS_URL")
        .env("HERALD_REDIS__URL", app.redis.url())
        .env("HERALD_REDIS__KEY_PREFIX", &app.settings.redis.key_prefix)
        .output()
        .expect("run herald stats");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("lag 1") && text.contains("pending 1") && text.contains("push_bad_request 1"),
        "{text}"
    );
}
