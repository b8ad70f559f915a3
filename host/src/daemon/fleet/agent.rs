//! The node's agent: follows the three buckets (a mirror of each, kept by watches),
//! carries out placement's steps by compare-and-set, and keeps the local host running
//! exactly what this node may run: the slots it claimed (at the epoch it wrote) and the
//! workloads pinned to it. Level-triggered: every watch event and a tick every half
//! second run the same pass over the mirror, so a missed event is repaired by the next.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt as _;
use tokio::io::AsyncReadExt as _;

use super::Fleet;
use super::model::{self, Claim, FleetWorkload, NodeRecord, SlotKey};
use super::placement::{self, LiveNode, Step, View};
use crate::daemon::desired::Desired;
use crate::status::reason;

/// What the agent knows of the fleet, shared with the API (`get nodes`, the fleet's
/// status).
#[derive(Default)]
pub struct Mirror {
    /// Nodes whose heartbeat key is live, with when it was last renewed (as seen here).
    pub nodes: BTreeMap<String, (NodeRecord, Instant)>,
    /// Desired workloads, with their revision in the bucket.
    pub workloads: BTreeMap<String, (FleetWorkload, u64)>,
    /// Claims, with their revision in the bucket.
    pub claims: BTreeMap<SlotKey, (Claim, u64)>,
    /// Fleet Jobs' progress.
    pub jobs: BTreeMap<String, model::FleetJob>,
}

/// The fleet workloads that take slots: all but the Jobs that have finished.
fn placed(mirror: &Mirror) -> BTreeMap<String, FleetWorkload> {
    mirror
        .workloads
        .iter()
        .filter(|(name, (w, _))| {
            w.job.is_none()
                || mirror
                    .jobs
                    .get(*name)
                    .is_none_or(|j| j.revision != w.revision || j.outcome.is_none())
        })
        .map(|(k, (w, _))| (k.clone(), w.clone()))
        .collect()
}

/// The mirror, shared.
pub type SharedMirror = Arc<std::sync::Mutex<Mirror>>;

/// Locks the mirror (a panic elsewhere cannot make it unreadable).
pub fn lock(mirror: &SharedMirror) -> std::sync::MutexGuard<'_, Mirror> {
    mirror
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What this node runs of a fleet workload, as last applied to the local host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Running {
    /// The desired bucket's revision applied.
    revision: u64,
    /// Replicas here.
    replicas: u32,
    /// The restart count applied.
    restarts: u64,
}

/// The agent's own state.
struct Agent {
    fleet: Arc<Fleet>,
    desired: Arc<Desired>,
    mirror: SharedMirror,
    /// Claims this node wrote in this run, with their epochs; cleared by a fence.
    owned: BTreeMap<SlotKey, u64>,
    /// What the local host runs for the fleet.
    local: BTreeMap<String, Running>,
    /// Fleet workloads this node could not run, by desired revision: retried when it
    /// changes, or after [`RETRY_FAILED`].
    failed: BTreeMap<String, (u64, Instant)>,
    instances: Arc<AtomicU32>,
    /// Until when this node only re-takes its own claims: for one TTL after it joins or
    /// comes back from a fence, the other nodes get to renew their heartbeats too (after
    /// an engine outage every key has expired), so that nothing moves that need not.
    settling_until: Instant,
    /// Claims this node is giving up (spread, scale-down), with their revisions: each
    /// is deleted only once its instance has stopped here, so that the node taking it
    /// over never runs it beside this one.
    releasing: BTreeMap<SlotKey, u64>,
}

/// How long a workload this node could not run waits before it is tried again.
const RETRY_FAILED: Duration = Duration::from_secs(10);
/// The level-triggered pass's period.
const TICK: Duration = Duration::from_millis(500);

/// Which bucket an event came from.
enum Bucket {
    Nodes,
    Desired,
    Claims,
    Jobs,
}

