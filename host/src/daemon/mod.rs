//! `setpoint daemon`: a long-lived host whose desired state survives its own crash. It
//! keeps applied manifests and their components in a state directory ([`store`]),
//! replays them on start, and serves the control API ([`api`], its bodies in [`wire`])
//! on a Unix socket that only its owner can open. Every change of the desired state
//! goes through one use-case layer ([`desired`]), whoever asks for it.
//!
//! Crash-only: there is no shutdown path that must run for the state to be right. An
//! apply is stored (atomically) before the host runs it and acknowledged after; a delete
//! is forgotten before the host stops it. A restart replays what is stored.

pub mod api;
pub mod desired;
mod failures;
#[cfg(feature = "fleet")]
pub mod fleet;
pub mod logbook;
mod rollbacks;
pub mod serve;
pub mod store;
mod watch;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use crate::HostBuilder;
use store::Store;

/// Where and how the daemon runs.
pub struct DaemonConfig {
    /// The state directory (store, component blobs, compile cache, default socket).
    pub state_dir: PathBuf,
    /// The Unix socket of the control API (default: `STATE_DIR/setpoint.sock`).
    pub socket: Option<PathBuf>,
    /// Also serve the API over TCP on this address; every request must then carry the
    /// bearer token.
    pub tcp: Option<std::net::SocketAddr>,
    /// The file holding the TCP API's bearer token (default: `STATE_DIR/api-token`,
    /// created with a random token, mode 0600, when missing).
    pub token_file: Option<PathBuf>,
    /// Apply the manifests in this directory as they appear, change and go.
    pub watch: Option<PathBuf>,
    /// Only directories under these may be granted (empty: any).
    pub dir_roots: Vec<PathBuf>,
    /// Whether manifests may grant network access at all.
    pub network_grants: bool,
    /// Start even when the store is missing or empty beside stored blobs.
    pub accept_empty_store: bool,
    /// Reload requests (the CLI sends one per SIGHUP): each re-reads the TCP API's
    /// token file and rescans the watched directory at once, then answers what it did.
    pub reloads: Option<tokio::sync::mpsc::Receiver<Reload>>,
    /// Join this fleet: the desired state is then the fleet's, kept in its engine, and
    /// this daemon runs the replicas placed on it.
    #[cfg(feature = "fleet")]
    pub fleet: Option<fleet::FleetConfig>,
}

/// A request to re-read what the daemon reads from files (`systemctl reload`).
pub struct Reload {
    /// Answered, once done, with what was re-read.
    pub done: tokio::sync::oneshot::Sender<String>,
}

/// The default TCP address of the API: loopback only.
pub const DEFAULT_TCP: &str = "127.0.0.1:7390";

/// Where the daemon with state directory `state_dir` keeps its API token by default.
pub fn default_token_file(state_dir: &Path) -> PathBuf {
    state_dir.join("api-token")
}

/// Reads the bearer token from `path`, creating the file (mode 0600, 32 random bytes as
/// hex) when it does not exist. A token shorter than 16 characters is refused.
pub fn load_or_create_token(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            anyhow::ensure!(
                token.len() >= 16,
                "the API token in {} is shorter than 16 characters",
                path.display()
            );
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            writeln!(file, "{token}")?;
            file.sync_all()?;
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl DaemonConfig {
    /// The socket path in effect.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| default_socket(&self.state_dir))
    }
}

/// The socket a daemon with state directory `state_dir` listens on by default.
pub fn default_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("setpoint.sock")
}

/// The default state directory: `$SETPOINT_STATE_DIR`, else `/var/lib/setpoint` for
/// root, else `$XDG_STATE_HOME/setpoint` (or `~/.local/state/setpoint`).
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SETPOINT_STATE_DIR") {
        return PathBuf::from(dir);
    }
    // By the effective uid, not `$USER`: a service started with an empty environment
    // is still root.
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[cfg(unix)]
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/setpoint");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("setpoint")
}

/// Where a running daemon listens, as told to `run`'s `ready` callback.
#[derive(Debug, Clone)]
pub struct Listening {
    /// The Unix socket.
    pub socket: PathBuf,
    /// The TCP listener's address and the file holding its bearer token, if asked for.
    pub tcp: Option<(std::net::SocketAddr, PathBuf)>,
}

