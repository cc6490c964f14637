//! Least privilege: every role runs under the Redis user that
//! `deploy/redis/acl.conf` (quoted in README, "Redis ACLs per role") makes for
//! it, through its real running loops, end to end; and under each user
//! `FLUSHALL`, `CONFIG SET` and keys outside the prefix are refused. Redis's
//! `ACL LOG` then shows that nothing else was refused: a command a role needs
//! and the file lacks fails this test, naming it.

mod helpers;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use helpers::{base_settings, herald_bin, TestRedis};
use herald::deliver::push::vapid::VapidKey;
use herald::operate::roles;
use herald::operate::sink::{Fault, Sink, SinkOptions};
use herald::shared::config::{Secret, Settings};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The file README points to, read as an operator's `envsubst` would.
const ACL_FILE: &str = include_str!("../deploy/redis/acl.conf");

/// The roles, their users and the variable holding each one's password.
const USERS: [(&str, &str); 4] = [
    ("herald-api", "API_PASSWORD"),
    ("herald-worker", "WORKER_PASSWORD"),
    ("herald-reclaimer", "RECLAIMER_PASSWORD"),
    ("herald-admin", "ADMIN_PASSWORD"),
];

/// The commands of the ACL file with `${NAME}` replaced from `vars`; comments
/// and blank lines skipped, as `grep -v -e '^#' -e '^$'` does.
fn acl_commands(vars: &HashMap<&str, String>) -> Vec<Vec<String>> {
    ACL_FILE
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut line = line.to_string();
            for (name, value) in vars {
                line = line.replace(&format!("${{{name}}}"), value);
            }
            assert!(
                !line.contains("${"),
                "deploy/redis/acl.conf uses a variable the test does not set: {line}"
            );
            line.split_whitespace().map(str::to_string).collect()
        })
        .collect()
}

/// One entry of `ACL LOG`: who was refused what, and where (`toplevel`, `lua`, `multi`).
#[derive(Debug)]
struct Refusal {
    username: String,
    reason: String,
    object: String,
    context: String,
}

fn acl_log(redis: &TestRedis) -> Vec<Refusal> {
    // Every entry: without a count, ACL LOG answers the newest 10 only.
    let entries: Vec<HashMap<String, redis::Value>> = redis::cmd("ACL")
        .arg("LOG")
        .arg(10_000)
        .query(&mut redis.conn())
        .expect("ACL LOG");
    let text = |entry: &HashMap<String, redis::Value>, field: &str| {
        entry
            .get(field)
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            .unwrap_or_default()
    };
    entries
        .iter()
        .map(|e| Refusal {
            username: text(e, "username"),
            reason: text(e, "reason"),
            object: text(e, "object"),
            context: text(e, "context"),
        })
        .collect()
}

/// Refusals other than the test's own: what `deploy/redis/acl.conf` lacks.
fn unexpected_refusals(redis: &TestRedis, prefix: &str) -> Vec<String> {
    let deliberate = |r: &Refusal| {
        matches!(r.object.as_str(), "flushall" | "config|set")
            // Each role's durability check, and the test's CONFIG GET requirepass.
            || r.object == "config|get"
            || r.object.starts_with("other:")
            || r.object.starts_with(&format!("{{{prefix}x:"))
            // The roles that do not publish go on without loading the library.
            || (matches!(r.username.as_str(), "herald-worker" | "herald-reclaimer")
                && r.object == "function|load")
            // redis-rs's on Redis 7.2 or later, its answer ignored (acl.conf says why).
            || r.object == "client|setinfo"
    };
    acl_log(redis)
        .into_iter()
        .filter(|r| !deliberate(r))
        .map(|r| {
            format!(
                "{} refused {} {} ({})",
                r.username, r.reason, r.object, r.context
            )
        })
        .collect()
}

/// Polls `condition` for up to 15 s; a timeout names what was awaited and
/// what Redis refused meanwhile (a role stuck on a missing grant).
async fn wait_for(
    redis: &TestRedis,
    prefix: &str,
    what: &str,
    mut condition: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "timed out after 15s waiting for: {what}; Redis refused meanwhile: {:?}",
        unexpected_refusals(redis, prefix)
    );
}

/// A role's settings: the shared prefix and data directory, its own user.
fn role_settings(
    redis: &TestRedis,
    base: &Settings,
    user: &str,
    password: &str,
    consumer: &str,
) -> Settings {
    let mut s = base.clone();
    s.redis.url = Secret::new(format!(
        "redis://{user}:{password}@127.0.0.1:{}",
        redis.port
    ));
    s.worker.consumer = consumer.to_string();
    s
}

