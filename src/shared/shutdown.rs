//! Stopping: SIGINT/SIGTERM cancel one token that every loop watches; the
//! caller then waits for its tasks with a grace period. A second signal exits
//! at once.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cancels `token` on the first SIGINT or SIGTERM; exits the process on the second.
pub fn on_signals(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping: finishing in-flight work"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping: finishing in-flight work"),
        }
        token.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting now without waiting");
        std::process::exit(130);
    });
    Ok(())
}

/// Waits for every tracked task, at most `grace`; says whether they all ended.
pub async fn wait(tracker: &TaskTracker, grace: Duration) -> bool {
    tracker.close();
    match tokio::time::timeout(grace, tracker.wait()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(
                still_running = tracker.len(),
                grace = %humantime::format_duration(grace),
                "grace period over; unfinished entries stay pending for a reclaim"
            );
            false
        }
    }
}
