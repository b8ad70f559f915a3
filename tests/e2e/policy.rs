//! Policy plugins: the WIT contract end to end. The plugin version of the replica policy
//! decides exactly like the built-in; example plugins drive real workloads; every way a
//! plugin can break falls back to the built-in without stopping anything else.

use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use setpoint::policy::snapshot::{
    ActionRecord, BackoffMs, DesiredSnapshot, EndSnapshot, InstanceSnapshot, ObservedSnapshot,
    RestartBudgetMs, RolloutSnapshot, SlotSnapshot, Snapshot, StrategySnapshot,
};
use setpoint::policy::{Policy, ReplicaPolicy};
use setpoint::runtime::Runtime;
use setpoint::runtime::plugin::{PluginInstance, PluginLimits};
use setpoint::{EventType, RestartPolicy};

use crate::common::{Manifests, guest, host, wait_for, wait_for_host, workload};

fn plugin_path(name: &str) -> String {
    guest(name).display().to_string()
}

fn end_strategy() -> impl Strategy<Value = EndSnapshot> {
    let reasons = prop::sample::select(setpoint::end::EndKind::ALL.to_vec());
    (reasons, 0..3i32, 0..3000u64).prop_map(|(reason, code, ago_ms)| EndSnapshot {
        reason,
        exit_code: (reason == setpoint::end::EndKind::Exited).then_some(code),
        ago_ms,
    })
}

fn instance_strategy() -> impl Strategy<Value = InstanceSnapshot> {
    let revision = prop::sample::select(vec!["new", "old"]);
    (
        0..10_000u64,
        any::<bool>(),
        prop::bool::weighted(0.1),
        revision,
    )
        .prop_map(|(age_ms, ready, stopping, revision)| InstanceSnapshot {
            id: format!("w-{age_ms:x}"),
            revision: revision.to_string(),
            age_ms,
            ready,
            stopping,
        })
}

type SlotParts = (
    Option<InstanceSnapshot>,
    Option<InstanceSnapshot>,
    u32,
    u32,
    Option<EndSnapshot>,
);

fn slot_strategy() -> impl Strategy<Value = SlotParts> {
    let successor = prop::option::weighted(
        0.2,
        instance_strategy().prop_map(|mut i| {
            i.revision = "new".into();
            i
        }),
    );
    (
        prop::option::of(instance_strategy()),
        successor,
        0..20u32,
        0..8u32,
        prop::option::of(end_strategy()),
    )
}

/// Any snapshot a policy could be given, rollouts included.
pub(crate) fn snapshot_strategy() -> impl Strategy<Value = Snapshot> {
    let policy = prop::sample::select(vec![
        RestartPolicy::Always,
        RestartPolicy::OnFailure,
        RestartPolicy::Never,
    ]);
    let budget = prop::option::of((0..6u32, 0..5000u64).prop_map(|(max_restarts, window_ms)| {
        RestartBudgetMs {
            max_restarts,
            window_ms,
        }
    }));
    let strategy = (
        0..3u32,
        0..3u32,
        0..5000u64,
        any::<bool>(),
        prop::sample::select(vec![0u64, 50, 5000]),
    )
        .prop_map(
            |(max_surge, max_unavailable, progress_deadline_ms, auto_rollback, min_ready_ms)| {
                StrategySnapshot {
                    recreate: false,
                    max_surge,
                    max_unavailable,
                    progress_deadline_ms,
                    auto_rollback,
                    min_ready_ms,
                }
            },
        );
    let rollout = prop::option::of((0..8000u64, prop::bool::weighted(0.2)).prop_map(
        |(started_ago_ms, rolled_back)| RolloutSnapshot {
            started_ago_ms,
            rolled_back,
        },
    ));
    let desired = (
        0..6u32,
        policy,
        (0..50u64, 0..400u64, 1..100_000u64),
        budget,
        strategy,
    )
        .prop_map(
            |(
                replicas,
                restart_policy,
                (initial_ms, extra, reset_after_ms),
                restart_budget,
                strategy,
            )| DesiredSnapshot {
                workload: "w".into(),
                revision: "new".into(),
                replicas,
                restart_policy,
                backoff: BackoffMs {
                    initial_ms,
                    max_ms: initial_ms + extra,
                    reset_after_ms,
                },
                restart_budget,
                config: serde_json::Value::Null,
                strategy,
            },
        );
    let observed = (
        prop::collection::vec(slot_strategy(), 0..9),
        prop::collection::vec(0..6000u64, 0..8),
        prop::bool::weighted(0.1),
        rollout,
    )
        .prop_map(|(slots, recent, failed, rollout)| ObservedSnapshot {
            slots: slots
                .into_iter()
                .enumerate()
                .map(
                    |(i, (instance, successor, restarts, consecutive_ends, last_end))| {
                        SlotSnapshot {
                            index: i as u32,
                            instance,
                            successor,
                            restarts,
                            consecutive_ends,
                            last_end,
                        }
                    },
                )
                .collect(),
            recent_restarts_ago_ms: recent,
            failed,
            rollout,
        });
    (desired, observed).prop_map(|(desired, observed)| Snapshot {
        desired,
        observed,
        now_unix_ms: 1_795_000_000_000,
    })
}

