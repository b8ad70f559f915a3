//! setpoint's built-in replica policy, written again as a plugin: keep `replicas` slots
//! filled, replace ended instances as the restart policy says, back off crash loops,
//! enforce the restart budget, stop surplus slots. A differential test proves that it
//! decides exactly like the built-in on thousands of generated snapshots.

use std::time::Duration;

wit_bindgen::generate!({ path: "../../wit/policy", world: "plugin" });

use exports::setpoint::policy::reconciler::Guest;
use setpoint::policy::types::{
    Action, Desired, End, EndReason, Event, Failure, Instance, Observed, RestartPolicy,
};

struct Replicas;

fn delay(desired: &Desired, consecutive: u32) -> Duration {
    if consecutive <= 1 {
        return Duration::ZERO;
    }
    let doublings = (consecutive - 2).min(40).min(31);
    let initial = Duration::from_millis(desired.backoff.initial_ms);
    initial
        .saturating_mul(1u32 << doublings)
        .min(Duration::from_millis(desired.backoff.max_ms))
}

/// Whether instances of another revision remain among the desired slots, or successors start.
fn rolling(desired: &Desired, observed: &Observed) -> bool {
    observed
        .slots
        .iter()
        .take(desired.replicas as usize)
        .any(|s| {
            s.successor.is_some()
                || s.instance
                    .as_ref()
                    .is_some_and(|i| !i.current)
        })
}

/// One step of a rolling update, exactly as the built-in takes it.
fn roll(desired: &Desired, observed: &Observed, actions: &mut Vec<Action>) {
    let replicas = desired.replicas as usize;
    let (surge, max_unavailable) =
        match (desired.strategy.max_surge, desired.strategy.max_unavailable) {
            (0, 0) => (0, 1),
            pair => pair,
        };
    let serving = |i: &Option<Instance>| i.as_ref().is_some_and(|i| i.ready && !i.stopping);
    let slots = &observed.slots[..observed.slots.len().min(replicas)];
    let mut in_flight = slots
        .iter()
        .filter(|s| s.successor.as_ref().is_some_and(|i| !i.stopping))
        .count();
    let mut unavailable = replicas
        - slots
            .iter()
            .filter(|s| serving(&s.instance) || serving(&s.successor))
            .count();
    let mut soonest: Option<Duration> = None;
    for slot in slots {
        let Some(old) = &slot.instance else { continue };
        if old.stopping || old.current {
            continue;
        }
        match &slot.successor {
            Some(successor) if successor.ready => {
                let (up, min_ready) = (successor.age_ms, desired.strategy.min_ready_ms);
                if up >= min_ready {
                    actions.push(Action::Stop(slot.index));
                } else {
                    let wait = Duration::from_millis(min_ready - up);
                    soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                }
            }
            Some(_) => {}
            None if !old.ready => actions.push(Action::Stop(slot.index)),
            None if (in_flight as u32) < surge => {
                let wait = slot.last_end.as_ref().map_or(Duration::ZERO, |end| {
                    delay(desired, slot.consecutive_ends)
                        .saturating_sub(Duration::from_millis(end.ago_ms))
                });
                if wait.is_zero() {
                    actions.push(Action::SpawnSuccessor(slot.index));
                    in_flight += 1;
                } else {
                    soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                }
            }
            None if (unavailable as u32) < max_unavailable => {
                actions.push(Action::Stop(slot.index));
                unavailable += 1;
            }
            None => {}
        }
    }
    if let Some(wait) = soonest {
        actions.push(Action::RequeueAfterMs(wait.as_millis() as u64));
    }
}

/// Every desired slot has a ready instance of the current revision and nothing else runs.
fn rollout_complete(desired: &Desired, observed: &Observed) -> bool {
    let ready_current = observed
        .slots
        .iter()
        .take(desired.replicas as usize)
        .filter(|s| {
            s.instance
                .as_ref()
                .is_some_and(|i| i.ready && !i.stopping && i.current)
        })
        .count();
    !rolling(desired, observed) && ready_current == desired.replicas as usize
}

