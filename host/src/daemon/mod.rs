//! `setpoint daemon`: a long-lived host whose desired state survives its own crash. It
//! keeps applied manifests and their components in a state directory ([`store`]),
//! replays them on start, and serves the control API ([`api`]) on a Unix socket that
//! only its owner can open.
//!
//! Crash-only: there is no shutdown path that must run for the state to be right. An
//! apply is stored (atomically) before the host runs it and acknowledged after; a delete
//! is forgotten before the host stops it. A restart replays what is stored.

pub mod api;
pub mod logbook;
mod rollbacks;
pub mod serve;
pub mod store;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use crate::HostBuilder;
use crate::manifest::ManifestLimits;
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

/// Runs the daemon until `shutdown` resolves: opens the store, builds the host from
/// `builder` (with the compile cache in the state directory), replays the stored
/// desired state, and serves the API. `ready` is called once the socket accepts.
pub async fn run(
    config: DaemonConfig,
    builder: HostBuilder,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&Path),
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
    let host = builder
        .cache_dir(config.state_dir.join("cache"))
        .job_ledger(store.clone())
        .build()?;
    let stored_events = store.recent_events().unwrap_or_else(|e| {
        tracing::warn!("cannot read the stored events: {e}");
        Vec::new()
    });
    let logbook = Arc::new(logbook::Logbook::new(stored_events));
    // Following from before the replay: the restored workloads' first lines are kept.
    logbook.run(&host, store.clone());
    let quarantined = restore(&host, &store, &limits, &logbook).await?;
    match store.collect_blobs() {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} unused blob or temporary file(s)"),
        Err(e) => tracing::warn!("cannot collect unused blobs: {e}"),
    }
    let state = Arc::new(api::ApiState {
        logbook,
        host,
        store,
        limits,
        quarantined: std::sync::Mutex::new(quarantined),
        writes: tokio::sync::Mutex::new(()),
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
            eprintln!(
                "setpoint daemon: serving TCP on {} (bearer token in {})",
                listener.local_addr().unwrap_or(addr),
                token_file.display()
            );
            Some((listener, token))
        }
        None => None,
    };
    ready(&socket);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let rollbacks = tokio::spawn(rollbacks::record_rollbacks(
        state.clone(),
        state.host.events(),
        stop_rx.clone(),
    ));
    let watcher = match &config.watch {
        Some(dir) => {
            let dir = std::fs::canonicalize(dir)
                .with_context(|| format!("the watched directory {}", dir.display()))?;
            Some(tokio::spawn(watch::watch(
                state.clone(),
                dir,
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    let limits = serve::ServeLimits::default();
    let unix = serve::serve(
        listener,
        api::router(state.clone()),
        limits,
        stop_rx.clone(),
    );
    let serving = async {
        match tcp {
            Some((listener, token)) => {
                let router = api::router(state.clone()).layer(
                    axum::middleware::from_fn_with_state(Arc::new(token), api::require_bearer),
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
    let watched = state.clone();
    tokio::select! {
        served = serving => served?,
        why = async move { watched.host.died().await } => {
            let _ = std::fs::remove_file(&socket);
            anyhow::bail!("the host's controller died: {why}; the daemon stops so that its supervisor restarts it");
        }
    }
    let _ = std::fs::remove_file(&socket);
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
    let _ = rollbacks.await;
    let state = Arc::into_inner(state).context("API handlers still running at shutdown")?;
    // Bounded at any load: the longest grace period, and a margin.
    let grace = state
        .host
        .status()
        .await
        .workloads
        .iter()
        .map(|w| w.spec.termination_grace_period)
        .max()
        .unwrap_or_default();
    let bound = grace.saturating_add(std::time::Duration::from_secs(10));
    tokio::time::timeout(bound, state.host.shutdown())
        .await
        .map_err(|_| anyhow::anyhow!("the host did not stop within {bound:?}"))
}

/// Deaths during the same apply's replay after which it is quarantined even though the
/// daemon could not record why (an abort, a kill): a `kill -9` at a random moment must
/// not quarantine a good apply, a host that dies on it every time must not loop forever.
const REPLAY_DEATHS_BEFORE_QUARANTINE: u64 = 3;

/// Replays the stored desired state, apply by apply. An apply that no longer loads or is
/// rejected (a blob deleted by hand, a granted directory replaced) is kept but not run:
/// it is returned as quarantined, and the rest still runs. If the host's controller dies
/// while an apply is replayed, that apply is quarantined durably before the error is
/// returned, so the next start runs everything else.
async fn restore(
    host: &crate::Host,
    store: &Store,
    limits: &ManifestLimits,
    logbook: &logbook::Logbook,
) -> anyhow::Result<Vec<crate::status::QuarantinedApply>> {
    let help = |names: &[String]| {
        let objects: Vec<String> = names.iter().map(|n| format!("workload/{n}")).collect();
        format!(
            "fix the manifest and apply it again, or remove it with `setpoint delete {}`",
            objects.join(" ")
        )
    };
    let durable = store.quarantined().unwrap_or_default();
    let mut interrupted = store.replaying().ok().flatten();
    let desired = store
        .desired()
        .context("cannot read the stored desired state")?;
    let mut quarantined = Vec::new();
    let mut quarantine = |id: u64, names: &[String], reason: String| {
        let entry = crate::status::QuarantinedApply {
            apply: id,
            workloads: names.to_vec(),
            reason,
            help: help(names),
        };
        tracing::error!(
            "stored apply {id} ({}) is not run: {}; {}",
            names.join(", "),
            entry.reason,
            entry.help
        );
        for name in names {
            logbook.record(&crate::Event {
                time: std::time::SystemTime::now(),
                kind: crate::EventType::Warning,
                workload: name.clone(),
                instance: None,
                reason: "Quarantined".into(),
                message: format!("{} ({})", entry.reason, entry.help),
            });
        }
        quarantined.push(entry);
    };
    for (id, record, names) in desired {
        if let Some(reason) = durable.get(&id) {
            quarantine(id, &names, reason.clone());
            continue;
        }
        if interrupted == Some(id) {
            interrupted = None;
            let deaths = store.note_replay_death().unwrap_or(u64::MAX);
            if deaths >= REPLAY_DEATHS_BEFORE_QUARANTINE {
                let reason =
                    format!("the daemon died {deaths} times in a row while replaying this apply");
                store.quarantine(id, &reason)?;
                quarantine(id, &names, reason);
                continue;
            }
        }
        let mut workloads = match api::load(store, &record.documents, &record.files, limits) {
            Ok(w) => w,
            Err(e) => {
                quarantine(id, &names, format!("it no longer loads: {e}"));
                continue;
            }
        };
        for w in workloads.iter_mut().filter(|w| w.spec.job.is_none()) {
            if let Some(replicas) = record.replicas.get(&w.name) {
                w.spec.replicas = *replicas;
            }
        }
        // Only the workloads this apply still defines (a later apply may own others).
        workloads.retain(|w| names.contains(&w.name));
        if let Err(e) = api::pin_grants(&mut workloads, Some(&record.dirs)) {
            quarantine(id, &names, format!("it was rejected: {e}"));
            continue;
        }
        store.set_replaying(Some(id))?;
        let applied = host.apply(workloads).await;
        // A round trip: the controller has acted on the apply without dying.
        let _ = host.ping().await;
        if let Some(why) = host.failure() {
            let reason = format!("the host's controller died while replaying it: {why}");
            store.quarantine(id, &reason)?;
            anyhow::bail!(
                "the host's controller died while replaying stored apply {id} ({}): {why}; it is quarantined, so the next start runs the rest",
                names.join(", ")
            );
        }
        if let Err(e) = applied {
            quarantine(id, &names, format!("it was rejected: {e}"));
        }
    }
    store.set_replaying(None)?;
    Ok(quarantined)
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
