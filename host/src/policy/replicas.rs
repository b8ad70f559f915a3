//! The built-in replica policy: keep `replicas` slots filled, replace ended instances as
//! the restart policy says, back off crash loops, enforce the restart budget, and stop
//! surplus slots on scale-down.

use super::{Action, Policy, PolicyInput};
use crate::manifest::RestartPolicy;
use crate::runtime::StopCause;

/// Keeps N instances alive with crash-loop back-off and an optional restart budget.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplicaPolicy;

impl Policy for ReplicaPolicy {
    fn name(&self) -> &str {
        "builtin/replicas"
    }

    fn reconcile(&self, input: &PolicyInput<'_>, actions: &mut Vec<Action>) {
        let desired = input.desired;
        // Surplus slots are stopped whatever else happens.
        for (slot, obs) in input
            .slots
            .iter()
            .enumerate()
            .skip(desired.replicas as usize)
        {
            if obs.instance.as_ref().is_some_and(|i| !i.stopping) {
                actions.push(Action::Stop {
                    slot: slot as u32,
                    cause: StopCause::ScaleDown,
                });
            }
        }
        if input.failed {
            return;
        }
        // Restarts already spent within the budget's window, if there is a budget.
        let budget_spent = desired.restart_budget.map(|budget| {
            let spent = input
                .recent_restarts
                .iter()
                .filter(|t| input.now.saturating_duration_since(**t) <= budget.window)
                .count();
            (budget, spent)
        });
        let mut soonest = None;
        for slot in 0..desired.replicas {
            let obs = input.slots.get(slot as usize);
            if obs.is_some_and(|o| o.instance.is_some()) {
                continue;
            }
            let Some((ended_at, reason)) = obs.and_then(|o| o.last_end.as_ref()) else {
                actions.push(Action::Spawn { slot });
                continue;
            };
            if reason.is_deterministic() {
                actions.push(Action::MarkFailed {
                    reason: reason.name().to_string(),
                    message: format!(
                        "slot {slot} ended with {}; retrying cannot help",
                        summary(reason)
                    ),
                });
                return;
            }
            let restart = match desired.restart_policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !reason.is_success(),
                RestartPolicy::Never => false,
            } || reason.is_host_stop();
            if !restart {
                continue;
            }
            if let Some((budget, spent)) = budget_spent
                && !reason.is_host_stop()
                && spent >= budget.max_restarts as usize
            {
                actions.push(Action::MarkFailed {
                    reason: "RestartBudgetExceeded".to_string(),
                    message: format!(
                        "{spent} restarts within {:?} spent the budget of {}; slot {slot} ended with {}",
                        budget.window,
                        budget.max_restarts,
                        summary(reason)
                    ),
                });
                return;
            }
            let consecutive = obs.map_or(0, |o| o.consecutive_ends);
            let due = *ended_at + desired.backoff.delay(consecutive);
            if due <= input.now {
                actions.push(Action::Spawn { slot });
            } else {
                actions.push(Action::Event {
                    warning: true,
                    reason: "BackOff".to_string(),
                    message: format!(
                        "slot {slot}: waiting {:?} before restart ({consecutive} ends in a row)",
                        desired.backoff.delay(consecutive)
                    ),
                });
                let wait = due - input.now;
                soonest = Some(soonest.map_or(wait, |s: std::time::Duration| s.min(wait)));
            }
        }
        if let Some(wait) = soonest {
            actions.push(Action::RequeueAfter(wait));
        }
    }
}

/// How an end is named in messages: only what a snapshot carries (name and exit code),
/// so that a plugin given the snapshot can say exactly the same.
fn summary(reason: &crate::runtime::EndReason) -> String {
    match reason {
        crate::runtime::EndReason::Exited { code } => format!("Exited ({code})"),
        other => other.name().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::manifest::{RestartBudget, WorkloadSpec};
    use crate::policy::{InstanceObservation, SlotObservation};
    use crate::runtime::EndReason;

    fn decide(
        spec: &WorkloadSpec,
        slots: &[SlotObservation],
        restarts: &[Instant],
        now: Instant,
    ) -> Vec<Action> {
        let input = PolicyInput {
            workload: "w",
            desired: spec,
            slots,
            recent_restarts: restarts,
            failed: false,
            now,
        };
        let mut actions = Vec::new();
        ReplicaPolicy.reconcile(&input, &mut actions);
        actions
    }

    fn live(now: Instant) -> SlotObservation {
        SlotObservation {
            instance: Some(InstanceObservation {
                id: "x".into(),
                since: now,
                stopping: false,
                ready: true,
            }),
            ..Default::default()
        }
    }

    fn ended(at: Instant, reason: EndReason, consecutive: u32) -> SlotObservation {
        SlotObservation {
            last_end: Some((at, reason)),
            consecutive_ends: consecutive,
            ..Default::default()
        }
    }

    #[test]
    fn fills_empty_slots_and_stops_surplus() {
        let now = Instant::now();
        let mut spec = WorkloadSpec::new("c.wasm");
        spec.replicas = 2;
        let actions = decide(
            &spec,
            &[live(now), SlotObservation::default(), live(now)],
            &[],
            now,
        );
        assert_eq!(
            actions,
            vec![
                Action::Stop {
                    slot: 2,
                    cause: StopCause::ScaleDown
                },
                Action::Spawn { slot: 1 }
            ]
        );
    }

    #[test]
    fn first_replacement_is_immediate_then_backs_off() {
        let now = Instant::now();
        let spec = WorkloadSpec::new("c.wasm");
        let crash = EndReason::Exited { code: 1 };
        assert_eq!(
            decide(&spec, &[ended(now, crash.clone(), 1)], &[], now),
            vec![Action::Spawn { slot: 0 }]
        );
        let actions = decide(&spec, &[ended(now, crash, 3)], &[], now);
        assert!(matches!(&actions[0], Action::Event { reason, .. } if reason == "BackOff"));
        assert_eq!(actions[1], Action::RequeueAfter(Duration::from_millis(20)));
    }

    #[test]
    fn on_failure_leaves_successful_slots_alone() {
        let now = Instant::now();
        let mut spec = WorkloadSpec::new("c.wasm");
        spec.restart_policy = RestartPolicy::OnFailure;
        assert!(
            decide(
                &spec,
                &[ended(now, EndReason::Exited { code: 0 }, 1)],
                &[],
                now
            )
            .is_empty()
        );
        spec.restart_policy = RestartPolicy::Never;
        assert!(
            decide(
                &spec,
                &[ended(now, EndReason::Exited { code: 1 }, 1)],
                &[],
                now
            )
            .is_empty()
        );
    }

    #[test]
    fn budget_exceeded_marks_failed() {
        let now = Instant::now();
        let mut spec = WorkloadSpec::new("c.wasm");
        spec.restart_budget = Some(RestartBudget {
            max_restarts: 2,
            window: Duration::from_secs(10),
        });
        let restarts = [now, now, now];
        let actions = decide(
            &spec,
            &[ended(now, EndReason::Exited { code: 1 }, 3)],
            &restarts,
            now,
        );
        assert!(
            matches!(&actions[..], [Action::MarkFailed { reason, .. }] if reason == "RestartBudgetExceeded")
        );
        // Old restarts fall out of the window.
        let later = now + Duration::from_secs(11);
        let actions = decide(
            &spec,
            &[ended(now, EndReason::Exited { code: 1 }, 1)],
            &restarts,
            later,
        );
        assert_eq!(actions, vec![Action::Spawn { slot: 0 }]);
    }
}
