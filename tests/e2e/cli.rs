//! The real `setpoint` binary.

use std::process::Command;

use crate::common::{Manifests, workload};

fn setpoint() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_setpoint"));
    cmd.env_remove("RUST_BACKTRACE");
    cmd
}

/// What `command` (a shell command line) writes to a terminal that `script`
/// (util-linux) gives it, or `None` after saying why there is no terminal here.
fn on_a_terminal(command: &str) -> Option<String> {
    let script = Command::new("script").arg("--version").output();
    if script.map(|o| !o.status.success()).unwrap_or(true) {
        eprintln!("skipped the terminal part: no `script` (util-linux) here");
        return None;
    }
    let out = Command::new("script")
        .args(["-qfec", command, "/dev/null"])
        .output()
        .expect("script runs");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Asserts that `setpoint validate specs/FILE` accepts `count` workloads.
fn assert_spec_validates(file: &str, count: usize) {
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../specs")
        .join(file);
    let out = setpoint()
        .arg("validate")
        .arg(&spec)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("ok: {count} workload(s)")),
        "{file}: {stdout}"
    );
}

#[test]
fn validate_accepts_every_example_spec() {
    assert_spec_validates("demo.yaml", 4);
    assert_spec_validates("http.yaml", 2);
    assert_spec_validates("hostile.yaml", 7);
    assert_spec_validates("policies.yaml", 3);
    assert_spec_validates("jobs.yaml", 1);
}

#[test]
fn validate_reports_located_errors_and_exits_1() {
    let m = Manifests::new();
    let file = m.write("bad.yaml", &workload("a", "ticker", "  replicas: many\n"));
    let out = setpoint()
        .arg("validate")
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:7:13: error:", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was applied"), "{stderr}");
}

#[test]
fn run_keeps_the_example_replicas_and_prints_json_status() {
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/demo.yaml");
    let cache = tempfile::tempdir().unwrap();
    let out = setpoint()
        .args(["run", "--for", "3s", "-o", "json", "--quiet", "--cache-dir"])
        .arg(cache.path())
        .arg(&demo)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("JSON status on stdout");
    let ticker = status["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "ticker")
        .expect("ticker");
    assert_eq!(ticker["desired"], 3);
    assert_eq!(ticker["ready"], 3);
    assert_eq!(ticker["phase"], "Running");
    for key in [
        "kind",
        "restarts",
        "conditions",
        "events",
        "revision",
        "labels",
    ] {
        assert!(ticker.get(key).is_some(), "status has `{key}`");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Stopped"),
        "instances are stopped at the end: {stderr}"
    );
    assert!(
        std::fs::read_dir(cache.path()).unwrap().next().is_some(),
        "compiled components were cached"
    );
}

#[test]
fn schema_prints_the_stored_schema() {
    let out = setpoint().arg("schema").output().expect("runs");
    assert!(out.status.success());
    let stored =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/manifest.schema.json");
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stored).unwrap()).unwrap();
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, stored);
}

#[test]
fn sigterm_stops_every_instance_gracefully_and_exits() {
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/demo.yaml");
    use std::io::BufRead;
    let mut child = setpoint()
        .args(["run", "-o", "json", "--no-cache"])
        .arg(&demo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    // Read stderr on a thread; signal once the instances are visibly running.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("hello from ticker"))
    {
        let line = lines_rx
            .recv_timeout(crate::common::PATIENCE)
            .expect("the demo starts and its ticker prints");
        seen.push(line);
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let out = child.wait_with_output().expect("exits after SIGTERM");
    reader.join().unwrap();
    seen.extend(lines_rx.try_iter());
    assert!(out.status.success(), "exit status {:?}", out.status);
    let stderr = seen.join("\n");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("final JSON status");
    let running: u64 = status["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["running"].as_u64().unwrap())
        .sum();
    let stopped = stderr.matches("Stopped (Shutdown)").count() as u64;
    assert_eq!(
        stopped, running,
        "every running instance was stopped: {stderr}"
    );
    assert!(
        stderr.contains("watched: stop requested, exiting cleanly"),
        "the watched command stopped on its own: {stderr}"
    );
    assert!(!stderr.contains("forced after grace period"), "{stderr}");
}

#[test]
fn policy_test_replays_a_snapshot_through_a_plugin_and_the_builtin_alike() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let snapshot = root.join("specs/snapshots/crashloop.yaml");
    let plugin = crate::common::guest("policy_replicas");
    let run = |args: &[&std::ffi::OsStr]| setpoint().args(args).output().expect("runs");
    let from_plugin = run(&[
        "policy".as_ref(),
        "test".as_ref(),
        plugin.as_os_str(),
        "--snapshot".as_ref(),
        snapshot.as_os_str(),
        "-o".as_ref(),
        "json".as_ref(),
    ]);
    assert!(
        from_plugin.status.success(),
        "{}",
        String::from_utf8_lossy(&from_plugin.stderr)
    );
    let builtin = run(&[
        "policy".as_ref(),
        "test".as_ref(),
        "--builtin".as_ref(),
        "--snapshot".as_ref(),
        snapshot.as_os_str(),
        "-o".as_ref(),
        "json".as_ref(),
    ]);
    assert!(builtin.status.success());
    let a: serde_json::Value = serde_json::from_slice(&from_plugin.stdout).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&builtin.stdout).unwrap();
    assert_eq!(a, b);
    assert_eq!(a[1], serde_json::json!({"action": "spawn", "slot": 2}));
    let broken = crate::common::guest("policy_broken");
    let failed = run(&[
        "policy".as_ref(),
        "test".as_ref(),
        broken.as_os_str(),
        "--snapshot".as_ref(),
        snapshot.as_os_str(),
    ]);
    assert_eq!(failed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("fall back"));
}

#[test]
fn run_exports_snapshots_that_policy_test_replays() {
    let m = Manifests::new();
    let spec = format!(
        "  replicas: 2\n  policy:\n    plugin: {}\n",
        crate::common::guest("policy_ordered").display()
    );
    let file = m.write("w.yaml", &workload("ordered", "ticker", &spec));
    let dir = tempfile::tempdir().unwrap();
    let out = setpoint()
        .args([
            "run",
            "--for",
            "2s",
            "--quiet",
            "--no-cache",
            "-o",
            "json",
            "--snapshots",
        ])
        .arg(dir.path())
        .arg(&file)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported = dir.path().join("ordered.json");
    let snapshot: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&exported).unwrap()).unwrap();
    assert_eq!(snapshot["desired"]["replicas"], 2);
    assert_eq!(snapshot["observed"]["slots"].as_array().unwrap().len(), 2);
    let replay = setpoint()
        .args(["policy", "test"])
        .arg(crate::common::guest("policy_ordered"))
        .arg("--snapshot")
        .arg(&exported)
        .output()
        .expect("runs");
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&replay.stdout).trim(),
        "(no actions)",
        "a converged workload needs nothing"
    );
}

