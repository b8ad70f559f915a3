//! Project automation: `cargo xtask <task>`.
//!
//! - `guests`: make sure the `wasm32-wasip2` target is installed, then build every
//!   example guest in `guest-examples/` (release) for it.
//! - `demo [ARGS]`: build the guests and run `setpoint run specs/demo.yaml specs/jobs.yaml specs/http.yaml [ARGS]`.
//! - `test`: build the guests, check formatting and lints, run every test, run the
//!   embedding examples, and check the minimal (no compiler) build and the aarch64
//!   build. This is what CI runs.
//! - `footprint`: build the release binaries and measure size, RSS and start-up time.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod footprint;

const WASM_TARGET: &str = "wasm32-wasip2";
/// What `cargo xtask` with no task (or an unknown one) prints.
const USAGE: &str = "usage: cargo xtask <task>

tasks:
  guests      build the example guests (installs the wasm32-wasip2 target if needed)
  demo [ARGS] build the guests and run `setpoint run specs/demo.yaml specs/jobs.yaml specs/http.yaml [ARGS]`
  test        build the guests, check formatting and lints, run every test (what CI runs);
              `test --no-lint` skips formatting and lints
  footprint   build the release binaries and measure size, RSS and start-up time";
/// The cross target CI checks that the host builds for.
const ARM_TARGET: &str = "aarch64-unknown-linux-gnu";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = project_root();
    match task.as_str() {
        "guests" => build_guests(&root),
        "demo" => {
            build_guests(&root)?;
            let mut cmd = cargo(&root);
            cmd.args([
                "run",
                "--profile",
                "demo",
                "--package",
                "setpoint",
                "--",
                "run",
                "specs/demo.yaml",
                "specs/jobs.yaml",
                "specs/http.yaml",
            ])
            .args(&rest);
            run(cmd)
        }
        "test" => {
            build_guests(&root)?;
            let lint = !rest.iter().any(|a| a == "--no-lint");
            let started = std::time::Instant::now();
            if lint {
                run_cargo(&root, &["fmt", "--all", "--", "--check"])
                    .context("formatting: run `cargo fmt --all`")?;
                run_cargo(
                    &root,
                    &[
                        "clippy",
                        "--workspace",
                        "--all-targets",
                        "--",
                        "-D",
                        "warnings",
                    ],
                )?;
            }
            run_cargo(&root, &["test", "--workspace"])?;
            for example in ["embed", "device"] {
                run_cargo(
                    &root,
                    &[
                        "run",
                        "--quiet",
                        "--package",
                        "setpoint",
                        "--example",
                        example,
                    ],
                )?;
            }
            // The device build: no compiler, precompiled components only.
            run_cargo(
                &root,
                &[
                    "check",
                    "--package",
                    "setpoint",
                    "--lib",
                    "--bins",
                    "--no-default-features",
                    "--features",
                    "pulley",
                ],
            )?;
            let arm = check_arm(&root)?;
            println!(
                "xtask test: ok in {}s: {}every test, the embed and device examples, the minimal build{}",
                started.elapsed().as_secs(),
                if lint { "formatting, lints, " } else { "" },
                if arm {
                    ", the aarch64 build"
                } else {
                    " (the aarch64 check was skipped)"
                }
            );
            Ok(())
        }
        "footprint" => {
            build_guests(&root)?;
            footprint::run(&root)
        }
        "" | "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            // Said plainly, without a backtrace: the task was only misspelt.
            eprintln!("error: unknown task `{task}`");
            std::process::exit(2)
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn run_cargo(root: &Path, args: &[&str]) -> Result<()> {
    let mut cmd = cargo(root);
    cmd.args(args);
    run(cmd)
}

fn run(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Installs the wasm target through rustup when it is missing (rust-toolchain.toml lists
/// it, but rustup does not add targets to a toolchain that is already installed).
fn ensure_wasm_target(root: &Path) -> Result<()> {
    if target_installed(root, WASM_TARGET) {
        return Ok(());
    }
    eprintln!("xtask: installing the {WASM_TARGET} target with rustup");
    let status = Command::new("rustup")
        .current_dir(root)
        .args(["target", "add", WASM_TARGET])
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => bail!(
            "the {WASM_TARGET} target is missing and could not be installed; run `rustup target add {WASM_TARGET}` in {}",
            root.display()
        ),
    }
}

/// `cargo check` of the library and binary for aarch64 Linux. Checking never links, so
/// when no aarch64 C compiler is installed the C helpers of wasmtime and zstd are
/// compiled by the host's `gcc` just to satisfy their build scripts (set
/// `CC_aarch64_unknown_linux_gnu` to a real cross compiler to override).
/// Checks that the host builds for aarch64; false if the check had to be skipped.
fn check_arm(root: &Path) -> Result<bool> {
    if !target_installed(root, ARM_TARGET) {
        eprintln!("xtask: installing the {ARM_TARGET} target with rustup");
        let added = Command::new("rustup")
            .current_dir(root)
            .args(["target", "add", ARM_TARGET])
            .status();
        if !added.is_ok_and(|s| s.success()) {
            // Only the target's download can fail here, never the check itself: a machine
            // without access to rustup's servers skips the check, loudly.
            eprintln!(
                "xtask: WARNING: the aarch64 check was SKIPPED: the {ARM_TARGET} target could not be installed (run `rustup target add {ARM_TARGET}`)"
            );
            return Ok(false);
        }
    }
    let mut cmd = cargo(root);
    cmd.args([
        "check",
        "--package",
        "setpoint",
        "--lib",
        "--bins",
        "--target",
        ARM_TARGET,
    ]);
    let cross_cc = Command::new("aarch64-linux-gnu-gcc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !cross_cc && std::env::var_os("CC_aarch64_unknown_linux_gnu").is_none() {
        cmd.env("CC_aarch64_unknown_linux_gnu", "gcc")
            .env("AR_aarch64_unknown_linux_gnu", "ar");
    }
    run(cmd).context("checking the aarch64 build")?;
    Ok(true)
}

fn target_installed(root: &Path, target: &str) -> bool {
    let Ok(out) = Command::new("rustc")
        .current_dir(root)
        .args(["--print", "sysroot"])
        .output()
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(target)
        .is_dir()
}

fn build_guests(root: &Path) -> Result<()> {
    ensure_wasm_target(root)?;
    let mut cmd = cargo(root);
    cmd.args([
        "build",
        "--release",
        "--target",
        WASM_TARGET,
        "--manifest-path",
        "guest-examples/Cargo.toml",
    ]);
    // The guests' own target dir keeps wasm builds from invalidating the host's.
    cmd.env_remove("CARGO_TARGET_DIR");
    run(cmd).context("building the example guests")
}
