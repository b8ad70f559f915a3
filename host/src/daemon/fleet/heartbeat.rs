//! This node's heartbeat: its key in the nodes bucket, renewed six times per TTL by
//! compare-and-set on the revision it wrote last. The engine deletes the key (with a
//! marker every watcher sees) one TTL after the last renewal; that is how the other
//! nodes learn that this one is lost.
//!
//! Self-fencing: when no renewal has been acknowledged for two thirds of the TTL, this
//! node says it is fenced (the agent then stops its movable replicas), a third of a TTL
//! before the others may take them over. The first acknowledged renewal ends it.
//!
//! A renewal refused because another run of the daemon wrote the key (another
//! incarnation) means two daemons share one node name: this one fences itself and its
//! heartbeat ends with an error, which ends the daemon.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;

use super::model::{self, NodeRecord};
use super::{Fleet, now_ms};

/// Longest the heartbeat goes on after a stop request while the agent leaves.
const LEAVE_WITHIN: Duration = Duration::from_secs(70);

/// Renewals per TTL.
const RENEWALS_PER_TTL: u32 = 6;

/// How often the heartbeat is renewed, and after how long without an acknowledged
/// renewal this node fences itself.
pub fn timing(ttl: Duration) -> (Duration, Duration) {
    (ttl / RENEWALS_PER_TTL, ttl * 2 / 3)
}

/// Renews this node's heartbeat until `stop`, reporting its fencing on `fenced`.
/// `instances` is the live instance count the heartbeat carries. On a clean stop the
/// key is deleted, so the others take this node's replicas over at once.
pub async fn run(
    fleet: Arc<Fleet>,
    instances: Arc<AtomicU32>,
    fenced: tokio::sync::watch::Sender<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    left: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (every, fence_after) = timing(fleet.heartbeat_ttl);
    let key = model::key_of(&fleet.node).to_string();
    let mut last_revision: Option<u64> = None;
    let mut last_ack = Instant::now();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After a stop request, the heartbeat goes on until the agent has left (its
    // replicas stopped, its claims released), within a bound.
    let mut leaving_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed(), if leaving_since.is_none() => {
                leaving_since = Some(Instant::now());
            }
        }
        if leaving_since.is_some_and(|t| *left.borrow() || t.elapsed() > LEAVE_WITHIN) {
            break;
        }
        let record = NodeRecord {
            labels: fleet.labels.clone(),
            incarnation: fleet.incarnation.clone(),
            started_ms: fleet.started_ms,
            heartbeat_ms: now_ms(),
            instances: instances.load(Ordering::Relaxed),
            fenced: *fenced.borrow(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let value: bytes::Bytes = serde_json::to_vec(&record)?.into();
        let write = async {
            match last_revision {
                Some(revision) => fleet
                    .nodes
                    .update(&key, value, revision)
                    .await
                    .map_err(|e| {
                        if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                            Renewal::Lost
                        } else {
                            Renewal::Failed(e.to_string())
                        }
                    }),
                None => fleet
                    .nodes
                    .put(&key, value)
                    .await
                    .map_err(|e| Renewal::Failed(e.to_string())),
            }
        };
        match tokio::time::timeout(every, write).await {
            Ok(Ok(revision)) => {
                last_revision = Some(revision);
                last_ack = Instant::now();
                if *fenced.borrow() {
                    tracing::info!(node = %fleet.node, "the heartbeat is renewed again: no longer fenced");
                    let _ = fenced.send(false);
                }
            }
            Ok(Err(Renewal::Lost)) => {
                // Someone else wrote the key: it expired (we were cut off), or another
                // daemon uses this name.
                match fleet.nodes.entry(&key).await {
                    Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                        if let Ok(other) = model::parse::<NodeRecord>(&entry.value)
                            && other.incarnation != fleet.incarnation
                        {
                            let _ = fenced.send(true);
                            anyhow::bail!(
                                "another daemon joined the fleet as node `{}` (started at {} ms); give each daemon its own --node",
                                fleet.node,
                                other.started_ms
                            );
                        }
                        last_revision = Some(entry.revision);
                    }
                    // Expired: written anew next time.
                    Ok(_) => last_revision = None,
                    Err(e) => tracing::debug!("cannot read this node's heartbeat: {e}"),
                }
            }
            Ok(Err(Renewal::Failed(why))) => {
                tracing::debug!(node = %fleet.node, "heartbeat not renewed: {why}");
            }
            Err(_) => tracing::debug!(node = %fleet.node, "heartbeat renewal timed out"),
        }
        if last_ack.elapsed() > fence_after && !*fenced.borrow() {
            tracing::warn!(
                node = %fleet.node,
                "no heartbeat renewed for {:?}: fenced, so this node's movable replicas stop before others take them over",
                last_ack.elapsed()
            );
            let _ = fenced.send(true);
        }
    }
    // Leaving cleanly: the others need not wait for the key to expire.
    if let Some(revision) = last_revision {
        let _ = tokio::time::timeout(
            every,
            fleet.nodes.purge_expect_revision(&key, Some(revision)),
        )
        .await;
    }
    Ok(())
}

enum Renewal {
    /// The key's revision is not the one this node wrote last.
    Lost,
    /// The engine did not take it.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_fences_itself_a_third_of_a_ttl_before_it_is_lost() {
        let (every, fence) = timing(Duration::from_millis(1500));
        assert_eq!(every, Duration::from_millis(250));
        assert_eq!(fence, Duration::from_millis(1000));
        assert!(fence + every < Duration::from_millis(1500));
    }
}
