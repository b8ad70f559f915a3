//! The controller: one task that owns all desired and observed state and reconciles it.
//!
//! It wakes on what happens (a command, an instance event, a ledger acknowledgement, a
//! requeue timer) and reconciles only the workloads touched; a periodic resync is the
//! safety net. This file is the loop and the seams it drives; what happens to a
//! workload is decided by plain transitions of its [`state::WorkloadState`] (in
//! `apply`, `observe`, `execute` and `jobs`), which return [`effects::Effect`]s that
//! the loop carries out here: spawns and stops through the runtime, events to
//! subscribers, job records to the ledger's writer, a decider built again.
//!
//! Architecture invariant: the controller never touches a `Store`; it knows instances
//! through [`InstanceHandle`]s and [`InstanceEvent`]s from the runtime.

mod apply;
mod capacity;
mod commands;
mod decider;
mod effects;
mod execute;
mod jobs;
mod ledger;
mod observe;
mod state;
#[cfg(test)]
mod tests;
mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::sleep_until;

pub(crate) use crate::admission::PreparedWorkload;
use crate::policy::snapshot::Snapshot;
use crate::policy::{Action, Policy};
use crate::runtime::plugin::{PluginLimits, PreparedPlugin};
use crate::runtime::{
    Armed, InstanceEvent, InstanceEventKind, InstanceHandle, LogLine, PreparedComponent, Reflex,
    ReflexTicket, Replacement, Runtime, Spare, SpawnRequest, Standby, StopCause,
};
use crate::status::{Event, HostStatus};
use capacity::Capacity;
use decider::Decider;
use effects::{Ctx, Durability, Effect, InstanceIds};
use jobs::Pass;
use state::WorkloadState;

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
    /// Spares per workload whose spec sets none (`spec.spares`).
    pub default_spares: u32,
    /// Slots of their own for spares: `None` (on-demand allocation) means spares take
    /// room from the instances', `Some(n)` (an instance pool keeps
    /// [`crate::runtime::POOL_SPARE_SLOTS`] for them) at most `n` spares, apart.
    pub spare_slots: Option<usize>,
    /// Whether an instance that fails may start its workload's armed spare in its own
    /// place, before the controller's pass (see [`crate::runtime::reflex`]).
    pub direct_replacement: bool,
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
            default_spares: 1,
            spare_slots: None,
            direct_replacement: true,
        }
    }
}

/// Where what the controller does goes out: events and output lines to subscribers,
/// latencies to the metrics, routes to the HTTP front.
pub(crate) struct Outlets {
    pub host_events: broadcast::Sender<Event>,
    pub logs: broadcast::Sender<LogLine>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub front: Arc<crate::front::Front>,
}

/// Requests from the [`crate::Host`] handle to the controller task.
pub(crate) enum Command {
    Apply(
        Vec<PreparedWorkload>,
        oneshot::Sender<Result<(), crate::manifest::Rejected>>,
    ),
    Delete(String, oneshot::Sender<bool>),
    Restart(String, oneshot::Sender<Result<(), String>>),
    Status(oneshot::Sender<HostStatus>),
    Counts(oneshot::Sender<Vec<crate::status::WorkloadCounts>>),
    Snapshot(String, oneshot::Sender<Option<Snapshot>>),
    Shutdown(oneshot::Sender<HostStatus>),
}

/// The compiled parts of one revision: what its instances run with.
struct Artifacts {
    component: Arc<PreparedComponent>,
    grants: crate::runtime::Grants,
    plugin: Option<Arc<PreparedPlugin>>,
}

