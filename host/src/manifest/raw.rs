//! The manifest file format as written in YAML, with source spans on every field that
//! validation may need to point at. These types define the JSON Schema in `specs/`.
//! Nothing outside `manifest` sees them: validation turns them into [`super::spec`] types.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::spec::RestartPolicy;

/// One YAML document: a Kubernetes-shaped object.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "setpoint manifest", rename = "Manifest")]
pub struct RawManifest {
    /// Must be `setpoint.dev/v1alpha1`.
    #[schemars(with = "String")]
    pub api_version: Spanned<String>,
    /// The object kind: `Workload` (keep instances running) or `Job` (run to completion).
    #[schemars(with = "String")]
    pub kind: Spanned<String>,
    /// Name and labels.
    pub metadata: RawMetadata,
    /// The desired state.
    pub spec: RawWorkloadSpec,
    /// Ignored: the status `setpoint get -o yaml` prints beside the spec, so that its
    /// output can be applied again as it is.
    #[serde(default, rename = "status")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub _status: Option<serde::de::IgnoredAny>,
}

/// Object metadata.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Metadata")]
pub struct RawMetadata {
    /// A DNS label: lowercase letters, digits and `-`, at most 63 characters.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Labels in Kubernetes' syntax: keys `[prefix/]name` (a DNS subdomain prefix, a
    /// name of at most 63 letters, digits, `-`, `_` and `.`), values of at most 63 such
    /// characters.
    #[schemars(with = "BTreeMap<String, String>")]
    #[serde(default)]
    pub labels: Option<Spanned<BTreeMap<String, String>>>,
}

/// `spec` of a `Workload` or a `Job`. `replicas`, `restartPolicy`, `strategy`, `policy`
/// and `health.probe` are for Workloads only; `completions`, `parallelism`,
/// `backoffLimit`, `activeDeadline`, `ttlAfterFinished` and `failurePolicy` for Jobs only.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "WorkloadSpec")]
pub struct RawWorkloadSpec {
    /// Path of the `.wasm` component, relative to the manifest file.
    #[schemars(with = "String")]
    pub component: Spanned<String>,
    /// How many instances to keep running (default 1).
    #[schemars(with = "Option<u32>")]
    pub replicas: Option<Spanned<i64>>,
    /// Instances kept instantiated but not started, each ready to take the place of one
    /// that ends (default: the host's, 1). Not replicas: a spare is never ready, never
    /// counted, and made again for a new revision. At most 16.
    #[schemars(with = "Option<u32>")]
    pub spares: Option<Spanned<i64>>,
    /// `Always` (default), `OnFailure` or `Never`.
    pub restart_policy: Option<RestartPolicy>,
    /// Environment variables granted to each instance.
    #[schemars(with = "BTreeMap<String, String>")]
    #[serde(default)]
    pub env: Option<Spanned<BTreeMap<String, String>>>,
    /// Arguments passed after the program name.
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub args: Option<Spanned<Vec<String>>>,
    /// Resource limits.
    pub resources: Option<RawResources>,
    /// Host directories granted to each instance (nothing by default).
    pub dirs: Option<Vec<RawDir>>,
    /// Network grants (none by default).
    pub network: Option<RawNetwork>,
    /// Device capabilities granted to each instance: WIT interfaces the embedding host
    /// provides, by name (`device:sensors/read`, a version suffix is optional).
    #[schemars(with = "Option<Vec<String>>")]
    pub capabilities: Option<Vec<Spanned<String>>>,
    /// Health checking.
    pub health: Option<RawHealth>,
    /// Serve HTTP: the address, the routes and the limits (for components exporting
    /// `wasi:http/incoming-handler`).
    pub http: Option<RawHttp>,
    /// Where the replicas may run in a fleet of hosts (a single host ignores it).
    pub placement: Option<RawPlacement>,
    /// Crash-loop back-off.
    pub backoff: Option<RawBackoff>,
    /// Restart budget: too many restarts within a window marks the workload `Failed`.
    pub restart_budget: Option<RawRestartBudget>,
    /// How long a stopping instance may take before it is dropped (default `5s`).
    #[schemars(with = "Option<String>")]
    pub termination_grace_period: Option<Spanned<String>>,
    /// Which policy decides how this workload converges (default: the built-in).
    pub policy: Option<RawPolicy>,
    /// How a new revision replaces the old (default: RollingUpdate, 25%/25%, rollback on).
    pub strategy: Option<RawStrategy>,
    /// Job: successful runs needed to complete (default 1).
    #[schemars(with = "Option<u32>")]
    pub completions: Option<Spanned<i64>>,
    /// Job: most runs at once (default 1).
    #[schemars(with = "Option<u32>")]
    pub parallelism: Option<Spanned<i64>>,
    /// Job: failed runs tolerated; one more fails the job (default 6).
    #[schemars(with = "Option<u32>")]
    pub backoff_limit: Option<Spanned<i64>>,
    /// Job: how long it may run, counted from its start, before it fails
    /// (`DeadlineExceeded`), e.g. `10m`. No deadline by default.
    #[schemars(with = "Option<String>")]
    pub active_deadline: Option<Spanned<String>>,
    /// Job: how long a finished job is kept before it is deleted, e.g. `1h`. Kept until
    /// deleted by default.
    #[schemars(with = "Option<String>")]
    pub ttl_after_finished: Option<Spanned<String>>,
    /// Job: what a failed run means, by exit code or end reason (first matching rule
    /// wins; an unmatched failure counts toward `backoffLimit`).
    pub failure_policy: Option<RawFailurePolicy>,
}

