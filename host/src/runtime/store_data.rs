//! An instance's Store data and how it is built: a WASI context made only from the
//! instance's grants (args, env, the directories opened at apply, the addresses it may
//! connect to, the HTTP authorities it may call), its memory and table limiter, its CPU
//! meter, and the heartbeat host functions. Policy plugins get a Store built the same
//! way from nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use wasmtime::component::ResourceTable;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
#[cfg(feature = "http")]
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::limits::{CpuMeter, InstanceLimiter};
#[cfg(feature = "http")]
use super::outgoing_http::OutgoingHttp;
use super::output::{OutputCapture, Stream};
use super::vitals::Vitals;
use super::{Runtime, SpawnRequest};

/// The data of one instance's Store.
pub struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    #[cfg(feature = "http")]
    http: WasiHttpCtx,
    /// Which outgoing HTTP requests the instance may send.
    #[cfg(feature = "http")]
    outgoing_http: OutgoingHttp,
    pub(super) limiter: InstanceLimiter,
    pub(super) cpu: CpuMeter,
    pub(crate) vitals: Arc<Vitals>,
    pub(crate) identity: Identity,
    /// The live usage gauge the instance's handle reads (and an HTTP instance's next
    /// Store takes over).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) usage: Arc<super::limits::Usage>,
    /// The Store's claim on its fiber stack, which calls park between polls.
    pub(crate) stack: super::stacks::StackLease,
    /// When the guest called `wasi:cli/exit`, if it did.
    pub(crate) exit_called_at: Option<std::time::SystemTime>,
    _live: LiveStore,
}

/// Who an instance is, for capability calls: its names and the spec holding its grants
/// (`None` for policy plugins, which are granted nothing).
pub(crate) struct Identity {
    pub workload: Arc<str>,
    pub instance: Arc<str>,
    pub spec: Option<Arc<crate::manifest::WorkloadSpec>>,
}

/// Counts live Stores of a runtime: +1 when created, -1 when dropped.
struct LiveStore(Arc<AtomicUsize>);

impl LiveStore {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for LiveStore {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InstanceState {
    /// Starts a fresh CPU meter (a plugin call's budget starts anew with each call).
    pub(crate) fn reset_cpu(&mut self, budget: Option<crate::manifest::CpuBudget>) {
        self.cpu = CpuMeter::new(self.cpu.tick(), budget);
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

#[cfg(feature = "http")]
impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outgoing_http,
        }
    }
}

impl super::bindings::setpoint::workload::heartbeat::Host for InstanceState {
    fn beat(&mut self) {
        let first = self.vitals.record_beat();
        if first {
            self.vitals.changed.notify_one();
        }
    }

    fn set_ready(&mut self, ready: bool) {
        if self.vitals.ready.swap(ready, Ordering::AcqRel) != ready {
            self.vitals.changed.notify_one();
        }
    }

    fn stop_requested(&mut self) -> bool {
        self.vitals.stop_requested.load(Ordering::Acquire)
    }
}

/// A Store for a policy plugin: no env, no args beyond its name, no files, no sockets;
/// stderr and stdout are its log. CPU is metered per call (see `reset_cpu`).
pub(crate) fn build_plugin_store(
    rt: &Runtime,
    capture: &OutputCapture,
    memory: u64,
) -> Store<InstanceState> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.arg("policy");
    wasi.stdout(capture.stream(Stream::Stdout));
    wasi.stderr(capture.stream(Stream::Stderr));
    wasi.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    let state = InstanceState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        #[cfg(feature = "http")]
        http: WasiHttpCtx::new(),
        #[cfg(feature = "http")]
        outgoing_http: OutgoingHttp::new(&[]),
        limiter: InstanceLimiter::new(memory, rt.config.table_elements_limit),
        cpu: CpuMeter::new(rt.config.epoch_tick, None),
        usage: Default::default(),
        vitals: Arc::new(Vitals::new()),
        identity: Identity {
            workload: "policy".into(),
            instance: "policy".into(),
            spec: None,
        },
        stack: Default::default(),
        exit_called_at: None,
        _live: LiveStore::new(&rt.live_stores),
    };
    // The controller waits for a plugin's decision: yielding at a tick would only send
    // the call to the back of the run queue (the tail latency of plugin calls under
    // churn). The CPU limit per call still ends a spinning plugin.
    store_with_limits(rt, state, OnTick::Continue)
}

