//! The transition that carries out a decision: every action is checked against the
//! state first (a refused one becomes an event), then done. Rollbacks and the end of a
//! rollout are here too.

use std::sync::Arc;

use super::effects::{Ctx, Effect};
use super::state::{Failure, Kind, PreviousRevision, WorkloadState};
use crate::policy::{Action, InstanceObservation, RolloutObservation};
use crate::runtime::StopCause;
use crate::status::{EventType, reason};

/// How long an event a policy repeats word for word is said only once.
const REPEAT_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

impl WorkloadState {
    /// Checks and carries out `actions` (drained), which `decider` asked for.
    pub fn carry_out(
        &mut self,
        actions: &mut Vec<Action>,
        decider: &dyn Fn() -> String,
        ctx: &mut Ctx<'_>,
    ) {
        for action in actions.drain(..) {
            match self.refusal(&action, ctx) {
                Some(why) => {
                    let message = format!("{} asked to {why}", decider());
                    self.say(ctx, EventType::Warning, reason::ACTION_REFUSED, message);
                }
                None => self.execute(action, ctx),
            }
        }
    }

    /// Why `action` may not be done now, if it may not.
    pub(super) fn refusal(&self, action: &Action, ctx: &mut Ctx<'_>) -> Option<String> {
        let replicas = self.spec.replicas;
        let slot_of = |slot: u32| self.slots.get(slot as usize);
        match action {
            Action::Spawn { slot } => {
                if *slot >= replicas {
                    Some(format!("spawn in slot {slot}: beyond {replicas} replicas"))
                } else if slot_of(*slot).is_some_and(|s| s.instance.is_some()) {
                    Some(format!("spawn in slot {slot}: the slot is occupied"))
                } else if self.failed.is_some() {
                    Some("spawn: the workload is marked failed".to_string())
                } else if self.job_finished() {
                    Some("spawn: the job has finished".to_string())
                } else {
                    ctx.capacity.refusal().map(|why| format!("spawn: {why}"))
                }
            }
            Action::SpawnSuccessor { slot } => {
                if *slot >= replicas {
                    Some(format!(
                        "start a successor in slot {slot}: beyond {replicas} replicas"
                    ))
                } else if slot_of(*slot)
                    .is_none_or(|s| s.instance.is_none() || s.successor.is_some())
                {
                    Some(format!(
                        "start a successor in slot {slot}: it needs a live instance and no successor"
                    ))
                } else if self.failed.is_some() {
                    Some("start a successor: the workload is marked failed".to_string())
                } else {
                    ctx.capacity
                        .refusal()
                        .map(|why| format!("start a successor: {why}"))
                }
            }
            Action::Stop { slot, .. } if slot_of(*slot).is_none_or(|s| s.instance.is_none()) => {
                Some(format!("stop slot {slot}: no live instance there"))
            }
            Action::RollBack { .. }
                if self.rollouts().is_none_or(|r| {
                    r.previous.is_none() || r.rollout.is_none_or(|r| r.rolled_back)
                }) =>
            {
                Some("roll back: there is no rollout to undo".to_string())
            }
            _ => None,
        }
    }

