//! The daemon's use cases: every change of the desired state (an apply, a delete, an
//! undo, the replay at start, and recording a rollback the controller made on its own)
//! goes through here, one at a time, durable first. A change needs the write lock:
//! [`Desired::write`] takes it, and the methods that change anything exist only on the
//! [`Writing`] it returns, so no caller can forget it. The HTTP handlers (`api.rs`), the
//! directory watcher and the rollback recorder all call this layer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use super::logbook::Logbook;
use super::store::{ApplyRecord, Document, Store};
use super::wire::{ApplyResponse, RevisionInfo};
use crate::manifest::{ManifestLimits, Rejected, Workload, load_str_resolving};
use crate::status::{QuarantinedApply, WorkloadKind};
use crate::{Host, HostStatus};

/// Deaths during the same apply's replay after which it is quarantined even though the
/// daemon could not record why (an abort, a kill): a `kill -9` at a random moment must
/// not quarantine a good apply, a host that dies on it every time must not loop forever.
const REPLAY_DEATHS_BEFORE_QUARANTINE: u64 = 3;

/// Why a change changed nothing.
#[derive(Debug)]
pub enum ChangeError {
    /// The documents were refused, with located diagnostics.
    Rejected(Rejected),
    /// No such workload, revision or record.
    NotFound(String),
    /// The change is already in place.
    Conflict(String),
    /// The request cannot apply to what it names.
    Invalid(String),
    /// The store failed.
    Internal(String),
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rejected(r) => write!(f, "{r}"),
            Self::NotFound(m) | Self::Conflict(m) | Self::Invalid(m) | Self::Internal(m) => {
                write!(f, "{m}")
            }
        }
    }
}

/// The desired state: the host that runs it, the store that keeps it, and the lock
/// under which it changes.
pub struct Desired {
    host: Host,
    store: Arc<Store>,
    limits: ManifestLimits,
    logbook: Arc<Logbook>,
    /// Stored applies not run (see [`QuarantinedApply`]); an apply or a delete of the
    /// workloads they define ends them.
    quarantined: std::sync::Mutex<Vec<QuarantinedApply>>,
    writes: tokio::sync::Mutex<()>,
    /// Set once the daemon has joined a fleet: changes then go to the fleet's engine.
    #[cfg(feature = "fleet")]
    fleet: std::sync::OnceLock<FleetLink>,
}

/// A joined fleet, as the use-case layer reaches it.
#[cfg(feature = "fleet")]
pub struct FleetLink {
    /// The connection and buckets.
    pub fleet: Arc<super::fleet::Fleet>,
    /// The agent's view of the fleet.
    pub mirror: super::fleet::agent::SharedMirror,
    /// Whether this node is fenced.
    pub fenced: tokio::sync::watch::Receiver<bool>,
}

/// The write lock on the desired state, and the changes made under it.
pub struct Writing<'a> {
    desired: &'a Desired,
    _lock: tokio::sync::MutexGuard<'a, ()>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A time the store keeps (seconds since the Unix epoch), if it is one RFC 3339 can
