//! The embedded Redis of `herald up`: a `redis-server` child from PATH with AOF
//! on and `noeviction`, data under `<data_dir>/redis`, restarted if it dies,
//! stopped (cleanly, so AOF is flushed) when herald stops.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// A redis-server child process.
pub struct EmbeddedRedis {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl EmbeddedRedis {
    /// Starts `redis-server` on `port` (0: a free one) and waits until it answers.
    pub async fn start(data_dir: &Path, port: u16) -> anyhow::Result<EmbeddedRedis> {
        let dir = data_dir.join("redis");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let port = if port == 0 { free_port()? } else { port };
        let child = spawn(&dir, port)?;
        let mut redis = EmbeddedRedis { child, dir, port };
        redis.wait_ready().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.url())?;
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "redis-server exited at start ({status}); see {}",
                    self.dir.join("redis.log").display()
                );
            }
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!(
            "redis-server did not answer within 5s on port {}",
            self.port
        )
    }

    /// Restarts the server whenever it exits, until `shutdown`; then stops it with SIGTERM
    /// (which makes Redis flush its AOF) and waits for it.
    pub async fn supervise(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                status = self.child.wait() => {
                    tracing::error!(status = %status?, log = %self.dir.join("redis.log").display(), "embedded redis-server exited; restarting it");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    self.child = spawn(&self.dir, self.port)?;
                    if let Err(e) = self.wait_ready().await {
                        tracing::error!(error = %format!("{e:#}"), "embedded redis-server did not come back; will try again");
                    }
                }
            }
        }
        self.stop().await;
        Ok(())
    }

    /// SIGTERM, then wait up to 10 s, then SIGKILL.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) with a pid we own; no memory is involved.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(_) => tracing::info!("embedded redis-server stopped"),
            Err(_) => {
                tracing::warn!("embedded redis-server did not stop in 10s; killing it");
                let _ = self.child.kill().await;
            }
        }
    }
}

fn spawn(dir: &Path, port: u16) -> anyhow::Result<Child> {
    Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .arg("--dir")
        .arg(dir)
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .args(["--maxmemory-policy", "noeviction"])
        .args(["--save", "", "--daemonize", "no", "--protected-mode", "yes"])
        .args(["--logfile", "redis.log"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot start redis-server ({e}); install it (Debian/Ubuntu: `sudo apt-get install redis-server`) or set redis.url"
            )
        })
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}
