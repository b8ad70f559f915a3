//! An instance's vitals: the liveness and readiness signals a guest sends through the
//! `heartbeat` import, shared between its Store (the host functions) and the task that
//! watches it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Liveness and readiness signals a guest sends through `heartbeat`, shared between the
/// Store (host functions) and the task that watches it.
pub(crate) struct Vitals {
    pub(crate) started: Instant,
    /// Milliseconds since start of the last beat; `u64::MAX` before the first.
    last_beat_ms: AtomicU64,
    pub(crate) ready: AtomicBool,
    pub(crate) stop_requested: AtomicBool,
    pub(crate) changed: Notify,
}

impl Vitals {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            last_beat_ms: AtomicU64::new(u64::MAX),
            ready: AtomicBool::new(true),
            stop_requested: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// Records a beat; true if it was the first.
    pub(crate) fn record_beat(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_beat_ms.swap(now, Ordering::AcqRel) == u64::MAX
    }

    pub(crate) fn last_beat(&self) -> Option<Instant> {
        match self.last_beat_ms.load(Ordering::Acquire) {
            u64::MAX => None,
            ms => Some(crate::clock::after(self.started, Duration::from_millis(ms))),
        }
    }
}