/// write (before the year 10000): a damaged store must break neither a status nor the
/// daemon.
pub(crate) fn stored_time(secs: u64) -> Option<std::time::SystemTime> {
    const YEAR_10000: u64 = 253_402_300_800;
    (secs < YEAR_10000)
        .then(|| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs)))
        .flatten()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Desired {
    /// The desired state of `host`, kept in `store`, read under `limits`.
    pub fn new(
        host: Host,
        store: Arc<Store>,
        limits: ManifestLimits,
        logbook: Arc<Logbook>,
    ) -> Self {
        Self {
            host,
            store,
            limits,
            logbook,
            quarantined: std::sync::Mutex::new(Vec::new()),
            writes: tokio::sync::Mutex::new(()),
            #[cfg(feature = "fleet")]
            fleet: std::sync::OnceLock::new(),
        }
    }

    /// Joins this desired state to a fleet: from now on, changes are the fleet's.
    #[cfg(feature = "fleet")]
    pub fn join_fleet(&self, link: FleetLink) {
        let _ = self.fleet.set(link);
    }

    /// The fleet this daemon joined, if any.
    #[cfg(feature = "fleet")]
    pub fn fleet(&self) -> Option<&FleetLink> {
        self.fleet.get()
    }

    /// The logbook of events and output.
    pub fn logbook(&self) -> &Logbook {
        &self.logbook
    }

    /// What the API shows: the fleet's status when in a fleet, else this host's.
    pub async fn shown_status(&self) -> HostStatus {
        #[cfg(feature = "fleet")]
        if let Some(link) = self.fleet.get() {
            return super::fleet::view::gather(&link.fleet, self, &link.mirror).await;
        }
        self.status().await
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The bounds on manifests.
    pub fn limits(&self) -> &ManifestLimits {
        &self.limits
    }

    /// Gives the host back (at shutdown).
    pub fn into_host(self) -> Host {
        self.host
    }

    /// The host's status with the quarantined applies.
    /// The host's status as the daemon shows it: each component and plugin named by
    /// the path its apply named it by (not the blob the daemon runs), and the
    /// quarantined applies.
    pub async fn status(&self) -> HostStatus {
        let mut status = self.host.status().await;
        status.quarantined = lock(&self.quarantined).clone();
        #[cfg(feature = "fleet")]
        if let Some(link) = self.fleet.get() {
            for i in status
                .workloads
                .iter_mut()
                .flat_map(|w| w.instances.iter_mut())
            {
                i.node = Some(link.fleet.node.clone());
            }
        }
        let sources = tokio::task::block_in_place(|| self.sources());
        let created = tokio::task::block_in_place(|| self.store.created()).unwrap_or_default();
        for w in &mut status.workloads {
            // First applied to the store: a daemon restart does not make it young.
            if let Some(at) = created.get(&w.name) {
                w.created = stored_time(*at).or(w.created);
            }
            let named = |blob: &Path| {
                let stem = blob.file_stem()?.to_str()?;
                sources.get(&stem.replacen('-', ":", 1)).cloned()
            };
            let component = named(&w.spec.component);
            let plugin = w.spec.policy.as_ref().and_then(|p| named(&p.plugin));
            // The decider is named by the plugin's file: the user's, not the blob's.
            if let (Some(path), Some(blob)) = (
                plugin.as_ref(),
                w.spec.policy.as_ref().and_then(|p| p.plugin.file_name()),
            ) && let Some(file) = path.file_name()
            {
                w.policy = w
                    .policy
                    .replace(&*blob.to_string_lossy(), &file.to_string_lossy());
            }
            if component.is_some() || plugin.is_some() {
                let spec = Arc::make_mut(&mut w.spec);
                if let Some(path) = component {
                    spec.component = path;
                }
                if let (Some(path), Some(policy)) = (plugin, spec.policy.as_mut()) {
                    policy.plugin = path;
                }
            }
        }
        status
    }

    /// Each stored blob's digest → the path the newest apply naming it gave.
    fn sources(&self) -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        if let Ok(desired) = self.store.desired() {
            for (_, record, _) in desired {
                for (path, digest) in record.files {
                    out.insert(digest, PathBuf::from(path));
                }
            }
        }
        out
    }

    /// Takes the write lock (waiting for the change in progress).
    pub async fn write(&self) -> Writing<'_> {
        Writing {
            desired: self,
            _lock: self.writes.lock().await,
        }
    }

    /// The revisions workload `name` has had, oldest first.
    pub async fn history(&self, name: &str) -> Result<Vec<RevisionInfo>, ChangeError> {
        let current = self.current_revision(name).await?;
        let entries = self
            .store
            .history(name)
            .map_err(|e| ChangeError::Internal(e.to_string()))?;
        Ok(entries
            .into_iter()
            .map(|e| RevisionInfo {
                current: e.revision == current,
                revision: e.revision,
                applied_at: humantime::format_rfc3339_seconds(
                    stored_time(e.applied_at).unwrap_or(std::time::UNIX_EPOCH),
                )
                .to_string(),
            })
            .collect())
    }

    /// The revision workload `name` runs; a job has none.
    async fn current_revision(&self, name: &str) -> Result<String, ChangeError> {
        match self.host.status().await.workload(name) {
            Some(w) if w.kind == WorkloadKind::Job => Err(ChangeError::Invalid(format!(
                "`{name}` is a job: jobs have no rollouts"
            ))),
            Some(w) => Ok(w.revision.clone()),
            None => Err(ChangeError::NotFound(format!(
                "workload `{name}` not found"
            ))),
        }
    }

    /// Names applied anew or deleted are no longer quarantined.
    fn release(&self, names: &[String]) {
        let mut quarantined = lock(&self.quarantined);
        for entry in quarantined.iter_mut() {
            entry.workloads.retain(|w| !names.contains(w));
        }
        quarantined.retain(|e| !e.workloads.is_empty());
    }

    /// [`Self::load`] for a fleet: each workload's revision hashes the paths as applied,
    /// not this node's blob paths, so that every node computes the same revision.
    #[cfg(feature = "fleet")]
    pub(crate) fn load_for_fleet(
        &self,
        documents: &[Document],
        files: &BTreeMap<String, String>,
    ) -> Result<Vec<Workload>, Rejected> {
        let mut workloads = self.load(documents, files)?;
        let applied: BTreeMap<PathBuf, PathBuf> = files
            .iter()
            .map(|(path, digest)| (self.store.blob_path(digest), PathBuf::from(path)))
            .collect();
        for w in &mut workloads {
            w.revision_paths = applied.clone();
        }
        Ok(workloads)
    }

    /// `rejected` with every stored blob's path replaced by the path the apply named it
    /// by: an error about a component names the user's file, not the state directory.
    pub(crate) fn named_as_applied(
        &self,
        files: &BTreeMap<String, String>,
        mut rejected: Rejected,
    ) -> Rejected {
        for d in &mut rejected.diagnostics {
            for (path, digest) in files {
                let blob = self.store.blob_path(digest).display().to_string();
                d.message = d.message.replace(&blob, path);
            }
        }
        rejected
    }

    /// Loads an apply's documents, finding the files they name among the stored blobs.
    pub(crate) fn load(
        &self,
        documents: &[Document],
        files: &BTreeMap<String, String>,
    ) -> Result<Vec<Workload>, Rejected> {
        let store = &self.store;
        let resolve = |joined: &Path| -> std::io::Result<PathBuf> {
            let key = joined.to_string_lossy();
            let digest = files.get(key.as_ref()).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "it was not uploaded with the apply",
                )
            })?;
            if !store.has_blob(digest) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "its bytes ({digest}) are not in the daemon's store; upload them first"
                    ),
                ));
            }
            Ok(store.blob_path(digest))
        };
        let mut workloads = Vec::new();
        let mut diagnostics = Vec::new();
        for doc in documents {
            match load_str_resolving(Path::new(&doc.source), &doc.text, &self.limits, &resolve) {
                Ok(found) => workloads.extend(found),
                Err(e) => diagnostics.extend(e.diagnostics),
            }
        }
        if diagnostics.is_empty() {
            Ok(workloads)
        } else {
            Err(Rejected { diagnostics })
        }
    }
}