#[test]
fn a_run_of_jobs_ends_when_they_finish_with_their_verdict_as_exit_status() {
    let m = Manifests::new();
    let job = |name: &str, code: u32| {
        format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n  component: {{guest:batch}}\n  completions: 2\n  backoffLimit: 0\n  env: {{WORK_MS: '5', EXIT_CODE: '{code}'}}\n"
        )
    };
    // No `--for`: without the jobs' end the run would last until the test's timeout.
    let run = |file: &std::path::Path| {
        let mut child = setpoint()
            .args(["run", "-o", "json"])
            .arg(file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run starts");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("waits") {
                let mut out = String::new();
                std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
                let json: serde_json::Value = serde_json::from_str(&out).expect("final status");
                return (status.code(), json);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("the run did not end when its jobs had finished");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let ok = m.write("ok.yaml", &format!("{}---\n{}", job("a", 0), job("b", 0)));
    let (code, json) = run(&ok);
    assert_eq!(code, Some(0));
    assert!(
        json["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["phase"] == "Succeeded"),
        "{json}"
    );
    let bad = m.write("bad.yaml", &format!("{}---\n{}", job("c", 0), job("d", 3)));
    let (code, json) = run(&bad);
    assert_eq!(code, Some(1), "a failed job fails the run");
    let phases: Vec<&str> = json["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["Succeeded", "Failed"]);
}

#[test]
fn version_names_setpoint_wasmtime_and_the_build() {
    let out = setpoint().arg("version").output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("setpoint {}\n", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains(&format!(
        "wasmtime {}",
        setpoint::runtime::engine::WASMTIME_VERSION
    )));
    assert!(text.contains("compiler: "), "{text}");
}

#[test]
fn completion_scripts_know_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .args(["completion", shell])
            .output()
            .expect("runs");
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["rollout", "describe", "completion", "access"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["completion", "tcsh"])
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn explain_describes_a_field_from_the_schema() {
    let explain = |field: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .args(["explain", field])
            .output()
            .expect("runs")
    };
    let out = explain("spec.http");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FIELD:    spec.http"), "{text}");
    assert!(text.contains("listen  <string> (required)"), "{text}");
    assert!(text.contains("retry  <Retry>"), "{text}");
    let text = String::from_utf8_lossy(&explain("spec.health.probe.period").stdout).into_owned();
    assert!(
        text.contains("Time between probes (default `1s`)"),
        "{text}"
    );
    let out = explain("spec.nosuch");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`spec` has no field `nosuch`; its fields are: "),
        "{err}"
    );
    assert!(err.contains("replicas"), "{err}");
}

#[test]
fn runs_final_table_says_the_instances_stopped_and_a_terminal_gets_a_table_redrawn_in_place() {
    let m = Manifests::new();
    let file = m.write(
        "t.yaml",
        &workload(
            "ticker",
            "ticker",
            "  replicas: 3\n  env: {TICK_MS: \"100\"}\n",
        ),
    );
    // Not a terminal: guest lines on stderr, the final table alone on stdout.
    let out = setpoint()
        .args(["run", "--for", "2s", "--no-cache"])
        .arg(&file)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.contains("Stopped (was Running)") && table.contains("0/3 (was 3)"),
        "{table}"
    );
    assert!(
        !table.contains('\u{1b}') && !table.contains(" | "),
        "{table}"
    );
    // A terminal (`script` gives it one): the table is redrawn in place below the
    // guest lines, and no guest line is torn by it.
    let command = format!(
        "{} run --for 2s --no-cache --status-every 100ms {}",
        env!("CARGO_BIN_EXE_setpoint"),
        file.display()
    );
    let Some(screen) = on_a_terminal(&command) else {
        return;
    };
    assert!(
        screen.contains("\u{1b}[2A\r\u{1b}[J"),
        "not redrawn in place:\n{screen}"
    );
    let mut guest_lines = 0;
    for line in screen.split('\n') {
        // What the terminal shows of a line: what follows its last carriage return (a
        // spinner or a redraw before it was cleared), without the clearing sequences.
        let line = line.trim_end_matches('\r');
        let line = line
            .rsplit('\r')
            .next()
            .unwrap_or(line)
            .trim_start_matches("\u{1b}[K")
            .trim_start_matches("\u{1b}[J");
        if line.contains(" | tick") {
            guest_lines += 1;
            assert!(
                line.starts_with("ticker-") && !line.contains("PHASE"),
                "a torn line: {line:?}"
            );
        }
    }
    assert!(guest_lines > 0, "{screen}");
}

