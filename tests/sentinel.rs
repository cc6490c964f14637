//! herald on a primary with a replica watched by three sentinels: it finds
//! the primary through them, and follows a failover under load. The primary
//! and replica ask for a password, as production ones do.

mod helpers;

use std::collections::HashMap;
use std::time::Duration;

use helpers::sentinel::{TestSentinel, MASTER};
use helpers::{assert_failover_lost_nothing, publish_steadily, Herald};
use herald::shared::config::Secret;

/// A few hundred events/s through the API while the primary is SIGKILLed:
/// the sentinels promote the replica, herald asks them where the primary went
/// and carries on (the API answering 202 throughout, the spool taking what
/// Redis cannot), and with `redis.wait_replicas = 1` no accepted event is
/// lost. The old primary comes back as the new one's replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_under_load_loses_no_accepted_event() {
    let mut setup = TestSentinel::start("s3cret-data");
    let data = tempfile::tempdir().expect("temp dir");
    let mut settings = helpers::base_settings(data.path());
    settings.redis.sentinel.master = MASTER.into();
    settings.redis.sentinel.nodes = setup.nodes().into_iter().map(Secret::new).collect();
    settings.redis.sentinel.password = Secret::new("s3cret-data");
    settings.redis.wait_replicas = 1;
    settings.redis.wait_timeout = Duration::from_millis(500);
    settings.redis.command_timeout = Duration::from_secs(2);
    settings.spool.drain_interval = Duration::from_millis(200);
    settings.retry.base_delay = Duration::from_millis(600);
    settings.retry.max_delay = Duration::from_secs(1);
    settings.retry.max_deliveries = 20;
    let app = Herald::start(settings, data, false, None).await;
    let mut devices = HashMap::new();
    for u in 0..20 {
        let user = format!("driver-{u}");
        let device = app.register_device(&user).await;
        devices.insert(user, device);
    }
    app.run_roles();

    let first = setup.primary().expect("the sentinels name a primary");
    let load = publish_steadily(
        &app,
        devices.keys().cloned().collect(),
        3000,
        Duration::from_millis(4),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    setup.node_mut(first).kill();
    let setup = tokio::task::spawn_blocking(move || {
        let waited = std::time::Instant::now();
        helpers::cluster::wait_until(
            Duration::from_secs(30),
            "the sentinels promote the replica",
            || setup.primary().is_some_and(|p| p != first),
        );
        let promoted_at = chrono::Utc::now();
        eprintln!(
            "failover: the sentinels named a new primary {:?} after the kill",
            waited.elapsed()
        );
        // The old primary returns; the sentinels make it the new one's replica.
        setup.node_mut(first).restart();
        setup.wait_synced(Duration::from_secs(30));
        (setup, promoted_at)
    })
    .await
    .expect("failover");
    let (setup, promoted_at) = setup;
    let answers = load.await.expect("the load");
    assert_failover_lost_nothing(&app, &answers, &devices, promoted_at).await;
    drop(setup);
}
