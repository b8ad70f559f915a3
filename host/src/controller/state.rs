//! The controller's record of one workload: its desired spec, the observation of each
//! slot (what a policy sees), the handles of live instances (what only the controller
//! sees), restart history, events and conditions.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::manifest::WorkloadSpec;
use crate::policy::{PolicyInput, SlotObservation};
use crate::runtime::{InstanceHandle, PreparedComponent};
use crate::status::{Event, TerminationRecord};

/// The most restart timestamps kept when no budget asks for more.
const MIN_RESTART_HISTORY: usize = 64;

/// A revision kept so that a rollout can go back to it.
pub(super) struct RevisionRecord {
    pub spec: Arc<WorkloadSpec>,
    pub component: Arc<PreparedComponent>,
    pub grants: crate::runtime::Grants,
    pub plugin: Option<Arc<crate::runtime::plugin::PreparedPlugin>>,
    pub revision: Arc<str>,
}

pub(super) struct WorkloadState {
    pub name: Arc<str>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub spec: Arc<WorkloadSpec>,
    pub component: Arc<PreparedComponent>,
    /// The granted directories of the current revision, by handle.
    pub grants: crate::runtime::Grants,
    /// Shared with every instance observation of this revision (spawns clone, not copy).
    pub revision: Arc<str>,
    /// What policies see; index = slot.
    pub slots: Vec<SlotObservation>,
    /// Handles of live instances, parallel to `slots`.
    pub handles: Vec<Option<InstanceHandle>>,
    /// Handles of successor instances (rolling update), parallel to `slots`.
    pub successor_handles: Vec<Option<InstanceHandle>>,
    /// The compiled plugin of the current revision, kept to rebuild it on rollback.
    pub current_plugin: Option<Arc<crate::runtime::plugin::PreparedPlugin>>,
    /// The revision before the current one.
    pub previous: Option<RevisionRecord>,
    /// The rollout in progress.
    pub rollout: Option<crate::policy::RolloutObservation>,
    /// Whether each slot's live instance has reported `Running`.
    pub running: Vec<bool>,
    pub recent_restarts: VecDeque<Instant>,
    pub total_restarts: u64,
    pub failed: Option<(String, String)>,
    pub deleting: bool,
    pub requeue_at: Option<Instant>,
    pub events: VecDeque<Event>,
    /// The workload's plugin policy; `None` means the host's built-in policy decides.
    pub plugin: Option<crate::policy::PluginPolicy>,
    pub last_termination: Option<TerminationRecord>,
    pub available: (bool, SystemTime),
    pub failed_since: Option<SystemTime>,
    /// A Job's progress (`None` for a Workload).
    pub job: Option<crate::job::JobProgress>,
    /// The job's progress as last made durable (what status shows).
    pub job_durable: Option<crate::job::JobProgress>,
    /// Records of the job's progress queued and not yet durable.
    pub job_pending: u32,
    /// Why the job's records cannot be made durable, and since when (the ledger stalls).
    pub ledger_stall: Option<(String, SystemTime)>,
}

impl WorkloadState {
    pub fn new(
        name: Arc<str>,
        labels: std::collections::BTreeMap<String, String>,
        spec: Arc<WorkloadSpec>,
        component: Arc<PreparedComponent>,
        grants: crate::runtime::Grants,
        revision: Arc<str>,
    ) -> Self {
        Self {
            name,
            labels,
            spec,
            component,
            grants,
            revision,
            slots: Vec::new(),
            handles: Vec::new(),
            successor_handles: Vec::new(),
            current_plugin: None,
            previous: None,
            rollout: None,
            running: Vec::new(),
            recent_restarts: VecDeque::new(),
            total_restarts: 0,
            failed: None,
            deleting: false,
            requeue_at: None,
            events: VecDeque::new(),
            plugin: None,
            last_termination: None,
            available: (false, SystemTime::now()),
            failed_since: None,
            job: None,
            job_durable: None,
            job_pending: 0,
            ledger_stall: None,
        }
    }

    /// Whether this is a job whose finish is durable (and so was acted on: its runs
    /// stopped, its end said).
    pub fn job_finished(&self) -> bool {
        self.job_durable
            .as_ref()
            .is_some_and(|p| p.finished.is_some())
    }

    /// Makes sure `slot` exists in the parallel vectors.
    pub fn ensure_slot(&mut self, slot: usize) {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, SlotObservation::default);
            self.handles.resize_with(slot + 1, || None);
            self.successor_handles.resize_with(slot + 1, || None);
            self.running.resize(slot + 1, false);
        }
    }

    /// Drops trailing surplus slots that no longer hold an instance.
    pub fn trim_surplus(&mut self) {
        let keep = self.spec.replicas as usize;
        while self.slots.len() > keep
            && self.handles.last().is_some_and(Option::is_none)
            && self.successor_handles.last().is_some_and(Option::is_none)
        {
            self.slots.pop();
            self.handles.pop();
            self.successor_handles.pop();
            self.running.pop();
        }
    }

    pub fn live_count(&self) -> usize {
        self.handles
            .iter()
            .chain(&self.successor_handles)
            .filter(|h| h.is_some())
            .count()
    }

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
    pub fn policy_input(&mut self, now: Instant) -> PolicyInput<'_> {
        PolicyInput {
            workload: &self.name,
            desired: &self.spec,
            revision: &self.revision,
            rollout: self.rollout,
            slots: &self.slots,
            recent_restarts: self.recent_restarts.make_contiguous(),
            failed: self.failed.is_some(),
            now,
        }
    }

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
    }

    pub fn push_event(&mut self, event: Event, history: usize) {
        while self.events.len() >= history.max(1) {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}
