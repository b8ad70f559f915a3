//! The kernel's limit on memory mappings per process (`vm.max_map_count`), the wall that
//! stops a host from holding more instances long before memory does: every live instance
//! costs a few mappings (its linear memory, its fiber stack, their guard pages). This
//! module estimates how many instances fit, so the controller can warn before the wall,
//! and explains an instantiation that failed because the wall was hit.

use super::RuntimeConfig;

/// Mappings an idle instance costs, measured with `cargo bench --bench scenarios`
/// (density): 2.85–2.93 with compact memories, about 4 with the default reservation.
fn per_instance(config: &RuntimeConfig) -> usize {
    if config.compact_memory { 3 } else { 4 }
}

/// Threads the host itself may start besides its instances (tokio's workers and its
/// bounded blocking pool, the epoch ticker, the ledger writer, compile threads). Each
/// costs a few mappings (its stack, guard page and signal stack).
pub const HOST_THREADS: usize = 64;

/// Most threads tokio's blocking pool may hold (its default, 512, would need thousands
/// of mappings on its own at the wall). The CLI's runtime is built with it.
pub const BLOCKING_THREADS: usize = 32;

/// Mappings kept free under the kernel's `limit` for the host itself: its threads
/// ([`HOST_THREADS`], 4 mappings each), the compiled code of the next apply, files and
/// sockets (1,024), and a twentieth of the limit for what the estimate misses. Spawns
/// are refused once fewer than this remain: the wall is never touched.
pub fn reserve(limit: usize) -> usize {
    1024 + HOST_THREADS * 4 + limit / 20
}

/// What to tell an operator at the wall: compact memories only help where they are off.
pub fn advice(config: &RuntimeConfig) -> &'static str {
    if config.compact_memory {
        "raise vm.max_map_count (sysctl -w vm.max_map_count=...), or run fewer instances"
    } else {
        "raise vm.max_map_count (sysctl -w vm.max_map_count=...), or run with compact memories (--compact-memory), which cost fewer mappings each"
    }
}

/// The kernel's limit (`/proc/sys/vm/max_map_count`), where it can be read.
pub fn limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/sys/vm/max_map_count").ok()?;
    text.trim().parse().ok()
}

/// Mappings this process holds now (one line of `/proc/self/maps` each). Reads a file
/// as long as the mapping count: call it rarely.
pub fn in_use() -> Option<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    Some(maps.lines().count())
}

/// How many more live instances fit under the mapping limit, given the mappings in use
/// now; `None` where the limit cannot be read (not Linux) or an instance pool reserves
/// its mappings up front.
pub fn instance_capacity(config: &RuntimeConfig) -> Option<usize> {
    MappingGuard::new(config).map(|g| g.capacity())
}

/// Decides whether one more instance fits under the kernel's mapping limit, keeping
/// [`reserve`] free for the host. Instances map their memory when their task
/// instantiates them, after the controller spawned them, so counting mappings alone
/// lags behind a burst of spawns: the guard also predicts the count from the mappings
/// the process held at start plus [`per_instance`] for each live instance, and refuses
/// when either the prediction or the last count leaves too little room.
#[derive(Debug, Clone)]
pub struct MappingGuard {
    limit: usize,
    base: usize,
    per_instance: usize,
    warning_at: usize,
    /// Past the warning point: the live count at the last count of mappings, and
    /// whether that count left too little room.
    checked: Option<(usize, bool)>,
}

/// Spawns (or ends) between two counts of the mappings in use, past the warning point.
const RECHECK: usize = 64;

impl MappingGuard {
    /// A guard for this process now; `None` where the limit cannot be read (not Linux)
    /// or an instance pool reserves its mappings up front.
    pub fn new(config: &RuntimeConfig) -> Option<Self> {
        if config.instance_pool > 0 {
            return None;
        }
        let limit = limit()?;
        let base = in_use()?;
        let per_instance = per_instance(config);
        let capacity = limit.saturating_sub(reserve(limit)).saturating_sub(base) / per_instance;
        Some(Self {
            limit,
            base,
            per_instance,
            warning_at: capacity * 4 / 5,
            checked: None,
        })
    }

    /// The live count at which the host warns (80% of the estimated capacity).
    pub fn warning_at(&self) -> usize {
        self.warning_at
    }

    /// The estimated capacity at start, in instances.
    pub fn capacity(&self) -> usize {
        self.warning_at * 5 / 4
    }

    /// The kernel's limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the host, holding `live` instances, must refuse another. Below the
    /// warning point this is arithmetic; past it, `/proc/self/maps` is also counted
    /// again every 64 spawns or ends (that takes milliseconds at that size).
    pub fn full(&mut self, live: usize) -> bool {
        let room = self.limit.saturating_sub(reserve(self.limit));
        let predicted = self
            .base
            .saturating_add(live.saturating_add(1).saturating_mul(self.per_instance));
        if predicted > room {
            return true;
        }
        if live < self.warning_at {
            self.checked = None;
            return false;
        }
        match self.checked {
            Some((at, full)) if live.abs_diff(at) < RECHECK => full,
            _ => {
                let full = in_use().unwrap_or(0).saturating_add(self.per_instance) > room;
                self.checked = Some((live, full));
                full
            }
        }
    }
}

/// A hint for an instantiation error that looks like the mapping limit (the kernel
/// answers `mmap` and `mprotect` with ENOMEM when a process is at its limit).
pub fn exhaustion_hint(error_text: &str, config: &RuntimeConfig) -> Option<String> {
    if !error_text.contains("os error 12") && !error_text.contains("Cannot allocate memory") {
        return None;
    }
    let limit = limit()?;
    let in_use = in_use()?;
    // Within a few percent of the limit: the failure is the limit, not a lack of memory.
    (in_use + limit / 50 >= limit).then(|| {
        format!(
            "the host holds {in_use} memory mappings, at the kernel's limit \
             (vm.max_map_count = {limit}): {}",
            advice(config)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_out_of_memory_errors_get_a_hint() {
        assert_eq!(
            exhaustion_hint("unknown import `foo`", &RuntimeConfig::default()),
            None
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn capacity_is_read_from_this_process() {
        let config = RuntimeConfig::default();
        let capacity = instance_capacity(&config).expect("Linux exposes the map limit");
        let limit = limit().expect("readable");
        assert!(
            capacity > 0 && capacity < limit / 4,
            "{capacity} of {limit}"
        );
        let compact = RuntimeConfig {
            compact_memory: true,
            ..RuntimeConfig::default()
        };
        assert!(instance_capacity(&compact).expect("readable") > capacity);
        let pooled = RuntimeConfig {
            instance_pool: 10,
            ..RuntimeConfig::default()
        };
        assert_eq!(instance_capacity(&pooled), None);
    }
}