#[test]
fn the_replica_plugin_decides_exactly_like_the_builtin() {
    decides_like_the_builtin("policy_replicas", snapshot_strategy(), 2000, false);
}

/// The example plugin `name` decides as the built-in does on `cases` snapshots drawn from
/// `snapshots`, on a runtime with the component model's async ABI if `async_abi`.
pub(crate) fn decides_like_the_builtin(
    name: &str,
    snapshots: impl Strategy<Value = Snapshot>,
    cases: u32,
    async_abi: bool,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let runtime = Arc::new(
        Runtime::new(setpoint::runtime::RuntimeConfig {
            component_model_async: async_abi,
            ..Default::default()
        })
        .unwrap(),
    );
    let prepared = runtime
        .prepare_plugin(&guest(name))
        .expect("plugin builds and links");
    let plugin = std::cell::RefCell::new(PluginInstance::new(
        runtime.clone(),
        prepared,
        PluginLimits::default(),
        "diff".into(),
        None,
    ));
    let compared = std::cell::Cell::new(0);
    proptest!(ProptestConfig::with_cases(cases), |(snapshot in snapshots)| {
        let replay = snapshot.replay(Instant::now());
        let mut builtin = Vec::new();
        ReplicaPolicy.reconcile(&replay.input(), &mut builtin);
        let builtin: Vec<ActionRecord> = builtin.iter().map(ActionRecord::from).collect();
        let from_plugin = rt.block_on(setpoint::policy::ask_plugin_on_snapshot(&mut plugin.borrow_mut(), &snapshot)).expect("the plugin decides");
        prop_assert_eq!(&from_plugin, &builtin, "{}: snapshot: {}", name, serde_json::to_string(&snapshot).unwrap());
        compared.set(compared.get() + 1);
    });
    assert_eq!(compared.get(), cases);
    runtime.stop_ticker();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_plugin_keeps_a_crash_loop_going_like_the_builtin() {
    let m = Manifests::new();
    let spec = format!(
        "  env: {{CRASH_AFTER_MS: '0', MODE: exit}}\n  backoff: {{initial: 5ms, max: 20ms}}\n  policy:\n    plugin: {}\n",
        plugin_path("policy_replicas")
    );
    let file = m.write("w.yaml", &workload("looped", "crasher", &spec));
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifest");
    let w = wait_for(&host, "looped", "five replacements", |w| w.restarts >= 5).await;
    assert!(
        w.policy.starts_with("plugin:policy_replicas.wasm"),
        "{}",
        w.policy
    );
    assert!(
        w.events.iter().any(|e| e.reason == "BackOff"),
        "the plugin's own back-off events: {:?}",
        w.events
    );
    assert!(w.events.iter().all(|e| e.reason != "PolicyPluginFailed"));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ordered_plugin_starts_slots_one_ready_slot_at_a_time() {
    let m = Manifests::new();
    // Each instance needs three 20ms probes to be ready, so order is visible.
    let spec = format!(
        "  replicas: 3\n  env: {{WARMUP_PROBES: '2'}}\n  health:\n    probe: {{period: 20ms}}\n  policy:\n    plugin: {}\n",
        plugin_path("policy_ordered")
    );
    let file = m.write("w.yaml", &workload("ordered", "probed", &spec));
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifest");
    let deadline = Instant::now() + crate::common::PATIENCE;
    loop {
        let status = host.status().await;
        let w = status.workload("ordered").expect("applied");
        // Live slots always form a prefix, and only the last of them may be unready.
        let slots: Vec<u32> = w.instances.iter().map(|i| i.slot).collect();
        assert!(
            slots.iter().enumerate().all(|(i, s)| *s == i as u32),
            "slots {slots:?}"
        );
        let unready = w.instances.iter().filter(|i| !i.ready).count();
        assert!(
            unready <= 1,
            "at most one slot starting at a time: {:?}",
            w.instances
        );
        if w.ready == 3 {
            assert!(w.events.iter().any(|e| e.reason == "WaitingForReady"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ordered start did not finish: {w:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_plugin_runs_what_the_schedule_says() {
    let m = Manifests::new();
    let spec = format!(
        "  replicas: 4\n  policy:\n    plugin: {}\n    config:\n      default: 0\n      windows:\n        - {{from: '00:00', to: '24:00', replicas: 2}}\n",
        plugin_path("policy_schedule")
    );
    let file = m.write("w.yaml", &workload("scheduled", "ticker", &spec));
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifest");
    wait_for(&host, "scheduled", "2 running", |w| w.ready == 2).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let w = host.status().await.workload("scheduled").cloned().unwrap();
    assert_eq!(
        (w.running, w.ready, w.restarts),
        (2, 2, 0),
        "the schedule, not spec.replicas, decides"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broken_plugin_falls_back_and_nothing_else_stops() {
    let m = Manifests::new();
    let broken = plugin_path("policy_broken");
    let modes = [
        ("trap", "UnreachableCodeReached"),
        ("spin", "CPU budget spent"),
        ("oom", "out of memory"),
        ("sleep", "did not return within"),
        ("spawn-beyond", "spawn in slot 9999"),
        ("stop-unknown", "which has no instance"),
        ("bad-reason", "is not CamelCase"),
        ("flood", "10000 actions"),
    ];
    let mut docs: Vec<String> = modes
        .iter()
        .map(|(mode, _)| {
            let spec = format!(
                "  replicas: 2\n  policy:\n    plugin: {broken}\n    config: {{mode: {mode}}}\n"
            );
            workload(&format!("broken-{mode}"), "ticker", &spec)
        })
        .collect();
    docs.push(workload("bystander", "ticker", "  replicas: 2\n"));
    let file = m.write("all.yaml", &docs.join("---\n"));
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifests");
    let status = wait_for_host(
        &host,
        "every broken plugin disabled, every workload converged",
        |s| {
            s.workloads.iter().all(|w| w.ready == 2)
                && modes.iter().all(|(mode, _)| {
                    s.workload(&format!("broken-{mode}"))
                        .is_some_and(|w| w.policy.contains("(disabled"))
                })
        },
    )
    .await;
    for (mode, cause) in modes {
        let w = status.workload(&format!("broken-{mode}")).unwrap();
        let failed: Vec<_> = w
            .events
            .iter()
            .filter(|e| e.reason == "PolicyPluginFailed")
            .collect();
        assert!(!failed.is_empty(), "{mode}: {:?}", w.events);
        assert!(
            failed
                .iter()
                .all(|e| e.kind == EventType::Warning && e.message.contains(cause)),
            "{mode}: {failed:?}"
        );
        assert!(
            failed[0]
                .message
                .contains("builtin/replicas decided instead"),
            "{}",
            failed[0].message
        );
        assert!(
            w.events.iter().any(|e| e.reason == "PolicyPluginDisabled"),
            "{mode}"
        );
        assert_eq!(
            w.restarts, 0,
            "{mode}: the fallback kept the workload whole"
        );
    }
    let bystander = status.workload("bystander").unwrap();
    assert_eq!((bystander.ready, bystander.restarts), (2, 0));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_policy_plugin_is_rejected_at_apply() {
    let m = Manifests::new();
    let spec = format!("  policy:\n    plugin: {}\n", guest("ticker").display());
    let file = m.write("w.yaml", &workload("w", "ticker", &spec));
    let host = host();
    let rejected = host
        .apply_files(std::slice::from_ref(&file))
        .await
        .expect_err("not a plugin");
    let d = &rejected.diagnostics[0];
    assert_eq!(
        d.origin.as_ref().map(|o| (o.line, o.column)),
        Some((8, 13)),
        "{rejected}"
    );
    assert!(
        d.message.contains("setpoint:policy/reconciler@0.2.0"),
        "{rejected}"
    );
    assert!(host.status().await.workloads.is_empty());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_for_the_previous_contract_is_told_what_changed() {
    let m = Manifests::new();
    let spec = format!(
        "  policy:\n    plugin: {}\n",
        guest("policy_older").display()
    );
    let file = m.write("w.yaml", &workload("w", "ticker", &spec));
    let host = host();
    let rejected = host
        .apply_files(std::slice::from_ref(&file))
        .await
        .expect_err("a 0.1.0 plugin");
    let d = &rejected.diagnostics[0];
    assert_eq!(
        d.origin.as_ref().map(|o| (o.line, o.column)),
        Some((8, 13)),
        "{rejected}"
    );
    for needle in [
        "setpoint:policy/reconciler@0.1.0",
        "setpoint:policy/reconciler@0.2.0",
        "`current` instead of `id` and `revision`",
    ] {
        assert!(d.message.contains(needle), "{needle}: {rejected}");
    }
    assert!(host.status().await.workloads.is_empty());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_plugin_promotes_a_good_revision_and_rolls_back_a_bad_one() {
    let m = Manifests::new();
    let policy = format!(
        "  policy:\n    plugin: {}\n    config: {{canary: 1, analysisMs: 600}}\n",
        plugin_path("policy_canary")
    );
    let spec = |env: &str| format!("  replicas: 4\n  env: {{{env}}}\n{policy}");
    let v1 = m.write("w.yaml", &workload("shop", "ticker", &spec("GREETING: v1")));
    let host = host();
    host.apply_files(&[v1]).await.expect("valid manifest");
    let first = wait_for(&host, "shop", "4 ready", |w| w.ready == 4).await;

    let v2 = m.write("w.yaml", &workload("shop", "ticker", &spec("GREETING: v2")));
    host.apply_files(&[v2]).await.expect("valid manifest");
    let deadline = Instant::now() + crate::common::PATIENCE;
    let mut canary_phase = false;
    let second = loop {
        let status = host.status().await;
        let w = status.workload("shop").unwrap().clone();
        let on_new = w
            .instances
            .iter()
            .filter(|i| {
                i.revision == w.revision && i.phase != setpoint::status::InstancePhase::Stopping
            })
            .count();
        canary_phase |= on_new == 1 && w.events.iter().any(|e| e.reason == "CanaryAnalysis");
        if w.revision != first.revision && w.rollout.is_none() && w.ready == 4 {
            break w;
        }
        assert!(
            Instant::now() < deadline,
            "canary rollout did not finish: {w:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert!(canary_phase, "one canary ran alone under analysis first");
    assert!(second.events.iter().any(|e| e.reason == "CanaryPromoted"));

    // A revision whose canary crashes is rolled back by the canary analysis.
    let v3 = m.write(
        "w.yaml",
        &workload(
            "shop",
            "crasher",
            &spec("CRASH_AFTER_MS: '100', MODE: exit"),
        ),
    );
    host.apply_files(&[v3]).await.expect("valid manifest");
    let back = wait_for(&host, "shop", "rolled back to v2", |w| {
        w.revision == second.revision && w.rollout.is_none() && w.ready == 4
    })
    .await;
    assert!(
        back.events
            .iter()
            .any(|e| e.reason == "RolledBack" && e.message.contains("canary")),
        "{:?}",
        back.events
    );
    host.shutdown().await;
}
