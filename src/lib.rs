//! herald: a Redis Streams notification worker. Events in, Web Push out,
//! nothing lost on the way.
//!
//! The folders follow the way of an event:
//!
//! - [`intake`]: events come in. The HTTP API validates them and publishes
//!   them into a partition's stream idempotently, or into the local spool
//!   while Redis cannot take them.
//! - [`deliver`]: a worker in the consumer group reads an entry, claims it,
//!   routes it to its devices, pushes to each, settles each device's outcome
//!   and acknowledges the entry.
//! - [`recover`]: what did not settle is retried with backoff by the
//!   reclaimer; delayed events are moved into the stream when due; retention
//!   trims history.
//! - [`operate`]: how herald runs and is looked after: the roles of the
//!   binary, health and metrics listeners, `herald stats`, `herald dlq`,
//!   replay, audit, and a local push service (the sink).
//!
//! Below all of them, [`shared`]: what every stage uses (settings, the event,
//! subscriptions, key names, the Redis handle, stream entries, the dead-letter
//! stream, metrics, logs, stopping).

pub mod deliver;
pub mod intake;
pub mod operate;
pub mod recover;
pub mod shared;
