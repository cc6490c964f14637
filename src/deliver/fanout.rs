//! Pushing an event to each of its devices, and what became of each.

use std::collections::HashMap;

use super::*;

/// How one target device of an event fared.
pub(super) enum TargetResult {
    Done(&'static str),
    Failed { sub: String, report: PushReport },
}

impl Worker {
    /// Pushes to one device and settles its fate: a marker on success or gone, a
    /// dead letter for a permanent refusal, a failure to retry otherwise.
    pub(super) async fn push_one(
        &self,
        entry: &Entry,
        fields: &HashMap<String, String>,
        event: &Event,
        sub: &Subscription,
        outcomes_key: &str,
    ) -> TargetResult {
        let report = {
            let _permit = self
                .push_permits
                .acquire()
                .await
                .expect("the semaphore is never closed");
            self.pusher.push(sub, event).await
        };
        let marker = match &report.outcome {
            Outcome::Delivered => {
                crate::shared::metrics::delivery_latency(&entry.id);
                "delivered"
            }
            Outcome::Gone => {
                if let Err(e) = self.store.delete(&sub.id).await {
                    let report = PushReport::unsent(format!(
                        "subscription is gone but could not be deleted: {e:#}"
                    ));
                    return TargetResult::Failed {
                        sub: sub.id.clone(),
                        report,
                    };
                }
                tracing::info!(subscription = %sub.id, status = ?report.status, "subscription gone; deleted");
                "gone"
            }
            Outcome::DeadLetter { reason } => {
                let why = DeadLetter {
                    reason: reason.to_string(),
                    last_error: report.error.clone(),
                    last_status: report.status,
                    attempts: entry.deliveries,
                    subscription: Some(sub.id.clone()),
                };
                return match self.dead_letter_device(entry, fields, &why).await {
                    Ok(_) => TargetResult::Done("dead"),
                    Err(e) => TargetResult::Failed {
                        sub: sub.id.clone(),
                        report: PushReport::unsent(format!("cannot dead-letter: {e:#}")),
                    },
                };
            }
            Outcome::Retry { .. } => {
                tracing::warn!(subscription = %sub.id, status = ?report.status, held = report.held, error = report.error.as_deref().unwrap_or(""), "push not delivered");
                return TargetResult::Failed {
                    sub: sub.id.clone(),
                    report,
                };
            }
        };
        // Right after the push service's answer, so a retry never pushes this device again.
        if let Err(e) = self.mark(outcomes_key, &sub.id, marker).await {
            tracing::warn!(subscription = %sub.id, error = %format!("{e:#}"), "cannot write the outcome marker; a retry may push this device again");
        }
        TargetResult::Done(marker)
    }
}
