//! The validated, typed form of a workload: what the host runs. Manifests are parsed into
//! these types, and embedders may build them in code without any YAML.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::diagnostic::Origin;

/// What to do when an instance ends on its own.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub enum RestartPolicy {
    /// Replace every instance that ends, whatever its exit status (the default).
    Always,
    /// Replace instances that fail; an instance that exits 0 leaves its slot completed.
    OnFailure,
    /// Never replace; each slot runs once.
    Never,
}

/// A named workload with its validated spec.
#[derive(Debug, Clone)]
pub struct Workload {
    /// DNS-label name, unique per host.
    pub name: String,
    /// Free-form labels from `metadata.labels`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The spec the host keeps true.
    pub spec: WorkloadSpec,
    /// Where the workload's `spec.component` field was written, for located errors.
    pub origin: Option<Origin>,
    /// Where `spec.policy.plugin` was written, for located errors.
    pub policy_origin: Option<Origin>,
    /// Where each of `spec.capabilities` was written, for located errors.
    pub capability_origins: std::collections::BTreeMap<String, Origin>,
    /// Where each of `spec.dirs` was written (by guest path), for located errors.
    pub dir_origins: std::collections::BTreeMap<String, Origin>,
    /// The paths the revision hashes in place of the ones the spec runs (file actually
    /// run → path as applied): set in a fleet, whose nodes keep the same component
    /// under different paths, so that every node computes the same revision.
    pub revision_paths: std::collections::BTreeMap<PathBuf, PathBuf>,
}

impl Workload {
    /// A workload built in code (no manifest file).
    pub fn new(name: impl Into<String>, spec: WorkloadSpec) -> Self {
        Self {
            name: name.into(),
            labels: Default::default(),
            spec,
            origin: None,
            policy_origin: None,
            capability_origins: Default::default(),
            dir_origins: Default::default(),
            revision_paths: Default::default(),
        }
    }
}

/// The most spares a workload may keep (`spec.spares`).
pub const MAX_SPARES: u32 = 16;

/// Desired state of one workload. [`WorkloadSpec::new`] gives the defaults a manifest
/// gets when it sets nothing but `component`; set the public fields to change them.
///
/// ```
/// use std::time::Duration;
/// use setpoint::{RestartPolicy, Workload, WorkloadSpec};
///
/// let mut spec = WorkloadSpec::new("/opt/app/sensor.wasm");
/// spec.replicas = 2;
/// spec.env = vec![("PERIOD_MS".into(), "100".into())];
/// spec.memory_limit = Some(8 * 1024 * 1024);
/// spec.capabilities = vec!["device:sensors/read".into()];
/// spec.restart_policy = RestartPolicy::OnFailure;
/// spec.termination_grace_period = Duration::from_secs(2);
/// let workload = Workload::new("thermostat", spec);
/// assert_eq!(workload.spec.replicas, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// Absolute path of the component (`.wasm`) to run.
    pub component: PathBuf,
    /// How many instances to keep running.
    pub replicas: u32,
    /// Spares: instances kept instantiated but not started, each ready to take the place
    /// of one that ends; `None` means the host default. Not part of the revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spares: Option<u32>,
    /// What to do when an instance ends on its own.
    pub restart_policy: RestartPolicy,
    /// Environment granted to each instance; nothing else of the host's env is visible.
    pub env: Vec<(String, String)>,
    /// Arguments after the program name (`argv[0]` is the workload's name).
    pub args: Vec<String>,
    /// Cap on each instance's linear memory, in bytes; `None` means the host default.
    pub memory_limit: Option<u64>,
    /// CPU budget of each instance; spending it ends the instance (`CpuBudgetExceeded`).
    pub cpu_budget: Option<CpuBudget>,
    /// Host directories granted to each instance.
    pub dirs: Vec<DirGrant>,
    /// Addresses each instance may open TCP connections to; empty means no network.
    pub connect: Vec<std::net::SocketAddr>,
    /// Authorities (`host:port`, lowercase) each instance may send HTTP requests to
    /// through `wasi:http`; empty means none.
    #[serde(default)]
    pub http_authorities: Vec<String>,
    /// Device capabilities (WIT interfaces the embedder provides) each instance may
    /// import, by name: `device:sensors/read`, with or without `@version`.
    pub capabilities: Vec<String>,
    /// Health probe for reactor components.
    pub probe: Option<ProbeSpec>,
    /// Set for an HTTP service: the host serves these routes through the component's
    /// `wasi:http/incoming-handler`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
    /// Heartbeat watchdog for components that import `setpoint:workload/heartbeat`.
    pub watchdog: Option<WatchdogSpec>,
    /// Where the replicas may run in a fleet (not part of the revision: moving a
    /// replica is not a new version of it).
    #[serde(default, skip_serializing_if = "PlacementSpec::is_default")]
    pub placement: PlacementSpec,
    /// Crash-loop back-off.
    pub backoff: BackoffSpec,
    /// Optional restart budget; when exceeded the workload is marked `Failed`.
    pub restart_budget: Option<RestartBudget>,
    /// How long a stopping instance may take before it is dropped.
    #[serde(with = "crate::serde_time::millis")]
    pub termination_grace_period: Duration,
    /// A policy plugin deciding for this workload; `None` means the built-in policy.
    pub policy: Option<PolicyPlugin>,
    /// How a new revision replaces the old one.
    pub strategy: UpdateStrategy,
    /// Set for a Job: run to completion instead of keeping `replicas` running. For a
    /// Job, `replicas` is the most runs at once and `restart_policy` is `OnFailure`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSpec>,
}

