//! Validation of one parsed manifest document into a [`Workload`]: every field checked
//! against the rules of [`super::rules`] and the ranges of [`super::bounds`], each
//! problem located at its field. A Job's own fields are in `validate_job.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::bounds::{self, self as b, DurationBound};
use super::diagnostic::{Diagnostic, Origin};
use super::load::{API_VERSION, ManifestLimits, Resolver};
use super::raw::{RawManifest, RawWorkloadSpec};
use super::rules::{
    self, THRESHOLDS, check_dns_label, check_guest_path, check_host_dir, check_label,
};
use super::spec::{
    BackoffSpec, CpuBudget, DirGrant, ProbeSpec, RestartBudget, RestartPolicy, WatchdogSpec,
    Workload, WorkloadSpec,
};
use super::units::{parse_bytes, parse_duration};

/// What to do about an HTTP field in a build without the `http` feature.
const NO_HTTP_HELP: &str = "run this workload on a build with the `http` feature (the default `setpoint` binary has it), or remove the field";

/// Validates the documents of one file, collecting every problem, located.
pub(super) struct Validator<'a> {
    file: &'a Path,
    base_dir: &'a Path,
    resolve: Resolver<'a>,
    pub(super) limits: &'a ManifestLimits,
    /// The problems found so far.
    pub(super) diagnostics: Vec<Diagnostic>,
}

impl<'a> Validator<'a> {
    /// A validator of documents of `file` (relative paths join onto `base_dir`).
    pub(super) fn new(
        file: &'a Path,
        base_dir: &'a Path,
        resolve: Resolver<'a>,
        limits: &'a ManifestLimits,
    ) -> Self {
        Self {
            file,
            base_dir,
            resolve,
            limits,
            diagnostics: Vec::new(),
        }
    }
}

