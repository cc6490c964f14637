//! The alert webhook: dead letters are counted by reason and summarised in at
//! most one POST per `alerts.interval`. Sending never blocks processing: the
//! worker only bumps a counter; a slow or failing webhook only delays its own
//! summaries.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::shared::config::AlertSettings;
use crate::shared::event::format_time;

/// Where dead letters are reported. Cheap to clone; a no-op without a webhook.
#[derive(Clone, Default)]
pub struct Alerts {
    tx: Option<mpsc::Sender<String>>,
    dropped: Arc<AtomicU64>,
}

impl Alerts {
    /// Counts one dead letter for the next summary. Never waits.
    pub fn dead_letter(&self, reason: &str) {
        if let Some(tx) = &self.tx {
            if tx.try_send(reason.to_string()).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The task that sends the summaries.
pub struct AlertLoop {
    rx: mpsc::Receiver<String>,
    dropped: Arc<AtomicU64>,
    url: String,
    interval: Duration,
    client: reqwest::Client,
}

/// The reporting side and, when a webhook is configured, the loop to run.
pub fn channel(settings: &AlertSettings) -> (Alerts, Option<AlertLoop>) {
    if settings.webhook_url.is_empty() {
        return (Alerts::default(), None);
    }
    let (tx, rx) = mpsc::channel(10_000);
    let dropped = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    (
        Alerts {
            tx: Some(tx),
            dropped: dropped.clone(),
        },
        Some(AlertLoop {
            rx,
            dropped,
            url: settings.webhook_url.expose().to_string(),
            interval: settings.interval,
            client,
        }),
    )
}

impl AlertLoop {
    /// Sends a summary each interval that saw dead letters, until shutdown (then a last one).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut since = Utc::now();
        loop {
            let stopping = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tokio::time::sleep(self.interval) => false,
            };
            let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
            while let Ok(reason) = self.rx.try_recv() {
                *by_reason.entry(reason).or_default() += 1;
            }
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                *by_reason.entry("uncounted".into()).or_default() += dropped;
            }
            let total: u64 = by_reason.values().sum();
            let until = Utc::now();
            if total > 0 {
                let body = json!({
                    "source": "herald",
                    "kind": "dead_letters",
                    "dead_letters": total,
                    "by_reason": by_reason,
                    "since": format_time(since),
                    "until": format_time(until),
                    "hint": "inspect with `herald dlq list`",
                });
                match self.client.post(&self.url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => tracing::warn!(
                        status = r.status().as_u16(),
                        dead_letters = total,
                        "alert webhook refused the summary"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e.without_url(), dead_letters = total, "alert webhook unreachable")
                    }
                }
            }
            since = until;
            if stopping {
                return;
            }
        }
    }
}
