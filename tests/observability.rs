//! What operators see: `/metrics` after a small scripted run, the health
//! endpoints of every role, the logs of a whole run (errors included) free of
//! secrets and carrying the producer's trace context, and the shipped
//! dashboard and alert rules naming only metrics that exist.

mod helpers;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use helpers::{eventually, spawn_role_with, terminate, TestApp};
use herald::operate::sink::Fault;
use serde_json::{json, Value};

/// `name{labels} value` lines of a Prometheus exposition, keyed by `name{labels}`.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn metrics(app: &TestApp) -> String {
    let response = app
        .http
        .get(format!("{}/metrics", app.api_url))
        .send()
        .await
        .expect("/metrics answers");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_run() {
    let app = TestApp::start().await;
    let fine = app.register_device("u-1").await;
    let gone = app.register_device("u-1").await;
    let refused = app.register_device("u-2").await;
    app.sink.unsubscribe(&gone);
    app.sink.add_faults(&refused, vec![Fault::status(400)]);
    app.publish_to("u-1", "to a good and a gone device").await;
    app.publish_to("u-2", "to a device whose service refuses it")
        .await;
    let (status, _) = app.post("/v1/events", &json!({"topic": "no user"})).await;
    assert_eq!(status, 422);
    let batch = app.step().await;
    assert_eq!(batch.entries.len(), 2, "{batch:?}");
    let stats = herald::operate::stats::collect(&app.db, None, None)
        .await
        .expect("stats");
    herald::operate::stats::sample(&stats);

    let text = metrics(&app).await;
    let s = samples(&text);
    let get = |key: &str| {
        *s.get(key)
            .unwrap_or_else(|| panic!("{key} is missing from /metrics:\n{text}"))
    };
    assert_eq!(get(r#"herald_events_ingested_total{result="added"}"#), 2.0);
    assert_eq!(
        get(r#"herald_events_rejected_total{reason="invalid_field"}"#),
        1.0
    );
    assert_eq!(
        get(r#"herald_pushes_total{outcome="delivered",service="other"}"#),
        1.0
    );
    assert_eq!(
        get(r#"herald_pushes_total{outcome="gone",service="other"}"#),
        1.0
    );
    assert_eq!(
        get(r#"herald_pushes_total{outcome="dead_lettered",service="other"}"#),
        1.0
    );
    assert_eq!(
        get(r#"herald_dead_letters_total{reason="push_bad_request"}"#),
        1.0
    );
    assert_eq!(
        get(r#"herald_events_processed_total{outcome="acked"}"#),
        2.0
    );
    assert_eq!(
        get(r#"herald_push_duration_seconds_count{service="other"}"#),
        3.0
    );
    assert_eq!(
        get(r#"herald_push_duration_seconds_bucket{service="other",le="+Inf"}"#),
        3.0
    );
    assert_eq!(get("herald_delivery_latency_seconds_count"), 1.0);
    assert_eq!(
        get(&format!(
            r#"herald_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert_eq!(get(r#"herald_stream_length{partition="0"}"#), 2.0);
    assert_eq!(get(r#"herald_dead_letter_length{partition="0"}"#), 1.0);
    assert_eq!(
        get(r#"herald_group_pending{partition="0",group="herald"}"#),
        0.0
    );
    assert_eq!(
        get(r#"herald_group_lag{partition="0",group="herald"}"#),
        0.0
    );
    assert_eq!(
        get(r#"herald_group_consumers{partition="0",group="herald"}"#),
        1.0
    );
    assert_eq!(get(r#"herald_scheduled_events{partition="0"}"#), 0.0);
    assert_eq!(get(r#"herald_held_events{partition="0"}"#), 0.0);
    // No label carries a user, an endpoint or an event id.
    for forbidden in ["u-1", "u-2", &fine, &gone, &refused, app.sink.base_url()] {
        assert!(!text.contains(forbidden), "/metrics mentions {forbidden}");
    }
    // Every metric the dashboard and the alert rules query is in this scrape.
    let scraped = referenced_metrics(&text);
    for shipped in [
        include_str!("../deploy/grafana/herald-dashboard.json"),
        include_str!("../deploy/prometheus/alerts.yml"),
    ] {
        for name in referenced_metrics(shipped) {
            assert!(
                scraped.contains(&name),
                "{name} is queried but not in a running herald's /metrics:\n{text}"
            );
        }
    }
}

/// Every `herald_…` metric name the shipped dashboard and alert rules use.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("herald_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        // Histogram series are named by their family.
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(family.to_string());
        i = end;
    }
    names
}

/// The metric names `src/metrics.rs` documents (its table is the list of what it records).
fn documented_metrics() -> BTreeSet<String> {
    let source = include_str!("../src/shared/metrics.rs");
    source
        .lines()
        .filter_map(|l| l.strip_prefix("//! | `herald_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("herald_{name}"))
        .collect()
}

#[test]
fn the_dashboard_and_alert_rules_use_only_metrics_herald_exports() {
    let documented = documented_metrics();
    assert!(documented.len() >= 19, "{documented:?}");
    let dashboard_text = include_str!("../deploy/grafana/herald-dashboard.json");
    let dashboard: Value = serde_json::from_str(dashboard_text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], json!("herald-overview"), "a stable uid");
    assert!(
        dashboard["__inputs"][0]["type"] == json!("datasource"),
        "the datasource is an input"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Pushes by outcome",
        "Dead letters",
        "Lag",
        "Pending",
        "Oldest pending",
        "Push latency",
        "Consumers",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(wanted)),
            "no panel {wanted:?} in {titles:?}"
        );
    }
    let rules_text = include_str!("../deploy/prometheus/alerts.yml");
    let rules: serde_yaml::Value =
        serde_yaml::from_str(rules_text).expect("the alert rules are YAML");
    let alerts: Vec<String> = rules["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .map(|r| {
            assert!(r["expr"].as_str().is_some_and(|e| !e.is_empty()), "{r:?}");
            r["alert"].as_str().expect("alert name").to_string()
        })
        .collect();
    for wanted in [
        "HeraldDeadLettersGrowing",
        "HeraldLagGrowing",
        "HeraldOldestPendingTooOld",
        "HeraldNoConsumers",
        "HeraldBreakerOpen",
    ] {
        assert!(
            alerts.iter().any(|a| a == wanted),
            "no alert {wanted} in {alerts:?}"
        );
    }
    for text in [dashboard_text, rules_text] {
        for name in referenced_metrics(text) {
            assert!(
                documented.contains(&name),
                "{name} is used but herald does not export it"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reclaimer_and_audit_serve_metrics_and_health_and_say_when_they_drain() {
    let app = TestApp::start().await;
    let port = herald::operate::embedded_redis::free_port().expect("a free port");
    let listen = format!("127.0.0.1:{port}");
    let mut worker = spawn_role_with(
        &app,
        &["worker"],
        "w-admin",
        &[("HERALD_ADMIN__LISTEN", &listen)],
    );
    helpers::wait_started(&app, "w-admin").await;
    let base = format!("http://{listen}");
    let get = |path: &str| {
        let http = app.http.clone();
        let url = format!("{base}{path}");
        async move {
            let r = http
                .get(url)
                .send()
                .await
                .expect("the admin listener answers");
            (r.status().as_u16(), r.text().await.expect("a body"))
        }
    };
    assert_eq!(get("/livez").await.0, 200);
    assert_eq!(
        get("/readyz").await,
        (200, r#"{"status":"ready"}"#.to_string())
    );
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("herald_build_info"), "{text}");

    // While it drains (a push takes 2 s), /readyz says so; /livez still answers.
    app.register_device("u-1").await;
    app.sink.set_delay(Duration::from_secs(2));
    app.publish_to("u-1", "slow").await;
    eventually("the worker took the event", Duration::from_secs(10), || {
        app.pending() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(worker.id() as i32, libc::SIGTERM);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get("/readyz").await,
        (503, r#"{"status":"draining"}"#.to_string())
    );
    assert_eq!(get("/livez").await.0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = worker.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{}", helpers::logs(&app, "w-admin"));
    assert_eq!(app.sink.delivered().len(), 1, "the push in flight finished");

    let mut reclaimer = spawn_role_with(
        &app,
        &["reclaimer"],
        "r-admin",
        &[
            ("HERALD_ADMIN__LISTEN", &listen),
            ("HERALD_ADMIN__SAMPLE_INTERVAL", "100ms"),
        ],
    );
    helpers::wait_started(&app, "r-admin").await;
    let mut sampled = String::new();
    for _ in 0..50 {
        sampled = get("/metrics").await.1;
        if sampled.contains("herald_stream_length") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sampled.contains(r#"herald_stream_length{partition="0"} 1"#),
        "{sampled}"
    );
    assert!(
        sampled.contains(r#"herald_group_pending{partition="0",group="herald"} 0"#),
        "{sampled}"
    );
    let status = terminate(&mut reclaimer, Duration::from_secs(20));
    assert!(status.success());

    // herald audit has the same listener.
    let mut audit = spawn_role_with(
        &app,
        &["audit"],
        "audit",
        &[("HERALD_ADMIN__LISTEN", &listen)],
    );
    let mut ready = (0, String::new());
    for _ in 0..100 {
        if let Ok(r) = app.http.get(format!("{base}/readyz")).send().await {
            ready = (r.status().as_u16(), r.text().await.unwrap_or_default());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ready,
        (200, r#"{"status":"ready"}"#.to_string()),
        "{}",
        helpers::logs(&app, "audit")
    );
    let status = terminate(&mut audit, Duration::from_secs(20));
    assert!(status.success(), "{}", helpers::logs(&app, "audit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_run_logs_no_secret_and_continues_the_producers_trace() {
    let app = TestApp::start().await;
    let port = herald::operate::embedded_redis::free_port().expect("a free port");
    let api = format!("http://127.0.0.1:{port}");
    let token = "tok-9f8e7d6c5b4a39281706";
    let listen = format!("127.0.0.1:{port}");
    let tokens = format!(
        "[{{name=\"observer\",sha256=\"{}\",scopes=[\"publish\",\"subscriptions\"]}}]",
        herald::intake::auth::digest_hex(token)
    );
    // The test's own API (in this process) holds the data dir's spool.
    let spool = app.data.path().join("spool-up");
    let spool = spool.to_str().expect("utf-8 path");
    // Every secret comes from the environment here: the key, the token digests, the JWT secret.
    let (_, vapid) = herald::deliver::push::vapid::VapidKey::generate();
    let jwt_secret = "jwt-secret-5d41402abc4b2a76b9719d911017c592";
    let env = [
        ("HERALD_API__LISTEN", listen.as_str()),
        ("HERALD_API__TOKENS", tokens.as_str()),
        ("HERALD_API__SUBSCRIBER_TOKENS__SECRET", jwt_secret),
        ("HERALD_PUSH__VAPID_PRIVATE_KEY", vapid.as_str()),
        ("HERALD_SPOOL__DIR", spool),
        ("RUST_LOG", "debug"),
    ];
    let mut herald = spawn_role_with(&app, &["up"], "up", &env);
    let http = app.http.clone();
    let call =
        |method: reqwest::Method, path: &str, body: Value, headers: Vec<(&'static str, String)>| {
            let mut request = http
                .request(method, format!("{api}{path}"))
                .bearer_auth(token)
                .json(&body);
            for (k, v) in headers {
                request = request.header(k, v);
            }
            async move {
                let r = request.send().await.expect("herald answers");
                (r.status().as_u16(), r.text().await.unwrap_or_default())
            }
        };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "herald up did not listen on {listen}; its logs:\n{}",
            helpers::logs(&app, "up")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Devices: one fine, one gone, one refused (400), one failing once (503), one slow past the timeout.
    let mut secrets: Vec<String> = vec![token.to_string(), jwt_secret.into(), vapid.clone()];
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (id, subscription) = app.sink.new_subscription();
        for key in ["p256dh", "auth"] {
            secrets.push(subscription["keys"][key].as_str().expect("key").to_string());
        }
        let endpoint = subscription["endpoint"].as_str().expect("endpoint");
        secrets.push(endpoint.rsplit('/').next().expect("path id").to_string());
        let (status, body) = call(
            reqwest::Method::POST,
            "/v1/subscriptions",
            json!({"user": "u-1", "subscription": subscription}),
            vec![],
        )
        .await;
        assert_eq!(status, 201, "{body}");
        ids.push(id);
    }
    app.sink.unsubscribe(&ids[1]);
    app.sink.add_faults(&ids[2], vec![Fault::status(400)]);
    app.sink.add_faults(&ids[3], vec![Fault::status(503)]);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (status, body) = call(
        reqwest::Method::POST,
        "/v1/events",
        json!({"topic": "parking.lot-7.entry", "user": "u-1", "notification": {"title": "traced"}}),
        vec![("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // Errors on the way in: a bad token, an invalid event.
    let (status, _) = http
        .post(format!("{api}/v1/events"))
        .bearer_auth("wrong-token-123456")
        .json(&json!({}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .expect("answers");
    assert_eq!(status, 401);
    // A browser's subscriber token, and a forged one.
    let jwt = |secret: &str| {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let exp = chrono::Utc::now().timestamp() + 600;
        let signed = format!(
            "{}.{}",
            b64(r#"{"alg":"HS256"}"#),
            b64(&format!(
                r#"{{"sub":"u-1","aud":"herald","iat":{},"exp":{exp}}}"#,
                exp - 600
            ))
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(ring::hmac::sign(&key, signed.as_bytes()));
        format!("{signed}.{signature}")
    };
    for (bearer, expected) in [
        (jwt(jwt_secret), 200),
        (jwt("forged-forged-forged-forged-forged"), 401),
    ] {
        let status = http
            .get(format!("{api}/v1/subscriptions"))
            .bearer_auth(&bearer)
            .send()
            .await
            .expect("answers")
            .status();
        assert_eq!(status, expected);
        secrets.push(bearer.rsplit('.').next().expect("signature").to_string());
    }
    let (status, _) = call(
        reqwest::Method::POST,
        "/v1/events",
        json!({"topic": ""}),
        vec![],
    )
    .await;
    assert_eq!(status, 422);
    eventually(
        "the fine and the retried device have it",
        Duration::from_secs(30),
        || {
            let delivered: BTreeSet<String> = app
                .sink
                .delivered()
                .into_iter()
                .map(|a| a.subscription)
                .collect();
            delivered.contains(&ids[0]) && delivered.contains(&ids[3])
        },
    )
    .await;
    // Nor do metrics, dead letters or `config print` hold any of them.
    let scraped = http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let dead = app.dead_letters().await;
    assert!(!dead.is_empty(), "the 400 device made a dead letter");
    let dead = format!("{dead:?}");
    let printed = std::process::Command::new(helpers::herald_bin())
        .args(["config", "print"])
        .current_dir(app.data.path())
        .envs(env)
        .output()
        .expect("config print");
    assert!(printed.status.success());
    let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
    for (what, text) in [
        ("metrics", &scraped),
        ("dead letters", &dead),
        ("config print", &printed),
    ] {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} contain a secret: {secret}"
            );
        }
    }

    let status = terminate(&mut herald, Duration::from_secs(20));
    assert!(status.success());

    let logs = helpers::logs(&app, "up");
    assert!(
        logs.lines().count() > 20,
        "a debug run logs plenty:\n{logs}"
    );
    assert!(logs.contains("dead-lettered"), "errors are in the run");
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "the logs contain a secret: {secret}"
        );
    }
    // The worker's span for the event carries the producer's trace id.
    let continued = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|l| l["span"]["trace_id"] == json!(trace_id) && l["span"]["name"] == json!("event"));
    assert!(continued, "no event span with trace_id {trace_id}:\n{logs}");
}

/// `promtool` (Debian's prometheus package) checks the Prometheus config and
/// the alert rules, and runs their unit tests, in which every alert has a
/// series that fires it and one that leaves it quiet.
#[test]
fn promtool_checks_the_config_and_every_alert_fires_and_stays_quiet_as_tested() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["check", "rules", "alerts.yml"],
        &["test", "rules", "alerts.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run promtool ({e}): install Debian's prometheus package (scripts/test.sh does: apt-get install prometheus)")
            });
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../deploy/prometheus/alerts.yml")).expect("YAML");
    let tests: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../deploy/prometheus/alerts.test.yml")).expect("YAML");
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for test in tests["tests"].as_sequence().expect("tests") {
        let series = test["input_series"].as_sequence().map_or(0, Vec::len);
        for case in test["alert_rule_test"]
            .as_sequence()
            .expect("alert_rule_test")
        {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected > 0 {
                fires.insert(name.clone());
            }
            // Quiet: nothing expected, or series beyond those expected to fire.
            if expected < series {
                quiet.insert(name);
            }
        }
    }
    for rule in rules["groups"][0]["rules"].as_sequence().expect("rules") {
        let name = rule["alert"].as_str().expect("alert").to_string();
        assert!(fires.contains(&name), "no unit test fires {name}");
        assert!(quiet.contains(&name), "no unit test shows {name} quiet");
    }
}
