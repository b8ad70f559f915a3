//! [`HostBuilder`]: every setting of a [`Host`], with a sane default, and the start of
//! its controller under a supervisor.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use super::Host;
use crate::controller::{Controller, ControllerConfig};
use crate::manifest::ManifestLimits;
use crate::policy::{Policy, ReplicaPolicy};
use crate::runtime::capability::Capability;
use crate::runtime::{OutputLimits, Runtime, RuntimeConfig};

/// Builds a [`Host`]. Every setting has a sane default.
///
/// ```no_run
/// # fn demo() -> anyhow::Result<()> {
/// use std::time::Duration;
/// let host = setpoint::Host::builder()
///     .default_memory_limit(16 * 1024 * 1024) // instances whose spec sets none
///     .max_instances(5_000)
///     .allowed_dir_roots(vec!["/var/lib/device".into()])?
///     .allow_network_grants(false)
///     .cache_dir("/var/cache/setpoint")
///     .resync_interval(Duration::from_secs(30))
///     .build()?; // inside a tokio runtime
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct HostBuilder {
    runtime: RuntimeConfig,
    controller: ControllerConfig,
    manifests: ManifestLimits,
    ledger: Option<Ledger>,
    http: crate::FrontConfig,
}

/// The embedder's job ledger (a newtype so the builder can stay `Debug`).
#[derive(Clone)]
struct Ledger(Arc<dyn crate::job::JobLedger>);

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobLedger")
    }
}

impl HostBuilder {
    /// How often running guests yield (default 1 ms).
    pub fn epoch_tick(mut self, tick: Duration) -> Self {
        self.runtime.epoch_tick = tick;
        self
    }

    /// Memory cap of instances whose spec sets none (default 64 MiB).
    pub fn default_memory_limit(mut self, bytes: u64) -> Self {
        self.runtime.default_memory_limit = bytes;
        self
    }

    /// Limits of the listeners of HTTP workloads (connections, header-read timeout,
    /// head size); see [`crate::FrontConfig`] for the defaults.
    pub fn http_limits(mut self, limits: crate::FrontConfig) -> Self {
        self.http = limits;
        self
    }

    /// Wasm stack per instance (default 512 KiB); deeper recursion traps `StackOverflow`.
    pub fn max_wasm_stack(mut self, bytes: usize) -> Self {
        self.runtime.max_wasm_stack = bytes;
        self
    }

    /// Cap on table elements per instance (default 100,000).
    pub fn table_elements_limit(mut self, elements: u64) -> Self {
        self.runtime.table_elements_limit = elements;
        self
    }

    /// Only directories under these roots may be granted to workloads (default: any).
    pub fn allowed_dir_roots(mut self, roots: Vec<PathBuf>) -> anyhow::Result<Self> {
        let mut canonical = Vec::with_capacity(roots.len());
        for root in roots {
            canonical.push(
                std::fs::canonicalize(&root)
                    .map_err(|e| anyhow::anyhow!("dir root `{}`: {e}", root.display()))?,
            );
        }
        self.manifests.dir_roots = canonical;
        Ok(self)
    }

    /// Whether workloads may be granted outbound connections at all (default true).
    pub fn allow_network_grants(mut self, allow: bool) -> Self {
        self.manifests.allow_network = allow;
        self
    }

