//! HTTP services: real `wasi:http/proxy` components (`hello-http`, `http-chaos`) served
//! by the real front, driven by a real HTTP/1.1 client over loopback sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use setpoint::{FrontConfig, Host};

use crate::common::{Manifests, PATIENCE, host, last_reason, wait_for, workload};

/// A response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The body arrived whole (its length, or the last chunk, was seen).
    pub complete: bool,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request on a fresh connection (`Connection: close`) and reads the reply.
pub fn send(addr: &str, method: &str, path: &str, body: &[u8]) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    // A connection cut mid-body ends with an error or EOF: both leave what was read.
    let _ = stream.read_to_end(&mut raw);
    parse(&raw)
}

/// Parses an HTTP/1.1 response read to the end of its connection.
fn parse(raw: &[u8]) -> std::io::Result<Reply> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no response head"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let (body, complete) = if chunked {
        dechunk(rest)
    } else {
        let length = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
        (rest.to_vec(), length.is_none_or(|n| n == rest.len()))
    };
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        complete,
    })
}

/// Decodes a chunked body; `complete` when the terminating chunk was there.
fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (body, false);
        };
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size else {
            return (body, false);
        };
        if size == 0 {
            return (body, true);
        }
        let start = eol + 2;
        if rest.len() < start + size {
            body.extend_from_slice(&rest[start..]);
            return (body, false);
        }
        body.extend_from_slice(&rest[start..start + size]);
        rest = rest.get(start + size + 2..).unwrap_or_default();
    }
}

