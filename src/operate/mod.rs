//! Running and looking after herald. In: the command line and the operator's
//! questions. Out: the roles running, and answers.
//!
//! - [`roles`]: the roles as the binary runs them (`herald up`, `api`,
//!   `worker`, `reclaimer`, `audit`), with an [`embedded_redis`] for the
//!   quickstart.
//! - [`admin`]: the health and metrics listener of the worker, reclaimer and audit.
//! - [`console`]: the operators' web page (`/console`) and the `/v1/admin/…` API it calls.
//! - [`demo`]: `/demo/`, a page and a service worker that show herald's pushes in a browser.
//! - [`stats`]: `herald stats`, and the gauges sampled from Redis.
//! - [`dlq`]: `herald dlq list / show / replay / purge`.
//! - [`replay`]: `herald replay`, history processed again.
//! - [`audit`]: `herald audit`, a second consumer group writing every event as a JSON line.
//! - [`sink`]: a local push service that verifies and decrypts like a browser.

pub mod admin;
pub mod audit;
pub mod console;
pub mod demo;
pub mod dlq;
pub mod embedded_redis;
pub mod replay;
pub mod roles;
pub mod sink;
pub mod stats;