/// Runs the agent until `stop`.
pub async fn run(
    fleet: Arc<Fleet>,
    desired: Arc<Desired>,
    mirror: SharedMirror,
    instances: Arc<AtomicU32>,
    mut fenced: tokio::sync::watch::Receiver<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    left: tokio::sync::watch::Sender<bool>,
) -> anyhow::Result<()> {
    let mut agent = Agent {
        fleet: fleet.clone(),
        desired,
        mirror,
        owned: BTreeMap::new(),
        local: BTreeMap::new(),
        failed: BTreeMap::new(),
        instances,
        settling_until: crate::clock::after(Instant::now(), fleet.heartbeat_ttl),
        releasing: BTreeMap::new(),
    };
    let mut nodes = Follow::new(&fleet.nodes).await;
    let mut workloads = Follow::new(&fleet.desired).await;
    let mut claims = Follow::new(&fleet.claims).await;
    let mut jobs = Follow::new(&fleet.jobs).await;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_fenced = false;
    loop {
        let event = tokio::select! {
            e = nodes.next() => e.map(|e| (Bucket::Nodes, e)),
            e = workloads.next() => e.map(|e| (Bucket::Desired, e)),
            e = claims.next() => e.map(|e| (Bucket::Claims, e)),
            e = jobs.next() => e.map(|e| (Bucket::Jobs, e)),
            _ = fenced.changed() => None,
            _ = tick.tick() => None,
            _ = stop.changed() => break,
        };
        if let Some((bucket, entry)) = event {
            agent.take(bucket, entry);
        }
        // Everything already delivered joins this pass.
        for (bucket, follow) in [
            (Bucket::Nodes, &mut nodes),
            (Bucket::Desired, &mut workloads),
            (Bucket::Claims, &mut claims),
            (Bucket::Jobs, &mut jobs),
        ] {
            while let Some(entry) = follow.ready() {
                agent.take(bucket_copy(&bucket), entry);
            }
        }
        let is_fenced = *fenced.borrow_and_update();
        if is_fenced != was_fenced {
            agent.fence_changed(is_fenced);
            was_fenced = is_fenced;
        }
        agent.expire_silent_nodes();
        if nodes.current && workloads.current && claims.current && jobs.current {
            agent.pass(is_fenced).await;
        }
        for follow in [&mut nodes, &mut workloads, &mut claims, &mut jobs] {
            follow.heal(&fleet).await;
        }
    }
    // Leaving cleanly: this node's movable replicas stop here first, then their claims
    // go, and only then does the heartbeat's key (so that no slot runs twice).
    agent.leave().await;
    let _ = left.send(true);
    Ok(())
}

fn bucket_copy(b: &Bucket) -> Bucket {
    match b {
        Bucket::Nodes => Bucket::Nodes,
        Bucket::Desired => Bucket::Desired,
        Bucket::Claims => Bucket::Claims,
        Bucket::Jobs => Bucket::Jobs,
    }
}

/// A watch of one bucket (every key, from each key's newest value), re-made when it
/// ends.
struct Follow {
    bucket: String,
    watch: Option<kv::Watch>,
    /// Whether every value there was when the watch began has been seen.
    current: bool,
    /// When the watch last failed, for the pause before it is re-made.
    broken_at: Option<Instant>,
}

impl Follow {
    async fn new(store: &kv::Store) -> Self {
        let mut follow = Self {
            bucket: store.name.clone(),
            watch: None,
            current: false,
            broken_at: None,
        };
        follow.open(store).await;
        follow
    }

    async fn open(&mut self, store: &kv::Store) {
        // An empty bucket delivers nothing, so it is current at once.
        let empty = match store.status().await {
            Ok(status) => status.values() == 0,
            Err(_) => false,
        };
        match store.watch_with_history(">").await {
            Ok(watch) => {
                self.watch = Some(watch);
                self.current = empty;
                self.broken_at = None;
            }
            Err(e) => {
                tracing::warn!("cannot watch the fleet's bucket {}: {e}", self.bucket);
                self.broken_at = Some(Instant::now());
            }
        }
    }

