//! Makes the controller's own rollbacks durable. When a rollout misses its
//! `progressDeadline`, the controller goes back to the previous revision by itself; the
//! store would still name the abandoned revision, and a restart would roll it out (and
//! back) again. So the daemon records such a rollback the way `rollout undo` does: the
//! apply that defined the revision now running becomes the workload's apply again, with
//! the replica count the workload has now.
//!
//! Level-triggered: on every `RolledBack` event (and when events were missed), each
//! workload whose running revision differs from the newest one its history records, and
//! that its history knows, is recorded. Only the controller changes a revision outside
//! an apply, and applies hold the same write lock, so the check cannot race one.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use super::desired::Desired;
use crate::status::reason;

/// Follows the host's events until `stop`, recording rollbacks as they happen.
pub(super) async fn record_rollbacks(
    desired: Arc<Desired>,
    mut events: broadcast::Receiver<crate::Event>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = stop.wait_for(|s| *s) => return,
        };
        match event {
            Ok(e) if e.reason == reason::ROLLED_BACK => {
                desired.write().await.record_rollbacks().await;
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                desired.write().await.record_rollbacks().await;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
