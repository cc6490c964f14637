//! Crashes of real processes: what a SIGKILLed worker held is delivered by
//! another consumer once idle; nothing is lost.

mod helpers;

use std::collections::HashSet;
use std::time::Duration;

use helpers::{eventually, kill9, spawn_role, terminate, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_held_by_a_killed_worker_are_delivered_by_another_consumer() {
    let app = TestApp::start().await;
    app.register_device("u-1").await;
    // A slow push service: the worker is mid-push when it dies.
    app.sink.set_delay(Duration::from_millis(1500));
    let mut ids = HashSet::new();
    for n in 0..10 {
        ids.insert(app.publish_to("u-1", &format!("event {n}")).await);
    }
    let mut doomed = spawn_role(&app, &["worker"], "doomed");
    eventually(
        "the worker to hold every entry",
        Duration::from_secs(15),
        || app.pending() == 10,
    )
    .await;
    kill9(&mut doomed);
    app.sink.set_delay(Duration::ZERO);

    let mut survivor = spawn_role(&app, &["reclaimer"], "survivor");
    eventually(
        "every event to be delivered",
        Duration::from_secs(30),
        || {
            let got: HashSet<String> = app
                .sink
                .delivered()
                .into_iter()
                .filter_map(|a| a.event_id)
                .collect();
            ids.is_subset(&got)
        },
    )
    .await;
    eventually("nothing pending", Duration::from_secs(10), || {
        app.pending() == 0
    })
    .await;
    assert!(terminate(&mut survivor, Duration::from_secs(15)).success());
    // Pushes the dead worker had in flight may have landed too: at most those.
    let delivered = app.sink.delivered().len();
    assert!(
        (10..=20).contains(&delivered),
        "{delivered} deliveries for 10 events"
    );
    assert!(app.dead_letters().await.is_empty());
}
