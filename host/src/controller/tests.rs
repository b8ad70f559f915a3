//! The controller's transitions, driven step by step with no runtime: each test plays
//! instance events and decisions into a [`WorkloadState`] and checks the effects it
//! returns and the state it leaves. The decisions come from the real built-in policies.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::apply::Applied;
use super::capacity::Capacity;
use super::decider::Decider;
use super::effects::{Ctx, Durability, Effect, InstanceIds};
use super::jobs::Pass;
use super::state::WorkloadState;
use crate::job::JobProgress;
use crate::manifest::{BackoffSpec, IntOrPercent, JobSpec, StrategyKind, WorkloadSpec};
use crate::policy::{Action, ReplicaPolicy};
use crate::runtime::OutputSummary;
use crate::runtime::{EndReason, InstanceEnd, InstanceEvent, InstanceEventKind, StopCause};

/// The host around the state: clocks, capacity, ids and durability, all in hand.
struct World {
    now: Instant,
    wall: SystemTime,
    capacity: Capacity,
    ids: InstanceIds,
    durability: Durability,
}

impl World {
    fn new() -> Self {
        Self {
            now: Instant::now(),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            capacity: Capacity::new(1000, None, None, "raise the limit"),
            ids: InstanceIds::new(0),
            durability: Durability::Immediate,
        }
    }

    /// A world whose job progress goes through a ledger that acknowledges later.
    fn with_ledger() -> Self {
        Self {
            durability: Durability::Queued { stalled: None },
            ..Self::new()
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.wall += by;
    }

    /// Runs one transition at the world's time; returns its effects.
    fn step(&mut self, transition: impl FnOnce(&mut Ctx<'_>)) -> Vec<Effect> {
        let mut ctx = Ctx {
            now: self.now,
            wall: self.wall,
            history: 32,
            capacity: &mut self.capacity,
            ids: &mut self.ids,
            durability: &self.durability,
            effects: Vec::new(),
        };
        transition(&mut ctx);
        ctx.effects
    }

    fn create(&mut self, spec: WorkloadSpec, revision: &str) -> (WorkloadState, Vec<Effect>) {
        let mut state = None;
        let effects = self.step(|ctx| {
            state = Some(WorkloadState::create(
                Arc::from("web"),
                applied(spec, revision),
                None,
                ctx,
            ));
        });
        (state.expect("created"), effects)
    }

    /// A whole pass as the loop runs it, the decision made by the built-in policy (or
    /// the job policy, for a job).
    fn pass(&mut self, state: &mut WorkloadState) -> Vec<Effect> {
        let mut decider = if state.job().is_some() {
            Decider::Job
        } else {
            Decider::Builtin
        };
        let now = self.now;
        self.step(|ctx| {
            let Pass::Decide { due } = state.begin_pass(ctx) else {
                return;
            };
            let mut actions = Vec::new();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime");
            runtime.block_on(decider.decide(&ReplicaPolicy, state, now, &mut actions));
            state.carry_out(&mut actions, &|| "test".to_string(), ctx);
            state.end_pass(due, ctx);
        })
    }

    fn observe(&mut self, state: &mut WorkloadState, event: InstanceEvent) -> Vec<Effect> {
        self.step(|ctx| state.observe(event, ctx))
    }

    /// The instance reports running and ready.
    fn up(&mut self, state: &mut WorkloadState, slot: u32, id: &Arc<str>) {
        self.observe(state, event(slot, id, InstanceEventKind::Running));
        self.observe(state, event(slot, id, InstanceEventKind::Ready(true)));
    }

    fn end(
        &mut self,
        state: &mut WorkloadState,
        slot: u32,
        id: &Arc<str>,
        reason: EndReason,
        ran_for: Duration,
    ) -> Vec<Effect> {
        let end = InstanceEnd {
            reason,
            at: self.wall,
            ran_for,
            peak_memory_bytes: 0,
            cpu: Duration::ZERO,
            output: OutputSummary::default(),
        };
        self.observe(
            state,
            event(slot, id, InstanceEventKind::Ended(Box::new(end))),
        )
    }
}

fn applied(spec: WorkloadSpec, revision: &str) -> Applied {
    Applied {
        labels: Default::default(),
        spec: Arc::new(spec),
        revision: Arc::from(revision),
        failed: None,
    }
}

fn event(slot: u32, id: &Arc<str>, kind: InstanceEventKind) -> InstanceEvent {
    InstanceEvent {
        workload: Arc::from("web"),
        slot,
        instance: id.clone(),
        kind,
        at: SystemTime::UNIX_EPOCH,
    }
}

fn spec(replicas: u32) -> WorkloadSpec {
    let mut spec = WorkloadSpec::new("web.wasm");
    spec.replicas = replicas;
    spec
}

fn spawns(effects: &[Effect]) -> Vec<(u32, Arc<str>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Spawn { slot, instance, .. } => Some((*slot, instance.clone())),
            _ => None,
        })
        .collect()
}

