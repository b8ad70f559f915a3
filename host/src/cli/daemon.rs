//! `setpoint daemon`: the long-lived host serving the control API.

use std::path::PathBuf;
use std::process::ExitCode;

use setpoint::Host;

use super::EngineArgs;
use super::signals::StopSignals;

/// `setpoint daemon`.
#[derive(clap::Args)]
pub struct DaemonArgs {
    /// The state directory: applied manifests, component blobs, compile cache.
    /// Default: $SETPOINT_STATE_DIR, /var/lib/setpoint for root, else
    /// $XDG_STATE_HOME/setpoint.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The API's Unix socket (default: STATE_DIR/setpoint.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Also serve the API over TCP, on loopback unless an address says otherwise
    /// (`--tcp` alone: 127.0.0.1:7390). Every TCP request needs the bearer token.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = setpoint::daemon::DEFAULT_TCP)]
    tcp: Option<std::net::SocketAddr>,
    /// The TCP API's token file (default: STATE_DIR/api-token, created with a random
    /// token when missing).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Apply the *.yaml files of this directory as they appear and change; removing
    /// a file deletes what it defined.
    #[arg(long, value_name = "DIR")]
    watch: Option<PathBuf>,
    /// Only directories under DIR may be granted to workloads (repeatable; default:
    /// any directory).
    #[arg(long = "allow-dir-root", value_name = "DIR")]
    dir_roots: Vec<PathBuf>,
    /// Refuse every manifest that grants network access.
    #[arg(long)]
    no_network_grants: bool,
    /// Start even though the state database is missing or empty while component
    /// blobs are present (the acknowledged desired state is then lost).
    #[arg(long)]
    accept_empty_store: bool,
    #[cfg(feature = "fleet")]
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Joining a fleet.
#[cfg(feature = "fleet")]
#[derive(clap::Args)]
pub struct FleetArgs {
    /// Join the fleet whose NATS JetStream engine (nats-server 2.11 or later, with
    /// -js) is at URL, e.g. nats://127.0.0.1:4222 (comma-separate a cluster's URLs).
    #[arg(long, value_name = "URL")]
    fleet: Option<String>,
    /// This node's name in the fleet, unique (default: the host name).
    #[arg(long, value_name = "NAME", requires = "fleet")]
    node: Option<String>,
    /// This node's labels, matched by placement.nodeSelector: k=v,k2=v2.
    #[arg(long, value_name = "K=V,...", requires = "fleet", value_parser = parse_labels)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    /// How long a silent node's heartbeat lives before its replicas run elsewhere
    /// (set by the first node that creates the fleet's buckets).
    #[arg(long, value_name = "DURATION", default_value = "1500ms", value_parser = setpoint::manifest::units::parse_duration)]
    fleet_heartbeat_ttl: std::time::Duration,
    /// How long joining may take before the daemon gives up.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = setpoint::manifest::units::parse_duration)]
    fleet_connect_timeout: std::time::Duration,
    /// Copies the engine keeps of each of the fleet's buckets (3 on a 3-node cluster).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    fleet_replicas: u8,
}

#[cfg(feature = "fleet")]
fn parse_labels(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    setpoint::daemon::fleet::parse_labels(text)
}

#[cfg(feature = "fleet")]
impl FleetArgs {
    fn config(self) -> Option<setpoint::daemon::fleet::FleetConfig> {
        let url = self.fleet?;
        let node = self.node.unwrap_or_else(host_name);
        let mut config = setpoint::daemon::fleet::FleetConfig::new(url, node);
        config.labels = self.labels.unwrap_or_default();
        config.heartbeat_ttl = self.fleet_heartbeat_ttl;
        config.connect_timeout = self.fleet_connect_timeout;
        config.replicas = usize::from(self.fleet_replicas);
        Some(config)
    }
}

/// This machine's host name, lowercased (the default node name).
#[cfg(feature = "fleet")]
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_else(|_| "node".into())
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn daemon(args: DaemonArgs) -> ExitCode {
    let config = setpoint::daemon::DaemonConfig {
        state_dir: args
            .state_dir
            .unwrap_or_else(setpoint::daemon::default_state_dir),
        socket: args.socket,
        tcp: args.tcp,
        token_file: args.token_file,
        watch: args.watch,
        dir_roots: args.dir_roots,
        network_grants: !args.no_network_grants,
        accept_empty_store: args.accept_empty_store,
        #[cfg(feature = "fleet")]
        fleet: args.fleet.config(),
        reloads: None,
    };
    let mut config = config;
    // SIGHUP (`systemctl reload`) re-reads the token file and the watched directory;
    // registered before anything starts, so that a hangup never ends the daemon.
    match reload_on_sighup() {
        Ok(reloads) => config.reloads = Some(reloads),
        Err(e) => {
            eprintln!("error: cannot install the SIGHUP handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let engine = args.engine;
    let builder = engine.apply(Host::builder());
    let mut signals = match StopSignals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = async move {
        signals.recv().await;
        super::notify::notify(&[super::notify::NotifyState::Stopping]);
    };
    let result = setpoint::daemon::run(config, builder, stop, |listening| {
        let status = format!("serving on {}", listening.socket.display());
        super::notify::notify(&[
            super::notify::NotifyState::Ready,
            super::notify::NotifyState::Status(&status),
        ]);
        let mut said = vec![format!("serving on {}", listening.socket.display())];
        // A client looks at the default state directory's socket: say how to reach
        // this one when it is elsewhere.
        let default_socket =
            setpoint::daemon::default_socket(&setpoint::daemon::default_state_dir());
        let same = std::path::absolute(&default_socket).ok()
            == std::path::absolute(&listening.socket).ok();
        if !same {
            said.push(format!(
                "clients find this daemon with: export SETPOINT_SOCKET={}",
                listening.socket.display()
            ));
        }
        if let Some((addr, token_file)) = &listening.tcp {
            said.push(format!(
                "serving TCP on {addr} (bearer token in {})",
                token_file.display()
            ));
        }
        for line in said {
            if super::json_logs() {
                tracing::info!("{line}");
            } else {
                eprintln!("setpoint daemon: {line}");
            }
        }
    })
    .await;
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) if super::json_logs() => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns each SIGHUP into a reload request, telling systemd `RELOADING=1` before and
/// `READY=1` (with what was re-read) after.
fn reload_on_sighup() -> std::io::Result<tokio::sync::mpsc::Receiver<setpoint::daemon::Reload>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            super::notify::reloading();
            let (done, answer) = tokio::sync::oneshot::channel();
            if tx.send(setpoint::daemon::Reload { done }).await.is_err() {
                return;
            }
            let said = answer.await.unwrap_or_default();
            let status = format!("reloaded: {said}");
            super::notify::notify(&[
                super::notify::NotifyState::Ready,
                super::notify::NotifyState::Status(&status),
            ]);
        }
    });
    Ok(rx)
}
