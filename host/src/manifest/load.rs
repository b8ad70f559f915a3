//! Reading manifest files: YAML parsing under input budgets, then validation of every
//! document into [`Workload`]s. All problems of all files are collected, each located.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::{DuplicateKeyPolicy, Location, Spanned};

use super::bounds::{self, self as b, DurationBound};
use super::diagnostic::{Diagnostic, Origin, Rejected};
use super::raw::{RawManifest, RawWorkloadSpec};
use super::rules::{
    self, THRESHOLDS, check_dns_label, check_guest_path, check_host_dir, check_label,
};
use super::spec::{
    BackoffSpec, CpuBudget, DirGrant, ExitCodeOperator, FailureMatch, FailureRule, JobSpec,
    ProbeSpec, RestartBudget, RestartPolicy, WatchdogSpec, Workload, WorkloadSpec,
};
use super::units::{parse_bytes, parse_duration};

/// End reasons a Job's failure rule may name (`onReasons`).
const FAILURE_REASONS: &[&str] = &[
    "Exited",
    "Trapped",
    "OutOfMemory",
    "CpuBudgetExceeded",
    "StartFailed",
    "WatchdogTimeout",
];

/// The only `apiVersion` this host reads.
pub const API_VERSION: &str = "setpoint.dev/v1alpha1";

/// Bounds on manifest input. Every field has a default; embedders may tighten them.
#[derive(Debug, Clone)]
pub struct ManifestLimits {
    /// Largest manifest file read, in bytes.
    pub max_file_bytes: u64,
    /// Most YAML documents in one file.
    pub max_documents: usize,
    /// Most replicas one workload may ask for.
    pub max_replicas: u32,
    /// Largest memory cap a workload may ask for, in bytes.
    pub max_memory: u64,
    /// Most env vars, args, dirs or addresses one workload may grant.
    pub max_grants: usize,
    /// Directories a workload may be granted must lie under one of these (canonical
    /// paths). Empty means any directory.
    pub dir_roots: Vec<PathBuf>,
    /// Whether workloads may be granted outbound connections at all.
    pub allow_network: bool,
}

impl Default for ManifestLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 4 * 1024 * 1024,
            max_documents: 1024,
            max_replicas: 100_000,
            max_memory: 4 * 1024 * 1024 * 1024,
            max_grants: 1024,
            dir_roots: Vec::new(),
            allow_network: true,
        }
    }
}

/// Reads and validates manifest files. Either every document of every file is valid and
/// all workloads are returned, or nothing is and every problem found is returned.
pub fn load_files(paths: &[PathBuf], limits: &ManifestLimits) -> Result<Vec<Workload>, Rejected> {
    let mut workloads = Vec::new();
    let mut diagnostics = Vec::new();
    let mut seen: HashMap<String, Origin> = HashMap::new();
    for path in paths {
        match load_file(path, limits) {
            Ok(found) => {
                for (workload, name_origin) in found {
                    if let Some(first) = seen.get(&workload.name) {
                        diagnostics.push(
                            Diagnostic::at(
                                Some(name_origin),
                                format!("workload `{}` is defined twice", workload.name),
                            )
                            .with_help(format!(
                                "the first definition is at {first}; names must be unique"
                            )),
                        );
                    } else {
                        seen.insert(workload.name.clone(), name_origin);
                        workloads.push(workload);
                    }
                }
            }
            Err(rejected) => diagnostics.extend(rejected.diagnostics),
        }
    }
    if diagnostics.is_empty() {
        Ok(workloads)
    } else {
        Err(Rejected { diagnostics })
    }
}

