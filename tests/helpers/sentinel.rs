//! A primary with a replica watched by three sentinels (`redis-server
//! --sentinel`, the same program Debian's redis-sentinel package runs), on free
//! loopback ports, AOF on.

use std::time::Duration;

use super::cluster::{wait_until, RedisNode};

/// The name the sentinels monitor the primary under.
pub const MASTER: &str = "herald-test";

pub struct TestSentinel {
    /// The first primary and its replica; after a failover their roles swap.
    pub data: Vec<RedisNode>,
    pub sentinels: Vec<RedisNode>,
}

fn port() -> u16 {
    herald::operate::embedded_redis::free_port().expect("a free port")
}

impl TestSentinel {
    /// The primary and replica ask `password` of their clients (and of each
    /// other); the sentinels know it (`auth-pass`).
    pub fn start(password: &str) -> TestSentinel {
        let mut data_args = super::DURABLE.to_vec();
        data_args.extend(["--requirepass", password, "--masterauth", password]);
        let primary = RedisNode::start_with(port(), &data_args, None);
        let primary_port = primary.port.to_string();
        let mut replica_args = data_args.clone();
        replica_args.extend(["--replicaof", "127.0.0.1", &primary_port]);
        let replica = RedisNode::start_with(port(), &replica_args, None);
        let sentinels = (0..3)
            .map(|_| {
                let conf = format!(
                    "sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                     sentinel auth-pass {MASTER} {password}\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 5000\n\
                     sentinel parallel-syncs {MASTER} 1\n"
                );
                RedisNode::start_with(port(), &["--sentinel"], Some(&conf))
            })
            .collect();
        let setup = TestSentinel {
            data: vec![primary, replica],
            sentinels,
        };
        // Ready when every sentinel knows the replica and the other two sentinels.
        wait_until(
            Duration::from_secs(30),
            "the sentinels know each other and the replica",
            || {
                setup.sentinels.iter().all(|s| {
                    let count = |what: &str| -> usize {
                        s.conn()
                            .ok()
                            .and_then(|mut c| {
                                redis::cmd("SENTINEL")
                                    .arg(what)
                                    .arg(MASTER)
                                    .query::<Vec<redis::Value>>(&mut c)
                                    .ok()
                            })
                            .map_or(0, |v| v.len())
                    };
                    count("replicas") == 1 && count("sentinels") == 2
                })
            },
        );
        setup.wait_synced(Duration::from_secs(30));
        setup
    }

    /// Sentinel URLs.
    pub fn nodes(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisNode::url).collect()
    }

    /// The primary's port, as the first sentinel that answers says.
    pub fn primary(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let mut c = s.conn().ok()?;
            let (_, port): (String, u16) = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER)
                .query(&mut c)
                .ok()?;
            Some(port)
        })
    }

    pub fn node_mut(&mut self, port: u16) -> &mut RedisNode {
        self.data
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"))
    }

    /// Waits until the primary has a replica in sync (what `WAIT 1` needs).
    pub fn wait_synced(&self, within: Duration) {
        wait_until(within, "the primary has a connected replica", || {
            let Some(port) = self.primary() else {
                return false;
            };
            self.data
                .iter()
                .find(|n| n.port == port)
                .and_then(|n| n.info("replication"))
                .is_some_and(|i| i.contains("role:master") && i.contains("connected_slaves:1"))
        });
    }
}
