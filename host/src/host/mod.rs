//! The embeddable host: a handle to a running controller and runtime. The CLI is built on
//! exactly this API, so anything `setpoint run` does, an embedding process can do too.

mod builder;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

pub use builder::HostBuilder;

use crate::controller::{Command, PreparedWorkload};
use crate::manifest::{
    Diagnostic, ManifestLimits, Rejected, Workload, check_workloads, load_files,
};
use crate::runtime::{LogLine, Runtime};
use crate::status::{Event, HostStatus};

/// One workload's change in a [`Host::plan`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedChange {
    /// The workload or job.
    pub name: String,
    /// Workload or Job.
    pub kind: crate::status::WorkloadKind,
    /// The revision it would run.
    pub revision: String,
    /// The replicas it would have.
    pub replicas: u32,
    /// What would change.
    pub change: Change,
}

/// What applying would do to one workload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Change {
    /// It is new.
    Create,
    /// A new revision replaces `from_revision` (a rolling update).
    #[serde(rename_all = "camelCase")]
    Update {
        /// The revision running now.
        from_revision: String,
    },
    /// Only the replica count changes.
    #[serde(rename_all = "camelCase")]
    Scale {
        /// The replica count now.
        from_replicas: u32,
    },
    /// Nothing changes.
    Unchanged,
}

/// A running setpoint host: apply workloads, watch them, shut it down.
///
/// It lives on the tokio runtime it was built in: the controller is one task, each
/// instance another. Dropping a `Host` without [`Host::shutdown`] aborts nothing
/// gracefully, so call `shutdown` when the embedding process stops.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// let host = setpoint::Host::builder().build()?;
/// let mut events = host.events();
/// host.apply_yaml(
///     "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata: {name: app}\nspec: {component: app.wasm, replicas: 2}\n",
///     "/opt/app/inline.yaml", // names the text in errors; `app.wasm` resolves next to it
/// )
/// .await?;
/// while let Ok(event) = events.recv().await {
///     println!("{}: {} {}", event.workload, event.reason, event.message);
/// #   break;
/// }
/// let last = host.shutdown().await;
/// # let _ = last;
/// # Ok(()) }
/// ```
pub struct Host {
    runtime: Arc<Runtime>,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    logs: broadcast::Sender<LogLine>,
    access_logs: broadcast::Sender<LogLine>,
    task: tokio::task::JoinHandle<()>,
    /// Why the controller died, once it has.
    death: tokio::sync::watch::Receiver<Option<Arc<str>>>,
    manifest_limits: ManifestLimits,
    metrics: Arc<crate::metrics::Metrics>,
    front: Arc<crate::front::Front>,
}

impl Host {
    /// A builder with default settings.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// Reads, validates and applies manifest files, all or nothing.
    pub async fn apply_files(&self, paths: &[PathBuf]) -> Result<Vec<String>, Rejected> {
        let workloads = load_files(paths, &self.manifest_limits)?;
        self.apply(workloads).await
    }

    /// Validates and applies manifests given as YAML text, all or nothing. `source` names
    /// the text in errors, and relative component paths resolve against its directory.
    pub async fn apply_yaml(
        &self,
        yaml: &str,
        source: impl AsRef<std::path::Path>,
    ) -> Result<Vec<String>, Rejected> {
        let workloads = crate::manifest::load_str(source.as_ref(), yaml, &self.manifest_limits)?;
        self.apply(workloads).await
    }

    /// Applies workloads, all or nothing: every component is compiled and checked first,
    /// and if any workload is rejected nothing changes. Returns the applied names.
    pub async fn apply(&self, workloads: Vec<Workload>) -> Result<Vec<String>, Rejected> {
        self.apply_restoring(workloads, &BTreeMap::new()).await
    }

    /// [`Host::apply`], with the failure verdicts a daemon recorded before it restarted:
    /// a workload created of a revision that had failed starts failed.
    pub(crate) async fn apply_restoring(
        &self,
        workloads: Vec<Workload>,
        failures: &BTreeMap<String, crate::admission::RecordedFailure>,
    ) -> Result<Vec<String>, Rejected> {
        let mut prepared = self.prepare(workloads).await?;
        for p in &mut prepared {
            p.failed = failures.get(&p.name).cloned();
        }
        let names = prepared.iter().map(|p| p.name.clone()).collect();
        let (reply, done) = oneshot::channel();
        self.send(Command::Apply(prepared, reply)).await?;
        match done.await {
            Ok(result) => result?,
            Err(_) => return Err(self.gone().await),
        }
        Ok(names)
    }

