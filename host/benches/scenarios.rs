//! End-to-end scenarios, each printing median and p99, setpoint and the native-process
//! model side by side where the question applies to both:
//!
//! 1. recovery: an instance exits, its replacement is running (1, 100, 10,000 others);
//! 2. spawn: a workload scaled 0 → N, until all N are running;
//! 3. density: idle instances held by one host, RSS per instance, recovery at that size;
//! 4. host start: build a host, apply, all replicas running (compile cache cold / warm);
//! 5. interpreter: a fixed compute load, native code against Pulley.
//!
//! `cargo bench -p setpoint --bench scenarios` runs the full sizes (minutes). Under
//! `cargo test` (CI) the same code runs at tiny sizes, so the scenarios cannot rot.
//! `SCENARIOS=recovery,spawn` picks scenarios; `RECOVERY_OTHERS=1,100` and `PROCESS_OTHERS=`
//! (empty: none) pick the sizes of the recovery scenario, `RECOVERY_CYCLES` its length;
//! `PROCESS_SPAWN=` the process model's spawn sizes. Needs `cargo xtask guests` first; the
//! process model's programs are the same guest sources built for this machine.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use setpoint::{Host, HostBuilder, Workload, WorkloadSpec};
use tokio::sync::broadcast::error::RecvError;

struct Sizes {
    recovery_others: &'static [u32],
    recovery_cycles: usize,
    spawn: &'static [u32],
    density: u32,
    density_step: u32,
    process_others: &'static [u32],
    process_spawn: &'static [u32],
    process_density: u32,
    host_start_runs: usize,
    spin_rounds: u32,
}

const FULL: Sizes = Sizes {
    recovery_others: &[1, 100, 10_000],
    recovery_cycles: 3_000,
    spawn: &[1_000, 10_000],
    density: 100_000,
    density_step: 10_000,
    process_others: &[1, 100, 10_000],
    process_spawn: &[1_000, 10_000],
    process_density: 1_000,
    host_start_runs: 10,
    spin_rounds: 50,
};

const SMOKE: Sizes = Sizes {
    recovery_others: &[1],
    recovery_cycles: 20,
    spawn: &[10],
    density: 50,
    density_step: 25,
    process_others: &[1],
    process_spawn: &[5],
    process_density: 5,
    host_start_runs: 1,
    spin_rounds: 1,
};

