//! Embedding setpoint in your own tokio process: no YAML, two replicas kept alive, then a
//! graceful shutdown. Run with `cargo run -p setpoint --example embed` after `cargo xtask guests`.
//!
//! It needs only the library: `--no-default-features --features cranelift` builds it
//! without the daemon, the CLI or HTTP (CI checks that), and with no features at all it
//! runs a precompiled component: `embed ticker.cwasm` (made by `setpoint compile`).
//! `SETPOINT_EMBED_HOLD_MS` keeps it running that long once ready (to measure it).

use std::time::Duration;

use setpoint::{Host, Workload, WorkloadSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let component = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../guest-examples/target/wasm32-wasip2/release/ticker.wasm"
        )
        .into()
    });
    // A `.cwasm` is native code: load one only when you built it.
    let precompiled = component.ends_with(".cwasm");
    let host = Host::builder().allow_precompiled(precompiled).build()?;
    let mut spec = WorkloadSpec::new(component);
    spec.replicas = 2;
    host.apply(vec![Workload::new("ticker", spec)]).await?;
    let ready = host
        .wait_for(Duration::from_secs(10), |s| {
            s.workload("ticker").is_some_and(|w| w.ready == 2)
        })
        .await;
    println!("ticker ready: {}", ready.is_some());
    if let Some(ms) = std::env::var("SETPOINT_EMBED_HOLD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    host.shutdown().await;
    anyhow::ensure!(ready.is_some(), "expected 2 ready replicas");
    Ok(())
}
