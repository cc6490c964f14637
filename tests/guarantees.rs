//! Guarantees beyond the happy path, each through the running loops with its
//! horizon shrunk by settings: nothing accepted is acknowledged without
//! reaching its devices or a dead letter, and no state grows until herald
//! refuses work.

mod helpers;

use std::collections::HashMap;
use std::time::Duration;

use helpers::{ago, eventually, spawn_role_with, wait_started, TestApp};
use herald::operate::replay::{Bound, Plan, Replayer};
use herald::operate::sink::Fault;
use serde_json::json;

fn update(user: &str, key: &str, at: &str, title: &str) -> serde_json::Value {
    json!({"topic": "parking.lot-7.exit", "user": user, "key": key, "publish_at": at, "notification": {"title": title}})
}

/// `herald replay --from 1h` (with `--force` when `force`), as the command runs it.
async fn replay_last_hour(app: &TestApp, force: bool) -> herald::operate::replay::Summary {
    Replayer::new(app.db.clone(), app.settings.events.defaults())
        .run(
            &Plan {
                from: Bound::parse("1h", false).expect("bound"),
                to: None,
                topic: None,
                force,
            },
            |_| {},
        )
        .await
        .expect("replay")
}

/// Deliveries per event id to one device.
fn per_event(app: &TestApp, device: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for id in app.delivered_to(device) {
        *seen.entry(id).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_of_one_key_for_different_people_never_supersede_each_other() {
    let app = TestApp::start().await;
    let owner = app.register_device("u-owner").await;
    let staff = app.register_device("u-staff").await;
    // The lot's control room follows every exit by topic.
    let (_, browser) = app.sink.new_subscription();
    let (status, body) = app
        .post(
            "/v1/subscriptions",
            &json!({"user": "control-room", "subscription": browser, "topics": ["parking.#"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let room = body["id"].as_str().expect("id").to_string();
    app.run_roles();
    for round in 0..3 {
        // Published together, the staff's 1 ms newer, the room's (a topic event) newer still.
        let (status, body) = app
            .post(
                "/v1/events",
                &json!([
                    update("u-owner", "12가3456", &ago(3), &format!("owner {round}")),
                    update("u-staff", "12가3456", &ago(2), &format!("staff {round}")),
                    {"topic": "parking.lot-7.exit", "key": "12가3456", "publish_at": ago(1), "notification": {"title": format!("room {round}")}},
                ]),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let n = round + 1;
        eventually(
            &format!("everyone got round {round}"),
            Duration::from_secs(10),
            || {
                app.delivered_to(&owner).len() == n
                    && app.delivered_to(&staff).len() == n
                    && app.delivered_to(&room).len() == n
            },
        )
        .await;
    }
    eventually("nothing pending", Duration::from_secs(5), || {
        app.pending() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_event_released_later_is_not_superseded_by_what_others_got_meanwhile() {
    let app = TestApp::start().await;
    let staff = app.register_device("u-staff").await;
    app.run_roles();
    // The owner has no device yet: their event is held.
    let held = app
        .publish(update("u-owner", "12가3456", &ago(2_000), "for the owner"))
        .await;
    app.publish(update("u-staff", "12가3456", &ago(1_000), "for the staff"))
        .await;
    eventually("the staff has theirs", Duration::from_secs(5), || {
        app.delivered_to(&staff).len() == 1
    })
    .await;
    let owner = app.register_device("u-owner").await;
    eventually(
        "the owner's held event reaches the owner's new device",
        Duration::from_secs(10),
        || app.delivered_to(&owner) == vec![held.clone()],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_events_expire_and_only_live_ones_count_against_the_cap() {
    let app = TestApp::start_with(|s| s.admin.sample_interval = Duration::from_millis(100)).await;
    app.run_roles();
    let short: Vec<serde_json::Value> = (0..150)
        .map(|n| json!({"topic": "welcome", "user": "u-new", "ttl": 1, "notification": {"title": format!("short {n}")}}))
        .collect();
    let (status, body) = app.post("/v1/events", &json!(short)).await;
    assert_eq!(status, 202, "{body}");
    eventually("all of them are settled", Duration::from_secs(10), || {
        app.pending() == 0 && app.stream_len() == 150
    })
    .await;
    // The reclaimer's sweep drops them once their TTL is over, and counts them.
    let held_now = || async {
        let stats = herald::operate::stats::collect(&app.db, None, None)
            .await
            .expect("stats");
        (stats.streams[0].held, stats.streams[0].held_expired)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (held, expired) = held_now().await;
        if held == 0 && expired >= 100 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the held events expired and were counted: held {held}, expired {expired}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lasting = app
        .publish(json!({"topic": "welcome", "user": "u-new", "ttl": 600, "notification": {"title": "lasting"}}))
        .await;
    eventually("the new event is held", Duration::from_secs(5), || {
        app.pending() == 0
    })
    .await;
    let device = app.register_device("u-new").await;
    eventually(
        "the user's device gets the event that is still alive",
        Duration::from_secs(10),
        || app.delivered_to(&device) == vec![lasting.clone()],
    )
    .await;
    let user_set: bool = redis::cmd("EXISTS")
        .arg(app.db.keys.held(0, "u-new"))
        .query(&mut app.redis.conn())
        .expect("EXISTS");
    assert!(!user_set, "nothing is left held for the user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stays_locked_as_long_as_its_event_is_processed_and_waiting_costs_no_attempt() {
    // One attempt each: an event that waited on the busy key must still have it.
    let app = TestApp::start_with(|s| s.retry.max_deliveries = 1).await;
    let device = app.register_device("u-1").await;
    // The first push takes far longer than a lease (1 s here).
    app.sink
        .add_faults(&device, vec![Fault::status(201).delayed(2_500)]);
    app.run_roles();
    app.publish(update("u-1", "car-1", &ago(2_000), "older"))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let newer = app
        .publish(update("u-1", "car-1", &ago(1_000), "newer"))
        .await;
    eventually("both settled", Duration::from_secs(15), || {
        app.sink.arrivals().len() == 2 && app.pending() == 0
    })
    .await;
    let arrivals = app.sink.arrivals();
    assert_eq!(
        arrivals.last().and_then(|a| a.event_id.clone()),
        Some(newer),
        "the newer update landed last: {arrivals:?}"
    );
    assert!(
        app.dead_letters().await.is_empty(),
        "waiting used no attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replayed_after_the_markers_expired_reaches_only_its_device() {
    let app = TestApp::start_with(|s| s.retry.max_age = Duration::from_millis(1_000)).await;
    let a = app.register_device("u-1").await;
    let b = app.register_device("u-1").await;
    let refused = app.register_device("u-1").await;
    app.sink.add_faults(&refused, vec![Fault::status(400)]);
    app.run_roles();
    let event = app.publish_to("u-1", "x").await;
    eventually("delivered to the others", Duration::from_secs(5), || {
        app.delivered_to(&a).len() == 1 && app.delivered_to(&b).len() == 1 && app.pending() == 0
    })
    .await;
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);
    // The outcome markers live 2 × retry.max_age: wait them out.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let markers: bool = redis::cmd("EXISTS")
        .arg(app.db.keys.outcomes(0, &event))
        .query(&mut app.redis.conn())
        .expect("EXISTS");
    assert!(!markers, "the markers are gone");
    app.worker
        .dead_letters()
        .replay(&dead[0])
        .await
        .expect("replay");
    eventually("the refused device gets it", Duration::from_secs(5), || {
        app.delivered_to(&refused).len() == 1
    })
    .await;
    eventually("settled", Duration::from_secs(5), || app.pending() == 0).await;
    assert_eq!(app.delivered_to(&a).len(), 1, "not pushed again");
    assert_eq!(app.delivered_to(&b).len(), 1, "not pushed again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_of_a_forced_replay_is_replayed_under_its_runs_markers() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    app.run_roles();
    app.publish_to("u-1", "x").await;
    eventually("delivered", Duration::from_secs(5), || {
        app.delivered_to(&device).len() == 1
    })
    .await;
    // The forced copy is refused by the device: a dead letter of the run.
    app.sink.add_faults(&device, vec![Fault::status(400)]);
    replay_last_hour(&app, true).await;
    eventually(
        "the forced copy is dead-lettered",
        Duration::from_secs(5),
        || app.pending() == 0 && app.sink.arrivals().len() == 2,
    )
    .await;
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);
    app.worker
        .dead_letters()
        .replay(&dead[0])
        .await
        .expect("replay the dead letter");
    eventually(
        "the device gets the forced replay after all",
        Duration::from_secs(5),
        || app.delivered_to(&device).len() == 2,
    )
    .await;
}

#[tokio::test]
async fn one_id_published_with_two_keys_in_two_partitions_is_a_conflict() {
    let app = TestApp::start_with(|s| s.redis.partitions = 4).await;
    let keys = &app.db.keys;
    let first = "car-1";
    let second = (0..100)
        .map(|n| format!("car-{n}"))
        .find(|k| keys.partition_for(k) != keys.partition_for(first))
        .expect("a key in another partition");
    let event = |key: &str| json!({"id": "evt-once", "topic": "t.a", "user": "u-1", "key": key, "notification": {"title": "x"}});
    let (status, body) = app.post("/v1/events", &event(first)).await;
    assert_eq!(status, 202, "{body}");
    let stream_id = body["events"][0]["stream_id"].clone();
    let (status, body) = app.post("/v1/events", &event(&second)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["events"][0]["stream_id"], stream_id, "{body}");
    let (status, body) = app.post("/v1/events", &event(first)).await;
    assert_eq!(status, 202, "the same content again is still fine: {body}");
    let total: u64 = (0..4)
        .map(|p| {
            redis::cmd("XLEN")
                .arg(keys.stream(p))
                .query::<u64>(&mut app.redis.conn())
                .expect("XLEN")
        })
        .sum();
    assert_eq!(total, 1, "one entry in all");
}

/// Drops the worker's reading connection, as a Redis blip or a proxy would;
/// waits for it to be back (reading) first, and fails if there was none to drop.
async fn drop_readers(app: &TestApp) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut app.redis.conn())
            .expect("CLIENT LIST");
        let mut dropped = 0;
        for line in clients.lines().filter(|l| l.contains("cmd=xreadgroup")) {
            let id = line
                .split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .expect("a client id");
            let killed: u64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query(&mut app.redis.conn())
                .unwrap_or(0);
            dropped += killed;
        }
        if dropped > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker has a reading connection to drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_errors_never_retry_a_waiting_entry_early_nor_use_up_its_attempts() {
    let app = TestApp::start_with(|s| {
        s.retry.max_deliveries = 3;
        s.retry.base_delay = Duration::from_secs(2);
        s.retry.max_delay = Duration::from_secs(4);
    })
    .await;
    let device = app.register_device("u-1").await;
    app.sink
        .add_faults(&device, vec![Fault::retry_after(429, "30"); 10]);
    app.run_roles();
    app.publish_to("u-1", "x").await;
    eventually("the first push was refused", Duration::from_secs(5), || {
        app.attempts_at(&device).len() == 1
    })
    .await;
    for _ in 0..4 {
        drop_readers(&app).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(
        app.attempts_at(&device).len(),
        1,
        "the device waits out its Retry-After"
    );
    assert!(
        app.dead_letters().await.is_empty(),
        "no attempt was used up by a read"
    );
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(app.stream())
        .arg("herald")
        .arg("-")
        .arg("+")
        .arg(10)
        .query(&mut app.redis.conn())
        .expect("XPENDING");
    assert_eq!(pending[0].3, 1, "one attempt so far: {pending:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_errors_while_a_push_is_in_flight_use_up_no_attempt() {
    let app = TestApp::start_with(|s| s.retry.max_deliveries = 2).await;
    let device = app.register_device("u-1").await;
    app.sink
        .add_faults(&device, vec![Fault::status(503).delayed(3_000)]);
    app.run_roles();
    let event = app.publish_to("u-1", "x").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Redis drops the worker's reading connection three times while the push is in
    // flight; each time it looks at its own pending entries again.
    for _ in 0..3 {
        drop_readers(&app).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eventually(
        "after the failed push, its one retry delivers it",
        Duration::from_secs(15),
        || per_event(&app, &device).get(&event) == Some(&1),
    )
    .await;
    assert!(
        app.dead_letters().await.is_empty(),
        "no attempt was used up by a read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_does_not_push_history_older_than_the_markers_cover() {
    // Markers live 2 × 3 s: the worker below has 6 s to start and create its group.
    let app = TestApp::start_with(|s| s.retry.max_age = Duration::from_secs(3)).await;
    let device = app.register_device("u-1").await;
    let old = app.publish_to("u-1", "old").await;
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    let recent = app.publish_to("u-1", "recent").await;
    // A renamed group: a new group on a stream that already holds entries.
    let env = [
        ("HERALD_WORKER__GROUP", "renamed"),
        ("HERALD_RETRY__MAX_AGE", "3s"),
    ];
    let _worker = spawn_role_with(&app, &["worker"], "w", &env);
    wait_started(&app, "w").await;
    eventually("the recent event arrives", Duration::from_secs(10), || {
        app.delivered_to(&device).contains(&recent)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.delivered_to(&device),
        vec![recent],
        "the event older than the markers ({old}) was not pushed again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_spool_record_is_moved_aside_and_every_other_one_drains() {
    use herald::intake::publish::Ready;
    use herald::intake::spool::Spool;
    let spool_dir = tempfile::tempdir().expect("spool dir");
    // Three events answered 202 while Redis was away; the middle one's record is damaged on disk.
    {
        let spool = Spool::open(spool_dir.path(), 1 << 20).expect("open");
        let defaults = herald::shared::config::EventSettings::default().defaults();
        let batch: Vec<Ready> = (0..3)
            .map(|n| {
                let input: herald::shared::event::EventInput = serde_json::from_value(
                    json!({"id": format!("spooled-{n}"), "topic": "t.a", "user": "u-1", "notification": {"title": format!("n{n}")}}),
                )
                .expect("input");
                let event = input.validate(&defaults, chrono::Utc::now()).expect("valid");
                Ready::new(&input, &event)
            })
            .collect();
        spool.append(&batch).expect("append");
    }
    let path = spool_dir.path().join("events.log");
    let mut data = std::fs::read(&path).expect("read");
    let middle = data
        .windows(9)
        .position(|w| w == b"spooled-1")
        .expect("the middle record");
    data[middle] ^= 0x01;
    std::fs::write(&path, &data).expect("write");

    let dir = spool_dir.path().to_path_buf();
    let app = TestApp::start_with(move |s| s.spool.dir = dir).await;
    let device = app.register_device("u-1").await;
    app.run_roles();
    eventually(
        "the undamaged ones are delivered",
        Duration::from_secs(10),
        || {
            let got = per_event(&app, &device);
            got.contains_key("spooled-0") && got.contains_key("spooled-2")
        },
    )
    .await;
    let depth = herald::intake::spool::Depth::read(spool_dir.path()).expect("depth");
    assert_eq!(depth.records, 0, "{depth:?}");
    assert_eq!(
        depth.quarantined, 1,
        "the damaged record is kept aside: {depth:?}"
    );
    let stats = herald::operate::stats::table(
        &herald::operate::stats::collect(&app.db, None, Some(spool_dir.path()))
            .await
            .expect("stats"),
    );
    assert!(stats.contains("1 piece(s) quarantined"), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_copy_next_to_its_pending_original_never_pushes_a_device_twice() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    // The original's push is slow: the copy comes while it is in flight.
    app.sink
        .add_faults(&device, vec![Fault::status(201).delayed(2_000)]);
    app.run_roles();
    app.publish_to("u-1", "x").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let summary = replay_last_hour(&app, false).await;
    assert_eq!(summary.replayed, 1);
    eventually("both entries settled", Duration::from_secs(15), || {
        app.pending() == 0 && app.stream_len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.attempts_at(&device).len(),
        1,
        "one push, though two entries of the event ran side by side"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_slow_entry_while_every_connection_they_had_is_held_up() {
    // One attempt: a reclaimer taking the entry for abandoned would use it up.
    let app = TestApp::start_with(|s| {
        s.redis.connections = 1;
        s.retry.max_deliveries = 1;
    })
    .await;
    let device = app.register_device("u-1").await;
    app.sink
        .add_faults(&device, vec![Fault::status(201).delayed(3_000)]);
    app.run_worker();
    // A reclaimer elsewhere, ready to take any entry whose lease lapses (1 s here).
    let _reclaimer = spawn_role_with(
        &app,
        &["reclaimer"],
        "reclaimer-host",
        &[("HERALD_RETRY__MAX_DELIVERIES", "1")],
    );
    wait_started(&app, "reclaimer-host").await;
    app.publish_to("u-1", "x").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Something slow on the one shared connection, and on the heartbeats' own,
    // holds up every command queued behind it for longer than a lease (here a
    // BLPOP: Redis reads nothing more from a blocked client until it returns).
    // The heartbeats' connection is replaced at its first timeout.
    let mut side = app.db.side_conn();
    let side_blocked = tokio::spawn(async move {
        redis::cmd("BLPOP")
            .arg("herald-test:nothing")
            .arg(2.5)
            .query_async::<Option<(String, String)>>(&mut side)
            .await
    });
    let blocked: redis::RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
        .arg("herald-test:nothing")
        .arg(2.5)
        .query_async(&mut app.db.conn())
        .await;
    assert_eq!(blocked.expect("BLPOP answers at its timeout"), None);
    let side_error = side_blocked
        .await
        .expect("the task ran")
        .expect_err("the heartbeats' connection times out within a heartbeat");
    assert!(side_error.is_timeout(), "{side_error}");
    eventually("settled", Duration::from_secs(15), || app.pending() == 0).await;
    let reclaimer = helpers::logs(&app, "reclaimer-host");
    assert!(
        !reclaimer.contains("reclaimed pending entries"),
        "the lease never lapsed, so the reclaimer never took the entry: {reclaimer}"
    );
    assert_eq!(app.attempts_at(&device).len(), 1, "one push");
    assert!(
        app.dead_letters().await.is_empty(),
        "no attempt was used up by a takeover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_past_retry_max_age_ends_even_while_its_key_stays_busy() {
    let app = TestApp::start_with(|s| {
        s.retry.max_age = Duration::from_millis(1_500);
        s.retry.max_deliveries = 1000;
        s.push.request_timeout = Duration::from_secs(20);
    })
    .await;
    let failing = app.register_device("u-1").await;
    let slow = app.register_device("u-2").await;
    app.sink.add_faults(&failing, vec![Fault::status(503); 500]);
    // Another event of the same key holds the key far longer than retry.max_age.
    app.sink
        .add_faults(&slow, vec![Fault::status(201).delayed(8_000)]);
    app.run_roles();
    app.publish(update("u-1", "car-1", &ago(2_000), "failing for ever"))
        .await;
    eventually("its first attempt failed", Duration::from_secs(5), || {
        !app.attempts_at(&failing).is_empty()
    })
    .await;
    app.publish(update("u-2", "car-1", &ago(1_000), "slow"))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    loop {
        let dead = app.dead_letters().await;
        if dead.iter().any(|d| d.reason == "retry_expired") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the expired entry was given up without waiting for its busy key: {dead:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The other event's push is answered only 8 s after it was sent: a dead letter
    // within 6 s came while the key was still busy.
    assert!(
        app.attempts_at(&slow).is_empty(),
        "the other event of the key is still being pushed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_update_that_never_reached_a_device_does_not_supersede_an_older_one_there() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    // The newer update is refused for good by the device's push service.
    app.sink.add_faults(&device, vec![Fault::status(400)]);
    app.run_roles();
    app.publish(update("u-1", "car-1", &ago(1_000), "newer, refused"))
        .await;
    eventually(
        "the newer one is dead-lettered",
        Duration::from_secs(5),
        || app.pending() == 0 && app.attempts_at(&device).len() == 1,
    )
    .await;
    let older = app
        .publish(update("u-1", "car-1", &ago(5_000), "older, arriving late"))
        .await;
    eventually(
        "the older update reaches the device that never got the newer one",
        Duration::from_secs(5),
        || app.delivered_to(&device) == vec![older.clone()],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_ttl_is_over_is_not_replayed_and_its_dead_letter_stays() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    app.sink.add_faults(&device, vec![Fault::status(400)]);
    app.run_roles();
    app.publish(
        json!({"topic": "t.a", "user": "u-1", "ttl": 1, "notification": {"title": "short-lived"}}),
    )
    .await;
    eventually("dead-lettered", Duration::from_secs(5), || {
        app.attempts_at(&device).len() == 1 && app.pending() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let refused = app
        .worker
        .dead_letters()
        .replay(&dead[0])
        .await
        .expect_err("nothing left to deliver")
        .to_string();
    assert!(
        refused.contains("TTL") && refused.contains("purge"),
        "{refused}"
    );
    assert_eq!(app.dead_letters().await.len(), 1, "the dead letter is kept");
    let summary = replay_last_hour(&app, true).await;
    assert_eq!((summary.replayed, summary.skipped_expired), (0, 1));
    assert_eq!(app.stream_len(), 1, "no copy was added");
}
