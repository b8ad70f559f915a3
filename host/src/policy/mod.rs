//! Reconcile policies: pure functions from a snapshot of one workload's desired and
//! observed state to a list of actions. The controller validates every action before it
//! runs it. Built-in policies live here; Wasm policy plugins will implement the same trait.
//!
//! Architecture invariant: a policy sees only the [`PolicyInput`] snapshot, never a live
//! instance, a Store, or the controller.

mod plugin;
mod replicas;
pub mod snapshot;
mod wit;

use std::time::{Duration, Instant};

pub use plugin::{MAX_CONSECUTIVE_FAILURES, PluginPolicy, dry_run, validate};
pub use replicas::ReplicaPolicy;
pub use wit::{PluginInput, ask_plugin, ask_plugin_on_snapshot};

use crate::end::EndSummary;
use crate::manifest::WorkloadSpec;
use crate::runtime::StopCause;

/// What the policy knows about one slot.
#[derive(Debug, Clone, Default)]
pub struct SlotObservation {
    /// The live instance in this slot, if any.
    pub instance: Option<InstanceObservation>,
    /// During a rolling update: the new-revision instance starting beside it, which takes
    /// the slot over once the old one has stopped.
    pub successor: Option<InstanceObservation>,
    /// How many times this slot's instance has been replaced.
    pub restarts: u32,
    /// Ends in a row without a long healthy run in between (drives back-off).
    pub consecutive_ends: u32,
    /// When the last instance of this slot ended, and why.
    pub last_end: Option<(Instant, EndSummary)>,
}

/// What the policy knows about one live instance.
#[derive(Debug, Clone)]
pub struct InstanceObservation {
    /// The instance id.
    pub id: std::sync::Arc<str>,
    /// The revision it runs.
    pub revision: std::sync::Arc<str>,
    /// When it was spawned.
    pub since: Instant,
    /// Whether it has been asked to stop.
    pub stopping: bool,
    /// Whether it is ready.
    pub ready: bool,
}

/// The snapshot a policy decides on.
#[derive(Debug)]
pub struct PolicyInput<'a> {
    /// The workload's name.
    pub workload: &'a str,
    /// Its desired state.
    pub desired: &'a WorkloadSpec,
    /// The revision instances should run.
    pub revision: &'a str,
    /// The rollout in progress, if any.
    pub rollout: Option<RolloutObservation>,
    /// Observed slots; index = slot number; may be longer than `desired.replicas`.
    pub slots: &'a [SlotObservation],
    /// When replacements happened recently (oldest first, bounded).
    pub recent_restarts: &'a [Instant],
    /// Whether the workload has already been marked failed.
    pub failed: bool,
    /// The time of this decision.
    pub now: Instant,
}

/// A rollout: started when a new revision was applied (or a rollback began).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutObservation {
    /// When it started.
    pub started: Instant,
    /// Whether this rollout is itself a rollback (which is never rolled back again).
    pub rolled_back: bool,
}

/// Something a policy wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start an instance in an empty slot.
    Spawn {
        /// The slot to fill.
        slot: u32,
    },
    /// During a rollout: start an instance of the current revision beside the slot's live
    /// (old) instance; it takes the slot over once the old one stops.
    SpawnSuccessor {
        /// The slot.
        slot: u32,
    },
    /// Return to the previous revision; a rollout back to it starts at once.
    RollBack {
        /// Why.
        message: String,
    },
    /// Stop the live instance of a slot.
    Stop {
        /// The slot.
        slot: u32,
        /// Why.
        cause: StopCause,
    },
    /// Decide again after this long even if nothing happens.
    RequeueAfter(Duration),
    /// Record an event (shown in status and to subscribers). Repeats of the workload's
    /// latest event are dropped, so a policy may say the same thing on every pass.
    Event {
        /// Warning rather than Normal.
        warning: bool,
        /// A stable CamelCase reason.
        reason: String,
        /// A human explanation.
        message: String,
    },
    /// Give up on the workload: no more spawns until its spec changes.
    MarkFailed {
        /// A stable CamelCase reason.
        reason: String,
        /// A human explanation.
        message: String,
    },
}

/// A reconcile policy.
pub trait Policy: Send + Sync {
    /// A short name shown in events.
    fn name(&self) -> &str;
    /// Appends the actions that move the workload toward its desired state.
    fn reconcile(&self, input: &PolicyInput<'_>, actions: &mut Vec<Action>);

    /// Whether this policy, like [`ReplicaPolicy`], replaces an instance that failed
    /// at once (a `Spawn` in its slot) whenever the slot's back-off is zero, the
    /// restart policy restarts it, the restart budget has room and no rollout runs.
    /// If so, the host arms a spare that an ending instance starts in its own place
    /// before the next pass (see [`crate::runtime::reflex`]), and keeps it only if
    /// this policy, asked then, starts one in that slot. Default: no.
    fn replaces_failures_at_once(&self) -> bool {
        false
    }
}
