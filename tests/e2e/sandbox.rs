//! The sandbox: a guest sees only what its manifest grants.

use crate::common::{Manifests, host, wait_for, workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_cannot_read_host_env_files_or_sockets() {
    // SAFETY: set before the host starts; this test binary's other tests never read it.
    unsafe { std::env::set_var("SETPOINT_TEST_HOST_SECRET", "hunter2") };
    let m = Manifests::new();
    let spec = "  restartPolicy: Never\n  env: {GRANTED: 'yes'}\n  args: [--flag, value]\n";
    let file = m.write("w.yaml", &workload("snoop", "snoop", spec));
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifest");
    let w = wait_for(&host, "snoop", "snoop finished", |w| {
        w.phase == setpoint::Phase::Succeeded
    })
    .await;
    let tail = &w.last_termination.as_ref().expect("ended").end.output.tail;
    let line = |prefix: &str| {
        tail.iter()
            .find(|l| l.starts_with(prefix))
            .cloned()
            .unwrap_or_else(|| panic!("no `{prefix}` line in {tail:?}"))
    };
    assert_eq!(
        line("env-keys:"),
        "env-keys: GRANTED",
        "only the granted env is visible"
    );
    assert_eq!(
        line("args:"),
        "args: snoop,--flag,value",
        "argv[0] is the workload name"
    );
    for path in ["/etc/passwd", "/etc/hostname", "/proc/self/environ", "."] {
        assert!(
            line(&format!("read {path}:")).contains("denied"),
            "{path} must not be readable"
        );
    }
    assert!(line("list /:").contains("denied"));
    assert!(line("connect 127.0.0.1:22:").contains("denied"));
    assert!(
        tail.iter()
            .all(|l| !l.contains("ALLOWED") && !l.contains("hunter2"))
    );
    host.shutdown().await;
}
