//! Parked fiber stacks: an idle instance (a reactor between calls, a command waiting in
//! a host call, a spare) holds no accessible stack, so it costs no memory mapping for
//! one; and a parked stack comes back intact when its guest runs again.

#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use setpoint::runtime::stacks::Guards;
use setpoint::runtime::{EndReason, StackStats};

use crate::common::{Manifests, PATIENCE, wait_for, workload};

/// A host whose stacks' guard pages are the kernel's markers (where it has them:
/// `markers`) or protection changes, the path older kernels take.
fn host_guarded(markers: bool) -> setpoint::Host {
    setpoint::Host::builder()
        .stack_guard_markers(markers)
        .build()
        .expect("host starts")
}

/// Waits until the host's stacks satisfy `check`, then returns them.
async fn wait_for_stacks(
    host: &setpoint::Host,
    what: &str,
    check: impl Fn(&StackStats) -> bool,
) -> StackStats {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = host
            .stack_stats()
            .expect("an on-demand host on Linux has an arena");
        if check(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_reactors_and_sleeping_commands_hold_no_accessible_stack_with_guard_markers() {
    idle_instances_hold_no_accessible_stack(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_reactors_and_sleeping_commands_hold_no_accessible_stack_with_protection() {
    idle_instances_hold_no_accessible_stack(false).await;
}

async fn idle_instances_hold_no_accessible_stack(markers: bool) {
    let m = Manifests::new();
    let reactors = m.write("r.yaml", &workload("idle", "probed", "  replicas: 40\n"));
    let commands = m.write(
        "c.yaml",
        &workload(
            "sleepy",
            "ticker",
            "  replicas: 40\n  env: {TICK_MS: '3600000'}\n",
        ),
    );
    let host = host_guarded(markers);
    host.apply_files(&[reactors, commands])
        .await
        .expect("valid manifests");
    wait_for(&host, "idle", "40 reactors ready", |w| w.ready == 40).await;
    wait_for(&host, "sleepy", "40 commands running", |w| w.running == 40).await;
    // 80 instances and a spare each: every stack parked once its guest waits.
    let stats = wait_for_stacks(&host, "every stack parked", |s| {
        s.stacks >= 82 && s.unparked == 0
    })
    .await;
    let markers = markers && Guards::detect() == Guards::Markers;
    assert_eq!(stats.guard_markers, markers, "{stats:?}");
    // Parked slots merge into their arena's one mapping (with markers, no slot ever
    // splits it): a few for 82 stacks, not 164.
    assert!(stats.mappings() <= stats.stacks / 16, "{stats:?}");
    // Deleted instances and discarded spares give every stack back.
    assert!(host.delete("idle").await.expect("deleted"));
    assert!(host.delete("sleepy").await.expect("deleted"));
    wait_for_stacks(&host, "every stack given back", |s| s.stacks == 0).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_stack_resumes_intact_and_a_parked_call_can_be_cancelled_with_guard_markers() {
    a_parked_stack_resumes_intact(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_stack_resumes_intact_and_a_parked_call_can_be_cancelled_with_protection() {
    a_parked_stack_resumes_intact(false).await;
}

async fn a_parked_stack_resumes_intact(markers: bool) {
    let m = Manifests::new();
    // A command that sleeps between ticks: each wake-up resumes its parked stack, and a
    // corrupt stack would trap or crash the host.
    let ticker = m.write(
        "t.yaml",
        &workload("ticker", "ticker", "  env: {TICK_MS: '5'}\n  spares: 0\n"),
    );
    // A reactor probed every 10 ms: each probe runs on a stack parked after the last.
    let probed = m.write(
        "p.yaml",
        &workload(
            "probed",
            "probed",
            "  health:\n    probe: {period: 10ms, timeout: 1s, failureThreshold: 1}\n  spares: 0\n",
        ),
    );
    let host = host_guarded(markers);
    let mut logs = host.logs();
    host.apply_files(&[ticker, probed])
        .await
        .expect("valid manifests");
    let deadline = Instant::now() + PATIENCE;
    let mut ticks = 0;
    while ticks < 50 {
        assert!(Instant::now() < deadline, "{ticks} ticks in {PATIENCE:?}");
        if let Ok(Ok(line)) = tokio::time::timeout(Duration::from_secs(1), logs.recv()).await
            && line.workload.as_ref() == "ticker"
            && line.line.starts_with("tick ")
        {
            ticks += 1;
        }
    }
    let w = wait_for(&host, "probed", "ready after probes", |w| w.ready == 1).await;
    assert_eq!(w.restarts, 0, "a probe on a parked stack failed: {w:?}");
    let t = host.status().await;
    let t = t.workload("ticker").expect("applied");
    assert_eq!(t.restarts, 0, "the ticker survived 50 wake-ups: {t:?}");
    // Deleting the ticker drops its call while it sleeps on a parked stack: the fiber is
    // resumed to unwind, on a stack made accessible first.
    assert!(host.delete("ticker").await.expect("deleted"));
    wait_for_stacks(&host, "the ticker's stack given back", |s| s.stacks == 1).await;
    let w = host.status().await;
    assert_eq!(w.workload("probed").map(|w| w.ready), Some(1));
    host.shutdown().await;
}

/// Compact memories come from slots of an arena (`runtime/memories.rs`): a memory bomb
/// outgrows its slot (64 MiB) into a mapping of its own and is stopped at its limit, a
/// runaway recursion overflows its arena stack's Wasm stack, and a neighbour carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_compact_memories_hostile_guests_are_contained_beside_a_healthy_one() {
    let m = Manifests::new();
    let docs = [
        workload(
            "bomb",
            "hostile",
            "  env: {MODE: membomb}\n  resources: {memory: 96Mi}\n  restartPolicy: Never\n",
        ),
        workload(
            "deep",
            "hostile",
            "  env: {MODE: recurse}\n  restartPolicy: Never\n",
        ),
        workload("steady", "ticker", "  env: {TICK_MS: '10'}\n"),
    ];
    let file = m.write("all.yaml", &docs.join("---\n"));
    let host = setpoint::Host::builder()
        .compact_memory(true)
        .build()
        .expect("host starts");
    host.apply_files(&[file]).await.expect("valid manifests");
    let bomb = wait_for(
        &host,
        "bomb",
        "the bomb stopped",
        |w: &setpoint::WorkloadStatus| w.last_termination.is_some(),
    )
    .await;
    match bomb.last_termination.map(|t| t.end) {
        Some(end) => {
            assert!(
                matches!(end.reason, EndReason::OutOfMemory { limit, .. } if limit == 96 << 20),
                "{:?}",
                end.reason
            );
            // Past its 64 MiB slot: it moved to a mapping of its own and kept growing.
            assert!(
                end.peak_memory_bytes > 64 << 20,
                "peak {}",
                end.peak_memory_bytes
            );
        }
        None => unreachable!("checked above"),
    }
    let deep = wait_for(
        &host,
        "deep",
        "the recursion stopped",
        |w: &setpoint::WorkloadStatus| w.last_termination.is_some(),
    )
    .await;
    let reason = deep.last_termination.map(|t| t.end.reason);
    assert!(
        matches!(&reason, Some(EndReason::Trapped { trap, .. }) if trap == "StackOverflow"),
        "{reason:?}"
    );
    let steady = wait_for(&host, "steady", "the ticker running", |w| w.running == 1).await;
    assert_eq!(steady.restarts, 0);
    host.shutdown().await;
}
