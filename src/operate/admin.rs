//! The admin listener of the worker, reclaimer and audit roles: `/metrics`,
//! `/livez`, `/readyz` (see [`crate::shared::health`]) on `admin.listen` (by
//! default a port per role). It stays up while the role drains, so that a load
//! balancer or an orchestrator sees it. (`herald api` and `herald up` serve the
//! same routes on `api.listen`.)

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::shared::config::Settings;
use crate::shared::db::Db;
use crate::shared::health::{livez, metrics, readyz};

#[derive(Clone)]
struct AdminState {
    db: Db,
    draining: CancellationToken,
}

/// The admin listener of a worker or reclaimer process.
pub struct Admin {
    listener: TcpListener,
    router: Router,
}

impl Admin {
    /// Binds `admin.listen`; `None` when `admin.enabled = false`. `draining` is
    /// cancelled when the process starts to stop.
    pub async fn bind(
        settings: &Settings,
        role: &str,
        db: Db,
        draining: CancellationToken,
    ) -> anyhow::Result<Option<Admin>> {
        if !settings.admin.enabled {
            return Ok(None);
        }
        crate::shared::metrics::install();
        let listen = settings
            .admin
            .address(role)
            .map_err(|e| anyhow::anyhow!("admin.listen: {e}"))?;
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on admin.listen = {listen}: {e}; give each herald process on this host its own port (HERALD_ADMIN__LISTEN, port 0 picks a free one) or set admin.enabled = false"
            )
        })?;
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/livez", get(livez))
            .route(
                "/readyz",
                get(|State(s): State<AdminState>| async move { readyz(&s.db, &s.draining).await }),
            )
            .with_state(AdminState { db, draining });
        Ok(Some(Admin { listener, router }))
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `stop` (after the process's roles have finished).
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "admin listening (/metrics, /livez, /readyz)");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await?;
        Ok(())
    }
}
