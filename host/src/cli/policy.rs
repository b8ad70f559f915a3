//! `setpoint policy test`: a policy plugin (or the built-in policy) run once on a
//! snapshot, its actions validated as a host would.

use std::path::PathBuf;
use std::process::ExitCode;

use super::Output;

/// `setpoint policy ...`.
#[derive(clap::Subcommand)]
pub enum PolicyCmd {
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
        /// Run a plugin that uses the component model's async ABI.
        #[arg(long)]
        component_model_async: bool,
        #[command(flatten)]
        cache: super::CacheArgs,
    },
}

/// Runs a `policy` command.
pub async fn run(command: PolicyCmd) -> ExitCode {
    match command {
        PolicyCmd::Test {
            plugin,
            snapshot,
            builtin,
            output,
            component_model_async,
            cache,
        } => {
            let engine = setpoint::runtime::RuntimeConfig {
                cache_dir: cache.dir(),
                component_model_async,
                ..Default::default()
            };
            policy_test(plugin, snapshot, builtin, output, engine).await
        }
    }
}

async fn policy_test(
    plugin: Option<PathBuf>,
    snapshot: PathBuf,
    builtin: bool,
    output: Output,
    config: setpoint::runtime::RuntimeConfig,
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
        let runtime = match setpoint::runtime::Runtime::new(config) {
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
