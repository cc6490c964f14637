//! herald: a Redis Streams notification worker. Events in, Web Push out, nothing
//! lost on the way.
//!
//! The path of an event, and the module that owns each step:
//!
//! - [`ingest`]: the HTTP API; validates events ([`event`]) and subscriptions
//!   ([`subscriptions`]), and hands events to [`publish`], which adds them to a
//!   stream idempotently, or to the [`spool`] while Redis cannot take them.
//! - [`worker`]: a consumer in the group; reads entries, lets only the newest
//!   update of a key through ([`ordering`]), finds the target subscriptions
//!   ([`routing`]; direct events for users without a subscription yet wait in
//!   [`holding`]), pushes with [`push`] (encryption, VAPID, classification of
//!   the answer, per-service breaker) and acknowledges.
//! - [`reclaimer`]: retries pending entries when their backoff ([`retry`]) is
//!   up, moves what keeps failing to the [`dead_letter`] stream (announced by
//!   [`alerts`]), and applies [`retention`]; its [`scheduler`] moves delayed
//!   events into the stream when they are due.
//! - [`replay`]: `herald replay`, history added to the streams again.
//! - [`audit`]: a second consumer group on the same streams that logs every
//!   event as a JSON line.
//! - [`sink`]: a local push service that verifies and decrypts like a browser,
//!   for development, tests and benchmarks.
//! - [`up`]: the roles as the binary runs them, with an [`embedded_redis`] when
//!   no Redis is configured; [`stats`] is what `herald stats` shows.
//!
//! Around them: [`config`] (settings), [`keys`] (every Redis key name), [`db`]
//! (connections, durability check, scripts), [`shutdown`] (signals and
//! stopping), [`telemetry`] (logs), [`metrics`] (every Prometheus metric), [`admin`]
//! (`/metrics` and health for the worker and reclaimer).

pub mod admin;
pub mod alerts;
pub mod audit;
pub mod config;
pub mod db;
pub mod dead_letter;
pub mod embedded_redis;
pub mod event;
pub mod holding;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod ordering;
pub mod publish;
pub mod push;
pub mod reclaimer;
pub mod replay;
pub mod retention;
pub mod retry;
pub mod routing;
pub mod scheduler;
pub mod shutdown;
pub mod sink;
pub mod spool;
pub mod stats;
pub mod subscriptions;
pub mod telemetry;
pub mod up;
pub mod worker;
