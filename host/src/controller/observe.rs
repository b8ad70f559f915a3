//! The transition that absorbs what an instance reports: running, readiness, or its
//! end (a successor taking over the slot, the back-off streak, a job's verdict, the
//! termination record).

use std::sync::Arc;

use super::effects::{Ctx, Effect};
use super::state::WorkloadState;
use crate::policy::{Action, Policy};
use crate::runtime::{EndReason, InstanceEnd, InstanceEvent, InstanceEventKind};
use crate::status::{EventType, TerminationRecord};

/// An instance started by the task of the one it replaces, and the policy that checks
/// it.
pub(super) struct DirectReplacement<'a> {
    /// Its id.
    pub instance: &'a Arc<str>,
    /// The revision it runs.
    pub revision: &'a Arc<str>,
    /// When it was started.
    pub at: std::time::SystemTime,
    /// The policy that would otherwise have decided the replacement.
    pub policy: &'a dyn Policy,
}

/// Which of a slot's instances an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The slot's live instance.
    Main,
    /// The successor starting beside it during a rollout.
    Successor,
}

impl WorkloadState {
    /// Puts the complete reason of `instance`'s end (its Wasm backtrace formatted after
    /// the end was handled) in the last termination record, if that record is still
    /// `instance`'s and of the same kind.
    pub fn complete_termination(&mut self, instance: &str, reason: EndReason) {
        if let Some(record) = &mut self.last_termination
            && record.instance == instance
            && record.end.reason.name() == reason.name()
        {
            record.end.reason = reason;
        }
    }

    /// Absorbs the end of an instance whose own task started `replacement` in its slot
    /// (see [`crate::runtime::reflex`]), and takes the replacement as the slot's new
    /// instance if the policy, asked now, starts one in that slot of this revision, and
    /// would have been allowed to. Returns whether it did; if not (no check given, or
    /// the workload changed while the end was on its way), the caller drops the
    /// replacement, and the pass decides the slot as after any end.
    pub fn observe_replaced(
        &mut self,
        ended: InstanceEvent,
        replacement: Option<DirectReplacement<'_>>,
        ctx: &mut Ctx<'_>,
    ) -> bool {
        let slot = ended.slot;
        let was_main = self.role_of(slot as usize, &ended.instance) == Some(Role::Main);
        self.observe(ended, ctx);
        let Some(replacement) = replacement.filter(|_| was_main) else {
            return false;
        };
        if **replacement.revision != *self.revision || !self.reflex_armable(ctx.now) {
            return false;
        }
        let mut actions = Vec::new();
        replacement
            .policy
            .reconcile(&self.policy_input(ctx.now), &mut actions);
        let starts_it = actions
            .iter()
            .any(|a| matches!(a, Action::Spawn { slot: s } if *s == slot));
        let gives_up = actions
            .iter()
            .any(|a| matches!(a, Action::MarkFailed { .. } | Action::RollBack { .. }));
        if !starts_it || gives_up || self.refusal(&Action::Spawn { slot }, ctx).is_some() {
            return false;
        }
        let started = (replacement.instance.clone(), replacement.at);
        self.spawn(slot, false, Some(started), ctx);
        true
    }

