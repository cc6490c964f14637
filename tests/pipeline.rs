//! The core pipeline end to end: subscriptions and events through the real API,
//! the worker reading the real stream, pushes decrypted by the sink.

mod helpers;

use std::collections::HashMap;
use std::time::Duration;

use helpers::{eventually, TestApp};
use herald::deliver::EntryOutcome;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_receives_every_event_meant_for_it_exactly_once() {
    let app = TestApp::start().await;
    // Three users with one, two and three devices.
    let mut devices: HashMap<&str, Vec<String>> = HashMap::new();
    for (user, count) in [("u-1", 1), ("u-2", 2), ("u-3", 3)] {
        for _ in 0..count {
            let sink_id = app.register_device(user).await;
            devices.entry(user).or_default().push(sink_id);
        }
    }
    // Single events and one batch, each with its own title.
    let mut sent: HashMap<String, (&str, String)> = HashMap::new();
    for user in ["u-1", "u-2", "u-3"] {
        for n in 0..3 {
            let title = format!("{user} event {n}");
            let id = app.publish_to(user, &title).await;
            sent.insert(id, (user, title));
        }
    }
    let batch: Vec<_> = ["u-1", "u-2", "u-3"]
        .iter()
        .map(|u| json!({"topic": "parking.lot-7.exit", "user": u, "key": format!("car-{u}"), "urgency": "high", "ttl": 120, "notification": {"title": format!("{u} batch"), "body": "left lot 7", "url": "/visits/1"}}))
        .collect();
    let (status, body) = app.post("/v1/events", &json!(batch)).await;
    assert_eq!(status, 202, "{body}");
    for (i, user) in ["u-1", "u-2", "u-3"].iter().enumerate() {
        let id = body["events"][i]["id"].as_str().expect("id").to_string();
        assert!(body["events"][i]["stream_id"]
            .as_str()
            .is_some_and(|s| s.contains('-')));
        sent.insert(id, (user, format!("{user} batch")));
    }

    let expected: usize = sent.values().map(|(user, _)| devices[user].len()).sum();
    let worker = app.run_worker();
    eventually("every push to arrive", Duration::from_secs(30), || {
        app.sink.delivered().len() >= expected
    })
    .await;
    // Let a stray duplicate show itself before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let arrivals = app.sink.delivered();
    assert_eq!(arrivals.len(), expected, "no extra pushes");
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for a in &arrivals {
        let event_id = a.event_id.clone().expect("a decrypted payload with an id");
        *seen
            .entry((a.subscription.clone(), event_id.clone()))
            .or_default() += 1;
        let (user, title) = &sent[&event_id];
        assert!(
            devices[user].contains(&a.subscription),
            "{event_id} reached a device of another user"
        );
        let payload = a.plaintext.as_ref().expect("decrypted");
        assert_eq!(payload["title"], json!(title));
        assert_eq!(
            payload["topic"]
                .as_str()
                .map(|t| t.starts_with("parking.lot-7.")),
            Some(true)
        );
        if title.ends_with("batch") {
            assert_eq!(payload["body"], json!("left lot 7"));
            assert_eq!(payload["url"], json!("/visits/1"));
            assert_eq!(a.headers.urgency.as_deref(), Some("high"));
            assert_eq!(a.headers.ttl.as_deref(), Some("120"));
            assert_eq!(a.headers.topic.as_deref().map(str::len), Some(32));
        } else {
            assert_eq!(a.headers.urgency.as_deref(), Some("normal"));
            assert_eq!(a.headers.ttl.as_deref(), Some("3600"));
        }
    }
    for (event_id, (user, _)) in &sent {
        for device in &devices[user] {
            assert_eq!(
                seen.get(&(device.clone(), event_id.clone())),
                Some(&1),
                "{device} got {event_id} once"
            );
        }
    }
    assert_eq!(app.pending(), 0, "nothing left pending");
    assert_eq!(app.stream_len(), sent.len() as u64, "one entry per event");
    app.shutdown.cancel();
    worker
        .await
        .expect("worker task")
        .expect("worker stops cleanly");
}

