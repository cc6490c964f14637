//! Failure handling: retries with backoff, Retry-After, dead letters, poison
//! entries, tombstones, replay, fan-out with one failing device, hygiene.
//! Retry timings are milliseconds here (see helpers::settings).

mod helpers;

use std::time::{Duration, Instant};

use helpers::{eventually, TestApp};
use herald::deliver::EntryOutcome;
use herald::operate::sink::Fault;
use herald::recover::reclaimer::Reclaimer;

/// Scans with the reclaimer until `done` holds, or fails after `timeout`.
async fn reclaim_until(
    reclaimer: &Reclaimer,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        reclaimer.scan(0).await.expect("scan");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_503_twice_then_201_is_delivered_once_after_the_backoff() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    app.sink
        .add_faults(&device, vec![Fault::status(503), Fault::status(503)]);
    app.publish_to("u-1", "retry me").await;
    let started = Instant::now();
    let batch = app.step().await;
    assert!(matches!(batch.entries[0].1, EntryOutcome::Pending { .. }));

    let reclaimer = app.reclaimer();
    // Not due before its backoff (100 ms after the first delivery).
    let early = reclaimer.scan(0).await.expect("scan");
    assert!(
        early.processed.is_empty(),
        "claimed before its backoff: {early:?}"
    );
    reclaim_until(&reclaimer, Duration::from_secs(10), "delivery", || {
        app.sink.delivered().len() == 1
    })
    .await;
    // Two backoffs: 100 ms after the first attempt, 200 ms after the second.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    reclaimer.scan(0).await.expect("scan");
    assert_eq!(app.sink.delivered().len(), 1, "delivered once");
    assert_eq!(app.sink.arrivals().len(), 3, "two failures, one success");
    assert_eq!(app.pending(), 0);
    assert!(app.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_429_with_retry_after_is_not_retried_sooner() {
    let app = TestApp::start().await;
    let device = app.register_device("u-2").await;
    app.sink
        .add_faults(&device, vec![Fault::retry_after(429, "2")]);
    app.publish_to("u-2", "slow down").await;
    let started = Instant::now();
    app.step().await;
    let reclaimer = app.reclaimer();
    reclaim_until(&reclaimer, Duration::from_secs(10), "delivery", || {
        app.sink.delivered().len() == 1
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "retried after {:?}, before the 2 s the push service asked for",
        started.elapsed()
    );
    assert_eq!(app.sink.arrivals().len(), 2);
    assert_eq!(app.pending(), 0);
}

#[tokio::test]
async fn bad_request_and_too_large_are_dead_lettered_at_once() {
    for (status, reason) in [(400, "push_bad_request"), (413, "payload_too_large")] {
        let app = TestApp::start().await;
        let device = app.register_device("u-3").await;
        app.sink.add_faults(&device, vec![Fault::status(status)]);
        let event_id = app.publish_to("u-3", "doomed").await;
        let batch = app.step().await;
        assert_eq!(
            batch.entries[0].1,
            EntryOutcome::Acked {
                delivered: 0,
                gone: 0,
                dead: 1,
                superseded: 0,
                expired: 0,
            }
        );
        assert_eq!(app.pending(), 0, "acknowledged with the dead letter");
        let dead = app.dead_letters().await;
        assert_eq!(dead.len(), 1);
        let d = &dead[0];
        assert_eq!(d.reason, reason);
        assert_eq!(d.event_id.as_deref(), Some(event_id.as_str()));
        assert_eq!(d.subscription.as_deref(), Some(device.as_str()));
        assert_eq!(d.fields["dlq.last_status"], status.to_string());
        assert_eq!(d.fields["dlq.attempts"], "1");
        assert_eq!(d.fields["title"], "doomed", "the original fields are kept");
        assert_eq!(d.fields["dlq.source_stream"], app.stream());
        for field in [
            "dlq.source_id",
            "dlq.consumer",
            "dlq.first_seen",
            "dlq.dead_at",
            "dlq.last_error",
        ] {
            assert!(
                d.fields.get(field).is_some_and(|v| !v.is_empty()),
                "{field} in {:?}",
                d.fields
            );
        }
    }
}

#[tokio::test]
async fn always_500_is_dead_lettered_after_max_deliveries_with_the_attempts_recorded() {
    let app = TestApp::start().await;
    let device = app.register_device("u-4").await;
    app.sink.add_faults(&device, vec![Fault::status(500); 10]);
    app.publish_to("u-4", "never").await;
    app.step().await;
    let reclaimer = app.reclaimer();
    reclaim_until(
        &reclaimer,
        Duration::from_secs(10),
        "the dead letter",
        || app.pending() == 0,
    )
    .await;
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "max_deliveries");
    assert_eq!(
        dead[0].fields["dlq.attempts"], "3",
        "retry.max_deliveries = 3"
    );
    assert_eq!(dead[0].fields["dlq.last_status"], "500");
    assert_eq!(app.sink.arrivals().len(), 3, "three attempts, no more");
}

#[tokio::test]
async fn fan_out_with_one_failing_device_delivers_the_others_once_and_dead_letters_it_alone() {
    let app = TestApp::start().await;
    let ok1 = app.register_device("u-5").await;
    let ok2 = app.register_device("u-5").await;
    let bad = app.register_device("u-5").await;
    app.sink.add_faults(&bad, vec![Fault::status(500); 10]);
    app.publish_to("u-5", "three phones").await;
    app.step().await;
    let reclaimer = app.reclaimer();
    reclaim_until(
        &reclaimer,
        Duration::from_secs(10),
        "the dead letter",
        || app.pending() == 0,
    )
    .await;
    let delivered: Vec<String> = app
        .sink
        .delivered()
        .into_iter()
        .map(|a| a.subscription)
        .collect();
    assert_eq!(delivered.iter().filter(|s| **s == ok1).count(), 1);
    assert_eq!(delivered.iter().filter(|s| **s == ok2).count(), 1);
    assert_eq!(delivered.len(), 2);
    let to_bad = app
        .sink
        .arrivals()
        .into_iter()
        .filter(|a| a.subscription == bad)
        .count();
    assert_eq!(
        to_bad, 3,
        "the failing device was retried up to max_deliveries"
    );
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].subscription.as_deref(), Some(bad.as_str()));
}

