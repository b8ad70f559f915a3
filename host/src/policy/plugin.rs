//! The policy-plugin adapter: asks a Wasm plugin to decide, validates what it returns, and
//! when anything goes wrong (trap, deadline, memory, invalid actions) records why and lets
//! the built-in policy decide instead. A broken plugin never stops reconciliation. After
//! [`MAX_CONSECUTIVE_FAILURES`] failures in a row the plugin is disabled for this
//! revision; re-applying the workload gives it a fresh start.

use std::sync::Arc;
use std::time::Duration;

use super::snapshot::{ActionRecord, Snapshot};
use super::wit::PluginInput;
use super::{Action, Policy, PolicyInput};
use crate::runtime::StopCause;
use crate::runtime::plugin::{PluginFailure, PluginInstance};

/// Failures in a row after which a plugin is disabled until the workload changes.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 3;
/// Longest requeue a plugin may ask for.
const MAX_REQUEUE: Duration = Duration::from_secs(24 * 3600);
/// Longest event or failure reason, and message.
const MAX_REASON: usize = 64;
const MAX_MESSAGE: usize = 1024;

/// A workload's plugin policy, with its fallback bookkeeping.
pub struct PluginPolicy {
    name: String,
    instance: PluginInstance,
    config: serde_json::Value,
    input: PluginInput,
    failures: u32,
    disabled: bool,
}

impl PluginPolicy {
    /// A policy backed by `instance`, shown as `name` (e.g. `plugin:ordered.wasm`).
    pub fn new(name: String, instance: PluginInstance, config: serde_json::Value) -> Self {
        Self {
            name,
            instance,
            input: PluginInput::new(&config),
            config,
            failures: 0,
            disabled: false,
        }
    }

    /// The name shown in status and events, with its state.
    pub fn describe(&self, fallback: &str) -> String {
        if self.disabled {
            format!("{} (disabled; {fallback} decides)", self.name)
        } else {
            self.name.clone()
        }
    }

    /// The plugin's config.
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// Decides through the plugin, or through `fallback` when the plugin fails.
    pub async fn reconcile(
        &mut self,
        input: &PolicyInput<'_>,
        fallback: &dyn Policy,
        actions: &mut Vec<Action>,
    ) {
        if self.disabled {
            fallback.reconcile(input, actions);
            return;
        }
        let now_unix_ms = crate::clock::unix_millis_now();
        let asked =
            super::wit::ask_plugin(&mut self.instance, &mut self.input, input, now_unix_ms).await;
        let outcome = match asked {
            Ok(records) => validate(&records, input)
                .map_err(|why| format!("returned an invalid decision: {why}")),
            Err(failure) => Err(describe_failure(&failure)),
        };
        match outcome {
            Ok(decided) => {
                self.failures = 0;
                actions.extend(decided);
            }
            Err(why) => {
                self.failures += 1;
                actions.push(Action::Event {
                    warning: true,
                    reason: "PolicyPluginFailed".into(),
                    message: format!("{} {why}; {} decided instead", self.name, fallback.name()),
                });
                if self.failures >= MAX_CONSECUTIVE_FAILURES {
                    self.disabled = true;
                    actions.push(Action::Event {
                        warning: true,
                        reason: "PolicyPluginDisabled".into(),
                        message: format!(
                            "{} failed {} times in a row; {} decides until the workload is applied again",
                            self.name, self.failures, fallback.name()
                        ),
                    });
                }
                fallback.reconcile(input, actions);
            }
        }
    }
}

fn describe_failure(failure: &PluginFailure) -> String {
    match failure {
        PluginFailure::Trapped(reason) => format!("failed: {reason}"),
        other => other.to_string(),
    }
}

