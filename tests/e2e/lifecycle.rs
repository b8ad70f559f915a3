//! The reconcile loop against real components: convergence, replacement, probes,
//! watchdogs, scale-down, back-off, restart budgets, graceful stop, fairness.

use std::time::Duration;

use setpoint::runtime::{EndReason, StopCause};
use setpoint::{EventType, Host, Phase};

use crate::common::{Manifests, host, last_reason, last_trap_has_backtrace, wait_for, workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_to_the_declared_count() {
    let m = Manifests::new();
    let file = m.write(
        "w.yaml",
        &workload(
            "ticker",
            "ticker",
            "  replicas: 3\n  env: {TICK_MS: '20'}\n",
        ),
    );
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifest");
    let w = wait_for(&host, "ticker", "3 ready replicas", |w| w.ready == 3).await;
    assert_eq!(w.running, 3);
    assert_eq!(w.phase, Phase::Running);
    assert_eq!(w.restarts, 0);
    let ids: std::collections::HashSet<_> = w.instances.iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids.len(), 3, "instance ids are unique");
    assert!(
        w.conditions
            .iter()
            .any(|c| c.kind == setpoint::status::ConditionType::Available && c.status)
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapped_instance_is_replaced_and_counted() {
    let m = Manifests::new();
    let file = m.write(
        "w.yaml",
        &workload(
            "crash",
            "crasher",
            "  env: {CRASH_AFTER_MS: '20', MODE: panic}\n",
        ),
    );
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifest");
    // The end is handled first; its backtrace, formatted after, completes the record.
    let w = wait_for(&host, "crash", "two replacements, a backtrace", |w| {
        w.restarts >= 2 && last_trap_has_backtrace(w)
    })
    .await;
    let end = &w.last_termination.as_ref().expect("an instance ended").end;
    match &end.reason {
        EndReason::Trapped { trap, message } => {
            assert_eq!(trap, "UnreachableCodeReached");
            assert!(
                message.starts_with("wasm trap: wasm `unreachable` instruction executed"),
                "the trap first: {message}"
            );
            assert!(
                message.contains("crasher::main"),
                "symbolized frames: {message}"
            );
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(
        end.output
            .tail
            .iter()
            .any(|l| l.contains("deliberate panic")),
        "last output kept: {:?}",
        end.output.tail
    );
    assert!(
        w.events
            .iter()
            .any(|e| e.reason == "Trapped" && e.kind == EventType::Warning)
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonzero_exit_is_replaced_but_on_failure_keeps_a_clean_exit() {
    let m = Manifests::new();
    let failing = m.write(
        "a.yaml",
        &workload(
            "exits",
            "crasher",
            "  env: {CRASH_AFTER_MS: '0', MODE: exit}\n",
        ),
    );
    let clean = m.write(
        "b.yaml",
        &workload(
            "done",
            "crasher",
            "  replicas: 2\n  restartPolicy: OnFailure\n  env: {CRASH_AFTER_MS: '0', MODE: ok}\n",
        ),
    );
    let host = host();
    host.apply_files(&[failing, clean])
        .await
        .expect("valid manifests");
    let w = wait_for(&host, "exits", "a replacement", |w| w.restarts >= 1).await;
    assert!(matches!(
        w.last_termination.as_ref().map(|t| &t.end.reason),
        Some(EndReason::Exited { code: 1 })
    ));
    let done = wait_for(&host, "done", "both slots completed", |w| {
        w.phase == Phase::Succeeded
    })
    .await;
    assert_eq!(done.restarts, 0);
    assert_eq!(done.running, 0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_probe_gets_the_instance_replaced() {
    let m = Manifests::new();
    let spec = "  env: {FAIL_AFTER_PROBES: '3'}\n  health:\n    probe: {period: 10ms, timeout: 1s, failureThreshold: 2}\n";
    let file = m.write("w.yaml", &workload("probed", "probed", spec));
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifest");
    let w = wait_for(&host, "probed", "a probe-driven replacement", |w| {
        w.restarts >= 1
    })
    .await;
    match &w.last_termination.as_ref().expect("ended").end.reason {
        EndReason::ProbeFailed { message } => {
            assert_eq!(message, "failing since probe 5", "probes 4 and 5 failed")
        }
        other => panic!("expected ProbeFailed, got {other:?}"),
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_probe() {
    let m = Manifests::new();
    let spec =
        "  env: {WARMUP_PROBES: '3'}\n  health:\n    probe: {period: 20ms, successThreshold: 2}\n";
    let file = m.write("w.yaml", &workload("warm", "probed", spec));
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifest");
    let running = wait_for(&host, "warm", "a running instance", |w| {
        w.instances
            .iter()
            .any(|i| i.phase == setpoint::status::InstancePhase::Running)
    })
    .await;
    assert_eq!(running.ready, 0, "not ready before the probe says so");
    let w = wait_for(&host, "warm", "ready after warm-up", |w| w.ready == 1).await;
    assert_eq!(w.restarts, 0, "not-ready is not a liveness failure");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_hangs_times_out_and_is_replaced() {
    let m = Manifests::new();
    let spec =
        "  env: {HANG_AFTER_PROBES: '1'}\n  health:\n    probe: {period: 10ms, timeout: 50ms}\n";
    let file = m.write("w.yaml", &workload("hangs", "probed", spec));
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifest");
    let w = wait_for(&host, "hangs", "a probe timeout", |w| {
        last_reason(w) == Some("ProbeTimeout")
    })
    .await;
    assert!(matches!(
        w.last_termination.unwrap().end.reason,
        EndReason::ProbeTimeout { after_ms: 50 }
    ));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_heartbeat_trips_the_watchdog() {
    let m = Manifests::new();
    let spec =
        "  env: {BEAT_MS: '10', HANG_AFTER_MS: '100'}\n  health:\n    watchdog: {timeout: 200ms}\n";
    let file = m.write("w.yaml", &workload("watched", "watched", spec));
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifest");
    let w = wait_for(&host, "watched", "a watchdog timeout", |w| {
        last_reason(w) == Some("WatchdogTimeout")
    })
    .await;
    assert!(w.restarts >= 1);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_stops_the_surplus_without_counting_restarts() {
    let m = Manifests::new();
    let three = m.write("w.yaml", &workload("scale", "ticker", "  replicas: 3\n"));
    let host = host();
    host.apply_files(std::slice::from_ref(&three))
        .await
        .expect("valid manifest");
    let before = wait_for(&host, "scale", "3 ready", |w| w.ready == 3).await;
    let one = m.write("w.yaml", &workload("scale", "ticker", "  replicas: 1\n"));
    host.apply_files(&[one]).await.expect("valid manifest");
    let after = wait_for(&host, "scale", "1 running", |w| {
        w.running == 1 && w.ready == 1
    })
    .await;
    assert_eq!(after.restarts, 0);
    assert_eq!(
        after.revision, before.revision,
        "replicas scale, they do not make a new revision"
    );
    let survivor = &after.instances[0];
    assert_eq!(survivor.slot, 0);
    assert!(
        before.instances.iter().any(|i| i.id == survivor.id),
        "slot 0's instance kept running"
    );
    assert!(matches!(
        after.last_termination.unwrap().end.reason,
        EndReason::Stopped {
            cause: StopCause::ScaleDown,
            ..
        }
    ));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_command_stops_gracefully_when_asked() {
    let m = Manifests::new();
    let file = m.write(
        "w.yaml",
        &workload(
            "polite",
            "watched",
            "  env: {BEAT_MS: '5'}\n  terminationGracePeriod: 30s\n",
        ),
    );
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifest");
    wait_for(&host, "polite", "ready", |w| w.ready == 1).await;
    let mut logs = host.logs();
    assert!(host.delete("polite").await.expect("host running"));
    let line = tokio::time::timeout(crate::common::PATIENCE, async {
        loop {
            let l = logs.recv().await.expect("log stream open");
            if l.line.contains("stop requested") {
                return l;
            }
        }
    })
    .await
    .expect("the guest saw the stop request");
    assert_eq!(&*line.workload, "polite");
    crate::common::wait_for_host(&host, "deletion", |s| s.workload("polite").is_none()).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_off_grows_then_caps() {
    let m = Manifests::new();
    let spec = "  env: {CRASH_AFTER_MS: '0', MODE: exit}\n  backoff: {initial: 20ms, max: 80ms, resetAfter: 1h}\n";
    let file = m.write("w.yaml", &workload("loop", "crasher", spec));
    let host = host();
    let mut events = host.events();
    host.apply_files(&[file]).await.expect("valid manifest");
    let mut announced = Vec::new();
    let mut ends = Vec::new();
    let mut spawns = Vec::new();
    tokio::time::timeout(crate::common::PATIENCE, async {
        while spawns.len() < 7 {
            let e = events.recv().await.expect("event stream open");
            match e.reason.as_str() {
                "BackOff" => announced.push(e.message.clone()),
                "Exited" => ends.push(e.time),
                "Spawned" | "Replaced" => spawns.push(e.time),
                _ => {}
            }
        }
    })
    .await
    .expect("seven spawns");
    let expected = ["20ms", "40ms", "80ms", "80ms", "80ms"];
    for (msg, delay) in announced.iter().zip(expected) {
        assert!(
            msg.contains(&format!("waiting {delay} ")),
            "announced {msg}, expected {delay}"
        );
    }
    assert!(
        announced.len() >= expected.len(),
        "announced: {announced:?}"
    );
    // The first replacement is immediate; later ones wait at least their back-off. Times
    // are the controller's own event stamps; 10 ms are allowed for the controller being
    // pre-empted between its two clock reads on a loaded machine.
    for (i, (end, spawn)) in ends.iter().zip(spawns.iter().skip(1)).enumerate().skip(1) {
        let min = Duration::from_millis([20, 40, 80, 80, 80][(i - 1).min(4)]);
        let gap = spawn.duration_since(*end).unwrap_or_default();
        assert!(
            gap + Duration::from_millis(10) >= min,
            "gap {i} was {gap:?}, back-off {min:?}"
        );
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_restart_budget_a_workload_fails_and_others_keep_running() {
    let m = Manifests::new();
    let spec = "  env: {CRASH_AFTER_MS: '0', MODE: exit}\n  backoff: {initial: 1ms, max: 2ms}\n  restartBudget: {maxRestarts: 3, window: 1h}\n";
    let crashing = m.write("a.yaml", &workload("doomed", "crasher", spec));
    let healthy = m.write("b.yaml", &workload("healthy", "ticker", "  replicas: 2\n"));
    let host = host();
    host.apply_files(&[crashing, healthy])
        .await
        .expect("valid manifests");
    let w = wait_for(&host, "doomed", "Failed", |w| w.phase == Phase::Failed).await;
    assert_eq!(w.restarts, 3, "exactly the budget was spent");
    let failed = w
        .conditions
        .iter()
        .find(|c| c.kind == setpoint::status::ConditionType::Failed)
        .expect("Failed condition");
    assert_eq!(failed.reason, "RestartBudgetExceeded");
    let healthy = wait_for(&host, "healthy", "2 ready", |w| w.ready == 2).await;
    assert_eq!(healthy.phase, Phase::Running);
    // A failed workload is not retried behind the user's back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = host.status().await;
    assert_eq!(later.workload("doomed").unwrap().restarts, 3);
    assert_eq!(later.workload("doomed").unwrap().running, 0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_cannot_be_instantiated_fails_without_retries() {
    let m = Manifests::new();
    // Rust guests need more than one 64 KiB page of memory: instantiation must fail.
    let file = m.write(
        "w.yaml",
        &workload("tiny", "ticker", "  resources: {memory: 64Ki}\n"),
    );
    let host = host();
    host.apply_files(&[file])
        .await
        .expect("the manifest itself is valid");
    let w = wait_for(&host, "tiny", "Failed", |w| w.phase == Phase::Failed).await;
    assert_eq!(w.restarts, 0, "a deterministic failure is not retried");
    assert_eq!(last_reason(&w), Some("InstantiationFailed"));
    let failed = w
        .conditions
        .iter()
        .find(|c| c.kind == setpoint::status::ConditionType::Failed)
        .expect("Failed condition");
    assert_eq!(failed.reason, "InstantiationFailed");
    assert!(
        failed.message.contains("retrying cannot help"),
        "{}",
        failed.message
    );
    // The cause itself is kept with the ended instance.
    let end = &w.last_termination.as_ref().unwrap().end;
    assert!(
        matches!(&end.reason, EndReason::InstantiationFailed { message } if message.contains("memory")),
        "{:?}",
        end.reason
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_guests_do_not_starve_the_controller() {
    let m = Manifests::new();
    // Four busy loops on a two-worker runtime, beside a crash loop the controller must
    // keep serving.
    let spinners = m.write("a.yaml", &workload("spin", "spinner", "  replicas: 4\n"));
    let crashing = m.write(
        "b.yaml",
        &workload(
            "crashy",
            "crasher",
            "  env: {CRASH_AFTER_MS: '0', MODE: exit}\n  backoff: {initial: 1ms, max: 1ms}\n",
        ),
    );
    let host = host();
    host.apply_files(&[spinners, crashing])
        .await
        .expect("valid manifests");
    wait_for(&host, "spin", "4 spinners running", |w| w.ready == 4).await;
    let w = wait_for(&host, "crashy", "20 replacements", |w| w.restarts >= 20).await;
    assert!(
        w.events.iter().any(|e| e.reason == "Exited"),
        "the crash loop was served: {:?}",
        w.events
    );
    let spin = host.status().await.workload("spin").cloned().unwrap();
    assert_eq!(
        (spin.ready, spin.restarts),
        (4, 0),
        "the busy loops kept running, untouched"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_off_resets_after_a_long_enough_run() {
    let m = Manifests::new();
    // Every instance runs 50ms, longer than resetAfter: each end counts as the first of a
    // new streak, so every replacement is immediate and no back-off is ever announced.
    let spec = "  env: {CRASH_AFTER_MS: '50', MODE: exit}\n  backoff: {initial: 10s, max: 10s, resetAfter: 10ms}\n";
    let file = m.write("w.yaml", &workload("steady-crash", "crasher", spec));
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifest");
    let w = wait_for(&host, "steady-crash", "3 replacements", |w| w.restarts >= 3).await;
    assert!(
        w.events.iter().all(|e| e.reason != "BackOff"),
        "events: {:?}",
        w.events
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_pool_reuses_its_slots_and_caps_the_host() {
    let m = Manifests::new();
    let idle = m.write("idle.yaml", &workload("idle", "probed", "  replicas: 2\n"));
    let crashing = m.write(
        "crash.yaml",
        &workload(
            "crashy",
            "crasher",
            "  env: {CRASH_AFTER_MS: '0', MODE: exit}\n  backoff: {initial: 1ms, max: 1ms}\n",
        ),
    );
    // Three slots: the two idle instances and the crash loop, replaced again and again
    // in the one slot left.
    let host = Host::builder()
        .instance_pool(3)
        .build()
        .expect("host starts");
    host.apply_files(&[idle, crashing])
        .await
        .expect("valid manifests");
    wait_for(&host, "idle", "2 idle instances", |w| w.ready == 2).await;
    wait_for(&host, "crashy", "30 replacements", |w| w.restarts >= 30).await;

    // A memory limit beyond the pool's slot is refused, and nothing changes.
    let big = m.write(
        "big.yaml",
        &workload("big", "ticker", "  resources: {memory: 128Mi}\n"),
    );
    let err = host
        .apply_files(std::slice::from_ref(&big))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&big.display().to_string()),
        "names the file: {text}"
    );
    assert!(
        text.contains("exceeds this host's instance pool slot of 64.0 MiB"),
        "{text}"
    );
    assert!(host.status().await.workload("big").is_none());

    // Scaling past the pool is refused by the controller, not failed by the engine.
    let more = m.write("idle.yaml", &workload("idle", "probed", "  replicas: 4\n"));
    host.apply_files(&[more]).await.expect("valid manifest");
    let w = wait_for(&host, "idle", "a refused spawn", |w| {
        w.events.iter().any(|e| e.reason == "ActionRefused")
    })
    .await;
    let refusal = w
        .events
        .iter()
        .find(|e| e.reason == "ActionRefused")
        .unwrap();
    assert!(
        refusal.message.contains("limit of 3 instances"),
        "{}",
        refusal.message
    );
    let status = host.status().await;
    let live: u32 = status.workloads.iter().map(|w| w.running).sum();
    assert!(live <= 3, "at most the pool's slots are live ({live})");
    host.shutdown().await;
}
