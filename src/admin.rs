//! Health and metrics over HTTP: `/metrics` (Prometheus text), `/livez` (the
//! process runs) and `/readyz` (Redis answers and the process is not
//! draining; `503` otherwise). The API serves them on `api.listen`; the worker
//! and reclaimer (and `herald audit`) on a small listener of their own,
//! `admin.listen` (by default a port per role), which stays
//! up while they drain so that a load balancer or an orchestrator sees it.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db::Db;

/// `/livez`.
pub async fn livez() -> Response {
    Json(json!({"status": "alive"})).into_response()
}

/// `/readyz`: ready unless draining or Redis does not answer.
pub async fn readyz(db: &Db, draining: &CancellationToken) -> Response {
    if draining.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response();
    }
    match db.ping().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "not ready: redis unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "redis unreachable"})),
            )
                .into_response()
        }
    }
}

/// `/metrics`.
pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response()
}

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
        crate::metrics::install();
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