fn guest(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-examples/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask guests`",
        path.display()
    );
    path
}

/// p50 and p99 of `samples`, formatted.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    format!(
        "p50 {:>10.1?}  p99 {:>10.1?}  (n={})",
        at(0.5),
        at(0.99),
        samples.len()
    )
}

/// A comma-separated list of sizes from the environment variable `name`, if set.
fn list_override(name: &str) -> Option<Vec<u32>> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
    )
}

fn selected(name: &str) -> bool {
    std::env::var("SCENARIOS").map_or(true, |s| s.split(',').any(|x| x == name))
}

fn main() -> anyhow::Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let mut sizes = if full { FULL } else { SMOKE };
    if let Some(cycles) = std::env::var("RECOVERY_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
    {
        sizes.recovery_cycles = cycles;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        println!(
            "scenarios ({}; {} CPUs)",
            if full { "full sizes" } else { "smoke sizes" },
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let native = if selected("recovery") || selected("spawn") || selected("density") {
            Some(native_guests()?)
        } else {
            None
        };
        if selected("recovery") {
            let others_override = list_override("RECOVERY_OTHERS");
            for &others in others_override.as_deref().unwrap_or(sizes.recovery_others) {
                recovery(others, sizes.recovery_cycles, None).await?;
                // The pool holds the others, the crash loop and one successor.
                // A large pool can run out of memory mappings (one try with 11,000 slots
                // stopped at 7,205 instances): reported rather than fatal.
                if let Err(e) = recovery(others, sizes.recovery_cycles, Some(others + 2)).await {
                    println!("recovery  setpoint pooled, {others:>6} others: not possible: {e}");
                }
            }
            let process_override = list_override("PROCESS_OTHERS");
            for &others in process_override.as_deref().unwrap_or(sizes.process_others) {
                process_recovery(native.as_ref().unwrap(), others, sizes.recovery_cycles).await?;
            }
        }
        if selected("spawn") {
            for &n in sizes.spawn {
                spawn(n).await?;
            }
            let process_override = list_override("PROCESS_SPAWN");
            for &n in process_override.as_deref().unwrap_or(sizes.process_spawn) {
                process_spawn(native.as_ref().unwrap(), n).await?;
            }
        }
        if selected("density") {
            density(sizes.density, sizes.density_step, sizes.recovery_cycles).await?;
            process_density(native.as_ref().unwrap(), sizes.process_density).await?;
        }
        if selected("start") {
            host_start(sizes.host_start_runs).await?;
        }
        if selected("interpreter") {
            interpreter(sizes.spin_rounds).await?;
        }
        anyhow::Ok(())
    })
}

/// A host for scenarios: compact memories (so that 100,000 instances fit), small event
/// history.
fn host() -> anyhow::Result<Host> {
    HostBuilder::default()
        .compact_memory(true)
        .event_history(4)
        .max_instances(200_000)
        .build()
}

/// A host with an instance pool of `slots` (default memory settings: the pool reuses
/// copy-on-write slots, so compact memories would only add bounds checks).
fn pooled_host(slots: u32) -> anyhow::Result<Host> {
    HostBuilder::default()
        .instance_pool(slots)
        .event_history(4)
        .build()
}

/// `n` idle instances: reactors that started and wait to be probed or stopped.
fn idle(name: &str, n: u32) -> Workload {
    let mut spec = WorkloadSpec::new(guest("probed"));
    spec.replicas = n;
    spec.memory_limit = Some(4 << 20);
    Workload::new(name, spec)
}

/// A command that exits at once, replaced with zero back-off.
fn crash_loop() -> Workload {
    let mut spec = WorkloadSpec::new(guest("crasher"));
    spec.env = vec![
        ("CRASH_AFTER_MS".into(), "0".into()),
        ("MODE".into(), "exit".into()),
    ];
    spec.backoff.initial = Duration::ZERO;
    spec.backoff.max = Duration::ZERO;
    Workload::new("crashloop", spec)
}

async fn wait_running(host: &Host, name: &str, n: u32) -> anyhow::Result<()> {
    wait_running_unless(host, name, n, &AtomicBool::new(false)).await
}

/// Waits until `n` instances of `name` run, or `refused` is set (the host refused a
/// spawn).
async fn wait_running_unless(
    host: &Host,
    name: &str,
    n: u32,
    refused: &AtomicBool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = host.counts().await;
        let Some(counts) = status.iter().find(|c| c.name == name) else {
            anyhow::bail!("{name} is not applied");
        };
        if counts.running >= n {
            return Ok(());
        }
        // An instance that cannot be instantiated (out of memory maps, say) is not
        // retried: the workload stops short of `n`.
        let refused = refused.load(Ordering::Relaxed);
        if counts.failed || counts.restarts > 0 || refused || Instant::now() > deadline {
            anyhow::bail!("{name}: {} of {n} instances running", counts.running);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Memory mappings of this process, and the kernel's limit on them.
fn mappings() -> (usize, usize) {
    let count = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count());
    let limit = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    (count, limit)
}

/// Samples exit → replacement running, from event times: the end is dated when the
/// instance ended, `Started` when its replacement was instantiated.
async fn measure_recovery(host: &Host, cycles: usize) -> anyhow::Result<Vec<Duration>> {
    let mut events = host.events();
    host.apply(vec![crash_loop()]).await?;
    let mut samples = Vec::with_capacity(cycles);
    let mut last_end: Option<SystemTime> = None;
    while samples.len() < cycles {
        match events.recv().await {
            Ok(e) if e.workload != "crashloop" => {}
            Ok(e) if e.reason == "Exited" => last_end = Some(e.time),
            Ok(e) if e.reason == "Started" => {
                if let Some(end) = last_end.take() {
                    samples.push(e.time.duration_since(end).unwrap_or_default());
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => last_end = None,
            Err(e) => anyhow::bail!("event stream closed: {e}"),
        }
    }
    host.delete("crashloop").await?;
    Ok(samples)
}

async fn recovery(others: u32, cycles: usize, pool: Option<u32>) -> anyhow::Result<()> {
    let host = match pool {
        Some(slots) => pooled_host(slots)?,
        None => host()?,
    };
    let outcome = async {
        host.apply(vec![idle("others", others)]).await?;
        wait_running(&host, "others", others).await?;
        measure_recovery(&host, cycles).await
    }
    .await;
    host.shutdown().await;
    let mut samples = outcome?;
    let label = if pool.is_some() {
        "setpoint pooled"
    } else {
        "setpoint"
    };
    println!(
        "recovery  {label}, {others:>6} others: exit → replacement running  {}",
        summary(&mut samples)
    );
    Ok(())
}

async fn spawn(n: u32) -> anyhow::Result<()> {
    let host = host()?;
    // Compile first (apply with 0 replicas), so the figure is spawning, not compiling.
    host.apply(vec![idle("scale", 0)]).await?;
    let started = Instant::now();
    host.apply(vec![idle("scale", n)]).await?;
    wait_running(&host, "scale", n).await?;
    let elapsed = started.elapsed();
    println!(
        "spawn     setpoint, 0 → {n:>6}: all running in {elapsed:>10.1?} ({:.1?} per instance)",
        elapsed / n
    );
    host.shutdown().await;
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn density(target: u32, step: u32, cycles: usize) -> anyhow::Result<()> {
    let host = host()?;
    // The host warns near the mapping limit and refuses spawns at it.
    let refused = Arc::new(AtomicBool::new(false));
    let warning = Arc::new(std::sync::Mutex::new(None));
    let mut events = host.events();
    let listener = tokio::spawn({
        let (refused, warning) = (refused.clone(), warning.clone());
        async move {
            loop {
                match events.recv().await {
                    Ok(e) if e.reason == "MappingLimitNear" => {
                        *warning.lock().unwrap() = Some(e.message);
                    }
                    Ok(e) if e.reason == "ActionRefused" => {
                        *warning.lock().unwrap() = Some(e.message);
                        refused.store(true, Ordering::Relaxed);
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        }
    });
    host.apply(vec![idle("dense", 0)]).await?;
    let base = rss_kib();
    let base_maps = mappings().0;
    let mut held = 0;
    let mut n = step.min(target);
    loop {
        host.apply(vec![idle("dense", n)]).await?;
        if let Err(e) = wait_running_unless(&host, "dense", n, &refused).await {
            let (maps, limit) = mappings();
            println!(
                "density   setpoint: stopped growing: {e}; {maps} memory mappings, vm.max_map_count {limit}"
            );
            let status = host.status().await;
            if let Some(end) = status
                .workload("dense")
                .and_then(|w| w.last_termination.as_ref())
            {
                println!(
                    "density   setpoint: the last instance ended: {}",
                    end.end.reason
                );
            }
            host.apply(vec![idle("dense", held)]).await?;
            break;
        }
        held = n;
        if n >= target {
            break;
        }
        n = (n + step).min(target);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(message) = warning.lock().unwrap().take() {
        println!("density   setpoint: the host said: {message}");
    }
    let per = rss_kib().saturating_sub(base) as f64 / f64::from(held.max(1));
    let maps = mappings().0.saturating_sub(base_maps) as f64 / f64::from(held.max(1));
    println!(
        "density   setpoint: {held} idle instances, {per:.1} KiB RSS and {maps:.2} memory mappings each (host total {} MiB)",
        rss_kib() / 1024
    );
    let mut samples = measure_recovery(&host, cycles).await?;
    println!(
        "density   setpoint, recovery beside {held}: {}",
        summary(&mut samples)
    );
    host.shutdown().await;
    listener.abort();
    Ok(())
}

async fn host_start(runs: usize) -> anyhow::Result<()> {
    let cache = tempfile_dir("setpoint-bench-cache")?;
    let specs = [
        ("ticker", "ticker", 3),
        ("probed", "probed", 2),
        ("watched", "watched", 1),
    ];
    for (label, warm) in [("cold cache", false), ("warm cache", true)] {
        let mut samples = Vec::new();
        for _ in 0..runs {
            if !warm {
                let _ = std::fs::remove_dir_all(&cache);
            }
            let started = Instant::now();
            let host = HostBuilder::default().cache_dir(&cache).build()?;
            let workloads = specs
                .iter()
                .map(|(name, g, n)| {
                    let mut spec = WorkloadSpec::new(guest(g));
                    spec.replicas = *n;
                    Workload::new(*name, spec)
                })
                .collect();
            host.apply(workloads).await?;
            for (name, _, n) in specs {
                wait_running(&host, name, n).await?;
            }
            samples.push(started.elapsed());
            host.shutdown().await;
        }
        println!(
            "start     setpoint, build + apply + 6 instances of 3 components running, {label}: {}",
            summary(&mut samples)
        );
    }
    let _ = std::fs::remove_dir_all(&cache);
    Ok(())
}

async fn interpreter(rounds: u32) -> anyhow::Result<()> {
    for (label, pulley) in [("native", false), ("pulley", true)] {
        let host = HostBuilder::default().interpreter(pulley).build()?;
        let mut spec = WorkloadSpec::new(guest("spinner"));
        spec.env = vec![("SPIN_ROUNDS".into(), rounds.to_string())];
        spec.restart_policy = setpoint::RestartPolicy::Never;
        host.apply(vec![Workload::new("spin", spec)]).await?;
        let done = host
            .wait_for(Duration::from_secs(600), |s| {
                s.workload("spin")
                    .is_some_and(|w| w.phase == setpoint::Phase::Succeeded)
            })
            .await
            .ok_or_else(|| anyhow::anyhow!("spinner did not finish"))?;
        let end = &done
            .workload("spin")
            .unwrap()
            .last_termination
            .as_ref()
            .unwrap()
            .end;
        println!(
            "interp    {label:>6}: {rounds}M rounds of an LCG in {:.1?}",
            end.ran_for
        );
        host.shutdown().await;
    }
    Ok(())
}

fn tempfile_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

// ---- the process model: each instance a native OS process, restarted on exit ----

/// Native builds of the `ticker` and `crasher` guests (plain std Rust programs).
struct Native {
    ticker: PathBuf,
    crasher: PathBuf,
}

fn native_guests() -> anyhow::Result<Native> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target_dir = root.join("target/native-guests");
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args([
                "build",
                "--quiet",
                "--release",
                "--manifest-path",
                "guest-examples/Cargo.toml",
            ])
            .args(["-p", "ticker", "-p", "crasher", "--target-dir"])
            .arg(&target_dir)
            .env_remove("CARGO_TARGET_DIR")
            .status()?;
    anyhow::ensure!(status.success(), "building the native guests failed");
    Ok(Native {
        ticker: target_dir.join("release/ticker"),
        crasher: target_dir.join("release/crasher"),
    })
}

fn idle_process(native: &Native) -> std::io::Result<tokio::process::Child> {
    tokio::process::Command::new(&native.ticker)
        .env("TICK_MS", "3600000")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

/// A restart-on-exit supervisor (what systemd's `Restart=always` with no delay does):
/// exit reaped → replacement spawned (`spawn` returns once the program is executing).
async fn process_recovery(native: &Native, others: u32, cycles: usize) -> anyhow::Result<()> {
    let _others: Vec<_> = (0..others)
        .map(|_| idle_process(native))
        .collect::<Result<_, _>>()?;
    let spawn_crasher = || {
        tokio::process::Command::new(&native.crasher)
            .env("CRASH_AFTER_MS", "0")
            .env("MODE", "exit")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    let mut child = spawn_crasher()?;
    let mut samples = Vec::with_capacity(cycles);
    for _ in 0..cycles {
        child.wait().await?;
        let exited = Instant::now();
        child = spawn_crasher()?;
        samples.push(exited.elapsed());
    }
    child.wait().await?;
    println!(
        "recovery  process,  {others:>6} others: exit reaped → replacement running {}",
        summary(&mut samples)
    );
    Ok(())
}

async fn process_spawn(native: &Native, n: u32) -> anyhow::Result<()> {
    let started = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|_| idle_process(native))
        .collect::<Result<_, _>>()?;
    let elapsed = started.elapsed();
    println!(
        "spawn     process,  0 → {n:>6}: all running in {elapsed:>10.1?} ({:.1?} per process)",
        elapsed / n
    );
    drop(children);
    Ok(())
}

/// Proportional set size of a process, in KiB (shared pages split among sharers).
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn process_density(native: &Native, n: u32) -> anyhow::Result<()> {
    let children: Vec<_> = (0..n)
        .map(|_| idle_process(native))
        .collect::<Result<_, _>>()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total: u64 = children.iter().filter_map(|c| c.id()).map(pss_kib).sum();
    println!(
        "density   process:  {n} idle processes, {:.1} KiB PSS each",
        total as f64 / f64::from(n)
    );
    Ok(())
}