impl Artifacts {
    /// A request for an instance of this revision that has no slot yet (a spare, or a
    /// dormant task): `instance` is the id it will take, or a placeholder.
    fn unplaced(
        &self,
        workload: &Arc<str>,
        instance: Arc<str>,
        spec: &Arc<crate::manifest::WorkloadSpec>,
        logs: &broadcast::Sender<LogLine>,
    ) -> SpawnRequest {
        SpawnRequest {
            workload: workload.clone(),
            instance,
            slot: u32::MAX,
            component: self.component.clone(),
            spec: spec.clone(),
            grants: self.grants.clone(),
            log_sink: Some(logs.clone()),
            http: None,
        }
    }
}

/// One workload as the loop holds it: its state, the compiled parts of the revisions
/// it may run (the current one and the one before), and its decider.
struct Entry {
    state: WorkloadState,
    artifacts: BTreeMap<Arc<str>, Artifacts>,
    decider: Decider,
    spares: Spares,
    /// A pass over this workload took long (it has many instances): the next waits
    /// until then, gathering the events that come meanwhile (see [`PACE_FROM`]).
    paced_until: Option<Instant>,
}

/// A pass over a workload that takes at least this long is followed by a pause as long
/// as it took before the next pass over that workload: a pass reads every instance, so
/// a workload of 100,000 spawning ones would otherwise be passed over for every few
/// events, and the controller would spend its time re-reading it. Passes over other
/// workloads are not delayed, and a pass shorter than this never is.
const PACE_FROM: Duration = Duration::from_micros(200);

/// A workload's spares: instances of one revision, instantiated and not started, the
/// next spawns of that revision (see [`Spare`]). One of them (or, while none is held,
/// the request for a new instance) may be armed in `reflex`, for the first of the
/// workload's instances that fails to start in its place.
#[derive(Default)]
struct Spares {
    revision: Option<Arc<str>>,
    held: Vec<Spare>,
    reflex: Arc<Reflex>,
}

impl Spares {
    /// A spare of `revision`, if one is held (the armed one last).
    fn take(&mut self, revision: &str) -> Option<Spare> {
        if self.revision.as_deref() != Some(revision) {
            return None;
        }
        // An armed dormant task stays armed: the spawn goes on without a spare.
        if self.held.is_empty() && self.reflex.holds_spare() {
            self.disarm();
        }
        self.held.pop()
    }

    /// How many spares there are, the armed one included.
    fn count(&self) -> usize {
        self.held.len() + usize::from(self.reflex.holds_spare())
    }

    /// Puts the armed spare, if no instance took it, back with the others (an armed
    /// dormant task is ended); returns the id it was to take.
    fn disarm(&mut self) -> Option<Arc<str>> {
        let armed = self.reflex.disarm()?;
        match armed.standby {
            Standby::Spare(spare) => self.held.push(spare),
            Standby::Dormant(task) => task.discard(),
        }
        Some(armed.instance)
    }

    /// Discards every spare; returns how many there were.
    fn discard_all(&mut self) -> usize {
        self.disarm();
        let n = self.held.len();
        for spare in self.held.drain(..) {
            spare.discard();
        }
        n
    }
}

impl Entry {
    /// Drops the compiled parts of revisions neither current nor previous (instances
    /// still running one hold their own references).
    fn prune_artifacts(&mut self) {
        let current = &*self.state.revision;
        let previous = self
            .state
            .rollouts()
            .and_then(|r| r.previous.as_ref())
            .map(|p| p.revision.clone());
        self.artifacts
            .retain(|rev, _| **rev == *current || previous.as_deref() == Some(&**rev));
    }
}

