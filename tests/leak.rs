//! Thousands of replacements leak nothing: no Stores, no tasks, and RSS stays flat.
//! Its own test binary, so that no other test shares the process while RSS is read.

use std::time::{Duration, Instant};

use setpoint::{Host, Workload, WorkloadSpec};

#[path = "support/alone.rs"]
mod alone;
use alone::{guest, rss_bytes};

/// The least RSS of 10 readings 10 ms apart: a crash loop always holds a few instances
/// being built or torn down (a memory bomb's is megabytes), and one reading may catch more
/// of them than another; what is kept for good shows in the least one too.
async fn settled_rss() -> u64 {
    let mut least = u64::MAX;
    for _ in 0..10 {
        least = least.min(rss_bytes());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    least
}

async fn wait_restarts(host: &Host, name: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let restarts = host.status().await.workload(name).map_or(0, |w| w.restarts);
        if restarts >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {restarts} restarts of {name}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_replacements_leak_nothing() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let host = Host::builder().build().expect("host");

    let mut crash = WorkloadSpec::new(guest("crasher"));
    crash.env = vec![
        ("CRASH_AFTER_MS".into(), "0".into()),
        ("MODE".into(), "exit".into()),
    ];
    crash.backoff.initial = Duration::ZERO;
    crash.backoff.max = Duration::ZERO;
    let mut bomb = WorkloadSpec::new(guest("hostile"));
    bomb.env = vec![("MODE".into(), "membomb".into())];
    bomb.memory_limit = Some(8 << 20);
    bomb.backoff = crash.backoff;
    host.apply(vec![
        Workload::new("crash", crash),
        Workload::new("bomb", bomb),
    ])
    .await
    .expect("apply");

    // Warm up (allocator pools, code, caches), then measure across many more replacements.
    wait_restarts(&host, "crash", 500).await;
    let rss_warm = settled_rss().await;
    let stores_warm = host.live_stores();
    wait_restarts(&host, "crash", 4_500).await;
    let rss_after = settled_rss().await;
    let status = host.status().await;
    let bombs = status.workload("bomb").map_or(0, |w| w.restarts);
    let growth = rss_after.saturating_sub(rss_warm);
    eprintln!(
        "rss warm {rss_warm} after {rss_after} growth {growth}; bomb restarts {bombs}; stores {stores_warm}"
    );
    assert!(
        bombs >= 20,
        "the memory bomb was replaced too ({bombs} times)"
    );
    // One Store per slot, one per spare, and those of the latest ends, whose teardown
    // tasks have not run yet (a leak would keep thousands).
    assert!(
        stores_warm <= 2 + 2 + 32,
        "at most one Store per slot and per spare is alive, besides the latest ends' ({stores_warm})"
    );
    // 4,000 replacements: even 4 KiB kept per replacement would show as 16 MiB.
    assert!(
        growth < 16 << 20,
        "RSS grew {growth} bytes over 4,000 replacements"
    );

    for name in ["crash", "bomb"] {
        assert!(host.delete(name).await.expect("host running"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !host.status().await.workloads.is_empty() {
        assert!(Instant::now() < deadline, "deletion did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The last ones once their teardown tasks ran (and the discarded spares' once aborted).
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.live_stores() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} Stores were never dropped",
            host.live_stores()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    host.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.num_alive_tasks() > tasks_before {
        assert!(
            Instant::now() < deadline,
            "{} tasks left behind",
            metrics.num_alive_tasks() - tasks_before
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
