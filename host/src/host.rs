//! The embeddable host: a handle to a running controller and runtime. The CLI is built on
//! exactly this API, so anything `setpoint run` does, an embedding process can do too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::controller::{Command, Controller, ControllerConfig, PreparedWorkload};
use crate::manifest::unversioned;
use crate::manifest::{
    Diagnostic, ManifestLimits, Rejected, Workload, check_workloads, load_files,
};
use crate::policy::{Policy, ReplicaPolicy};
use crate::runtime::capability::Capability;
use crate::runtime::{ComponentStyle, LogLine, OutputLimits, Runtime, RuntimeConfig};
use crate::status::{Event, HostStatus};

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
        let controller = Controller::new(
            runtime.clone(),
            policy,
            self.controller,
            events.clone(),
            logs.clone(),
            self.ledger.map(|l| l.0),
            metrics.clone(),
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
            task,
            death,
            manifest_limits: self.manifests,
            metrics,
        })
    }
}

/// One workload's change in a [`Host::plan`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedChange {
    /// The workload or job.
    pub name: String,
    /// `Workload` or `Job`.
    pub kind: String,
    /// The revision it would run.
    pub revision: String,
    /// The replicas it would have.
    pub replicas: u32,
    /// What would change.
    pub change: Change,
}

/// What applying would do to one workload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Change {
    /// It is new.
    Create,
    /// A new revision replaces `from_revision` (a rolling update).
    #[serde(rename_all = "camelCase")]
    Update {
        /// The revision running now.
        from_revision: String,
    },
    /// Only the replica count changes.
    #[serde(rename_all = "camelCase")]
    Scale {
        /// The replica count now.
        from_replicas: u32,
    },
    /// Nothing changes.
    Unchanged,
}

