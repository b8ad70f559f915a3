//! A canary rollout. On a new revision it replaces `canary` slots first (config, default
//! 1), then watches them for `analysisMs` (default 5000): if they stay ready and none of
//! them ends, the rest of the slots are replaced one at a time; if a canary ends or is not
//! ready when the analysis is over, the rollout is rolled back. Outside a rollout it keeps
//! the slots filled and stops the surplus.
//!
//! ```yaml
//! policy:
//!   plugin: policy_canary.wasm
//!   config: {canary: 1, analysisMs: 5000}
//! ```

wit_bindgen::generate!({ path: "../../wit/policy", world: "plugin" });

use exports::setpoint::policy::reconciler::Guest;
use setpoint::policy::types::{Action, Desired, Event, Observed, Slot};

struct Canary;

fn event(reason: &str, message: String) -> Action {
    Action::Event(Event {
        warning: false,
        reason: reason.to_string(),
        message,
    })
}

fn current(slot: &Slot) -> bool {
    slot.instance
        .as_ref()
        .is_some_and(|i| i.current && !i.stopping)
}

impl Guest for Canary {
    fn reconcile(desired: Desired, observed: Observed, _now_unix_ms: u64) -> Vec<Action> {
        let config: serde_json::Value = serde_json::from_str(&desired.config).unwrap_or_default();
        let canary = config
            .get("canary")
            .and_then(|v| v.as_u64())
            .unwrap_or(1)
            .max(1) as usize;
        let analysis_ms = config
            .get("analysisMs")
            .and_then(|v| v.as_u64())
            .unwrap_or(5000);
        let replicas = desired.replicas as usize;
        let slots = &observed.slots[..observed.slots.len().min(replicas)];
        let mut actions = Vec::new();
        for slot in observed.slots.iter().skip(replicas) {
            if slot.instance.as_ref().is_some_and(|i| !i.stopping) {
                actions.push(Action::Stop(slot.index));
            }
        }
        for index in 0..desired.replicas {
            if observed
                .slots
                .get(index as usize)
                .is_none_or(|s| s.instance.is_none())
            {
                actions.push(Action::Spawn(index));
            }
        }
        let Some(rollout) = observed.rollout.filter(|r| !r.rolled_back) else {
            return actions;
        };
        // Hand a slot over as soon as its successor is ready; start one successor at a time.
        if let Some(slot) = slots.iter().find(|s| s.successor.is_some()) {
            if slot.successor.as_ref().is_some_and(|s| s.ready)
                && slot.instance.as_ref().is_some_and(|i| !i.stopping)
            {
                actions.push(Action::Stop(slot.index));
            }
            return actions;
        }
        let updated: Vec<&Slot> = slots
            .iter()
            .filter(|s| current(s))
            .collect();
        let outdated = slots.iter().find(|s| {
            s.instance
                .as_ref()
                .is_some_and(|i| !i.current && !i.stopping)
        });
        let Some(next) = outdated else { return actions };
        if updated.len() >= canary.min(replicas) {
            // The canaries are in: judge them before going on.
            let youngest = updated
                .iter()
                .filter_map(|s| s.instance.as_ref())
                .map(|i| i.age_ms)
                .min()
                .unwrap_or(0);
            let healthy = updated
                .iter()
                .all(|s| s.instance.as_ref().is_some_and(|i| i.ready));
            let ended = updated.iter().any(|s| {
                s.last_end
                    .as_ref()
                    .is_some_and(|e| !e.host_stop && e.ago_ms <= youngest)
            });
            if ended || (youngest >= analysis_ms && !healthy) {
                actions.push(Action::RollBack(format!(
                    "canary of revision {} failed its analysis",
                    desired.revision
                )));
                return actions;
            }
            if youngest < analysis_ms {
                actions.push(event(
                    "CanaryAnalysis",
                    format!(
                        "{} canary instance(s) of {} under analysis",
                        updated.len(),
                        desired.revision
                    ),
                ));
                actions.push(Action::RequeueAfterMs(analysis_ms - youngest));
                return actions;
            }
            if rollout.started_ago_ms >= analysis_ms && updated.len() == canary.min(replicas) {
                actions.push(event(
                    "CanaryPromoted",
                    format!("revision {} passed its analysis", desired.revision),
                ));
            }
        }
        actions.push(Action::SpawnSuccessor(next.index));
        actions
    }
}

export!(Canary);
