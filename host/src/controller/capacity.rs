//! The host's room for instances: its own limit (`max_instances`) and the kernel's
//! limit on memory mappings, counted over every workload.

use crate::runtime::mappings::MappingGuard;

/// Live instances on the host and the limits on them.
#[derive(Debug)]
pub(super) struct Capacity {
    live: usize,
    /// Spares held (instantiated, not started): they take mappings, not instance slots.
    spares: usize,
    max_instances: usize,
    /// Slots of spares' own (an instance pool's), if they have any.
    spare_slots: Option<usize>,
    /// Whether another instance fits under `vm.max_map_count` (`None` where that limit
    /// cannot be reached before `max_instances`, or is not known).
    mappings: Option<MappingGuard>,
    /// What to tell an operator whose host runs out of mappings.
    advice: &'static str,
}

impl Capacity {
    /// Room for `max_instances` (and spares in it, or in `spare_slots` of their own),
    /// further bounded by `mappings` when it binds sooner.
    pub fn new(
        max_instances: usize,
        spare_slots: Option<usize>,
        mappings: Option<MappingGuard>,
        advice: &'static str,
    ) -> Self {
        // A guard that cannot bind before `max_instances`, even with every stack in use,
        // is left out.
        let mappings = mappings.filter(|g| g.fewest() < max_instances);
        Self {
            live: 0,
            spares: 0,
            max_instances,
            spare_slots,
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
        let mapped = self.live + self.spares;
        if self.mappings.as_mut().is_some_and(|g| g.full(mapped)) {
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
        let mapped = self.live + self.spares;
        let guard = self.mappings.as_mut()?;
        let fits = guard.crossed_warning(mapped)?;
        let message = format!(
            "{} live instances: near the most this host can map under the kernel's \
             vm.max_map_count of {} (about {fits} if they stay idle); past it spawns are \
             refused. To hold more, {}",
            self.live,
            guard.limit(),
            self.advice
        );
        tracing::warn!("{message}");
        Some(message)
    }

    /// Counts an ended instance.
    pub fn release(&mut self) {
        self.live = self.live.saturating_sub(1);
    }

    /// Whether one more spare fits: in slots of spares' own while there are some left,
    /// else in the instances' room, short of `max_instances`; and always short of the
    /// mapping warning, so that spares never stand in an instance's way for long.
    pub fn spare_fits(&self) -> bool {
        let after = self.live + self.spares + 1;
        let room = match self.spare_slots {
            Some(slots) => self.spares < slots,
            None => after < self.max_instances,
        };
        room && self
            .mappings
            .as_ref()
            .is_none_or(|g| g.short_of_warning(after))
    }

    /// Counts a spare made.
    pub fn add_spare(&mut self) {
        self.spares += 1;
    }

    /// Counts a spare gone: started (it is counted as an instance from then on) or
    /// discarded.
    pub fn remove_spare(&mut self) {
        self.remove_spares(1);
    }

    /// Counts `n` spares gone.
    pub fn remove_spares(&mut self, n: usize) {
        self.spares = self.spares.saturating_sub(n);
    }
}

#[cfg(test)]
mod tests {
    use super::Capacity;

    #[test]
    fn spares_fit_short_of_the_instances_room_or_in_slots_of_their_own() {
        // On demand: spares share the room of 3 instances, and one is always left.
        let mut shared = Capacity::new(3, None, None, "");
        shared.admit();
        assert!(shared.spare_fits());
        shared.add_spare();
        assert!(!shared.spare_fits(), "1 live + 1 spare + 1 more reaches 3");
        shared.remove_spare();
        assert!(shared.spare_fits());
        // Spares take mappings: a host full of them refuses an instance only as full.
        assert!(shared.refusal().is_none());

        // With a pool: 2 slots of their own, whatever the instances use.
        let mut pooled = Capacity::new(1, Some(2), None, "");
        pooled.admit();
        assert!(pooled.spare_fits());
        pooled.add_spare();
        assert!(pooled.spare_fits());
        pooled.add_spare();
        assert!(!pooled.spare_fits(), "both spare slots are taken");
        assert!(pooled.refusal().is_some(), "the one instance slot is taken");
    }
}
