//! Health and metrics over HTTP, the same on every listener: `/metrics`
//! (Prometheus text), `/livez` (the process runs) and `/readyz` (Redis answers
//! and the process is not draining; `503` otherwise).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::shared::db::Db;

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
        crate::shared::metrics::render(),
    )
        .into_response()
}
