//! Direct replacement: a replacement armed ahead of an end (a spare, or a task that
//! builds one), which the ended instance's own task starts in its place, before the
//! controller hears of the end.
//!
//! A replacement normally goes through the controller: the end is sent to it, its
//! policy decides, and it starts a spare. When the policy's answer is known beforehand
//! (the built-in replica policy replaces a failed instance at once while its slot's
//! back-off is zero, its restart budget has room and no rollout runs), the controller
//! arms a workload's [`Reflex`] with one of its spares (or, while it holds none, a
//! dormant task that builds the instance once started) and the id the replacement will
//! take. An instance whose
//! end calls for an immediate replacement takes what is armed and starts it in its
//! slot; the replacement's task delivers the end to the controller before its own
//! `Running`, as an [`super::InstanceEventKind::EndedAndReplaced`]. The
//! controller checks the replacement against its policy when it hears of it, and drops
//! it at once if the policy would not have made it (the workload changed meanwhile).
//!
//! Invariant: what is armed is started at most once: the one who takes it out of the
//! cell (an ending instance, or the controller disarming) owns it.

use std::sync::{Arc, Mutex};

use super::instance::{InstanceEnd, InstanceHandle, Spare};
use crate::manifest::{RestartPolicy, WorkloadSpec};

/// A workload's cell holding its armed spare, shared by the controller and the
/// workload's instances.
#[derive(Default)]
pub struct Reflex {
    armed: Mutex<Option<Armed>>,
}

/// A replacement ready for whichever instance of its workload ends first, and who it
/// will be.
pub struct Armed {
    /// What starts.
    pub standby: Standby,
    /// The id it takes when started.
    pub instance: Arc<str>,
    /// The revision it runs.
    pub revision: Arc<str>,
}

/// What an armed cell starts.
pub enum Standby {
    /// A spare, instantiated already: the replacement is a wake-up.
    Spare(Spare),
    /// A dormant task of the workload's current revision ([`super::Runtime::prepare_dormant`]):
    /// started, it builds and instantiates the replacement, as the controller's spawn
    /// would, without waiting for the controller.
    Dormant(Spare),
}

impl Reflex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Armed>> {
        self.armed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms the cell; gives `armed` back if the cell holds one already.
    pub fn arm(&self, armed: Armed) -> Result<(), Armed> {
        let mut cell = self.lock();
        match *cell {
            Some(_) => Err(armed),
            None => {
                *cell = Some(armed);
                Ok(())
            }
        }
    }

    /// Takes the armed spare back, if no instance took it.
    pub fn disarm(&self) -> Option<Armed> {
        self.lock().take()
    }

    /// Whether a spare is armed now (an ending instance may take it at any moment).
    pub fn holds_spare(&self) -> bool {
        matches!(
            *self.lock(),
            Some(Armed {
                standby: Standby::Spare(_),
                ..
            })
        )
    }

    /// Whether anything is armed now (an ending instance may take it at any moment).
    pub fn is_armed(&self) -> bool {
        self.lock().is_some()
    }
}

/// What an instance may replace itself with: its workload's cell, and its slot's
/// back-off streak when it was started.
#[derive(Clone)]
pub struct ReflexTicket {
    cell: Arc<Reflex>,
    streak: u32,
}

impl ReflexTicket {
    /// A ticket on `cell` for an instance started in a slot whose instances ended
    /// `streak` times in a row.
    pub fn new(cell: Arc<Reflex>, streak: u32) -> Self {
        Self { cell, streak }
    }

    /// The slot's streak after `end`, if the built-in replica policy would replace the
    /// instance at once: not stopped by the host (nor asked to stop), a failure that
    /// retrying may cure, restarted by the restart policy, with a back-off of zero.
    /// (The streak grows as the controller's does: an instance that ran at least
    /// `resetAfter` starts it again.)
    pub fn streak_after(
        &self,
        spec: &WorkloadSpec,
        end: &InstanceEnd,
        stop_asked: bool,
    ) -> Option<u32> {
        let summary = end.reason.summary();
        if stop_asked || summary.is_host_stop() || summary.is_deterministic() {
            return None;
        }
        let restart = match spec.restart_policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !summary.is_success(),
            RestartPolicy::Never => false,
        };
        let streak = if end.ran_for >= spec.backoff.reset_after {
            1
        } else {
            self.streak.saturating_add(1)
        };
        (restart && spec.backoff.delay(streak).is_zero()).then_some(streak)
    }

    /// Takes the armed spare if `end` calls for an immediate replacement, with the
    /// ticket its replacement gets.
    pub(super) fn fire(
        &self,
        spec: &WorkloadSpec,
        end: &InstanceEnd,
        stop_asked: bool,
    ) -> Option<(Armed, ReflexTicket)> {
        let streak = self.streak_after(spec, end, stop_asked)?;
        let armed = self.cell.lock().take()?;
        Some((armed, Self::new(self.cell.clone(), streak)))
    }
}

