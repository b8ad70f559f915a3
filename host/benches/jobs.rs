//! Job benchmark: what durability costs. Prints (1) the latency of one job-progress
//! record in the daemon's store (a redb commit, synced to disk), (2) the throughput of a
//! Job of short runs (`batch` with `WORK_MS=0`), with its progress kept in memory and
//! kept in the daemon's store, and (3) the recovery of a crash-looping workload alone,
//! and beside such a job (the ledger's writes are off the controller's task).
//!
//! Run: `cargo xtask guests && cargo bench -p setpoint --bench jobs` (RUST_BACKTRACE
//! unset). `JOB_COMPLETIONS` and `JOB_PARALLELISM` change the job (default 2000 and 4).

use std::sync::Arc;
use std::time::{Duration, Instant};

use setpoint::daemon::store::Store;
use setpoint::manifest::JobSpec;
use setpoint::{Host, JobLedger, JobProgress, Phase, Workload, WorkloadSpec};

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

async fn run_job(
    ledger: Option<Arc<Store>>,
    completions: u32,
    parallelism: u32,
) -> anyhow::Result<Duration> {
    let component = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-examples/target/wasm32-wasip2/release/batch.wasm"
    );
    let mut builder = Host::builder().event_history(4);
    if let Some(ledger) = ledger {
        builder = builder.job_ledger(ledger);
    }
    let host = builder.build()?;
    let mut job = JobSpec::new(completions);
    job.parallelism = parallelism;
    let mut spec = WorkloadSpec::job(component, job);
    spec.env = vec![("WORK_MS".into(), "0".into())];
    let started = Instant::now();
    host.apply(vec![Workload::new("bench", spec)]).await?;
    let done = host
        .wait_for(Duration::from_secs(600), |s| {
            s.workload("bench")
                .is_some_and(|w| matches!(w.phase, Phase::Succeeded | Phase::Failed))
        })
        .await
        .ok_or_else(|| anyhow::anyhow!("the job did not finish"))?;
    let took = started.elapsed();
    let w = done.workload("bench").expect("present");
    anyhow::ensure!(
        w.phase == Phase::Succeeded,
        "the job failed: {:?}",
        w.conditions
    );
    host.shutdown().await;
    Ok(took)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let completions = env_or("JOB_COMPLETIONS", 2000);
    let parallelism = env_or("JOB_PARALLELISM", 4);
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(dir.path())?);
    // The ledger only records jobs the desired state holds.
    let record = setpoint::daemon::store::ApplyRecord {
        documents: Vec::new(),
        files: Default::default(),
        applied_at: 0,
        dirs: Default::default(),
        replicas: Default::default(),
    };
    store.record_apply(&record, &["bench".into(), "probe".into()], &[])?;

    let mut progress = JobProgress::start("r");
    let mut latencies = Vec::new();
    for i in 0..500 {
        progress.succeeded = i;
        let t = Instant::now();
        store.record("probe", &progress)?;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    println!(
        "job progress record (redb commit, durable) in {}: p50 {:?}, p99 {:?}, max {:?}",
        dir.path().display(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );

    let memory = run_job(None, completions, parallelism).await?;
    let durable = run_job(Some(store.clone()), completions, parallelism).await?;
    for (label, took) in [("in memory", memory), ("in the daemon's store", durable)] {
        println!(
            "job of {completions} runs, {parallelism} at a time, progress {label}: {:?} ({:.0} runs/s, {:?} per run)",
            took,
            f64::from(completions) / took.as_secs_f64(),
            took / completions
        );
    }
    for (label, beside) in [
        ("alone", None),
        ("beside a job, progress in memory", Some(None)),
        (
            "beside a job, progress in the daemon's store",
            Some(Some(store.clone())),
        ),
    ] {
        let (p50, p99) = recovery(beside, parallelism).await?;
        println!(
            "crash-loop recovery (exit → replacement spawned) {label}: p50 {p50:?}, p99 {p99:?}"
        );
    }
    Ok(())
}

/// Reaction of the controller to a crash-looping workload's ends (end → replacement
/// spawned, event times), optionally beside an endless job of instant runs.
async fn recovery(
    beside: Option<Option<Arc<Store>>>,
    parallelism: u32,
) -> anyhow::Result<(Duration, Duration)> {
    let guests = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-examples/target/wasm32-wasip2/release/"
    );
    let mut builder = Host::builder().event_history(4);
    if let Some(Some(ledger)) = &beside {
        builder = builder.job_ledger(ledger.clone());
    }
    let host = builder.build()?;
    let mut events = host.events();
    let mut crash = WorkloadSpec::new(format!("{guests}crasher.wasm"));
    crash.env = vec![
        ("CRASH_AFTER_MS".into(), "0".into()),
        ("MODE".into(), "exit".into()),
    ];
    crash.backoff.initial = Duration::ZERO;
    crash.backoff.max = Duration::ZERO;
    let mut workloads = vec![Workload::new("crashloop", crash)];
    if beside.is_some() {
        let mut job = JobSpec::new(1_000_000);
        job.parallelism = parallelism;
        let mut spec = WorkloadSpec::job(format!("{guests}batch.wasm"), job);
        spec.env = vec![("WORK_MS".into(), "0".into())];
        workloads.push(Workload::new("bench", spec));
    }
    host.apply(workloads).await?;
    let mut reaction = Vec::new();
    let mut last_end = None;
    while reaction.len() < 3000 {
        match events.recv().await {
            Ok(e) if e.workload == "crashloop" && e.reason == "Exited" => last_end = Some(e.time),
            Ok(e) if e.workload == "crashloop" && e.reason == "Replaced" => {
                if let Some(end) = last_end.take() {
                    reaction.push(e.time.duration_since(end).unwrap_or_default());
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => last_end = None,
            Err(e) => anyhow::bail!("events closed: {e}"),
        }
    }
    host.shutdown().await;
    reaction.sort();
    Ok((percentile(&reaction, 0.5), percentile(&reaction, 0.99)))
}
