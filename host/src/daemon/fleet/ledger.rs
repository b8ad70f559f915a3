//! The job ledger of a daemon in a fleet: each node's local Job records its progress in
//! the state directory as before, and what it counted since its last record is added to
//! the Job's fleet-wide progress (bucket `setpoint_jobs`) by compare-and-set before the
//! record is acknowledged. A run is thus counted once, by the node that saw it end; a
//! run that ended on a node that died before its record reached the engine was never
//! acknowledged, so nothing acted on it, and it runs again elsewhere.
//!
//! The controller's ledger writer calls this on its own thread and retries a record that
//! fails (the engine unreachable) in order, pausing the job meanwhile: a partitioned
//! node never runs ahead of what the fleet has counted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;

use super::Fleet;
use super::agent::{SharedMirror, lock};
use super::model::{self, FleetJob};
use crate::daemon::store::Store;
use crate::job::{JobLedger, JobProgress};

/// What one local run of a job has counted so far (to add only what is new).
#[derive(Debug, Clone, PartialEq)]
struct Counted {
    started: SystemTime,
    succeeded: u32,
    failed: u32,
    ignored: u32,
}

/// The fleet's ledger: the store's, plus the fleet-wide count once the daemon joined.
pub struct FleetLedger {
    store: Arc<Store>,
    link: OnceLock<(Arc<Fleet>, SharedMirror, tokio::runtime::Handle)>,
    counted: Mutex<BTreeMap<String, Counted>>,
}

/// Compare-and-set attempts per record before it is retried by the ledger writer.
const ATTEMPTS: usize = 16;
/// How long one record may wait on the engine.
const WITHIN: Duration = Duration::from_secs(2);

impl FleetLedger {
    /// The ledger over `store`; fleet-wide counting starts at [`Self::join`].
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            link: OnceLock::new(),
            counted: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts across `fleet` from now on (`handle` runs the engine's calls).
    pub fn join(&self, fleet: Arc<Fleet>, mirror: SharedMirror, handle: tokio::runtime::Handle) {
        let _ = self.link.set((fleet, mirror, handle));
    }

    fn counted(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Counted>> {
        self.counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds what `progress` counted since the last record of this local run.
    fn add(&self, job: &str, progress: &JobProgress) -> anyhow::Result<()> {
        let Some((fleet, mirror, handle)) = self.link.get() else {
            return Ok(());
        };
        let before = self
            .counted()
            .get(job)
            .filter(|c| c.started == progress.started)
            .cloned()
            .unwrap_or(Counted {
                started: progress.started,
                succeeded: 0,
                failed: 0,
                ignored: 0,
            });
        let delta = (
            progress.succeeded.saturating_sub(before.succeeded),
            progress.failed.saturating_sub(before.failed),
            progress.ignored.saturating_sub(before.ignored),
        );
        if delta != (0, 0, 0) {
            let target = lock(mirror)
                .workloads
                .get(job)
                .and_then(|(w, _)| w.job.map(|t| (t, w.revision.clone())));
            let Some((target, revision)) = target else {
                // No longer a fleet Job (deleted): nothing to count.
                return Ok(());
            };
            let adding = add_counts(fleet, job, &revision, target, delta);
            handle
                .block_on(async { tokio::time::timeout(WITHIN, adding).await })
                .map_err(|_| {
                    anyhow::anyhow!("the fleet's engine did not answer within {WITHIN:?}")
                })??;
        }
        self.counted().insert(
            job.to_string(),
            Counted {
                started: progress.started,
                succeeded: progress.succeeded,
                failed: progress.failed,
                ignored: progress.ignored,
            },
        );
        Ok(())
    }
}

/// Adds `delta` (succeeded, failed, ignored) to job `job`'s fleet progress, capped at
/// its completions, and finishes it when it has them all or has failed too often.
async fn add_counts(
    fleet: &Fleet,
    job: &str,
    revision: &str,
    target: model::JobTarget,
    delta: (u32, u32, u32),
) -> anyhow::Result<()> {
    for _ in 0..ATTEMPTS {
        let entry = fleet.jobs.entry(model::key_of(job)).await?;
        let (mut progress, expect) = match entry {
            Some(e) if e.operation == kv::Operation::Put => (
                model::parse::<FleetJob>(&e.value).map_err(anyhow::Error::msg)?,
                Some(e.revision),
            ),
            Some(e) => (FleetJob::default(), Some(e.revision)),
            None => (FleetJob::default(), None),
        };
        if progress.revision != revision {
            progress = FleetJob {
                revision: revision.to_string(),
                ..FleetJob::default()
            };
        }
        if progress.outcome.is_some() {
            // Finished: what ends after that is not counted.
            return Ok(());
        }
        progress.succeeded = progress
            .succeeded
            .saturating_add(delta.0)
            .min(target.completions);
        progress.failed = progress.failed.saturating_add(delta.1);
        progress.ignored = progress.ignored.saturating_add(delta.2);
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if progress.succeeded >= target.completions {
            progress.finished_at = now;
            progress.outcome = Some("Complete".into());
            progress.message = format!(
                "{} of {} runs succeeded",
                progress.succeeded, target.completions
            );
        } else if progress.failed > target.backoff_limit {
            progress.finished_at = now;
            progress.outcome = Some("Failed".into());
            progress.message = format!(
                "{} failed runs, over the back-off limit of {}",
                progress.failed, target.backoff_limit
            );
        }
        let bytes: bytes::Bytes = serde_json::to_vec(&progress)?.into();
        match super::compare_and_set(&fleet.jobs, model::key_of(job), bytes, expect).await {
            Ok(_) => return Ok(()),
            // Another node counted at the same moment: read again and add.
            Err(super::CasError::Conflict) => continue,
            Err(super::CasError::Failed(why)) => {
                anyhow::bail!("the fleet's engine refused job {job}'s count: {why}")
            }
        }
    }
    anyhow::bail!("job {job}'s fleet-wide count kept changing under {ATTEMPTS} attempts")
}

impl JobLedger for FleetLedger {
    fn load(&self, job: &str) -> Option<JobProgress> {
        self.store.load(job)
    }

    fn record(&self, job: &str, progress: &JobProgress) -> anyhow::Result<()> {
        self.record_all(&[(job, progress)])
    }

    fn record_all(&self, records: &[(&str, &JobProgress)]) -> anyhow::Result<()> {
        self.store.record_all(records)?;
        for (job, progress) in records {
            self.add(job, progress)?;
        }
        Ok(())
    }

    fn forget(&self, job: &str) -> anyhow::Result<()> {
        self.counted().remove(job);
        self.store.forget(job)
    }
}