/// A running setpoint host: apply workloads, watch them, shut it down.
///
/// It lives on the tokio runtime it was built in: the controller is one task, each
/// instance another. Dropping a `Host` without [`Host::shutdown`] aborts nothing
/// gracefully, so call `shutdown` when the embedding process stops.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// let host = setpoint::Host::builder().build()?;
/// let mut events = host.events();
/// host.apply_yaml(
///     "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata: {name: app}\nspec: {component: app.wasm, replicas: 2}\n",
///     "/opt/app/inline.yaml", // names the text in errors; `app.wasm` resolves next to it
/// )
/// .await?;
/// while let Ok(event) = events.recv().await {
///     println!("{}: {} {}", event.workload, event.reason, event.message);
/// #   break;
/// }
/// let last = host.shutdown().await;
/// # let _ = last;
/// # Ok(()) }
/// ```
pub struct Host {
    runtime: Arc<Runtime>,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    logs: broadcast::Sender<LogLine>,
    task: tokio::task::JoinHandle<()>,
    /// Why the controller died, once it has.
    death: tokio::sync::watch::Receiver<Option<Arc<str>>>,
    manifest_limits: ManifestLimits,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Host {
    /// A builder with default settings.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// Reads, validates and applies manifest files, all or nothing.
    pub async fn apply_files(&self, paths: &[PathBuf]) -> Result<Vec<String>, Rejected> {
        let workloads = load_files(paths, &self.manifest_limits)?;
        self.apply(workloads).await
    }

    /// Validates and applies manifests given as YAML text, all or nothing. `source` names
    /// the text in errors, and relative component paths resolve against its directory.
    pub async fn apply_yaml(
        &self,
        yaml: &str,
        source: impl AsRef<std::path::Path>,
    ) -> Result<Vec<String>, Rejected> {
        let workloads = crate::manifest::load_str(source.as_ref(), yaml, &self.manifest_limits)?;
        self.apply(workloads).await
    }

    /// Applies workloads, all or nothing: every component is compiled and checked first,
    /// and if any workload is rejected nothing changes. Returns the applied names.
    pub async fn apply(&self, workloads: Vec<Workload>) -> Result<Vec<String>, Rejected> {
        let prepared = self.prepare(workloads).await?;
        let names = prepared.iter().map(|p| p.name.clone()).collect();
        let (reply, done) = oneshot::channel();
        self.send(Command::Apply(prepared, reply)).await?;
        match done.await {
            Ok(result) => result?,
            Err(_) => return Err(self.gone().await),
        }
        Ok(names)
    }

    /// What [`Host::apply`] would change, checked exactly as `apply` checks (parsed,
    /// validated, compiled, linked), changing nothing.
    pub async fn plan(&self, workloads: Vec<Workload>) -> Result<Vec<PlannedChange>, Rejected> {
        let prepared = self.prepare(workloads).await?;
        let status = self.status().await;
        let diagnostics: Vec<Diagnostic> = prepared
            .iter()
            .filter_map(|p| {
                let current = status
                    .workload(&p.name)
                    .map(|w| (w.kind == "Job", w.revision.as_str()));
                crate::admission::apply_conflict(
                    &p.name,
                    current,
                    p.spec.job.is_some(),
                    &p.revision,
                )
                .map(|(message, help)| Diagnostic::at(p.origin.clone(), message).with_help(help))
            })
            .collect();
        if !diagnostics.is_empty() {
            return Err(Rejected { diagnostics });
        }
        Ok(prepared
            .iter()
            .map(|p| {
                let current = status.workload(&p.name);
                let change = match current {
                    None => Change::Create,
                    Some(w) if w.revision != p.revision => Change::Update {
                        from_revision: w.revision.clone(),
                    },
                    Some(w) if w.desired != p.spec.replicas => Change::Scale {
                        from_replicas: w.desired,
                    },
                    Some(_) => Change::Unchanged,
                };
                PlannedChange {
                    kind: if p.spec.job.is_some() {
                        "Job"
                    } else {
                        "Workload"
                    }
                    .to_string(),
                    name: p.name.clone(),
                    revision: p.revision.clone(),
                    replicas: p.spec.replicas,
                    change,
                }
            })
            .collect())
    }

    /// Checks, compiles and links workloads, all or nothing.
    async fn prepare(&self, workloads: Vec<Workload>) -> Result<Vec<PreparedWorkload>, Rejected> {
        let diagnostics = check_workloads(&workloads, &self.manifest_limits);
        if !diagnostics.is_empty() {
            return Err(Rejected { diagnostics });
        }
        // Only a batch that grants directories needs what the others grant (and a
        // status round trip is not free on a large host).
        let status = if workloads.iter().any(|w| !w.spec.dirs.is_empty()) {
            self.status().await
        } else {
            HostStatus::default()
        };
        let existing: Vec<crate::admission::GrantRef<'_>> = status
            .workloads
            .iter()
            .filter(|s| !workloads.iter().any(|w| w.name == s.name))
            .flat_map(|s| {
                s.spec.dirs.iter().map(|grant| crate::admission::GrantRef {
                    workload: &s.name,
                    grant,
                    origin: None,
                })
            })
            .collect();
        crate::admission::check_nesting(&crate::admission::grant_refs(&workloads), &existing)?;
        let runtime = self.runtime.clone();
        // A thread of its own (not tokio's blocking pool, which panics when the OS
        // refuses a thread, as it does when the process is out of memory mappings).
        let (done, prepared) = oneshot::channel();
        std::thread::Builder::new()
            .name("setpoint-prepare".into())
            .spawn(move || {
                let _ = done.send(prepare_all(&runtime, workloads));
            })
            .map_err(|e| {
                Rejected::one(Diagnostic::at(
                    None,
                    format!("cannot start a thread to compile components: {e}"),
                ))
            })?;
        prepared.await.map_err(|_| {
            Rejected::one(Diagnostic::at(
                None,
                "component preparation panicked".to_string(),
            ))
        })?
    }

    /// Removes a workload: its instances are stopped gracefully. False if unknown.
    pub async fn delete(&self, name: &str) -> Result<bool, Rejected> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Delete(name.to_string(), reply)).await?;
        match done.await {
            Ok(found) => Ok(found),
            Err(_) => Err(self.gone().await),
        }
    }

    /// A snapshot of every workload's status.
    pub async fn status(&self) -> HostStatus {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Status(reply)).await.is_err() {
            return HostStatus::default();
        }
        done.await.unwrap_or_default()
    }

    /// Waits until the controller has handled everything sent before this call; an
    /// error if it died or shut down meanwhile (then [`Host::failure`] says why).
    pub async fn ping(&self) -> Result<(), Rejected> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Counts(reply)).await?;
        match done.await {
            Ok(_) => Ok(()),
            Err(_) => Err(self.gone().await),
        }
    }

    /// Each workload's instance counts: a cheap status (no per-instance data) to poll.
    pub async fn counts(&self) -> Vec<crate::status::WorkloadCounts> {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Counts(reply)).await.is_err() {
            return Vec::new();
        }
        done.await.unwrap_or_default()
    }

    /// The host's metrics in the Prometheus (OpenMetrics) text format: reconcile, policy
    /// call and spawn latency histograms, and per-workload instance counts, desired
    /// replicas, restarts and failure.
    pub async fn metrics(&self) -> String {
        let counts = self.counts().await;
        self.metrics.encode(&counts)
    }

    /// Waits until `condition` holds for the host's status (checked on every event, and
    /// at least every 50 ms), and returns that status; `None` if `timeout` passes first
    /// or the host shuts down.
    ///
    /// ```no_run
    /// # async fn demo(host: &setpoint::Host) {
    /// use std::time::Duration;
    /// let all_ready = |s: &setpoint::HostStatus| s.workload("ticker").is_some_and(|w| w.ready == 3);
    /// if host.wait_for(Duration::from_secs(5), all_ready).await.is_none() {
    ///     eprintln!("ticker is not ready after 5 s");
    /// }
    /// # }
    /// ```
    pub async fn wait_for(
        &self,
        timeout: Duration,
        condition: impl Fn(&HostStatus) -> bool,
    ) -> Option<HostStatus> {
        let mut events = self.events();
        let deadline = crate::clock::after_tokio(tokio::time::Instant::now(), timeout);
        loop {
            if self.task.is_finished() {
                return None;
            }
            let status = self.status().await;
            if condition(&status) {
                return Some(status);
            }
            let next_check =
                (tokio::time::Instant::now() + Duration::from_millis(50)).min(deadline);
            if tokio::time::timeout_at(next_check, events.recv())
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return None;
            }
        }
    }

    /// The snapshot the workload's policy was last given (for a plugin), or would be given
    /// now (built-in): replay it offline with `setpoint policy test`.
    pub async fn policy_snapshot(&self, name: &str) -> Option<crate::policy::snapshot::Snapshot> {
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Snapshot(name.to_string(), reply))
            .await
            .ok()?;
        done.await.ok().flatten()
    }

    /// How many instance Stores exist right now. After `shutdown` and after every
    /// workload is deleted it is 0: nothing is leaked.
    pub fn live_stores(&self) -> usize {
        self.runtime.live_stores()
    }

    /// Subscribes to events from now on. A slow subscriber skips events, never blocks the host.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Subscribes to guest output lines from now on (rate-limited per instance).
    pub fn logs(&self) -> broadcast::Receiver<LogLine> {
        self.logs.subscribe()
    }

    /// Stops every instance (gracefully within its grace period, then forcibly), stops
    /// the controller, and returns the final status.
    pub async fn shutdown(self) -> HostStatus {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).await.is_err() {
            return HostStatus::default();
        }
        let status = done.await.unwrap_or_default();
        let _ = self.task.await;
        status
    }

    async fn send(&self, command: Command) -> Result<(), Rejected> {
        match self.commands.send(command).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.gone().await),
        }
    }

    /// Why the controller died, if it has (a bug: it is never meant to).
    pub fn failure(&self) -> Option<String> {
        self.death.borrow().as_deref().map(str::to_string)
    }

    /// Waits until the controller dies, and says why; pending forever while it lives
    /// (a normal shutdown included). An embedder selects on this to stop loudly
    /// instead of serving a dead host.
    pub async fn died(&self) -> String {
        let mut death = self.death.clone();
        match death.wait_for(Option::is_some).await {
            Ok(why) => why.as_deref().unwrap_or_default().to_string(),
            Err(_) => std::future::pending().await,
        }
    }

    /// The error of a call the controller did not answer: it died (why, once the
    /// supervisor has recorded it, which takes a moment) or it shut down.
    async fn gone(&self) -> Rejected {
        let deadline =
            crate::clock::after_tokio(tokio::time::Instant::now(), Duration::from_secs(1));
        while self.failure().is_none()
            && !self.task.is_finished()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Rejected::one(Diagnostic::at(
            None,
            match self.failure() {
                Some(why) => format!("the host's controller died: {why}"),
                None => "the host has shut down".to_string(),
            },
        ))
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

/// Compiles and checks every workload's component; all diagnostics or all workloads.
fn prepare_all(
    runtime: &Runtime,
    workloads: Vec<Workload>,
) -> Result<Vec<PreparedWorkload>, Rejected> {
    let mut prepared = Vec::with_capacity(workloads.len());
    let mut diagnostics = Vec::new();
    for w in workloads {
        let grants = match crate::admission::open_grants(&w) {
            Ok(grants) => grants,
            Err(problems) => {
                diagnostics.extend(problems);
                continue;
            }
        };
        let unknown = unknown_grants(runtime, &w);
        if !unknown.is_empty() {
            diagnostics.extend(unknown);
            continue;
        }
        if let Some(problem) = exceeds_pool_slot(runtime, &w) {
            diagnostics.push(problem);
            continue;
        }
        match runtime.prepare(&w.spec.component) {
            Ok(component) => {
                if let Some(problem) = style_mismatch(&w, component.style, component.uses_heartbeat)
                {
                    diagnostics
                        .push(Diagnostic::at(w.origin.clone(), problem.0).with_help(problem.1));
                    continue;
                }
                let ungranted = ungranted_imports(&w, &component.capability_imports);
                if !ungranted.is_empty() {
                    diagnostics.extend(ungranted);
                    continue;
                }
                let plugin = match &w.spec.policy {
                    None => None,
                    Some(policy) => match runtime.prepare_plugin(&policy.plugin) {
                        Ok(plugin) => Some(plugin),
                        Err(e) => {
                            diagnostics.push(
                                Diagnostic::at(w.policy_origin.clone(), e.to_string())
                                    .with_help("build the plugin for the `setpoint:policy/plugin` world (wit/policy/policy.wit)"),
                            );
                            continue;
                        }
                    },
                };
                let plugin_digest = plugin.as_ref().map(|p| p.digest.0);
                let revision = revision(&w, &component.digest.0, plugin_digest.as_ref(), &grants);
                prepared.push(PreparedWorkload {
                    origin: w.origin.clone(),
                    name: w.name,
                    labels: w.labels,
                    spec: Arc::new(w.spec),
                    component,
                    grants,
                    plugin,
                    revision,
                });
            }
            Err(e) => {
                use crate::runtime::PrepareError as E;
                let help = match &e {
                    E::Link { .. } => {
                        "setpoint does not retry a component that cannot be linked; rebuild it against what the host provides"
                    }
                    E::PrecompiledRefused { .. } => {
                        "if you built this artifact with `setpoint compile`, allow precompiled components; otherwise point spec.component at the `.wasm`"
                    }
                    E::Incompatible { .. } => {
                        "artifacts are tied to the setpoint build, target and engine settings that made them; keep the `.wasm` and recompile"
                    }
                    E::NoCompiler { .. } => "ship the `.cwasm` made by `setpoint compile` instead",
                    _ => "point spec.component at a component built for wasm32-wasip2",
                };
                diagnostics.push(Diagnostic::at(w.origin.clone(), e.to_string()).with_help(help));
            }
        }
    }
    if diagnostics.is_empty() {
        Ok(prepared)
    } else {
        Err(Rejected { diagnostics })
    }
}

/// With an instance pool, a memory limit cannot exceed the pool's slot size.
fn exceeds_pool_slot(runtime: &Runtime, w: &Workload) -> Option<Diagnostic> {
    let config = runtime.config();
    let limit = w.spec.memory_limit?;
    if config.instance_pool == 0 || limit <= config.default_memory_limit {
        return None;
    }
    Some(
        Diagnostic::at(
            w.origin.clone(),
            format!(
                "resources.memory {} exceeds this host's instance pool slot of {}",
                bytesize::ByteSize(limit),
                bytesize::ByteSize(config.default_memory_limit)
            ),
        )
        .with_help("lower resources.memory, or start the host with a larger default memory limit or without an instance pool"),
    )
}

/// Every capability grant must name a capability this host provides.
fn unknown_grants(runtime: &Runtime, w: &Workload) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for grant in &w.spec.capabilities {
        if runtime.capability(grant).is_none() {
            let provided: Vec<&str> = runtime
                .config()
                .capabilities
                .iter()
                .map(|c| c.grant_name())
                .collect();
            let origin = w.capability_origins.get(grant).or(w.origin.as_ref());
            out.push(
                Diagnostic::at(
                    origin.cloned(),
                    format!(
                        "workload `{}` is granted capability `{grant}`, which this host does not provide",
                        w.name
                    ),
                )
                .with_help(if provided.is_empty() {
                    "this host provides no device capabilities; remove the grant".to_string()
                } else {
                    format!("this host provides: {}", provided.join(", "))
                }),
            );
        }
    }
    out
}

