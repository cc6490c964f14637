//! The way in. In: `POST /v1/events` (and `herald publish`). Out: one stream
//! entry per event in its partition's stream (or, while Redis cannot take
//! it, a record in the local spool that is drained into the stream later).
//!
//! - [`api`]: the HTTP API (events, subscriptions, health).
//! - [`auth`]: who is calling (service and subscriber tokens) and what they may do.
//! - [`limits`]: request and event rates per credential.
//! - [`publish`]: the idempotent publish script, a batch per round trip.
//! - [`spool`]: the fsync'd local spool and its drainer.

pub mod api;
pub mod auth;
pub mod limits;
pub mod publish;
pub mod spool;
