//! The browser demo of `herald up` (served in open mode only, the loopback
//! quickstart): `/demo/` serves a page and `/demo/sw.js` a
//! service worker. The page asks for notification permission, subscribes the
//! browser with herald's VAPID key, registers it for a user through the API,
//! and publishes a test event to that user; the worker shows each push as a
//! notification. Both are embedded in the binary.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::intake::api::ApiState;

/// The demo's routes (they hold nothing; the API calls they make are checked as usual).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route("/demo/", get(page))
        .route("/demo/sw.js", get(service_worker))
}

const PAGE: &str = include_str!("page.html");

async fn page() -> Response {
    static POLICY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let policy = POLICY.get_or_init(|| {
        crate::operate::console::content_policy(PAGE, "connect-src 'self'; worker-src 'self'")
    });
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, policy.as_str()),
        ],
        PAGE,
    )
        .into_response()
}

async fn service_worker() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            // A new herald's worker is picked up at once.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("sw.js"),
    )
        .into_response()
}
