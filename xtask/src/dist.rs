//! `cargo xtask dist`: the binaries a device ships. Profile `dist` (fat LTO, one codegen
//! unit, optimized for size), then a startup-ordered relink: the functions that run when
//! the host starts and idles are laid out together, so the kernel maps (and keeps
//! resident) a few megabytes of code instead of pages all over a 20 MiB text segment.
//!
//! How: the binary is built with its symbols, run under valgrind's callgrind through
//! the start-up scenarios (`setpoint run` with and without instances, an idle
//! `setpoint daemon`), the functions each executed are written to an order file
//! (warm-start functions first, then those only a compiling start runs), and the binary
//! is linked again with lld's `--symbol-ordering-file`, then stripped. The order is kept
//! in `target/footprint` (or `target/ship`) and grows: a later run links with it first,
//! profiles that binary, and links again only if it saw functions the order lacks. Names
//! the order file has and the binary lacks are ignored, so a stale order only costs
//! memory, never correctness. Without valgrind (installed from apt when missing) the binary ships
//! unordered, and the xtask says so.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::tools::{apt_install, has};
use crate::{cargo, run, target_dir};

/// The shipping profile.
pub const PROFILE: &str = "dist";

/// What is shipped.
#[derive(Clone, Copy)]
pub enum Artifact {
    /// The `setpoint` binary.
    Setpoint,
    /// The embedding example (`host/examples/embed.rs`).
    Embed,
}

impl Artifact {
    fn cargo_args(self) -> [&'static str; 2] {
        match self {
            Artifact::Setpoint => ["--bin", "setpoint"],
            Artifact::Embed => ["--example", "embed"],
        }
    }

    fn built(self, root: &Path) -> PathBuf {
        let dir = target_dir(root).join(PROFILE);
        match self {
            Artifact::Setpoint => dir.join("setpoint"),
            Artifact::Embed => dir.join("examples/embed"),
        }
    }
}

/// A shipped binary.
pub struct Shipped {
    /// The stripped binary.
    pub path: PathBuf,
    /// Functions in its start-up order (0: shipped unordered).
    pub ordered: usize,
}

/// Builds `artifact` with `features` in the shipping profile, orders it by the
/// start-up scenarios run on `component` (`ticker`, as `.wasm` or, for a build without
/// a compiler, as a `.cwasm`; scratch files go to `out/order`), and copies the
/// stripped result to `out/name`.
pub fn ship(
    root: &Path,
    artifact: Artifact,
    features: &[&str],
    component: &Path,
    out: &Path,
    name: &str,
) -> Result<Shipped> {
    let built = artifact.built(root);
    let order = out.join(format!("{name}.order"));
    // An order from an earlier run names the same symbols (only their places differ),
    // so the binary it orders is profiled as well as an unordered one would be; it is
    // linked again only when this run saw functions the order lacks.
    let previous: Option<Vec<String>> = std::fs::read_to_string(&order)
        .ok()
        .map(|text| text.lines().map(str::to_string).collect());
    let linked_with = match &previous {
        Some(listed) => Some(versioned(&order, listed)?),
        None => None,
    };
    link(root, artifact, features, linked_with.as_deref())?;
    let profiled = match artifact {
        Artifact::Setpoint => profile(&built, component, out),
        Artifact::Embed => profile_embed(&built, component, out),
    };
    let ordered = match (profiled, previous) {
        (Ok(functions), previous) => {
            let mut listed = previous.unwrap_or_default();
            let known: std::collections::HashSet<String> = listed.iter().cloned().collect();
            let new: Vec<String> = functions
                .into_iter()
                .filter(|f| !known.contains(f))
                .collect();
            if !new.is_empty() {
                listed.extend(new);
                std::fs::write(&order, listed.join("\n") + "\n")?;
                link(root, artifact, features, Some(&versioned(&order, &listed)?))?;
            }
            listed.len()
        }
        (Err(why), Some(previous)) => {
            eprintln!("xtask: {name} keeps its earlier start-up order: {why:#}");
            previous.len()
        }
        (Err(why), None) => {
            eprintln!("xtask: {name} ships WITHOUT a start-up order: {why:#}");
            0
        }
    };
    let path = out.join(name);
    std::fs::copy(&built, &path)?;
    let mut strip = Command::new("strip");
    strip.arg(&path);
    run(strip).context("stripping needs binutils' `strip`")?;
    Ok(Shipped { path, ordered })
}

/// The copy of the order `listed` that a link names: `NAME.order.N` for an order of N
/// functions (an order only grows, so N names its content). Cargo relinks when a link
/// argument changes, never when a file it names does, so a grown order must have a
/// path of its own.
fn versioned(order: &Path, listed: &[String]) -> Result<PathBuf> {
    let copy = order.with_extension(format!("order.{}", listed.len()));
    if !copy.exists() {
        std::fs::write(&copy, listed.join("\n") + "\n")?;
    }
    Ok(copy)
}

