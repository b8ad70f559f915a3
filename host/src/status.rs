//! What users see: per-workload status with phase, conditions, instances and recent
//! events. These types are the JSON contract of `setpoint run -o json`, of the daemon's
//! API and of the library; each reads back what it writes (the CLI decodes the API's
//! answers into them), and every closed set of names is an enum.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::runtime::InstanceEnd;

/// The status of every workload on a host.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct HostStatus {
    /// One entry per workload, by name.
    pub workloads: Vec<WorkloadStatus>,
    /// Stored applies the daemon keeps but does not run (empty for a plain host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<QuarantinedApply>,
}

/// A stored apply that the daemon does not run: it no longer loads, was rejected, or
/// the host died while it was being replayed. It stays stored until it is applied anew
/// or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantinedApply {
    /// The apply's id in the store.
    pub apply: u64,
    /// The workloads and jobs it defines.
    pub workloads: Vec<String>,
    /// Why it does not run.
    pub reason: String,
    /// What to do about it.
    pub help: String,
}

impl HostStatus {
    /// The longest termination grace period of its workloads: how long stopping them all
    /// may take.
    pub fn longest_grace_period(&self) -> Duration {
        self.workloads
            .iter()
            .map(|w| w.spec.termination_grace_period)
            .max()
            .unwrap_or_default()
    }

    /// The workload with this name.
    pub fn workload(&self, name: &str) -> Option<&WorkloadStatus> {
        self.workloads.iter().find(|w| w.name == name)
    }
}

/// Whether a workload keeps replicas running or runs to completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub enum WorkloadKind {
    /// Keeps `replicas` instances running.
    Workload,
    /// Runs until `completions` runs succeed.
    Job,
}

impl WorkloadKind {
    /// The kind of a workload with this spec.
    pub fn of(spec: &crate::manifest::WorkloadSpec) -> Self {
        if spec.job.is_some() {
            Self::Job
        } else {
            Self::Workload
        }
    }

    /// `Workload` or `Job`, as written in manifests and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workload => "Workload",
            Self::Job => "Job",
        }
    }

    /// `workload` or `job`, as in `setpoint get job/NAME`.
    pub fn noun(self) -> &'static str {
        match self {
            Self::Workload => "workload",
            Self::Job => "job",
        }
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Names shown as written in JSON (the variant's name).
macro_rules! display_as_name {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(&format!("{self:?}"))
            }
        }
    )*};
}

display_as_name!(Phase, ConditionType, InstancePhase, EventType);

/// Well-known event and condition reasons, named once for who emits them and who
/// reacts to them. Policies and plugins may use other reasons too.
pub mod reason {
    /// The controller went back to the previous revision by itself.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// A rollout finished.
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    /// A policy asked for something the controller refused.
    pub const ACTION_REFUSED: &str = "ActionRefused";
    /// A stored apply is kept but not run.
    pub const QUARANTINED: &str = "Quarantined";
    /// A job's progress cannot be made durable.
    pub const LEDGER_WRITE_FAILED: &str = "LedgerWriteFailed";
    /// A manifest of a watched directory was not applied.
    pub const REJECTED: &str = "Rejected";
    /// A fleet node stopped renewing its heartbeat.
    pub const NODE_LOST: &str = "NodeLost";
    /// A replica slot moved to this node from another.
    pub const RESCHEDULED: &str = "Rescheduled";
    /// This node could not renew its heartbeat and stopped its movable replicas.
    pub const FENCED: &str = "Fenced";
    /// This node renews its heartbeat again after a fence.
    pub const REJOINED: &str = "Rejoined";
    /// This node was given a fleet workload's slot and could not run it.
    pub const FAILED_PLACEMENT: &str = "FailedPlacement";
}

/// Coarse state of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Phase {
    /// Not all replicas have been ready yet, and none has ended.
    Pending,
    /// All desired replicas are ready.
    Running,
    /// Fewer replicas are ready than desired, and instances have been ending.
    Degraded,
    /// Every slot ran to a successful end and will not be restarted (a Job: complete).
    Succeeded,
    /// Given up: restart budget exceeded, not instantiable, or slots failed for good.
    Failed,
}

/// The kinds of conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum ConditionType {
    /// A Workload: enough replicas are ready.
    Available,
    /// Given up on (a Workload or a Job).
    Failed,
    /// A Job: enough runs succeeded.
    Complete,
    /// A Job: its progress reaches the ledger.
    ProgressDurable,
}

/// A Kubernetes-style condition.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Available` or `Failed` for a Workload; `Complete`, `Failed` or
    /// `ProgressDurable` for a Job.
    #[serde(rename = "type")]
    pub kind: ConditionType,
    /// Whether the condition holds.
    pub status: bool,
    /// A stable CamelCase reason.
    pub reason: String,
    /// A human explanation.
    pub message: String,
    /// When `status` last changed.
    #[serde(with = "crate::serde_time::rfc3339")]
    pub last_transition: SystemTime,
}

/// What a live instance is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum InstancePhase {
    /// Spawned, not yet running.
    Starting,
    /// Running.
    Running,
    /// Asked to stop.
    Stopping,
    /// A rollout's new instance starting beside the slot's old one.
    Surge,
}

