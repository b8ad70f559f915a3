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

    fn replaces_failures_at_once(&self) -> bool {
        true
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
        if let Some(rollout) = input.rollout {
            let strategy = desired.strategy;
            let waited = input.now.saturating_duration_since(rollout.started);
            // Any rollout not complete by its deadline has failed, even one that has
            // already replaced every old instance with new ones that do not work.
            let overdue = waited >= strategy.progress_deadline && !rollout_complete(input);
            if strategy.auto_rollback && !rollout.rolled_back && overdue {
                actions.push(Action::RollBack {
                    message: format!(
                        "revision {} did not become available within {:?}",
                        input.revision, strategy.progress_deadline
                    ),
                });
                return;
            }
            if rolling(input) {
                roll(input, actions);
            }
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
                    reason: reason.kind.name().to_string(),
                    // Only what a snapshot carries (name and exit code), so that a
                    // plugin given the snapshot can say exactly the same.
                    message: format!("slot {slot} ended with {reason}; retrying cannot help"),
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
                        reason
                    ),
                });
                return;
            }
            let consecutive = obs.map_or(0, |o| o.consecutive_ends);
            let due = crate::clock::after(*ended_at, desired.backoff.delay(consecutive));
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

/// Whether instances of another revision remain, or successors are starting.
fn rolling(input: &PolicyInput<'_>) -> bool {
    input
        .slots
        .iter()
        .take(input.desired.replicas as usize)
        .any(|s| {
            s.successor.is_some()
                || s.instance
                    .as_ref()
                    .is_some_and(|i| *i.revision != *input.revision)
        })
}

/// Every desired slot has a ready instance of the current revision and nothing else runs.
fn rollout_complete(input: &PolicyInput<'_>) -> bool {
    let replicas = input.desired.replicas as usize;
    let ready_current = input
        .slots
        .iter()
        .take(replicas)
        .filter(|s| {
            s.instance
                .as_ref()
                .is_some_and(|i| i.ready && !i.stopping && *i.revision == *input.revision)
        })
        .count();
    !rolling(input) && ready_current == replicas
}

