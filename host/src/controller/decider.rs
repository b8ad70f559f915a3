//! One decider per workload: the host's built-in policy, the workload's Wasm plugin
//! (which falls back to the built-in one when it fails), or, for a job, the built-in
//! job policy. The loop asks it for actions on the state's snapshot; the state then
//! checks and carries them out.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::broadcast;

use super::state::WorkloadState;
use crate::policy::snapshot::Snapshot;
use crate::policy::{Action, PluginPolicy, Policy};
use crate::runtime::plugin::{PluginInstance, PluginLimits, PreparedPlugin};
use crate::runtime::{LogLine, Runtime};

/// Who decides a workload's actions.
pub(super) enum Decider {
    /// The host's built-in policy.
    Builtin,
    /// The workload's policy plugin.
    Plugin(Box<PluginPolicy>),
    /// The built-in job policy.
    Job,
}

impl Decider {
    /// The name shown in status and in refusals.
    pub fn name(&self, builtin: &dyn Policy) -> String {
        match self {
            Self::Builtin => builtin.name().to_string(),
            Self::Plugin(plugin) => plugin.describe(builtin.name()),
            Self::Job => crate::job::POLICY_NAME.to_string(),
        }
    }

    /// Appends the actions that move `state` toward its desired state.
    pub async fn decide(
        &mut self,
        builtin: &dyn Policy,
        state: &WorkloadState,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let input = state.policy_input(now);
        match self {
            Self::Builtin => builtin.reconcile(&input, actions),
            Self::Plugin(plugin) => plugin.reconcile(&input, builtin, actions).await,
            Self::Job => {
                if let (Some(rules), Some(job)) = (&state.spec.job, state.job()) {
                    crate::job::reconcile(&state.spec, rules, &job.progress, &input, actions);
                }
            }
        }
    }

    /// What the policy would be shown now. (Not what a plugin was last shown: recording
    /// that on every decision would cost more than the decision.)
    pub fn snapshot(&self, state: &WorkloadState, now: Instant) -> Snapshot {
        let plugin = match self {
            Self::Plugin(plugin) => Some(plugin),
            _ => None,
        };
        let config = plugin.map_or(serde_json::Value::Null, |p| p.config().clone());
        Snapshot::capture(&state.policy_input(now), &state.revision, &config)
    }
}

/// What a plugin's instance needs from the host.
pub(super) struct PluginHost<'a> {
    /// The runtime it runs on.
    pub runtime: &'a Arc<Runtime>,
    /// Its bounds.
    pub limits: PluginLimits,
    /// Where its output goes.
    pub logs: &'a broadcast::Sender<LogLine>,
}

impl Decider {
    /// The decider of `state`'s current revision: the job policy for a job, else the
    /// revision's `plugin` if it has one, else the built-in policy.
    pub fn for_revision(
        state: &WorkloadState,
        plugin: Option<Arc<PreparedPlugin>>,
        host: PluginHost<'_>,
    ) -> Self {
        if state.job().is_some() {
            return Self::Job;
        }
        let Some(plugin) = plugin else {
            return Self::Builtin;
        };
        let (label, config) = match &state.spec.policy {
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
            host.runtime.clone(),
            plugin,
            host.limits,
            Arc::from(format!("{}/policy", state.name)),
            Some(host.logs.clone()),
        );
        Self::Plugin(Box::new(PluginPolicy::new(
            format!("plugin:{label}"),
            instance,
            config,
        )))
    }
}