/// `send` off the async workers.
pub async fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> Reply {
    let (addr, method, path, body) = (
        addr.to_string(),
        method.to_string(),
        path.to_string(),
        body.to_vec(),
    );
    let what = format!("{method} {path}");
    tokio::task::spawn_blocking(move || send(&addr, &method, &path, &body))
        .await
        .expect("the client thread")
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

pub async fn get(addr: &str, path: &str) -> Reply {
    request(addr, "GET", path, b"").await
}

/// `host:port` of an HTTP workload, once it has a ready replica.
async fn address(host: &Host, name: &str, ready: u32) -> String {
    let w = wait_for(host, name, "ready HTTP replicas", |w| {
        w.ready >= ready && w.http.is_some()
    })
    .await;
    let url = w.http.expect("checked").url;
    let rest = url.strip_prefix("http://").expect("an http URL");
    rest.split('/').next().expect("an authority").to_string()
}

/// A host with workload `chaos` applied: `replicas` of `http-chaos` on any free port,
/// `extra` joining its spec.
async fn serve_chaos(replicas: u32, extra: &str) -> Host {
    let host = host();
    let files = Manifests::new();
    let chaos = files.write(
        "chaos.yaml",
        &http_workload("chaos", "http_chaos", replicas, extra),
    );
    host.apply_files(&[chaos]).await.expect("applies");
    host
}

/// A host running `replicas` of `http-chaos` with a granted `/state` (kept while the
/// returned directory lives), and the address they serve on.
async fn chaos_with_state(replicas: u32) -> (Host, String, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("tempdir");
    let grant = format!(
        "  dirs: [{{host: {}, guest: /state}}]\n",
        state.path().display()
    );
    let host = serve_chaos(replicas, &grant).await;
    let addr = address(&host, "chaos", replicas).await;
    (host, addr, state)
}

fn http_workload(name: &str, guest: &str, replicas: u32, extra: &str) -> String {
    workload(
        name,
        guest,
        &format!("  replicas: {replicas}\n  http:\n    listen: 127.0.0.1:0\n{extra}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_to_the_workload_with_the_longest_matching_route() {
    let host = host();
    let files = Manifests::new();
    let hello = files.write("hello.yaml", &http_workload("hello", "hello_http", 1, ""));
    let chaos = files.write(
        "chaos.yaml",
        &http_workload("chaos", "http_chaos", 1, "    routes: [/api, /other/]\n"),
    );
    host.apply_files(&[hello, chaos]).await.expect("applies");
    let addr = address(&host, "hello", 1).await;
    address(&host, "chaos", 1).await;
    for (path, starts) in [
        ("/", "hello /"),
        ("/x?y=1", "hello /x?y=1"),
        ("/api", "chaos /api"),
        ("/api/v1/users", "chaos /api/v1/users"),
        ("/apix", "hello /apix"),
        ("/other", "chaos /other"),
    ] {
        let reply = get(&addr, path).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert!(reply.body.starts_with(starts), "{path}: {reply:?}");
    }
    // Without a root route, an unrouted path is 404 from the host itself.
    host.delete("hello").await.expect("deletes");
    let reply = get(&addr, "/nowhere").await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert!(
        reply.body.contains("no workload serves /nowhere"),
        "{reply:?}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_claimed_twice_or_an_address_not_bindable_refuses_the_whole_apply() {
    let host = host();
    let files = Manifests::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let taken_port = taken.local_addr().expect("addr").port();
    let one = files.write(
        "one.yaml",
        &workload(
            "one",
            "hello_http",
            "  http:\n    listen: 127.0.0.1:0\n    routes: [/a]\n",
        ),
    );
    host.apply_files(&[one]).await.expect("applies");
    let addr = address(&host, "one", 1).await;
    let twice = files.write(
        "twice.yaml",
        &format!(
            "{}\n---\n{}",
            workload(
                "bystander",
                "hello_http",
                "  http:\n    listen: 127.0.0.1:0\n    routes: [/b]\n"
            ),
            workload(
                "thief",
                "hello_http",
                "  http:\n    listen: 127.0.0.1:0\n    routes: [/a/]\n"
            )
        ),
    );
    let err = host.apply_files(&[twice]).await.expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("route `/a/` on 127.0.0.1:0 is already served by workload `one`"),
        "{text}"
    );
    assert!(text.contains("twice.yaml:"), "located: {text}");
    let busy = files.write(
        "busy.yaml",
        &workload(
            "busy",
            "hello_http",
            &format!("  http:\n    listen: 127.0.0.1:{taken_port}\n"),
        ),
    );
    let err = host.apply_files(&[busy]).await.expect_err("refused");
    assert!(
        err.to_string()
            .contains(&format!("cannot listen on 127.0.0.1:{taken_port}")),
        "{err}"
    );
    let bad = files.write(
        "bad.yaml",
        &workload("bad", "hello_http", "  http:\n    listen: localhost:80\n"),
    );
    let err = host.apply_files(&[bad]).await.expect_err("refused");
    assert!(
        err.to_string()
            .contains("`localhost:80` is not an IP:PORT address"),
        "{err}"
    );
    assert!(err.to_string().contains("bad.yaml:"), "{err}");
    // Nothing of the refused applies exists, and what ran before still serves.
    let status = host.status().await;
    let names: Vec<&str> = status.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["one"]);
    assert_eq!(get(&addr, "/a/x").await.status, 200);
    assert_eq!(get(&addr, "/b").await.status, 404);
    drop(taken);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_and_a_spec_that_disagree_about_http_are_refused() {
    let host = host();
    let files = Manifests::new();
    let command = files.write(
        "command.yaml",
        &workload("command", "ticker", "  http:\n    listen: 127.0.0.1:0\n"),
    );
    let err = host.apply_files(&[command]).await.expect_err("refused");
    assert!(
        err.to_string()
            .contains("does not export `wasi:http/incoming-handler`"),
        "{err}"
    );
    let server = files.write("server.yaml", &workload("server", "hello_http", ""));
    let err = host.apply_files(&[server]).await.expect_err("refused");
    assert!(err.to_string().contains("sets no spec.http"), "{err}");
    let probe_only = files.write(
        "probe.yaml",
        &workload("probe", "ticker", "  health:\n    http: {path: /healthz}\n"),
    );
    let err = host.apply_files(&[probe_only]).await.expect_err("refused");
    assert!(err.to_string().contains("probe.yaml:"), "{err}");
    assert!(err.to_string().contains("sets no spec.http"), "{err}");
    assert!(host.status().await.workloads.is_empty());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_gets_requests_only_once_its_probe_passes() {
    let host = serve_chaos(1, "  env: {UNREADY_PROBES: \"20\"}\n  health:\n    http: {path: /healthz, period: 50ms, failureThreshold: 50}\n").await;
    // The listener serves at once; the request waits in the queue for readiness.
    let w = wait_for(&host, "chaos", "a URL", |w| w.http.is_some()).await;
    assert_eq!(w.ready, 0, "not ready before its probes pass");
    let url = w.http.expect("checked").url;
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let reply = get(&addr, "/count").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let probes: u32 = reply
        .body
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .expect("`served N probes M`");
    assert!(
        probes >= 21,
        "served only after 20 failed probes and a passing one: {reply:?}"
    );
    let w = wait_for(&host, "chaos", "ready", |w| w.ready == 1).await;
    let replica = w.instances[0].http.expect("a replica's load");
    assert!(replica.served >= 1, "{replica:?}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_failing_its_probe_is_replaced() {
    let host = serve_chaos(1, "  env: {UNREADY_PROBES: \"1000\"}\n  health:\n    http: {path: /healthz, period: 20ms, failureThreshold: 2}\n").await;
    let w = wait_for(&host, "chaos", "a probe failure", |w| {
        last_reason(w) == Some("ProbeFailed")
    })
    .await;
    assert_eq!(w.ready, 0);
    let end = w.last_termination.expect("checked");
    assert!(
        end.end.reason.to_string().contains("503"),
        "{:?}",
        end.end.reason
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_instance_s_record_gets_its_trap_s_backtrace() {
    let (host, addr, _state) = chaos_with_state(1).await;
    let reply = get(&addr, "/once?key=k1").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "again\n"));
    // One trap: the replica serves on, on a fresh instance, and its record of the
    // recycled one is completed with the backtrace, formatted after the fresh instance
    // took its place.
    let w = wait_for(&host, "chaos", "the trap's backtrace recorded", |w| {
        w.last_termination.as_ref().is_some_and(|t| {
            matches!(&t.end.reason, setpoint::runtime::EndReason::Trapped { message, .. }
                if message.contains("wasm backtrace"))
        })
    })
    .await;
    assert_eq!(w.restarts, 1, "recycled once, not replaced");
    assert_eq!(w.ready, 1);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_instance_traps_before_answering_is_retried_once() {
    let (host, addr, _state) = chaos_with_state(2).await;
    // The first attempt traps (and says so in the granted dir); the retry answers.
    let reply = get(&addr, "/once?key=k1").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "again\n"));
    // A request that may not be sent twice is not: 502.
    let reply = request(&addr, "POST", "/once?key=k2", b"").await;
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(reply.body.contains("failed before answering"), "{reply:?}");
    // One that traps every time gets one retry, then 502.
    let reply = get(&addr, "/trap").await;
    assert_eq!(reply.status, 502, "{reply:?}");
    let metrics = host.metrics().await;
    assert!(
        metrics.contains("setpoint_http_retries_total{workload=\"chaos\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "setpoint_http_requests_total{workload=\"chaos\",route=\"/\",status=\"2xx\"} 1"
        ),
        "{metrics}"
    );
    let w = wait_for(&host, "chaos", "the failures recorded", |w| w.restarts >= 4).await;
    assert_eq!(last_reason(&w), Some("Trapped"));
    assert!(
        w.events.iter().any(|e| e.reason == "Trapped"
            && e.message
                .contains("a fresh instance took the replica's place")),
        "{:?}",
        w.events
    );
    // Both replicas serve on: a replica that happened to take three of the four traps
    // in a row was replaced, and its successor serves.
    wait_for(&host, "chaos", "both replicas serving", |w| w.ready == 2).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_after_the_head_cuts_the_body_short() {
    let host = serve_chaos(1, "").await;
    let addr = address(&host, "chaos", 1).await;
    let reply = get(&addr, "/trap-after-head").await;
    assert_eq!(reply.status, 200);
    assert!(!reply.complete, "a cut body must not look whole: {reply:?}");
    let whole = get(&addr, "/stream?chunks=3&ms=1").await;
    assert!(whole.complete, "{whole:?}");
    assert_eq!(whole.body, "chunk 0\nchunk 1\nchunk 2\n");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_413_504_and_503_with_retry_after() {
    let host = serve_chaos(
        1,
        "    maxRequestBody: 1Ki\n    requestTimeout: 1500ms\n    maxQueued: 1\n",
    )
    .await;
    let addr = address(&host, "chaos", 1).await;
    let reply = request(&addr, "POST", "/echo", &[b'x'; 2000]).await;
    assert_eq!(reply.status, 413, "{reply:?}");
    let reply = request(&addr, "POST", "/echo", b"small").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "small"));
    let reply = get(&addr, "/sleep?ms=5000").await;
    assert_eq!(reply.status, 504, "{reply:?}");
    let w = wait_for(&host, "chaos", "the timeout recorded", |w| {
        last_reason(w) == Some("RequestTimeout")
    })
    .await;
    assert_eq!(w.ready, 1, "the replica serves on with a fresh instance");
    // One replica busy, one request queued: the next gets 503 and Retry-After.
    let busy = tokio::spawn({
        let addr = addr.clone();
        async move { get(&addr, "/sleep?ms=800").await }
    });
    wait_for(&host, "chaos", "a request in flight", |w| {
        w.http.as_ref().is_some_and(|h| h.in_flight == 1)
    })
    .await;
    let queued = tokio::spawn({
        let addr = addr.clone();
        async move { get(&addr, "/count").await }
    });
    wait_for(&host, "chaos", "a request queued", |w| {
        w.http.as_ref().is_some_and(|h| h.queued == 1)
    })
    .await;
    let refused = get(&addr, "/count").await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(busy.await.expect("client").status, 200);
    assert_eq!(queued.await.expect("client").status, 200);
    assert!(
        host.metrics()
            .await
            .contains("setpoint_http_rejected_total{workload=\"chaos\",reason=\"QueueFull\"} 1")
    );
    host.shutdown().await;
}

/// Sends GETs to `path` until told to stop; counts answers and failures.
fn load(
    addr: String,
    path: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let mut served = 0;
        let mut failures = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match send(&addr, "GET", path, b"") {
                Ok(r) if r.status == 200 && r.complete => served += 1,
                Ok(r) => failures.push(format!("{} {}", r.status, r.body)),
                Err(e) => failures.push(e.to_string()),
            }
        }
        (served, failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_under_load_fails_no_request() {
    let host = host();
    let files = Manifests::new();
    let spec = |greeting: &str| {
        http_workload(
            "hello",
            "hello_http",
            2,
            &format!(
                "  env: {{GREETING: {greeting}}}\n  health:\n    http: {{path: /healthz, period: 20ms}}\n"
            ),
        )
    };
    let v1 = files.write("v1.yaml", &spec("v1"));
    host.apply_files(&[v1]).await.expect("applies");
    let addr = address(&host, "hello", 2).await;
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..3)
        .map(|_| load(addr.clone(), "/", stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let v2 = files.write("v2.yaml", &spec("v2"));
    host.apply_files(&[v2]).await.expect("applies");
    wait_for(&host, "hello", "the rollout done", |w| {
        w.rollout.is_none() && w.ready == 2 && w.instances.len() == 2
    })
    .await;
    loop {
        if get(&addr, "/").await.body.starts_with("v2") {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for l in loaders {
        let (n, failures) = l.join().expect("loader");
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        served += n;
    }
    assert!(served > 50, "the load was real: {served} requests");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_crashing_under_load_fail_no_request() {
    let (host, addr, _state) = chaos_with_state(3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..2)
        .map(|_| load(addr.clone(), "/count", stop.clone()))
        .collect();
    // Every 100 ms a request crashes the instance serving it.
    let crashes = AtomicU64::new(0);
    for i in 0..20 {
        let reply = get(&addr, &format!("/once?key=crash{i}")).await;
        assert_eq!(
            reply.status, 200,
            "the crashing request itself is retried: {reply:?}"
        );
        crashes.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for l in loaders {
        let (n, failures) = l.join().expect("loader");
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        served += n;
    }
    assert!(served > 50, "the load was real: {served} requests");
    wait_for(&host, "chaos", "the crashes counted", |w| w.restarts >= 20).await;
    wait_for(&host, "chaos", "every replica serving", |w| w.ready == 3).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_idle_connections_and_huge_heads_are_cut_off() {
    let host = Host::builder()
        .http_limits(FrontConfig {
            header_read_timeout: Duration::from_millis(300),
            ..FrontConfig::default()
        })
        .build()
        .expect("host");
    let files = Manifests::new();
    let hello = files.write("hello.yaml", &http_workload("hello", "hello_http", 1, ""));
    host.apply_files(&[hello]).await.expect("applies");
    let addr = address(&host, "hello", 1).await;
    let closed_by_server = |mut stream: TcpStream| {
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut rest = Vec::new();
        // The server closes: EOF (or a reset), never our read timeout.
        match stream.read_to_end(&mut rest) {
            Ok(_) => rest,
            Err(e) => {
                assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "never closed");
                rest
            }
        }
    };
    let slow = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            let mut s = TcpStream::connect(&addr).expect("connects");
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .expect("writes");
            closed_by_server(s)
        }
    });
    let idle = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            let mut s = TcpStream::connect(&addr).expect("connects");
            s.write_all(b"GET /kept HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("writes");
            closed_by_server(s)
        }
    });
    let slow = slow.await.expect("client");
    assert!(
        !String::from_utf8_lossy(&slow).contains("hello"),
        "an unfinished head is never served"
    );
    let idle = String::from_utf8_lossy(&idle.await.expect("client")).into_owned();
    assert!(idle.contains("hello /kept"), "served, then closed: {idle}");
    let huge = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            let mut s = TcpStream::connect(&addr).expect("connects");
            let filler = "a".repeat(100 * 1024);
            let _ = s.write_all(
                format!("GET / HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n").as_bytes(),
            );
            String::from_utf8_lossy(&closed_by_server(s)).into_owned()
        }
    });
    let huge = huge.await.expect("client");
    assert!(huge.starts_with("HTTP/1.1 431"), "{huge}");
    // The listener still serves.
    assert_eq!(get(&addr, "/").await.status, 200);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_finish_and_stops_accepting() {
    let host = serve_chaos(1, "").await;
    let addr = address(&host, "chaos", 1).await;
    let slow = tokio::spawn({
        let addr = addr.clone();
        async move { get(&addr, "/sleep?ms=500").await }
    });
    wait_for(&host, "chaos", "a request in flight", |w| {
        w.http.as_ref().is_some_and(|h| h.in_flight == 1)
    })
    .await;
    let status = host.shutdown().await;
    let reply = slow.await.expect("client");
    assert_eq!((reply.status, reply.body.as_str()), (200, "slept 500ms\n"));
    assert!(
        status.workloads[0].instances.is_empty(),
        "{:?}",
        status.workloads[0].instances
    );
    assert!(TcpStream::connect(&addr).is_err(), "no longer listening");
}

#[test]
fn the_daemon_serves_http_workloads_across_restarts_and_drains_on_sigterm() {
    use crate::common::Daemon;
    let state = tempfile::tempdir().expect("tempdir");
    let files = Manifests::new();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        probe.local_addr().expect("addr").port()
    };
    let addr = format!("127.0.0.1:{port}");
    let manifest = files.write(
        "chaos.yaml",
        &workload(
            "chaos",
            "http_chaos",
            &format!(
                "  replicas: 2\n  http:\n    listen: {addr}\n    routes: [/api, /sleep]\n  health:\n    http: {{path: /healthz, period: 50ms}}\n"
            ),
        ),
    );
    let mut daemon = Daemon::start(state.path());
    daemon.apply(&manifest);
    daemon.wait_ready("chaos", 2);
    let reply = send(&addr, "GET", "/api/hi", b"").expect("served");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "chaos /api/hi\n")
    );
    let get = daemon.cli(&["get", "workloads"]);
    let table = String::from_utf8_lossy(&get.stdout);
    assert!(table.contains("URL"), "{table}");
    assert!(table.contains(&format!("http://{addr}/api")), "{table}");
    // Each request has an access line, kept apart from the guests' output.
    let access = daemon.cli(&["logs", "--access", "workload/chaos"]);
    let access = String::from_utf8_lossy(&access.stdout).into_owned();
    assert!(access.contains("\"GET /api/hi HTTP/1.1\" 200"), "{access}");
    assert!(access.contains(" chaos-"), "names the replica: {access}");
    let output = daemon.cli(&["logs", "workload/chaos"]);
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("GET /api/hi"),
        "access lines are not output"
    );
    let describe = daemon.cli(&["describe", "workload/chaos"]);
    let text = String::from_utf8_lossy(&describe.stdout);
    assert!(
        text.contains(&format!("URL:         http://{addr}/api")),
        "{text}"
    );
    assert!(text.contains("served, 0 failed, 0 in flight"), "{text}");
    // Killed and started again, the daemon serves the same address.
    daemon.kill9();
    let mut daemon = Daemon::start(state.path());
    daemon.wait_ready("chaos", 2);
    let reply = send(&addr, "GET", "/api/again", b"").expect("served after a restart");
    assert_eq!(reply.status, 200);
    // SIGTERM: the request in flight finishes, then the daemon exits cleanly.
    let slow = std::thread::spawn({
        let addr = addr.clone();
        move || send(&addr, "GET", "/sleep?ms=700", b"")
    });
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let busy = daemon
            .workloads()
            .iter()
            .any(|w| w["http"]["inFlight"].as_u64() == Some(1));
        if busy {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the request never arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    let reply = slow.join().expect("client").expect("answered");
    assert_eq!((reply.status, reply.body.as_str()), (200, "slept 700ms\n"));
    let exit = daemon.child.wait().expect("exits");
    assert!(exit.success(), "{exit:?}");
    assert!(TcpStream::connect(&addr).is_err(), "no longer listening");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_also_runs_as_a_command_is_served_only_with_spec_http() {
    let host = host();
    let files = Manifests::new();
    let served = files.write("served.yaml", &http_workload("served", "http-dual", 1, ""));
    let command = files.write(
        "command.yaml",
        &workload("command", "http-dual", "  restartPolicy: OnFailure\n"),
    );
    host.apply_files(&[served, command]).await.expect("applies");
    let addr = address(&host, "served", 1).await;
    let reply = get(&addr, "/x").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "http-dual served /x\n")
    );
    let w = wait_for(&host, "command", "the command's clean exit", |w| {
        last_reason(w) == Some("Exited")
    })
    .await;
    let end = w.last_termination.expect("checked");
    assert!(end.end.reason.is_success(), "{:?}", end.end.reason);
    assert_eq!(
        end.end.output.tail.last().map(String::as_str),
        Some("http-dual ran as a command")
    );
    assert!(w.http.is_none());
    host.shutdown().await;
}