fn stops(effects: &[Effect]) -> Vec<(Arc<str>, StopCause)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Stop { instance, cause } => Some((instance.clone(), *cause)),
            _ => None,
        })
        .collect()
}

fn persisted(effects: &[Effect]) -> Vec<JobProgress> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Persist(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

fn reasons(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Broadcast(event) => Some(event.reason.clone()),
            _ => None,
        })
        .collect()
}

fn trapped() -> EndReason {
    EndReason::Trapped {
        trap: "UnreachableCodeReached".into(),
        message: "wasm trap".into(),
    }
}

/// Starts a workload of `replicas` and brings every instance up; returns their ids.
fn running(world: &mut World, state: &mut WorkloadState) -> Vec<Arc<str>> {
    let started = spawns(&world.pass(state));
    for (slot, id) in &started {
        world.up(state, *slot, id);
    }
    started.into_iter().map(|(_, id)| id).collect()
}

#[test]
fn the_back_off_streak_grows_on_quick_ends_and_resets_after_a_long_run() {
    let reset_after = Duration::from_secs(60);
    // (ends in a row before, how the instance ended, how long it ran, ends in a row after)
    let table = [
        (0, trapped(), Duration::from_millis(5), 1),
        (3, trapped(), Duration::from_millis(5), 4),
        (3, EndReason::Exited { code: 1 }, Duration::from_secs(59), 4),
        (7, trapped(), reset_after, 1),
        (
            7,
            EndReason::Exited { code: 0 },
            Duration::from_secs(600),
            1,
        ),
        (
            3,
            EndReason::Stopped {
                cause: StopCause::Policy,
                forced: false,
            },
            Duration::from_millis(5),
            3,
        ),
        (u32::MAX, trapped(), Duration::ZERO, u32::MAX),
    ];
    for (before, reason, ran_for, after) in table {
        let mut world = World::new();
        let mut spec = spec(1);
        spec.backoff.reset_after = reset_after;
        let (mut state, _) = world.create(spec, "r1");
        let ids = running(&mut world, &mut state);
        state.slots[0].consecutive_ends = before;
        world.end(&mut state, 0, &ids[0], reason.clone(), ran_for);
        assert_eq!(
            state.slots[0].consecutive_ends, after,
            "{before} in a row, then {reason} after {ran_for:?}"
        );
    }
}

#[test]
fn a_crash_loop_waits_out_its_back_off_before_the_next_replacement() {
    let mut world = World::new();
    let mut spec = spec(1);
    spec.backoff = BackoffSpec {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(8),
        reset_after: Duration::from_secs(60),
    };
    let (mut state, _) = world.create(spec, "r1");
    let mut id = running(&mut world, &mut state).remove(0);
    // The first end is replaced at once; the next ones wait 1 s, 2 s, 4 s, 8 s, 8 s.
    for (round, wait) in [0u64, 1, 2, 4, 8, 8].into_iter().enumerate() {
        world.end(&mut state, 0, &id, trapped(), Duration::from_millis(3));
        if wait > 0 {
            let effects = world.pass(&mut state);
            assert!(spawns(&effects).is_empty(), "round {round}: no spawn yet");
            assert!(reasons(&effects).contains(&"BackOff".to_string()));
            assert!(
                state.requeue_at.is_some(),
                "round {round}: a requeue is asked"
            );
            world.advance(Duration::from_secs(wait));
        }
        let effects = world.pass(&mut state);
        let spawned = spawns(&effects);
        assert_eq!(spawned.len(), 1, "round {round}: replaced after {wait} s");
        assert!(reasons(&effects).contains(&"Replaced".to_string()));
        id = spawned[0].1.clone();
        world.up(&mut state, 0, &id);
    }
    assert_eq!(state.total_restarts, 6);
    assert_eq!(state.slots[0].restarts, 6);
}

