//! The runtime: one wasmtime `Engine` per host, components compiled once per content
//! digest (and cached on disk when a cache directory is set), an `InstancePre` per
//! component so a spawn is cheap, and one async task per instance.
//!
//! Architecture invariant: nothing outside `runtime` touches a `Store`. The controller
//! sees instances only through [`InstanceHandle`]s and [`InstanceEvent`]s.

mod bindings;
pub mod capability;
pub mod engine;
pub mod exit;
mod guest_exit;
#[cfg(feature = "http")]
pub mod http;
#[cfg(not(feature = "http"))]
#[path = "no_http.rs"]
pub mod http;
pub mod imports;
mod instance;
pub mod limits;
pub mod malloc;
pub mod mappings;
pub mod memories;
#[cfg(feature = "http")]
mod outgoing_http;
pub mod output;
mod pages;
pub mod plugin;
pub mod plugin_abi;
pub mod reflex;
pub mod stacks;
pub(crate) mod store_data;
mod vitals;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::sync::{broadcast, mpsc};
use wasmtime::Engine;
use wasmtime::component::{Linker, types::ComponentItem};

use crate::manifest::WorkloadSpec;
pub use exit::{EndReason, StopCause};
pub use instance::{InstanceEnd, InstanceEvent, InstanceEventKind, InstanceHandle, Spare};
pub use output::{LogLine, OutputLimits, OutputSummary};
pub use reflex::{Armed, Reflex, ReflexTicket, Replacement, Standby};
pub use stacks::StackStats;
use store_data::InstanceState;

/// Runtime settings; every field has a default.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// How often running guests are interrupted to yield (epoch tick). Bounds how long a
    /// spinning guest can hold a worker thread.
    pub epoch_tick: Duration,
    /// Memory cap of instances whose manifest sets none.
    pub default_memory_limit: u64,
    /// Cap on each table's elements per instance.
    pub table_elements_limit: u64,
    /// Wasm stack per instance, in bytes: deeper recursion traps with `StackOverflow`.
    pub max_wasm_stack: usize,
    /// Largest component file accepted, in bytes.
    pub max_component_bytes: u64,
    /// Deadline of a reactor's `start` call.
    pub start_timeout: Duration,
    /// Where compiled components are cached across restarts; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Bounds on captured output.
    pub output: OutputLimits,
    /// Whether precompiled `.cwasm` components may be loaded. Loading one runs the native
    /// code inside it, so it must come from a trusted `setpoint compile`. Default: true
    /// only in builds without a compiler, where precompiled is the only way to run.
    pub allow_precompiled: bool,
    /// Run guests on the Pulley interpreter instead of native code (slower; for targets
    /// without a native compiler backend). Needs the `pulley` or `all-arch` feature.
    pub interpreter: bool,
    /// Device capabilities the embedder provides (see [`capability::Capability`]).
    pub capabilities: Vec<capability::Capability>,
    /// Compact linear memories: no virtual reservation, no guard region, no
    /// copy-on-write image. Guest code then bounds-checks every access (slower) and a
    /// growing memory may move, but an idle instance costs a few pages instead of a 4 GiB
    /// reservation, which is what lets one process hold 100,000 instances. Default off.
    pub compact_memory: bool,
    /// Run components that use the component model's async ABI (in a build with the
    /// `component-model-async` feature). Off by default: it turns on wasmtime's
    /// concurrency support, which slows every call into every guest (the README's
    /// performance section has the figures). Precompiled artifacts must be compiled with
    /// the same setting.
    pub component_model_async: bool,
    /// Instance slots reserved up front (wasmtime's pooling allocator); 0, the default,
    /// maps and unmaps each instance's memory and stack on demand. A pool turns spawn
    /// and teardown into slot reuse (recovery p99 72–97 µs instead of 104–129 µs), at a
    /// price: the host holds at most this many instances (plus
    /// [`POOL_PLUGIN_SLOTS`] for policy plugins), and no memory grows beyond
    /// `default_memory_limit`, the slot size. Pools of 10,000 slots filled at the
    /// kernel's default `vm.max_map_count`, but one of 11,000 (with more core instances
    /// per slot) stopped at 7,205: keep pools to a few thousand slots.
    pub instance_pool: u32,
    /// Set glibc's malloc for many instances and give its memory back after many
    /// instances end (see [`malloc`]). Process-wide; default on. An embedder with
    /// allocator settings of its own turns it off.
    pub tune_malloc: bool,
    /// Keep fiber stacks' guard pages with the kernel's guard markers where it has them
    /// (Linux 6.13 on): a stack then never changes protection, and no `mprotect` is made
    /// per instance (see [`stacks`]). Default on; off gives the protection older kernels
    /// get, to compare or to test that path.
    pub stack_guard_markers: bool,
}