/// Every capability the component imports must be granted to the workload.
fn ungranted_imports(w: &Workload, imports: &[String]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for import in imports {
        let name = unversioned(import);
        if !w.spec.capabilities.iter().any(|g| unversioned(g) == name) {
            out.push(
                Diagnostic::at(
                    w.origin.clone(),
                    format!(
                        "workload `{}`'s component imports the device capability `{import}`, which the workload is not granted",
                        w.name
                    ),
                )
                .with_help(format!(
                    "add `{name}` to spec.capabilities if this workload may use it"
                )),
            );
        }
    }
    out
}

/// A spec asking for something the component cannot do.
fn style_mismatch(
    w: &Workload,
    style: ComponentStyle,
    uses_heartbeat: bool,
) -> Option<(String, String)> {
    if w.spec.job.is_some() && style == ComponentStyle::Reactor {
        return Some((
            format!(
                "job `{}` runs a reactor component, which never ends on its own",
                w.name
            ),
            "a Job runs a command component (`wasi:cli/run`) to completion; use `kind: Workload` for a reactor".into(),
        ));
    }
    if w.spec.probe.is_some() && style != ComponentStyle::Reactor {
        return Some((
            format!(
                "workload `{}` sets health.probe, but its component is a command with no `lifecycle.health` export",
                w.name
            ),
            "remove health.probe, or build the component for the `setpoint:workload/reactor` world"
                .into(),
        ));
    }
    if w.spec.watchdog.is_some() && !(style == ComponentStyle::Command && uses_heartbeat) {
        return Some((
            format!("workload `{}` sets health.watchdog, but its component is not a command importing `setpoint:workload/heartbeat`", w.name),
            "remove health.watchdog, or build the component for the `setpoint:workload/watched-command` world".into(),
        ));
    }
    None
}

/// The revision: a digest of the spec (without `replicas`, which scales rather than
/// replaces), of the component's bytes, and of which directories the grants opened (a
/// directory replaced under the same path is a new revision, not the old handle kept).
fn revision(
    w: &Workload,
    component_digest: &[u8; 32],
    plugin_digest: Option<&[u8; 32]>,
    grants: &crate::runtime::Grants,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(crate::manifest::revision::projection(&w.spec));
    hasher.update(component_digest);
    if let Some(plugin) = plugin_digest {
        hasher.update(plugin);
    }
    for grant in grants.iter() {
        let id = grant.dir.identity();
        hasher.update(id.device.to_le_bytes());
        hasher.update(id.inode.to_le_bytes());
        hasher.update(id.born_ns.to_le_bytes());
    }
    let digest = hasher.finalize();
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}
