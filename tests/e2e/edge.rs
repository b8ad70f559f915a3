//! Edge features: device capabilities granted per workload, precompiled components, and
//! the Pulley interpreter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use setpoint::{Capability, Host, Phase};

use crate::common::{Manifests, guest, wait_for, workload};

/// A host providing `device:sensors/read` whose reads count into `reads` and report
/// the calling workload.
fn sensor_host(reads: Arc<AtomicU32>, callers: Arc<std::sync::Mutex<Vec<String>>>) -> Host {
    let capability = Capability::new("device:sensors/read@0.1.0").func(
        "temperature",
        move |caller, (id,): (u32,)| {
            reads.fetch_add(1, Ordering::Relaxed);
            callers
                .lock()
                .unwrap()
                .push(format!("{}/{}", caller.workload(), caller.instance()));
            let reading: Result<f32, String> = if id == 0 {
                Ok(21.5)
            } else {
                Err(format!("no sensor {id}"))
            };
            Ok((reading,))
        },
    );
    Host::builder()
        .capability(capability)
        .build()
        .expect("host starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_capability_is_served_by_the_embedders_code() {
    let reads = Arc::new(AtomicU32::new(0));
    let callers = Arc::default();
    let host = sensor_host(reads.clone(), Arc::clone(&callers));
    let m = Manifests::new();
    let spec = "  restartPolicy: Never\n  env: {READINGS: '3', PERIOD_MS: '1'}\n  capabilities: [device:sensors/read]\n";
    let bad_sensor = "  restartPolicy: Never\n  env: {READINGS: '1', SENSOR: '7'}\n  capabilities: ['device:sensors/read@0.1.0']\n";
    let file = m.write(
        "w.yaml",
        &format!(
            "{}\n---\n{}",
            workload("reader", "sensor", spec),
            workload("wrong-id", "sensor", bad_sensor)
        ),
    );
    host.apply_files(&[file]).await.expect("granted: valid");
    let w = wait_for(&host, "reader", "reader finished", |w| {
        w.phase == Phase::Succeeded
    })
    .await;
    let tail = &w.last_termination.as_ref().expect("ended").end.output.tail;
    assert_eq!(
        tail.iter().filter(|l| *l == "sensor 0: 21.5 C").count(),
        3,
        "three readings from the host's function: {tail:?}"
    );
    let w = wait_for(&host, "wrong-id", "wrong-id finished", |w| {
        w.phase == Phase::Succeeded
    })
    .await;
    let tail = &w.last_termination.as_ref().expect("ended").end.output.tail;
    assert!(
        tail.iter()
            .any(|l| l == "sensor 7: unreadable: no sensor 7"),
        "the WIT error reaches the guest: {tail:?}"
    );
    assert_eq!(reads.load(Ordering::Relaxed), 4);
    let callers = callers.lock().unwrap().clone();
    assert!(callers.iter().any(|c| c.starts_with("reader/reader-")));
    assert!(callers.iter().any(|c| c.starts_with("wrong-id/wrong-id-")));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_or_unknown_capabilities_are_rejected_and_change_nothing() {
    let host = sensor_host(Arc::default(), Arc::default());
    let m = Manifests::new();
    let keep = m.write(
        "keep.yaml",
        &workload("keep", "ticker", "  env: {TICK_MS: '1000'}\n"),
    );
    host.apply_files(&[keep]).await.expect("valid");
    wait_for(&host, "keep", "keep running", |w| w.ready == 1).await;
    let before = host.status().await.workload("keep").cloned().unwrap();

    // The component imports the capability, the workload does not grant it.
    let ungranted = m.write("ungranted.yaml", &workload("reader", "sensor", ""));
    let err = host
        .apply_files(std::slice::from_ref(&ungranted))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("{}:6:14", ungranted.display())),
        "located at spec.component: {text}"
    );
    assert!(text.contains("imports the device capability `device:sensors/read@0.1.0`"));
    assert!(text.contains("add `device:sensors/read` to spec.capabilities"));

    // A grant of something this host does not provide, located at the grant.
    let unknown = m.write(
        "unknown.yaml",
        &workload(
            "reader",
            "sensor",
            "  capabilities:\n    - device:sensors/read\n    - device:camera/capture\n",
        ),
    );
    let err = host
        .apply_files(std::slice::from_ref(&unknown))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("{}:9:7", unknown.display())),
        "located at the grant: {text}"
    );
    assert!(text.contains("`device:camera/capture`, which this host does not provide"));
    assert!(text.contains("this host provides: device:sensors/read"));

    // A malformed grant is a manifest error.
    let malformed = m.write(
        "malformed.yaml",
        &workload("reader", "sensor", "  capabilities: [sensors]\n"),
    );
    let err = host.apply_files(&[malformed]).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("`sensors` is not a WIT interface name")
    );

    let after = host.status().await;
    assert!(after.workload("reader").is_none(), "nothing was applied");
    let keep = after.workload("keep").unwrap();
    assert_eq!(
        (keep.revision.as_str(), keep.restarts),
        (before.revision.as_str(), 0)
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_the_capability_cannot_link_the_component() {
    let host = crate::common::host();
    let m = Manifests::new();
    let file = m.write(
        "w.yaml",
        &workload(
            "reader",
            "sensor",
            "  capabilities: [device:sensors/read]\n",
        ),
    );
    let text = host.apply_files(&[file]).await.unwrap_err().to_string();
    assert!(
        text.contains("this host provides no device capabilities"),
        "{text}"
    );
    host.shutdown().await;
}

/// Precompiles `name` with the real binary into `dir`, for `target` (None: this machine).
fn precompile(dir: &std::path::Path, name: &str, target: Option<&str>) -> std::path::PathBuf {
    let out = dir.join(format!("{name}-{}.cwasm", target.unwrap_or("native")));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"));
    cmd.arg("compile").arg(guest(name)).arg("-o").arg(&out);
    if let Some(t) = target {
        cmd.args(["--target", t]);
    }
    let result = cmd.output().expect("setpoint compile runs");
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precompiled_components_run_only_when_allowed_and_compatible() {
    let m = Manifests::new();
    let native = precompile(m.dir.path(), "ticker", None);
    let pulley = precompile(m.dir.path(), "ticker", Some("pulley64"));
    let manifest = |name: &str, path: &std::path::Path| {
        m.write(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}}}\nspec:\n  component: {}\n  replicas: 2\n  env: {{TICK_MS: '1000'}}\n",
                path.display()
            ),
        )
    };

    // Refused by default: a .cwasm is native code.
    let host = crate::common::host();
    let text = host
        .apply_files(&[manifest("native", &native)])
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("is a precompiled component"), "{text}");
    assert!(text.contains("--allow-precompiled"), "{text}");
    host.shutdown().await;

    // Allowed: the native artifact runs; the Pulley one is refused as incompatible.
    let host = Host::builder().allow_precompiled(true).build().unwrap();
    host.apply_files(&[manifest("native", &native)])
        .await
        .expect("compatible artifact");
    wait_for(&host, "native", "precompiled ticker ready", |w| {
        w.ready == 2
    })
    .await;
    let text = host
        .apply_files(&[manifest("pulley", &pulley)])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("was precompiled for a different engine") && text.contains("pulley64"),
        "{text}"
    );
    // A file that is neither a component nor an artifact of this engine.
    let garbage = m.dir.path().join("garbage.cwasm");
    let mut bytes = std::fs::read(&native).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&garbage, bytes).unwrap();
    assert!(
        host.apply_files(&[manifest("garbage", &garbage)])
            .await
            .is_err(),
        "a truncated artifact is refused"
    );
    assert_eq!(host.status().await.workloads.len(), 1);
    host.shutdown().await;

    // On the interpreter, the Pulley artifact runs and the native one is refused.
    let host = Host::builder()
        .allow_precompiled(true)
        .interpreter(true)
        .build()
        .unwrap();
    host.apply_files(&[manifest("pulley", &pulley)])
        .await
        .expect("pulley artifact on the interpreter");
    wait_for(&host, "pulley", "pulley ticker ready", |w| w.ready == 2).await;
    assert!(
        host.apply_files(&[manifest("native", &native)])
            .await
            .is_err()
    );
    host.shutdown().await;
}