/// What a guest running Wasm does at an epoch tick, once its CPU is counted.
#[derive(Clone, Copy)]
enum OnTick {
    /// Yields to the scheduler: an instance, which shares worker threads with every other.
    Yield,
    /// Goes on: a policy plugin, whose caller waits for it anyway.
    Continue,
}

/// The Store of an instance of `req`, and why a grant could not be made, if one could not.
pub(super) fn build_store(
    rt: &Runtime,
    req: &SpawnRequest,
    capture: &OutputCapture,
    vitals: Arc<Vitals>,
    usage: Arc<super::limits::Usage>,
) -> (Store<InstanceState>, Option<String>) {
    let spec = &req.spec;
    let mut refused = None;
    let mut wasi = WasiCtxBuilder::new();
    // argv[0] is the program name, as real programs expect; the user's args follow.
    wasi.arg(&*req.workload);
    wasi.args(&spec.args);
    wasi.envs(&spec.env);
    wasi.stdout(capture.stream(Stream::Stdout));
    wasi.stderr(capture.stream(Stream::Stderr));
    for grant in req.grants.iter() {
        let perms = if grant.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        // By the handle opened at apply, never by the path again: a link planted in
        // the path since then leads nowhere.
        if let Err(e) = wasi.preopened_dir(grant.dir.handle_path(), &grant.guest, perms) {
            refused.get_or_insert_with(|| {
                format!(
                    "cannot grant `{}` at {}: {e}",
                    grant.dir.path().display(),
                    grant.guest
                )
            });
        }
    }
    wasi.allow_udp(false).allow_ip_name_lookup(false);
    if spec.connect.is_empty() {
        wasi.allow_tcp(false);
    } else {
        let allowed: Arc<[std::net::SocketAddr]> = spec.connect.clone().into();
        wasi.allow_tcp(true);
        wasi.socket_addr_check(move |addr, usage| {
            // A connect first binds an ephemeral local port (unspecified address, port 0);
            // that bind is allowed, any other bind is not.
            let ok = match usage {
                SocketAddrUse::TcpConnect => allowed.contains(&addr),
                SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                _ => false,
            };
            Box::pin(async move { ok })
        });
    }
    let memory = spec.memory_limit.unwrap_or(rt.config.default_memory_limit);
    let state = InstanceState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        #[cfg(feature = "http")]
        http: WasiHttpCtx::new(),
        #[cfg(feature = "http")]
        outgoing_http: OutgoingHttp::new(&spec.http_authorities),
        limiter: InstanceLimiter::new(memory, rt.config.table_elements_limit)
            .with_usage(usage.clone()),
        cpu: CpuMeter::new(rt.config.epoch_tick, spec.cpu_budget).with_usage(usage.clone()),
        usage,
        vitals,
        identity: Identity {
            workload: req.workload.clone(),
            instance: req.instance.clone(),
            spec: Some(req.spec.clone()),
        },
        stack: Default::default(),
        exit_called_at: None,
        _live: LiveStore::new(&rt.live_stores),
    };
    (store_with_limits(rt, state, OnTick::Yield), refused)
}

/// Wraps `state` in a Store with its limiter and the epoch callback that meters CPU.
fn store_with_limits(rt: &Runtime, state: InstanceState, on_tick: OnTick) -> Store<InstanceState> {
    let mut store = Store::new(&rt.engine, state);
    store.limiter(|s| &mut s.limiter);
    // Every epoch tick that finds the guest running Wasm is one tick of CPU, and a spent
    // CPU budget ends it. An instance then yields to the scheduler, so a spinning guest
    // cannot hold a worker thread for longer than one tick.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |mut ctx| {
        ctx.data_mut().cpu.on_tick().map_err(wasmtime::Error::new)?;
        Ok(match on_tick {
            OnTick::Yield => UpdateDeadline::Yield(1),
            OnTick::Continue => UpdateDeadline::Continue(1),
        })
    });
    store
}
