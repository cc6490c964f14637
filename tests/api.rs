//! The HTTP API's contract: statuses, error bodies naming the field, idempotent
//! publishes, subscriptions, health.

mod helpers;

use helpers::TestApp;
use serde_json::{json, Value};

fn event(user: &str) -> Value {
    json!({"topic": "parking.lot-7.entry", "user": user, "notification": {"title": "Entry"}})
}

fn event_with_id(user: &str, id: &str) -> Value {
    let mut e = event(user);
    e["id"] = json!(id);
    e
}

#[tokio::test]
async fn a_single_event_is_accepted_with_its_id_and_stream_id() {
    let app = TestApp::start().await;
    let (status, body) = app
        .post(
            "/v1/events",
            &json!({"id": "evt-1", "topic": "a.b", "user": "u", "notification": {"title": "t"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["events"][0]["id"], "evt-1");
    let stream_id = body["events"][0]["stream_id"].as_str().expect("stream id");
    // The entry is readable with redis-cli: flat fields.
    let entries = app.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, stream_id);
    let fields = &entries[0].1;
    assert_eq!(fields["topic"], "a.b");
    assert_eq!(fields["user"], "u");
    assert_eq!(fields["title"], "t");
}

#[tokio::test]
async fn a_repeated_id_is_accepted_once_and_other_content_under_it_is_a_conflict() {
    let app = TestApp::start().await;
    let mut e = event_with_id("u-1", "evt-dup");
    let (s1, b1) = app.post("/v1/events", &e).await;
    let (s2, b2) = app.post("/v1/events", &e).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(
        b1["events"][0]["stream_id"], b2["events"][0]["stream_id"],
        "the original entry"
    );
    assert_eq!(b2["events"][0]["duplicate"], true);
    assert_eq!(app.stream_len(), 1, "no second entry");

    e["notification"]["title"] = json!("something else");
    let (s3, b3) = app.post("/v1/events", &e).await;
    assert_eq!(s3, 409, "{b3}");
    assert_eq!(b3["error"]["code"], "conflict");
    assert_eq!(b3["error"]["field"], "id");
    assert_eq!(app.stream_len(), 1);
}

/// A request's events go to Redis in calls of many events each: an event
/// refused in the middle of a call (another content under its id) refuses no
/// other, a repeated id within the request is a duplicate of its first, an
/// event due later waits in the schedule, and the entries keep the request's
/// order across calls.
#[tokio::test]
async fn a_conflict_in_the_middle_of_a_big_batch_refuses_that_event_alone() {
    let app = TestApp::start().await;
    let (status, body) = app
        .post("/v1/events", &event_with_id("u-other", "evt-b120"))
        .await;
    assert_eq!(status, 202, "{body}");

    let mut batch: Vec<Value> = (0..250)
        .map(|n| event_with_id(&format!("u-{n}"), &format!("evt-b{n}")))
        .collect();
    batch[7]["deliver_at"] = json!((chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
    batch.push(batch[5].clone());
    let (status, body) = app.post("/v1/events", &json!(batch)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"]["message"]
            .as_str()
            .map(|m| m.contains("evt-b120")),
        Some(true),
        "{body}"
    );
    let events = body["events"].as_array().expect("events");
    assert_eq!(events.len(), 251, "{body}");
    for (n, e) in events.iter().enumerate().take(250) {
        assert_eq!(
            e["id"],
            format!("evt-b{n}"),
            "the answers in the request's order"
        );
        match n {
            120 => assert_eq!(e["error"], "conflict", "{e}"),
            7 => assert_eq!(e["scheduled"], true, "{e}"),
            _ => assert!(
                e["stream_id"].is_string() && e.get("error").is_none(),
                "{e}"
            ),
        }
    }
    assert_eq!(events[250]["duplicate"], true, "{}", events[250]);
    assert_eq!(events[250]["stream_id"], events[5]["stream_id"]);

    // The first entry, then the batch's 248 new ones in order (not the
    // conflict, not the scheduled one, not the duplicate).
    let entries = app.entries();
    let ids: Vec<&str> = entries.iter().map(|(_, f)| f["id"].as_str()).collect();
    let expected: Vec<String> = std::iter::once("evt-b120".to_string())
        .chain(
            (0..250)
                .filter(|n| *n != 120 && *n != 7)
                .map(|n| format!("evt-b{n}")),
        )
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(entries[0].1["user"], "u-other", "the first content stands");
    let scheduled: Vec<String> = redis::cmd("ZRANGE")
        .arg(app.db.keys.scheduled(0))
        .arg(0)
        .arg(-1)
        .query(&mut app.redis.conn())
        .expect("ZRANGE");
    assert_eq!(scheduled, vec!["evt-b7".to_string()]);
}

/// `herald_publish_batch` checks a call's whole layout before it writes:
/// arguments for more events than it has dedup records, or fewer, write none.
#[tokio::test]
async fn a_malformed_publish_batch_call_writes_nothing() {
    let app = TestApp::start().await;
    let keys = &app.db.keys;
    let event = |n: &str| ["d", "0", n, "3", "v", "1", "id", n, "topic", "a.b"].map(String::from);
    let call = |dedups: &[&str], args: Vec<String>| {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("herald_publish_batch")
            .arg(3 + dedups.len())
            .arg(app.stream())
            .arg(keys.scheduled(0))
            .arg(keys.scheduled_events(0));
        for id in dedups {
            cmd.arg(keys.dedup(0, id));
        }
        cmd.arg(60_000).arg(args);
        cmd.query::<redis::Value>(&mut app.redis.conn())
    };
    let trailing: Vec<String> = event("m1")
        .into_iter()
        .chain(["extra".to_string()])
        .collect();
    let short = event("m1").to_vec();
    // A count of fields that is not a whole number, or far more than given.
    let mut fractional = event("m1").to_vec();
    fractional[3] = "1.5".into();
    let mut endless = event("m1").to_vec();
    endless[3] = "99999999999".into();
    for (dedups, args) in [
        (vec!["m1"], trailing),
        (vec!["m1", "m2"], short),
        (vec!["m1"], fractional),
        (vec!["m1"], endless),
    ] {
        let error = call(&dedups, args).expect_err("a malformed call is refused");
        assert_eq!(error.code(), Some("INVALID"), "{error}");
        assert_eq!(app.stream_len(), 0, "nothing written by {error}");
    }
    let whole: Vec<String> = event("m1").into_iter().chain(event("m2")).collect();
    call(&["m1", "m2"], whole).expect("a well-formed call");
    assert_eq!(app.stream_len(), 2);
}

#[tokio::test]
async fn bad_input_gets_a_status_and_a_json_error_naming_the_field() {
    let app = TestApp::start().await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"user": "u", "notification": {"title": "t"}}),
            422,
            "topic",
        ),
        (
            json!({"topic": "a..b", "user": "u", "notification": {"title": "t"}}),
            422,
            "topic",
        ),
        (
            json!({"topic": "a.b", "user": "u", "notification": {}}),
            422,
            "notification.title",
        ),
        (
            json!({"topic": "a.b", "user": "u", "notification": {"title": "t"}, "ttl": "long"}),
            422,
            "ttl",
        ),
        (
            json!({"topic": "a.b", "user": "u", "notification": {"title": "t"}, "urgency": "asap"}),
            422,
            "urgency",
        ),
        (
            json!({"topic": "a.b", "user": "u", "notification": {"title": "t"}, "colour": "red"}),
            422,
            "colour",
        ),
        (
            json!({"topic": "a.b", "user": "u", "notification": {"title": "t"}, "publish_at": "noon"}),
            422,
            "publish_at",
        ),
        (
            json!({"topic": "a.b", "user": "u", "notification": {"title": "t"}, "publish_at": "2999-01-01T00:00:00Z"}),
            422,
            "publish_at",
        ),
        (json!([]), 422, "body"),
        (json!("just a string"), 422, "body"),
    ];
    for (body, status, field) in cases {
        let (got, answer) = app.post("/v1/events", &body).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert_eq!(answer["error"]["field"], field, "{body} -> {answer}");
        assert!(answer["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(app.stream_len(), 0, "nothing was accepted");
}

#[tokio::test]
async fn one_bad_event_in_a_batch_rejects_the_batch_and_names_its_index() {
    let app = TestApp::start().await;
    let batch = json!([event("u-1"), {"topic": "x.*", "user": "u-2", "notification": {"title": "t"}}, event("u-3")]);
    let (status, body) = app.post("/v1/events", &batch).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "[1].topic");
    assert_eq!(app.stream_len(), 0, "no event of the batch was added");
}

#[tokio::test]
async fn malformed_json_wrong_media_type_and_oversized_bodies_are_refused() {
    let app = TestApp::start_with(|s| s.api.max_body_bytes = 2048).await;
    let url = format!("{}/v1/events", app.api_url);
    let r = app
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"topic\":")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "malformed_json");

    let r = app
        .http
        .post(&url)
        .body("topic=a")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 415);
    let body: Value = r.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "unsupported_media_type");

    let big = json!({"topic": "a.b", "user": "u", "notification": {"title": "x".repeat(4000)}});
    let r = app.http.post(&url).json(&big).send().await.expect("answer");
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "body_too_large");
}

