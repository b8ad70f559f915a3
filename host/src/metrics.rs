//! Prometheus metrics of a host, in the OpenMetrics text format: latency histograms the
//! controller fills as it works (reconcile, policy call, spawn to running), and
//! per-workload gauges taken from the controller's counts at each scrape.
//!
//! `prometheus-client` (the Prometheus project's Rust client) does the encoding; the
//! histograms are lock-free to observe.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::status::WorkloadCounts;

/// The host's latency histograms and HTTP counters.
#[derive(Debug)]
pub struct Metrics {
    reconcile: Histogram,
    policy: Histogram,
    spawn: Histogram,
    spares_made: Counter,
    spares_used: Counter,
    direct_replacements: Family<OutcomeLabel, Counter>,
    http_requests: Family<RequestLabels, Counter>,
    http_latency: Family<WorkloadLabel, Histogram>,
    http_retries: Family<WorkloadLabel, Counter>,
    http_rejected: Family<RejectLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    workload: String,
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    workload: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabel {
    workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    workload: String,
    state: String,
}

/// 1 µs to about 8 s, doubling: recovery is microseconds, a slow plugin call seconds.
fn buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1e-6, 2.0, 24)
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconcile: Histogram::new(buckets()),
            policy: Histogram::new(buckets()),
            spawn: Histogram::new(buckets()),
            spares_made: Counter::default(),
            spares_used: Counter::default(),
            direct_replacements: Family::default(),
            http_requests: Family::default(),
            http_latency: Family::new_with_constructor(|| Histogram::new(buckets())),
            http_retries: Family::default(),
            http_rejected: Family::default(),
        }
    }
}

impl Metrics {
    /// One workload reconciled: its policy decided and the actions ran.
    pub(crate) fn reconciled(&self, took: Duration) {
        self.reconcile.observe(took.as_secs_f64());
    }

    /// One policy call (built-in or plugin).
    pub(crate) fn policy_called(&self, took: Duration) {
        self.policy.observe(took.as_secs_f64());
    }

    /// An instance reported running this long after the controller spawned it.
    pub(crate) fn spawned(&self, took: Duration) {
        self.spawn.observe(took.as_secs_f64());
    }

    /// A spare was built (its component instantiated ahead of need).
    pub(crate) fn spare_made(&self) {
        self.spares_made.inc();
    }

    /// A spare was started in place of a new instance.
    pub(crate) fn spare_used(&self) {
        self.spares_used.inc();
    }

    /// An ended instance's task started an armed spare in its place; the controller
    /// `kept` it, or dropped it (the workload changed meanwhile).
    pub(crate) fn direct_replacement(&self, kept: bool) {
        let outcome = if kept { "kept" } else { "dropped" };
        self.direct_replacements
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Direct replacements (see [`crate::runtime::reflex`]) kept and dropped so far.
    pub fn direct_replacements(&self) -> (u64, u64) {
        let count = |outcome| {
            self.direct_replacements
                .get_or_create(&OutcomeLabel { outcome })
                .get()
        };
        (count("kept"), count("dropped"))
    }

    /// Spares built and spares started so far.
    pub fn spares(&self) -> (u64, u64) {
        (self.spares_made.get(), self.spares_used.get())
    }

    /// An HTTP request answered with `status` (its head sent) after `took`.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn http_answered(&self, workload: &str, route: &str, status: u16, took: Duration) {
        let class = format!("{}xx", status / 100);
        self.http_requests
            .get_or_create(&RequestLabels {
                workload: workload.into(),
                route: route.into(),
                status: class,
            })
            .inc();
        self.http_latency
            .get_or_create(&WorkloadLabel {
                workload: workload.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// An HTTP request sent again after its instance failed before answering.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn http_retried(&self, workload: &str) {
        self.http_retries
            .get_or_create(&WorkloadLabel {
                workload: workload.into(),
            })
            .inc();
    }

    /// An HTTP request refused by the host (`reason`: `QueueFull`).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn http_rejected(&self, workload: &str, reason: &str) {
        self.http_rejected
            .get_or_create(&RejectLabels {
                workload: workload.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// The metrics as OpenMetrics text, with each workload's gauges from `counts` and
    /// each HTTP workload's (name, in flight, queued) from `loads`.
    pub fn encode(&self, counts: &[WorkloadCounts], loads: &[(String, usize, usize)]) -> String {
        let mut registry = Registry::with_prefix("setpoint");
        registry.register(
            "http_requests",
            "HTTP requests answered, by workload, route and status class",
            self.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response head",
            self.http_latency.clone(),
        );
        registry.register(
            "http_retries",
            "HTTP requests sent again after their instance failed before answering",
            self.http_retries.clone(),
        );
        registry.register(
            "http_rejected",
            "HTTP requests refused by the host (503), by reason",
            self.http_rejected.clone(),
        );
        let in_flight = Family::<WorkloadLabel, Gauge>::default();
        let queued = Family::<WorkloadLabel, Gauge>::default();
        for (workload, busy, waiting) in loads {
            let label = WorkloadLabel {
                workload: workload.clone(),
            };
            in_flight.get_or_create(&label).set(*busy as i64);
            queued.get_or_create(&label).set(*waiting as i64);
        }
        registry.register("http_in_flight", "HTTP requests being served", in_flight);
        registry.register(
            "http_queued",
            "HTTP requests waiting for a ready replica",
            queued,
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile one workload: policy decision and its actions",
            self.reconcile.clone(),
        );
        registry.register(
            "policy_call_duration_seconds",
            "Time of one policy decision (built-in or Wasm plugin)",
            self.policy.clone(),
        );
        registry.register(
            "spawn_duration_seconds",
            "Time from the controller's spawn to the instance running",
            self.spawn.clone(),
        );
        registry.register(
            "spares_made",
            "Spares built: instances instantiated ahead of need",
            self.spares_made.clone(),
        );
        registry.register(
            "spares_used",
            "Spares started in place of a new instance",
            self.spares_used.clone(),
        );
        registry.register(
            "direct_replacements",
            "Failed instances replaced from an armed spare by their own task, kept or dropped by the controller",
            self.direct_replacements.clone(),
        );
        let instances = Family::<StateLabels, Gauge>::default();
        let desired = Family::<WorkloadLabel, Gauge>::default();
        let failed = Family::<WorkloadLabel, Gauge>::default();
        // A fresh family per scrape, filled with the controller's running totals.
        let restarts = Family::<WorkloadLabel, Counter>::default();
        for c in counts {
            let workload = || c.name.clone();
            for (state, n) in [("live", c.live), ("running", c.running), ("ready", c.ready)] {
                instances
                    .get_or_create(&StateLabels {
                        workload: workload(),
                        state: state.into(),
                    })
                    .set(i64::from(n));
            }
            let label = WorkloadLabel {
                workload: workload(),
            };
            desired.get_or_create(&label).set(i64::from(c.desired));
            failed.get_or_create(&label).set(i64::from(c.failed));
            restarts.get_or_create(&label).inc_by(c.restarts);
        }
        registry.register(
            "restarts",
            "Instances replaced since the workload was applied",
            restarts,
        );
        registry.register(
            "instances",
            "Instances per workload: live (any phase), running, ready",
            instances,
        );
        registry.register("desired_replicas", "Replicas desired per workload", desired);
        registry.register(
            "workload_failed",
            "1 when the workload (or job) is marked Failed",
            failed,
        );
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}
