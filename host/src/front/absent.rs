//! The front of a build without the `http` feature: it serves nothing. Manifest
//! validation already refuses `spec.http` in such a build; a batch that still asks to be
//! served (a workload built in code) is refused here, located, and nothing changes.

use std::sync::Arc;
use std::time::Duration;

use super::{FrontConfig, Wanted};
use crate::manifest::Diagnostic;
use crate::metrics::Metrics;
use crate::runtime::http::Service;

/// An accepted plan: nothing to serve.
pub(crate) struct Plan;

/// A front that serves nothing.
pub(crate) struct Front;

impl Front {
    /// A front serving nothing (its settings and outlets have nothing to serve).
    pub fn new(
        _config: FrontConfig,
        _metrics: Arc<Metrics>,
        _logs: tokio::sync::broadcast::Sender<crate::runtime::LogLine>,
    ) -> Self {
        Self
    }

    /// Accepts a batch that serves nothing; refuses any workload asking to be served.
    pub fn plan(&self, batch: &[Wanted<'_>]) -> Result<Plan, Vec<Diagnostic>> {
        let problems: Vec<Diagnostic> = batch
            .iter()
            .filter(|w| w.http.is_some())
            .map(|w| {
                Diagnostic::at(
                    w.origin.cloned(),
                    format!(
                        "workload `{}` sets spec.http, and this setpoint was built without HTTP (cargo feature `http`)",
                        w.name
                    ),
                )
                .with_help("build setpoint with the `http` feature, or remove spec.http")
            })
            .collect();
        if problems.is_empty() {
            Ok(Plan)
        } else {
            Err(problems)
        }
    }

    /// Nothing to commit.
    pub fn commit(&self, _plan: Plan) {}

    /// Nothing is routed.
    pub fn withdraw(&self, _name: &str) {}

    /// No workload is served.
    pub fn service(&self, _name: &str) -> Option<Arc<Service>> {
        None
    }

    /// No workload is served: nothing to add.
    pub fn add_status(&self, _status: &mut crate::status::WorkloadStatus) {}

    /// No workload is served.
    pub fn loads(&self) -> Vec<(String, usize, usize)> {
        Vec::new()
    }

    /// No listener to drain.
    pub async fn drain(&self, _grace: Duration) {}
}