    /// Absorbs an instance's event. An event from an instance the state no longer
    /// holds (it ended, or was replaced) changes nothing.
    pub fn observe(&mut self, event: InstanceEvent, ctx: &mut Ctx<'_>) {
        let slot = event.slot as usize;
        let Some(role) = self.role_of(slot, &event.instance) else {
            return;
        };
        let mut job_changed = false;
        let said = match event.kind {
            InstanceEventKind::Running => {
                if role == Role::Main {
                    self.running[slot] = true;
                }
                if let Some(i) = self.observation(slot, role) {
                    ctx.push(Effect::SpawnLatency(
                        ctx.now.saturating_duration_since(i.since),
                    ));
                }
                Some((
                    EventType::Normal,
                    "Started",
                    "instance is running".to_string(),
                ))
            }
            InstanceEventKind::Ready(ready) => {
                let obs = &mut self.slots[slot];
                let instance = match role {
                    Role::Main => obs.instance.as_mut(),
                    Role::Successor => obs.successor.as_mut(),
                };
                if let Some(i) = instance {
                    i.ready = ready;
                }
                (!ready).then(|| {
                    (
                        EventType::Warning,
                        "NotReady",
                        "instance reports not ready".to_string(),
                    )
                })
            }
            InstanceEventKind::Recycled(end) => {
                // The replica serves on: counted as a restart, not against the budget
                // (one failing route must not fail the whole service).
                self.total_restarts += 1;
                let mut message = format!(
                    "a request failed ({}); a fresh instance took the replica's place",
                    end.reason.detail()
                );
                if let Some(last) = end.output.meaningful_line() {
                    message.push_str(&format!("; last output: {last}"));
                }
                let reason = end.reason.name();
                self.last_termination = Some(TerminationRecord {
                    instance: event.instance.to_string(),
                    slot: event.slot,
                    at: ctx.wall,
                    end: *end,
                });
                Some((EventType::Warning, reason, message))
            }
            // Handled before: it completes a record of an instance that has ended; and
            // a direct replacement comes here as its `Ended` (`observe_replaced`).
            InstanceEventKind::Forensics(_) | InstanceEventKind::EndedAndReplaced(..) => None,
            InstanceEventKind::Ended(end) => {
                ctx.capacity.release();
                let (said, counted) = self.ended(slot, role, &end, ctx);
                job_changed = counted;
                self.last_termination = Some(TerminationRecord {
                    instance: event.instance.to_string(),
                    slot: event.slot,
                    at: ctx.wall,
                    end: *end,
                });
                self.trim_surplus();
                Some(said)
            }
        };
        if let Some((kind, reason, message)) = said {
            let mut e = self.event(ctx, Some(&event.instance), kind, reason, message);
            // Dated when it happened to the instance, not when the controller heard of it.
            e.time = event.at;
            self.record(ctx, e);
        }
        // After the run's own event: the job's verdict follows from it.
        if job_changed {
            self.persist_job(ctx);
        }
        ctx.push(Effect::Reconcile);
    }

    fn role_of(&self, slot: usize, instance: &str) -> Option<Role> {
        let s = self.slots.get(slot)?;
        let is = |i: &Option<crate::policy::InstanceObservation>| {
            i.as_ref().is_some_and(|i| *i.id == *instance)
        };
        if is(&s.instance) {
            Some(Role::Main)
        } else if is(&s.successor) {
            Some(Role::Successor)
        } else {
            None
        }
    }

    fn observation(&self, slot: usize, role: Role) -> Option<&crate::policy::InstanceObservation> {
        let s = self.slots.get(slot)?;
        match role {
            Role::Main => s.instance.as_ref(),
            Role::Successor => s.successor.as_ref(),
        }
    }

    /// An instance ended: its slot empties (or its successor takes over), the slot's
    /// back-off streak grows or starts again, and a job counts the run. Returns the
    /// event to say, and whether the job's progress changed.
    fn ended(
        &mut self,
        slot: usize,
        role: Role,
        end: &InstanceEnd,
        ctx: &mut Ctx<'_>,
    ) -> ((EventType, &'static str, String), bool) {
        let reset_after = self.spec.backoff.reset_after;
        let obs = &mut self.slots[slot];
        match role {
            Role::Main => {
                self.running[slot] = false;
                obs.instance = None;
                // The old instance of a rollout is gone: its successor takes the slot.
                if let Some(successor) = obs.successor.take() {
                    obs.instance = Some(successor);
                    self.running[slot] = true;
                }
            }
            Role::Successor => obs.successor = None,
        }
        if !end.reason.is_host_stop() {
            obs.consecutive_ends = if end.ran_for >= reset_after {
                1
            } else {
                obs.consecutive_ends.saturating_add(1)
            };
        }
        obs.last_end = Some((ctx.now, end.reason.summary()));
        let (kind, reason) = match &end.reason {
            r if r.is_success() => (EventType::Normal, "Completed"),
            r if r.is_host_stop() => (EventType::Normal, "Stopped"),
            r => (EventType::Warning, r.name()),
        };
        let mut message = end.reason.detail();
        if kind == EventType::Warning
            && let Some(last) = end.output.meaningful_line()
        {
            message.push_str(&format!("; last output: {last}"));
        }
        let spec = self.spec.clone();
        let counted = match (&spec.job, self.job_mut()) {
            (Some(rules), Some(job)) => {
                let verdict = crate::job::classify(rules, &end.reason);
                let last = end.output.meaningful_line().unwrap_or("");
                job.progress.count(rules, verdict, last)
            }
            _ => false,
        };
        ((kind, reason, message), counted)
    }
}
