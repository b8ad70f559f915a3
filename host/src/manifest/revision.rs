//! What a revision's identity is made of: an explicit, versioned projection of the spec.
//!
//! A revision is a hash, and two specs are the same revision exactly when their
//! projections are the same bytes. The projection names every field it covers here, so
//! a field added to [`WorkloadSpec`] later changes no existing revision (an upgrade of
//! setpoint re-rolls nothing, and a finished job's recorded progress still matches):
//! a new field that should make a new revision joins the projection in a new version,
//! written only when it differs from its default, so that specs which leave it at the
//! default keep their hash. The tests pin the hash of a default spec and of one with
//! every field set.
//!
//! Version 1 is byte for byte the JSON that setpoint hashed before the projection
//! existed, so this module itself changed no revision either. Scaling (`replicas`) and
//! the update strategy change how, not what, runs: version 1 writes them as constants.

use std::path::Path;

use serde::Serialize;

use super::spec::{
    FailureMatch, IntOrPercent, RestartPolicy, StrategyKind, UpdateStrategy, WorkloadSpec,
};

/// The projection's version; a change of what is hashed makes a new one.
pub const PROJECTION_VERSION: u32 = 1;

/// The bytes of `spec` that its revision hashes (with the digests of what it runs).
pub fn projection(spec: &WorkloadSpec) -> Vec<u8> {
    // Serializing plain structs of strings and numbers to a Vec cannot fail.
    serde_json::to_vec(&SpecV1::of(spec)).unwrap_or_default()
}

fn millis(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpecV1<'a> {
    component: String,
    replicas: u32,
    restart_policy: RestartPolicyV1,
    env: &'a [(String, String)],
    args: &'a [String],
    memory_limit: Option<u64>,
    cpu_budget: Option<CpuV1>,
    dirs: Vec<DirV1<'a>>,
    connect: Vec<String>,
    /// Joined after version 1: written only when granted, so that specs without it
    /// keep their version 1 hash.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    http_authorities: &'a [String],
    capabilities: &'a [String],
    probe: Option<ProbeV1>,
    /// Joined after version 1: written only for an HTTP service.
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<HttpV1<'a>>,
    watchdog: Option<WatchdogV1>,
    backoff: BackoffV1,
    restart_budget: Option<BudgetV1>,
    termination_grace_period: u64,
    policy: Option<PolicyV1<'a>>,
    strategy: StrategyV1,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<JobV1<'a>>,
}

impl<'a> SpecV1<'a> {
    fn of(s: &'a WorkloadSpec) -> Self {
        Self {
            component: path(&s.component),
            replicas: 0,
            restart_policy: s.restart_policy.into(),
            env: &s.env,
            args: &s.args,
            memory_limit: s.memory_limit,
            cpu_budget: s.cpu_budget.map(|c| CpuV1 {
                time: millis(c.time),
                per: c.per.map(millis),
            }),
            dirs: s
                .dirs
                .iter()
                .map(|d| DirV1 {
                    host: path(&d.host),
                    guest: &d.guest,
                    read_only: d.read_only,
                })
                .collect(),
            connect: s.connect.iter().map(ToString::to_string).collect(),
            http_authorities: &s.http_authorities,
            capabilities: &s.capabilities,
            probe: s.probe.as_ref().map(ProbeV1::of),
            http: s.http.as_ref().map(|h| HttpV1 {
                listen: h.listen.to_string(),
                routes: &h.routes,
                probe: h.probe.as_ref().map(|p| HttpProbeV1 {
                    path: &p.path,
                    timing: ProbeV1::of(&p.timing),
                }),
                request_timeout: millis(h.request_timeout),
                max_request_body: h.max_request_body,
                max_queued: h.max_queued,
                max_requests_per_instance: h.max_requests_per_instance,
                retry_methods: &h.retry.methods,
                retry_max_body: h.retry.max_body,
            }),
            watchdog: s.watchdog.map(|w| WatchdogV1 {
                timeout: millis(w.timeout),
            }),
            backoff: BackoffV1 {
                initial: millis(s.backoff.initial),
                max: millis(s.backoff.max),
                reset_after: millis(s.backoff.reset_after),
            },
            restart_budget: s.restart_budget.map(|b| BudgetV1 {
                max_restarts: b.max_restarts,
                window: millis(b.window),
            }),
            termination_grace_period: millis(s.termination_grace_period),
            policy: s.policy.as_ref().map(|p| PolicyV1 {
                plugin: path(&p.plugin),
                config: &p.config,
            }),
            strategy: StrategyV1::of(&UpdateStrategy::default()),
            job: s.job.as_ref().map(|j| JobV1 {
                completions: j.completions,
                parallelism: j.parallelism,
                backoff_limit: j.backoff_limit,
                active_deadline: j.active_deadline.map(millis),
                ttl_after_finished: j.ttl_after_finished.map(millis),
                failure_rules: j
                    .failure_rules
                    .iter()
                    .map(|r| RuleV1 {
                        action: r.action.name(),
                        on: match &r.on {
                            FailureMatch::ExitCodes { operator, values } => MatchV1::ExitCodes {
                                operator: operator.name(),
                                values,
                            },
                            FailureMatch::Reasons(reasons) => {
                                MatchV1::Reasons(reasons.iter().map(|r| r.name()).collect())
                            }
                        },
                    })
                    .collect(),
            }),
        }
    }
}