#[test]
fn a_back_off_is_said_once_however_often_the_waiting_slot_is_passed_over() {
    let mut world = World::new();
    let mut spec = spec(2);
    spec.backoff.initial = Duration::from_secs(5);
    let (mut state, _) = world.create(spec, "r1");
    let ids = running(&mut world, &mut state);
    // Each slot's first end is replaced at once; the second waits.
    let mut now = ids.clone();
    for round in 0..2 {
        for slot in 0..2u32 {
            world.end(
                &mut state,
                slot,
                &now[slot as usize],
                trapped(),
                Duration::from_millis(3),
            );
        }
        let effects = world.pass(&mut state);
        if round == 0 {
            let spawned = spawns(&effects);
            for (slot, id) in spawned {
                world.up(&mut state, slot, &id);
                now[slot as usize] = id;
            }
        }
    }
    // Passes over the waiting slots (other events, resyncs) say nothing new.
    for _ in 0..5 {
        world.advance(Duration::from_millis(100));
        world.pass(&mut state);
    }
    let backoffs = state
        .events
        .iter()
        .filter(|e| e.reason == "BackOff")
        .count();
    assert_eq!(backoffs, 2, "one per waiting slot: {:?}", state.events);
}

#[test]
fn a_rollout_starts_at_most_max_surge_successors_and_each_takes_its_slot_over() {
    for surge in [1u32, 2, 3, 5] {
        let mut world = World::new();
        let mut spec = spec(3);
        spec.strategy.max_surge = IntOrPercent::Count(surge);
        spec.strategy.max_unavailable = IntOrPercent::Count(0);
        let (mut state, _) = world.create(spec.clone(), "r1");
        let old = running(&mut world, &mut state);
        world.step(|ctx| state.reapply(applied(spec.clone(), "r2"), ctx));
        assert!(state.rollout().is_some(), "a rolling update starts");
        let successors = spawns(&world.pass(&mut state));
        assert_eq!(
            successors.len(),
            surge.min(3) as usize,
            "maxSurge {surge} bounds the successors"
        );
        for (slot, id) in &successors {
            assert_eq!(
                state.slots[*slot as usize]
                    .successor
                    .as_ref()
                    .map(|i| &i.id),
                Some(id)
            );
            world.up(&mut state, *slot, id);
        }
        // Ready successors: their old instances are stopped as replaced.
        let stopped = stops(&world.pass(&mut state));
        assert_eq!(stopped.len(), successors.len());
        assert!(stopped.iter().all(|(_, c)| *c == StopCause::Replaced));
        for (slot, successor) in &successors {
            let stopped = EndReason::Stopped {
                cause: StopCause::Replaced,
                forced: false,
            };
            let slot_old = &old[*slot as usize];
            world.end(&mut state, *slot, slot_old, stopped, Duration::from_secs(1));
            let s = &state.slots[*slot as usize];
            assert_eq!(s.instance.as_ref().map(|i| &i.id), Some(successor));
            assert!(s.successor.is_none());
            assert!(state.running[*slot as usize], "the successor was running");
        }
    }
}

#[test]
fn a_rollout_not_available_by_its_deadline_rolls_back() {
    let mut world = World::new();
    let mut spec = spec(2);
    spec.strategy.progress_deadline = Duration::from_secs(30);
    let (mut state, _) = world.create(spec.clone(), "r1");
    running(&mut world, &mut state);
    world.step(|ctx| state.reapply(applied(spec.clone(), "r2"), ctx));
    let successors = spawns(&world.pass(&mut state));
    assert_eq!(successors.len(), 1);
    // The successor runs but never becomes ready.
    world.observe(
        &mut state,
        event(
            successors[0].0,
            &successors[0].1,
            InstanceEventKind::Running,
        ),
    );
    world.advance(Duration::from_secs(29));
    assert!(!reasons(&world.pass(&mut state)).contains(&"RolledBack".to_string()));
    world.advance(Duration::from_secs(1));
    let effects = world.pass(&mut state);
    assert!(reasons(&effects).contains(&"RolledBack".to_string()));
    assert_eq!(&*state.revision, "r1");
    let rollout = state.rollout().expect("a rollout back");
    assert!(rollout.rolled_back);
    assert_eq!(
        state
            .rollouts()
            .and_then(|r| r.previous.as_ref())
            .map(|p| &*p.revision),
        Some("r2")
    );
    assert!(effects.iter().any(|e| matches!(e, Effect::NewDecider)));
    assert_eq!(
        stops(&effects),
        vec![(successors[0].1.clone(), StopCause::Replaced)],
        "the abandoned revision's successor stops"
    );
    // A rollback is never rolled back again.
    world.advance(Duration::from_secs(3600));
    assert!(!reasons(&world.pass(&mut state)).contains(&"RolledBack".to_string()));
}

