//! The fault-injection suite: real worker and reclaimer processes, a real
//! redis-server with AOF, loopback only, bounded in time. Each test keeps a
//! ledger (every id the API answered 202 for, every arrival the sink recorded)
//! and checks: lost = accepted − (delivered ∪ dead-lettered ∪ superseded) is
//! empty; duplicates are 0 where nothing was killed, and never more than the
//! number of kills.

mod helpers;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use helpers::{
    ago, eventually, kill9, spawn_role, spawn_role_with, terminate, wait_started, Proc, TestApp,
};
use serde_json::json;

/// What the producer side was told and what the devices saw.
#[derive(Default)]
struct Ledger {
    accepted: Vec<String>,
    server_errors: usize,
}

impl Ledger {
    async fn publish(&mut self, app: &TestApp, n: usize) {
        let (status, body) = app
            .post(
                "/v1/events",
                &json!({"id": format!("evt-{n}"), "topic": "parking.lot-7.entry", "user": "u-1", "notification": {"title": format!("event {n}")}}),
            )
            .await;
        match status {
            202 => self
                .accepted
                .push(body["events"][0]["id"].as_str().expect("id").to_string()),
            500..=599 => self.server_errors += 1,
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
}

/// Deliveries per event id, from the sink.
fn deliveries(app: &TestApp) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for a in app.sink.delivered() {
        if let Some(id) = a.event_id {
            *seen.entry(id).or_default() += 1;
        }
    }
    seen
}

/// Waits until every accepted event is delivered or dead-lettered, then checks the ledger.
async fn settle_and_check(
    app: &TestApp,
    ledger: &Ledger,
    max_duplicates: usize,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let missing = loop {
        let delivered = deliveries(app);
        let dead: HashSet<String> = app
            .dead_letters()
            .await
            .into_iter()
            .filter_map(|d| d.event_id)
            .collect();
        let missing: Vec<&String> = ledger
            .accepted
            .iter()
            .filter(|id| !delivered.contains_key(*id) && !dead.contains(*id))
            .collect();
        if missing.is_empty() {
            break missing.len();
        }
        if Instant::now() > deadline {
            panic!(
                "lost {} of {} accepted events: {:?}",
                missing.len(),
                ledger.accepted.len(),
                &missing[..missing.len().min(10)]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(missing, 0);
    let duplicates: usize = deliveries(app).values().map(|n| n - 1).sum();
    // The measured size of the one window left (README, Guarantees), shown in the test output.
    eprintln!(
        "ledger: {} accepted, all delivered or dead-lettered; {duplicates} duplicate push(es), {max_duplicates} allowed",
        ledger.accepted.len()
    );
    assert!(
        duplicates <= max_duplicates,
        "{duplicates} duplicate pushes, at most {max_duplicates} allowed"
    );
}

/// SIGTERM once the process is up; it must exit 0.
async fn stop(app: &TestApp, name: &str, child: &mut Proc) {
    wait_started(app, name).await;
    let status = terminate(child, Duration::from_secs(20));
    assert!(
        status.success(),
        "{name}: {status}; logs:\n{}",
        helpers::logs(app, name)
    );
}

fn worker(app: &TestApp, name: &str) -> Proc {
    spawn_role(app, &["worker"], name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_worker_five_times_under_load_loses_nothing() {
    let app = TestApp::start_durable().await;
    app.register_device("u-1").await;
    let mut reclaimer = spawn_role(&app, &["reclaimer"], "reclaimer-host");
    let mut ledger = Ledger::default();
    let mut current = worker(&app, "w");
    let mut kills = 0;
    let started = Instant::now();
    let mut next_kill = Instant::now() + Duration::from_millis(600);
    let mut n = 0;
    while kills < 5 {
        ledger.publish(&app, n).await;
        n += 1;
        if Instant::now() >= next_kill {
            kill9(&mut current);
            kills += 1;
            current = worker(&app, "w");
            next_kill = Instant::now() + Duration::from_millis(600);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    settle_and_check(&app, &ledger, kills, Duration::from_secs(60)).await;
    assert_eq!(ledger.server_errors, 0);
    // A device a killed worker was pushing stays claimed until its claim lapses
    // (2 × push.connect_timeout + push.request_timeout + a lease): then its entry settles.
    eventually("nothing pending", Duration::from_secs(60), || {
        app.pending() == 0
    })
    .await;
    stop(&app, "w", &mut current).await;
    stop(&app, "reclaimer-host", &mut reclaimer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_under_load_loses_no_accepted_event() {
    let mut app = TestApp::start_durable().await;
    app.register_device("u-1").await;
    let mut w = worker(&app, "w");
    let mut reclaimer = spawn_role(&app, &["reclaimer"], "reclaimer-host");
    let mut ledger = Ledger::default();
    for n in 0..100 {
        ledger.publish(&app, n).await;
        if n == 50 {
            // SIGKILL: no chance to flush; AOF everysec, the OS keeps what was written.
            app.redis.kill();
        }
        if n == 70 {
            app.redis.restart();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        ledger.server_errors, 0,
        "the spool took the events while Redis was down"
    );
    settle_and_check(&app, &ledger, 1, Duration::from_secs(60)).await;
    stop(&app, "w", &mut w).await;
    stop(&app, "reclaimer-host", &mut reclaimer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_for_ten_seconds_while_the_api_keeps_accepting() {
    let mut app = TestApp::start_durable().await;
    app.register_device("u-1").await;
    let mut w = worker(&app, "w");
    let mut reclaimer = spawn_role(&app, &["reclaimer"], "reclaimer-host");
    let mut ledger = Ledger::default();
    for n in 0..20 {
        ledger.publish(&app, n).await;
    }
    // Stopped between pushes: a push whose marker write dies with Redis is the one
    // window for a duplicate (README, Guarantees), and this test is about the spool.
    settle_and_check(&app, &ledger, 0, Duration::from_secs(30)).await;
    eventually("nothing pending", Duration::from_secs(10), || {
        app.pending() == 0
    })
    .await;
    app.redis.kill();
    let down = Instant::now();
    let mut n = 20;
    while down.elapsed() < Duration::from_secs(10) {
        ledger.publish(&app, n).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.redis.restart();
    for m in 0..20 {
        ledger.publish(&app, n + m).await;
    }
    assert_eq!(
        ledger.server_errors, 0,
        "never a 5xx while the spool had room"
    );
    settle_and_check(&app, &ledger, 0, Duration::from_secs(60)).await;
    stop(&app, "w", &mut w).await;
    stop(&app, "reclaimer-host", &mut reclaimer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_past_the_reclaim_idle_time_does_not_push_twice() {
    let app = TestApp::start_durable().await;
    app.register_device("u-1").await;
    let mut w = worker(&app, "sleepy");
    wait_started(&app, "sleepy").await;
    // Freeze it inside its blocking read: the entry published now is handed to
    // it by Redis while it cannot run.
    eventually(
        "the worker to block in XREADGROUP",
        Duration::from_secs(10),
        || {
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query(&mut app.redis.conn())
                .expect("CLIENT LIST");
            clients
                .lines()
                .any(|l| l.contains("cmd=xreadgroup") && l.contains("flags=b"))
        },
    )
    .await;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(w.id() as i32, libc::SIGSTOP) };
    let mut ledger = Ledger::default();
    ledger.publish(&app, 0).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.pending() != 1 {
        assert!(
            Instant::now() < deadline,
            "the frozen worker did not take the entry; its logs:\n{}",
            helpers::logs(&app, "sleepy")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut reclaimer = spawn_role(&app, &["reclaimer"], "rescuer");
    settle_and_check(&app, &ledger, 0, Duration::from_secs(30)).await;
    unsafe { libc::kill(w.id() as i32, libc::SIGCONT) };
    // The resumed worker finds its entry taken over and pushes nothing; it goes on working.
    ledger.publish(&app, 1).await;
    settle_and_check(&app, &ledger, 0, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let duplicates: usize = deliveries(&app).values().map(|n| n - 1).sum();
    assert_eq!(duplicates, 0, "no device pushed twice");
    stop(&app, "sleepy", &mut w).await;
    stop(&app, "rescuer", &mut reclaimer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_half_way_through_a_fan_out_pushes_no_device_twice() {
    let app = TestApp::start_durable().await;
    let first = app.register_device("u-1").await;
    let second = app.register_device("u-1").await;
    // The first push is answered late; the worker pushes one device at a time, so
    // the second waits, claimed, while the first is in flight.
    app.sink.add_faults(
        "*",
        vec![herald::operate::sink::Fault::status(201).delayed(2_500)],
    );
    let mut w = spawn_role_with(
        &app,
        &["worker"],
        "frozen",
        &[("HERALD_WORKER__CONCURRENCY", "1")],
    );
    wait_started(&app, "frozen").await;
    let mut reclaimer = spawn_role(&app, &["reclaimer"], "rescuer");
    wait_started(&app, "rescuer").await;
    let event = app.publish_to("u-1", "x").await;
    let key = app.db.keys.outcomes(0, &event);
    eventually(
        "the worker claimed both devices",
        Duration::from_secs(5),
        || {
            let states: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(&key)
                .query(&mut app.redis.conn())
                .expect("HGETALL");
            states.len() == 2 && states.values().all(|v| v.starts_with("pushing frozen"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Frozen far longer than a lease (1 s): the reclaimer takes the entry over meanwhile.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(w.id() as i32, libc::SIGSTOP) };
    tokio::time::sleep(Duration::from_secs(3)).await;
    unsafe { libc::kill(w.id() as i32, libc::SIGCONT) };
    eventually("both devices have it", Duration::from_secs(30), || {
        app.delivered_to(&first).len() + app.attempts_at(&second).len() >= 2 && app.pending() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        (
            app.attempts_at(&first).len(),
            app.attempts_at(&second).len()
        ),
        (1, 1),
        "each device pushed once; the frozen worker's logs:\n{}",
        helpers::logs(&app, "frozen")
    );
    stop(&app, "frozen", &mut w).await;
    stop(&app, "rescuer", &mut reclaimer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_published_ten_times_at_once_is_one_entry_and_one_push() {
    let app = TestApp::start().await;
    app.register_device("u-1").await;
    app.register_device("u-1").await;
    let event = json!({"id": "evt-once", "topic": "parking.lot-7.entry", "user": "u-1", "notification": {"title": "once"}});
    let answers = futures::future::join_all((0..10).map(|_| app.post("/v1/events", &event))).await;
    let stream_ids: HashSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 202, "{body}");
            body["events"][0]["stream_id"]
                .as_str()
                .expect("stream id")
                .to_string()
        })
        .collect();
    assert_eq!(stream_ids.len(), 1, "every publish names the same entry");
    assert_eq!(app.stream_len(), 1);
    let mut other = event.clone();
    other["notification"]["title"] = json!("twice?");
    assert_eq!(app.post("/v1/events", &other).await.0, 409);
    let mut w = worker(&app, "w");
    eventually("two pushes", Duration::from_secs(10), || {
        app.sink.delivered().len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.sink.delivered().len(), 2, "one push per device");
    stop(&app, "w", &mut w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_updates_across_two_workers_end_with_the_newest() {
    let app = TestApp::start().await;
    app.register_device("u-1").await;
    let mut a = worker(&app, "a");
    let mut b = worker(&app, "b");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Updates of one vehicle, published newest first.
    for n in 0..5 {
        let t = ago(1_000 + 2_000 * n as i64);
        let (status, body) = app
            .post(
                "/v1/events",
                &json!({"id": format!("upd-{n}"), "topic": "parking.lot-7.exit", "user": "u-1", "key": "12가3456",
                        "publish_at": t, "notification": {"title": format!("update {n}")}}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    eventually("every entry settled", Duration::from_secs(10), || {
        app.pending() == 0 && !app.sink.delivered().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = app.sink.delivered();
    let last = delivered.last().expect("at least the newest");
    assert_eq!(
        last.event_id.as_deref(),
        Some("upd-0"),
        "the newest is pushed last"
    );
    // Older ones processed after it were superseded, not pushed.
    let ids: HashSet<String> = delivered
        .iter()
        .filter_map(|a| a.event_id.clone())
        .collect();
    assert_eq!(ids.len(), delivered.len(), "no duplicates");
    stop(&app, "a", &mut a).await;
    stop(&app, "b", &mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_leaves_nothing_pending_and_pushes_nothing_twice() {
    let app = TestApp::start().await;
    app.register_device("u-1").await;
    app.sink.set_delay(Duration::from_millis(200));
    let mut ledger = Ledger::default();
    for n in 0..100 {
        ledger.publish(&app, n).await;
    }
    let mut w = worker(&app, "w");
    eventually("pushes in flight", Duration::from_secs(10), || {
        !app.sink.arrivals().is_empty() || app.pending() > 0
    })
    .await;
    assert!(
        terminate(&mut w, Duration::from_secs(20)).success(),
        "exit 0 after finishing in-flight pushes"
    );
    assert_eq!(
        app.pending(),
        0,
        "a clean stop leaves nothing pending; worker logs:\n{}",
        helpers::logs(&app, "w")
    );
    app.sink.set_delay(Duration::ZERO);
    let mut next = worker(&app, "w2");
    settle_and_check(&app, &ledger, 0, Duration::from_secs(30)).await;
    stop(&app, "w2", &mut next).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_connection_that_stops_answering_is_replaced() {
    let app = TestApp::start_with(|s| {
        s.redis.connections = 1;
        s.redis.command_timeout = Duration::from_secs(1);
    })
    .await;
    // The one shared connection stops answering for longer than a command may
    // take (a BLPOP: Redis reads nothing more from a blocked client), as a
    // connection to a server behind a dead route would.
    let stuck: redis::RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
        .arg("herald-test:nothing")
        .arg(4)
        .query_async(&mut app.db.conn())
        .await;
    let error = stuck.expect_err("the BLPOP outlasts redis.command_timeout");
    assert!(error.is_timeout(), "{error}");
    // The old connection stays blocked for three more seconds, more than a
    // command's timeout: this command is answered only because it went out on
    // a new connection.
    let pong: String = redis::cmd("PING")
        .query_async(&mut app.db.conn())
        .await
        .expect("the next command goes out on a fresh connection");
    assert_eq!(pong, "PONG");
    app.publish_to("u-1", "still flowing").await;
}

/// An app whose push hook, once `armed` is set, runs `action` with a
/// connection to the app's own Redis at the next push (once).
async fn app_with_one_shot_hook(
    action: impl Fn(redis::Connection) + Send + Sync + 'static,
) -> (TestApp, Arc<std::sync::atomic::AtomicBool>) {
    let url: Arc<std::sync::OnceLock<String>> = Arc::default();
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (hook_url, hook_armed) = (url.clone(), armed.clone());
    let app = TestApp::start_hooked(
        |_| {},
        Arc::new(move |_device| {
            if !hook_armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let url = hook_url.get().expect("the url is set before the push");
            let conn = redis::Client::open(url.as_str())
                .expect("url")
                .get_connection()
                .expect("connect");
            action(conn);
        }),
    )
    .await;
    url.set(app.redis.url()).expect("set once");
    (app, armed)
}

/// Redis refusing writes (out of memory under `noeviction`) between a push and
/// the end of its entry: the script that writes the device's state with the
/// acknowledgement is refused, and is not waited out as if Redis were away;
/// a plain `XACK` (allowed when out of memory) still ends the entry, so it is
/// not pushed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_pushed_while_redis_refuses_writes_is_still_acknowledged() {
    let (app, armed) = app_with_one_shot_hook(|mut conn| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(1)
            .query(&mut conn)
            .expect("maxmemory");
    })
    .await;
    let device = app.register_device("u-1").await;
    app.publish_to("u-1", "while memory runs out").await;
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let _worker = app.run_worker();
    eventually("the push arrives", Duration::from_secs(10), || {
        app.delivered_to(&device).len() == 1
    })
    .await;
    // Well within the 30 s a state write waits out an unreachable Redis.
    eventually(
        "acknowledged although its state could not be written",
        Duration::from_secs(10),
        || app.pending() == 0,
    )
    .await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query(&mut app.redis.conn())
        .expect("maxmemory back");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.delivered_to(&device).len(), 1, "pushed once");
}

/// A failover right after a push: the primary turns read-only (as a demoted
/// one does) the moment the push goes out, and takes writes again 2 s later
/// (as the new primary the worker's connection reaches). The device's state
/// and the acknowledgement wait it out, as for a Redis that is away, instead
/// of being lost: once the device's claim is past, a retry finds the device
/// delivered and pushes nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_read_only_for_two_seconds_after_a_push_pushes_nothing_twice() {
    let (app, armed) = app_with_one_shot_hook(|mut conn| {
        // A replica of nothing (port 1): writes refused with READONLY, data kept.
        let _: () = redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(1)
            .query(&mut conn)
            .expect("REPLICAOF");
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            let _: () = redis::cmd("REPLICAOF")
                .arg("NO")
                .arg("ONE")
                .query(&mut conn)
                .expect("REPLICAOF NO ONE");
        });
    })
    .await;
    let device = app.register_device("u-1").await;
    app.publish_to("u-1", "during a failover").await;
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let _worker = app.run_worker();
    eventually("the push", Duration::from_secs(10), || {
        app.delivered_to(&device).len() == 1
    })
    .await;
    eventually("the acknowledgement", Duration::from_secs(15), || {
        app.pending() == 0
    })
    .await;
    let state: Option<String> = redis::cmd("HGET")
        .arg(
            app.db.keys.outcomes(
                0,
                &app.sink.delivered()[0]
                    .event_id
                    .clone()
                    .expect("an event id"),
            ),
        )
        .arg(&device)
        .query(&mut app.redis.conn())
        .expect("HGET");
    assert_eq!(
        state.as_deref(),
        Some("delivered"),
        "the state waited the failover out"
    );
    assert_eq!(app.delivered_to(&device).len(), 1, "pushed once");
}
