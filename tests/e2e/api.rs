//! The daemon's API through real sockets: the TCP listener refuses requests without the
//! right bearer token, the token file is private, the CLI reaches the daemon over TCP
//! with the token, `/metrics` counts what runs, and malformed requests get a 4xx JSON
//! error and change nothing.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct TcpDaemon {
    child: Child,
    addr: String,
    /// What it has written on stderr so far.
    said: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl TcpDaemon {
    /// Starts the daemon with `--tcp 127.0.0.1:0` and reads the port it bound.
    fn start(state: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .args(["daemon", "--tcp", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("daemon starts");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the daemon said where it listens")
                .expect("a line");
            if let Some(rest) = line.strip_prefix("setpoint daemon: serving TCP on ") {
                break rest
                    .split_whitespace()
                    .next()
                    .expect("an address")
                    .to_string();
            }
        };
        // Keep draining stderr so the daemon never blocks on a full pipe.
        let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = said.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                keep.lock().expect("lines").push(line);
            }
        });
        let daemon = Self { child, addr, said };
        let deadline = Instant::now() + Duration::from_secs(30);
        while daemon
            .request("GET", "/v1/health", Some(&daemon.token(state)), b"")
            .0
            != 200
        {
            assert!(Instant::now() < deadline, "the daemon never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    fn token(&self, state: &Path) -> String {
        std::fs::read_to_string(state.join("api-token"))
            .expect("token file")
            .trim()
            .to_string()
    }

    /// The body of a GET, as text.
    fn raw_body(&self, path: &str, token: &str) -> String {
        let mut stream = std::net::TcpStream::connect(&self.addr).expect("connects");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: setpoint\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        answer
            .split_once("\r\n\r\n")
            .map_or(answer.clone(), |(_, b)| b.to_string())
    }

    /// One HTTP/1.1 request on a fresh connection: (status, headers, body).
    fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, String, Value) {
        let mut stream = std::net::TcpStream::connect(&self.addr).expect("connects");
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: setpoint\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .expect("write");
        stream.write_all(body).expect("body");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("read");
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // A chunked body's JSON sits between the chunk sizes.
        let json = body
            .find('{')
            .and_then(|start| body.rfind('}').map(|end| &body[start..=end]))
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or(Value::Null);
        (status, head.to_ascii_lowercase(), json)
    }
}

