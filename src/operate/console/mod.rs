//! The operators' console: `/console`, one page served from the binary (no
//! CDN, no build step), and the JSON API it calls, which scripts may call too:
//!
//! | route | scope | what |
//! | --- | --- | --- |
//! | `GET /v1/stats` | `read` | streams, groups, lag, pending, consumers, push services, spool (`herald stats --json`) |
//! | `GET /v1/admin/dead-letters` | `admin` | dead letters by `reason`, `topic`, `user`, `since`, `until`, at most `limit` |
//! | `GET /v1/admin/dead-letters/{id}` | `admin` | one, every field |
//! | `POST /v1/admin/dead-letters/replay` | `admin` | put back those named by `ids`, a `filter` or `all` |
//! | `POST /v1/admin/dead-letters/purge` | `admin` | delete them, the same way |
//! | `GET /v1/admin/events/{id}` | `admin` | an event: its entry, each device's state, dead letters, scheduled or held |
//! | `GET /v1/admin/users/{user}/subscriptions` | `admin` | a user's devices (origin, interests; never keys or paths) |
//!
//! The page itself holds no data: it asks for a token (kept in the tab's
//! session storage) unless the API is open, and calls these routes.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::intake::api::{from_value, read_json, require, ApiError, ApiState};
use crate::intake::auth::Caller;
use crate::shared::config::Scope;
use crate::shared::dead_letter::{DeadLetterEntry, Filter};

/// Most dead letters one replay or purge request handles: narrow the filter, or repeat.
pub const MAX_PER_REQUEST: usize = 10_000;

/// The JSON routes (behind authentication).
pub fn admin_routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/stats", get(stats))
        .route("/v1/admin/dead-letters", get(list_dead_letters))
        .route("/v1/admin/dead-letters/replay", post(replay_dead_letters))
        .route("/v1/admin/dead-letters/purge", post(purge_dead_letters))
        .route("/v1/admin/dead-letters/{id}", get(show_dead_letter))
        .route("/v1/admin/events/{id}", get(show_event))
        .route(
            "/v1/admin/users/{user}/subscriptions",
            get(user_subscriptions),
        )
}

/// The page (public: it holds nothing until a token is given).
pub fn page_routes() -> Router<ApiState> {
    Router::new().route("/console", get(page))
}

const PAGE: &str = include_str!("page.html");

async fn page() -> Response {
    static POLICY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let policy = POLICY.get_or_init(|| content_policy(PAGE, "connect-src 'self'; img-src data:"));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, policy.as_str()),
        ],
        Html(PAGE),
    )
        .into_response()
}

/// A Content-Security-Policy for a page of ours: its own inline scripts only
/// (by their SHA-256: an injected script would not run), inline styles,
/// nothing loaded from elsewhere, no framing, no `<base>`, no form posts.
pub(crate) fn content_policy(html: &str, extra: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let mut hashes = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<script>") {
        let body = &rest[start + "<script>".len()..];
        let end = body.find("</script>").expect("a page's script is closed");
        let digest = sha2::Sha256::digest(&body.as_bytes()[..end]);
        hashes.push(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &body[end..];
    }
    format!(
        "default-src 'none'; script-src {}; style-src 'unsafe-inline'; {extra}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes.join(" ")
    )
}

/// `GET /v1/stats`: what `herald stats --json` prints.
async fn stats(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Read)?;
    let stats = crate::operate::stats::collect(state.db(), None, Some(state.spool_dir()))
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(serde_json::to_value(stats).expect("serializes")).into_response())
}

/// Which dead letters, as a query string or a JSON body's `filter`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterInput {
    reason: Option<String>,
    topic: Option<String>,
    user: Option<String>,
    /// RFC 3339, or a duration ago (`2h`).
    since: Option<String>,
    until: Option<String>,
}

impl FilterInput {
    fn to_filter(&self, prefix: &str) -> Result<Filter, ApiError> {
        let when = |name: &str, text: &Option<String>| -> Result<Option<DateTime<Utc>>, ApiError> {
            text.as_deref()
                .filter(|t| !t.is_empty())
                .map(|t| {
                    crate::operate::dlq::parse_when(t)
                        .map_err(|e| ApiError::invalid(format!("{prefix}{name}"), format!("{e:#}")))
                })
                .transpose()
        };
        let text = |v: &Option<String>| v.clone().filter(|t| !t.is_empty());
        Ok(Filter {
            reason: text(&self.reason),
            topic: text(&self.topic),
            user: text(&self.user),
            since: when("since", &self.since)?,
            until: when("until", &self.until)?,
            event_id: None,
        })
    }

