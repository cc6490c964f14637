//! Redis connections: a pool for ordinary commands, dedicated connections for
//! blocking reads (whose response timeout must outlast their `BLOCK`), and one
//! connection of its own for heartbeats, which ordinary traffic cannot starve.
//! Also the creation of consumer groups.

use std::time::Duration;

use anyhow::Context;
use deadpool_redis::{Manager, Pool, Runtime};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncConnectionConfig;
use tokio::sync::OnceCell;

use crate::shared::config::Settings;
use crate::shared::keys::Keys;

/// Handles to one Redis deployment, shared by every role in a process.
#[derive(Clone)]
pub struct Db {
    pub pool: Pool,
    pub keys: Keys,
    client: redis::Client,
    command_timeout: Duration,
    /// Heartbeats' own connection (auto-reconnecting, multiplexed), made on first use.
    side: std::sync::Arc<OnceCell<ConnectionManager>>,
}

impl Db {
    /// Creates a consumer group on every event stream where it is missing, starting
    /// at `start`: a stream id (`0` for everything), or `$` for new entries only.
    pub async fn ensure_group(&self, group: &str, start: &str) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        for stream in self.keys.streams() {
            let created: redis::RedisResult<String> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(group)
                .arg(start)
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Ok(_) => tracing::info!(stream, group, start, "created consumer group"),
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// A connection of its own for heartbeats: a slow pool (every connection busy
    /// with marker writes under load) must not let an entry's lease lapse.
    pub async fn side_conn(&self) -> anyhow::Result<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.command_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_number_of_retries(1);
        let conn = self
            .side
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .context("cannot open the heartbeat connection to Redis")?;
        Ok(conn.clone())
    }

    /// Connects to `redis.url` (which must be set by now) and checks the server answers.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Db> {
        let url = settings.redis.url.expose();
        anyhow::ensure!(
            !url.is_empty(),
            "redis.url is empty: set it, or run `herald up` to start an embedded redis-server"
        );
        let client = redis::Client::open(url).context("redis.url is not a valid Redis URL")?;
        let timeout = settings.redis.command_timeout;
        let manager = Manager::new_with_config(
            url,
            AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
        )
        .context("redis.url is not a valid Redis URL")?;
        let pool = Pool::builder(manager)
            .max_size(settings.redis.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .build()
            .context("cannot build the Redis connection pool")?;
        let db = Db {
            pool,
            keys: Keys::new(&settings.redis.key_prefix, settings.redis.partitions),
            client,
            command_timeout: timeout,
            side: Default::default(),
        };
        db.ping()
            .await
            .with_context(|| format!("cannot reach Redis at {}", redacted_url(url)))?;
        Ok(db)
    }

    /// A pooled connection for ordinary (non-blocking) commands.
    pub async fn conn(&self) -> anyhow::Result<deadpool_redis::Connection> {
        self.pool
            .get()
            .await
            .context("no Redis connection available from the pool")
    }

    /// A connection of its own for `XREADGROUP ... BLOCK`: its response timeout
    /// exceeds the block, so a quiet stream is never mistaken for a dead server.
    pub async fn blocking_conn(&self, block: Duration) -> anyhow::Result<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.command_timeout))
            .set_response_timeout(Some(block + self.command_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .context("cannot open a dedicated Redis connection for blocking reads")
    }

    /// Reads Redis's persistence and eviction settings and says what they risk.
    /// With `require`, a setting that can lose accepted events refuses the start.
    pub async fn check_durability(&self, require: bool) -> anyhow::Result<Durability> {
        let mut conn = self.conn().await?;
        let get = |name: &'static str| {
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("GET").arg(name);
            cmd
        };
        let reply: redis::RedisResult<(Vec<String>, Vec<String>, Vec<String>)> = redis::pipe()
            .add_command(get("appendonly"))
            .add_command(get("appendfsync"))
            .add_command(get("maxmemory-policy"))
            .query_async(&mut conn)
            .await;
        let durability = match reply {
            Ok((aof, fsync, policy)) => Durability::from_config(
                aof.get(1).map(String::as_str),
                fsync.get(1).map(String::as_str),
                policy.get(1).map(String::as_str),
            ),
            Err(e) => {
                let message = format!(
                    "cannot read Redis's persistence settings (CONFIG GET: {e}); make sure it runs with appendonly yes and maxmemory-policy noeviction"
                );
                anyhow::ensure!(!require, "{message} (redis.require_durable = true)");
                tracing::warn!("{message}");
                return Ok(Durability::Unknown);
            }
        };
        if let Durability::Risky(problems) = &durability {
            let message = problems.join("; ");
            anyhow::ensure!(
                !require,
                "Redis may lose accepted events: {message}; fix its configuration or set redis.require_durable = false"
            );
            tracing::warn!(problems = %message, "REDIS MAY LOSE ACCEPTED EVENTS: fix its configuration (see README, Guarantees)");
        }
        Ok(durability)
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}

/// A Lua script compiled once per process (it is sent as EVALSHA after the first use).
pub fn script(
    cell: &'static std::sync::OnceLock<redis::Script>,
    source: &'static str,
) -> &'static redis::Script {
    cell.get_or_init(|| redis::Script::new(source))
}

/// What Redis's configuration means for accepted events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// AOF on, fsync every second or always, no eviction.
    Durable,
    /// Something can lose data; each entry says what.
    Risky(Vec<String>),
    /// `CONFIG GET` was refused (managed Redis services often do).
    Unknown,
}

impl Durability {
    pub fn from_config(
        appendonly: Option<&str>,
        appendfsync: Option<&str>,
        policy: Option<&str>,
    ) -> Durability {
        let mut problems = Vec::new();
        if appendonly != Some("yes") {
            problems.push(
                "appendonly is not yes: a Redis crash loses everything since the last RDB snapshot"
                    .to_string(),
            );
        } else if appendfsync == Some("no") {
            problems
                .push("appendfsync is no: the OS decides when writes reach the disk".to_string());
        }
        if policy != Some("noeviction") {
            problems.push(format!(
                "maxmemory-policy is {}: Redis may evict streams when memory is full (use noeviction)",
                policy.unwrap_or("unknown")
            ));
        }
        if problems.is_empty() {
            Durability::Durable
        } else {
            Durability::Risky(problems)
        }
    }
}

/// A Redis URL with any password replaced, for logs and messages.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("redacted"));
            }
            parsed.to_string()
        }
        Err(_) => "(unparsable url)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::Durability;

    #[test]
    fn only_aof_without_eviction_is_durable() {
        assert_eq!(
            Durability::from_config(Some("yes"), Some("everysec"), Some("noeviction")),
            Durability::Durable
        );
        assert_eq!(
            Durability::from_config(Some("yes"), Some("always"), Some("noeviction")),
            Durability::Durable
        );
        for (aof, fsync, policy) in [
            ("no", "everysec", "noeviction"),
            ("yes", "no", "noeviction"),
            ("yes", "everysec", "allkeys-lru"),
        ] {
            assert!(matches!(
                Durability::from_config(Some(aof), Some(fsync), Some(policy)),
                Durability::Risky(_)
            ));
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redacted_url("redis://:s3cret@db:6379/0"),
            "redis://:redacted@db:6379/0"
        );
        assert_eq!(
            super::redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
