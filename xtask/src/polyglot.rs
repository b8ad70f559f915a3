//! The guests written in Python and JavaScript (policy plugins, and a reactor on jco's
//! QuickJS backend, which uses the component model's async ABI), built with their own
//! toolchains from their registries, pinned: componentize-py from PyPI into a venv under `target/tools/python`,
//! and jco with componentize-js from npm into `guest-examples/policy-js/node_modules`
//! (its `package.json` pins the versions and the preview2-shim override, its lock file
//! the rest). They land beside the Rust guests in `guest-examples/target/wasm32-wasip2/
//! release/`. Where a toolchain cannot be installed the guest is skipped with the reason,
//! except under CI (`CI` set), where that is an error: CI's tests need them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The componentize-py release the Python guest is built with.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// One guest built by a non-Rust toolchain.
struct Guest {
    /// Shown in messages.
    name: &'static str,
    /// Its directory under `guest-examples/`.
    dir: &'static str,
    /// The source file in it.
    source: &'static str,
    /// The component it becomes.
    output: &'static str,
}

const PYTHON: Guest = Guest {
    name: "the Python policy plugin",
    dir: "policy-python",
    source: "app.py",
    output: "policy_python.wasm",
};

const JAVASCRIPT: Guest = Guest {
    name: "the JavaScript policy plugin",
    dir: "policy-js",
    source: "app.js",
    output: "policy_js.wasm",
};

/// The same plugin, built with jco's QuickJS backend (the component model's async ABI).
const JAVASCRIPT_QUICKJS: Guest = Guest {
    name: "the JavaScript policy plugin on QuickJS",
    dir: "policy-js",
    source: "app.js",
    output: "policy_js_qjs.wasm",
};

/// A reactor workload in JavaScript, built with the QuickJS backend.
const REACTOR_QUICKJS: Guest = Guest {
    name: "the JavaScript reactor on QuickJS",
    dir: "hello-js",
    source: "app.js",
    output: "hello_js.wasm",
};

/// Builds the Python and JavaScript guests that are out of date.
pub fn build(root: &Path) -> Result<()> {
    let out = root.join("guest-examples/target/wasm32-wasip2/release");
    std::fs::create_dir_all(&out)?;
    let wit = root.join("wit/policy");
    let python = || -> Result<()> {
        let venv = crate::target_dir(root).join("tools/python");
        let tool = componentize_py(&venv)?;
        let mut cmd = Command::new(tool);
        cmd.current_dir(root.join("guest-examples").join(PYTHON.dir))
            .arg("--quiet")
            .arg("-d")
            .arg(&wit)
            .args(["-w", "plugin", "componentize", "app", "-o"])
            .arg(out.join(PYTHON.output));
        crate::run(cmd)
    };
    let jco_dir = root.join("guest-examples").join(JAVASCRIPT.dir);
    // `jco componentize` of `guest` for `world` of the WIT at `wit`, with `backend`.
    let jco = |guest: &Guest, wit: &Path, world: &str, backend: &str| -> Result<()> {
        let jco = npm_install(&jco_dir)?;
        let mut cmd = Command::new(jco);
        cmd.current_dir(root.join("guest-examples").join(guest.dir))
            .args(["componentize", guest.source, "--backend", backend, "--wit"])
            .arg(wit)
            .args(["--world-name", world, "-o"])
            .arg(out.join(guest.output));
        crate::run(cmd)
    };
    let workload_wit = root.join("wit/workload");
    let javascript = || jco(&JAVASCRIPT, &wit, "plugin", "starlingmonkey");
    let javascript_quickjs = || jco(&JAVASCRIPT_QUICKJS, &wit, "plugin", "quickjs");
    let reactor_quickjs = || jco(&REACTOR_QUICKJS, &workload_wit, "reactor", "quickjs");
    let policy_wit = wit.join("policy.wit");
    let reactor_wit = workload_wit.join("workload.wit");
    // A changed toolchain pin rebuilds what it builds.
    let jco_lock = jco_dir.join("package-lock.json");
    for (guest, build, wit, toolchain) in [
        (
            &PYTHON,
            &python as &dyn Fn() -> Result<()>,
            &policy_wit,
            None,
        ),
        (&JAVASCRIPT, &javascript, &policy_wit, Some(&jco_lock)),
        (
            &JAVASCRIPT_QUICKJS,
            &javascript_quickjs,
            &policy_wit,
            Some(&jco_lock),
        ),
        (
            &REACTOR_QUICKJS,
            &reactor_quickjs,
            &reactor_wit,
            Some(&jco_lock),
        ),
    ] {
        let source = root
            .join("guest-examples")
            .join(guest.dir)
            .join(guest.source);
        let output = out.join(guest.output);
        let mut inputs = vec![source.as_path(), wit.as_path()];
        inputs.extend(toolchain.map(|p| p.as_path()));
        if up_to_date(&output, &inputs) {
            continue;
        }
        eprintln!("xtask: building {} ({})", guest.name, guest.output);
        if let Err(e) = build() {
            if std::env::var_os("CI").is_some() {
                return Err(e.context(format!("building {}", guest.name)));
            }
            eprintln!("xtask: skipped {}: {e:#}", guest.name);
        }
    }
    Ok(())
}

/// Whether `output` exists and is newer than every input.
fn up_to_date(output: &Path, inputs: &[&Path]) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(output) else {
        return false;
    };
    inputs
        .iter()
        .all(|i| modified(i).is_some_and(|m| m <= built))
}

/// componentize-py in the venv at `venv`, installed there from PyPI if it is not yet.
fn componentize_py(venv: &Path) -> Result<PathBuf> {
    let tool = venv.join("bin/componentize-py");
    let version = COMPONENTIZE_PY.rsplit('=').next().unwrap_or_default();
    let installed = Command::new(&tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(version));
    if installed {
        return Ok(tool);
    }
    if !crate::tools::has("python3") {
        bail!("python3 is not installed");
    }
    eprintln!(
        "xtask: installing {COMPONENTIZE_PY} from PyPI into {}",
        venv.display()
    );
    let mut make = Command::new("python3");
    make.args(["-m", "venv"]).arg(venv);
    crate::run(make).context("making a Python venv")?;
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        COMPONENTIZE_PY,
    ]);
    crate::run(pip).context("installing componentize-py")?;
    Ok(tool)
}

/// jco in `dir`'s `node_modules`, installed there from npm (`npm ci`, by the lock file) if
/// it is not yet.
fn npm_install(dir: &Path) -> Result<PathBuf> {
    let jco = dir.join("node_modules/.bin/jco");
    let lock = dir.join("package-lock.json");
    if up_to_date(&dir.join("node_modules/.package-lock.json"), &[&lock]) && jco.exists() {
        return Ok(jco);
    }
    if !crate::tools::has("npm") {
        bail!("npm is not installed");
    }
    eprintln!(
        "xtask: installing jco and componentize-js from npm into {}",
        dir.display()
    );
    let mut npm = Command::new("npm");
    npm.current_dir(dir)
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]);
    crate::run(npm).context("installing jco")?;
    Ok(jco)
}