pub(crate) struct Controller {
    runtime: Arc<Runtime>,
    policy: Arc<dyn Policy>,
    config: ControllerConfig,
    workloads: BTreeMap<Arc<str>, Entry>,
    dirty: BTreeSet<Arc<str>>,
    /// Live instances by id.
    handles: HashMap<Arc<str>, InstanceHandle>,
    events_tx: mpsc::Sender<InstanceEvent>,
    events_rx: mpsc::Receiver<InstanceEvent>,
    host_events: broadcast::Sender<Event>,
    logs: broadcast::Sender<LogLine>,
    capacity: Capacity,
    ids: InstanceIds,
    /// Where Jobs' progress is kept across restarts, if anywhere (read when a job is
    /// applied).
    ledger: Option<Arc<dyn crate::job::JobLedger>>,
    /// Writes jobs' progress to the ledger, off this task.
    writer: Option<ledger::LedgerWriter>,
    /// Its acknowledgements.
    durable_rx: mpsc::UnboundedReceiver<ledger::Notice>,
    /// How jobs' progress is made durable, and whether the ledger stalls.
    durability: Durability,
    /// Latency histograms.
    metrics: Arc<crate::metrics::Metrics>,
    /// The listeners and routes of HTTP workloads.
    front: Arc<crate::front::Front>,
    /// Set once shutdown began: no spare is made any more.
    shutting_down: bool,
    /// What a pass leaves for after the instances it started have run.
    deferred: Deferred,
}

/// Most events held back for subscribers (see [`Deferred`]): past it they are sent at
/// once, so that a pass over a large workload holds no more than these.
const MAX_DEFERRED_EVENTS: usize = 1024;

/// Work that a pass leaves for later, so that it stays off the path of a recovery: the
/// events for subscribers (each wakes a subscriber's task) and the spares to build
/// (each a task instantiating). Scheduled during the pass, either would be queued beside
/// the instance the pass started, and on a host of few CPUs wake another worker thread
/// to take it: a cross-CPU wake-up on the recovery's path, and on a virtual machine
/// whose idle CPUs halt, the largest part of its tail. The loop yields once after a pass
/// that left any (the instance it started runs first, on this worker) and then does it.
#[derive(Default)]
struct Deferred {
    /// Events to send to the host's subscribers, in order.
    broadcasts: Vec<Event>,
    /// Workloads that want more spares than they hold.
    spares: BTreeSet<Arc<str>>,
}

impl Deferred {
    fn is_empty(&self) -> bool {
        self.broadcasts.is_empty() && self.spares.is_empty()
    }
}

impl Controller {
    pub fn new(
        runtime: Arc<Runtime>,
        policy: Arc<dyn Policy>,
        config: ControllerConfig,
        outlets: Outlets,
        ledger: Option<Arc<dyn crate::job::JobLedger>>,
    ) -> Self {
        let Outlets {
            host_events,
            logs,
            metrics,
            front,
        } = outlets;
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
        let durability = match writer {
            Some(_) => Durability::Queued { stalled: None },
            None => Durability::Immediate,
        };
        let capacity = Capacity::new(
            config.max_instances,
            config.spare_slots,
            crate::runtime::mappings::MappingGuard::new(runtime.config(), runtime.stack_watcher()),
            crate::runtime::mappings::advice(runtime.config()),
        );
        Self {
            runtime,
            policy,
            config,
            workloads: BTreeMap::new(),
            dirty: BTreeSet::new(),
            handles: HashMap::new(),
            events_tx,
            events_rx,
            host_events,
            logs,
            capacity,
            ids: InstanceIds::new(fastrand::u32(..)),
            writer,
            durable_rx,
            durability,
            ledger,
            metrics,
            front,
            shutting_down: false,
            deferred: Deferred::default(),
        }
    }