/// `cargo rustc` of the artifact with its symbols (and the order file, if any).
fn link(root: &Path, artifact: Artifact, features: &[&str], order: Option<&Path>) -> Result<()> {
    let mut cmd = cargo(root);
    cmd.args(["rustc", "--profile", PROFILE, "--package", "setpoint"])
        .args(artifact.cargo_args())
        .args(features)
        .args(["--", "-C", "strip=none"]);
    if let Some(order) = order {
        cmd.arg("-C")
            .arg(format!(
                "link-arg=-Wl,--symbol-ordering-file={}",
                order.display()
            ))
            .args(["-C", "link-arg=-Wl,--no-warn-symbol-ordering"]);
    }
    run(cmd).context("building the shipping binary")
}

/// Runs the start-up scenarios under callgrind: the functions of `binary` they executed,
/// warm-start ones first.
fn profile(binary: &Path, component: &Path, out: &Path) -> Result<Vec<String>> {
    ensure_valgrind()?;
    let dir = out.join("order");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let spec = |file: &str, replicas: u32| -> Result<PathBuf> {
        let path = dir.join(file);
        std::fs::write(
            &path,
            format!(
                "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata: {{name: ticker}}\nspec:\n  component: {}\n  replicas: {replicas}\n  env: {{TICK_MS: '500'}}\n",
                component.display()
            ),
        )?;
        Ok(path)
    };
    let idle = spec("idle.yaml", 0)?;
    let one = spec("one.yaml", 1)?;
    let cache = format!("--cache-dir={}", dir.join("cache").display());
    let state = dir.join("state");
    let run_args = |spec: &Path| -> Vec<String> {
        vec![
            "run".into(),
            spec.display().to_string(),
            cache.clone(),
            "--allow-precompiled".into(),
            "--for".into(),
            "3s".into(),
            "--quiet".into(),
            "-o".into(),
            "json".into(),
        ]
    };
    // The first run fills the compile cache for valgrind's CPU; the others start warm.
    let cold = callgrind(binary, &run_args(&one), &dir.join("cold.out"), None)?;
    let mut warm = callgrind(binary, &run_args(&one), &dir.join("warm.out"), None)?;
    warm.extend(callgrind(
        binary,
        &run_args(&idle),
        &dir.join("idle.out"),
        None,
    )?);
    let daemon = vec![
        "daemon".to_string(),
        format!("--state-dir={}", state.display()),
    ];
    warm.extend(callgrind(
        binary,
        &daemon,
        &dir.join("daemon.out"),
        Some(Duration::from_secs(4)),
    )?);
    in_order(warm, cold)
}

/// The embed example's start-up: `embed COMPONENT`, held a moment once ready.
fn profile_embed(binary: &Path, component: &Path, out: &Path) -> Result<Vec<String>> {
    ensure_valgrind()?;
    let dir = out.join("order");
    std::fs::create_dir_all(&dir)?;
    let args = [component.display().to_string()];
    let functions = callgrind(binary, &args, &dir.join("embed.out"), None)?;
    in_order(functions, Vec::new())
}

/// The functions of the warm start, then those only the cold one ran, once each.
fn in_order(warm: Vec<String>, cold: Vec<String>) -> Result<Vec<String>> {
    let mut seen = std::collections::HashSet::new();
    let functions: Vec<String> = warm
        .into_iter()
        .chain(cold)
        .filter(|f| seen.insert(f.clone()))
        .collect();
    if functions.len() < 100 {
        bail!(
            "callgrind saw only {} functions: is the binary stripped?",
            functions.len()
        );
    }
    Ok(functions)
}

/// Runs `binary args` under callgrind (stopped with SIGTERM after `stop_after`, if
/// given) and returns the mangled names of the functions of `binary` it executed, in
/// the order callgrind lists them.
fn callgrind(
    binary: &Path,
    args: &[String],
    out: &Path,
    stop_after: Option<Duration>,
) -> Result<Vec<String>> {
    let mut child = Command::new("valgrind")
        .env("SETPOINT_EMBED_HOLD_MS", "1500")
        .args([
            "--tool=callgrind",
            "--dump-instr=no",
            "--compress-strings=no",
            "--demangle=no",
        ])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(binary)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start valgrind")?;
    if let Some(after) = stop_after {
        std::thread::sleep(after);
        // A graceful stop, so that callgrind writes its profile.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let status = child.wait()?;
    if !status.success() && stop_after.is_none() {
        bail!(
            "{} {} under callgrind failed ({status})",
            binary.display(),
            args.join(" ")
        );
    }
    let text = std::fs::read_to_string(out)
        .with_context(|| format!("callgrind wrote no {}", out.display()))?;
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut object = String::new();
    let mut functions = Vec::new();
    for line in text.lines() {
        if let Some(ob) = line.strip_prefix("ob=") {
            object = ob.to_string();
        } else if let Some(f) = line.strip_prefix("fn=")
            && object.ends_with(&name)
        {
            functions.push(f.to_string());
        }
    }
    Ok(functions)
}

/// Installs valgrind from apt when it is missing.
fn ensure_valgrind() -> Result<()> {
    if !has("valgrind") {
        apt_install(&["valgrind"])?;
    }
    if !has("valgrind") {
        bail!("apt-get installed valgrind but it does not run");
    }
    Ok(())
}