/// Pool slots kept for policy plugins beyond [`RuntimeConfig::instance_pool`].
pub const POOL_PLUGIN_SLOTS: u32 = 16;

/// Pool slots kept for spares beyond [`RuntimeConfig::instance_pool`]: a host with a
/// pool holds at most this many spares, so that they never take an instance's slot.
pub const POOL_SPARE_SLOTS: u32 = 64;

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            epoch_tick: Duration::from_millis(1),
            default_memory_limit: 64 * 1024 * 1024,
            table_elements_limit: 100_000,
            max_wasm_stack: 512 * 1024,
            max_component_bytes: 256 * 1024 * 1024,
            start_timeout: Duration::from_secs(10),
            cache_dir: None,
            output: OutputLimits::default(),
            allow_precompiled: !cfg!(feature = "cranelift"),
            interpreter: false,
            capabilities: Vec::new(),
            compact_memory: false,
            component_model_async: false,
            instance_pool: 0,
            tune_malloc: true,
            stack_guard_markers: true,
        }
    }
}

/// How a component is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ComponentStyle {
    /// A `wasi:cli/command`: `run` is its life.
    Command,
    /// Exports `setpoint:workload/lifecycle`: started, probed and stopped by the host.
    Reactor,
    /// Exports `wasi:http/incoming-handler@0.2`: serves requests (`spec.http`). It may
    /// export `wasi:cli/run` as well, and then runs as a command without `spec.http`.
    Http,
}

/// A SHA-256 content digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A compiled, linked component, ready to instantiate many times.
pub struct PreparedComponent {
    /// Content digest of the `.wasm` bytes.
    pub digest: Digest,
    /// Command or reactor.
    pub style: ComponentStyle,
    /// Whether it imports `setpoint:workload/heartbeat`.
    pub uses_heartbeat: bool,
    /// Whether it exports `wasi:cli/run` (a command, or an HTTP component that can
    /// also run as one).
    pub runs_as_command: bool,
    /// The embedder capabilities it imports (full interface names).
    pub capability_imports: Vec<String>,
    pre: Prepared,
}

enum Prepared {
    Command(wasmtime_wasi::p2::bindings::CommandPre<InstanceState>),
    Reactor(bindings::ReactorPre<InstanceState>),
    #[cfg(feature = "http")]
    Http {
        proxy: wasmtime_wasi_http::p2::bindings::ProxyPre<InstanceState>,
        command: Option<wasmtime_wasi::p2::bindings::CommandPre<InstanceState>>,
    },
}

impl PrepareError {
    /// What to do about a component that uses a feature this host does not enable.
    pub fn unsupported_help(&self) -> Option<String> {
        match self {
            Self::Unsupported { help, .. } => Some(help.clone()),
            _ => None,
        }
    }
}

/// Why a component could not be prepared. Deterministic: retrying will not help.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The file could not be read.
    #[error("cannot read component `{path}`: {source}")]
    Read {
        /// The component path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than the configured limit.
    #[error("component `{path}` is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The component path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A valid component that uses a WebAssembly or component-model feature this host's
    /// engine does not enable.
    #[error("`{path}` uses {feature}, which this host does not enable: {message}")]
    Unsupported {
        /// The component path.
        path: PathBuf,
        /// The feature, as the validator names it (`the component model threading feature`).
        feature: String,
        /// The validator's error.
        message: String,
        /// What to do about it.
        help: String,
    },
    /// Not a valid component, or it failed to compile.
    #[error("`{path}` is not a valid Wasm component: {message}")]
    Compile {
        /// The component path.
        path: PathBuf,
        /// The compiler's error.
        message: String,
    },
    /// A precompiled component, and this host does not allow them.
    #[error(
        "`{path}` is a precompiled component; loading one runs the native code inside it, so this host refuses it unless precompiled components are allowed (`--allow-precompiled`, `HostBuilder::allow_precompiled`)"
    )]
    PrecompiledRefused {
        /// The component path.
        path: PathBuf,
    },
    /// A precompiled component made by an incompatible engine (another version, target
    /// or settings).
    #[error(
        "`{path}` was precompiled for a different engine: {message}; recompile it with `setpoint compile` from this setpoint build, with the same settings"
    )]
    Incompatible {
        /// The component path.
        path: PathBuf,
        /// What differs.
        message: String,
    },
    /// A `.wasm` component, and this build has no compiler.
    #[error(
        "`{path}` is a `.wasm` component, but this setpoint was built without a compiler and runs precompiled components only; precompile it with `setpoint compile {path} -o FILE.cwasm` on a full build"
    )]
    NoCompiler {
        /// The component path.
        path: PathBuf,
    },
    /// It imports something this host does not provide, or exports neither style.
    #[error("`{path}` cannot run on this host: {message}")]
    Link {
        /// The component path.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
}

