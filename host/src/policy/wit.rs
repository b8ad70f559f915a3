//! The conversion between a policy's input and the WIT records a plugin speaks (the plugin
//! host in [`crate::runtime::plugin`] knows only the latter), and from the plugin's actions
//! back to records the host checks.
//!
//! This is the hot path of every plugin decision, so the records a plugin is shown hold
//! no per-instance text: an instance is named by its slot, its revision by `current`, an
//! end's reason by an enum. The slots are written straight into the guest's memory in the
//! canonical ABI's layout ([`crate::runtime::plugin_abi`]), with nothing buffered here.

use std::time::Instant;

use super::snapshot::ActionRecord;
use super::{InstanceObservation, PolicyInput};
use crate::clock::millis as ms;
use crate::end::EndKind;
use crate::manifest::{RestartPolicy, StrategyKind};
use crate::runtime::plugin::{PluginFailure, PluginInstance, t};
use crate::runtime::plugin_abi::{Desired, Observed, Slots};

/// What a plugin is shown that is kept between calls: the config's JSON text, made once,
/// and the buffer of recent restarts.
#[derive(Debug, Default)]
pub struct PluginInput {
    config: String,
    recent_restarts: Vec<u64>,
}

impl PluginInput {
    /// Buffers for a plugin whose `spec.policy.config` is `config`.
    pub fn new(config: &serde_json::Value) -> Self {
        Self {
            config: config.to_string(),
            ..Self::default()
        }
    }
}

/// Asks a plugin's `instance` to decide on `input` at `now_unix_ms`: the records it
/// returns, not yet checked (see [`super::validate`]).
pub async fn ask_plugin(
    instance: &mut PluginInstance,
    buffers: &mut PluginInput,
    input: &PolicyInput<'_>,
    now_unix_ms: u64,
) -> Result<Vec<ActionRecord>, PluginFailure> {
    let desired = desired(input, &buffers.config);
    let slot = |index: usize| slot(input, index);
    let recent = &mut buffers.recent_restarts;
    recent.clear();
    recent.extend(input.recent_restarts.iter().map(|t| ago(input.now, *t)));
    let observed = Observed {
        slots: Slots {
            count: input.slots.len(),
            slot: &slot,
        },
        recent_restarts_ago_ms: recent,
        failed: input.failed,
        rollout: input.rollout.map(|r| t::Rollout {
            started_ago_ms: ago(input.now, r.started),
            rolled_back: r.rolled_back,
        }),
    };
    let decided = instance.decide(desired, observed, now_unix_ms).await?;
    Ok(decided.into_iter().map(from_wit).collect())
}

fn desired<'a>(input: &PolicyInput<'a>, config: &'a str) -> Desired<'a> {
    let d = input.desired;
    let (max_surge, max_unavailable) = d.strategy.resolve(d.replicas);
    Desired {
        workload: input.workload,
        revision: input.revision,
        replicas: d.replicas,
        restart_policy: match d.restart_policy {
            RestartPolicy::Always => t::RestartPolicy::Always,
            RestartPolicy::OnFailure => t::RestartPolicy::OnFailure,
            RestartPolicy::Never => t::RestartPolicy::Never,
        },
        backoff: t::Backoff {
            initial_ms: ms(d.backoff.initial),
            max_ms: ms(d.backoff.max),
            reset_after_ms: ms(d.backoff.reset_after),
        },
        restart_budget: d.restart_budget.map(|b| t::RestartBudget {
            max_restarts: b.max_restarts,
            window_ms: ms(b.window),
        }),
        config,
        strategy: t::Strategy {
            recreate: d.strategy.kind == StrategyKind::Recreate,
            max_surge,
            max_unavailable,
            progress_deadline_ms: ms(d.strategy.progress_deadline),
            auto_rollback: d.strategy.auto_rollback,
            min_ready_ms: ms(d.strategy.min_ready),
        },
    }
}

fn ago(now: Instant, then: Instant) -> u64 {
    ms(now.saturating_duration_since(then))
}

/// Slot `index` of `input` as the plugin sees it.
fn slot(input: &PolicyInput<'_>, index: usize) -> t::Slot {
    let s = &input.slots[index];
    let instance = |i: &InstanceObservation| t::Instance {
        // Instances of the applied revision share its text, so this rarely compares bytes.
        current: std::ptr::eq(i.revision.as_ptr(), input.revision.as_ptr())
            || *i.revision == *input.revision,
        age_ms: ago(input.now, i.since),
        ready: i.ready,
        stopping: i.stopping,
    };
    t::Slot {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        instance: s.instance.as_ref().map(instance),
        successor: s.successor.as_ref().map(instance),
        restarts: s.restarts,
        consecutive_ends: s.consecutive_ends,
        last_end: s.last_end.as_ref().map(|(at, e)| t::End {
            reason: end_reason(e.kind),
            exit_code: e.exit_code,
            success: e.is_success(),
            host_stop: e.kind.is_host_stop(),
            deterministic: e.kind.is_deterministic(),
            ago_ms: ago(input.now, *at),
        }),
    }
}

/// An end's reason as the plugin sees it.
fn end_reason(kind: EndKind) -> t::EndReason {
    match kind {
        EndKind::Exited => t::EndReason::Exited,
        EndKind::Trapped => t::EndReason::Trapped,
        EndKind::OutOfMemory => t::EndReason::OutOfMemory,
        EndKind::CpuBudgetExceeded => t::EndReason::CpuBudgetExceeded,
        EndKind::StartFailed => t::EndReason::StartFailed,
        EndKind::InstantiationFailed => t::EndReason::InstantiationFailed,
        EndKind::ProbeFailed => t::EndReason::ProbeFailed,
        EndKind::ProbeTimeout => t::EndReason::ProbeTimeout,
        EndKind::WatchdogTimeout => t::EndReason::WatchdogTimeout,
        EndKind::RequestTimeout => t::EndReason::RequestTimeout,
        EndKind::Stopped => t::EndReason::Stopped,
    }
}

/// What a plugin's action means, before it is checked.
fn from_wit(a: t::Action) -> ActionRecord {
    match a {
        t::Action::Spawn(slot) => ActionRecord::Spawn { slot },
        t::Action::Stop(slot) => ActionRecord::Stop { slot },
        t::Action::SpawnSuccessor(slot) => ActionRecord::SpawnSuccessor { slot },
        t::Action::RollBack(message) => ActionRecord::RollBack { message },
        t::Action::RequeueAfterMs(ms) => ActionRecord::RequeueAfter { ms },
        t::Action::Event(e) => ActionRecord::Event {
            warning: e.warning,
            reason: e.reason,
            message: e.message,
        },
        t::Action::MarkFailed(f) => ActionRecord::MarkFailed {
            reason: f.reason,
            message: f.message,
        },
    }
}

/// Asks a plugin to decide on a recorded or hand-written snapshot, as it would have
/// decided on the input the snapshot describes (`setpoint policy test`, the differential
/// tests).
pub async fn ask_plugin_on_snapshot(
    instance: &mut PluginInstance,
    snapshot: &super::snapshot::Snapshot,
) -> Result<Vec<ActionRecord>, PluginFailure> {
    let replay = snapshot.replay(Instant::now());
    let mut buffers = PluginInput::new(&snapshot.desired.config);
    ask_plugin(
        instance,
        &mut buffers,
        &replay.input(),
        snapshot.now_unix_ms,
    )
    .await
}