#[test]
fn scaling_down_during_a_rollout_stops_surplus_slots_and_their_successors() {
    let mut world = World::new();
    let mut spec = spec(3);
    spec.strategy.max_surge = IntOrPercent::Count(3);
    spec.strategy.max_unavailable = IntOrPercent::Count(0);
    let (mut state, _) = world.create(spec.clone(), "r1");
    let old = running(&mut world, &mut state);
    world.step(|ctx| state.reapply(applied(spec.clone(), "r2"), ctx));
    let successors = spawns(&world.pass(&mut state));
    assert_eq!(successors.len(), 3);
    // Scale changes how, not what, runs: the revision stays.
    spec.replicas = 1;
    world.step(|ctx| state.reapply(applied(spec.clone(), "r2"), ctx));
    assert!(state.rollout().is_some(), "still rolling");
    let stopped = stops(&world.pass(&mut state));
    for slot in [1usize, 2] {
        for id in [&old[slot], &successors[slot].1] {
            assert!(
                stopped.contains(&(id.clone(), StopCause::ScaleDown)),
                "slot {slot}: {id} stops as surplus"
            );
        }
    }
    assert!(
        !stopped
            .iter()
            .any(|(id, _)| *id == old[0] || *id == successors[0].1),
        "slot 0 is kept"
    );
}

#[test]
fn events_from_an_instance_already_replaced_change_nothing() {
    let mut world = World::new();
    let (mut state, _) = world.create(spec(1), "r1");
    let first = running(&mut world, &mut state).remove(0);
    world.end(&mut state, 0, &first, trapped(), Duration::from_millis(1));
    let second = spawns(&world.pass(&mut state)).remove(0).1;
    world.up(&mut state, 0, &second);
    let restarts = state.total_restarts;
    let live = world.capacity.live();
    let late = [
        InstanceEventKind::Ready(false),
        InstanceEventKind::Running,
        InstanceEventKind::Ended(Box::new(InstanceEnd {
            reason: trapped(),
            at: world.wall,
            ran_for: Duration::ZERO,
            peak_memory_bytes: 0,
            cpu: Duration::ZERO,
            output: OutputSummary::default(),
        })),
    ];
    for kind in late {
        let effects = world.observe(&mut state, event(0, &first, kind));
        assert!(effects.is_empty(), "a late event has no effect");
    }
    // Nor does one for a slot that never existed.
    assert!(
        world
            .observe(&mut state, event(7, &second, InstanceEventKind::Running))
            .is_empty()
    );
    let current = state.slots[0].instance.as_ref().expect("still live");
    assert_eq!(current.id, second);
    assert!(current.ready);
    assert_eq!(state.total_restarts, restarts);
    assert_eq!(world.capacity.live(), live);
}

#[test]
fn a_job_counts_a_run_only_once_its_ledger_has_acknowledged_it() {
    let mut world = World::with_ledger();
    let mut job = JobSpec::new(2);
    job.parallelism = 1;
    let spec = WorkloadSpec::job("work.wasm", job);
    let (mut state, effects) = world.create(spec, "j1");
    // The start is recorded before anything runs.
    let start = persisted(&effects);
    assert_eq!(start.len(), 1);
    assert!(
        spawns(&world.pass(&mut state)).is_empty(),
        "waits for the ack"
    );
    world.step(|ctx| state.job_acknowledged(start[0].clone(), ctx));
    let run = spawns(&world.pass(&mut state));
    assert_eq!(run.len(), 1);
    let effects = world.end(
        &mut state,
        run[0].0,
        &run[0].1,
        EndReason::Exited { code: 0 },
        Duration::from_millis(5),
    );
    let counted = persisted(&effects);
    assert_eq!(counted.len(), 1);
    assert_eq!(counted[0].succeeded, 1);
    // Not durable yet: status shows nothing counted, and no next run starts.
    let shown = |state: &WorkloadState| {
        super::view::workload_status(state, "builtin/job", Instant::now())
            .job
            .map(|j| j.succeeded)
    };
    assert_eq!(shown(&state), Some(0));
    assert!(spawns(&world.pass(&mut state)).is_empty());
    // An acknowledgement of another run of this job (deleted and applied again) is stale.
    let mut stale = counted[0].clone();
    stale.started -= Duration::from_secs(1);
    world.step(|ctx| state.job_acknowledged(stale, ctx));
    assert_eq!(shown(&state), Some(0));
    world.step(|ctx| state.job_acknowledged(counted[0].clone(), ctx));
    assert_eq!(shown(&state), Some(1));
    assert_eq!(
        spawns(&world.pass(&mut state)).len(),
        1,
        "the next run starts"
    );
}

