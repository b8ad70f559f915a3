//! An instance's vitals: the liveness and readiness signals a guest sends through the
//! `heartbeat` import, shared between its Store (the host functions) and the task that
//! watches it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Liveness and readiness signals a guest sends through `heartbeat`, shared between the
/// Store (host functions) and the task that watches it.
pub(crate) struct Vitals {
    /// When the Store was built: the base of the clocks below.
    base: Instant,
    /// Microseconds from `base` to the instance's start (a spare starts later than it is
    /// built).
    started_us: AtomicU64,
    /// Milliseconds since `base` of the last beat; `u64::MAX` before the first.
    last_beat_ms: AtomicU64,
    pub(crate) ready: AtomicBool,
    pub(crate) stop_requested: AtomicBool,
    pub(crate) changed: Notify,
}

impl Vitals {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            started_us: AtomicU64::new(0),
            last_beat_ms: AtomicU64::new(u64::MAX),
            ready: AtomicBool::new(true),
            stop_requested: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// When the instance started (its guest code was first run).
    pub(crate) fn started(&self) -> Instant {
        let us = self.started_us.load(Ordering::Acquire);
        crate::clock::after(self.base, Duration::from_micros(us))
    }

    /// Records that the instance starts `at`: a watchdog counts from here.
    pub(crate) fn restart_clock(&self, at: Instant) {
        let us = at.saturating_duration_since(self.base).as_micros();
        self.started_us
            .store(u64::try_from(us).unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Records a beat; true if it was the first.
    pub(crate) fn record_beat(&self) -> bool {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_beat_ms.swap(now, Ordering::AcqRel) == u64::MAX
    }

    pub(crate) fn last_beat(&self) -> Option<Instant> {
        match self.last_beat_ms.load(Ordering::Acquire) {
            u64::MAX => None,
            ms => Some(crate::clock::after(self.base, Duration::from_millis(ms))),
        }
    }
}
