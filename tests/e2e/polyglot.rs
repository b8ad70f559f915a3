//! Policy plugins written in Python (componentize-py) and JavaScript (jco componentize),
//! built by `cargo xtask guests` from `guest-examples/policy-python` and `policy-js`:
//! replayed on the example snapshot by `setpoint policy test`, held to the built-in where
//! their rules coincide, and driving real workloads.

use std::process::Command;
use std::time::Duration;

use proptest::prelude::*;
use setpoint::policy::snapshot::{BackoffMs, Snapshot};

use crate::common::{Manifests, guest, host, wait_for, workload};

/// Whether `name` was built. `cargo xtask guests` skips these guests, saying why, where
/// componentize-py or jco cannot be installed; so do these tests then, except under CI,
/// where the xtask fails first.
fn built(name: &str) -> bool {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-examples/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    if path.is_file() || std::env::var_os("CI").is_some() {
        return true;
    }
    eprintln!(
        "skipped: {} was not built (see `cargo xtask guests`)",
        path.display()
    );
    false
}

/// `setpoint policy test PLUGIN --snapshot specs/snapshots/crashloop.yaml -o json`.
fn replay_example_snapshot(plugin: &str) -> serde_json::Value {
    let snapshot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/snapshots/crashloop.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .env_remove("RUST_BACKTRACE")
        .args(["policy", "test"])
        .arg(guest(plugin))
        .arg("--snapshot")
        .arg(&snapshot)
        .args(["-o", "json"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{plugin}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON decisions")
}

#[test]
fn both_replay_the_example_snapshot_with_its_back_off() {
    // Slot 0 runs; slot 1 ended 15 ms ago, its fourth end in a row (back-off 10 ms doubled
    // twice: 40 ms); slot 2 never ran.
    for plugin in ["policy_python", "policy_js"]
        .into_iter()
        .filter(|p| built(p))
    {
        let decided = replay_example_snapshot(plugin);
        let decided = decided.as_array().expect("a list of actions");
        assert!(
            decided.contains(&serde_json::json!({"action": "spawn", "slot": 2})),
            "{plugin}: {decided:?}"
        );
        assert!(
            decided.contains(&serde_json::json!({"action": "requeueAfter", "ms": 25})),
            "{plugin}: {decided:?}"
        );
        assert!(
            !decided.iter().any(|a| a["slot"] == 1),
            "{plugin} backs slot 1 off: {decided:?}"
        );
    }
}

/// Snapshots on which the built-in's rules and the plugins' coincide: no rollout, no
/// restart budget, no back-off.
fn plain_snapshots(config: serde_json::Value) -> impl Strategy<Value = Snapshot> {
    crate::policy::snapshot_strategy().prop_map(move |mut s| {
        s.desired.backoff = BackoffMs {
            initial_ms: 0,
            max_ms: 0,
            reset_after_ms: s.desired.backoff.reset_after_ms,
        };
        s.desired.restart_budget = None;
        s.desired.config = config.clone();
        s.observed.rollout = None;
        for slot in &mut s.observed.slots {
            slot.successor = None;
        }
        s
    })
}

/// `plugin`, configured as `config`, decides as the built-in does on `cases` snapshots.
fn decides_like_the_builtin(plugin: &str, config: serde_json::Value, cases: u32) {
    if built(plugin) {
        let async_abi = plugin.ends_with("_qjs");
        crate::policy::decides_like_the_builtin(plugin, plain_snapshots(config), cases, async_abi);
    }
}

#[test]
fn the_python_plugin_decides_like_the_builtin_where_their_rules_coincide() {
    // A batch as large as any workload, no interval: staggering never holds a start back.
    decides_like_the_builtin(
        "policy_python",
        serde_json::json!({"batch": 1000, "intervalMs": 0}),
        300,
    );
}

#[test]
fn the_javascript_plugin_decides_like_the_builtin_where_their_rules_coincide() {
    // No quarantine.
    decides_like_the_builtin("policy_js", serde_json::json!({"maxCrashes": 0}), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_plugin_starts_replicas_a_batch_at_a_time() {
    if !built("policy_python") {
        return;
    }
    let m = Manifests::new();
    let spec = format!(
        "  replicas: 3\n  env: {{TICK_MS: '60000'}}\n  policy:\n    plugin: {}\n    config: {{batch: 1, intervalMs: 300}}\n",
        guest("policy_python").display()
    );
    let file = m.write("w.yaml", &workload("staggered", "ticker", &spec));
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifest");
    let w = wait_for(&host, "staggered", "3 running", |w| w.running == 3).await;
    assert!(
        w.events.iter().any(|e| e.reason == "Staggered"),
        "{:?}",
        w.events
    );
    // Each started once the one before had been up for the interval.
    let mut ages: Vec<Duration> = w.instances.iter().map(|i| i.age).collect();
    ages.sort();
    for pair in ages.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(295),
            "started too close together: {ages:?}"
        );
    }
    assert_eq!(w.restarts, 0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_plugin_quarantines_a_crashing_slot_and_nothing_else() {
    if !built("policy_js") {
        return;
    }
    let m = Manifests::new();
    let crashing = format!(
        "  restartPolicy: Always\n  env: {{CRASH_AFTER_MS: '0', MODE: exit}}\n  backoff: {{initial: 1ms, max: 1ms}}\n  policy:\n    plugin: {}\n    config: {{maxCrashes: 3, cooldownMs: 600000}}\n",
        guest("policy_js").display()
    );
    let steady = format!(
        "  replicas: 2\n  env: {{TICK_MS: '60000'}}\n  policy:\n    plugin: {}\n",
        guest("policy_js").display()
    );
    let docs = [
        workload("crashing", "crasher", &crashing),
        workload("steady", "ticker", &steady),
    ];
    let file = m.write("w.yaml", &docs.join("---\n"));
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifests");
    wait_for(&host, "steady", "2 running", |w| w.running == 2).await;
    let w = wait_for(&host, "crashing", "its slot quarantined", |w| {
        w.events.iter().any(|e| e.reason == "SlotQuarantined")
    })
    .await;
    // Three ends in a row: the first instance and two replacements.
    assert_eq!(w.restarts, 2, "{:?}", w.events);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = host.status().await;
    let w = status.workload("crashing").unwrap();
    assert_eq!((w.restarts, w.running), (2, 0), "no restart in quarantine");
    let steady = status.workload("steady").unwrap();
    assert_eq!((steady.running, steady.restarts), (2, 0));
    assert!(
        status
            .workloads
            .iter()
            .flat_map(|w| &w.events)
            .all(|e| e.reason != "PolicyPluginFailed"),
        "{status:?}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quickjs_reactor_that_uses_the_async_abi_runs_as_a_workload() {
    if !built("hello_js") {
        return;
    }
    let m = Manifests::new();
    let spec = "  replicas: 2\n  health:\n    probe: {period: 100ms}\n";
    let file = m.write("w.yaml", &workload("hello-js", "hello_js", spec));
    // Without the async ABI the host refuses it at apply, naming the feature and the flag.
    let plain = host();
    let refused = plain
        .apply_files(std::slice::from_ref(&file))
        .await
        .expect_err("the async ABI is off by default");
    let d = &refused.diagnostics[0];
    assert!(
        d.message.contains("uses the component model async feature"),
        "{refused}"
    );
    let help = d.help.as_deref().unwrap_or_default();
    assert!(help.contains("--component-model-async"), "{refused}");
    assert!(!help.contains("wasm32-wasip2"), "{refused}");
    plain.shutdown().await;
    let host = setpoint::Host::builder()
        .component_model_async(true)
        .build()
        .expect("host starts");
    host.apply_files(&[file]).await.expect("valid manifest");
    let w = wait_for(&host, "hello-js", "2 ready", |w| w.ready == 2).await;
    assert_eq!(w.restarts, 0, "{:?}", w.events);
    // Probed through its exported `health` a few times, and still ready.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let status = host.status().await;
    let w = status.workload("hello-js").unwrap();
    assert_eq!((w.ready, w.restarts), (2, 0), "{:?}", w.events);
    let stopped = host.shutdown().await;
    let w = stopped.workload("hello-js").unwrap();
    assert!(
        w.events.iter().all(|e| e.reason != "StartFailed"),
        "{:?}",
        w.events
    );
}

#[test]
fn the_quickjs_build_of_the_javascript_plugin_decides_like_the_builtin_too() {
    // The same source as `policy_js`, through jco's QuickJS backend and the async ABI.
    decides_like_the_builtin("policy_js_qjs", serde_json::json!({"maxCrashes": 0}), 200);
}
