//! A job's transitions: the durability protocol (a change of progress is acted on only
//! once the ledger has it), the deadline and the time to live after finishing.

use std::time::Instant;

use super::effects::{Ctx, Durability, Effect};
use super::state::{Failure, JobRecord, LedgerStall, WorkloadState};
use crate::job::JobProgress;
use crate::runtime::StopCause;
use crate::status::EventType;

/// What a pass over a workload goes on to do after its first step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// Nothing more this time (deleted, waiting for the ledger, or gone).
    Done,
    /// Ask the decider; a job then asks for a pass again at `due` at the latest.
    Decide {
        /// When a job's deadline or time to live falls due.
        due: Option<Instant>,
    },
}

impl WorkloadState {
    /// The first step of a pass: a deleted workload stops, a job checks its deadline
    /// and time to live; whatever is left asks the decider.
    pub fn begin_pass(&mut self, ctx: &mut Ctx<'_>) -> Pass {
        if self.deleting {
            self.reconcile_deletion(ctx);
            return Pass::Done;
        }
        self.requeue_at = None;
        if self.job().is_none() {
            return Pass::Decide { due: None };
        }
        self.begin_job_pass(ctx)
    }

    fn begin_job_pass(&mut self, ctx: &mut Ctx<'_>) -> Pass {
        let spec = self.spec.clone();
        let (Some(rules), Some(job)) = (spec.job.as_ref(), self.job_mut()) else {
            return Pass::Done;
        };
        if job.progress.check_deadline(rules, ctx.wall) {
            self.persist_job(ctx);
        }
        let Some(job) = self.job() else {
            return Pass::Done;
        };
        // Time to live counts from the finish as recorded.
        let durable = job.durable.as_ref().unwrap_or(&job.progress);
        let due = durable.next_due(rules, ctx.now, ctx.wall);
        if durable.finished.is_some() && due.is_some_and(|t| t <= ctx.now) {
            ctx.push(Effect::Forget);
            self.deleting = true;
            self.say(
                ctx,
                EventType::Normal,
                "TTLExpired",
                "the job finished longer than ttlAfterFinished ago: deleting it".into(),
            );
            self.reconcile_deletion(ctx);
            return Pass::Done;
        }
        if job.pending > 0 {
            // Nothing starts until the last change is durable; its acknowledgement
            // reconciles the job again.
            return Pass::Done;
        }
        Pass::Decide { due }
    }

    /// The last step of a pass after the decision was carried out.
    pub fn end_pass(&mut self, due: Option<Instant>, ctx: &mut Ctx<'_>) {
        if self.job().is_some() {
            if let Some(due) = due {
                self.requeue(due);
            }
        } else {
            self.settle(ctx);
        }
    }

    /// Makes a job's progress durable: queued to the ledger's writer (the job waits
    /// for the acknowledgement before it acts on it), or at once without a ledger.
    pub fn persist_job(&mut self, ctx: &mut Ctx<'_>) {
        let Some(job) = self.job_mut() else {
            return;
        };
        let progress = job.progress.clone();
        match ctx.durability {
            Durability::Immediate => self.job_durable(progress, ctx),
            Durability::Queued { stalled } => {
                job.pending += 1;
                ctx.push(Effect::Persist(progress));
                if let Some(why) = stalled.clone() {
                    self.ledger_stalled(&why, ctx);
                }
            }
        }
    }

    /// The ledger acknowledged a record of this job's progress.
    pub fn job_acknowledged(&mut self, progress: JobProgress, ctx: &mut Ctx<'_>) {
        let Some(job) = self.job_mut() else {
            return;
        };
        // A record of an earlier run of this job (deleted and applied again) is stale.
        if job.progress.started != progress.started {
            return;
        }
        job.pending = job.pending.saturating_sub(1);
        self.job_durable(progress, ctx);
    }

    /// A job's progress is durable: once the job has finished, its remaining runs stop
    /// and how it ended is said; the job may start its next runs.
    fn job_durable(&mut self, progress: JobProgress, ctx: &mut Ctx<'_>) {
        ctx.push(Effect::Reconcile);
        let finished_now = progress.finished.clone().filter(|_| !self.job_finished());
        if let Some(outcome) = &finished_now {
            self.stop_all(StopCause::Policy, ctx);
            if !outcome.complete {
                self.failed = Some(Failure {
                    reason: outcome.reason.clone(),
                    message: outcome.message.clone(),
                    since: outcome.at,
                });
            }
        }
        if let Some(job) = self.job_mut() {
            job.durable = Some(progress);
        }
        if let Some(outcome) = finished_now {
            let kind = if outcome.complete {
                EventType::Normal
            } else {
                EventType::Warning
            };
            self.say(ctx, kind, &outcome.reason, outcome.message);
        }
    }

    /// The ledger cannot write: a job waiting on it says so once as an event, and as
    /// a condition (with the newest reason) until writes resume.
    pub fn ledger_stalled(&mut self, why: &str, ctx: &mut Ctx<'_>) {
        let Some(job) = self.job_mut() else {
            return;
        };
        if let Some(stall) = &mut job.stall {
            stall.why = why.to_string();
            return;
        }
        job.stall = Some(LedgerStall {
            why: why.to_string(),
            since: ctx.wall,
        });
        self.say(
            ctx,
            EventType::Warning,
            crate::status::reason::LEDGER_WRITE_FAILED,
            format!(
                "progress is paused: the job ledger cannot write ({why}); nothing more is counted until a write succeeds"
            ),
        );
    }

    /// The ledger writes again: a job that was paused says it resumes.
    pub fn ledger_resumed(&mut self, ctx: &mut Ctx<'_>) {
        if self.job_mut().and_then(|j| j.stall.take()).is_some() {
            self.say(
                ctx,
                EventType::Normal,
                "LedgerWriteResumed",
                "the job ledger writes again; progress resumes".into(),
            );
        }
    }

    /// Whether this job has records queued and not yet durable.
    pub fn job_waiting(&self) -> bool {
        self.job().is_some_and(|j: &JobRecord| j.pending > 0)
    }
}