/// Reads and validates one file; returns each workload with the origin of its name.
fn load_file(path: &Path, limits: &ManifestLimits) -> Result<Vec<(Workload, Origin)>, Rejected> {
    let file_only =
        |message: String| Rejected::one(Diagnostic::at(Some(Origin::new(path, 0, 0)), message));
    let meta =
        std::fs::metadata(path).map_err(|e| file_only(format!("cannot read manifest: {e}")))?;
    if meta.len() > limits.max_file_bytes {
        return Err(file_only(format!(
            "manifest is {} bytes, over the limit of {} bytes",
            meta.len(),
            limits.max_file_bytes
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| file_only(format!("cannot read manifest: {e}")))?;
    load_text(path, &text, limits, &on_disk)
}

/// Validates YAML text as if it were the file `path` (which names it in errors and
/// against whose directory relative component paths resolve; it need not exist).
pub fn load_str(
    path: &Path,
    text: &str,
    limits: &ManifestLimits,
) -> Result<Vec<Workload>, Rejected> {
    load_str_resolving(path, text, limits, &on_disk)
}

/// [`load_str`], also returning each component or plugin file the manifests name: the
/// path joined onto the manifest's directory (as written, for the daemon to map) → the
/// file found on disk. What a client uploads, and what `--watch` fingerprints.
pub fn load_str_with_files(
    path: &Path,
    text: &str,
    limits: &ManifestLimits,
) -> Result<(Vec<Workload>, std::collections::BTreeMap<String, PathBuf>), Rejected> {
    let referenced = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let record = |joined: &Path| -> std::io::Result<PathBuf> {
        let found = on_disk(joined)?;
        referenced
            .borrow_mut()
            .insert(joined.to_string_lossy().into_owned(), found.clone());
        Ok(found)
    };
    let workloads = load_str_resolving(path, text, limits, &record)?;
    Ok((workloads, referenced.into_inner()))
}

/// [`load_str`] with component and plugin files found by `resolve` instead of on disk.
pub fn load_str_resolving(
    path: &Path,
    text: &str,
    limits: &ManifestLimits,
    resolve: Resolver<'_>,
) -> Result<Vec<Workload>, Rejected> {
    if text.len() as u64 > limits.max_file_bytes {
        return Err(Rejected::one(Diagnostic::at(
            Some(Origin::new(path, 0, 0)),
            format!(
                "manifest is {} bytes, over the limit of {} bytes",
                text.len(),
                limits.max_file_bytes
            ),
        )));
    }
    Ok(load_text(path, text, limits, resolve)?
        .into_iter()
        .map(|(w, _)| w)
        .collect())
}

fn load_text(
    path: &Path,
    text: &str,
    limits: &ManifestLimits,
    resolve: Resolver<'_>,
) -> Result<Vec<(Workload, Origin)>, Rejected> {
    let file_only =
        |message: String| Rejected::one(Diagnostic::at(Some(Origin::new(path, 0, 0)), message));
    let docs = parse_documents(path, text, limits)?;
    if docs.is_empty() {
        return Err(file_only("no manifest documents in this file".to_string()));
    }
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut out = Vec::new();
    let mut diagnostics = Vec::new();
    for doc in docs {
        let mut v = Validator {
            file: path,
            base_dir: &base_dir,
            resolve,
            limits,
            diagnostics: Vec::new(),
        };
        if let Some(found) = v.workload(doc) {
            out.push(found);
        }
        diagnostics.extend(v.diagnostics);
    }
    if diagnostics.is_empty() {
        Ok(out)
    } else {
        Err(Rejected { diagnostics })
    }
}

/// The workload names a manifest's documents declare (parsed, not validated: for
/// `delete -f`, whose components need not exist any more).
pub fn parse_names(
    path: &Path,
    text: &str,
    limits: &ManifestLimits,
) -> Result<Vec<String>, Rejected> {
    Ok(parse_documents(path, text, limits)?
        .into_iter()
        .map(|doc| doc.metadata.name.value)
        .collect())
}

/// Parses YAML text into raw documents (`---` separated) under input budgets.
pub fn parse_documents(
    path: &Path,
    text: &str,
    limits: &ManifestLimits,
) -> Result<Vec<RawManifest>, Rejected> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: limits.max_documents,
            max_depth: 64,
            max_nodes: 1_000_000,
            max_total_scalar_bytes: limits.max_file_bytes as usize,
        },
        duplicate_keys: DuplicateKeyPolicy::Error,
        strict_booleans: true,
    };
    serde_saphyr::from_multiple_with_options::<RawManifest>(text, options).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        let message = e.without_snippet().to_string();
        let message = plain_words(
            &strip_location_suffix(&message)
                .replace(", set DuplicateKeyPolicy in Options if acceptable", ""),
            limits,
        );
        Rejected::one(
            Diagnostic::at(Some(Origin::new(path, line, column)), message)
                .with_help("`setpoint schema` prints the manifest format"),
        )
    })
}

