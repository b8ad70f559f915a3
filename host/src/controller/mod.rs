//! The controller: one task that owns all desired and observed state and reconciles it.
//!
//! It wakes on what happens (a command, an instance event, a requeue timer) and
//! reconciles only the workloads touched; a periodic resync is the safety net. For each
//! workload it hands the policy a snapshot and validates every action before running it.
//!
//! Architecture invariant: the controller never touches a `Store`; it knows instances
//! through [`InstanceHandle`]s and [`InstanceEvent`]s from the runtime.

mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::sleep_until;

use crate::manifest::{RestartPolicy, WorkloadSpec};
use crate::policy::snapshot::Snapshot;
use crate::policy::{Action, InstanceObservation, PluginPolicy, Policy, PolicyInput};
use crate::runtime::plugin::{PluginInstance, PluginLimits, PreparedPlugin};
use crate::runtime::{
    InstanceEvent, InstanceEventKind, LogLine, PreparedComponent, Runtime, SpawnRequest, StopCause,
};
use crate::status::{
    Condition, Event, EventType, HostStatus, InstanceStatus, Phase, TerminationRecord,
    WorkloadStatus,
};
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
    pub plugin: Option<Arc<PreparedPlugin>>,
    pub revision: String,
}

/// Requests from the [`crate::Host`] handle to the controller task.
pub(crate) enum Command {
    Apply(Vec<PreparedWorkload>, oneshot::Sender<()>),
    Delete(String, oneshot::Sender<bool>),
    Status(oneshot::Sender<HostStatus>),
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
    next_id: u64,
    id_salt: u32,
}

