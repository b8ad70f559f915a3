//! `cargo xtask footprint`: builds what a device ships (profile `dist`: fat LTO, one
//! codegen unit, size-optimized, stripped) and measures what a device maker asks about:
//! binary size, idle RSS (split into anonymous memory and mapped file pages) with no
//! instances and with the example specs, and the time from process start to the first
//! instance's first output line. For the `setpoint` binary (default build, and the
//! minimal build without a compiler) and for the embedding example (the library alone,
//! with the compiler and with precompiled `.cwasm` only). Prints a Markdown table for
//! the README, headed with the date and commit it measured.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::dist::Artifact;

/// Runs of each start-up measurement; the median is reported.
const START_RUNS: usize = 15;
/// The profile measured: what a device ships.
const PROFILE: &str = crate::dist::PROFILE;

pub fn run(root: &Path) -> Result<()> {
    let out = root.join("target/footprint");
    std::fs::create_dir_all(&out)?;
    let guests = root.join("guest-examples/target/wasm32-wasip2/release");
    let ticker_wasm = guests.join("ticker.wasm");
    let ticker_cwasm = out.join("ticker.cwasm");
    let default = crate::dist::ship(
        root,
        Artifact::Setpoint,
        &[],
        &ticker_wasm,
        &out,
        "setpoint",
    )?;
    check(
        Command::new(&default.path)
            .arg("compile")
            .arg(&ticker_wasm)
            .arg("-o")
            .arg(&ticker_cwasm),
    )?;
    // Profiled under valgrind, whose CPU lacks some of this machine's features: an
    // artifact for the baseline of this architecture loads on both.
    let ticker_portable = out.join("ticker-portable.cwasm");
    check(
        Command::new(&default.path)
            .arg("compile")
            .arg(&ticker_wasm)
            .arg("--target")
            .arg(host_triple()?)
            .arg("-o")
            .arg(&ticker_portable),
    )?;
    let minimal = crate::dist::ship(
        root,
        Artifact::Setpoint,
        &["--no-default-features", "--features", "cli"],
        &ticker_portable,
        &out,
        "setpoint-minimal",
    )?;
    let embed = crate::dist::ship(
        root,
        Artifact::Embed,
        &["--no-default-features", "--features", "cranelift"],
        &ticker_wasm,
        &out,
        "embed",
    )?;
    let embed_pre = crate::dist::ship(
        root,
        Artifact::Embed,
        &["--no-default-features"],
        &ticker_portable,
        &out,
        "embed-precompiled",
    )?;
    let ordered = format!(
        "functions in start-up order: {} / {} / {} / {} (default / minimal / embed / embed `.cwasm` only; 0 is unordered)",
        default.ordered, minimal.ordered, embed.ordered, embed_pre.ordered
    );
    let (default, minimal, embed, embed_pre) =
        (default.path, minimal.path, embed.path, embed_pre.path);
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
    let run = |bin: &Path, args: &[&std::ffi::OsStr]| {
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .args(args)
            .args(["--for", "6s", "-o", "json"]);
        cmd
    };
    // Warm the compiled-code cache first.
    first_output(run(&default, &[one_wasm.as_os_str(), cache_arg.as_ref()]))?;

    let mut rows = Vec::new();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    for (name, bin) in [
        ("`setpoint`, default build", &default),
        (
            "`setpoint`, minimal build (`--no-default-features --features cli`: `.cwasm` only)",
            &minimal,
        ),
        (
            "embed example, library alone with the compiler (`--features cranelift`)",
            &embed,
        ),
        (
            "embed example, library alone, `.cwasm` only (no features)",
            &embed_pre,
        ),
    ] {
        rows.push(format!(
            "| binary: {name} | {:.1} MiB |",
            mib(std::fs::metadata(bin)?.len())
        ));
    }
    let idle = [
        (
            "`setpoint run`, no instances, default build, warm cache",
            run(&default, &[idle_wasm.as_os_str(), cache_arg.as_ref()]),
        ),
        (
            "`setpoint run`, no instances, minimal build",
            run(
                &minimal,
                &[idle_cwasm.as_os_str(), "--allow-precompiled".as_ref()],
            ),
        ),
        (
            "`setpoint run specs/demo.yaml` (7 instances), default build, warm cache",
            run(
                &default,
                &[root.join("specs/demo.yaml").as_os_str(), cache_arg.as_ref()],
            ),
        ),
        ("`setpoint daemon`, no workloads, default build", {
            let mut cmd = Command::new(&default);
            cmd.arg("daemon").arg(format!(
                "--state-dir={}",
                out.join("daemon-state").display()
            ));
            cmd
        }),
        (
            "embed example, 2 instances, with the compiler",
            embed_cmd(&embed, &ticker_wasm),
        ),
        (
            "embed example, 2 instances, `.cwasm` only",
            embed_cmd(&embed_pre, &ticker_cwasm),
        ),
    ];
    for (name, cmd) in idle {
        let rss = rss_after(cmd, Duration::from_secs(3))?;
        rows.push(format!(
            "| RSS: {name} | {:.1} MiB ({:.1} anonymous, {:.1} mapped files) |",
            rss.total, rss.anon, rss.file
        ));
    }
    let warm = median_start(|| run(&default, &[one_wasm.as_os_str(), cache_arg.as_ref()]))?;
    rows.push(format!(
        "| start → first instance's first output line, default build, warm cache | {warm:.1} ms |"
    ));
    let cold = median_start(|| run(&default, &[one_wasm.as_os_str(), "--no-cache".as_ref()]))?;
    rows.push(format!(
        "| the same, cache disabled (compiles the 85 KB `ticker`) | {cold:.1} ms |"
    ));
    let pre = median_start(|| {
        run(
            &minimal,
            &[one_cwasm.as_os_str(), "--allow-precompiled".as_ref()],
        )
    })?;
    rows.push(format!(
        "| the same, minimal build, precompiled `.cwasm` | {pre:.1} ms |"
    ));
    let commit = Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let date = Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "Measured {date} at `{commit}` (`cargo xtask footprint`, profile `{PROFILE}`, {ordered}):\n"
    );
    println!("| measure | value |\n|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

/// This machine's target triple, as rustc names it.
fn host_triple() -> Result<String> {
    let output = Command::new("rustc").arg("-vV").output()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("`rustc -vV` names no host")
}

/// The embed example on `component`, held running after its replicas are ready.
fn embed_cmd(bin: &Path, component: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg(component).env("SETPOINT_EMBED_HOLD_MS", "6000");
    cmd
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

/// A process's resident memory, in MiB.
struct Rss {
    total: f64,
    anon: f64,
    file: f64,
}

/// The RSS of `cmd` `after` its start.
fn rss_after(mut cmd: Command, after: Duration) -> Result<Rss> {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    std::thread::sleep(after);
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
    let _ = child.kill();
    let _ = child.wait();
    let status = status?;
    let field = |name: &str| -> Result<f64> {
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/PID/status"))?;
        Ok(kib / 1024.0)
    };
    Ok(Rss {
        total: field("VmRSS:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")? + field("RssShmem:")?,
    })
}

/// Milliseconds from spawning `cmd` to the first guest output line.
fn first_output(mut cmd: Command) -> Result<f64> {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
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

fn median_start(cmd: impl Fn() -> Command) -> Result<f64> {
    let mut times = (0..START_RUNS)
        .map(|_| first_output(cmd()))
        .collect::<Result<Vec<_>>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
