//! The plugin host: policy plugins are components of the `setpoint:policy/plugin` world,
//! compiled once per digest and run in their own Store with no grants at all (no env, no
//! files, no sockets; stderr is captured as the plugin's log), a memory cap, and a CPU and
//! wall-clock deadline per call. This module converts between the snapshot types of
//! [`crate::policy::snapshot`] and the WIT records, and reports every failure as a
//! [`PluginFailure`]; deciding what to do about a failure is the policy adapter's job.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use wasmtime::Store;

use super::exit::{EndReason, error_text};
use super::instance::{InstanceState, build_plugin_store};
use super::output::{LogLine, OutputCapture};
use super::{Digest, PrepareError, Runtime};
use crate::manifest::CpuBudget;
use crate::policy::snapshot::{ActionRecord, Snapshot};

mod wit {
    wasmtime::component::bindgen!({
        path: "../wit/policy",
        world: "plugin",
        exports: { default: async },
    });
}

use wit::setpoint::policy::types as t;

/// The export by which a plugin is recognised.
pub const RECONCILER_EXPORT: &str = "setpoint:policy/reconciler@0.1.0";

/// A compiled, linked policy plugin.
pub struct PreparedPlugin {
    /// Content digest of the `.wasm` bytes.
    pub digest: Digest,
    pre: wit::PluginPre<InstanceState>,
}

/// Why a plugin call produced no decision.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginFailure {
    /// Instantiation failed (e.g. its memory minimum is over the cap).
    Instantiate(String),
    /// The call trapped, ran out of memory, or spent its CPU deadline.
    Trapped(EndReason),
    /// The call did not return within its wall-clock deadline.
    Timeout(Duration),
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Instantiate(m) => write!(f, "could not be instantiated: {m}"),
            Self::Trapped(r) => write!(f, "{r}"),
            Self::Timeout(d) => write!(f, "did not return within {d:?}"),
        }
    }
}

impl Runtime {
    /// Compiles and links a policy plugin (cached by digest). Blocking, like `prepare`.
    pub fn prepare_plugin(
        &self,
        path: &std::path::Path,
    ) -> Result<Arc<PreparedPlugin>, PrepareError> {
        let bytes = self.read_component(path)?;
        let digest = Digest(
            sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), &bytes))
                .into(),
        );
        if let Some(found) = self.lock_plugins().get(&digest) {
            return Ok(found.clone());
        }
        let component = super::engine::load_component(&self.engine, &self.config, path, &bytes)?;
        let link_error = |message: String| PrepareError::Link {
            path: path.to_path_buf(),
            message,
        };
        let exports_reconciler = component
            .component_type()
            .exports(&self.engine)
            .any(|(name, _)| name == RECONCILER_EXPORT);
        if !exports_reconciler {
            return Err(link_error(format!(
                "it does not export `{RECONCILER_EXPORT}`: build it for the `setpoint:policy/plugin` world"
            )));
        }
        if let Some((name, _)) = component
            .component_type()
            .imports(&self.engine)
            .find(|(name, _)| self.capability(name).is_some())
        {
            return Err(link_error(format!(
                "it imports the device capability `{name}`; policy plugins are granted no capabilities"
            )));
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| link_error(error_text(&e)))?;
        let pre = wit::PluginPre::new(pre).map_err(|e| link_error(error_text(&e)))?;
        let prepared = Arc::new(PreparedPlugin { digest, pre });
        self.lock_plugins().insert(digest, prepared.clone());
        Ok(prepared)
    }
}

/// Limits of one plugin call.
#[derive(Debug, Clone, Copy)]
pub struct PluginLimits {
    /// Linear memory cap.
    pub memory: u64,
    /// CPU a call may use before it is interrupted.
    pub cpu_per_call: Duration,
    /// Wall-clock bound of a call (covers time blocked in host calls too).
    pub wall_per_call: Duration,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory: 32 * 1024 * 1024,
            cpu_per_call: Duration::from_millis(20),
            wall_per_call: Duration::from_millis(100),
        }
    }
}

/// A live plugin instance for one workload. Re-instantiated after any failure.
pub struct PluginInstance {
    runtime: Arc<Runtime>,
    plugin: Arc<PreparedPlugin>,
    limits: PluginLimits,
    label: Arc<str>,
    log_sink: Option<broadcast::Sender<LogLine>>,
    live: Option<(Store<InstanceState>, wit::Plugin)>,
}

