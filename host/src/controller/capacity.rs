//! The host's room for instances: its own limit (`max_instances`) and the kernel's
//! limit on memory mappings, counted over every workload.

use crate::runtime::mappings::MappingGuard;

/// Live instances on the host and the limits on them.
#[derive(Debug)]
pub(super) struct Capacity {
    live: usize,
    max_instances: usize,
    /// Whether another instance fits under `vm.max_map_count` (`None` where that limit
    /// cannot be reached before `max_instances`, or is not known).
    mappings: Option<MappingGuard>,
    /// What to tell an operator whose host runs out of mappings.
    advice: &'static str,
}

impl Capacity {
    /// Room for `max_instances`, further bounded by `mappings` when it binds sooner.
    pub fn new(max_instances: usize, mappings: Option<MappingGuard>, advice: &'static str) -> Self {
        let mappings = mappings.filter(|g| g.warning_at() < max_instances);
        Self {
            live: 0,
            max_instances,
            mappings,
            advice,
        }
    }

    /// Instances spawned and not yet ended.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Why one more instance may not start now, if it may not.
    pub fn refusal(&mut self) -> Option<String> {
        if self.live >= self.max_instances {
            return Some(format!(
                "the host is at its limit of {} instances",
                self.max_instances
            ));
        }
        if self.mappings.as_mut().is_some_and(|g| g.full(self.live)) {
            return Some(format!(
                "the host is at the kernel's limit of memory mappings (vm.max_map_count) \
                 with {} instances, keeping the rest for itself; {}",
                self.live, self.advice
            ));
        }
        None
    }

    /// Counts a spawned instance; returns a warning when this one crosses the point
    /// near the mapping limit (once per crossing).
    pub fn admit(&mut self) -> Option<String> {
        self.live += 1;
        let guard = self.mappings.as_ref()?;
        if guard.warning_at() != self.live {
            return None;
        }
        let message = format!(
            "{} live instances: near the most this host can map under the kernel's \
             vm.max_map_count of {} (about {} at start); past it spawns are \
             refused. To hold more, {}",
            self.live,
            guard.limit(),
            guard.capacity(),
            self.advice
        );
        tracing::warn!("{message}");
        Some(message)
    }

    /// Counts an ended instance.
    pub fn release(&mut self) {
        self.live = self.live.saturating_sub(1);
    }
}
