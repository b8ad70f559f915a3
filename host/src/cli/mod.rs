//! Command-line interface: argument parsing and presentation only. Everything it does
//! goes through the public [`setpoint::Host`] API.

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
    },
    /// Check manifests and their components without running anything.
    Validate {
        /// Manifest files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the manifest format's JSON Schema.
    Schema,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SETPOINT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
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
        Cmd::Validate { files } => runtime.block_on(validate(files)),
        Cmd::Run {
            files,
            run_for,
            output,
            status_every,
            quiet,
            cache_dir,
            no_cache,
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
            }))
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("setpoint"))
}

async fn validate(files: Vec<PathBuf>) -> ExitCode {
    let workloads = match load_files(&files, &ManifestLimits::default()) {
        Ok(w) => w,
        Err(rejected) => return report(&rejected),
    };
    // Compiling and linking each component is part of validation; nothing is started.
    let host = match Host::builder().build() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let count = workloads.len();
    let mut checked = Vec::new();
    for w in workloads {
        let mut probe = w.clone();
        probe.spec.replicas = 0;
        checked.push(probe);
    }
    let result = host.apply(checked).await;
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
    let mut builder = Host::builder();
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
            host.shutdown().await;
            return report(&rejected);
        },
        _ = signals.recv() => {
            eprintln!("interrupted while starting");
            interrupted = true;
        }
    }
    let quiet = args.quiet;
    let printer = tokio::spawn(async move {
        loop {
            tokio::select! {
                // Output first: an instance's last lines come before the event of its end.
                biased;
                line = logs.recv(), if !quiet => match line {
                    Ok(l) => eprintln!("{} | {}", l.instance, l.line),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => eprintln!("log ({n} lines skipped)"),
                    Err(_) => break,
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
    let deadline = args.run_for.map(|d| tokio::time::Instant::now() + d);
    let mut ticker = tokio::time::interval(args.status_every.max(Duration::from_millis(100)));
    let mut last_table = String::new();
    if !interrupted {
        loop {
            tokio::select! {
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
    let status = host.status().await;
    host.shutdown().await;
    printer.abort();
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        ),
        Output::Table => println!("{}", table::render(&status)),
    }
    ExitCode::SUCCESS
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
