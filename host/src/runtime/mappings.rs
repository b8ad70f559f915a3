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
    if config.instance_pool > 0 {
        return None;
    }
    let free = limit()?.saturating_sub(in_use()?);
    Some(free / per_instance(config))
}

/// A hint for an instantiation error that looks like the mapping limit (the kernel
/// answers `mmap` and `mprotect` with ENOMEM when a process is at its limit).
pub fn exhaustion_hint(error_text: &str) -> Option<String> {
    if !error_text.contains("os error 12") && !error_text.contains("Cannot allocate memory") {
        return None;
    }
    let limit = limit()?;
    let in_use = in_use()?;
    // Within a few percent of the limit: the failure is the limit, not a lack of memory.
    (in_use + limit / 50 >= limit).then(|| {
        format!(
            "the host holds {in_use} memory mappings, at the kernel's limit \
             (vm.max_map_count = {limit}): raise it (sysctl -w vm.max_map_count=...), \
             or hold fewer instances (compact memories cost fewer mappings each)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_out_of_memory_errors_get_a_hint() {
        assert_eq!(exhaustion_hint("unknown import `foo`"), None);
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
