//! Transitions of desired state: a revision applied (first time or again) and a
//! workload deleted.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::effects::{Ctx, Effect};
use super::state::{Failure, JobRecord, Kind, PreviousRevision, Rollouts, WorkloadState};
use crate::job::JobProgress;
use crate::manifest::{StrategyKind, WorkloadSpec};
use crate::policy::RolloutObservation;
use crate::runtime::StopCause;
use crate::status::EventType;

/// What the state keeps of an applied revision (its compiled parts stay with the loop).
#[derive(Debug, Clone)]
pub(super) struct Applied {
    /// The workload's labels.
    pub labels: BTreeMap<String, String>,
    /// Its desired state.
    pub spec: Arc<WorkloadSpec>,
    /// The revision's hash.
    pub revision: Arc<str>,
    /// A failure verdict of this workload recorded before a restart.
    pub failed: Option<crate::admission::RecordedFailure>,
}

impl WorkloadState {
    /// A workload applied for the first time. `stored` is what the job ledger kept of
    /// this revision of a job, if anything: a job that finished before the host
    /// restarted runs nothing again.
    pub fn create(
        name: Arc<str>,
        applied: Applied,
        stored: Option<JobProgress>,
        ctx: &mut Ctx<'_>,
    ) -> Self {
        let mut state = Self::new(
            name,
            applied.labels,
            applied.spec,
            applied.revision,
            ctx.wall,
        );
        let message = format!("revision {}", state.revision);
        state.say(ctx, EventType::Normal, "Applied", message);
        // Failed before a restart, failed after it: a restart is no way to un-fail.
        if let Some(failed) = applied.failed.filter(|f| *f.revision == *state.revision)
            && state.job().is_none()
        {
            let message = format!(
                "still failed, as recorded before the host restarted: {}",
                failed.message
            );
            state.say(ctx, EventType::Warning, &failed.reason, message);
            state.failed = Some(Failure {
                reason: failed.reason,
                message: failed.message,
                since: failed.since,
            });
        }
        ctx.push(Effect::NewDecider);
        ctx.push(Effect::Reconcile);
        if let Kind::Job(job) = &mut state.kind {
            match stored {
                Some(progress) => {
                    if let Some(outcome) = progress.finished.as_ref().filter(|o| !o.complete) {
                        state.failed = Some(Failure {
                            reason: outcome.reason.clone(),
                            message: outcome.message.clone(),
                            since: outcome.at,
                        });
                    }
                    **job = JobRecord::resume(progress.clone(), Some(progress));
                }
                // Recorded at once, so that the deadline survives a crash.
                None => state.persist_job(ctx),
            }
        }
        state
    }

    /// The workload applied again: a new revision replaces the current one (rolling
    /// or all at once, as its strategy says), or the same revision takes new labels
    /// and scale. A job deleted and applied again starts over (acknowledgements of the
    /// old run's records are recognised by its start and ignored).
    pub fn reapply(&mut self, applied: Applied, ctx: &mut Ctx<'_>) {
        let becomes_job = applied.spec.job.is_some();
        let restart_job = becomes_job && (self.deleting || self.job().is_none());
        if restart_job {
            self.failed = None;
        }
        if !becomes_job && self.job().is_some() {
            self.kind = Kind::Workload(Rollouts::default());
        }
        self.deleting = false;
        if *self.revision != *applied.revision {
            self.replace_revision(&applied, ctx);
        }
        self.labels = applied.labels;
        self.spec = applied.spec;
        if restart_job {
            self.kind = Kind::Job(Box::new(JobRecord::start(&self.revision)));
            self.persist_job(ctx);
        }
        ctx.push(Effect::Reconcile);
    }

    /// Makes `applied` the current revision. Restart history and any failure verdict
    /// belong to the old revision. A job (deleted, applied again changed) never rolls.
    fn replace_revision(&mut self, applied: &Applied, ctx: &mut Ctx<'_>) {
        let rolling = applied.spec.strategy.kind == StrategyKind::RollingUpdate
            && applied.spec.job.is_none()
            && self.live_count() > 0;
        if !rolling {
            // Recreate: every old instance stops now; new ones fill the slots.
            self.stop_all(StopCause::Replaced, ctx);
        }
        let previous = PreviousRevision {
            spec: self.spec.clone(),
            revision: self.revision.clone(),
        };
        if let Kind::Workload(rollouts) = &mut self.kind {
            // With a rollout, the policy replaces old instances a few at a time.
            rollouts.rollout = rolling.then_some(RolloutObservation {
                started: ctx.now,
                rolled_back: false,
            });
            rollouts.previous = Some(previous);
        }
        self.forget_failures();
        let message = format!("revision {} replaces {}", applied.revision, self.revision);
        self.revision = applied.revision.clone();
        self.say(ctx, EventType::Normal, "Updated", message);
        ctx.push(Effect::NewDecider);
    }

    /// `rollout restart`: every instance is replaced by a new one of the same revision,
    /// and what the old ones spent (restart budget, back-off streaks, a failure
    /// verdict) is forgotten. A job cannot be restarted; a deleted workload neither.
    pub fn restart(&mut self, ctx: &mut Ctx<'_>) -> Result<(), String> {
        if self.deleting {
            return Err(format!("`{}` is being deleted", self.name));
        }
        if self.job().is_some() {
            return Err(format!(
                "`{}` is a job: a job is not restarted; delete it and apply it again to run it anew",
                self.name
            ));
        }
        let was_failed = self.failed.is_some();
        self.forget_failures();
        // A fresh start, not a replacement: no slot carries its last end into it.
        for slot in &mut self.slots {
            slot.last_end = None;
        }
        self.stop_all(StopCause::Replaced, ctx);
        let message = if was_failed {
            "restart asked: the failure is cleared, and every instance is replaced; restart budget and back-off start afresh"
        } else {
            "restart asked: every instance is replaced; restart budget and back-off start afresh"
        };
        self.say(ctx, EventType::Normal, "Restarted", message.into());
        ctx.push(Effect::Reconcile);
        Ok(())
    }

    /// The workload is deleted: its instances stop on the next pass, and a job's
    /// progress is forgotten.
    pub fn delete(&mut self, ctx: &mut Ctx<'_>) {
        if self.job().is_some() {
            ctx.push(Effect::Forget);
        }
        self.deleting = true;
        ctx.push(Effect::Reconcile);
    }

    /// A pass over a deleted workload: stops what still runs, and once nothing does,
    /// the workload goes.
    pub fn reconcile_deletion(&mut self, ctx: &mut Ctx<'_>) {
        self.stop_all(StopCause::Deleted, ctx);
        if self.live_count() == 0 {
            let event = self.event(
                ctx,
                None,
                EventType::Normal,
                "Deleted",
                "all instances stopped".into(),
            );
            ctx.push(Effect::Broadcast(event));
            ctx.push(Effect::Remove);
        }
    }
}
