//! Attacks on the daemon through the real binary: a guest planting a symbolic link that
//! climbs out of its grant, grant paths replaced while the daemon is down, and a
//! controller that dies while a stored apply is replayed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Daemon, guest};

/// A tree for one test: `secret/secret.txt` outside every grant, and the directories
/// granted below `grants/`.
struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Tree {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("secret")).unwrap();
        std::fs::write(root.join("secret/secret.txt"), "TOP-SECRET\n").unwrap();
        std::fs::create_dir_all(root.join("grants/s/sub")).unwrap();
        std::fs::write(root.join("grants/s/sub/marker.txt"), "original\n").unwrap();
        std::fs::create_dir_all(root.join("state")).unwrap();
        Self { _dir: dir, root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// A planter workload's manifest document.
    fn planter(&self, name: &str, env: &str, dirs: &[(&str, &str, bool)]) -> String {
        let dirs: String = dirs
            .iter()
            .map(|(host, guest, ro)| {
                format!(
                    "    - {{host: '{}', guest: {guest}, readOnly: {ro}}}\n",
                    self.path(host).display()
                )
            })
            .collect();
        format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {name}\nspec:\n  component: {}\n  restartPolicy: Always\n  backoff: {{initial: 50ms, max: 200ms}}\n  env: {{{env}}}\n  dirs:\n{dirs}",
            guest("planter").display()
        )
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The output tails of every termination the daemon reports for `name` so far.
fn tail(daemon: &Daemon, name: &str) -> Vec<String> {
    daemon
        .workloads()
        .into_iter()
        .find(|w| w["name"] == name)
        .and_then(|w| w["lastTermination"]["output"]["tail"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|l| l.as_str().map(String::from))
        .collect()
}

/// Waits until `name` has ended at least `restarts` times and returns its last tail.
fn wait_restarts(daemon: &Daemon, name: &str, restarts: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let w = daemon.workloads().into_iter().find(|w| w["name"] == name);
        if w.as_ref()
            .is_some_and(|w| w["restarts"].as_u64().unwrap_or(0) >= restarts)
        {
            let lines = tail(daemon, name);
            assert!(!lines.is_empty(), "no output kept: {w:?}");
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never restarted {restarts} times: {w:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `get` says on stderr about quarantined applies (empty when none is).
fn quarantined(daemon: &Daemon) -> String {
    let out = daemon.cli(&["get"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    if err.contains("warning: stored apply") {
        err
    } else {
        String::new()
    }
}

#[test]
fn a_writable_grant_may_not_contain_another_grant_in_one_workload_or_across_two() {
    let tree = Tree::new();
    let daemon = Daemon::start(&tree.path("state"));
    // The repro: the first instance replaces s/sub with a link climbing to /, the next
    // reads through the read-only grant of s/sub. Refused at apply, located.
    let one = tree.write(
        "one.yaml",
        &tree.planter(
            "one",
            "PLANT: /s, READ: /x/etc/passwd",
            &[("grants/s", "/s", false), ("grants/s/sub", "/x", true)],
        ),
    );
    let out = daemon.cli(&["apply", "-f", one.to_str().unwrap()]);
    assert!(!out.status.success(), "nested grants were accepted");
    let err = stderr(&out);
    assert!(
        err.contains("one.yaml:") && err.contains("lies inside") && err.contains("writable"),
        "{err}"
    );
    // Across two workloads, in one apply and in two.
    let planter = tree.write(
        "planter.yaml",
        &tree.planter("planter", "PLANT: /s", &[("grants/s", "/s", false)]),
    );
    let reader = tree.write(
        "reader.yaml",
        &tree.planter(
            "reader",
            "READ: /x/secret.txt",
            &[("grants/s/sub", "/x", true)],
        ),
    );
    let both = daemon.cli(&[
        "apply",
        "-f",
        planter.to_str().unwrap(),
        "-f",
        reader.to_str().unwrap(),
    ]);
    assert!(
        !both.status.success(),
        "nested grants across workloads were accepted"
    );
    assert!(stderr(&both).contains("lies inside"), "{}", stderr(&both));
    assert!(
        daemon.workloads().is_empty(),
        "a rejected apply changed something"
    );
    let first = daemon.cli(&["apply", "-f", planter.to_str().unwrap()]);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = daemon.cli(&["apply", "-f", reader.to_str().unwrap()]);
    assert!(
        !second.status.success(),
        "a grant inside a running writable grant was accepted"
    );
    assert!(
        stderr(&second).contains("granted to `planter`"),
        "{}",
        stderr(&second)
    );
    // Two read-only grants may overlap.
    let ro = tree.write(
        "ro.yaml",
        &tree.planter(
            "ro",
            "READ: /x/marker.txt",
            &[("grants/s/sub", "/x", true), ("secret", "/y", true)],
        ),
    );
    let ro2 = tree.write(
        "ro2.yaml",
        &tree.planter(
            "ro-two",
            "READ: /x/sub/marker.txt",
            &[("grants/s", "/x", true)],
        ),
    );
    let delete = daemon.cli(&["delete", "workload/planter"]);
    assert!(delete.status.success(), "{}", stderr(&delete));
    let out = daemon.cli(&[
        "apply",
        "-f",
        ro.to_str().unwrap(),
        "-f",
        ro2.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_grant_path_with_a_symlink_is_refused_and_instances_keep_the_directory_granted() {
    let tree = Tree::new();
    let daemon = Daemon::start(&tree.path("state"));
    // A path through a link is refused at apply, with the real path as help.
    std::os::unix::fs::symlink("grants/s", tree.path("via-link")).unwrap();
    let linked = tree.write(
        "linked.yaml",
        &tree.planter("linked", "", &[("via-link/sub", "/x", true)]),
    );
    let out = daemon.cli(&["apply", "-f", linked.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "a grant through a symlink was accepted"
    );
    assert!(
        stderr(&out).contains("is a symbolic link") && stderr(&out).contains("real path"),
        "{}",
        stderr(&out)
    );
    // A reader granted s/sub runs again and again. Its directory is moved away and a
    // link to the secret takes its name: later instances still see the directory that
    // was granted (by handle), never the link's target.
    let reader = tree.write(
        "reader.yaml",
        &tree.planter(
            "reader",
            "READ: '/x/marker.txt,/x/secret.txt', WRITE: /x/planted.txt",
            &[("grants/s/sub", "/x", false)],
        ),
    );
    let out = daemon.cli(&["apply", "-f", reader.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = wait_restarts(&daemon, "reader", 1);
    assert!(
        before
            .iter()
            .any(|l| l == "read /x/marker.txt: ALLOWED original"),
        "{before:?}"
    );
    std::fs::rename(tree.path("grants/s/sub"), tree.path("moved")).unwrap();
    std::os::unix::fs::symlink("../../secret", tree.path("grants/s/sub")).unwrap();
    std::fs::remove_file(tree.path("moved/planted.txt")).unwrap();
    let restarts = daemon
        .workloads()
        .into_iter()
        .find(|w| w["name"] == "reader")
        .and_then(|w| w["restarts"].as_u64())
        .unwrap();
    let after = wait_restarts(&daemon, "reader", restarts + 2);
    assert!(
        after
            .iter()
            .any(|l| l == "read /x/marker.txt: ALLOWED original"),
        "{after:?}"
    );
    assert!(after.iter().all(|l| !l.contains("TOP-SECRET")), "{after:?}");
    assert!(
        tree.path("moved/planted.txt").is_file(),
        "the instance wrote somewhere else than its granted directory"
    );
    assert!(
        !tree.path("secret/planted.txt").exists(),
        "the guest wrote outside its grant"
    );
}

#[test]
fn a_grant_replaced_while_the_daemon_is_down_is_not_granted_after_a_restart() {
    let tree = Tree::new();
    std::fs::create_dir_all(tree.path("grants/t")).unwrap();
    let mut daemon = Daemon::start(&tree.path("state"));
    let linked = tree.write(
        "linked.yaml",
        &tree.planter(
            "linked",
            "READ: /x/secret.txt",
            &[("grants/s/sub", "/x", true)],
        ),
    );
    let swapped = tree.write(
        "swapped.yaml",
        &tree.planter(
            "swapped",
            "READ: /y/secret.txt",
            &[("grants/t", "/y", true)],
        ),
    );
    let other = tree.write(
        "other.yaml",
        &tree.planter("other", "READ: /z/marker.txt", &[("grants/s", "/z", true)]),
    );
    for file in [&linked, &swapped, &other] {
        let out = daemon.cli(&["apply", "-f", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    daemon.kill9();
    // While it is down: one grant becomes a link to the secret, the other's directory
    // is replaced by a copy of the secret (same path, another directory).
    std::fs::rename(tree.path("grants/s/sub"), tree.path("moved")).unwrap();
    std::os::unix::fs::symlink("../../secret", tree.path("grants/s/sub")).unwrap();
    std::fs::remove_dir(tree.path("grants/t")).unwrap();
    std::fs::create_dir(tree.path("grants/t")).unwrap();
    std::fs::write(tree.path("grants/t/secret.txt"), "TOP-SECRET\n").unwrap();
    let daemon = Daemon::start(&tree.path("state"));
    let text = quarantined(&daemon);
    assert!(
        text.contains("(linked)") && text.contains("symbolic link"),
        "{text}"
    );
    assert!(
        text.contains("(swapped)") && text.contains("no longer the directory granted"),
        "{text}"
    );
    assert!(text.contains("setpoint delete workload/linked"), "{text}");
    // The others run; the refused ones run nothing.
    wait_restarts(&daemon, "other", 1);
    let names: Vec<Value> = daemon
        .workloads()
        .into_iter()
        .map(|w| w["name"].clone())
        .collect();
    assert_eq!(names, vec![Value::from("other")]);
    let events = daemon.cli(&["events", "-o", "json"]);
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(
        events
            .lines()
            .any(|l| l.contains("Quarantined") && l.contains("linked")),
        "{events}"
    );
    // Deleting a quarantined workload ends its quarantine.
    let out = daemon.cli(&["delete", "workload/linked"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = quarantined(&daemon);
    assert!(
        !text.contains("(linked)") && text.contains("(swapped)"),
        "{text}"
    );
}

#[test]
fn a_controller_that_dies_while_replaying_ends_the_daemon_and_its_apply_is_quarantined() {
    let tree = Tree::new();
    let state = tree.path("state");
    let daemon = Daemon::start(&state);
    let fine = tree.write("fine.yaml", &tree.planter("fine", "", &[]));
    let fatal = tree.write("fatal.yaml", &tree.planter("fatal", "", &[]));
    for file in [&fine, &fatal] {
        let out = daemon.cli(&["apply", "-f", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    drop(daemon);
    // This start's controller panics when `fatal` is applied: the daemon must exit
    // non-zero, saying why, instead of serving a dead host.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["daemon", "--state-dir"])
        .arg(&state)
        .env("SETPOINT_TEST_PANIC_ON_APPLY", "fatal")
        .output()
        .expect("daemon runs");
    assert!(!out.status.success(), "the daemon served a dead host");
    assert!(
        stderr(&out).contains("controller died") && stderr(&out).contains("fatal"),
        "{}",
        stderr(&out)
    );
    // The next start runs the rest and says what it left out and how to get it back.
    let daemon = Daemon::start_with(&state, &[]);
    wait_restarts(&daemon, "fine", 1);
    let text = quarantined(&daemon);
    assert!(
        text.contains("(fatal)") && text.contains("died while replaying"),
        "{text}"
    );
    // Applying it anew ends the quarantine.
    let out = daemon.cli(&["apply", "-f", fatal.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(quarantined(&daemon).is_empty());
}

#[test]
fn setpoint_run_exits_non_zero_when_the_controller_dies() {
    let tree = Tree::new();
    let file = tree.write("fatal.yaml", &tree.planter("fatal", "", &[]));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["run", "--for", "30s"])
        .arg(&file)
        .env("SETPOINT_TEST_PANIC_ON_APPLY", "fatal")
        .output()
        .expect("run runs");
    assert!(!out.status.success(), "run exited 0 with a dead controller");
    assert!(stderr(&out).contains("controller died"), "{}", stderr(&out));
}

#[test]
fn durations_past_their_maximum_are_refused_located_and_the_daemon_keeps_serving() {
    let tree = Tree::new();
    let component = guest("planter");
    let workload = |extra: &str| {
        format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: huge\nspec:\n  component: {}\n{extra}",
            component.display()
        )
    };
    let job = |extra: &str| {
        format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Job\nmetadata:\n  name: huge\nspec:\n  component: {}\n{extra}",
            component.display()
        )
    };
    let cases = [
        (
            workload("  backoff: {initial: 300000000000y, max: 300000000000y}\n"),
            "backoff.initial is too long",
        ),
        (
            workload("  terminationGracePeriod: 300000000000y\n"),
            "terminationGracePeriod is too long",
        ),
        (
            workload("  restartBudget: {maxRestarts: 3, window: 300000000000y}\n"),
            "restartBudget.window is too long",
        ),
        (
            job("  activeDeadline: 300000000000y\n"),
            "activeDeadline is too long",
        ),
        (
            job("  ttlAfterFinished: 300000000000y\n"),
            "ttlAfterFinished is too long",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = tree.write(&format!("huge-{i}.yaml"), text);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .arg("validate")
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success(), "accepted: {text}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("huge-{i}.yaml:")) && err.contains(expected),
            "{expected}: {err}"
        );
    }
    // Through the daemon: refused, and it still answers with nothing applied.
    let daemon = Daemon::start(&tree.path("state"));
    let file = tree.path("huge-0.yaml");
    let out = daemon.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("too long"), "{}", stderr(&out));
    assert!(daemon.workloads().is_empty());
    let fine = tree.write("fine.yaml", &tree.planter("fine", "", &[]));
    let out = daemon.cli(&["apply", "-f", fine.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_restarts(&daemon, "fine", 1);
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` on a new directory; `None` (with the reason printed)
    /// where this process may not mount.
    fn mount(size: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a small tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        if !mounted.is_ok_and(|s| s.success()) {
            eprintln!("SKIPPED: cannot mount a tmpfs here");
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the file system with `filler` until the OS says it is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let filler = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The job's status from `get -o json`.
fn job_status(daemon: &Daemon, name: &str) -> Value {
    daemon
        .workloads()
        .into_iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

fn wait_job(daemon: &Daemon, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = job_status(daemon, name);
        if check(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "{what}: {job}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_disk_pauses_jobs_visibly_and_the_store_recovers_without_a_restart() {
    let Some(disk) = SmallDisk::mount("48m") else {
        return;
    };
    let tree = Tree::new();
    let ledger = tree.path("ledger");
    std::fs::create_dir_all(&ledger).unwrap();
    let state = disk.path().join("state");
    let mut daemon = Daemon::start(&state);
    const COMPLETIONS: u64 = 150;
    let job = tree.write(
        "job.yaml",
        &format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Job\nmetadata:\n  name: crunch\nspec:\n  component: {}\n  completions: {COMPLETIONS}\n  parallelism: 2\n  env: {{WORK_MS: '20'}}\n  dirs: [{{host: '{}', guest: /state}}]\n",
            guest("batch").display(),
            ledger.display()
        ),
    );
    let out = daemon.cli(&["apply", "-f", job.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The disk fills while the job runs. redb reuses its own free pages, so some writes
    // may still succeed; those that need room fail, and then the job pauses, visibly.
    let filler = disk.fill();
    let other = tree.write("other.yaml", &tree.planter("other", "", &[]));
    let out = daemon.cli(&["apply", "-f", other.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "an apply was acknowledged on a full disk"
    );
    assert!(stderr(&out).contains("space"), "{}", stderr(&out));
    let seen = wait_job(&daemon, "crunch", "a pause or the end", |j| {
        let conditions = j["conditions"].to_string();
        j["phase"] == "Succeeded"
            || conditions.contains("ProgressDurable") && conditions.contains("space")
    });
    if seen["phase"] == "Succeeded" {
        eprintln!("NOTE: every ledger write found room in redb's own free pages; no pause");
        std::fs::remove_file(&filler).unwrap();
    } else {
        let message = seen["conditions"].to_string();
        assert!(message.contains("space"), "{message}");
        // Killed while writes fail: every completion it showed was durable, so none is
        // lost after the restart.
        let shown = seen["job"]["succeeded"].as_u64().unwrap();
        daemon.kill9();
        std::fs::remove_file(&filler).unwrap();
        daemon = Daemon::start(&state);
        let restored = job_status(&daemon, "crunch")["job"]["succeeded"]
            .as_u64()
            .unwrap();
        assert!(
            restored >= shown,
            "{shown} completions were shown, {restored} survived a crash"
        );
        // Full again: the pause ends without a restart once there is room.
        if restored < COMPLETIONS {
            let filler = disk.fill();
            let paused = wait_job(&daemon, "crunch", "a pause or the end", |j| {
                j["phase"] == "Succeeded" || j["conditions"].to_string().contains("ProgressDurable")
            });
            std::fs::remove_file(&filler).unwrap();
            if paused["phase"] != "Succeeded" {
                wait_job(&daemon, "crunch", "progress to resume", |j| {
                    !j["conditions"].to_string().contains("ProgressDurable")
                });
                let events = daemon.cli(&["events", "-o", "json"]);
                let events = String::from_utf8_lossy(&events.stdout).into_owned();
                assert!(events.contains("LedgerWriteResumed"), "{events}");
            }
        }
    }
    let done = wait_job(&daemon, "crunch", "the job to finish", |j| {
        j["phase"] == "Succeeded"
    });
    assert_eq!(done["job"]["succeeded"].as_u64(), Some(COMPLETIONS));
    let successes = std::fs::read_to_string(ledger.join("done"))
        .unwrap()
        .lines()
        .count() as u64;
    assert!(
        successes >= COMPLETIONS,
        "{successes} runs succeeded, {COMPLETIONS} counted"
    );
    let out = daemon.cli(&["apply", "-f", other.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A finished job never runs again: after a crash it is still done, and no run starts.
    let runs = std::fs::read_to_string(ledger.join("runs"))
        .unwrap()
        .lines()
        .count();
    daemon.kill9();
    let daemon = Daemon::start(&state);
    let after = job_status(&daemon, "crunch");
    assert_eq!(after["phase"], "Succeeded", "{after}");
    assert_eq!(after["job"]["succeeded"].as_u64(), Some(COMPLETIONS));
    std::thread::sleep(Duration::from_millis(300));
    let runs_after = std::fs::read_to_string(ledger.join("runs"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(runs, runs_after, "a finished job ran again");
}

#[test]
fn the_state_directory_is_guarded_blobs_are_private_checked_and_collected() {
    let tree = Tree::new();
    let state = tree.path("state");
    // --socket naming a file that is not a socket is refused, and the file is kept.
    std::fs::write(tree.path("precious"), "keep me").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["daemon", "--state-dir"])
        .arg(&state)
        .arg("--socket")
        .arg(tree.path("precious"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a socket"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(tree.path("precious")).unwrap(),
        "keep me"
    );

    let mut daemon = Daemon::start(&state);
    // A file that is not Wasm is refused without echoing its bytes.
    let secret = tree.write(
        "shadow.yaml",
        &format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: shadow\nspec:\n  component: {}\n",
            tree.path("secret/secret.txt").display()
        ),
    );
    let out = daemon.cli(&["apply", "-f", secret.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("not a WebAssembly file"), "{err}");
    assert!(!err.contains("TOP") && !err.contains("0x54"), "{err}");
    let app = tree.write("app.yaml", &tree.planter("app", "", &[]));
    let out = daemon.cli(&["apply", "-f", app.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let blobs: Vec<PathBuf> = std::fs::read_dir(state.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    use std::os::unix::fs::PermissionsExt as _;
    for blob in &blobs {
        let mode = std::fs::metadata(blob).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is readable by others", blob.display());
    }
    // A blob damaged on disk is detected at load and uploaded again.
    let app_blob = blobs
        .iter()
        .find(|b| std::fs::read(b).unwrap() == std::fs::read(guest("planter")).unwrap())
        .expect("the component's blob")
        .clone();
    daemon.kill9();
    std::fs::write(&app_blob, b"\0asm damaged").unwrap();
    // Leftovers: an unreferenced blob and an interrupted upload's temp file, both old.
    let stale = state
        .join("blobs/sha256-0000000000000000000000000000000000000000000000000000000000000000.wasm");
    let temp = state.join("blobs/sha256-1111.tmp-42");
    for file in [&stale, &temp] {
        std::fs::write(file, b"left over").unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(file)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let daemon = Daemon::start(&state);
    assert!(
        !stale.exists() && !temp.exists(),
        "leftover blobs were not collected"
    );
    assert!(
        quarantined(&daemon).contains("(app)"),
        "a damaged blob was loaded"
    );
    let out = daemon.cli(&["apply", "-f", app.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&app_blob).unwrap(),
        std::fs::read(guest("planter")).unwrap()
    );
    wait_restarts(&daemon, "app", 1);
    drop(daemon);
    // A store that vanished beside stored blobs: refused, unless asked for.
    std::fs::write(state.join("state.redb"), b"").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["daemon", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success(), "started empty beside stored blobs");
    assert!(
        stderr(&out).contains("--accept-empty-store"),
        "{}",
        stderr(&out)
    );
    let daemon = Daemon::start_with(&state, &["--accept-empty-store"]);
    assert!(daemon.workloads().is_empty());
}

#[test]
fn operators_bound_grants_and_loose_manifests_are_refused_located() {
    let tree = Tree::new();
    let daemon = Daemon::start_with(
        &tree.path("state"),
        &[
            "--allow-dir-root",
            tree.path("grants").to_str().unwrap(),
            "--no-network-grants",
        ],
    );
    let outside = tree.write(
        "outside.yaml",
        &tree.planter("outside", "", &[("secret", "/x", true)]),
    );
    let out = daemon.cli(&["apply", "-f", outside.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("outside the directories this host grants"),
        "{}",
        stderr(&out)
    );
    let network = tree.write(
        "network.yaml",
        &format!(
            "{}  network:\n    connect: ['127.0.0.1:9']\n",
            tree.planter("network", "", &[]).replace("  dirs:\n", "")
        ),
    );
    let out = daemon.cli(&["apply", "-f", network.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("grants no network access"),
        "{}",
        stderr(&out)
    );
    // Loose input: a guest path that climbs, a label key with a space.
    let climbing = tree.write(
        "climbing.yaml",
        &tree.planter("climbing", "", &[("grants/s", "/../../etc", true)]),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .arg("validate")
        .arg(&climbing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("climbing.yaml:") && stderr(&out).contains("guest path"),
        "{}",
        stderr(&out)
    );
    let labelled = tree.write(
        "labelled.yaml",
        &tree.planter("labelled", "", &[]).replace(
            "  name: labelled\n",
            "  name: labelled\n  labels: {'bad key': x}\n",
        ),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .arg("validate")
        .arg(&labelled)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("labelled.yaml:") && stderr(&out).contains("label key `bad key`"),
        "{}",
        stderr(&out)
    );
    let wordy = tree.write(
        "wordy.yaml",
        "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec: {component: x.wasm, replicas: lots}\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .arg("validate")
        .arg(&wordy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!stderr(&out).contains("i64"), "{}", stderr(&out));
}

#[test]
fn a_flood_of_idle_tcp_connections_does_not_starve_the_unix_socket() {
    let tree = Tree::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    // The daemon runs with the common default of 1,024 open files (systemd's soft
    // limit): a flood larger than that, with no cap per listener, leaves it unable to
    // accept anything, on any listener.
    let daemon = Daemon::start_limited(&tree.path("state"), &["--tcp", &addr], 1024);
    const FLOOD: usize = 1500;
    // SAFETY: plain getrlimit/setrlimit calls on a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max.min(8192);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        match std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)) {
            Ok(s) => flood.push(s),
            Err(e) => {
                eprintln!("flood stopped at {} connections: {e}", flood.len());
                break;
            }
        }
    }
    assert!(
        flood.len() >= 1100,
        "only {} connections opened",
        flood.len()
    );
    let started = Instant::now();
    let mut get = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["get", "--socket"])
        .arg(&daemon.socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while get.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let answered = get.try_wait().unwrap();
    let _ = get.kill();
    let took = started.elapsed();
    assert!(
        answered.is_some_and(|s| s.success()),
        "get over the socket did not answer within 10 s beside the flood"
    );
    eprintln!(
        "get over the socket beside {} idle TCP connections: {took:?}",
        flood.len()
    );
    assert!(took < Duration::from_secs(10), "get took {took:?}");
    drop(flood);
}

#[test]
fn an_automatic_rollback_is_recorded_and_survives_a_restart_at_the_current_scale() {
    let tree = Tree::new();
    let state = tree.path("state");
    let mut daemon = Daemon::start(&state);
    let strategy = "  strategy: {progressDeadline: 1s, minReady: 300ms}\n";
    let file = tree.path("api.yaml");
    let write = |guest_name: &str, replicas: u32, env: &str| {
        std::fs::write(
            &file,
            format!(
                "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: api\nspec:\n  component: {}\n  replicas: {replicas}\n  env: {{{env}}}\n{strategy}",
                guest(guest_name).display()
            ),
        )
        .unwrap();
    };
    write("ticker", 2, "TICK_MS: '1000'");
    let out = daemon.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let good = daemon.wait_ready("api", 2)["revision"].clone();
    // The new revision crashes at start, at a new scale: the controller rolls it back
    // by itself, keeping 3 replicas.
    write("crasher", 3, "CRASH_AFTER_MS: '0', MODE: exit");
    let out = daemon.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let w = daemon
            .workloads()
            .into_iter()
            .find(|w| w["name"] == "api")
            .unwrap();
        if w["revision"] == good && w["rollout"].is_null() && w["ready"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "never rolled back: {w}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The store knows, soon after (the daemon records it on the event).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = daemon.cli(&["rollout", "history", "api", "-o", "json"]);
        let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if entries.last().is_some_and(|e| e["revision"] == good) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollback was not recorded: {entries:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.kill9();
    let daemon = Daemon::start(&state);
    let w = daemon.wait_ready("api", 3);
    assert_eq!(w["revision"], good, "the abandoned revision came back: {w}");
    assert_eq!(w["desired"], 3, "the scale went back: {w}");
    std::thread::sleep(Duration::from_millis(1500));
    let w = daemon
        .workloads()
        .into_iter()
        .find(|w| w["name"] == "api")
        .unwrap();
    let events = w["events"].to_string();
    assert!(
        !events.contains("RolledBack") && !events.contains("Updated"),
        "it rolled out again after the restart: {events}"
    );
}

/// `setpoint run` of `replicas` tickers with only about `free` memory mappings left
/// under the kernel's limit (a debug-build fault fills the rest), stopped by `--for`
/// or by SIGTERM after `term_after`. Returns the exit status, how long it took, the
/// final status (JSON) and stderr.
fn run_at_the_wall(
    replicas: u32,
    free: usize,
    extra: &[&str],
    term_after: Option<Duration>,
) -> (std::process::ExitStatus, Duration, Value, String) {
    let tree = Tree::new();
    let file = tree.write(
        "wall.yaml",
        &format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata: {{name: steady}}\nspec:\n  component: {}\n  replicas: {replicas}\n  env: {{TICK_MS: '100000'}}\n",
            guest("ticker").display()
        ),
    );
    // Output goes to files: a pipe nobody reads would stall the host's own printing.
    let (out_path, err_path) = (tree.path("stdout"), tree.path("stderr"));
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["run", "-o", "json", "--quiet"])
        .args(extra)
        .arg(&file)
        .env("SETPOINT_TEST_FREE_MAPPINGS", free.to_string())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    if let Some(after) = term_after {
        std::thread::sleep(after);
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    // Bounded: a host that never stops is killed here, and the test fails.
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("setpoint run at the mapping wall did not stop within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    let exit = child.wait().unwrap();
    let status = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap_or(Value::Null);
    let err = String::from_utf8_lossy(&std::fs::read(&err_path).unwrap()).into_owned();
    (exit, took, status, err)
}

#[cfg(target_os = "linux")]
#[test]
fn at_the_mapping_wall_spawns_are_refused_the_host_survives_and_stops_in_bounded_time() {
    if setpoint::runtime::mappings::limit().is_none() {
        eprintln!("SKIPPED: vm.max_map_count cannot be read");
        return;
    }
    let limit = setpoint::runtime::mappings::limit().unwrap_or(0);
    let reserve = setpoint::runtime::mappings::reserve(limit);
    // With the default layout an instance's memory costs two mappings (its pages and its
    // reservation): 600 mappings past the room the host keeps for itself hold about 300.
    let (exit, took, status, err) =
        run_at_the_wall(5000, reserve + 600, &[], Some(Duration::from_secs(3)));
    assert!(
        exit.success(),
        "{exit:?} after {took:?}; stderr ends {}",
        &err[err.len().saturating_sub(2000)..]
    );
    let w = &status["workloads"][0];
    let running = w["running"].as_u64().unwrap_or(0);
    assert!(running > 100 && running < 5000, "{running} running");
    let events = w["events"].to_string();
    assert!(
        events.contains("ActionRefused") && events.contains("limit of memory mappings"),
        "{events}"
    );
    assert!(events.contains("run with compact memories"), "{events}");
    // The warning came first (the refusals have pushed it out of the bounded history
    // since: it is in what the host printed).
    assert!(
        err.contains("near the most this host can map"),
        "stderr starts {}",
        &err[..err.len().min(2000)]
    );
    // The room kept free means the wall itself is never touched.
    assert!(!events.contains("InstantiationFailed"), "{events}");
    eprintln!("default layout: {running} instances at the wall, stopped after {took:?}");

    // With compact memories, neighbours' memories merge into one mapping and a sleeping
    // ticker's stack is parked in its arena's: 150 mappings hold 2,000 (they took 6,000
    // before stacks were parked).
    let compact = ["--compact-memory", "--for", "4s"];
    let (exit, took, status, err) = run_at_the_wall(2000, reserve + 150, &compact, None);
    assert!(
        exit.success(),
        "{exit:?}; stderr ends {}",
        &err[err.len().saturating_sub(2000)..]
    );
    let w = &status["workloads"][0];
    assert_eq!(w["running"].as_u64(), Some(2000), "{}", w["events"]);
    assert!(
        !w["events"].to_string().contains("ActionRefused"),
        "{}",
        w["events"]
    );
    eprintln!("compact memories: 2000 instances in 150 mappings, stopped after {took:?}");

    // Already past the room: every spawn is refused, with advice that fits the layout.
    let (exit, _, status, _) = run_at_the_wall(50, reserve.saturating_sub(50), &compact, None);
    assert!(exit.success(), "{exit:?}");
    let w = &status["workloads"][0];
    assert_eq!(w["running"].as_u64(), Some(0), "{}", w["events"]);
    let events = w["events"].to_string();
    assert!(events.contains("limit of memory mappings"), "{events}");
    assert!(!events.contains("run with compact memories"), "{events}");
}

#[test]
fn a_component_over_the_size_limit_is_refused_before_a_byte_is_read_or_sent() {
    let tree = Tree::new();
    let daemon = Daemon::start(&tree.path("state"));
    // Sparse: 1 GiB on paper, nothing on disk.
    let huge = tree.path("huge.wasm");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let file = tree.write(
        "huge.yaml",
        &format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata: {{name: huge}}\nspec:\n  component: {}\n",
            huge.display()
        ),
    );
    let out = daemon.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("larger than") && stderr(&out).contains("nothing was sent"),
        "{}",
        stderr(&out)
    );
    let blobs = std::fs::read_dir(tree.path("state/blobs")).unwrap().count();
    assert_eq!(blobs, 0, "something was uploaded");
}