/// `herald <args>` as an operator runs it under the admin user; (success, stdout, stderr).
fn cli(settings: &Settings, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(herald_bin())
        .args(args)
        .current_dir(&settings.data_dir)
        .env_remove("REDIS_URL")
        .env("HERALD_REDIS__URL", settings.redis.url.expose())
        .env("HERALD_REDIS__KEY_PREFIX", &settings.redis.key_prefix)
        .output()
        .expect("run herald");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_works_under_its_acl_user_and_is_refused_anything_else() {
    let redis = TestRedis::start_durable();
    let data = tempfile::tempdir().expect("temp dir");
    let mut base = base_settings(data.path());
    // No role may CONFIG GET (it reads requirepass): the durability check warns.
    base.redis.require_durable = false;
    base.admin.listen = "127.0.0.1:0".into();
    // Every loop of the reclaimer runs within the test: delayed events,
    // retention of streams and dead letters, removal of idle consumers.
    base.reclaimer.schedule_interval = Duration::from_millis(100);
    base.reclaimer.consumer_idle_timeout = Duration::from_millis(500);
    base.retention.interval = Duration::from_millis(200);
    base.retention.max_len = 5;
    base.retention.dead_letter_max_len = 5;
    base.admin.sample_interval = Duration::from_millis(200);
    let port = herald::operate::embedded_redis::free_port().expect("a free port");
    base.api.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    let prefix = base.redis.key_prefix.clone();

    let mut vars: HashMap<&str, String> = HashMap::new();
    vars.insert("PREFIX", prefix.clone());
    for (user, var) in USERS {
        vars.insert(var, format!("{user}-{}", uuid::Uuid::new_v4().simple()));
    }
    let mut admin_conn = redis.conn();
    // Room for every refusal (identical ones share an entry), 128 by default.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("acllog-max-len")
        .arg(10_000)
        .query(&mut admin_conn)
        .expect("CONFIG SET acllog-max-len");
    for command in acl_commands(&vars) {
        let mut cmd = redis::cmd(&command[0]);
        for arg in &command[1..] {
            cmd.arg(arg);
        }
        let _: () = cmd
            .query(&mut admin_conn)
            .unwrap_or_else(|e| panic!("deploy/redis/acl.conf: {e}: {command:?}"));
    }
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query(&mut admin_conn)
        .expect("ACL USERS");
    for (user, _) in USERS {
        assert!(users.contains(&user.to_string()), "{user} in {users:?}");
    }
    let settings_of = |user: &str, consumer: &str| {
        let var = USERS
            .iter()
            .find(|(u, _)| *u == user)
            .expect("a known user")
            .1;
        role_settings(&redis, &base, user, &vars[var], consumer)
    };
    let api = settings_of("herald-api", "api");
    let worker = settings_of("herald-worker", "acl-worker");
    let reclaimer = settings_of("herald-reclaimer", "acl-reclaimer");
    let admin = settings_of("herald-admin", "admin");

    // Every role reads one VAPID key; made once, as `herald vapid generate` would.
    VapidKey::load_or_create(&base.vapid_key_path(), true).expect("a VAPID key");
    let shutdown = CancellationToken::new();
    let sink = Sink::bind(SinkOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        fast: false,
        record: None,
        tls: false,
    })
    .await
    .expect("bind the sink");
    let sink_handle = sink.handle();
    tokio::spawn(sink.run(shutdown.clone()));

    // The worker first: its user may not load the function library, and it
    // goes on without it (it does not publish).
    let worker_role = tokio::spawn(roles::worker(worker.clone(), shutdown.clone()));
    wait_for(
        &redis,
        &prefix,
        "the worker to be refused FUNCTION LOAD",
        || {
            acl_log(&redis)
                .iter()
                .any(|r| r.username == "herald-worker" && r.object == "function|load")
        },
    )
    .await;
    // A consumer that left: the reclaimer's first clean-up removes it.
    let stream = format!("{{{prefix}:p0}}:events");
    wait_for(&redis, &prefix, "the worker to create its group", || {
        redis::cmd("XGROUP")
            .arg("CREATECONSUMER")
            .arg(&stream)
            .arg(&base.worker.group)
            .arg("departed")
            .query::<i64>(&mut redis.conn())
            .is_ok()
    })
    .await;
    tokio::time::sleep(base.reclaimer.consumer_idle_timeout + Duration::from_millis(100)).await;
    let api_role = tokio::spawn(roles::api(api.clone(), shutdown.clone()));
    let reclaimer_role = tokio::spawn(roles::reclaimer(reclaimer.clone(), shutdown.clone()));
    let http = reqwest::Client::new();
    let api_url = format!("http://{}", api.api.listen);
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(response) = http.get(format!("{api_url}/readyz")).send().await {
            if response.status().is_success() {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the API under herald-api did not become ready");
    let post = |path: &str, body: Value| {
        let request = http.post(format!("{api_url}{path}")).json(&body);
        async move {
            let response = request.send().await.expect("the API answers");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            (status, body)
        }
    };
    let (device, subscription) = sink_handle.new_subscription();
    let (status, body) = post(
        "/v1/subscriptions",
        json!({"user": "u-1", "subscription": subscription}),
    )
    .await;
    assert_eq!(status, 201, "registration under herald-api: {body}");
    let publish = |title: &'static str| async move {
        let (status, body) = post(
                "/v1/events",
                json!({"topic": "parking.lot-7.entry", "user": "u-1", "notification": {"title": title}}),
            )
            .await;
        assert_eq!(status, 202, "publish under herald-api: {body}");
        body["events"][0]["id"].as_str().expect("an id").to_string()
    };
    let delivered = |id: &str| {
        sink_handle
            .delivered()
            .iter()
            .any(|a| a.subscription == device && a.event_id.as_deref() == Some(id))
    };

    // The worker delivers.
    let first = publish("first").await;
    wait_for(
        &redis,
        &prefix,
        "the worker to deliver under herald-worker",
        || delivered(&first),
    )
    .await;

    // A failed push is retried by the reclaimer.
    sink_handle.add_faults(&device, vec![Fault::status(503)]);
    let retried = publish("retried").await;
    wait_for(
        &redis,
        &prefix,
        "the reclaimer to retry a failed push under herald-reclaimer",
        || delivered(&retried),
    )
    .await;

    // One that keeps failing is dead-lettered after retry.max_deliveries.
    sink_handle.add_faults(&device, vec![Fault::status(503); 3]);
    let poison = publish("poison").await;
    let dlq = format!("{{{prefix}:p0}}:dlq");
    wait_for(
        &redis,
        &prefix,
        "the reclaimer to dead-letter a push that keeps failing",
        || {
            redis::cmd("XLEN")
                .arg(&dlq)
                .query::<u64>(&mut redis.conn())
                .unwrap_or(0)
                == 1
        },
    )
    .await;

    // A delayed event is moved into the stream by the reclaimer when due.
    let (status, body) = post(
        "/v1/events",
        json!({"topic": "parking.lot-7.entry", "user": "u-1",
               "deliver_at": herald::shared::event::format_time(chrono::Utc::now() + chrono::Duration::milliseconds(500)),
               "notification": {"title": "later"}}),
    )
    .await;
    assert_eq!(status, 202, "a delayed publish under herald-api: {body}");
    let later = body["events"][0]["id"].as_str().expect("an id").to_string();
    wait_for(
        &redis,
        &prefix,
        "the reclaimer to move the due event into the stream",
        || delivered(&later),
    )
    .await;

    // A direct event for a user without a device is held by the worker, and
    // released by the API when the user registers one.
    let (status, body) = post(
        "/v1/events",
        json!({"topic": "parking.lot-7.entry", "user": "u-2", "notification": {"title": "held"}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let held = body["events"][0]["id"].as_str().expect("an id").to_string();
    let held_key = format!("{{{prefix}:p0}}:held:u-2");
    wait_for(
        &redis,
        &prefix,
        "the worker to hold the event for u-2",
        || {
            redis::cmd("EXISTS")
                .arg(&held_key)
                .query::<u64>(&mut redis.conn())
                .unwrap_or(0)
                == 1
        },
    )
    .await;
    let (second, subscription) = sink_handle.new_subscription();
    let (status, body) = post(
        "/v1/subscriptions",
        json!({"user": "u-2", "subscription": subscription}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    wait_for(
        &redis,
        &prefix,
        "the held event to reach u-2's new device",
        || {
            sink_handle
                .delivered()
                .iter()
                .any(|a| a.subscription == second && a.event_id.as_deref() == Some(held.as_str()))
        },
    )
    .await;

    // A device the push service says is gone is deleted by the worker.
    sink_handle.add_faults(&second, vec![Fault::status(410)]);
    let (status, body) = post(
        "/v1/events",
        json!({"topic": "parking.lot-7.entry", "user": "u-2", "notification": {"title": "gone"}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let listed = || async {
        let response = http
            .get(format!("{api_url}/v1/subscriptions?user=u-2"))
            .send()
            .await
            .expect("the API answers");
        assert_eq!(response.status().as_u16(), 200, "listing under herald-api");
        response.text().await.unwrap_or_default()
    };
    let mut gone = false;
    for _ in 0..300 {
        if !listed().await.contains(&second) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the worker deleted u-2's gone device");

    // The consumer that left before the reclaimer started is gone from the group.
    wait_for(
        &redis,
        &prefix,
        "the reclaimer to remove the idle consumer",
        || {
            let consumers: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&stream)
                .arg(&base.worker.group)
                .query(&mut redis.conn())
                .unwrap_or_default();
            !consumers.iter().any(|c| {
                c.get("name")
                    .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                    .as_deref()
                    == Some("departed")
            })
        },
    )
    .await;

    // The operator's commands, under herald-admin.
    let (ok, out, err) = cli(&admin, &["dlq", "list", "--json"]);
    assert!(ok, "herald dlq list under herald-admin: {err}");
    let listed: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{out}");
    let dead = listed[0]["id"]
        .as_str()
        .expect("a dead letter id")
        .to_string();
    let (ok, _, err) = cli(&admin, &["dlq", "show", &dead]);
    assert!(ok, "herald dlq show under herald-admin: {err}");
    let (ok, _, err) = cli(&admin, &["dlq", "replay", &dead]);
    assert!(ok, "herald dlq replay under herald-admin: {err}");
    wait_for(
        &redis,
        &prefix,
        "the replayed dead letter to be delivered",
        || delivered(&poison),
    )
    .await;
    let (ok, out, err) = cli(&admin, &["stats", "--json"]);
    assert!(ok, "herald stats under herald-admin: {err}");
    serde_json::from_str::<Value>(&out).expect("stats as JSON");
    let (ok, _, err) = cli(&admin, &["replay", "--from", "0", "--json"]);
    assert!(ok, "herald replay under herald-admin: {err}");
    // A permanent refusal is dead-lettered by the worker at once; the operator purges it.
    sink_handle.add_faults(&device, vec![Fault::status(400)]);
    publish("refused").await;
    let dlq_len = || {
        redis::cmd("XLEN")
            .arg(&dlq)
            .query::<u64>(&mut redis.conn())
            .unwrap_or(0)
    };
    wait_for(
        &redis,
        &prefix,
        "the worker to dead-letter a permanently refused push",
        || dlq_len() == 1,
    )
    .await;
    // The API's read-only views, with a dead letter to read (stats reads its reason).
    for path in ["/v1/stats", "/v1/admin/dead-letters"] {
        let response = http
            .get(format!("{api_url}{path}"))
            .send()
            .await
            .expect("the API answers");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(
            status, 200,
            "{path} with a dead letter under herald-api: {body}"
        );
        if path.ends_with("dead-letters") {
            assert!(body.contains("push_bad_request"), "{body}");
        }
    }
    let (ok, _, err) = cli(&admin, &["dlq", "purge", "--all", "--yes"]);
    assert!(ok, "herald dlq purge under herald-admin: {err}");
    assert_eq!(dlq_len(), 0, "purged");

    // The API deletes a subscription on request.
    let (third, subscription) = sink_handle.new_subscription();
    let (status, body) = post(
        "/v1/subscriptions",
        json!({"user": "u-3", "subscription": subscription}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let deleted = http
        .delete(format!("{api_url}/v1/subscriptions/{third}"))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(deleted.status().as_u16(), 204, "deleting under herald-api");
    // The API's read-only views: stats, and the dead letters (read-only keys).
    for path in ["/v1/stats", "/v1/admin/dead-letters"] {
        let response = http
            .get(format!("{api_url}{path}"))
            .send()
            .await
            .expect("the API answers");
        assert_eq!(response.status().as_u16(), 200, "{path} under herald-api");
    }
    // Retention has trimmed the stream to retention.max_len by now.
    wait_for(&redis, &prefix, "the reclaimer to trim the stream", || {
        redis::cmd("XLEN")
            .arg(&stream)
            .query::<u64>(&mut redis.conn())
            .unwrap_or(u64::MAX)
            <= 5
    })
    .await;

    // Under every user: no FLUSHALL, no CONFIG SET, no key outside the prefix.
    for (user, var) in USERS {
        let url = format!("redis://{user}:{}@127.0.0.1:{}", vars[var], redis.port);
        let mut conn = redis::Client::open(url)
            .expect("a URL")
            .get_connection()
            .unwrap_or_else(|e| panic!("{user} cannot log in: {e}"));
        let refused = |cmd: &mut redis::Cmd, conn: &mut redis::Connection| {
            let e = cmd
                .query::<redis::Value>(conn)
                .err()
                .unwrap_or_else(|| panic!("{user} was allowed {cmd:?}"));
            assert_eq!(e.code(), Some("NOPERM"), "{user}: {e}");
        };
        refused(&mut redis::cmd("FLUSHALL"), &mut conn);
        refused(
            redis::cmd("CONFIG").arg("GET").arg("requirepass"),
            &mut conn,
        );
        refused(
            redis::cmd("CONFIG").arg("SET").arg("appendonly").arg("no"),
            &mut conn,
        );
        refused(redis::cmd("GET").arg("other:key"), &mut conn);
        refused(
            redis::cmd("XADD")
                .arg("other:stream")
                .arg("*")
                .arg("a")
                .arg("b"),
            &mut conn,
        );
        // Another deployment's keys (another prefix) are outside too.
        refused(
            redis::cmd("XADD")
                .arg(format!("{{{prefix}x:p0}}:events"))
                .arg("*")
                .arg("a")
                .arg("b"),
            &mut conn,
        );
    }

    // Nothing but those was refused: a command a role needs and the file
    // lacks shows up here, with its role.
    let unexpected = unexpected_refusals(&redis, &prefix);
    assert!(
        unexpected.is_empty(),
        "deploy/redis/acl.conf lacks what a role needs:\n{}",
        unexpected.join("\n")
    );

    shutdown.cancel();
    for (name, role) in [
        ("api", api_role),
        ("worker", worker_role),
        ("reclaimer", reclaimer_role),
    ] {
        tokio::time::timeout(Duration::from_secs(15), role)
            .await
            .unwrap_or_else(|_| panic!("the {name} did not stop"))
            .expect("no panic")
            .unwrap_or_else(|e| panic!("the {name} ended with an error: {e:#}"));
    }
}

/// A worker whose Redis user was made before claims used `HSETNX` (an ACL not
/// updated on an upgrade) still delivers an event to its one device: the
/// claim's one-write way is refused (the ACL log shows it), and the claim
/// takes the general way instead, through the real worker loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_user_lacks_hsetnx_still_delivers() {
    let app = helpers::TestApp::start_with(|s| {
        let admin = s.redis.url.expose().to_string();
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("old-worker")
            .arg("on")
            .arg(">pw")
            .arg("~*")
            .arg("+@all")
            .arg("-hsetnx")
            .query(
                &mut redis::Client::open(admin.as_str())
                    .expect("url")
                    .get_connection()
                    .expect("connect as the default user"),
            )
            .expect("ACL SETUSER");
        s.redis.url = Secret::new(admin.replacen("redis://", "redis://old-worker:pw@", 1));
    })
    .await;
    let device = app.register_device("u-1").await;
    app.publish_to("u-1", "claimed the general way").await;
    let _worker = app.run_worker();
    helpers::eventually(
        "the push and its acknowledgement",
        Duration::from_secs(10),
        || app.delivered_to(&device).len() == 1 && app.pending() == 0,
    )
    .await;
    assert!(
        acl_log(&app.redis)
            .iter()
            .any(|r| r.username == "old-worker" && r.object == "hsetnx"),
        "the claim tried HSETNX first: {:?}",
        acl_log(&app.redis)
            .iter()
            .map(|r| format!("{} {}", r.username, r.object))
            .collect::<Vec<_>>()
    );
    assert_eq!(app.delivered_to(&device).len(), 1, "pushed once");
}

#[test]
fn readme_quotes_the_acl_file_as_it_is() {
    let readme = include_str!("../README.md");
    for line in ACL_FILE.lines().filter(|l| l.starts_with("ACL SETUSER")) {
        assert!(
            readme.contains(line),
            "README's \"Redis ACLs per role\" must quote deploy/redis/acl.conf as it is; it lacks:\n{line}"
        );
    }
}
