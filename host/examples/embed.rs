//! Embedding setpoint in your own process: build a host in code (no YAML), keep two
//! replicas of a component alive, watch events, and shut down gracefully.
//!
//! Run with `cargo run -p setpoint --example embed` after `cargo xtask guests`.

use std::time::Duration;

use setpoint::{Host, Workload, WorkloadSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let component = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-examples/target/wasm32-wasip2/release/ticker.wasm"
    );
    let host = Host::builder().build()?;
    let mut events = host.events();

    let mut spec = WorkloadSpec::new(component);
    spec.replicas = 2;
    spec.env = vec![("TICK_MS".into(), "50".into())];
    host.apply(vec![Workload::new("embedded-ticker", spec)])
        .await?;

    // Wait (bounded) until both replicas are ready.
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let status = host.status().await;
            if status
                .workload("embedded-ticker")
                .is_some_and(|w| w.ready == 2)
            {
                return status;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), events.recv()).await;
        }
    })
    .await?;
    let w = ready.workload("embedded-ticker").expect("applied above");
    println!(
        "embedded-ticker: {}/{} ready, phase {:?}",
        w.ready, w.desired, w.phase
    );

    let last = host.shutdown().await;
    println!(
        "after shutdown: {} workload(s) tracked",
        last.workloads.len()
    );
    anyhow::ensure!(w.ready == 2, "expected 2 ready replicas");
    Ok(())
}
