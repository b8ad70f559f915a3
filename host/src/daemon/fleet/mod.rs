//! The fleet: several daemons sharing one desired state through NATS JetStream
//! (`setpoint daemon --fleet nats://...`). Agreement is the engine's: key-value buckets
//! with compare-and-set and expiring keys, and an object store of components; nothing
//! here votes or elects.
//!
//! - `model.rs`: the values kept in the engine (heartbeats, desired workloads, claims).
//! - `placement.rs`: which slots this node claims or gives up (plain functions).
//! - `heartbeat.rs`: this node's heartbeat, and the self-fencing when it cannot renew it.
//! - `agent.rs`: follows the buckets, carries out placement by compare-and-set, and
//!   keeps the local host running exactly the slots this node claimed.
//! - `ledger.rs`: Jobs' runs counted once, fleet-wide.
//! - `publish.rs`: the API's changes (apply, delete, scale, restart) written to the
//!   engine instead of the local host.
//! - `view.rs`: the fleet's status, gathered from every node by request and reply.

pub mod agent;
pub mod heartbeat;
pub mod ledger;
pub mod model;
pub mod placement;
pub mod publish;
pub mod view;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv, object_store};

/// How a daemon joins a fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The engine's URL(s), comma-separated: `nats://127.0.0.1:4222`.
    pub url: String,
    /// This node's name (a DNS label, unique in the fleet).
    pub node: String,
    /// This node's labels, matched by `placement.nodeSelector`.
    pub labels: BTreeMap<String, String>,
    /// How long a node's heartbeat lives unrenewed: a node silent this long is lost
    /// and its replicas run elsewhere. Set by the first node that creates the bucket.
    pub heartbeat_ttl: Duration,
    /// How long joining may take before the daemon gives up.
    pub connect_timeout: Duration,
    /// Copies of each bucket the engine keeps (3 on a 3-node cluster).
    pub replicas: usize,
}

impl FleetConfig {
    /// The defaults for joining `url` as `node`.
    pub fn new(url: impl Into<String>, node: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            node: node.into(),
            labels: BTreeMap::new(),
            heartbeat_ttl: Duration::from_millis(1500),
            connect_timeout: Duration::from_secs(5),
            replicas: 1,
        }
    }
}

/// The smallest heartbeat TTL: the engine's expiry timers are precise, but a node must
/// be able to renew several times within one.
pub const MIN_HEARTBEAT_TTL: Duration = Duration::from_millis(500);

/// The largest heartbeat TTL: a lost node's replicas wait this long at most.
pub const MAX_HEARTBEAT_TTL: Duration = Duration::from_secs(600);

/// A joined fleet: the connection and its buckets.
pub struct Fleet {
    /// This node's name.
    pub node: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The connection.
    pub client: async_nats::Client,
    /// Node heartbeats.
    pub nodes: kv::Store,
    /// Desired workloads.
    pub desired: kv::Store,
    /// Slot claims.
    pub claims: kv::Store,
    /// Jobs' fleet-wide progress.
    pub jobs: kv::Store,
    /// Components by digest.
    pub components: object_store::ObjectStore,
    /// The heartbeat TTL in effect (the nodes bucket's max age).
    pub heartbeat_ttl: Duration,
    /// A random id of this run of the daemon.
    pub incarnation: String,
    /// When this run joined, in milliseconds since the Unix epoch.
    pub started_ms: u64,
}

/// Why a compare-and-set write did not happen.
#[derive(Debug)]
pub enum CasError {
    /// The key's revision was not the one expected (or it exists, for a create).
    Conflict,
    /// The engine refused or did not answer.
    Failed(String),
}

impl std::fmt::Display for CasError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Conflict => write!(f, "changed by someone else meanwhile"),
            Self::Failed(why) => write!(f, "{why}"),
        }
    }
}

/// Writes `value` at `key` of `bucket` over revision `expect`, or creates it when
/// `expect` is `None`: the one compare-and-set every change of the fleet's state uses.
/// Returns the new revision.
pub async fn compare_and_set(
    bucket: &kv::Store,
    key: &str,
    value: bytes::Bytes,
    expect: Option<u64>,
) -> Result<u64, CasError> {
    match expect {
        Some(revision) => bucket.update(key, value, revision).await.map_err(|e| {
            if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                CasError::Conflict
            } else {
                CasError::Failed(e.to_string())
            }
        }),
        None => bucket.create(key, value).await.map_err(|e| {
            if e.kind() == kv::CreateErrorKind::AlreadyExists {
                CasError::Conflict
            } else {
                CasError::Failed(e.to_string())
            }
        }),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The subject on which node `node` answers status requests.
pub fn status_subject(node: &str) -> String {
    format!("setpoint.status.{node}")
}

/// Parses `--labels k=v,k2=v2`.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not key=value"))?;
        crate::manifest::rules::check_label(k, v)?;
        if labels.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("label `{k}` is given twice"));
        }
    }
    Ok(labels)
}

