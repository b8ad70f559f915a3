//! Placement: which replica slots this node should claim or give up, from a view of
//! the fleet that every node shares (live nodes, desired workloads, claims). Plain
//! functions, no engine: every node computes the same assignment from the same view
//! and claims only its own share, and compare-and-set in the engine settles the
//! moments when two views differ.
//!
//! The rules, per movable workload (pinned ones, with `nodeName`, take no claims):
//! - a slot is held while its claim names a live node the placement admits;
//! - every other slot goes to the admitted live node with the fewest held slots and
//!   room under `maxPerNode`, ties broken by a hash of workload, slot and node;
//! - a node re-takes (with a higher epoch) a claim naming it that it did not write in
//!   this run or since it last fenced itself, before it runs the slot;
//! - under `spread`, a node holding two more slots than the emptiest admitted node
//!   gives one up (one per pass), which then goes to that node;
//! - claims past `replicas`, of a deleted workload, or of a node that no longer may run
//!   them are deleted by their owner, or, when the owner is gone, by the live node
//!   whose name sorts first.

use std::collections::BTreeMap;

use super::model::{Claim, FleetWorkload, SlotKey};

/// A live node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveNode {
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// What a node knows: the live nodes, the desired workloads, the claims with their
/// revisions in the claims bucket, and the claims this node wrote in this run (slot →
/// epoch).
pub struct View<'a> {
    /// This node.
    pub me: &'a str,
    /// Live, unfenced nodes by name (this one included while it is not fenced).
    pub nodes: &'a BTreeMap<String, LiveNode>,
    /// Desired workloads by name.
    pub workloads: &'a BTreeMap<String, FleetWorkload>,
    /// Every claim, with its revision in the bucket.
    pub claims: &'a BTreeMap<SlotKey, (Claim, u64)>,
    /// The claims this node wrote itself, with the epoch it wrote.
    pub owned: &'a BTreeMap<SlotKey, u64>,
}

/// A change of the claims bucket this node should make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write a claim naming this node: created when `expect` is `None`, else replacing
    /// the revision `expect` (compare-and-set).
    Claim {
        /// The slot.
        slot: SlotKey,
        /// The epoch to write.
        epoch: u64,
        /// The revision it replaces.
        expect: Option<u64>,
        /// The node that held it before, if any.
        from: Option<String>,
    },
    /// Delete the claim at revision `expect` (compare-and-set).
    Release {
        /// The slot.
        slot: SlotKey,
        /// Its revision.
        expect: u64,
    },
}

