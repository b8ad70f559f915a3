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

use super::api::ApiState;
use super::store::ApplyRecord;

/// Follows the host's events until `stop`, recording rollbacks as they happen.
pub(super) async fn record_rollbacks(
    state: Arc<ApiState>,
    mut events: broadcast::Receiver<crate::Event>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = stop.wait_for(|s| *s) => return,
        };
        match event {
            Ok(e) if e.reason == "RolledBack" => sync(&state).await,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => sync(&state).await,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Records every rollback the store does not know of yet.
async fn sync(state: &ApiState) {
    let _writing = state.writes.lock().await;
    let status = state.host.status().await;
    for w in status.workloads.iter().filter(|w| w.kind == "Workload") {
        if let Err(e) =
            tokio::task::block_in_place(|| record(state, &w.name, &w.revision, w.desired))
        {
            tracing::warn!(workload = %w.name, "cannot record the rollback: {e}");
        }
    }
}

/// Makes the apply of `revision` the current one of `name` again, at `replicas`, unless
/// the store already names it.
fn record(state: &ApiState, name: &str, revision: &str, replicas: u32) -> Result<(), String> {
    let history = state.store.history(name).map_err(|e| e.to_string())?;
    if history.last().is_none_or(|last| last.revision == revision) {
        return Ok(());
    }
    let Some(entry) = history.iter().rev().find(|e| e.revision == revision) else {
        return Ok(());
    };
    let Some(old) = state
        .store
        .apply_record(entry.apply)
        .map_err(|e| e.to_string())?
    else {
        return Err(format!(
            "the apply of revision {revision} is no longer stored"
        ));
    };
    let record = ApplyRecord {
        applied_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        replicas: [(name.to_string(), replicas)].into(),
        ..old
    };
    state
        .store
        .record_apply(
            &record,
            &[name.to_string()],
            &[(name.to_string(), revision.to_string())],
        )
        .map_err(|e| e.to_string())?;
    tracing::info!(
        workload = name,
        "the rollback to revision {revision} is recorded"
    );
    Ok(())
}