impl Drop for TcpDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tcp_needs_the_token_and_bad_requests_get_json_errors_and_change_nothing() {
    let state = tempfile::tempdir().expect("tempdir");
    let daemon = TcpDaemon::start(state.path());
    let token = daemon.token(state.path());
    assert_eq!(token.len(), 64, "32 random bytes, hex");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(state.path().join("api-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "only the owner may read the token");
    }

    // No token, a wrong one, a wrong scheme: refused before anything runs.
    for auth in [None, Some("not-the-token"), Some(&token[..63])] {
        let (status, head, body) = daemon.request("GET", "/v1/workloads", auth, b"");
        assert_eq!(status, 401, "{auth:?}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("Bearer"),
            "{body}"
        );
    }
    let (status, _, body) = daemon.request("GET", "/v1/workloads", Some(&token), b"");
    assert_eq!(status, 200);
    assert_eq!(body["workloads"], Value::Array(vec![]));

    // The CLI over TCP: with the token file it works, without a token it says what to do.
    let cli = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .args(["get", "-o", "json", "--server", &daemon.addr])
            .args(extra)
            .env_remove("SETPOINT_TOKEN")
            .output()
            .expect("the CLI runs")
    };
    let token_file = state.path().join("api-token");
    let out = cli(&["--token-file", token_file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SETPOINT_TOKEN"));

    // Metrics need the token too; after an apply over TCP they count its instance.
    let (status, _, _) = daemon.request("GET", "/metrics", None, b"");
    assert_eq!(status, 401);
    let manifest = state.path().join("one.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: one\nspec:\n  component: {}\n",
            crate::common::guest("ticker").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args([
            "apply",
            "-f",
            manifest.to_str().unwrap(),
            "--server",
            &daemon.addr,
        ])
        .env("SETPOINT_TOKEN", &token)
        .output()
        .expect("apply");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = daemon.raw_body("/metrics", &token);
        if text.contains(r#"setpoint_instances{workload="one",state="ready"} 1"#) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "never one ready instance:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    for expected in [
        "# TYPE setpoint_spawn_duration_seconds histogram",
        "setpoint_spawn_duration_seconds_count 1",
        "# TYPE setpoint_reconcile_duration_seconds histogram",
        "# TYPE setpoint_policy_call_duration_seconds histogram",
        r#"setpoint_desired_replicas{workload="one"} 1"#,
        r#"setpoint_restarts_total{workload="one"} 0"#,
        "# EOF",
    ] {
        assert!(
            text.contains(expected),
            "`{expected}` missing from:\n{text}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["delete", "workload/one", "--server", &daemon.addr])
        .env("SETPOINT_TOKEN", &token)
        .output()
        .expect("delete");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.request("GET", "/v1/workloads", Some(&token), b"").2["workloads"]
        != Value::Array(vec![])
    {
        assert!(Instant::now() < deadline, "`one` never went away");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Malformed requests: each a 4xx with a JSON error.
    let blobs = || {
        std::fs::read_dir(state.path().join("blobs"))
            .unwrap()
            .count()
    };
    let blobs_before = blobs();
    let t = Some(token.as_str());
    let zero_digest = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        ("POST", "/v1/apply".into(), b"not json".to_vec(), 400, "not an apply request"),
        ("POST", "/v1/apply".into(), br#"{"documents": [], "files": {}, "bogus": 1}"#.to_vec(), 400, "unknown field"),
        ("POST", "/v1/apply".into(), br#"{"documents": [], "files": {}}"#.to_vec(), 400, "no documents"),
        (
            "POST",
            "/v1/apply".into(),
            serde_json::to_vec(&serde_json::json!({
                "documents": [{"source": "/m/app.yaml", "text": "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata: {name: app}\nspec: {component: app.wasm}\n"}],
                "files": {"/m/app.wasm": zero_digest},
            }))
            .unwrap(),
            422,
            "not in the daemon's store",
        ),
        (
            "POST",
            "/v1/apply".into(),
            serde_json::to_vec(&serde_json::json!({
                "documents": [{"source": "/m/bad.yaml", "text": "kind: [unclosed\n"}],
                "files": {},
            }))
            .unwrap(),
            422,
            "bad.yaml:1",
        ),
        ("PUT", "/v1/blobs/sha256:nothex".into(), b"\0asm".to_vec(), 400, "digest"),
        ("PUT", format!("/v1/blobs/{zero_digest}"), b"\0asm".to_vec(), 400, "digest"),
        ("GET", "/v1/workloads/nobody".into(), Vec::new(), 404, "nobody"),
        ("DELETE", "/v1/workloads/nobody".into(), Vec::new(), 404, "nobody"),
        ("GET", "/v2/workloads".into(), Vec::new(), 404, "/v1/"),
        ("PATCH", "/v1/apply".into(), Vec::new(), 405, "Method Not Allowed"),
    ];
    for (method, path, body, expected, says) in cases {
        let (status, head, answer) = daemon.request(method, &path, t, &body);
        assert_eq!(status, expected, "{method} {path}: {answer}");
        assert!(
            head.contains("content-type: application/json"),
            "{method} {path}: {head}"
        );
        let text = format!("{} {}", answer["error"], answer["diagnostics"]);
        assert!(
            text.contains(says),
            "{method} {path}: `{says}` not in {text}"
        );
    }
    let (_, _, body) = daemon.request("GET", "/v1/workloads", t, b"");
    assert_eq!(
        body["workloads"],
        Value::Array(vec![]),
        "nothing was applied"
    );
    assert_eq!(blobs(), blobs_before, "no blob was stored");
}

#[test]
fn sighup_rotates_the_api_token_and_the_daemon_keeps_running() {
    let state = tempfile::tempdir().expect("state");
    let mut daemon = TcpDaemon::start(state.path());
    let old = daemon.token(state.path());
    let new = "a-rotated-token-of-enough-length";
    std::fs::write(state.path().join("api-token"), format!("{new}\n")).expect("rotate");
    // SAFETY: a signal to a child this test started.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.request("GET", "/v1/health", Some(new), b"").0 != 200 {
        assert!(Instant::now() < deadline, "the new token never took effect");
        assert!(
            daemon.child.try_wait().expect("wait").is_none(),
            "SIGHUP ended the daemon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(daemon.request("GET", "/v1/health", Some(&old), b"").0, 401);
    // A token file that no longer reads keeps the token in effect, and says so.
    std::fs::write(state.path().join("api-token"), "short\n").expect("break");
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon
        .said
        .lock()
        .expect("lines")
        .iter()
        .any(|l| l.contains("the API token is kept"))
    {
        assert!(
            Instant::now() < deadline,
            "the failed reload was never reported"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(daemon.request("GET", "/v1/health", Some(new), b"").0, 200);
    assert!(daemon.child.try_wait().expect("wait").is_none());
}
