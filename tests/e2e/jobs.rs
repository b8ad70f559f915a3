//! Jobs on the real engine with the real `batch` guest: completions and parallelism,
//! retries within the back-off limit, the limit exceeded, the active deadline, exit-code
//! rules, time-to-live after finishing, and the rules on what a Job may be.

use setpoint::status::ConditionType;
use std::time::Duration;

use setpoint::Phase;

use crate::common::{Manifests, host, wait_for};

/// A Job manifest running the `batch` guest.
fn job(name: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: setpoint.dev/v1alpha1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n  component: {{guest:batch}}\n{spec_extra}"
    )
}

fn finished(w: &setpoint::WorkloadStatus) -> bool {
    matches!(w.phase, Phase::Succeeded | Phase::Failed)
}

fn condition(w: &setpoint::WorkloadStatus, kind: ConditionType) -> &setpoint::status::Condition {
    w.conditions
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {:?}", w.conditions))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_until_its_completions_succeed_with_retries_counted() {
    let m = Manifests::new();
    let state = tempfile::tempdir().expect("tempdir");
    let file = m.write(
        "job.yaml",
        &job(
            "crunch",
            &format!(
                "  completions: 5\n  parallelism: 2\n  backoffLimit: 3\n  env: {{FAIL_TIMES: \"2\", WORK_MS: \"10\"}}\n  backoff: {{initial: 1ms, max: 5ms}}\n  dirs: [{{host: {}, guest: /state}}]\n",
                state.path().display()
            ),
        ),
    );
    let host = host();
    host.apply_files(&[file]).await.expect("applied");
    let w = wait_for(&host, "crunch", "the job to finish", finished).await;
    assert_eq!(w.kind, setpoint::status::WorkloadKind::Job);
    assert_eq!(w.phase, Phase::Succeeded, "{:#?}", w.events);
    let j = w.job.clone().expect("job status");
    assert_eq!((j.succeeded, j.failed, j.ignored, j.active), (5, 2, 0, 0));
    assert!(j.completion_time.is_some());
    let complete = condition(&w, ConditionType::Complete);
    assert_eq!(complete.reason, "Completed");
    // Exactly the runs the job counted, and never more than two at once.
    let runs = std::fs::read_to_string(state.path().join("runs")).expect("runs");
    let done = std::fs::read_to_string(state.path().join("done")).expect("done");
    assert_eq!((runs.lines().count(), done.lines().count()), (7, 5));
    crate::common::wait_no_stores(&host, "a finished job holds no instance").await;
    // Nothing runs again, however long one waits: the job is finished.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let runs = std::fs::read_to_string(state.path().join("runs")).expect("runs");
    assert_eq!(runs.lines().count(), 7);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_fails_past_its_backoff_limit_and_at_its_deadline() {
    let m = Manifests::new();
    let file = m.write(
        "jobs.yaml",
        &[
            job(
                "flaky",
                "  backoffLimit: 2\n  env: {EXIT_CODE: \"1\", WORK_MS: \"1\"}\n  backoff: {initial: 1ms, max: 2ms}\n",
            ),
            job(
                "slow",
                "  completions: 3\n  parallelism: 3\n  activeDeadline: 300ms\n  env: {WORK_MS: \"60000\"}\n",
            ),
        ]
        .join("---\n"),
    );
    let host = host();
    host.apply_files(&[file]).await.expect("applied");
    let flaky = wait_for(&host, "flaky", "flaky to fail", finished).await;
    assert_eq!(flaky.phase, Phase::Failed);
    let failed = condition(&flaky, ConditionType::Failed);
    assert_eq!(failed.reason, "BackoffLimitExceeded");
    assert!(
        failed.message.contains("exiting with 1"),
        "{}",
        failed.message
    );
    assert_eq!(
        flaky.job.as_ref().map(|j| j.failed),
        Some(3),
        "limit 2: the third failure fails it"
    );

    let slow = wait_for(&host, "slow", "slow to pass its deadline", finished).await;
    assert_eq!(
        condition(&slow, ConditionType::Failed).reason,
        "DeadlineExceeded"
    );
    let j = slow.job.clone().expect("job status");
    assert_eq!(
        (j.succeeded, j.failed),
        (0, 0),
        "runs stopped at the deadline are not failures"
    );
    wait_for(&host, "slow", "the runs to be stopped", |w| w.running == 0).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_rules_fail_a_job_at_once_or_ignore_a_failure() {
    let m = Manifests::new();
    let state = tempfile::tempdir().expect("tempdir");
    let rules = "  failurePolicy:\n    rules:\n      - action: FailJob\n        onExitCodes: {values: [42]}\n      - action: Ignore\n        onExitCodes: {values: [75]}\n";
    let file = m.write(
        "jobs.yaml",
        &[
            job(
                "fatal",
                &format!("  backoffLimit: 6\n  env: {{EXIT_CODE: \"42\", WORK_MS: \"1\"}}\n{rules}"),
            ),
            // Fails twice with 75 (ignored), then succeeds: a back-off limit of 0 is
            // never reached.
            job(
                "tempfail",
                &format!(
                    "  backoffLimit: 0\n  env: {{FAIL_TIMES: \"2\", FAIL_CODE: \"75\", WORK_MS: \"1\"}}\n  backoff: {{initial: 1ms, max: 2ms}}\n  dirs: [{{host: {}, guest: /state}}]\n{rules}",
                    state.path().display()
                ),
            ),
        ]
        .join("---\n"),
    );
    let host = host();
    host.apply_files(&[file]).await.expect("applied");
    let fatal = wait_for(&host, "fatal", "fatal to fail", finished).await;
    let failed = condition(&fatal, ConditionType::Failed);
    assert_eq!(failed.reason, "FailurePolicy");
    assert!(
        failed.message.contains("rule 0") && failed.message.contains("status 42"),
        "{}",
        failed.message
    );
    assert_eq!(
        fatal.job.as_ref().map(|j| j.failed),
        Some(1),
        "failed at the first run"
    );

    let tempfail = wait_for(&host, "tempfail", "tempfail to finish", finished).await;
    assert_eq!(tempfail.phase, Phase::Succeeded, "{:#?}", tempfail.events);
    let j = tempfail.job.clone().expect("job status");
    assert_eq!((j.succeeded, j.failed, j.ignored), (1, 0, 2));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_is_deleted_after_its_ttl_and_a_job_cannot_change() {
    let m = Manifests::new();
    let short = m.write(
        "short.yaml",
        &job(
            "short",
            "  ttlAfterFinished: 100ms\n  env: {WORK_MS: \"1\"}\n",
        ),
    );
    let kept = m.write("kept.yaml", &job("kept", "  env: {WORK_MS: \"1\"}\n"));
    let host = host();
    host.apply_files(&[short, kept.clone()])
        .await
        .expect("applied");
    crate::common::wait_for_host(&host, "short to be deleted after its ttl", |s| {
        s.workload("short").is_none()
    })
    .await;
    let done = wait_for(&host, "kept", "kept to complete", finished).await;
    assert_eq!(done.phase, Phase::Succeeded);
    // Applying the same job again changes nothing (it does not run again) ...
    host.apply_files(std::slice::from_ref(&kept))
        .await
        .expect("same revision");
    let again = wait_for(&host, "kept", "kept to stay complete", finished).await;
    assert_eq!(again.job.as_ref().map(|j| j.succeeded), Some(1));
    // ... and a changed job is refused, located, with what to do.
    let changed = m.write("kept.yaml", &job("kept", "  env: {WORK_MS: \"2\"}\n"));
    let rejected = host
        .apply_files(&[changed])
        .await
        .expect_err("a job cannot change");
    let text = rejected.to_string();
    assert!(
        text.contains("kept.yaml:6")
            && text.contains("cannot change")
            && text.contains("delete job/kept"),
        "{text}"
    );
    // A workload cannot take a job's name either.
    let workload = m.write("wl.yaml", &crate::common::workload("kept", "ticker", ""));
    let rejected = host
        .apply_files(&[workload])
        .await
        .expect_err("a job stays a job");
    assert!(
        rejected.to_string().contains("cannot become a workload"),
        "{rejected}"
    );
    // Once deleted, the same job runs afresh.
    assert!(host.delete("kept").await.expect("deleted"));
    host.apply_files(&[kept]).await.expect("applied again");
    let rerun = wait_for(&host, "kept", "kept to run again", |w| {
        finished(w) && w.events.iter().any(|e| e.reason == "Applied")
    })
    .await;
    assert_eq!(rerun.job.as_ref().map(|j| j.succeeded), Some(1));
    host.shutdown().await;
}

#[tokio::test]
async fn job_and_workload_fields_do_not_mix_and_a_job_needs_a_command() {
    let m = Manifests::new();
    let host = host();
    let bad_job = m.write(
        "bad-job.yaml",
        &job("bad", "  replicas: 2\n  completions: 0\n  spares: 1\n  failurePolicy:\n    rules:\n      - action: Ignore\n        onExitCodes: {values: [0, 300]}\n"),
    );
    let text = host
        .apply_files(&[bad_job])
        .await
        .expect_err("rejected")
        .to_string();
    assert!(
        !text.contains("is empty"),
        "no noise after the real errors:\n{text}"
    );
    for expected in [
        "bad-job.yaml:7:13: error: `replicas` is a Workload field",
        "bad-job.yaml:8:16: error: completions must be between 1",
        "bad-job.yaml:9:11: error: `spares` is a Workload field",
        "exit code 0 is not between 1 and 255",
        "exit code 300 is not between 1 and 255",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    let bad_workload = m.write(
        "bad-wl.yaml",
        &crate::common::workload("wl", "ticker", "  completions: 3\n  activeDeadline: 1m\n"),
    );
    let text = host
        .apply_files(&[bad_workload])
        .await
        .expect_err("rejected")
        .to_string();
    assert!(
        text.contains("bad-wl.yaml:7:16: error: `completions` is a Job field"),
        "{text}"
    );
    assert!(text.contains("`activeDeadline` is a Job field"), "{text}");
    let reactor = m.write(
        "reactor.yaml",
        "apiVersion: setpoint.dev/v1alpha1\nkind: Job\nmetadata:\n  name: reactor\nspec:\n  component: {guest:probed}\n",
    );
    let text = host
        .apply_files(&[reactor])
        .await
        .expect_err("rejected")
        .to_string();
    assert!(
        text.contains("reactor component, which never ends"),
        "{text}"
    );
    assert!(
        host.status().await.workloads.is_empty(),
        "nothing was applied"
    );
    host.shutdown().await;
}

/// An embedder's ledger: progress kept in a map, and every record counted; it can be
/// told to fail.
#[derive(Default)]
struct MapLedger {
    jobs: std::sync::Mutex<std::collections::HashMap<String, setpoint::JobProgress>>,
    records: std::sync::atomic::AtomicUsize,
    failing: std::sync::atomic::AtomicBool,
}

impl setpoint::JobLedger for MapLedger {
    fn load(&self, job: &str) -> Option<setpoint::JobProgress> {
        self.jobs.lock().unwrap().get(job).cloned()
    }
    fn record(&self, job: &str, progress: &setpoint::JobProgress) -> anyhow::Result<()> {
        use std::sync::atomic::Ordering;
        anyhow::ensure!(!self.failing.load(Ordering::SeqCst), "the disk is full");
        self.records.fetch_add(1, Ordering::SeqCst);
        self.jobs
            .lock()
            .unwrap()
            .insert(job.to_string(), progress.clone());
        Ok(())
    }
    fn forget(&self, job: &str) -> anyhow::Result<()> {
        self.jobs.lock().unwrap().remove(job);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedders_ledger_holds_what_status_shows_and_a_finished_job_never_reruns() {
    use std::sync::atomic::Ordering;
    let m = Manifests::new();
    let file = m.write(
        "job.yaml",
        &job(
            "ledgered",
            "  completions: 3\n  parallelism: 2\n  env: {WORK_MS: \"5\"}\n",
        ),
    );
    let ledger = std::sync::Arc::new(MapLedger::default());
    let host = setpoint::Host::builder()
        .job_ledger(ledger.clone())
        .build()
        .expect("host");
    host.apply_files(std::slice::from_ref(&file))
        .await
        .expect("applied");
    let done = wait_for(&host, "ledgered", "the job to finish", finished).await;
    assert_eq!(done.phase, Phase::Succeeded);
    // What status reported as finished is in the ledger already.
    let stored = ledger.load_copy("ledgered");
    assert_eq!(stored.succeeded, 3);
    assert!(stored.finished.as_ref().is_some_and(|f| f.complete));
    // The start and each of the 3 completions were recorded.
    assert_eq!(ledger.records.load(Ordering::SeqCst), 4);
    host.shutdown().await;

    // A new host with the same ledger: the job is finished, nothing runs.
    let host = setpoint::Host::builder()
        .job_ledger(ledger.clone())
        .build()
        .expect("host");
    host.apply_files(std::slice::from_ref(&file))
        .await
        .expect("applied");
    let again = wait_for(&host, "ledgered", "the job to show finished", finished).await;
    assert_eq!(again.phase, Phase::Succeeded);
    assert_eq!(
        again.job.as_ref().map(|j| (j.succeeded, j.active)),
        Some((3, 0))
    );
    crate::common::wait_no_stores(&host, "a finished job starts nothing").await;
    host.shutdown().await;

    // A ledger that fails: the job pauses (nothing is counted that is not durable) and
    // says so; once the ledger writes again, it finishes.
    ledger.failing.store(true, Ordering::SeqCst);
    let other = m.write(
        "other.yaml",
        &job("unrecorded", "  env: {WORK_MS: \"1\"}\n"),
    );
    let host = setpoint::Host::builder()
        .job_ledger(ledger.clone())
        .build()
        .expect("host");
    host.apply_files(&[other]).await.expect("applied");
    let paused = wait_for(&host, "unrecorded", "the job to pause", |w| {
        w.conditions.iter().any(|c| {
            c.kind == ConditionType::ProgressDurable
                && !c.status
                && c.message.contains("the disk is full")
        })
    })
    .await;
    assert_ne!(
        paused.phase,
        Phase::Succeeded,
        "finished on a ledger that cannot write"
    );
    assert!(
        paused
            .events
            .iter()
            .any(|e| e.reason == "LedgerWriteFailed" && e.message.contains("the disk is full")),
        "{:#?}",
        paused.events
    );
    ledger.failing.store(false, Ordering::SeqCst);
    let w = wait_for(&host, "unrecorded", "the job to finish", finished).await;
    assert_eq!(w.phase, Phase::Succeeded);
    assert!(
        ledger.load_copy("unrecorded").finished.is_some(),
        "finished but not recorded"
    );
    host.shutdown().await;
}

impl MapLedger {
    fn load_copy(&self, job: &str) -> setpoint::JobProgress {
        self.jobs
            .lock()
            .unwrap()
            .get(job)
            .cloned()
            .expect("recorded")
    }
}
