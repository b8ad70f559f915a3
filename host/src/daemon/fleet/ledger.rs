//! The job ledger of a daemon in a fleet: each node's local Job records its progress in
//! the state directory as before, and its running totals are written into the Job's
//! fleet-wide progress (bucket `setpoint_jobs`, under the node's own name) by
//! compare-and-set before the record is acknowledged; the fleet's totals are the sum
//! over nodes. A run is thus counted once, by the node that saw it end; a run that ended
//! on a node that died before its record reached the engine was never acknowledged, so
//! nothing acted on it, and it runs again elsewhere. Writing totals rather than deltas
//! makes a retry harmless: a write whose answer was lost (the engine slow under load, the
//! wait timed out) and that is sent again sets the same totals, and counts nothing twice.
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

/// What one local run of a job has counted and the engine has acknowledged (to skip a
/// write that would change nothing).
#[derive(Debug, Clone, PartialEq)]
struct Counted {
    started: SystemTime,
    counts: model::Counts,
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

    /// Writes what this local run of `job` has counted (`progress`) into the fleet's
    /// progress, unless the engine already has it.
    fn add(&self, job: &str, progress: &JobProgress) -> anyhow::Result<()> {
        let Some((fleet, mirror, handle)) = self.link.get() else {
            return Ok(());
        };
        let mine = Counted {
            started: progress.started,
            counts: model::Counts {
                succeeded: progress.succeeded,
                failed: progress.failed,
                ignored: progress.ignored,
            },
        };
        let written = self.counted().get(job) == Some(&mine);
        let nothing_yet = mine.counts == model::Counts::default();
        if !written && !nothing_yet {
            let target = lock(mirror)
                .workloads
                .get(job)
                .and_then(|(w, _)| w.job.map(|t| (t, w.revision.clone())));
            let Some((target, revision)) = target else {
                // No longer a fleet Job (deleted): nothing to count.
                return Ok(());
            };
            let count = model::NodeCount {
                started_ms: progress
                    .started
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                counts: mine.counts,
            };
            let adding = set_node_count(fleet, job, &revision, target, count);
            handle
                .block_on(async { tokio::time::timeout(WITHIN, adding).await })
                .map_err(|_| {
                    anyhow::anyhow!("the fleet's engine did not answer within {WITHIN:?}")
                })??;
        }
        self.counted().insert(job.to_string(), mine);
        Ok(())
    }
}

/// Sets this node's running totals for job `job` (its local run `count`) in the job's
/// fleet progress, recomputes the fleet's totals (succeeded capped at its completions),
/// and finishes the job when it has them all or has failed too often. Setting the same
/// totals again changes nothing.
async fn set_node_count(
    fleet: &Fleet,
    job: &str,
    revision: &str,
    target: model::JobTarget,
    count: model::NodeCount,
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
        if !merge_node_count(&mut progress, &fleet.node, count, target) {
            // The engine has it already (a retry of a write that succeeded).
            return Ok(());
        }
        let bytes: bytes::Bytes = serde_json::to_vec(&progress)?.into();
        match super::compare_and_set(&fleet.jobs, model::key_of(job), bytes, expect).await {
            Ok(_) => return Ok(()),
            // Another node counted at the same moment: read again and set.
            Err(super::CasError::Conflict) => continue,
            Err(super::CasError::Failed(why)) => {
                anyhow::bail!("the fleet's engine refused job {job}'s count: {why}")
            }
        }
    }
    anyhow::bail!("job {job}'s fleet-wide count kept changing under {ATTEMPTS} attempts")
}

