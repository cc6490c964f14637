//! The operators' console in a real browser (headless chromium through
//! chromedriver), against a running herald: it asks for a token, shows the
//! streams, lists a dead letter the test made, replays it from the page (the
//! replayed push reaches the device), and looks up the event and the user.
//! Screenshots land in `target/tmp/screenshots/` for a reviewer to look at.
//! The JSON routes the page calls are tested directly at the end.

mod helpers;

use helpers::browser::Browser;
use helpers::TestApp;
use herald::operate::sink::Fault;
use herald::shared::config::{ApiToken, Scope};
use serde_json::{json, Value};

const ADMIN: &str = "tok-console-admin";

fn with_admin_token(s: &mut herald::shared::config::Settings) {
    s.api.tokens = vec![
        ApiToken {
            name: "console".into(),
            sha256: herald::intake::auth::digest_hex(ADMIN),
            scopes: vec![Scope::Admin],
        },
        ApiToken {
            name: "backend".into(),
            sha256: herald::intake::auth::digest_hex("tok-backend"),
            scopes: vec![Scope::Publish, Scope::Subscriptions],
        },
    ];
}

async fn publish(app: &TestApp, id: &str, user: &str, title: &str) {
    let response = app
        .http
        .post(format!("{}/v1/events", app.api_url))
        .bearer_auth("tok-backend")
        .json(&json!({"id": id, "topic": "parking.exit", "user": user, "notification": {"title": title}}))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 202);
}

async fn register(app: &TestApp, user: &str) -> String {
    let (id, subscription) = app.sink.new_subscription();
    let response = app
        .http
        .post(format!("{}/v1/subscriptions", app.api_url))
        .bearer_auth("tok-backend")
        .json(&json!({"user": user, "subscription": subscription}))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 201);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_dead_letter_and_replays_it_to_its_device() {
    let app = TestApp::start_with(with_admin_token).await;
    let device = register(&app, "u-42").await;
    // The push service refuses the first push for good: a dead letter.
    app.sink.add_faults(&device, vec![Fault::status(400)]);
    publish(&app, "evt-towed", "u-42", "Your car was towed <b>now</b>").await;
    app.step().await;
    assert_eq!(app.dead_letters().await.len(), 1);

    let browser = Browser::start(1280, 900).await;
    browser.goto(&format!("{}/console", app.api_url)).await;
    // No token yet: the page asks for one.
    browser.wait_text("#login", "admin").await;
    browser.type_into("#token", ADMIN).await;
    browser.click("#login-form button").await;
    let streams = browser.wait_text("#streams", "herald").await;
    assert!(streams.contains("partition"), "{streams}");
    browser.screenshot("console-overview").await;

    browser.click("nav button[data-tab=dead]").await;
    let table = browser.wait_text("#dead-table", "push_bad_request").await;
    assert!(
        table.contains("evt-towed") && table.contains("u-42"),
        "{table}"
    );
    // A field's markup is shown as text, never run or rendered.
    browser.click("#dead-table tr.row").await;
    let detail = browser
        .wait_text("#dead-fields", "Your car was towed <b>now</b>")
        .await;
    assert!(detail.contains("dlq.reason"), "{detail}");
    assert_eq!(
        browser
            .run(
                "return document.querySelectorAll('#dead-fields b').length;",
                json!([])
            )
            .await,
        json!(0)
    );
    browser.screenshot("console-dead-letter").await;

    browser.click("#dead-table input[type=checkbox]").await;
    browser.click("#replay-selected").await;
    let asked = browser.accept_dialog().await;
    assert!(asked.contains("Replay 1 selected dead letter"), "{asked}");
    browser
        .wait_text("#dead-result", "Replayed 1, failed 0")
        .await;
    browser.wait_text("#dead-count", "0 matching").await;
    browser.screenshot("console-replayed").await;
    // The replayed event reaches its device.
    app.step().await;
    assert_eq!(app.delivered_to(&device), vec!["evt-towed".to_string()]);

    browser.click("nav button[data-tab=lookup]").await;
    browser.type_into("#event-form input", "evt-towed").await;
    browser.click("#event-form button").await;
    let event = browser.wait_text("#event-out", "delivered").await;
    assert!(event.contains(&device), "{event}");
    browser.type_into("#user-form input", "u-42").await;
    browser.click("#user-form button").await;
    let subs = browser.wait_text("#user-out", "http://127.0.0.1").await;
    assert!(!subs.contains("/push/"), "no endpoint path shown: {subs}");
    browser.screenshot("console-lookups").await;

    // The first call without a token is answered 401 (how the page learns it
    // needs one), which the browser logs; nothing else may be logged, and the
    // page shows no error of its own.
    let mut errors = browser.console_errors().await;
    let first_401 = errors.iter().position(|e| e.contains("status of 401"));
    assert!(
        first_401.is_some(),
        "the page asked without a token first: {errors:?}"
    );
    errors.remove(first_401.expect("checked"));
    assert!(errors.is_empty(), "the page logged errors: {errors:?}");
    assert_eq!(browser.text("#status").await, "");
}

