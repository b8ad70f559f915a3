//! The commands from the [`crate::Host`] handle: an apply (checked as one batch, then
//! each workload created or applied again), a delete, and the read-only queries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::apply::Applied;
use super::decider::Decider;
use super::effects::Ctx;
use super::state::WorkloadState;
use super::{Artifacts, Command, Controller, Entry, PreparedWorkload, view};
use crate::job::JobProgress;

impl Controller {
    pub(super) fn handle_command(&mut self, command: Command) {
        match command {
            Command::Apply(workloads, reply) => {
                let _ = reply.send(self.apply(workloads));
            }
            Command::Delete(name, reply) => {
                let found = self.step(&name, WorkloadState::delete).is_some();
                if found {
                    // No new request goes to a workload being deleted.
                    self.front.withdraw(&name);
                }
                let _ = reply.send(found);
            }
            Command::Restart(name, reply) => {
                let result = self
                    .step(&name, WorkloadState::restart)
                    .unwrap_or_else(|| Err(format!("workload `{name}` not found")));
                let _ = reply.send(result);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Counts(reply) => {
                let counts = self
                    .workloads
                    .values()
                    .map(|e| view::counts(&e.state))
                    .collect();
                let _ = reply.send(counts);
            }
            Command::Snapshot(name, reply) => {
                let snapshot = self
                    .workloads
                    .get(name.as_str())
                    .map(|e| e.decider.snapshot(&e.state, Instant::now()));
                let _ = reply.send(snapshot);
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    /// Applies a batch: all of it, or none if any workload may not replace the one of
    /// its name or grants a directory nesting with a writable one.
    fn apply(&mut self, batch: Vec<PreparedWorkload>) -> Result<(), crate::Rejected> {
        let diagnostics: Vec<_> = batch
            .iter()
            .filter_map(|w| {
                let current = self
                    .workloads
                    .get(w.name.as_str())
                    .filter(|e| !e.state.deleting)
                    .map(|e| (e.state.job().is_some(), &*e.state.revision));
                crate::admission::apply_conflict(
                    &w.name,
                    current,
                    w.spec.job.is_some(),
                    &w.revision,
                )
                .map(|(message, help)| {
                    crate::manifest::Diagnostic::at(w.origin.clone(), message).with_help(help)
                })
            })
            .collect();
        if !diagnostics.is_empty() {
            return Err(crate::Rejected { diagnostics });
        }
        // Checked at admission too; here it is atomic with the apply.
        self.check_grant_nesting(&batch)?;
        let wanted: Vec<crate::front::Wanted<'_>> = batch
            .iter()
            .map(|w| crate::front::Wanted {
                name: &w.name,
                http: w.spec.http.as_ref(),
                origin: w.origin.as_ref(),
            })
            .collect();
        let plan = self
            .front
            .plan(&wanted)
            .map_err(|diagnostics| crate::Rejected { diagnostics })?;
        // The services exist before the first replica is spawned.
        self.front.commit(plan);
        for w in batch {
            self.apply_one(w);
        }
        Ok(())
    }

    /// Refuses grants of `batch` that nest with a writable one, in the batch or among
    /// the workloads it leaves in place (those being deleted included: their instances
    /// may still run).
    fn check_grant_nesting(&self, batch: &[PreparedWorkload]) -> Result<(), crate::Rejected> {
        use crate::admission::GrantRef;
        let new: Vec<GrantRef<'_>> = batch
            .iter()
            .flat_map(|w| {
                w.spec.dirs.iter().map(move |grant| GrantRef {
                    workload: &w.name,
                    grant,
                    origin: w.origin.as_ref(),
                })
            })
            .collect();
        let existing: Vec<GrantRef<'_>> = self
            .workloads
            .values()
            .map(|e| &e.state)
            .filter(|s| !batch.iter().any(|w| *w.name == *s.name))
            .flat_map(|s| {
                // The previous revision's instances may still run during a rollout.
                let previous = s
                    .rollouts()
                    .and_then(|r| r.previous.as_ref())
                    .into_iter()
                    .flat_map(|p| p.spec.dirs.iter());
                s.spec
                    .dirs
                    .iter()
                    .chain(previous)
                    .map(move |grant| GrantRef {
                        workload: &s.name,
                        grant,
                        origin: None,
                    })
            })
            .collect();
        crate::admission::check_nesting(&new, &existing)
    }

    fn apply_one(&mut self, w: PreparedWorkload) {
        // A fault for the tests of crash-only behaviour, in debug builds only.
        #[cfg(debug_assertions)]
        if std::env::var("SETPOINT_TEST_PANIC_ON_APPLY").is_ok_and(|n| n == w.name) {
            panic!(
                "SETPOINT_TEST_PANIC_ON_APPLY names `{}` (a test fault)",
                w.name
            );
        }
        let name: Arc<str> = Arc::from(w.name.as_str());
        let revision: Arc<str> = Arc::from(w.revision.as_str());
        let parts = Artifacts {
            component: w.component,
            grants: w.grants,
            plugin: w.plugin,
        };
        let applied = Applied {
            labels: w.labels,
            spec: w.spec,
            revision: revision.clone(),
            failed: w.failed,
        };
        if let Some(entry) = self.workloads.get_mut(&name) {
            // The same revision keeps the parts it runs with.
            if *entry.state.revision != *revision {
                entry.artifacts.insert(revision, parts);
            }
            self.step(&name, |state, ctx| state.reapply(applied, ctx));
            return;
        }
        let stored = applied
            .spec
            .job
            .as_ref()
            .and_then(|_| self.stored_job(&name, &revision));
        let mut ctx = Ctx::new(
            self.config.event_history,
            &mut self.capacity,
            &mut self.ids,
            &self.durability,
        );
        let state = WorkloadState::create(name.clone(), applied, stored, &mut ctx);
        let effects = ctx.effects;
        let entry = Entry {
            state,
            artifacts: BTreeMap::from([(revision, parts)]),
            decider: Decider::Builtin,
            spares: Default::default(),
            paced_until: None,
        };
        self.workloads.insert(name.clone(), entry);
        self.carry_out(&name, effects);
    }

    /// The progress the ledger kept for this revision of a job, if any.
    fn stored_job(&self, name: &str, revision: &str) -> Option<JobProgress> {
        self.ledger
            .as_ref()
            .and_then(|l| l.load(name))
            .filter(|p| p.revision == revision)
    }
}
