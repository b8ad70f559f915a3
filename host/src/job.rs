//! Jobs: workloads that run to completion. This module holds what a Job's progress is
//! (succeeded and failed runs, how it finished), how an ended run counts under the
//! job's failure policy, the decision of which runs to start next, and [`JobLedger`],
//! through which an embedder (the daemon, for one) keeps progress across restarts so
//! that a completion is counted once and a finished job never runs again.
//!
//! The controller owns each job's [`JobProgress`]: it counts an ended run, records the
//! progress in the ledger before it acts on it, and asks [`reconcile`] what to start.

use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::manifest::{FailureAction, JobSpec, WorkloadSpec};
use crate::policy::{Action, PolicyInput};
use crate::runtime::EndReason;

/// The name of the built-in job policy, as status shows it.
pub const POLICY_NAME: &str = "builtin/job";

/// Where a job's progress is kept between host restarts. The host writes to it from a
/// thread of its own, in batches, and acts on a record only once it returned; `load` is
/// called when a job is applied.
pub trait JobLedger: Send + Sync {
    /// The progress recorded for `job`, if any.
    fn load(&self, job: &str) -> Option<JobProgress>;
    /// Records `job`'s progress; called when a job starts, after each counted run, and
    /// when it finishes, before the controller acts on the change.
    fn record(&self, job: &str, progress: &JobProgress) -> anyhow::Result<()>;
    /// Records several jobs' progress at once, in order (the default records each);
    /// a ledger that can make them durable in one commit should.
    fn record_all(&self, records: &[(&str, &JobProgress)]) -> anyhow::Result<()> {
        for (job, progress) in records {
            self.record(job, progress)?;
        }
        Ok(())
    }
    /// Forgets `job`: it was deleted, or its `ttlAfterFinished` has passed (and then it
    /// leaves the desired state too).
    fn forget(&self, job: &str) -> anyhow::Result<()>;
}

/// A job's progress: what the ledger keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobProgress {
    /// The revision this progress belongs to.
    pub revision: String,
    /// When the job started (its `activeDeadline` counts from here).
    pub started: SystemTime,
    /// Runs that exited 0.
    pub succeeded: u32,
    /// Failed runs counted toward `backoffLimit`.
    pub failed: u32,
    /// Failed runs a failure rule said to ignore.
    pub ignored: u32,
    /// How the job finished, once it has.
    pub finished: Option<JobOutcome>,
}

/// How a job finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobOutcome {
    /// `true` for `Complete`, `false` for `Failed`.
    pub complete: bool,
    /// `Completed`, `BackoffLimitExceeded`, `DeadlineExceeded` or `FailurePolicy`.
    pub reason: String,
    /// A human explanation.
    pub message: String,
    /// When it finished.
    pub at: SystemTime,
}

/// The format of a job's progress as a ledger stores it ([`JobProgress::to_stored`]).
/// Records written before formats were numbered have the shape of format 1 and no
/// number; a record of a later format (written by a newer setpoint) is never run over.
pub const PROGRESS_FORMAT: u32 = 1;

/// A stored record this host cannot read as progress.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoredProgressError {
    /// Not the JSON of any format.
    #[error("stored job progress is unreadable: {0}")]
    Unreadable(String),
    /// Written in a format newer than this host reads.
    #[error(
        "stored job progress is in format {format}, written by a newer setpoint; this one reads format {PROGRESS_FORMAT} and older"
    )]
    Newer {
        /// The record's format.
        format: u64,
        /// The revision it belongs to, if it says.
        revision: Option<String>,
    },
}

#[derive(Serialize)]
struct Stored<'a> {
    format: u32,
    #[serde(flatten)]
    progress: &'a JobProgress,
}

/// How one ended run counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunVerdict {
    /// It succeeded.
    Succeeded,
    /// It failed and counts toward the back-off limit.
    Failed,
    /// It failed and a rule says to ignore it.
    Ignored,
    /// It failed and a rule says to fail the job (the message says which rule).
    FailJob(String),
    /// The host stopped it: it does not count at all.
    NotCounted,
}