/// The parser's messages in the words of a manifest's author, not of Rust types.
fn plain_words(message: &str, limits: &ManifestLimits) -> String {
    if message.contains("budget breached") {
        return if message.contains("Documents") {
            format!(
                "the file has more than {} YAML documents, the most this host reads from one file",
                limits.max_documents
            )
        } else if message.contains("Depth") {
            "the YAML nests deeper than 64 levels, the most this host reads".into()
        } else if message.contains("ScalarBytes") || message.contains("scalar") {
            format!(
                "the file's values add up to more than {} bytes, the most this host reads",
                limits.max_file_bytes
            )
        } else {
            "the YAML has more nodes than this host reads from one file (1,000,000)".into()
        };
    }
    let mut text = message
        .replace(
            "cannot deserialize null into string; use Option<String>",
            "a value is missing here: write a text value",
        )
        .replace("use Option<String>", "write a text value");
    for (rust, plain) in [
        ("i64", "a whole number"),
        ("u64", "a whole number"),
        ("u32", "a whole number"),
        ("u8", "a whole number"),
        ("f64", "a number"),
        ("a string", "text"),
    ] {
        text = text
            .replace(&format!("invalid {rust}"), &format!("not {plain}"))
            .replace(&format!("expected {rust}"), &format!("expected {plain}"));
    }
    text
}

/// serde-saphyr appends " at line L, column C" to messages; we print the location up front.
fn strip_location_suffix(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(idx) => message[..idx].to_string(),
        None => message.to_string(),
    }
}

/// Finds the file a manifest's `spec.component` or `spec.policy.plugin` names, given
/// the path joined onto the manifest's directory. On the filesystem that is
/// `canonicalize`; the daemon answers from the components a client uploaded.
pub type Resolver<'a> = &'a dyn Fn(&Path) -> std::io::Result<PathBuf>;

/// Resolves against the filesystem.
fn on_disk(path: &Path) -> std::io::Result<PathBuf> {
    std::fs::canonicalize(path)
}