    /// The next entry; pending forever while there is no watch.
    async fn next(&mut self) -> Option<kv::Entry> {
        let Some(watch) = self.watch.as_mut() else {
            return std::future::pending().await;
        };
        match watch.next().await {
            Some(Ok(entry)) => {
                if entry.seen_current || entry.delta == 0 {
                    self.current = true;
                }
                Some(entry)
            }
            Some(Err(e)) => {
                tracing::debug!("the watch of {} failed: {e}", self.bucket);
                None
            }
            None => {
                tracing::warn!("the watch of {} ended; it is made again", self.bucket);
                self.watch = None;
                self.broken_at = Some(Instant::now());
                None
            }
        }
    }

    /// An entry already delivered, without waiting.
    fn ready(&mut self) -> Option<kv::Entry> {
        use futures_util::FutureExt as _;
        self.next().now_or_never().flatten()
    }

    /// Re-makes a watch that ended, a second after.
    async fn heal(&mut self, fleet: &Fleet) {
        if self.watch.is_some()
            || self
                .broken_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let store = match self.bucket.as_str() {
            b if b == model::NODES => &fleet.nodes,
            b if b == model::DESIRED => &fleet.desired,
            b if b == model::JOBS => &fleet.jobs,
            _ => &fleet.claims,
        };
        self.open(store).await;
    }
}

impl Agent {
    fn event(&self, workload: &str, warning: bool, reason: &str, message: String) {
        self.desired.logbook().record(&crate::Event {
            time: std::time::SystemTime::now(),
            kind: if warning {
                crate::EventType::Warning
            } else {
                crate::EventType::Normal
            },
            workload: workload.to_string(),
            instance: None,
            reason: reason.to_string(),
            message,
        });
    }

    /// Takes one watched entry into the mirror.
    fn take(&mut self, bucket: Bucket, entry: kv::Entry) {
        let live = entry.operation == kv::Operation::Put;
        let mut mirror = lock(&self.mirror);
        match bucket {
            Bucket::Nodes => {
                if crate::manifest::rules::check_dns_label(&entry.key).is_err() {
                    tracing::warn!("node key `{}` is not a node name", entry.key);
                    return;
                }
                if !live {
                    if mirror.nodes.remove(&entry.key).is_some() && entry.key != self.fleet.node {
                        drop(mirror);
                        self.event(
                            &format!("node/{}", entry.key),
                            true,
                            reason::NODE_LOST,
                            format!("node {} left the fleet or stopped renewing its heartbeat; its movable replicas run elsewhere", entry.key),
                        );
                    }
                    return;
                }
                match model::parse::<NodeRecord>(&entry.value) {
                    Ok(record) => {
                        mirror.nodes.insert(entry.key, (record, Instant::now()));
                    }
                    Err(e) => tracing::warn!("node {}'s heartbeat does not parse: {e}", entry.key),
                }
            }
            Bucket::Desired => {
                let max_replicas = self.desired.limits().max_replicas;
                let parsed = model::parse::<FleetWorkload>(&entry.value).and_then(|w| {
                    crate::manifest::rules::check_dns_label(&entry.key)
                        .map_err(|why| format!("its key is not a workload name: {why}"))?;
                    if w.replicas > max_replicas {
                        return Err(format!(
                            "{} replicas, over this host's limit of {max_replicas}",
                            w.replicas
                        ));
                    }
                    Ok(w)
                });
                match parsed {
                    Ok(w) if live => {
                        mirror.workloads.insert(entry.key, (w, entry.revision));
                    }
                    Ok(_) => {
                        mirror.workloads.remove(&entry.key);
                    }
                    Err(_) if !live => {
                        mirror.workloads.remove(&entry.key);
                    }
                    Err(e) => {
                        // Not run here: what a node cannot read, it does not keep running.
                        tracing::warn!("fleet workload {} is ignored: {e}", entry.key);
                        mirror.workloads.remove(&entry.key);
                    }
                }
            }
            Bucket::Jobs => {
                if !live {
                    mirror.jobs.remove(&entry.key);
                    return;
                }
                match model::parse::<model::FleetJob>(&entry.value) {
                    Ok(job) => {
                        mirror.jobs.insert(entry.key, job);
                    }
                    Err(e) => {
                        tracing::warn!("job {}'s fleet progress does not parse: {e}", entry.key)
                    }
                }
            }
            Bucket::Claims => {
                let Some(slot) = SlotKey::parse(&entry.key) else {
                    tracing::warn!("claim key `{}` names no slot", entry.key);
                    return;
                };
                if !live {
                    mirror.claims.remove(&slot);
                    return;
                }
                match model::parse::<Claim>(&entry.value) {
                    Ok(claim) => {
                        // The watch may deliver an older revision than one this node
                        // has just written itself.
                        let newer = mirror
                            .claims
                            .get(&slot)
                            .is_none_or(|(_, rev)| *rev <= entry.revision);
                        if newer {
                            mirror.claims.insert(slot, (claim, entry.revision));
                        }
                    }
                    Err(e) => tracing::warn!("claim {} does not parse: {e}", entry.key),
                }
            }
        }
    }