/// A Job's failure policy (Kubernetes' podFailurePolicy, for instances).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FailurePolicy")]
pub struct RawFailurePolicy {
    /// Rules, tried in order.
    pub rules: Vec<RawFailureRule>,
}

/// One failure rule: an action and what it matches (exactly one of `onExitCodes` and
/// `onReasons`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "FailureRule")]
pub struct RawFailureRule {
    /// `FailJob` (fail the whole job now), `Ignore` (retry without counting toward
    /// `backoffLimit`) or `Count` (count it, the default for unmatched failures).
    #[schemars(with = "super::spec::FailureAction")]
    pub action: Spanned<super::spec::FailureAction>,
    /// Matches runs that exited with these codes (or all others, with `NotIn`).
    pub on_exit_codes: Option<RawExitCodes>,
    /// Matches runs that ended for one of these reasons: `Trapped`, `OutOfMemory`,
    /// `CpuBudgetExceeded`, `WatchdogTimeout`, `StartFailed`.
    #[schemars(with = "Option<Vec<String>>")]
    pub on_reasons: Option<Vec<Spanned<String>>>,
}

/// Exit codes a failure rule matches.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ExitCodes")]
pub struct RawExitCodes {
    /// `In` (default) or `NotIn`.
    pub operator: Option<super::spec::ExitCodeOperator>,
    /// Exit codes, 1 to 255 (0 is success and never a failure).
    #[schemars(with = "Vec<u8>")]
    pub values: Spanned<Vec<i64>>,
}

/// The update strategy.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "Strategy")]
pub struct RawStrategy {
    /// `RollingUpdate` (default) or `Recreate`.
    #[serde(rename = "type")]
    pub kind: Option<super::spec::StrategyKind>,
    /// Extra instances during a rollout: a count or a percentage such as `25%`.
    #[schemars(with = "Option<RawIntOrPercent>")]
    pub max_surge: Option<Spanned<RawIntOrPercent>>,
    /// Instances that may be unavailable during a rollout: a count or a percentage.
    #[schemars(with = "Option<RawIntOrPercent>")]
    pub max_unavailable: Option<Spanned<RawIntOrPercent>>,
    /// A rollout not complete within this long has failed (default `10m`).
    #[schemars(with = "Option<String>")]
    pub progress_deadline: Option<Spanned<String>>,
    /// Roll back to the previous revision when the deadline passes (default true).
    pub auto_rollback: Option<bool>,
    /// A new instance takes over only once ready and up this long (default `0s`).
    #[schemars(with = "Option<String>")]
    pub min_ready: Option<Spanned<String>>,
}

