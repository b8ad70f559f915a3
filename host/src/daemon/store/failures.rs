//! Failure verdicts kept across restarts: a workload marked `Failed` (its restart
//! budget spent, or its policy's verdict) stays failed when the daemon starts again,
//! until a new revision, `rollout restart` or a delete clears it.

use std::collections::BTreeMap;

use redb::ReadableTable as _;

use super::{FAILED, OWNERS, Store, StoreError, db_err};
use crate::admission::RecordedFailure;

impl Store {
    /// Every recorded failure verdict, by workload. An unreadable record is skipped
    /// (with a warning): the workload then starts as if it had not failed.
    pub fn failures(&self) -> Result<BTreeMap<String, RecordedFailure>, StoreError> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(FAILED) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(db_err)? {
            let (name, json) = row.map_err(db_err)?;
            match serde_json::from_str::<RecordedFailure>(json.value()) {
                Ok(f) => {
                    out.insert(name.value().to_string(), f);
                }
                Err(e) => tracing::warn!(
                    workload = name.value(),
                    "an unreadable failure record is ignored: {e}"
                ),
            }
        }
        Ok(out)
    }

    /// Records (`Some`) or clears (`None`) the failure verdicts of these workloads, in
    /// one commit. Only workloads still in the desired state are recorded.
    pub fn set_failures(
        &self,
        changes: &[(&str, Option<&RecordedFailure>)],
    ) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let owners = txn.open_table(OWNERS).map_err(db_err)?;
            let mut failed = txn.open_table(FAILED).map_err(db_err)?;
            for (name, change) in changes {
                match change {
                    Some(f) if owners.get(*name).map_err(db_err)?.is_some() => {
                        let json = serde_json::to_string(f).map_err(db_err)?;
                        failed.insert(*name, json.as_str()).map_err(db_err)?;
                    }
                    _ => {
                        failed.remove(*name).map_err(db_err)?;
                    }
                }
            }
        }
        self.commit(txn)
    }
}
