//! The controller's record of one workload: its desired spec, the observation of each
//! slot (what a policy sees), restart history, events and conditions, and what only a
//! workload (its rollouts) or only a job (its progress) has. Plain data: no runtime
//! handle and no compiled code live here, so every transition can be tested alone.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::effects::{Ctx, Effect};
use crate::job::JobProgress;
use crate::manifest::WorkloadSpec;
use crate::policy::{PolicyInput, RolloutObservation, SlotObservation};
use crate::status::{Event, EventType, TerminationRecord};

/// The most restart timestamps kept when no budget asks for more.
const MIN_RESTART_HISTORY: usize = 64;

/// Why a workload was given up on, and since when.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Failure {
    /// A stable CamelCase reason.
    pub reason: String,
    /// A human explanation.
    pub message: String,
    /// When it was marked failed.
    pub since: SystemTime,
}

/// Whether enough replicas are ready, and since when that holds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Available {
    /// Ready replicas reach the desired count.
    pub status: bool,
    /// When `status` last changed.
    pub since: SystemTime,
}

/// The revision before the current one, kept so that a rollout can go back to it.
#[derive(Debug, Clone)]
pub(super) struct PreviousRevision {
    /// Its spec.
    pub spec: Arc<WorkloadSpec>,
    /// Its revision.
    pub revision: Arc<str>,
}

/// What only a workload (not a job) has: its rollouts.
#[derive(Debug, Default)]
pub(super) struct Rollouts {
    /// The revision before the current one.
    pub previous: Option<PreviousRevision>,
    /// The rollout in progress.
    pub rollout: Option<RolloutObservation>,
}

/// The job ledger cannot write, and the job waits.
#[derive(Debug, Clone)]
pub(super) struct LedgerStall {
    /// Why (the newest reason).
    pub why: String,
    /// Since when.
    pub since: SystemTime,
}

/// What only a job has: its progress and how durable it is.
#[derive(Debug)]
pub(super) struct JobRecord {
    /// The progress as counted.
    pub progress: JobProgress,
    /// The progress as last made durable (what status shows).
    pub durable: Option<JobProgress>,
    /// Records of the progress queued and not yet durable.
    pub pending: u32,
    /// Set while the ledger cannot write.
    pub stall: Option<LedgerStall>,
}

impl JobRecord {
    /// A job starting now, nothing of it durable yet.
    pub fn start(revision: &str) -> Self {
        Self::resume(JobProgress::start(revision), None)
    }

    /// A job with `progress` counted, `durable` of it recorded.
    pub fn resume(progress: JobProgress, durable: Option<JobProgress>) -> Self {
        Self {
            progress,
            durable,
            pending: 0,
            stall: None,
        }
    }

    /// Whether the job's finish is durable (and so was acted on).
    pub fn finished(&self) -> bool {
        self.durable.as_ref().is_some_and(|p| p.finished.is_some())
    }
}

/// A workload's or a job's own part of the state.
#[derive(Debug)]
pub(super) enum Kind {
    /// A workload: it has rollouts.
    Workload(Rollouts),
    /// A job: it has progress.
    Job(Box<JobRecord>),
}

/// The controller's record of one workload or job.
#[derive(Debug)]
pub(super) struct WorkloadState {
    pub name: Arc<str>,
    pub labels: BTreeMap<String, String>,
    pub spec: Arc<WorkloadSpec>,
    /// Shared with every instance observation of this revision (spawns clone, not copy).
    pub revision: Arc<str>,
    /// What policies see; index = slot.
    pub slots: Vec<SlotObservation>,
    /// Whether each slot's live instance has reported `Running`, parallel to `slots`.
    pub running: Vec<bool>,
    /// When replacements happened (oldest first, bounded; kept contiguous).
    pub recent_restarts: VecDeque<Instant>,
    pub total_restarts: u64,
    /// When this host created it.
    pub created: SystemTime,
    pub failed: Option<Failure>,
    pub deleting: bool,
    pub requeue_at: Option<Instant>,
    pub events: VecDeque<Event>,
    pub last_termination: Option<TerminationRecord>,
    pub available: Available,
    pub kind: Kind,
}

