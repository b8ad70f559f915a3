//! The API's changes in a fleet: an apply is checked here as on a single host (loaded,
//! compiled and linked, every problem located), then its components go to the fleet's
//! object store and each workload's desired state to the desired bucket, by
//! compare-and-set on the revision read a moment before. This node's agent runs its
//! share like every other node's.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;

use super::Fleet;
use super::model::{self, FleetWorkload};
use crate::daemon::desired::{ChangeError, Desired};
use crate::daemon::store::Document;
use crate::daemon::wire::ApplyResponse;
use crate::host::{Change, PlannedChange};
use crate::status::WorkloadKind;

fn engine(e: impl std::fmt::Display) -> ChangeError {
    ChangeError::Internal(format!(
        "the fleet's engine refused the change, so nothing more was changed: {e}"
    ))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The current value of `name` in the desired bucket, with its revision.
async fn current(fleet: &Fleet, name: &str) -> Result<Option<(FleetWorkload, u64)>, ChangeError> {
    match fleet.desired.entry(model::key_of(name)).await {
        Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
            let w = model::parse::<FleetWorkload>(&entry.value).map_err(|e| {
                ChangeError::Internal(format!("the fleet's record of `{name}` is damaged: {e}"))
            })?;
            Ok(Some((w, entry.revision)))
        }
        Ok(_) => Ok(None),
        Err(e) => Err(engine(e)),
    }
}

/// Writes `value` for `name` over revision `expect` (created when `None`).
async fn write(
    fleet: &Fleet,
    name: &str,
    value: &FleetWorkload,
    expect: Option<u64>,
) -> Result<(), ChangeError> {
    let bytes: bytes::Bytes = serde_json::to_vec(value)
        .map_err(|e| ChangeError::Internal(e.to_string()))?
        .into();
    match super::compare_and_set(&fleet.desired, model::key_of(name), bytes, expect).await {
        Ok(_) => Ok(()),
        Err(super::CasError::Conflict) => Err(ChangeError::Conflict(format!(
            "`{name}` was changed through another node at the same moment; nothing of it was changed here: apply again"
        ))),
        Err(super::CasError::Failed(why)) => Err(engine(why)),
    }
}

/// Uploads the blob `digest` from this node's store to the fleet, unless it is there.
async fn upload(fleet: &Fleet, desired: &Desired, digest: &str) -> Result<(), ChangeError> {
    if fleet.components.info(digest).await.is_ok() {
        return Ok(());
    }
    let path = desired.store().blob_path(digest);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ChangeError::Internal(format!("reading {}: {e}", path.display())))?;
    fleet
        .components
        .put(digest, &mut file)
        .await
        .map(|_| ())
        .map_err(engine)
}

/// The manifest of workload `w` alone, as the loader reads it back to the same spec
/// (with the paths as applied), and the files it names: what its fleet record keeps,
/// so that an apply of many workloads in one file does not copy the file into each.
fn own_document(
    w: &crate::manifest::Workload,
    files: &BTreeMap<String, String>,
) -> Result<(Document, BTreeMap<String, String>), ChangeError> {
    let mut spec = w.spec.clone();
    let applied = |path: &std::path::PathBuf| w.revision_paths.get(path).cloned();
    if let Some(path) = applied(&spec.component) {
        spec.component = path;
    }
    if let Some(policy) = spec.policy.as_mut()
        && let Some(path) = applied(&policy.plugin)
    {
        policy.plugin = path;
    }
    let mut named = BTreeMap::new();
    for path in std::iter::once(&spec.component).chain(spec.policy.as_ref().map(|p| &p.plugin)) {
        let key = path.to_string_lossy();
        if let Some(digest) = files.get(key.as_ref()) {
            named.insert(key.into_owned(), digest.clone());
        }
    }
    let doc = crate::manifest::render::document(&w.name, &w.labels, &spec);
    let text = serde_saphyr::to_string(&doc)
        .map_err(|e| ChangeError::Internal(format!("rendering `{}`: {e}", w.name)))?;
    let source = w.origin.as_ref().map_or_else(
        || format!("{}.yaml", w.name),
        |o| o.file.display().to_string(),
    );
    Ok((Document { source, text }, named))
}

