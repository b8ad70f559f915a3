//! The daemon through the real binary and its real socket: apply, get, describe and
//! delete round trips, a rejected apply changing nothing, the socket's mode, and
//! `kill -9` then restart converging to the stored desired state.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::guest;

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    /// Starts `setpoint daemon` on `state` and waits until its socket answers.
    fn start(state: &Path) -> Self {
        let socket = state.join("setpoint.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .args(["daemon", "--state-dir"])
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("daemon starts");
        let daemon = Self { child, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while daemon.cli(&["get"]).status.code() != Some(0) {
            assert!(Instant::now() < deadline, "the daemon never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("the CLI runs")
    }

    /// `get -o json`: the workloads' statuses.
    fn workloads(&self) -> Vec<Value> {
        let out = self.cli(&["get", "-o", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("json")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn wait_ready(&self, name: &str, ready: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self.workloads().into_iter().find(|w| w["name"] == name);
            if let Some(w) = found.filter(|w| w["ready"] == ready) {
                return w;
            }
            assert!(Instant::now() < deadline, "{name} never had {ready} ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn manifest(dir: &Path, name: &str, component: &str, replicas: u32) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {name}\nspec:\n  component: {component}\n  replicas: {replicas}\n  env: {{TICK_MS: '1000'}}\n"
        ),
    )
    .expect("write manifest");
    path
}

#[test]
fn apply_get_describe_delete_and_survive_kill_9() {
    let state = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    // The component lives beside the manifest, and is removed after the apply: the
    // daemon keeps its own copy.
    std::fs::copy(guest("ticker"), work.path().join("ticker.wasm")).expect("copy");
    let ticks = manifest(work.path(), "ticks", "ticker.wasm", 2);

    let daemon = Daemon::start(state.path());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&daemon.socket)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "only the owner may connect");
    }

    let dry = daemon.cli(&["apply", "-f", ticks.to_str().unwrap(), "--dry-run"]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(String::from_utf8_lossy(&dry.stdout).contains("workload/ticks created"));
    assert!(daemon.workloads().is_empty(), "a dry run changes nothing");

    let out = daemon.cli(&["apply", "-f", work.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = daemon.wait_ready("ticks", 2);
    std::fs::remove_file(work.path().join("ticker.wasm")).expect("remove");

    // A rejected apply (one good document, one bad) changes nothing.
    let good = manifest(work.path(), "more", "../nowhere.wasm", 1);
    let bad = work.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: Bad Name\nspec:\n  component: x.wasm\n").unwrap();
    let out = daemon.cli(&[
        "apply",
        "-f",
        good.to_str().unwrap(),
        "-f",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:6:14", good.display())),
        "located: {err}"
    );
    assert_eq!(daemon.workloads().len(), 1, "nothing was applied");

    let out = daemon.cli(&["describe", "workload/ticks"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Name:        ticks") && text.contains("Instances:"),
        "{text}"
    );

    // kill -9, restart: the same desired state, although the source file is gone.
    daemon.kill9();
    let daemon = Daemon::start(state.path());
    let after = daemon.wait_ready("ticks", 2);
    assert_eq!(after["revision"], before["revision"]);

    let out = daemon.cli(&["delete", "workload/ticks"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = daemon.cli(&["delete", "workload/ticks"]);
    assert_eq!(out.status.code(), Some(1), "already gone");
    daemon.kill9();
    let daemon = Daemon::start(state.path());
    assert!(
        daemon.workloads().is_empty(),
        "a delete survives a crash too"
    );
}
