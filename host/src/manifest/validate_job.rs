//! Validation of a Job's own fields (completions, parallelism, back-off limit, deadlines,
//! failure rules), and the refusal of the Workload-only ones.

use std::time::Duration;

use serde_saphyr::Location;

use super::bounds::{self as b};
use super::raw::RawWorkloadSpec;
use super::spec::{ExitCodeOperator, FailureMatch, FailureRule, JobSpec};
use super::validate::Validator;

use crate::end::EndKind;

impl Validator<'_> {
    /// Reads a Job's fields, and refuses the Workload-only ones.
    pub(super) fn job(&mut self, raw: &mut RawWorkloadSpec, kind: Location) -> Option<JobSpec> {
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
        if let Some(n) = &raw.spares {
            let (m, h) = workload_only("spares");
            self.error(n.referenced, m, h);
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
            (raw.http.is_some(), "http"),
            (
                raw.health.as_ref().is_some_and(|h| h.http.is_some()),
                "health.http",
            ),
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
                    let mut kinds = Vec::with_capacity(reasons.len());
                    for r in &reasons {
                        match EndKind::from_name(&r.value)
                            .filter(|k| EndKind::RULE_REASONS.contains(k))
                        {
                            Some(kind) => kinds.push(kind),
                            None => {
                                let names: Vec<&str> =
                                    EndKind::RULE_REASONS.iter().map(|k| k.name()).collect();
                                self.error(
                                    r.referenced,
                                    format!("`{}` is not a failure reason", r.value),
                                    Some(format!("the reasons are: {}", names.join(", "))),
                                );
                            }
                        }
                    }
                    FailureMatch::Reasons(kinds)
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
    pub(super) fn no_job_fields(&mut self, raw: &RawWorkloadSpec) {
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
}