#[test]
fn a_job_deleted_and_applied_again_as_a_workload_becomes_a_workload() {
    let mut world = World::new();
    let (mut state, _) = world.create(WorkloadSpec::job("work.wasm", JobSpec::new(1)), "j1");
    world.step(|ctx| state.delete(ctx));
    world.step(|ctx| state.reapply(applied(spec(2), "w1"), ctx));
    assert!(state.job().is_none());
    assert!(!state.deleting);
    assert_eq!(spawns(&world.pass(&mut state)).len(), 2);
}

#[test]
fn recreate_stops_every_old_instance_at_once() {
    let mut world = World::new();
    let mut spec = spec(3);
    spec.strategy.kind = StrategyKind::Recreate;
    let (mut state, _) = world.create(spec.clone(), "r1");
    let old = running(&mut world, &mut state);
    let effects = world.step(|ctx| state.reapply(applied(spec.clone(), "r2"), ctx));
    assert!(state.rollout().is_none());
    let stopped = stops(&effects);
    assert_eq!(stopped.len(), 3);
    assert!(
        old.iter()
            .all(|id| stopped.contains(&(id.clone(), StopCause::Replaced)))
    );
    assert!(reasons(&effects).contains(&"Updated".to_string()));
}

#[test]
fn actions_the_state_cannot_take_are_refused_with_an_event() {
    // (the action, what the refusal says)
    let table = [
        (Action::Spawn { slot: 5 }, "beyond 2 replicas"),
        (Action::Spawn { slot: 0 }, "the slot is occupied"),
        (
            Action::SpawnSuccessor { slot: 1 },
            "it needs a live instance and no successor",
        ),
        (
            Action::Stop {
                slot: 1,
                cause: StopCause::Policy,
            },
            "no live instance there",
        ),
        (
            Action::RollBack {
                message: "why".into(),
            },
            "no rollout to undo",
        ),
    ];
    for (action, says) in table {
        let mut world = World::new();
        let (mut state, _) = world.create(spec(2), "r1");
        // Slot 0 live, slot 1 empty.
        world.step(|ctx| {
            state.carry_out(&mut vec![Action::Spawn { slot: 0 }], &|| "test".into(), ctx)
        });
        let effects =
            world.step(|ctx| state.carry_out(&mut vec![action.clone()], &|| "test".into(), ctx));
        assert!(spawns(&effects).is_empty() && stops(&effects).is_empty());
        let refusal = state.events.back().expect("an event");
        assert_eq!(refusal.reason, "ActionRefused", "{action:?}");
        assert!(
            refusal.message.contains(says),
            "{action:?}: {}",
            refusal.message
        );
    }
    // And the host's own limit.
    let mut world = World::new();
    world.capacity = Capacity::new(1, None, None, "");
    let (mut state, _) = world.create(spec(2), "r1");
    let effects = world.pass(&mut state);
    assert_eq!(spawns(&effects).len(), 1);
    assert!(
        state
            .events
            .back()
            .is_some_and(|e| e.message.contains("limit of 1 instances"))
    );
}

