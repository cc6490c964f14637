//! The way in. In: `POST /v1/events` (and `herald publish`). Out: one stream
//! entry per event in its partition's stream (or, while Redis cannot take
//! it, a record in the local spool that is drained into the stream later).
//!
//! - [`api`]: the HTTP API (events, subscriptions, health).
//! - [`publish`]: the idempotent publish script, a batch per round trip.
//! - [`spool`]: the fsync'd local spool and its drainer.

pub mod api;
pub mod publish;
pub mod spool;
