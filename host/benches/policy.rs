//! Policy call cost: the built-in replica policy against the same policy as a Wasm plugin
//! (conversion to WIT records, the call, validation), on workloads of 10, 1,000, 10,000 and
//! 100,000 slots with every slot live and ready (the steady state, decided on every
//! event). Prints p50 and p99, and the p50 per slot, which shows whether the cost grows
//! linearly. The built-in figure is the controller's pass over a workload: the controller
//! keeps its observations in the form `PolicyInput` borrows, so a pass is the policy call
//! plus validating and executing its (here: no) actions. Then the Python and JavaScript
//! examples on the same input (up to 10,000 slots), and every policy under churn, timed
//! by a real host's controller.
//!
//! `POLICY_SLOTS=10,1000` picks the sizes, `POLICY_CHURN_SECONDS=0` skips the churn.
//!
//! Run: `cargo xtask guests && cargo bench -p setpoint --bench policy` (RUST_BACKTRACE unset).

use std::sync::Arc;
use std::time::{Duration, Instant};

use setpoint::manifest::PolicyPlugin;
use setpoint::policy::{
    InstanceObservation, PluginInput, Policy, PolicyInput, ReplicaPolicy, SlotObservation, validate,
};
use setpoint::runtime::Runtime;
use setpoint::runtime::plugin::{PluginInstance, PluginLimits};
use setpoint::{HostBuilder, Workload, WorkloadSpec};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)]
}

/// A workload of `slots` slots, every one live and ready.
struct Converged {
    spec: WorkloadSpec,
    revision: Arc<str>,
    slots: Vec<SlotObservation>,
    now: Instant,
}

impl Converged {
    fn new(slots: usize) -> Self {
        let now = Instant::now();
        let mut spec = WorkloadSpec::new("bench.wasm");
        spec.replicas = slots as u32;
        // Instances share their revision's text with the workload, as in the controller.
        let revision: Arc<str> = "r".into();
        let slots = (0..slots)
            .map(|i| SlotObservation {
                instance: Some(InstanceObservation {
                    id: format!("w-{i:08x}").into(),
                    revision: revision.clone(),
                    since: now,
                    stopping: false,
                    ready: true,
                }),
                ..Default::default()
            })
            .collect();
        Self {
            spec,
            revision,
            slots,
            now,
        }
    }

    fn input(&self) -> PolicyInput<'_> {
        PolicyInput {
            workload: "bench",
            desired: &self.spec,
            revision: &self.revision,
            rollout: None,
            slots: &self.slots,
            recent_restarts: &[],
            failed: false,
            now: self.now,
        }
    }
}

/// A plugin instance of the example `name`, with room for the largest sizes.
fn plugin(runtime: &Arc<Runtime>, name: &str) -> anyhow::Result<PluginInstance> {
    let prepared = runtime.prepare_plugin(&guest(name))?;
    let limits = PluginLimits {
        cpu_per_call: Duration::from_secs(1),
        wall_per_call: Duration::from_secs(5),
        memory: 256 << 20,
    };
    Ok(PluginInstance::new(
        runtime.clone(),
        prepared,
        limits,
        "bench".into(),
        None,
    ))
}