/// How a run that ended with `reason` counts under `job`'s failure policy.
pub(crate) fn classify(job: &JobSpec, reason: &EndReason) -> RunVerdict {
    if reason.is_host_stop() {
        return RunVerdict::NotCounted;
    }
    if reason.is_success() {
        return RunVerdict::Succeeded;
    }
    let end = reason.summary();
    let rule = job
        .failure_rules
        .iter()
        .enumerate()
        .find(|(_, rule)| rule.matches(end));
    match rule.map(|(i, r)| (i, r.action)) {
        Some((i, FailureAction::FailJob)) => RunVerdict::FailJob(format!(
            "failurePolicy rule {i} fails the job: a run {reason}"
        )),
        Some((_, FailureAction::Ignore)) => RunVerdict::Ignored,
        Some((_, FailureAction::Count)) | None => RunVerdict::Failed,
    }
}

impl JobProgress {
    /// A job starting now.
    pub fn start(revision: &str) -> Self {
        Self {
            revision: revision.to_string(),
            started: SystemTime::now(),
            succeeded: 0,
            failed: 0,
            ignored: 0,
            finished: None,
        }
    }

    /// The JSON a ledger stores, in format [`PROGRESS_FORMAT`].
    pub fn to_stored(&self) -> String {
        let stored = Stored {
            format: PROGRESS_FORMAT,
            progress: self,
        };
        // Plain numbers, strings and times: serializing to a string cannot fail.
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// Reads what [`Self::to_stored`] wrote, in this format or an older one.
    pub fn from_stored(json: &str) -> Result<Self, StoredProgressError> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| StoredProgressError::Unreadable(e.to_string()))?;
        let format = value.get("format").and_then(serde_json::Value::as_u64);
        if let Some(format) = format.filter(|f| *f > u64::from(PROGRESS_FORMAT)) {
            let revision = value
                .get("revision")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string);
            return Err(StoredProgressError::Newer { format, revision });
        }
        serde_json::from_value(value).map_err(|e| StoredProgressError::Unreadable(e.to_string()))
    }

    /// What a job shows when its record is of a newer format: failed, so that it never
    /// runs again over (or instead of) what a newer host counted.
    pub fn unreadable(revision: String, why: &StoredProgressError) -> Self {
        let now = SystemTime::now();
        Self {
            revision,
            started: now,
            succeeded: 0,
            failed: 0,
            ignored: 0,
            finished: Some(JobOutcome {
                complete: false,
                reason: "ProgressUnreadable".into(),
                message: format!(
                    "{why}; the job does not run, so that nothing is counted twice (run the newer setpoint, or delete the job to start it over)"
                ),
                at: now,
            }),
        }
    }

    /// Counts one ended run; returns whether the progress changed. A finished job
    /// counts nothing more.
    pub(crate) fn count(&mut self, job: &JobSpec, verdict: RunVerdict, last_output: &str) -> bool {
        if self.finished.is_some() {
            return false;
        }
        match verdict {
            RunVerdict::NotCounted => return false,
            RunVerdict::Succeeded => {
                self.succeeded += 1;
                if self.succeeded >= job.completions {
                    self.finish(
                        true,
                        "Completed",
                        format!("{} of {} runs succeeded", self.succeeded, job.completions),
                    );
                }
            }
            RunVerdict::Ignored => self.ignored += 1,
            RunVerdict::Failed => {
                self.failed += 1;
                if self.failed > job.backoff_limit {
                    let mut message = format!(
                        "{} runs failed, over the back-off limit of {}",
                        self.failed, job.backoff_limit
                    );
                    if !last_output.is_empty() {
                        message.push_str(&format!("; last output: {last_output}"));
                    }
                    self.finish(false, "BackoffLimitExceeded", message);
                }
            }
            RunVerdict::FailJob(message) => {
                self.failed += 1;
                self.finish(false, "FailurePolicy", message);
            }
        }
        true
    }

    /// Fails the job if its deadline has passed; returns whether it did.
    pub(crate) fn check_deadline(&mut self, job: &JobSpec, now: SystemTime) -> bool {
        let Some(deadline) = job.active_deadline else {
            return false;
        };
        if self.finished.is_some() || self.elapsed(now) < deadline {
            return false;
        }
        self.finish(
            false,
            "DeadlineExceeded",
            format!(
                "the job ran longer than its activeDeadline of {}",
                humantime::format_duration(deadline)
            ),
        );
        true
    }

    /// How long the job has been running at `now` (zero if the clock went back).
    pub fn elapsed(&self, now: SystemTime) -> Duration {
        now.duration_since(self.started).unwrap_or_default()
    }

    fn finish(&mut self, complete: bool, reason: &str, message: String) {
        self.finished = Some(JobOutcome {
            complete,
            reason: reason.to_string(),
            message,
            at: SystemTime::now(),
        });
    }

    /// When, on the monotonic clock, something is due for this job: its deadline while it
    /// runs, its removal (`ttlAfterFinished`) once it has finished.
    pub(crate) fn next_due(
        &self,
        job: &JobSpec,
        now: Instant,
        wall: SystemTime,
    ) -> Option<Instant> {
        let after = |from: SystemTime, wait: Duration| {
            let passed = wall.duration_since(from).unwrap_or_default();
            crate::clock::after(now, wait.saturating_sub(passed))
        };
        match &self.finished {
            None => job.active_deadline.map(|d| after(self.started, d)),
            Some(outcome) => job.ttl_after_finished.map(|ttl| after(outcome.at, ttl)),
        }
    }
}