/// The reason's name, as the host spells it in status and events.
fn name(reason: EndReason) -> &'static str {
    match reason {
        EndReason::Exited => "Exited",
        EndReason::Trapped => "Trapped",
        EndReason::OutOfMemory => "OutOfMemory",
        EndReason::CpuBudgetExceeded => "CpuBudgetExceeded",
        EndReason::StartFailed => "StartFailed",
        EndReason::InstantiationFailed => "InstantiationFailed",
        EndReason::ProbeFailed => "ProbeFailed",
        EndReason::ProbeTimeout => "ProbeTimeout",
        EndReason::WatchdogTimeout => "WatchdogTimeout",
        EndReason::RequestTimeout => "RequestTimeout",
        EndReason::Stopped => "Stopped",
    }
}

fn summary(end: &End) -> String {
    match (end.reason, end.exit_code) {
        (EndReason::Exited, Some(code)) => format!("Exited ({code})"),
        (reason, _) => name(reason).to_string(),
    }
}

impl Guest for Replicas {
    fn reconcile(desired: Desired, observed: Observed, _now_unix_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        for slot in observed.slots.iter().skip(desired.replicas as usize) {
            if slot.instance.as_ref().is_some_and(|i| !i.stopping) {
                actions.push(Action::Stop(slot.index));
            }
        }
        if observed.failed {
            return actions;
        }
        if let Some(rollout) = observed.rollout {
            let strategy = desired.strategy;
            let overdue = rollout.started_ago_ms >= strategy.progress_deadline_ms
                && !rollout_complete(&desired, &observed);
            if strategy.auto_rollback && !rollout.rolled_back && overdue {
                actions.push(Action::RollBack(format!(
                    "revision {} did not become available within {:?}",
                    desired.revision,
                    Duration::from_millis(strategy.progress_deadline_ms)
                )));
                return actions;
            }
            if rolling(&desired, &observed) {
                roll(&desired, &observed, &mut actions);
            }
        }
        let budget = desired.restart_budget.map(|b| {
            let spent = observed
                .recent_restarts_ago_ms
                .iter()
                .filter(|ago| **ago <= b.window_ms)
                .count();
            (b, spent)
        });
        let mut soonest: Option<u64> = None;
        for index in 0..desired.replicas {
            let slot = observed.slots.get(index as usize);
            if slot.is_some_and(|s| s.instance.is_some()) {
                continue;
            }
            let Some(end) = slot.and_then(|s| s.last_end.as_ref()) else {
                actions.push(Action::Spawn(index));
                continue;
            };
            if end.deterministic {
                actions.push(Action::MarkFailed(Failure {
                    reason: name(end.reason).to_string(),
                    message: format!(
                        "slot {index} ended with {}; retrying cannot help",
                        summary(end)
                    ),
                }));
                return actions;
            }
            let restart = match desired.restart_policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !end.success,
                RestartPolicy::Never => false,
            } || end.host_stop;
            if !restart {
                continue;
            }
            if let Some((b, spent)) = budget
                && !end.host_stop
                && spent >= b.max_restarts as usize
            {
                actions.push(Action::MarkFailed(Failure {
                    reason: "RestartBudgetExceeded".to_string(),
                    message: format!(
                        "{spent} restarts within {:?} spent the budget of {}; slot {index} ended with {}",
                        Duration::from_millis(b.window_ms),
                        b.max_restarts,
                        summary(end)
                    ),
                }));
                return actions;
            }
            let consecutive = slot.map_or(0, |s| s.consecutive_ends);
            let wait = delay(&desired, consecutive);
            let waited = Duration::from_millis(end.ago_ms);
            if waited >= wait {
                actions.push(Action::Spawn(index));
            } else {
                actions.push(Action::Event(Event {
                    warning: true,
                    reason: "BackOff".to_string(),
                    message: format!("slot {index}: waiting {wait:?} before restart ({consecutive} ends in a row)"),
                }));
                let left = (wait - waited).as_millis() as u64;
                soonest = Some(soonest.map_or(left, |s| s.min(left)));
            }
        }
        if let Some(ms) = soonest {
            actions.push(Action::RequeueAfterMs(ms));
        }
        actions
    }
}

export!(Replicas);