/// FNV-1a: the same on every node and every build, unlike the standard hasher.
fn tie_break(workload: &str, slot: u32, node: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in workload
        .bytes()
        .chain(slot.to_le_bytes())
        .chain([0])
        .chain(node.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The steps this node should take now.
pub fn plan(view: &View<'_>) -> Vec<Step> {
    let mut steps = Vec::new();
    let janitor = view.nodes.keys().next().map(String::as_str) == Some(view.me);
    let mut by_workload: BTreeMap<&str, Vec<(&SlotKey, &Claim, u64)>> = BTreeMap::new();
    for (slot, (claim, rev)) in view.claims {
        by_workload
            .entry(slot.workload.as_str())
            .or_default()
            .push((slot, claim, *rev));
    }
    // Claims of workloads that are gone.
    for (name, claims) in &by_workload {
        if view.workloads.contains_key(*name) {
            continue;
        }
        for (slot, claim, rev) in claims {
            let owner_live = view.nodes.contains_key(&claim.node);
            if claim.node == view.me || (!owner_live && janitor) {
                steps.push(Step::Release {
                    slot: (*slot).clone(),
                    expect: *rev,
                });
            }
        }
    }
    for (name, workload) in view.workloads {
        let claims = by_workload
            .get(name.as_str())
            .map_or(&[][..], Vec::as_slice);
        plan_workload(view, name, workload, claims, janitor, &mut steps);
    }
    steps
}

fn plan_workload(
    view: &View<'_>,
    name: &str,
    workload: &FleetWorkload,
    claims: &[(&SlotKey, &Claim, u64)],
    janitor: bool,
    steps: &mut Vec<Step>,
) {
    let placement = &workload.placement;
    if placement.node_name.is_some() {
        // Pinned: runs where it is pinned, with no claims. Leftover claims (it was
        // movable before) are cleared.
        for (slot, claim, rev) in claims {
            if claim.node == view.me || (janitor && !view.nodes.contains_key(&claim.node)) {
                steps.push(Step::Release {
                    slot: (*slot).clone(),
                    expect: *rev,
                });
            }
        }
        return;
    }
    let eligible: Vec<&str> = view
        .nodes
        .iter()
        .filter(|(node, live)| placement.admits(node, &live.labels))
        .map(|(node, _)| node.as_str())
        .collect();
    let max_per_node = placement.max_per_node.unwrap_or(u32::MAX);
    let mut counts: BTreeMap<&str, u32> = eligible.iter().map(|n| (*n, 0)).collect();
    let mut held: BTreeMap<u32, (&Claim, u64)> = BTreeMap::new();
    let mut present: BTreeMap<u32, (&Claim, u64)> = BTreeMap::new();
    // Lowest slots first, so that a node over `maxPerNode` keeps its lowest.
    let mut sorted: Vec<&(&SlotKey, &Claim, u64)> = claims.iter().collect();
    sorted.sort_by_key(|(slot, _, _)| slot.slot);
    for (slot, claim, rev) in sorted {
        present.insert(slot.slot, (claim, *rev));
        let in_range = slot.slot < workload.replicas;
        let count = counts.get_mut(claim.node.as_str());
        match count {
            Some(count) if in_range && *count < max_per_node => {
                *count += 1;
                held.insert(slot.slot, (claim, *rev));
            }
            _ => {
                // Not held: past `replicas`, or its node is gone, may not run it, or
                // is over `maxPerNode`. A slot in range is re-assigned below by
                // compare-and-set over this revision; one past the end is deleted.
                let owner_live = view.nodes.contains_key(&claim.node);
                if !in_range && (claim.node == view.me || (janitor && !owner_live)) {
                    steps.push(Step::Release {
                        slot: (*slot).clone(),
                        expect: *rev,
                    });
                }
            }
        }
    }
    // Claims naming this node that it did not write in this run are re-taken first.
    for (slot, (claim, rev)) in &held {
        if claim.node == view.me && view.owned.get(&key(name, *slot)).copied() != Some(claim.epoch)
        {
            steps.push(Step::Claim {
                slot: key(name, *slot),
                epoch: claim.epoch.saturating_add(1),
                expect: Some(*rev),
                from: Some(claim.node.clone()),
            });
        }
    }
    let mut pending = false;
    for slot in 0..workload.replicas {
        if held.contains_key(&slot) {
            continue;
        }
        let target = counts
            .iter()
            .filter(|(_, count)| **count < max_per_node)
            .min_by_key(|(node, count)| (**count, tie_break(name, slot, node)))
            .map(|(node, _)| *node);
        let Some(target) = target else {
            pending = true;
            continue;
        };
        if let Some(count) = counts.get_mut(target) {
            *count += 1;
        }
        if target == view.me {
            let before = present.get(&slot);
            steps.push(Step::Claim {
                slot: key(name, slot),
                epoch: before.map_or(1, |(c, _)| c.epoch.saturating_add(1)),
                expect: before.map(|(_, rev)| *rev),
                from: before.map(|(c, _)| c.node.clone()),
            });
        } else {
            pending = true;
        }
    }
    // Spread: only once every slot is held, one slot per pass.
    if placement.spread && !pending {
        let mine = counts.get(view.me).copied().unwrap_or(0);
        let emptiest = counts
            .iter()
            .filter(|(node, count)| **node != view.me && **count < max_per_node)
            .map(|(_, count)| *count)
            .min();
        if let Some(emptiest) = emptiest
            && mine >= emptiest.saturating_add(2)
            && let Some((slot, (_, rev))) = held
                .iter()
                .rev()
                .find(|(_, (claim, _))| claim.node == view.me)
        {
            steps.push(Step::Release {
                slot: key(name, *slot),
                expect: *rev,
            });
        }
    }
}

fn key(workload: &str, slot: u32) -> SlotKey {
    SlotKey {
        workload: workload.to_string(),
        slot,
    }
}

/// How many replicas of each workload this node runs: a movable workload's slots whose
/// claim names this node at the epoch it wrote (none while it is fenced), a pinned
/// workload's replicas where it is pinned here (fenced or not).
pub fn local_replicas(
    me: &str,
    fenced: bool,
    workloads: &BTreeMap<String, FleetWorkload>,
    claims: &BTreeMap<SlotKey, (Claim, u64)>,
    owned: &BTreeMap<SlotKey, u64>,
) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for (name, w) in workloads {
        if let Some(node) = &w.placement.node_name {
            if node == me {
                out.insert(name.clone(), w.replicas);
            }
            continue;
        }
        if fenced {
            continue;
        }
        let count = claims
            .range(key(name, 0)..)
            .take_while(|(slot, _)| slot.workload == *name)
            .filter(|(slot, (claim, _))| {
                slot.slot < w.replicas
                    && claim.node == me
                    && owned.get(*slot).copied() == Some(claim.epoch)
            })
            .count();
        if count > 0 {
            out.insert(name.clone(), u32::try_from(count).unwrap_or(u32::MAX));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::PlacementSpec;

    fn workload(replicas: u32, placement: PlacementSpec) -> FleetWorkload {
        FleetWorkload {
            documents: Vec::new(),
            files: BTreeMap::new(),
            replicas,
            placement,
            revision: "r1".into(),
            restarts: 0,
            created: 0,
            job: None,
        }
    }

    fn nodes(names: &[&str]) -> BTreeMap<String, LiveNode> {
        names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    LiveNode {
                        labels: [("zone".to_string(), format!("z-{n}"))].into(),
                    },
                )
            })
            .collect()
    }

    /// The fleet: every node plans and its steps are carried out (compare-and-set
    /// against the shared claims), until nothing changes. Returns the passes taken.
    struct Sim {
        nodes: BTreeMap<String, LiveNode>,
        workloads: BTreeMap<String, FleetWorkload>,
        claims: BTreeMap<SlotKey, (Claim, u64)>,
        owned: BTreeMap<String, BTreeMap<SlotKey, u64>>,
        revision: u64,
    }

    impl Sim {
        fn new(names: &[&str]) -> Self {
            Self {
                nodes: nodes(names),
                workloads: BTreeMap::new(),
                claims: BTreeMap::new(),
                owned: BTreeMap::new(),
                revision: 0,
            }
        }

        fn pass(&mut self, me: &str) -> usize {
            let owned = self.owned.get(me).cloned().unwrap_or_default();
            let steps = plan(&View {
                me,
                nodes: &self.nodes,
                workloads: &self.workloads,
                claims: &self.claims,
                owned: &owned,
            });
            let mut done = 0;
            for step in steps {
                match step {
                    Step::Claim {
                        slot,
                        epoch,
                        expect,
                        ..
                    } => {
                        if self.claims.get(&slot).map(|(_, r)| *r) != expect {
                            continue;
                        }
                        self.revision += 1;
                        let claim = Claim {
                            node: me.to_string(),
                            epoch,
                        };
                        self.claims.insert(slot.clone(), (claim, self.revision));
                        self.owned
                            .entry(me.to_string())
                            .or_default()
                            .insert(slot, epoch);
                        done += 1;
                    }
                    Step::Release { slot, expect } => {
                        if self.claims.get(&slot).map(|(_, r)| *r) != Some(expect) {
                            continue;
                        }
                        self.claims.remove(&slot);
                        if let Some(o) = self.owned.get_mut(me) {
                            o.remove(&slot);
                        }
                        done += 1;
                    }
                }
            }
            done
        }

        fn settle(&mut self) -> usize {
            for round in 0..100 {
                let names: Vec<String> = self.nodes.keys().cloned().collect();
                let changed: usize = names.iter().map(|n| self.pass(n)).sum();
                if changed == 0 {
                    return round;
                }
            }
            panic!("placement did not settle: {:?}", self.claims);
        }

        fn running(&self) -> BTreeMap<String, u32> {
            let mut per_node = BTreeMap::new();
            for me in self.nodes.keys() {
                let owned = self.owned.get(me).cloned().unwrap_or_default();
                let local = local_replicas(me, false, &self.workloads, &self.claims, &owned);
                per_node.insert(me.clone(), local.values().sum());
            }
            per_node
        }
    }

    #[test]
    fn six_replicas_spread_two_per_node_on_three_nodes() {
        let mut sim = Sim::new(&["a", "b", "c"]);
        sim.workloads
            .insert("web".into(), workload(6, PlacementSpec::default()));
        sim.settle();
        assert_eq!(
            sim.running(),
            [("a".into(), 2), ("b".into(), 2), ("c".into(), 2)].into()
        );
    }

    #[test]
    fn a_dead_nodes_slots_go_to_the_others_with_a_higher_epoch() {
        let mut sim = Sim::new(&["a", "b", "c"]);
        sim.workloads
            .insert("web".into(), workload(6, PlacementSpec::default()));
        sim.settle();
        let on_b: Vec<SlotKey> = sim
            .claims
            .iter()
            .filter(|(_, (c, _))| c.node == "b")
            .map(|(k, _)| k.clone())
            .collect();
        sim.nodes.remove("b");
        sim.settle();
        assert_eq!(sim.running(), [("a".into(), 3), ("c".into(), 3)].into());
        for slot in on_b {
            let (claim, _) = &sim.claims[&slot];
            assert_ne!(claim.node, "b");
            assert_eq!(claim.epoch, 2, "a takeover raises the epoch");
        }
    }

    #[test]
    fn a_node_that_joins_late_gets_its_share_by_spreading() {
        let mut sim = Sim::new(&["a"]);
        sim.workloads
            .insert("web".into(), workload(6, PlacementSpec::default()));
        sim.settle();
        assert_eq!(sim.running(), [("a".into(), 6)].into());
        sim.nodes.extend(nodes(&["b", "c"]));
        sim.settle();
        assert_eq!(
            sim.running(),
            [("a".into(), 2), ("b".into(), 2), ("c".into(), 2)].into()
        );
        // Without spread, nothing moves.
        let mut sim = Sim::new(&["a"]);
        let still = PlacementSpec {
            spread: false,
            ..PlacementSpec::default()
        };
        sim.workloads.insert("web".into(), workload(6, still));
        sim.settle();
        sim.nodes.extend(nodes(&["b"]));
        sim.settle();
        assert_eq!(sim.running(), [("a".into(), 6), ("b".into(), 0)].into());
    }

    #[test]
    fn selectors_and_max_per_node_bound_where_replicas_go() {
        let mut sim = Sim::new(&["a", "b", "c"]);
        let placement = PlacementSpec {
            node_selector: [("zone".to_string(), "z-b".to_string())].into(),
            max_per_node: Some(2),
            ..PlacementSpec::default()
        };
        sim.workloads.insert("web".into(), workload(3, placement));
        sim.settle();
        // Only b qualifies, and it takes two: the third stays unplaced.
        assert_eq!(
            sim.running(),
            [("a".into(), 0), ("b".into(), 2), ("c".into(), 0)].into()
        );
    }

    #[test]
    fn scaling_down_and_deleting_release_the_claims() {
        let mut sim = Sim::new(&["a", "b"]);
        sim.workloads
            .insert("web".into(), workload(4, PlacementSpec::default()));
        sim.settle();
        sim.workloads.get_mut("web").expect("web").replicas = 1;
        sim.settle();
        assert_eq!(sim.claims.len(), 1);
        assert_eq!(sim.running().values().sum::<u32>(), 1);
        sim.workloads.clear();
        sim.settle();
        assert!(sim.claims.is_empty());
    }

    #[test]
    fn a_restarted_node_re_takes_its_claims_before_it_runs_them() {
        let mut sim = Sim::new(&["a", "b"]);
        sim.workloads
            .insert("web".into(), workload(2, PlacementSpec::default()));
        sim.settle();
        // `a` restarts: it remembers nothing it wrote.
        sim.owned.remove("a");
        let owned = BTreeMap::new();
        assert_eq!(
            local_replicas("a", false, &sim.workloads, &sim.claims, &owned).get("web"),
            None,
            "not run before it is re-taken"
        );
        let steps = plan(&View {
            me: "a",
            nodes: &sim.nodes,
            workloads: &sim.workloads,
            claims: &sim.claims,
            owned: &owned,
        });
        assert!(
            matches!(&steps[..], [Step::Claim { epoch: 2, from: Some(f), .. }] if f == "a"),
            "{steps:?}"
        );
        sim.settle();
        assert_eq!(sim.running(), [("a".into(), 1), ("b".into(), 1)].into());
    }

    #[test]
    fn pinned_workloads_run_on_their_node_even_when_it_is_fenced() {
        let placement = PlacementSpec {
            node_name: Some("edge".into()),
            ..PlacementSpec::default()
        };
        let workloads: BTreeMap<String, FleetWorkload> =
            [("sensor".to_string(), workload(2, placement))].into();
        let (claims, owned) = (BTreeMap::new(), BTreeMap::new());
        assert_eq!(
            local_replicas("edge", true, &workloads, &claims, &owned).get("sensor"),
            Some(&2)
        );
        assert_eq!(
            local_replicas("other", false, &workloads, &claims, &owned).get("sensor"),
            None
        );
    }

    #[test]
    fn a_fenced_node_runs_no_movable_replica() {
        let mut sim = Sim::new(&["a"]);
        sim.workloads
            .insert("web".into(), workload(2, PlacementSpec::default()));
        sim.settle();
        let owned = sim.owned["a"].clone();
        assert_eq!(
            local_replicas("a", false, &sim.workloads, &sim.claims, &owned).get("web"),
            Some(&2)
        );
        assert_eq!(
            local_replicas("a", true, &sim.workloads, &sim.claims, &owned).get("web"),
            None
        );
    }
}
