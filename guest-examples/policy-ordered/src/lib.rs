//! Ordered start (Kubernetes' `OrderedReady`): slot N is only started once slots 0..N are
//! all ready, and surplus slots are stopped one at a time from the highest down. Ended
//! instances are replaced at once. Useful for workloads whose replicas must come up in
//! sequence (a leader first, then followers).

wit_bindgen::generate!({ path: "../../wit/policy", world: "plugin" });

use exports::setpoint::policy::reconciler::Guest;
use setpoint::policy::types::{Action, Desired, Event, Observed};

struct Ordered;

impl Guest for Ordered {
    fn reconcile(desired: Desired, observed: Observed, _now_unix_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if observed.failed {
            return actions;
        }
        // Scale down one at a time, highest slot first, and only once nothing is stopping.
        let stopping = observed
            .slots
            .iter()
            .any(|s| s.instance.as_ref().is_some_and(|i| i.stopping));
        if let Some(top) = observed
            .slots
            .iter()
            .rev()
            .find(|s| s.index >= desired.replicas && s.instance.is_some())
        {
            if !stopping {
                actions.push(Action::Stop(top.index));
            }
            return actions;
        }
        for index in 0..desired.replicas {
            match observed
                .slots
                .get(index as usize)
                .and_then(|s| s.instance.as_ref())
            {
                Some(instance) if instance.ready => continue,
                Some(_) => {
                    actions.push(Action::Event(Event {
                        warning: false,
                        reason: "WaitingForReady".to_string(),
                        message: format!("slot {} waits for slot {index} to be ready", index + 1),
                    }));
                    return actions;
                }
                None => {
                    actions.push(Action::Spawn(index));
                    return actions;
                }
            }
        }
        actions
    }
}

export!(Ordered);
