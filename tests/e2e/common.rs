//! Helpers shared by the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use setpoint::{Host, HostStatus, WorkloadStatus};

/// How long a test waits for a state before it fails. Generous: tests assert what
/// happens, never how fast (speed is measured by benchmarks).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The path of a built example guest; fails with the command to run when missing.
pub fn guest(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-examples/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask guests` first",
        path.display()
    );
    path.canonicalize().expect("guest path")
}

/// A directory holding manifests for one test.
pub struct Manifests {
    pub dir: tempfile::TempDir,
}

impl Manifests {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Writes `yaml` as `name`, replacing `{guest:NAME}` with the guest's path.
    pub fn write(&self, name: &str, yaml: &str) -> PathBuf {
        let mut text = yaml.to_string();
        while let Some(start) = text.find("{guest:") {
            let end = start + text[start..].find('}').expect("closing brace");
            let guest_name = text[start + 7..end].to_string();
            text.replace_range(start..=end, &guest(&guest_name).display().to_string());
        }
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write manifest");
        path
    }
}

/// A host with test-friendly settings.
pub fn host() -> Host {
    Host::builder().build().expect("host starts")
}

/// A one-document Workload manifest.
pub fn workload(name: &str, guest_name: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {name}\nspec:\n  component: {{guest:{guest_name}}}\n{spec_extra}"
    )
}

/// Waits until `check` holds for the named workload, then returns its status.
pub async fn wait_for(
    host: &Host,
    name: &str,
    what: &str,
    check: impl Fn(&WorkloadStatus) -> bool,
) -> WorkloadStatus {
    let status = wait_for_host(host, what, |s| s.workload(name).is_some_and(&check)).await;
    status.workload(name).cloned().expect("checked above")
}

/// Waits until `check` holds for the whole host status.
pub async fn wait_for_host(
    host: &Host,
    what: &str,
    check: impl Fn(&HostStatus) -> bool,
) -> HostStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = host.status().await;
        if check(&status) {
            return status;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; last status:\n{}",
                serde_json::to_string_pretty(&status).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until no instance Store is left (an ended instance's Store is dropped by a
/// task of its own, just after its end is reported); `why` says what that shows.
pub async fn wait_no_stores(host: &Host, why: &str) {
    let deadline = Instant::now() + PATIENCE;
    while host.live_stores() > 0 {
        assert!(
            Instant::now() < deadline,
            "{why}: {} Stores left",
            host.live_stores()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether the last termination is a trap whose record has its Wasm backtrace (which
/// is formatted after the end was handled, and completes the record a moment later).
pub fn last_trap_has_backtrace(w: &WorkloadStatus) -> bool {
    w.last_termination.as_ref().is_some_and(|t| {
        matches!(&t.end.reason, setpoint::runtime::EndReason::Trapped { message, .. }
            if message.contains("wasm backtrace"))
    })
}

/// The `reason` of a workload's last termination.
pub fn last_reason(w: &WorkloadStatus) -> Option<&'static str> {
    w.last_termination.as_ref().map(|t| t.end.reason.name())
}

/// A `setpoint daemon` started from the real binary on a state directory.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts `setpoint daemon` on `state` and waits until its socket answers.
    pub fn start(state: &Path) -> Self {
        Self::start_with(state, &[])
    }

    /// Starts `setpoint daemon` with more arguments.
    pub fn start_with(state: &Path, extra: &[&str]) -> Self {
        Self::spawn(state, extra, None)
    }

    /// Starts `setpoint daemon` with its open-file limit set to `max_files`.
    pub fn start_limited(state: &Path, extra: &[&str], max_files: u64) -> Self {
        Self::spawn(state, extra, Some(max_files))
    }

    /// Starts `setpoint daemon` under a wrapper command (`ip netns exec NS`).
    pub fn start_in(wrapper: &[&str], state: &Path, extra: &[&str]) -> Self {
        Self::spawn_with(wrapper, state, extra, None)
    }

    fn spawn(state: &Path, extra: &[&str], max_files: Option<u64>) -> Self {
        Self::spawn_with(&[], state, extra, max_files)
    }

    fn spawn_with(wrapper: &[&str], state: &Path, extra: &[&str], max_files: Option<u64>) -> Self {
        use std::os::unix::process::CommandExt as _;
        let socket = state.join("setpoint.sock");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_setpoint"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_setpoint")),
        };
        command
            .args(["daemon", "--state-dir"])
            .arg(state)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(max) = max_files {
            // SAFETY: setrlimit is async-signal-safe, and only this child's limit changes.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: max,
                        rlim_max: max,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = command.spawn().expect("daemon starts");
        let daemon = Self { child, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while daemon.cli(&["get"]).status.code() != Some(0) {
            assert!(Instant::now() < deadline, "the daemon never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("the CLI runs")
    }

    /// `apply -f FILE`, which must succeed; returns what it printed.
    pub fn apply(&self, file: &Path) -> String {
        let out = self.cli(&["apply", "-f", file.to_str().expect("a UTF-8 path")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `get -o json`: the workloads' statuses.
    pub fn workloads(&self) -> Vec<Value> {
        self.json_list(&["get", "-o", "json"])
    }

    /// A command that must succeed and print a JSON list.
    pub fn json_list(&self, args: &[&str]) -> Vec<Value> {
        let out = self.cli(args);
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

    pub fn wait_ready(&self, name: &str, ready: u64) -> Value {
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

    pub fn kill9(&mut self) {
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
