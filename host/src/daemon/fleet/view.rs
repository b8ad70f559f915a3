//! The fleet's status: every node answers status requests on its own subject with what
//! its local host runs (each instance naming the node), and the node that serves an API
//! request gathers the answers of all live nodes and merges them per workload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;

use super::agent::{SharedMirror, lock};
use super::model::{FleetJob, FleetWorkload, JobTarget};
use super::{Fleet, status_subject};
use crate::daemon::desired::{Desired, stored_time};
use crate::daemon::wire::NodeInfo;
use crate::status::{Condition, ConditionType, HostStatus, JobStatus, Phase, WorkloadStatus};

/// How long a node's status answer may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// Events kept per merged workload.
const MERGED_EVENTS: usize = 20;

/// Answers status requests for this node until `stop`.
pub async fn answer(
    fleet: Arc<Fleet>,
    desired: Arc<Desired>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut requests = fleet.client.subscribe(status_subject(&fleet.node)).await?;
    let max_payload = fleet.client.server_info().max_payload;
    loop {
        let request = tokio::select! {
            r = requests.next() => r,
            _ = stop.changed() => break,
        };
        let Some(request) = request else { break };
        let Some(reply) = request.reply else { continue };
        let mut status = desired.status().await;
        let mut body = serde_json::to_vec(&status)?;
        if body.len() > max_payload {
            // Too large for one message: without events and forensics.
            for w in &mut status.workloads {
                w.events.clear();
                w.last_termination = None;
            }
            body = serde_json::to_vec(&status)?;
        }
        if body.len() > max_payload {
            body = b"{\"workloads\":[]}".to_vec();
            tracing::warn!(
                "this node's status is over the engine's {max_payload}-byte message limit; it answers with none"
            );
        }
        let _ = fleet.client.publish(reply, body.into()).await;
    }
    Ok(())
}

/// The live nodes, as `get nodes` shows them.
pub fn nodes(fleet: &Fleet, mirror: &SharedMirror, fenced_here: bool) -> Vec<NodeInfo> {
    let mirror = lock(mirror);
    mirror
        .nodes
        .iter()
        .map(|(name, (record, seen))| {
            let fenced = record.fenced || (name == &fleet.node && fenced_here);
            NodeInfo {
                name: name.clone(),
                labels: record.labels.clone(),
                ready: !fenced,
                fenced,
                instances: record.instances,
                last_heartbeat_ms: u64::try_from(seen.elapsed().as_millis()).unwrap_or(u64::MAX),
                // A damaged or hostile time is no time, never a panic.
                started: stored_time(record.started_ms / 1000)
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                    .unwrap_or_default(),
                version: record.version.clone(),
                this: name == &fleet.node,
            }
        })
        .collect()
}

/// The fleet's status: each live node's answer (this node's own directly), merged per
/// fleet workload; nodes that did not answer in time are named in the log.
pub async fn gather(fleet: &Fleet, desired: &Desired, mirror: &SharedMirror) -> HostStatus {
    let (others, records, jobs) = {
        let m = lock(mirror);
        let others: Vec<String> = m
            .nodes
            .keys()
            .filter(|n| **n != fleet.node)
            .cloned()
            .collect();
        let records: BTreeMap<String, FleetWorkload> = m
            .workloads
            .iter()
            .map(|(k, (w, _))| (k.clone(), w.clone()))
            .collect();
        (others, records, m.jobs.clone())
    };
    let asks = others.iter().map(|node| async move {
        let asked = tokio::time::timeout(
            ANSWER_WITHIN,
            fleet
                .client
                .request(status_subject(node), bytes::Bytes::new()),
        )
        .await;
        match asked {
            Ok(Ok(message)) => match serde_json::from_slice::<HostStatus>(&message.payload) {
                Ok(status) => Some(status),
                Err(e) => {
                    tracing::warn!("node {node}'s status does not parse: {e}");
                    None
                }
            },
            _ => {
                tracing::warn!("node {node} did not answer a status request");
                None
            }
        }
    });
    let mut statuses = futures_util::future::join_all(asks).await;
    statuses.push(Some(desired.status().await));
    let mut merged: BTreeMap<String, WorkloadStatus> = BTreeMap::new();
    for status in statuses.into_iter().flatten() {
        for w in status.workloads {
            if !records.contains_key(&w.name) {
                continue;
            }
            match merged.get_mut(&w.name) {
                None => {
                    merged.insert(w.name.clone(), w);
                }
                Some(into) => combine(into, w),
            }
        }
    }
    // What no node runs (a finished Job, a workload no node may run) is shown from its
    // record.
    for (name, record) in &records {
        if !merged.contains_key(name)
            && let Some(w) = from_record(fleet, desired, name, record).await
        {
            merged.insert(name.clone(), w);
        }
    }
    for (name, w) in &mut merged {
        let Some(record) = records.get(name) else {
            continue;
        };
        w.desired = record.replicas;
        if record.created > 0 {
            w.created = stored_time(record.created).or(w.created);
        }
        if let Some(target) = record.job {
            let progress = jobs.get(name).filter(|j| j.revision == record.revision);
            fleet_job_status(w, target, record, progress);
            continue;
        }
        w.instances
            .sort_by(|a, b| (&a.node, a.slot).cmp(&(&b.node, b.slot)));
        if w.phase != Phase::Failed {
            w.phase = if w.ready >= w.desired {
                Phase::Running
            } else if w.restarts > 0 {
                Phase::Degraded
            } else {
                Phase::Pending
            };
        }
    }
    HostStatus {
        workloads: merged.into_values().collect(),
        quarantined: Vec::new(),
    }
}

