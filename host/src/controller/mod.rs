//! The controller: one task that owns all desired and observed state and reconciles it.
//!
//! It wakes on what happens (a command, an instance event, a requeue timer) and
//! reconciles only the workloads touched; a periodic resync is the safety net. For each
//! workload it hands the policy a snapshot and validates every action before running it.
//!
//! Architecture invariant: the controller never touches a `Store`; it knows instances
//! through [`InstanceHandle`]s and [`InstanceEvent`]s from the runtime.

mod ledger;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::sleep_until;

use crate::job::JobProgress;
use crate::manifest::{RestartPolicy, StrategyKind, WorkloadSpec};
use crate::policy::snapshot::Snapshot;
use crate::policy::{Action, InstanceObservation, PluginPolicy, Policy, RolloutObservation};
use crate::runtime::plugin::{PluginInstance, PluginLimits, PreparedPlugin};
use crate::runtime::{
    InstanceEvent, InstanceEventKind, LogLine, PreparedComponent, Runtime, SpawnRequest, StopCause,
};
use crate::status::{
    Condition, Event, EventType, HostStatus, InstanceStatus, JobStatus, Phase, RolloutStatus,
    TerminationRecord, WorkloadStatus,
};
use state::{RevisionRecord, WorkloadState};

/// Controller settings; every field has a default.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Reconcile every workload at least this often, even if nothing happened.
    pub resync_interval: Duration,
    /// Events kept per workload.
    pub event_history: usize,
    /// Most live instances on the host; spawns beyond are refused with an event.
    pub max_instances: usize,
    /// Capacity of the instance event queue (instances wait when it is full).
    pub event_queue: usize,
    /// Longest a host shutdown waits for instances after their grace periods.
    pub shutdown_slack: Duration,
    /// Bounds on policy plugins.
    pub plugin_limits: PluginLimits,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            resync_interval: Duration::from_secs(10),
            event_history: 32,
            max_instances: 100_000,
            event_queue: 4096,
            shutdown_slack: Duration::from_secs(1),
            plugin_limits: PluginLimits::default(),
        }
    }
}

/// A workload whose component is compiled, ready for the controller.
pub(crate) struct PreparedWorkload {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: Arc<WorkloadSpec>,
    pub component: Arc<PreparedComponent>,
    /// The granted directories, opened at admission.
    pub grants: crate::runtime::Grants,
    pub plugin: Option<Arc<PreparedPlugin>>,
    pub revision: String,
    /// Where the workload was written, for located errors.
    pub origin: Option<crate::manifest::Origin>,
}

/// Why a prepared workload may not replace the one of the same name: a Job's spec cannot
/// change once applied, and a name keeps its kind until it is deleted. `current` is the
/// applied one's (is a job, revision), unless it is being deleted.
pub(crate) fn apply_conflict(
    name: &str,
    current: Option<(bool, &str)>,
    new_is_job: bool,
    new_revision: &str,
) -> Option<(String, String)> {
    let (is_job, revision) = current?;
    let kind = |job: bool| if job { "job" } else { "workload" };
    if is_job != new_is_job {
        return Some((
            format!(
                "`{name}` is applied as a {}; it cannot become a {}",
                kind(is_job),
                kind(new_is_job)
            ),
            format!(
                "delete {}/{name} first, or choose another name",
                kind(is_job)
            ),
        ));
    }
    if is_job && revision != new_revision {
        return Some((
            format!(
                "job `{name}` is applied with revision {revision}; a Job's spec cannot change once applied"
            ),
            format!("delete job/{name} first (its progress goes with it), then apply"),
        ));
    }
    None
}

/// Requests from the [`crate::Host`] handle to the controller task.
pub(crate) enum Command {
    Apply(
        Vec<PreparedWorkload>,
        oneshot::Sender<Result<(), crate::manifest::Rejected>>,
    ),
    Delete(String, oneshot::Sender<bool>),
    Status(oneshot::Sender<HostStatus>),
    Counts(oneshot::Sender<Vec<crate::status::WorkloadCounts>>),
    Snapshot(String, oneshot::Sender<Option<Snapshot>>),
    Shutdown(oneshot::Sender<HostStatus>),
}

pub(crate) struct Controller {
    runtime: Arc<Runtime>,
    policy: Arc<dyn Policy>,
    config: ControllerConfig,
    workloads: BTreeMap<Arc<str>, WorkloadState>,
    dirty: BTreeSet<Arc<str>>,
    events_tx: mpsc::Sender<InstanceEvent>,
    events_rx: mpsc::Receiver<InstanceEvent>,
    host_events: broadcast::Sender<Event>,
    logs: broadcast::Sender<LogLine>,
    live: usize,
    /// Whether another instance fits under the kernel's limit on memory mappings
    /// (`None` where it cannot be reached before `max_instances`, or is not known).
    mappings: Option<crate::runtime::mappings::MappingGuard>,
    next_id: u64,
    id_salt: u32,
    /// Where Jobs' progress is kept across restarts, if anywhere (read when a job is
    /// applied).
    ledger: Option<Arc<dyn crate::job::JobLedger>>,
    /// Writes jobs' progress to the ledger, off this task.
    writer: Option<ledger::LedgerWriter>,
    /// Its acknowledgements.
    durable_rx: tokio::sync::mpsc::UnboundedReceiver<ledger::Notice>,
    /// Why the job ledger cannot write, while it cannot.
    ledger_stalled: Option<String>,
    /// Latency histograms.
    metrics: Arc<crate::metrics::Metrics>,
}

