//! The kernel's limit on memory mappings per process (`vm.max_map_count`), the wall that
//! stops a host from holding more instances long before memory does: every live instance
//! costs a few mappings (its linear memory, its fiber stack, their guard pages). This
//! module estimates how many instances fit, so the controller can warn before the wall,
//! and explains an instantiation that failed because the wall was hit.

use super::RuntimeConfig;

/// Mappings an instance costs besides its fiber stack, in thousandths, at least (the
/// guard learns a higher cost from its counts, the first at 64 instances): with compact
/// memories the memories of neighbouring instances merge into one mapping (measured with
/// `cargo bench --bench scenarios`, density: under 0.02 each); with the default
/// reservation each memory is two, its pages and its inaccessible reservation.
fn per_instance_milli(config: &RuntimeConfig) -> usize {
    if config.compact_memory { 20 } else { 2_000 }
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

/// How many live instances fit under the mapping limit if their stacks were all in use
/// (the fewest), given the mappings in use now; `None` where the limit cannot be read
/// (not Linux) or an instance pool reserves its mappings up front.
pub fn instance_capacity(config: &RuntimeConfig) -> Option<usize> {
    MappingGuard::new(config, None).map(|g| g.fewest())
}

/// Decides whether one more instance fits under the kernel's mapping limit, keeping
/// [`reserve`] free for the host.
///
/// It predicts the mappings in use from two parts. Fiber stacks come from the runtime's
/// arena, whose counters say exactly what they cost now (an idle instance's stack is
/// parked and costs nothing; see [`super::stacks`]); without an arena each instance
/// costs two for its stack. The rest (linear memories, mostly) is the mappings held at
/// start plus a cost per instance: estimated from the configuration, and raised when a
/// count of `/proc/self/maps` finds more (the guard counts at 64, 128, 256... instances,
/// and past the warning point).
/// Counting alone would lag behind a burst of spawns (an instance maps its memory when
/// its task instantiates it, after the controller spawned it), so past the warning point
/// the guard refuses when either the prediction or the last count (taken again every 64
/// spawns or ends) leaves too little room.
pub struct MappingGuard {
    limit: usize,
    /// Mappings other than stacks at start.
    base: usize,
    /// Mappings other than stacks per instance, in thousandths: the configuration's
    /// estimate, and the figure in use (learnt from the last count).
    estimate: usize,
    per_instance_milli: usize,
    stacks: Option<super::stacks::StackWatcher>,
    /// The live count at the next count that learns the cost per instance.
    learn_at: usize,
    /// Past the warning point: the live count at the last count, and whether that count
    /// left too little room.
    checked: Option<(usize, bool)>,
    /// Whether the warning was given (re-armed once the prediction falls well below it).
    warned: bool,
}

impl std::fmt::Debug for MappingGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappingGuard")
            .field("limit", &self.limit)
            .field("base", &self.base)
            .field("per_instance_milli", &self.per_instance_milli)
            .field("arena", &self.stacks.is_some())
            .finish()
    }
}

/// Spawns (or ends) between two counts of the mappings in use, past the warning point,
/// and the fewest instances a cost per instance is learnt over.
const RECHECK: usize = 64;

impl MappingGuard {
    /// A guard for this process now, whose stacks (if they come from an arena) `stacks`
    /// counts; `None` where the limit cannot be read (not Linux) or an instance pool
    /// reserves its mappings up front.
    pub(crate) fn new(
        config: &RuntimeConfig,
        stacks: Option<super::stacks::StackWatcher>,
    ) -> Option<Self> {
        if config.instance_pool > 0 {
            return None;
        }
        let limit = limit()?;
        let in_use = in_use()?;
        let stack_now = stacks.as_ref().map_or(0, |s| s.stats().mappings());
        Some(Self {
            limit,
            base: in_use.saturating_sub(stack_now),
            estimate: per_instance_milli(config),
            per_instance_milli: per_instance_milli(config),
            stacks,
            learn_at: RECHECK,
            checked: None,
            warned: false,
        })
    }