    fn is_empty(&self) -> bool {
        [
            &self.reason,
            &self.topic,
            &self.user,
            &self.since,
            &self.until,
        ]
        .iter()
        .all(|v| v.as_deref().is_none_or(str::is_empty))
    }
}

/// A query string's parameters, each named in `known` at most once; anything
/// else is a `400` in the API's JSON shape naming the parameter.
fn query_params(raw: Option<String>, known: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let mut params = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let bad = |why: &str| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                why.to_string(),
            )
            .with_field(name.to_string())
        };
        if !known.contains(&name.as_ref()) {
            return Err(bad(&format!("unknown parameter; use {}", known.join(", "))));
        }
        if params.insert(name.to_string(), value.to_string()).is_some() {
            return Err(bad("is given twice"));
        }
    }
    Ok(params)
}

/// A whole-number parameter within `range`.
fn number_param<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    params: &HashMap<String, String>,
    name: &str,
    range: std::ops::RangeInclusive<T>,
) -> Result<Option<T>, ApiError> {
    let Some(text) = params.get(name) else {
        return Ok(None);
    };
    match text.parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!(
                "{name} must be a whole number from {} to {} (got {text:?})",
                range.start(),
                range.end()
            ),
        )
        .with_field(name)),
    }
}

/// A filter as the answer of a list repeats it, times made absolute: what a
/// replay or purge of "all matching" sends back, so it means what was shown.
fn resolved(filter: &Filter) -> Value {
    let mut out = serde_json::Map::new();
    for (name, value) in [
        ("reason", filter.reason.clone()),
        ("topic", filter.topic.clone()),
        ("user", filter.user.clone()),
        ("since", filter.since.map(crate::shared::event::format_time)),
        ("until", filter.until.map(crate::shared::event::format_time)),
    ] {
        if let Some(value) = value {
            out.insert(name.into(), Value::String(value));
        }
    }
    Value::Object(out)
}

/// `GET /v1/admin/dead-letters`: the oldest matching the filter (100 unless
/// `limit`, at most 1000), how many match, and the filter with absolute times.
async fn list_dead_letters(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Admin)?;
    let params = query_params(raw, &["reason", "topic", "user", "since", "until", "limit"])?;
    let limit = number_param(&params, "limit", 1..=1000usize)?.unwrap_or(100);
    let filter = FilterInput {
        reason: params.get("reason").cloned(),
        topic: params.get("topic").cloned(),
        user: params.get("user").cloned(),
        since: params.get("since").cloned(),
        until: params.get("until").cloned(),
    }
    .to_filter("")?;
    let (total, shown) = state
        .dead_letters()
        .count_and_list(&filter, None, limit)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(
        Json(json!({ "total": total, "dead_letters": shown, "filter": resolved(&filter) }))
            .into_response(),
    )
}

/// Whether `id` has a stream id's shape (`<ms>-<seq>`, or `<ms>`).
fn is_stream_id(id: &str) -> bool {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    !ms.is_empty()
        && !seq.is_empty()
        && ms.len() <= 20
        && seq.len() <= 20
        && (ms.bytes().chain(seq.bytes())).all(|b| b.is_ascii_digit())
}

/// A dead letter by its id, in its partition when given; an id two
/// partitions' streams both hold must name one.
async fn find_dead_letter(
    state: &ApiState,
    partition: Option<u32>,
    id: &str,
) -> Result<DeadLetterEntry, ApiError> {
    if !is_stream_id(id) {
        return Err(no_dead_letter(id));
    }
    let dl = state.dead_letters();
    if let Some(partition) = partition {
        return dl
            .show_at(partition, id)
            .await
            .map_err(ApiError::unavailable)?
            .ok_or_else(|| no_dead_letter(id));
    }
    let mut found = Vec::new();
    for partition in 0..state.db().keys.partitions() {
        if let Some(entry) = dl
            .show_at(partition, id)
            .await
            .map_err(ApiError::unavailable)?
        {
            found.push(entry);
        }
    }
    match found.len() {
        0 => Err(no_dead_letter(id)),
        1 => Ok(found.remove(0)),
        _ => Err(ApiError::new(
            StatusCode::CONFLICT,
            "ambiguous",
            format!(
                "partitions {} each hold a dead letter {id}: name its partition",
                found
                    .iter()
                    .map(|e| e.partition.to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        )),
    }
}

async fn show_dead_letter(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Admin)?;
    let params = query_params(raw, &["partition"])?;
    let partition = number_param(&params, "partition", 0..=u32::MAX)?;
    let entry = find_dead_letter(&state, partition, &id).await?;
    Ok(Json(json!({ "dead_letter": entry })).into_response())
}

fn no_dead_letter(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no dead letter has id {id:?} (ids look like 1764000000000-0)"),
    )
}