#[tokio::test]
async fn a_garbage_entry_is_dead_lettered_as_poison_and_later_events_are_delivered() {
    let app = TestApp::start().await;
    app.register_device("u-6").await;
    let garbage: String = redis::cmd("XADD")
        .arg(app.stream())
        .arg("*")
        .arg("hello")
        .arg("world")
        .query(&mut app.redis.conn())
        .expect("XADD");
    app.publish_to("u-6", "after").await;
    let worker = app.run_worker();
    eventually("the later event", Duration::from_secs(10), || {
        app.sink.delivered().len() == 1
    })
    .await;
    eventually("nothing pending", Duration::from_secs(5), || {
        app.pending() == 0
    })
    .await;
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "undecodable");
    assert_eq!(dead[0].fields["dlq.source_id"], garbage);
    assert_eq!(dead[0].fields["hello"], "world");
    app.shutdown.cancel();
    worker.await.expect("task").expect("clean stop");
}

#[tokio::test]
async fn an_entry_trimmed_while_pending_leaves_a_tombstone() {
    let app = TestApp::start().await;
    let device = app.register_device("u-7").await;
    app.sink.add_faults(&device, vec![Fault::status(503)]);
    app.publish_to("u-7", "soon trimmed").await;
    let batch = app.step().await;
    let stream_id = batch.entries[0].0.clone();
    let _: u64 = redis::cmd("XTRIM")
        .arg(app.stream())
        .arg("MAXLEN")
        .arg(0)
        .query(&mut app.redis.conn())
        .expect("XTRIM");
    let reclaimer = app.reclaimer();
    reclaim_until(&reclaimer, Duration::from_secs(10), "the tombstone", || {
        app.pending() == 0
    })
    .await;
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, "deleted_while_pending");
    assert_eq!(dead[0].fields["dlq.source_id"], stream_id);
    // Scanning again does not write a second tombstone.
    reclaimer.scan(0).await.expect("scan");
    assert_eq!(app.dead_letters().await.len(), 1);
}