/// Adds another node's share of a workload to what is merged so far.
fn combine(into: &mut WorkloadStatus, other: WorkloadStatus) {
    into.ready = into.ready.saturating_add(other.ready);
    into.running = into.running.saturating_add(other.running);
    into.restarts = into.restarts.saturating_add(other.restarts);
    if other.phase == Phase::Failed {
        into.phase = Phase::Failed;
        into.conditions = other.conditions;
    }
    if other.revision != into.revision && into.rollout.is_none() {
        into.rollout = other.rollout;
    }
    into.instances.extend(other.instances);
    into.events.extend(other.events);
    into.events.sort_by_key(|e| e.time);
    let extra = into.events.len().saturating_sub(MERGED_EVENTS);
    into.events.drain(..extra);
    let newer = match (&into.last_termination, &other.last_termination) {
        (None, Some(_)) => true,
        (Some(a), Some(b)) => b.at > a.at,
        _ => false,
    };
    if newer {
        into.last_termination = other.last_termination;
    }
}

/// A fleet Job as the fleet counts it: its progress from the jobs bucket (each node's
/// own count is only its share), its phase from how it finished.
fn fleet_job_status(
    w: &mut WorkloadStatus,
    target: JobTarget,
    record: &FleetWorkload,
    progress: Option<&FleetJob>,
) {
    let at = |secs: u64| stored_time(secs).unwrap_or(std::time::UNIX_EPOCH);
    let active = w.running;
    let done = progress.and_then(|p| p.outcome.as_deref());
    w.job = Some(JobStatus {
        completions: target.completions,
        parallelism: record.replicas,
        active,
        succeeded: progress.map_or(0, |p| p.succeeded),
        failed: progress.map_or(0, |p| p.failed),
        ignored: progress.map_or(0, |p| p.ignored),
        start_time: w
            .job
            .as_ref()
            .map_or_else(|| at(record.created), |j| j.start_time),
        completion_time: progress
            .filter(|p| p.outcome.is_some())
            .map(|p| at(p.finished_at)),
    });
    w.conditions
        .retain(|c| c.kind != ConditionType::Complete && c.kind != ConditionType::Failed);
    if let (Some(outcome), Some(p)) = (done, progress) {
        let complete = outcome == "Complete";
        w.phase = if complete {
            Phase::Succeeded
        } else {
            Phase::Failed
        };
        w.conditions.push(Condition {
            kind: if complete {
                ConditionType::Complete
            } else {
                ConditionType::Failed
            },
            status: true,
            reason: if complete {
                "Completed"
            } else {
                "BackoffLimitExceeded"
            }
            .into(),
            message: p.message.clone(),
            last_transition: at(p.finished_at),
        });
    } else {
        w.phase = if active > 0 {
            Phase::Running
        } else {
            Phase::Pending
        };
    }
}

/// The status of a fleet workload that no node runs, from its record (its components
/// fetched if this node has not got them).
async fn from_record(
    fleet: &Fleet,
    desired: &Desired,
    name: &str,
    record: &FleetWorkload,
) -> Option<WorkloadStatus> {
    for digest in record.files.values() {
        if let Err(e) = super::agent::fetch_blob(fleet, desired, digest).await {
            tracing::warn!(workload = name, "cannot show it: {e}");
            return None;
        }
    }
    let loaded = desired
        .load_for_fleet(&record.documents, &record.files)
        .ok()?;
    let w = loaded.into_iter().find(|w| w.name == name)?;
    let mut spec = w.spec.clone();
    if let Some(path) = w.revision_paths.get(&spec.component) {
        spec.component = path.clone();
    }
    Some(WorkloadStatus {
        name: name.to_string(),
        labels: w.labels.clone(),
        kind: if record.job.is_some() {
            crate::status::WorkloadKind::Job
        } else {
            crate::status::WorkloadKind::Workload
        },
        spec: Arc::new(spec),
        desired: record.replicas,
        ready: 0,
        spares: 0,
        running: 0,
        restarts: 0,
        phase: Phase::Pending,
        revision: record.revision.clone(),
        rollout: None,
        policy: String::new(),
        conditions: Vec::new(),
        instances: Vec::new(),
        job: None,
        created: None,
        http: None,
        last_termination: None,
        events: Vec::new(),
    })
}
