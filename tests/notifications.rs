//! Every Notification option, data pushes and Declarative Web Push, end to end:
//! an event with every option reaches one device in herald's format and one in
//! the declarative format, each as README documents it (the sink decrypts both
//! and checks the declarative one as a browser would); bad options are a 422
//! naming the field; the entry contract carries the same options. A review's
//! attacks follow: what the Redis Function takes, the worker reads (JSON that
//! Redis's cjson takes and serde_json refuses, URLs, duplicate members); the
//! declarative size never costs the other devices an event; entries herald
//! wrote before still read.

mod helpers;

use helpers::*;
use herald::deliver::EntryOutcome;
use serde_json::{json, Value};

const SITE: &str = "https://parking.example/";

async fn start() -> TestApp {
    TestApp::start_with(|s| s.events.site_url = SITE.into()).await
}

/// Registers a sink device for `user` asking for `format` (none: the default).
async fn device(app: &TestApp, user: &str, format: Option<&str>) -> String {
    let (id, subscription) = app.sink.new_subscription();
    let mut body = json!({"user": user, "subscription": subscription});
    if let Some(format) = format {
        body["format"] = json!(format);
    }
    let (status, answer) = app.post("/v1/subscriptions", &body).await;
    assert_eq!(status, 201, "{answer}");
    id
}

fn every_option() -> Value {
    json!({
        "title": "Exit", "body": "12가3456 left lot 7", "url": "/visits/981",
        "icon": "/i/car.png", "image": "https://cdn.parking.example/plates/981.jpg", "badge": "/i/badge.png",
        "tag": "visit-981", "renotify": true, "require_interaction": true, "silent": false,
        "timestamp": 1764580000000u64, "lang": "ko-KR", "dir": "ltr", "vibrate": [200, 100, 200],
        "actions": [{"action": "pay", "title": "Pay now", "url": "/pay/981", "icon": "/i/pay.png"},
                    {"action": "receipt", "title": "Receipt", "url": "https://receipts.example/981"},
                    {"action": "later", "title": "Later"}],
        "data": {"visit": 981, "fee": {"amount": 3.5, "currency": "EUR"}, "tags": ["a", null, true]},
        "app_badge": 3, "mutable": true
    })
}

/// The one arrival at `device`, decrypted.
fn arrival(app: &TestApp, device: &str) -> herald::operate::sink::Arrival {
    let mut arrivals = app.attempts_at(device);
    assert_eq!(arrivals.len(), 1, "{arrivals:?}");
    let arrival = arrivals.remove(0);
    assert_eq!(arrival.status, 201, "{arrival:?}");
    arrival
}

