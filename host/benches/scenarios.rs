//! End-to-end scenarios, each printing median and p99, setpoint and the native-process
//! model side by side where the question applies to both:
//!
//! 1. recovery: an instance exits, its replacement is running (1, 100, 10,000 others);
//! 2. spawn: a workload scaled 0 → N, until all N are running, then back to 0 (RSS given back);
//! 3. density: idle instances held by one host, RSS per instance, recovery at that size;
//!    spares: what a spare costs (RSS, mappings);
//! 4. host start: build a host, apply, all replicas running (compile cache cold / warm);
//! 5. interpreter: a fixed compute load, native code against Pulley.
//!
//! `cargo bench -p setpoint --bench scenarios` runs the full sizes (minutes). Under
//! `cargo test` (CI) the same code runs at tiny sizes, so the scenarios cannot rot.
//! `SCENARIOS=recovery,spawn` picks scenarios; `RECOVERY_OTHERS=1,100` and `PROCESS_OTHERS=`
//! (empty: none) pick the sizes of the recovery scenario, `RECOVERY_CYCLES` its length,
//! `RECOVERY_RUN_MS` how long each crashing instance runs (default 1), `RECOVERY_SETUPS`
//! which hosts (`on-demand,spare,pooled,pooled-spare`); `DENSITY` the density scenario's
//! target (default 100,000); `SPAWN=` and `PROCESS_SPAWN=` the spawn sizes (setpoint's,
//! the process model's); `TUNE_MALLOC=off` builds the hosts without their malloc
//! settings, and `STACK_GUARDS=protection` without guard markers on their fiber stacks,
//! to compare. Needs `cargo xtask guests` first; the process model's programs
//! are the same guest sources built for this machine.

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
    spare_workloads: u32,
}