/// The runs to start now: fill empty slots while fewer runs are active than both
/// `parallelism` and the completions still needed, each slot after its back-off when
/// its last run failed.
pub(crate) fn reconcile(
    spec: &WorkloadSpec,
    job: &JobSpec,
    progress: &JobProgress,
    input: &PolicyInput<'_>,
    actions: &mut Vec<Action>,
) {
    if progress.finished.is_some() {
        return;
    }
    let active = input
        .slots
        .iter()
        .filter(|s| s.instance.as_ref().is_some_and(|i| !i.stopping))
        .count() as u32;
    let needed = job.completions.saturating_sub(progress.succeeded);
    let mut room = job.parallelism.min(needed).saturating_sub(active);
    let mut soonest: Option<Duration> = None;
    for slot in 0..spec.replicas {
        if room == 0 {
            break;
        }
        let obs = input.slots.get(slot as usize);
        if obs.is_some_and(|o| o.instance.is_some()) {
            continue;
        }
        let failed_last = obs
            .and_then(|o| o.last_end.as_ref())
            .filter(|(_, reason)| !reason.is_success() && !reason.is_host_stop());
        if let (Some((ended, _)), Some(o)) = (failed_last, obs) {
            let delay = spec.backoff.delay(o.consecutive_ends);
            let due = crate::clock::after(*ended, delay);
            if due > input.now {
                let wait = due - input.now;
                soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                actions.push(Action::Event {
                    warning: true,
                    reason: "BackOff".to_string(),
                    message: format!(
                        "slot {slot}: waiting {delay:?} before the next run ({} failed so far)",
                        progress.failed + progress.ignored
                    ),
                });
                continue;
            }
        }
        actions.push(Action::Spawn { slot });
        room -= 1;
    }
    if let Some(wait) = soonest {
        actions.push(Action::RequeueAfter(wait));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ExitCodeOperator, FailureMatch, FailureRule};

    #[test]
    fn stored_progress_round_trips_reads_the_unnumbered_format_and_refuses_newer_ones() {
        let mut progress = JobProgress::start("abc");
        progress.succeeded = 2;
        let stored = progress.to_stored();
        assert!(stored.contains("\"format\":1"), "{stored}");
        assert_eq!(JobProgress::from_stored(&stored), Ok(progress.clone()));
        // What earlier versions wrote: the same fields, no number.
        let unnumbered = serde_json::to_string(&progress).expect("serializes");
        assert_eq!(JobProgress::from_stored(&unnumbered), Ok(progress.clone()));
        let newer = stored.replace("\"format\":1", "\"format\":2");
        let err = JobProgress::from_stored(&newer).expect_err("a newer format");
        assert_eq!(
            err,
            StoredProgressError::Newer {
                format: 2,
                revision: Some("abc".into())
            }
        );
        let held = JobProgress::unreadable("abc".into(), &err);
        assert!(held.finished.as_ref().is_some_and(|f| !f.complete));
        assert!(matches!(
            JobProgress::from_stored("{not json"),
            Err(StoredProgressError::Unreadable(_))
        ));
    }

    fn exited(code: i32) -> EndReason {
        EndReason::Exited { code }
    }

    #[test]
    fn failure_rules_match_in_order_and_unmatched_failures_count() {
        let mut job = JobSpec::new(1);
        job.failure_rules = vec![
            FailureRule {
                action: FailureAction::Ignore,
                on: FailureMatch::ExitCodes {
                    operator: ExitCodeOperator::In,
                    values: vec![2],
                },
            },
            FailureRule {
                action: FailureAction::FailJob,
                on: FailureMatch::ExitCodes {
                    operator: ExitCodeOperator::NotIn,
                    values: vec![1, 2],
                },
            },
        ];
        assert_eq!(classify(&job, &exited(0)), RunVerdict::Succeeded);
        assert_eq!(classify(&job, &exited(2)), RunVerdict::Ignored);
        assert_eq!(classify(&job, &exited(1)), RunVerdict::Failed);
        assert!(
            matches!(classify(&job, &exited(3)), RunVerdict::FailJob(m) if m.contains("rule 1"))
        );
        let stopped = EndReason::Stopped {
            cause: crate::runtime::StopCause::Deleted,
            forced: false,
        };
        assert_eq!(classify(&job, &stopped), RunVerdict::NotCounted);
    }

    #[test]
    fn progress_completes_at_completions_and_fails_past_the_backoff_limit() {
        let mut job = JobSpec::new(2);
        job.backoff_limit = 1;
        let mut p = JobProgress::start("r1");
        assert!(p.count(&job, RunVerdict::Succeeded, ""));
        assert!(p.finished.is_none());
        assert!(p.count(&job, RunVerdict::Failed, ""));
        assert!(p.finished.is_none(), "one failure is within a limit of 1");
        assert!(p.count(&job, RunVerdict::Succeeded, ""));
        let outcome = p.finished.clone().expect("finished");
        assert!(outcome.complete);
        assert_eq!(outcome.reason, "Completed");
        assert!(
            !p.count(&job, RunVerdict::Failed, ""),
            "a finished job counts nothing"
        );

        let mut p = JobProgress::start("r1");
        p.count(&job, RunVerdict::Failed, "");
        p.count(&job, RunVerdict::Failed, "boom");
        let outcome = p.finished.expect("failed");
        assert!(!outcome.complete);
        assert_eq!(outcome.reason, "BackoffLimitExceeded");
        assert!(outcome.message.contains("boom"));
    }

    #[test]
    fn the_deadline_counts_from_the_recorded_start() {
        let mut job = JobSpec::new(1);
        job.active_deadline = Some(Duration::from_secs(10));
        let mut p = JobProgress::start("r1");
        p.started = SystemTime::now() - Duration::from_secs(4);
        let now = Instant::now();
        let due = p
            .next_due(&job, now, SystemTime::now())
            .expect("a deadline");
        assert!(due > now + Duration::from_secs(5) && due <= now + Duration::from_secs(6));
        assert!(!p.check_deadline(&job, SystemTime::now()));
        assert!(p.check_deadline(&job, SystemTime::now() + Duration::from_secs(7)));
        assert_eq!(p.finished.expect("failed").reason, "DeadlineExceeded");
    }
}
