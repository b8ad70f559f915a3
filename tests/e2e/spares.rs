//! Spares: instances instantiated ahead of need, started in place of a new instance.
//! What they must never do is run guest code before they are started, be counted as
//! replicas, or outlive the revision they were built for.

use std::time::Duration;

use setpoint::runtime::LogLine;
use tokio::sync::broadcast;

use crate::common::{Manifests, host, last_trap_has_backtrace, wait_for, wait_no_stores, workload};

/// The host's `setpoint_spares_<what>_total` counter.
async fn spares_counter(host: &setpoint::Host, what: &str) -> u64 {
    let text = host.metrics().await;
    let name = format!("setpoint_spares_{what}_total ");
    text.lines()
        .find_map(|l| l.strip_prefix(&name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"))
}

/// The `probed: started` lines received so far, by instance.
fn started_lines(logs: &mut broadcast::Receiver<LogLine>) -> Vec<String> {
    let mut instances = Vec::new();
    while let Ok(line) = logs.try_recv() {
        if line.line == "probed: started" {
            instances.push(line.instance.to_string());
        }
    }
    instances
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacements_start_from_the_spare_which_is_not_counted() {
    let m = Manifests::new();
    let file = m.write(
        "w.yaml",
        &workload(
            "crash",
            "crasher",
            "  env: {CRASH_AFTER_MS: '30', MODE: exit}\n  backoff: {initial: 10ms, max: 10ms}\n",
        ),
    );
    // The host default is one spare per workload.
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifest");
    let w = wait_for(&host, "crash", "three replacements", |w| w.restarts >= 3).await;
    assert!(w.running <= 1, "a spare is not a live instance: {w:?}");
    assert!(
        w.instances.iter().all(|i| !i.id.ends_with("-spare")),
        "a spare is not listed as an instance"
    );
    let w = wait_for(&host, "crash", "its spare made again", |w| w.spares == 1).await;
    let used = spares_counter(&host, "used").await;
    // Every spawn but the first (made before any spare existed) took a spare.
    assert!(
        used >= w.restarts,
        "{used} spares used for {} replacements",
        w.restarts
    );
    assert!(spares_counter(&host, "made").await > used);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_reactor_is_not_started_until_it_takes_a_place() {
    let m = Manifests::new();
    // The first instance fails its third probe and is replaced; its replacement (a
    // spare) then does the same, and so on.
    let file = m.write(
        "w.yaml",
        &workload(
            "probed",
            "probed",
            "  spares: 2\n  env: {FAIL_AFTER_PROBES: '2'}\n  health:\n    probe: {period: 100ms, failureThreshold: 1}\n",
        ),
    );
    let host = host();
    let mut logs = host.logs();
    host.apply_files(&[file]).await.expect("valid manifest");
    let w = wait_for(&host, "probed", "2 spares", |w| {
        w.spares == 2 && w.running == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let first = w.instances[0].id.clone();
    let started = started_lines(&mut logs);
    assert!(
        started.len() <= 1 && started.iter().all(|i| *i == first),
        "only the running instance ran `start`: {started:?}"
    );
    let w = wait_for(&host, "probed", "a replacement", |w| {
        w.restarts >= 1 && w.running == 1 && w.instances.iter().all(|i| i.id != first)
    })
    .await;
    let second = w.instances[0].id.clone();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut started = started.into_iter().chain(started_lines(&mut logs));
    // The spare took its new id before its `start` ran: its line is its own.
    assert!(
        started.any(|i| i == second),
        "the replacement's `start` line is attributed to {second}"
    );
    assert!(spares_counter(&host, "used").await >= 1);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_revision_replaces_the_spares_and_spares_zero_holds_none() {
    let m = Manifests::new();
    let spec = |env: &str, spares: &str| {
        workload(
            "tick",
            "ticker",
            &format!("  replicas: 2\n{spares}  env: {{TICK_MS: '{env}'}}\n"),
        )
    };
    let file = m.write("w.yaml", &spec("50", ""));
    let host = host();
    host.apply_files(std::slice::from_ref(&file))
        .await
        .expect("valid");
    let w = wait_for(&host, "tick", "2 running and a spare", |w| {
        w.running == 2 && w.ready == 2 && w.spares == 1
    })
    .await;
    let first_revision = w.revision.clone();
    let made = spares_counter(&host, "made").await;
    // A change of `spares` alone is not a new revision: nothing restarts.
    m.write("w.yaml", &spec("50", "  spares: 3\n"));
    host.apply_files(std::slice::from_ref(&file))
        .await
        .expect("valid");
    let w = wait_for(&host, "tick", "3 spares", |w| w.spares == 3).await;
    assert_eq!(w.revision, first_revision);
    assert_eq!(w.restarts, 0);
    assert_eq!(spares_counter(&host, "made").await, made + 2);
    // A new revision: the old spares are discarded and new ones made.
    m.write("w.yaml", &spec("60", "  spares: 3\n"));
    host.apply_files(std::slice::from_ref(&file))
        .await
        .expect("valid");
    let w = wait_for(&host, "tick", "the new revision rolled out", |w| {
        w.revision != first_revision && w.rollout.is_none() && w.ready == 2 && w.spares == 3
    })
    .await;
    assert!(w.running >= 2);
    assert!(spares_counter(&host, "made").await >= made + 2 + 3);
    m.write("w.yaml", &spec("60", "  spares: 0\n"));
    host.apply_files(&[file]).await.expect("valid");
    wait_for(&host, "tick", "no spare", |w| w.spares == 0).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_or_an_unrestarted_workload_holds_no_spare() {
    let m = Manifests::new();
    let never = m.write(
        "never.yaml",
        &workload(
            "once",
            "ticker",
            "  restartPolicy: Never\n  env: {TICK_MS: '50'}\n",
        ),
    );
    let job = m.write(
        "job.yaml",
        "apiVersion: setpoint.dev/v1alpha1\nkind: Job\nmetadata:\n  name: j\nspec:\n  component: {guest:batch}\n  completions: 50\n  parallelism: 1\n  env: {WORK_MS: '20'}\n",
    );
    let host = host();
    host.apply_files(&[never, job]).await.expect("valid");
    wait_for(&host, "once", "running", |w| w.running == 1).await;
    wait_for(&host, "j", "a run", |w| w.running == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = host.status().await;
    for name in ["once", "j"] {
        let w = status.workload(name).expect("applied");
        assert_eq!(w.spares, 0, "{name} holds no spare");
    }
    assert_eq!(spares_counter(&host, "made").await, 0);
    host.shutdown().await;
}

/// The host's `setpoint_direct_replacements_total{outcome="<outcome>"}`, 0 while none.
async fn direct_counter(host: &setpoint::Host, outcome: &str) -> u64 {
    let text = host.metrics().await;
    let name = format!("setpoint_direct_replacements_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_instance_starts_the_spare_in_its_place_and_the_record_is_whole() {
    let m = Manifests::new();
    // No back-off: the built-in policy replaces every end at once, so an armed spare
    // is started by the trapped instance's own task.
    let file = m.write(
        "w.yaml",
        &workload(
            "crash",
            "crasher",
            "  replicas: 2\n  env: {CRASH_AFTER_MS: '20', MODE: panic}\n  backoff: {initial: 0ms, max: 0ms}\n",
        ),
    );
    let host = host();
    let mut events = host.events();
    host.apply_files(&[file]).await.expect("valid manifest");
    let w = wait_for(&host, "crash", "six replacements, a backtrace", |w| {
        w.restarts >= 6 && last_trap_has_backtrace(w)
    })
    .await;
    let kept = direct_counter(&host, "kept").await;
    assert!(kept >= 1, "no replacement was direct: {w:?}");
    assert_eq!(direct_counter(&host, "dropped").await, 0);
    // Armed is a spare, or while the next is being built, the request for one.
    assert!(spares_counter(&host, "used").await >= 1);
    // Each replacement, direct or not, is said as one: the end, then `Replaced` with
    // the new instance, which then reports `Started`.
    let (replaced, started) = tokio::time::timeout(Duration::from_secs(60), async {
        let (mut replaced, mut started) = (Vec::new(), Vec::new());
        while replaced.len() < 6 || replaced.iter().any(|id| !started.contains(id)) {
            match events.recv().await {
                Ok(e) if e.reason == "Replaced" => replaced.push(e.instance.expect("an id")),
                Ok(e) if e.reason == "Started" => started.push(e.instance.expect("an id")),
                Ok(_) => {}
                // What was missed cannot be matched: start again from here.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    replaced.clear();
                    started.clear();
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        (replaced, started)
    })
    .await
    .expect("six replacements, each started, within 60 s");
    let mut unique = replaced.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        replaced.len(),
        "each replacement has its own id"
    );
    assert!(replaced.iter().all(|id| started.contains(id)));
    let w = wait_for(&host, "crash", "two live instances", |w| {
        w.instances.len() == 2
    })
    .await;
    assert!(w.running <= 2);
    host.shutdown().await;

    // Without spares, the ended instance's task builds its replacement itself.
    let m = Manifests::new();
    let spec = |spares: &str| {
        workload(
            "crash",
            "crasher",
            &format!(
                "{spares}  env: {{CRASH_AFTER_MS: '20', MODE: exit}}\n  backoff: {{initial: 0ms, max: 0ms}}\n"
            ),
        )
    };
    let file = m.write("w.yaml", &spec("  spares: 0\n"));
    let host = crate::common::host();
    host.apply_files(std::slice::from_ref(&file))
        .await
        .expect("valid manifest");
    let w = wait_for(&host, "crash", "three replacements", |w| w.restarts >= 3).await;
    assert!(direct_counter(&host, "kept").await >= 2, "{w:?}");
    assert_eq!(spares_counter(&host, "used").await, 0);
    assert_eq!(direct_counter(&host, "dropped").await, 0);
    host.shutdown().await;

    // The host can be told not to: every replacement then waits for a pass.
    m.write("w.yaml", &spec(""));
    let host = setpoint::Host::builder()
        .direct_replacement(false)
        .build()
        .expect("host starts");
    host.apply_files(&[file]).await.expect("valid manifest");
    wait_for(&host, "crash", "three replacements", |w| w.restarts >= 3).await;
    assert_eq!(direct_counter(&host, "kept").await, 0);
    assert!(spares_counter(&host, "used").await >= 2);
    host.shutdown().await;
}

/// A replacement the ended instance's task started, that the controller then refuses
/// (here: the workload was scaled to 0 while the end was on its way), leaves no Store
/// and no instance behind. The race is forced by repetition: a crash loop with no
/// back-off, scaled to 0 and back until one scale-down lands in it (1 to 11 tries in
/// ten local runs). The guest ends at once, so whether the controller's abort or the
/// guest's own exit ended the refused one is not told apart here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_replacement_the_controller_refuses_is_ended_and_leaves_nothing() {
    let m = Manifests::new();
    let spec = |replicas: u32| {
        workload(
            "loop",
            "crasher",
            &format!(
                "  replicas: {replicas}\n  env: {{CRASH_AFTER_MS: '0', MODE: exit}}\n  backoff: {{initial: 0ms, max: 0ms}}\n  restartBudget: {{maxRestarts: 100000, window: 1s}}\n"
            ),
        )
    };
    let host = host();
    let mut attempts = 0;
    while direct_counter(&host, "dropped").await == 0 {
        attempts += 1;
        assert!(
            attempts <= 400,
            "no scale-down met a direct replacement in 400 tries"
        );
        let file = m.write("w.yaml", &spec(1));
        host.apply_files(&[file]).await.expect("valid manifest");
        let kept = direct_counter(&host, "kept").await;
        wait_for(&host, "loop", "the crash loop", |w| w.restarts > 0).await;
        // Until a few replacements were direct, so that one is likely on its way.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while direct_counter(&host, "kept").await < kept + 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the loop replaced nothing directly"
            );
            tokio::task::yield_now().await;
        }
        let file = m.write("w.yaml", &spec(0));
        host.apply_files(&[file]).await.expect("valid manifest");
        wait_for(&host, "loop", "no instance", |w| w.instances.is_empty()).await;
        wait_no_stores(
            &host,
            &format!("Stores outlived the scale-down (attempt {attempts})"),
        )
        .await;
    }
    // What the controller refused never ran as a replica: the workload is at rest.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let w = host
        .status()
        .await
        .workload("loop")
        .cloned()
        .expect("applied");
    assert!(w.instances.is_empty() && w.running == 0, "{w:?}");
    assert_eq!(host.live_stores(), 0);
    host.shutdown().await;
}