/// "Purge all matching" acts on what the list shows, after a confirmation
/// naming the filter: a filter typed but not shown is shown first, and
/// nothing else is purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_all_matching_purges_what_the_confirmation_named() {
    let app = TestApp::start_with(with_admin_token).await;
    for user in ["u-keep-1", "u-keep-2", "u-drop"] {
        let device = register(&app, user).await;
        app.sink.add_faults(&device, vec![Fault::status(400)]);
        publish(&app, &format!("evt-{user}"), user, "refused").await;
    }
    app.step().await;
    assert_eq!(app.dead_letters().await.len(), 3);

    let browser = Browser::start(1280, 900).await;
    browser.goto(&format!("{}/console", app.api_url)).await;
    browser.type_into("#token", ADMIN).await;
    browser.click("#login-form button").await;
    browser.click("nav button[data-tab=dead]").await;
    browser.wait_text("#dead-count", "3 matching").await;
    // A filter typed, not shown: the first press shows it and does nothing else.
    browser
        .type_into("#dead-filter input[name=user]", "u-drop")
        .await;
    browser.click("#purge-matching").await;
    browser
        .wait_text("#dead-result", "The filter changed")
        .await;
    browser.wait_text("#dead-count", "1 matching").await;
    assert_eq!(app.dead_letters().await.len(), 3, "nothing purged yet");
    browser.click("#purge-matching").await;
    let asked = browser.accept_dialog().await;
    assert!(
        asked.contains("1 dead letter(s) matching user=u-drop"),
        "{asked}"
    );
    browser.wait_text("#dead-result", "Purged 1.").await;
    let left: Vec<String> = app
        .dead_letters()
        .await
        .into_iter()
        .filter_map(|d| d.user)
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&"u-drop".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_fits_a_phone() {
    let app = TestApp::start().await;
    let browser = Browser::start(390, 844).await;
    browser.goto(&format!("{}/console", app.api_url)).await;
    browser.wait_text("#streams", "partition").await;
    // Nothing wider than the screen but the tables, which scroll inside their cards.
    let overflow = browser
        .run(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            json!([]),
        )
        .await;
    assert_eq!(overflow, json!(0), "the page scrolls sideways on a phone");
    browser.screenshot("console-phone").await;
    assert!(browser.console_errors().await.is_empty());
}