#[tokio::test]
async fn a_gone_subscription_is_deleted_and_the_entry_acknowledged() {
    let app = TestApp::start().await;
    let kept = app.register_device("u-7").await;
    let dropped = app.register_device("u-7").await;
    app.sink.unsubscribe(&dropped); // the sink now answers 410 for it
    app.publish_to("u-7", "hello").await;

    let batch = app.step().await;
    assert_eq!(batch.entries.len(), 1);
    assert_eq!(
        batch.entries[0].1,
        EntryOutcome::Acked {
            delivered: 1,
            gone: 1,
            dead: 0,
            superseded: 0,
            expired: 0,
        }
    );
    assert_eq!(app.pending(), 0);
    let (_, list) = app.get("/v1/subscriptions?user=u-7").await;
    let ids: Vec<&str> = list["subscriptions"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(
        !ids.contains(&dropped.as_str()),
        "the gone subscription was deleted"
    );
    assert_eq!(ids.len(), 1);
    assert_eq!(app.sink.delivered()[0].subscription, kept);
}

#[tokio::test]
async fn a_failed_push_leaves_the_entry_pending_and_nothing_is_acked() {
    let app = TestApp::start().await;
    let device = app.register_device("u-8").await;
    app.sink.add_faults(
        &device,
        vec![herald::operate::sink::Fault::retry_after(503, "1")],
    );
    app.publish_to("u-8", "try me").await;
    let batch = app.step().await;
    assert!(
        matches!(&batch.entries[0].1, EntryOutcome::Pending { reason } if reason.contains("retry")),
        "{batch:?}"
    );
    assert_eq!(app.pending(), 1, "the entry stays pending for a reclaim");
    assert!(app.sink.delivered().is_empty());
}

#[tokio::test]
async fn without_holding_an_event_for_a_user_without_devices_is_acknowledged_as_having_no_target() {
    let app = TestApp::start_with(|s| s.routing.hold_per_user = 0).await;
    app.publish_to("u-nobody", "anyone?").await;
    let batch = app.step().await;
    assert_eq!(batch.entries[0].1, EntryOutcome::NoTarget);
    assert_eq!(app.pending(), 0);
}

#[tokio::test]
async fn entries_added_before_the_group_existed_are_not_skipped() {
    let app = TestApp::start().await;
    let device = app.register_device("u-9").await;
    let mut conn = app.redis.conn();
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(app.stream())
        .arg(&app.settings.worker.group)
        .query(&mut conn)
        .expect("destroy the group");
    app.publish_to("u-9", "early").await;
    app.worker
        .ensure_groups()
        .await
        .expect("group created again");
    let batch = app.step().await;
    assert_eq!(batch.entries.len(), 1, "the group starts at id 0");
    assert_eq!(app.sink.delivered()[0].subscription, device);
}

#[tokio::test]
async fn a_garbage_entry_is_dead_lettered_and_the_worker_goes_on() {
    let app = TestApp::start().await;
    app.register_device("u-10").await;
    let _: String = redis::cmd("XADD")
        .arg(app.stream())
        .arg("*")
        .arg("junk")
        .arg("yes")
        .query(&mut app.redis.conn())
        .expect("XADD garbage");
    app.publish_to("u-10", "after the junk").await;
    let batch = app.step().await;
    assert_eq!(batch.entries.len(), 2);
    assert_eq!(
        batch.entries[0].1,
        EntryOutcome::DeadLettered {
            reason: "undecodable".into()
        }
    );
    assert_eq!(
        batch.entries[1].1,
        EntryOutcome::Acked {
            delivered: 1,
            gone: 0,
            dead: 0,
            superseded: 0,
            expired: 0,
        }
    );
    assert_eq!(app.sink.delivered().len(), 1);
}

#[tokio::test]
async fn pushes_carry_a_valid_vapid_token_for_the_sinks_origin_including_its_port() {
    let app = TestApp::start().await;
    app.register_device("u-11").await;
    app.publish_to("u-11", "signed").await;
    app.step().await;
    let arrivals = app.sink.arrivals();
    assert_eq!(arrivals.len(), 1);
    // The sink answers 401 when aud, exp, sub or the signature is wrong.
    assert_eq!(arrivals[0].status, 201, "{:?}", arrivals[0].error);
}

#[tokio::test]
async fn a_worker_restarted_under_the_same_name_first_finishes_its_own_pending_entries() {
    // Batches of two, so the pending list is read in several steps.
    let app = TestApp::start_with(|s| s.worker.batch_size = 2).await;
    app.register_device("u-12").await;
    let failure = herald::operate::sink::Fault::status(500);
    app.sink.add_faults("*", vec![failure; 5]);
    for n in 0..5 {
        app.publish_to("u-12", &format!("second time lucky {n}"))
            .await;
    }
    for _ in 0..3 {
        let batch = app.step().await;
        assert!(batch
            .entries
            .iter()
            .all(|(_, o)| matches!(o, EntryOutcome::Pending { .. })));
    }
    assert_eq!(app.pending(), 5);

    // The same consumer name (a restart with worker.consumer set) takes back its own
    // pending entries first, once they are due (their backoff here is 100 ms); no
    // reclaimer runs in this test.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let worker = app.run_worker();
    eventually(
        "the pending entries to be delivered",
        Duration::from_secs(10),
        || app.sink.delivered().len() >= 5,
    )
    .await;
    eventually(
        "the entries to be acknowledged",
        Duration::from_secs(5),
        || app.pending() == 0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut titles: Vec<String> = app
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
    titles.sort();
    titles.dedup();
    assert_eq!(
        app.sink.delivered().len(),
        5,
        "each pending entry pushed once"
    );
    assert_eq!(titles.len(), 5);
    app.shutdown.cancel();
    worker
        .await
        .expect("worker task")
        .expect("worker stops cleanly");
}

#[tokio::test]
async fn a_fan_out_wider_than_the_concurrency_reaches_every_device_once() {
    let app = TestApp::start_with(|s| s.worker.concurrency = 2).await;
    let mut devices = std::collections::BTreeSet::new();
    for _ in 0..7 {
        devices.insert(app.register_device("u-13").await);
    }
    app.sink.set_delay(Duration::from_millis(20));
    app.publish_to("u-13", "to all seven").await;
    let batch = app.step().await;
    assert_eq!(
        batch.entries[0].1,
        EntryOutcome::Acked {
            delivered: 7,
            gone: 0,
            dead: 0,
            superseded: 0,
            expired: 0,
        }
    );
    let reached: Vec<String> = app
        .sink
        .delivered()
        .into_iter()
        .map(|a| a.subscription)
        .collect();
    assert_eq!(reached.len(), 7);
    assert_eq!(
        reached
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>(),
        devices
    );
}

/// The entries in flight claim and settle their devices in shared round trips
/// (`src/deliver/batch.rs`): 200 queued single-device events take far fewer
/// script runs than the two each would take alone, and every device still
/// gets each of its events exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_in_flight_share_their_claim_and_settle_round_trips() {
    const EVENTS: usize = 200;
    // Heartbeats (scripts too) every 5 s: none in a run this short, as a rule.
    let app = TestApp::start_with(|s| {
        s.retry.base_delay = Duration::from_secs(10);
        s.retry.max_delay = Duration::from_secs(20);
    })
    .await;
    let mut users = Vec::new();
    for n in 0..20 {
        let user = format!("u-batch-{n}");
        app.register_device(&user).await;
        users.push(user);
    }
    for round in 0..EVENTS / 100 {
        let events: Vec<_> = (0..100)
            .map(|i| json!({"topic": "parking.lot-7.exit", "user": users[i % users.len()], "notification": {"title": format!("round {round} event {i}")}}))
            .collect();
        let (status, body) = app.post("/v1/events", &json!(events)).await;
        assert_eq!(status, 202, "{body}");
    }
    let mut conn = app.redis.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .expect("reset the command counts");
    let worker = app.run_worker();
    eventually(
        "every event to be delivered",
        Duration::from_secs(60),
        || app.sink.delivered().len() >= EVENTS,
    )
    .await;
    eventually(
        "every entry to be acknowledged",
        Duration::from_secs(10),
        || app.pending() == 0,
    )
    .await;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .expect("INFO commandstats");
    // A command's `calls` or `failed_calls`.
    let count = |command: &str, what: &str| -> usize {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:")))
            .and_then(|rest| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{what}=")))
            })
            .map_or(0, |n| n.parse().expect("a count"))
    };
    let calls = |command: &str| count(command, "calls");
    // Alone, each event would run the claim and the settle script once (and
    // acknowledge with an XACK of its own): 400 script runs, 200 XACKs. Not
    // counted: runs refused before the script was loaded (NOSCRIPT), and
    // heartbeats (refresh.lua: one XCLAIM each) should a slow run have any.
    let scripts = (calls("evalsha") + calls("eval"))
        .saturating_sub(count("evalsha", "failed_calls"))
        .saturating_sub(calls("xclaim"));
    assert!(
        scripts <= EVENTS,
        "{scripts} script runs for {EVENTS} events: the entries in flight did not share round trips\n{stats}"
    );
    assert!(
        calls("xack") < EVENTS / 2,
        "{} XACKs for {EVENTS} events\n{stats}",
        calls("xack")
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for arrival in app.sink.delivered() {
        *seen
            .entry(arrival.event_id.expect("a decrypted payload with an id"))
            .or_default() += 1;
    }
    assert_eq!(seen.len(), EVENTS, "every event reached its device");
    assert!(seen.values().all(|n| *n == 1), "no event pushed twice");
    app.shutdown.cancel();
    worker
        .await
        .expect("worker task")
        .expect("worker stops cleanly");
}

/// One entry whose claim fails (its event's outcomes key holds a string, so
/// every write to it is refused) among thirty in flight: the worker's batches
/// carry it beside the others, and only it is left pending; every other
/// event reaches its device once and is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_whose_claim_fails_holds_up_no_other_in_its_batch() {
    const EVENTS: usize = 30;
    let app = TestApp::start().await;
    let mut users = Vec::new();
    for n in 0..10 {
        let user = format!("u-alone-{n}");
        app.register_device(&user).await;
        users.push(user);
    }
    let events: Vec<_> = (0..EVENTS)
        .map(|i| json!({"topic": "parking.lot-7.exit", "user": users[i % users.len()], "notification": {"title": format!("event {i}")}}))
        .collect();
    let (status, body) = app.post("/v1/events", &json!(events)).await;
    assert_eq!(status, 202, "{body}");
    let broken = body["events"][7]["id"].as_str().expect("an id").to_string();
    let _: () = redis::cmd("SET")
        .arg(app.db.keys.outcomes(0, &broken))
        .arg("not a hash")
        .query(&mut app.redis.conn())
        .expect("SET");
    let worker = app.run_worker();
    eventually(
        "every other event delivered and acknowledged",
        Duration::from_secs(30),
        || app.sink.delivered().len() >= EVENTS - 1 && app.pending() == 1,
    )
    .await;
    // Let a stray push of the broken event, or a duplicate, show itself.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for arrival in app.sink.delivered() {
        *seen
            .entry(arrival.event_id.expect("a decrypted payload with an id"))
            .or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        EVENTS - 1,
        "every other event reached its device"
    );
    assert!(!seen.contains_key(&broken), "the broken one was not pushed");
    assert!(seen.values().all(|n| *n == 1), "no event pushed twice");
    assert_eq!(app.pending(), 1, "only the broken entry is left pending");
    app.shutdown.cancel();
    worker
        .await
        .expect("worker task")
        .expect("worker stops cleanly");
}