impl Validator<'_> {
    pub(super) fn origin(&self, loc: Location) -> Origin {
        Origin::new(self.file, loc.line(), loc.column())
    }

    /// Records `rule` broken at `loc`, if it is; returns whether it holds.
    pub(super) fn rule(&mut self, loc: Location, rule: Result<(), rules::Broken>) -> bool {
        match rule {
            Ok(()) => true,
            Err(broken) => {
                self.error(loc, broken.message, broken.help);
                false
            }
        }
    }

    pub(super) fn error(
        &mut self,
        loc: Location,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let mut d = Diagnostic::at(Some(self.origin(loc)), message);
        d.help = help;
        self.diagnostics.push(d);
    }

    pub(super) fn workload(&mut self, doc: RawManifest) -> Option<(Workload, Origin)> {
        if doc.api_version.value != API_VERSION {
            self.error(
                doc.api_version.referenced,
                format!("unsupported apiVersion `{}`", doc.api_version.value),
                Some(format!("this host reads `{API_VERSION}`")),
            );
        }
        let is_job = match doc.kind.value.as_str() {
            "Workload" => false,
            "Job" => true,
            other => {
                self.error(
                    doc.kind.referenced,
                    format!("unsupported kind `{other}`"),
                    Some(
                        "this host runs `kind: Workload` (kept running) and `kind: Job` (run to completion)"
                            .to_string(),
                    ),
                );
                false
            }
        };
        let name = doc.metadata.name;
        if let Err(why) = check_dns_label(&name.value) {
            self.error(name.referenced, format!("invalid name `{}`: {why}", name.value), Some(
                "use lowercase letters, digits and `-`, starting and ending with a letter or digit".to_string(),
            ));
        }
        let labels = doc.metadata.labels.map(|l| {
            for (key, value) in &l.value {
                if let Err(why) = check_label(key, value) {
                    self.error(
                        l.referenced,
                        why,
                        Some("keys are `[prefix/]name`, e.g. `app.example.com/tier`; names and values use letters, digits, `-`, `_` and `.`".into()),
                    );
                }
            }
            l.value
        });
        let component_origin = self.origin(doc.spec.component.referenced);
        let policy_origin = doc
            .spec
            .policy
            .as_ref()
            .and_then(|p| p.plugin.as_ref())
            .map(|p| self.origin(p.referenced));
        let capability_origins = doc
            .spec
            .capabilities
            .iter()
            .flatten()
            .map(|c| (c.value.clone(), self.origin(c.referenced)))
            .collect();
        let dir_origins = doc
            .spec
            .dirs
            .iter()
            .flatten()
            .map(|d| (d.guest.value.clone(), self.origin(d.host.referenced)))
            .collect();
        let mut raw_spec = doc.spec;
        let job = if is_job {
            self.job(&mut raw_spec, doc.kind.referenced)
        } else {
            self.no_job_fields(&raw_spec);
            None
        };
        let spec = self.spec(raw_spec).map(|mut spec| {
            if let Some(job) = job {
                spec.replicas = job.parallelism.min(job.completions);
                spec.restart_policy = RestartPolicy::OnFailure;
                spec.job = Some(job);
            }
            spec
        });
        let name_origin = self.origin(name.referenced);
        let spec = spec?;
        if !self.diagnostics.is_empty() {
            return None;
        }
        let workload = Workload {
            name: name.value,
            labels: labels.unwrap_or_default(),
            spec,
            origin: Some(component_origin),
            policy_origin,
            capability_origins,
            dir_origins,
            revision_paths: Default::default(),
        };
        Some((workload, name_origin))
    }

    fn spec(&mut self, raw: RawWorkloadSpec) -> Option<WorkloadSpec> {
        let component = self.component_path(&raw.component);
        let mut spec = WorkloadSpec::new(component.clone().unwrap_or_default());
        if let Some(r) = raw.replicas {
            spec.replicas = self
                .int_in(&r, 0, self.limits.max_replicas as i64, "replicas")
                .unwrap_or(0) as u32;
        }
        if let Some(n) = raw.spares {
            spec.spares = self
                .int_in(&n, 0, i64::from(super::spec::MAX_SPARES), "spares")
                .map(|n| n as u32);
        }
        spec.restart_policy = raw.restart_policy.unwrap_or(RestartPolicy::Always);
        if let Some(env) = raw.env {
            if env.value.len() > self.limits.max_grants {
                self.error(
                    env.referenced,
                    format!(
                        "{} env vars, over the limit of {}",
                        env.value.len(),
                        self.limits.max_grants
                    ),
                    None,
                );
            }
            for (key, value) in env.value {
                self.rule(env.referenced, rules::env_var(&key, &value));
                spec.env.push((key, value));
            }
        }
        if let Some(args) = raw.args {
            if args.value.len() > self.limits.max_grants {
                self.error(
                    args.referenced,
                    format!(
                        "{} args, over the limit of {}",
                        args.value.len(),
                        self.limits.max_grants
                    ),
                    None,
                );
            }
            spec.args = args.value;
        }
        if let Some(memory) = raw.resources.as_ref().and_then(|r| r.memory.as_ref()) {
            match parse_bytes(&memory.value) {
                Ok(bytes) => {
                    let rule = rules::memory_limit(bytes, self.limits.max_memory);
                    if self.rule(memory.referenced, rule) {
                        spec.memory_limit = Some(bytes);
                    }
                }
                Err(why) => self.error(memory.referenced, why, None),
            }
        }
        if let Some(cpu) = raw.resources.as_ref().and_then(|r| r.cpu.as_ref()) {
            let time = self.duration_or(&Some(cpu.budget.clone()), Duration::ZERO, b::CPU_BUDGET);
            let per = cpu
                .per
                .as_ref()
                .map(|p| self.duration_or(&Some(p.clone()), Duration::ZERO, b::CPU_PER));
            let budget = CpuBudget { time, per };
            // A zero budget is refused by its range already.
            if !time.is_zero() {
                let at = cpu
                    .per
                    .as_ref()
                    .map_or(cpu.budget.referenced, |p| p.referenced);
                self.rule(at, rules::cpu_budget(&budget));
            }
            spec.cpu_budget = Some(budget);
        }
        for dir in raw.dirs.into_iter().flatten() {
            if let Some(grant) = self.dir_grant(&dir) {
                if spec.dirs.iter().any(|d| d.guest == grant.guest) {
                    self.error(
                        dir.guest.referenced,
                        format!("guest path `{}` is granted twice", grant.guest),
                        None,
                    );
                }
                spec.dirs.push(grant);
            }
        }
        let network = raw.network.unwrap_or_default();
        for authority in network.http {
            if !cfg!(feature = "http") {
                self.error(
                    authority.referenced,
                    "this setpoint was built without HTTP (cargo feature `http`), so it cannot grant outgoing HTTP requests",
                    Some(NO_HTTP_HELP.into()),
                );
                continue;
            }
            if !self.limits.allow_network {
                self.error(
                    authority.referenced,
                    "this host grants no network access to workloads",
                    Some(
                        "remove spec.network, or ask the host's operator to allow network grants"
                            .into(),
                    ),
                );
                continue;
            }
            match rules::http_authority(&authority.value) {
                Ok(a) if spec.http_authorities.contains(&a) => self.error(
                    authority.referenced,
                    format!("`{}` is granted twice", authority.value),
                    None,
                ),
                Ok(a) => spec.http_authorities.push(a),
                Err(b) => self.error(authority.referenced, b.message, b.help),
            }
        }
        for addr in network.connect {
            if !self.limits.allow_network {
                self.error(
                    addr.referenced,
                    "this host grants no network access to workloads",
                    Some(
                        "remove spec.network, or ask the host's operator to allow network grants"
                            .into(),
                    ),
                );
                continue;
            }
            match addr.value.parse::<std::net::SocketAddr>() {
                Ok(a) => spec.connect.push(a),
                Err(_) => self.error(
                    addr.referenced,
                    format!("`{}` is not an IP:PORT address", addr.value),
                    Some(
                        "write e.g. `127.0.0.1:8080` or `[::1]:8080`; host names are not resolved"
                            .into(),
                    ),
                ),
            }
        }
        for grant in raw.capabilities.into_iter().flatten() {
            if !self.rule(grant.referenced, rules::capability(&grant.value)) {
                continue;
            }
            if spec
                .capabilities
                .iter()
                .any(|c| rules::unversioned(c) == rules::unversioned(&grant.value))
            {
                self.error(
                    grant.referenced,
                    format!("capability `{}` is granted twice", grant.value),
                    None,
                );
            } else {
                spec.capabilities.push(grant.value);
            }
        }
        if let Err(broken) = rules::grant_counts(&spec, self.limits.max_grants) {
            self.diagnostics.push(Diagnostic::at(None, broken.message));
        }
        if let Some(s) = raw.strategy {
            let d = super::spec::UpdateStrategy::default();
            spec.strategy = super::spec::UpdateStrategy {
                kind: s.kind.unwrap_or(d.kind),
                max_surge: s
                    .max_surge
                    .as_ref()
                    .and_then(|v| self.int_or_percent(v, "maxSurge"))
                    .unwrap_or(d.max_surge),
                max_unavailable: s
                    .max_unavailable
                    .as_ref()
                    .and_then(|v| self.int_or_percent(v, "maxUnavailable"))
                    .unwrap_or(d.max_unavailable),
                progress_deadline: self.duration_or(
                    &s.progress_deadline,
                    d.progress_deadline,
                    b::PROGRESS_DEADLINE,
                ),
                auto_rollback: s.auto_rollback.unwrap_or(d.auto_rollback),
                min_ready: self.duration_or(&s.min_ready, d.min_ready, b::MIN_READY),
            };
        }
        if let Some(policy) = raw.policy {
            spec.policy = self.policy(policy);
        }
        if let Some(placement) = raw.placement {
            spec.placement = self.placement(placement);
        }
        let mut pending_probe = None;
        if let Some(http) = raw.http {
            spec.http = self.http(http);
        }
        let health_http_at = raw
            .health
            .as_ref()
            .and_then(|h| h.http.as_ref())
            .map(|p| p.path.referenced);
        if let Some(health) = raw.health {
            if let Some(p) = health.probe {
                let fields = ProbeFields {
                    initial_delay: &p.initial_delay,
                    period: &p.period,
                    timeout: &p.timeout,
                    failure_threshold: &p.failure_threshold,
                    success_threshold: &p.success_threshold,
                };
                let bounds = [b::PROBE_INITIAL_DELAY, b::PROBE_PERIOD, b::PROBE_TIMEOUT];
                spec.probe = Some(self.probe_timing(fields, bounds));
            }
            if let Some(p) = health.http {
                let probe = self.http_probe(p);
                match spec.http.as_mut() {
                    Some(http) => http.probe = probe,
                    None => pending_probe = probe,
                }
            }
            if let Some(w) = health.watchdog {
                let timeout =
                    self.duration_or(&Some(w.timeout), Duration::ZERO, b::WATCHDOG_TIMEOUT);
                spec.watchdog = Some(WatchdogSpec { timeout });
            }
        }
        if let Some(b) = raw.backoff {
            let d = BackoffSpec::default();
            spec.backoff = BackoffSpec {
                initial: self.duration_or(&b.initial, d.initial, bounds::BACKOFF_INITIAL),
                max: self.duration_or(&b.max, d.max, bounds::BACKOFF_MAX),
                reset_after: self.duration_or(
                    &b.reset_after,
                    d.reset_after,
                    bounds::BACKOFF_RESET_AFTER,
                ),
            };
            let at = b.max.as_ref().or(b.initial.as_ref());
            if let Some(at) = at {
                self.rule(at.referenced, rules::backoff(&spec.backoff));
            }
        }
        if let Some(b) = raw.restart_budget {
            let max_restarts = self
                .int_in(&b.max_restarts, 0, 1_000_000, "maxRestarts")
                .unwrap_or(0) as u32;
            let window = self.duration_or(&Some(b.window), Duration::ZERO, bounds::RESTART_WINDOW);
            spec.restart_budget = Some(RestartBudget {
                max_restarts,
                window,
            });
        }
        if let (Some(_), Some(at)) = (pending_probe, health_http_at)
            && spec.http.is_none()
        {
            self.error(
                at,
                "health.http probes an HTTP service, and this workload sets no spec.http",
                Some("add spec.http.listen, or probe a reactor with health.probe".into()),
            );
        }
        if let Some(g) = &raw.termination_grace_period {
            spec.termination_grace_period =
                self.duration_or(&Some(g.clone()), Duration::ZERO, b::TERMINATION_GRACE);
        }
        component.map(|_| spec)
    }

    /// `spec.placement`, with what is wrong with it recorded.
    fn placement(&mut self, raw: super::raw::RawPlacement) -> super::spec::PlacementSpec {
        let mut placement = super::spec::PlacementSpec::default();
        if let Some(node) = raw.node_name {
            match check_dns_label(&node.value) {
                Ok(()) => placement.node_name = Some(node.value),
                Err(why) => self.error(
                    node.referenced,
                    format!("invalid nodeName `{}`: {why}", node.value),
                    Some("name a node as its daemon's --node names it".into()),
                ),
            }
        }
        if let Some(selector) = raw.node_selector {
            for (key, value) in &selector.value {
                if let Err(why) = check_label(key, value) {
                    self.error(
                        selector.referenced,
                        why,
                        Some("nodeSelector matches the labels a daemon joins with (--labels k=v,...)".into()),
                    );
                }
            }
            placement.node_selector = selector.value;
        }
        if let Some(max) = &raw.max_per_node {
            placement.max_per_node = self
                .int_in(max, 1, i64::from(u32::MAX), "placement.maxPerNode")
                .map(|v| v as u32);
        }
        if let Some(spread) = raw.spread {
            placement.spread = spread;
        }
        placement
    }

    /// `spec.http`, or `None` after recording what is wrong with it.
    fn http(&mut self, raw: super::raw::RawHttp) -> Option<super::spec::HttpSpec> {
        if !cfg!(feature = "http") {
            self.error(
                raw.listen.referenced,
                "this setpoint was built without HTTP (cargo feature `http`), so it cannot serve spec.http",
                Some(NO_HTTP_HELP.into()),
            );
            return None;
        }
        let listen = match raw.listen.value.parse::<std::net::SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.error(
                    raw.listen.referenced,
                    format!("`{}` is not an IP:PORT address", raw.listen.value),
                    Some("write e.g. `127.0.0.1:8080`, `0.0.0.0:80` or `[::1]:8080`; host names are not resolved".into()),
                );
                return None;
            }
        };
        if !self.limits.allow_network {
            self.error(
                raw.listen.referenced,
                "this host grants no network access to workloads, serving HTTP included",
                Some("remove spec.http, or ask the host's operator to allow network grants".into()),
            );
            return None;
        }
        let mut http = super::spec::HttpSpec::new(listen);
        if let Some(routes) = raw.routes {
            http.routes.clear();
            if routes.is_empty() || routes.len() > rules::MAX_ROUTES {
                self.error(
                    raw.listen.referenced,
                    format!("http.routes must list 1 to {} routes", rules::MAX_ROUTES),
                    Some("leave routes out to serve every path (`/`)".into()),
                );
            }
            for r in routes {
                if !self.rule(r.referenced, rules::route(&r.value)) {
                    continue;
                }
                if http
                    .routes
                    .iter()
                    .any(|o| rules::route_key(o) == rules::route_key(&r.value))
                {
                    self.error(
                        r.referenced,
                        format!("route `{}` is listed twice", r.value),
                        None,
                    );
                    continue;
                }
                http.routes.push(r.value);
            }
        }
        http.request_timeout = self.duration_or(
            &raw.request_timeout,
            http.request_timeout,
            b::HTTP_REQUEST_TIMEOUT,
        );
        if let Some(size) = &raw.max_request_body {
            match parse_bytes(&size.value) {
                Ok(bytes) if bytes <= rules::MAX_REQUEST_BODY => http.max_request_body = bytes,
                Ok(_) => self.error(
                    size.referenced,
                    format!(
                        "http.maxRequestBody must be at most {}",
                        bytesize::ByteSize(rules::MAX_REQUEST_BODY)
                    ),
                    None,
                ),
                Err(why) => self.error(size.referenced, why, None),
            }
        }
        if let Some(q) = &raw.max_queued {
            http.max_queued = self
                .int_in(q, 0, i64::from(rules::MAX_QUEUED), "http.maxQueued")
                .map_or(http.max_queued, |v| v as u32);
        }
        if let Some(n) = &raw.max_requests_per_instance {
            http.max_requests_per_instance = self
                .int_in(n, 0, i64::from(u32::MAX), "http.maxRequestsPerInstance")
                .map_or(0, |v| v as u32);
        }
        if let Some(retry) = raw.retry {
            if let Some(methods) = retry.methods {
                http.retry.methods.clear();
                for m in methods {
                    if self.rule(m.referenced, rules::method(&m.value))
                        && !http.retry.methods.contains(&m.value)
                    {
                        http.retry.methods.push(m.value);
                    }
                }
            }
            if let Some(size) = &retry.max_body {
                match parse_bytes(&size.value) {
                    Ok(bytes) if bytes <= rules::MAX_RETRY_BODY => http.retry.max_body = bytes,
                    Ok(_) => self.error(
                        size.referenced,
                        format!(
                            "http.retry.maxBody must be at most {}: a kept body is held in memory",
                            bytesize::ByteSize(rules::MAX_RETRY_BODY)
                        ),
                        None,
                    ),
                    Err(why) => self.error(size.referenced, why, None),
                }
            }
        }
        Some(http)
    }

    /// `health.http`.
    fn http_probe(&mut self, p: super::raw::RawHttpProbe) -> Option<super::spec::HttpProbe> {
        let ok = self.rule(p.path.referenced, rules::probe_path(&p.path.value));
        let fields = ProbeFields {
            initial_delay: &p.initial_delay,
            period: &p.period,
            timeout: &p.timeout,
            failure_threshold: &p.failure_threshold,
            success_threshold: &p.success_threshold,
        };
        let bounds = [
            b::HTTP_PROBE_INITIAL_DELAY,
            b::HTTP_PROBE_PERIOD,
            b::HTTP_PROBE_TIMEOUT,
        ];
        let timing = self.probe_timing(fields, bounds);
        ok.then_some(super::spec::HttpProbe {
            path: p.path.value,
            timing,
        })
    }

    /// A probe's timing and thresholds, each checked against its range (`bounds`:
    /// initial delay, period, timeout).
    fn probe_timing(&mut self, f: ProbeFields<'_>, bounds: [DurationBound; 3]) -> ProbeSpec {
        let d = ProbeSpec::default();
        let [initial_delay, period, timeout] = bounds;
        let mut threshold = |t: &Option<Spanned<i64>>, what: &str, default: u32| {
            t.as_ref()
                .and_then(|t| self.int_in(t, 1, *THRESHOLDS.end() as i64, what))
                .map_or(default, |v| v as u32)
        };
        let failure_threshold =
            threshold(f.failure_threshold, "failureThreshold", d.failure_threshold);
        let success_threshold =
            threshold(f.success_threshold, "successThreshold", d.success_threshold);
        ProbeSpec {
            initial_delay: self.duration_or(f.initial_delay, d.initial_delay, initial_delay),
            period: self.duration_or(f.period, d.period, period),
            timeout: self.duration_or(f.timeout, d.timeout, timeout),
            failure_threshold,
            success_threshold,
        }
    }

    fn component_path(&mut self, raw: &Spanned<String>) -> Option<PathBuf> {
        if raw.value.trim().is_empty() {
            self.error(
                raw.referenced,
                "spec.component is empty",
                Some("give the path of a .wasm component".into()),
            );
            return None;
        }
        let joined = self.base_dir.join(&raw.value);
        match (self.resolve)(&joined) {
            Ok(p) if p.is_file() => Some(p),
            Ok(p) => {
                self.error(
                    raw.referenced,
                    format!("component `{}` is not a file", p.display()),
                    None,
                );
                None
            }
            Err(e) => {
                let mut help = "paths are relative to the manifest file".to_string();
                if raw.value.contains("guest-examples") {
                    help.push_str("; build the examples with `cargo xtask guests`");
                }
                self.error(
                    raw.referenced,
                    format!(
                        "component `{}` not found ({}; resolved to `{}`)",
                        raw.value,
                        e,
                        joined.display()
                    ),
                    Some(help),
                );
                None
            }
        }
    }

    fn policy(&mut self, raw: super::raw::RawPolicy) -> Option<super::spec::PolicyPlugin> {
        match (raw.builtin, raw.plugin) {
            (Some(b), None) => {
                if b.value != "replicas" {
                    self.error(
                        b.referenced,
                        format!("unknown built-in policy `{}`", b.value),
                        Some("the built-in policies are: replicas".into()),
                    );
                }
                None
            }
            (None, Some(p)) => {
                let joined = self.base_dir.join(&p.value);
                match (self.resolve)(&joined) {
                    Ok(path) if path.is_file() => Some(super::spec::PolicyPlugin {
                        plugin: path,
                        config: raw.config.unwrap_or(serde_json::Value::Null),
                    }),
                    _ => {
                        self.error(p.referenced, format!("policy plugin `{}` not found (resolved to `{}`)", p.value, joined.display()), Some(
                            "paths are relative to the manifest file; build the example plugins with `cargo xtask guests`".into(),
                        ));
                        None
                    }
                }
            }
            (Some(b), Some(_)) => {
                self.error(
                    b.referenced,
                    "policy sets both `builtin` and `plugin`",
                    Some("choose one".into()),
                );
                None
            }
            (None, None) => {
                self.diagnostics.push(Diagnostic::at(
                    None,
                    "spec.policy needs `builtin` or `plugin`",
                ));
                None
            }
        }
    }

    pub(super) fn int_or_percent(
        &mut self,
        v: &Spanned<super::raw::RawIntOrPercent>,
        what: &str,
    ) -> Option<super::spec::IntOrPercent> {
        use super::raw::RawIntOrPercent as R;
        use super::spec::IntOrPercent as I;
        let parsed = match &v.value {
            R::Count(n) if (0..=i64::from(u32::MAX)).contains(n) => Some(I::Count(*n as u32)),
            R::Percent(text) => text
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<u32>().ok())
                .filter(|p| *p <= 100)
                .map(I::Percent),
            R::Count(_) => None,
        };
        if parsed.is_none() {
            self.error(
                v.referenced,
                format!("{what} must be a count or a percentage from 0% to 100%"),
                Some("write e.g. `1` or `25%`".into()),
            );
        }
        parsed
    }

    fn dir_grant(&mut self, raw: &super::raw::RawDir) -> Option<DirGrant> {
        if let Err(why) = check_guest_path(&raw.guest.value) {
            self.error(
                raw.guest.referenced,
                why,
                Some("write the path the guest will see, e.g. `/data`".into()),
            );
            return None;
        }
        let joined = std::path::absolute(self.base_dir.join(&raw.host.value))
            .unwrap_or_else(|_| self.base_dir.join(&raw.host.value));
        let host = match check_host_dir(&joined, &self.limits.dir_roots) {
            Ok(host) => host,
            Err((why, help)) => {
                self.error(raw.host.referenced, why, help);
                return None;
            }
        };
        Some(DirGrant::new(host, raw.guest.value.clone(), raw.read_only))
    }

    pub(super) fn int_in(
        &mut self,
        v: &Spanned<i64>,
        min: i64,
        max: i64,
        what: &str,
    ) -> Option<i64> {
        if v.value < min || v.value > max {
            self.error(
                v.referenced,
                format!("{what} must be between {min} and {max}, not {}", v.value),
                None,
            );
            None
        } else {
            Some(v.value)
        }
    }

    /// The duration `v` says, checked against its field's range; `default` if absent
    /// (or wrong, after recording why).
    pub(super) fn duration_or(
        &mut self,
        v: &Option<Spanned<String>>,
        default: Duration,
        bound: DurationBound,
    ) -> Duration {
        let Some(v) = v else { return default };
        match parse_duration(&v.value) {
            Ok(d) => match bound.check(d) {
                Ok(()) => d,
                Err(why) => {
                    self.error(v.referenced, format!("`{}`: {why}", v.value), None);
                    default
                }
            },
            Err(why) => {
                self.error(v.referenced, why, None);
                default
            }
        }
    }
}

/// The timing fields a probe of either kind has.
struct ProbeFields<'a> {
    initial_delay: &'a Option<Spanned<String>>,
    period: &'a Option<Spanned<String>>,
    timeout: &'a Option<Spanned<String>>,
    failure_threshold: &'a Option<Spanned<i64>>,
    success_threshold: &'a Option<Spanned<i64>>,
}
