//! The status projection: what `status` shows of a workload's state (phase,
//! conditions, instances, rollout, job counts), and the cheap counts.

use std::time::Instant;

use super::state::WorkloadState;
use crate::manifest::RestartPolicy;
use crate::status::{
    Condition, ConditionType, InstancePhase, InstanceStatus, JobStatus, Phase, RolloutStatus,
    WorkloadCounts, WorkloadKind, WorkloadStatus,
};

/// A workload's instance counts, without per-instance data.
pub(super) fn counts(w: &WorkloadState) -> WorkloadCounts {
    WorkloadCounts {
        name: w.name.to_string(),
        desired: w.spec.replicas,
        live: w.live_count() as u32,
        running: w.running_count() as u32,
        ready: w.ready_count(),
        restarts: w.total_restarts,
        failed: w.failed.is_some(),
    }
}

/// What status shows of `w`, decided by `policy`.
pub(super) fn workload_status(w: &WorkloadState, policy: &str, now: Instant) -> WorkloadStatus {
    let ready = w.ready_count();
    let running = w.live_count() as u32;
    let replicas = w.spec.replicas as usize;
    let slots = &w.slots[..w.slots.len().min(replicas)];
    let all_done = slots.len() == replicas
        && slots
            .iter()
            .all(|s| s.instance.is_none() && s.last_end.is_some());
    let any_failed_end = slots
        .iter()
        .any(|s| s.last_end.as_ref().is_some_and(|(_, r)| !r.is_success()));
    // What a job shows is what is durable: a finish is reported once it is recorded.
    let job_progress = w.job().map(|j| j.durable.as_ref().unwrap_or(&j.progress));
    let job_finished = job_progress.and_then(|p| p.finished.as_ref());
    let phase = if let Some(outcome) = job_finished {
        if outcome.complete {
            Phase::Succeeded
        } else {
            Phase::Failed
        }
    } else if w.failed.is_some() {
        Phase::Failed
    } else if w.job().is_some() {
        if running > 0 {
            Phase::Running
        } else {
            Phase::Pending
        }
    } else if w.spec.restart_policy != RestartPolicy::Always && replicas > 0 && all_done {
        if any_failed_end {
            Phase::Failed
        } else {
            Phase::Succeeded
        }
    } else if ready >= w.spec.replicas {
        Phase::Running
    } else if w
        .slots
        .iter()
        .any(|s| s.last_end.as_ref().is_some_and(|(_, r)| !r.is_host_stop()))
    {
        Phase::Degraded
    } else {
        Phase::Pending
    };
    let mut conditions = if w.job().is_some() {
        Vec::new()
    } else {
        vec![Condition {
            kind: ConditionType::Available,
            status: w.available.status,
            reason: if w.available.status {
                "MinimumReplicasAvailable".into()
            } else {
                "ReplicasNotReady".into()
            },
            message: format!("{ready}/{} replicas ready", w.spec.replicas),
            last_transition: w.available.since,
        }]
    };
    if let Some(stall) = w.job().and_then(|j| j.stall.as_ref()) {
        conditions.push(Condition {
            kind: ConditionType::ProgressDurable,
            status: false,
            reason: crate::status::reason::LEDGER_WRITE_FAILED.into(),
            message: format!(
                "progress is paused until the job ledger can write: {}",
                stall.why
            ),
            last_transition: stall.since,
        });
    }
    if let Some(outcome) = job_finished {
        conditions.push(Condition {
            kind: if outcome.complete {
                ConditionType::Complete
            } else {
                ConditionType::Failed
            },
            status: true,
            reason: outcome.reason.clone(),
            message: outcome.message.clone(),
            last_transition: outcome.at,
        });
    } else if let Some(failure) = &w.failed {
        conditions.push(Condition {
            kind: ConditionType::Failed,
            status: true,
            reason: failure.reason.clone(),
            message: failure.message.clone(),
            last_transition: failure.since,
        });
    }
    let instances = w
        .slots
        .iter()
        .enumerate()
        .flat_map(|(slot, s)| {
            let main = s.instance.as_ref().map(|i| {
                let phase = if i.stopping {
                    InstancePhase::Stopping
                } else if w.running.get(slot).copied().unwrap_or(false) {
                    InstancePhase::Running
                } else {
                    InstancePhase::Starting
                };
                (i, phase)
            });
            let successor = s.successor.as_ref().map(|i| {
                let phase = if i.stopping {
                    InstancePhase::Stopping
                } else {
                    InstancePhase::Surge
                };
                (i, phase)
            });
            main.into_iter()
                .chain(successor)
                .map(move |(i, phase)| InstanceStatus {
                    id: i.id.to_string(),
                    slot: slot as u32,
                    revision: i.revision.to_string(),
                    phase,
                    ready: i.ready,
                    restarts: s.restarts,
                    age: now.saturating_duration_since(i.since),
                    http: None,
                    node: None,
                    memory_bytes: None,
                    cpu_ms: None,
                })
        })
        .collect();
    let rollout = w.rollout().map(|r| RolloutStatus {
        from: w
            .rollouts()
            .and_then(|r| r.previous.as_ref())
            .map(|p| p.revision.to_string())
            .unwrap_or_default(),
        to: w.revision.to_string(),
        rollback: r.rolled_back,
        age: now.saturating_duration_since(r.started),
        updated: w
            .slots
            .iter()
            .flat_map(|s| [&s.instance, &s.successor])
            .flatten()
            .filter(|i| *i.revision == *w.revision && !i.stopping)
            .count() as u32,
    });
    let job = w
        .spec
        .job
        .as_ref()
        .zip(job_progress)
        .map(|(spec, p)| JobStatus {
            completions: spec.completions,
            parallelism: spec.parallelism,
            active: w
                .slots
                .iter()
                .filter(|s| s.instance.as_ref().is_some_and(|i| !i.stopping))
                .count() as u32,
            succeeded: p.succeeded,
            failed: p.failed,
            ignored: p.ignored,
            start_time: p.started,
            completion_time: p.finished.as_ref().map(|f| f.at),
        });
    WorkloadStatus {
        name: w.name.to_string(),
        labels: w.labels.clone(),
        kind: WorkloadKind::of(&w.spec),
        spec: w.spec.clone(),
        job,
        desired: w.spec.replicas,
        ready,
        running,
        spares: 0,
        restarts: w.total_restarts,
        phase,
        revision: w.revision.to_string(),
        rollout,
        policy: policy.to_string(),
        conditions,
        instances,
        created: Some(w.created),
        http: None,
        last_termination: w.last_termination.clone(),
        events: w.events.iter().cloned().collect(),
    }
}