impl WorkloadState {
    /// A record with no instance, no history and the kind its spec says.
    pub fn new(
        name: Arc<str>,
        labels: BTreeMap<String, String>,
        spec: Arc<WorkloadSpec>,
        revision: Arc<str>,
        wall: SystemTime,
    ) -> Self {
        let kind = match spec.job {
            Some(_) => Kind::Job(Box::new(JobRecord::start(&revision))),
            None => Kind::Workload(Rollouts::default()),
        };
        Self {
            name,
            labels,
            spec,
            revision,
            slots: Vec::new(),
            running: Vec::new(),
            recent_restarts: VecDeque::new(),
            total_restarts: 0,
            created: wall,
            failed: None,
            deleting: false,
            requeue_at: None,
            events: VecDeque::new(),
            last_termination: None,
            available: Available {
                status: false,
                since: wall,
            },
            kind,
        }
    }

    /// The job's part, if this is a job.
    pub fn job(&self) -> Option<&JobRecord> {
        match &self.kind {
            Kind::Job(job) => Some(job),
            Kind::Workload(_) => None,
        }
    }

    /// The job's part, if this is a job.
    pub fn job_mut(&mut self) -> Option<&mut JobRecord> {
        match &mut self.kind {
            Kind::Job(job) => Some(job),
            Kind::Workload(_) => None,
        }
    }

    /// The workload's rollouts, if this is a workload.
    pub fn rollouts(&self) -> Option<&Rollouts> {
        match &self.kind {
            Kind::Workload(r) => Some(r),
            Kind::Job(_) => None,
        }
    }

    /// The rollout in progress, if any.
    pub fn rollout(&self) -> Option<RolloutObservation> {
        self.rollouts().and_then(|r| r.rollout)
    }

    /// Whether this is a job whose finish is durable (and so was acted on: its runs
    /// stopped, its end said).
    pub fn job_finished(&self) -> bool {
        self.job().is_some_and(JobRecord::finished)
    }