    /// A node whose heartbeat has not been renewed for twice the TTL is gone even if
    /// its key's deletion was missed.
    fn expire_silent_nodes(&mut self) {
        let limit = self.fleet.heartbeat_ttl.saturating_mul(2);
        let mut mirror = lock(&self.mirror);
        let me = self.fleet.node.clone();
        mirror
            .nodes
            .retain(|name, (_, seen)| *name == me || seen.elapsed() < limit);
    }

    fn fence_changed(&mut self, fenced: bool) {
        if fenced {
            // Every claim must be won again once the heartbeat is back.
            self.owned.clear();
            self.releasing.clear();
            self.event(
                &format!("node/{}", self.fleet.node),
                true,
                reason::FENCED,
                format!(
                    "this node could not renew its heartbeat for {:?}: its movable replicas stop; pinned ones keep running",
                    super::heartbeat::timing(self.fleet.heartbeat_ttl).1
                ),
            );
        } else {
            self.settling_until = crate::clock::after(Instant::now(), self.fleet.heartbeat_ttl);
            self.event(
                &format!("node/{}", self.fleet.node),
                false,
                reason::REJOINED,
                "the heartbeat is renewed again: this node takes claims again".into(),
            );
        }
    }

    /// Stops every movable fleet workload here, waits (within the longest grace period
    /// and a margin) until its instances are gone, then deletes the claims this node
    /// holds. Pinned workloads stop with the daemon; they hold no claims.
    async fn leave(&mut self) {
        let movable: Vec<String> = {
            let mirror = lock(&self.mirror);
            self.local
                .keys()
                .filter(|name| {
                    mirror
                        .workloads
                        .get(*name)
                        .is_none_or(|(w, _)| w.placement.node_name.is_none())
                })
                .cloned()
                .collect()
        };
        let grace = self.desired.host().status().await.longest_grace_period();
        for name in &movable {
            let writing = self.desired.write().await;
            if let Err(e) = writing.delete_local(name).await {
                tracing::warn!(workload = %name, "cannot stop it before leaving: {e}");
            }
        }
        let deadline =
            crate::clock::after(Instant::now(), grace.saturating_add(Duration::from_secs(5)));
        while Instant::now() < deadline {
            let live: u32 = self
                .desired
                .host()
                .counts()
                .await
                .iter()
                .filter(|c| movable.contains(&c.name))
                .map(|c| c.live)
                .sum();
            if live == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mine: Vec<(SlotKey, u64)> = lock(&self.mirror)
            .claims
            .iter()
            .filter(|(slot, (claim, _))| {
                claim.node == self.fleet.node && self.owned.contains_key(*slot)
            })
            .map(|(slot, (_, rev))| (slot.clone(), *rev))
            .collect();
        for (slot, expect) in mine {
            self.carry_out(Step::Release { slot, expect }).await;
        }
    }

    /// One level-triggered pass: placement's steps, then the local host.
    async fn pass(&mut self, fenced: bool) {
        // What takes slots, read once: only this task changes the mirror's workloads.
        let workloads = placed(&lock(&self.mirror));
        if !fenced {
            let steps = {
                let mirror = lock(&self.mirror);
                let nodes: BTreeMap<String, LiveNode> = mirror
                    .nodes
                    .iter()
                    .filter(|(_, (record, _))| !record.fenced)
                    .map(|(name, (record, _))| {
                        (
                            name.clone(),
                            LiveNode {
                                labels: record.labels.clone(),
                            },
                        )
                    })
                    .collect();
                // This node counts as live while it is not fenced, even before its
                // first heartbeat comes back through the watch.
                let mut nodes = nodes;
                nodes.entry(self.fleet.node.clone()).or_insert(LiveNode {
                    labels: self.fleet.labels.clone(),
                });
                placement::plan(&View {
                    me: &self.fleet.node,
                    nodes: &nodes,
                    workloads: &workloads,
                    claims: &mirror.claims,
                    owned: &self.owned,
                })
            };
            let settling = Instant::now() < self.settling_until;
            for step in steps {
                let (slot, own) = match &step {
                    Step::Claim { slot, from, .. } => {
                        (slot, from.as_deref() == Some(self.fleet.node.as_str()))
                    }
                    Step::Release { slot, .. } => (slot, false),
                };
                if self.releasing.contains_key(slot) || (settling && !own) {
                    continue;
                }
                if let Step::Release { slot, expect } = &step
                    && self.owned.remove(slot).is_some()
                {
                    // Stopped here first; the claim goes once it has.
                    self.releasing.insert(slot.clone(), *expect);
                    continue;
                }
                self.carry_out(step).await;
            }
        }
        let (wanted, workloads) = {
            let mirror = lock(&self.mirror);
            let wanted = placement::local_replicas(
                &self.fleet.node,
                fenced,
                &workloads,
                &mirror.claims,
                &self.owned,
            );
            let revisions: BTreeMap<String, (FleetWorkload, u64)> = mirror
                .workloads
                .iter()
                .filter(|(k, _)| wanted.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (wanted, revisions)
        };
        let releasing_here = wanted.clone();
        self.converge(wanted, workloads).await;
        let counts = self.desired.host().counts().await;
        if !self.releasing.is_empty() {
            let live: BTreeMap<&str, u32> =
                counts.iter().map(|c| (c.name.as_str(), c.live)).collect();
            let stopped: Vec<(SlotKey, u64)> = self
                .releasing
                .iter()
                .filter(|(slot, _)| {
                    let here = live.get(slot.workload.as_str()).copied().unwrap_or(0);
                    here <= releasing_here.get(&slot.workload).copied().unwrap_or(0)
                })
                .map(|(slot, rev)| (slot.clone(), *rev))
                .collect();
            for (slot, expect) in stopped {
                self.releasing.remove(&slot);
                self.carry_out(Step::Release { slot, expect }).await;
            }
        }
        let live: u32 = counts.iter().map(|c| c.live).sum();
        self.instances.store(live, Ordering::Relaxed);
    }

    /// Writes one step to the claims bucket; a refused compare-and-set is left to the
    /// next pass (the watch brings the value that won).
    async fn carry_out(&mut self, step: Step) {
        match step {
            Step::Claim {
                slot,
                epoch,
                expect,
                from,
            } => {
                let claim = Claim {
                    node: self.fleet.node.clone(),
                    epoch,
                };
                let Ok(value) = serde_json::to_vec(&claim) else {
                    return;
                };
                let key = slot.key();
                let written =
                    super::compare_and_set(&self.fleet.claims, &key, value.into(), expect).await;
                match written {
                    Ok(revision) => {
                        self.owned.insert(slot.clone(), epoch);
                        lock(&self.mirror)
                            .claims
                            .insert(slot.clone(), (claim, revision));
                        if let Some(from) = from.filter(|f| *f != self.fleet.node) {
                            self.event(
                                &slot.workload,
                                false,
                                reason::RESCHEDULED,
                                format!(
                                    "slot {} moved from node {from} to node {} (epoch {epoch})",
                                    slot.slot, self.fleet.node
                                ),
                            );
                        }
                    }
                    Err(why) => tracing::debug!("claim {key} not won: {why}"),
                }
            }
            Step::Release { slot, expect } => {
                let key = slot.key();
                match self
                    .fleet
                    .claims
                    .delete_expect_revision(&key, Some(expect))
                    .await
                {
                    Ok(()) => {
                        self.owned.remove(&slot);
                        lock(&self.mirror).claims.remove(&slot);
                    }
                    Err(e) => tracing::debug!("claim {key} not released: {e}"),
                }
            }
        }
    }

    /// Makes the local host run `wanted` (replicas per fleet workload) and nothing else
    /// of the fleet's.
    async fn converge(
        &mut self,
        wanted: BTreeMap<String, u32>,
        workloads: BTreeMap<String, (FleetWorkload, u64)>,
    ) {
        let gone: Vec<String> = self
            .local
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for name in gone {
            let writing = self.desired.write().await;
            if let Err(e) = writing.delete_local(&name).await {
                tracing::warn!(workload = %name, "cannot stop the fleet workload here: {e}");
                continue;
            }
            self.local.remove(&name);
        }
        for (name, replicas) in wanted {
            let Some((workload, revision)) = workloads.get(&name) else {
                continue;
            };
            let running = Running {
                revision: *revision,
                replicas,
                restarts: workload.restarts,
            };
            if self.local.get(&name) == Some(&running) {
                continue;
            }
            if let Some((failed_at, when)) = self.failed.get(&name)
                && *failed_at == *revision
                && when.elapsed() < RETRY_FAILED
            {
                continue;
            }
            // A Job's spec never changes once applied: a new share is a new local Job
            // (what it counted is already the fleet's).
            if workload.job.is_some() && self.local.contains_key(&name) {
                let writing = self.desired.write().await;
                if let Err(e) = writing.delete_local(&name).await {
                    tracing::warn!(workload = %name, "cannot replace the local job: {e}");
                    continue;
                }
                self.local.remove(&name);
            }
            match self.run_here(&name, workload, replicas).await {
                Ok(()) => {
                    let restarted = self
                        .local
                        .get(&name)
                        .is_some_and(|r| r.restarts != workload.restarts);
                    if restarted {
                        let writing = self.desired.write().await;
                        if let Err(e) = writing.restart_local(&name).await {
                            tracing::warn!(workload = %name, "cannot restart: {e}");
                        }
                    }
                    self.failed.remove(&name);
                    self.local.insert(name, running);
                }
                Err(why) => {
                    self.event(
                        &name,
                        true,
                        reason::FAILED_PLACEMENT,
                        format!("node {} cannot run it: {why}", self.fleet.node),
                    );
                    self.failed.insert(name, (*revision, Instant::now()));
                }
            }
        }
    }

    /// Fetches what `workload` names and applies `replicas` of it to the local host.
    async fn run_here(
        &self,
        name: &str,
        workload: &FleetWorkload,
        replicas: u32,
    ) -> Result<(), String> {
        for digest in workload.files.values() {
            fetch_blob(&self.fleet, &self.desired, digest).await?;
        }
        let writing = self.desired.write().await;
        writing
            .apply_fleet(name, workload, replicas)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Largest component fetched from the fleet.
const MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// Copies component `digest` from the fleet's object store into the local blob store,
/// unless it is there; its bytes are checked against the digest.
pub(super) async fn fetch_blob(
    fleet: &Fleet,
    desired: &Desired,
    digest: &str,
) -> Result<(), String> {
    let store = desired.store();
    if !crate::daemon::store::is_digest(digest) {
        return Err(format!("`{digest}` is not a sha256 digest"));
    }
    if store.has_blob(digest) {
        return Ok(());
    }
    let mut object = fleet
        .components
        .get(digest)
        .await
        .map_err(|e| format!("component {digest} is not in the fleet's store: {e}"))?;
    let mut writer = store.new_blob().map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; 256 << 10];
    loop {
        let n = object
            .read(&mut buffer)
            .await
            .map_err(|e| format!("fetching component {digest}: {e}"))?;
        if n == 0 {
            break;
        }
        writer.write(&buffer[..n]).map_err(|e| e.to_string())?;
        if writer.len() > MAX_COMPONENT_BYTES {
            return Err(format!(
                "component {digest} is over {MAX_COMPONENT_BYTES} bytes"
            ));
        }
    }
    writer
        .finish(Some(digest))
        .map(|_| ())
        .map_err(|e| format!("component {digest} from the fleet: {e}"))
}
