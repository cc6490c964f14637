//! herald: a Redis Streams notification worker. Events in, Web Push out, nothing
//! lost on the way.
//!
//! The path of an event, and the module that owns each step:
//!
//! - [`ingest`]: the HTTP API; validates events ([`event`]) and subscriptions
//!   ([`subscriptions`]), and hands events to [`publish`], which adds them to a
//!   stream idempotently.
//! - [`worker`]: a consumer in the group; reads entries, finds their target
//!   subscriptions ([`routing`]), pushes with [`push`] (encryption, VAPID,
//!   classification of the answer) and acknowledges.
//! - [`sink`]: a local push service that verifies and decrypts like a browser,
//!   for development, tests and benchmarks.
//! - [`up`]: every role in one process, with an [`embedded_redis`] when no Redis
//!   is configured.
//!
//! Around them: [`config`] (settings), [`keys`] (every Redis key name), [`db`]
//! (connections), [`shutdown`] (signals and stopping), [`telemetry`] (logs).

pub mod alerts;
pub mod config;
pub mod db;
pub mod dead_letter;
pub mod embedded_redis;
pub mod event;
pub mod ingest;
pub mod keys;
pub mod ordering;
pub mod publish;
pub mod push;
pub mod reclaimer;
pub mod retention;
pub mod retry;
pub mod routing;
pub mod shutdown;
pub mod sink;
pub mod spool;
pub mod stats;
pub mod subscriptions;
pub mod telemetry;
pub mod up;
pub mod worker;
