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

    // herald's own payload for an event, as a device decrypts it.
    let input: herald::shared::event::EventInput = serde_json::from_value(json!({
        "id": "evt-demo", "topic": "demo.test", "user": "demo-user",
        "notification": {"title": "Hello from herald", "body": "a test", "url": "/demo/"},
    }))
    .expect("an event");
    let event = input
        .validate(&app.settings.events.defaults(), chrono::Utc::now())
        .expect("valid");
    let payload = String::from_utf8(event.payload()).expect("JSON text");
    browser.cdp("ServiceWorker.enable", json!({})).await;
    // chromedriver gives each session a fresh profile, whose first (and only)
    // service worker registration is number 0.
    browser
        .cdp(
            "ServiceWorker.deliverPushMessage",
            json!({"origin": origin, "registrationId": "0", "data": payload}),
        )
        .await;
    let mut shown = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while shown.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        shown = browser
            .run(
                "return navigator.serviceWorker.ready.then(r => r.getNotifications()).then(ns => ns.map(n => n.title + '|' + n.body + '|' + n.data.url));",
                json!([]),
            )
            .await
            .as_array()
            .cloned()
            .unwrap_or_default();
    }
    assert_eq!(shown, vec![json!("Hello from herald|a test|/demo/")]);
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "the demo logged errors: {errors:?}");
}
