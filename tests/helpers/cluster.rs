//! A real Redis Cluster for tests: `redis-server --cluster-enabled yes` nodes on
//! free loopback ports, joined by `redis-cli --cluster create`, AOF on.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One redis-server (a cluster node, a primary, a replica or a sentinel) on
/// its own port and directory, killed when dropped.
pub struct RedisNode {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// What it runs with, after its port and directory.
    args: Vec<String>,
}

/// A cluster node's options beside [`super::DURABLE`]: failover after 2 s of
/// silence (quick enough for a test).
const CLUSTER_NODE: &[&str] = &[
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "2000",
];

impl RedisNode {
    fn start(port: u16) -> RedisNode {
        RedisNode::start_with(port, &[super::DURABLE, CLUSTER_NODE].concat(), None)
    }

    /// Starts redis-server on `port` with `args`; with `conf`, a
    /// configuration file of that text is written into its directory first
    /// (a sentinel's, which it rewrites as it learns) and comes first.
    pub fn start_with(port: u16, args: &[&str], conf: Option<&str>) -> RedisNode {
        let dir = tempfile::tempdir().expect("temp dir for a redis-server");
        let mut all: Vec<String> = Vec::new();
        if let Some(text) = conf {
            let path = dir.path().join("redis.conf");
            std::fs::write(&path, text).expect("write the configuration");
            all.push(path.to_string_lossy().into_owned());
        }
        all.extend(args.iter().map(|a| a.to_string()));
        let mut node = RedisNode {
            child: None,
            port,
            dir,
            args: all,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.child = Some(super::spawn_redis(self.dir.path(), self.port, &args));
    }

    pub fn url(&self) -> String {
        // A node started with --requirepass is asked with it.
        let password = self
            .args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.args.get(i + 1));
        match password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// A plain (non-cluster) connection to this node alone.
    pub fn conn(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.url())?;
        client.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// Starts it again on its port and directory: it rejoins the cluster from
    /// its nodes.conf (a master that was replaced comes back as a replica).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGKILL: nothing flushed, no goodbye to the other nodes.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn info(&self, section: &str) -> Option<String> {
        let mut conn = self.conn().ok()?;
        redis::cmd("INFO").arg(section).query(&mut conn).ok()
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of masters with one replica each.
pub struct TestCluster {
    pub nodes: Vec<RedisNode>,
}

impl TestCluster {
    /// Starts `masters` masters with one replica each, creates the cluster and
    /// waits until every slot is served and every replica is in sync.
    pub fn start(masters: usize) -> TestCluster {
        let nodes: Vec<RedisNode> = (0..masters * 2)
            .map(|_| {
                RedisNode::start(herald::operate::embedded_redis::free_port().expect("a free port"))
            })
            .collect();
        let cluster = TestCluster { nodes };
        for node in &cluster.nodes {
            wait_until(Duration::from_secs(10), "a cluster node answers", || {
                node.conn()
                    .ok()
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).ok())
                    .is_some()
            });
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-cli ({e}): install it with `sudo apt-get install redis-tools`")
            });
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// Seed URLs, one per node.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(RedisNode::url).collect()
    }

    /// Waits until every live node says the cluster is ok and every live
    /// replica's link to its master is up.
    pub fn wait_healthy(&self, within: Duration) {
        wait_until(within, "the cluster is ok and its replicas in sync", || {
            self.nodes.iter().filter(|n| n.child.is_some()).all(|node| {
                let ok = node
                    .info_cluster()
                    .is_some_and(|i| i.contains("cluster_state:ok"));
                let replication = node.info("replication").unwrap_or_default();
                let synced = replication.contains("role:master")
                    || replication.contains("master_link_status:up");
                ok && synced
            })
        });
    }

    /// The masters' ports and the slot ranges each serves, as a live node sees them.
    pub fn masters(&self) -> BTreeMap<u16, Vec<(u16, u16)>> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a live node");
        let mut conn = node.conn().expect("connect to a cluster node");
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut conn)
            .expect("CLUSTER SLOTS");
        let mut masters: BTreeMap<u16, Vec<(u16, u16)>> = BTreeMap::new();
        for range in slots {
            let redis::Value::Array(parts) = range else {
                continue;
            };
            let number = |v: &redis::Value| match v {
                redis::Value::Int(n) => *n as u16,
                other => panic!("unexpected CLUSTER SLOTS element {other:?}"),
            };
            let (start, end) = (number(&parts[0]), number(&parts[1]));
            let redis::Value::Array(master) = &parts[2] else {
                panic!("unexpected CLUSTER SLOTS master {:?}", parts[2]);
            };
            masters
                .entry(number(&master[1]))
                .or_default()
                .push((start, end));
        }
        masters
    }

    /// The port of the master serving `slot`.
    pub fn master_of(&self, slot: u16) -> u16 {
        self.masters()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .map(|(port, _)| port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// Waits until a node other than `old` serves `slot` as its master (a failover).
    pub fn wait_new_master(&self, slot: u16, old: u16, within: Duration) -> u16 {
        let mut new = old;
        wait_until(within, "a replica is promoted", || {
            new = self.master_of(slot);
            new != old
        });
        new
    }

    pub fn node_mut(&mut self, port: u16) -> &mut RedisNode {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }
}

impl RedisNode {
    fn info_cluster(&self) -> Option<String> {
        let mut conn = self.conn().ok()?;
        redis::cmd("CLUSTER").arg("INFO").query(&mut conn).ok()
    }
}

/// Polls `done` every 100 ms (blocking the thread) until it holds; panics saying what was awaited.
pub fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("gave up after {within:?} waiting until {what}");
}