#[test]
fn status_reads_back_what_it_writes() {
    let mut world = World::new();
    let mut spec = spec(2);
    spec.probe = Some(crate::manifest::ProbeSpec::default());
    spec.dirs = vec![crate::manifest::DirGrant::new("/srv", "/data", true)];
    let (mut state, _) = world.create(spec, "r1");
    let ids = running(&mut world, &mut state);
    world.end(&mut state, 0, &ids[0], trapped(), Duration::from_millis(7));
    let (mut job, _) = world.create(WorkloadSpec::job("work.wasm", JobSpec::new(3)), "j1");
    world.pass(&mut job);
    let host = crate::status::HostStatus {
        workloads: [&state, &job]
            .into_iter()
            .map(|s| super::view::workload_status(s, "builtin/replicas", Instant::now()))
            .collect(),
        quarantined: vec![crate::status::QuarantinedApply {
            apply: 7,
            workloads: vec!["old".into()],
            reason: "it no longer loads".into(),
            help: "apply it again".into(),
        }],
    };
    assert!(host.workloads[0].last_termination.is_some());
    assert!(host.workloads[1].job.is_some());
    let json = serde_json::to_string(&host).expect("serializes");
    let back: crate::status::HostStatus = serde_json::from_str(&json).expect("reads back");
    assert_eq!(serde_json::to_string(&back).expect("serializes"), json);
    assert_eq!(back.workloads[1].kind, crate::status::WorkloadKind::Job);
    // What is left out when empty reads back too.
    let empty = serde_json::to_string(&crate::status::HostStatus::default()).expect("serializes");
    let back: crate::status::HostStatus = serde_json::from_str(&empty).expect("reads back");
    assert!(back.workloads.is_empty() && back.quarantined.is_empty());
}

#[test]
fn a_restart_clears_a_failure_and_replaces_every_instance() {
    let mut world = World::new();
    let mut spec = spec(2);
    spec.restart_budget = Some(crate::manifest::RestartBudget {
        max_restarts: 0,
        window: Duration::from_secs(60),
    });
    let (mut state, _) = world.create(spec, "r1");
    let ids = running(&mut world, &mut state);
    world.end(&mut state, 0, &ids[0], trapped(), Duration::from_millis(1));
    world.pass(&mut state);
    assert!(state.failed.is_some(), "the budget of 0 restarts is spent");
    assert!(
        spawns(&world.pass(&mut state)).is_empty(),
        "a failed workload spawns nothing"
    );
    let mut result = None;
    let effects = world.step(|ctx| result = Some(state.restart(ctx)));
    assert_eq!(result, Some(Ok(())));
    assert!(state.failed.is_none());
    assert!(state.recent_restarts.is_empty());
    assert_eq!(
        stops(&effects),
        vec![(ids[1].clone(), StopCause::Replaced)],
        "the live instance is replaced"
    );
    assert!(reasons(&effects).contains(&"Restarted".to_string()));
    assert_eq!(
        spawns(&world.pass(&mut state)).len(),
        1,
        "the empty slot is filled at once"
    );
    // A job is not restarted.
    let (mut job, _) = world.create(WorkloadSpec::job("work.wasm", JobSpec::new(1)), "j1");
    let mut refused = None;
    world.step(|ctx| refused = Some(job.restart(ctx)));
    assert!(refused.is_some_and(|r| r.is_err_and(|e| e.contains("is a job"))));
}

/// The end of `id` in `slot`, which its own task replaced with `by` of `revision`;
/// returns whether the state kept the replacement, and the effects.
fn end_replaced(
    world: &mut World,
    state: &mut WorkloadState,
    slot: u32,
    id: &Arc<str>,
    (by, revision): (&Arc<str>, &str),
    reason: EndReason,
) -> (bool, Vec<Effect>) {
    let end = InstanceEnd {
        reason,
        at: world.wall,
        ran_for: Duration::from_millis(2),
        peak_memory_bytes: 0,
        cpu: Duration::ZERO,
        output: OutputSummary::default(),
    };
    let revision: Arc<str> = Arc::from(revision);
    let check = super::observe::DirectReplacement {
        instance: by,
        revision: &revision,
        at: world.wall,
        policy: &ReplicaPolicy,
    };
    let ended = event(slot, id, InstanceEventKind::Ended(Box::new(end)));
    let mut kept = false;
    let effects = world.step(|ctx| kept = state.observe_replaced(ended, Some(check), ctx));
    (kept, effects)
}

#[test]
fn a_direct_replacement_is_taken_as_the_policy_s_own_would_be() {
    let mut world = World::new();
    let (mut state, _) = world.create(spec(2), "r1");
    assert!(state.reflex_armable(world.now));
    let ids = running(&mut world, &mut state);
    let by: Arc<str> = Arc::from("web-direct");
    let (kept, effects) = end_replaced(&mut world, &mut state, 1, &ids[1], (&by, "r1"), trapped());
    assert!(kept);
    assert!(spawns(&effects).is_empty(), "it runs already: {effects:?}");
    assert_eq!(
        reasons(&effects),
        ["Trapped", "Replaced"],
        "the same events as a replacement by a pass"
    );
    let slot = &state.slots[1];
    assert_eq!(
        slot.instance.as_ref().map(|i| i.id.clone()),
        Some(by.clone())
    );
    assert_eq!((slot.restarts, slot.consecutive_ends), (1, 1));
    assert_eq!(state.total_restarts, 1);
    assert!(
        state
            .last_termination
            .as_ref()
            .is_some_and(|t| *t.instance == *ids[1])
    );
    // The pass that follows has nothing to do, and the replacement is an instance like
    // any other.
    assert!(spawns(&world.pass(&mut state)).is_empty());
    world.up(&mut state, 1, &by);
    assert_eq!(state.running_count(), 2);
    assert_eq!(state.ready_count(), 2);
}

