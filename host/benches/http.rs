//! HTTP serving, side by side with `wasmtime serve`, under load from `wrk` (Debian's
//! package) on loopback. `cargo bench --bench http` (after `cargo xtask guests`).
//!
//! Rows:
//! - req/s and latency for the `hello-http` component: setpoint at its defaults (warm
//!   instances reused) and with a fresh instance per request, `wasmtime serve` at its
//!   default (fresh per request) and with instance reuse;
//! - failed requests while an instance of one of three replicas is crashed every 100 ms
//!   mid-request (a trap), and during a rolling update, both under the same load;
//! - the time from a trap to a fresh instance answering (a request that traps once and
//!   is retried, against one that does not).
//!
//! `wasmtime` is looked for on PATH and in `target/tools/bin` (`cargo install
//! wasmtime-cli --version 48.0.8 --locked --root target/tools`); its rows are skipped,
//! with that message, when it is absent. `wrk` is installed with apt when missing.
//! `SETPOINT_BENCH_SECONDS` sets each load's length (default 10); `HTTP_ONLY=trap` runs
//! the last row alone (without `wrk`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONNECTIONS: u32 = 50;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the workspace root")
}

fn guest(name: &str) -> PathBuf {
    let path = root()
        .join("guest-examples/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask guests` first",
        path.display()
    );
    path
}

fn seconds() -> u64 {
    std::env::var("SETPOINT_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One GET on a fresh connection: the status, or `None` when nothing answered.
fn get(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split(' ').nth(1)?.parse().ok()
}

fn wait_serving(addr: &str, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(addr, path) != Some(200) {
        assert!(Instant::now() < deadline, "nothing serves {addr}{path}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn quiet(command: &mut Command) -> &mut Command {
    // A captured backtrace per error costs throughput (see WASMTIME-NOTES).
    command
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
}

/// `setpoint run` of one workload serving `component` on `addr`.
fn setpoint(dir: &Path, component: &Path, addr: &str, replicas: u32, extra: &str) -> Server {
    let manifest = dir.join(format!("bench-{}.yaml", addr.replace([':', '.'], "-")));
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: bench\nspec:\n  component: {}\n  replicas: {replicas}\n  http:\n    listen: {addr}\n{extra}",
            component.display()
        ),
    )
    .expect("manifest");
    let child = quiet(
        Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .arg("run")
            .arg(&manifest),
    )
    .spawn()
    .expect("setpoint runs");
    Server(child)
}

fn wasmtime() -> Option<PathBuf> {
    let local = root().join("target/tools/bin/wasmtime");
    if local.is_file() {
        return Some(local);
    }
    Command::new("wasmtime")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("wasmtime"))
}

fn wrk_installed() -> bool {
    let present = || Command::new("wrk").arg("--version").output().is_ok();
    if present() {
        return true;
    }
    eprintln!("wrk is missing; installing Debian's package");
    let _ = Command::new("apt-get")
        .args(["install", "-y", "wrk"])
        .status();
    present()
}

/// What wrk measured.
#[derive(Debug, Default)]
struct Load {
    rps: f64,
    p50: String,
    p99: String,
    requests: u64,
    failed: u64,
}

fn wrk(addr: &str, path: &str, secs: u64) -> Load {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{secs}s"),
            "--latency",
        ])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut load = Load::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n] => load.rps = n.parse().unwrap_or(0.0),
            ["50%", v] => load.p50 = v.to_string(),
            ["99%", v] => load.p99 = v.to_string(),
            [n, "requests", "in", ..] => load.requests = n.parse().unwrap_or(0),
            ["Non-2xx", "or", "3xx", "responses:", n] => load.failed += n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                load.failed += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    load
}

