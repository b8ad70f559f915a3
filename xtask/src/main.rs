//! Project automation: `cargo xtask <task>`.
//!
//! - `guests`: make sure the `wasm32-wasip2` target is installed, then build every
//!   example guest in `guest-examples/` (release) for it, and the Python and JavaScript
//!   ones with their toolchains (`polyglot.rs`).
//! - `demo [ARGS]`: build the Rust guests and run `setpoint run specs/demo.yaml specs/jobs.yaml specs/http.yaml [ARGS]`.
//! - `test`: build the guests, check formatting and lints, run every test, run the
//!   embedding examples, check that the library builds alone (no daemon, CLI or HTTP),
//!   and cross-build the device binary for aarch64 and run it under qemu (`arm.rs`).
//!   This is what CI runs.
//! - `arm`: the aarch64 step of `test` alone (cross-build, run under qemu; `arm.rs`).
//! - `dist`: build the shipping `setpoint` (profile `dist`, start-up ordered; `dist.rs`).
//! - `footprint`: build the shipping binaries and measure size, RSS and start-up time.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod arm;
mod dist;
mod footprint;
mod polyglot;
mod tools;

const WASM_TARGET: &str = "wasm32-wasip2";
/// What `cargo xtask` with no task (or an unknown one) prints.
const USAGE: &str = "usage: cargo xtask <task>

tasks:
  guests      build the example guests (installs the wasm32-wasip2 target if needed, and
              componentize-py and jco for the Python and JavaScript ones)
  demo [ARGS] build the guests and run `setpoint run specs/demo.yaml specs/jobs.yaml specs/http.yaml [ARGS]`
  test        build the guests, check formatting and lints, run every test (what CI runs);
              `test --no-lint` skips formatting and lints
  arm         cross-build for aarch64 and run the embed example and the demo specs under qemu
  dist        build the shipping binaries (profile `dist`, start-up ordered) into target/ship
  footprint   build the shipping binaries and measure size, RSS and start-up time";
/// The features every build of `cargo xtask test` uses (see `test`).
const ALL_ARCH: &str = "setpoint/all-arch";
/// Crates the library alone must not depend on: the daemon's, the CLI's and HTTP's.
const NOT_IN_THE_LIBRARY: &[&str] = &[
    "async-nats",
    "axum",
    "clap",
    "hyper",
    "notify",
    "redb",
    "rustls",
    "sd-notify",
    "tracing-subscriber",
    "wasmtime-wasi-http",
];

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = project_root();
    match task.as_str() {
        "guests" => {
            build_guests(&root)?;
            polyglot::build(&root)
        }
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
            polyglot::build(&root)?;
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
            // `all-arch` lets this machine's `setpoint` precompile guests for the
            // aarch64 run; every cargo step below builds with the same features, so
            // wasmtime is built once.
            run_cargo(&root, &["test", "--workspace", "--features", ALL_ARCH])?;
            for example in ["embed", "device"] {
                run_cargo(
                    &root,
                    &[
                        "run",
                        "--quiet",
                        "--package",
                        "setpoint",
                        "--features",
                        ALL_ARCH,
                        "--example",
                        example,
                    ],
                )?;
            }
            library_alone(&root)?;
            let host_setpoint = target_dir(&root).join("debug/setpoint");
            let arm = arm::run_arm(&root, &host_setpoint)?;
            if !matches!(arm, arm::Outcome::Ran) {
                // The device build (no compiler, precompiled components only), which
                // the aarch64 run would have built.
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
                        "cli,pulley",
                    ],
                )?;
            }
            println!(
                "xtask test: ok in {}s: {}every test, the embed and device examples, the library alone, {}",
                started.elapsed().as_secs(),
                if lint { "formatting, lints, " } else { "" },
                match arm {
                    arm::Outcome::Ran => "the aarch64 build run under qemu".to_string(),
                    arm::Outcome::Checked(why) =>
                        format!("the minimal build; the aarch64 build checked, not run ({why})"),
                    arm::Outcome::Skipped(why) =>
                        format!("the minimal build; the aarch64 build SKIPPED ({why})"),
                }
            );
            Ok(())
        }
        "arm" => {
            build_guests(&root)?;
            run_cargo(
                &root,
                &[
                    "build",
                    "--package",
                    "setpoint",
                    "--bin",
                    "setpoint",
                    "--features",
                    ALL_ARCH,
                ],
            )?;
            match arm::run_arm(&root, &target_dir(&root).join("debug/setpoint"))? {
                arm::Outcome::Ran => Ok(()),
                arm::Outcome::Checked(why) | arm::Outcome::Skipped(why) => {
                    bail!("the aarch64 run was skipped: {why}")
                }
            }
        }
        "dist" => {
            build_guests(&root)?;
            let out = target_dir(&root).join("ship");
            std::fs::create_dir_all(&out)?;
            let ticker = root.join("guest-examples/target/wasm32-wasip2/release/ticker.wasm");
            let shipped = dist::ship(
                &root,
                dist::Artifact::Setpoint,
                &[],
                &ticker,
                &out,
                "setpoint",
            )?;
            println!(
                "xtask dist: {} ({} bytes, {} functions in start-up order)",
                shipped.path.display(),
                std::fs::metadata(&shipped.path)?.len(),
                shipped.ordered
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

pub(crate) fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn run_cargo(root: &Path, args: &[&str]) -> Result<()> {
    let mut cmd = cargo(root);
    cmd.args(args);
    run(cmd)
}

pub(crate) fn run(mut cmd: Command) -> Result<()> {
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

/// The library as an embedder takes it: `cargo tree` shows none of the daemon's, the
/// CLI's or HTTP's dependencies, its unit tests pass in that build, and the embed
/// example builds and runs against it.
fn library_alone(root: &Path) -> Result<()> {
    // The features of the test build, but the daemon, the CLI and HTTP (so that
    // wasmtime is not built again).
    let features = [
        "--no-default-features",
        "--features",
        "cranelift,cache,pulley,all-arch,component-model-async",
    ];
    let mut tree = cargo(root);
    tree.args([
        "tree",
        "--package",
        "setpoint",
        "--edges",
        "normal",
        "--prefix",
        "none",
    ])
    .args(features);
    let output = tree.output().context("cannot start cargo tree")?;
    if !output.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let listed = String::from_utf8_lossy(&output.stdout);
    let found: Vec<&str> = NOT_IN_THE_LIBRARY
        .iter()
        .copied()
        .filter(|name| {
            listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(*name))
        })
        .collect();
    if !found.is_empty() {
        bail!(
            "the library without default features depends on {}: gate them behind the `daemon`, `cli` or `http` feature",
            found.join(", ")
        );
    }
    let mut embed = cargo(root);
    embed
        .args([
            "run",
            "--quiet",
            "--package",
            "setpoint",
            "--example",
            "embed",
        ])
        .args(features);
    run(embed).context("the embed example against the library alone")
}

pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

pub(crate) fn target_installed(root: &Path, target: &str) -> bool {
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