#[test]
fn validate_and_policy_test_cache_what_they_compile_as_run_does() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let files_in = |dir: &std::path::Path| {
        fn count(dir: &std::path::Path) -> usize {
            std::fs::read_dir(dir).map_or(0, |entries| {
                entries
                    .flatten()
                    .map(|e| {
                        let p = e.path();
                        if p.is_dir() { count(&p) } else { 1 }
                    })
                    .sum()
            })
        }
        count(dir)
    };
    // `policy test` of a plugin, twice: compiled into the cache the first time.
    let cache = tempfile::tempdir().unwrap();
    let plugin = crate::common::guest("policy_replicas");
    let snapshot = root.join("specs/snapshots/crashloop.yaml");
    for _ in 0..2 {
        let out = setpoint()
            .args(["policy", "test"])
            .arg(&plugin)
            .arg("--snapshot")
            .arg(&snapshot)
            .arg("--cache-dir")
            .arg(cache.path())
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cached = files_in(cache.path());
    assert!(cached > 0, "policy test cached nothing");
    // `validate` likewise; --no-cache writes nothing.
    let cache = tempfile::tempdir().unwrap();
    let demo = root.join("specs/demo.yaml");
    let out = setpoint()
        .args(["validate", "--cache-dir"])
        .arg(cache.path())
        .arg(&demo)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(files_in(cache.path()) > 0, "validate cached nothing");
    let empty = tempfile::tempdir().unwrap();
    let out = setpoint()
        .args(["validate", "--no-cache"])
        .arg(&demo)
        .env("XDG_CACHE_HOME", empty.path())
        .output()
        .expect("runs");
    assert!(out.status.success());
    assert_eq!(files_in(empty.path()), 0);
}

#[test]
fn a_component_that_cannot_link_is_refused_before_it_is_compiled() {
    let m = Manifests::new();
    let file = m.write("bad.yaml", &workload("bad", "bad-import", ""));
    let cache = tempfile::tempdir().unwrap();
    let out = setpoint()
        .args(["validate", "--cache-dir"])
        .arg(cache.path())
        .arg(&file)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "it imports `example:bad-import/teleporter`, which this host does not provide"
        ),
        "{stderr}"
    );
    // Nothing was compiled: the cache is as empty as it was.
    let cached = std::fs::read_dir(cache.path()).map_or(0, |d| d.count());
    assert_eq!(cached, 0, "it was compiled before it was refused");
    // A plugin that is not one is refused the same way.
    let snapshot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/snapshots/crashloop.yaml");
    let out = setpoint()
        .args(["policy", "test"])
        .arg(crate::common::guest("ticker"))
        .arg("--snapshot")
        .arg(&snapshot)
        .arg("--cache-dir")
        .arg(cache.path())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("does not export `setpoint:policy/reconciler"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(cache.path()).map_or(0, |d| d.count()), 0);
}

#[test]
fn a_long_compile_shows_a_spinner_on_a_terminal_and_clears_it() {
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/demo.yaml");
    // Shown at once (not after 0.4 s), so that a fast machine shows it too.
    let command = format!(
        "env SETPOINT_PROGRESS_AFTER_MS=0 {} validate --no-cache {}",
        env!("CARGO_BIN_EXE_setpoint"),
        demo.display()
    );
    let Some(screen) = on_a_terminal(&command) else {
        return;
    };
    assert!(
        screen.contains("compiling 4 components (")
            && screen.contains("\r\u{1b}[Kok: 4 workload(s)"),
        "{screen:?}"
    );
    // Not a terminal: no spinner at all.
    let out = setpoint()
        .args(["validate", "--no-cache"])
        .arg(&demo)
        .output()
        .expect("runs");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("compiling"));
}