/// A dead letter named in a replay or purge: its id, or its partition and id.
#[derive(Deserialize, PartialEq, Eq, Hash, Clone)]
#[serde(untagged)]
enum DeadLetterRef {
    Id(String),
    At { partition: u32, id: String },
}

/// The body of a replay or purge: `ids`, or a `filter`, or `"all": true`;
/// with `expect`, how many the caller confirmed: any other number matching
/// now is a `409` and nothing is done.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Selection {
    #[serde(default)]
    ids: Vec<DeadLetterRef>,
    filter: Option<FilterInput>,
    #[serde(default)]
    all: bool,
    expect: Option<u64>,
}

async fn select(
    state: &ApiState,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Vec<DeadLetterEntry>, ApiError> {
    let value = read_json(state, headers, body).await?;
    let selection: Selection = from_value(value, "")?;
    let ways = [
        !selection.ids.is_empty(),
        selection.filter.as_ref().is_some_and(|f| !f.is_empty()),
        selection.all,
    ];
    if ways.iter().filter(|w| **w).count() != 1 {
        return Err(ApiError::invalid(
            "body",
            "name the dead letters one way: \"ids\": [...], a non-empty \"filter\": {reason, topic, user, since, until}, or \"all\": true",
        ));
    }
    let dl = state.dead_letters();
    let chosen = if !selection.ids.is_empty() {
        if selection.ids.len() > MAX_PER_REQUEST {
            return Err(ApiError::invalid(
                "ids",
                format!("at most {MAX_PER_REQUEST} per request"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut found = Vec::with_capacity(selection.ids.len());
        for (i, named) in selection.ids.iter().enumerate() {
            if !seen.insert(named.clone()) {
                return Err(ApiError::invalid(format!("ids[{i}]"), "is named twice"));
            }
            let (partition, id) = match named {
                DeadLetterRef::Id(id) => (None, id),
                DeadLetterRef::At { partition, id } => (Some(*partition), id),
            };
            let entry = find_dead_letter(state, partition, id)
                .await
                .map_err(|e| e.with_field(format!("ids[{i}]")))?;
            found.push(entry);
        }
        found
    } else {
        let filter = match &selection.filter {
            Some(f) if !selection.all => f.to_filter("filter.")?,
            _ => Filter::default(),
        };
        dl.list(&filter, MAX_PER_REQUEST + 1)
            .await
            .map_err(ApiError::unavailable)?
    };
    if chosen.len() > MAX_PER_REQUEST {
        return Err(ApiError::invalid(
            "filter",
            format!("more than {MAX_PER_REQUEST} dead letters match: narrow the filter (since/until) or repeat after this batch"),
        ));
    }
    if let Some(expected) = selection.expect {
        if chosen.len() as u64 != expected {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "changed",
                format!(
                    "{} dead letters match now, not the {expected} expected: nothing was done; look again",
                    chosen.len()
                ),
            )
            .with_field("expect"));
        }
    }
    Ok(chosen)
}

/// `POST /v1/admin/dead-letters/replay`: each one's new stream id, or why it failed.
async fn replay_dead_letters(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Admin)?;
    let chosen = select(&state, &headers, body).await?;
    let results = crate::operate::dlq::replay_all(state.dead_letters(), &chosen, 0.0).await;
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    let results: Vec<Value> = results
        .into_iter()
        .map(|(id, result)| match result {
            Ok(stream_id) => json!({"id": id, "stream_id": stream_id}),
            Err(error) => json!({"id": id, "error": error}),
        })
        .collect();
    tracing::info!(
        caller = caller.label(),
        replayed = results.len() - failed,
        failed,
        ids = ?chosen.iter().map(|e| format!("{}/{}", e.partition, e.id)).collect::<Vec<_>>(),
        "dead letters replayed from the API"
    );
    Ok(
        Json(json!({"replayed": results.len() - failed, "failed": failed, "results": results}))
            .into_response(),
    )
}

/// `POST /v1/admin/dead-letters/purge`: how many were deleted.
async fn purge_dead_letters(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Admin)?;
    let chosen = select(&state, &headers, body).await?;
    let purged = state
        .dead_letters()
        .purge(&chosen)
        .await
        .map_err(ApiError::unavailable)?;
    tracing::info!(
        caller = caller.label(),
        purged,
        ids = ?chosen.iter().map(|e| format!("{}/{}", e.partition, e.id)).collect::<Vec<_>>(),
        "dead letters purged from the API"
    );
    Ok(Json(json!({ "purged": purged })).into_response())
}

/// `GET /v1/admin/events/{id}`: everything Redis still knows of one event.
async fn show_event(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Admin)?;
    crate::shared::event::check_identifier("id", &id, 128).map_err(ApiError::from)?;
    let db = state.db();
    let keys = &db.keys;
    let mut conn = db.conn();
    let mut found = Vec::new();
    for partition in 0..keys.partitions() {
        let (dedup, outcomes, scheduled_at, held): (
            Option<String>,
            HashMap<String, String>,
            Option<f64>,
            Option<String>,
        ) = redis::pipe()
            .get(keys.dedup(partition, &id))
            .hgetall(keys.outcomes(partition, &id))
            .zscore(keys.scheduled(partition), &id)
            .hget(keys.held_events(partition), &id)
            .query_async(&mut conn)
            .await
            .map_err(|e| ApiError::unavailable(e.into()))?;
        // "<digest> <stream id>", "<digest> scheduled" or "<digest> p<N>" (README, "Redis keys").
        let place = dedup
            .as_deref()
            .and_then(|d| d.split_once(' '))
            .map(|(_, place)| place.to_string());
        // An entry written with plain XADD has no dedup record: its id names it.
        let stream_id = place.clone().filter(|p| p.contains('-')).or_else(|| {
            id.strip_prefix(crate::shared::event::DERIVED_ID_PREFIX)
                .filter(|sid| is_stream_id(sid))
                .map(str::to_string)
        });
        let mut entry = None;
        if let Some(sid) = &stream_id {
            let rows: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(keys.stream(partition))
                .arg(sid)
                .arg(sid)
                .query_async(&mut conn)
                .await
                .map_err(|e| ApiError::unavailable(e.into()))?;
            entry = rows
                .into_iter()
                .next()
                .map(|(_, fields)| fields.into_iter().collect::<BTreeMap<_, _>>());
        }
        if entry.is_none()
            && place.is_none()
            && outcomes.is_empty()
            && scheduled_at.is_none()
            && held.is_none()
        {
            continue;
        }
        let held: Option<Value> =
            held.map(|h| serde_json::from_str(&h).unwrap_or(Value::String(h)));
        found.push(json!({
            "partition": partition,
            "stream_id": stream_id,
            "dedup": place,
            "entry": entry,
            "in_stream": entry.is_some(),
            "devices": outcomes.into_iter().collect::<BTreeMap<_, _>>(),
            "scheduled_at": scheduled_at.and_then(|ms| DateTime::<Utc>::from_timestamp_millis(ms as i64)).map(crate::shared::event::format_time),
            "held": held,
        }));
    }
    // A dead letter is newer than its entry: read the dead letters from the
    // oldest entry of this event on (all of them when no entry is known).
    let oldest = found
        .iter()
        .filter_map(|p| p["stream_id"].as_str())
        .min()
        .map(str::to_string);
    let filter = Filter {
        event_id: Some(id.clone()),
        ..Filter::default()
    };
    let (_, dead) = state
        .dead_letters()
        .count_and_list(&filter, oldest.as_deref(), 100)
        .await
        .map_err(ApiError::unavailable)?;
    if found.is_empty() && dead.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("Redis knows nothing of event {id} (never published, or past events.dedup_window and the stream's retention)"),
        ));
    }
    Ok(Json(json!({"id": id, "partitions": found, "dead_letters": dead})).into_response())
}

/// `GET /v1/admin/users/{user}/subscriptions`.
async fn user_subscriptions(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Admin)?;
    crate::shared::event::check_identifier("user", &user, 128).map_err(ApiError::from)?;
    crate::intake::api::subscriptions_of(&state, user).await
}
