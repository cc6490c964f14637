//! Redis connections: a pool for ordinary commands, and dedicated connections
//! for blocking reads, whose response timeout must outlast their `BLOCK`.

use std::time::Duration;

use anyhow::Context;
use deadpool_redis::{Manager, Pool, Runtime};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use crate::config::Settings;
use crate::keys::Keys;

/// Handles to one Redis deployment, shared by every role in a process.
#[derive(Clone)]
pub struct Db {
    pub pool: Pool,
    pub keys: Keys,
    client: redis::Client,
    command_timeout: Duration,
}

impl Db {
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

    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
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
