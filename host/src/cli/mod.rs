//! Command-line interface: argument parsing and presentation only. Everything it does
//! goes through the public [`setpoint::Host`] API, or through the daemon's API as its
//! client. One file per command group:
//!
//! | file | commands |
//! | --- | --- |
//! | `run.rs` | `run` (the host in the foreground) |
//! | `daemon.rs` | `daemon` |
//! | `check.rs` | `validate`, `compile` |
//! | `policy.rs` | `policy test` |
//! | `apply.rs` | `apply`, `delete` (daemon client) |
//! | `get.rs` | `get`, `describe` (daemon client) |
//! | `logs.rs` | `logs`, `events` (daemon client) |
//! | `rollout.rs` | `rollout status`, `history`, `undo` (daemon client) |
//!
//! Beside them: `client.rs` (the typed API client), `objects.rs` (`KIND/NAME`),
//! `output.rs` (formats and tables), `table.rs` (`run`'s status table), `signals.rs`.

mod apply;
mod check;
mod client;
mod daemon;
mod diff;
mod explain;
mod get;
mod logs;
mod nodes;
mod notify;
mod objects;
mod output;
mod policy;
mod progress;
mod rollout;
mod run;
mod scale;
mod screen;
mod signals;
mod table;
mod top;
mod wait;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// setpoint: keep declared WebAssembly workloads running.
#[derive(Parser)]
#[command(name = "setpoint", version, about)]
struct Cli {
    /// How log lines on stderr are written: `text` (coloured on a terminal only) or
    /// `json` (one object per line, for journald or a log shipper). Default: text, or
    /// $SETPOINT_LOG_FORMAT.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Cmd,
}

/// Whether log lines are JSON (`--log-format json`): then the daemon's own messages go
/// through the log as well, so that every line on stderr is one JSON object.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether stderr carries JSON log lines only.
pub fn json_logs() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

/// `--log-format`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Plain lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run manifests in the foreground until Ctrl-C, SIGTERM or --for elapses.
    Run(run::RunArgs),
    /// Run the daemon: keep the applied desired state (durably, in --state-dir) running,
    /// and serve the control API on a Unix socket (mode 0600).
    Daemon(daemon::DaemonArgs),
    /// Apply manifests to the daemon, all or nothing across every document.
    Apply(apply::ApplyArgs),
    /// List workloads, jobs or instances known to the daemon.
    Get(get::GetArgs),
    /// Show one workload or job in detail: revision, conditions, progress, instances,
    /// events.
    Describe(get::DescribeArgs),
    /// Delete workloads and jobs by name or by the manifests that declared them.
    Delete(apply::DeleteArgs),
    /// Print a workload's or job's recent output (the daemon keeps the last 1000
    /// lines of each); with -f, keep printing new lines.
    Logs(logs::LogsArgs),
    /// Print recent events (the daemon keeps the last 1000, across restarts); with -w,
    /// keep printing new ones.
    Events(logs::EventsArgs),
    /// Watch, list or undo a workload's rollouts.
    Rollout {
        #[command(subcommand)]
        action: rollout::RolloutCmd,
    },
    /// Check manifests and their components without running anything.
    Validate(check::ValidateArgs),
    /// Compile a component ahead of time into a `.cwasm` that hosts of this same setpoint
    /// build load without compiling (and that builds without a compiler can run).
    Compile(check::CompileArgs),
    /// Print the manifest format's JSON Schema.
    Schema,
    /// Describe a manifest field (`setpoint explain spec.http.retry`): its type, what
    /// it means, and its fields.
    Explain(explain::ExplainArgs),
    /// Print this setpoint's version, its wasmtime, and what the build can do.
    Version,
    /// Work with policy plugins.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCmd,
    },
    /// Set a workload's replica count (kept across restarts, until its manifest is
    /// applied again).
    Scale(scale::ScaleArgs),
    /// Show what an apply of the manifests would change, field by field, changing
    /// nothing (exit 0: no changes, 1: changes, 2: an error).
    Diff(diff::DiffArgs),
    /// Show what each live instance uses now (memory, CPU%), busiest first, refreshed.
    Top(top::TopArgs),
    /// Wait until workloads or jobs are ready, complete, failed or deleted (exit 1 on
    /// timeout, or at once when the state can no longer come).
    Wait(wait::WaitArgs),
    /// Print a shell completion script: `source <(setpoint completion bash)`, or save it
    /// where your shell loads completions from.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Where compiled components are cached: shared by every command that compiles, so
/// that a big component (an 18 MB Python plugin) is compiled once, not on every run.
#[derive(clap::Args, Clone)]
struct CacheArgs {
    /// Directory for compiled components (default: $XDG_CACHE_HOME/setpoint, or
    /// ~/.cache/setpoint).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<std::path::PathBuf>,
    /// Do not cache compiled components on disk.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
}

