//! What the fleet keeps in its engine, as JSON values of JetStream key-value buckets:
//! each node's heartbeat ([`NodeRecord`], bucket `setpoint_nodes`, expiring with the
//! bucket's max age), each workload's desired state ([`FleetWorkload`], bucket
//! `setpoint_desired`) and each replica slot's owner ([`Claim`], bucket
//! `setpoint_claims`). Every value read from the engine is hostile input: it is parsed
//! with bounds, and a value that does not parse is skipped with a warning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::daemon::store::Document;
use crate::manifest::PlacementSpec;

/// The bucket of node heartbeats.
pub const NODES: &str = "setpoint_nodes";
/// The bucket of desired workloads.
pub const DESIRED: &str = "setpoint_desired";
/// The bucket of replica claims.
pub const CLAIMS: &str = "setpoint_claims";
/// The bucket of Jobs' progress across the fleet.
pub const JOBS: &str = "setpoint_jobs";
/// The object store of components, by digest.
pub const COMPONENTS: &str = "setpoint_components";

/// Largest value this host reads from a bucket; anything larger is not the fleet's.
pub const MAX_VALUE_BYTES: usize = 4 << 20;

/// A node's heartbeat: who it is and what it runs, renewed every few hundred
/// milliseconds; its key expires with the bucket's max age when the node stops
/// renewing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// Its labels (`--labels`), matched by `placement.nodeSelector`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A random id of this run of the daemon: a second daemon joining with the same
    /// name writes another one.
    pub incarnation: String,
    /// When this run of the daemon joined, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When it wrote this heartbeat, in milliseconds since the Unix epoch.
    pub heartbeat_ms: u64,
    /// Live instances on it.
    pub instances: u32,
    /// Whether it has cut itself off (it could not renew its heartbeat in time).
    #[serde(default)]
    pub fenced: bool,
    /// Its setpoint version.
    pub version: String,
}

/// One workload's desired state in the fleet: the manifest documents that define it
/// (as applied), the digests of the files they name, and what placement needs without
/// reading YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetWorkload {
    /// The manifest documents of the apply that defined it.
    pub documents: Vec<Document>,
    /// Each component or plugin path they name → its `sha256:` digest (in the
    /// components object store).
    pub files: BTreeMap<String, String>,
    /// Replicas across the fleet.
    pub replicas: u32,
    /// Where they may run.
    #[serde(default)]
    pub placement: PlacementSpec,
    /// The revision the documents define.
    pub revision: String,
    /// Raised by `rollout restart`: each node replaces its instances when it changes.
    #[serde(default)]
    pub restarts: u64,
    /// When it was first applied, in seconds since the Unix epoch.
    #[serde(default)]
    pub created: u64,
    /// Set for a Job: its runs are placed like replicas (`replicas` slots, each running
    /// one at a time), and its completions are counted once, fleet-wide, in the jobs
    /// bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobTarget>,
}

/// What a fleet Job must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobTarget {
    /// Successful runs needed, fleet-wide.
    pub completions: u32,
    /// Counted failures tolerated, fleet-wide; one more fails the job.
    pub backoff_limit: u32,
}

/// A fleet Job's progress: every node writes the running totals of the runs it counted
/// under its own name, by compare-and-set, and the totals here are their sum, so each
/// counted run is counted once, a retried write included; past `completions`, nothing
/// more is counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct FleetJob {
    /// The revision this progress belongs to.
    pub revision: String,
    /// Runs that succeeded, at most `completions`.
    pub succeeded: u32,
    /// Failed runs counted toward the back-off limit.
    pub failed: u32,
    /// Failed runs a failure rule ignored.
    pub ignored: u32,
    /// `Complete` or `Failed` once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Why it finished.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When it finished, in seconds since the Unix epoch.
    #[serde(default)]
    pub finished_at: u64,
    /// What each node's current local run of the job has counted, by node. A node
    /// writes its own running totals, never a delta, so the same record written twice
    /// (a retry after an answer that was lost) counts nothing twice.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_node: BTreeMap<String, NodeCount>,
    /// What nodes' earlier local runs counted, folded in when a node starts another.
    #[serde(default)]
    pub settled: Counts,
}

/// Runs counted: succeeded, failed toward the back-off limit, failed and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Runs that succeeded.
    pub succeeded: u32,
    /// Failed runs counted toward the back-off limit.
    pub failed: u32,
    /// Failed runs a failure rule ignored.
    pub ignored: u32,
}

impl Counts {
    /// Both added, saturating.
    pub fn plus(self, other: Counts) -> Counts {
        Counts {
            succeeded: self.succeeded.saturating_add(other.succeeded),
            failed: self.failed.saturating_add(other.failed),
            ignored: self.ignored.saturating_add(other.ignored),
        }
    }

    /// Whether every count is at least `other`'s.
    pub fn covers(self, other: Counts) -> bool {
        self.succeeded >= other.succeeded
            && self.failed >= other.failed
            && self.ignored >= other.ignored
    }
}

/// One node's local run of a fleet Job and what it has counted so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCount {
    /// When that local run started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// Its running totals.
    pub counts: Counts,
}

/// The owner of one replica slot. A takeover writes a higher epoch by compare-and-set,
/// so two nodes never both believe they won the same slot, and a node back from a
/// partition sees that its claim has moved on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// The node that runs the slot.
    pub node: String,
    /// Raised by every change of owner.
    pub epoch: u64,
}

/// A slot of a workload: the claim's key `<workload>.<slot>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotKey {
    /// The workload.
    pub workload: String,
    /// The slot, from 0.
    pub slot: u32,
}

impl SlotKey {
    /// The claim's key in the claims bucket.
    pub fn key(&self) -> String {
        format!("{}.{}", self.workload, self.slot)
    }

    /// The slot a claims-bucket key names, if it names one.
    pub fn parse(key: &str) -> Option<Self> {
        let (workload, slot) = key.rsplit_once('.')?;
        crate::manifest::rules::check_dns_label(workload).ok()?;
        Some(Self {
            workload: workload.to_string(),
            slot: slot.parse().ok()?,
        })
    }
}

/// The key of workload `name` in the desired bucket (and of node `name` in the nodes
/// bucket): the name itself, a DNS label, which is a valid key.
pub fn key_of(name: &str) -> &str {
    name
}

/// A value read from a bucket, parsed under [`MAX_VALUE_BYTES`].
pub fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "{} bytes, over the {MAX_VALUE_BYTES} this host reads",
            bytes.len()
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keys_round_trip_and_refuse_what_no_host_writes() {
        let key = SlotKey {
            workload: "web-api".into(),
            slot: 12,
        };
        assert_eq!(key.key(), "web-api.12");
        assert_eq!(SlotKey::parse("web-api.12"), Some(key));
        for bad in [
            "web",
            "web.x",
            "Web.1",
            ".1",
            "web.-1",
            "a.b.1",
            "web.99999999999",
        ] {
            assert_eq!(SlotKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn oversized_or_malformed_values_are_refused() {
        assert!(parse::<Claim>(br#"{"node":"a","epoch":3}"#).is_ok());
        assert!(parse::<Claim>(br#"{"node":"a"}"#).is_err());
        assert!(parse::<Claim>(&vec![b' '; MAX_VALUE_BYTES + 1]).is_err());
    }
}
