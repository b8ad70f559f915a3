//! The aarch64 run of `cargo xtask test`: cross-builds the device binary (the CLI with
//! no compiler) and the embedding example for aarch64 Linux with Debian's
//! `gcc-aarch64-linux-gnu`, precompiles the example guests for aarch64 with this
//! machine's `setpoint compile --target`, and runs both under Debian's `qemu-user`,
//! time-bounded: the embed example, and `setpoint run` of the demo specs.
//!
//! The cross toolchain and qemu come from apt when they are missing. Where apt cannot
//! install them (no apt, not root, no network), the run is skipped with the reason
//! printed, and the build is only `cargo check`ed for aarch64 instead.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::tools::{apt_install, has};
use crate::{cargo, run, target_dir, target_installed};

/// The cross target.
pub const ARM_TARGET: &str = "aarch64-unknown-linux-gnu";
/// The cross C compiler and linker (Debian's `gcc-aarch64-linux-gnu`).
const CROSS_CC: &str = "aarch64-linux-gnu-gcc";
/// The emulator (Debian's `qemu-user`).
const QEMU: &str = "qemu-aarch64";
/// Where Debian's cross libc lives, for qemu's dynamic loader.
const SYSROOT: &str = "/usr/aarch64-linux-gnu";
/// The specs `setpoint run` is given, as `cargo xtask demo` runs them.
const SPECS: [&str; 3] = ["specs/demo.yaml", "specs/jobs.yaml", "specs/http.yaml"];
/// How long `setpoint run` runs under qemu, and the most each emulated program may take.
const RUN_FOR: &str = "20s";
const DEADLINE: Duration = Duration::from_secs(180);

/// What the aarch64 step did.
pub enum Outcome {
    /// Built, and run under qemu.
    Ran,
    /// Only checked (the reason the run was skipped).
    Checked(String),
    /// Not even checked: the target could not be installed.
    Skipped(String),
}

/// Builds and runs the host for aarch64 (see the module doc). `host_setpoint` is this
/// machine's `setpoint` built with `all-arch`, used to precompile the guests.
pub fn run_arm(root: &Path, host_setpoint: &Path) -> Result<Outcome> {
    if !target_installed(root, ARM_TARGET) {
        eprintln!("xtask: installing the {ARM_TARGET} target with rustup");
        let added = Command::new("rustup")
            .current_dir(root)
            .args(["target", "add", ARM_TARGET])
            .status();
        if !added.is_ok_and(|s| s.success()) {
            return Ok(Outcome::Skipped(format!(
                "the {ARM_TARGET} target could not be installed (run `rustup target add {ARM_TARGET}`)"
            )));
        }
    }
    if let Err(why) = ensure_tools() {
        eprintln!("xtask: the aarch64 run is SKIPPED: {why:#}; checking the build instead");
        check(root)?;
        return Ok(Outcome::Checked(format!("{why:#}")));
    }
    let mut build = cargo(root);
    build
        .args([
            "build",
            "--package",
            "setpoint",
            "--bin",
            "setpoint",
            "--example",
            "embed",
            "--no-default-features",
            "--features",
            "cli",
            "--target",
            ARM_TARGET,
        ])
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", CROSS_CC)
        .env("CC_aarch64_unknown_linux_gnu", CROSS_CC)
        .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar");
    run(build).context("cross-building for aarch64")?;
    let built = target_dir(root).join(ARM_TARGET).join("debug");
    let out = target_dir(root).join("aarch64-run");
    std::fs::create_dir_all(&out)?;
    let guests = root.join("guest-examples/target/wasm32-wasip2/release");

    // The embed example, with ticker precompiled for aarch64.
    let mut made = Vec::new();
    let ticker = precompile(host_setpoint, &guests.join("ticker.wasm"), &out, &mut made)?;
    let started = Instant::now();
    let said = emulate(&built.join("examples/embed"), &[ticker.as_os_str()], &out)?;
    if !said.contains("ticker ready: true") {
        bail!("the aarch64 embed example did not get its replicas ready:\n{said}");
    }
    println!(
        "xtask: aarch64 embed example ran under qemu in {} ms",
        started.elapsed().as_millis()
    );

    // `setpoint run` of the demo specs, every component precompiled for aarch64.
    let mut specs = Vec::new();
    for spec in SPECS {
        let text = std::fs::read_to_string(root.join(spec))?;
        let mut rewritten = String::new();
        for line in text.lines() {
            let component = line
                .trim_start()
                .strip_prefix("component: ../guest-examples/target/wasm32-wasip2/release/");
            match component.and_then(|c| c.strip_suffix(".wasm")) {
                Some(name) => {
                    let cwasm = precompile(
                        host_setpoint,
                        &guests.join(format!("{name}.wasm")),
                        &out,
                        &mut made,
                    )?;
                    let indent = &line[..line.len() - line.trim_start().len()];
                    rewritten.push_str(&format!("{indent}component: {}\n", cwasm.display()));
                }
                None => {
                    rewritten.push_str(line);
                    rewritten.push('\n');
                }
            }
        }
        let copy = out.join(Path::new(spec).file_name().context("a spec file name")?);
        std::fs::write(&copy, rewritten)?;
        specs.push(copy);
    }
    let mut args: Vec<&std::ffi::OsStr> = vec!["run".as_ref()];
    args.extend(specs.iter().map(|p| p.as_os_str()));
    args.extend(
        [
            "--allow-precompiled",
            "--quiet",
            "--for",
            RUN_FOR,
            "-o",
            "json",
        ]
        .iter()
        .map(std::ffi::OsStr::new),
    );
    let started = Instant::now();
    let status = emulate(&built.join("setpoint"), &args, &out)?;
    check_final_status(&status)?;
    println!(
        "xtask: aarch64 `setpoint run` of {} ran under qemu for {} ms: every workload reached its desired state",
        SPECS.join(" "),
        started.elapsed().as_millis()
    );
    Ok(Outcome::Ran)
}

