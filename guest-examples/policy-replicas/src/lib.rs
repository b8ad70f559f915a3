//! setpoint's built-in replica policy, written again as a plugin: keep `replicas` slots
//! filled, replace ended instances as the restart policy says, back off crash loops,
//! enforce the restart budget, stop surplus slots. A differential test proves that it
//! decides exactly like the built-in on thousands of generated snapshots.

use std::time::Duration;

wit_bindgen::generate!({ path: "../../wit/policy", world: "plugin" });

use exports::setpoint::policy::reconciler::Guest;
use setpoint::policy::types::{Action, Desired, End, Event, Failure, Observed, RestartPolicy};

struct Replicas;

fn delay(desired: &Desired, consecutive: u32) -> Duration {
    if consecutive <= 1 {
        return Duration::ZERO;
    }
    let doublings = (consecutive - 2).min(40).min(31);
    let initial = Duration::from_millis(desired.backoff.initial_ms);
    initial.saturating_mul(1u32 << doublings).min(Duration::from_millis(desired.backoff.max_ms))
}

fn summary(end: &End) -> String {
    match (end.reason.as_str(), end.exit_code) {
        ("Exited", Some(code)) => format!("Exited ({code})"),
        (reason, _) => reason.to_string(),
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
        let budget = desired.restart_budget.map(|b| {
            let spent = observed.recent_restarts_ago_ms.iter().filter(|ago| **ago <= b.window_ms).count();
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
                    reason: end.reason.clone(),
                    message: format!("slot {index} ended with {}; retrying cannot help", summary(end)),
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
