//! Policy call cost: the built-in replica policy against the same policy as a Wasm plugin
//! (snapshot capture, conversion to WIT records, the call, validation), on workloads of 10,
//! 1,000, 10,000 and 100,000 slots with every slot live and ready (the steady state,
//! decided on every event). Prints p50 and p99, and the p50 per slot, which shows whether
//! the cost grows linearly. The built-in figure is the controller's pass over a workload:
//! the controller keeps its observations in the form `PolicyInput` borrows, so a pass is
//! the policy call plus validating and executing its (here: no) actions.
//!
//! Run: `cargo xtask guests && cargo bench -p setpoint --bench policy` (RUST_BACKTRACE unset).

use std::sync::Arc;
use std::time::{Duration, Instant};

use setpoint::WorkloadSpec;
use setpoint::policy::snapshot::Snapshot;
use setpoint::policy::{
    InstanceObservation, Policy, PolicyInput, ReplicaPolicy, SlotObservation, validate,
};
use setpoint::runtime::Runtime;
use setpoint::runtime::plugin::{PluginInstance, PluginLimits};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let plugin_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-examples/target/wasm32-wasip2/release/policy_replicas.wasm"
    );
    let runtime = Arc::new(Runtime::new(Default::default())?);
    let prepared = runtime.prepare_plugin(std::path::Path::new(plugin_path))?;
    let limits = PluginLimits {
        cpu_per_call: Duration::from_secs(1),
        wall_per_call: Duration::from_secs(5),
        memory: 256 << 20,
    };
    let mut plugin = PluginInstance::new(runtime.clone(), prepared, limits, "bench".into(), None);
    println!("policy call cost (p50 / p99), every slot live and ready");
    for slots in [10usize, 1_000, 10_000, 100_000] {
        let now = Instant::now();
        let mut spec = WorkloadSpec::new("bench.wasm");
        spec.replicas = slots as u32;
        let observed: Vec<SlotObservation> = (0..slots)
            .map(|i| SlotObservation {
                instance: Some(InstanceObservation {
                    id: format!("w-{i:08x}").into(),
                    revision: "r".into(),
                    since: now,
                    stopping: false,
                    ready: true,
                }),
                ..Default::default()
            })
            .collect();
        let input = PolicyInput {
            workload: "bench",
            desired: &spec,
            revision: "r",
            rollout: None,
            slots: &observed,
            recent_restarts: &[],
            failed: false,
            now,
        };
        let rounds = match slots {
            100_000.. => 30,
            10_000.. => 200,
            _ => 2_000,
        };
        let mut builtin = Vec::with_capacity(rounds);
        let mut actions = Vec::new();
        for _ in 0..rounds {
            actions.clear();
            let t = Instant::now();
            ReplicaPolicy.reconcile(&input, &mut actions);
            builtin.push(t.elapsed());
        }
        let mut wasm = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            let snapshot = Snapshot::capture(&input, "r", &serde_json::Value::Null);
            let records = setpoint::policy::ask_plugin(&mut plugin, &snapshot)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let decided = validate(&records, &input).map_err(|e| anyhow::anyhow!(e))?;
            wasm.push(t.elapsed());
            assert!(decided.is_empty(), "a converged workload needs no action");
        }
        let (builtin_p50, wasm_p50) = (percentile(&mut builtin, 0.5), percentile(&mut wasm, 0.5));
        println!(
            "  {slots:>6} slots   builtin {:>10?} / {:>10?} ({:>5.1} ns/slot)   plugin {:>10?} / {:>10?} ({:>6.1} ns/slot)",
            builtin_p50,
            percentile(&mut builtin, 0.99),
            builtin_p50.as_nanos() as f64 / slots as f64,
            wasm_p50,
            percentile(&mut wasm, 0.99),
            wasm_p50.as_nanos() as f64 / slots as f64,
        );
    }
    runtime.stop_ticker();
    Ok(())
}