#[tokio::test]
async fn a_replayed_dead_letter_is_delivered_once_and_leaves_the_dead_letter_stream() {
    let app = TestApp::start().await;
    let device = app.register_device("u-8").await;
    app.sink.add_faults(&device, vec![Fault::status(400)]);
    let event_id = app.publish_to("u-8", "second chance").await;
    app.step().await;
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);

    // The push service recovered (the fault is used up); replay it.
    let new_id = app
        .worker
        .dead_letters()
        .replay(&dead[0])
        .await
        .expect("replay");
    assert!(
        app.dead_letters().await.is_empty(),
        "the dead letter is gone"
    );
    let batch = app.step().await;
    assert_eq!(batch.entries[0].0, new_id);
    let delivered = app.sink.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        delivered[0].event_id.as_deref(),
        Some(event_id.as_str()),
        "the event id is kept"
    );
    assert_eq!(app.pending(), 0);
}

#[tokio::test]
async fn a_replay_does_not_push_again_to_devices_that_already_had_the_event() {
    let app = TestApp::start().await;
    let ok = app.register_device("u-9").await;
    let bad = app.register_device("u-9").await;
    app.sink.add_faults(&bad, vec![Fault::status(400)]);
    app.publish_to("u-9", "once each").await;
    app.step().await;
    let dead = app.dead_letters().await;
    app.worker
        .dead_letters()
        .replay(&dead[0])
        .await
        .expect("replay");
    app.step().await;
    let delivered: Vec<String> = app
        .sink
        .delivered()
        .into_iter()
        .map(|a| a.subscription)
        .collect();
    assert_eq!(
        delivered.iter().filter(|s| **s == ok).count(),
        1,
        "not pushed twice"
    );
    assert_eq!(
        delivered.iter().filter(|s| **s == bad).count(),
        1,
        "the failed one got it on replay"
    );
}

#[tokio::test]
async fn two_reclaimers_never_claim_the_same_entry() {
    let app = TestApp::start().await;
    let device = app.register_device("u-10").await;
    app.sink.add_faults(&device, vec![Fault::status(503); 20]);
    for n in 0..20 {
        app.publish_to("u-10", &format!("e{n}")).await;
    }
    app.step().await;
    // Each attempt ended by releasing its lease (left as `ended <holder>`), and
    // no heartbeat still in flight took it back (one did, and the retries
    // waited for it to expire).
    let mut conn = app.redis.conn();
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg("*:lease:*")
        .query(&mut conn)
        .expect("KEYS");
    for lease in leases {
        let holder: String = redis::cmd("GET").arg(&lease).query(&mut conn).expect("GET");
        assert!(
            holder.starts_with("ended "),
            "{lease} is still held: {holder}"
        );
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut settings_b = app.settings.clone();
    settings_b.worker.consumer = "other-host".into();
    let a = app.reclaimer();
    let b = Reclaimer::new(
        app.worker.clone().with_consumer("other-host".into()),
        &settings_b,
    );
    let (ra, rb) = tokio::join!(a.scan(0), b.scan(0));
    let (ra, rb) = (ra.expect("scan a"), rb.expect("scan b"));
    assert_eq!(
        ra.processed.len() + rb.processed.len(),
        20,
        "every due entry claimed once"
    );
    let mut ids: Vec<&String> = ra
        .processed
        .iter()
        .chain(rb.processed.iter())
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "no entry claimed twice");
}

#[tokio::test]
async fn idle_consumers_without_pending_entries_are_removed_and_others_kept() {
    let app =
        TestApp::start_with(|s| s.reclaimer.consumer_idle_timeout = Duration::from_millis(200))
            .await;
    let device = app.register_device("u-11").await;
    let mut conn = app.redis.conn();
    // An idle consumer with nothing pending, and one holding an entry.
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(app.stream())
        .arg(&app.settings.worker.group)
        .arg("idle-one")
        .query(&mut conn)
        .expect("create consumer");
    app.sink.add_faults(&device, vec![Fault::status(503)]);
    app.publish_to("u-11", "held").await;
    app.step().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let removed = app
        .reclaimer()
        .remove_idle_consumers()
        .await
        .expect("hygiene");
    assert_eq!(removed, vec!["idle-one".to_string()]);
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(app.stream())
        .arg(&app.settings.worker.group)
        .query(&mut conn)
        .expect("XINFO");
    assert_eq!(
        consumers.len(),
        1,
        "the consumer with a pending entry is kept"
    );
}