    /// Runs until a shutdown command has been served (or every `Host` handle is gone).
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut next_resync = crate::clock::from_now(self.config.resync_interval);
        loop {
            let next_requeue = self
                .workloads
                .values()
                .filter_map(|e| e.state.requeue_at)
                .min();
            let next_paced = self
                .dirty
                .iter()
                .filter_map(|name| self.workloads.get(name)?.paced_until)
                .min();
            let wake = [next_requeue, next_paced]
                .into_iter()
                .flatten()
                .fold(next_resync, Instant::min);
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
                    for e in self.workloads.values() {
                        if e.state.requeue_at.is_some_and(|t| t <= now) {
                            self.dirty.insert(e.state.name.clone());
                        }
                    }
                }
            }
            self.reconcile_dirty().await;
            if !self.deferred.is_empty() {
                // What this pass started was scheduled last on this worker, so it runs
                // before this task is polled again; the deferred work comes after it.
                tokio::task::yield_now().await;
                self.flush_deferred();
            }
        }
    }

    /// Sends the events held back for subscribers, in order.
    fn send_deferred_events(&mut self) {
        for event in self.deferred.broadcasts.drain(..) {
            let _ = self.host_events.send(event);
        }
    }

    /// Sends the events and builds the spares that passes left for later (see
    /// [`Deferred`]).
    fn flush_deferred(&mut self) {
        self.send_deferred_events();
        for name in std::mem::take(&mut self.deferred.spares) {
            self.build_spares(&name);
            if self.reflex_wanted(&name) {
                self.arm_reflex(&name, true);
            }
        }
    }

    /// Runs one transition on workload `name` and carries out its effects; `None` if
    /// there is no such workload.
    fn step<R>(
        &mut self,
        name: &str,
        transition: impl FnOnce(&mut WorkloadState, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let entry = self.workloads.get_mut(name)?;
        let key = entry.state.name.clone();
        let mut ctx = Ctx::new(
            self.config.event_history,
            &mut self.capacity,
            &mut self.ids,
            &self.durability,
        );
        let result = transition(&mut entry.state, &mut ctx);
        let effects = ctx.effects;
        self.carry_out(&key, effects);
        Some(result)
    }

    /// Carries out what a transition of workload `name` asked for, in order.
    fn carry_out(&mut self, name: &Arc<str>, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Spawn {
                    instance,
                    slot,
                    spec,
                    revision,
                } => {
                    let Some(entry) = self.workloads.get_mut(name) else {
                        continue;
                    };
                    let streak = entry
                        .state
                        .slots
                        .get(slot as usize)
                        .map_or(0, |s| s.consecutive_ends);
                    let reflex = Some(ReflexTicket::new(entry.spares.reflex.clone(), streak));
                    if let Some(spare) = entry.spares.take(&revision) {
                        self.capacity.remove_spare();
                        self.metrics.spare_used();
                        // The next spare is built after this one ran (see `Deferred`).
                        let handle = spare.start(instance.clone(), slot, reflex);
                        self.handles.insert(instance, handle);
                        continue;
                    }
                    // Present by construction: a spawn runs the current revision, and
                    // its parts are kept while it is current or previous. Were they not,
                    // the instance ends as not instantiable instead of the host dying.
                    let Some(parts) = entry.artifacts.get(&revision) else {
                        tracing::error!(workload = %name, %revision, "no compiled parts for the revision to spawn");
                        self.never_started(name, instance, slot, &revision);
                        continue;
                    };
                    let request = SpawnRequest {
                        workload: name.clone(),
                        instance: instance.clone(),
                        slot,
                        component: parts.component.clone(),
                        spec: spec.clone(),
                        grants: parts.grants.clone(),
                        log_sink: Some(self.logs.clone()),
                        http: spec.http.as_ref().and_then(|_| self.front.service(name)),
                    };
                    let handle = self.runtime.spawn(request, reflex, self.events_tx.clone());
                    self.handles.insert(instance, handle);
                }
                Effect::Stop { instance, cause } => {
                    if let Some(handle) = self.handles.get(&instance) {
                        handle.stop(cause);
                    }
                }
                Effect::Broadcast(event) => {
                    self.deferred.broadcasts.push(event);
                    // A pass over a large workload (an apply of 100,000 replicas) sends
                    // as it goes rather than hold every event until it ends.
                    if self.deferred.broadcasts.len() >= MAX_DEFERRED_EVENTS {
                        self.send_deferred_events();
                    }
                }
                Effect::Persist(progress) => {
                    if let Some(writer) = &self.writer {
                        writer.send(ledger::LedgerOp::Record(name.clone(), progress));
                    }
                }
                Effect::Forget => {
                    if let Some(writer) = &self.writer {
                        writer.send(ledger::LedgerOp::Forget(name.clone()));
                    }
                }
                Effect::NewDecider => self.new_decider(name),
                Effect::SpawnLatency(latency) => self.metrics.spawned(latency),
                Effect::Reconcile => {
                    self.dirty.insert(name.clone());
                }
                Effect::Remove => {
                    self.front.withdraw(name);
                    if let Some(mut entry) = self.workloads.remove(name) {
                        self.capacity.remove_spares(entry.spares.discard_all());
                    }
                    self.runtime.forget_unused_components();
                }
            }
        }
        if let Some(entry) = self.workloads.get_mut(name) {
            entry.prune_artifacts();
        }
        let reflex_wanted = self.reflex_wanted(name);
        if !reflex_wanted && let Some(entry) = self.workloads.get_mut(name) {
            entry.spares.disarm();
        }
        self.stock_spares(name);
        if reflex_wanted {
            self.arm_reflex(name, false);
        }
    }

    /// Whether workload `name` may have a spare armed now: its policy replaces a failed
    /// instance at once (the built-in replica policy, no plugin), and its state says it
    /// would (see [`WorkloadState::reflex_armable`]).
    fn reflex_wanted(&self, name: &str) -> bool {
        !self.shutting_down
            && self.config.direct_replacement
            && self.policy.replaces_failures_at_once()
            && self.workloads.get(name).is_some_and(|entry| {
                matches!(entry.decider, Decider::Builtin)
                    && entry.state.reflex_armable(Instant::now())
            })
    }

    /// Arms workload `name`'s cell (which [`Self::reflex_wanted`]) with one of its spares
    /// or, while it holds none, a dormant task of its current revision (spawned only if
    /// `may_spawn`; otherwise left to [`Self::flush_deferred`], off a recovery's path);
    /// an armed dormant task gives way to a spare once one is held.
    fn arm_reflex(&mut self, name: &Arc<str>, may_spawn: bool) {
        let Some(entry) = self.workloads.get_mut(name) else {
            return;
        };
        let revision = entry.state.revision.clone();
        let spares = &mut entry.spares;
        if spares.revision.as_deref() != Some(&*revision)
            || spares.reflex.holds_spare()
            || (spares.reflex.is_armed() && spares.held.is_empty())
        {
            return;
        }
        if spares.held.is_empty() && !may_spawn {
            self.deferred.spares.insert(name.clone());
            return;
        }
        // Nothing is armed, or a dormant task is and a spare can take its place.
        let instance = spares.disarm().unwrap_or_else(|| self.ids.next(name));
        let standby = match spares.held.pop() {
            Some(spare) => Standby::Spare(spare),
            None => {
                let Some(parts) = entry.artifacts.get(&revision) else {
                    return;
                };
                let request = parts.unplaced(name, instance.clone(), &entry.state.spec, &self.logs);
                let task = self
                    .runtime
                    .prepare_dormant(request, self.events_tx.clone());
                Standby::Dormant(task)
            }
        };
        let armed = Armed {
            standby,
            instance,
            revision,
        };
        if let Err(armed) = spares.reflex.arm(armed) {
            match armed.standby {
                Standby::Spare(spare) => spares.held.push(spare),
                Standby::Dormant(task) => task.discard(),
            }
        }
    }

    /// Brings workload `name`'s spares down to what it wants, of its current revision:
    /// spares of another revision or in excess are discarded now; missing ones are left
    /// to [`Self::build_spares`], after the pass (see [`Deferred`]).
    fn stock_spares(&mut self, name: &Arc<str>) {
        let wanted = self.spares_wanted(name);
        let Some(entry) = self.workloads.get_mut(name) else {
            return;
        };
        let spares = &mut entry.spares;
        if spares.revision.as_deref() != Some(&*entry.state.revision) {
            self.capacity.remove_spares(spares.discard_all());
            spares.revision = Some(entry.state.revision.clone());
        }
        while spares.count() > wanted {
            if spares.held.is_empty() {
                spares.disarm();
            }
            let Some(spare) = spares.held.pop() else {
                break;
            };
            spare.discard();
            self.capacity.remove_spare();
        }
        if spares.count() < wanted {
            self.deferred.spares.insert(name.clone());
        }
    }

    /// How many spares workload `name` wants now (none while the host shuts down).
    fn spares_wanted(&self, name: &str) -> usize {
        match self.workloads.get(name) {
            Some(entry) if !self.shutting_down => {
                entry.state.spares_wanted(self.config.default_spares)
            }
            _ => 0,
        }
    }

    /// Builds the spares workload `name` lacks, of its current revision (each in its own
    /// task), while the host has room for them.
    fn build_spares(&mut self, name: &Arc<str>) {
        let wanted = self.spares_wanted(name);
        let Some(entry) = self.workloads.get_mut(name) else {
            return;
        };
        let spares = &mut entry.spares;
        // Another revision became current since the pass: its spares are stocked anew.
        if spares.revision.as_deref() != Some(&*entry.state.revision) || spares.count() >= wanted {
            return;
        }
        let Some(parts) = entry.artifacts.get(&entry.state.revision) else {
            return;
        };
        let placeholder: Arc<str> = Arc::from(format!("{name}-spare"));
        while spares.count() < wanted && self.capacity.spare_fits() {
            let request = parts.unplaced(name, placeholder.clone(), &entry.state.spec, &self.logs);
            let spare = self.runtime.prepare_spare(request, self.events_tx.clone());
            spares.held.push(spare);
            self.capacity.add_spare();
            self.metrics.spare_made();
        }
    }

    /// Tells workload `name`'s state that `instance` ended without starting, as the
    /// runtime would have, so that nothing waits for it.
    fn never_started(&mut self, name: &Arc<str>, instance: Arc<str>, slot: u32, revision: &str) {
        let end = crate::runtime::InstanceEnd {
            reason: crate::runtime::EndReason::InstantiationFailed {
                message: format!(
                    "the host kept no compiled component for revision {revision} (a bug in setpoint)"
                ),
            },
            at: std::time::SystemTime::now(),
            ran_for: Duration::ZERO,
            peak_memory_bytes: 0,
            cpu: Duration::ZERO,
            output: crate::runtime::OutputSummary::default(),
        };
        let event = InstanceEvent {
            workload: name.clone(),
            slot,
            instance,
            kind: InstanceEventKind::Ended(Box::new(end)),
            at: std::time::SystemTime::now(),
        };
        self.handle_instance_event(event);
    }

    /// Builds the decider of workload `name`'s current revision.
    fn new_decider(&mut self, name: &Arc<str>) {
        let Some(entry) = self.workloads.get_mut(name) else {
            return;
        };
        let plugin = entry
            .artifacts
            .get(&entry.state.revision)
            .and_then(|a| a.plugin.clone());
        let host = decider::PluginHost {
            runtime: &self.runtime,
            limits: self.config.plugin_limits,
            logs: &self.logs,
        };
        entry.decider = Decider::for_revision(&entry.state, plugin, host);
    }

    /// What the ledger's writer reports: a record durable, or writes stalled or resumed.
    fn handle_ledger(&mut self, notice: ledger::Notice) {
        match notice {
            ledger::Notice::Durable(job, progress) => {
                self.step(&job, |state, ctx| state.job_acknowledged(progress, ctx));
            }
            ledger::Notice::Stalled(why) => {
                self.durability = Durability::Queued {
                    stalled: Some(why.clone()),
                };
                for name in self.names(WorkloadState::job_waiting) {
                    self.step(&name, |state, ctx| state.ledger_stalled(&why, ctx));
                }
            }
            ledger::Notice::Resumed => {
                self.durability = Durability::Queued { stalled: None };
                for name in self.names(|s| s.job().is_some_and(|j| j.stall.is_some())) {
                    self.step(&name, WorkloadState::ledger_resumed);
                }
            }
        }
    }

    /// The workloads whose state matches `filter`.
    fn names(&self, filter: impl Fn(&WorkloadState) -> bool) -> Vec<Arc<str>> {
        self.workloads
            .values()
            .filter(|e| filter(&e.state))
            .map(|e| e.state.name.clone())
            .collect()
    }

    fn handle_instance_event(&mut self, event: InstanceEvent) {
        // Completes a record; no pass over the workload is due.
        let event = match event.kind {
            InstanceEventKind::Forensics(reason) => {
                if let Some(entry) = self.workloads.get_mut(&event.workload) {
                    entry.state.complete_termination(&event.instance, *reason);
                }
                return;
            }
            InstanceEventKind::EndedAndReplaced(end, replacement) => {
                let ended = InstanceEvent {
                    kind: InstanceEventKind::Ended(end),
                    ..event
                };
                self.handle_direct_replacement(ended, *replacement);
                return;
            }
            kind => InstanceEvent { kind, ..event },
        };
        if matches!(event.kind, InstanceEventKind::Ended(_)) {
            self.handles.remove(&event.instance);
        }
        let name = event.workload.clone();
        self.step(&name, |state, ctx| state.observe(event, ctx));
    }

    /// An instance ended and its own task started the workload's armed spare in its
    /// place (see [`crate::runtime::reflex`]). The end is absorbed as any other; the
    /// replacement is kept if the policy, asked now, would have started it, and is
    /// dropped at once otherwise (the workload changed while the end was on its way).
    fn handle_direct_replacement(&mut self, ended: InstanceEvent, replacement: Replacement) {
        let Replacement {
            instance,
            revision,
            from_spare,
            at,
            handle,
        } = replacement;
        self.handles.remove(&ended.instance);
        if from_spare {
            self.capacity.remove_spare();
        }
        let name = ended.workload.clone();
        let policy = self.policy.clone();
        let shutting_down = self.shutting_down;
        let builtin = self
            .workloads
            .get(&name)
            .is_some_and(|e| matches!(e.decider, Decider::Builtin));
        let check = (builtin && !shutting_down).then_some(observe::DirectReplacement {
            instance: &instance,
            revision: &revision,
            at,
            policy: &*policy,
        });
        let kept = self.step(&name, |state, ctx| {
            state.observe_replaced(ended, check, ctx)
        });
        if kept == Some(true) {
            if from_spare {
                self.metrics.spare_used();
            }
            self.metrics.direct_replacement(true);
            self.handles.insert(instance, handle);
        } else {
            self.metrics.direct_replacement(false);
            handle.abort_now();
        }
    }

    async fn reconcile_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        let mut actions = Vec::new();
        let now = Instant::now();
        for name in dirty {
            let paced = self.workloads.get(&name).and_then(|e| e.paced_until);
            if paced.is_some_and(|until| until > now) {
                self.dirty.insert(name);
                continue;
            }
            let started = Instant::now();
            self.reconcile_one(&name, &mut actions).await;
            let took = started.elapsed();
            self.metrics.reconciled(took);
            if let Some(entry) = self.workloads.get_mut(&name) {
                entry.paced_until = (took >= PACE_FROM).then(|| crate::clock::from_now(took));
            }
        }
    }

    /// One pass over one workload: deletion, or its decider's decision checked and
    /// carried out.
    async fn reconcile_one(&mut self, name: &Arc<str>, actions: &mut Vec<Action>) {
        let Some(entry) = self.workloads.get_mut(name) else {
            return;
        };
        let mut ctx = Ctx::new(
            self.config.event_history,
            &mut self.capacity,
            &mut self.ids,
            &self.durability,
        );
        if let Pass::Decide { due } = entry.state.begin_pass(&mut ctx) {
            actions.clear();
            let deciding = Instant::now();
            let builtin = &*self.policy;
            entry
                .decider
                .decide(builtin, &entry.state, deciding, actions)
                .await;
            self.metrics.policy_called(deciding.elapsed());
            let decider = &entry.decider;
            entry
                .state
                .carry_out(actions, &|| decider.name(builtin), &mut ctx);
            entry.state.end_pass(due, &mut ctx);
        }
        let effects = ctx.effects;
        self.carry_out(name, effects);
    }

    fn status(&self) -> HostStatus {
        let now = Instant::now();
        let workloads = self
            .workloads
            .values()
            .map(|e| {
                let mut status =
                    view::workload_status(&e.state, &e.decider.name(&*self.policy), now);
                status.spares = u32::try_from(e.spares.count()).unwrap_or(u32::MAX);
                self.front.add_status(&mut status);
                // What each live instance uses now, from its handle's gauge.
                for i in &mut status.instances {
                    if let Some(handle) = self.handles.get(i.id.as_str()) {
                        let usage = handle.usage();
                        i.memory_bytes = Some(usage.memory_bytes());
                        i.cpu_ms = Some(u64::try_from(usage.cpu().as_millis()).unwrap_or(u64::MAX));
                    }
                }
                status
            })
            .collect();
        HostStatus {
            workloads,
            quarantined: Vec::new(),
        }
    }

    async fn shutdown(&mut self) -> HostStatus {
        let longest_grace = self
            .workloads
            .values()
            .map(|e| e.state.spec.termination_grace_period)
            .max()
            .unwrap_or(Duration::ZERO);
        // HTTP first: stop accepting, and let queued and in-flight requests finish
        // while every replica still serves.
        let front = self.front.clone();
        let drain = front.drain(longest_grace);
        let mut drain = std::pin::pin!(drain);
        loop {
            tokio::select! {
                () = &mut drain => break,
                Some(event) = self.events_rx.recv() => self.handle_instance_event(event),
            }
        }
        // Spares end first, and none is made again while the host shuts down.
        self.shutting_down = true;
        self.flush_deferred();
        let spares: Vec<Spare> = self
            .workloads
            .values_mut()
            .flat_map(|e| {
                e.spares.disarm();
                e.spares.held.drain(..)
            })
            .collect();
        for spare in spares {
            self.capacity.remove_spare();
            spare.end().await;
        }
        for name in self.names(|_| true) {
            self.step(&name, |state, ctx| state.stop_all(StopCause::Shutdown, ctx));
        }
        let deadline =
            crate::clock::from_now(longest_grace.saturating_add(self.config.shutdown_slack));
        while self.capacity.live() > 0 {
            tokio::select! {
                Some(event) = self.events_rx.recv() => self.handle_instance_event(event),
                _ = sleep_until(deadline.into()) => break,
            }
        }
        // Whatever did not end in time is dropped now: no task is left behind.
        for (_, handle) in self.handles.drain() {
            handle.abort().await;
        }
        // Subscribers hear of every end before the host is gone (no spare is built now).
        self.flush_deferred();
        let status = self.status();
        // What jobs counted is written before the host is gone.
        if let Some(writer) = self.writer.as_mut() {
            writer.finish();
        }
        // Nor a Store is: plugins' go with their deciders, and the ended instances'
        // teardown tasks finish before the host is gone (a Store holds the engine, and a
        // pooled engine its reservation of address space).
        for entry in self.workloads.values_mut() {
            entry.decider = Decider::Builtin;
        }
        let deadline = crate::clock::from_now(self.config.shutdown_slack);
        while self.runtime.live_stores() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.runtime.stop_ticker();
        status
    }
}