#[tokio::test]
async fn every_option_reaches_a_herald_device_and_a_declarative_one_as_documented() {
    let app = start().await;
    let classic = device(&app, "u-1", None).await;
    let declarative = device(&app, "u-1", Some("declarative")).await;
    let (status, listed) = app.get("/v1/subscriptions?user=u-1").await;
    assert_eq!(status, 200, "{listed}");
    let formats: Vec<(String, String)> = listed["subscriptions"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_string(),
                s["format"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        formats.contains(&(classic.clone(), "herald".into())),
        "{listed}"
    );
    assert!(
        formats.contains(&(declarative.clone(), "declarative".into())),
        "{listed}"
    );

    let id = app
        .publish(
            json!({"id": "evt-exit-981", "topic": "parking.lot-7.exit", "user": "u-1",
                        "notification": every_option()}),
        )
        .await;
    let batch = app.step().await;
    assert!(
        matches!(batch.entries[0].1, EntryOutcome::Acked { delivered: 2, .. }),
        "{batch:?}"
    );

    // herald's payload: the event's id, topic and publish_at beside every option, as sent.
    let got = arrival(&app, &classic);
    assert_eq!(got.format.as_deref(), Some("herald"));
    let payload = got.plaintext.expect("decrypted");
    let mut expected = every_option();
    expected["id"] = json!(id);
    expected["topic"] = json!("parking.lot-7.exit");
    expected["publish_at"] = payload["publish_at"].clone();
    assert!(
        payload["publish_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{payload}"
    );
    assert_eq!(payload, expected);

    // Declarative Web Push: what a browser shows without a service worker.
    let got = arrival(&app, &declarative);
    assert_eq!(got.format.as_deref(), Some("declarative"));
    assert!(got.format_problems.is_empty(), "{:?}", got.format_problems);
    assert_eq!(
        got.event_id, None,
        "a declarative message carries only the format's members"
    );
    let expected = json!({
        "web_push": 8030,
        "notification": {
            "title": "Exit", "dir": "ltr", "lang": "ko-KR", "body": "12가3456 left lot 7",
            "navigate": "https://parking.example/visits/981", "tag": "visit-981",
            "image": "https://cdn.parking.example/plates/981.jpg",
            "icon": "https://parking.example/i/car.png", "badge": "https://parking.example/i/badge.png",
            "vibrate": [200, 100, 200], "timestamp": 1764580000000u64, "renotify": true, "silent": false,
            "require_interaction": true,
            "data": {"visit": 981, "fee": {"amount": 3.5, "currency": "EUR"}, "tags": ["a", null, true]},
            "actions": [
                {"action": "pay", "title": "Pay now", "navigate": "https://parking.example/pay/981", "icon": "https://parking.example/i/pay.png"},
                {"action": "receipt", "title": "Receipt", "navigate": "https://receipts.example/981"},
                {"action": "later", "title": "Later", "navigate": "https://parking.example/visits/981"}
            ]
        },
        "app_badge": 3,
        "mutable": true
    });
    assert_eq!(got.plaintext, Some(expected));
    // The same headers either way.
    assert_eq!(got.headers.ttl, arrival(&app, &classic).headers.ttl);
}

#[tokio::test]
async fn a_data_push_carries_data_alone_to_every_device_in_heralds_format() {
    let app = start().await;
    let classic = device(&app, "u-1", None).await;
    let declarative = device(&app, "u-1", Some("declarative")).await;
    let id = app
        .publish(json!({"topic": "parking.sync", "user": "u-1", "data": {"refresh": ["visits"], "n": 2}}))
        .await;
    app.step().await;
    for device in [&classic, &declarative] {
        let got = arrival(&app, device);
        assert_eq!(got.format.as_deref(), Some("herald"), "{got:?}");
        let payload = got.plaintext.expect("decrypted");
        assert_eq!(payload["data"], json!({"refresh": ["visits"], "n": 2}));
        assert_eq!(payload["id"], json!(id));
        assert!(payload.get("title").is_none(), "{payload}");
    }
    // Both at once, or neither, is refused.
    for (event, field) in [
        (
            json!({"topic": "t", "user": "u-1", "data": {}, "notification": {"title": "t"}}),
            "data",
        ),
        (json!({"topic": "t", "user": "u-1"}), "notification"),
        (
            json!({"topic": "t", "user": "u-1", "data": "x".repeat(3000)}),
            "data",
        ),
    ] {
        let (status, body) = app.post("/v1/events", &event).await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (422, Some(field)),
            "{body}"
        );
    }
}

#[tokio::test]
async fn each_invalid_option_is_a_422_naming_it() {
    let app = start().await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"url": "http://parking.example/"}),
            "notification.url",
        ),
        (json!({"icon": "javascript:alert(1)"}), "notification.icon"),
        (
            json!({"image": "//cdn.example/x.jpg"}),
            "notification.image",
        ),
        (json!({"badge": "badge.png"}), "notification.badge"),
        (json!({"dir": "up"}), "notification.dir"),
        (json!({"lang": "a language"}), "notification.lang"),
        (json!({"timestamp": -1}), "notification.timestamp"),
        (json!({"app_badge": "many"}), "notification.app_badge"),
        (json!({"renotify": "yes"}), "notification.renotify"),
        (
            json!({"tag": null, "renotify": true}),
            "notification.renotify",
        ),
        (json!({"vibrate": [100, 99999]}), "notification.vibrate"),
        (json!({"silent": true}), "notification.vibrate"),
        (
            json!({"actions": [{"action": "pay"}]}),
            "notification.actions[0].title",
        ),
        (
            json!({"actions": [{"action": "pay", "title": "Pay", "url": "ftp://x"}]}),
            "notification.actions[0].url",
        ),
        (
            json!({"actions": [{"action": "a", "title": "A"}, {"action": "a", "title": "B"}]}),
            "notification.actions[1].action",
        ),
        (
            json!({"actions": (0..5).map(|i| json!({"action": format!("a{i}"), "title": "A"})).collect::<Vec<_>>()}),
            "notification.actions",
        ),
        (
            json!({"actions": [{"action": "a", "title": "A", "navigate": "/x"}]}),
            "notification.actions[0].navigate",
        ),
        (
            json!({"data": {"big": "x".repeat(3000)}}),
            "notification.data",
        ),
        (json!({"colour": "red"}), "notification.colour"),
        (json!({"title": "x".repeat(300)}), "notification.title"),
    ];
    for (patch, field) in cases {
        let mut notification = every_option();
        for (k, v) in patch.as_object().expect("an object") {
            notification[k] = v.clone();
        }
        let (status, body) = app
            .post(
                "/v1/events",
                &json!({"topic": "t", "user": "u-1", "notification": notification}),
            )
            .await;
        assert_eq!(status, 422, "{patch}: {body}");
        assert_eq!(body["error"]["field"], json!(field), "{patch}: {body}");
    }
    // A declarative message that would not fit (a long site address joined to
    // every relative URL) is refused at intake, not found at delivery.
    let host = ["a".repeat(60), "b".repeat(60), "c".repeat(60)].join(".");
    let long =
        TestApp::start_with(|s| s.events.site_url = format!("https://{host}.example/")).await;
    let mut notification = every_option();
    notification["body"] = json!("b".repeat(1500));
    let (status, body) = app
        .post(
            "/v1/events",
            &json!({"topic": "t", "user": "u-1", "notification": notification}),
        )
        .await;
    assert_eq!(status, 202, "herald's own payload fits: {body}");
    let (status, body) = long
        .post(
            "/v1/events",
            &json!({"topic": "t", "user": "u-1", "notification": notification}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], json!("notification"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Declarative"),
        "{body}"
    );
}

