//! What did not settle at the first try. In: entries left pending in the
//! group, events waiting for their `deliver_at`, history past its retention.
//! Out: entries processed again through [`crate::deliver`] when their backoff
//! is up (or dead-lettered), due events moved into the stream, streams trimmed.
//!
//! - [`reclaimer`]: scans the pending entries and retries them with backoff.
//! - [`scheduler`]: moves delayed events into the stream when they are due.
//! - [`retention`]: trims streams, never past what a group still needs.

pub mod reclaimer;
pub mod retention;
pub mod scheduler;
