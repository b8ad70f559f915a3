//! `setpoint validate` and `setpoint compile`: manifests and components checked, or
//! compiled ahead of time, with nothing started.

use std::path::PathBuf;
use std::process::ExitCode;

use setpoint::Host;
use setpoint::manifest::{ManifestLimits, load_files};

use super::{EngineArgs, report};

/// `setpoint validate`.
#[derive(clap::Args)]
pub struct ValidateArgs {
    /// Manifest files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    cache: super::CacheArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// `setpoint compile`.
#[derive(clap::Args)]
pub struct CompileArgs {
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
    /// Compile for hosts running with `--component-model-async`.
    #[arg(long)]
    component_model_async: bool,
}

/// Checks the manifests and compiles and links their components; starts nothing.
pub async fn validate(args: ValidateArgs) -> ExitCode {
    let (files, engine, cache) = (args.files, args.engine, args.cache);
    let workloads = match load_files(&files, &ManifestLimits::default()) {
        Ok(w) => w,
        Err(rejected) => return report(&rejected),
    };
    // Compiling and linking each component is part of validation; nothing is started.
    let mut builder = engine.apply(Host::builder());
    if let Some(dir) = cache.dir() {
        builder = builder.cache_dir(dir);
    }
    let host = match builder.build() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let count = workloads.len();
    // A plan checks exactly what an apply checks, and starts nothing.
    let spinner = super::progress::Spinner::start(format!(
        "compiling {}",
        super::progress::describe(&super::components_of(&workloads))
    ));
    let result = host.plan(workloads).await;
    drop(spinner);
    host.shutdown().await;
    match result {
        Ok(_) => {
            println!("ok: {count} workload(s) in {} file(s)", files.len());
            ExitCode::SUCCESS
        }
        Err(rejected) => report(&rejected),
    }
}

/// `setpoint compile`: precompiles a component for this build's engine settings.
pub fn compile(args: CompileArgs) -> ExitCode {
    let (component, output, target, compact_memory) = (
        args.component.as_path(),
        args.output,
        args.target.as_deref(),
        args.compact_memory,
    );
    #[cfg(feature = "cranelift")]
    {
        let output = output.unwrap_or_else(|| component.with_extension("cwasm"));
        let config = setpoint::runtime::RuntimeConfig {
            compact_memory,
            component_model_async: args.component_model_async,
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
        let spinner = super::progress::Spinner::start(format!(
            "compiling {}",
            super::progress::describe(&[component.to_path_buf()])
        ));
        let compiled = setpoint::runtime::engine::precompile(&config, target, &bytes);
        drop(spinner);
        let compiled = match compiled {
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