impl Controller {
    pub fn new(
        runtime: Arc<Runtime>,
        policy: Arc<dyn Policy>,
        config: ControllerConfig,
        host_events: broadcast::Sender<Event>,
        logs: broadcast::Sender<LogLine>,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::channel(config.event_queue.max(1));
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
            next_id: 0,
            id_salt: fastrand::u32(..),
        }
    }

    /// Runs until a shutdown command has been served (or every `Host` handle is gone).
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut next_resync = Instant::now() + self.config.resync_interval;
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
                        next_resync = now + self.config.resync_interval;
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
                for w in workloads {
                    self.apply_one(w);
                }
                let _ = reply.send(());
            }
            Command::Delete(name, reply) => {
                let found = match self.workloads.get_mut(name.as_str()) {
                    Some(w) => {
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
            Command::Snapshot(name, reply) => {
                let _ = reply.send(self.snapshot(&name));
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    fn apply_one(&mut self, mut w: PreparedWorkload) {
        let name: Arc<str> = Arc::from(w.name.as_str());
        let history = self.config.event_history;
        let unchanged = self
            .workloads
            .get(&name)
            .is_some_and(|s| s.revision == w.revision);
        let plugin = match w.plugin.take() {
            Some(plugin) if !unchanged => Some(self.plugin_policy(&name, plugin, &w)),
            _ => None,
        };
        match self.workloads.get_mut(&name) {
            None => {
                let mut state = WorkloadState::new(
                    name.clone(),
                    w.labels,
                    w.spec,
                    w.component,
                    w.revision.clone(),
                );
                state.plugin = plugin;
                let event = self.event(
                    &name,
                    None,
                    EventType::Normal,
                    "Applied",
                    format!("revision {}", w.revision),
                );
                state.push_event(event, history);
                self.workloads.insert(name.clone(), state);
            }
            Some(state) => {
                state.deleting = false;
                state.labels = w.labels;
                if state.revision != w.revision {
                    // A new revision replaces every instance (Recreate); its restart
                    // history and any failure verdict belong to the old revision.
                    for (slot, handle) in state.handles.iter().enumerate() {
                        if let Some(handle) = handle {
                            handle.stop(StopCause::Deleted);
                            if let Some(i) = state.slots[slot].instance.as_mut() {
                                i.stopping = true;
                            }
                        }
                    }
                    for slot in &mut state.slots {
                        slot.consecutive_ends = 0;
                    }
                    state.failed = None;
                    state.failed_since = None;
                    state.recent_restarts.clear();
                    state.plugin = plugin;
                    let message = format!("revision {} replaces {}", w.revision, state.revision);
                    state.revision = w.revision;
                    state.component = w.component;
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
            }
        }
        self.dirty.insert(name);
    }

    fn plugin_policy(
        &self,
        name: &Arc<str>,
        plugin: Arc<PreparedPlugin>,
        w: &PreparedWorkload,
    ) -> PluginPolicy {
        let (label, config) = match &w.spec.policy {
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
            w.revision.clone(),
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
        let input = PolicyInput {
            workload: &w.name,
            desired: &w.spec,
            slots: &w.slots,
            recent_restarts: w.recent_restarts.make_contiguous(),
            failed: w.failed.is_some(),
            now: Instant::now(),
        };
        Some(Snapshot::capture(&input, &w.revision, &config))
    }

    fn handle_instance_event(&mut self, event: InstanceEvent) {
        let now = Instant::now();
        let history = self.config.event_history;
        let Some(w) = self.workloads.get_mut(&event.workload) else {
            return;
        };
        let slot = event.slot as usize;
        let is_current = w
            .slots
            .get(slot)
            .and_then(|s| s.instance.as_ref())
            .is_some_and(|i| i.id == event.instance);
        if !is_current {
            return; // a late event from an instance the controller already forgot
        }
        let mut to_log = None;
        match event.kind {
            InstanceEventKind::Running => w.running[slot] = true,
            InstanceEventKind::Ready(ready) => {
                if let Some(i) = w.slots[slot].instance.as_mut() {
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
                w.handles[slot] = None;
                w.running[slot] = false;
                let obs = &mut w.slots[slot];
                obs.instance = None;
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
            let e = self.event(
                &event.workload,
                Some(&event.instance),
                kind,
                reason,
                message,
            );
            if let Some(w) = self.workloads.get_mut(&event.workload) {
                w.push_event(e, history);
            }
        }
        self.dirty.insert(event.workload);
    }

    async fn reconcile_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        let mut actions = Vec::new();
        for name in dirty {
            if self.workloads.get(&name).is_some_and(|w| w.deleting) {
                self.reconcile_deletion(&name);
                continue;
            }
            let Some(w) = self.workloads.get_mut(&name) else {
                continue;
            };
            w.requeue_at = None;
            actions.clear();
            let input = PolicyInput {
                workload: &name,
                desired: &w.spec,
                slots: &w.slots,
                recent_restarts: w.recent_restarts.make_contiguous(),
                failed: w.failed.is_some(),
                now: Instant::now(),
            };
            match w.plugin.as_mut() {
                Some(plugin) => plugin.reconcile(&input, &*self.policy, &mut actions).await,
                None => self.policy.reconcile(&input, &mut actions),
            }
            for action in actions.drain(..) {
                self.execute(&name, action);
            }
            self.update_conditions(&name);
        }
    }

    fn reconcile_deletion(&mut self, name: &Arc<str>) {
        let Some(w) = self.workloads.get_mut(name) else {
            return;
        };
        for (slot, handle) in w.handles.iter().enumerate() {
            if let Some(handle) = handle
                && let Some(i) = w.slots[slot].instance.as_mut()
                && !i.stopping
            {
                handle.stop(StopCause::Deleted);
                i.stopping = true;
            }
        }
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
                Action::Spawn { .. } if self.live >= self.config.max_instances => Some(format!(
                    "spawn: the host is at its limit of {} instances",
                    self.config.max_instances
                )),
                Action::Stop { slot, .. }
                    if w.handles.get(*slot as usize).is_none_or(Option::is_none) =>
                {
                    Some(format!("stop slot {slot}: no live instance there"))
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
            Action::Spawn { slot } => self.spawn(name, slot, now),
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
            }
            Action::RequeueAfter(delay) => {
                let Some(w) = self.workloads.get_mut(name) else {
                    return;
                };
                let at = now + delay;
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

    fn spawn(&mut self, name: &Arc<str>, slot: u32, now: Instant) {
        self.next_id += 1;
        let id: Arc<str> = Arc::from(format!(
            "{name}-{:08x}",
            (self.next_id as u32 ^ self.id_salt).wrapping_mul(0x9E37_79B1)
        ));
        let Some(w) = self.workloads.get_mut(name) else {
            return;
        };
        w.ensure_slot(slot as usize);
        let replacing = w.slots[slot as usize]
            .last_end
            .as_ref()
            .is_some_and(|(_, r)| !r.is_host_stop());
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
            log_sink: Some(self.logs.clone()),
        };
        let handle = self.runtime.spawn(request, self.events_tx.clone());
        w.handles[slot as usize] = Some(handle);
        w.running[slot as usize] = false;
        w.slots[slot as usize].instance = Some(InstanceObservation {
            id: id.clone(),
            since: now,
            stopping: false,
            ready: false,
        });
        self.live += 1;
        // Spawns are frequent in a crash loop: they go to subscribers, not the bounded history.
        let reason = if replacing { "Replaced" } else { "Spawned" };
        let _ = self.event(
            name,
            Some(&id),
            EventType::Normal,
            reason,
            format!("slot {slot}"),
        );
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
        let event = Event {
            time: SystemTime::now(),
            kind,
            workload: workload.to_string(),
            instance: instance.map(str::to_string),
            reason: reason.to_string(),
            message,
        };
        let _ = self.host_events.send(event.clone());
        event
    }

    fn status(&self) -> HostStatus {
        let now = Instant::now();
        let workloads = self
            .workloads
            .values()
            .map(|w| {
                let policy = match &w.plugin {
                    Some(p) => p.describe(self.policy.name()),
                    None => self.policy.name().to_string(),
                };
                workload_status(w, &policy, now)
            })
            .collect();
        HostStatus { workloads }
    }

    async fn shutdown(&mut self) -> HostStatus {
        let mut longest_grace = Duration::ZERO;
        for w in self.workloads.values_mut() {
            longest_grace = longest_grace.max(w.spec.termination_grace_period);
            for (slot, handle) in w.handles.iter().enumerate() {
                if let Some(handle) = handle {
                    handle.stop(StopCause::Shutdown);
                    if let Some(i) = w.slots[slot].instance.as_mut() {
                        i.stopping = true;
                    }
                }
            }
        }
        let deadline = Instant::now() + longest_grace + self.config.shutdown_slack;
        while self.live > 0 {
            tokio::select! {
                Some(event) = self.events_rx.recv() => self.handle_instance_event(event),
                _ = sleep_until(deadline.into()) => break,
            }
        }
        // Whatever did not end in time is dropped now: no task is left behind.
        for w in self.workloads.values_mut() {
            for handle in w.handles.iter_mut().filter_map(Option::take) {
                handle.abort().await;
            }
        }
        let status = self.status();
        self.runtime.stop_ticker();
        status
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
    let phase = if w.failed.is_some() {
        Phase::Failed
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
    let mut conditions = vec![Condition {
        kind: "Available",
        status: w.available.0,
        reason: if w.available.0 {
            "MinimumReplicasAvailable".into()
        } else {
            "ReplicasNotReady".into()
        },
        message: format!("{ready}/{} replicas ready", w.spec.replicas),
        last_transition: w.available.1,
    }];
    if let Some((reason, message)) = &w.failed {
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
        .filter_map(|(slot, s)| {
            let i = s.instance.as_ref()?;
            let phase = if i.stopping {
                "Stopping"
            } else if w.running.get(slot).copied().unwrap_or(false) {
                "Running"
            } else {
                "Starting"
            };
            Some(InstanceStatus {
                id: i.id.to_string(),
                slot: slot as u32,
                phase,
                ready: i.ready,
                restarts: s.restarts,
                age: now.saturating_duration_since(i.since),
            })
        })
        .collect();
    WorkloadStatus {
        name: w.name.to_string(),
        labels: w.labels.clone(),
        kind: "Workload",
        desired: w.spec.replicas,
        ready,
        running,
        restarts: w.total_restarts,
        phase,
        revision: w.revision.clone(),
        policy: policy.to_string(),
        conditions,
        instances,
        last_termination: w.last_termination.clone(),
        events: w.events.iter().cloned().collect(),
    }
}