async fn admin(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app
        .http
        .request(method, format!("{}{path}", app.api_url))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The routes the page calls, as a script calls them: selections by ids, by
/// filter or all, each refusal naming its field, counts in every answer.
#[tokio::test]
async fn the_admin_api_replays_and_purges_by_ids_filter_or_all() {
    let app = TestApp::start_with(with_admin_token).await;
    let a = register(&app, "u-a").await;
    let b = register(&app, "u-b").await;
    for (device, n) in [(&a, 3), (&b, 2)] {
        app.sink.add_faults(device, vec![Fault::status(400); n]);
    }
    for i in 0..3 {
        publish(&app, &format!("a-{i}"), "u-a", "for a").await;
    }
    for i in 0..2 {
        publish(&app, &format!("b-{i}"), "u-b", "for b").await;
    }
    app.step().await;
    let (status, listed) = admin(
        &app,
        reqwest::Method::GET,
        "/v1/admin/dead-letters?user=u-a&limit=2",
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["total"], 3);
    assert_eq!(listed["dead_letters"].as_array().map(Vec::len), Some(2));
    let first = listed["dead_letters"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    // Query parameters of any shape are answered in the API's JSON, naming them.
    for (query, field) in [
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=99999999999999999999999", "limit"),
        ("limit=5&limit=6", "limit"),
        ("colour=red", "colour"),
    ] {
        let (status, answer) = admin(
            &app,
            reqwest::Method::GET,
            &format!("/v1/admin/dead-letters?{query}"),
            None,
        )
        .await;
        assert_eq!(
            (status, &answer["error"]["field"]),
            (400, &json!(field)),
            "{query}: {answer}"
        );
    }
    let (status, answer) = admin(
        &app,
        reqwest::Method::GET,
        &format!("/v1/admin/dead-letters/{first}?partition=x"),
        None,
    )
    .await;
    assert_eq!(
        (status, &answer["error"]["field"]),
        (400, &json!("partition")),
        "{answer}"
    );
    let (status, _) = admin(
        &app,
        reqwest::Method::GET,
        &format!("/v1/admin/dead-letters/{first}?partition=4000000000"),
        None,
    )
    .await;
    assert_eq!(
        status, 404,
        "a partition herald does not have holds nothing"
    );
    let (status, one) = admin(
        &app,
        reqwest::Method::GET,
        &format!("/v1/admin/dead-letters/{first}"),
        None,
    )
    .await;
    assert_eq!(
        (status, &one["dead_letter"]["user"]),
        (200, &json!("u-a")),
        "{one}"
    );

    // Refusals name what to fix.
    for (body, field) in [
        (json!({}), "body"),
        (json!({"ids": [first], "all": true}), "body"),
        (json!({"ids": ["0-1"]}), "ids[0]"),
        (json!({"ids": ["not-an-id"]}), "ids[0]"),
        (json!({"ids": [first, first]}), "ids[1]"),
        (
            json!({"filter": {"since": "1000000000years"}}),
            "filter.since",
        ),
        (
            json!({"filter": {"since": "yesterday-ish"}}),
            "filter.since",
        ),
        (json!({"everything": true}), "body"),
    ] {
        let (status, answer) = admin(
            &app,
            reqwest::Method::POST,
            "/v1/admin/dead-letters/replay",
            Some(body.clone()),
        )
        .await;
        assert!(matches!(status, 404 | 422), "{body}: {status} {answer}");
        let named = answer["error"]["field"].as_str().unwrap_or_default();
        assert!(
            named == field || (field == "body" && named == "everything"),
            "{body}: {answer}"
        );
    }

    // By id, then by filter: each replayed event reaches its device.
    let (status, replayed) = admin(
        &app,
        reqwest::Method::POST,
        "/v1/admin/dead-letters/replay",
        Some(json!({"ids": [first]})),
    )
    .await;
    assert_eq!(
        (status, &replayed["replayed"], &replayed["failed"]),
        (200, &json!(1), &json!(0)),
        "{replayed}"
    );
    let (_, replayed) = admin(
        &app,
        reqwest::Method::POST,
        "/v1/admin/dead-letters/replay",
        Some(json!({"filter": {"user": "u-a"}})),
    )
    .await;
    assert_eq!(replayed["replayed"], 2, "{replayed}");
    app.step().await;
    let mut got = app.delivered_to(&a);
    got.sort();
    assert_eq!(got, vec!["a-0", "a-1", "a-2"]);
    // Purge all that is left, u-b's two, once the count confirmed is right.
    let (status, changed) = admin(
        &app,
        reqwest::Method::POST,
        "/v1/admin/dead-letters/purge",
        Some(json!({"all": true, "expect": 1})),
    )
    .await;
    assert_eq!(
        (status, &changed["error"]["code"]),
        (409, &json!("changed")),
        "{changed}"
    );
    assert_eq!(app.dead_letters().await.len(), 2, "nothing purged");
    let (status, purged) = admin(
        &app,
        reqwest::Method::POST,
        "/v1/admin/dead-letters/purge",
        Some(json!({"all": true, "expect": 2})),
    )
    .await;
    assert_eq!((status, &purged["purged"]), (200, &json!(2)), "{purged}");
    assert!(app.dead_letters().await.is_empty());

    // Look-ups: an event's devices, an unknown event, a user's subscriptions.
    let (status, event) = admin(&app, reqwest::Method::GET, "/v1/admin/events/a-1", None).await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(
        event["partitions"][0]["devices"][&a],
        json!("delivered"),
        "{event}"
    );
    let (status, _) = admin(
        &app,
        reqwest::Method::GET,
        "/v1/admin/events/never-published",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, subs) = admin(
        &app,
        reqwest::Method::GET,
        "/v1/admin/users/u-b/subscriptions",
        None,
    )
    .await;
    assert_eq!(status, 200, "{subs}");
    assert_eq!(subs["subscriptions"][0]["id"], json!(b));
    // The backend's token has no admin scope.
    let response = app
        .http
        .get(format!("{}/v1/admin/events/a-1", app.api_url))
        .bearer_auth("tok-backend")
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 403);
}

/// Two partitions' dead-letter streams can hold the same id: naming it alone
/// is refused, naming its partition acts on that one only.
#[tokio::test]
async fn a_dead_letter_id_two_partitions_hold_must_name_its_partition() {
    let app = TestApp::start_with(|s| {
        with_admin_token(s);
        s.redis.partitions = 2;
    })
    .await;
    let keys = herald::shared::keys::Keys::new(&app.settings.redis.key_prefix, 2, false);
    let mut conn = app.redis.conn();
    for partition in 0..2 {
        let _: String = redis::cmd("XADD")
            .arg(keys.dead_letters(partition))
            .arg("1764000000000-0")
            .arg("dlq.reason")
            .arg("max_deliveries")
            .arg("id")
            .arg(format!("evt-{partition}"))
            .query(&mut conn)
            .expect("XADD");
    }
    let (status, answer) = admin(
        &app,
        reqwest::Method::GET,
        "/v1/admin/dead-letters/1764000000000-0",
        None,
    )
    .await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (409, &json!("ambiguous")),
        "{answer}"
    );
    let (status, answer) = admin(
        &app,
        reqwest::Method::GET,
        "/v1/admin/dead-letters/1764000000000-0?partition=1",
        None,
    )
    .await;
    assert_eq!(
        (status, &answer["dead_letter"]["event_id"]),
        (200, &json!("evt-1")),
        "{answer}"
    );
    let (status, answer) = admin(
        &app,
        reqwest::Method::POST,
        "/v1/admin/dead-letters/purge",
        Some(json!({"ids": ["1764000000000-0"]})),
    )
    .await;
    assert_eq!(
        (status, &answer["error"]["field"]),
        (409, &json!("ids[0]")),
        "{answer}"
    );
    let (status, answer) = admin(
        &app,
        reqwest::Method::POST,
        "/v1/admin/dead-letters/purge",
        Some(json!({"ids": [{"partition": 1, "id": "1764000000000-0"}]})),
    )
    .await;
    assert_eq!((status, &answer["purged"]), (200, &json!(1)), "{answer}");
    let left: Vec<String> = app
        .dead_letters()
        .await
        .into_iter()
        .filter_map(|d| d.event_id)
        .collect();
    assert_eq!(left, vec!["evt-0".to_string()]);
    let (status, _) = admin(
        &app,
        reqwest::Method::GET,
        "/v1/admin/dead-letters/((",
        None,
    )
    .await;
    assert_eq!(status, 404, "a malformed id is not found, not an outage");
}

