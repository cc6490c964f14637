//! herald on a real Redis Cluster: 3 masters with a replica each, started
//! here (`redis-cli --cluster create`), 6 partitions spread over the masters.

mod helpers;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use helpers::cluster::TestCluster;
use helpers::{
    assert_failover_lost_nothing, cluster_settings, eventually, publish_steadily, Herald,
};
use herald::operate::sink::Fault;
use herald::shared::keys::slot_of;
use serde_json::json;

const PARTITIONS: u32 = 6;

/// Timings of a small deployment rather than the other tests' milliseconds:
/// six redis-servers share the two cores here, and heartbeats every 50 ms
/// (with a 37 ms timeout) would lapse under that load and hand entries to
/// the reclaimer.
fn cluster_timings(settings: &mut herald::shared::config::Settings) {
    settings.redis.partitions = PARTITIONS;
    settings.retry.base_delay = Duration::from_millis(600);
    settings.retry.max_delay = Duration::from_secs(1);
    // On a machine this loaded an entry can wait past a lease before its
    // worker gets to it, and be handed out again: not a failure to count.
    settings.retry.max_deliveries = 20;
}

async fn herald_on(cluster: &TestCluster) -> Herald {
    let data = tempfile::tempdir().expect("temp dir");
    let mut settings = cluster_settings(cluster, data.path());
    cluster_timings(&mut settings);
    Herald::start(settings, data, false, None).await
}