#[tokio::test]
async fn the_declarative_format_needs_a_site_url_and_a_default_can_choose_it() {
    let app = TestApp::start().await;
    let (_, subscription) = app.sink.new_subscription();
    let (status, body) = app
        .post(
            "/v1/subscriptions",
            &json!({"user": "u-1", "subscription": subscription, "format": "declarative"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("format")),
        "{body}"
    );
    let (status, body) = app
        .post(
            "/v1/subscriptions",
            &json!({"user": "u-1", "subscription": subscription, "format": "fancy"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("format")),
        "{body}"
    );

    let mut settings = app.settings.clone();
    settings.api.default_subscription_format = herald::shared::notification::Format::Declarative;
    let refused = settings
        .validate()
        .expect_err("declarative by default needs a site");
    assert!(
        refused
            .to_string()
            .contains("api.default_subscription_format"),
        "{refused}"
    );
    settings.events.site_url = "http://parking.example/".into();
    let refused = settings.validate().expect_err("https only");
    assert!(refused.to_string().contains("events.site_url"), "{refused}");

    let by_default = TestApp::start_with(|s| {
        s.events.site_url = SITE.into();
        s.api.default_subscription_format = herald::shared::notification::Format::Declarative;
    })
    .await;
    let declarative = device(&by_default, "u-1", None).await;
    let classic = device(&by_default, "u-1", Some("herald")).await;
    by_default
        .publish(json!({"topic": "t", "user": "u-1", "notification": {"title": "Hi"}}))
        .await;
    by_default.step().await;
    let got = arrival(&by_default, &declarative);
    assert_eq!(got.format.as_deref(), Some("declarative"));
    assert_eq!(
        got.plaintext.expect("decrypted")["notification"]["navigate"],
        json!(SITE)
    );
    assert_eq!(
        arrival(&by_default, &classic).format.as_deref(),
        Some("herald")
    );
}

/// A device left declarative after `events.site_url` was removed (stored
/// here past the API, which would refuse it now) is dead-lettered alone, with
/// a reason saying what to set; the user's other device gets the event.
#[tokio::test]
async fn a_declarative_device_without_a_site_url_is_dead_lettered_alone() {
    let app = TestApp::start().await;
    let classic = app.register_device("u-1").await;
    let (_, browser) = app.sink.new_subscription();
    let stale = herald::shared::subscriptions::Subscription {
        id: "stale-declarative".into(),
        user: Some("u-1".into()),
        endpoint: browser["endpoint"].as_str().expect("endpoint").into(),
        p256dh: browser["keys"]["p256dh"].as_str().expect("p256dh").into(),
        auth: browser["keys"]["auth"].as_str().expect("auth").into(),
        topics: Vec::new(),
        headers: None,
        format: herald::shared::notification::Format::Declarative,
        created_at: String::new(),
    };
    herald::shared::subscriptions::Store::new(app.db.clone())
        .put(&stale)
        .await
        .expect("stored");
    let id = app.publish_to("u-1", "Entry").await;
    app.step().await;
    assert_eq!(app.delivered_to(&classic), vec![id]);
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (dead[0].reason.as_str(), dead[0].subscription.as_deref()),
        ("no_site_url", Some("stale-declarative"))
    );
    assert!(
        dead[0].fields["dlq.last_error"].contains("events.site_url"),
        "{dead:?}"
    );
}

#[tokio::test]
async fn a_producers_entry_carries_every_option_as_the_contract_says() {
    let app = start().await;
    let classic = device(&app, "u-1", None).await;
    let declarative = device(&app, "u-1", Some("declarative")).await;
    let fields: Vec<(&str, String)> = vec![
        ("id", "xadd-every".into()),
        ("topic", "parking.lot-7.exit".into()),
        ("user", "u-1".into()),
        ("title", "Exit".into()),
        ("body", "12가3456 left lot 7".into()),
        ("url", "/visits/981".into()),
        ("icon", "/i/car.png".into()),
        ("image", "https://cdn.parking.example/plates/981.jpg".into()),
        ("badge", "/i/badge.png".into()),
        ("tag", "visit-981".into()),
        ("renotify", "true".into()),
        ("require_interaction", "true".into()),
        ("silent", "false".into()),
        ("timestamp", "1764580000000".into()),
        ("lang", "ko-KR".into()),
        ("dir", "ltr".into()),
        // A producer's spacing is fine: herald's payload carries the text as written.
        ("vibrate", "[200, 100, 200]".into()),
        ("actions", r#"[{"action":"pay","title":"Pay now","url":"/pay/981","icon":"/i/pay.png"},{"action":"receipt","title":"Receipt","url":"https://receipts.example/981"},{"action":"later","title":"Later"}]"#.into()),
        ("data", r#"{"visit":981,"fee":{"amount":3.5,"currency":"EUR"},"tags":["a",null,true]}"#.into()),
        ("app_badge", "3".into()),
        ("mutable", "true".into()),
    ];
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("herald_publish").arg(1).arg(app.stream());
    for (k, v) in &fields {
        cmd.arg(*k).arg(v);
    }
    let (_, outcome): (String, String) = cmd.query(&mut app.redis.conn()).expect("FCALL");
    assert_eq!(outcome, "added");
    app.step().await;
    let payload = arrival(&app, &classic).plaintext.expect("decrypted");
    let mut expected = every_option();
    expected["id"] = json!("xadd-every");
    expected["topic"] = json!("parking.lot-7.exit");
    expected["publish_at"] = payload["publish_at"].clone();
    assert_eq!(payload, expected);
    let got = arrival(&app, &declarative);
    assert!(got.format_problems.is_empty(), "{:?}", got.format_problems);
    assert_eq!(
        got.plaintext.expect("decrypted")["notification"]["actions"][0]["navigate"],
        json!("https://parking.example/pay/981")
    );

    // The function refuses a bad option naming its field; a plain XADD of one
    // is dead-lettered naming it, and the next entry goes on.
    for (name, value, why) in [
        ("renotify", "yes", "renotify: must be true or false"),
        ("actions", "[{\"action\":\"a\"}]", "actions[0].title"),
        ("vibrate", "[1e3]", "vibrate: must be a JSON array"),
        (
            "url",
            "http://x.example/",
            "url: must be an absolute https: URL",
        ),
        ("data", "{nope", "data: is not JSON"),
        (
            "body",
            "a body without a title",
            "title: is required with body",
        ),
    ] {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("herald_publish")
            .arg(1)
            .arg(app.stream())
            .arg("topic")
            .arg("t")
            .arg("user")
            .arg("u-1");
        if name != "body" {
            cmd.arg("title").arg("t");
        }
        cmd.arg(name).arg(value);
        let refused = cmd
            .query::<(String, String)>(&mut app.redis.conn())
            .expect_err(name);
        assert!(refused.to_string().contains(why), "{name}: {refused}");
    }
    let _: String = redis::cmd("XADD")
        .arg(app.stream())
        .arg("*")
        .arg("topic")
        .arg("t")
        .arg("user")
        .arg("u-1")
        .arg("title")
        .arg("t")
        .arg("dir")
        .arg("sideways")
        .query(&mut app.redis.conn())
        .expect("XADD");
    let batch = app.step().await;
    assert!(
        matches!(&batch.entries[0].1, EntryOutcome::DeadLettered { reason } if reason == "undecodable"),
        "{batch:?}"
    );
    let dead = app.dead_letters().await.pop().expect("a dead letter");
    assert!(dead.fields["dlq.last_error"].contains("dir"), "{dead:?}");
}

/// For each case: if FCALL herald_publish takes it, the worker must deliver
/// it (not dead-letter it). Collects every case where the two disagree.
async fn fcall_accepts_but_worker_refuses(
    app: &TestApp,
    cases: &[(&str, Vec<(&str, String)>)],
) -> Vec<String> {
    let mut broken = Vec::new();
    for (label, fields) in cases {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match fcall(app, &fields) {
            Err(e) => println!("{label}: FCALL refused ({e}) — consistent"),
            Ok((_, outcome)) => {
                let batch = app.step().await;
                let outcome_w = &batch.entries.last().expect("one entry").1;
                if let EntryOutcome::DeadLettered { reason } = outcome_w {
                    let dead = app.dead_letters().await.pop().expect("a dead letter");
                    broken.push(format!(
                        "{label}: FCALL {outcome}, worker dead-lettered ({reason}): {}",
                        dead.fields
                            .get("dlq.last_error")
                            .cloned()
                            .unwrap_or_default()
                    ));
                } else {
                    println!("{label}: delivered ({outcome_w:?})");
                }
            }
        }
    }
    broken
}

fn base(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("topic", "a.b".to_string()),
        ("user", "u-1".to_string()),
        ("title", "t".to_string()),
    ];
    f.extend(extra.iter().cloned());
    f
}

/// cjson (Redis's Lua JSON) takes numbers serde_json refuses and
/// nesting deeper than serde_json's 128 levels; `data` is only cjson-decoded.
#[tokio::test]
async fn data_the_function_takes_is_data_the_worker_reads() {
    let app = TestApp::start().await;
    app.register_device("u-1").await;
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let mut cases = Vec::new();
    for (label, data) in [
        ("NaN", r#"{"fee":NaN}"#.to_string()),
        ("Infinity", "[Infinity]".to_string()),
        ("hex", "[0x10]".to_string()),
        ("leading zero", "[01]".to_string()),
        ("plus sign", "[+1]".to_string()),
        ("trailing dot", "[1.]".to_string()),
        ("1e400", "[1e400]".to_string()),
        ("200 levels deep", deep.clone()),
        ("raw tab in a string", "[\"a\tb\"]".to_string()),
    ] {
        cases.push((label, base(&[("data", data.clone())])));
    }
    // A data push (no title) likewise.
    cases.push((
        "data push NaN",
        vec![
            ("topic", "a.b".to_string()),
            ("user", "u-1".to_string()),
            ("data", "[NaN]".to_string()),
        ],
    ));
    let broken = fcall_accepts_but_worker_refuses(&app, &cases).await;
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// an action object with a member twice: cjson keeps the last,
/// serde's derived Deserialize refuses "duplicate field".
#[tokio::test]
async fn actions_the_function_takes_are_actions_the_worker_reads() {
    let app = TestApp::start().await;
    app.register_device("u-1").await;
    let cases = vec![
        (
            "raw newline in a title",
            base(&[(
                "actions",
                "[{\"action\":\"pay\",\"title\":\"Pay\nnow\"}]".to_string(),
            )]),
        ),
        (
            "duplicate member",
            base(&[(
                "actions",
                r#"[{"action":"pay","title":"Pay","title":"Pay now"}]"#.to_string(),
            )]),
        ),
    ];
    let broken = fcall_accepts_but_worker_refuses(&app, &cases).await;
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// the Lua URL check only looks for `https://` and a non-empty
/// host text; the worker parses the URL (WHATWG) and refuses invalid hosts/ports.
#[tokio::test]
async fn urls_the_function_takes_are_urls_the_worker_takes() {
    let app = TestApp::start().await;
    app.register_device("u-1").await;
    let mut cases = Vec::new();
    for (label, url) in [
        ("percent in host", "https://exa%mple.com/x"),
        ("unclosed IPv6", "https://[::1/x"),
        ("port out of range", "https://a.example:99999/x"),
        ("forbidden host code point", "https://a<b.example/x"),
        ("bad IPv4", "https://1.2.3.256/x"),
        ("non-numeric port", "https://a.example:https/x"),
    ] {
        cases.push((label, base(&[("url", url.to_string())])));
    }
    cases.push((
        "action icon, bad port",
        base(&[(
            "actions",
            r#"[{"action":"a","title":"A","icon":"https://a.example:70000/i.png"}]"#.to_string(),
        )]),
    ));
    let broken = fcall_accepts_but_worker_refuses(&app, &cases).await;
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// A notification whose herald payload is small but whose declarative form
/// repeats `navigate` for every action: 1 long absolute url + 4 actions.
fn long_navigate() -> (String, String) {
    let url = format!("https://parking.example/{}", "p".repeat(950));
    let actions = json!((0..4)
        .map(|i| json!({"action": format!("a{i}"), "title": "A"}))
        .collect::<Vec<_>>())
    .to_string();
    (url, actions)
}

/// FCALL takes it (it counts herald's payload only), the worker
/// then refuses the whole event for the declarative size — even with no
/// `events.site_url` (so no subscription can be declarative at all).
#[tokio::test]
async fn the_declarative_size_does_not_dead_letter_what_the_function_took() {
    let app = TestApp::start().await; // site_url empty: declarative impossible
    let device = app.register_device("u-1").await;
    let (url, actions) = long_navigate();
    let cases = vec![(
        "long url + 4 actions",
        base(&[("url", url), ("actions", actions)]),
    )];
    let broken = fcall_accepts_but_worker_refuses(&app, &cases).await;
    println!(
        "delivered to herald device: {:?}",
        app.delivered_to(&device)
    );
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// the API refuses it too, though with site_url empty no device
/// could ever be sent the declarative message.
#[tokio::test]
async fn the_api_does_not_refuse_for_a_format_no_device_can_have() {
    let app = TestApp::start().await;
    let (url, actions) = long_navigate();
    let actions: serde_json::Value = serde_json::from_str(&actions).expect("json");
    let (status, body) = app
        .post(
            "/v1/events",
            &json!({"topic": "a.b", "user": "u-1",
                    "notification": {"title": "t", "url": url, "actions": actions}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
}

/// entries written by the previous version (6448bfe), which never
/// checked url/icon or title/tag lengths, and were delivered by it: pending,
/// scheduled or dead-lettered at upgrade, the new worker dead-letters them.
#[tokio::test]
async fn entries_of_the_previous_version_still_decode() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    let long_title = "T".repeat(300);
    let long_tag = "g".repeat(200);
    let old: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("http url", vec![("url", "http://legacy.example/visits/1")]),
        ("relative url without slash", vec![("url", "visits/1")]),
        ("icon file name", vec![("icon", "icon.png")]),
        ("url with a space", vec![("url", "/visits/a b")]),
        ("title over 256 bytes", vec![("title", long_title.as_str())]),
        ("tag over 128 bytes", vec![("tag", long_tag.as_str())]),
    ];
    let mut broken = Vec::new();
    for (label, extra) in &old {
        let mut fields = vec![("v", "1"), ("topic", "a.b"), ("user", "u-1")];
        if !extra.iter().any(|(k, _)| *k == "title") {
            fields.push(("title", "Entry"));
        }
        fields.extend(extra.iter().cloned());
        xadd(&app, &fields);
        let batch = app.step().await;
        if let EntryOutcome::DeadLettered { reason } = &batch.entries[0].1 {
            let dead = app.dead_letters().await.pop().expect("a dead letter");
            broken.push(format!(
                "{label}: dead-lettered ({reason}): {}",
                dead.fields
                    .get("dlq.last_error")
                    .cloned()
                    .unwrap_or_default()
            ));
        }
    }
    println!("delivered: {}", app.delivered_to(&device).len());
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// the API takes URLs the function refuses (WHATWG
/// parses `https:host` and `https:\\host`); producers and the API disagree.
#[tokio::test]
async fn the_function_takes_the_urls_the_api_takes() {
    let app = TestApp::start().await;
    let mut disagree = Vec::new();
    for (i, url) in [
        "https:parking.example/x",
        "https:\\\\parking.example/x",
        "https:/parking.example/x",
    ]
    .iter()
    .enumerate()
    {
        let (status, _) = app
            .post(
                "/v1/events",
                &json!({"id": format!("api-{i}"), "topic": "a.b", "user": "u-1",
                        "notification": {"title": "t", "url": url}}),
            )
            .await;
        let id = format!("fc-{i}");
        let by_fcall = fcall(
            &app,
            &[
                ("id", &id),
                ("topic", "a.b"),
                ("user", "u-1"),
                ("title", "t"),
                ("url", url),
            ],
        );
        if (status == 202) != by_fcall.is_ok() {
            disagree.push(format!("{url:?}: API {status}, FCALL {by_fcall:?}"));
        }
    }
    assert!(disagree.is_empty(), "{}", disagree.join("\n"));
}
