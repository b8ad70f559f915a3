//! glibc's malloc, set for a host of many instances, and memory given back after many
//! instances end. Linux with glibc only; elsewhere [`tune`] and [`Trimmer`] do nothing.
//!
//! **Growth.** Each instance is about 20 KiB of heap (its Store, its core instances'
//! contexts, its WASI state), allocated by the worker thread that spawns it. glibc
//! grows a thread's heap by the page, each growth an `mprotect` that takes the
//! process's address-space lock against the page faults of the other CPUs: spawning
//! 100,000 instances made about 4.5 such calls per instance, a fifth of the spawn's
//! CPU time. With a top pad of 64 MiB (a thread heap's full size) a new heap is made
//! writable whole when glibc maps it; its pages still cost memory only once touched.
//! Setting the pad also turns off glibc's sliding mmap threshold (which climbs, after
//! large frees, up to 32 MiB), so the threshold is set to that ceiling: allocations
//! under 32 MiB come from the heaps, as they would once the threshold had climbed.
//!
//! **Giving back.** glibc keeps freed heap memory inside its heaps: after 100,000
//! instances were scaled to 0 the process still held 1.9 GiB. A [`Trimmer`], called at
//! each of the epoch thread's ticks, watches the number of live Stores: once at least
//! [`TRIM_AFTER_ENDS`] fewer are alive than at their peak since the last trim, and the
//! count has stopped falling for a check interval, it runs `malloc_trim(0)` on a thread
//! of its own (a few hundred milliseconds for gigabytes; each arena is locked while it
//! is walked, so an allocation on that arena can wait that long).
//!
//! The settings apply to heaps glibc makes after [`tune`] runs: a heap made before (a
//! thread's first, when it first allocates) still grows by the page until it is full.
//! The runtime calls [`tune`] when it is built; the `setpoint` binary and the benches
//! call it first thing, before any thread starts.
//!
//! Both are process-wide: an embedder with allocator settings of its own turns them off
//! ([`super::RuntimeConfig::tune_malloc`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Live Stores fewer than at their peak since the last trim before memory is trimmed:
/// about 20 MiB of heap.
pub const TRIM_AFTER_ENDS: usize = 1024;

/// How often the live count is sampled; a trim waits for one interval without a fall.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Sets glibc's malloc for many instances (see the module documentation): best called
/// before any thread starts. Idempotent.
pub fn tune() {
    imp::tune();
}

/// Whether a trim is due: at least [`TRIM_AFTER_ENDS`] Stores fewer than the `peak`
/// since the last trim, and `live` no lower than the last sample (`previous`), so that a
/// scale-down in progress is trimmed once, when it ends.
fn trim_due(peak: usize, previous: usize, live: usize) -> bool {
    peak.saturating_sub(live) >= TRIM_AFTER_ENDS && live >= previous
}

/// Gives heap memory back to the kernel after many instances ended (see the module
/// documentation). Driven by the epoch thread's ticks.
pub(crate) struct Trimmer {
    live: Arc<AtomicUsize>,
    peak: usize,
    previous: usize,
    checked: Instant,
    trimming: Arc<AtomicBool>,
}

impl Trimmer {
    /// A trimmer watching the runtime's count of live Stores.
    pub(crate) fn new(live: Arc<AtomicUsize>) -> Self {
        let now = live.load(Ordering::Relaxed);
        Self {
            live,
            peak: now,
            previous: now,
            checked: Instant::now(),
            trimming: Arc::default(),
        }
    }

    /// Samples the live count once per [`CHECK_EVERY`], and starts a trim when one is due
    /// and none runs.
    pub(crate) fn tick(&mut self) {
        let live = self.live.load(Ordering::Relaxed);
        self.peak = self.peak.max(live);
        if self.checked.elapsed() < CHECK_EVERY {
            return;
        }
        self.checked = Instant::now();
        let due = trim_due(self.peak, self.previous, live);
        self.previous = live;
        if !due || self.trimming.swap(true, Ordering::AcqRel) {
            return;
        }
        let ended = self.peak - live;
        self.peak = live;
        let trimming = self.trimming.clone();
        let spawned = std::thread::Builder::new()
            .name("setpoint-trim".into())
            .spawn(move || {
                let (before, started) = (imp::resident_bytes(), Instant::now());
                imp::trim();
                tracing::debug!(
                    ended,
                    rss_before_mib = before >> 20,
                    rss_after_mib = imp::resident_bytes() >> 20,
                    took_ms = started.elapsed().as_millis() as u64,
                    "heap memory given back after instances ended"
                );
                trimming.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            // No thread to spare now: the next check tries again.
            self.trimming.store(false, Ordering::Release);
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    /// A thread heap's full size in glibc on 64-bit targets (`HEAP_MAX_SIZE`).
    const TOP_PAD: libc::c_int = 64 << 20;
    /// The ceiling of glibc's sliding mmap threshold on 64-bit targets.
    const MMAP_THRESHOLD: libc::c_int = 32 << 20;

    pub(super) fn tune() {
        // SAFETY: mallopt only sets malloc's parameters; it takes malloc's own locks.
        unsafe {
            libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }

    pub(super) fn trim() {
        // SAFETY: malloc_trim walks malloc's arenas under their locks.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    pub(super) fn resident_bytes() -> u64 {
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |pages| {
                pages.saturating_mul(super::super::pages::page_size() as u64)
            })
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn tune() {}

    pub(super) fn trim() {}

    pub(super) fn resident_bytes() -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_waits_for_enough_ends_and_for_the_fall_to_stop() {
        // Too few ended.
        assert!(!trim_due(10_000, 9_000, 9_000));
        // Still falling: wait.
        assert!(!trim_due(10_000, 5_000, 2_000));
        // Settled, enough ended.
        assert!(trim_due(10_000, 2_000, 2_000));
        // Rising again after the fall: the memory is being reused, but the ended
        // instances' memory is still free now.
        assert!(trim_due(10_000, 2_000, 2_500));
        // Exactly the bound.
        assert!(trim_due(TRIM_AFTER_ENDS, 0, 0));
        assert!(!trim_due(TRIM_AFTER_ENDS - 1, 0, 0));
    }

    #[test]
    fn a_trimmer_trims_once_per_scale_down() {
        let live = Arc::new(AtomicUsize::new(5_000));
        let mut trimmer = Trimmer::new(live.clone());
        let check = |trimmer: &mut Trimmer| {
            trimmer.checked = Instant::now() - CHECK_EVERY;
            trimmer.tick();
            // Wait for a trim started by this check to end.
            while trimmer.trimming.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            trimmer.peak
        };
        live.store(1_000, Ordering::Relaxed);
        // Falling (5,000 sampled, 1,000 now): no trim, the peak is kept.
        assert_eq!(check(&mut trimmer), 5_000);
        // Settled: trimmed, and the peak is reset to what lives now.
        assert_eq!(check(&mut trimmer), 1_000);
        // Nothing more ended: no trim, nothing changes.
        assert_eq!(check(&mut trimmer), 1_000);
    }
}