/// A run-to-completion Job (Kubernetes' Job, for instances): start runs until
/// `completions` of them succeed, at most `parallelism` at once, and give up after
/// `backoff_limit` counted failures or once `active_deadline` has passed.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// Successful runs needed.
    pub completions: u32,
    /// Most runs at once.
    pub parallelism: u32,
    /// Counted failures tolerated; one more fails the job (`BackoffLimitExceeded`).
    pub backoff_limit: u32,
    /// Longest the job may take from its start (`DeadlineExceeded`).
    #[serde(with = "crate::serde_time::opt_millis")]
    pub active_deadline: Option<Duration>,
    /// How long a finished job is kept before it is deleted.
    #[serde(with = "crate::serde_time::opt_millis")]
    pub ttl_after_finished: Option<Duration>,
    /// What a failed run means; the first matching rule wins.
    pub failure_rules: Vec<FailureRule>,
}

impl JobSpec {
    /// One completion, one run at a time, a back-off limit of 6, no deadline, kept forever.
    pub fn new(completions: u32) -> Self {
        Self {
            completions,
            parallelism: 1,
            backoff_limit: 6,
            active_deadline: None,
            ttl_after_finished: None,
            failure_rules: Vec::new(),
        }
    }
}

/// What a matching failure rule does with a failed run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub enum FailureAction {
    /// Fail the whole job at once (reason `FailurePolicy`); other runs are stopped.
    FailJob,
    /// Retry without counting the failure toward the back-off limit.
    Ignore,
    /// Count it toward the back-off limit (what happens to unmatched failures).
    Count,
}

impl FailureAction {
    /// The name a manifest writes (`FailJob`, `Ignore`, `Count`).
    pub fn name(self) -> &'static str {
        match self {
            Self::FailJob => "FailJob",
            Self::Ignore => "Ignore",
            Self::Count => "Count",
        }
    }
}

/// `In` or `NotIn` for a rule's exit codes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub enum ExitCodeOperator {
    /// The run exited with one of the codes.
    In,
    /// The run exited with a non-zero code not among them.
    NotIn,
}

impl ExitCodeOperator {
    /// The name a manifest writes (`In`, `NotIn`).
    pub fn name(self) -> &'static str {
        match self {
            Self::In => "In",
            Self::NotIn => "NotIn",
        }
    }
}

/// One rule of a Job's failure policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureRule {
    /// What to do with a matching failed run.
    pub action: FailureAction,
    /// Which failed runs match.
    pub on: FailureMatch,
}

/// What a failure rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureMatch {
    /// Runs that exited with a non-zero code, `In` or `NotIn` these.
    ExitCodes {
        /// In or NotIn.
        operator: ExitCodeOperator,
        /// The codes.
        values: Vec<u8>,
    },
    /// Runs that ended in one of these ways (`Trapped`, `OutOfMemory`, ...).
    Reasons(Vec<crate::end::EndKind>),
}

