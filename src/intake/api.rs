//! The HTTP API, the producer side: events in, subscriptions in and out, health.
//!
//! Every error has one JSON shape, `{"error": {"code", "message", "field"?}}`,
//! and never leaks internals.

use std::sync::Arc;

use anyhow::Context;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use chrono::Utc;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::intake::auth::{Caller, Credentials};
use crate::intake::limits::{Limited, Limits};
use crate::intake::publish::{NotReplicated, PublishOutcome, Publisher, Ready};
use crate::intake::spool::{Drainer, Spool, SpoolError};
use crate::shared::config::{Scope, Settings};
use crate::shared::db::Db;
use crate::shared::event::{EventDefaults, EventInput, InvalidField};
use crate::shared::subscriptions::{InterestsPatch, Store, Stored, SubscriptionInput};

/// An API error: status, a stable code, a message saying what to fix, and the field when one is at fault.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    /// The scope a `403` says is needed.
    scope: Option<&'static str>,
    /// Seconds a `429` asks the caller to wait.
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            scope: None,
            retry_after: None,
        }
    }

    /// The same error, naming `field`.
    pub(crate) fn with_field(self, field: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.into()),
            ..self
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.into()),
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
        }
    }

    /// `403` naming the field a subscriber token may not set.
    fn forbidden_field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.into()),
            ..ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
        }
    }

    fn limited(limited: Limited) -> ApiError {
        crate::shared::metrics::rate_limited(limited.limit);
        let seconds = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        ApiError {
            retry_after: Some(seconds),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "over the rate {} allows this credential; retry after {seconds} s",
                    limited.limit
                ),
            )
        }
    }

    pub(crate) fn unavailable(e: anyhow::Error) -> ApiError {
        if format!("{e:#}").contains("NOPERM") {
            tracing::error!(error = %format!("{e:#}"), "herald's Redis user may not run a command an API request needs (see README, Redis ACLs per role)");
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "redis_permission",
                "herald's Redis user may not run a command this request needs (README, \"Redis ACLs per role\"); nothing was changed",
            );
        }
        tracing::error!(error = %format!("{e:#}"), "redis unavailable for an API request");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the event store is unavailable; nothing was accepted, retry later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = self.field {
            error["field"] = Value::String(field);
        }
        if let Some(scope) = self.scope {
            error["scope"] = Value::String(scope.into());
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<InvalidField> for ApiError {
    fn from(e: InvalidField) -> ApiError {
        ApiError::invalid(e.field, e.message)
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

/// What the console's handlers (`crate::operate::console`) read.
impl ApiState {
    pub(crate) fn db(&self) -> &Db {
        &self.inner.db
    }
    pub(crate) fn dead_letters(&self) -> &crate::shared::dead_letter::DeadLetters {
        &self.inner.dead_letters
    }
    pub(crate) fn spool_dir(&self) -> &std::path::Path {
        &self.inner.spool_dir
    }
}

struct Inner {
    db: Db,
    publisher: Publisher,
    store: Store,
    defaults: EventDefaults,
    endpoint_rules: crate::shared::endpoint::Rules,
    formats: crate::shared::subscriptions::FormatRules,
    max_body_bytes: usize,
    max_batch: usize,
    credentials: Credentials,
    limits: Limits,
    /// For `GET /v1/stats`.
    spool_dir: std::path::PathBuf,
    dead_letters: crate::shared::dead_letter::DeadLetters,
    vapid_public_key: String,
    /// Takes events while Redis cannot; `None` when `spool.enabled = false`.
    spool: Option<Arc<Spool>>,
    /// Cancelled when the API starts to stop: `/readyz` answers 503 from then on.
    draining: CancellationToken,
}

/// The API server: bind, then `run` until shutdown.
pub struct Api {
    listener: TcpListener,
    router: Router,
    state: ApiState,
    drainer: Option<Drainer>,
}

impl Api {
    /// Binds `api.listen` (port 0 picks a free port: see [`Api::local_addr`]).
    pub async fn bind(
        settings: &Settings,
        db: Db,
        vapid_public_key: String,
    ) -> anyhow::Result<Api> {
        let listener = TcpListener::bind(settings.api.listen).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on api.listen = {}: {e}", settings.api.listen)
        })?;
        // First: what is recorded from here on (the spool's depth at open) is kept.
        crate::shared::metrics::install();
        let credentials = Credentials::from_settings(settings)?;
        if credentials.is_open() {
            if !settings.api.listen.ip().is_loopback() {
                anyhow::bail!(
                    "api.listen = {} reaches beyond this machine, and no api.tokens are set: anyone who reaches it could publish and read subscriptions; create tokens with `herald token create` or listen on 127.0.0.1",
                    settings.api.listen
                );
            }
            tracing::warn!(listen = %settings.api.listen, "open mode: no api.tokens, every request on loopback is allowed (the quickstart); set api.tokens before exposing the API");
        }
        let publisher = Publisher::new(db.clone(), settings);
        let spool = if settings.spool.enabled {
            Some(Arc::new(Spool::open(
                &settings.spool_dir(),
                settings.spool.max_bytes,
            )?))
        } else {
            None
        };
        let drainer = spool
            .clone()
            .map(|spool| Drainer::new(spool, publisher.clone(), settings.spool.drain_interval));
        let state = ApiState {
            inner: Arc::new(Inner {
                publisher,
                spool,
                store: Store::new(db.clone())
                    .with_max_per_user(settings.api.max_subscriptions_per_user),
                db: db.clone(),
                defaults: settings.events.defaults(),
                endpoint_rules: crate::shared::endpoint::Rules::from_settings(&settings.push),
                formats: crate::shared::subscriptions::FormatRules::of(settings),
                max_body_bytes: settings.api.max_body_bytes,
                max_batch: settings.api.max_batch,
                credentials,
                limits: Limits::from_settings(&settings.api.limits),
                spool_dir: settings.spool_dir(),
                dead_letters: crate::shared::dead_letter::DeadLetters::new(
                    db.clone(),
                    &settings.worker.group,
                    Default::default(),
                    crate::shared::retry::RetryPolicy::from_settings(&settings.retry).markers_ttl(),
                    settings.events.defaults(),
                ),
                vapid_public_key,
                draining: CancellationToken::new(),
            }),
        };
        Ok(Api {
            listener,
            router: router(state.clone()),
            state,
            drainer,
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown`, then finishes the requests in flight.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr();
        tracing::info!(%addr, "api listening");
        let drainer = self.drainer.map(|d| tokio::spawn(d.run(shutdown.clone())));
        let draining = self.state.inner.draining.clone();
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            stopping.cancelled().await;
            draining.cancel();
        });
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await?;
        if let Some(drainer) = drainer {
            drainer.await.context("spool drainer panicked")??;
        }
        tracing::info!("api stopped");
        Ok(())
    }
}

/// The routes, with authentication on `/v1/*` (except the public VAPID key).
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/v1/events", post(post_events))
        .route(
            "/v1/subscriptions",
            post(post_subscription).get(list_subscriptions),
        )
        .route(
            "/v1/subscriptions/{id}",
            delete(delete_subscription).patch(patch_subscription),
        )
        .merge(crate::operate::console::admin_routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(protected)
        .route("/v1/vapid-public-key", get(vapid_public_key))
        .merge(crate::operate::console::page_routes())
        .merge(demo_routes(&state))
        .route("/livez", get(crate::shared::health::livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::shared::health::metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(state)
}

/// Names the caller (`401` when it cannot), takes one request from its
/// bucket (`429` when empty), and hands the handlers a [`Caller`].
/// The browser demo, in open mode only (the loopback quickstart): beside a
/// configured API it would be one more page on the console's origin.
fn demo_routes(state: &ApiState) -> Router<ApiState> {
    if state.inner.credentials.is_open() {
        crate::operate::demo::routes()
    } else {
        Router::new()
    }
}

async fn authenticate(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let now = Utc::now().timestamp().max(0) as u64;
    let caller = match state.inner.credentials.identify(authorization, now) {
        Ok(caller) => caller,
        Err(why) => {
            crate::shared::metrics::api_refused("unauthorized");
            return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why.to_string())
                .into_response();
        }
    };
    if matches!(caller, Caller::Open) {
        if let Err(why) = loopback_request(request.headers()) {
            crate::shared::metrics::api_refused("forbidden");
            return ApiError::new(StatusCode::FORBIDDEN, "forbidden", why).into_response();
        }
    }
    if let Err(limited) = state.inner.limits.request(&caller) {
        return ApiError::limited(limited).into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Open mode serves this machine only: a request naming another host (a web
/// page whose name was rebound to 127.0.0.1) or sent from another origin's
/// page is refused.
fn loopback_request(headers: &HeaderMap) -> Result<(), String> {
    let local = |host: &str| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    if let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
        // Strip the port: `127.0.0.1:8080`, `[::1]:8080`, `localhost`.
        let name = match host.rsplit_once(':') {
            Some((name, port))
                if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') =>
            {
                name
            }
            _ => host,
        };
        if !local(name) {
            return Err(format!(
                "this herald is open (no api.tokens) and answers requests for localhost only, not Host {host:?}; set api.tokens to serve other names"
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let from_here = url::Url::parse(origin)
            .ok()
            .and_then(|u| u.host_str().map(local))
            .unwrap_or(false);
        if !from_here {
            return Err(format!(
                "this herald is open (no api.tokens) and answers pages of localhost only, not {origin:?}"
            ));
        }
    }
    Ok(())
}

/// `403` unless the caller holds `scope`.
pub(crate) fn require(caller: &Caller, scope: Scope) -> Result<(), ApiError> {
    if caller.may(scope) {
        return Ok(());
    }
    crate::shared::metrics::api_refused("forbidden");
    let message = match caller {
        Caller::Subscriber { .. } => format!(
            "a subscriber token only manages its own user's subscriptions; this needs a service token with the `{}` scope",
            scope.as_str()
        ),
        _ => format!(
            "the token {:?} lacks the `{}` scope this needs (api.tokens)",
            caller.label(),
            scope.as_str()
        ),
    };
    Err(ApiError {
        scope: Some(scope.as_str()),
        ..ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    })
}

/// Reads a JSON body: 415 for another content type, 413 over the limit, 400 for bad JSON.
pub(crate) async fn read_json(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send Content-Type: application/json (got {content_type:?})"),
        ));
    }
    let limit = state.inner.max_body_bytes;
    let bytes = to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is over {limit} bytes (api.max_body_bytes); send fewer events per request"),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// Deserializes with the path of the failing field in the error.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut parts: Vec<String> = Vec::new();
        if !prefix.is_empty() {
            parts.push(prefix.to_string());
        }
        let path = e.path().to_string();
        if path != "." {
            parts.push(path);
        }
        let message = e.into_inner().to_string();
        // serde names a missing field only in its message: name it in `field` too.
        if let Some(name) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            parts.push(name.to_string());
        }
        let field = if parts.is_empty() {
            "body".to_string()
        } else {
            parts.join(".")
        };
        ApiError::invalid(field, message)
    })
}

async fn post_events(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let answer = match require(&caller, Scope::Publish) {
        Ok(()) => publish_events(state, &caller, headers, body).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &answer {
        crate::shared::metrics::event_rejected(e.code);
    }
    answer
}

async fn publish_events(
    state: ApiState,
    caller: &Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let value = read_json(&state, &headers, body).await?;
    let (items, batch) = match value {
        Value::Array(items) => (items, true),
        object @ Value::Object(_) => (vec![object], false),
        _ => {
            return Err(ApiError::invalid(
                "body",
                "send one event object or an array of events",
            ))
        }
    };
    if items.is_empty() {
        return Err(ApiError::invalid("body", "the array holds no events"));
    }
    if items.len() > state.inner.max_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "{} events in one request; at most {} (api.max_batch)",
                items.len(),
                state.inner.max_batch
            ),
        ));
    }
    let now = Utc::now();
    let mut ready = Vec::with_capacity(items.len());
    // Validate the whole batch first: a bad event means nothing of the request is accepted.
    for (i, item) in items.into_iter().enumerate() {
        let prefix = if batch {
            format!("[{i}]")
        } else {
            String::new()
        };
        let input: EventInput = from_value(item, &prefix)?;
        let event = input.validate(&state.inner.defaults, now).map_err(|e| {
            let field = if batch {
                format!("[{i}].{}", e.field)
            } else {
                e.field
            };
            ApiError::invalid(field, e.message)
        })?;
        ready.push(Ready::new(&input, &event));
    }
    // Charged once the request is valid: a refused batch costs nothing.
    state
        .inner
        .limits
        .events(caller, ready.len())
        .map_err(ApiError::limited)?;
    // A W3C trace context travels with the events of the request, to the worker's span.
    if let Some(trace) = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::shared::telemetry::TraceParent::parse)
    {
        for r in &mut ready {
            r.fields.push((
                crate::shared::telemetry::TRACEPARENT_FIELD.into(),
                trace.header(),
            ));
        }
    }
    // While the spool holds events, new ones queue behind them, so order is kept.
    let spool = state.inner.spool.clone();
    let outcomes = match &spool {
        Some(spool) if spool.backlog() > 0 => return spool_events(spool.clone(), ready).await,
        _ => match state.inner.publisher.publish(&ready).await {
            Ok(outcomes) => outcomes,
            Err(e) => match (e.downcast::<NotReplicated>(), spool) {
                // Written, not confirmed by enough replicas: what was accepted
                // goes to the spool too (publishing it again is idempotent);
                // conflicts and refusals are answered as they are.
                (Ok(short), Some(spool)) => {
                    tracing::warn!(error = %short, "redis.wait_replicas not met; spooling the accepted events so they are published again");
                    let (accepted, answered): (Vec<_>, Vec<_>) = ready
                        .into_iter()
                        .zip(short.outcomes)
                        .partition(|(_, o)| matches!(o, PublishOutcome::Accepted(_)));
                    let spooled =
                        spool_append(spool, accepted.into_iter().map(|(r, _)| r).collect()).await?;
                    return Ok(answer_outcomes(
                        answered.into_iter().map(|(_, o)| o).collect(),
                        spooled,
                    ));
                }
                (Ok(short), None) => return Err(ApiError::unavailable(short.into())),
                (Err(e), Some(spool)) => {
                    tracing::warn!(error = %format!("{e:#}"), "redis cannot take events; spooling them locally");
                    return spool_events(spool, ready).await;
                }
                (Err(e), None) => return Err(ApiError::unavailable(e)),
            },
        },
    };
    Ok(answer_outcomes(outcomes, Vec::new()))
}

/// The answer to a publish: `202` with each event's outcome (and those in
/// `spooled`, already answered), `409` when an id was published before with
/// other content, `400` when the function refused an event.
fn answer_outcomes(outcomes: Vec<PublishOutcome>, spooled: Vec<Value>) -> Response {
    let mut conflicts = Vec::new();
    let mut invalid = Vec::new();
    let mut results: Vec<Value> = outcomes
        .into_iter()
        .map(|o| match o {
            PublishOutcome::Accepted(p) => {
                crate::shared::metrics::event_ingested(if p.duplicate {
                    "duplicate"
                } else if p.scheduled {
                    "scheduled"
                } else {
                    "added"
                });
                serde_json::to_value(p).expect("serializes")
            }
            PublishOutcome::Conflict { id, stream_id } => {
                crate::shared::metrics::event_rejected("conflict");
                conflicts.push(id.clone());
                json!({"id": id, "stream_id": stream_id, "error": "conflict"})
            }
            // The API checked the event itself (`herald_publish_batch`
            // does not check again); should one still be refused, the caller hears why.
            PublishOutcome::Invalid { id, error } => {
                crate::shared::metrics::event_rejected("invalid_field");
                tracing::error!(event_id = %id, error = %error, "herald_publish_batch refused an event the API had validated");
                invalid.push(format!("{id} ({error})"));
                json!({"id": id, "error": "invalid_field", "message": error})
            }
        })
        .collect();
    results.extend(spooled);
    if !invalid.is_empty() {
        let body = json!({
            "error": {
                "code": "invalid_field",
                "message": format!("refused by herald_publish_batch: {}; the other events were accepted", invalid.join(", ")),
            },
            "events": results,
        });
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    if conflicts.is_empty() {
        return (StatusCode::ACCEPTED, Json(json!({ "events": results }))).into_response();
    }
    let body = json!({
        "error": {
            "code": "conflict",
            "message": format!("event id(s) {} were published before with different content; the other events were accepted", conflicts.join(", ")),
            "field": "id",
        },
        "events": results,
    });
    (StatusCode::CONFLICT, Json(body)).into_response()
}

/// Appends events to the spool (fsync'd) and answers 202 with `"spooled": true`.
async fn spool_events(spool: Arc<Spool>, ready: Vec<Ready>) -> Result<Response, ApiError> {
    let events = spool_append(spool, ready).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "events": events }))).into_response())
}

/// Appends events to the spool (fsync'd); each event's answer, `"spooled": true`.
async fn spool_append(spool: Arc<Spool>, ready: Vec<Ready>) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<String> = ready.iter().map(|r| r.id.clone()).collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let appended = tokio::task::spawn_blocking(move || spool.append(&ready)).await;
    match appended {
        Ok(Ok(())) => {
            for _ in &ids {
                crate::shared::metrics::event_ingested("spooled");
            }
            Ok(ids
                .iter()
                .map(|id| json!({"id": id, "spooled": true}))
                .collect())
        }
        Ok(Err(e @ SpoolError::Full { .. })) => {
            tracing::error!(error = %e, "redis is unavailable and the spool is full: refusing events");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event store is unavailable and the local spool is full; nothing was accepted, retry later",
            ))
        }
        Ok(Err(e)) => Err(ApiError::unavailable(e.into())),
        Err(e) => Err(ApiError::unavailable(anyhow::anyhow!(
            "spool task failed: {e}"
        ))),
    }
}

async fn post_subscription(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !matches!(caller, Caller::Subscriber { .. }) {
        require(&caller, Scope::Subscriptions)?;
    }
    let value = read_json(&state, &headers, body).await?;
    let mut input: SubscriptionInput = from_value(value, "")?;
    if let Caller::Subscriber { user, topics } = &caller {
        own_interests(&mut input, user, topics)?;
    }
    let sub = input.validate(&state.inner.endpoint_rules, state.inner.formats)?;
    // Before endpoints were stored in one spelling, this one may have been
    // stored as given: that record is this device's too, and goes.
    let as_given = url::Url::parse(&input.subscription.endpoint)
        .map(|u| crate::shared::subscriptions::id_for_endpoint(u.as_str()))
        .ok()
        .filter(|id| *id != sub.id);
    if let Ok(url) = url::Url::parse(&sub.endpoint) {
        crate::shared::endpoint::check_resolved(&url, &state.inner.endpoint_rules)
            .await
            .map_err(|message| ApiError::invalid("subscription.endpoint", message))?;
    }
    // One user's token cannot take over a device registered to another
    // (checked in the script that writes, so nothing slips in between).
    let owner = match &caller {
        Caller::Subscriber { user, .. } => user.as_str(),
        _ => "",
    };
    let stored = state
        .inner
        .store
        .put_owned(&sub, owner)
        .await
        .map_err(ApiError::unavailable)?;
    let (status, created) = match stored {
        Stored::Created => (StatusCode::CREATED, true),
        Stored::Updated => (StatusCode::OK, false),
        Stored::UserFull { max } => return Err(user_full(max)),
        Stored::OwnedByAnother => return Err(owned_by_another()),
    };
    if let Some(old) = as_given {
        if let Err(e) = state.inner.store.delete_owned(&old, owner).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot delete a subscription stored under its endpoint's former spelling");
        }
    }
    release_held(&state, sub.user.as_deref()).await;
    Ok((status, Json(json!({"id": sub.id, "created": created}))).into_response())
}

/// `409`: a subscriber token registering a device another user has.
fn owned_by_another() -> ApiError {
    ApiError {
        field: Some("subscription.endpoint".into()),
        ..ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "this endpoint is registered to another user; unsubscribe in the browser (pushManager) and subscribe again for a new endpoint",
        )
    }
}

/// `422`: the user has as many subscriptions as it may.
fn user_full(max: u32) -> ApiError {
    ApiError {
        field: Some("user".into()),
        ..ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_subscriptions",
            format!("this user has {max} subscriptions already (api.max_subscriptions_per_user); delete one first"),
        )
    }
}

/// What a subscriber token may ask for: its own user (the body may repeat
/// it, never name another), the topics its token lists, no header filter.
fn own_interests(
    input: &mut SubscriptionInput,
    user: &str,
    allowed: &[String],
) -> Result<(), ApiError> {
    match &input.user {
        Some(named) if named != user => {
            return Err(ApiError::forbidden_field(
                "user",
                "a subscriber token registers devices for its own user (its sub) only",
            ))
        }
        _ => input.user = Some(user.to_string()),
    }
    for (i, pattern) in input.topics.iter().enumerate() {
        if !allowed.contains(pattern) {
            return Err(ApiError::forbidden_field(
                &format!("topics[{i}]"),
                format!("the subscriber token does not allow the pattern {pattern:?} (its topics claim lists what it may subscribe to)"),
            ));
        }
    }
    if input.headers.is_some() {
        return Err(ApiError::forbidden_field(
            "headers",
            "header filters are set with a service token (scope subscriptions), not a subscriber token",
        ));
    }
    Ok(())
}

/// Sends the events held for a user who has a subscription now back into the stream.
async fn release_held(state: &ApiState, user: Option<&str>) {
    let Some(user) = user else { return };
    // Delivery's one interface for the way in (see crate::deliver::holding::release).
    if let Err(e) = crate::deliver::holding::release(&state.inner.db, user).await {
        // The subscription is stored; the held events stay held (nothing is lost) until
        // the next registration of this user releases them or their TTL is over.
        tracing::warn!(error = %format!("{e:#}"), "cannot release the events held for this user yet");
    }
}

/// `PATCH /v1/subscriptions/{id}`: changes the interests (user, topics, headers) of a subscription.
async fn patch_subscription(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Subscriptions)?;
    let value = read_json(&state, &headers, body).await?;
    let patch: InterestsPatch = from_value(value, "")?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no subscription has that id",
        )
    };
    if !is_subscription_id(&id) {
        return Err(not_found());
    }
    let current = match state
        .inner
        .store
        .get(&id)
        .await
        .map_err(ApiError::unavailable)?
    {
        Some(Ok(sub)) => sub,
        Some(Err(bad)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "unreadable",
                format!(
                    "the stored subscription cannot be read ({}); register it again with POST",
                    bad.problem
                ),
            ))
        }
        None => return Err(not_found()),
    };
    let changed = patch.apply(&current)?;
    let stored = state
        .inner
        .store
        .put(&changed)
        .await
        .map_err(ApiError::unavailable)?;
    match stored {
        Stored::UserFull { max } => return Err(user_full(max)),
        Stored::OwnedByAnother => return Err(owned_by_another()),
        Stored::Created | Stored::Updated => {}
    }
    release_held(&state, changed.user.as_deref()).await;
    Ok(Json(serde_json::to_value(changed.view()).expect("serializes")).into_response())
}

/// Subscription ids are 32 lowercase hex digits (a digest of the endpoint).
fn is_subscription_id(id: &str) -> bool {
    id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit())
}

#[derive(Deserialize)]
struct ListQuery {
    user: Option<String>,
}

async fn list_subscriptions(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let asked = query.user.filter(|u| !u.is_empty());
    let user = match (&caller, asked) {
        (Caller::Subscriber { user, .. }, None) => user.clone(),
        (Caller::Subscriber { user, .. }, Some(asked)) if asked == *user => asked,
        (Caller::Subscriber { .. }, Some(_)) => {
            return Err(ApiError::forbidden_field(
                "user",
                "a subscriber token lists its own user's subscriptions only",
            ))
        }
        (_, asked) => {
            if !caller.may(Scope::Read) {
                require(&caller, Scope::Subscriptions)?;
            }
            asked.ok_or_else(|| ApiError {
                field: Some("user".into()),
                ..ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "missing_parameter",
                    "name the user: GET /v1/subscriptions?user=<user>",
                )
            })?
        }
    };
    subscriptions_of(&state, user).await
}

/// `{"user", "subscriptions"}`: a user's subscriptions as listed (origin and
/// interests; never keys or endpoint paths), an unreadable one with its problem.
pub(crate) async fn subscriptions_of(state: &ApiState, user: String) -> Result<Response, ApiError> {
    let found = state
        .inner
        .store
        .for_user(&user)
        .await
        .map_err(ApiError::unavailable)?;
    let views: Vec<Value> = found
        .into_iter()
        .map(|r| match r {
            Ok(sub) => serde_json::to_value(sub.view()).expect("serializes"),
            Err(bad) => json!({"id": bad.id, "error": bad.problem}),
        })
        .collect();
    Ok(Json(json!({"user": user, "subscriptions": views})).into_response())
}

async fn delete_subscription(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no subscription has that id",
        )
    };
    if !is_subscription_id(&id) {
        return Err(not_found());
    }
    // Another user's device is not found: the token learns nothing of it
    // (checked in the script that deletes).
    let owner = match &caller {
        Caller::Subscriber { user, .. } => user.as_str(),
        _ => {
            require(&caller, Scope::Subscriptions)?;
            ""
        }
    };
    match state
        .inner
        .store
        .delete_owned(&id, owner)
        .await
        .map_err(ApiError::unavailable)?
    {
        true => Ok(StatusCode::NO_CONTENT.into_response()),
        false => Err(not_found()),
    }
}

async fn vapid_public_key(State(state): State<ApiState>) -> Response {
    Json(json!({"public_key": state.inner.vapid_public_key})).into_response()
}

async fn readyz(State(state): State<ApiState>) -> Response {
    crate::shared::health::readyz(&state.inner.db, &state.inner.draining).await
}