const FULL: Sizes = Sizes {
    recovery_others: &[1, 100, 10_000],
    recovery_cycles: 3_000,
    spawn: &[1_000, 10_000, 100_000],
    density: 100_000,
    density_step: 10_000,
    process_others: &[1, 100, 10_000],
    process_spawn: &[1_000, 10_000],
    process_density: 1_000,
    host_start_runs: 10,
    spin_rounds: 50,
    spare_workloads: 1_000,
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
    spare_workloads: 4,
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
    if let Some(n) = std::env::var("DENSITY").ok().and_then(|n| n.parse().ok()) {
        sizes.density = n;
        sizes.density_step = sizes.density_step.min(n);
    }
    // As the `setpoint` binary does: malloc set before any thread has a heap.
    if tune_malloc() {
        setpoint::runtime::malloc::tune();
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
                // The pool holds the others, the crash loop and one successor.
                // A large pool can run out of memory mappings (one try with 11,000 slots
                // stopped at 7,205 instances): reported rather than fatal.
                for pool in [None, Some(others + 2)] {
                    for spares in [0, 1] {
                        let setup = Setup { pool, spares };
                        if !setup.selected() {
                            continue;
                        }
                        if let Err(e) = recovery(others, sizes.recovery_cycles, setup).await {
                            println!(
                                "recovery  {}, {others:>6} others: not possible: {e}",
                                setup.label()
                            );
                        }
                    }
                }
            }
            let process_override = list_override("PROCESS_OTHERS");
            for &others in process_override.as_deref().unwrap_or(sizes.process_others) {
                process_recovery(native.as_ref().unwrap(), others, sizes.recovery_cycles).await?;
            }
        }
        if selected("spawn") {
            for &n in list_override("SPAWN").as_deref().unwrap_or(sizes.spawn) {
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
        if selected("spares") {
            let n = std::env::var("SPARE_WORKLOADS")
                .ok()
                .and_then(|n| n.parse().ok());
            spare_memory(n.unwrap_or(sizes.spare_workloads)).await?;
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
/// history, `spares` per workload.
fn host_with(spares: u32) -> anyhow::Result<Host> {
    HostBuilder::default()
        .compact_memory(true)
        .event_history(4)
        .max_instances(200_000)
        .spares(spares)
        .direct_replacement(direct_replacement())
        .tune_malloc(tune_malloc())
        .stack_guard_markers(stack_guard_markers())
        .build()
}

/// Whether fiber stacks' guards are the kernel's markers where it has them
/// (`STACK_GUARDS=protection`: no, to compare; default yes, as every host does).
fn stack_guard_markers() -> bool {
    std::env::var("STACK_GUARDS").map_or(true, |v| v != "protection")
}

/// Whether a failed instance's task starts its spare itself (`DIRECT=off`: no, to
/// compare; default yes, as every host does).
fn direct_replacement() -> bool {
    std::env::var("DIRECT").map_or(true, |v| v != "off")
}

/// Whether the host sets glibc's malloc for many instances (`TUNE_MALLOC=off`: no, to
/// compare; default yes, as every host does).
fn tune_malloc() -> bool {
    std::env::var("TUNE_MALLOC").map_or(true, |v| v != "off")
}

/// A host for scenarios without spares (see [`host_with`]).
fn host() -> anyhow::Result<Host> {
    host_with(0)
}

/// A host with an instance pool of `slots` (default memory settings: the pool reuses
/// copy-on-write slots, so compact memories would only add bounds checks), `spares` per
/// workload.
fn pooled_host(slots: u32, spares: u32) -> anyhow::Result<Host> {
    HostBuilder::default()
        .instance_pool(slots)
        .event_history(4)
        .spares(spares)
        .direct_replacement(direct_replacement())
        .tune_malloc(tune_malloc())
        .build()
}

/// `n` idle instances: reactors that started and wait to be probed or stopped.
fn idle(name: &str, n: u32) -> Workload {
    let mut spec = WorkloadSpec::new(guest("probed"));
    spec.replicas = n;
    spec.memory_limit = Some(4 << 20);
    Workload::new(name, spec)
}

/// How long a crashing instance runs before it exits, in milliseconds (`RECOVERY_RUN_MS`).
fn crash_run_ms() -> String {
    std::env::var("RECOVERY_RUN_MS").unwrap_or_else(|_| "1".into())
}

/// A command that exits after `RECOVERY_RUN_MS` milliseconds (default 1), replaced with
/// zero back-off. With 0 the loop is back to back: a spare then has no time to be made
/// between two ends, and recovery measures a loop bound by instantiation throughput.
fn crash_loop() -> Workload {
    let mut spec = WorkloadSpec::new(guest("crasher"));
    spec.env = vec![
        ("CRASH_AFTER_MS".into(), crash_run_ms()),
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

/// One recovery's parts, from event times: the end is dated when the instance's code
/// ended (`Exited`), the replacement's spawn when the controller decided it, or the
/// ended instance's task started a spare directly (`Replaced`), `Started` when the
/// replacement was instantiated (or, a spare, woken).
#[derive(Clone, Copy)]
struct Recovery {
    /// Exit → replacement running.
    total: Duration,
    /// Exit → the spawn: the end's delivery and the controller's reaction (and the old
    /// Store's teardown, where it is on the path), or, directly replaced, the ended
    /// task's taking of the armed spare.
    hand_off: Duration,
    /// The controller's spawn → running: a task, a Store and an instantiation, or a
    /// spare's wake-up.
    start: Duration,
}

/// The recoveries of one crash loop.
#[derive(Default)]
struct Recoveries {
    /// Each recovery, in the order sampled.
    samples: Vec<Recovery>,
    /// Running → exit: the replacement's first (and only) run.
    run: Vec<Duration>,
    /// Spawns that started a spare.
    spares_used: u64,
    /// Spares started by the ended instance's task and kept.
    direct: u64,
}

impl Recoveries {
    /// Exit → replacement running, p50 and p99.
    fn total(&self) -> String {
        summary(&mut self.samples.iter().map(|r| r.total).collect::<Vec<_>>())
    }

    /// The parts' medians, and what the slowest 1% of recoveries spent in each part.
    fn parts(&self) -> String {
        let mut sorted = self.samples.clone();
        sorted.sort_by_key(|r| r.total);
        let tail = &sorted[sorted.len() - sorted.len().div_ceil(100).min(sorted.len())..];
        let mean = |part: fn(&Recovery) -> Duration| {
            tail.iter().map(part).sum::<Duration>() / u32::try_from(tail.len().max(1)).unwrap_or(1)
        };
        format!(
            "exit → spawn {}; spawn → running {}; first run {}; slowest 1% (n={}): exit → spawn mean {:.1?}, spawn → running mean {:.1?}",
            p50(&mut self.samples.iter().map(|r| r.hand_off).collect::<Vec<_>>()),
            p50(&mut self.samples.iter().map(|r| r.start).collect::<Vec<_>>()),
            p50(&mut self.run.clone()),
            tail.len(),
            mean(|r| r.hand_off),
            mean(|r| r.start),
        )
    }
}

/// Samples `cycles` recoveries of a crash loop on `host`. The events are read in a task
/// of the runtime's, as any subscriber inside a host would read them: read on the
/// thread blocked in `block_on`, each event woke that thread, and the wake-up cost the
/// controller about 17 µs of every recovery.
async fn measure_recovery(host: &Host, cycles: usize) -> anyhow::Result<Recoveries> {
    let events = host.events();
    host.apply(vec![crash_loop()]).await?;
    let listened = tokio::spawn(listen_recoveries(events, cycles)).await?;
    let mut r = match listened {
        Ok(r) => r,
        Err(sampled) => {
            let status = host.status().await;
            anyhow::bail!(
                "no crash-loop event for 30 s after {sampled} recoveries; the crash loop: {:?}",
                status.workload("crashloop")
            );
        }
    };
    let metrics = host.metrics().await;
    let counter = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    r.spares_used = counter("setpoint_spares_used_total");
    r.direct = counter("setpoint_direct_replacements_total{outcome=\"kept\"}");
    host.delete("crashloop").await?;
    Ok(r)
}

/// Reads `cycles` recoveries of the crash loop off `events`; `Err` with how many it had
/// when no event came for 30 s.
async fn listen_recoveries(
    mut events: tokio::sync::broadcast::Receiver<setpoint::Event>,
    cycles: usize,
) -> Result<Recoveries, usize> {
    let mut r = Recoveries::default();
    let (mut end, mut spawned, mut started): (
        Option<SystemTime>,
        Option<SystemTime>,
        Option<SystemTime>,
    ) = (None, None, None);
    let since =
        |later: SystemTime, earlier: SystemTime| later.duration_since(earlier).unwrap_or_default();
    while r.samples.len() < cycles {
        let Ok(event) = tokio::time::timeout(Duration::from_secs(30), events.recv()).await else {
            return Err(r.samples.len());
        };
        match event {
            Ok(e) if e.workload != "crashloop" => {}
            Ok(e) if e.reason == "Exited" => {
                if let Some(s) = started.take() {
                    r.run.push(since(e.time, s));
                }
                end = Some(e.time);
                spawned = None;
            }
            Ok(e) if e.reason == "Replaced" => spawned = Some(e.time),
            Ok(e) if e.reason == "Started" => {
                if let (Some(end), Some(spawned)) = (end.take(), spawned.take()) {
                    r.samples.push(Recovery {
                        total: since(e.time, end),
                        hand_off: since(spawned, end),
                        start: since(e.time, spawned),
                    });
                    started = Some(e.time);
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => (end, spawned, started) = (None, None, None),
            Err(RecvError::Closed) => return Err(r.samples.len()),
        }
    }
    Ok(r)
}

/// A recovery scenario's setup.
#[derive(Clone, Copy)]
struct Setup {
    /// An instance pool of this many slots (on demand without).
    pool: Option<u32>,
    /// Spares per workload.
    spares: u32,
}

impl Setup {
    /// Whether `RECOVERY_SETUPS` (a comma-separated list of `on-demand`, `spare`,
    /// `pooled`, `pooled-spare`; all when unset) picks this setup.
    fn selected(self) -> bool {
        let name = match (self.pool.is_some(), self.spares > 0) {
            (false, false) => "on-demand",
            (false, true) => "spare",
            (true, false) => "pooled",
            (true, true) => "pooled-spare",
        };
        std::env::var("RECOVERY_SETUPS").map_or(true, |s| s.split(',').any(|x| x == name))
    }

    fn label(self) -> &'static str {
        match (self.pool.is_some(), self.spares > 0) {
            (false, false) => "setpoint",
            (false, true) => "setpoint + spare",
            (true, false) => "setpoint pooled",
            (true, true) => "setpoint pooled + spare",
        }
    }
}

async fn recovery(others: u32, cycles: usize, setup: Setup) -> anyhow::Result<()> {
    let host = match setup.pool {
        Some(slots) => pooled_host(slots, setup.spares)?,
        None => host_with(setup.spares)?,
    };
    let outcome = async {
        host.apply(vec![idle("others", others)]).await?;
        wait_running(&host, "others", others).await?;
        measure_recovery(&host, cycles).await
    }
    .await;
    host.shutdown().await;
    let r = outcome?;
    let label = setup.label();
    println!(
        "recovery  {label}, {others:>6} others: exit → replacement running  {}",
        r.total()
    );
    println!(
        "          parts: {}; {} spares started, {} of them by the ended instance's task",
        r.parts(),
        r.spares_used,
        r.direct
    );
    Ok(())
}

/// The median of `samples`, formatted.
fn p50(samples: &mut [Duration]) -> String {
    samples.sort();
    samples
        .get(samples.len() / 2)
        .map_or_else(|| "-".into(), |d| format!("p50 {d:.1?}"))
}

async fn spawn(n: u32) -> anyhow::Result<()> {
    let host = host()?;
    // Compile first (apply with 0 replicas), so the figure is spawning, not compiling.
    host.apply(vec![idle("scale", 0)]).await?;
    let rss_before = rss_kib();
    let started = Instant::now();
    host.apply(vec![idle("scale", n)]).await?;
    wait_running(&host, "scale", n).await?;
    let elapsed = started.elapsed();
    println!(
        "spawn     setpoint, 0 → {n:>6}: all running in {elapsed:>10.1?} ({:.1?} per instance)",
        elapsed / n
    );
    // And back down: how long until every Store is gone, and how much memory the
    // process gives back (the host trims malloc's heaps once the count settles).
    let rss_peak = rss_kib();
    let started = Instant::now();
    host.apply(vec![idle("scale", 0)]).await?;
    let deadline = started + Duration::from_secs(300);
    while host.live_stores() > 0 {
        anyhow::ensure!(Instant::now() < deadline, "scale to 0 did not end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ended = started.elapsed();
    let rss_after = settled_rss().await;
    println!(
        "spawn     setpoint, {n:>6} → 0: all ended in {ended:>10.1?}; RSS {} MiB before spawn, {} MiB at {n}, {} MiB after",
        rss_before >> 10,
        rss_peak >> 10,
        rss_after >> 10
    );
    host.shutdown().await;
    Ok(())
}

/// RSS once it stopped falling: read every 250 ms, for at least a second and until two
/// readings in a row are within 1% (or 5 s passed).
async fn settled_rss() -> u64 {
    let started = Instant::now();
    let mut last = rss_kib();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss_kib();
        let steady = now.abs_diff(last) <= last / 100;
        if (steady && started.elapsed() >= Duration::from_secs(1))
            || started.elapsed() >= Duration::from_secs(5)
        {
            return now;
        }
        last = now;
    }
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
    let r = measure_recovery(&host, cycles).await?;
    println!("density   setpoint, recovery beside {held}: {}", r.total());
    println!("          parts: {}", r.parts());
    host.shutdown().await;
    listener.abort();
    Ok(())
}

/// What a spare costs: `n` workloads of one idle instance, first without spares, then
/// with one each (a change of `spares` is not a new revision: nothing restarts).
async fn spare_memory(n: u32) -> anyhow::Result<()> {
    let host = host()?;
    let workloads = |spares: Option<u32>| {
        (0..n)
            .map(|i| {
                let mut w = idle(&format!("w{i}"), 1);
                w.spec.spares = spares;
                w
            })
            .collect::<Vec<_>>()
    };
    host.apply(workloads(None)).await?;
    for i in 0..n {
        let name = format!("w{i}");
        if let Err(e) = wait_running(&host, &name, 1).await {
            let status = host.status().await;
            let end = status
                .workload(&name)
                .and_then(|w| w.last_termination.as_ref())
                .map(|t| format!("{:?}", t.end.reason));
            anyhow::bail!("{e}; its last end: {end:?}");
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, maps_before) = (rss_kib(), mappings().0);
    host.apply(workloads(Some(1))).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = host.status().await;
        let spares: u32 = status.workloads.iter().map(|w| w.spares).sum();
        let restarts: u64 = status.workloads.iter().map(|w| w.restarts).sum();
        anyhow::ensure!(restarts == 0, "a change of spares restarted instances");
        if spares == n {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{spares} of {n} spares made");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per = rss_kib().saturating_sub(before) as f64 / f64::from(n.max(1));
    let maps = mappings().0.saturating_sub(maps_before) as f64 / f64::from(n.max(1));
    println!(
        "spares    setpoint: {n} spares (one per workload), {per:.1} KiB RSS and {maps:.2} memory mappings each"
    );
    host.shutdown().await;
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
            .env("CRASH_AFTER_MS", crash_run_ms())
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
