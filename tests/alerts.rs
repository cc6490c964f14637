//! The alert webhook: dead letters summarised by reason, at most one call per
//! interval; a failing webhook never holds processing up.

mod helpers;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use helpers::{eventually, TestApp};
use herald::deliver::Worker;
use herald::operate::sink::Fault;
use herald::shared::config::Secret;
use serde_json::Value;

/// A webhook receiver on a free port that answers `status` and keeps what it got.
async fn receiver(status: u16) -> (String, Arc<Mutex<Vec<Value>>>) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let keep = got.clone();
    let app = Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let keep = keep.clone();
            async move {
                keep.lock().expect("lock").push(body);
                axum::http::StatusCode::from_u16(status).expect("status")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

/// An app whose worker reports dead letters to the webhook at `url`, its alert loop running.
async fn app_with_webhook(url: &str, interval: Duration) -> (TestApp, Worker) {
    let app = TestApp::start_with(|s| {
        s.alerts.webhook_url = Secret::new(url);
        s.alerts.interval = interval;
    })
    .await;
    let (alerts, alert_loop) = herald::shared::alerts::channel(&app.settings.alerts);
    let alert_loop = alert_loop.expect("a webhook is configured");
    tokio::spawn(alert_loop.run(app.shutdown.clone()));
    let worker = Worker::new(app.db.clone(), app.pusher.clone(), &app.settings, alerts);
    (app, worker)
}

#[tokio::test]
async fn dead_letters_are_summarised_by_reason_in_one_call_per_interval() {
    let (url, got) = receiver(204).await;
    let (app, worker) = app_with_webhook(&url, Duration::from_millis(500)).await;
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
        app.publish_to("u-1", &format!("e{n}")).await;
    }
    worker
        .process_batch(0, Duration::from_secs(1))
        .await
        .expect("batch");
    eventually("a webhook call", Duration::from_secs(5), || {
        !got.lock().expect("lock").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let calls = got.lock().expect("lock").clone();
    assert_eq!(calls.len(), 1, "one summary for the burst: {calls:?}");
    assert_eq!(calls[0]["dead_letters"], 4);
    assert_eq!(calls[0]["by_reason"]["push_bad_request"], 3);
    assert_eq!(calls[0]["by_reason"]["payload_too_large"], 1);
}

#[tokio::test]
async fn a_failing_webhook_does_not_hold_up_processing() {
    let (url, got) = receiver(500).await;
    let (app, worker) = app_with_webhook(&url, Duration::from_millis(100)).await;
    let device = app.register_device("u-2").await;
    app.sink.add_faults(&device, vec![Fault::status(400); 50]);
    for n in 0..50 {
        app.publish_to("u-2", &format!("e{n}")).await;
    }
    let started = Instant::now();
    let batch = worker
        .process_batch(0, Duration::from_secs(1))
        .await
        .expect("batch");
    assert_eq!(batch.acked(), 50, "{batch:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    eventually("the webhook to be tried", Duration::from_secs(5), || {
        !got.lock().expect("lock").is_empty()
    })
    .await;
    assert_eq!(app.dead_letters().await.len(), 50);
}
