//! Push services that answer absurdly: a push service's answer affects that
//! push, that device, and at most that service, in proportion to the evidence;
//! it never affects other services, never crashes, never grows memory, and
//! never stalls the events behind it. Each hostile answer alone, then one
//! misbehaving device among hundreds of healthy ones on the same origin.

mod helpers;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use helpers::{eventually, spawn_role_with, wait_started, TestApp};
use herald::operate::sink::{Fault, Misbehaviour};
use serde_json::json;

fn at(arrival: &herald::operate::sink::Arrival) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(&arrival.at)
        .expect("arrival time")
        .with_timezone(&chrono::Utc)
}

/// Peak resident memory of a process, in bytes (`VmHWM`).
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_of_any_shape_never_panics_and_never_waits_past_the_cap() {
    let app = TestApp::start_with(|s| {
        s.retry.max_deliveries = 10;
        s.push.max_retry_after = Duration::from_secs(3);
    })
    .await;
    let bad = app.register_device("u-bad").await;
    let good = app.register_device("u-good").await;
    let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(4));
    app.sink.add_faults(
        &bad,
        vec![
            Fault::retry_after(429, "18446744073709551615"),
            Fault::retry_after(429, "99999999999999999999999999"),
            Fault::retry_after(429, "Thu, 01 Jan 2099 00:00:00 GMT"),
            Fault::retry_after(503, "-5"),
            Fault::retry_after(429, "1.5"),
            Fault::retry_after(429, ""),
            Fault::retry_after(429, "soon"),
            // Within push.max_retry_after: honoured.
            Fault::retry_after(429, &soon),
        ],
    );
    app.run_roles();
    app.publish_to("u-bad", "for the device that answers absurdly")
        .await;
    app.publish_to("u-good", "for a device that works").await;
    eventually(
        "the good device has its push",
        Duration::from_secs(10),
        || app.delivered_to(&good).len() == 1,
    )
    .await;
    eventually(
        "the absurd Retry-Afters were ordinary retries, and the device got its push",
        Duration::from_secs(30),
        || app.delivered_to(&bad).len() == 1,
    )
    .await;
    let attempts = app.attempts_at(&bad);
    assert_eq!(
        attempts.len(),
        9,
        "eight refusals, then the push: {attempts:#?}"
    );
    let not_before: chrono::DateTime<chrono::Utc> =
        httpdate::parse_http_date(&soon).expect("a date").into();
    assert!(
        at(&attempts[8]) >= not_before,
        "the HTTP-date Retry-After within the cap was honoured: retried at {}, not before {not_before}",
        attempts[8].at
    );
    assert!(app.dead_letters().await.is_empty());
    eventually("nothing pending", Duration::from_secs(5), || {
        app.pending() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_body_that_never_ends_or_trickles_is_cut_short() {
    let app = TestApp::start_with(|s| {
        s.retry.max_deliveries = 2;
        s.push.request_timeout = Duration::from_secs(3);
    })
    .await;
    let bad = app.register_device("u-bad").await;
    let good = app.register_device("u-good").await;
    app.sink.add_faults(
        &bad,
        vec![
            Fault::misbehaving(503, Misbehaviour::Trickle),
            Fault::misbehaving(500, Misbehaviour::EndlessBody),
        ],
    );
    app.run_roles();
    app.publish_to("u-bad", "x").await;
    app.publish_to("u-good", "y").await;
    eventually(
        "the good device has its push",
        Duration::from_secs(10),
        || app.delivered_to(&good).len() == 1,
    )
    .await;
    eventually(
        "the bad device is dead-lettered",
        Duration::from_secs(30),
        || app.attempts_at(&bad).len() == 2 && app.pending() == 0,
    )
    .await;
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let error = dead[0].fields["dlq.last_error"].clone();
    assert_eq!(dead[0].fields["dlq.last_status"], "500");
    assert!(
        error.contains("answered 500") && error.len() < 700,
        "at most 512 bytes of the body are kept: {} bytes",
        error.len()
    );
    let peak = peak_memory(std::process::id());
    assert!(
        peak < 400 << 20,
        "an endless body did not grow memory: peak {} MiB",
        peak >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_service_that_hangs_or_resets_holds_one_slot_and_nobody_else() {
    let app = TestApp::start_with(|s| {
        s.push.request_timeout = Duration::from_secs(3);
        s.worker.concurrency = 4;
        s.retry.max_deliveries = 5;
    })
    .await;
    let bad = app.register_device("u-bad").await;
    let mut good = Vec::new();
    for n in 0..6 {
        good.push(app.register_device(&format!("u-good-{n}")).await);
    }
    app.sink.add_faults(
        &bad,
        vec![
            Fault::misbehaving(504, Misbehaviour::Hang),
            Fault::misbehaving(502, Misbehaviour::Reset),
        ],
    );
    app.run_roles();
    app.publish_to("u-bad", "x").await;
    eventually(
        "the hanging push is in flight",
        Duration::from_secs(5),
        || app.attempts_at(&bad).len() == 1,
    )
    .await;
    for n in 0..6 {
        app.publish_to(&format!("u-good-{n}"), "y").await;
    }
    eventually(
        "every other device has its push",
        Duration::from_secs(10),
        || good.iter().all(|g| app.delivered_to(g).len() == 1),
    )
    .await;
    assert_eq!(
        app.attempts_at(&bad).len(),
        1,
        "the others were pushed while the hanging push still held its slot"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.delivered_to(&bad).len() != 1 {
        if std::time::Instant::now() > deadline {
            panic!(
                "after a timeout and a reset, the device gets its push: {:#?} pending {}",
                app.attempts_at(&bad),
                app.pending()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.attempts_at(&bad).len(), 3);
    assert!(app.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_pushing_to_one_device_fails_that_device_only() {
    let target: Arc<parking_lot::Mutex<String>> = Arc::default();
    let hook_target = target.clone();
    let app = TestApp::start_hooked(
        |s| s.retry.max_deliveries = 2,
        Arc::new(move |sub| {
            if *hook_target.lock() == sub.id() {
                panic!("a hostile subscription herald did not survive");
            }
        }),
    )
    .await;
    let doomed = app.register_device("u-1").await;
    let fine = app.register_device("u-1").await;
    *target.lock() = doomed.clone();
    app.run_roles();
    let first = app.publish_to("u-1", "first").await;
    let second = app.publish_to("u-1", "second").await;
    eventually(
        "the other device gets both events",
        Duration::from_secs(10),
        || app.delivered_to(&fine).len() == 2,
    )
    .await;
    eventually(
        "the panicking device is retried, then dead-lettered as a panic",
        Duration::from_secs(20),
        || app.pending() == 0,
    )
    .await;
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    for d in &dead {
        assert_eq!(d.reason, "panic");
        assert_eq!(d.subscription.as_deref(), Some(doomed.as_str()));
        assert_eq!(d.fields["dlq.attempts"], "2", "retried once first");
    }
    let mut ids: Vec<String> = dead.iter().filter_map(|d| d.event_id.clone()).collect();
    ids.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(ids, expected);
    // Later events still go through: nothing shared was poisoned.
    app.publish_to("u-1", "third").await;
    eventually(
        "a later event reaches the other device",
        Duration::from_secs(10),
        || app.delivered_to(&fine).len() == 3,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_devices_429_slows_that_device_and_opens_no_breaker() {
    let app = TestApp::start_with(|s| {
        s.admin.sample_interval = Duration::from_millis(100);
        s.retry.max_deliveries = 10;
    })
    .await;
    let bad = app.register_device("u-bad").await;
    let mut good = Vec::new();
    for n in 0..5 {
        good.push(app.register_device(&format!("u-good-{n}")).await);
    }
    app.sink
        .add_faults(&bad, vec![Fault::retry_after(429, "3"); 10]);
    app.run_roles();
    app.publish_to("u-bad", "x").await;
    eventually(
        "the first push to it was refused",
        Duration::from_secs(5),
        || !app.attempts_at(&bad).is_empty(),
    )
    .await;
    app.publish_to("u-bad", "x again").await;
    for n in 0..5 {
        app.publish_to(&format!("u-good-{n}"), "y").await;
    }
    eventually(
        "every other device of the same service has its push",
        Duration::from_secs(10),
        || good.iter().all(|g| app.delivered_to(g).len() == 1),
    )
    .await;
    assert_eq!(
        app.attempts_at(&bad).len(),
        1,
        "the throttled device is left alone for its Retry-After: its second event was not sent"
    );
    // `herald stats` shows what each worker reports (every admin.sample_interval).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let state = loop {
        let stats = herald::operate::stats::collect(&app.db, None, None)
            .await
            .expect("stats");
        match stats.push_services.first() {
            Some(state) if state.waiting_subscriptions > 0 => break state.clone(),
            other => assert!(
                std::time::Instant::now() < deadline,
                "the waiting subscription shows in herald stats: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(state.waiting_subscriptions, 1, "{state:?}");
    // The count of accepted pushes the console's delivery rate comes from: the
    // five good devices' pushes (reported after they were made).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = herald::operate::stats::collect(&app.db, None, None)
            .await
            .expect("stats");
        let delivered = stats.push_services.first().map_or(0, |s| s.delivered);
        if delivered >= 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker reports its delivered pushes: {delivered}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        state.open_breakers.is_empty(),
        "one device opens no breaker: {state:?}"
    );
    let table = herald::operate::stats::table(
        &herald::operate::stats::collect(&app.db, None, None)
            .await
            .expect("stats"),
    );
    assert!(
        table.contains("breakers open: none; subscriptions waiting out a 429: 1"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_devices_failing_open_the_breaker_and_then_the_processes_do_not_stall() {
    let app = TestApp::start_with(|s| {
        s.breaker.failures_to_open = 3;
        s.breaker.open_for = Duration::from_millis(1500);
        s.admin.sample_interval = Duration::from_millis(100);
        s.retry.max_deliveries = 50;
    })
    .await;
    let mut devices = Vec::new();
    for n in 0..3 {
        devices.push(app.register_device(&format!("u-{n}")).await);
    }
    app.sink.add_faults("*", vec![Fault::status(503); 3]);
    app.run_roles();
    for n in 0..3 {
        app.publish_to(&format!("u-{n}"), "x").await;
    }
    let open = || async {
        herald::operate::stats::collect(&app.db, None, None)
            .await
            .expect("stats")
            .push_services
            .iter()
            .any(|p| !p.open_breakers.is_empty())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !open().await {
        assert!(
            std::time::Instant::now() < deadline,
            "three devices failing opened the breaker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually(
        "the breaker closed again and every device got its push",
        Duration::from_secs(20),
        || devices.iter().all(|d| app.delivered_to(d).len() == 1),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while open().await {
        assert!(
            std::time::Instant::now() < deadline,
            "herald stats shows it closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.sink.arrivals().len(),
        6,
        "nothing was sent while it was open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_probe_that_ends_before_any_request_gives_its_slot_back() {
    let app = TestApp::start_with(|s| {
        s.breaker.failures_to_open = 3;
        s.breaker.open_for = Duration::from_millis(500);
    })
    .await;
    let mut subs = Vec::new();
    for n in 0..4 {
        let id = app.register_device(&format!("u-{n}")).await;
        let sub = herald::shared::subscriptions::Store::new(app.db.clone())
            .get(&id)
            .await
            .expect("read")
            .expect("stored")
            .expect("readable");
        subs.push(sub);
    }
    let event = |title: &str| {
        let input: herald::shared::event::EventInput = serde_json::from_value(
            json!({"topic": "t.a", "user": "u-0", "notification": {"title": title}}),
        )
        .expect("input");
        input
            .validate(&app.settings.events.defaults(), chrono::Utc::now())
            .expect("valid")
    };
    app.sink.add_faults("*", vec![Fault::status(503); 3]);
    for sub in &subs[..3] {
        assert!(!app.pusher.push(sub, &event("x"), 60).await.not_sent);
    }
    let held = app.pusher.push(&subs[3], &event("x"), 60).await;
    assert!(held.not_sent, "the breaker is open: {held:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The probe: a subscription whose keys cannot make a message ends before any request.
    let mut broken = subs[0].clone();
    broken.p256dh = "BBBB".into();
    let probe = app.pusher.push(&broken, &event("probe"), 60).await;
    assert!(
        !probe.not_sent
            && matches!(
                probe.outcome,
                herald::deliver::push::Outcome::DeadLetter { .. }
            ),
        "the probe was let through and failed on herald's side: {probe:?}"
    );
    let next = app
        .pusher
        .push(&subs[3], &event("after the probe"), 60)
        .await;
    assert_eq!(
        next.outcome,
        herald::deliver::push::Outcome::Delivered,
        "the probe's slot came back, so the next push probes, succeeds and closes the breaker: {next:?}"
    );
    assert!(app.pusher.state().open_breakers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_vapid_token_is_signed_again_and_tried_once_more() {
    let app = TestApp::start().await;
    let once = app.register_device("u-once").await;
    let always = app.register_device("u-always").await;
    app.sink.add_faults(&once, vec![Fault::status(401)]);
    app.sink
        .add_faults(&always, vec![Fault::status(403), Fault::status(403)]);
    app.run_roles();
    app.publish_to("u-once", "x").await;
    app.publish_to("u-always", "y").await;
    eventually("settled", Duration::from_secs(10), || {
        app.pending() == 0 && app.delivered_to(&once).len() == 1
    })
    .await;
    assert_eq!(
        app.attempts_at(&once).len(),
        2,
        "one refusal, one retry with a new token"
    );
    assert_eq!(
        app.attempts_at(&always).len(),
        2,
        "tried once more, not again"
    );
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "push_unauthorized");
    assert_eq!(dead[0].subscription.as_deref(), Some(always.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_push_carries_the_ttl_left_and_none_is_sent_once_it_is_over() {
    let app = TestApp::start_with(|s| s.retry.max_deliveries = 100).await;
    let slow = app.register_device("u-slow").await;
    let stuck = app.register_device("u-stuck").await;
    app.sink
        .add_faults(&slow, vec![Fault::retry_after(503, "2")]);
    app.sink.add_faults(&stuck, vec![Fault::status(503); 200]);
    app.run_roles();
    app.publish(
        json!({"topic": "t.a", "user": "u-slow", "ttl": 30, "notification": {"title": "x"}}),
    )
    .await;
    let short = app
        .publish(
            json!({"topic": "t.a", "user": "u-stuck", "ttl": 1, "notification": {"title": "y"}}),
        )
        .await;
    eventually("the retried push arrived", Duration::from_secs(10), || {
        app.delivered_to(&slow).len() == 1
    })
    .await;
    let attempts = app.attempts_at(&slow);
    let ttl = |a: &herald::operate::sink::Arrival| {
        a.headers
            .ttl
            .as_deref()
            .and_then(|t| t.parse::<u32>().ok())
            .expect("a TTL header")
    };
    assert_eq!(ttl(&attempts[0]), 30);
    assert!(
        ttl(&attempts[1]) <= 28,
        "the retry 2 s later carries what is left: {}",
        ttl(&attempts[1])
    );
    eventually(
        "once its TTL is over the stuck event is settled as expired",
        Duration::from_secs(10),
        || app.pending() == 0,
    )
    .await;
    assert!(
        app.dead_letters().await.is_empty(),
        "expired is not a dead letter"
    );
    let state: Option<String> = redis::cmd("HGET")
        .arg(app.db.keys.outcomes(0, &short))
        .arg(&stuck)
        .query(&mut app.redis.conn())
        .expect("HGET");
    assert_eq!(state.as_deref(), Some("expired"));
    let metrics = herald::shared::metrics::render();
    assert!(
        metrics.contains("herald_pushes_total{outcome=\"expired\""),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_end_at_retry_max_age_with_the_last_status_and_no_second_push() {
    let app = TestApp::start_with(|s| {
        s.retry.max_age = Duration::from_secs(2);
        s.retry.max_deliveries = 1000;
    })
    .await;
    let fine = app.register_device("u-1").await;
    let throttled = app.register_device("u-1").await;
    app.sink
        .add_faults(&throttled, vec![Fault::retry_after(429, "1"); 200]);
    app.run_roles();
    app.publish_to("u-1", "x").await;
    eventually(
        "the first push was throttled",
        Duration::from_secs(5),
        || !app.attempts_at(&throttled).is_empty(),
    )
    .await;
    eventually(
        "the entry ends at retry.max_age",
        Duration::from_secs(15),
        || app.pending() == 0,
    )
    .await;
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, "retry_expired");
    assert_eq!(dead[0].fields["dlq.last_status"], "429");
    assert_eq!(dead[0].subscription.as_deref(), Some(throttled.as_str()));
    assert!(
        app.attempts_at(&throttled).len() >= 2,
        "it was retried meanwhile"
    );
    assert_eq!(
        app.delivered_to(&fine).len(),
        1,
        "the device that had it was never pushed again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_sent_nothing_never_freezes_the_count_of_later_ones() {
    let app = TestApp::start().await;
    let device = app.register_device("u-1").await;
    let mut faults = vec![Fault::retry_after(429, "2")];
    faults.extend(vec![Fault::status(503); 50]);
    app.sink.add_faults(&device, faults);
    app.run_roles();
    app.publish_to("u-1", "first").await;
    eventually("the device said 429", Duration::from_secs(5), || {
        !app.attempts_at(&device).is_empty()
    })
    .await;
    // Sent to nobody while the device waits out its Retry-After: an attempt that does not count.
    app.publish_to("u-1", "second").await;
    eventually(
        "both events are dead-lettered after their attempts, the waiting one too",
        Duration::from_secs(30),
        || app.pending() == 0,
    )
    .await;
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().all(|d| d.reason == "max_deliveries"));
    assert_eq!(
        app.attempts_at(&device).len(),
        6,
        "three real attempts each (retry.max_deliveries), none for the wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hostile_device_among_two_hundred_healthy_ones_on_the_same_service() {
    const HEALTHY: usize = 200;
    let app = TestApp::start_with(|s| {
        s.push.request_timeout = Duration::from_secs(3);
        s.push.max_retry_after = Duration::from_secs(60);
        s.retry.max_deliveries = 4;
    })
    .await;
    // Every device wants the topic; one of them is behind a hostile push service answer.
    let mut devices = Vec::new();
    for n in 0..=HEALTHY {
        let (_, subscription) = app.sink.new_subscription();
        let (status, body) = app
            .post(
                "/v1/subscriptions",
                &json!({"user": format!("u-{n}"), "subscription": subscription, "topics": ["lot.#"]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        devices.push(body["id"].as_str().expect("id").to_string());
    }
    let hostile = devices.pop().expect("one more than the healthy ones");
    let healthy = devices;
    let mut hostile_answers = Vec::new();
    for _ in 0..5 {
        hostile_answers.extend([
            Fault::retry_after(429, "18446744073709551615"),
            Fault::misbehaving(500, Misbehaviour::EndlessBody),
            Fault::misbehaving(504, Misbehaviour::Hang),
            Fault::misbehaving(502, Misbehaviour::Reset),
            Fault::misbehaving(503, Misbehaviour::Trickle),
            Fault::retry_after(503, "Thu, 01 Jan 2099 00:00:00 GMT"),
            Fault::retry_after(429, "-1"),
        ]);
    }
    app.sink.add_faults(&hostile, hostile_answers);

    let env = [
        ("HERALD_PUSH__MAX_RETRY_AFTER", "60s"),
        ("HERALD_RETRY__MAX_DELIVERIES", "4"),
    ];
    let mut worker = spawn_role_with(&app, &["worker"], "w", &env);
    let _reclaimer = spawn_role_with(&app, &["reclaimer"], "reclaimer-host", &env);
    wait_started(&app, "w").await;
    let mut events = Vec::new();
    for n in 0..5 {
        events.push(
            app.publish(
                json!({"topic": "lot.7.closing", "notification": {"title": format!("notice {n}")}}),
            )
            .await,
        );
    }
    eventually(
        "every healthy device has every event, promptly",
        Duration::from_secs(30),
        || app.sink.delivered().len() >= HEALTHY * events.len(),
    )
    .await;
    for device in &healthy {
        let mut got = app.delivered_to(device);
        got.sort();
        let mut want = events.clone();
        want.sort();
        assert_eq!(got, want, "device {device}: every event exactly once");
    }
    assert!(
        worker.try_wait().expect("wait").is_none(),
        "the worker is still up; its logs:\n{}",
        helpers::logs(&app, "w")
    );
    let peak = peak_memory(worker.id());
    eprintln!("worker peak memory: {} MiB", peak >> 20);
    assert!(peak < 256 << 20, "peak memory {} MiB", peak >> 20);
    eventually(
        "the hostile device's share ends (dead-lettered), the rest was acknowledged",
        Duration::from_secs(60),
        || app.pending() == 0,
    )
    .await;
    let dead = app.dead_letters().await;
    assert!(
        dead.iter()
            .all(|d| d.subscription.as_deref() == Some(hostile.as_str())),
        "only the hostile device's pushes died: {dead:?}"
    );
    assert_eq!(
        app.sink.delivered().len(),
        HEALTHY * events.len(),
        "no healthy device was pushed twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_push_service_leaves_the_other_services_their_slots() {
    let app = TestApp::start_with(|s| {
        s.worker.concurrency = 4;
        s.push.service_share = 0.5;
        // Pushes wait long for the hanging service's slots, and its requests time out late.
        s.push.connect_timeout = Duration::from_secs(10);
        s.push.request_timeout = Duration::from_secs(6);
    })
    .await;
    // Another push service, on another origin, that answers well.
    let other = herald::operate::sink::Sink::bind(herald::operate::sink::SinkOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        fast: false,
        record: None,
        tls: false,
    })
    .await
    .expect("a second push service");
    let healthy = other.handle();
    tokio::spawn(other.run(app.shutdown.clone()));
    let mut hanging_devices = Vec::new();
    for n in 0..6 {
        let id = app.register_device(&format!("u-hang-{n}")).await;
        app.sink
            .add_faults(&id, vec![Fault::misbehaving(504, Misbehaviour::Hang)]);
        hanging_devices.push(id);
    }
    let mut healthy_devices = Vec::new();
    for n in 0..3 {
        let (id, subscription) = healthy.new_subscription();
        let (status, body) = app
            .post(
                "/v1/subscriptions",
                &json!({"user": format!("u-ok-{n}"), "subscription": subscription}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        healthy_devices.push(id);
    }
    app.run_roles();
    for n in 0..6 {
        app.publish_to(&format!("u-hang-{n}"), "into the void")
            .await;
    }
    eventually(
        "the hanging service holds its share",
        Duration::from_secs(5),
        || app.sink.arrivals().len() == 2,
    )
    .await;
    let hung_at = chrono::Utc::now();
    for n in 0..3 {
        app.publish_to(&format!("u-ok-{n}"), "fine").await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while healthy.delivered().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the healthy service gets its pushes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = healthy
        .delivered()
        .iter()
        .map(|a| a.at.clone())
        .max()
        .expect("arrivals");
    let waited = chrono::DateTime::parse_from_rfc3339(&last)
        .expect("time")
        .with_timezone(&chrono::Utc)
        - hung_at;
    assert!(
        waited < chrono::Duration::seconds(3),
        "the healthy service's pushes flowed while the other hung (the hung requests time out after 6 s; they waited {waited})"
    );
    assert_eq!(
        app.sink.arrivals().len(),
        2,
        "the hanging service still holds only its share"
    );
}
