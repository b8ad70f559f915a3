//! Snapshots: what a policy was given, in a form that can be written to a file and
//! replayed. Every time is relative ("ago", "age") except `now_unix_ms`, so a snapshot
//! recorded in production replays identically on a laptop. These are also the types the
//! plugin host converts to and from the WIT records of `wit/policy`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Action, InstanceObservation, PolicyInput, RolloutObservation, SlotObservation};
use crate::clock::millis as ms;
use crate::end::{EndKind, EndSummary};
use crate::manifest::{
    BackoffSpec, IntOrPercent, RestartBudget, RestartPolicy, StrategyKind, UpdateStrategy,
    WorkloadSpec,
};

/// Desired state, observed state and the time of one decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Snapshot {
    /// What is desired.
    pub desired: DesiredSnapshot,
    /// What is observed.
    pub observed: ObservedSnapshot,
    /// Wall-clock time of the decision, in milliseconds since the Unix epoch.
    pub now_unix_ms: u64,
}

/// The desired state a policy sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DesiredSnapshot {
    /// The workload's name.
    pub workload: String,
    /// The applied revision.
    #[serde(default)]
    pub revision: String,
    /// Desired replicas.
    pub replicas: u32,
    /// Restart policy.
    pub restart_policy: RestartPolicy,
    /// Back-off, in milliseconds.
    pub backoff: BackoffMs,
    /// Restart budget, if any.
    #[serde(default)]
    pub restart_budget: Option<RestartBudgetMs>,
    /// `spec.policy.config`.
    #[serde(default)]
    pub config: serde_json::Value,
    /// The update strategy, resolved to counts for `replicas`.
    #[serde(default)]
    pub strategy: StrategySnapshot,
}

/// The update strategy as a policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StrategySnapshot {
    /// `Recreate` rather than `RollingUpdate`.
    pub recreate: bool,
    /// Extra instances allowed during a rollout.
    pub max_surge: u32,
    /// Instances that may be unavailable during a rollout.
    pub max_unavailable: u32,
    /// A rollout not complete within this long has failed.
    pub progress_deadline_ms: u64,
    /// Roll back when the deadline passes.
    pub auto_rollback: bool,
    /// A successor takes over only once ready and up this long.
    #[serde(default)]
    pub min_ready_ms: u64,
}

impl Default for StrategySnapshot {
    fn default() -> Self {
        Self {
            recreate: false,
            max_surge: 1,
            max_unavailable: 0,
            progress_deadline_ms: 600_000,
            auto_rollback: true,
            min_ready_ms: 0,
        }
    }
}

/// A rollout in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSnapshot {
    /// How long ago it started.
    pub started_ago_ms: u64,
    /// Whether it is a rollback.
    pub rolled_back: bool,
}

/// Back-off settings in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackoffMs {
    /// Delay before the second consecutive replacement.
    pub initial_ms: u64,
    /// Cap.
    pub max_ms: u64,
    /// Run time that resets the streak.
    pub reset_after_ms: u64,
}

/// A restart budget in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestartBudgetMs {
    /// Replacements allowed in the window.
    pub max_restarts: u32,
    /// The window.
    pub window_ms: u64,
}

/// The observed state a policy sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObservedSnapshot {
    /// Slots, index = slot number.
    pub slots: Vec<SlotSnapshot>,
    /// How long ago recent replacements happened, oldest first.
    #[serde(default)]
    pub recent_restarts_ago_ms: Vec<u64>,
    /// Whether the workload is already marked failed.
    #[serde(default)]
    pub failed: bool,
    /// The rollout in progress, if any.
    #[serde(default)]
    pub rollout: Option<RolloutSnapshot>,
}

/// One slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlotSnapshot {
    /// Slot number.
    pub index: u32,
    /// The live instance, if any.
    #[serde(default)]
    pub instance: Option<InstanceSnapshot>,
    /// A new-revision instance starting beside it during a rollout.
    #[serde(default)]
    pub successor: Option<InstanceSnapshot>,
    /// Replacements so far.
    #[serde(default)]
    pub restarts: u32,
    /// Ends in a row.
    #[serde(default)]
    pub consecutive_ends: u32,
    /// The last end, if any.
    #[serde(default)]
    pub last_end: Option<EndSnapshot>,
}

