//! Makes failure verdicts durable. A workload marked `Failed` (its restart budget
//! spent, or its policy's verdict) must still be failed after the daemon restarts: a
//! restart is not a way to un-fail it, `rollout restart` and a new revision are. So the
//! daemon records each verdict in its store, and clears it when the workload is no
//! longer failed; the replay at start hands the verdicts back to the host.
//!
//! Level-triggered: after events (at most one check per [`SETTLE`], so a crash loop's
//! stream of events costs a few status reads a second), and once more on a clean stop,
//! the store is made to match what the host's status says is failed (a `kill -9`
//! within [`SETTLE`] of a verdict may lose it). `rollout restart` and delete clear their
//! workload's record themselves, under the write lock, before they answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::desired::Desired;

/// How long events settle before the store is compared with the status.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Follows the host's events until `stop`, recording failure verdicts as they change.
pub(super) async fn record_failures(
    desired: Arc<Desired>,
    mut events: broadcast::Receiver<crate::Event>,
    mut stop: watch::Receiver<bool>,
) {
    // What the store holds may predate this start (a verdict cleared meanwhile).
    desired.write().await.record_failures().await;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = stop.wait_for(|s| *s) => break,
        };
        if let Err(broadcast::error::RecvError::Closed) = event {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(SETTLE) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        // Whatever came meanwhile is covered by the check.
        while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = events.try_recv() {}
        desired.write().await.record_failures().await;
    }
    // A clean stop records what the last events changed (the host still runs).
    desired.write().await.record_failures().await;
}
