//! What every stage uses, and nothing stage-specific: settings ([`config`]),
//! the event and its stream entry ([`event`], [`stream`]), subscriptions and
//! the safety of their endpoints ([`subscriptions`], [`endpoint`]), every Redis
//! key name ([`keys`]), the Redis handle ([`db`]), the retry policy and the
//! horizons derived from it ([`retry`]), the dead-letter stream and its alert
//! ([`dead_letter`], [`alerts`]), metrics, logs and health ([`metrics`],
//! [`telemetry`], [`health`]), and stopping ([`shutdown`]).

pub mod alerts;
pub mod config;
pub mod db;
pub mod dead_letter;
pub mod endpoint;
pub mod event;
pub mod health;
pub mod keys;
pub mod metrics;
pub mod notification;
pub mod retry;
pub mod shutdown;
pub mod stream;
pub mod subscriptions;
pub mod telemetry;