/// A live instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceSnapshot {
    /// Its id.
    pub id: String,
    /// The revision it runs.
    #[serde(default)]
    pub revision: String,
    /// Time since spawn.
    pub age_ms: u64,
    /// Ready.
    pub ready: bool,
    /// Asked to stop.
    #[serde(default)]
    pub stopping: bool,
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndSnapshot {
    /// How it ended, by name (`Exited`, `Trapped`, ...).
    pub reason: EndKind,
    /// Exit status, for `Exited`.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// How long ago.
    pub ago_ms: u64,
}

impl EndSnapshot {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.summary().is_success()
    }

    /// Stopped by the host.
    pub fn host_stop(&self) -> bool {
        self.summary().is_host_stop()
    }

    /// Retrying cannot help.
    pub fn deterministic(&self) -> bool {
        self.summary().is_deterministic()
    }

    /// What a policy knows of this end.
    pub fn summary(&self) -> EndSummary {
        EndSummary {
            kind: self.reason,
            exit_code: self.exit_code,
        }
    }
}

impl Snapshot {
    /// Records what a policy is about to be given.
    pub fn capture(input: &PolicyInput<'_>, revision: &str, config: &serde_json::Value) -> Self {
        let d = input.desired;
        let now = input.now;
        let ago = |t: Instant| ms(now.saturating_duration_since(t));
        let instance = |i: &InstanceObservation| InstanceSnapshot {
            id: i.id.to_string(),
            revision: i.revision.to_string(),
            age_ms: ago(i.since),
            ready: i.ready,
            stopping: i.stopping,
        };
        let slots = input
            .slots
            .iter()
            .enumerate()
            .map(|(index, s)| SlotSnapshot {
                index: index as u32,
                instance: s.instance.as_ref().map(instance),
                successor: s.successor.as_ref().map(instance),
                restarts: s.restarts,
                consecutive_ends: s.consecutive_ends,
                last_end: s.last_end.as_ref().map(|(at, r)| EndSnapshot {
                    reason: r.kind,
                    exit_code: r.exit_code,
                    ago_ms: ago(*at),
                }),
            })
            .collect();
        Self {
            desired: DesiredSnapshot {
                workload: input.workload.to_string(),
                revision: if revision.is_empty() {
                    input.revision.to_string()
                } else {
                    revision.to_string()
                },
                replicas: d.replicas,
                restart_policy: d.restart_policy,
                backoff: BackoffMs {
                    initial_ms: ms(d.backoff.initial),
                    max_ms: ms(d.backoff.max),
                    reset_after_ms: ms(d.backoff.reset_after),
                },
                restart_budget: d.restart_budget.map(|b| RestartBudgetMs {
                    max_restarts: b.max_restarts,
                    window_ms: ms(b.window),
                }),
                config: config.clone(),
                strategy: {
                    let (max_surge, max_unavailable) = d.strategy.resolve(d.replicas);
                    StrategySnapshot {
                        recreate: d.strategy.kind == crate::manifest::StrategyKind::Recreate,
                        max_surge,
                        max_unavailable,
                        progress_deadline_ms: ms(d.strategy.progress_deadline),
                        auto_rollback: d.strategy.auto_rollback,
                        min_ready_ms: ms(d.strategy.min_ready),
                    }
                },
            },
            observed: ObservedSnapshot {
                slots,
                recent_restarts_ago_ms: input.recent_restarts.iter().map(|t| ago(*t)).collect(),
                failed: input.failed,
                rollout: input.rollout.map(|r| RolloutSnapshot {
                    started_ago_ms: ago(r.started),
                    rolled_back: r.rolled_back,
                }),
            },
            now_unix_ms: crate::clock::unix_millis_now(),
        }
    }