/// The engine, the linker and the compiled components of one host.
pub struct Runtime {
    engine: Engine,
    linker: Linker<InstanceState>,
    config: RuntimeConfig,
    components: Mutex<HashMap<Digest, Arc<PreparedComponent>>>,
    ticker: EpochTicker,
    live_stores: Arc<std::sync::atomic::AtomicUsize>,
    plugins: Mutex<HashMap<Digest, Arc<plugin::PreparedPlugin>>>,
    /// The counters of the engine's stack arena, where it has one.
    stacks: Option<stacks::StackWatcher>,
}

impl Runtime {
    /// Builds the engine and the linker (WASI p2 and setpoint's own interfaces) once.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        if config.tune_malloc {
            malloc::tune();
        }
        let mut wasm = engine::engine_config(&config, None)?;
        engine::enable_cache(&mut wasm, config.cache_dir.as_deref())?;
        let (stacks, sweeper) = match engine::stack_arena(&config) {
            Some(arena) => {
                let (watcher, sweeper) = (arena.watcher(), arena.sweeper());
                wasm.with_host_stack(Arc::new(arena));
                (Some(watcher), Some(sweeper))
            }
            None => (None, None),
        };
        if let Some(arena) = engine::memory_arena(&config) {
            wasm.with_host_memory(Arc::new(arena));
        }
        let engine = Engine::new(&wasm)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        guest_exit::add_to_linker(&mut linker)?;
        #[cfg(feature = "http")]
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        bindings::setpoint::workload::heartbeat::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |s| s,
        )?;
        let mut seen = std::collections::HashSet::new();
        for cap in &config.capabilities {
            if !crate::manifest::is_interface_name(cap.interface()) {
                anyhow::bail!(
                    "capability `{}` is not a WIT interface name (`namespace:package/interface@version`)",
                    cap.interface()
                );
            }
            if !seen.insert(cap.grant_name().to_string()) {
                anyhow::bail!("capability `{}` is provided twice", cap.grant_name());
            }
            cap.add_to_linker(&mut linker)?;
        }
        let live_stores = Arc::<std::sync::atomic::AtomicUsize>::default();
        let trimmer = config
            .tune_malloc
            .then(|| malloc::Trimmer::new(live_stores.clone()));
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick, sweeper, trimmer);
        Ok(Self {
            engine,
            linker,
            config,
            components: Mutex::new(HashMap::new()),
            ticker,
            live_stores,
            plugins: Mutex::new(HashMap::new()),
            stacks,
        })
    }

    /// The settings this runtime was built with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Reads, compiles and links a component, or returns the cached one with the same
    /// digest. Blocking (compilation takes milliseconds to seconds): call it off the
    /// async workers.
    pub fn prepare(&self, path: &Path) -> Result<Arc<PreparedComponent>, PrepareError> {
        let bytes = self.read_component(path)?;
        let digest = Digest(Sha256::digest(&bytes).into());
        if let Some(found) = self.lock_components().get(&digest) {
            return Ok(found.clone());
        }
        let link_error = |message: String| PrepareError::Link {
            path: path.to_path_buf(),
            message,
        };
        // Before compiling: an import no one provides is refused in milliseconds.
        if let Some(missing) = self.unprovided_import(&bytes) {
            return Err(link_error(format!(
                "it imports `{missing}`, which this host does not provide; {}",
                self.provides()
            )));
        }
        let component = engine::load_component(&self.engine, &self.config, path, &bytes)?;
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let uses_heartbeat = ty.imports(&self.engine).any(|(name, item)| {
            name == bindings::HEARTBEAT_IMPORT
                && matches!(item.ty, ComponentItem::ComponentInstance(_))
        });
        let capability_imports = ty
            .imports(&self.engine)
            .filter(|(name, _)| self.capability(name).is_some())
            .map(|(name, _)| name.to_string())
            .collect();
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| link_error(format!("{}; {}", exit::error_text(&e), self.provides())))?;
        let runs_as_command = exports.iter().any(|e| e.starts_with("wasi:cli/run@0.2"));
        let serves_http = exports
            .iter()
            .any(|e| e.starts_with("wasi:http/incoming-handler@0.2"));
        let command_pre = |pre| {
            wasmtime_wasi::p2::bindings::CommandPre::new(pre)
                .map_err(|e| link_error(exit::error_text(&e)))
        };
        let (style, pre) = if exports.iter().any(|e| e == bindings::LIFECYCLE_EXPORT) {
            let pre =
                bindings::ReactorPre::new(pre).map_err(|e| link_error(exit::error_text(&e)))?;
            (ComponentStyle::Reactor, Prepared::Reactor(pre))
        } else if serves_http {
            let pre = prepare_http(pre, runs_as_command).map_err(link_error)?;
            (ComponentStyle::Http, pre)
        } else if runs_as_command {
            (
                ComponentStyle::Command,
                Prepared::Command(command_pre(pre)?),
            )
        } else {
            return Err(link_error(format!(
                "it exports neither `wasi:cli/run@0.2.x` (a command), `wasi:http/incoming-handler@0.2.x` (an HTTP service) nor `{}` (a reactor); it exports: [{}]",
                bindings::LIFECYCLE_EXPORT,
                exports.join(", ")
            )));
        };
        let prepared = Arc::new(PreparedComponent {
            digest,
            style,
            uses_heartbeat,
            runs_as_command,
            capability_imports,
            pre,
        });
        self.lock_components().insert(digest, prepared.clone());
        Ok(prepared)
    }

    /// Starts one instance on its own task. Its lifecycle is reported on `events`; it
    /// stops when asked through the returned handle (or when the handle is dropped).
    /// With a `reflex` ticket, its end may start what its workload has armed (see
    /// [`reflex`]).
    pub fn spawn(
        self: &Arc<Self>,
        request: SpawnRequest,
        reflex: Option<ReflexTicket>,
        events: mpsc::Sender<InstanceEvent>,
    ) -> InstanceHandle {
        instance::spawn(self.clone(), request, reflex, events)
    }

    /// Builds a spare for `request`: its Store made and its component instantiated, its
    /// guest code not run until [`Spare::start`] (`request`'s instance id and slot are
    /// placeholders until then).
    pub fn prepare_spare(
        self: &Arc<Self>,
        request: SpawnRequest,
        events: mpsc::Sender<InstanceEvent>,
    ) -> Spare {
        instance::prepare(self.clone(), request, events, false)
    }

    /// A task for `request` that builds nothing until it is started (by
    /// [`Spare::start`], or as a direct replacement): then it makes the Store and
    /// instantiates, as a spawn does.
    /// What a direct replacement starts while its workload holds no spare (see
    /// [`reflex`]): it costs a waiting task, not an instance.
    pub fn prepare_dormant(
        self: &Arc<Self>,
        request: SpawnRequest,
        events: mpsc::Sender<InstanceEvent>,
    ) -> Spare {
        instance::prepare(self.clone(), request, events, true)
    }

    /// What this host's linker provides, in words.
    fn provides(&self) -> String {
        format!(
            "this host provides WASI 0.2 ({}), setpoint:workload/heartbeat@0.1.0{}",
            if cfg!(feature = "http") {
                "wasi:http included"
            } else {
                "without wasi:http: this setpoint was built without the `http` feature"
            },
            self.config
                .capabilities
                .iter()
                .map(|c| format!(", {}", c.interface()))
                .collect::<String>()
        )
    }

    /// The first import of a `.wasm` component that nothing here provides, read from its
    /// bytes without compiling it.
    fn unprovided_import(&self, bytes: &[u8]) -> Option<String> {
        imports::surface(bytes)?
            .imports
            .into_iter()
            .find(|name| !imports::provided(name) && self.capability(name).is_none())
    }

    /// The embedder capability an import name refers to, compared without versions.
    pub fn capability(&self, interface: &str) -> Option<&capability::Capability> {
        let wanted = crate::manifest::unversioned(interface);
        self.config
            .capabilities
            .iter()
            .find(|c| c.grant_name() == wanted)
    }

    /// Reads a component file within the configured size limit.
    fn read_component(&self, path: &Path) -> Result<Vec<u8>, PrepareError> {
        let size = std::fs::metadata(path)
            .map_err(|source| PrepareError::Read {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if size > self.config.max_component_bytes {
            return Err(PrepareError::TooLarge {
                path: path.to_path_buf(),
                size,
                limit: self.config.max_component_bytes,
            });
        }
        std::fs::read(path).map_err(|source| PrepareError::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    fn lock_plugins(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<plugin::PreparedPlugin>>> {
        self.plugins.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_components(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<PreparedComponent>>> {
        self.components.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many instance Stores exist right now (running or being torn down).
    pub fn live_stores(&self) -> usize {
        self.live_stores.load(Ordering::Relaxed)
    }

    /// What the fiber stacks cost now, where they come from the runtime's own arena
    /// (on Linux, without an instance pool; see [`stacks`]).
    pub fn stack_stats(&self) -> Option<StackStats> {
        self.stacks.as_ref().map(|s| s.stats())
    }

    /// A reader of the stack arena's counters, for the mapping guard.
    pub(crate) fn stack_watcher(&self) -> Option<stacks::StackWatcher> {
        self.stacks.clone()
    }

    /// Drops compiled components that no workload uses any more.
    pub fn forget_unused_components(&self) {
        self.lock_components()
            .retain(|_, c| Arc::strong_count(c) > 1);
        self.lock_plugins().retain(|_, p| Arc::strong_count(p) > 1);
    }

    /// Stops the epoch ticker; called on host shutdown.
    pub fn stop_ticker(&self) {
        self.ticker.stop();
    }
}

/// An HTTP component's prepared form: its `wasi:http/proxy` handler, and its command
/// when it can also run as one.
#[cfg(feature = "http")]
fn prepare_http(
    pre: wasmtime::component::InstancePre<InstanceState>,
    runs_as_command: bool,
) -> Result<Prepared, String> {
    let command = if runs_as_command {
        let command = wasmtime_wasi::p2::bindings::CommandPre::new(pre.clone())
            .map_err(|e| exit::error_text(&e))?;
        Some(command)
    } else {
        None
    };
    let proxy =
        wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre).map_err(|e| exit::error_text(&e))?;
    Ok(Prepared::Http { proxy, command })
}

/// A build without the `http` feature cannot serve an HTTP component.
#[cfg(not(feature = "http"))]
fn prepare_http(
    _pre: wasmtime::component::InstancePre<InstanceState>,
    _runs_as_command: bool,
) -> Result<Prepared, String> {
    Err("it serves HTTP (it exports `wasi:http/incoming-handler`), and this setpoint was built without HTTP (cargo feature `http`)".into())
}

/// Everything needed to start one instance.
pub struct SpawnRequest {
    /// The workload's name.
    pub workload: Arc<str>,
    /// The new instance's id.
    pub instance: Arc<str>,
    /// The slot it fills.
    pub slot: u32,
    /// The compiled component.
    pub component: Arc<PreparedComponent>,
    /// The workload's spec (grants, limits, probes).
    pub spec: Arc<WorkloadSpec>,
    /// The granted directories, opened at apply (the spec's `dirs` by handle).
    pub grants: Grants,
    /// Where complete output lines are forwarded.
    pub log_sink: Option<broadcast::Sender<LogLine>>,
    /// For an HTTP workload: the service its requests come from.
    pub http: Option<Arc<http::Service>>,
}

/// A directory granted to a workload's instances, held open since apply.
#[derive(Debug)]
pub struct GrantedDir {
    /// Where the guest sees it.
    pub guest: String,
    /// Whether the guest may only read.
    pub read_only: bool,
    /// The directory, by handle.
    pub dir: crate::opened_dir::OpenedDir,
}

/// A revision's granted directories, shared by its instances.
pub type Grants = Arc<[GrantedDir]>;

/// Increments the engine's epoch on a dedicated thread, so that guests yield.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EpochTicker {
    /// Ticks the engine's epoch every `tick`, and at each tick parks the idle fiber
    /// stacks of `stacks` and lets `trimmer` check whether heap memory is to be given
    /// back.
    fn start(
        engine: Engine,
        tick: Duration,
        stacks: Option<stacks::StackSweeper>,
        mut trimmer: Option<malloc::Trimmer>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("setpoint-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                    if let Some(stacks) = &stacks {
                        stacks.tick();
                    }
                    if let Some(trimmer) = &mut trimmer {
                        trimmer.tick();
                    }
                }
                // The sweeper's queue holds the slots it has not parked yet, and they
                // hold their arena: parked now, and later ones at once, it goes with the
                // runtime.
                if let Some(stacks) = &stacks {
                    stacks.finish();
                }
            })
            .expect("spawning the epoch thread");
        Self {
            stop,
            thread: Mutex::new(Some(thread)),
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop();
    }
}