/// The instance an ended one was replaced with by its own task.
pub struct Replacement {
    /// Its id.
    pub instance: Arc<str>,
    /// The revision it runs.
    pub revision: Arc<str>,
    /// Whether it was a spare (rather than built at the end).
    pub from_spare: bool,
    /// When it was started.
    pub at: std::time::SystemTime,
    /// The controller's grip on it.
    pub handle: InstanceHandle,
}

impl std::fmt::Debug for Replacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replacement")
            .field("instance", &self.instance)
            .field("revision", &self.revision)
            .field("from_spare", &self.from_spare)
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::runtime::{EndReason, OutputSummary, StopCause};

    fn end(reason: EndReason, ran_for: Duration) -> InstanceEnd {
        InstanceEnd {
            reason,
            at: std::time::SystemTime::UNIX_EPOCH,
            ran_for,
            peak_memory_bytes: 0,
            cpu: Duration::ZERO,
            output: OutputSummary::default(),
        }
    }

    fn trapped() -> EndReason {
        EndReason::Trapped {
            trap: "UnreachableCodeReached".into(),
            message: "wasm trap".into(),
        }
    }

    #[test]
    fn an_end_fires_only_when_the_replica_policy_would_replace_it_at_once() {
        let quick = Duration::from_millis(3);
        let mut spec = WorkloadSpec::new("w.wasm");
        spec.backoff.initial = Duration::from_secs(1);
        spec.backoff.reset_after = Duration::from_secs(60);
        let stopped = EndReason::Stopped {
            cause: StopCause::ScaleDown,
            forced: false,
        };
        let failed_to_start = EndReason::InstantiationFailed {
            message: "no".into(),
        };
        // (restart policy, streak at start, how it ended, ran for, stop asked, streak after)
        let table = [
            (RestartPolicy::Always, 0, trapped(), quick, false, Some(1)),
            (
                RestartPolicy::Always,
                0,
                EndReason::Exited { code: 0 },
                quick,
                false,
                Some(1),
            ),
            // The back-off of a second end in a row is not zero...
            (RestartPolicy::Always, 1, trapped(), quick, false, None),
            // ... unless the instance ran long enough to start the streak again.
            (
                RestartPolicy::Always,
                5,
                trapped(),
                Duration::from_secs(60),
                false,
                Some(1),
            ),
            (RestartPolicy::Always, 0, trapped(), quick, true, None),
            (RestartPolicy::Always, 0, stopped, quick, false, None),
            (
                RestartPolicy::Always,
                0,
                failed_to_start,
                quick,
                false,
                None,
            ),
            (
                RestartPolicy::OnFailure,
                0,
                EndReason::Exited { code: 0 },
                quick,
                false,
                None,
            ),
            (
                RestartPolicy::OnFailure,
                0,
                EndReason::Exited { code: 3 },
                quick,
                false,
                Some(1),
            ),
            (RestartPolicy::Never, 0, trapped(), quick, false, None),
        ];
        for (policy, streak, reason, ran_for, stop_asked, after) in table {
            spec.restart_policy = policy;
            let ticket = ReflexTicket::new(Arc::default(), streak);
            let what = format!("{policy:?}, {streak} in a row, {reason}, ran {ran_for:?}");
            assert_eq!(
                ticket.streak_after(&spec, &end(reason, ran_for), stop_asked),
                after,
                "{what}, stop asked {stop_asked}"
            );
        }
        // With no back-off at all, every end in a row fires.
        spec.restart_policy = RestartPolicy::Always;
        spec.backoff.initial = Duration::ZERO;
        let ticket = ReflexTicket::new(Arc::default(), 40);
        assert_eq!(
            ticket.streak_after(&spec, &end(trapped(), quick), false),
            Some(41)
        );
    }

    #[test]
    fn nothing_fires_without_an_armed_spare() {
        let cell = Arc::new(Reflex::default());
        assert!(!cell.is_armed());
        let ticket = ReflexTicket::new(cell.clone(), 0);
        let spec = WorkloadSpec::new("w.wasm");
        let quick = Duration::from_millis(1);
        // Nothing armed: nothing fires, whatever the end.
        assert!(ticket.fire(&spec, &end(trapped(), quick), false).is_none());
        assert!(cell.disarm().is_none());
    }
}
