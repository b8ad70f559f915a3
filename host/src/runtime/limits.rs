//! Per-instance resource accounting and enforcement: a `ResourceLimiter` that caps linear
//! memory and tables (and remembers the peak), and a CPU meter fed by epoch ticks that
//! enforces an optional CPU budget. Exceeding either ends the instance with a typed error
//! that [`super::exit`] classifies.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::ResourceLimiter;

use crate::manifest::CpuBudget;

/// What was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Linear memory, in bytes.
    Memory,
    /// Table elements.
    TableElements,
}

/// A guest asked for more than its cap; returned from the limiter as a trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitExceeded {
    /// Which resource.
    pub resource: Resource,
    /// What the guest asked to grow to.
    pub requested: u64,
    /// The cap.
    pub limit: u64,
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.resource {
            Resource::Memory => write!(
                f,
                "memory grow to {} bytes refused: the cap is {} bytes",
                self.requested, self.limit
            ),
            Resource::TableElements => {
                write!(
                    f,
                    "table grow to {} elements refused: the cap is {} elements",
                    self.requested, self.limit
                )
            }
        }
    }
}

impl std::error::Error for LimitExceeded {}

/// An instance's live usage, read while it runs (`setpoint top`, status): its linear
/// memory (which never shrinks, so the largest size is the size) and the CPU ticks its
/// meter counted. Written by its Store, read by anyone holding the `Arc`.
#[derive(Debug, Default)]
pub struct Usage {
    memory: std::sync::atomic::AtomicU64,
    cpu_ns: std::sync::atomic::AtomicU64,
}