/// One step of a rolling update: start successors within `maxSurge`, hand a slot over once
/// its successor is ready, and replace in place within `maxUnavailable`.
fn roll(input: &PolicyInput<'_>, actions: &mut Vec<Action>) {
    let desired = input.desired;
    let replicas = desired.replicas as usize;
    let (surge, max_unavailable) = desired.strategy.resolve(desired.replicas);
    let serving =
        |i: &Option<super::InstanceObservation>| i.as_ref().is_some_and(|i| i.ready && !i.stopping);
    let slots = &input.slots[..input.slots.len().min(replicas)];
    let mut in_flight = slots
        .iter()
        .filter(|s| s.successor.as_ref().is_some_and(|i| !i.stopping))
        .count();
    let mut unavailable = replicas
        - slots
            .iter()
            .filter(|s| serving(&s.instance) || serving(&s.successor))
            .count();
    let mut soonest: Option<std::time::Duration> = None;
    for (index, slot) in slots.iter().enumerate() {
        let Some(old) = &slot.instance else { continue };
        if old.stopping || *old.revision == *input.revision {
            continue;
        }
        let slot_no = index as u32;
        match &slot.successor {
            Some(successor) if successor.ready => {
                let up = input.now.saturating_duration_since(successor.since);
                let min_ready = desired.strategy.min_ready;
                if up >= min_ready {
                    actions.push(Action::Stop {
                        slot: slot_no,
                        cause: StopCause::Replaced,
                    });
                } else {
                    let wait = min_ready - up;
                    soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                }
            }
            Some(_) => {}
            None if !old.ready => actions.push(Action::Stop {
                slot: slot_no,
                cause: StopCause::Replaced,
            }),
            None if (in_flight as u32) < surge => {
                // A successor that crashed waits out the slot's back-off before the next.
                let wait = slot
                    .last_end
                    .as_ref()
                    .map_or(std::time::Duration::ZERO, |(at, _)| {
                        crate::clock::after(*at, desired.backoff.delay(slot.consecutive_ends))
                            .saturating_duration_since(input.now)
                    });
                if wait.is_zero() {
                    actions.push(Action::SpawnSuccessor { slot: slot_no });
                    in_flight += 1;
                } else {
                    soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                }
            }
            None if (unavailable as u32) < max_unavailable => {
                actions.push(Action::Stop {
                    slot: slot_no,
                    cause: StopCause::Replaced,
                });
                unavailable += 1;
            }
            None => {}
        }
    }
    if let Some(wait) = soonest {
        actions.push(Action::RequeueAfter(wait));
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
        decide_rollout(spec, slots, restarts, now, None)
    }

    fn decide_rollout(
        spec: &WorkloadSpec,
        slots: &[SlotObservation],
        restarts: &[Instant],
        now: Instant,
        rollout: Option<crate::policy::RolloutObservation>,
    ) -> Vec<Action> {
        let input = PolicyInput {
            workload: "w",
            desired: spec,
            revision: "new",
            rollout,
            slots,
            recent_restarts: restarts,
            failed: false,
            now,
        };
        let mut actions = Vec::new();
        ReplicaPolicy.reconcile(&input, &mut actions);
        actions
    }

    fn instance(revision: &str, now: Instant, ready: bool) -> InstanceObservation {
        InstanceObservation {
            id: "x".into(),
            revision: revision.into(),
            since: now,
            stopping: false,
            ready,
        }
    }

    fn live(now: Instant) -> SlotObservation {
        SlotObservation {
            instance: Some(instance("new", now, true)),
            ..Default::default()
        }
    }

    fn old(now: Instant) -> SlotObservation {
        SlotObservation {
            instance: Some(instance("old", now, true)),
            ..Default::default()
        }
    }

    #[test]
    fn a_rollout_surges_and_replaces_within_its_bounds() {
        let now = Instant::now();
        let mut spec = WorkloadSpec::new("c.wasm");
        spec.replicas = 4; // 25% / 25%: surge 1, unavailable 1
        let rollout = Some(crate::policy::RolloutObservation {
            started: now,
            rolled_back: false,
        });
        let slots = [old(now), old(now), old(now), old(now)];
        let actions = decide_rollout(&spec, &slots, &[], now, rollout);
        assert_eq!(
            actions,
            vec![
                Action::SpawnSuccessor { slot: 0 },
                Action::Stop {
                    slot: 1,
                    cause: StopCause::Replaced
                }
            ]
        );
        // A ready successor takes its slot over; one still starting is waited for.
        let mut handing = old(now);
        handing.successor = Some(instance("new", now, true));
        let mut waiting = old(now);
        waiting.successor = Some(instance("new", now, false));
        let actions = decide_rollout(
            &spec,
            &[handing, waiting, live(now), live(now)],
            &[],
            now,
            rollout,
        );
        assert_eq!(
            actions,
            vec![Action::Stop {
                slot: 0,
                cause: StopCause::Replaced
            }]
        );
    }

    #[test]
    fn a_rollout_past_its_deadline_rolls_back_once() {
        let now = Instant::now();
        let mut spec = WorkloadSpec::new("c.wasm");
        spec.replicas = 2;
        spec.strategy.progress_deadline = Duration::from_secs(5);
        let started = now - Duration::from_secs(6);
        let rollout = Some(crate::policy::RolloutObservation {
            started,
            rolled_back: false,
        });
        let actions = decide_rollout(&spec, &[old(now), old(now)], &[], now, rollout);
        assert!(
            matches!(&actions[..], [Action::RollBack { .. }]),
            "{actions:?}"
        );
        // A rollback is never rolled back again.
        let back = Some(crate::policy::RolloutObservation {
            started,
            rolled_back: true,
        });
        let actions = decide_rollout(&spec, &[old(now), old(now)], &[], now, back);
        assert!(
            actions
                .iter()
                .all(|a| !matches!(a, Action::RollBack { .. })),
            "{actions:?}"
        );
    }

    fn ended(at: Instant, reason: EndReason, consecutive: u32) -> SlotObservation {
        let reason = reason.summary();
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
