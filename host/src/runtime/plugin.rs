//! The plugin host: policy plugins are components of the `setpoint:policy/plugin` world,
//! compiled once per digest and run in their own Store with no grants at all (no env, no
//! files, no sockets; stderr is captured as the plugin's log), a memory cap, and a CPU and
//! wall-clock deadline per call. It speaks the WIT records only (what they mean to a
//! policy, and the conversion from snapshots, is [`crate::policy`]'s), and reports every
//! failure as a [`PluginFailure`]; deciding what to do about a failure is the policy
//! adapter's job.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use wasmtime::Store;
use wasmtime::component::{ComponentExportIndex, Func, TypedFunc};

use super::exit::{EndReason, error_text};
use super::output::{LogLine, OutputCapture};
use super::plugin_abi::{Desired, Observed};
use super::store_data::{InstanceState, build_plugin_store};
use super::{Digest, PrepareError, Runtime};
use crate::manifest::CpuBudget;

/// The `setpoint:policy/plugin` world's bindings.
pub mod wit {
    wasmtime::component::bindgen!({
        path: "../wit/policy",
        world: "plugin",
        exports: { default: async },
    });
}

pub use wit::setpoint::policy::types as t;

/// The export by which a plugin is recognised.
pub const RECONCILER_EXPORT: &str = "setpoint:policy/reconciler@0.2.0";

/// What changed since the contract's previous version, for the author of an older plugin.
const MIGRATION: &str = "since 0.1.0 an instance has `current` instead of `id` and `revision`, and an end's `reason` is the enum `end-reason`";

/// A compiled, linked policy plugin.
pub struct PreparedPlugin {
    /// Content digest of the `.wasm` bytes.
    pub digest: Digest,
    pre: wit::PluginPre<InstanceState>,
    reconcile: ComponentExportIndex,
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
        let link_error = |message: String| PrepareError::Link {
            path: path.to_path_buf(),
            message,
        };
        // Before compiling (a JavaScript or Python plugin is tens of megabytes): what it
        // imports and exports, by name.
        if let Some(surface) = super::imports::surface(&bytes) {
            if let Some(older) = surface
                .exports
                .iter()
                .find(|e| e.starts_with("setpoint:policy/reconciler@") && *e != RECONCILER_EXPORT)
            {
                return Err(link_error(format!(
                    "it exports `{older}`, but this host speaks `{RECONCILER_EXPORT}`: rebuild it against wit/policy ({MIGRATION})"
                )));
            }
            if !surface.exports.iter().any(|e| e == RECONCILER_EXPORT) {
                return Err(link_error(format!(
                    "it does not export `{RECONCILER_EXPORT}`: build it for the `setpoint:policy/plugin` world"
                )));
            }
            if let Some(name) = surface
                .imports
                .iter()
                .find(|name| !super::imports::provided_to_plugins(name))
            {
                return Err(link_error(format!(
                    "it imports `{name}`, which a policy plugin is not given: plugins get WASI 0.2 and their own types, nothing else"
                )));
            }
        }
        let component = super::engine::load_component(&self.engine, &self.config, path, &bytes)?;
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
        let reconcile = component
            .get_export_index(None, RECONCILER_EXPORT)
            .and_then(|interface| component.get_export_index(Some(&interface), "reconcile"))
            .ok_or_else(|| link_error(format!("`{RECONCILER_EXPORT}` has no `reconcile`")))?;
        let prepared = Arc::new(PreparedPlugin {
            digest,
            pre,
            reconcile,
        });
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
    /// Wall-clock bound of a call waiting in a host call. A call that computes does not
    /// yield to be timed out: `cpu_per_call` is what ends it.
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
    live: Option<(Store<InstanceState>, Func)>,
}

/// `reconcile`'s signature, with the slots already in the canonical ABI's layout.
type Reconcile<'a> = TypedFunc<(Desired<'a>, Observed<'a>, u64), (Vec<t::Action>,)>;

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

    /// Asks the plugin to decide on what it is shown, at `now_unix_ms`.
    pub async fn decide(
        &mut self,
        desired: Desired<'_>,
        observed: Observed<'_>,
        now_unix_ms: u64,
    ) -> Result<Vec<t::Action>, PluginFailure> {
        let result = self.call(desired, observed, now_unix_ms).await;
        if result.is_err() {
            // A failed call may leave the instance mid-way: never call into it again.
            self.live = None;
        }
        result
    }

    async fn call(
        &mut self,
        desired: Desired<'_>,
        observed: Observed<'_>,
        now_unix_ms: u64,
    ) -> Result<Vec<t::Action>, PluginFailure> {
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
                .instance_pre()
                .instantiate_async(&mut store)
                .await
                .map_err(|e| PluginFailure::Instantiate(error_text(&e)))?;
            let reconcile = instance
                .get_func(&mut store, self.plugin.reconcile)
                .ok_or_else(|| PluginFailure::Instantiate("no `reconcile` export".into()))?;
            // Checked once here; each call then names the same types with its own lifetimes.
            reconcile
                .typed::<(Desired<'_>, Observed<'_>, u64), (Vec<t::Action>,)>(&store)
                .map_err(|e| PluginFailure::Instantiate(error_text(&e)))?;
            self.live = Some((store, reconcile));
        }
        let Some((store, reconcile)) = self.live.as_mut() else {
            unreachable!("instantiated above")
        };
        // SAFETY: these are the types `typed` checked when the instance was made.
        let reconcile: Reconcile<'_> = unsafe { TypedFunc::new_unchecked(*reconcile) };
        store.data_mut().reset_cpu(Some(CpuBudget {
            time: self.limits.cpu_per_call,
            per: None,
        }));
        let call = async {
            let (actions,) = reconcile
                .call_async(&mut *store, (desired, observed, now_unix_ms))
                .await?;
            wasmtime::Result::Ok(actions)
        };
        match tokio::time::timeout(self.limits.wall_per_call, call).await {
            Err(_) => Err(PluginFailure::Timeout(self.limits.wall_per_call)),
            Ok(Err(e)) => Err(PluginFailure::Trapped(EndReason::from_guest_error(&e))),
            Ok(Ok(actions)) => Ok(actions),
        }
    }
}
