//! Hostile guests: every way a guest can misbehave is contained, classified and
//! replaced, while a healthy workload beside them keeps its replicas ready.

use setpoint::runtime::EndReason;
use setpoint::{HostStatus, Phase};

use crate::common::{Manifests, host, last_reason, wait_for, wait_for_host, workload};

fn reason_of<'a>(status: &'a HostStatus, name: &str) -> Option<&'a EndReason> {
    status
        .workload(name)?
        .last_termination
        .as_ref()
        .map(|t| &t.end.reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_hostile_guests_at_once_beside_a_healthy_workload() {
    let m = Manifests::new();
    let docs = [
        workload(
            "healthy",
            "ticker",
            "  replicas: 3\n  env: {TICK_MS: '20'}\n",
        ),
        workload(
            "spin",
            "spinner",
            "  resources:\n    cpu: {budget: 100ms}\n",
        ),
        workload(
            "bomb",
            "hostile",
            "  env: {MODE: membomb}\n  resources: {memory: 32Mi}\n",
        ),
        workload("deep", "hostile", "  env: {MODE: recurse}\n"),
        workload(
            "flood",
            "hostile",
            "  env: {MODE: flood}\n  resources:\n    cpu: {budget: 300ms}\n",
        ),
        workload(
            "trap-at-start",
            "crasher",
            "  env: {CRASH_AFTER_MS: '0', MODE: panic}\n",
        ),
        workload(
            "crash-loop",
            "crasher",
            "  env: {CRASH_AFTER_MS: '0', MODE: exit}\n  backoff: {initial: 1ms, max: 5ms}\n",
        ),
        workload(
            "hung-probe",
            "probed",
            "  env: {HANG_AFTER_PROBES: '1'}\n  health:\n    probe: {period: 10ms, timeout: 50ms}\n",
        ),
        workload("escape", "snoop", "  restartPolicy: Never\n"),
    ];
    let file = m.write("all.yaml", &docs.join("---\n"));
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifests");

    let status = wait_for_host(&host, "every hostile guest to end its way", |s| {
        [
            "spin",
            "bomb",
            "deep",
            "flood",
            "trap-at-start",
            "crash-loop",
            "hung-probe",
        ]
        .iter()
        .all(|name| reason_of(s, name).is_some())
            && s.workload("escape")
                .is_some_and(|w| w.phase == Phase::Succeeded)
    })
    .await;
    let reason = |name: &str| reason_of(&status, name).cloned().expect("ended");

    match reason("spin") {
        EndReason::CpuBudgetExceeded {
            used_ms, budget_ms, ..
        } => {
            assert_eq!(budget_ms, 100);
            assert!(used_ms > 100, "used {used_ms}ms");
        }
        other => panic!("spin: {other:?}"),
    }
    match reason("bomb") {
        EndReason::OutOfMemory {
            requested, limit, ..
        } => {
            assert_eq!(limit, 32 << 20);
            assert!(requested > limit);
        }
        other => panic!("bomb: {other:?}"),
    }
    let bomb = status
        .workload("bomb")
        .unwrap()
        .last_termination
        .clone()
        .unwrap();
    assert!(
        bomb.end.peak_memory_bytes >= 16 << 20 && bomb.end.peak_memory_bytes <= 32 << 20,
        "peak {}",
        bomb.end.peak_memory_bytes
    );
    assert!(matches!(reason("deep"), EndReason::Trapped { trap, .. } if trap == "StackOverflow"));
    assert!(
        matches!(reason("trap-at-start"), EndReason::Trapped { trap, .. } if trap == "UnreachableCodeReached")
    );
    assert!(matches!(
        reason("crash-loop"),
        EndReason::Exited { code: 1 }
    ));
    assert!(matches!(
        reason("hung-probe"),
        EndReason::ProbeTimeout { after_ms: 50 }
    ));

    // The flood is bounded: a short tail kept, the excess counted, never buffered.
    let flood = status
        .workload("flood")
        .unwrap()
        .last_termination
        .clone()
        .unwrap();
    assert!(
        matches!(flood.end.reason, EndReason::CpuBudgetExceeded { .. }),
        "{:?}",
        flood.end.reason
    );
    assert!(flood.end.output.tail.len() <= 50);
    // 200 lines a second are forwarded; in its 300ms of CPU the flood writes far more.
    assert!(
        flood.end.output.lines_dropped > 500,
        "dropped {}",
        flood.end.output.lines_dropped
    );
    assert!(
        flood.end.output.bytes_written > 64 << 10,
        "wrote {}",
        flood.end.output.bytes_written
    );

    // The escape attempts all failed.
    let escape = status
        .workload("escape")
        .unwrap()
        .last_termination
        .clone()
        .unwrap();
    assert!(
        escape
            .end
            .output
            .tail
            .iter()
            .all(|l| !l.contains("ALLOWED") && !l.contains(": ok")),
        "{:?}",
        escape.end.output.tail
    );

    // Meanwhile the controller kept reacting and the healthy workload kept its replicas.
    let before = status.workload("crash-loop").unwrap().restarts;
    wait_for(
        &host,
        "crash-loop",
        "the controller to keep replacing",
        |w| w.restarts >= before + 10,
    )
    .await;
    let healthy = wait_for(&host, "healthy", "3 ready", |w| w.ready == 3).await;
    assert_eq!(
        healthy.restarts, 0,
        "the healthy workload never lost an instance"
    );
    assert_eq!(healthy.phase, Phase::Running);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_budget_with_a_window_spares_a_guest_that_stays_under_it() {
    let m = Manifests::new();
    // The ticker wakes every 20ms and does microseconds of work: far under 50ms per 100ms.
    let calm = m.write(
        "w.yaml",
        &workload(
            "calm",
            "ticker",
            "  env: {TICK_MS: '20'}\n  resources:\n    cpu: {budget: 50ms, per: 100ms}\n",
        ),
    );
    let spin = m.write(
        "s.yaml",
        &workload(
            "busy",
            "spinner",
            "  resources:\n    cpu: {budget: 50ms, per: 100ms}\n",
        ),
    );
    let host = host();
    host.apply_files(&[calm, spin])
        .await
        .expect("valid manifests");
    let busy = wait_for(&host, "busy", "the spinner to hit its budget", |w| {
        last_reason(w) == Some("CpuBudgetExceeded")
    })
    .await;
    let spent = busy.last_termination.unwrap().end.cpu;
    assert!(
        spent >= std::time::Duration::from_millis(50),
        "the spinner used {spent:?} before it was stopped"
    );
    let calm = host.status().await.workload("calm").cloned().unwrap();
    assert_eq!(calm.restarts, 0, "the calm guest was never killed");
    assert_eq!(calm.ready, 1);
    host.shutdown().await;
}
