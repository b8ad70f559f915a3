//! Memory comes back after a scale-down: once the count of live instances stops
//! falling, the host trims malloc's heaps (`runtime::malloc`), where glibc alone kept
//! about half of what thousands of instances had taken. Its own test binary, so that
//! the RSS it reads is this test's alone.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::time::{Duration, Instant};

use setpoint::{Host, Workload, WorkloadSpec};

#[path = "support/alone.rs"]
mod alone;
use alone::{guest, rss_bytes};

fn idle(n: u32) -> Workload {
    let mut spec = WorkloadSpec::new(guest("probed"));
    spec.replicas = n;
    spec.memory_limit = Some(4 << 20);
    Workload::new("idle", spec)
}

const INSTANCES: u32 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_comes_back_after_a_scale_down() {
    let host = Host::builder()
        .compact_memory(true)
        .event_history(4)
        .build()
        .expect("host");
    // Compiled first, so that the code is in RSS before the baseline is read.
    host.apply(vec![idle(0)]).await.expect("apply");
    let before = rss_bytes();

    host.apply(vec![idle(INSTANCES)]).await.expect("apply");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let counts = host.counts().await;
        let running = counts
            .iter()
            .find(|c| c.name == "idle")
            .map_or(0, |c| c.running);
        if running >= INSTANCES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {running} of {INSTANCES} ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peak = rss_bytes();
    let taken = peak.saturating_sub(before);
    // 3,000 instances are about 40 KiB each.
    assert!(
        taken > u64::from(INSTANCES) * 20 * 1024,
        "{INSTANCES} instances took only {taken} bytes: nothing to give back"
    );

    host.apply(vec![idle(0)]).await.expect("apply");
    let deadline = Instant::now() + Duration::from_secs(60);
    while host.live_stores() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} Stores are left",
            host.live_stores()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The trim follows a quarter of a second without a fall in the count.
    let deadline = Instant::now() + Duration::from_secs(10);
    let kept = loop {
        let kept = rss_bytes().saturating_sub(before);
        if kept <= taken / 4 || Instant::now() >= deadline {
            break kept;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("RSS before {before}, with {INSTANCES} instances {peak}, kept after {kept}");
    assert!(
        kept <= taken / 4,
        "of {taken} bytes taken by {INSTANCES} instances, {kept} were still held 10 s after they ended"
    );
    host.shutdown().await;
}