impl Controller {
    pub fn new(
        runtime: Arc<Runtime>,
        policy: Arc<dyn Policy>,
        config: ControllerConfig,
        host_events: broadcast::Sender<Event>,
        logs: broadcast::Sender<LogLine>,
        ledger: Option<Arc<dyn crate::job::JobLedger>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::channel(config.event_queue.max(1));
        let (durable_tx, durable_rx) = mpsc::unbounded_channel();
        let writer = ledger.clone().and_then(|ledger| {
            ledger::LedgerWriter::start(ledger, durable_tx)
                .map_err(|e| {
                    tracing::error!(
                        "cannot start the job ledger's writer, jobs' progress stays in memory: {e}"
                    )
                })
                .ok()
        });
        let mappings = crate::runtime::mappings::MappingGuard::new(runtime.config())
            .filter(|g| g.warning_at() < config.max_instances);
        Self {
            runtime,
            policy,
            config,
            workloads: BTreeMap::new(),
            dirty: BTreeSet::new(),
            events_tx,
            events_rx,
            host_events,
            logs,
            live: 0,
            mappings,
            next_id: 0,
            id_salt: fastrand::u32(..),
            writer,
            durable_rx,
            ledger_stalled: None,
            ledger,
            metrics,
        }
    }

    /// Runs until a shutdown command has been served (or every `Host` handle is gone).
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut next_resync = crate::clock::from_now(self.config.resync_interval);
        loop {
            let next_requeue = self.workloads.values().filter_map(|w| w.requeue_at).min();
            let wake = next_requeue.map_or(next_resync, |r| r.min(next_resync));
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => {
                        let status = self.shutdown().await;
                        let _ = reply.send(status);
                        return;
                    }
                    Some(command) => self.handle_command(command),
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                Some(notice) = self.durable_rx.recv() => self.handle_ledger(notice),
                Some(event) = self.events_rx.recv() => {
                    self.handle_instance_event(event);
                    // Take whatever else is already queued before reconciling once.
                    for _ in 0..1024 {
                        match self.events_rx.try_recv() {
                            Ok(event) => self.handle_instance_event(event),
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if now >= next_resync {
                        self.dirty.extend(self.workloads.keys().cloned());
                        next_resync = crate::clock::after(now, self.config.resync_interval);
                    }
                    for w in self.workloads.values() {
                        if w.requeue_at.is_some_and(|t| t <= now) {
                            self.dirty.insert(w.name.clone());
                        }
                    }
                }
            }
            self.reconcile_dirty().await;
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Apply(workloads, reply) => {
                let diagnostics: Vec<_> = workloads
                    .iter()
                    .filter_map(|w| {
                        let current = self
                            .workloads
                            .get(w.name.as_str())
                            .filter(|s| !s.deleting)
                            .map(|s| (s.job.is_some(), &*s.revision));
                        apply_conflict(&w.name, current, w.spec.job.is_some(), &w.revision).map(
                            |(message, help)| {
                                crate::manifest::Diagnostic::at(w.origin.clone(), message)
                                    .with_help(help)
                            },
                        )
                    })
                    .collect();
                if !diagnostics.is_empty() {
                    let _ = reply.send(Err(crate::manifest::Rejected { diagnostics }));
                    return;
                }
                // Checked at admission too; here it is atomic with the apply.
                if let Err(rejected) = self.check_grant_nesting(&workloads) {
                    let _ = reply.send(Err(rejected));
                    return;
                }
                for w in workloads {
                    self.apply_one(w);
                }
                let _ = reply.send(Ok(()));
            }
            Command::Delete(name, reply) => {
                let found = match self.workloads.get_mut(name.as_str()) {
                    Some(w) => {
                        if w.job.is_some()
                            && let Some(writer) = &self.writer
                        {
                            writer.send(ledger::LedgerOp::Forget(w.name.clone()));
                        }
                        w.deleting = true;
                        self.dirty.insert(w.name.clone());
                        true
                    }
                    None => false,
                };
                let _ = reply.send(found);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Counts(reply) => {
                let counts = self
                    .workloads
                    .values()
                    .map(|w| crate::status::WorkloadCounts {
                        name: w.name.to_string(),
                        desired: w.spec.replicas,
                        live: w.live_count() as u32,
                        running: w.running.iter().filter(|r| **r).count() as u32,
                        ready: w.ready_count(),
                        restarts: w.total_restarts,
                        failed: w.failed.is_some(),
                    })
                    .collect();
                let _ = reply.send(counts);
            }
            Command::Snapshot(name, reply) => {
                let _ = reply.send(self.snapshot(&name));
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    /// Refuses grants of `batch` that nest with a writable one, in the batch or among
    /// the workloads it leaves in place (those being deleted included: their instances
    /// may still run).
    fn check_grant_nesting(&self, batch: &[PreparedWorkload]) -> Result<(), crate::Rejected> {
        use crate::admission::GrantRef;
        let new: Vec<GrantRef<'_>> = batch
            .iter()
            .flat_map(|w| {
                w.spec.dirs.iter().map(move |grant| GrantRef {
                    workload: &w.name,
                    grant,
                    origin: w.origin.as_ref(),
                })
            })
            .collect();
        let existing: Vec<GrantRef<'_>> = self
            .workloads
            .values()
            .filter(|s| !batch.iter().any(|w| *w.name == *s.name))
            .flat_map(|s| {
                // The previous revision's instances may still run during a rollout.
                let previous = s.previous.iter().flat_map(|p| p.spec.dirs.iter());
                s.spec
                    .dirs
                    .iter()
                    .chain(previous)
                    .map(move |grant| GrantRef {
                        workload: &s.name,
                        grant,
                        origin: None,
                    })
            })
            .collect();
        crate::admission::check_nesting(&new, &existing)
    }

    fn apply_one(&mut self, mut w: PreparedWorkload) {
        // A fault for the tests of crash-only behaviour, in debug builds only.
        #[cfg(debug_assertions)]
        if std::env::var("SETPOINT_TEST_PANIC_ON_APPLY").is_ok_and(|n| n == w.name) {
            panic!(
                "SETPOINT_TEST_PANIC_ON_APPLY names `{}` (a test fault)",
                w.name
            );
        }
        let name: Arc<str> = Arc::from(w.name.as_str());
        let history = self.config.event_history;
        let unchanged = self
            .workloads
            .get(&name)
            .is_some_and(|s| *s.revision == *w.revision);
        let prepared_plugin = w.plugin.take();
        let plugin = match prepared_plugin.clone() {
            Some(plugin) if !unchanged => {
                Some(self.plugin_policy(&name, plugin, &w.spec, &w.revision))
            }
            _ => None,
        };
        match self.workloads.get_mut(&name) {
            None => {
                let mut state = WorkloadState::new(
                    name.clone(),
                    w.labels,
                    w.spec,
                    w.component,
                    w.grants,
                    Arc::from(w.revision.as_str()),
                );
                state.plugin = plugin;
                state.current_plugin = prepared_plugin;
                let event = self.event(
                    &name,
                    None,
                    EventType::Normal,
                    "Applied",
                    format!("revision {}", w.revision),
                );
                state.push_event(event, history);
                let mut fresh_job = false;
                if state.spec.job.is_some() {
                    match self.stored_job(&name, &w.revision) {
                        Some(progress) => {
                            if let Some(outcome) = &progress.finished {
                                // Finished before the host restarted: nothing runs again.
                                if !outcome.complete {
                                    state.failed =
                                        Some((outcome.reason.clone(), outcome.message.clone()));
                                    state.failed_since = Some(outcome.at);
                                }
                            }
                            state.job_durable = Some(progress.clone());
                            state.job = Some(progress);
                        }
                        None => {
                            state.job = Some(JobProgress::start(&w.revision));
                            fresh_job = true;
                        }
                    }
                }
                self.workloads.insert(name.clone(), state);
                if fresh_job {
                    // Recorded at once, so that the deadline survives a crash.
                    self.persist_job(&name);
                }
            }
            Some(state) => {
                if state.deleting && w.spec.job.is_some() {
                    // A job deleted and applied again starts over (acknowledgements of
                    // the old run's records are recognised by its start and ignored).
                    state.job = None;
                    state.job_pending = 0;
                    state.job_durable = None;
                    state.failed = None;
                    state.failed_since = None;
                }
                state.deleting = false;
                state.labels = w.labels;
                if *state.revision != *w.revision {
                    // Restart history and any failure verdict belong to the old revision.
                    // A job (deleted, applied again changed) never rolls: it starts over.
                    let rolling = w.spec.strategy.kind == StrategyKind::RollingUpdate
                        && w.spec.job.is_none()
                        && state.live_count() > 0;
                    if rolling {
                        // The policy replaces old instances a few at a time.
                        state.rollout = Some(RolloutObservation {
                            started: Instant::now(),
                            rolled_back: false,
                        });
                    } else {
                        // Recreate: every old instance stops now; new ones fill the slots.
                        state.rollout = None;
                        stop_all(state, StopCause::Replaced);
                    }
                    state.previous = Some(RevisionRecord {
                        spec: state.spec.clone(),
                        component: state.component.clone(),
                        grants: state.grants.clone(),
                        plugin: state.current_plugin.take(),
                        revision: state.revision.clone(),
                    });
                    state.current_plugin = prepared_plugin;
                    for slot in &mut state.slots {
                        slot.consecutive_ends = 0;
                    }
                    state.failed = None;
                    state.failed_since = None;
                    state.recent_restarts.clear();
                    state.plugin = plugin;
                    let message = format!("revision {} replaces {}", w.revision, state.revision);
                    state.revision = Arc::from(w.revision.as_str());
                    state.component = w.component;
                    state.grants = w.grants;
                    let event = Event {
                        time: SystemTime::now(),
                        kind: EventType::Normal,
                        workload: name.to_string(),
                        instance: None,
                        reason: "Updated".into(),
                        message,
                    };
                    let _ = self.host_events.send(event.clone());
                    state.push_event(event, history);
                }
                state.spec = w.spec;
                if state.spec.job.is_some() && state.job.is_none() {
                    state.job = Some(JobProgress::start(&w.revision));
                    state.job_durable = None;
                    self.persist_job(&name);
                }
            }
        }
        self.dirty.insert(name);
    }

    /// The progress the ledger kept for this revision of a job, if any.
    fn stored_job(&self, name: &str, revision: &str) -> Option<JobProgress> {
        self.ledger
            .as_ref()
            .and_then(|l| l.load(name))
            .filter(|p| p.revision == revision)
    }

    /// Makes a job's progress durable: queued to the ledger's writer (the job waits for
    /// the acknowledgement before it acts on it), or at once without a ledger.
    fn persist_job(&mut self, name: &str) {
        let Some(w) = self.workloads.get_mut(name) else {
            return;
        };
        let Some(progress) = w.job.clone() else {
            return;
        };
        match &self.writer {
            Some(writer) => {
                w.job_pending += 1;
                writer.send(ledger::LedgerOp::Record(w.name.clone(), progress));
                if let Some(why) = self.ledger_stalled.clone() {
                    let name = w.name.clone();
                    self.note_ledger_stall(&name, &why);
                }
            }
            None => self.job_durable(name, progress),
        }
    }

    /// What the ledger's writer reports: a record durable, or writes stalled or resumed.
    fn handle_ledger(&mut self, notice: ledger::Notice) {
        match notice {
            ledger::Notice::Durable(job, progress) => self.handle_durable(&job, progress),
            ledger::Notice::Stalled(why) => {
                let waiting: Vec<Arc<str>> = self
                    .workloads
                    .values()
                    .filter(|w| w.job_pending > 0)
                    .map(|w| w.name.clone())
                    .collect();
                for name in waiting {
                    self.note_ledger_stall(&name, &why);
                }
                self.ledger_stalled = Some(why);
            }
            ledger::Notice::Resumed => {
                self.ledger_stalled = None;
                let paused: Vec<Arc<str>> = self
                    .workloads
                    .values()
                    .filter(|w| w.ledger_stall.is_some())
                    .map(|w| w.name.clone())
                    .collect();
                for name in paused {
                    let event = self.event(
                        &name,
                        None,
                        EventType::Normal,
                        "LedgerWriteResumed",
                        "the job ledger writes again; progress resumes".into(),
                    );
                    if let Some(w) = self.workloads.get_mut(&name) {
                        w.ledger_stall = None;
                        w.push_event(event, self.config.event_history);
                    }
                }
            }
        }
    }

    /// Job `name` waits on a ledger that cannot write: said once as an event, and as
    /// a condition (with the newest reason) until writes resume.
    fn note_ledger_stall(&mut self, name: &Arc<str>, why: &str) {
        let Some(w) = self.workloads.get_mut(name) else {
            return;
        };
        if let Some((reason, _)) = &mut w.ledger_stall {
            *reason = why.to_string();
            return;
        }
        let event = self.event(
            name,
            None,
            EventType::Warning,
            "LedgerWriteFailed",
            format!(
                "progress is paused: the job ledger cannot write ({why}); nothing more is counted until a write succeeds"
            ),
        );
        if let Some(w) = self.workloads.get_mut(name) {
            w.ledger_stall = Some((why.to_string(), SystemTime::now()));
            w.push_event(event, self.config.event_history);
        }
    }

    /// The ledger's writer made a record durable.
    fn handle_durable(&mut self, job: &Arc<str>, progress: JobProgress) {
        let Some(w) = self.workloads.get_mut(job) else {
            return;
        };
        // A record of an earlier run of this job (deleted and applied again) is stale.
        if w.job.as_ref().map(|p| p.started) != Some(progress.started) {
            return;
        }
        w.job_pending = w.job_pending.saturating_sub(1);
        self.job_durable(job, progress);
    }

    fn plugin_policy(
        &self,
        name: &Arc<str>,
        plugin: Arc<PreparedPlugin>,
        spec: &WorkloadSpec,
        revision: &str,
    ) -> PluginPolicy {
        let (label, config) = match &spec.policy {
            Some(p) => (
                p.plugin.file_name().map_or_else(
                    || "plugin".to_string(),
                    |f| f.to_string_lossy().into_owned(),
                ),
                p.config.clone(),
            ),
            None => ("plugin".to_string(), serde_json::Value::Null),
        };
        let instance = PluginInstance::new(
            self.runtime.clone(),
            plugin,
            self.config.plugin_limits,
            Arc::from(format!("{name}/policy")),
            Some(self.logs.clone()),
        );
        PluginPolicy::new(
            format!("plugin:{label}"),
            instance,
            config,
            revision.to_string(),
        )
    }

    fn snapshot(&mut self, name: &str) -> Option<Snapshot> {
        let w = self.workloads.get_mut(name)?;
        if let Some(s) = w.plugin.as_ref().and_then(|p| p.last_snapshot()) {
            return Some(s.clone());
        }
        let config = w
            .plugin
            .as_ref()
            .map_or(serde_json::Value::Null, |p| p.config().clone());
        let revision = w.revision.clone();
        let input = w.policy_input(Instant::now());
        Some(Snapshot::capture(&input, &revision, &config))
    }

    fn handle_instance_event(&mut self, event: InstanceEvent) {
        let now = Instant::now();
        let history = self.config.event_history;
        let Some(w) = self.workloads.get_mut(&event.workload) else {
            return;
        };
        let slot = event.slot as usize;
        let matches =
            |i: &Option<InstanceObservation>| i.as_ref().is_some_and(|i| i.id == event.instance);
        let (is_main, is_successor) = w.slots.get(slot).map_or((false, false), |s| {
            (matches(&s.instance), matches(&s.successor))
        });
        if !is_main && !is_successor {
            return; // a late event from an instance the controller already forgot
        }
        let mut to_log = None;
        let mut job_changed = false;
        match event.kind {
            InstanceEventKind::Running => {
                if is_main {
                    w.running[slot] = true;
                }
                let instance = if is_main {
                    &w.slots[slot].instance
                } else {
                    &w.slots[slot].successor
                };
                if let Some(i) = instance {
                    self.metrics.spawned(now.saturating_duration_since(i.since));
                }
                to_log = Some((
                    EventType::Normal,
                    "Started",
                    "instance is running".to_string(),
                ));
            }
            InstanceEventKind::Ready(ready) => {
                let obs = &mut w.slots[slot];
                let instance = if is_main {
                    obs.instance.as_mut()
                } else {
                    obs.successor.as_mut()
                };
                if let Some(i) = instance {
                    i.ready = ready;
                }
                if !ready {
                    to_log = Some((
                        EventType::Warning,
                        "NotReady",
                        "instance reports not ready".to_string(),
                    ));
                }
            }
            InstanceEventKind::Ended(end) => {
                self.live -= 1;
                let obs = &mut w.slots[slot];
                if is_main {
                    w.handles[slot] = None;
                    w.running[slot] = false;
                    obs.instance = None;
                    // The old instance of a rollout is gone: its successor takes the slot.
                    if let Some(successor) = obs.successor.take() {
                        obs.instance = Some(successor);
                        w.handles[slot] = w.successor_handles[slot].take();
                        w.running[slot] = true;
                    }
                } else {
                    w.successor_handles[slot] = None;
                    obs.successor = None;
                }
                if !end.reason.is_host_stop() {
                    obs.consecutive_ends = if end.ran_for >= w.spec.backoff.reset_after {
                        1
                    } else {
                        obs.consecutive_ends.saturating_add(1)
                    };
                }
                let (kind, reason) = match &end.reason {
                    r if r.is_success() => (EventType::Normal, "Completed"),
                    r if r.is_host_stop() => (EventType::Normal, "Stopped"),
                    r => (EventType::Warning, r.name()),
                };
                let mut message = end.reason.to_string();
                if kind == EventType::Warning
                    && let Some(last) = end.output.tail.last()
                {
                    message.push_str(&format!("; last output: {last}"));
                }
                obs.last_end = Some((now, end.reason.clone()));
                if let (Some(job), Some(progress)) = (&w.spec.job, w.job.as_mut()) {
                    let verdict = crate::job::classify(job, &end.reason);
                    let last = end.output.tail.last().map_or("", String::as_str);
                    if progress.count(job, verdict, last) {
                        job_changed = true;
                    }
                }
                w.last_termination = Some(TerminationRecord {
                    instance: event.instance.to_string(),
                    slot: event.slot,
                    at: SystemTime::now(),
                    end: *end,
                });
                w.trim_surplus();
                to_log = Some((kind, reason, message));
            }
        }
        if let Some((kind, reason, message)) = to_log {
            let mut e = self.new_event(
                &event.workload,
                Some(&event.instance),
                kind,
                reason,
                message,
            );
            // Dated when it happened to the instance, not when the controller heard of it.
            e.time = event.at;
            let _ = self.host_events.send(e.clone());
            if let Some(w) = self.workloads.get_mut(&event.workload) {
                w.push_event(e, history);
            }
        }
        // After the run's own event: the job's verdict follows from it.
        if job_changed {
            self.persist_job(&event.workload);
        }
        self.dirty.insert(event.workload);
    }

    async fn reconcile_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        let mut actions = Vec::new();
        for name in dirty {
            let started = Instant::now();
            self.reconcile_one(&name, &mut actions).await;
            self.metrics.reconciled(started.elapsed());
        }
    }

    /// Reconciles one workload: deletion, a job's runs, or its policy's decision.
    async fn reconcile_one(&mut self, name: &Arc<str>, actions: &mut Vec<Action>) {
        if self.workloads.get(name).is_some_and(|w| w.deleting) {
            self.reconcile_deletion(name);
            return;
        }
        let Some(w) = self.workloads.get_mut(name) else {
            return;
        };
        w.requeue_at = None;
        actions.clear();
        if w.job.is_some() {
            self.reconcile_job(name, actions);
            return;
        }
        // The plugin is held apart while it decides on the snapshot it is shown.
        let mut plugin = w.plugin.take();
        let input = w.policy_input(Instant::now());
        let deciding = Instant::now();
        match plugin.as_mut() {
            Some(plugin) => plugin.reconcile(&input, &*self.policy, actions).await,
            None => self.policy.reconcile(&input, actions),
        }
        self.metrics.policy_called(deciding.elapsed());
        w.plugin = plugin;
        for action in actions.drain(..) {
            self.execute(name, action);
        }
        self.check_rollout(name);
        self.update_conditions(name);
    }

    /// A job: fails it at its deadline, removes it once its time-to-live after finishing
    /// has passed, and otherwise starts the runs [`crate::job::reconcile`] asks for.
    fn reconcile_job(&mut self, name: &Arc<str>, actions: &mut Vec<Action>) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let Some(w) = self.workloads.get_mut(name) else {
            return;
        };
        // The spec is shared (an `Arc`): holding it costs no copy of the job's rules.
        let spec = w.spec.clone();
        let (Some(job), Some(progress)) = (spec.job.as_ref(), w.job.as_mut()) else {
            return;
        };
        if progress.check_deadline(job, wall) {
            self.persist_job(name);
        }
        let Some(w) = self.workloads.get_mut(name) else {
            return;
        };
        let Some(progress) = w.job.as_ref() else {
            return;
        };
        // Time to live counts from the finish as recorded.
        let durable = w.job_durable.as_ref().unwrap_or(progress);
        let due = durable.next_due(job, now, wall);
        if durable.finished.is_some() && due.is_some_and(|t| t <= now) {
            if let Some(writer) = &self.writer {
                writer.send(ledger::LedgerOp::Forget(w.name.clone()));
            }
            w.deleting = true;
            let e = self.event(
                name,
                None,
                EventType::Normal,
                "TTLExpired",
                "the job finished longer than ttlAfterFinished ago: deleting it".into(),
            );
            if let Some(w) = self.workloads.get_mut(name) {
                w.push_event(e, self.config.event_history);
            }
            self.reconcile_deletion(name);
            return;
        }
        if w.job_pending > 0 {
            // Nothing starts until the last change is durable; its acknowledgement
            // reconciles the job again.
            return;
        }
        // Held apart while the policy input borrows the state, as a plugin is.
        let Some(progress) = w.job.take() else {
            return;
        };
        let input = w.policy_input(now);
        let deciding = Instant::now();
        crate::job::reconcile(&spec, job, &progress, &input, actions);
        w.job = Some(progress);
        self.metrics.policy_called(deciding.elapsed());
        for action in actions.drain(..) {
            self.execute(name, action);
        }
        if let Some(w) = self.workloads.get_mut(name)
            && let Some(due) = due
        {
            w.requeue_at = Some(w.requeue_at.map_or(due, |t| t.min(due)));
        }
    }

    /// A job's progress is durable: once the job has finished, its remaining runs stop
    /// and how it ended is said; the job may start its next runs.
    fn job_durable(&mut self, name: &str, progress: JobProgress) {
        let history = self.config.event_history;
        let Some(w) = self.workloads.get_mut(name) else {
            return;
        };
        self.dirty.insert(w.name.clone());
        let finished_now = progress.finished.clone().filter(|_| !w.job_finished());
        if let Some(outcome) = &finished_now {
            stop_all(w, StopCause::Policy);
            if !outcome.complete {
                w.failed = Some((outcome.reason.clone(), outcome.message.clone()));
                w.failed_since = Some(outcome.at);
            }
        }
        w.job_durable = Some(progress);
        if let Some(outcome) = finished_now {
            let kind = if outcome.complete {
                EventType::Normal
            } else {
                EventType::Warning
            };
            let e = self.event(name, None, kind, &outcome.reason, outcome.message);
            if let Some(w) = self.workloads.get_mut(name) {
                w.push_event(e, history);
            }
        }
    }

    fn reconcile_deletion(&mut self, name: &Arc<str>) {
        let Some(w) = self.workloads.get_mut(name) else {
            return;
        };
        stop_all(w, StopCause::Deleted);
        if w.live_count() == 0 {
            self.workloads.remove(name);
            self.runtime.forget_unused_components();
            let e = self.event(
                name,
                None,
                EventType::Normal,
                "Deleted",
                "all instances stopped".into(),
            );
            drop(e);
        }
    }

    /// Validates one action against the current state, then carries it out.
    fn execute(&mut self, name: &Arc<str>, action: Action) {
        let history = self.config.event_history;
        let now = Instant::now();
        let refusal = {
            let Some(w) = self.workloads.get_mut(name) else {
                return;
            };
            match &action {
                Action::Spawn { slot } if *slot >= w.spec.replicas => Some(format!(
                    "spawn in slot {slot}: beyond {} replicas",
                    w.spec.replicas
                )),
                Action::Spawn { slot }
                    if w.slots
                        .get(*slot as usize)
                        .is_some_and(|s| s.instance.is_some()) =>
                {
                    Some(format!("spawn in slot {slot}: the slot is occupied"))
                }
                Action::Spawn { .. } if w.failed.is_some() => {
                    Some("spawn: the workload is marked failed".to_string())
                }
                Action::Spawn { .. } if w.job_finished() => {
                    Some("spawn: the job has finished".to_string())
                }
                Action::Spawn { .. } if self.live >= self.config.max_instances => Some(format!(
                    "spawn: the host is at its limit of {} instances",
                    self.config.max_instances
                )),
                Action::Spawn { .. } | Action::SpawnSuccessor { .. }
                    if self.mappings.as_mut().is_some_and(|g| g.full(self.live)) =>
                {
                    Some(format!(
                        "spawn: the host is at the kernel's limit of memory mappings \
                         (vm.max_map_count) with {} instances, keeping the rest for \
                         itself; {}",
                        self.live,
                        crate::runtime::mappings::advice(self.runtime.config())
                    ))
                }
                Action::Stop { slot, .. }
                    if w.handles.get(*slot as usize).is_none_or(Option::is_none) =>
                {
                    Some(format!("stop slot {slot}: no live instance there"))
                }
                Action::SpawnSuccessor { slot } => {
                    let s = w.slots.get(*slot as usize);
                    if *slot >= w.spec.replicas {
                        Some(format!(
                            "start a successor in slot {slot}: beyond {} replicas",
                            w.spec.replicas
                        ))
                    } else if s.is_none_or(|s| s.instance.is_none() || s.successor.is_some()) {
                        Some(format!(
                            "start a successor in slot {slot}: it needs a live instance and no successor"
                        ))
                    } else if w.failed.is_some() {
                        Some("start a successor: the workload is marked failed".to_string())
                    } else if self.live >= self.config.max_instances {
                        Some(format!(
                            "start a successor: the host is at its limit of {} instances",
                            self.config.max_instances
                        ))
                    } else {
                        None
                    }
                }
                Action::RollBack { .. }
                    if w.previous.is_none() || w.rollout.is_none_or(|r| r.rolled_back) =>
                {
                    Some("roll back: there is no rollout to undo".to_string())
                }
                _ => None,
            }
        };
        if let Some(message) = refusal {
            let e = self.event(
                name,
                None,
                EventType::Warning,
                "ActionRefused",
                format!("{} asked to {message}", self.policy.name()),
            );
            if let Some(w) = self.workloads.get_mut(name) {
                w.push_event(e, history);
            }
            return;
        }
        match action {
            Action::Spawn { slot } => self.spawn(name, slot, now, false),
            Action::SpawnSuccessor { slot } => self.spawn(name, slot, now, true),
            Action::RollBack { message } => self.roll_back(name, message, now),
            Action::Stop { slot, cause } => {
                let Some(w) = self.workloads.get_mut(name) else {
                    return;
                };
                if let Some(handle) = &w.handles[slot as usize] {
                    handle.stop(cause);
                }
                if let Some(i) = w.slots[slot as usize].instance.as_mut() {
                    i.stopping = true;
                }
                // A slot that goes away takes its successor with it.
                if cause == StopCause::ScaleDown
                    && let Some(handle) = &w.successor_handles[slot as usize]
                {
                    handle.stop(cause);
                    if let Some(i) = w.slots[slot as usize].successor.as_mut() {
                        i.stopping = true;
                    }
                }
            }
            Action::RequeueAfter(delay) => {
                let Some(w) = self.workloads.get_mut(name) else {
                    return;
                };
                let at = crate::clock::after(now, delay);
                w.requeue_at = Some(w.requeue_at.map_or(at, |t| t.min(at)));
            }
            Action::Event {
                warning,
                reason,
                message,
            } => {
                let repeat = self
                    .workloads
                    .get(name)
                    .and_then(|w| w.events.back())
                    .is_some_and(|last| last.reason == reason && last.message == message);
                if !repeat {
                    let kind = if warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    };
                    let e = self.event(name, None, kind, &reason, message);
                    if let Some(w) = self.workloads.get_mut(name) {
                        w.push_event(e, history);
                    }
                }
            }
            Action::MarkFailed { reason, message } => {
                let e = self.event(name, None, EventType::Warning, &reason, message.clone());
                let Some(w) = self.workloads.get_mut(name) else {
                    return;
                };
                w.failed = Some((reason, message));
                w.failed_since = Some(SystemTime::now());
                w.push_event(e, history);
            }
        }
    }

    /// Makes the previous revision current again and starts a rollout back to it.
    fn roll_back(&mut self, name: &Arc<str>, message: String, now: Instant) {
        let history = self.config.event_history;
        let Some(w) = self.workloads.get_mut(name) else {
            return;
        };
        let Some(previous) = w.previous.take() else {
            return;
        };
        // Scaling and strategy stay as they are now; what runs goes back.
        let mut spec = (*previous.spec).clone();
        spec.replicas = w.spec.replicas;
        spec.strategy = w.spec.strategy;
        let spec = Arc::new(spec);
        w.previous = Some(RevisionRecord {
            spec: std::mem::replace(&mut w.spec, spec.clone()),
            component: std::mem::replace(&mut w.component, previous.component),
            grants: std::mem::replace(&mut w.grants, previous.grants),
            plugin: std::mem::replace(&mut w.current_plugin, previous.plugin.clone()),
            revision: std::mem::replace(&mut w.revision, previous.revision.clone()),
        });
        w.rollout = Some(RolloutObservation {
            started: now,
            rolled_back: true,
        });
        // Successors run the revision being abandoned.
        for (slot, obs) in w.slots.iter_mut().enumerate() {
            if let (Some(handle), Some(successor)) =
                (&w.successor_handles[slot], obs.successor.as_mut())
            {
                handle.stop(StopCause::Replaced);
                successor.stopping = true;
            }
        }
        w.failed = None;
        w.failed_since = None;
        w.recent_restarts.clear();
        for slot in &mut w.slots {
            slot.consecutive_ends = 0;
        }
        let plugin = previous
            .plugin
            .map(|p| self.plugin_policy(name, p, &spec, &previous.revision));
        let e = self.event(
            name,
            None,
            EventType::Warning,
            "RolledBack",
            format!("{message}; rolling back to revision {}", previous.revision),
        );
        if let Some(w) = self.workloads.get_mut(name) {
            w.plugin = plugin;
            w.push_event(e, history);
        }
    }

    /// Ends the rollout once every live instance runs the current revision and is ready.
    fn check_rollout(&mut self, name: &Arc<str>) {
        let history = self.config.event_history;
        let Some(w) = self.workloads.get_mut(name) else {
            return;
        };
        if w.rollout.is_none() {
            return;
        }
        let all_current = w.slots.iter().all(|s| {
            s.successor.is_none()
                && s.instance
                    .as_ref()
                    .is_none_or(|i| *i.revision == *w.revision && !i.stopping)
        });
        if !all_current || w.ready_count() < w.spec.replicas {
            return;
        }
        let rolled_back = w.rollout.take().is_some_and(|r| r.rolled_back);
        let message = if rolled_back {
            format!("rolled back to revision {}", w.revision)
        } else {
            format!("every instance runs revision {}", w.revision)
        };
        let e = self.event(name, None, EventType::Normal, "RolloutComplete", message);
        if let Some(w) = self.workloads.get_mut(name) {
            w.push_event(e, history);
        }
    }

    fn spawn(&mut self, name: &Arc<str>, slot: u32, now: Instant, successor: bool) {
        self.next_id += 1;
        let id: Arc<str> = Arc::from(format!(
            "{name}-{:08x}",
            (self.next_id as u32 ^ self.id_salt).wrapping_mul(0x9E37_79B1)
        ));
        let Some(w) = self.workloads.get_mut(name) else {
            return;
        };
        w.ensure_slot(slot as usize);
        let replacing = !successor
            && w.slots[slot as usize]
                .last_end
                .as_ref()
                // A job's next run after a success is not a restart.
                .is_some_and(|(_, r)| !(r.is_host_stop() || w.job.is_some() && r.is_success()));
        if replacing {
            w.slots[slot as usize].restarts += 1;
            w.record_restart(now);
        }
        let request = SpawnRequest {
            workload: name.clone(),
            instance: id.clone(),
            slot,
            component: w.component.clone(),
            spec: w.spec.clone(),
            grants: w.grants.clone(),
            log_sink: Some(self.logs.clone()),
        };
        let handle = self.runtime.spawn(request, self.events_tx.clone());
        let observation = InstanceObservation {
            id: id.clone(),
            revision: w.revision.clone(),
            since: now,
            stopping: false,
            ready: false,
        };
        if successor {
            w.successor_handles[slot as usize] = Some(handle);
            w.slots[slot as usize].successor = Some(observation);
        } else {
            w.handles[slot as usize] = Some(handle);
            w.running[slot as usize] = false;
            w.slots[slot as usize].instance = Some(observation);
        }
        self.live += 1;
        if self.mappings.as_ref().map(|g| g.warning_at()) == Some(self.live) {
            self.warn_mapping_limit(name, &id);
        }
        // Spawns are frequent in a crash loop: they go to subscribers, not the bounded history.
        let reason = match (successor, replacing) {
            (true, _) => "Surge",
            (false, true) => "Replaced",
            (false, false) => "Spawned",
        };
        let _ = self.event(
            name,
            Some(&id),
            EventType::Normal,
            reason,
            format!("slot {slot}"),
        );
    }

    /// Tells (once per crossing) that the host nears the kernel's mapping limit, past
    /// which spawns fail.
    fn warn_mapping_limit(&mut self, name: &Arc<str>, id: &str) {
        let (limit, capacity) = self
            .mappings
            .as_ref()
            .map_or((0, 0), |g| (g.limit(), g.capacity()));
        let message = format!(
            "{} live instances: near the most this host can map under the kernel's \
             vm.max_map_count of {limit} (about {} at start); past it spawns are \
             refused. To hold more, {}",
            self.live,
            capacity,
            crate::runtime::mappings::advice(self.runtime.config())
        );
        tracing::warn!(workload = %name, "{message}");
        let e = self.event(
            name,
            Some(id),
            EventType::Warning,
            "MappingLimitNear",
            message,
        );
        if let Some(w) = self.workloads.get_mut(name) {
            w.push_event(e, self.config.event_history);
        }
    }

    fn update_conditions(&mut self, name: &Arc<str>) {
        let Some(w) = self.workloads.get_mut(name) else {
            return;
        };
        let available = w.ready_count() >= w.spec.replicas;
        if available != w.available.0 {
            w.available = (available, SystemTime::now());
        }
    }

    /// Builds an event, sends it to subscribers, and returns it for the history.
    fn event(
        &self,
        workload: &str,
        instance: Option<&str>,
        kind: EventType,
        reason: &str,
        message: String,
    ) -> Event {
        let event = self.new_event(workload, instance, kind, reason, message);
        let _ = self.host_events.send(event.clone());
        event
    }

    /// An event dated now, not yet broadcast.
    fn new_event(
        &self,
        workload: &str,
        instance: Option<&str>,
        kind: EventType,
        reason: &str,
        message: String,
    ) -> Event {
        Event {
            time: SystemTime::now(),
            kind,
            workload: workload.to_string(),
            instance: instance.map(str::to_string),
            reason: reason.to_string(),
            message,
        }
    }

    fn status(&self) -> HostStatus {
        let now = Instant::now();
        let workloads = self
            .workloads
            .values()
            .map(|w| {
                let policy = match &w.plugin {
                    Some(p) => p.describe(self.policy.name()),
                    None if w.job.is_some() => crate::job::POLICY_NAME.to_string(),
                    None => self.policy.name().to_string(),
                };
                workload_status(w, &policy, now)
            })
            .collect();
        HostStatus {
            workloads,
            quarantined: Vec::new(),
        }
    }

    async fn shutdown(&mut self) -> HostStatus {
        let mut longest_grace = Duration::ZERO;
        for w in self.workloads.values_mut() {
            longest_grace = longest_grace.max(w.spec.termination_grace_period);
            stop_all(w, StopCause::Shutdown);
        }
        let deadline =
            crate::clock::from_now(longest_grace.saturating_add(self.config.shutdown_slack));
        while self.live > 0 {
            tokio::select! {
                Some(event) = self.events_rx.recv() => self.handle_instance_event(event),
                _ = sleep_until(deadline.into()) => break,
            }
        }
        // Whatever did not end in time is dropped now: no task is left behind.
        for w in self.workloads.values_mut() {
            let handles = w.handles.iter_mut().chain(w.successor_handles.iter_mut());
            for handle in handles.filter_map(Option::take).collect::<Vec<_>>() {
                handle.abort().await;
            }
        }
        let status = self.status();
        // What jobs counted is written before the host is gone.
        if let Some(writer) = self.writer.as_mut() {
            writer.finish();
        }
        self.runtime.stop_ticker();
        status
    }
}

/// Asks every live instance of `w` (successors included) to stop.
fn stop_all(w: &mut WorkloadState, cause: StopCause) {
    for (slot, obs) in w.slots.iter_mut().enumerate() {
        for (handle, instance) in [
            (&w.handles[slot], &mut obs.instance),
            (&w.successor_handles[slot], &mut obs.successor),
        ] {
            if let (Some(handle), Some(instance)) = (handle, instance.as_mut()) {
                handle.stop(cause);
                instance.stopping = true;
            }
        }
    }
}

fn workload_status(w: &WorkloadState, policy: &str, now: Instant) -> WorkloadStatus {
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
    let job_progress = w.job_durable.as_ref().or(w.job.as_ref());
    let job_finished = job_progress.and_then(|p| p.finished.as_ref());
    let phase = if let Some(outcome) = job_finished {
        if outcome.complete {
            Phase::Succeeded
        } else {
            Phase::Failed
        }
    } else if w.failed.is_some() {
        Phase::Failed
    } else if w.job.is_some() {
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
    let mut conditions = if w.job.is_some() {
        Vec::new()
    } else {
        vec![Condition {
            kind: "Available",
            status: w.available.0,
            reason: if w.available.0 {
                "MinimumReplicasAvailable".into()
            } else {
                "ReplicasNotReady".into()
            },
            message: format!("{ready}/{} replicas ready", w.spec.replicas),
            last_transition: w.available.1,
        }]
    };
    if let Some((why, since)) = &w.ledger_stall {
        conditions.push(Condition {
            kind: "ProgressDurable",
            status: false,
            reason: "LedgerWriteFailed".into(),
            message: format!("progress is paused until the job ledger can write: {why}"),
            last_transition: *since,
        });
    }
    if let Some(outcome) = job_finished {
        conditions.push(Condition {
            kind: if outcome.complete {
                "Complete"
            } else {
                "Failed"
            },
            status: true,
            reason: outcome.reason.clone(),
            message: outcome.message.clone(),
            last_transition: outcome.at,
        });
    } else if let Some((reason, message)) = &w.failed {
        conditions.push(Condition {
            kind: "Failed",
            status: true,
            reason: reason.clone(),
            message: message.clone(),
            last_transition: w.failed_since.unwrap_or_else(SystemTime::now),
        });
    }
    let instances = w
        .slots
        .iter()
        .enumerate()
        .flat_map(|(slot, s)| {
            let main = s.instance.as_ref().map(|i| {
                let phase = if i.stopping {
                    "Stopping"
                } else if w.running.get(slot).copied().unwrap_or(false) {
                    "Running"
                } else {
                    "Starting"
                };
                (i, phase)
            });
            let successor = s
                .successor
                .as_ref()
                .map(|i| (i, if i.stopping { "Stopping" } else { "Surge" }));
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
                })
        })
        .collect();
    let rollout = w.rollout.map(|r| RolloutStatus {
        from: w
            .previous
            .as_ref()
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
        kind: if w.spec.job.is_some() {
            "Job"
        } else {
            "Workload"
        },
        spec: w.spec.clone(),
        job,
        desired: w.spec.replicas,
        ready,
        running,
        restarts: w.total_restarts,
        phase,
        revision: w.revision.to_string(),
        rollout,
        policy: policy.to_string(),
        conditions,
        instances,
        last_termination: w.last_termination.clone(),
        events: w.events.iter().cloned().collect(),
    }
}