/// Runs the daemon until `shutdown` resolves: opens the store, builds the host from
/// `builder` (with the compile cache in the state directory), replays the stored
/// desired state, and serves the API. `ready` is called once the listeners accept.
pub async fn run(
    config: DaemonConfig,
    builder: HostBuilder,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&Listening),
) -> anyhow::Result<crate::HostStatus> {
    let mut config = config;
    // Absolute, so that paths derived from it stay right whatever the working directory.
    config.state_dir = std::path::absolute(&config.state_dir)
        .with_context(|| format!("state directory {}", config.state_dir.display()))?;
    let store = Arc::new(
        Store::open_checked(&config.state_dir, config.accept_empty_store)
            .with_context(|| format!("state directory {}", config.state_dir.display()))?,
    );
    let builder = builder
        .allowed_dir_roots(config.dir_roots.clone())?
        .allow_network_grants(config.network_grants);
    let limits = builder.manifest_limits_in_effect().clone();
    // In a fleet, a job's runs are also counted fleet-wide (once the daemon has joined).
    #[cfg(feature = "fleet")]
    let fleet_ledger = config
        .fleet
        .as_ref()
        .map(|_| Arc::new(fleet::ledger::FleetLedger::new(store.clone())));
    #[cfg(feature = "fleet")]
    let ledger: Arc<dyn crate::job::JobLedger> = match &fleet_ledger {
        Some(l) => l.clone(),
        None => store.clone(),
    };
    #[cfg(not(feature = "fleet"))]
    let ledger: Arc<dyn crate::job::JobLedger> = store.clone();
    let host = builder
        .cache_dir(config.state_dir.join("cache"))
        .job_ledger(ledger)
        .build()?;
    let stored_events = store.recent_events().unwrap_or_else(|e| {
        tracing::warn!("cannot read the stored events: {e}");
        Vec::new()
    });
    let logbook = Arc::new(logbook::Logbook::new(stored_events));
    // Following from before the replay: the restored workloads' first lines are kept.
    logbook.run(&host, store.clone());
    let desired = Arc::new(desired::Desired::new(
        host,
        store.clone(),
        limits,
        logbook.clone(),
    ));
    #[cfg(feature = "fleet")]
    let joined = match &config.fleet {
        Some(fleet_config) => {
            let joined = join_fleet(fleet_config, &desired, &store).await?;
            if let Some(ledger) = &fleet_ledger {
                ledger.join(
                    joined.fleet.clone(),
                    joined.mirror.clone(),
                    tokio::runtime::Handle::current(),
                );
            }
            Some(joined)
        }
        None => None,
    };
    #[cfg(not(feature = "fleet"))]
    let joined: Option<()> = None;
    if joined.is_none() {
        desired.write().await.restore().await?;
        match store.collect_blobs() {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} unused blob or temporary file(s)"),
            Err(e) => tracing::warn!("cannot collect unused blobs: {e}"),
        }
    }
    let state = Arc::new(api::ApiState {
        desired: desired.clone(),
        logbook,
        max_blob_bytes: 256 << 20,
    });
    let socket = config.socket_path();
    let listener = bind_private(&socket)?;
    let tcp = match config.tcp {
        Some(addr) => {
            let token_file = config
                .token_file
                .clone()
                .unwrap_or_else(|| default_token_file(&config.state_dir));
            let token = load_or_create_token(&token_file)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the TCP API to {addr}"))?;
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    "the API listens on {addr}, beyond this machine: anyone with the token in {} controls this host; the connection is not encrypted",
                    token_file.display()
                );
            }
            let local = listener.local_addr().unwrap_or(addr);
            Some((
                listener,
                Arc::new(api::ApiToken::new(token)),
                (local, token_file),
            ))
        }
        None => None,
    };
    ready(&Listening {
        socket: socket.clone(),
        tcp: tcp.as_ref().map(|(_, _, told)| told.clone()),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    #[cfg(feature = "fleet")]
    let mut fleet_tasks = joined.map(|joined| joined.start(desired.clone(), stop_rx.clone()));
    #[cfg(feature = "fleet")]
    let fleet_died = async {
        match fleet_tasks.as_mut() {
            Some(tasks) => tasks.died().await,
            None => std::future::pending().await,
        }
    };
    #[cfg(not(feature = "fleet"))]
    let fleet_died = std::future::pending::<String>();
    let rollbacks = tokio::spawn(rollbacks::record_rollbacks(
        desired.clone(),
        desired.host().events(),
        stop_rx.clone(),
    ));
    let failures = tokio::spawn(failures::record_failures(
        desired.clone(),
        desired.host().events(),
        stop_rx.clone(),
    ));
    let rescan = Arc::new(tokio::sync::Notify::new());
    let watcher = match &config.watch {
        Some(dir) => {
            let dir = std::fs::canonicalize(dir)
                .with_context(|| format!("the watched directory {}", dir.display()))?;
            Some(tokio::spawn(watch::watch(
                desired.clone(),
                dir,
                rescan.clone(),
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    if let Some(reloads) = config.reloads.take() {
        let token = tcp
            .as_ref()
            .map(|(_, token, (_, file))| (token.clone(), file.clone()));
        tokio::spawn(serve_reloads(
            reloads,
            token,
            config.watch.is_some().then(|| rescan.clone()),
        ));
    }
    let limits = serve::ServeLimits::default();
    let unix = serve::serve(
        listener,
        api::router(state.clone()),
        limits,
        stop_rx.clone(),
    );
    let serving = async {
        match tcp {
            Some((listener, token, _)) => {
                let router = api::router(state.clone()).layer(
                    axum::middleware::from_fn_with_state(token, api::require_bearer),
                );
                let tcp = serve::serve(listener, router, limits, stop_rx);
                tokio::join!(unix, tcp);
            }
            None => unix.await,
        }
        anyhow::Ok(())
    };
    // Crash-only: a dead controller ends the daemon loudly (a supervisor restarts it),
    // never a daemon that answers every request with "shut down".
    let watched = desired.clone();
    tokio::select! {
        served = serving => served?,
        why = fleet_died => {
            let _ = std::fs::remove_file(&socket);
            anyhow::bail!("{why}; the daemon stops so that its supervisor restarts it");
        }
        why = async move { watched.host().died().await } => {
            let _ = std::fs::remove_file(&socket);
            anyhow::bail!("the host's controller died: {why}; the daemon stops so that its supervisor restarts it");
        }
    }
    let _ = std::fs::remove_file(&socket);
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
    let _ = rollbacks.await;
    let _ = failures.await;
    // The fleet's agent leaves first (its replicas stopped, its claims released), then
    // the heartbeat's key goes.
    #[cfg(feature = "fleet")]
    if let Some(tasks) = fleet_tasks {
        tasks.finish().await;
    }
    drop(state);
    let host = Arc::into_inner(desired)
        .context("API handlers still running at shutdown")?
        .into_host();
    // Bounded at any load: the longest grace period, and a margin.
    let grace = host.status().await.longest_grace_period();
    let bound = grace.saturating_add(std::time::Duration::from_secs(10));
    tracing::info!("shutting down: stopping every instance (within {bound:?})");
    tokio::time::timeout(bound, host.shutdown())
        .await
        .map_err(|_| anyhow::anyhow!("the host did not stop within {bound:?}"))
}

/// Answers reload requests until their sender goes: the token file read again (a token
/// that cannot be read keeps the old one, and says so), the watched directory rescanned.
async fn serve_reloads(
    mut reloads: tokio::sync::mpsc::Receiver<Reload>,
    token: Option<(Arc<api::ApiToken>, PathBuf)>,
    rescan: Option<Arc<tokio::sync::Notify>>,
) {
    while let Some(reload) = reloads.recv().await {
        let mut done = Vec::new();
        if let Some((current, file)) = &token {
            match tokio::task::block_in_place(|| load_or_create_token(file)) {
                Ok(read) => {
                    current.replace(read);
                    done.push(format!("the API token re-read from {}", file.display()));
                }
                Err(e) => {
                    tracing::error!("the API token is kept: {e:#}");
                    done.push(format!("the API token kept ({e:#})"));
                }
            }
        }
        if let Some(rescan) = &rescan {
            rescan.notify_one();
            done.push("the watched directory rescanned".into());
        }
        if done.is_empty() {
            done.push("nothing to re-read (no --tcp token, no --watch directory)".into());
        }
        let said = done.join("; ");
        tracing::info!("reloaded: {said}");
        let _ = reload.done.send(said);
    }
}

/// A joined fleet whose tasks have not started yet.
#[cfg(feature = "fleet")]
struct Joined {
    fleet: Arc<fleet::Fleet>,
    mirror: fleet::agent::SharedMirror,
    fenced: tokio::sync::watch::Sender<bool>,
}

/// The fleet's tasks: heartbeat, agent, status answers. Each reports how it ended on a
/// channel (a panic included), so that a failure is seen at once, and the handles are
/// awaited only at shutdown.
#[cfg(feature = "fleet")]
struct FleetTasks {
    handles: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
    ended: tokio::sync::mpsc::UnboundedReceiver<(&'static str, Result<(), String>)>,
}

#[cfg(feature = "fleet")]
impl Joined {
    fn start(
        self,
        desired: Arc<desired::Desired>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> FleetTasks {
        let instances = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let fenced_rx = self.fenced.subscribe();
        let (left_tx, left_rx) = tokio::sync::watch::channel(false);
        let (tx, ended) = tokio::sync::mpsc::unbounded_channel();
        let spawn = |name: &'static str,
                     task: std::pin::Pin<
            Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>,
        >| {
            let tx = tx.clone();
            let handle = tokio::spawn(async move {
                use futures_util::FutureExt as _;
                let result = match std::panic::AssertUnwindSafe(task).catch_unwind().await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("{e:#}")),
                    Err(_) => Err("it panicked".to_string()),
                };
                let _ = tx.send((name, result));
            });
            (name, handle)
        };
        let handles = vec![
            spawn(
                "heartbeat",
                Box::pin(fleet::heartbeat::run(
                    self.fleet.clone(),
                    instances.clone(),
                    self.fenced,
                    stop.clone(),
                    left_rx,
                )),
            ),
            spawn(
                "agent",
                Box::pin(fleet::agent::run(
                    self.fleet.clone(),
                    desired.clone(),
                    self.mirror,
                    instances,
                    fenced_rx,
                    stop.clone(),
                    left_tx,
                )),
            ),
            spawn(
                "status answers",
                Box::pin(fleet::view::answer(self.fleet, desired, stop)),
            ),
        ];
        FleetTasks { handles, ended }
    }
}

#[cfg(feature = "fleet")]
impl FleetTasks {
    /// Resolves when a task fails (a clean stop at shutdown never resolves).
    async fn died(&mut self) -> String {
        loop {
            match self.ended.recv().await {
                Some((name, Err(why))) => return format!("the fleet's {name} failed: {why}"),
                Some((_, Ok(()))) => continue,
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Waits for every task to end after a stop request (bounded: a task that hangs is
    /// left behind, said in the log).
    async fn finish(self) {
        for (name, task) in self.handles {
            if tokio::time::timeout(std::time::Duration::from_secs(90), task)
                .await
                .is_err()
            {
                tracing::warn!("the fleet's {name} did not end at shutdown");
            }
        }
    }
}

/// Joins the fleet: connects (a clear error when the engine is unreachable), forgets
/// the workloads a previous run kept locally (the fleet says what runs here now; their
/// components stay, as a cache), and links the desired state to the fleet.
#[cfg(feature = "fleet")]
async fn join_fleet(
    config: &fleet::FleetConfig,
    desired: &Arc<desired::Desired>,
    store: &Store,
) -> anyhow::Result<Joined> {
    let joined = fleet::Fleet::join(config).await?;
    let stored = store
        .desired()
        .context("reading the stored desired state")?;
    for (_, _, names) in stored {
        for name in names {
            store.delete(&name)?;
        }
    }
    let mirror: fleet::agent::SharedMirror = Default::default();
    let (fenced, fenced_rx) = tokio::sync::watch::channel(false);
    desired.join_fleet(desired::FleetLink {
        fleet: joined.clone(),
        mirror: mirror.clone(),
        fenced: fenced_rx,
    });
    tracing::info!(
        node = %joined.node,
        "joined the fleet at {} (heartbeat TTL {:?})",
        config.url,
        joined.heartbeat_ttl
    );
    Ok(Joined {
        fleet: joined,
        mirror,
        fenced,
    })
}

/// Binds a Unix socket only its owner can connect to (mode 0600), replacing a stale
/// socket file left by a crash.
fn bind_private(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => anyhow::bail!(
            "another daemon is listening on {}; stop it or choose another --socket",
            path.display()
        ),
        Err(_) => {
            use std::os::unix::fs::FileTypeExt as _;
            match std::fs::symlink_metadata(path) {
                // Only a stale socket is ever removed: anything else at the path is
                // someone's file.
                Ok(meta) if meta.file_type().is_socket() => {
                    let _ = std::fs::remove_file(path);
                }
                Ok(_) => anyhow::bail!(
                    "{} exists and is not a socket; refusing to replace it (choose another --socket)",
                    path.display()
                ),
                Err(_) => {}
            }
        }
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}