/// Pins every directory `workloads` grant to the directory its path names: to the one
/// `recorded` at apply when there is a record of it (a restart), else to the one there
/// now. Returns what was pinned, for the apply's record.
fn pin_grants(
    workloads: &mut [Workload],
    recorded: Option<&BTreeMap<String, crate::opened_dir::DirIdentity>>,
) -> Result<BTreeMap<String, crate::opened_dir::DirIdentity>, Rejected> {
    let mut pinned = BTreeMap::new();
    let mut diagnostics = Vec::new();
    for w in workloads.iter_mut() {
        for grant in &mut w.spec.dirs {
            let key = grant.host.to_string_lossy().into_owned();
            let identity = match recorded.and_then(|r| r.get(&key)) {
                Some(identity) => *identity,
                None => match crate::opened_dir::OpenedDir::open(&grant.host) {
                    Ok(dir) => dir.identity(),
                    Err(e) => {
                        let origin = w.dir_origins.get(&grant.guest).or(w.origin.as_ref());
                        diagnostics.push(crate::Diagnostic::at(origin.cloned(), e.to_string()));
                        continue;
                    }
                },
            };
            grant.pinned = Some(identity);
            pinned.insert(key, identity);
        }
    }
    if diagnostics.is_empty() {
        Ok(pinned)
    } else {
        Err(Rejected { diagnostics })
    }
}