    /// The kernel's limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Mappings the host may hold, short of the reserve.
    fn room(&self) -> usize {
        self.limit.saturating_sub(reserve(self.limit))
    }

    /// The prediction's warning point: four fifths of the room.
    fn warning_point(&self) -> usize {
        self.room() / 5 * 4
    }

    /// Mappings the stacks of `live` instances cost now, plus those of one about to
    /// start (with protection its stack splits its arena while it instantiates; with
    /// guard markers it costs at most a new arena, so two is an upper bound either way).
    fn stack_mappings(&self, live: usize) -> usize {
        match &self.stacks {
            Some(s) => s.stats().mappings().saturating_add(2),
            None => live.saturating_add(1).saturating_mul(2),
        }
    }

    /// The mappings predicted with `live` instances and one more.
    fn predicted(&self, live: usize) -> usize {
        let others = live
            .saturating_add(1)
            .saturating_mul(self.per_instance_milli)
            / 1000;
        self.base
            .saturating_add(others)
            .saturating_add(self.stack_mappings(live))
    }

    /// Counts the mappings in use; from 64 instances on, takes the cost per instance the
    /// count shows where it is more than the configuration's estimate (never less: a
    /// burst of spawns may not have mapped its memories yet when it is counted). Each
    /// count replaces the last one's figure: what the host itself mapped since it
    /// started weighs less on more instances.
    fn count(&mut self, live: usize) -> Option<usize> {
        let in_use = in_use()?;
        if live >= RECHECK {
            let stacks = self.stacks.as_ref().map_or(0, |s| s.stats().mappings());
            let other = in_use.saturating_sub(stacks).saturating_sub(self.base);
            let learnt = other.saturating_mul(1000) / live;
            self.per_instance_milli = self.estimate.max(learnt);
        }
        Some(in_use)
    }

    /// Whether the host, holding `live` instances, must refuse another.
    pub fn full(&mut self, live: usize) -> bool {
        if live >= self.learn_at {
            self.learn_at = live.saturating_mul(2);
            self.count(live);
        }
        if self.predicted(live) > self.room() {
            return true;
        }
        if self.short_of_warning(live) {
            self.checked = None;
            return false;
        }
        match self.checked {
            Some((at, full)) if live.abs_diff(at) < RECHECK => full,
            _ => {
                let next = 2 + self.per_instance_milli.div_ceil(1000);
                let full = self
                    .count(live)
                    .is_some_and(|in_use| in_use.saturating_add(next) > self.room());
                self.checked = Some((live, full));
                full
            }
        }
    }

    /// Once per crossing of the warning point (four fifths of the room), an estimate of
    /// how many instances fit in all: `Some` when the host should warn now.
    pub fn crossed_warning(&mut self, live: usize) -> Option<usize> {
        let predicted = self.predicted(live);
        if predicted < self.warning_point() / 8 * 7 {
            self.warned = false;
        }
        if self.warned || predicted < self.warning_point() {
            return None;
        }
        self.warned = true;
        Some(self.fits(live))
    }

    /// Whether the prediction with `live` instances is short of the warning point.
    pub fn short_of_warning(&self, live: usize) -> bool {
        self.predicted(live) < self.warning_point()
    }

    /// Instances that fit in all, `live` of them there now, if the rest stay idle.
    fn fits(&self, live: usize) -> usize {
        let left = self.room().saturating_sub(self.predicted(live));
        let per = match &self.stacks {
            // An idle instance's parked stack costs a share of its arena's one mapping.
            Some(_) => self.per_instance_milli.saturating_add(1000 / 64),
            None => self.per_instance_milli.saturating_add(2000),
        };
        live.saturating_add(left.saturating_mul(1000) / per.max(1))
    }

    /// Instances that fit from now on if every one's stack were in use: the fewest.
    pub fn fewest(&self) -> usize {
        let left = self.room().saturating_sub(self.predicted(0));
        left.saturating_mul(1000) / self.per_instance_milli.saturating_add(2000).max(1)
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
