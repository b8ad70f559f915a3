//! The conversion between the policy's snapshot records and the WIT records a plugin
//! speaks (the plugin host in [`crate::runtime::plugin`] knows only the latter).

use super::snapshot::{ActionRecord, InstanceSnapshot, Snapshot};
use crate::runtime::plugin::t;

/// Asks a plugin's `instance` to decide on `snapshot`: the records it returns, not yet
/// checked (see [`super::validate`]).
pub async fn ask_plugin(
    instance: &mut crate::runtime::plugin::PluginInstance,
    snapshot: &Snapshot,
) -> Result<Vec<ActionRecord>, crate::runtime::plugin::PluginFailure> {
    let (desired, observed) = to_wit(snapshot);
    let actions = instance
        .decide(&desired, &observed, snapshot.now_unix_ms)
        .await?;
    Ok(actions.into_iter().map(from_wit).collect())
}

/// The records a plugin is shown for `s`.
pub(super) fn to_wit(s: &Snapshot) -> (t::Desired, t::Observed) {
    let d = &s.desired;
    let desired = t::Desired {
        workload: d.workload.clone(),
        revision: d.revision.clone(),
        replicas: d.replicas,
        restart_policy: match d.restart_policy {
            crate::manifest::RestartPolicy::Always => t::RestartPolicy::Always,
            crate::manifest::RestartPolicy::OnFailure => t::RestartPolicy::OnFailure,
            crate::manifest::RestartPolicy::Never => t::RestartPolicy::Never,
        },
        backoff: t::Backoff {
            initial_ms: d.backoff.initial_ms,
            max_ms: d.backoff.max_ms,
            reset_after_ms: d.backoff.reset_after_ms,
        },
        restart_budget: d.restart_budget.map(|b| t::RestartBudget {
            max_restarts: b.max_restarts,
            window_ms: b.window_ms,
        }),
        config: d.config.to_string(),
        strategy: t::Strategy {
            recreate: d.strategy.recreate,
            max_surge: d.strategy.max_surge,
            max_unavailable: d.strategy.max_unavailable,
            progress_deadline_ms: d.strategy.progress_deadline_ms,
            auto_rollback: d.strategy.auto_rollback,
            min_ready_ms: d.strategy.min_ready_ms,
        },
    };
    let instance = |i: &InstanceSnapshot| t::Instance {
        id: i.id.clone(),
        revision: i.revision.clone(),
        age_ms: i.age_ms,
        ready: i.ready,
        stopping: i.stopping,
    };
    let slots = s
        .observed
        .slots
        .iter()
        .map(|slot| t::Slot {
            index: slot.index,
            instance: slot.instance.as_ref().map(instance),
            successor: slot.successor.as_ref().map(instance),
            restarts: slot.restarts,
            consecutive_ends: slot.consecutive_ends,
            last_end: slot.last_end.as_ref().map(|e| t::End {
                reason: e.reason.name().to_string(),
                exit_code: e.exit_code,
                success: e.success(),
                host_stop: e.host_stop(),
                deterministic: e.deterministic(),
                ago_ms: e.ago_ms,
            }),
        })
        .collect();
    let observed = t::Observed {
        slots,
        recent_restarts_ago_ms: s.observed.recent_restarts_ago_ms.clone(),
        failed: s.observed.failed,
        rollout: s.observed.rollout.map(|r| t::Rollout {
            started_ago_ms: r.started_ago_ms,
            rolled_back: r.rolled_back,
        }),
    };
    (desired, observed)
}

/// What a plugin's action means, before it is checked.
pub(super) fn from_wit(a: t::Action) -> ActionRecord {
    match a {
        t::Action::Spawn(slot) => ActionRecord::Spawn { slot },
        t::Action::Stop(slot) => ActionRecord::Stop { slot },
        t::Action::SpawnSuccessor(slot) => ActionRecord::SpawnSuccessor { slot },
        t::Action::RollBack(message) => ActionRecord::RollBack { message },
        t::Action::RequeueAfterMs(ms) => ActionRecord::RequeueAfter { ms },
        t::Action::Event(e) => ActionRecord::Event {
            warning: e.warning,
            reason: e.reason,
            message: e.message,
        },
        t::Action::MarkFailed(f) => ActionRecord::MarkFailed {
            reason: f.reason,
            message: f.message,
        },
    }
}
