//! Embedding setpoint in your own tokio process: no YAML, two replicas kept alive, then a
//! graceful shutdown. Run with `cargo run -p setpoint --example embed` after `cargo xtask guests`.

use std::time::Duration;

use setpoint::{Host, Workload, WorkloadSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let host = Host::builder().build()?;
    let mut spec = WorkloadSpec::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-examples/target/wasm32-wasip2/release/ticker.wasm"
    ));
    spec.replicas = 2;
    host.apply(vec![Workload::new("ticker", spec)]).await?;
    let ready = host
        .wait_for(Duration::from_secs(10), |s| {
            s.workload("ticker").is_some_and(|w| w.ready == 2)
        })
        .await;
    println!("ticker ready: {}", ready.is_some());
    host.shutdown().await;
    anyhow::ensure!(ready.is_some(), "expected 2 ready replicas");
    Ok(())
}