/// Every role that touches Redis runs here: the API, the worker, the
/// reclaimer (with retention and the holding sweep), the scheduler.
fn run_everything(app: &Herald) {
    app.run_roles();
    let scheduler =
        herald::recover::scheduler::Scheduler::new(app.db.clone(), Duration::from_millis(100));
    tokio::spawn(scheduler.run(app.shutdown.clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_spread_over_every_master_and_every_event_is_delivered_once() {
    let cluster = TestCluster::start(3);
    let app = herald_on(&cluster).await;

    // Two partitions on each master: the tags were chosen for that.
    let mut per_master: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
    for p in 0..PARTITIONS {
        let slot = slot_of(app.db.keys.stream(p).as_bytes());
        per_master
            .entry(cluster.master_of(slot))
            .or_default()
            .push(p);
    }
    assert_eq!(per_master.len(), 3, "partitions by master: {per_master:?}");
    assert!(
        per_master.values().all(|ps| ps.len() == 2),
        "partitions by master: {per_master:?}"
    );

    // Durability is every master's: one without AOF is named.
    use herald::shared::db::Durability;
    let durable = app
        .db
        .check_durability(true)
        .await
        .expect("every master has AOF");
    assert_eq!(durable, Durability::Durable);
    let careless = *per_master.keys().last().expect("a master");
    let node = cluster
        .nodes
        .iter()
        .find(|n| n.port == careless)
        .expect("the node");
    let appendonly = |value: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendonly")
            .arg(value)
            .query(&mut node.conn().expect("connect"))
            .expect("CONFIG SET");
    };
    appendonly("no");
    match app
        .db
        .check_durability(false)
        .await
        .expect("a warning, not a refusal")
    {
        Durability::Risky(problems) => assert!(
            problems
                .iter()
                .any(|p| p.contains(&format!(":{careless}: appendonly is not yes"))),
            "{problems:?}"
        ),
        other => panic!("one master without AOF went unnoticed: {other:?}"),
    }
    // And where it counts, at a role's start: a worker that requires
    // durability refuses to run, naming the master.
    let refused = std::process::Command::new(helpers::herald_bin())
        .arg("worker")
        .current_dir(app.data.path())
        .env_remove("REDIS_URL")
        .env(
            "HERALD_REDIS__CLUSTER_NODES",
            json!(cluster.seeds()).to_string(),
        )
        .env("HERALD_REDIS__PARTITIONS", PARTITIONS.to_string())
        .env("HERALD_REDIS__KEY_PREFIX", &app.settings.redis.key_prefix)
        .env("HERALD_REDIS__REQUIRE_DURABLE", "true")
        .env("HERALD_DATA_DIR", app.data.path())
        .env("HERALD_ADMIN__LISTEN", "127.0.0.1:0")
        .output()
        .expect("run herald worker");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains(&format!(":{careless}: appendonly is not yes")),
        "{said}"
    );
    appendonly("yes");

    let mut users = Vec::new();
    for u in 0..30 {
        let user = format!("driver-{u}");
        let device = app.register_device(&user).await;
        users.push((user, device));
    }
    run_everything(&app);

    // Direct events in batches (each batch spans every partition).
    let mut expected: HashMap<String, String> = HashMap::new();
    for batch in 0..6 {
        let events: Vec<_> = (0..50)
            .map(|i| {
                let (user, _) = &users[(batch * 50 + i) % users.len()];
                json!({"topic": "parking.lot-7.entry", "user": user,
                       "notification": {"title": format!("entry {batch}-{i}")}})
            })
            .collect();
        let (status, body) = app.post("/v1/events", &json!(events)).await;
        assert_eq!(status, 202, "{body}");
        for (i, accepted) in body["events"]
            .as_array()
            .expect("events")
            .iter()
            .enumerate()
        {
            let (_, device) = &users[(batch * 50 + i) % users.len()];
            expected.insert(accepted["id"].as_str().expect("id").into(), device.clone());
        }
    }
    // One scheduled for a second from now.
    let at = herald::shared::event::format_time(chrono::Utc::now() + chrono::Duration::seconds(1));
    let scheduled = app
        .publish(json!({"topic": "parking.lot-7.exit", "user": users[0].0,
                        "deliver_at": at, "notification": {"title": "later"}}))
        .await;
    expected.insert(scheduled, users[0].1.clone());
    // One for a user with no device yet: held, then released by the registration.
    let held = app.publish_to("newcomer", "held for you").await;
    // One whose device refuses it (400: not worth retrying), so it is
    // dead-lettered at once, then replayed.
    let (flaky_user, flaky) = ("flaky", app.register_device("flaky").await);
    app.sink.add_faults(&flaky, vec![Fault::status(400)]);
    let dead = app.publish_to(flaky_user, "refused once").await;

    eventually("the direct events arrive", Duration::from_secs(60), || {
        app.sink.delivered().len() >= expected.len()
    })
    .await;
    let newcomer = app.register_device("newcomer").await;
    expected.insert(held, newcomer);

    let letters = app.worker.dead_letters();
    let mut dead_letter = None;
    for _ in 0..300 {
        let all = letters
            .list(&herald::shared::dead_letter::Filter::default(), usize::MAX)
            .await
            .expect("dead letters across the cluster");
        dead_letter = all
            .into_iter()
            .find(|d| d.event_id.as_deref() == Some(dead.as_str()));
        if dead_letter.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead_letter = dead_letter.expect("the failing event is dead-lettered");
    letters.replay(&dead_letter).await.expect("replay it");
    expected.insert(dead, flaky);

    eventually("every event arrives", Duration::from_secs(60), || {
        app.sink.delivered().len() >= expected.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut times: HashMap<String, usize> = HashMap::new();
    for arrival in app.sink.delivered() {
        let id = arrival.event_id.clone().expect("decrypted");
        assert_eq!(
            expected.get(&id),
            Some(&arrival.subscription),
            "event {id} reached the wrong device"
        );
        *times.entry(id).or_default() += 1;
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|id| !times.contains_key(*id))
        .collect();
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");

    // The CLI on the cluster, configured through the environment as operators do.
    let nodes: Vec<String> = cluster.seeds();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(helpers::herald_bin())
            .args(args)
            .current_dir(app.data.path())
            .env_remove("REDIS_URL")
            .env("HERALD_REDIS__CLUSTER_NODES", json!(nodes).to_string())
            .env("HERALD_REDIS__PARTITIONS", PARTITIONS.to_string())
            .env("HERALD_REDIS__KEY_PREFIX", &app.settings.redis.key_prefix)
            .env("HERALD_DATA_DIR", app.data.path())
            .output()
            .expect("run herald");
        assert!(
            out.status.success(),
            "herald {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stats: serde_json::Value =
        serde_json::from_str(&cli(&["stats", "--json"])).expect("stats as JSON");
    let dead_letters: u64 = stats["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|s| s["dead_letters"].as_u64().unwrap_or(0))
        .sum();
    // The one dead letter was replayed, which takes it out of the dead letters.
    assert_eq!(dead_letters, 0, "{stats}");
    assert!(
        !cli(&["dlq", "list"]).contains(&dead_letter.id),
        "a replayed dead letter is gone"
    );

    // README's redis-cli recipes, with -c, from any node, on a stream stats names.
    let stream = stats["streams"][5]["stream"]
        .as_str()
        .expect("a stream")
        .to_string();
    let recipe = std::process::Command::new("redis-cli")
        .args(["-c", "-p", &cluster.nodes[0].port.to_string()])
        .args(["XINFO", "GROUPS", &stream])
        .output()
        .expect("run redis-cli");
    let answer = String::from_utf8_lossy(&recipe.stdout);
    assert!(
        answer.contains("last-delivered-id"),
        "redis-cli -c XINFO GROUPS: {answer}"
    );

    // Every partition carried events, and stats read them all, master by master.
    let stats = herald::operate::stats::collect(&app.db, Some(&app.settings.worker.group), None)
        .await
        .expect("stats across the cluster");
    let json = serde_json::to_value(&stats).expect("stats as JSON");
    let streams = json["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), PARTITIONS as usize, "{json}");
    for stream in streams {
        assert!(
            stream["length"].as_u64().unwrap_or(0) > 0,
            "an unused partition: {stream}"
        );
    }
}

/// A few hundred events/s through the API while the master of partition 0 is
/// SIGKILLed: its replica takes over (the cluster's own failover), the API
/// keeps answering 202 (the spool takes what Redis cannot), workers and
/// reclaimer carry on, and with `redis.wait_replicas = 1` no accepted event is
/// lost. The killed node comes back as a replica, so publishes can be confirmed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_master_under_load_loses_no_accepted_event() {
    let mut cluster = TestCluster::start(3);
    let data = tempfile::tempdir().expect("temp dir");
    let mut settings = cluster_settings(&cluster, data.path());
    cluster_timings(&mut settings);
    settings.redis.wait_replicas = 1;
    settings.redis.wait_timeout = Duration::from_millis(500);
    settings.redis.command_timeout = Duration::from_secs(2);
    settings.spool.drain_interval = Duration::from_millis(200);
    let app = Herald::start(settings, data, false, None).await;
    let mut devices = HashMap::new();
    for u in 0..20 {
        let user = format!("driver-{u}");
        let device = app.register_device(&user).await;
        devices.insert(user, device);
    }
    run_everything(&app);

    let slot = slot_of(app.db.keys.stream(0).as_bytes());
    let victim = cluster.master_of(slot);
    let load = publish_steadily(
        &app,
        devices.keys().cloned().collect(),
        3000,
        Duration::from_millis(4),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.node_mut(victim).kill();
    // The replica is promoted by the cluster; then the old master returns as its replica.
    let cluster = tokio::task::spawn_blocking(move || {
        let waited = std::time::Instant::now();
        let promoted = cluster.wait_new_master(slot, victim, Duration::from_secs(30));
        let promoted_at = chrono::Utc::now();
        cluster.wait_healthy(Duration::from_secs(30));
        eprintln!(
            "failover: {promoted} took over from {victim} {:?} after the kill",
            waited.elapsed()
        );
        cluster.node_mut(victim).restart();
        cluster.wait_healthy(Duration::from_secs(30));
        (cluster, promoted_at)
    })
    .await
    .expect("failover");
    let (cluster, promoted_at) = cluster;
    let answers = load.await.expect("the load");
    assert_failover_lost_nothing(&app, &answers, &devices, promoted_at).await;
    drop(cluster);
}