impl Usage {
    /// Linear memory now, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// CPU time used so far (tick resolution).
    pub fn cpu(&self) -> Duration {
        Duration::from_nanos(self.cpu_ns.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Caps and counters for one Store.
pub struct InstanceLimiter {
    memory_limit: usize,
    table_elements_limit: usize,
    peak_memory: usize,
    usage: Option<Arc<Usage>>,
}

impl InstanceLimiter {
    /// A limiter with these caps.
    pub fn new(memory_limit: u64, table_elements_limit: u64) -> Self {
        Self {
            memory_limit: usize::try_from(memory_limit).unwrap_or(usize::MAX),
            table_elements_limit: usize::try_from(table_elements_limit).unwrap_or(usize::MAX),
            peak_memory: 0,
            usage: None,
        }
    }

    /// Also reports memory to `usage` as it grows.
    pub fn with_usage(mut self, usage: Arc<Usage>) -> Self {
        self.usage = Some(usage);
        self
    }

    /// The largest total linear memory the instance reached, in bytes.
    pub fn peak_memory(&self) -> u64 {
        self.peak_memory as u64
    }
}

/// Per-store caps on how many instances, tables and memories a component may create.
/// Components are made of several core instances; these bound a malicious one.
const MAX_CORE_INSTANCES: usize = 1_000;
const MAX_TABLES: usize = 1_000;
const MAX_MEMORIES: usize = 100;

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            return Err(wasmtime::Error::new(LimitExceeded {
                resource: Resource::Memory,
                requested: desired as u64,
                limit: self.memory_limit as u64,
            }));
        }
        self.peak_memory = self.peak_memory.max(desired);
        if let Some(usage) = &self.usage {
            usage.memory.store(
                self.peak_memory as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements_limit {
            return Err(wasmtime::Error::new(LimitExceeded {
                resource: Resource::TableElements,
                requested: desired as u64,
                limit: self.table_elements_limit as u64,
            }));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// The CPU budget was spent; returned from the epoch callback as a trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuBudgetExceeded {
    /// CPU time used over the instance's life.
    pub used: Duration,
    /// The budget.
    pub budget: CpuBudget,
}

impl fmt::Display for CpuBudgetExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.budget.per {
            Some(per) => write!(
                f,
                "CPU budget of {:?} per {:?} spent",
                self.budget.time, per
            ),
            None => write!(f, "CPU budget of {:?} spent", self.budget.time),
        }
    }
}

impl std::error::Error for CpuBudgetExceeded {}

/// Measures CPU by sampling: every epoch tick that finds the guest executing Wasm counts
/// one tick of CPU. A token bucket of `budget.time` (refilled at `time / per`, or never
/// without `per`) turns a runaway into a `CpuBudgetExceeded` trap.
pub struct CpuMeter {
    tick: Duration,
    ticks: u64,
    usage: Option<Arc<Usage>>,
    budget: Option<CpuBudget>,
    /// Remaining budget in nanoseconds, and the tick count when it was last refilled.
    remaining_ns: f64,
    refilled_at: std::time::Instant,
}

impl CpuMeter {
    /// A meter for epoch ticks of `tick`, enforcing `budget` if any.
    pub fn new(tick: Duration, budget: Option<CpuBudget>) -> Self {
        Self {
            tick,
            ticks: 0,
            usage: None,
            budget,
            remaining_ns: budget.map_or(0.0, |b| b.time.as_nanos() as f64),
            refilled_at: std::time::Instant::now(),
        }
    }

    /// Also reports the CPU it counts to `usage`.
    pub fn with_usage(mut self, usage: Arc<Usage>) -> Self {
        self.usage = Some(usage);
        self
    }

    /// The epoch tick this meter counts in.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// CPU time used so far (tick resolution).
    pub fn used(&self) -> Duration {
        self.tick
            .saturating_mul(u32::try_from(self.ticks).unwrap_or(u32::MAX))
    }

    /// Records one tick of execution; errs when the budget is spent.
    pub fn on_tick(&mut self) -> Result<(), CpuBudgetExceeded> {
        self.ticks += 1;
        if let Some(usage) = &self.usage {
            let ns = u64::try_from(self.used().as_nanos()).unwrap_or(u64::MAX);
            usage.cpu_ns.store(ns, std::sync::atomic::Ordering::Relaxed);
        }
        let Some(budget) = self.budget else {
            return Ok(());
        };
        if let Some(per) = budget.per {
            let now = std::time::Instant::now();
            let rate = budget.time.as_secs_f64() / per.as_secs_f64().max(1e-9);
            let refill = now.duration_since(self.refilled_at).as_nanos() as f64 * rate;
            self.remaining_ns = (self.remaining_ns + refill).min(budget.time.as_nanos() as f64);
            self.refilled_at = now;
        }
        self.remaining_ns -= self.tick.as_nanos() as f64;
        if self.remaining_ns < 0.0 {
            return Err(CpuBudgetExceeded {
                used: self.used(),
                budget,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_cap_refuses_growth_and_tracks_the_peak() {
        let mut l = InstanceLimiter::new(1 << 20, 10);
        assert!(l.memory_growing(0, 1 << 19, None).unwrap());
        let err = l.memory_growing(1 << 19, 2 << 20, None).unwrap_err();
        let exceeded = err.downcast_ref::<LimitExceeded>().expect("typed error");
        assert_eq!(exceeded.requested, 2 << 20);
        assert_eq!(l.peak_memory(), 1 << 19);
        assert!(l.table_growing(0, 11, None).is_err());
    }

    #[test]
    fn a_lifetime_cpu_budget_runs_out() {
        let budget = CpuBudget {
            time: Duration::from_millis(3),
            per: None,
        };
        let mut m = CpuMeter::new(Duration::from_millis(1), Some(budget));
        assert!(m.on_tick().is_ok());
        assert!(m.on_tick().is_ok());
        assert!(m.on_tick().is_ok());
        let err = m.on_tick().unwrap_err();
        assert_eq!(err.used, Duration::from_millis(4));
    }

    #[test]
    fn without_a_budget_the_meter_only_counts() {
        let mut m = CpuMeter::new(Duration::from_millis(2), None);
        for _ in 0..1000 {
            m.on_tick().unwrap();
        }
        assert_eq!(m.used(), Duration::from_secs(2));
    }
}