impl Fleet {
    /// Joins the fleet at `config.url`: connects (refusing an unreachable engine within
    /// the connect timeout, with what to do), and opens or creates the buckets.
    pub async fn join(config: &FleetConfig) -> anyhow::Result<Arc<Self>> {
        crate::manifest::rules::check_dns_label(&config.node).map_err(|why| {
            anyhow::anyhow!(
                "invalid node name `{}`: {why}; use lowercase letters, digits and `-` (--node)",
                config.node
            )
        })?;
        anyhow::ensure!(
            (MIN_HEARTBEAT_TTL..=MAX_HEARTBEAT_TTL).contains(&config.heartbeat_ttl),
            "--fleet-heartbeat-ttl must be between {MIN_HEARTBEAT_TTL:?} and {MAX_HEARTBEAT_TTL:?}"
        );
        let node = config.node.clone();
        let options = async_nats::ConnectOptions::new()
            .name(format!("setpoint {node}"))
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(Duration::from_secs(2)))
            .max_reconnects(None)
            .event_callback(move |event| {
                let node = node.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            tracing::warn!(node = %node, "lost the fleet's engine; reconnecting")
                        }
                        async_nats::Event::Connected => {
                            tracing::info!(node = %node, "connected to the fleet's engine")
                        }
                        other => tracing::debug!("fleet connection: {other}"),
                    }
                }
            });
        let unreachable = |why: String| {
            anyhow::anyhow!(
                "cannot reach the fleet's engine at {}: {why}; start nats-server (2.11 or later, with -js) there, or fix --fleet",
                config.url
            )
        };
        let client = tokio::time::timeout(
            config
                .connect_timeout
                .saturating_add(Duration::from_secs(1)),
            options.connect(
                config
                    .url
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .collect::<Vec<&str>>(),
            ),
        )
        .await
        .map_err(|_| unreachable(format!("no answer within {:?}", config.connect_timeout)))?
        .map_err(|e| unreachable(e.to_string()))?;
        let js = jetstream::new(client.clone());
        let ttl = config.heartbeat_ttl;
        let replicas = config.replicas.max(1);
        let open = |bucket: &'static str, max_age: Duration, markers: bool, history: i64| {
            let js = js.clone();
            async move {
                if let Ok(store) = js.get_key_value(bucket).await {
                    return Ok(store);
                }
                js.create_key_value(kv::Config {
                    bucket: bucket.into(),
                    history,
                    max_age,
                    max_value_size: model::MAX_VALUE_BYTES as i32,
                    num_replicas: replicas,
                    limit_markers: markers.then_some(Duration::from_secs(1)),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("creating the fleet's bucket {bucket} (is JetStream enabled: nats-server -js, version 2.11 or later?)"))
            }
        };
        // A cluster that is still electing its JetStream leader refuses for a moment:
        // tried again until the connect timeout.
        let deadline =
            crate::clock::after_tokio(tokio::time::Instant::now(), config.connect_timeout);
        let (nodes, desired, claims, jobs, components) = loop {
            let opened = async {
                let nodes = open(model::NODES, ttl, true, 1).await?;
                let desired = open(model::DESIRED, Duration::ZERO, false, 10).await?;
                let claims = open(model::CLAIMS, Duration::ZERO, false, 1).await?;
                let jobs = open(model::JOBS, Duration::ZERO, false, 1).await?;
                let components = match js.get_object_store(model::COMPONENTS).await {
                    Ok(store) => store,
                    Err(_) => js
                        .create_object_store(object_store::Config {
                            bucket: model::COMPONENTS.into(),
                            num_replicas: replicas,
                            ..Default::default()
                        })
                        .await
                        .context("creating the fleet's component store")?,
                };
                anyhow::Ok((nodes, desired, claims, jobs, components))
            }
            .await;
            match opened {
                Ok(all) => break all,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    tracing::debug!("the fleet's buckets are not ready yet: {e:#}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        // The TTL in effect is the bucket's, whoever created it.
        let mut nodes_stream = js
            .get_stream(format!("KV_{}", model::NODES))
            .await
            .context("reading the nodes bucket")?;
        let heartbeat_ttl = nodes_stream
            .info()
            .await
            .map(|i| i.config.max_age)
            .unwrap_or(ttl);
        // The bucket's setting is the engine's, so read as hostile input: a node never
        // computes deadlines from a TTL outside the range it accepts itself.
        anyhow::ensure!(
            (MIN_HEARTBEAT_TTL..=MAX_HEARTBEAT_TTL).contains(&heartbeat_ttl),
            "the fleet's nodes bucket has a heartbeat TTL of {heartbeat_ttl:?}, outside {MIN_HEARTBEAT_TTL:?}..={MAX_HEARTBEAT_TTL:?}; delete the bucket {} so that it is made again",
            model::NODES
        );
        if heartbeat_ttl != ttl {
            tracing::warn!(
                "the fleet's heartbeat TTL is {heartbeat_ttl:?} (set when its bucket was created), not the {ttl:?} asked for"
            );
        }
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        Ok(Arc::new(Self {
            node: config.node.clone(),
            labels: config.labels.clone(),
            client,
            nodes,
            desired,
            claims,
            jobs,
            components,
            heartbeat_ttl,
            incarnation: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            started_ms: now_ms(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_bad_ones_are_refused() {
        let labels = parse_labels("zone=north, tier=edge").expect("labels");
        assert_eq!(labels.get("zone").map(String::as_str), Some("north"));
        assert_eq!(labels.len(), 2);
        assert!(parse_labels("").expect("none").is_empty());
        assert!(parse_labels("zone").is_err());
        assert!(parse_labels("zone=a,zone=b").is_err());
        assert!(parse_labels("bad key=x").is_err());
    }
}
