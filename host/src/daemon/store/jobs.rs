//! The daemon's job ledger: Jobs' progress kept in the same database as the applies.

use redb::ReadableTable as _;

use super::{JOBS, OWNERS, Store};

/// The daemon keeps Jobs' progress in the same database as the applies, so a job's
/// record and its deletion commit atomically with the desired state.
impl crate::job::JobLedger for Store {
    fn load(&self, job: &str) -> Option<crate::job::JobProgress> {
        let txn = self.begin_read().ok()?;
        let jobs = txn.open_table(JOBS).ok()?;
        let json = jobs.get(job).ok()??;
        use crate::job::{JobProgress, StoredProgressError};
        match JobProgress::from_stored(json.value()) {
            Ok(progress) => Some(progress),
            Err(e @ StoredProgressError::Newer { .. }) => {
                tracing::error!(job, "{e}; the job is held failed and not run");
                let StoredProgressError::Newer {
                    revision: Some(revision),
                    ..
                } = &e
                else {
                    return None;
                };
                Some(JobProgress::unreadable(revision.clone(), &e))
            }
            Err(e) => {
                tracing::error!(job, "{e}; starting the job over");
                None
            }
        }
    }

    fn record(&self, job: &str, progress: &crate::job::JobProgress) -> anyhow::Result<()> {
        self.record_all(&[(job, progress)])
    }

    fn record_all(&self, records: &[(&str, &crate::job::JobProgress)]) -> anyhow::Result<()> {
        let txn = self.begin_write()?;
        {
            let owners = txn.open_table(OWNERS)?;
            let mut jobs = txn.open_table(JOBS)?;
            for (job, progress) in records {
                // Only jobs still in the desired state are recorded: a late record must
                // not resurrect a deleted job's progress.
                if owners.get(*job)?.is_none() {
                    continue;
                }
                jobs.insert(*job, progress.to_stored().as_str())?;
            }
        }
        self.commit(txn)?;
        Ok(())
    }

    fn forget(&self, job: &str) -> anyhow::Result<()> {
        self.delete(job)?;
        Ok(())
    }
}