/// `cargo check` of the library and binary for aarch64 (checking never links; without
/// a cross compiler the C helpers of wasmtime and zstd are compiled by this machine's
/// `gcc` just to satisfy their build scripts).
fn check(root: &Path) -> Result<()> {
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
    if !has(CROSS_CC) && std::env::var_os("CC_aarch64_unknown_linux_gnu").is_none() {
        cmd.env("CC_aarch64_unknown_linux_gnu", "gcc")
            .env("AR_aarch64_unknown_linux_gnu", "ar");
    }
    run(cmd).context("checking the aarch64 build")
}

/// Installs the cross compiler, its libc and qemu-user from apt when missing.
fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = [(CROSS_CC, "gcc-aarch64-linux-gnu"), (QEMU, "qemu-user")]
        .into_iter()
        .filter(|(program, _)| !has(program))
        .map(|(_, package)| package)
        .collect();
    let libc = Path::new(SYSROOT)
        .join("lib/ld-linux-aarch64.so.1")
        .exists();
    if missing.is_empty() && libc {
        return Ok(());
    }
    let mut packages = missing;
    packages.push("libc6-dev-arm64-cross");
    apt_install(&packages)?;
    if !has(CROSS_CC) || !has(QEMU) {
        bail!(
            "apt-get installed {} but they do not run",
            packages.join(" ")
        );
    }
    Ok(())
}

/// `setpoint compile WASM --target aarch64 -o OUT/NAME.cwasm`, unless this run made it.
fn precompile(
    setpoint: &Path,
    wasm: &Path,
    out: &Path,
    made: &mut Vec<PathBuf>,
) -> Result<PathBuf> {
    let name = wasm.file_stem().context("a guest file name")?;
    let cwasm = out.join(name).with_extension("cwasm");
    if made.contains(&cwasm) {
        return Ok(cwasm);
    }
    made.push(cwasm.clone());
    let mut cmd = Command::new(setpoint);
    cmd.arg("compile")
        .arg(wasm)
        .arg("--target")
        .arg(ARM_TARGET)
        .arg("-o")
        .arg(&cwasm);
    run(cmd).with_context(|| format!("precompiling {} for aarch64", wasm.display()))?;
    Ok(cwasm)
}

/// Runs an aarch64 program under qemu in `dir`, killed after [`DEADLINE`]; its stdout
/// if it succeeded.
fn emulate(program: &Path, args: &[&std::ffi::OsStr], dir: &Path) -> Result<String> {
    let mut child = Command::new(QEMU)
        .arg("-L")
        .arg(SYSROOT)
        .arg(program)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {QEMU}"))?;
    let mut stdout = child.stdout.take().context("piped stdout")?;
    let mut stderr = child.stderr.take().context("piped stderr")?;
    let readers = (
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        }),
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        }),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = readers.0.join().unwrap_or_default();
    let err = readers.1.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(out),
        Some(s) => bail!("{} under qemu failed ({s}):\n{err}", program.display()),
        None => bail!(
            "{} under qemu did not finish in {}s:\n{err}",
            program.display(),
            DEADLINE.as_secs()
        ),
    }
}

/// The final status `setpoint run -o json` printed: every service had all its replicas
/// ready, the crash-looping `crasher` was replaced at least once, and every Job
/// succeeded.
fn check_final_status(json: &str) -> Result<()> {
    let status: serde_json::Value =
        serde_json::from_str(json).context("`setpoint run -o json` printed no JSON status")?;
    let workloads = status["workloads"]
        .as_array()
        .context("the status has no workloads")?;
    let mut problems = Vec::new();
    for w in workloads {
        let name = w["name"].as_str().unwrap_or("?");
        let (ready, desired, restarts) = (&w["ready"], &w["desired"], &w["restarts"]);
        println!(
            "xtask: aarch64: {name}: {}, ready {ready} of {desired}, restarts {restarts}",
            w["phase"]
        );
        if w["kind"] == "Job" {
            if w["phase"] != "Succeeded" {
                problems.push(format!("Job {name} did not succeed: {}", w["job"]));
            }
        } else if name == "crasher" {
            if restarts.as_u64().unwrap_or(0) == 0 {
                problems.push("crasher was never replaced".to_string());
            }
        } else if ready != desired || desired.as_u64().unwrap_or(0) == 0 {
            problems.push(format!("{name} has {ready} of {desired} replicas ready"));
        }
    }
    if workloads.len() < 7 {
        problems.push(format!(
            "only {} workloads reported, 7 expected",
            workloads.len()
        ));
    }
    if !problems.is_empty() {
        bail!("the aarch64 run did not converge: {}", problems.join("; "));
    }
    Ok(())
}
