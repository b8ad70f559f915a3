//! The fleet under a real nats-server and three real daemons (the release binary) on
//! this machine: how long a killed host's replicas take to run elsewhere, how long an
//! apply takes to run on its assigned host (1 workload, and 1,000 across 3 hosts), and
//! how many messages the engine carries per host at rest.
//!
//! `cargo bench --bench fleet` (full: 20 kills, 1,000 workloads);
//! `cargo bench --bench fleet -- --kills 3 --workloads 30` for a quick run; `cargo test`
//! runs it at 1 kill and 10 workloads, so that it cannot rot. nats-server is found or
//! installed as the tests do (`tests/support/nats.rs`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../../tests/support/nats.rs"]
mod nats;

const BIN: &str = env!("CARGO_BIN_EXE_setpoint");

struct Node {
    name: String,
    state: PathBuf,
    url: String,
    child: Option<Child>,
}

impl Node {
    fn socket(&self) -> PathBuf {
        self.state.join("setpoint.sock")
    }

    fn start(&mut self) {
        let child = Command::new(BIN)
            .args(["daemon", "--state-dir"])
            .arg(&self.state)
            .args(["--fleet", &self.url, "--node", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("daemon");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.cli(&["get"]).status.success() {
            assert!(Instant::now() < deadline, "{} never answered", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .output()
            .expect("cli")
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_slice(&self.cli(args).stdout).unwrap_or(Value::Null)
    }

    /// Instances of `owner` per node, as this node sees the fleet.
    fn placement(&self, owner: &str) -> std::collections::BTreeMap<String, u32> {
        let mut out = std::collections::BTreeMap::new();
        for i in self
            .json(&["get", "instances", "-o", "json"])
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["owner"] == owner)
        {
            *out.entry(i["node"].as_str().unwrap_or("?").to_string())
                .or_insert(0) += 1;
        }
        out
    }

    /// Live instances per node from the heartbeats (cheap at any size).
    fn heartbeat_instances(&self) -> u64 {
        self.json(&["get", "nodes", "-o", "json"])
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["instances"].as_u64())
            .sum()
    }

    fn apply(&self, file: &Path) {
        let out = self.cli(&["apply", "-f", file.to_str().expect("utf-8")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn wait(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn workload(name: &str, replicas: u32, component: &Path) -> String {
    format!(
        "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {name}\nspec:\n  component: {}\n  replicas: {replicas}\n  env:\n    TICK_MS: \"60000\"\n",
        component.display()
    )
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test` runs the same at tiny sizes.
    let full = std::env::args().any(|a| a == "--bench");
    let mut args = std::env::args().skip(1);
    let (mut kills, mut many) = if full { (20usize, 1000usize) } else { (1, 10) };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--kills" => kills = args.next().and_then(|v| v.parse().ok()).unwrap_or(kills),
            "--workloads" => many = args.next().and_then(|v| v.parse().ok()).unwrap_or(many),
            _ => {}
        }
    }
    let engine = match nats::Nats::single() {
        Ok(e) => e,
        Err(why) => {
            println!("fleet bench skipped: no nats-server: {why}");
            return;
        }
    };
    let component = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-examples/target/wasm32-wasip2/release/ticker.wasm")
        .canonicalize()
        .expect("ticker.wasm: run `cargo xtask guests`");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<Node> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|name| Node {
            name: name.to_string(),
            state: dir.path().join(name),
            url: engine.url(),
            child: None,
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    wait("3 nodes", || {
        nodes[0]
            .json(&["get", "nodes", "-o", "json"])
            .as_array()
            .is_some_and(|n| n.len() == 3)
    });
    // A node that has just joined places nothing but its own claims for one TTL.
    std::thread::sleep(Duration::from_secs(2));

    // Apply → running, one workload of one replica, ten times.
    let mut applies = Vec::new();
    for i in 0..if full { 10 } else { 2 } {
        let name = format!("one-{i}");
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, workload(&name, 1, &component)).expect("manifest");
        let started = Instant::now();
        nodes[i % 3].apply(&file);
        wait("one ready", || {
            nodes[i % 3].placement(&name).values().sum::<u32>() == 1
        });
        applies.push(started.elapsed());
        let out = nodes[0].cli(&["delete", &format!("workload/{name}")]);
        assert!(out.status.success());
    }
    applies.sort();

    // Host death → its replicas running elsewhere.
    let file = dir.path().join("web.yaml");
    std::fs::write(&file, workload("web", 6, &component)).expect("manifest");
    nodes[0].apply(&file);
    let even =
        |p: &std::collections::BTreeMap<String, u32>| p.len() == 3 && p.values().all(|c| *c == 2);
    wait("2/2/2", || even(&nodes[0].placement("web")));
    let mut failovers = Vec::new();
    for k in 0..kills {
        let victim = k % 3;
        let watcher = (victim + 1) % 3;
        nodes[victim].kill9();
        let killed = Instant::now();
        let gone = nodes[victim].name.clone();
        wait("failover", || {
            let p = nodes[watcher].placement("web");
            p.values().sum::<u32>() == 6 && !p.contains_key(&gone)
        });
        failovers.push(killed.elapsed());
        nodes[victim].start();
        wait("2/2/2 again", || even(&nodes[watcher].placement("web")));
    }
    failovers.sort();
    let out = nodes[0].cli(&["delete", "workload/web"]);
    assert!(out.status.success());
    wait("web gone", || nodes[0].heartbeat_instances() == 0);

    // Many workloads in one apply, one replica each.
    let mut text = String::new();
    for i in 0..many {
        text.push_str(&workload(&format!("w{i}"), 1, &component));
        text.push_str("---\n");
    }
    let file = dir.path().join("many.yaml");
    std::fs::write(&file, text).expect("manifest");
    let started = Instant::now();
    nodes[0].apply(&file);
    let applied = started.elapsed();
    wait("all running", || {
        nodes[0].heartbeat_instances() == many as u64
    });
    let all_running = started.elapsed();

    // The engine's traffic at rest with them.
    std::thread::sleep(Duration::from_secs(2));
    let window = Duration::from_secs(if full { 10 } else { 1 });
    let before = engine.message_counts().unwrap_or_default();
    std::thread::sleep(window);
    let after = engine.message_counts().unwrap_or_default();
    let per_host = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / window.as_secs_f64() / 3.0;

    println!("## fleet: 3 daemons and nats-server (single node) on this machine");
    println!();
    println!("| measure | p50 | p99 | n |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| kill -9 of a host → its replicas running elsewhere | {} | {} | {} |",
        ms(percentile(&failovers, 0.5)),
        ms(percentile(&failovers, 0.99)),
        failovers.len()
    );
    println!(
        "| apply → running on its assigned host, 1 workload | {} | {} | {} |",
        ms(percentile(&applies, 0.5)),
        ms(percentile(&applies, 0.99)),
        applies.len()
    );
    println!(
        "| apply of {many} workloads → all running across 3 hosts | {} (apply answered in {}) | | 1 |",
        ms(all_running),
        ms(applied)
    );
    println!(
        "| engine messages per host per second at rest, {many} workloads | in {:.1}, out {:.1} | | |",
        per_host(before.0, after.0),
        per_host(before.1, after.1)
    );
}