impl FailureRule {
    /// Whether a run that ended so matches this rule.
    pub fn matches(&self, end: crate::end::EndSummary) -> bool {
        match &self.on {
            FailureMatch::ExitCodes { operator, values } => match end.exit_code {
                Some(code) if code != 0 => {
                    let listed = values.iter().any(|v| i32::from(*v) == code);
                    listed == (*operator == ExitCodeOperator::In)
                }
                _ => false,
            },
            FailureMatch::Reasons(reasons) => reasons.contains(&end.kind),
        }
    }
}

/// How instances of a new revision replace those of the old.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub enum StrategyKind {
    /// Replace a few at a time, readiness-gated, within `maxSurge` / `maxUnavailable`.
    RollingUpdate,
    /// Stop every old instance, then start the new ones.
    Recreate,
}

/// An absolute count or a percentage of `replicas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum IntOrPercent {
    /// So many instances.
    Count(u32),
    /// This percentage of `replicas` (surge rounds up, unavailability rounds down).
    Percent(u32),
}

/// The update strategy (Kubernetes' Deployment vocabulary, plus automatic rollback).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// Rolling or recreate.
    pub kind: StrategyKind,
    /// Extra instances allowed during a rollout (default 25%).
    pub max_surge: IntOrPercent,
    /// Instances that may be unavailable during a rollout (default 25%).
    pub max_unavailable: IntOrPercent,
    /// A rollout not complete within this long has failed (default 10 minutes).
    #[serde(with = "crate::serde_time::millis")]
    pub progress_deadline: Duration,
    /// Roll back to the previous revision when the progress deadline passes (default true).
    pub auto_rollback: bool,
    /// A new instance takes over a slot only once it is ready and has run this long
    /// (Kubernetes' `minReadySeconds`; default 0).
    #[serde(with = "crate::serde_time::millis")]
    pub min_ready: Duration,
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        Self {
            kind: StrategyKind::RollingUpdate,
            max_surge: IntOrPercent::Percent(25),
            max_unavailable: IntOrPercent::Percent(25),
            progress_deadline: Duration::from_secs(600),
            auto_rollback: true,
            min_ready: Duration::ZERO,
        }
    }
}

impl UpdateStrategy {
    /// Absolute (max surge, max unavailable) for `replicas`, by Kubernetes' rules: surge
    /// rounds up, unavailability rounds down, and both zero means one may be unavailable.
    pub fn resolve(&self, replicas: u32) -> (u32, u32) {
        let of = |v: IntOrPercent, up: bool| match v {
            IntOrPercent::Count(n) => n,
            IntOrPercent::Percent(p) => {
                let scaled = u64::from(replicas) * u64::from(p);
                (if up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                }) as u32
            }
        };
        let (surge, unavailable) = (of(self.max_surge, true), of(self.max_unavailable, false));
        if surge == 0 && unavailable == 0 {
            (0, 1)
        } else {
            (surge, unavailable)
        }
    }
}

/// A Wasm policy plugin and its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PolicyPlugin {
    /// Absolute path of the plugin component.
    pub plugin: PathBuf,
    /// Handed to the plugin as JSON text (`spec.policy.config`).
    pub config: serde_json::Value,
}

impl WorkloadSpec {
    /// A spec with the defaults a manifest would get: one replica, `Always`, no grants.
    pub fn new(component: impl Into<PathBuf>) -> Self {
        Self {
            component: component.into(),
            replicas: 1,
            spares: None,
            restart_policy: RestartPolicy::Always,
            env: Vec::new(),
            args: Vec::new(),
            memory_limit: None,
            cpu_budget: None,
            dirs: Vec::new(),
            connect: Vec::new(),
            http_authorities: Vec::new(),
            capabilities: Vec::new(),
            probe: None,
            http: None,
            watchdog: None,
            placement: PlacementSpec::default(),
            backoff: BackoffSpec::default(),
            restart_budget: None,
            termination_grace_period: Duration::from_secs(5),
            policy: None,
            strategy: UpdateStrategy::default(),
            job: None,
        }
    }