/// Checks a plugin's decision against the snapshot it was given; any invalid action
/// rejects the whole decision.
pub fn validate(records: &[ActionRecord], input: &PolicyInput<'_>) -> Result<Vec<Action>, String> {
    let replicas = input.desired.replicas;
    let bound = 2 * input.slots.len().max(replicas as usize) + 16;
    if records.len() > bound {
        return Err(format!(
            "{} actions, more than the {bound} this workload can need",
            records.len()
        ));
    }
    let mut spawned = std::collections::HashSet::new();
    let occupied = |slot: u32| {
        input
            .slots
            .get(slot as usize)
            .is_some_and(|s| s.instance.is_some())
    };
    let check_text = |reason: &str, message: &str| {
        let ok_reason = !reason.is_empty()
            && reason.len() <= MAX_REASON
            && reason.chars().all(|c| c.is_ascii_alphanumeric());
        if !ok_reason {
            return Err(format!(
                "reason `{}` is not CamelCase of at most {MAX_REASON} characters",
                reason.chars().take(80).collect::<String>()
            ));
        }
        if message.len() > MAX_MESSAGE {
            return Err(format!(
                "a message of {} bytes (at most {MAX_MESSAGE})",
                message.len()
            ));
        }
        Ok(())
    };
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        out.push(match record {
            ActionRecord::Spawn { slot } => {
                if *slot >= replicas {
                    return Err(format!(
                        "spawn in slot {slot}, beyond the {replicas} replicas"
                    ));
                }
                if occupied(*slot) || !spawned.insert(*slot) {
                    return Err(format!("spawn in slot {slot}, which is occupied"));
                }
                Action::Spawn { slot: *slot }
            }
            ActionRecord::Stop { slot } => {
                if !occupied(*slot) {
                    return Err(format!("stop slot {slot}, which has no instance"));
                }
                let cause = if *slot >= replicas {
                    StopCause::ScaleDown
                } else {
                    StopCause::Policy
                };
                Action::Stop { slot: *slot, cause }
            }
            ActionRecord::SpawnSuccessor { slot } => {
                let s = input.slots.get(*slot as usize);
                if *slot >= replicas || s.is_none_or(|s| s.instance.is_none() || s.successor.is_some()) || !spawned.insert(*slot) {
                    return Err(format!("successor in slot {slot}, which needs a live instance below {replicas} and no successor"));
                }
                Action::SpawnSuccessor { slot: *slot }
            }
            ActionRecord::RollBack { message } => {
                if input.rollout.is_none_or(|r| r.rolled_back) {
                    return Err("roll back with no rollout to undo".to_string());
                }
                check_text("RolledBack", message)?;
                Action::RollBack { message: message.clone() }
            }
            ActionRecord::RequeueAfter { ms } => {
                let delay = Duration::from_millis(*ms);
                if delay > MAX_REQUEUE {
                    return Err(format!("requeue after {ms} ms (at most a day)"));
                }
                Action::RequeueAfter(delay)
            }
            ActionRecord::Event {
                warning,
                reason,
                message,
            } => {
                check_text(reason, message)?;
                Action::Event {
                    warning: *warning,
                    reason: reason.clone(),
                    message: message.clone(),
                }
            }
            ActionRecord::MarkFailed { reason, message } => {
                check_text(reason, message)?;
                Action::MarkFailed {
                    reason: reason.clone(),
                    message: message.clone(),
                }
            }
        });
    }
    Ok(out)
}

/// Runs a plugin on a snapshot once, outside any host: what `setpoint policy test` does.
pub async fn dry_run(
    runtime: Arc<crate::runtime::Runtime>,
    plugin: &std::path::Path,
    snapshot: &Snapshot,
    limits: crate::runtime::plugin::PluginLimits,
) -> anyhow::Result<Result<Vec<ActionRecord>, String>> {
    let rt = runtime.clone();
    let path = plugin.to_path_buf();
    let prepared = tokio::task::spawn_blocking(move || rt.prepare_plugin(&path)).await??;
    let mut instance = PluginInstance::new(runtime, prepared, limits, "dry-run".into(), None);
    let replay = snapshot.replay(std::time::Instant::now());
    let input = replay.input();
    let mut buffers = PluginInput::new(&snapshot.desired.config);
    Ok(
        match super::wit::ask_plugin(&mut instance, &mut buffers, &input, snapshot.now_unix_ms)
            .await
        {
            Ok(records) => validate(&records, &input).map(|_| records),
            Err(failure) => Err(describe_failure(&failure)),
        },
    )
}