/// A count (`1`) or a percentage (`"25%"`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawIntOrPercent {
    /// A count.
    Count(i64),
    /// A percentage such as `25%`.
    Percent(String),
}

/// The reconcile policy: `{builtin: replicas}` or `{plugin: path, config: ...}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Policy")]
pub struct RawPolicy {
    /// A built-in policy: `replicas`.
    #[schemars(with = "Option<String>")]
    pub builtin: Option<Spanned<String>>,
    /// A policy plugin (`.wasm` of the `setpoint:policy/plugin` world), relative to the manifest.
    #[schemars(with = "Option<String>")]
    pub plugin: Option<Spanned<String>>,
    /// Any YAML; handed to the plugin as JSON text.
    pub config: Option<serde_json::Value>,
}

/// Resource limits of each instance.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Resources")]
pub struct RawResources {
    /// Cap on linear memory, e.g. `64Mi`.
    #[schemars(with = "Option<String>")]
    pub memory: Option<Spanned<String>>,
    /// CPU budget; spending it ends the instance with `CpuBudgetExceeded`.
    pub cpu: Option<RawCpu>,
}

/// CPU budget.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Cpu")]
pub struct RawCpu {
    /// CPU time allowed, e.g. `500ms`.
    #[schemars(with = "String")]
    pub budget: Spanned<String>,
    /// Window the budget refills over, e.g. `1s`; without it the budget is for the
    /// instance's whole life.
    #[schemars(with = "Option<String>")]
    pub per: Option<Spanned<String>>,
}

/// A directory grant.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "Dir")]
pub struct RawDir {
    /// Host directory, relative to the manifest file.
    #[schemars(with = "String")]
    pub host: Spanned<String>,
    /// Absolute path at which the guest sees it, e.g. `/data`.
    #[schemars(with = "String")]
    pub guest: Spanned<String>,
    /// Read-only (default false).
    #[serde(default)]
    pub read_only: bool,
}

/// Network grants.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Network")]
pub struct RawNetwork {
    /// `IP:PORT` addresses the guest may open TCP connections to.
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub connect: Vec<Spanned<String>>,
    /// `HOST:PORT` authorities the guest may send HTTP requests to through `wasi:http`
    /// (checked on every request; none by default).
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub http: Vec<Spanned<String>>,
}

/// Health checking.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Health")]
pub struct RawHealth {
    /// Periodic calls to the component's `lifecycle.health` (reactor components only).
    pub probe: Option<RawProbe>,
    /// Heartbeat watchdog (components importing `setpoint:workload/heartbeat`).
    pub watchdog: Option<RawWatchdog>,
    /// HTTP readiness probe sent through the component (workloads with `spec.http`).
    pub http: Option<RawHttpProbe>,
}

/// Where a workload's replicas may run in a fleet (`setpoint daemon --fleet`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "Placement")]
pub struct RawPlacement {
    /// Run every replica on this node only: a pinned workload, which keeps running on
    /// its node while the node has lost the fleet.
    #[schemars(with = "Option<String>")]
    pub node_name: Option<Spanned<String>>,
    /// Run only on nodes that carry all these labels (`--labels` of their daemon).
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub node_selector: Option<Spanned<BTreeMap<String, String>>>,
    /// At most this many replicas on one node (default: no limit).
    #[schemars(with = "Option<u32>")]
    pub max_per_node: Option<Spanned<i64>>,
    /// Keep the replicas spread evenly over the eligible nodes, moving one at a time
    /// when a node joins (default `true`).
    pub spread: Option<bool>,
}