    /// A Job running `component` until `job.completions` runs succeed.
    pub fn job(component: impl Into<PathBuf>, job: JobSpec) -> Self {
        let mut spec = Self::new(component);
        spec.replicas = job.parallelism.min(job.completions);
        spec.restart_policy = RestartPolicy::OnFailure;
        spec.job = Some(job);
        spec
    }
}

/// CPU an instance may use: `time` in any window of `per`, or `time` over its whole life
/// without `per`. Measured by sampling epoch ticks, so the resolution is one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuBudget {
    /// CPU time allowed.
    #[serde(with = "crate::serde_time::millis")]
    pub time: Duration,
    /// The window it refills over; `None` for a lifetime budget.
    #[serde(with = "crate::serde_time::opt_millis")]
    pub per: Option<Duration>,
}

/// A host directory preopened for the guest. The host opens it once, at apply, without
/// following a symbolic link in any component of `host`, and hands every instance that
/// handle (see [`crate::opened_dir`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirGrant {
    /// The directory on the host (absolute, normalized, no symbolic link in it).
    pub host: PathBuf,
    /// Where the guest sees it (absolute normalized guest path, e.g. `/data`).
    pub guest: String,
    /// Whether the guest may only read.
    pub read_only: bool,
    /// If set, the grant is refused unless `host` still names this directory (the
    /// daemon pins what it recorded at apply, so a restart never grants a directory
    /// put in the old one's place).
    #[serde(skip)]
    pub pinned: Option<crate::opened_dir::DirIdentity>,
}

impl DirGrant {
    /// A grant of `host` at `guest`.
    pub fn new(host: impl Into<PathBuf>, guest: impl Into<String>, read_only: bool) -> Self {
        Self {
            host: host.into(),
            guest: guest.into(),
            read_only,
            pinned: None,
        }
    }
}

/// A health probe, in Kubernetes' vocabulary with millisecond resolution. The host calls
/// the component's `lifecycle.health` every `period`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    /// Delay before the first probe.
    #[serde(with = "crate::serde_time::millis")]
    pub initial_delay: Duration,
    /// Time between probes.
    #[serde(with = "crate::serde_time::millis")]
    pub period: Duration,
    /// A probe call that takes longer ends the instance (`ProbeTimeout`): the call cannot
    /// be resumed, so the instance cannot be probed again.
    #[serde(with = "crate::serde_time::millis")]
    pub timeout: Duration,
    /// Consecutive `failing` answers that make the instance be replaced.
    pub failure_threshold: u32,
    /// Consecutive `ready` answers that make a not-ready instance ready.
    pub success_threshold: u32,
}

impl Default for ProbeSpec {
    fn default() -> Self {
        Self {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_millis(250),
            failure_threshold: 3,
            success_threshold: 1,
        }
    }
}

/// An HTTP service: requests to `listen` whose path starts with one of `routes` go to
/// a ready replica, which handles each through its component's
/// `wasi:http/incoming-handler` export.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpSpec {
    /// The address the host serves on; several workloads may share one.
    pub listen: std::net::SocketAddr,
    /// Path prefixes, each starting with `/`; the longest match on a listener wins.
    pub routes: Vec<String>,
    /// The readiness probe, sent through the component (`health.http`).
    pub probe: Option<HttpProbe>,
    /// Longest a request may take, from its arrival to the end of its response: the
    /// client gets 504 before the head, and the instance serving it is replaced.
    #[serde(with = "crate::serde_time::millis")]
    pub request_timeout: Duration,
    /// Largest request body accepted, in bytes (413 above).
    pub max_request_body: u64,
    /// Requests that may wait for a free replica; one more gets 503 and `Retry-After`.
    pub max_queued: u32,
    /// Requests one instance serves before a fresh one takes its place (0: no limit).
    pub max_requests_per_instance: u32,
    /// Which failed requests are sent again.
    pub retry: RetrySpec,
}

impl HttpSpec {
    /// Serves `/` on `listen` with the default limits and no probe.
    pub fn new(listen: std::net::SocketAddr) -> Self {
        Self {
            listen,
            routes: vec!["/".into()],
            probe: None,
            request_timeout: Duration::from_secs(30),
            max_request_body: 16 * 1024 * 1024,
            max_queued: 256,
            max_requests_per_instance: 0,
            retry: RetrySpec::default(),
        }
    }
}