impl Writing<'_> {
    /// Loads, plans, stores (with each new revision in its workload's history) and runs
    /// `documents`, all or nothing; a dry run only plans.
    pub async fn apply(
        &self,
        documents: Vec<Document>,
        files: BTreeMap<String, String>,
        dry_run: bool,
    ) -> Result<ApplyResponse, ChangeError> {
        #[cfg(feature = "fleet")]
        if let Some(link) = self.desired.fleet.get() {
            return super::fleet::publish::apply(
                &link.fleet,
                self.desired,
                documents,
                files,
                dry_run,
            )
            .await;
        }
        self.apply_only(documents, files, dry_run, None).await
    }

    /// Runs `replicas` of fleet workload `name` on this host (the fleet agent's
    /// share), recorded in the local store as a cache of what it runs.
    #[cfg(feature = "fleet")]
    pub async fn apply_fleet(
        &self,
        name: &str,
        workload: &super::fleet::model::FleetWorkload,
        replicas: u32,
    ) -> Result<(), ChangeError> {
        let d = self.desired;
        let mut workloads = d
            .load_for_fleet(&workload.documents, &workload.files)
            .map_err(ChangeError::Rejected)?;
        workloads.retain(|w| w.name == name);
        if workloads.is_empty() {
            return Err(ChangeError::Invalid(format!(
                "the fleet's documents for `{name}` do not define it"
            )));
        }
        for w in &mut workloads {
            match w.spec.job.as_mut() {
                // This node's share of a fleet Job: that many runs at once.
                Some(job) => {
                    job.parallelism = replicas;
                    w.spec.replicas = replicas.min(job.completions);
                }
                None => w.spec.replicas = replicas,
            }
        }
        let dirs = pin_grants(&mut workloads, None).map_err(ChangeError::Rejected)?;
        let changes = d
            .host
            .plan(workloads.clone())
            .await
            .map_err(ChangeError::Rejected)?;
        let record = ApplyRecord {
            documents: workload.documents.clone(),
            files: workload.files.clone(),
            applied_at: now_secs(),
            dirs,
            replicas: [(name.to_string(), replicas)].into(),
        };
        // Jobs have no rollouts, so no history.
        let revisions: Vec<(String, String)> = changes
            .iter()
            .filter(|c| c.kind == WorkloadKind::Workload)
            .map(|c| (c.name.clone(), c.revision.clone()))
            .collect();
        tokio::task::block_in_place(|| {
            d.store
                .record_apply(&record, &[name.to_string()], &revisions)
        })
        .map_err(|e| ChangeError::Internal(e.to_string()))?;
        d.host
            .apply(workloads)
            .await
            .map(|_| ())
            .map_err(ChangeError::Rejected)
    }

    /// [`Self::apply`], keeping the one workload `only` of the documents (an undo).
    async fn apply_only(
        &self,
        documents: Vec<Document>,
        files: BTreeMap<String, String>,
        dry_run: bool,
        only: Option<&str>,
    ) -> Result<ApplyResponse, ChangeError> {
        let d = self.desired;
        let mut workloads = d.load(&documents, &files).map_err(ChangeError::Rejected)?;
        if let Some(only) = only {
            workloads.retain(|w| w.name == only);
        }
        let dirs = pin_grants(&mut workloads, None).map_err(ChangeError::Rejected)?;
        let names: Vec<String> = workloads.iter().map(|w| w.name.clone()).collect();
        // The plan checks everything `apply` checks, so a rejection happens here, before
        // anything is stored.
        let changes = d
            .host
            .plan(workloads.clone())
            .await
            .map_err(|r| ChangeError::Rejected(d.named_as_applied(&files, r)))?;
        if dry_run {
            return Ok(ApplyResponse {
                changes,
                dry_run: true,
            });
        }
        // Durable first: once stored, a crash before the host runs it still converges
        // (the restart replays the store); a crash before the commit loses an apply the
        // client was never told had succeeded.
        let record = ApplyRecord {
            documents,
            files,
            applied_at: now_secs(),
            dirs,
            replicas: BTreeMap::new(),
        };
        // Jobs have no rollouts, so no history.
        let revisions: Vec<(String, String)> = changes
            .iter()
            .filter(|c| c.kind == WorkloadKind::Workload)
            .map(|c| (c.name.clone(), c.revision.clone()))
            .collect();
        if let Err(e) =
            tokio::task::block_in_place(|| d.store.record_apply(&record, &names, &revisions))
        {
            return Err(ChangeError::Internal(format!(
                "the daemon cannot store the apply, so nothing was applied: {e}; make room on the state directory's file system and apply again"
            )));
        }
        // Planned a moment ago, so only a host shutting down is refused here.
        d.host
            .apply(workloads)
            .await
            .map_err(ChangeError::Rejected)?;
        d.release(&names);
        for c in &changes {
            tracing::info!(workload = %c.name, revision = %c.revision, "applied: {:?}", c.change);
        }
        Ok(ApplyResponse {
            changes,
            dry_run: false,
        })
    }

    /// Deletes a workload or job: forgotten durably first, so a crash after this does
    /// not bring it back, then stopped. False if it was neither stored nor running.
    pub async fn delete(&self, name: &str) -> Result<bool, ChangeError> {
        #[cfg(feature = "fleet")]
        if let Some(link) = self.desired.fleet.get() {
            return super::fleet::publish::delete(&link.fleet, name).await;
        }
        self.delete_local(name).await
    }

    /// [`Self::delete`] on this host only (in a fleet: the agent giving up its share).
    pub async fn delete_local(&self, name: &str) -> Result<bool, ChangeError> {
        let d = self.desired;
        let stored = tokio::task::block_in_place(|| d.store.delete(name)).map_err(|e| {
            ChangeError::Internal(format!("the daemon cannot store the delete, so nothing was deleted: {e}; make room on the state directory's file system and delete again"))
        })?;
        let running = d.host.delete(name).await.unwrap_or(false);
        if stored || running {
            tracing::info!(workload = name, "deleted");
        }
        d.logbook.forget_logs(name);
        d.release(&[name.to_string()]);
        if stored {
            let collected = tokio::task::block_in_place(|| d.store.collect_blobs());
            if let Err(e) = collected {
                tracing::warn!("cannot collect unused blobs: {e}");
            }
        }
        Ok(stored || running)
    }

    /// Goes back to an earlier revision of workload `name` (`to`, or the one before the
    /// current): the documents that defined it are applied again (a new rollout), and
    /// that becomes the newest history entry.
    pub async fn undo(&self, name: &str, to: Option<&str>) -> Result<ApplyResponse, ChangeError> {
        #[cfg(feature = "fleet")]
        if let Some(link) = self.desired.fleet.get() {
            return super::fleet::publish::undo(&link.fleet, name, to).await;
        }
        let d = self.desired;
        let current = d.current_revision(name).await?;
        let entries = d
            .store
            .history(name)
            .map_err(|e| ChangeError::Internal(e.to_string()))?;
        let target = match to {
            Some(wanted) => entries.iter().rev().find(|e| e.revision == wanted),
            None => entries.iter().rev().find(|e| e.revision != current),
        };
        let Some(target) = target else {
            let known: Vec<&str> = entries.iter().map(|e| e.revision.as_str()).collect();
            return Err(ChangeError::NotFound(match to {
                Some(r) => format!(
                    "`{name}` has no revision {r} in its history ({})",
                    known.join(", ")
                ),
                None => format!("`{name}` has no earlier revision to go back to"),
            }));
        };
        if target.revision == current {
            return Err(ChangeError::Conflict(format!(
                "`{name}` already runs revision {current}"
            )));
        }
        let record = match d.store.apply_record(target.apply) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(ChangeError::Internal(format!(
                    "the apply of revision {} is no longer stored",
                    target.revision
                )));
            }
            Err(e) => return Err(ChangeError::Internal(e.to_string())),
        };
        self.apply_only(record.documents, record.files, false, Some(name))
            .await
    }

    /// `rollout restart`: replaces every instance of workload `name` with a new one of
    /// its revision, and clears what the old ones spent (a failure verdict included).
    pub async fn restart(&self, name: &str) -> Result<(), ChangeError> {
        #[cfg(feature = "fleet")]
        if let Some(link) = self.desired.fleet.get() {
            return super::fleet::publish::restart(&link.fleet, name).await;
        }
        self.restart_local(name).await
    }

    /// [`Self::restart`] on this host only.
    pub async fn restart_local(&self, name: &str) -> Result<(), ChangeError> {
        let d = self.desired;
        d.current_revision(name).await?;
        d.host
            .restart(name)
            .await
            .map_err(|e| ChangeError::Invalid(e.to_string()))?;
        // The verdict is gone with the restart: a daemon restart must not bring it back.
        tokio::task::block_in_place(|| d.store.set_failures(&[(name, None)]))
            .map_err(|e| ChangeError::Internal(e.to_string()))
    }

    /// `scale`: keeps `replicas` instances of workload `name`, durably: its apply is
    /// recorded again with that count (as a rollback records its scale), then applied.
    pub async fn scale(&self, name: &str, replicas: u32) -> Result<(), ChangeError> {
        let d = self.desired;
        #[cfg(feature = "fleet")]
        if let Some(link) = d.fleet.get() {
            if replicas > d.limits.max_replicas {
                return Err(ChangeError::Invalid(format!(
                    "{replicas} replicas, over this host's limit of {}",
                    d.limits.max_replicas
                )));
            }
            return super::fleet::publish::scale(&link.fleet, name, replicas).await;
        }
        let revision = d.current_revision(name).await?;
        if replicas > d.limits.max_replicas {
            return Err(ChangeError::Invalid(format!(
                "{replicas} replicas, over this host's limit of {}",
                d.limits.max_replicas
            )));
        }
        let store = &d.store;
        let history = store
            .history(name)
            .map_err(|e| ChangeError::Internal(e.to_string()))?;
        let Some(entry) = history.iter().rev().find(|e| e.revision == revision) else {
            return Err(ChangeError::Internal(format!(
                "the store has no apply of `{name}`'s revision {revision}"
            )));
        };
        let old = match store.apply_record(entry.apply) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(ChangeError::Internal(format!(
                    "the apply of revision {revision} is no longer stored"
                )));
            }
            Err(e) => return Err(ChangeError::Internal(e.to_string())),
        };
        let mut workloads = d
            .load(&old.documents, &old.files)
            .map_err(ChangeError::Rejected)?;
        workloads.retain(|w| w.name == name);
        for w in &mut workloads {
            w.spec.replicas = replicas;
        }
        pin_grants(&mut workloads, Some(&old.dirs)).map_err(ChangeError::Rejected)?;
        let record = ApplyRecord {
            applied_at: now_secs(),
            replicas: [(name.to_string(), replicas)].into(),
            ..old
        };
        tokio::task::block_in_place(|| {
            store.record_apply(
                &record,
                &[name.to_string()],
                &[(name.to_string(), revision)],
            )
        })
        .map_err(|e| ChangeError::Internal(e.to_string()))?;
        d.host
            .apply(workloads)
            .await
            .map(|_| ())
            .map_err(ChangeError::Rejected)
    }

    /// Makes the store's failure verdicts match the host's: each failed workload's
    /// recorded, every other one's cleared (see `failures.rs`).
    pub async fn record_failures(&self) {
        let d = self.desired;
        let status = d.host.status().await;
        let stored = match tokio::task::block_in_place(|| d.store.failures()) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot read the recorded failures: {e}");
                return;
            }
        };
        let mut now: BTreeMap<String, crate::admission::RecordedFailure> = BTreeMap::new();
        for w in status
            .workloads
            .iter()
            .filter(|w| w.kind == WorkloadKind::Workload)
        {
            let failed = w
                .conditions
                .iter()
                .find(|c| c.kind == crate::status::ConditionType::Failed && c.status);
            if let Some(c) = failed {
                let record = crate::admission::RecordedFailure {
                    revision: w.revision.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    since: c.last_transition,
                };
                now.insert(w.name.clone(), record);
            }
        }
        let mut changes: Vec<(&str, Option<&crate::admission::RecordedFailure>)> = Vec::new();
        for (name, record) in &now {
            let same = stored
                .get(name)
                .is_some_and(|s| s.revision == record.revision && s.reason == record.reason);
            if !same {
                changes.push((name, Some(record)));
            }
        }
        for name in stored.keys().filter(|n| !now.contains_key(*n)) {
            changes.push((name, None));
        }
        if changes.is_empty() {
            return;
        }
        if let Err(e) = tokio::task::block_in_place(|| d.store.set_failures(&changes)) {
            tracing::warn!("cannot record failure verdicts: {e}");
        }
    }

    /// Records every rollback the controller made that the store does not know of yet
    /// (see `rollbacks.rs`).
    pub async fn record_rollbacks(&self) {
        let status = self.desired.host.status().await;
        for w in status
            .workloads
            .iter()
            .filter(|w| w.kind == WorkloadKind::Workload)
        {
            if let Err(e) = tokio::task::block_in_place(|| {
                self.record_rollback(&w.name, &w.revision, w.desired)
            }) {
                tracing::warn!(workload = %w.name, "cannot record the rollback: {e}");
            }
        }
    }

    /// Makes the apply of `revision` the current one of `name` again, at `replicas`,
    /// unless the store already names it.
    fn record_rollback(&self, name: &str, revision: &str, replicas: u32) -> Result<(), String> {
        let store = &self.desired.store;
        let history = store.history(name).map_err(|e| e.to_string())?;
        if history.last().is_none_or(|last| last.revision == revision) {
            return Ok(());
        }
        let Some(entry) = history.iter().rev().find(|e| e.revision == revision) else {
            return Ok(());
        };
        let Some(old) = store.apply_record(entry.apply).map_err(|e| e.to_string())? else {
            return Err(format!(
                "the apply of revision {revision} is no longer stored"
            ));
        };
        let record = ApplyRecord {
            applied_at: now_secs(),
            replicas: [(name.to_string(), replicas)].into(),
            ..old
        };
        store
            .record_apply(
                &record,
                &[name.to_string()],
                &[(name.to_string(), revision.to_string())],
            )
            .map_err(|e| e.to_string())?;
        tracing::info!(
            workload = name,
            "the rollback to revision {revision} is recorded"
        );
        Ok(())
    }

    /// Replays the stored desired state, apply by apply. An apply that no longer loads
    /// or is rejected (a blob deleted by hand, a granted directory replaced) is kept but
    /// not run: it is quarantined, and the rest still runs. If the host's controller
    /// dies while an apply is replayed, that apply is quarantined durably before the
    /// error is returned, so the next start runs everything else.
    pub async fn restore(&self) -> anyhow::Result<()> {
        let d = self.desired;
        let store = &d.store;
        let durable = store.quarantined().unwrap_or_default();
        let failures = store.failures().unwrap_or_else(|e| {
            tracing::warn!("cannot read the recorded failures, so none is restored: {e}");
            Default::default()
        });
        let mut interrupted = store.replaying().ok().flatten();
        let desired = store
            .desired()
            .context("cannot read the stored desired state")?;
        let mut quarantined = Vec::new();
        for (id, record, names) in desired {
            if let Some(reason) = durable.get(&id) {
                quarantined.push(self.quarantine(id, &names, reason.clone()));
                continue;
            }
            if interrupted == Some(id) {
                interrupted = None;
                let deaths = store.note_replay_death().unwrap_or(u64::MAX);
                if deaths >= REPLAY_DEATHS_BEFORE_QUARANTINE {
                    let reason = format!(
                        "the daemon died {deaths} times in a row while replaying this apply"
                    );
                    store.quarantine(id, &reason)?;
                    quarantined.push(self.quarantine(id, &names, reason));
                    continue;
                }
            }
            let mut workloads = match d.load(&record.documents, &record.files) {
                Ok(w) => w,
                Err(e) => {
                    quarantined.push(self.quarantine(
                        id,
                        &names,
                        format!("it no longer loads: {e}"),
                    ));
                    continue;
                }
            };
            for w in workloads.iter_mut().filter(|w| w.spec.job.is_none()) {
                if let Some(replicas) = record.replicas.get(&w.name) {
                    w.spec.replicas = *replicas;
                }
            }
            // Only the workloads this apply still defines (a later apply may own others).
            workloads.retain(|w| names.contains(&w.name));
            if let Err(e) = pin_grants(&mut workloads, Some(&record.dirs)) {
                quarantined.push(self.quarantine(id, &names, format!("it was rejected: {e}")));
                continue;
            }
            store.set_replaying(Some(id))?;
            let applied = d.host.apply_restoring(workloads, &failures).await;
            // A round trip: the controller has acted on the apply without dying.
            let _ = d.host.ping().await;
            if let Some(why) = d.host.failure() {
                let reason = format!("the host's controller died while replaying it: {why}");
                store.quarantine(id, &reason)?;
                anyhow::bail!(
                    "the host's controller died while replaying stored apply {id} ({}): {why}; it is quarantined, so the next start runs the rest",
                    names.join(", ")
                );
            }
            if let Err(e) = applied {
                quarantined.push(self.quarantine(id, &names, format!("it was rejected: {e}")));
            }
        }
        store.set_replaying(None)?;
        *lock(&d.quarantined) = quarantined;
        Ok(())
    }

    /// Says (in the log and as each workload's event) that stored apply `id` is not run.
    fn quarantine(&self, id: u64, names: &[String], reason: String) -> QuarantinedApply {
        let objects: Vec<String> = names.iter().map(|n| format!("workload/{n}")).collect();
        let entry = QuarantinedApply {
            apply: id,
            workloads: names.to_vec(),
            reason,
            help: format!(
                "fix the manifest and apply it again, or remove it with `setpoint delete {}`",
                objects.join(" ")
            ),
        };
        tracing::error!(
            "stored apply {id} ({}) is not run: {}; {}",
            names.join(", "),
            entry.reason,
            entry.help
        );
        for name in names {
            self.desired.logbook.record(&crate::Event {
                time: std::time::SystemTime::now(),
                kind: crate::EventType::Warning,
                workload: name.clone(),
                instance: None,
                reason: crate::status::reason::QUARANTINED.into(),
                message: format!("{} ({})", entry.reason, entry.help),
            });
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::stored_time;

    #[test]
    fn stored_times_past_what_rfc3339_writes_are_none() {
        assert_eq!(stored_time(0), Some(std::time::UNIX_EPOCH));
        let late = stored_time(253_402_300_799).expect("the last second of 9999");
        assert!(
            !humantime::format_rfc3339_seconds(late)
                .to_string()
                .is_empty()
        );
        assert_eq!(stored_time(253_402_300_800), None);
        assert_eq!(stored_time(u64::MAX), None);
    }
}
