//! Command-line interface: argument parsing and presentation only. Everything it does
//! goes through the public [`setpoint::Host`] API.

mod client;
mod remote;
mod table;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use setpoint::manifest::{ManifestLimits, load_files, units::parse_duration};
use setpoint::{EventType, Host};

/// setpoint: keep declared WebAssembly workloads running.
#[derive(Parser)]
#[command(name = "setpoint", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run manifests in the foreground until Ctrl-C, SIGTERM or --for elapses.
    Run {
        /// Manifest files (YAML, several documents per file with `---`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Stop after this long (e.g. `30s`), then print the final status.
        #[arg(long = "for", value_parser = parse_duration)]
        run_for: Option<Duration>,
        /// Output format of status.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// How often to print the status table while running (table output only).
        #[arg(long, value_parser = parse_duration, default_value = "2s")]
        status_every: Duration,
        /// Do not print guest output lines.
        #[arg(long)]
        quiet: bool,
        /// Directory for compiled components (default: $XDG_CACHE_HOME/setpoint).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Do not cache compiled components on disk.
        #[arg(long, conflicts_with = "cache_dir")]
        no_cache: bool,
        /// At the end, write each workload's last policy snapshot to DIR/NAME.json, for
        /// replay with `setpoint policy test`.
        #[arg(long, value_name = "DIR")]
        snapshots: Option<PathBuf>,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Run the daemon: keep the applied desired state (durably, in --state-dir) running,
    /// and serve the control API on a Unix socket (mode 0600).
    Daemon {
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
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Apply manifests to the daemon, all or nothing across every document.
    Apply {
        /// Manifest files or directories (their *.yaml and *.yml files).
        #[arg(
            short = 'f',
            long = "filename",
            required = true,
            value_name = "FILE|DIR"
        )]
        files: Vec<PathBuf>,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List workloads, jobs or instances known to the daemon.
    Get {
        /// `workloads`, `jobs`, `instances` or `all` (the default), optionally followed
        /// by a name (for `instances`, the workload or job they belong to).
        #[arg(value_name = "KIND [NAME]", num_args = 0..=2)]
        what: Vec<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = remote::GetOutput::Table)]
        output: remote::GetOutput,
        #[command(flatten)]
        target: Target,
    },
    /// Show one workload or job in detail: revision, conditions, progress, instances,
    /// events.
    Describe {
        /// `workload/NAME` or `job/NAME` (or just `NAME`).
        target_name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = remote::GetOutput::Table)]
        output: remote::GetOutput,
        #[command(flatten)]
        target: Target,
    },
    /// Delete workloads and jobs by name or by the manifests that declared them.
    Delete {
        /// `workload/NAME` or `job/NAME`, one or more.
        names: Vec<String>,
        /// Manifest files or directories naming the workloads to delete.
        #[arg(short = 'f', long = "filename", value_name = "FILE|DIR")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Print a workload's or job's recent output (the daemon keeps the last 1000
    /// lines of each); with -f, keep printing new lines.
    Logs {
        /// `workload/NAME` or `job/NAME` (or just `NAME`).
        target_name: String,
        /// Only this instance's lines.
        #[arg(long, value_name = "ID")]
        instance: Option<String>,
        /// Only the last N kept lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Keep following new output until interrupted.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Print recent events (the daemon keeps the last 1000, across restarts); with -w,
    /// keep printing new ones.
    Events {
        /// Only this workload's or job's events: `KIND/NAME` or `NAME`.
        target_name: Option<String>,
        /// Keep watching for new events until interrupted.
        #[arg(short, long)]
        watch: bool,
        /// `table` (default) or `json` (one event per line).
        #[arg(short, long, value_enum, default_value_t = remote::GetOutput::Table)]
        output: remote::GetOutput,
        #[command(flatten)]
        target: Target,
    },
    /// Watch, list or undo a workload's rollouts.
    Rollout {
        #[command(subcommand)]
        action: RolloutCmd,
    },
    /// Check manifests and their components without running anything.
    Validate {
        /// Manifest files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Compile a component ahead of time into a `.cwasm` that hosts of this same setpoint
    /// build load without compiling (and that builds without a compiler can run).
    Compile {
        /// The `.wasm` component.
        component: PathBuf,
        /// Where to write the artifact (default: the component's path with `.cwasm`).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Compile for another target: a triple such as `aarch64-unknown-linux-gnu`, or
        /// `pulley64` for hosts that run the Pulley interpreter (default: this machine).
        #[arg(long)]
        target: Option<String>,
        /// Compile for hosts running with `--compact-memory`.
        #[arg(long)]
        compact_memory: bool,
    },
    /// Print the manifest format's JSON Schema.
    Schema,
    /// Work with policy plugins.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Run a policy plugin once on a snapshot (YAML or JSON) and print the actions it takes,
    /// validated as the host would; or, with `--builtin`, what the built-in policy decides.
    Test {
        /// The plugin component (`.wasm`); omit with `--builtin`.
        #[arg(required_unless_present = "builtin")]
        plugin: Option<PathBuf>,
        /// The snapshot: as written by `setpoint run --snapshots DIR`, or by hand.
        #[arg(long)]
        snapshot: PathBuf,
        /// Decide with the built-in replica policy instead of a plugin.
        #[arg(long, conflicts_with = "plugin")]
        builtin: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// Which daemon a client command talks to.
#[derive(clap::Args, Clone)]
struct Target {
    /// The daemon's socket (default: $SETPOINT_SOCKET, else the default daemon's).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The daemon's TCP API, `HOST:PORT` (default: $SETPOINT_SERVER; the socket when
    /// neither is set). Needs the daemon's token.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "socket")]
    server: Option<String>,
    /// A file holding the daemon's API token, for --server (default: $SETPOINT_TOKEN).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl Target {
    fn endpoint(self) -> client::Endpoint {
        remote::endpoint(self.socket, self.server, self.token_file)
    }
}

/// `setpoint rollout ...`.
#[derive(Subcommand)]
enum RolloutCmd {
    /// Wait for the rollout in progress to finish, showing its progress; fails if it is
    /// rolled back or does not finish in time.
    Status {
        /// `workload/NAME` (or just `NAME`).
        target_name: String,
        /// Give up after this long.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        target: Target,
    },
    /// List the revisions the workload has had (the last 10), oldest first.
    History {
        /// `workload/NAME` (or just `NAME`).
        target_name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = remote::GetOutput::Table)]
        output: remote::GetOutput,
        #[command(flatten)]
        target: Target,
    },
    /// Go back to the previous revision (or to --to-revision): its manifest is applied
    /// again, as it was, and rolls out.
    Undo {
        /// `workload/NAME` (or just `NAME`).
        target_name: String,
        /// The revision to go back to (see `rollout history`).
        #[arg(long, value_name = "REVISION")]
        to_revision: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

/// Engine options shared by the commands that load components.
#[derive(clap::Args, Clone, Copy)]
struct EngineArgs {
    /// Load precompiled `.cwasm` components (from `setpoint compile`). They contain native
    /// code, so only allow artifacts you built. Always on in builds without a compiler.
    #[arg(long)]
    allow_precompiled: bool,
    /// Run guests on the Pulley interpreter instead of native code (slower, portable).
    #[arg(long)]
    interpreter: bool,
    /// Compact linear memories: no per-instance 4 GiB reservation (for very many
    /// instances), at the price of bounds-checked memory accesses.
    #[arg(long)]
    compact_memory: bool,
    /// Reserve this many instance slots up front (the fastest spawn and recovery). The
    /// host then holds at most this many instances, and no memory limit may exceed
    /// 64 MiB, the slot size. 0 allocates on demand.
    #[arg(long, value_name = "SLOTS", default_value_t = 0)]
    instance_pool: u32,
}

impl EngineArgs {
    fn apply(self, builder: setpoint::HostBuilder) -> setpoint::HostBuilder {
        let builder = if self.allow_precompiled {
            builder.allow_precompiled(true)
        } else {
            builder
        };
        builder
            .interpreter(self.interpreter)
            .compact_memory(self.compact_memory)
            .instance_pool(self.instance_pool)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(all(debug_assertions, target_os = "linux"))]
    fill_mappings_for_tests();
    // Client commands behave like Unix tools when their output is cut (`get | head`):
    // they end quietly instead of panicking on a broken pipe. The daemon and `run`
    // keep Rust's default (SIGPIPE ignored), so a vanished peer is an error, not death.
    #[cfg(unix)]
    if !matches!(cli.command, Cmd::Daemon { .. } | Cmd::Run { .. }) {
        // SAFETY: setting a signal's disposition to the default before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // A daemon says what it does (applies from --watch, say); commands only warn.
    let default_level = if matches!(cli.command, Cmd::Daemon { .. }) {
        "warn,setpoint::daemon=info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SETPOINT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    // A bounded blocking pool: near the kernel's mapping limit no burst of new threads
    // may take the room the host keeps for itself (see runtime::mappings::reserve).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(setpoint::runtime::mappings::BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Cmd::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&setpoint::manifest::json_schema())
                    .unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Cmd::Validate { files, engine } => runtime.block_on(validate(files, engine)),
        Cmd::Daemon {
            state_dir,
            socket,
            tcp,
            token_file,
            watch,
            dir_roots,
            no_network_grants,
            accept_empty_store,
            engine,
        } => runtime.block_on(daemon(
            setpoint::daemon::DaemonConfig {
                state_dir: state_dir.unwrap_or_else(setpoint::daemon::default_state_dir),
                socket,
                tcp,
                token_file,
                watch,
                dir_roots,
                network_grants: !no_network_grants,
                accept_empty_store,
            },
            engine,
        )),
        Cmd::Apply {
            files,
            dry_run,
            target,
        } => runtime.block_on(remote::apply(target.endpoint(), files, dry_run)),
        Cmd::Get {
            what,
            output,
            target,
        } => {
            let (listing, name) = match what.as_slice() {
                [] => (Ok(remote::Listing::All), None),
                [kind, rest @ ..] => (remote::Listing::parse(kind), rest.first().cloned()),
            };
            let listing = match listing {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(remote::get(target.endpoint(), listing, name, output))
        }
        Cmd::Rollout { action } => match action {
            RolloutCmd::Status {
                target_name,
                timeout,
                target,
            } => runtime.block_on(remote::rollout_status(
                target.endpoint(),
                target_name,
                timeout,
            )),
            RolloutCmd::History {
                target_name,
                output,
                target,
            } => runtime.block_on(remote::rollout_history(
                target.endpoint(),
                target_name,
                output,
            )),
            RolloutCmd::Undo {
                target_name,
                to_revision,
                target,
            } => runtime.block_on(remote::rollout_undo(
                target.endpoint(),
                target_name,
                to_revision,
            )),
        },
        Cmd::Logs {
            target_name,
            instance,
            tail,
            follow,
            target,
        } => runtime.block_on(remote::logs(
            target.endpoint(),
            target_name,
            instance,
            tail,
            follow,
        )),
        Cmd::Events {
            target_name,
            watch,
            output,
            target,
        } => runtime.block_on(remote::events(
            target.endpoint(),
            target_name,
            watch,
            output,
        )),
        Cmd::Describe {
            target_name,
            output,
            target,
        } => runtime.block_on(remote::describe(target.endpoint(), target_name, output)),
        Cmd::Delete {
            names,
            files,
            target,
        } => runtime.block_on(remote::delete(target.endpoint(), names, files)),
        Cmd::Compile {
            component,
            output,
            target,
            compact_memory,
        } => compile(&component, output, target.as_deref(), compact_memory),
        Cmd::Run {
            files,
            run_for,
            output,
            status_every,
            quiet,
            cache_dir,
            no_cache,
            snapshots,
            engine,
        } => {
            let cache_dir = if no_cache {
                None
            } else {
                cache_dir.or_else(default_cache_dir)
            };
            runtime.block_on(run(RunArgs {
                files,
                run_for,
                output,
                status_every,
                quiet,
                cache_dir,
                snapshots,
                engine,
            }))
        }
        Cmd::Policy {
            command:
                PolicyCmd::Test {
                    plugin,
                    snapshot,
                    builtin,
                    output,
                },
        } => runtime.block_on(policy_test(plugin, snapshot, builtin, output)),
    }
}

/// `setpoint daemon`: runs until SIGINT or SIGTERM.
async fn daemon(config: setpoint::daemon::DaemonConfig, engine: EngineArgs) -> ExitCode {
    let builder = engine.apply(Host::builder());
    let mut signals = match StopSignals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = async move { signals.recv().await };
    let result = setpoint::daemon::run(config, builder, stop, |socket| {
        eprintln!("setpoint daemon: serving on {}", socket.display());
    })
    .await;
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("setpoint"))
}

/// `setpoint compile`: precompiles a component for this build's engine settings.
fn compile(
    component: &std::path::Path,
    output: Option<PathBuf>,
    target: Option<&str>,
    compact_memory: bool,
) -> ExitCode {
    #[cfg(feature = "cranelift")]
    {
        let output = output.unwrap_or_else(|| component.with_extension("cwasm"));
        let config = setpoint::runtime::RuntimeConfig {
            compact_memory,
            ..Default::default()
        };
        let bytes = match std::fs::read(component) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: cannot read `{}`: {e}", component.display());
                return ExitCode::FAILURE;
            }
        };
        let started = std::time::Instant::now();
        let compiled = match setpoint::runtime::engine::precompile(&config, target, &bytes) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: cannot compile `{}`: {e:#}", component.display());
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = std::fs::write(&output, &compiled) {
            eprintln!("error: cannot write `{}`: {e}", output.display());
            return ExitCode::FAILURE;
        }
        println!(
            "compiled {} ({} bytes) -> {} ({} bytes) for {} in {} ms",
            component.display(),
            bytes.len(),
            output.display(),
            compiled.len(),
            target.unwrap_or("this machine"),
            started.elapsed().as_millis()
        );
        ExitCode::SUCCESS
    }
    #[cfg(not(feature = "cranelift"))]
    {
        let _ = (output, target, compact_memory);
        eprintln!(
            "error: cannot compile `{}`: this setpoint was built without a compiler (the `cranelift` feature); run `setpoint compile` on a full build",
            component.display()
        );
        ExitCode::FAILURE
    }
}

async fn validate(files: Vec<PathBuf>, engine: EngineArgs) -> ExitCode {
    let workloads = match load_files(&files, &ManifestLimits::default()) {
        Ok(w) => w,
        Err(rejected) => return report(&rejected),
    };
    // Compiling and linking each component is part of validation; nothing is started.
    let host = match engine.apply(Host::builder()).build() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let count = workloads.len();
    // A plan checks exactly what an apply checks, and starts nothing.
    let result = host.plan(workloads).await;
    host.shutdown().await;
    match result {
        Ok(_) => {
            println!("ok: {count} workload(s) in {} file(s)", files.len());
            ExitCode::SUCCESS
        }
        Err(rejected) => report(&rejected),
    }
}

fn report(rejected: &setpoint::Rejected) -> ExitCode {
    eprintln!("{rejected}");
    eprintln!(
        "{} problem(s); nothing was applied",
        rejected.diagnostics.len()
    );
    ExitCode::FAILURE
}

struct RunArgs {
    files: Vec<PathBuf>,
    run_for: Option<Duration>,
    output: Output,
    status_every: Duration,
    quiet: bool,
    cache_dir: Option<PathBuf>,
    snapshots: Option<PathBuf>,
    engine: EngineArgs,
}

async fn run(args: RunArgs) -> ExitCode {
    let mut signals = match StopSignals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let workloads = match load_files(&args.files, &ManifestLimits::default()) {
        Ok(w) => w,
        Err(rejected) => return report(&rejected),
    };
    let mut builder = args.engine.apply(Host::builder());
    if let Some(dir) = &args.cache_dir {
        builder = builder.cache_dir(dir);
    }
    let host = match builder.build() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: cannot start the host: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut events = host.events();
    let mut logs = host.logs();
    let mut interrupted = false;
    tokio::select! {
        applied = host.apply(workloads) => if let Err(rejected) = applied {
            if let Some(why) = host.failure() {
                eprintln!("error: the host's controller died: {why}");
                return ExitCode::FAILURE;
            }
            host.shutdown().await;
            return report(&rejected);
        },
        _ = signals.recv() => {
            eprintln!("interrupted while starting");
            interrupted = true;
        }
    }
    let mut logs_open = !args.quiet;
    let mut printer = tokio::spawn(async move {
        loop {
            tokio::select! {
                // Output first: an instance's last lines come before the event of its end.
                biased;
                line = logs.recv(), if logs_open => match line {
                    Ok(l) => eprintln!("{} | {}", l.instance, l.line),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => eprintln!("log ({n} lines skipped)"),
                    // Both channels close when the host is gone: drain the events still
                    // buffered (the last instances' ends) before stopping.
                    Err(_) => logs_open = false,
                },
                event = events.recv() => match event {
                    Ok(e) => {
                        let level = if e.kind == EventType::Warning { "WARN " } else { "event" };
                        let who = e.instance.as_deref().unwrap_or(&e.workload);
                        eprintln!("{level} {who}: {} {}", e.reason, e.message);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => eprintln!("event ({n} events skipped)"),
                    Err(_) => break,
                },
            }
        }
    });
    let live_table = args.output == Output::Table && std::io::stdout().is_terminal();
    let deadline = args
        .run_for
        .map(|d| setpoint::clock::after_tokio(tokio::time::Instant::now(), d));
    let mut ticker = tokio::time::interval(args.status_every.max(Duration::from_millis(100)));
    let mut last_table = String::new();
    if !interrupted {
        loop {
            tokio::select! {
                why = host.died() => {
                    eprintln!("error: the host's controller died: {why}");
                    printer.abort();
                    return ExitCode::FAILURE;
                }
                _ = signals.recv() => break,
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
                _ = ticker.tick(), if live_table => {
                    let table = table::render(&host.status().await);
                    if table != last_table {
                        println!("{table}");
                        last_table = table;
                    }
                }
            }
        }
    }
    // The status users want is the one they were running, taken before instances stop.
    // Stopping is bounded at any load: a host that does not answer, or does not stop
    // within its longest grace period and a margin, or a second signal, ends the
    // process at once.
    let status = tokio::select! {
        status = host.status() => status,
        _ = tokio::time::sleep(STOP_MARGIN) => force_exit("the host did not answer within 10 s"),
        _ = signals.recv() => force_exit("a second signal"),
    };
    if let Some(dir) = &args.snapshots
        && let Err(e) = write_snapshots(&host, &status, dir).await
    {
        eprintln!("error: writing snapshots to {}: {e}", dir.display());
    }
    let grace = status
        .workloads
        .iter()
        .map(|w| w.spec.termination_grace_period)
        .max()
        .unwrap_or_default();
    tokio::select! {
        _ = host.shutdown() => {}
        _ = tokio::time::sleep(grace.saturating_add(STOP_MARGIN)) => {
            force_exit("the host did not stop within its grace period and 10 s")
        }
        _ = signals.recv() => force_exit("a second signal"),
    }
    // The host is gone, so its event and log channels close: let the printer drain what is
    // still buffered (the last instances' ends) instead of cutting it off.
    if tokio::time::timeout(Duration::from_secs(2), &mut printer)
        .await
        .is_err()
    {
        printer.abort();
    }
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        ),
        Output::Table => println!("{}", table::render(&status)),
    }
    ExitCode::SUCCESS
}

/// A fault for the tests at the kernel's mapping limit, in debug builds only: with
/// `SETPOINT_TEST_FREE_MAPPINGS=N`, the process first maps small regions until only
/// about N mappings are left under `vm.max_map_count`, so the wall comes after a few
/// hundred instances instead of tens of thousands.
#[cfg(all(debug_assertions, target_os = "linux"))]
fn fill_mappings_for_tests() {
    let Some(free) = std::env::var("SETPOINT_TEST_FREE_MAPPINGS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return;
    };
    let (Some(limit), Some(in_use)) = (
        setpoint::runtime::mappings::limit(),
        setpoint::runtime::mappings::in_use(),
    ) else {
        return;
    };
    let wanted = limit.saturating_sub(in_use).saturating_sub(free);
    // One region, every other page made inaccessible: each protection change splits
    // it, so `wanted` mappings cost one mmap and wanted/2 mprotect calls.
    let pages = wanted + 1;
    // SAFETY: an anonymous private mapping that nothing else refers to, and changes of
    // its own pages' protection; it is never unmapped (it lives as long as the process).
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let base = libc::mmap(
            std::ptr::null_mut(),
            pages * page,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if base == libc::MAP_FAILED {
            return;
        }
        for i in (1..pages).step_by(2) {
            libc::mprotect(
                base.cast::<u8>().add(i * page).cast(),
                page,
                libc::PROT_NONE,
            );
        }
    }
}

/// The margin a stopping host gets beyond its longest grace period.
const STOP_MARGIN: Duration = Duration::from_secs(10);

/// Ends the process now, saying why (a stop that would otherwise not be bounded).
fn force_exit(why: &str) -> ! {
    eprintln!("error: stopping at once: {why}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::process::exit(1)
}

async fn write_snapshots(
    host: &Host,
    status: &setpoint::HostStatus,
    dir: &std::path::Path,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for w in &status.workloads {
        if let Some(snapshot) = host.policy_snapshot(&w.name).await {
            let text = serde_json::to_string_pretty(&snapshot).map_err(std::io::Error::other)?;
            std::fs::write(dir.join(format!("{}.json", w.name)), text + "\n")?;
        }
    }
    Ok(())
}

async fn policy_test(
    plugin: Option<PathBuf>,
    snapshot: PathBuf,
    builtin: bool,
    output: Output,
) -> ExitCode {
    use setpoint::policy::snapshot::{ActionRecord, Snapshot};
    let text = match std::fs::read_to_string(&snapshot) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read snapshot {}: {e}", snapshot.display());
            return ExitCode::FAILURE;
        }
    };
    let parsed: Snapshot = match serde_saphyr::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            let at = e
                .location()
                .map_or(String::new(), |l| format!(":{}:{}", l.line(), l.column()));
            eprintln!(
                "{}{at}: error: not a policy snapshot: {}",
                snapshot.display(),
                e.without_snippet()
            );
            return ExitCode::FAILURE;
        }
    };
    let decided: Result<Vec<ActionRecord>, String> = if builtin {
        let replay = parsed.replay(std::time::Instant::now());
        let mut actions = Vec::new();
        setpoint::policy::Policy::reconcile(
            &setpoint::policy::ReplicaPolicy,
            &replay.input(),
            &mut actions,
        );
        Ok(actions.iter().map(ActionRecord::from).collect())
    } else {
        let plugin = plugin.unwrap_or_default();
        let runtime = match setpoint::runtime::Runtime::new(Default::default()) {
            Ok(r) => std::sync::Arc::new(r),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let limits = setpoint::runtime::plugin::PluginLimits::default();
        match setpoint::policy::dry_run(runtime.clone(), &plugin, &parsed, limits).await {
            Ok(result) => {
                runtime.stop_ticker();
                result
            }
            Err(e) => {
                eprintln!("{}: error: {e:#}", plugin.display());
                return ExitCode::FAILURE;
            }
        }
    };
    match decided {
        Ok(actions) => {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&actions).unwrap_or_default()
                ),
                Output::Table => {
                    if actions.is_empty() {
                        println!("(no actions)");
                    }
                    for a in &actions {
                        println!("{}", describe_action(a));
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("error: the plugin {why}; a host would fall back to its built-in policy");
            ExitCode::from(2)
        }
    }
}

fn describe_action(a: &setpoint::policy::snapshot::ActionRecord) -> String {
    use setpoint::policy::snapshot::ActionRecord as A;
    match a {
        A::Spawn { slot } => format!("spawn         slot {slot}"),
        A::Stop { slot } => format!("stop          slot {slot}"),
        A::SpawnSuccessor { slot } => format!("successor     slot {slot}"),
        A::RollBack { message } => format!("roll-back     {message}"),
        A::RequeueAfter { ms } => format!("requeue-after {ms}ms"),
        A::Event {
            warning,
            reason,
            message,
        } => {
            format!(
                "event         {} {reason}: {message}",
                if *warning { "Warning" } else { "Normal" }
            )
        }
        A::MarkFailed { reason, message } => format!("mark-failed   {reason}: {message}"),
    }
}

/// SIGINT and SIGTERM, registered when created: a signal that arrives while the host is
/// still starting is not lost, and never kills the process outright.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
