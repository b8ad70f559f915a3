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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_directories_and_addresses_work_and_nothing_else_does() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("input.txt"), "hello-from-host").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let m = Manifests::new();
    let grants = |read_only: bool, connect: bool| {
        let net = if connect {
            format!("  network:\n    connect: ['{addr}']\n")
        } else {
            String::new()
        };
        format!(
            "  restartPolicy: Never\n  env: {{CONNECT_TO: '{addr}'}}\n  dirs:\n    - {{host: '{}', guest: /data, readOnly: {read_only}}}\n{net}",
            data.path().display()
        )
    };
    let ro = m.write("ro.yaml", &workload("ro", "snoop", &grants(true, false)));
    let rw = m.write("rw.yaml", &workload("rw", "snoop", &grants(false, true)));
    let host = host();
    host.apply_files(&[ro, rw]).await.expect("valid manifests");
    let tail =
        |w: &setpoint::WorkloadStatus| w.last_termination.as_ref().unwrap().end.output.tail.clone();
    let ro = tail(
        &wait_for(&host, "ro", "done", |w| {
            w.phase == setpoint::Phase::Succeeded
        })
        .await,
    );
    let rw = tail(
        &wait_for(&host, "rw", "done", |w| {
            w.phase == setpoint::Phase::Succeeded
        })
        .await,
    );
    let has = |tail: &[String], line: &str| tail.iter().any(|l| l.starts_with(line));
    assert!(
        has(&ro, "read /data/input.txt: ok hello-from-host"),
        "{ro:?}"
    );
    assert!(
        has(&ro, "write /data/output.txt: denied"),
        "read-only means read-only: {ro:?}"
    );
    assert!(
        has(&ro, &format!("connect {addr}: denied")),
        "no network without a grant: {ro:?}"
    );
    assert!(
        has(&ro, "read /data/../../etc/passwd: denied"),
        "no escape through `..`: {ro:?}"
    );
    assert!(has(&rw, "write /data/output.txt: ok"), "{rw:?}");
    assert!(
        has(&rw, &format!("connect {addr}: ALLOWED")),
        "the granted address is reachable: {rw:?}"
    );
    assert!(has(&rw, "connect") && !has(&rw, "read /etc/passwd: ALLOWED"));
    assert_eq!(
        std::fs::read_to_string(data.path().join("output.txt")).unwrap(),
        "written by snoop"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_the_host_refuses_are_located_validation_errors() {
    let allowed = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let host = setpoint::Host::builder()
        .allowed_dir_roots(vec![allowed.path().to_path_buf()])
        .unwrap()
        .allow_network_grants(false)
        .build()
        .unwrap();
    let m = Manifests::new();
    let spec = format!(
        "  dirs:\n    - {{host: '{}', guest: /data}}\n  network:\n    connect: ['127.0.0.1:80']\n",
        outside.path().display()
    );
    let file = m.write("w.yaml", &workload("greedy", "snoop", &spec));
    let rejected = host
        .apply_files(std::slice::from_ref(&file))
        .await
        .expect_err("refused grants");
    let at = |line: u64, needle: &str| {
        rejected.diagnostics.iter().any(|d| {
            d.origin.as_ref().is_some_and(|o| o.line == line) && d.message.contains(needle)
        })
    };
    assert!(
        at(8, "is outside the directories this host grants"),
        "{rejected}"
    );
    assert!(at(10, "grants no network access"), "{rejected}");
    assert!(host.status().await.workloads.is_empty());
    host.shutdown().await;
}

/// A loopback HTTP server that answers every request `200 ok` and counts them.
fn http_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_http_is_denied_unless_its_authority_is_granted() {
    let (addr, served) = http_server();
    let m = Manifests::new();
    let env = format!("  restartPolicy: Never\n  env: {{AUTHORITY: '{addr}'}}\n");
    let other_port = format!("127.0.0.1:{}", addr.port().wrapping_add(1).max(1));
    let cases = [
        (
            "ungranted",
            String::new(),
            "error ErrorCode::HttpRequestDenied",
        ),
        (
            "elsewhere",
            format!("  network: {{http: ['{other_port}']}}\n"),
            "error ErrorCode::HttpRequestDenied",
        ),
        (
            "granted",
            format!("  network: {{http: ['{addr}']}}\n"),
            "status 200",
        ),
    ];
    let files: Vec<_> = cases
        .iter()
        .map(|(name, grant, _)| {
            m.write(
                &format!("{name}.yaml"),
                &workload(name, "fetcher", &format!("{env}{grant}")),
            )
        })
        .collect();
    let host = host();
    host.apply_files(&files).await.expect("valid manifests");
    for (name, _, expected) in &cases {
        let w = wait_for(&host, name, "the fetch finished", |w| {
            w.phase == setpoint::Phase::Succeeded
        })
        .await;
        let tail = &w.last_termination.as_ref().expect("ended").end.output.tail;
        let line = tail
            .iter()
            .find(|l| l.starts_with("fetch "))
            .unwrap_or_else(|| panic!("{name}: no fetch line in {tail:?}"));
        assert_eq!(*line, format!("fetch {addr}: {expected}"), "{name}");
    }
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the granted request reached the server"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_grants_are_located_errors() {
    let m = Manifests::new();
    let file = m.write(
        "w.yaml",
        &workload(
            "w",
            "fetcher",
            "  network:\n    http: ['http://api.example.com', 'a.example.com:443', 'A.example.com:443']\n",
        ),
    );
    let host = host();
    let rejected = host.apply_files(&[file]).await.expect_err("refused");
    let text = rejected.to_string();
    assert!(
        text.contains("w.yaml:8:") && text.contains("is not a HOST:PORT authority"),
        "{text}"
    );
    assert!(text.contains("is granted twice"), "{text}");
    assert_eq!(rejected.diagnostics.len(), 2, "{text}");
    assert!(
        host.status().await.workloads.is_empty(),
        "nothing was applied"
    );
    host.shutdown().await;
}