    /// Makes sure `slot` exists in the parallel vectors.
    pub fn ensure_slot(&mut self, slot: usize) {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, SlotObservation::default);
            self.running.resize(slot + 1, false);
        }
    }

    /// Drops trailing surplus slots that no longer hold an instance.
    pub fn trim_surplus(&mut self) {
        let keep = self.spec.replicas as usize;
        while self.slots.len() > keep
            && self
                .slots
                .last()
                .is_some_and(|s| s.instance.is_none() && s.successor.is_none())
        {
            self.slots.pop();
            self.running.pop();
        }
    }

    /// How many spares this workload should hold, `host_default` where its spec says
    /// nothing: none for a job, an HTTP service (its replicas build their own
    /// instances), a workload scaled to zero, never restarted, failed or being deleted.
    pub fn spares_wanted(&self, host_default: u32) -> usize {
        let idle = self.deleting
            || self.failed.is_some()
            || self.job().is_some()
            || self.spec.http.is_some()
            || self.spec.replicas == 0
            || self.spec.restart_policy == crate::manifest::RestartPolicy::Never;
        if idle {
            0
        } else {
            self.spec.spares.unwrap_or(host_default) as usize
        }
    }

    /// Whether the built-in replica policy would replace a failed instance of this
    /// workload at once, as far as is known before any end: a workload (not a job, nor
    /// an HTTP service, whose replicas replace their own instances) with slots,
    /// restarted on failure, neither failed nor being deleted, with no rollout in
    /// progress and room in its restart budget. The slot's back-off is the instance's
    /// to check when it ends (see [`crate::runtime::ReflexTicket`]).
    pub fn reflex_armable(&self, now: Instant) -> bool {
        let budget_room = self.spec.restart_budget.is_none_or(|budget| {
            let spent = self
                .recent_restarts
                .iter()
                .filter(|t| now.saturating_duration_since(**t) <= budget.window)
                .count();
            spent < budget.max_restarts as usize
        });
        self.rollouts().is_some_and(|r| r.rollout.is_none())
            && self.spec.http.is_none()
            && self.spec.replicas > 0
            && !self.deleting
            && self.failed.is_none()
            && self.spec.restart_policy != crate::manifest::RestartPolicy::Never
            && budget_room
    }

    /// Instances in any phase, successors included.
    pub fn live_count(&self) -> usize {
        self.slots
            .iter()
            .map(|s| usize::from(s.instance.is_some()) + usize::from(s.successor.is_some()))
            .sum()
    }

    /// Slots whose instance reported `Running`.
    pub fn running_count(&self) -> usize {
        self.running.iter().filter(|r| **r).count()
    }

    /// Ready instances (successors included) in the desired slots, none stopping.
    pub fn ready_count(&self) -> u32 {
        self.slots
            .iter()
            .take(self.spec.replicas as usize)
            .map(|s| {
                [&s.instance, &s.successor]
                    .into_iter()
                    .flatten()
                    .filter(|i| i.ready && !i.stopping)
                    .count()
            })
            .sum::<usize>() as u32
    }

    /// The snapshot the policy decides on now.
    pub fn policy_input(&self, now: Instant) -> PolicyInput<'_> {
        let (recent_restarts, rest) = self.recent_restarts.as_slices();
        debug_assert!(rest.is_empty(), "recent_restarts is kept contiguous");
        PolicyInput {
            workload: &self.name,
            desired: &self.spec,
            revision: &self.revision,
            rollout: self.rollout(),
            slots: &self.slots,
            recent_restarts,
            failed: self.failed.is_some(),
            now,
        }
    }

    /// Counts a replacement at `now`.
    pub fn record_restart(&mut self, now: Instant) {
        self.total_restarts += 1;
        let cap = self
            .spec
            .restart_budget
            .map_or(0, |b| b.max_restarts as usize + 1)
            .max(MIN_RESTART_HISTORY);
        while self.recent_restarts.len() >= cap {
            self.recent_restarts.pop_front();
        }
        self.recent_restarts.push_back(now);
        self.recent_restarts.make_contiguous();
    }

    /// Forgets what belonged to the revision before: restart history, back-off streaks
    /// and any failure verdict.
    pub fn forget_failures(&mut self) {
        self.failed = None;
        self.recent_restarts.clear();
        for slot in &mut self.slots {
            slot.consecutive_ends = 0;
        }
    }

    /// Asks for a pass at `at` at the latest.
    pub fn requeue(&mut self, at: Instant) {
        self.requeue_at = Some(self.requeue_at.map_or(at, |t| t.min(at)));
    }

    /// An event of this workload dated now.
    pub fn event(
        &self,
        ctx: &Ctx<'_>,
        instance: Option<&str>,
        kind: EventType,
        reason: &str,
        message: String,
    ) -> Event {
        Event {
            time: ctx.wall,
            kind,
            workload: self.name.to_string(),
            instance: instance.map(str::to_string),
            reason: reason.to_string(),
            message,
        }
    }

    /// Records an event in the history and sends it to subscribers.
    pub fn record(&mut self, ctx: &mut Ctx<'_>, event: Event) {
        ctx.push(Effect::Broadcast(event.clone()));
        while self.events.len() >= ctx.history.max(1) {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// Records an event of this workload dated now (history and subscribers).
    pub fn say(&mut self, ctx: &mut Ctx<'_>, kind: EventType, reason: &str, message: String) {
        let event = self.event(ctx, None, kind, reason, message);
        self.record(ctx, event);
    }
}
