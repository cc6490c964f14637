//! The browser demo of `herald up` in a real browser (headless chromium): the
//! page registers its service worker without console errors, and a push
//! delivered to that worker through the DevTools protocol
//! (`ServiceWorker.deliverPushMessage`) makes it show a notification with the
//! event's title. (Subscribing needs the browser's push service, which this
//! machine cannot reach; README says how to try the whole way in two minutes.)

mod helpers;

use helpers::browser::Browser;
use helpers::TestApp;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_registers_its_worker_which_shows_a_delivered_push_as_a_notification() {
    let app = TestApp::start().await;
    let browser = Browser::start(1280, 900).await;
    let origin = app.api_url.clone();
    browser
        .cdp(
            "Browser.grantPermissions",
            json!({"origin": origin, "permissions": ["notifications"]}),
        )
        .await;
    browser.goto(&format!("{origin}/demo/")).await;
    browser.wait_text("#log", "Service worker registered").await;
    browser.screenshot("demo").await;
    let active = browser
        .run(
            "return navigator.serviceWorker.ready.then(r => !!r.active);",
            json!([]),
        )
        .await;
    assert_eq!(active, json!(true));

    // What devices decrypt: herald's payload of a plain event and of one with
    // options and actions, a declarative message, and a data push.
    let event = |value: serde_json::Value| {
        let input: herald::shared::event::EventInput =
            serde_json::from_value(value).expect("an event");
        input
            .validate(&app.settings.events.defaults(), chrono::Utc::now())
            .expect("valid")
    };
    let plain = event(json!({
        "id": "evt-demo", "topic": "demo.test", "user": "demo-user",
        "notification": {"title": "Hello from herald", "body": "a test", "url": "/demo/"},
    }));
    let options = json!({"title": "Exit", "body": "left lot 7", "url": "/demo/#visit", "tag": "exit",
        "require_interaction": true, "data": {"visit": 981},
        "actions": [{"action": "pay", "title": "Pay now", "url": "/demo/#pay"}, {"action": "later", "title": "Later"}]});
    let rich = event(json!({"id": "evt-rich", "topic": "demo.test", "notification": options}));
    let site = url::Url::parse(&format!("{origin}/")).expect("the origin");
    let mut declarative_options = options.clone();
    declarative_options["title"] = json!("Declared");
    declarative_options["tag"] = json!("declared");
    let declarative =
        event(json!({"id": "evt-decl", "topic": "demo.test", "notification": declarative_options}))
            .declarative(Some(&site))
            .expect("a notification")
            .expect("buildable");
    let data = event(json!({"id": "evt-data", "topic": "demo.test", "data": {"title": "Synced"}}));
    browser.cdp("ServiceWorker.enable", json!({})).await;
    for payload in [plain.payload(), rich.payload(), declarative, data.payload()] {
        // chromedriver gives each session a fresh profile, whose first (and only)
        // service worker registration is number 0.
        let payload = String::from_utf8(payload).expect("JSON text");
        browser
            .cdp(
                "ServiceWorker.deliverPushMessage",
                json!({"origin": origin, "registrationId": "0", "data": payload}),
            )
            .await;
    }
    let mut shown = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while shown.len() < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        shown = browser
            .run(
                "return navigator.serviceWorker.ready.then(r => r.getNotifications()).then(ns => ns.map(n => [n.title, n.body, n.data.url || '', n.requireInteraction, n.actions.map(a => a.action + '>' + n.data.urls[a.action]).join(' ')].join('|')));",
                json!([]),
            )
            .await
            .as_array()
            .cloned()
            .unwrap_or_default();
    }
    shown.sort_by_key(|v| v.to_string());
    let page = |path: &str| format!("{origin}{path}");
    assert_eq!(
        shown,
        vec![
            json!(format!(
                "Declared|left lot 7|{}|true|pay>{} later>{}",
                page("/demo/#visit"),
                page("/demo/#pay"),
                page("/demo/#visit")
            )),
            json!("Exit|left lot 7|/demo/#visit|true|pay>/demo/#pay later>/demo/#visit"),
            json!("Hello from herald|a test|/demo/|false|"),
            json!("Synced|||false|"),
        ]
    );
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "the demo logged errors: {errors:?}");
}
