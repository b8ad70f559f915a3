//! The check of typed workloads, whether they came from YAML or were built in code:
//! every rule of [`super::rules`] applied to the spec, plus what only a batch can say
//! (names unique within it).

use std::time::Duration;

use super::bounds::{self as b, DurationBound};
use super::diagnostic::Diagnostic;
use super::load::ManifestLimits;
use super::rules::{self, THRESHOLDS};
use super::spec::{Workload, WorkloadSpec};

/// Checks the invariants of typed workloads, whether they came from YAML or were built in
/// code, including that names are unique within the batch. Problems are located at each
/// workload's origin when it has one.
/// Checks the invariants of typed workloads, whether they came from YAML or were built in
/// code, including that names are unique within the batch. Problems are located at each
/// workload's origin when it has one.
pub fn check_workloads(workloads: &[Workload], limits: &ManifestLimits) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for w in workloads {
        let mut problems: Vec<rules::Broken> = Vec::new();
        let mut problem = |message: String| problems.push(rules::Broken::new(message));
        if let Err(why) = rules::check_dns_label(&w.name) {
            problem(format!("invalid workload name `{}`: {why}", w.name));
        }
        for (key, value) in &w.labels {
            if let Err(why) = rules::check_label(key, value) {
                problem(why);
            }
        }
        if !seen.insert(w.name.as_str()) {
            problem(format!("workload `{}` appears twice in one apply", w.name));
        }
        let spec = &w.spec;
        if let Some(job) = &spec.job {
            if job.completions == 0 || job.parallelism == 0 {
                problem("a job's completions and parallelism must be at least 1".into());
            }
            if spec.replicas != job.parallelism.min(job.completions) {
                problem(format!(
                    "a job's replicas must be min(parallelism, completions) = {}; build the spec with WorkloadSpec::job",
                    job.parallelism.min(job.completions)
                ));
            }
            if spec.policy.is_some() || spec.probe.is_some() || spec.spares.is_some() {
                problem("a Job takes no policy plugin, no health probe and no spares".into());
            }
        }
        if spec.replicas > limits.max_replicas {
            problem(format!(
                "{} replicas, over the limit of {}",
                spec.replicas, limits.max_replicas
            ));
        }
        if spec.spares.is_some_and(|n| n > super::spec::MAX_SPARES) {
            problem(format!(
                "{} spares, over the limit of {}",
                spec.spares.unwrap_or_default(),
                super::spec::MAX_SPARES
            ));
        }
        if spec.env.len() > limits.max_grants || spec.args.len() > limits.max_grants {
            problem(format!("more than {} env vars or args", limits.max_grants));
        }
        if let Some(p) = spec.probe
            && !(THRESHOLDS.contains(&p.failure_threshold)
                && THRESHOLDS.contains(&p.success_threshold))
        {
            problem(format!(
                "probe thresholds must be between {} and {}",
                THRESHOLDS.start(),
                THRESHOLDS.end()
            ));
        }
        for (bound, d) in durations_of(spec) {
            if let Err(why) = bound.check(d) {
                problem(why);
            }
        }
        for dir in &spec.dirs {
            if let Err(why) = rules::check_guest_path(&dir.guest) {
                problem(why);
            }
            match rules::check_host_dir(&dir.host, &limits.dir_roots) {
                Ok(normal) if normal != dir.host => problem(format!(
                    "host path `{}` is not in normal form; write `{}`",
                    dir.host.display(),
                    normal.display()
                )),
                Ok(_) => {}
                Err((why, _)) => problem(why),
            }
        }
        for authority in &spec.http_authorities {
            match rules::http_authority(authority) {
                Ok(normal) if normal != *authority => problem(format!(
                    "HTTP grant `{authority}` is not lowercase; write `{normal}`"
                )),
                Ok(_) => {}
                Err(b) => problem(b.message),
            }
        }
        let mut http_problems = Vec::new();
        if let Some(http) = &spec.http {
            http_problems = rules::http_service(http);
            if spec.job.is_some() {
                problem("a Job does not serve HTTP: remove http".into());
            }
            if spec.probe.is_some() {
                problem("an HTTP service is probed with health.http, not health.probe".into());
            }
        }
        let grants_network = !(spec.connect.is_empty() && spec.http_authorities.is_empty());
        if grants_network && !limits.allow_network {
            problem("this host grants no network access to workloads".into());
        }
        let shared = [
            spec.memory_limit.map_or(Ok(()), |bytes| {
                rules::memory_limit(bytes, limits.max_memory)
            }),
            spec.cpu_budget.as_ref().map_or(Ok(()), rules::cpu_budget),
            rules::backoff(&spec.backoff),
            rules::grant_counts(spec, limits.max_grants),
        ];
        let env = spec.env.iter().map(|(k, v)| rules::env_var(k, v));
        let capabilities = spec.capabilities.iter().map(|c| rules::capability(c));
        problems.extend(
            shared
                .into_iter()
                .chain(env)
                .chain(capabilities)
                .filter_map(Result::err)
                .chain(http_problems),
        );
        out.extend(problems.into_iter().map(|b| {
            let d = Diagnostic::at(w.origin.clone(), format!("`{}`: {}", w.name, b.message));
            match b.help {
                Some(help) => d.with_help(help),
                None => d,
            }
        }));
    }
    out
}