/// An HTTP service.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "Http")]
pub struct RawHttp {
    /// `IP:PORT` the host serves on, e.g. `127.0.0.1:8080`; workloads may share one.
    #[schemars(with = "String")]
    pub listen: Spanned<String>,
    /// Path prefixes routed to this workload (default `["/"]`); the longest match wins.
    #[schemars(with = "Option<Vec<String>>")]
    pub routes: Option<Vec<Spanned<String>>>,
    /// Longest a request may take before 504 (default `30s`).
    #[schemars(with = "Option<String>")]
    pub request_timeout: Option<Spanned<String>>,
    /// Largest request body, e.g. `16Mi` (the default); larger gets 413.
    #[schemars(with = "Option<String>")]
    pub max_request_body: Option<Spanned<String>>,
    /// Requests that may wait for a free replica (default 256); more get 503.
    #[schemars(with = "Option<u32>")]
    pub max_queued: Option<Spanned<i64>>,
    /// Requests one instance serves before a fresh one replaces it (default 0: no limit).
    #[schemars(with = "Option<u32>")]
    pub max_requests_per_instance: Option<Spanned<i64>>,
    /// Which requests failed before their response head are sent again.
    pub retry: Option<RawRetry>,
}

/// Retries of requests that failed before their response head.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "Retry")]
pub struct RawRetry {
    /// Methods retried (default `[GET, HEAD, OPTIONS, TRACE]`; `[]` retries nothing).
    #[schemars(with = "Option<Vec<String>>")]
    pub methods: Option<Vec<Spanned<String>>>,
    /// Largest body kept for a retry, e.g. `64Ki` (the default).
    #[schemars(with = "Option<String>")]
    pub max_body: Option<Spanned<String>>,
}

/// HTTP probe settings; durations such as `250ms`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "HttpProbe")]
pub struct RawHttpProbe {
    /// Path requested with GET, e.g. `/healthz`.
    #[schemars(with = "String")]
    pub path: Spanned<String>,
    /// Delay before the first probe (default `0ms`).
    #[schemars(with = "Option<String>")]
    pub initial_delay: Option<Spanned<String>>,
    /// Time between probes (default `1s`).
    #[schemars(with = "Option<String>")]
    pub period: Option<Spanned<String>>,
    /// Deadline of one probe (default `250ms`).
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// Consecutive failures before the replica is replaced (default 3).
    #[schemars(with = "Option<u32>")]
    pub failure_threshold: Option<Spanned<i64>>,
    /// Consecutive successes before the replica is ready (default 1).
    #[schemars(with = "Option<u32>")]
    pub success_threshold: Option<Spanned<i64>>,
}

/// Probe settings; durations such as `250ms`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "Probe")]
pub struct RawProbe {
    /// Delay before the first probe (default `0ms`).
    #[schemars(with = "Option<String>")]
    pub initial_delay: Option<Spanned<String>>,
    /// Time between probes (default `1s`).
    #[schemars(with = "Option<String>")]
    pub period: Option<Spanned<String>>,
    /// Deadline of one probe call (default `250ms`).
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// Consecutive failures before the instance is replaced (default 3).
    #[schemars(with = "Option<u32>")]
    pub failure_threshold: Option<Spanned<i64>>,
    /// Consecutive successes before the instance is ready (default 1).
    #[schemars(with = "Option<u32>")]
    pub success_threshold: Option<Spanned<i64>>,
}

/// Watchdog settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Watchdog")]
pub struct RawWatchdog {
    /// Longest allowed silence between beats, e.g. `2s`.
    #[schemars(with = "String")]
    pub timeout: Spanned<String>,
}

/// Back-off settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "Backoff")]
pub struct RawBackoff {
    /// Delay before the second consecutive replacement (default `10ms`).
    #[schemars(with = "Option<String>")]
    pub initial: Option<Spanned<String>>,
    /// Cap of the delay (default `30s`).
    #[schemars(with = "Option<String>")]
    pub max: Option<Spanned<String>>,
    /// Run time that resets the back-off (default `60s`).
    #[schemars(with = "Option<String>")]
    pub reset_after: Option<Spanned<String>>,
}

/// Restart budget.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "RestartBudget")]
pub struct RawRestartBudget {
    /// Replacements allowed within the window.
    #[schemars(with = "u32")]
    pub max_restarts: Spanned<i64>,
    /// The sliding window, e.g. `1m`.
    #[schemars(with = "String")]
    pub window: Spanned<String>,
}