struct Validator<'a> {
    file: &'a Path,
    base_dir: &'a Path,
    resolve: Resolver<'a>,
    limits: &'a ManifestLimits,
    diagnostics: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn origin(&self, loc: Location) -> Origin {
        Origin::new(self.file, loc.line(), loc.column())
    }

    /// Records `rule` broken at `loc`, if it is; returns whether it holds.
    fn rule(&mut self, loc: Location, rule: Result<(), rules::Broken>) -> bool {
        match rule {
            Ok(()) => true,
            Err(broken) => {
                self.error(loc, broken.message, broken.help);
                false
            }
        }
    }

    fn error(&mut self, loc: Location, message: impl Into<String>, help: Option<String>) {
        let mut d = Diagnostic::at(Some(self.origin(loc)), message);
        d.help = help;
        self.diagnostics.push(d);
    }

    fn workload(&mut self, doc: RawManifest) -> Option<(Workload, Origin)> {
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
        for addr in raw.network.map(|n| n.connect).unwrap_or_default() {
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
        if let Some(health) = raw.health {
            if let Some(p) = health.probe {
                let d = ProbeSpec::default();
                let probe = ProbeSpec {
                    initial_delay: self.duration_or(
                        &p.initial_delay,
                        d.initial_delay,
                        b::PROBE_INITIAL_DELAY,
                    ),
                    period: self.duration_or(&p.period, d.period, b::PROBE_PERIOD),
                    timeout: self.duration_or(&p.timeout, d.timeout, b::PROBE_TIMEOUT),
                    failure_threshold: p
                        .failure_threshold
                        .as_ref()
                        .and_then(|t| {
                            self.int_in(t, 1, *THRESHOLDS.end() as i64, "failureThreshold")
                        })
                        .map_or(d.failure_threshold, |v| v as u32),
                    success_threshold: p
                        .success_threshold
                        .as_ref()
                        .and_then(|t| {
                            self.int_in(t, 1, *THRESHOLDS.end() as i64, "successThreshold")
                        })
                        .map_or(d.success_threshold, |v| v as u32),
                };
                spec.probe = Some(probe);
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
        if let Some(g) = &raw.termination_grace_period {
            spec.termination_grace_period =
                self.duration_or(&Some(g.clone()), Duration::ZERO, b::TERMINATION_GRACE);
        }
        component.map(|_| spec)
    }

    /// Reads a Job's fields, and refuses the Workload-only ones.
    fn job(&mut self, raw: &mut RawWorkloadSpec, kind: Location) -> Option<JobSpec> {
        let workload_only = |field: &str| {
            (
                format!("`{field}` is a Workload field; a Job does not take it"),
                Some("a Job runs `parallelism` instances until `completions` succeed; remove the field, or use `kind: Workload`".to_string()),
            )
        };
        if let Some(r) = &raw.replicas {
            let (m, h) = workload_only("replicas");
            self.error(r.referenced, m, h);
        }
        for (present, field) in [
            (raw.restart_policy.is_some(), "restartPolicy"),
            (raw.strategy.is_some(), "strategy"),
            (raw.policy.is_some(), "policy"),
            (
                raw.health.as_ref().is_some_and(|h| h.probe.is_some()),
                "health.probe",
            ),
            (raw.restart_budget.is_some(), "restartBudget"),
        ] {
            if present {
                let (m, h) = workload_only(field);
                self.error(kind, m, h);
            }
        }
        let mut job = JobSpec::new(1);
        let max = i64::from(self.limits.max_replicas);
        if let Some(c) = raw.completions.take() {
            job.completions = self.int_in(&c, 1, 1_000_000, "completions").unwrap_or(1) as u32;
        }
        if let Some(p) = raw.parallelism.take() {
            job.parallelism = self.int_in(&p, 1, max, "parallelism").unwrap_or(1) as u32;
        }
        if let Some(b) = raw.backoff_limit.take() {
            job.backoff_limit = self.int_in(&b, 0, 1_000_000, "backoffLimit").unwrap_or(6) as u32;
        }
        if raw.active_deadline.is_some() {
            job.active_deadline = Some(self.duration_or(
                &raw.active_deadline.take(),
                Duration::ZERO,
                b::ACTIVE_DEADLINE,
            ));
        }
        if raw.ttl_after_finished.is_some() {
            job.ttl_after_finished = Some(self.duration_or(
                &raw.ttl_after_finished.take(),
                Duration::ZERO,
                b::TTL_AFTER_FINISHED,
            ));
        }
        for rule in raw
            .failure_policy
            .take()
            .map(|p| p.rules)
            .unwrap_or_default()
        {
            let on = match (rule.on_exit_codes, rule.on_reasons) {
                (Some(codes), None) => {
                    let mut values = Vec::new();
                    for v in &codes.values.value {
                        match u8::try_from(*v) {
                            Ok(code) if code > 0 => values.push(code),
                            _ => self.error(
                                codes.values.referenced,
                                format!("exit code {v} is not between 1 and 255"),
                                Some("0 is success, never a failure; a run exits with 1..=255 otherwise".into()),
                            ),
                        }
                    }
                    if codes.values.value.is_empty() {
                        self.error(codes.values.referenced, "onExitCodes.values is empty", None);
                    }
                    FailureMatch::ExitCodes {
                        operator: codes.operator.unwrap_or(ExitCodeOperator::In),
                        values,
                    }
                }
                (None, Some(reasons)) => {
                    for r in &reasons {
                        if !FAILURE_REASONS.contains(&r.value.as_str()) {
                            self.error(
                                r.referenced,
                                format!("`{}` is not a failure reason", r.value),
                                Some(format!("the reasons are: {}", FAILURE_REASONS.join(", "))),
                            );
                        }
                    }
                    FailureMatch::Reasons(reasons.into_iter().map(|r| r.value).collect())
                }
                _ => {
                    self.error(
                        rule.action.referenced,
                        "a failure rule needs exactly one of `onExitCodes` and `onReasons`",
                        None,
                    );
                    continue;
                }
            };
            job.failure_rules.push(FailureRule {
                action: rule.action.value,
                on,
            });
        }
        Some(job)
    }

    /// A Workload refuses the Job-only fields.
    fn no_job_fields(&mut self, raw: &RawWorkloadSpec) {
        let spanned_ints = [
            (&raw.completions, "completions"),
            (&raw.parallelism, "parallelism"),
            (&raw.backoff_limit, "backoffLimit"),
        ];
        let spanned_strings = [
            (&raw.active_deadline, "activeDeadline"),
            (&raw.ttl_after_finished, "ttlAfterFinished"),
        ];
        let located = spanned_ints
            .iter()
            .filter_map(|(v, f)| v.as_ref().map(|v| (v.referenced, *f)))
            .chain(
                spanned_strings
                    .iter()
                    .filter_map(|(v, f)| v.as_ref().map(|v| (v.referenced, *f))),
            )
            .chain(
                raw.failure_policy
                    .as_ref()
                    .and_then(|p| p.rules.first())
                    .map(|r| (r.action.referenced, "failurePolicy")),
            )
            .collect::<Vec<_>>();
        for (at, field) in located {
            self.error(
                at,
                format!("`{field}` is a Job field; a Workload does not take it"),
                Some("use `kind: Job` for work that runs to completion".to_string()),
            );
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

    fn int_or_percent(
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

    fn int_in(&mut self, v: &Spanned<i64>, min: i64, max: i64, what: &str) -> Option<i64> {
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
    fn duration_or(
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