/// `rounds` whole decisions by `plugin` on `input`: conversion, call, validation.
async fn time_plugin(
    plugin: &mut PluginInstance,
    input: &PolicyInput<'_>,
    rounds: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(rounds);
    let mut buffers = PluginInput::new(&serde_json::Value::Null);
    for _ in 0..rounds {
        let t = Instant::now();
        let records = setpoint::policy::ask_plugin(plugin, &mut buffers, input, 0)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let decided = validate(&records, input).map_err(|e| anyhow::anyhow!(e))?;
        samples.push(t.elapsed());
        assert!(decided.is_empty(), "a converged workload needs no action");
    }
    Ok(samples)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runtime = Arc::new(Runtime::new(Default::default())?);
    let mut replicas = plugin(&runtime, "policy_replicas")?;
    println!("policy call cost (p50 / p99), every slot live and ready");
    let sizes: Vec<usize> = std::env::var("POLICY_SLOTS").map_or_else(
        |_| vec![10, 1_000, 10_000, 100_000],
        |v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
    );
    for &slots in &sizes {
        let converged = Converged::new(slots);
        let input = converged.input();
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
        let mut wasm = time_plugin(&mut replicas, &input, rounds).await?;
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
    // The Python and JavaScript examples (other policies, the same converged input), where
    // `cargo xtask guests` could build them.
    for name in ["policy_python", "policy_js", "policy_js_qjs"] {
        if !guest(name).exists() {
            println!("  {name}: not built, skipped");
            continue;
        }
        // The QuickJS build uses the async ABI, which a runtime runs only when asked to.
        let runtime = if name.ends_with("_qjs") {
            Arc::new(Runtime::new(setpoint::runtime::RuntimeConfig {
                component_model_async: true,
                ..Default::default()
            })?)
        } else {
            runtime.clone()
        };
        let mut other = plugin(&runtime, name)?;
        for &slots in sizes.iter().filter(|s| **s <= 10_000) {
            let converged = Converged::new(slots);
            let rounds = if slots >= 10_000 { 20 } else { 200 };
            let mut samples = time_plugin(&mut other, &converged.input(), rounds).await?;
            println!(
                "  {slots:>6} slots   {name:<15} {:>10?} / {:>10?}",
                percentile(&mut samples, 0.5),
                percentile(&mut samples, 0.99),
            );
        }
    }
    runtime.stop_ticker();
    let churn_seconds = std::env::var("POLICY_CHURN_SECONDS").map_or(3, |v| v.parse().unwrap_or(3));
    if churn_seconds > 0 {
        println!("policy call cost under churn (the controller's own timing)");
        churn(None, churn_seconds).await?;
        // The examples configured to replace every end at once, as the built-in does.
        let plugins = [
            ("policy_replicas", serde_json::Value::Null),
            (
                "policy_python",
                serde_json::json!({"batch": 10, "intervalMs": 0}),
            ),
            ("policy_js", serde_json::json!({"maxCrashes": 0})),
            ("policy_js_qjs", serde_json::json!({"maxCrashes": 0})),
        ];
        for (name, config) in plugins {
            if guest(name).exists() {
                churn(Some((name, config)), churn_seconds).await?;
            }
        }
    }
    Ok(())
}

fn guest(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-examples/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

/// Under churn: a real host whose 10-slot workload's instances exit at once and are
/// replaced with zero back-off, decided by `plugin` (or the built-in policy). Each exit
/// is a reconcile, so the policy is called on a snapshot that changes every time, between
/// spawns and exits on the same runtime. The controller times every call into its
/// `policy_call_duration_seconds` histogram; the mean is exact, p50 and p99 are
/// interpolated within the histogram's buckets.
async fn churn(plugin: Option<(&str, serde_json::Value)>, seconds: u64) -> anyhow::Result<()> {
    let name = plugin
        .as_ref()
        .map_or("built-in", |(name, _)| *name)
        .to_string();
    let async_abi = name.ends_with("_qjs");
    let host = HostBuilder::default()
        .event_history(4)
        .component_model_async(async_abi)
        .build()?;
    let mut spec = WorkloadSpec::new(guest("crasher"));
    spec.replicas = 10;
    spec.env = vec![
        ("CRASH_AFTER_MS".into(), "0".into()),
        ("MODE".into(), "exit".into()),
    ];
    spec.backoff.initial = Duration::ZERO;
    spec.backoff.max = Duration::ZERO;
    spec.policy = plugin.map(|(p, config)| PolicyPlugin {
        plugin: guest(p),
        config,
    });
    host.apply(vec![Workload::new("churn", spec)]).await?;
    let before = policy_histogram(&host.metrics().await);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = policy_histogram(&host.metrics().await);
    host.shutdown().await;
    let calls = after.count - before.count;
    let mean = (after.sum - before.sum) / calls.max(1) as f64;
    println!(
        "  churn, 10 slots, {:<22} {calls:>7} calls   mean {:>9.1?}   p50 ~{:>9.1?}   p99 ~{:>9.1?}",
        name,
        Duration::from_secs_f64(mean),
        Duration::from_secs_f64(after.minus(&before).quantile(0.5)),
        Duration::from_secs_f64(after.minus(&before).quantile(0.99)),
    );
    Ok(())
}

/// A histogram read from OpenMetrics text: cumulative bucket counts by upper bound.
#[derive(Default)]
struct Histogram {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn minus(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(&(le, n), &(_, m))| (le, n - m))
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// The `q` quantile, interpolated linearly within its bucket (as Prometheus'
    /// `histogram_quantile` does).
    fn quantile(&self, q: f64) -> f64 {
        let rank = q * self.count as f64;
        let mut lower = (0.0, 0u64);
        for &(le, n) in &self.buckets {
            if n as f64 >= rank {
                let (lo, below) = lower;
                let inside = (n - below).max(1) as f64;
                let upper = if le.is_finite() { le } else { lo };
                return lo + (upper - lo) * (rank - below as f64) / inside;
            }
            lower = (le, n);
        }
        lower.0
    }
}

fn policy_histogram(text: &str) -> Histogram {
    let mut h = Histogram::default();
    let name = "setpoint_policy_call_duration_seconds";
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let mut parts = rest.rsplitn(2, ' ');
        let (Some(value), Some(key)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let Some(le) = key
            .strip_prefix("_bucket{le=\"")
            .and_then(|k| k.strip_suffix("\"}"))
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(0.0)
            };
            h.buckets.push((le, value.parse().unwrap_or(0)));
        } else if key == "_sum" {
            h.sum = value.parse().unwrap_or(0.0);
        } else if key == "_count" {
            h.count = value.parse().unwrap_or(0);
        }
    }
    h
}