/// The state of one live instance.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Opaque generated id.
    pub id: String,
    /// The slot it fills.
    pub slot: u32,
    /// The revision it runs.
    pub revision: String,
    /// What it is doing.
    pub phase: InstancePhase,
    /// Whether it counts as ready.
    pub ready: bool,
    /// Replacements of this slot so far.
    pub restarts: u32,
    /// Time since it was spawned.
    #[serde(with = "crate::serde_time::millis", rename = "ageMs")]
    pub age: Duration,
    /// An HTTP replica's load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<ReplicaHttp>,
    /// The fleet node it runs on (absent outside a fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Its linear memory now, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU time it has used, in milliseconds (sampled at the epoch tick).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
}

/// What an HTTP replica is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaHttp {
    /// Stopping: it takes no new request and finishes the one it serves.
    pub draining: bool,
    /// Requests it serves right now (0 or 1: a replica serves one at a time).
    pub in_flight: u32,
    /// Requests it answered.
    pub served: u64,
    /// Requests whose instance failed (each replaced by a fresh one).
    pub failed: u64,
}

/// An HTTP workload's front.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpStatus {
    /// Where it is served (its first route).
    pub url: String,
    /// Requests waiting for a ready replica.
    pub queued: u64,
    /// Requests being served.
    pub in_flight: u64,
}

/// The status of one workload.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// The workload's name.
    pub name: String,
    /// Labels from `metadata.labels`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Workload or Job.
    pub kind: WorkloadKind,
    /// The spec it runs (for a daemon, `component` is the stored blob, named by digest).
    pub spec: std::sync::Arc<crate::manifest::WorkloadSpec>,
    /// Desired replicas.
    pub desired: u32,
    /// Ready instances.
    pub ready: u32,
    /// Live instances (any phase).
    pub running: u32,
    /// Spares held: instances instantiated but not started, not counted above.
    #[serde(default)]
    pub spares: u32,
    /// Total replacements since the workload was applied.
    pub restarts: u64,
    /// Coarse state.
    pub phase: Phase,
    /// Short digest of the applied spec and component.
    pub revision: String,
    /// The rollout in progress, if any.
    pub rollout: Option<RolloutStatus>,
    /// The policy deciding for this workload.
    pub policy: String,
    /// Conditions.
    pub conditions: Vec<Condition>,
    /// Live instances.
    pub instances: Vec<InstanceStatus>,
    /// A Job's progress (absent for a Workload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobStatus>,
    /// When it was first applied (to this host, or to the daemon's store).
    #[serde(default, with = "crate::serde_time::opt_rfc3339")]
    pub created: Option<SystemTime>,
    /// An HTTP workload's URL and load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpStatus>,
    /// The most recent ended instance, for forensics.
    pub last_termination: Option<TerminationRecord>,
    /// Recent events, oldest first.
    pub events: Vec<Event>,
}

/// A Job's progress, as shown in status.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// Successful runs needed.
    pub completions: u32,
    /// Most runs at once.
    pub parallelism: u32,
    /// Runs going on now.
    pub active: u32,
    /// Runs that succeeded.
    pub succeeded: u32,
    /// Failed runs counted toward the back-off limit.
    pub failed: u32,
    /// Failed runs a failure rule ignored.
    pub ignored: u32,
    /// When the job started.
    #[serde(with = "crate::serde_time::rfc3339")]
    pub start_time: SystemTime,
    /// When it finished, if it has.
    #[serde(with = "crate::serde_time::opt_rfc3339")]
    pub completion_time: Option<SystemTime>,
}

/// A rollout in progress.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The revision being replaced.
    pub from: String,
    /// The revision being rolled out.
    pub to: String,
    /// Whether this rollout is an automatic rollback.
    pub rollback: bool,
    /// Time since it started.
    #[serde(with = "crate::serde_time::millis", rename = "ageMs")]
    pub age: Duration,
    /// Live instances already on the new revision.
    pub updated: u32,
}

/// An ended instance, as kept in status.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminationRecord {
    /// Its id.
    pub instance: String,
    /// Its slot.
    pub slot: u32,
    /// When it ended.
    #[serde(with = "crate::serde_time::rfc3339")]
    pub at: SystemTime,
    /// Why, how long it ran, and its last output.
    #[serde(flatten)]
    pub end: InstanceEnd,
}

/// Severity of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum EventType {
    /// Expected operation.
    Normal,
    /// Something failed or was refused.
    Warning,
}

/// An append-only record of what happened and why (Kubernetes' Events).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// When.
    #[serde(with = "crate::serde_time::rfc3339")]
    pub time: SystemTime,
    /// Normal or Warning.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The workload concerned.
    pub workload: String,
    /// The instance concerned, if any.
    pub instance: Option<String>,
    /// A stable CamelCase reason (`Spawned`, `Trapped`, `BackOff`, ...).
    pub reason: String,
    /// A human explanation.
    pub message: String,
}

/// A workload's instance counts: what [`crate::Host::counts`] returns, cheap enough to
/// poll at any size (no per-instance data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadCounts {
    /// The workload's name.
    pub name: String,
    /// Replicas desired.
    pub desired: u32,
    /// Instances in any phase (starting, running, stopping).
    pub live: u32,
    /// Instances instantiated and running (spawned ones still instantiating excluded).
    pub running: u32,
    /// Instances ready.
    pub ready: u32,
    /// Replacements since the workload was applied.
    pub restarts: u64,
    /// Whether the workload is marked `Failed` (nothing more is retried).
    pub failed: bool,
}