    /// What [`Host::apply`] would change, checked exactly as `apply` checks (parsed,
    /// validated, compiled, linked), changing nothing.
    pub async fn plan(&self, workloads: Vec<Workload>) -> Result<Vec<PlannedChange>, Rejected> {
        let prepared = self.prepare(workloads).await?;
        let status = self.status().await;
        let diagnostics: Vec<Diagnostic> = prepared
            .iter()
            .filter_map(|p| {
                let current = status.workload(&p.name).map(|w| {
                    (
                        w.kind == crate::status::WorkloadKind::Job,
                        w.revision.as_str(),
                    )
                });
                crate::admission::apply_conflict(
                    &p.name,
                    current,
                    p.spec.job.is_some(),
                    &p.revision,
                )
                .map(|(message, help)| Diagnostic::at(p.origin.clone(), message).with_help(help))
            })
            .collect();
        if !diagnostics.is_empty() {
            return Err(Rejected { diagnostics });
        }
        Ok(prepared
            .iter()
            .map(|p| {
                let current = status.workload(&p.name);
                let change = match current {
                    None => Change::Create,
                    Some(w) if w.revision != p.revision => Change::Update {
                        from_revision: w.revision.clone(),
                    },
                    Some(w) if w.desired != p.spec.replicas => Change::Scale {
                        from_replicas: w.desired,
                    },
                    Some(_) => Change::Unchanged,
                };
                PlannedChange {
                    kind: crate::status::WorkloadKind::of(&p.spec),
                    name: p.name.clone(),
                    revision: p.revision.clone(),
                    replicas: p.spec.replicas,
                    change,
                }
            })
            .collect())
    }

    /// Checks, compiles and links workloads, all or nothing.
    async fn prepare(&self, workloads: Vec<Workload>) -> Result<Vec<PreparedWorkload>, Rejected> {
        let diagnostics = check_workloads(&workloads, &self.manifest_limits);
        if !diagnostics.is_empty() {
            return Err(Rejected { diagnostics });
        }
        // Only a batch that grants directories needs what the others grant (and a
        // status round trip is not free on a large host).
        let status = if workloads.iter().any(|w| !w.spec.dirs.is_empty()) {
            self.status().await
        } else {
            HostStatus::default()
        };
        let existing: Vec<crate::admission::GrantRef<'_>> = status
            .workloads
            .iter()
            .filter(|s| !workloads.iter().any(|w| w.name == s.name))
            .flat_map(|s| {
                s.spec.dirs.iter().map(|grant| crate::admission::GrantRef {
                    workload: &s.name,
                    grant,
                    origin: None,
                })
            })
            .collect();
        crate::admission::check_nesting(&crate::admission::grant_refs(&workloads), &existing)?;
        let runtime = self.runtime.clone();
        // A thread of its own (not tokio's blocking pool, which panics when the OS
        // refuses a thread, as it does when the process is out of memory mappings).
        let (done, prepared) = oneshot::channel();
        std::thread::Builder::new()
            .name("setpoint-prepare".into())
            .spawn(move || {
                let _ = done.send(crate::admission::prepare_all(&runtime, workloads));
            })
            .map_err(|e| {
                Rejected::one(Diagnostic::at(
                    None,
                    format!("cannot start a thread to compile components: {e}"),
                ))
            })?;
        prepared.await.map_err(|_| {
            Rejected::one(Diagnostic::at(
                None,
                "component preparation panicked".to_string(),
            ))
        })?
    }