/// An apply to the fleet: checked whole first, then written workload by workload.
pub async fn apply(
    fleet: &Fleet,
    desired: &Desired,
    documents: Vec<Document>,
    files: BTreeMap<String, String>,
    dry_run: bool,
) -> Result<ApplyResponse, ChangeError> {
    let workloads = desired
        .load_for_fleet(&documents, &files)
        .map_err(ChangeError::Rejected)?;
    // Compiled and linked here, so that a component no node could run is refused
    // with located errors before anything is written.
    let planned = desired
        .host()
        .plan(workloads.clone())
        .await
        .map_err(|r| ChangeError::Rejected(desired.named_as_applied(&files, r)))?;
    let mut changes = Vec::new();
    let mut writes = Vec::new();
    for w in &workloads {
        let revision = planned
            .iter()
            .find(|c| c.name == w.name)
            .map(|c| c.revision.clone())
            .unwrap_or_default();
        let before = current(fleet, &w.name).await?;
        let kind = if w.spec.job.is_some() {
            WorkloadKind::Job
        } else {
            WorkloadKind::Workload
        };
        if let Some((old, _)) = &before {
            let was_job = old.job.is_some();
            if was_job != w.spec.job.is_some() {
                return Err(ChangeError::Conflict(format!(
                    "`{}` is a {} in the fleet; delete it before applying a {kind} of that name",
                    w.name,
                    if was_job { "Job" } else { "Workload" }
                )));
            }
            if was_job && old.revision != revision {
                return Err(ChangeError::Conflict(format!(
                    "Job `{}` cannot change once applied (revision {} → {revision}); delete it and apply it again",
                    w.name, old.revision
                )));
            }
        }
        let change = match &before {
            None => Change::Create,
            Some((old, _)) if old.revision != revision => Change::Update {
                from_revision: old.revision.clone(),
            },
            Some((old, _)) if old.replicas != w.spec.replicas => Change::Scale {
                from_replicas: old.replicas,
            },
            Some((old, _)) if old.placement != w.spec.placement => Change::Update {
                from_revision: old.revision.clone(),
            },
            Some(_) => Change::Unchanged,
        };
        changes.push(PlannedChange {
            name: w.name.clone(),
            kind,
            revision: revision.clone(),
            replicas: w.spec.replicas,
            change: change.clone(),
        });
        if change == Change::Unchanged {
            continue;
        }
        let (document, named) = own_document(w, &files)?;
        let value = FleetWorkload {
            documents: vec![document],
            files: named,
            replicas: w.spec.replicas,
            placement: w.spec.placement.clone(),
            revision,
            restarts: before.as_ref().map_or(0, |(old, _)| old.restarts),
            created: before
                .as_ref()
                .map_or_else(now_secs, |(old, _)| old.created),
            job: w.spec.job.as_ref().map(|j| model::JobTarget {
                completions: j.completions,
                backoff_limit: j.backoff_limit,
            }),
        };
        writes.push((w.name.clone(), value, before.map(|(_, rev)| rev)));
    }
    if dry_run {
        return Ok(ApplyResponse {
            changes,
            dry_run: true,
        });
    }
    for digest in files.values() {
        upload(fleet, desired, digest).await?;
    }
    for (name, value, expect) in &writes {
        write(fleet, name, value, *expect).await?;
    }
    Ok(ApplyResponse {
        changes,
        dry_run: false,
    })
}

/// Deletes `name` from the fleet's desired state; every node stops its share. False if
/// the fleet had no such workload.
pub async fn delete(fleet: &Fleet, name: &str) -> Result<bool, ChangeError> {
    if current(fleet, name).await?.is_none() {
        return Ok(false);
    }
    fleet
        .desired
        .delete(model::key_of(name))
        .await
        .map_err(engine)?;
    // A Job applied again after a delete starts counting from zero.
    let _ = fleet.jobs.purge(model::key_of(name)).await;
    Ok(true)
}

/// Changes a fleet workload's record by `change`, by compare-and-set.
async fn amend(
    fleet: &Fleet,
    name: &str,
    change: impl FnOnce(&mut FleetWorkload),
) -> Result<(), ChangeError> {
    let Some((mut value, revision)) = current(fleet, name).await? else {
        return Err(ChangeError::NotFound(format!(
            "workload `{name}` not found in the fleet"
        )));
    };
    if value.job.is_some() {
        return Err(ChangeError::Invalid(format!(
            "`{name}` is a job: jobs have no rollouts and no scale"
        )));
    }
    change(&mut value);
    write(fleet, name, &value, Some(revision)).await
}

/// `scale` across the fleet.
pub async fn scale(fleet: &Fleet, name: &str, replicas: u32) -> Result<(), ChangeError> {
    amend(fleet, name, |w| w.replicas = replicas).await
}

/// `rollout restart` across the fleet: every node replaces its instances.
pub async fn restart(fleet: &Fleet, name: &str) -> Result<(), ChangeError> {
    amend(fleet, name, |w| w.restarts = w.restarts.saturating_add(1)).await
}

/// `rollout undo` across the fleet: the newest earlier value of `name` in the desired
/// bucket's history (or the one of revision `to`) is written again.
pub async fn undo(
    fleet: &Fleet,
    name: &str,
    to: Option<&str>,
) -> Result<ApplyResponse, ChangeError> {
    use futures_util::StreamExt as _;
    let Some((now, revision)) = current(fleet, name).await? else {
        return Err(ChangeError::NotFound(format!(
            "workload `{name}` not found in the fleet"
        )));
    };
    if now.job.is_some() {
        return Err(ChangeError::Invalid(format!(
            "`{name}` is a job: jobs have no rollouts"
        )));
    }
    let mut history = fleet
        .desired
        .history(model::key_of(name))
        .await
        .map_err(engine)?;
    let mut earlier = Vec::new();
    while let Some(entry) = history.next().await {
        let entry = entry.map_err(engine)?;
        if entry.operation != kv::Operation::Put {
            // A delete ends what came before it.
            earlier.clear();
            continue;
        }
        if let Ok(w) = model::parse::<FleetWorkload>(&entry.value) {
            earlier.push(w);
        }
    }
    let target = match to {
        Some(wanted) => earlier.iter().rev().find(|w| w.revision == wanted),
        None => earlier.iter().rev().find(|w| w.revision != now.revision),
    };
    let Some(target) = target else {
        return Err(ChangeError::NotFound(match to {
            Some(r) => format!("`{name}` has no revision {r} in the fleet's history"),
            None => format!("`{name}` has no earlier revision to go back to"),
        }));
    };
    if target.revision == now.revision {
        return Err(ChangeError::Conflict(format!(
            "`{name}` already runs revision {}",
            now.revision
        )));
    }
    let value = FleetWorkload {
        replicas: now.replicas,
        restarts: now.restarts,
        created: now.created,
        ..target.clone()
    };
    write(fleet, name, &value, Some(revision)).await?;
    Ok(ApplyResponse {
        changes: vec![PlannedChange {
            name: name.to_string(),
            kind: WorkloadKind::Workload,
            revision: value.revision.clone(),
            replicas: value.replicas,
            change: Change::Update {
                from_revision: now.revision,
            },
        }],
        dry_run: false,
    })
}