/// An open herald (no tokens: the loopback quickstart) answers this machine's
/// names and pages only: a page whose name was rebound to 127.0.0.1, or
/// another site's page, is refused; and the demo exists only there.
#[tokio::test]
async fn an_open_herald_answers_localhost_only_and_serves_the_demo_only_then() {
    let app = TestApp::start().await;
    let get = |host: &'static str, origin: Option<&'static str>| {
        let mut request = app
            .http
            .get(format!("{}/v1/admin/dead-letters", app.api_url))
            .header("host", host);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        async move { request.send().await.expect("answers").status().as_u16() }
    };
    assert_eq!(get("127.0.0.1", None).await, 200);
    assert_eq!(
        get("localhost:8080", Some("http://localhost:8080")).await,
        200
    );
    assert_eq!(get("[::1]:8080", None).await, 200);
    assert_eq!(get("rebind.attacker.example:8080", None).await, 403);
    assert_eq!(
        get("127.0.0.1", Some("https://attacker.example")).await,
        403
    );
    let demo = app
        .http
        .get(format!("{}/demo/", app.api_url))
        .send()
        .await
        .expect("answers");
    assert_eq!(demo.status(), 200);
    let policy = demo.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(policy.contains("script-src 'sha256-"), "{policy}");
    assert!(!policy.contains("script-src 'unsafe-inline'"), "{policy}");

    let secured = TestApp::start_with(with_admin_token).await;
    let demo = secured
        .http
        .get(format!("{}/demo/", secured.api_url))
        .send()
        .await
        .expect("answers");
    assert_eq!(demo.status(), 404, "no demo beside a configured API");
    // With tokens, the Host is not this check's business (a load balancer's name).
    let response = secured
        .http
        .get(format!("{}/v1/stats", secured.api_url))
        .header("host", "herald.example.com")
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 200);
}