/// A request that failed before its response head (the instance trapped, ran out of
/// memory or of time) is sent once more, to a fresh instance, when its method is listed
/// and its body was small enough to keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Methods whose requests may be sent twice (default: the safe methods).
    pub methods: Vec<String>,
    /// Largest body kept for a retry, in bytes; a longer one is streamed and never retried.
    pub max_body: u64,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            methods: ["GET", "HEAD", "OPTIONS", "TRACE"]
                .map(String::from)
                .to_vec(),
            max_body: 64 * 1024,
        }
    }
}

/// An HTTP readiness probe: `GET path` sent through the component itself, in-process.
/// A 2xx or 3xx answer is a success; any other status, a trap or a timeout a failure.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpProbe {
    /// The path (and query) requested.
    pub path: String,
    /// When and how often, and the thresholds.
    #[serde(flatten)]
    pub timing: ProbeSpec,
}

/// Heartbeat watchdog: an instance silent for longer than `timeout` is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchdogSpec {
    /// Longest allowed gap between beats (and before the first beat).
    #[serde(with = "crate::serde_time::millis")]
    pub timeout: Duration,
}

/// Crash-loop back-off: the first replacement of a slot is immediate, then the delay
/// doubles from `initial` up to `max`; it resets once an instance has run for `reset_after`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackoffSpec {
    /// Delay before the second consecutive replacement.
    #[serde(with = "crate::serde_time::millis")]
    pub initial: Duration,
    /// Upper bound of the delay.
    #[serde(with = "crate::serde_time::millis")]
    pub max: Duration,
    /// Run time after which an instance's end no longer counts as part of a crash loop.
    #[serde(with = "crate::serde_time::millis")]
    pub reset_after: Duration,
}

impl Default for BackoffSpec {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

impl BackoffSpec {
    /// Delay before replacing a slot whose instances ended `consecutive` times in a row.
    pub fn delay(&self, consecutive: u32) -> Duration {
        if consecutive <= 1 {
            return Duration::ZERO;
        }
        let doublings = (consecutive - 2).min(40);
        self.initial
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max)
    }
}

/// At most `max_restarts` replacements within any `window`; one more marks the workload
/// `Failed` (systemd's StartLimitBurst / OTP's intensity).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestartBudget {
    /// Replacements allowed within the window.
    pub max_restarts: u32,
    /// The sliding window.
    #[serde(with = "crate::serde_time::millis")]
    pub window: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_resolves_like_kubernetes() {
        let s = UpdateStrategy::default();
        assert_eq!(s.resolve(4), (1, 1));
        assert_eq!(s.resolve(10), (3, 2));
        assert_eq!(s.resolve(1), (1, 0));
        let none = UpdateStrategy {
            max_surge: IntOrPercent::Count(0),
            max_unavailable: IntOrPercent::Count(0),
            ..s
        };
        assert_eq!(none.resolve(3), (0, 1));
    }

    #[test]
    fn backoff_starts_immediate_doubles_and_caps() {
        let b = BackoffSpec {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
            reset_after: Duration::from_secs(1),
        };
        assert_eq!(b.delay(1), Duration::ZERO);
        assert_eq!(b.delay(2), Duration::from_millis(10));
        assert_eq!(b.delay(3), Duration::from_millis(20));
        assert_eq!(b.delay(5), Duration::from_millis(80));
        assert_eq!(b.delay(6), Duration::from_millis(100));
        assert_eq!(b.delay(1000), Duration::from_millis(100));
    }
}

/// Where a workload's replicas may run in a fleet of hosts; a single host ignores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Every replica on this node only (pinned: it keeps running while the node is cut
    /// off from the fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Only nodes carrying all these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// At most this many replicas on one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_node: Option<u32>,
    /// Keep the replicas spread evenly over the eligible nodes.
    pub spread: bool,
}

impl Default for PlacementSpec {
    fn default() -> Self {
        Self {
            node_name: None,
            node_selector: BTreeMap::new(),
            max_per_node: None,
            spread: true,
        }
    }
}

impl PlacementSpec {
    /// Whether nothing differs from the default (anywhere, spread).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Whether a node with `labels` may run these replicas (`name` is the node's).
    pub fn admits(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.node_name.as_deref().is_none_or(|n| n == name)
            && self
                .node_selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
    }
}