    /// Removes a workload: its instances are stopped gracefully. False if unknown.
    pub async fn delete(&self, name: &str) -> Result<bool, Rejected> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Delete(name.to_string(), reply)).await?;
        match done.await {
            Ok(found) => Ok(found),
            Err(_) => Err(self.gone().await),
        }
    }

    /// `rollout restart`: replaces every instance of workload `name` with a new one of
    /// the same revision and forgets what the old ones spent (restart budget, back-off,
    /// a failure verdict). Jobs cannot be restarted.
    pub async fn restart(&self, name: &str) -> Result<(), Rejected> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Restart(name.to_string(), reply)).await?;
        match done.await {
            Ok(result) => result.map_err(|why| Rejected::one(Diagnostic::at(None, why))),
            Err(_) => Err(self.gone().await),
        }
    }

    /// A snapshot of every workload's status.
    pub async fn status(&self) -> HostStatus {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Status(reply)).await.is_err() {
            return HostStatus::default();
        }
        done.await.unwrap_or_default()
    }

    /// Waits until the controller has handled everything sent before this call; an
    /// error if it died or shut down meanwhile (then [`Host::failure`] says why).
    pub async fn ping(&self) -> Result<(), Rejected> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Counts(reply)).await?;
        match done.await {
            Ok(_) => Ok(()),
            Err(_) => Err(self.gone().await),
        }
    }

    /// Each workload's instance counts: a cheap status (no per-instance data) to poll.
    pub async fn counts(&self) -> Vec<crate::status::WorkloadCounts> {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Counts(reply)).await.is_err() {
            return Vec::new();
        }
        done.await.unwrap_or_default()
    }

    /// The host's metrics in the Prometheus (OpenMetrics) text format: reconcile, policy
    /// call and spawn latency histograms, and per-workload instance counts, desired
    /// replicas, restarts and failure.
    pub async fn metrics(&self) -> String {
        let counts = self.counts().await;
        self.metrics.encode(&counts, &self.front.loads())
    }

    /// Waits until `condition` holds for the host's status (checked on every event, and
    /// at least every 50 ms), and returns that status; `None` if `timeout` passes first
    /// or the host shuts down.
    ///
    /// ```no_run
    /// # async fn demo(host: &setpoint::Host) {
    /// use std::time::Duration;
    /// let all_ready = |s: &setpoint::HostStatus| s.workload("ticker").is_some_and(|w| w.ready == 3);
    /// if host.wait_for(Duration::from_secs(5), all_ready).await.is_none() {
    ///     eprintln!("ticker is not ready after 5 s");
    /// }
    /// # }
    /// ```
    pub async fn wait_for(
        &self,
        timeout: Duration,
        condition: impl Fn(&HostStatus) -> bool,
    ) -> Option<HostStatus> {
        let mut events = self.events();
        let deadline = crate::clock::after_tokio(tokio::time::Instant::now(), timeout);
        loop {
            if self.task.is_finished() {
                return None;
            }
            let status = self.status().await;
            if condition(&status) {
                return Some(status);
            }
            let next_check =
                crate::clock::after_tokio(tokio::time::Instant::now(), Duration::from_millis(50))
                    .min(deadline);
            if tokio::time::timeout_at(next_check, events.recv())
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return None;
            }
        }
    }

    /// The snapshot the workload's policy would be given now: replay it offline with
    /// `setpoint policy test`.
    pub async fn policy_snapshot(&self, name: &str) -> Option<crate::policy::snapshot::Snapshot> {
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Snapshot(name.to_string(), reply))
            .await
            .ok()?;
        done.await.ok().flatten()
    }

    /// How many instance Stores exist right now, spares' included. After `shutdown` it is
    /// 0, and soon after every workload is deleted (an ended instance's Store is dropped
    /// by a task of its own just after its end is reported): nothing is leaked.
    pub fn live_stores(&self) -> usize {
        self.runtime.live_stores()
    }

    /// What the instances' fiber stacks cost now (how many there are, how many are
    /// accessible, the memory mappings they take), where the host takes them from its own
    /// arena: on Linux without an instance pool. An idle instance's stack is parked: it
    /// takes no mapping of its own.
    pub fn stack_stats(&self) -> Option<crate::runtime::StackStats> {
        self.runtime.stack_stats()
    }

    /// Subscribes to events from now on. A slow subscriber skips events, never blocks the host.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Subscribes to guest output lines from now on (rate-limited per instance).
    pub fn logs(&self) -> broadcast::Receiver<LogLine> {
        self.logs.subscribe()
    }

    /// A subscription to HTTP services' access lines (stream `access`, one per request
    /// answered). Written only while someone subscribes, so a host nobody reads them
    /// from pays nothing per request; a slow subscriber misses lines, never delays one.
    pub fn access_logs(&self) -> broadcast::Receiver<LogLine> {
        self.access_logs.subscribe()
    }

    /// Stops every instance (gracefully within its grace period, then forcibly), stops
    /// the controller, and returns the final status.
    pub async fn shutdown(self) -> HostStatus {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).await.is_err() {
            return HostStatus::default();
        }
        let status = done.await.unwrap_or_default();
        let _ = self.task.await;
        status
    }

    async fn send(&self, command: Command) -> Result<(), Rejected> {
        match self.commands.send(command).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.gone().await),
        }
    }

    /// Why the controller died, if it has (a bug: it is never meant to).
    pub fn failure(&self) -> Option<String> {
        self.death.borrow().as_deref().map(str::to_string)
    }

    /// Waits until the controller dies, and says why; pending forever while it lives
    /// (a normal shutdown included). An embedder selects on this to stop loudly
    /// instead of serving a dead host.
    pub async fn died(&self) -> String {
        let mut death = self.death.clone();
        match death.wait_for(Option::is_some).await {
            Ok(why) => why.as_deref().unwrap_or_default().to_string(),
            Err(_) => std::future::pending().await,
        }
    }

    /// The error of a call the controller did not answer: it died (why, once the
    /// supervisor has recorded it, which takes a moment) or it shut down.
    async fn gone(&self) -> Rejected {
        let deadline =
            crate::clock::after_tokio(tokio::time::Instant::now(), Duration::from_secs(1));
        while self.failure().is_none()
            && !self.task.is_finished()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Rejected::one(Diagnostic::at(
            None,
            match self.failure() {
                Some(why) => format!("the host's controller died: {why}"),
                None => "the host has shut down".to_string(),
            },
        ))
    }
}
