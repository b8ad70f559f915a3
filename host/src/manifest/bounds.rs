//! The range of every duration a manifest may set, in one table that the YAML loader,
//! the check of workloads built in code, the JSON Schema and the README all use. Each
//! maximum is far above any sensible setting and far below what time arithmetic on the
//! host's clocks can hold, so no accepted duration can overflow a deadline.

use std::time::Duration;

/// The accepted range of one duration field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationBound {
    /// The field's path in a manifest's `spec`, e.g. `backoff.max`.
    pub field: &'static str,
    /// The shortest value accepted.
    pub min: Duration,
    /// The longest value accepted.
    pub max: Duration,
}

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

const fn bound(field: &'static str, min: Duration, max: Duration) -> DurationBound {
    DurationBound { field, min, max }
}

/// `resources.cpu.budget`.
pub const CPU_BUDGET: DurationBound = bound("resources.cpu.budget", MS, DAY);
/// `resources.cpu.per`.
pub const CPU_PER: DurationBound = bound("resources.cpu.per", MS, DAY);
/// `strategy.progressDeadline`.
pub const PROGRESS_DEADLINE: DurationBound = bound(
    "strategy.progressDeadline",
    MS,
    Duration::from_secs(30 * 24 * 3600),
);
/// `strategy.minReady`.
pub const MIN_READY: DurationBound = bound("strategy.minReady", Duration::ZERO, DAY);
/// `health.probe.initialDelay`.
pub const PROBE_INITIAL_DELAY: DurationBound =
    bound("health.probe.initialDelay", Duration::ZERO, DAY);
/// `health.probe.period`.
pub const PROBE_PERIOD: DurationBound = bound("health.probe.period", MS, DAY);
/// `health.probe.timeout`.
pub const PROBE_TIMEOUT: DurationBound = bound("health.probe.timeout", MS, HOUR);
/// `health.http.initialDelay`.
pub const HTTP_PROBE_INITIAL_DELAY: DurationBound =
    bound("health.http.initialDelay", Duration::ZERO, DAY);
/// `health.http.period`.
pub const HTTP_PROBE_PERIOD: DurationBound = bound("health.http.period", MS, DAY);
/// `health.http.timeout`.
pub const HTTP_PROBE_TIMEOUT: DurationBound = bound("health.http.timeout", MS, HOUR);
/// `http.requestTimeout`.
pub const HTTP_REQUEST_TIMEOUT: DurationBound = bound("http.requestTimeout", MS, DAY);
/// `health.watchdog.timeout`.
pub const WATCHDOG_TIMEOUT: DurationBound = bound("health.watchdog.timeout", MS, DAY);
/// `backoff.initial`.
pub const BACKOFF_INITIAL: DurationBound = bound("backoff.initial", Duration::ZERO, DAY);
/// `backoff.max`.
pub const BACKOFF_MAX: DurationBound = bound("backoff.max", Duration::ZERO, DAY);
/// `backoff.resetAfter`.
pub const BACKOFF_RESET_AFTER: DurationBound = bound(
    "backoff.resetAfter",
    MS,
    Duration::from_secs(30 * 24 * 3600),
);
/// `restartBudget.window`.
pub const RESTART_WINDOW: DurationBound = bound(
    "restartBudget.window",
    MS,
    Duration::from_secs(30 * 24 * 3600),
);
/// `terminationGracePeriod`.
pub const TERMINATION_GRACE: DurationBound = bound("terminationGracePeriod", Duration::ZERO, HOUR);
/// A Job's `activeDeadline`.
pub const ACTIVE_DEADLINE: DurationBound =
    bound("activeDeadline", MS, Duration::from_secs(365 * 24 * 3600));
/// A Job's `ttlAfterFinished`.
pub const TTL_AFTER_FINISHED: DurationBound = bound(
    "ttlAfterFinished",
    Duration::ZERO,
    Duration::from_secs(365 * 24 * 3600),
);

/// Every duration field's range.
pub const DURATIONS: &[DurationBound] = &[
    CPU_BUDGET,
    CPU_PER,
    PROGRESS_DEADLINE,
    MIN_READY,
    PROBE_INITIAL_DELAY,
    PROBE_PERIOD,
    PROBE_TIMEOUT,
    HTTP_PROBE_INITIAL_DELAY,
    HTTP_PROBE_PERIOD,
    HTTP_PROBE_TIMEOUT,
    HTTP_REQUEST_TIMEOUT,
    WATCHDOG_TIMEOUT,
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    BACKOFF_RESET_AFTER,
    RESTART_WINDOW,
    TERMINATION_GRACE,
    ACTIVE_DEADLINE,
    TTL_AFTER_FINISHED,
];

/// A duration as a manifest writes it: `0s`, `250ms`, `1h`, `30d`.
pub fn show(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    if ms == 0 {
        "0s".into()
    } else {
        format!("{ms}ms")
    }
}

impl DurationBound {
    /// Whether `d` is in range; otherwise the problem, in words.
    pub fn check(&self, d: Duration) -> Result<(), String> {
        if d < self.min {
            Err(format!(
                "{} is too short: the minimum is {}",
                self.field,
                show(self.min)
            ))
        } else if d > self.max {
            Err(format!(
                "{} is too long: the maximum is {}",
                self.field,
                show(self.max)
            ))
        } else {
            Ok(())
        }
    }
}

/// The ranges as JSON, for the schema (`x-duration-ranges`).
pub fn as_json() -> serde_json::Value {
    DURATIONS
        .iter()
        .map(|b| {
            (
                b.field.to_string(),
                serde_json::json!({"min": show(b.min), "max": show(b.max)}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_durations_are_named_with_their_limit() {
        assert!(BACKOFF_MAX.check(Duration::from_secs(3600)).is_ok());
        let long = BACKOFF_MAX
            .check(Duration::from_secs(2 * 24 * 3600))
            .unwrap_err();
        assert_eq!(long, "backoff.max is too long: the maximum is 1d");
        let short = PROBE_PERIOD.check(Duration::ZERO).unwrap_err();
        assert_eq!(
            short,
            "health.probe.period is too short: the minimum is 1ms"
        );
    }

    #[test]
    fn every_maximum_fits_the_clocks_with_room_to_spare() {
        let now = std::time::Instant::now();
        for b in DURATIONS {
            assert!(b.min <= b.max, "{}", b.field);
            assert!(
                now.checked_add(b.max.saturating_mul(1000)).is_some(),
                "{}",
                b.field
            );
        }
    }

    #[test]
    fn the_readme_lists_every_range() {
        let readme = include_str!("../../../README.md");
        for b in DURATIONS {
            let row = format!("| `{}` | {} | {} |", b.field, show(b.min), show(b.max));
            assert!(readme.contains(&row), "README.md lacks the row `{row}`");
        }
    }
}