/// Every duration a typed spec holds, with its field's range.
fn durations_of(spec: &WorkloadSpec) -> Vec<(DurationBound, Duration)> {
    let mut out = vec![
        (b::PROGRESS_DEADLINE, spec.strategy.progress_deadline),
        (b::MIN_READY, spec.strategy.min_ready),
        (b::BACKOFF_INITIAL, spec.backoff.initial),
        (b::BACKOFF_MAX, spec.backoff.max),
        (b::BACKOFF_RESET_AFTER, spec.backoff.reset_after),
        (b::TERMINATION_GRACE, spec.termination_grace_period),
    ];
    if let Some(cpu) = spec.cpu_budget {
        out.push((b::CPU_BUDGET, cpu.time));
        out.extend(cpu.per.map(|per| (b::CPU_PER, per)));
    }
    if let Some(p) = spec.probe {
        out.push((b::PROBE_INITIAL_DELAY, p.initial_delay));
        out.push((b::PROBE_PERIOD, p.period));
        out.push((b::PROBE_TIMEOUT, p.timeout));
    }
    if let Some(http) = &spec.http {
        out.push((b::HTTP_REQUEST_TIMEOUT, http.request_timeout));
        if let Some(p) = &http.probe {
            out.push((b::HTTP_PROBE_INITIAL_DELAY, p.timing.initial_delay));
            out.push((b::HTTP_PROBE_PERIOD, p.timing.period));
            out.push((b::HTTP_PROBE_TIMEOUT, p.timing.timeout));
        }
    }
    out.extend(spec.watchdog.map(|w| (b::WATCHDOG_TIMEOUT, w.timeout)));
    out.extend(spec.restart_budget.map(|r| (b::RESTART_WINDOW, r.window)));
    if let Some(job) = &spec.job {
        out.extend(job.active_deadline.map(|d| (b::ACTIVE_DEADLINE, d)));
        out.extend(job.ttl_after_finished.map(|d| (b::TTL_AFTER_FINISHED, d)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_grants_built_in_code_are_checked_like_yaml_ones() {
        let mut spec = WorkloadSpec::new("/opt/a.wasm");
        spec.http_authorities = vec!["API.example.com:443".into(), "nowhere".into()];
        let w = Workload::new("w", spec);
        let problems = check_workloads(std::slice::from_ref(&w), &ManifestLimits::default());
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("not lowercase; write `api.example.com:443`")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("`nowhere` is not a HOST:PORT authority")),
            "{text:?}"
        );
        let mut ok = w.clone();
        ok.spec.http_authorities = vec!["api.example.com:443".into()];
        assert!(check_workloads(std::slice::from_ref(&ok), &ManifestLimits::default()).is_empty());
        let closed = ManifestLimits {
            allow_network: false,
            ..ManifestLimits::default()
        };
        let refused = check_workloads(std::slice::from_ref(&ok), &closed);
        assert!(
            refused[0].to_string().contains("grants no network access"),
            "{refused:?}"
        );
    }
}