#[tokio::test]
async fn a_group_lost_while_the_worker_runs_is_recreated_from_id_zero() {
    let app = TestApp::start().await;
    app.register_device("u-12").await;
    let worker = app.run_worker();
    app.publish_to("u-12", "before the loss").await;
    eventually("the first event", Duration::from_secs(10), || {
        app.sink.delivered().len() == 1
    })
    .await;
    // As after a Redis restart without persistence of the group: it is gone.
    let _: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(app.stream())
        .arg(&app.settings.worker.group)
        .query(&mut app.redis.conn())
        .expect("destroy");
    app.publish_to("u-12", "after the loss").await;
    eventually("the group to be back", Duration::from_secs(10), || {
        let groups: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(app.stream())
            .query(&mut app.redis.conn())
            .expect("XINFO");
        groups.len() == 1
    })
    .await;
    // Recreated at 0, it reads the whole stream again; the outcome markers keep
    // the first event from a second push.
    eventually("the second event", Duration::from_secs(10), || {
        app.sink.delivered().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let titles: Vec<String> = app
        .sink
        .delivered()
        .iter()
        .map(|a| {
            a.plaintext.as_ref().expect("decrypted")["title"]
                .as_str()
                .expect("title")
                .to_string()
        })
        .collect();
    assert_eq!(
        titles,
        vec!["before the loss".to_string(), "after the loss".to_string()]
    );
    app.shutdown.cancel();
    worker.await.expect("task").expect("clean stop");
}

#[tokio::test]
async fn an_unreadable_stored_subscription_is_dead_lettered_and_the_others_delivered() {
    let app = TestApp::start().await;
    let good = app.register_device("u-13").await;
    let broken = app.register_device("u-13").await;
    let _: i64 = redis::cmd("HDEL")
        .arg(app.db.keys.subscription(&broken))
        .arg("endpoint")
        .query(&mut app.redis.conn())
        .expect("break the stored subscription");
    app.publish_to("u-13", "one good phone").await;
    let batch = app.step().await;
    assert_eq!(
        batch.entries[0].1,
        EntryOutcome::Acked {
            delivered: 1,
            gone: 0,
            dead: 1,
            superseded: 0,
            expired: 0,
        }
    );
    assert_eq!(app.sink.delivered()[0].subscription, good);
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "invalid_subscription");
    assert_eq!(dead[0].subscription.as_deref(), Some(broken.as_str()));
}

#[tokio::test]
async fn a_worker_that_resumes_after_a_reclaim_does_not_push_again() {
    let app = TestApp::start().await;
    app.register_device("u-14").await;
    app.publish_to("u-14", "once").await;
    // The worker reads the entry, then stops (SIGSTOP, a long GC pause, a slow disk)...
    let reply: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&app.settings.worker.group)
        .arg(app.worker.consumer())
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(app.stream())
        .arg(">")
        .query(&mut app.redis.conn())
        .expect("XREADGROUP");
    let entry = herald::shared::stream::parse_entries(reply, 1)
        .expect("parse")
        .remove(0);
    // ... the reclaimer finds it idle past its backoff and delivers it ...
    tokio::time::sleep(Duration::from_millis(150)).await;
    let scan = app.reclaimer().scan(0).await.expect("scan");
    assert_eq!(scan.processed.len(), 1);
    assert_eq!(app.sink.delivered().len(), 1);
    // ... and when the worker resumes, it sees the entry is no longer its own.
    assert_eq!(
        app.worker.process_entry(entry).await,
        EntryOutcome::TakenOver
    );
    assert_eq!(app.sink.delivered().len(), 1, "no second push");
}