    /// Caches compiled components in `dir`, so a restart does not recompile.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.runtime.cache_dir = Some(dir.into());
        self
    }

    /// Bounds on captured guest output.
    pub fn output_limits(mut self, limits: OutputLimits) -> Self {
        self.runtime.output = limits;
        self
    }

    /// Most live instances on the host (default 100,000).
    pub fn max_instances(mut self, n: usize) -> Self {
        self.controller.max_instances = n;
        self
    }

    /// Spares per workload whose spec sets no `spares` (default 1): instances
    /// instantiated ahead of need, so that replacing one that ended is a wake-up, not an
    /// instantiation. Each costs an idle instance's memory. 0 turns them off.
    pub fn spares(mut self, n: u32) -> Self {
        self.controller.default_spares = n.min(crate::manifest::MAX_SPARES);
        self
    }

    /// Whether a failed instance's own task may start its workload's spare in its place
    /// (default yes): the replacement then runs before the controller has heard of the
    /// end, which checks it afterwards against the policy (see
    /// [`crate::runtime::reflex`]). Off, every replacement waits for a pass.
    pub fn direct_replacement(mut self, on: bool) -> Self {
        self.controller.direct_replacement = on;
        self
    }

    /// Safety-net resync period (default 10 s). Reconciling is event-driven regardless.
    pub fn resync_interval(mut self, every: Duration) -> Self {
        self.controller.resync_interval = every;
        self
    }

    /// Events kept per workload (default 32).
    pub fn event_history(mut self, n: usize) -> Self {
        self.controller.event_history = n;
        self
    }

    /// Bounds on each policy plugin: memory, CPU and wall-clock time per call.
    pub fn plugin_limits(mut self, limits: crate::runtime::plugin::PluginLimits) -> Self {
        self.controller.plugin_limits = limits;
        self
    }

    /// Adds a device capability: a WIT interface implemented in Rust that workloads
    /// granted it (`spec.capabilities`) may import. See [`Capability`].
    pub fn capability(mut self, capability: Capability) -> Self {
        self.runtime.capabilities.push(capability);
        self
    }

    /// Whether precompiled `.cwasm` components (from `setpoint compile`) may be loaded.
    /// Loading one runs the native code inside it: allow it only for artifacts you
    /// built. Default: false, except in builds without a compiler.
    pub fn allow_precompiled(mut self, allow: bool) -> Self {
        self.runtime.allow_precompiled = allow;
        self
    }

    /// Runs guests on wasmtime's Pulley interpreter instead of native code: slower, but
    /// portable to targets without a native compiler backend. Precompiled components must
    /// then be compiled with `setpoint compile --target pulley64`.
    pub fn interpreter(mut self, on: bool) -> Self {
        self.runtime.interpreter = on;
        self
    }

    /// Compact linear memories (default off): no 4 GiB virtual reservation or guard per
    /// instance, so a host can hold ~100,000 idle instances; guest memory accesses are
    /// then bounds-checked in code (slower). Precompiled artifacts must be compiled with
    /// the same setting (`setpoint compile --compact-memory`).
    pub fn compact_memory(mut self, on: bool) -> Self {
        self.runtime.compact_memory = on;
        self
    }

    /// Set glibc's malloc for many instances and give its memory back after many
    /// instances end (default on; Linux with glibc only). Process-wide: an embedder with
    /// allocator settings of its own turns it off. See [`crate::runtime::malloc`].
    pub fn tune_malloc(mut self, on: bool) -> Self {
        self.runtime.tune_malloc = on;
        self
    }

    /// Keep fiber stacks' guard pages with the kernel's guard markers where it has them
    /// (default on; Linux 6.13 on): no `mprotect` per instance. Off: the protection
    /// changes older kernels get. See [`crate::runtime::stacks`].
    pub fn stack_guard_markers(mut self, on: bool) -> Self {
        self.runtime.stack_guard_markers = on;
        self
    }

    /// Runs components that use the component model's async ABI (jco's QuickJS backend
    /// makes them), as workloads and plugins. Off by default: it turns on wasmtime's
    /// concurrency support, which slows every call into every guest. Building the host
    /// fails when the build lacks the `component-model-async` feature. Precompiled
    /// artifacts must be compiled with the same setting.
    pub fn component_model_async(mut self, on: bool) -> Self {
        self.runtime.component_model_async = on;
        self
    }

    /// Reserves `slots` instance slots up front (wasmtime's pooling allocator): spawn and
    /// teardown become slot reuse, the fastest recovery. The host then holds at most
    /// `slots` instances, and no instance's memory may exceed the default memory limit
    /// (a manifest asking for more is rejected). 0 (the default) allocates on demand.
    pub fn instance_pool(mut self, slots: u32) -> Self {
        self.runtime.instance_pool = slots;
        self
    }

    /// Where Jobs' progress is kept across host restarts, so that a completion counts once
    /// and a finished job never runs again (default: in memory only).
    pub fn job_ledger(mut self, ledger: Arc<dyn crate::job::JobLedger>) -> Self {
        self.ledger = Some(Ledger(ledger));
        self
    }

    /// The manifest bounds this builder will give the host (dir roots and network
    /// grants included), for an embedder that loads manifests itself.
    pub fn manifest_limits_in_effect(&self) -> &ManifestLimits {
        &self.manifests
    }

    /// Bounds on manifest input.
    pub fn manifest_limits(mut self, limits: ManifestLimits) -> Self {
        self.manifests = limits;
        self
    }

    /// Starts the host on the current tokio runtime (multi-threaded recommended). Fails
    /// when called outside a tokio runtime.
    pub fn build(self) -> anyhow::Result<Host> {
        self.build_with_policy(Arc::new(ReplicaPolicy))
    }

    /// Starts the host with a policy other than the built-in replica policy.
    pub fn build_with_policy(mut self, policy: Arc<dyn Policy>) -> anyhow::Result<Host> {
        if self.runtime.instance_pool > 0 {
            let slots = self.runtime.instance_pool as usize;
            self.controller.max_instances = self.controller.max_instances.min(slots);
            self.controller.spare_slots = Some(crate::runtime::POOL_SPARE_SLOTS as usize);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            anyhow::bail!(
                "setpoint::Host must be built inside a tokio runtime (e.g. under #[tokio::main])"
            );
        }
        let runtime = Arc::new(Runtime::new(self.runtime)?);
        let (events, _) = broadcast::channel(1024);
        let (logs, _) = broadcast::channel(4096);
        let (commands, commands_rx) = mpsc::channel(64);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let (access_logs, _) = broadcast::channel(4096);
        let front = Arc::new(crate::front::Front::new(
            self.http,
            metrics.clone(),
            access_logs.clone(),
        ));
        let controller = Controller::new(
            runtime.clone(),
            policy,
            self.controller,
            crate::controller::Outlets {
                host_events: events.clone(),
                logs: logs.clone(),
                metrics: metrics.clone(),
                front: front.clone(),
            },
            self.ledger.map(|l| l.0),
        );
        // The controller's death must never leave a host serving nothing: a supervisor
        // records why it died, and every call after that says so.
        let (death_tx, death) = tokio::sync::watch::channel(None);
        let controller = tokio::spawn(controller.run(commands_rx));
        let task = tokio::spawn(async move {
            if let Err(e) = controller.await {
                let why: Arc<str> = Arc::from(panic_message(e));
                tracing::error!("the host's controller died: {why}");
                let _ = death_tx.send(Some(why));
            }
        });
        Ok(Host {
            runtime,
            commands,
            events,
            logs,
            access_logs,
            task,
            death,
            manifest_limits: self.manifests,
            metrics,
            front,
        })
    }
}

/// The message a panicked task left, in words.
fn panic_message(e: tokio::task::JoinError) -> String {
    if e.is_cancelled() {
        return "it was cancelled".into();
    }
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".into()
    }
}