    /// Does an action already checked.
    fn execute(&mut self, action: Action, ctx: &mut Ctx<'_>) {
        match action {
            Action::Spawn { slot } => self.spawn(slot, false, None, ctx),
            Action::SpawnSuccessor { slot } => self.spawn(slot, true, None, ctx),
            Action::RollBack { message } => self.roll_back(message, ctx),
            Action::Stop { slot, cause } => {
                let obs = &mut self.slots[slot as usize];
                // A slot that goes away takes its successor with it.
                let successor = obs
                    .successor
                    .as_mut()
                    .filter(|_| cause == StopCause::ScaleDown);
                for i in obs.instance.as_mut().into_iter().chain(successor) {
                    stop(i, cause, ctx);
                }
            }
            Action::RequeueAfter(delay) => self.requeue(crate::clock::after(ctx.now, delay)),
            Action::Event {
                warning,
                reason,
                message,
            } => {
                // A policy says the same thing on every pass over a waiting slot (a
                // BackOff while other slots' events come and go): said once, as
                // Kubernetes aggregates a repeated event, until REPEAT_WINDOW has passed.
                let repeat = self.events.iter().rev().any(|e| {
                    e.reason == reason
                        && e.message == message
                        && ctx
                            .wall
                            .duration_since(e.time)
                            .is_ok_and(|age| age < REPEAT_WINDOW)
                });
                if !repeat {
                    let kind = if warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    };
                    self.say(ctx, kind, &reason, message);
                }
            }
            Action::MarkFailed { reason, message } => {
                self.say(ctx, EventType::Warning, &reason, message.clone());
                self.failed = Some(Failure {
                    reason,
                    message,
                    since: ctx.wall,
                });
            }
        }
    }

    /// Starts an instance of the current revision in `slot`, beside the live one if
    /// it is a `successor`; or, with `started`, takes that instance, started already
    /// at that time, as the one started.
    pub(super) fn spawn(
        &mut self,
        slot: u32,
        successor: bool,
        started: Option<(Arc<str>, std::time::SystemTime)>,
        ctx: &mut Ctx<'_>,
    ) {
        let (id, started_at) = match started {
            Some((id, at)) => (id, Some(at)),
            None => (ctx.ids.next(&self.name), None),
        };
        let index = slot as usize;
        self.ensure_slot(index);
        let is_job = self.job().is_some();
        let replacing = !successor
            && self.slots[index]
                .last_end
                .as_ref()
                // A job's next run after a success is not a restart.
                .is_some_and(|(_, r)| !(r.is_host_stop() || is_job && r.is_success()));
        if replacing {
            self.slots[index].restarts += 1;
            self.record_restart(ctx.now);
        }
        if started_at.is_none() {
            ctx.push(Effect::Spawn {
                instance: id.clone(),
                slot,
                spec: self.spec.clone(),
                revision: self.revision.clone(),
            });
        }
        let observation = InstanceObservation {
            id: id.clone(),
            revision: self.revision.clone(),
            since: ctx.now,
            stopping: false,
            ready: false,
        };
        if successor {
            self.slots[index].successor = Some(observation);
        } else {
            self.running[index] = false;
            self.slots[index].instance = Some(observation);
        }
        if let Some(warning) = ctx.capacity.admit() {
            let e = self.event(
                ctx,
                Some(&id),
                EventType::Warning,
                "MappingLimitNear",
                warning,
            );
            self.record(ctx, e);
        }
        // Spawns are frequent in a crash loop: they go to subscribers, not the bounded history.
        let reason = match (successor, replacing) {
            (true, _) => "Surge",
            (false, true) => "Replaced",
            (false, false) => "Spawned",
        };
        let mut e = self.event(
            ctx,
            Some(&id),
            EventType::Normal,
            reason,
            format!("slot {slot}"),
        );
        if let Some(at) = started_at {
            e.time = at;
        }
        ctx.push(Effect::Broadcast(e));
    }

    /// Makes the previous revision current again and starts a rollout back to it.
    /// Scaling and strategy stay as they are now; what runs goes back.
    fn roll_back(&mut self, message: String, ctx: &mut Ctx<'_>) {
        let Kind::Workload(rollouts) = &mut self.kind else {
            return;
        };
        let Some(previous) = rollouts.previous.take() else {
            return;
        };
        let mut spec = (*previous.spec).clone();
        spec.replicas = self.spec.replicas;
        spec.strategy = self.spec.strategy;
        rollouts.previous = Some(PreviousRevision {
            spec: std::mem::replace(&mut self.spec, Arc::new(spec)),
            revision: std::mem::replace(&mut self.revision, previous.revision.clone()),
        });
        rollouts.rollout = Some(RolloutObservation {
            started: ctx.now,
            rolled_back: true,
        });
        // Successors run the revision being abandoned.
        for obs in &mut self.slots {
            if let Some(successor) = obs.successor.as_mut() {
                stop(successor, StopCause::Replaced, ctx);
            }
        }
        self.forget_failures();
        ctx.push(Effect::NewDecider);
        let message = format!("{message}; rolling back to revision {}", previous.revision);
        self.say(ctx, EventType::Warning, reason::ROLLED_BACK, message);
    }

    /// After a workload's decision: ends the rollout once every live instance runs
    /// the current revision and is ready, and updates the `Available` condition.
    pub fn settle(&mut self, ctx: &mut Ctx<'_>) {
        self.check_rollout(ctx);
        let available = self.ready_count() >= self.spec.replicas;
        if available != self.available.status {
            self.available.status = available;
            self.available.since = ctx.wall;
        }
    }

    fn check_rollout(&mut self, ctx: &mut Ctx<'_>) {
        let Some(rollout) = self.rollout() else {
            return;
        };
        let all_current = self.slots.iter().all(|s| {
            s.successor.is_none()
                && s.instance
                    .as_ref()
                    .is_none_or(|i| *i.revision == *self.revision && !i.stopping)
        });
        if !all_current || self.ready_count() < self.spec.replicas {
            return;
        }
        if let Kind::Workload(rollouts) = &mut self.kind {
            rollouts.rollout = None;
        }
        let message = if rollout.rolled_back {
            format!("rolled back to revision {}", self.revision)
        } else {
            format!("every instance runs revision {}", self.revision)
        };
        self.say(ctx, EventType::Normal, reason::ROLLOUT_COMPLETE, message);
    }

    /// Asks every live instance (successors included) to stop.
    pub fn stop_all(&mut self, cause: StopCause, ctx: &mut Ctx<'_>) {
        for obs in &mut self.slots {
            for i in obs.instance.iter_mut().chain(obs.successor.iter_mut()) {
                stop(i, cause, ctx);
            }
        }
    }
}

/// Asks one instance to stop and marks it stopping.
fn stop(instance: &mut InstanceObservation, cause: StopCause, ctx: &mut Ctx<'_>) {
    ctx.push(Effect::Stop {
        instance: instance.id.clone(),
        cause,
    });
    instance.stopping = true;
}
