//! Rolling updates: a new revision replaces the old within maxSurge / maxUnavailable,
//! readiness-gated; a rollout that misses its progress deadline rolls back by itself.

use setpoint::{HostStatus, Phase};

use crate::common::{Manifests, host, wait_for, workload};

fn revisions(status: &HostStatus, name: &str) -> Vec<String> {
    status
        .workload(name)
        .map(|w| w.instances.iter().map(|i| i.revision.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_stays_within_its_surge_and_unavailability() {
    let m = Manifests::new();
    let v1 = m.write(
        "w.yaml",
        &workload("web", "ticker", "  replicas: 4\n  env: {GREETING: v1}\n"),
    );
    let host = host();
    host.apply_files(&[v1]).await.expect("valid manifest");
    let before = wait_for(&host, "web", "4 ready", |w| w.ready == 4).await;
    let v2 = m.write(
        "w.yaml",
        &workload("web", "ticker", "  replicas: 4\n  env: {GREETING: v2}\n"),
    );
    let mut events = host.events();
    host.apply_files(&[v2]).await.expect("valid manifest");
    // 4 replicas at 25% / 25%: at most 5 instances, at least 3 ready, at every moment seen.
    let deadline = std::time::Instant::now() + crate::common::PATIENCE;
    let done = loop {
        let status = host.status().await;
        let w = status.workload("web").unwrap().clone();
        assert!(w.running <= 5, "surge bound: {} live", w.running);
        assert!(w.ready >= 3, "availability bound: {} ready", w.ready);
        if w.rollout.is_none() && w.revision != before.revision && w.ready == 4 {
            break w;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollout did not finish: {w:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    };
    // The rollout itself can finish between two samples; its events cannot be missed.
    let mut surges = 0;
    while let Ok(e) = events.try_recv() {
        surges += usize::from(e.reason == "Surge");
    }
    assert!(surges >= 1, "new instances started beside old ones");
    assert!(
        done.instances.iter().all(|i| i.revision == done.revision),
        "{:?}",
        done.instances
    );
    assert_eq!(done.restarts, 0, "replacing is not restarting");
    assert!(done.events.iter().any(|e| e.reason == "RolloutComplete"));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_misses_its_deadline_rolls_back_by_itself() {
    let m = Manifests::new();
    // A plain command is ready as soon as it runs: minReady keeps a successor that
    // crashes a moment later from taking a slot over.
    let strategy = "  strategy: {progressDeadline: 1s, minReady: 300ms}\n";
    let good = m.write(
        "w.yaml",
        &workload("api", "ticker", &format!("  replicas: 3\n{strategy}")),
    );
    let host = host();
    host.apply_files(&[good]).await.expect("valid manifest");
    let before = wait_for(&host, "api", "3 ready", |w| w.ready == 3).await;
    // The new revision crashes at start: it never becomes ready.
    let bad = m.write(
        "w.yaml",
        &workload(
            "api",
            "crasher",
            &format!("  replicas: 3\n  env: {{CRASH_AFTER_MS: '0', MODE: exit}}\n{strategy}"),
        ),
    );
    host.apply_files(&[bad]).await.expect("valid manifest");
    let w = wait_for(&host, "api", "rolled back and complete", |w| {
        w.revision == before.revision && w.rollout.is_none() && w.ready == 3
    })
    .await;
    assert!(
        w.events
            .iter()
            .any(|e| e.reason == "RolledBack" && e.message.contains("did not become available")),
        "{:?}",
        w.events
    );
    assert!(
        w.events
            .iter()
            .any(|e| e.reason == "RolloutComplete" && e.message.contains("rolled back"))
    );
    assert_eq!(w.phase, Phase::Running);
    let status = host.status().await;
    assert!(
        revisions(&status, "api")
            .iter()
            .all(|r| *r == before.revision)
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_stops_every_old_instance_first() {
    let m = Manifests::new();
    let spec = |greeting: &str| {
        format!("  replicas: 3\n  env: {{GREETING: {greeting}}}\n  strategy: {{type: Recreate}}\n")
    };
    let v1 = m.write("w.yaml", &workload("batch", "ticker", &spec("v1")));
    let host = host();
    let mut events = host.events();
    host.apply_files(&[v1]).await.expect("valid manifest");
    let before = wait_for(&host, "batch", "3 ready", |w| w.ready == 3).await;
    let v2 = m.write("w.yaml", &workload("batch", "ticker", &spec("v2")));
    host.apply_files(&[v2]).await.expect("valid manifest");
    let after = wait_for(&host, "batch", "3 ready on v2", |w| {
        w.ready == 3 && w.revision != before.revision
    })
    .await;
    assert!(after.instances.iter().all(|i| i.revision == after.revision));
    let mut surged = false;
    while let Ok(e) = events.try_recv() {
        surged |= e.reason == "Surge";
    }
    assert!(!surged, "Recreate never runs old and new side by side");
    host.shutdown().await;
}