#[derive(Serialize)]
enum RestartPolicyV1 {
    Always,
    OnFailure,
    Never,
}

impl From<RestartPolicy> for RestartPolicyV1 {
    fn from(p: RestartPolicy) -> Self {
        match p {
            RestartPolicy::Always => Self::Always,
            RestartPolicy::OnFailure => Self::OnFailure,
            RestartPolicy::Never => Self::Never,
        }
    }
}

#[derive(Serialize)]
struct CpuV1 {
    time: u64,
    per: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DirV1<'a> {
    host: String,
    guest: &'a str,
    read_only: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProbeV1 {
    initial_delay: u64,
    period: u64,
    timeout: u64,
    failure_threshold: u32,
    success_threshold: u32,
}

impl ProbeV1 {
    fn of(p: &super::spec::ProbeSpec) -> Self {
        Self {
            initial_delay: millis(p.initial_delay),
            period: millis(p.period),
            timeout: millis(p.timeout),
            failure_threshold: p.failure_threshold,
            success_threshold: p.success_threshold,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpV1<'a> {
    listen: String,
    routes: &'a [String],
    probe: Option<HttpProbeV1<'a>>,
    request_timeout: u64,
    max_request_body: u64,
    max_queued: u32,
    max_requests_per_instance: u32,
    retry_methods: &'a [String],
    retry_max_body: u64,
}

#[derive(Serialize)]
struct HttpProbeV1<'a> {
    path: &'a str,
    timing: ProbeV1,
}

#[derive(Serialize)]
struct WatchdogV1 {
    timeout: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BackoffV1 {
    initial: u64,
    max: u64,
    reset_after: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BudgetV1 {
    max_restarts: u32,
    window: u64,
}

#[derive(Serialize)]
struct PolicyV1<'a> {
    plugin: String,
    config: &'a serde_json::Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StrategyV1 {
    kind: &'static str,
    max_surge: CountV1,
    max_unavailable: CountV1,
    progress_deadline: u64,
    auto_rollback: bool,
    min_ready: u64,
}

impl StrategyV1 {
    fn of(s: &UpdateStrategy) -> Self {
        Self {
            kind: match s.kind {
                StrategyKind::RollingUpdate => "RollingUpdate",
                StrategyKind::Recreate => "Recreate",
            },
            max_surge: s.max_surge.into(),
            max_unavailable: s.max_unavailable.into(),
            progress_deadline: millis(s.progress_deadline),
            auto_rollback: s.auto_rollback,
            min_ready: millis(s.min_ready),
        }
    }
}

#[derive(Serialize)]
enum CountV1 {
    Count(u32),
    Percent(u32),
}

impl From<IntOrPercent> for CountV1 {
    fn from(v: IntOrPercent) -> Self {
        match v {
            IntOrPercent::Count(n) => Self::Count(n),
            IntOrPercent::Percent(p) => Self::Percent(p),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobV1<'a> {
    completions: u32,
    parallelism: u32,
    backoff_limit: u32,
    active_deadline: Option<u64>,
    ttl_after_finished: Option<u64>,
    failure_rules: Vec<RuleV1<'a>>,
}

#[derive(Serialize)]
struct RuleV1<'a> {
    action: &'static str,
    on: MatchV1<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum MatchV1<'a> {
    ExitCodes {
        operator: &'static str,
        values: &'a [u8],
    },
    Reasons(Vec<&'static str>),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::manifest::spec::{
        BackoffSpec, CpuBudget, DirGrant, FailureRule, JobSpec, PolicyPlugin, ProbeSpec,
        RestartBudget, WatchdogSpec,
    };
    use crate::manifest::spec::{ExitCodeOperator, FailureAction};

    fn digest(spec: &WorkloadSpec) -> String {
        use sha2::{Digest as _, Sha256};
        let hash = Sha256::digest(projection(spec));
        hash[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A spec with every field away from its default.
    fn full() -> WorkloadSpec {
        let mut s = WorkloadSpec::new("/opt/app/sensor.wasm");
        s.replicas = 3;
        s.restart_policy = RestartPolicy::OnFailure;
        s.env = vec![("PERIOD_MS".into(), "100".into())];
        s.args = vec!["--fast".into()];
        s.memory_limit = Some(8 << 20);
        s.cpu_budget = Some(CpuBudget {
            time: Duration::from_millis(250),
            per: Some(Duration::from_secs(1)),
        });
        s.dirs = vec![DirGrant::new("/srv/data", "/data", true)];
        s.connect = vec!["127.0.0.1:8080".parse().expect("an address")];
        s.capabilities = vec!["device:sensors/read".into()];
        s.probe = Some(ProbeSpec::default());
        s.watchdog = Some(WatchdogSpec {
            timeout: Duration::from_secs(2),
        });
        s.backoff = BackoffSpec {
            initial: Duration::from_millis(20),
            max: Duration::from_secs(9),
            reset_after: Duration::from_secs(70),
        };
        s.restart_budget = Some(RestartBudget {
            max_restarts: 5,
            window: Duration::from_secs(60),
        });
        s.termination_grace_period = Duration::from_secs(2);
        s.policy = Some(PolicyPlugin {
            plugin: "/opt/policy.wasm".into(),
            config: serde_json::json!({"step": 2}),
        });
        s.strategy.kind = StrategyKind::Recreate;
        s
    }

    fn job() -> WorkloadSpec {
        let mut job = JobSpec::new(4);
        job.parallelism = 2;
        job.active_deadline = Some(Duration::from_secs(600));
        job.ttl_after_finished = Some(Duration::from_secs(60));
        job.failure_rules = vec![
            FailureRule {
                action: FailureAction::Ignore,
                on: FailureMatch::ExitCodes {
                    operator: ExitCodeOperator::In,
                    values: vec![75],
                },
            },
            FailureRule {
                action: FailureAction::FailJob,
                on: FailureMatch::Reasons(vec![crate::end::EndKind::OutOfMemory]),
            },
        ];
        WorkloadSpec::job("/opt/batch.wasm", job)
    }

    /// Pinned: these were hashed by the code before the projection existed (whose JSON
    /// version 1 reproduces byte for byte). A change here re-rolls every workload on
    /// upgrade and re-runs finished jobs: make a new version instead, and write a new
    /// field only when it is away from its default.
    #[test]
    fn existing_revisions_keep_their_hash() {
        assert_eq!(
            digest(&WorkloadSpec::new("/opt/a.wasm")),
            "a9476ca807654009"
        );
        assert_eq!(digest(&full()), "8277ad92bbdbcb01");
        assert_eq!(digest(&job()), "344cc72563640f34");
    }

    #[test]
    fn scaling_and_strategy_are_not_part_of_a_revision() {
        let mut scaled = full();
        scaled.replicas = 70;
        scaled.strategy.max_surge = IntOrPercent::Count(9);
        scaled.strategy.progress_deadline = Duration::from_secs(1);
        assert_eq!(projection(&scaled), projection(&full()));
    }

    #[test]
    fn every_other_field_is() {
        let base = projection(&full());
        let changes: [fn(&mut WorkloadSpec); 17] = [
            |s| s.http_authorities = vec!["api.example.com:443".into()],
            |s| s.component = "/opt/other.wasm".into(),
            |s| s.restart_policy = RestartPolicy::Never,
            |s| s.env[0].1 = "200".into(),
            |s| s.args.clear(),
            |s| s.memory_limit = None,
            |s| s.cpu_budget = None,
            |s| s.dirs[0].read_only = false,
            |s| s.connect.clear(),
            |s| s.capabilities.clear(),
            |s| s.probe = None,
            |s| s.watchdog = None,
            |s| s.backoff.max = Duration::from_secs(10),
            |s| s.restart_budget = None,
            |s| s.termination_grace_period = Duration::from_secs(3),
            |s| s.policy = None,
            |s| s.job = job().job,
        ];
        for (i, change) in changes.into_iter().enumerate() {
            let mut spec = full();
            change(&mut spec);
            assert_ne!(projection(&spec), base, "change {i} makes a new revision");
        }
    }
}