fn row(what: &str, load: &Load) {
    println!(
        "| {what} | {:.0} | {} | {} | {} of {} |",
        load.rps, load.p50, load.p99, load.failed, load.requests
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if std::env::var("HTTP_ONLY").is_ok_and(|v| v == "trap") {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let grant = format!("  dirs: [{{host: {}, guest: /state}}]\n", state.display());
        trap_to_fresh_instance(dir.path(), &guest("http_chaos"), &grant);
        return;
    }
    if !wrk_installed() {
        println!("skipped: wrk is not installed and apt-get could not install it");
        return;
    }
    let secs = seconds();
    let dir = tempfile::tempdir().expect("tempdir");
    let hello = guest("hello_http");
    let chaos = guest("http_chaos");
    println!("HTTP, {CONNECTIONS} connections, {secs} s each, wrk -t2 on the same machine");
    println!();
    println!("| server | req/s | p50 | p99 | failed |");
    println!("| --- | --- | --- | --- | --- |");
    for (what, extra) in [
        ("setpoint, 2 replicas, warm instances (default)", ""),
        (
            "setpoint, 2 replicas, fresh instance per request",
            "    maxRequestsPerInstance: 1\n",
        ),
    ] {
        let addr = format!("127.0.0.1:{}", free_port());
        let _server = setpoint(dir.path(), &hello, &addr, 2, extra);
        wait_serving(&addr, "/");
        row(what, &wrk(&addr, "/", secs));
    }
    match wasmtime() {
        None => println!(
            "| wasmtime serve | skipped: install it with `cargo install wasmtime-cli --version 48.0.8 --locked --root target/tools` | | | |"
        ),
        Some(bin) => {
            for (what, extra) in [
                (
                    "wasmtime serve -Scli (default: fresh instance per request)",
                    vec![],
                ),
                (
                    "wasmtime serve -Scli --max-instance-reuse-count 1000",
                    vec!["--max-instance-reuse-count", "1000"],
                ),
            ] {
                let addr = format!("127.0.0.1:{}", free_port());
                let child = quiet(
                    Command::new(&bin)
                        .arg("serve")
                        // Rust std components import wasi:cli; serve links it only so.
                        .arg("-Scli")
                        .args(["--addr", &addr])
                        .args(&extra)
                        .arg(&hello),
                )
                .spawn()
                .expect("wasmtime serve runs");
                let _server = Server(child);
                wait_serving(&addr, "/");
                row(what, &wrk(&addr, "/", secs));
            }
        }
    }

    // Crashes under load: an instance of one of three replicas traps every 100 ms in
    // the middle of a request (which is retried); wrk's own requests must not fail.
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let addr = format!("127.0.0.1:{}", free_port());
    let grant = format!("  dirs: [{{host: {}, guest: /state}}]\n", state.display());
    let _server = setpoint(dir.path(), &chaos, &addr, 3, &grant);
    wait_serving(&addr, "/count");
    let killer = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let (mut crashes, mut failed) = (0u32, 0u32);
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                if get(&addr, &format!("/once?key=k{crashes}")) != Some(200) {
                    failed += 1;
                }
                crashes += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (crashes, failed)
        })
    };
    let load = wrk(&addr, "/count", secs);
    let (crashes, crash_failed) = killer.join().expect("killer");
    row(
        &format!(
            "setpoint, 3 replicas, an instance crashed every 100 ms ({crashes} crashes, {crash_failed} of the crashing requests failed)"
        ),
        &load,
    );
    drop(_server);

    // A rolling update under load, through the daemon.
    let state_dir = dir.path().join("daemon");
    let socket = state_dir.join("setpoint.sock");
    let daemon = quiet(
        Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .args(["daemon", "--state-dir"])
            .arg(&state_dir),
    )
    .spawn()
    .expect("the daemon runs");
    let _daemon = Server(daemon);
    let addr = format!("127.0.0.1:{}", free_port());
    let manifest = dir.path().join("rolling.yaml");
    let write = |greeting: &str| {
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: rolling\nspec:\n  component: {}\n  replicas: 3\n  env: {{GREETING: {greeting}}}\n  http:\n    listen: {addr}\n  health:\n    http: {{path: /healthz, period: 100ms}}\n",
                hello.display()
            ),
        )
        .expect("manifest");
    };
    let apply = || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(env!("CARGO_BIN_EXE_setpoint"))
                .args(["apply", "-f"])
                .arg(&manifest)
                .arg("--socket")
                .arg(&socket)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the daemon never took the apply");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    write("v1");
    apply();
    wait_serving(&addr, "/");
    let load = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_secs(secs / 3));
            write("v2");
            apply();
        });
        wrk(&addr, "/", secs)
    });
    let rolled = {
        let mut s = TcpStream::connect(&addr).expect("connects");
        write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("writes");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.contains("v2 /")
    };
    row(
        &format!(
            "setpoint, 3 replicas, a rolling update under load ({})",
            if rolled { "rolled to v2" } else { "NOT rolled" }
        ),
        &load,
    );
    drop(_daemon);

    trap_to_fresh_instance(dir.path(), &chaos, &grant);
}

/// A trap to a fresh instance answering: the latency of a request that traps once and
/// is retried, beside one that does not, on one replica.
fn trap_to_fresh_instance(dir: &Path, chaos: &Path, grant: &str) {
    let addr = format!("127.0.0.1:{}", free_port());
    let _server = setpoint(dir, chaos, &addr, 1, grant);
    wait_serving(&addr, "/count");
    let mut plain = Vec::new();
    let mut marked = Vec::new();
    let mut trapped = Vec::new();
    for i in 0..500 {
        let t = Instant::now();
        assert_eq!(get(&addr, "/count"), Some(200));
        plain.push(t.elapsed());
        // The marker file `/once` writes before it traps, written without a trap.
        let t = Instant::now();
        assert_eq!(get(&addr, &format!("/mark?key=m{i}")), Some(200));
        marked.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(get(&addr, &format!("/once?key=t{i}")), Some(200));
        trapped.push(t.elapsed());
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * p) as usize]
    };
    println!();
    println!(
        "trap → fresh instance answering (500 requests that write a marker file, trap once and are retried, one replica): p50 {:?}, p99 {:?}; the same marker written without a trap: p50 {:?}, p99 {:?}; a request without either: p50 {:?}, p99 {:?}",
        pct(&mut trapped, 0.5),
        pct(&mut trapped, 0.99),
        pct(&mut marked, 0.5),
        pct(&mut marked, 0.99),
        pct(&mut plain, 0.5),
        pct(&mut plain, 0.99)
    );
}