#[test]
fn compile_refuses_unknown_targets_and_precompiled_input() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .arg("compile")
            .args(args)
            .output()
            .unwrap()
    };
    let out = dir.path().join("x.cwasm");
    let ticker = guest("ticker");
    let bad = run(&[
        ticker.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--target".as_ref(),
        "mips-unknown-linux-gnu".as_ref(),
    ]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("cannot compile for `mips-unknown-linux-gnu`"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written on failure");

    let native = precompile(dir.path(), "ticker", None);
    let again = run(&[native.as_os_str(), "-o".as_ref(), out.as_os_str()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already precompiled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_capability_lets_the_caller_wait_without_blocking_others() {
    let capability = Capability::new("device:sensors/read@0.1.0").func_async(
        "temperature",
        |caller, (id,): (u32,)| async move {
            // A bus transaction: the calling instance waits, the worker thread does not.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let reading: Result<f32, String> = Ok(id as f32 + 0.5);
            assert_eq!(&*caller.workload, "slow-reader");
            Ok((reading,))
        },
    );
    let host = Host::builder().capability(capability).build().unwrap();
    let m = Manifests::new();
    let spec = "  restartPolicy: Never\n  env: {READINGS: '2', SENSOR: '3', PERIOD_MS: '1'}\n  capabilities: [device:sensors/read]\n";
    let file = m.write("w.yaml", &workload("slow-reader", "sensor", spec));
    host.apply_files(&[file]).await.expect("valid");
    let w = wait_for(&host, "slow-reader", "reader finished", |w| {
        w.phase == Phase::Succeeded
    })
    .await;
    let tail = &w.last_termination.as_ref().expect("ended").end.output.tail;
    assert_eq!(
        tail.iter().filter(|l| *l == "sensor 3: 3.5 C").count(),
        2,
        "{tail:?}"
    );
    host.shutdown().await;
}
