//! The real `setpoint` binary.

use std::process::Command;

use crate::common::{Manifests, workload};

fn setpoint() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_setpoint"));
    cmd.env_remove("RUST_BACKTRACE");
    cmd
}

#[test]
fn validate_accepts_the_example_specs() {
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/demo.yaml");
    let out = setpoint()
        .arg("validate")
        .arg(&demo)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: 4 workload(s)"));
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