impl PluginInstance {
    /// A plugin instance for `label` (shown as the instance in log lines); instantiated lazily.
    pub fn new(
        runtime: Arc<Runtime>,
        plugin: Arc<PreparedPlugin>,
        limits: PluginLimits,
        label: Arc<str>,
        log_sink: Option<broadcast::Sender<LogLine>>,
    ) -> Self {
        Self {
            runtime,
            plugin,
            limits,
            label,
            log_sink,
            live: None,
        }
    }

    /// Asks the plugin to decide on `snapshot`.
    pub async fn decide(
        &mut self,
        snapshot: &Snapshot,
    ) -> Result<Vec<ActionRecord>, PluginFailure> {
        let result = self.call(snapshot).await;
        if result.is_err() {
            // A failed call may leave the instance mid-way: never call into it again.
            self.live = None;
        }
        result
    }

    async fn call(&mut self, snapshot: &Snapshot) -> Result<Vec<ActionRecord>, PluginFailure> {
        if self.live.is_none() {
            let capture = OutputCapture::new(
                "policy".into(),
                self.label.clone(),
                self.runtime.config.output,
                self.log_sink.clone(),
            );
            let mut store = build_plugin_store(&self.runtime, &capture, self.limits.memory);
            let instance = self
                .plugin
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| PluginFailure::Instantiate(error_text(&e)))?;
            self.live = Some((store, instance));
        }
        let Some((store, instance)) = self.live.as_mut() else {
            unreachable!("instantiated above")
        };
        store.data_mut().reset_cpu(Some(CpuBudget {
            time: self.limits.cpu_per_call,
            per: None,
        }));
        let (desired, observed) = to_wit(snapshot);
        let call = instance.setpoint_policy_reconciler().call_reconcile(
            &mut *store,
            &desired,
            &observed,
            snapshot.now_unix_ms,
        );
        match tokio::time::timeout(self.limits.wall_per_call, call).await {
            Err(_) => Err(PluginFailure::Timeout(self.limits.wall_per_call)),
            Ok(Err(e)) => Err(PluginFailure::Trapped(EndReason::from_guest_error(&e))),
            Ok(Ok(actions)) => Ok(actions.into_iter().map(from_wit).collect()),
        }
    }
}

fn to_wit(s: &Snapshot) -> (t::Desired, t::Observed) {
    let d = &s.desired;
    let desired = t::Desired {
        workload: d.workload.clone(),
        revision: d.revision.clone(),
        replicas: d.replicas,
        restart_policy: match d.restart_policy {
            crate::manifest::RestartPolicy::Always => t::RestartPolicy::Always,
            crate::manifest::RestartPolicy::OnFailure => t::RestartPolicy::OnFailure,
            crate::manifest::RestartPolicy::Never => t::RestartPolicy::Never,
        },
        backoff: t::Backoff {
            initial_ms: d.backoff.initial_ms,
            max_ms: d.backoff.max_ms,
            reset_after_ms: d.backoff.reset_after_ms,
        },
        restart_budget: d.restart_budget.map(|b| t::RestartBudget {
            max_restarts: b.max_restarts,
            window_ms: b.window_ms,
        }),
        config: d.config.to_string(),
        strategy: t::Strategy {
            recreate: d.strategy.recreate,
            max_surge: d.strategy.max_surge,
            max_unavailable: d.strategy.max_unavailable,
            progress_deadline_ms: d.strategy.progress_deadline_ms,
            auto_rollback: d.strategy.auto_rollback,
            min_ready_ms: d.strategy.min_ready_ms,
        },
    };
    let instance = |i: &crate::policy::snapshot::InstanceSnapshot| t::Instance {
        id: i.id.clone(),
        revision: i.revision.clone(),
        age_ms: i.age_ms,
        ready: i.ready,
        stopping: i.stopping,
    };
    let slots = s
        .observed
        .slots
        .iter()
        .map(|slot| t::Slot {
            index: slot.index,
            instance: slot.instance.as_ref().map(instance),
            successor: slot.successor.as_ref().map(instance),
            restarts: slot.restarts,
            consecutive_ends: slot.consecutive_ends,
            last_end: slot.last_end.as_ref().map(|e| t::End {
                reason: e.reason.clone(),
                exit_code: e.exit_code,
                success: e.success(),
                host_stop: e.host_stop(),
                deterministic: e.deterministic(),
                ago_ms: e.ago_ms,
            }),
        })
        .collect();
    let observed = t::Observed {
        slots,
        recent_restarts_ago_ms: s.observed.recent_restarts_ago_ms.clone(),
        failed: s.observed.failed,
        rollout: s.observed.rollout.map(|r| t::Rollout {
            started_ago_ms: r.started_ago_ms,
            rolled_back: r.rolled_back,
        }),
    };
    (desired, observed)
}

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
