//! What a transition of a workload's state asks the loop to do, and what it may read
//! while it decides. Transitions are plain functions over [`super::state::WorkloadState`]
//! and a [`Ctx`]: they change the state and push [`Effect`]s; only the loop (see
//! `mod.rs`) touches the runtime, the ledger's writer and the event subscribers.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::capacity::Capacity;
use crate::job::JobProgress;
use crate::manifest::WorkloadSpec;
use crate::runtime::StopCause;
use crate::status::Event;

/// One thing for the loop to carry out, for the workload the transition ran on.
#[derive(Debug)]
pub(super) enum Effect {
    /// Start `instance` in `slot`, running `revision` under `spec`.
    Spawn {
        /// The new instance's id.
        instance: Arc<str>,
        /// The slot it fills.
        slot: u32,
        /// The spec it runs under (the current one).
        spec: Arc<WorkloadSpec>,
        /// The revision whose compiled parts it runs.
        revision: Arc<str>,
    },
    /// Ask a live instance to stop.
    Stop {
        /// The instance.
        instance: Arc<str>,
        /// Why.
        cause: StopCause,
    },
    /// Send an event to subscribers (the workload's own history is already updated).
    Broadcast(Event),
    /// Queue the job's progress to the ledger; its acknowledgement comes back later.
    Persist(JobProgress),
    /// Forget the job in the ledger.
    Forget,
    /// The revision that decides changed: build the workload's decider again.
    NewDecider,
    /// How long an instance took from spawn to running.
    SpawnLatency(Duration),
    /// Reconcile the workload again (something it decides on changed).
    Reconcile,
    /// The workload is deleted and no instance of it is left: remove it.
    Remove,
}

/// How a job's progress is made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Durability {
    /// No ledger: progress is durable as soon as it is made.
    Immediate,
    /// A ledger's writer takes records and acknowledges them; `stalled` says why it
    /// cannot write, while it cannot.
    Queued {
        /// Why writes fail now, if they do.
        stalled: Option<String>,
    },
}

/// Instance ids: the workload's name and eight hex digits, unique on this host.
#[derive(Debug)]
pub(super) struct InstanceIds {
    next: u64,
    salt: u32,
}

impl InstanceIds {
    /// Ids mixed with `salt` (random in the host: ids differ between runs).
    pub fn new(salt: u32) -> Self {
        Self { next: 0, salt }
    }

    /// The next id for an instance of `workload`.
    pub fn next(&mut self, workload: &str) -> Arc<str> {
        self.next += 1;
        Arc::from(format!(
            "{workload}-{:08x}",
            (self.next as u32 ^ self.salt).wrapping_mul(0x9E37_79B1)
        ))
    }
}

/// What a transition reads (the time, the host's settings and capacity) and where it
/// puts its effects.
pub(super) struct Ctx<'a> {
    /// The monotonic time of this step.
    pub now: Instant,
    /// The wall-clock time of this step (events and conditions are dated with it).
    pub wall: SystemTime,
    /// Events kept per workload.
    pub history: usize,
    /// Room for more instances on the host.
    pub capacity: &'a mut Capacity,
    /// Where new instances get their ids.
    pub ids: &'a mut InstanceIds,
    /// How job progress is made durable.
    pub durability: &'a Durability,
    /// The effects so far, in order.
    pub effects: Vec<Effect>,
}

impl<'a> Ctx<'a> {
    /// A step happening now.
    pub fn new(
        history: usize,
        capacity: &'a mut Capacity,
        ids: &'a mut InstanceIds,
        durability: &'a Durability,
    ) -> Self {
        Self {
            now: Instant::now(),
            wall: SystemTime::now(),
            history,
            capacity,
            ids,
            durability,
            effects: Vec::new(),
        }
    }

    /// Adds an effect.
    pub fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }
}