impl CacheArgs {
    /// The cache directory in effect, if any.
    fn dir(&self) -> Option<std::path::PathBuf> {
        if self.no_cache {
            return None;
        }
        self.cache_dir.clone().or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache"))
                })?;
            Some(base.join("setpoint"))
        })
    }
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
    /// Run components that use the component model's async ABI (jco's QuickJS backend
    /// makes them). It slows every call into every guest a little.
    #[arg(long)]
    component_model_async: bool,
    /// Reserve this many instance slots up front (the fastest spawn and recovery). The
    /// host then holds at most this many instances, and no memory limit may exceed
    /// 64 MiB, the slot size. 0 allocates on demand.
    #[arg(long, value_name = "SLOTS", default_value_t = 0)]
    instance_pool: u32,
    /// Spares per workload whose spec sets none: instances instantiated ahead of need,
    /// so a replacement is a wake-up rather than an instantiation. 0 turns them off.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=16))]
    spares: u32,
    /// Connections each HTTP listener holds open at once; more wait in the backlog.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    http_max_connections: usize,
    /// Longest a client may take to send a request head; also how long an idle
    /// keep-alive connection is kept.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = setpoint::manifest::units::parse_duration)]
    http_header_timeout: std::time::Duration,
    /// Largest HTTP request head (request line and headers); larger gets 431.
    #[arg(long, value_name = "SIZE", default_value = "64Ki", value_parser = setpoint::manifest::units::parse_bytes)]
    http_max_head: u64,
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
            .component_model_async(self.component_model_async)
            .instance_pool(self.instance_pool)
            .spares(self.spares)
            .http_limits(setpoint::FrontConfig {
                max_connections: self.http_max_connections,
                header_read_timeout: self.http_header_timeout,
                max_head_bytes: usize::try_from(self.http_max_head).unwrap_or(usize::MAX),
            })
    }
}

/// Output formats of `run` and `policy test`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// `setpoint version`: the version, the engine, and the build's features.
fn version() -> String {
    let compiler = if cfg!(feature = "cranelift") {
        "cranelift (compiles components)"
    } else {
        "none (runs precompiled components only)"
    };
    let pulley = if cfg!(feature = "pulley") {
        "yes"
    } else {
        "no"
    };
    format!(
        "setpoint {}\nwasmtime {}\ncompiler: {compiler}\npulley interpreter: {pulley}\nmanifest apiVersion: {}",
        env!("CARGO_PKG_VERSION"),
        setpoint::runtime::engine::WASMTIME_VERSION,
        setpoint::manifest::API_VERSION
    )
}

/// Prints a rejected manifest's problems; the exit status to end with.
fn report(rejected: &setpoint::Rejected) -> ExitCode {
    eprintln!("{rejected}");
    eprintln!(
        "{} problem(s); nothing was applied",
        rejected.diagnostics.len()
    );
    ExitCode::FAILURE
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(all(debug_assertions, target_os = "linux"))]
    run::fill_mappings_for_tests();
    // Client commands behave like Unix tools when their output is cut (`get | head`):
    // they end quietly instead of panicking on a broken pipe. The daemon and `run`
    // keep Rust's default (SIGPIPE ignored), so a vanished peer is an error, not death.
    #[cfg(unix)]
    if !matches!(cli.command, Cmd::Daemon(_) | Cmd::Run(_)) {
        // SAFETY: setting a signal's disposition to the default before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // A daemon says what it does (applies from --watch, say); commands only warn.
    let default_level = if matches!(cli.command, Cmd::Daemon(_)) {
        "warn,setpoint::daemon=info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SETPOINT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let format =
        cli.log_format.or_else(
            || match std::env::var("SETPOINT_LOG_FORMAT").ok()?.as_str() {
                "json" => Some(LogFormat::Json),
                _ => Some(LogFormat::Text),
            },
        );
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == Some(LogFormat::Json) {
        JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
        logs.json().init();
    } else {
        // journald and files get plain text; a terminal gets colour.
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    // malloc's settings for many instances, before any thread makes a heap of its own.
    if matches!(cli.command, Cmd::Daemon(_) | Cmd::Run(_)) {
        setpoint::runtime::malloc::tune();
    }
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
        Cmd::Explain(args) => explain::explain(args),
        Cmd::Completion { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "setpoint",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Cmd::Version => {
            println!("{}", version());
            ExitCode::SUCCESS
        }
        Cmd::Validate(args) => runtime.block_on(check::validate(args)),
        Cmd::Compile(args) => check::compile(args),
        Cmd::Daemon(args) => runtime.block_on(daemon::daemon(args)),
        Cmd::Run(args) => runtime.block_on(run::run(args)),
        Cmd::Policy { command } => runtime.block_on(policy::run(command)),
        Cmd::Apply(args) => runtime.block_on(apply::apply(args)),
        Cmd::Delete(args) => runtime.block_on(apply::delete(args)),
        Cmd::Get(args) => runtime.block_on(get::get(args)),
        Cmd::Describe(args) => runtime.block_on(get::describe(args)),
        Cmd::Logs(args) => runtime.block_on(logs::logs(args)),
        Cmd::Events(args) => runtime.block_on(logs::events(args)),
        Cmd::Rollout { action } => runtime.block_on(rollout::run(action)),
        Cmd::Wait(args) => runtime.block_on(wait::wait(args)),
        Cmd::Scale(args) => runtime.block_on(scale::scale(args)),
        Cmd::Diff(args) => runtime.block_on(diff::diff(args)),
        Cmd::Top(args) => runtime.block_on(top::top(args)),
    }
}

/// The components (and policy plugins) `workloads` name, for the compile spinner.
fn components_of(workloads: &[setpoint::manifest::Workload]) -> Vec<std::path::PathBuf> {
    workloads
        .iter()
        .flat_map(|w| {
            std::iter::once(w.spec.component.clone())
                .chain(w.spec.policy.as_ref().map(|p| p.plugin.clone()))
        })
        .collect()
}
