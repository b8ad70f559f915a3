//! Project automation: `cargo xtask <task>`.
//!
//! - `guests`: make sure the `wasm32-wasip2` target is installed, then build every
//!   example guest in `guest-examples/` (release) for it.
//! - `demo [ARGS]`: build the guests and run `setpoint run specs/demo.yaml [ARGS]`.
//! - `test`: build the guests, check formatting and lints, run every test, and run the
//!   embedding example. This is what CI runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const WASM_TARGET: &str = "wasm32-wasip2";

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
                "--release",
                "--package",
                "setpoint",
                "--",
                "run",
                "specs/demo.yaml",
            ])
            .args(&rest);
            run(cmd)
        }
        "test" => {
            build_guests(&root)?;
            let lint = !rest.iter().any(|a| a == "--no-lint");
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
            run_cargo(
                &root,
                &[
                    "run",
                    "--quiet",
                    "--package",
                    "setpoint",
                    "--example",
                    "embed",
                ],
            )
        }
        _ => {
            eprintln!("usage: cargo xtask <guests | demo [setpoint run args] | test [--no-lint]>");
            bail!("unknown task `{task}`")
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
    let sysroot = Command::new("rustc")
        .current_dir(root)
        .args(["--print", "sysroot"])
        .output();
    if let Ok(out) = sysroot {
        let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if Path::new(&sysroot)
            .join("lib/rustlib")
            .join(WASM_TARGET)
            .is_dir()
        {
            return Ok(());
        }
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
