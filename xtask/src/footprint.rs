//! `cargo xtask footprint`: builds the default and the minimal (no compiler) release
//! binaries and measures what a device maker asks about: stripped size, idle RSS with
//! no instances and with the example specs, and the time from process start to the
//! first instance's first output line (warm compiled-code cache; precompiled for the
//! minimal build). Prints a Markdown table for the README.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Runs of each start-up measurement; the median is reported.
const START_RUNS: usize = 15;

pub fn run(root: &Path) -> Result<()> {
    let out = root.join("target/footprint");
    std::fs::create_dir_all(&out)?;
    let default = build(root, &out, "setpoint", &[])?;
    let minimal = build(root, &out, "setpoint-minimal", &["--no-default-features"])?;
    let guests = root.join("guest-examples/target/wasm32-wasip2/release");
    let ticker_wasm = guests.join("ticker.wasm");
    let ticker_cwasm = out.join("ticker.cwasm");
    check(
        Command::new(&default)
            .arg("compile")
            .arg(&ticker_wasm)
            .arg("-o")
            .arg(&ticker_cwasm),
    )?;
    let spec = |name: &str, component: &Path, replicas: u32| -> Result<PathBuf> {
        let path = out.join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}}}\nspec:\n  component: {}\n  replicas: {replicas}\n  env: {{TICK_MS: '60000'}}\n",
                component.display()
            ),
        )?;
        Ok(path)
    };
    let idle_wasm = spec("idle", &ticker_wasm, 0)?;
    let idle_cwasm = spec("idle-pre", &ticker_cwasm, 0)?;
    let one_wasm = spec("one", &ticker_wasm, 1)?;
    let one_cwasm = spec("one-pre", &ticker_cwasm, 1)?;
    let cache = out.join("cache");
    let cache_arg = format!("--cache-dir={}", cache.display());

    let mut rows = Vec::new();
    for (name, bin) in [("default", &default), ("minimal", &minimal)] {
        let size = std::fs::metadata(bin)?.len();
        rows.push(format!(
            "| stripped binary, {name} build | {:.1} MiB |",
            size as f64 / (1024.0 * 1024.0)
        ));
    }
    let rss = idle_rss(&default, &[idle_wasm.as_os_str(), cache_arg.as_ref()])?;
    rows.push(format!(
        "| idle RSS, no instances, default build | {:.1} MiB |",
        rss
    ));
    let rss = idle_rss(&minimal, &[idle_cwasm.as_os_str()])?;
    rows.push(format!(
        "| idle RSS, no instances, minimal build | {:.1} MiB |",
        rss
    ));
    let demo = root.join("specs/demo.yaml");
    let rss = idle_rss(&default, &[demo.as_os_str(), cache_arg.as_ref()])?;
    rows.push(format!(
        "| RSS with `specs/demo.yaml` running (7 instances), default build | {:.1} MiB |",
        rss
    ));
    // Warm the cache, then measure.
    first_output(&default, &[one_wasm.as_os_str(), cache_arg.as_ref()])?;
    let warm = median_start(&default, &[one_wasm.as_os_str(), cache_arg.as_ref()])?;
    rows.push(format!(
        "| process start to first instance's first output, default build, warm cache | {:.1} ms |",
        warm
    ));
    let cold = median_start(&default, &[one_wasm.as_os_str(), "--no-cache".as_ref()])?;
    rows.push(format!(
        "| the same, no cache (compiles the 85 KB component) | {:.1} ms |",
        cold
    ));
    let pre = median_start(&minimal, &[one_cwasm.as_os_str()])?;
    rows.push(format!(
        "| the same, minimal build, precompiled `.cwasm` | {:.1} ms |",
        pre
    ));
    println!("| measure | value |\n|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

/// Builds the release binary with `features`, copies it to `out/name` and strips it.
fn build(root: &Path, out: &Path, name: &str, features: &[&str]) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root).args([
        "build",
        "--release",
        "--package",
        "setpoint",
        "--bin",
        "setpoint",
    ]);
    cmd.args(features);
    check(&mut cmd)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let copy = out.join(name);
    std::fs::copy(target.join("release/setpoint"), &copy)?;
    check(Command::new("strip").arg(&copy)).context("stripping needs binutils' `strip`")?;
    Ok(copy)
}

fn check(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let output = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !output.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// RSS in MiB of `setpoint run ARGS` three seconds after start.
fn idle_rss(bin: &Path, args: &[&std::ffi::OsStr]) -> Result<f64> {
    let mut child = Command::new(bin)
        .arg("run")
        .args(args)
        .args(["--for", "5s", "--quiet", "-o", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(3));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    let _ = child.kill();
    let _ = child.wait();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib / 1024.0)
}

/// Milliseconds from spawning `setpoint run ARGS` to the first guest output line.
fn first_output(bin: &Path, args: &[&std::ffi::OsStr]) -> Result<f64> {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("run")
        .args(args)
        .args(["--for", "10s", "-o", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("piped stderr")?;
    let mut found = None;
    for line in BufReader::new(stderr).lines() {
        if line?.contains(" | ") {
            found = Some(started.elapsed());
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let elapsed = found.context("the instance printed nothing")?;
    Ok(elapsed.as_secs_f64() * 1000.0)
}

fn median_start(bin: &Path, args: &[&std::ffi::OsStr]) -> Result<f64> {
    let mut times = (0..START_RUNS)
        .map(|_| first_output(bin, args))
        .collect::<Result<Vec<_>>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