/// Puts `node`'s running totals `count` into `progress` and recomputes its totals and
/// outcome; false when `progress` already holds them (nothing to write). A node's
/// earlier local run is folded into the settled counts when a later one reports; a
/// report from a local run older than the one recorded changes nothing.
fn merge_node_count(
    progress: &mut FleetJob,
    node: &str,
    count: model::NodeCount,
    target: model::JobTarget,
) -> bool {
    match progress.by_node.get(node).copied() {
        Some(had) if had.started_ms > count.started_ms => return false,
        Some(had) if had.started_ms == count.started_ms => {
            if had.counts.covers(count.counts) {
                return false;
            }
            let counts = model::Counts {
                succeeded: had.counts.succeeded.max(count.counts.succeeded),
                failed: had.counts.failed.max(count.counts.failed),
                ignored: had.counts.ignored.max(count.counts.ignored),
            };
            progress.by_node.insert(
                node.to_string(),
                model::NodeCount {
                    started_ms: count.started_ms,
                    counts,
                },
            );
        }
        Some(had) => {
            progress.settled = progress.settled.plus(had.counts);
            progress.by_node.insert(node.to_string(), count);
        }
        None => {
            progress.by_node.insert(node.to_string(), count);
        }
    }
    let total = progress
        .by_node
        .values()
        .fold(progress.settled, |sum, n| sum.plus(n.counts));
    progress.succeeded = total.succeeded.min(target.completions);
    progress.failed = total.failed;
    progress.ignored = total.ignored;
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
    true
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

#[cfg(test)]
mod tests {
    use super::merge_node_count;
    use crate::daemon::fleet::model::{Counts, FleetJob, JobTarget, NodeCount};

    const TARGET: JobTarget = JobTarget {
        completions: 10,
        backoff_limit: 3,
    };

    fn count(started_ms: u64, succeeded: u32, failed: u32) -> NodeCount {
        NodeCount {
            started_ms,
            counts: Counts {
                succeeded,
                failed,
                ignored: 0,
            },
        }
    }

    #[test]
    fn the_same_totals_written_twice_count_once() {
        let mut job = FleetJob::default();
        assert!(merge_node_count(&mut job, "a", count(1, 3, 0), TARGET));
        // The retry of a write whose answer was lost.
        assert!(!merge_node_count(&mut job, "a", count(1, 3, 0), TARGET));
        assert_eq!(job.succeeded, 3);
        assert!(merge_node_count(&mut job, "b", count(5, 2, 1), TARGET));
        assert!(merge_node_count(&mut job, "a", count(1, 4, 0), TARGET));
        assert!(!merge_node_count(&mut job, "a", count(1, 4, 0), TARGET));
        assert_eq!((job.succeeded, job.failed), (6, 1));
        assert_eq!(job.outcome, None);
    }

    #[test]
    fn a_nodes_next_local_run_adds_to_what_its_last_one_counted() {
        let mut job = FleetJob::default();
        assert!(merge_node_count(&mut job, "a", count(1, 4, 1), TARGET));
        // The node's share changed: a new local run starts from zero.
        assert!(merge_node_count(&mut job, "a", count(2, 1, 0), TARGET));
        assert_eq!((job.succeeded, job.failed), (5, 1));
        assert_eq!(job.settled.succeeded, 4);
        // A late report of the earlier run changes nothing (it is settled).
        assert!(!merge_node_count(&mut job, "a", count(1, 9, 0), TARGET));
        assert_eq!(job.succeeded, 5);
    }

    #[test]
    fn the_job_finishes_at_its_completions_or_past_its_back_off_limit() {
        let mut job = FleetJob::default();
        assert!(merge_node_count(&mut job, "a", count(1, 7, 0), TARGET));
        assert!(merge_node_count(&mut job, "b", count(1, 6, 0), TARGET));
        assert_eq!(job.succeeded, 10, "capped at the completions");
        assert_eq!(job.outcome.as_deref(), Some("Complete"));
        let mut failing = FleetJob::default();
        assert!(merge_node_count(&mut failing, "a", count(1, 0, 2), TARGET));
        assert_eq!(failing.outcome, None);
        assert!(merge_node_count(&mut failing, "b", count(1, 0, 2), TARGET));
        assert_eq!(failing.outcome.as_deref(), Some("Failed"));
    }
}
