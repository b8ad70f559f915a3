//! The API's wire types: the bodies and queries of its routes, shared with the CLI
//! (which decodes every answer into them). The status types themselves are
//! [`crate::status`]'s; a plan's changes are [`crate::host::PlannedChange`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::store::Document;
use crate::host::PlannedChange;

/// A request to apply manifest documents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyRequest {
    /// The manifest files, each with the name errors should use.
    pub documents: Vec<Document>,
    /// Each component or plugin path the documents name (joined onto the manifest's
    /// directory) → the digest of the bytes uploaded with `PUT /v1/blobs/{digest}`.
    pub files: BTreeMap<String, String>,
    /// Only report what would change.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to an apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResponse {
    /// Per workload, what changes (or, for a dry run, would change).
    pub changes: Vec<PlannedChange>,
    /// True for a dry run: nothing was changed.
    pub dry_run: bool,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in one line.
    pub error: String,
    /// Located problems (file:line:column: message, and help), one per entry.
    #[serde(default)]
    pub diagnostics: Vec<String>,
}

/// One revision in `GET /v1/workloads/{name}/history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionInfo {
    /// The revision.
    pub revision: String,
    /// When it was applied (RFC 3339).
    pub applied_at: String,
    /// Whether it is the revision the workload runs now.
    pub current: bool,
}

/// Body of `POST /v1/workloads/{name}/undo`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UndoRequest {
    /// The revision to go back to (default: the one before the current).
    pub to_revision: Option<String>,
}

/// Query of `GET /v1/logs/{name}`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Only this instance's lines.
    pub instance: Option<String>,
    /// At most this many of the kept lines (default: all kept).
    pub tail: Option<usize>,
    /// Keep the answer open and stream new lines as they come.
    #[serde(default)]
    pub follow: bool,
    /// An HTTP service's access lines (one per request) instead of its output.
    #[serde(default)]
    pub access: bool,
}

/// Query of `GET /v1/events`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only this workload's or job's events.
    pub workload: Option<String>,
    /// Keep the answer open and stream new events as they come.
    #[serde(default)]
    pub watch: bool,
}

/// The answer to `PUT /v1/blobs/{digest}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobStored {
    /// The digest the bytes are stored under.
    pub digest: String,
}

/// The answer to `DELETE /v1/workloads/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deleted {
    /// The workload or job deleted.
    pub deleted: String,
}

/// The answer to `POST /v1/workloads/{name}/restart`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restarted {
    /// The workload restarted.
    pub restarted: String,
}

/// Body of `POST /v1/workloads/{name}/scale`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// The replica count to keep.
    pub replicas: u32,
}

/// The answer to a scale.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scaled {
    /// The workload scaled.
    pub scaled: String,
    /// Its replica count now.
    pub replicas: u32,
}

/// The answer to `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// Always true: the daemon answers.
    pub ok: bool,
}

/// One line of a streamed answer (`GET /v1/logs/...`, `GET /v1/events`): an item, or a
/// note that a follower too slow for the stream missed some.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StreamLine<T> {
    /// Items this follower missed.
    Skipped {
        /// How many.
        skipped: u64,
    },
    /// The next item.
    Item(T),
}

/// A node of the fleet, as `get nodes` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Its name (`--node`).
    pub name: String,
    /// Its labels (`--labels`).
    pub labels: BTreeMap<String, String>,
    /// Whether it takes replicas: its heartbeat is live and it is not fenced.
    pub ready: bool,
    /// Whether it has cut itself off, unable to renew its heartbeat.
    pub fenced: bool,
    /// Live instances on it, as its last heartbeat said.
    pub instances: u32,
    /// How long ago the node that answers saw its last heartbeat, in milliseconds.
    pub last_heartbeat_ms: u64,
    /// When its daemon joined (RFC 3339).
    pub started: String,
    /// Its setpoint version.
    pub version: String,
    /// Whether it is the node that answered.
    pub this: bool,
}

/// A node with what runs on it (`describe node/NAME`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeDetail {
    /// The node.
    #[serde(flatten)]
    pub node: NodeInfo,
    /// Its instances, each with the workload it belongs to.
    pub instances_by_workload: BTreeMap<String, Vec<crate::status::InstanceStatus>>,
}