#[test]
fn a_direct_replacement_the_policy_would_not_make_is_refused() {
    let r1 = "r1";
    // (what is changed before the end, the replacement's revision, how it ends)
    type Setup = fn(&mut WorkloadState);
    let table: [(&str, Setup, &str, EndReason); 8] = [
        (
            "back-off due",
            |s| s.slots[0].consecutive_ends = 1,
            r1,
            trapped(),
        ),
        ("another revision", |_| {}, "r0", trapped()),
        ("scaled down", |s| s.spec = Arc::new(spec(0)), r1, trapped()),
        (
            "restart budget spent",
            |s| {
                let mut spec = (*s.spec).clone();
                spec.restart_budget = Some(crate::manifest::RestartBudget {
                    max_restarts: 0,
                    window: Duration::from_secs(60),
                });
                s.spec = Arc::new(spec);
            },
            r1,
            trapped(),
        ),
        (
            "never restarted",
            |s| {
                let mut spec = (*s.spec).clone();
                spec.restart_policy = crate::manifest::RestartPolicy::Never;
                s.spec = Arc::new(spec);
            },
            r1,
            trapped(),
        ),
        (
            "a success, restarted only on failure",
            |s| {
                let mut spec = (*s.spec).clone();
                spec.restart_policy = crate::manifest::RestartPolicy::OnFailure;
                s.spec = Arc::new(spec);
            },
            r1,
            EndReason::Exited { code: 0 },
        ),
        (
            "marked failed",
            |s| {
                s.failed = Some(super::state::Failure {
                    reason: "Test".into(),
                    message: "test".into(),
                    since: SystemTime::UNIX_EPOCH,
                })
            },
            r1,
            trapped(),
        ),
        ("being deleted", |s| s.deleting = true, r1, trapped()),
    ];
    for (what, setup, revision, reason) in table {
        let mut world = World::new();
        let mut spec = spec(1);
        spec.backoff.initial = Duration::from_secs(5);
        let (mut state, _) = world.create(spec, r1);
        let ids = running(&mut world, &mut state);
        setup(&mut state);
        let by: Arc<str> = Arc::from("web-direct");
        let (kept, effects) =
            end_replaced(&mut world, &mut state, 0, &ids[0], (&by, revision), reason);
        assert!(!kept, "{what}: refused");
        assert!(
            !reasons(&effects).contains(&"Replaced".to_string()),
            "{what}"
        );
        assert!(
            state.slots.first().is_none_or(|s| s.instance.is_none()),
            "{what}: the slot is empty"
        );
        assert_eq!(state.total_restarts, 0, "{what}: nothing counted");
        assert!(
            state.last_termination.is_some(),
            "{what}: the end is recorded all the same"
        );
    }
    // An instance the state no longer holds is not replaced either.
    let mut world = World::new();
    let (mut state, _) = world.create(spec(1), r1);
    running(&mut world, &mut state);
    let by: Arc<str> = Arc::from("web-direct");
    let stranger: Arc<str> = Arc::from("web-gone");
    let (kept, _) = end_replaced(&mut world, &mut state, 0, &stranger, (&by, r1), trapped());
    assert!(!kept);
    // Nor during a rollout, nor in a job.
    let mut world = World::new();
    let (mut state, _) = world.create(spec(1), r1);
    running(&mut world, &mut state);
    if let super::state::Kind::Workload(rollouts) = &mut state.kind {
        rollouts.rollout = Some(crate::policy::RolloutObservation {
            started: world.now,
            rolled_back: false,
        });
    }
    assert!(!state.reflex_armable(world.now));
    let (job, _) = world.create(WorkloadSpec::job("work.wasm", JobSpec::new(3)), "j1");
    assert!(!job.reflex_armable(world.now));
}