#[tokio::test]
async fn a_notification_too_large_for_one_push_is_refused() {
    let app = TestApp::start().await;
    let big = json!({"topic": "a.b", "user": "u", "notification": {"title": "t", "body": "x".repeat(3100)}});
    let (status, body) = app.post("/v1/events", &big).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "notification");
}

#[tokio::test]
async fn subscriptions_are_validated_listed_updated_and_deleted() {
    let app = TestApp::start().await;
    let (_, browser) = app.sink.new_subscription();

    let mut bad = browser.clone();
    bad["keys"]["p256dh"] = json!("AAAA");
    let (status, body) = app
        .post(
            "/v1/subscriptions",
            &json!({"user": "u-1", "subscription": bad}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "subscription.keys.p256dh");

    let mut bad = browser.clone();
    bad["keys"]["auth"] = json!("c2hvcnQ");
    let (status, body) = app
        .post(
            "/v1/subscriptions",
            &json!({"user": "u-1", "subscription": bad}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "subscription.keys.auth");

    let (status, body) = app.post("/v1/subscriptions", &json!({"user": "u-1"})).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "subscription");

    let (status, body) = app
        .post(
            "/v1/subscriptions",
            &json!({"user": "u-1", "subscription": browser, "topics": ["parking.*.entry"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_string();

    // The same endpoint again, now for another user: updated, not duplicated.
    let (status, again) = app
        .post(
            "/v1/subscriptions",
            &json!({"user": "u-2", "subscription": browser}),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], json!(id));
    let (_, list1) = app.get("/v1/subscriptions?user=u-1").await;
    assert_eq!(list1["subscriptions"].as_array().map(Vec::len), Some(0));
    let (_, list2) = app.get("/v1/subscriptions?user=u-2").await;
    let subs = list2["subscriptions"].as_array().expect("array");
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0]["id"], json!(id));
    assert!(
        subs[0].get("keys").is_none() && subs[0].get("endpoint").is_none(),
        "no secrets listed"
    );
    assert!(subs[0]["endpoint_origin"]
        .as_str()
        .is_some_and(|o| o.starts_with("http://127.0.0.1:")));

    let (status, body) = app.get("/v1/subscriptions").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "user");

    let url = format!("{}/v1/subscriptions/{id}", app.api_url);
    assert_eq!(
        app.http.delete(&url).send().await.expect("answer").status(),
        204
    );
    assert_eq!(
        app.http.delete(&url).send().await.expect("answer").status(),
        404
    );
    let (_, list2) = app.get("/v1/subscriptions?user=u-2").await;
    assert_eq!(list2["subscriptions"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn insecure_endpoints_are_refused_unless_allowed() {
    let app = TestApp::start_with(|s| s.push.allow_insecure_endpoints = false).await;
    let (_, browser) = app.sink.new_subscription();
    let (status, body) = app
        .post(
            "/v1/subscriptions",
            &json!({"user": "u-1", "subscription": browser}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "subscription.endpoint");
}

#[tokio::test]
async fn health_and_the_vapid_key_answer() {
    let app = TestApp::start().await;
    assert_eq!(app.get("/livez").await.0, 200);
    assert_eq!(app.get("/readyz").await.0, 200);
    let (status, key) = app.get("/v1/vapid-public-key").await;
    assert_eq!(status, 200);
    assert_eq!(
        key["public_key"].as_str().map(str::len),
        Some(87),
        "65 bytes, base64url"
    );
    let (status, body) = app.get("/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn without_redis_and_without_a_spool_the_api_is_not_ready_and_refuses_with_503() {
    let mut app = TestApp::start_with(|s| s.spool.enabled = false).await;
    app.redis.kill();
    assert_eq!(app.get("/readyz").await.0, 503);
    let (status, body) = app.post("/v1/events", &event("u")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(!body.to_string().contains("redis://"), "no internals leak");
}

#[tokio::test]
async fn without_redis_events_are_spooled_and_drained_into_the_stream_when_it_is_back() {
    let mut app = TestApp::start_durable().await;
    app.redis.kill();
    let (status, body) = app
        .post("/v1/events", &event_with_id("u-1", "evt-spooled-1"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["events"][0]["spooled"], true);
    assert_eq!(body["events"][0]["id"], "evt-spooled-1");
    let (status, body) = app
        .post("/v1/events", &json!([event("u-2"), event("u-3")]))
        .await;
    assert_eq!(status, 202, "{body}");
    app.redis.restart();
    helpers::eventually(
        "the spool to drain",
        std::time::Duration::from_secs(20),
        || app.stream_len() == 3,
    )
    .await;
    let entries = app.entries();
    assert_eq!(entries[0].1["id"], "evt-spooled-1", "in order, id kept");
    assert_eq!(entries[1].1["user"], "u-2");
    assert_eq!(entries[2].1["user"], "u-3");
    // Back to normal once the spool has recorded its drain (the entries land in
    // the stream just before): while it holds events, new ones queue behind them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, metrics) = app.get("/metrics").await;
        let text = metrics.as_str().unwrap_or_default().to_string();
        if text.lines().any(|l| l == "herald_spool_depth_events 0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the spool still holds events: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, body) = app.post("/v1/events", &event("u-4")).await;
    assert_eq!(status, 202);
    assert!(body["events"][0]["stream_id"].is_string(), "{body}");
}

/// `redis.wait_replicas` with no replica to confirm: the events are written
/// but not answered as safe; the accepted ones go to the spool too (and stay
/// there until a replica confirms them), a conflict is still a 409.
#[tokio::test]
async fn unconfirmed_by_replicas_accepted_events_are_spooled_and_conflicts_still_answered() {
    let app = TestApp::start_with(|s| {
        s.redis.wait_replicas = 1;
        s.redis.wait_timeout = std::time::Duration::from_millis(200);
    })
    .await;
    // evt-w1 is in the stream already (a producer's own FCALL, no WAIT).
    let _: redis::Value = redis::cmd("FCALL")
        .arg("herald_publish")
        .arg(1)
        .arg(app.stream())
        .arg(&[
            "id",
            "evt-w1",
            "topic",
            "parking.lot-7.entry",
            "user",
            "u-1",
            "title",
            "Entry",
        ])
        .query(&mut app.redis.conn())
        .expect("FCALL herald_publish");
    assert_eq!(app.stream_len(), 1);

    let conflicting = event_with_id("u-9", "evt-w1");
    let second = event_with_id("u-2", "evt-w2");
    let (status, body) = app.post("/v1/events", &json!([conflicting, second])).await;
    assert_eq!(status, 409, "{body}");
    let events = body["events"].as_array().expect("events");
    assert!(
        events
            .iter()
            .any(|e| e["id"] == "evt-w1" && e["error"] == "conflict"),
        "{body}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["id"] == "evt-w2" && e["spooled"] == true),
        "{body}"
    );
    assert_eq!(app.stream_len(), 2, "evt-w2 was written all the same");
    // Until a replica confirms them, spooled events stay, and later ones queue behind.
    let (status, body) = app.post("/v1/events", &event("u-3")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["events"][0]["spooled"], true, "{body}");
}

/// With the defaults, an endpoint must be public https on port 443: every
/// form that leads inside is refused at registration naming the field, and a
/// stored one that slipped in (written to Redis by hand) is refused at send
/// time without a connection (a listener counts them).
#[tokio::test]
async fn endpoints_that_lead_inside_or_to_odd_ports_are_refused_and_never_connected_to() {
    let app = TestApp::start_with(|s| s.push.allow_insecure_endpoints = false).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let keys = |endpoint: &str| {
        let (_, browser) = app.sink.new_subscription();
        let mut subscription = browser;
        subscription["endpoint"] = json!(endpoint);
        json!({"user": "u-1", "subscription": subscription})
    };
    for endpoint in [
        format!("https://127.0.0.1:{port}/x"),
        "https://[64:ff9b::7f00:1]/x".to_string(),
        "https://[2002:7f00:1::1]/x".to_string(),
        "https://[::ffff:169.254.169.254]/x".to_string(),
        "https://198.18.0.1/x".to_string(),
        "https://224.0.0.251/x".to_string(),
        "https://push.example.net:8443/x".to_string(),
        "https://push.example.net:22/x".to_string(),
    ] {
        let (status, body) = app.post("/v1/subscriptions", &keys(&endpoint)).await;
        assert_eq!(status, 422, "{endpoint}: {body}");
        assert!(
            body.to_string().contains("subscription.endpoint"),
            "{endpoint}: {body}"
        );
    }

    // A name is resolved at registration too: this machine's own name leads
    // inside (loopback in Debian's /etc/hosts, a private address in a container's).
    let name = hostname::get()
        .expect("hostname")
        .to_string_lossy()
        .into_owned();
    let inside = tokio::net::lookup_host((name.as_str(), 443))
        .await
        .map(|addrs| {
            addrs
                .map(|a| a.ip())
                .any(|ip| !herald::shared::endpoint::is_public_ip(ip))
        })
        .unwrap_or(false);
    assert!(
        inside,
        "this test needs the machine's name ({name}) to resolve to a loopback or private address, as /etc/hosts makes it on Debian and in containers"
    );
    let (status, body) = app
        .post("/v1/subscriptions", &keys(&format!("https://{name}/x")))
        .await;
    assert_eq!(status, 422, "{name}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("resolves to")),
        "{body}"
    );

    // One stored by hand, past the API: refused when its event is pushed.
    let (_, browser) = app.sink.new_subscription();
    let stored = herald::shared::subscriptions::Subscription {
        id: "by-hand".into(),
        user: Some("u-2".into()),
        endpoint: format!("https://127.0.0.1:{port}/x"),
        p256dh: browser["keys"]["p256dh"].as_str().expect("p256dh").into(),
        auth: browser["keys"]["auth"].as_str().expect("auth").into(),
        topics: Vec::new(),
        headers: None,
        format: Default::default(),
        created_at: String::new(),
    };
    herald::shared::subscriptions::Store::new(app.db.clone())
        .put(&stored)
        .await
        .expect("store it");
    app.publish_to("u-2", "never sent").await;
    app.step().await;
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].subscription.as_deref(), Some("by-hand"));
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing connected to the refused endpoint"
    );
}

/// A stand-in proxy: answers `201` to every request and keeps each request line.
fn counting_proxy() -> (String, std::sync::Arc<parking_lot::Mutex<Vec<String>>>) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            record.lock().push(line.trim().to_string());
            let mut stream = stream;
            let _ = stream.write_all(
                b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    (url, seen)
}

/// `HTTPS_PROXY` and friends in the environment are never used (the address
/// checks would apply to the proxy, not the push service); `push.proxy` is.
#[tokio::test]
async fn pushes_go_through_push_proxy_only_never_the_environments_proxy() {
    let (env_proxy, env_seen) = counting_proxy();
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    let _worker = helpers::spawn_role_with(
        &app,
        &["worker"],
        "proxied-env",
        &[
            ("HTTPS_PROXY", &env_proxy),
            ("HTTP_PROXY", &env_proxy),
            ("ALL_PROXY", &env_proxy),
            ("https_proxy", &env_proxy),
            ("http_proxy", &env_proxy),
        ],
    );
    let id = app.publish_to("u-1", "direct").await;
    helpers::eventually(
        "the worker pushes directly",
        std::time::Duration::from_secs(20),
        || app.delivered_to(&device).contains(&id),
    )
    .await;
    assert!(
        env_seen.lock().is_empty(),
        "the environment's proxy saw {:?}",
        env_seen.lock()
    );

    let (proxy, seen) = counting_proxy();
    let proxied =
        TestApp::start_with(|s| s.push.proxy = herald::shared::config::Secret::new(&proxy)).await;
    let device = proxied.register_device("u-1").await;
    proxied.publish_to("u-1", "through the proxy").await;
    proxied.step().await;
    let lines = seen.lock().clone();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("POST http://127.0.0.1:") && lines[0].contains("/push/"),
        "the proxy was asked for the push service's URL: {lines:?}"
    );
    assert!(
        proxied.attempts_at(&device).is_empty(),
        "nothing went around the proxy"
    );
    assert_eq!(proxied.pending(), 0, "the proxy's 201 settled the push");
}

/// Caps that keep one user or one pattern from costing everyone: words per
/// topic and pattern, devices per user (checked atomically where they are stored).
#[tokio::test]
async fn words_per_topic_and_pattern_and_devices_per_user_are_capped() {
    let app = TestApp::start_with(|s| s.api.max_subscriptions_per_user = 3).await;
    let long = vec!["w"; 33].join(".");
    let (status, body) = app
        .post(
            "/v1/events",
            &json!({"topic": long, "notification": {"title": "t"}}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (422, &json!("topic")),
        "{body}"
    );
    let (status, _) = app
        .post(
            "/v1/events",
            &json!({"topic": vec!["w"; 32].join("."), "notification": {"title": "t"}}),
        )
        .await;
    assert_eq!(status, 202);
    // A producer calling the function directly is held to the same cap.
    let refused: redis::RedisResult<redis::Value> = redis::cmd("FCALL")
        .arg("herald_publish")
        .arg(1)
        .arg(app.stream())
        .arg("topic")
        .arg(&long)
        .arg("title")
        .arg("t")
        .query(&mut app.redis.conn());
    let err = refused.expect_err("refused").to_string();
    assert!(err.contains("topic") && err.contains("32 words"), "{err}");

    let (_, browser) = app.sink.new_subscription();
    let alternating: Vec<&str> = (0..33)
        .map(|i| if i % 2 == 0 { "#" } else { "a" })
        .collect();
    let (status, body) = app
        .post(
            "/v1/subscriptions",
            &json!({"subscription": browser, "topics": [alternating.join(".")]}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (422, &json!("topics[0]")),
        "{body}"
    );

    for _ in 0..3 {
        app.register_device("u-many").await;
    }
    let (_, fourth) = app.sink.new_subscription();
    let (status, body) = app
        .post(
            "/v1/subscriptions",
            &json!({"user": "u-many", "subscription": fourth}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "too_many_subscriptions");
    assert_eq!(body["error"]["field"], "user");
    let (_, listed) = app.get("/v1/subscriptions?user=u-many").await;
    assert_eq!(listed["subscriptions"].as_array().map(Vec::len), Some(3));
    // Re-registering one of the three is an update, not a fourth; another user is not affected.
    let (status, _) = app
        .post(
            "/v1/subscriptions",
            &json!({"user": "u-other", "subscription": fourth}),
        )
        .await;
    assert_eq!(status, 201);
    // Moving a device to the full user by PATCH is refused the same way.
    let (_, other) = app.get("/v1/subscriptions?user=u-other").await;
    let id = other["subscriptions"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let response = app
        .http
        .patch(format!("{}/v1/subscriptions/{id}", app.api_url))
        .json(&json!({"user": "u-many"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 422);
}

/// Endpoints are stored in one spelling; a device stored before that under
/// another spelling (`…?`) is kept once when its page registers it again.
#[tokio::test]
async fn a_device_stored_under_its_former_spelling_is_kept_once_after_registering_again() {
    let app = TestApp::start().await;
    let (_, browser) = app.sink.new_subscription();
    let spelled = format!("{}?", browser["endpoint"].as_str().expect("endpoint"));
    let former = herald::shared::subscriptions::Subscription {
        id: herald::shared::subscriptions::id_for_endpoint(&spelled),
        user: Some("u-1".into()),
        endpoint: spelled.clone(),
        p256dh: browser["keys"]["p256dh"].as_str().expect("p256dh").into(),
        auth: browser["keys"]["auth"].as_str().expect("auth").into(),
        topics: Vec::new(),
        headers: None,
        format: Default::default(),
        created_at: String::new(),
    };
    herald::shared::subscriptions::Store::new(app.db.clone())
        .put(&former)
        .await
        .expect("store it as an older herald did");
    let mut again = browser.clone();
    again["endpoint"] = json!(spelled);
    let (status, body) = app
        .post(
            "/v1/subscriptions",
            &json!({"user": "u-1", "subscription": again}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_ne!(
        body["id"],
        json!(former.id),
        "stored under its one spelling"
    );
    let (_, listed) = app.get("/v1/subscriptions?user=u-1").await;
    let subs = listed["subscriptions"].as_array().expect("array");
    assert_eq!(subs.len(), 1, "one device, one subscription: {listed}");
    assert_eq!(subs[0]["id"], body["id"]);
}
