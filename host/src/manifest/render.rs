//! The way back from a typed spec to the manifest a user writes: field names as in
//! YAML, durations and sizes with units, env as a map, and only what differs from the
//! defaults. What [`document`] renders, [`super::load_str`] reads back to the same
//! spec (a test holds the two to it), which is what makes `setpoint get -o yaml NAME |
//! setpoint apply -f -` a round trip.

use serde_json::{Map, Value, json};

use super::bounds::show;
use super::load::API_VERSION;
use super::spec::{
    BackoffSpec, FailureMatch, HttpSpec, IntOrPercent, PlacementSpec, ProbeSpec, RestartPolicy,
    RetrySpec, StrategyKind, UpdateStrategy, WorkloadSpec,
};

/// The manifest document of workload `name`: `apiVersion`, `kind`, `metadata` and
/// `spec`, as `apply` reads it.
pub fn document(
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
    spec: &WorkloadSpec,
) -> Value {
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(name));
    if !labels.is_empty() {
        metadata.insert("labels".into(), json!(labels));
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": if spec.job.is_some() { "Job" } else { "Workload" },
        "metadata": metadata,
        "spec": spec_of(spec),
    })
}

/// A byte size as a manifest writes it: `64Mi`, `512Ki`, or bytes.
pub fn size(bytes: u64) -> String {
    for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Inserts `key: value` when `value` is not an empty object.
fn put(map: &mut Map<String, Value>, key: &str, value: Map<String, Value>) {
    if !value.is_empty() {
        map.insert(key.into(), Value::Object(value));
    }
}

/// The `spec` of a manifest.
pub fn spec_of(s: &WorkloadSpec) -> Value {
    let mut spec = Map::new();
    spec.insert("component".into(), json!(s.component.display().to_string()));
    match &s.job {
        None => {
            spec.insert("replicas".into(), json!(s.replicas));
            if let Some(n) = s.spares {
                spec.insert("spares".into(), json!(n));
            }
            if s.restart_policy != RestartPolicy::Always {
                spec.insert("restartPolicy".into(), json!(s.restart_policy));
            }
        }
        Some(job) => {
            spec.insert("completions".into(), json!(job.completions));
            spec.insert("parallelism".into(), json!(job.parallelism));
            spec.insert("backoffLimit".into(), json!(job.backoff_limit));
            if let Some(d) = job.active_deadline {
                spec.insert("activeDeadline".into(), json!(show(d)));
            }
            if let Some(d) = job.ttl_after_finished {
                spec.insert("ttlAfterFinished".into(), json!(show(d)));
            }
            if !job.failure_rules.is_empty() {
                let rules: Vec<Value> = job
                    .failure_rules
                    .iter()
                    .map(|r| {
                        let action = r.action.name();
                        match &r.on {
                            FailureMatch::ExitCodes { operator, values } => json!({
                                "action": action,
                                "onExitCodes": {
                                    "operator": operator.name(),
                                    "values": values,
                                },
                            }),
                            FailureMatch::Reasons(reasons) => json!({
                                "action": action,
                                "onReasons": reasons.iter().map(|k| k.name()).collect::<Vec<_>>(),
                            }),
                        }
                    })
                    .collect();
                spec.insert("failurePolicy".into(), json!({ "rules": rules }));
            }
        }
    }
    if !s.env.is_empty() {
        let env: Map<String, Value> = s.env.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        spec.insert("env".into(), Value::Object(env));
    }
    if !s.args.is_empty() {
        spec.insert("args".into(), json!(s.args));
    }
    let mut resources = Map::new();
    if let Some(m) = s.memory_limit {
        resources.insert("memory".into(), json!(size(m)));
    }
    if let Some(cpu) = s.cpu_budget {
        let mut c = Map::new();
        c.insert("budget".into(), json!(show(cpu.time)));
        if let Some(per) = cpu.per {
            c.insert("per".into(), json!(show(per)));
        }
        resources.insert("cpu".into(), Value::Object(c));
    }
    put(&mut spec, "resources", resources);
    if !s.dirs.is_empty() {
        let dirs: Vec<Value> = s
            .dirs
            .iter()
            .map(|d| {
                let mut dir = json!({"host": d.host.display().to_string(), "guest": d.guest});
                if d.read_only {
                    dir["readOnly"] = json!(true);
                }
                dir
            })
            .collect();
        spec.insert("dirs".into(), json!(dirs));
    }
    let mut network = Map::new();
    if !s.connect.is_empty() {
        let connect: Vec<String> = s.connect.iter().map(ToString::to_string).collect();
        network.insert("connect".into(), json!(connect));
    }
    if !s.http_authorities.is_empty() {
        network.insert("http".into(), json!(s.http_authorities));
    }
    put(&mut spec, "network", network);
    if !s.capabilities.is_empty() {
        spec.insert("capabilities".into(), json!(s.capabilities));
    }
    let mut health = Map::new();
    if let Some(p) = &s.probe {
        health.insert("probe".into(), Value::Object(probe(p)));
    }
    if let Some(w) = s.watchdog {
        health.insert("watchdog".into(), json!({"timeout": show(w.timeout)}));
    }
    if let Some(p) = s.http.as_ref().and_then(|h| h.probe.as_ref()) {
        let mut http = Map::new();
        http.insert("path".into(), json!(p.path));
        http.extend(probe(&p.timing));
        health.insert("http".into(), Value::Object(http));
    }
    put(&mut spec, "health", health);
    if let Some(h) = &s.http {
        spec.insert("http".into(), Value::Object(http(h)));
    }
    if !s.placement.is_default() {
        spec.insert("placement".into(), placement(&s.placement));
    }
    if s.backoff != BackoffSpec::default() {
        spec.insert(
            "backoff".into(),
            json!({
                "initial": show(s.backoff.initial),
                "max": show(s.backoff.max),
                "resetAfter": show(s.backoff.reset_after),
            }),
        );
    }
    if let Some(b) = s.restart_budget {
        spec.insert(
            "restartBudget".into(),
            json!({"maxRestarts": b.max_restarts, "window": show(b.window)}),
        );
    }
    if s.termination_grace_period != WorkloadSpec::new("").termination_grace_period {
        spec.insert(
            "terminationGracePeriod".into(),
            json!(show(s.termination_grace_period)),
        );
    }
    if let Some(p) = &s.policy {
        let mut policy = Map::new();
        policy.insert("plugin".into(), json!(p.plugin.display().to_string()));
        if !p.config.is_null() {
            policy.insert("config".into(), p.config.clone());
        }
        spec.insert("policy".into(), Value::Object(policy));
    }
    if s.job.is_none() && s.strategy != UpdateStrategy::default() {
        spec.insert("strategy".into(), strategy(&s.strategy));
    }
    Value::Object(spec)
}

fn probe(p: &ProbeSpec) -> Map<String, Value> {
    let d = ProbeSpec::default();
    let mut out = Map::new();
    if p.initial_delay != d.initial_delay {
        out.insert("initialDelay".into(), json!(show(p.initial_delay)));
    }
    out.insert("period".into(), json!(show(p.period)));
    out.insert("timeout".into(), json!(show(p.timeout)));
    out.insert("failureThreshold".into(), json!(p.failure_threshold));
    out.insert("successThreshold".into(), json!(p.success_threshold));
    out
}

fn placement(p: &PlacementSpec) -> Value {
    let mut out = Map::new();
    if let Some(node) = &p.node_name {
        out.insert("nodeName".into(), json!(node));
    }
    if !p.node_selector.is_empty() {
        out.insert("nodeSelector".into(), json!(p.node_selector));
    }
    if let Some(max) = p.max_per_node {
        out.insert("maxPerNode".into(), json!(max));
    }
    if !p.spread {
        out.insert("spread".into(), json!(false));
    }
    Value::Object(out)
}

fn http(h: &HttpSpec) -> Map<String, Value> {
    let d = HttpSpec::new(h.listen);
    let mut out = Map::new();
    out.insert("listen".into(), json!(h.listen.to_string()));
    if h.routes != d.routes {
        out.insert("routes".into(), json!(h.routes));
    }
    if h.request_timeout != d.request_timeout {
        out.insert("requestTimeout".into(), json!(show(h.request_timeout)));
    }
    if h.max_request_body != d.max_request_body {
        out.insert("maxRequestBody".into(), json!(size(h.max_request_body)));
    }
    if h.max_queued != d.max_queued {
        out.insert("maxQueued".into(), json!(h.max_queued));
    }
    if h.max_requests_per_instance != d.max_requests_per_instance {
        out.insert(
            "maxRequestsPerInstance".into(),
            json!(h.max_requests_per_instance),
        );
    }
    if h.retry != RetrySpec::default() {
        out.insert(
            "retry".into(),
            json!({"methods": h.retry.methods, "maxBody": size(h.retry.max_body)}),
        );
    }
    out
}

fn strategy(s: &UpdateStrategy) -> Value {
    let amount = |v: IntOrPercent| match v {
        IntOrPercent::Count(n) => json!(n),
        IntOrPercent::Percent(p) => json!(format!("{p}%")),
    };
    json!({
        "type": match s.kind {
            StrategyKind::RollingUpdate => "RollingUpdate",
            StrategyKind::Recreate => "Recreate",
        },
        "maxSurge": amount(s.max_surge),
        "maxUnavailable": amount(s.max_unavailable),
        "progressDeadline": show(s.progress_deadline),
        "autoRollback": s.auto_rollback,
        "minReady": show(s.min_ready),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ManifestLimits, load_str_resolving};

    /// Renders `spec` as YAML and loads it back.
    fn round_trip(name: &str, spec: &WorkloadSpec) -> WorkloadSpec {
        let doc = document(name, &Default::default(), spec);
        let yaml = serde_saphyr::to_string(&doc).expect("YAML");
        let resolve = |p: &std::path::Path| Ok(p.to_path_buf());
        let mut loaded = load_str_resolving(
            std::path::Path::new("/m/rendered.yaml"),
            &yaml,
            &ManifestLimits {
                dir_roots: Vec::new(),
                ..ManifestLimits::default()
            },
            &resolve,
        )
        .unwrap_or_else(|e| panic!("{yaml}\n{e}"));
        assert_eq!(loaded.len(), 1);
        loaded.remove(0).spec
    }

    #[test]
    fn sizes_keep_their_units() {
        assert_eq!(size(64 << 20), "64Mi");
        assert_eq!(size(512 << 10), "512Ki");
        assert_eq!(size(2 << 30), "2Gi");
        assert_eq!(size(1000), "1000");
        assert_eq!(size(1536), "1536");
    }

    /// Real files for what a spec names: a component, a plugin, a granted directory.
    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("a.wasm"), b"x").expect("component");
            std::fs::write(dir.path().join("p.wasm"), b"x").expect("plugin");
            std::fs::create_dir(dir.path().join("data")).expect("dir");
            Self { dir }
        }

        fn path(&self, name: &str) -> std::path::PathBuf {
            self.dir
                .path()
                .canonicalize()
                .expect("canonical")
                .join(name)
        }
    }

    #[test]
    fn a_default_spec_renders_only_component_and_replicas() {
        let files = Files::new();
        let spec = WorkloadSpec::new(files.path("a.wasm"));
        let doc = document("a", &Default::default(), &spec);
        assert_eq!(
            doc["spec"],
            json!({"component": files.path("a.wasm").display().to_string(), "replicas": 1})
        );
        assert_eq!(doc["kind"], "Workload");
        assert_eq!(round_trip("a", &spec), spec);
    }

    #[test]
    fn every_field_set_reads_back_the_same() {
        use crate::manifest::spec::*;
        use std::time::Duration;
        let files = Files::new();
        let mut s = WorkloadSpec::new(files.path("a.wasm"));
        s.replicas = 3;
        s.restart_policy = RestartPolicy::OnFailure;
        s.env = vec![("A".into(), "1".into()), ("B".into(), "two words".into())];
        s.args = vec!["--verbose".into(), "x y".into()];
        s.memory_limit = Some(24 << 20);
        s.cpu_budget = Some(CpuBudget {
            time: Duration::from_millis(500),
            per: Some(Duration::from_secs(1)),
        });
        s.dirs = vec![DirGrant::new(files.path("data"), "/data", true)];
        s.connect = vec!["127.0.0.1:8080".parse().expect("addr")];
        s.http_authorities = vec!["api.example.com:443".into()];
        s.watchdog = Some(WatchdogSpec {
            timeout: Duration::from_secs(2),
        });
        let mut http = HttpSpec::new("127.0.0.1:9000".parse().expect("addr"));
        http.routes = vec!["/api".into(), "/v2/".into()];
        http.probe = Some(HttpProbe {
            path: "/healthz?deep=1".into(),
            timing: ProbeSpec {
                initial_delay: Duration::from_millis(100),
                period: Duration::from_millis(250),
                timeout: Duration::from_millis(50),
                failure_threshold: 4,
                success_threshold: 2,
            },
        });
        http.request_timeout = Duration::from_secs(3);
        http.max_request_body = 1 << 20;
        http.max_queued = 7;
        http.max_requests_per_instance = 100;
        http.retry = RetrySpec {
            methods: vec!["GET".into(), "PUT".into()],
            max_body: 8 << 10,
        };
        s.http = Some(http);
        s.backoff = BackoffSpec {
            initial: Duration::from_millis(20),
            max: Duration::from_secs(4),
            reset_after: Duration::from_secs(90),
        };
        s.restart_budget = Some(RestartBudget {
            max_restarts: 5,
            window: Duration::from_secs(60),
        });
        s.termination_grace_period = Duration::from_millis(1500);
        s.placement = PlacementSpec {
            node_name: Some("edge-1".into()),
            node_selector: [("zone".to_string(), "north".to_string())].into(),
            max_per_node: Some(2),
            spread: false,
        };
        s.policy = Some(PolicyPlugin {
            plugin: files.path("p.wasm"),
            config: json!({"k": [1, "two"]}),
        });
        s.strategy = UpdateStrategy {
            kind: StrategyKind::RollingUpdate,
            max_surge: IntOrPercent::Count(2),
            max_unavailable: IntOrPercent::Percent(50),
            progress_deadline: Duration::from_secs(120),
            auto_rollback: false,
            min_ready: Duration::from_millis(300),
        };
        assert_eq!(round_trip("every", &s), s);
        // A reactor's probe instead of the watchdog and HTTP.
        s.watchdog = None;
        s.http = None;
        s.probe = Some(ProbeSpec::default());
        assert_eq!(round_trip("probed", &s), s);
    }

    #[test]
    fn a_job_reads_back_the_same() {
        use crate::manifest::spec::*;
        use std::time::Duration;
        let files = Files::new();
        let mut job = JobSpec::new(4);
        job.parallelism = 2;
        job.backoff_limit = 1;
        job.active_deadline = Some(Duration::from_secs(600));
        job.ttl_after_finished = Some(Duration::ZERO);
        job.failure_rules = vec![
            FailureRule {
                action: FailureAction::Ignore,
                on: FailureMatch::ExitCodes {
                    operator: ExitCodeOperator::NotIn,
                    values: vec![2, 3],
                },
            },
            FailureRule {
                action: FailureAction::FailJob,
                on: FailureMatch::Reasons(vec![crate::end::EndKind::OutOfMemory]),
            },
        ];
        let spec = WorkloadSpec::job(files.path("a.wasm"), job);
        let doc = document("crunch", &Default::default(), &spec);
        assert_eq!(doc["kind"], "Job");
        assert!(doc["spec"].get("replicas").is_none(), "{doc}");
        assert_eq!(round_trip("crunch", &spec), spec);
    }
}