    /// Rebuilds the policy input this snapshot describes, relative to `now`, so that a
    /// built-in policy can decide on a recorded or hand-written snapshot.
    pub fn replay(&self, now: Instant) -> ReplayInput {
        let at = |ago_ms: u64| {
            now.checked_sub(Duration::from_millis(ago_ms))
                .unwrap_or(now)
        };
        let d = &self.desired;
        let mut spec = WorkloadSpec::new("snapshot");
        spec.replicas = d.replicas;
        spec.restart_policy = d.restart_policy;
        spec.backoff = BackoffSpec {
            initial: Duration::from_millis(d.backoff.initial_ms),
            max: Duration::from_millis(d.backoff.max_ms),
            reset_after: Duration::from_millis(d.backoff.reset_after_ms),
        };
        spec.restart_budget = d.restart_budget.map(|b| RestartBudget {
            max_restarts: b.max_restarts,
            window: Duration::from_millis(b.window_ms),
        });
        spec.strategy = UpdateStrategy {
            kind: if d.strategy.recreate {
                StrategyKind::Recreate
            } else {
                StrategyKind::RollingUpdate
            },
            max_surge: IntOrPercent::Count(d.strategy.max_surge),
            max_unavailable: IntOrPercent::Count(d.strategy.max_unavailable),
            progress_deadline: Duration::from_millis(d.strategy.progress_deadline_ms),
            auto_rollback: d.strategy.auto_rollback,
            min_ready: Duration::from_millis(d.strategy.min_ready_ms),
        };
        let observe = |i: &InstanceSnapshot| InstanceObservation {
            id: i.id.as_str().into(),
            revision: i.revision.as_str().into(),
            since: at(i.age_ms),
            stopping: i.stopping,
            ready: i.ready,
        };
        let mut slots = vec![SlotObservation::default(); self.observed.slots.len()];
        for s in &self.observed.slots {
            let Some(slot) = slots.get_mut(s.index as usize) else {
                continue;
            };
            *slot = SlotObservation {
                instance: s.instance.as_ref().map(observe),
                successor: s.successor.as_ref().map(observe),
                restarts: s.restarts,
                consecutive_ends: s.consecutive_ends,
                last_end: s.last_end.as_ref().map(|e| (at(e.ago_ms), e.summary())),
            };
        }
        ReplayInput {
            workload: d.workload.clone(),
            revision: d.revision.clone(),
            rollout: self.observed.rollout.map(|r| RolloutObservation {
                started: at(r.started_ago_ms),
                rolled_back: r.rolled_back,
            }),
            spec,
            slots,
            recent_restarts: self
                .observed
                .recent_restarts_ago_ms
                .iter()
                .map(|a| at(*a))
                .collect(),
            failed: self.observed.failed,
            now,
        }
    }
}

/// An owned policy input rebuilt from a snapshot; borrow it with [`ReplayInput::input`].
#[derive(Debug)]
pub struct ReplayInput {
    workload: String,
    revision: String,
    rollout: Option<RolloutObservation>,
    spec: WorkloadSpec,
    slots: Vec<SlotObservation>,
    recent_restarts: Vec<Instant>,
    failed: bool,
    now: Instant,
}

impl ReplayInput {
    /// The input, as a policy takes it.
    pub fn input(&self) -> PolicyInput<'_> {
        PolicyInput {
            workload: &self.workload,
            desired: &self.spec,
            revision: &self.revision,
            rollout: self.rollout,
            slots: &self.slots,
            recent_restarts: &self.recent_restarts,
            failed: self.failed,
            now: self.now,
        }
    }
}

/// Decisions in the form tools print and compare: durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "action")]
pub enum ActionRecord {
    /// Spawn in a slot.
    Spawn {
        /// The slot.
        slot: u32,
    },
    /// Stop a slot's instance.
    Stop {
        /// The slot.
        slot: u32,
    },
    /// Start a new-revision instance beside a slot's old one.
    SpawnSuccessor {
        /// The slot.
        slot: u32,
    },
    /// Return to the previous revision.
    RollBack {
        /// Why.
        message: String,
    },
    /// Decide again later.
    RequeueAfter {
        /// Delay in milliseconds.
        ms: u64,
    },
    /// Record an event.
    Event {
        /// Warning rather than Normal.
        warning: bool,
        /// Reason.
        reason: String,
        /// Message.
        message: String,
    },
    /// Give up on the workload.
    MarkFailed {
        /// Reason.
        reason: String,
        /// Message.
        message: String,
    },
}

impl From<&Action> for ActionRecord {
    fn from(a: &Action) -> Self {
        match a {
            Action::Spawn { slot } => Self::Spawn { slot: *slot },
            Action::Stop { slot, .. } => Self::Stop { slot: *slot },
            Action::SpawnSuccessor { slot } => Self::SpawnSuccessor { slot: *slot },
            Action::RollBack { message } => Self::RollBack {
                message: message.clone(),
            },
            Action::RequeueAfter(d) => Self::RequeueAfter { ms: ms(*d) },
            Action::Event {
                warning,
                reason,
                message,
            } => Self::Event {
                warning: *warning,
                reason: reason.clone(),
                message: message.clone(),
            },
            Action::MarkFailed { reason, message } => Self::MarkFailed {
                reason: reason.clone(),
                message: message.clone(),
            },
        }
    }
}
