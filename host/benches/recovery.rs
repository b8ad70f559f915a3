//! Recovery benchmark: a component that exits at once, replaced with zero back-off, N times.
//! Prints (1) the controller's reaction time, from an instance's end being handled to its
//! replacement being spawned (event timestamps), and (2) the full crash-loop cycle:
//! spawn, instantiate, run, exit, observe, replace.
//!
//! Run: `cargo xtask guests && cargo bench -p setpoint --bench recovery` (RUST_BACKTRACE unset).
//! `SPARES=N` sets the host's spares per workload (default: the host default, 1);
//! `MODE=panic` makes each instance trap (a Rust panic) instead of exiting.
//! `DIRECT=off` makes every replacement wait for the controller's pass (no direct
//! replacement by the ended instance's task).

use std::time::{Duration, Instant};

use setpoint::{Host, Workload, WorkloadSpec};

const CYCLES: usize = 5_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let component = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-examples/target/wasm32-wasip2/release/crasher.wasm"
    );
    let mut builder = Host::builder().event_history(4);
    if let Some(n) = std::env::var("SPARES").ok().and_then(|n| n.parse().ok()) {
        builder = builder.spares(n);
    }
    let direct = std::env::var("DIRECT").map_or(true, |v| v != "off");
    let host = builder.direct_replacement(direct).build()?;
    let mut events = host.events();
    let mode = std::env::var("MODE").unwrap_or_else(|_| "exit".into());
    let mut spec = WorkloadSpec::new(component);
    spec.env = vec![
        ("CRASH_AFTER_MS".into(), "0".into()),
        ("MODE".into(), mode.clone()),
    ];
    spec.backoff.initial = Duration::ZERO;
    spec.backoff.max = Duration::ZERO;
    host.apply(vec![Workload::new("crashloop", spec)]).await?;

    // Read in a task of the runtime's, as a subscriber inside a host would: read on the
    // thread blocked in `block_on`, each event woke that thread, at a cost to the
    // controller of about 17 µs per recovery.
    let started = Instant::now();
    let (mut reaction, lagged) = tokio::spawn(async move {
        let mut reaction = Vec::with_capacity(CYCLES);
        let mut last_end = None;
        let mut lagged = 0;
        while reaction.len() < CYCLES {
            match events.recv().await {
                Ok(e) if e.reason == "Exited" || e.reason == "Trapped" => last_end = Some(e.time),
                Ok(e) if e.reason == "Replaced" => {
                    if let Some(end) = last_end.take() {
                        reaction.push(e.time.duration_since(end).unwrap_or_default());
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    lagged += n;
                    last_end = None;
                }
                Err(e) => anyhow::bail!("event stream closed: {e}"),
            }
        }
        anyhow::Ok((reaction, lagged))
    })
    .await??;
    let elapsed = started.elapsed();
    let restarts = host
        .status()
        .await
        .workload("crashloop")
        .map_or(0, |w| w.restarts);
    host.shutdown().await;

    reaction.sort();
    let pct = |p: f64| reaction[((reaction.len() as f64 * p) as usize).min(reaction.len() - 1)];
    println!("recovery ({mode}): {CYCLES} end→replacement-spawn samples ({lagged} events skipped)");
    println!(
        "  controller reaction  p50 {:?}  p99 {:?}  max {:?}",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "  crash-loop cycle     {:?} per restart ({restarts} restarts in {elapsed:?})",
        elapsed / restarts.max(1) as u32
    );
    Ok(())
}
