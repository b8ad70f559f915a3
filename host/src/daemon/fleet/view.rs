//! The fleet's status: every node answers status requests on its own subject with what
//! its local host runs (each instance naming the node), and the node that serves an API
//! request gathers the answers of all live nodes and merges them per workload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;

use super::agent::{SharedMirror, lock};
use super::{Fleet, status_subject};
use crate::daemon::desired::Desired;
use crate::daemon::wire::NodeInfo;
use crate::status::{HostStatus, Phase, WorkloadStatus};

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
                started: humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_millis(record.started_ms),
                )
                .to_string(),
                version: record.version.clone(),
                this: name == &fleet.node,
            }
        })
        .collect()
}

/// The fleet's status: each live node's answer (this node's own directly), merged per
/// fleet workload; nodes that did not answer in time are named in the log.
pub async fn gather(fleet: &Fleet, desired: &Desired, mirror: &SharedMirror) -> HostStatus {
    let (others, workloads) = {
        let m = lock(mirror);
        let others: Vec<String> = m
            .nodes
            .keys()
            .filter(|n| **n != fleet.node)
            .cloned()
            .collect();
        let workloads: BTreeMap<String, (u32, u64)> = m
            .workloads
            .iter()
            .map(|(k, (w, _))| (k.clone(), (w.replicas, w.created)))
            .collect();
        (others, workloads)
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
            if !workloads.contains_key(&w.name) {
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
    for (name, w) in &mut merged {
        if let Some((replicas, created)) = workloads.get(name) {
            w.desired = *replicas;
            if *created > 0 {
                w.created = Some(std::time::UNIX_EPOCH + Duration::from_secs(*created));
            }
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
