//! The daemon through the real binary and its real socket: apply, get, describe and
//! delete round trips, a rejected apply changing nothing, the socket's mode, and
//! `kill -9` then restart converging to the stored desired state.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Daemon, Manifests, guest, workload};

fn manifest(dir: &Path, name: &str, component: &str, replicas: u32) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {name}\nspec:\n  component: {component}\n  replicas: {replicas}\n  env: {{TICK_MS: '1000'}}\n"
        ),
    )
    .expect("write manifest");
    path
}

#[test]
fn apply_get_describe_delete_and_survive_kill_9() {
    let state = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    // The component lives beside the manifest, and is removed after the apply: the
    // daemon keeps its own copy.
    std::fs::copy(guest("ticker"), work.path().join("ticker.wasm")).expect("copy");
    let ticks = manifest(work.path(), "ticks", "ticker.wasm", 2);

    let mut daemon = Daemon::start(state.path());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&daemon.socket)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "only the owner may connect");
    }

    let dry = daemon.cli(&["apply", "-f", ticks.to_str().unwrap(), "--dry-run"]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(String::from_utf8_lossy(&dry.stdout).contains("workload/ticks created"));
    assert!(daemon.workloads().is_empty(), "a dry run changes nothing");

    let out = daemon.cli(&["apply", "-f", work.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = daemon.wait_ready("ticks", 2);
    std::fs::remove_file(work.path().join("ticker.wasm")).expect("remove");

    // A rejected apply (one good document, one bad) changes nothing.
    let good = manifest(work.path(), "more", "../nowhere.wasm", 1);
    let bad = work.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: Bad Name\nspec:\n  component: x.wasm\n").unwrap();
    let out = daemon.cli(&[
        "apply",
        "-f",
        good.to_str().unwrap(),
        "-f",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:6:14", good.display())),
        "located: {err}"
    );
    assert_eq!(daemon.workloads().len(), 1, "nothing was applied");

    let out = daemon.cli(&["describe", "workload/ticks"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Name:        ticks")
            && text.contains("Instances:")
            && text.contains("Spec:")
            && text.contains("TICK_MS")
            // The path the apply named, not the blob the daemon keeps.
            && text.contains("ticker.wasm")
            && !text.contains("blobs/sha256-"),
        "{text}"
    );

    // kill -9, restart: the same desired state, although the source file is gone.
    daemon.kill9();
    let mut daemon = Daemon::start(state.path());
    let after = daemon.wait_ready("ticks", 2);
    assert_eq!(after["revision"], before["revision"]);

    let out = daemon.cli(&["delete", "workload/ticks"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = daemon.cli(&["delete", "workload/ticks"]);
    assert_eq!(out.status.code(), Some(1), "already gone");
    daemon.kill9();
    let daemon = Daemon::start(state.path());
    assert!(
        daemon.workloads().is_empty(),
        "a delete survives a crash too"
    );
}

/// The revision an apply's output line gives `kind/name`.
fn revision_in(output: &str, object: &str) -> String {
    let line = output
        .lines()
        .find(|l| l.starts_with(&format!("{object} ")))
        .unwrap_or_else(|| panic!("no line for {object} in:\n{output}"));
    // The new revision: the last one named (`configured (revision OLD → NEW)`).
    let at = line.find("revision ").expect("a revision") + "revision ".len();
    line[at..]
        .split(|c: char| !c.is_ascii_hexdigit())
        .rfind(|word| word.len() == 10)
        .expect("hex")
        .to_string()
}

fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// Kills the daemon with SIGKILL at random moments (during applies, while a job runs)
/// and restarts it, many times. After every restart: no acknowledged apply is lost, no
/// apply is half visible, a job's counted completions never exceed the runs that really
/// succeeded (nor fall behind them by more than the runs the kills interrupted), and a
/// finished job never runs again.
#[test]
fn kill_9_at_random_moments_loses_no_apply_and_counts_each_completion_once() {
    const ITERATIONS: usize = 20;
    const COMPLETIONS: usize = 8;
    const PARALLELISM: usize = 2;
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash loop seed {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let state = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let ledger = tempfile::tempdir().expect("tempdir");
    let ticker = guest("ticker");
    let pair = work.path().join("pair.yaml");
    let write_pair = |generation: usize| {
        let doc = |name: &str| {
            format!(
                "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {name}\nspec:\n  component: {}\n  env: {{TICK_MS: '1000', GENERATION: '{generation}'}}\n",
                ticker.display()
            )
        };
        std::fs::write(&pair, format!("{}---\n{}", doc("left"), doc("right"))).expect("write");
    };
    let job = work.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Job\nmetadata:\n  name: crunch\nspec:\n  component: {}\n  completions: {COMPLETIONS}\n  parallelism: {PARALLELISM}\n  env: {{WORK_MS: '150'}}\n  dirs: [{{host: {}, guest: /state}}]\n",
            guest("batch").display(),
            ledger.path().display()
        ),
    )
    .expect("write");
    let (runs, done) = (ledger.path().join("runs"), ledger.path().join("done"));

    let mut daemon = Daemon::start(state.path());
    // Each generation's pair of revisions, from dry runs.
    let generations: Vec<(String, String)> = (0..ITERATIONS)
        .map(|g| {
            write_pair(g);
            let out = daemon.cli(&["apply", "-f", pair.to_str().unwrap(), "--dry-run"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (
                revision_in(&text, "workload/left"),
                revision_in(&text, "workload/right"),
            )
        })
        .collect();
    let out = daemon.cli(&["apply", "-f", job.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut acknowledged: Option<usize> = None;
    let mut acknowledged_count = 0;
    for generation in 0..ITERATIONS {
        write_pair(generation);
        let apply = Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .args(["apply", "-f", pair.to_str().unwrap(), "--socket"])
            .arg(&daemon.socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("apply runs");
        std::thread::sleep(Duration::from_millis(rng.u64(0..80)));
        daemon.kill9();
        let applied = apply.wait_with_output().expect("apply ends");
        if applied.status.success() {
            acknowledged = Some(generation);
            acknowledged_count += 1;
        }
        daemon = Daemon::start(state.path());

        let objects = daemon.workloads();
        let revision = |name: &str| {
            objects
                .iter()
                .find(|w| w["name"] == name)
                .map(|w| w["revision"].as_str().unwrap_or_default().to_string())
        };
        match (revision("left"), revision("right")) {
            (None, None) => assert!(acknowledged.is_none(), "an acknowledged apply was lost"),
            (Some(l), Some(r)) => {
                let seen = generations
                    .iter()
                    .position(|g| *g == (l.clone(), r.clone()))
                    .unwrap_or_else(|| panic!("half an apply is visible: left {l}, right {r}"));
                assert!(seen <= generation, "a generation from the future");
                if let Some(acked) = acknowledged {
                    assert!(
                        seen >= acked,
                        "generation {acked} was acknowledged, {seen} runs"
                    );
                }
            }
            (l, r) => panic!("half an apply is visible: left {l:?}, right {r:?}"),
        }
        let crunch = objects
            .iter()
            .find(|w| w["name"] == "crunch")
            .expect("the job survives");
        let counted = crunch["job"]["succeeded"].as_u64().expect("succeeded") as usize;
        let really = count_lines(&done);
        assert!(counted <= COMPLETIONS);
        assert!(
            counted <= really,
            "{counted} completions counted, {really} happened"
        );
        assert!(
            really - counted <= (generation + 1) * PARALLELISM,
            "{really} runs succeeded but only {counted} were counted"
        );
    }

    eprintln!(
        "{ITERATIONS} kills: {acknowledged_count} applies acknowledged before the kill, the rest cut off; \
         {} job runs so far",
        count_lines(&runs)
    );
    // The job finishes; after that, crashes and restarts never run it again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let crunch = daemon
            .workloads()
            .into_iter()
            .find(|w| w["name"] == "crunch")
            .unwrap();
        if crunch["phase"] == "Succeeded" {
            assert_eq!(crunch["job"]["succeeded"], COMPLETIONS as u64);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job never completed: {crunch:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let runs_when_done = count_lines(&runs);
    for _ in 0..2 {
        daemon.kill9();
        daemon = Daemon::start(state.path());
    }
    std::thread::sleep(Duration::from_millis(300));
    let crunch = daemon
        .workloads()
        .into_iter()
        .find(|w| w["name"] == "crunch")
        .unwrap();
    assert_eq!(crunch["phase"], "Succeeded");
    assert_eq!(crunch["job"]["succeeded"], COMPLETIONS as u64);
    assert_eq!(
        count_lines(&runs),
        runs_when_done,
        "a finished job ran again"
    );
    let out = daemon.cli(&["get", "jobs"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("crunch") && table.contains(&format!("{COMPLETIONS}/{COMPLETIONS}")),
        "{table}"
    );
}

/// `logs` (kept lines, one instance, following) and `events` (kept, across a crash,
/// watching) through the real binary.
#[test]
fn logs_and_events_are_kept_followed_and_survive_a_crash() {
    use std::io::BufRead as _;
    let state = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("talk.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: talk\nspec:\n  component: {}\n  replicas: 2\n  env: {{TICK_MS: '20', GREETING: said}}\n",
            guest("ticker").display()
        ),
    )
    .expect("write");
    let mut daemon = Daemon::start(state.path());
    let out = daemon.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.wait_ready("talk", 2);

    // Kept lines, prefixed by instance; --tail bounds them; --instance filters.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let out = daemon.cli(&["logs", "workload/talk", "--tail", "6"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.lines().count() == 6 {
            break text;
        }
        assert!(Instant::now() < deadline, "never 6 lines: {text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        lines
            .lines()
            .all(|l| l.starts_with("talk-") && l.contains(" | said ")),
        "{lines}"
    );
    let first = lines
        .lines()
        .next()
        .unwrap()
        .split(" | ")
        .next()
        .unwrap()
        .to_string();
    let out = daemon.cli(&["logs", "talk", "--instance", &first, "--tail", "3"]);
    let only = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(only.lines().count(), 3, "{only}");
    assert!(
        only.lines().all(|l| l.starts_with("said ")),
        "unprefixed: {only}"
    );
    let out = daemon.cli(&["logs", "workload/nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no workload or job `nobody`"));
    // --timestamps dates each line; --since keeps only the recent ones.
    let out = daemon.cli(&["logs", "talk", "--tail", "2", "--timestamps"]);
    let stamped = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(stamped.lines().count(), 2, "{stamped}");
    for line in stamped.lines() {
        let (time, rest) = line.split_once(' ').expect("a time first");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{line}");
        assert!(
            rest.starts_with("talk-") && rest.contains(" | said "),
            "{line}"
        );
    }
    // Lines older than 100 ms exist by now (one every 10 ms since the start).
    std::thread::sleep(Duration::from_millis(300));
    let all = daemon.cli(&["logs", "talk", "--since", "1h"]);
    let all = String::from_utf8_lossy(&all.stdout).lines().count();
    let asked = std::time::SystemTime::now();
    let out = daemon.cli(&["logs", "talk", "--since", "100ms", "--timestamps"]);
    let recent = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        recent.lines().count() < all,
        "{all} lines, and recent:\n{recent}"
    );
    for line in recent.lines() {
        let time = humantime::parse_rfc3339(line.split(' ').next().unwrap()).expect("a time");
        assert!(
            time >= asked - Duration::from_millis(100),
            "older than --since: {line}"
        );
    }

    // -f keeps printing lines that come after it started.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["logs", "talk", "-f", "--tail", "0", "--socket"])
        .arg(&daemon.socket)
        .stdout(Stdio::piped())
        .spawn()
        .expect("follower");
    let mut followed = std::io::BufReader::new(follower.stdout.take().unwrap()).lines();
    let line = followed.next().expect("a followed line").expect("utf-8");
    assert!(line.contains(" | said "), "{line}");
    let _ = follower.kill();
    let _ = follower.wait();

    // Events are kept, filtered by object, and survive kill -9 (they are flushed every
    // 250 ms).
    let out = daemon.cli(&["events", "workload/talk", "-o", "json"]);
    let events = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        events.contains("\"reason\":\"Applied\"") && events.contains("\"reason\":\"Started\""),
        "{events}"
    );
    std::thread::sleep(Duration::from_millis(600));
    daemon.kill9();
    let daemon = Daemon::start(state.path());
    let out = daemon.cli(&["events"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.contains("Applied") && table.contains("revision"),
        "events from before the crash: {table}"
    );

    // -w prints what happens after it started.
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["events", "-w", "-o", "json", "--socket"])
        .arg(&daemon.socket)
        .stdout(Stdio::piped())
        .spawn()
        .expect("watcher");
    let mut watched = std::io::BufReader::new(watcher.stdout.take().unwrap()).lines();
    // The kept events come first; skip them, then delete and see it happen.
    std::thread::sleep(Duration::from_millis(200));
    let out = daemon.cli(&["delete", "workload/talk"]);
    assert!(out.status.success());
    let seen = watched
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("\"reason\":\"Deleted\""));
    assert!(seen.is_some(), "the watcher saw the deletion");
    let _ = watcher.kill();
    let _ = watcher.wait();
}

/// `rollout status`, `history` and `undo` through the real binary, across a crash.
#[test]
fn rollout_status_history_and_undo_survive_a_crash() {
    let state = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("web.yaml");
    let write = |version: u32| {
        std::fs::write(
            &file,
            format!(
                "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: web\nspec:\n  component: {}\n  replicas: 2\n  env: {{TICK_MS: '1000', VERSION: '{version}'}}\n",
                guest("ticker").display()
            ),
        )
        .expect("write");
    };
    let stdout = |out: &Output| String::from_utf8_lossy(&out.stdout).into_owned();
    let mut daemon = Daemon::start(state.path());
    let mut revisions = Vec::new();
    for version in 1..=2 {
        write(version);
        let out = daemon.cli(&["apply", "-f", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        revisions.push(revision_in(&stdout(&out), "workload/web"));
        let out = daemon.cli(&["rollout", "status", "workload/web", "--timeout", "60s"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout(&out).contains(&format!(
                "successfully rolled out (revision {})",
                revisions[version as usize - 1]
            )),
            "{}",
            stdout(&out)
        );
    }
    let (r1, r2) = (revisions[0].clone(), revisions[1].clone());
    let history = |daemon: &Daemon| -> Vec<(String, bool)> {
        let out = daemon.cli(&["rollout", "history", "web", "-o", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<Value>>(&out.stdout)
            .expect("json")
            .iter()
            .map(|r| {
                (
                    r["revision"].as_str().unwrap().to_string(),
                    r["current"] == true,
                )
            })
            .collect()
    };
    assert_eq!(history(&daemon), [(r1.clone(), false), (r2.clone(), true)]);

    let out = daemon.cli(&["rollout", "undo", "workload/web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains(&format!("rolled back (revision {r2} → {r1})")),
        "{}",
        stdout(&out)
    );
    let out = daemon.cli(&["rollout", "status", "web"]);
    assert!(
        stdout(&out).contains(&format!("revision {r1})")),
        "{}",
        stdout(&out)
    );
    assert_eq!(history(&daemon), [(r2.clone(), false), (r1.clone(), true)]);

    // The undo is durable, and so is the history.
    daemon.kill9();
    let daemon = Daemon::start(state.path());
    assert_eq!(daemon.wait_ready("web", 2)["revision"], r1.as_str());
    let out = daemon.cli(&["rollout", "undo", "web", "--to-revision", &r2]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(history(&daemon), [(r1.clone(), false), (r2.clone(), true)]);
    let out = daemon.cli(&["rollout", "undo", "web", "--to-revision", "0000000000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no revision 0000000000"));
    let out = daemon.cli(&["rollout", "history", "job/web"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("jobs have no rollouts"));
}

/// `--watch DIR`: files dropped in apply, a bad one is refused alone, a changed one
/// rolls out, a removed one is deleted, even while the daemon was down.
#[test]
fn a_watched_directory_is_desired_state() {
    let state = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let ticker = guest("ticker");
    let drop_file = |file: &str, name: &str, version: u32| {
        // Written aside and renamed in, as provisioning tools do.
        let tmp = dir.path().join(format!(".{file}.tmp"));
        std::fs::write(
            &tmp,
            format!(
                "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {name}\nspec:\n  component: {}\n  env: {{TICK_MS: '1000', VERSION: '{version}'}}\n",
                ticker.display()
            ),
        )
        .expect("write");
        std::fs::rename(&tmp, dir.path().join(file)).expect("rename");
    };
    drop_file("a.yaml", "alpha", 1);
    let watch = dir.path().to_str().unwrap();
    let mut daemon = Daemon::start_with(state.path(), &["--watch", watch]);
    let first = daemon.wait_ready("alpha", 1)["revision"].clone();

    // A bad file is refused on its own; a good one beside it applies.
    std::fs::write(dir.path().join("b.yaml"), "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: Not A Name\nspec:\n  component: x.wasm\n").unwrap();
    drop_file("c.yaml", "gamma", 1);
    daemon.wait_ready("gamma", 1);
    let names = |d: &Daemon| -> Vec<String> {
        let mut n: Vec<String> = d
            .workloads()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&daemon), ["alpha", "gamma"]);
    // The rejection is an event too, under the name the file gives.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = daemon.cli(&["events", "-o", "json"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("\"Rejected\"") && text.contains("b.yaml was not applied") {
            break;
        }
        assert!(Instant::now() < deadline, "no Rejected event: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A change rolls out; a removal deletes.
    drop_file("a.yaml", "alpha", 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.wait_ready("alpha", 1)["revision"] == first {
        assert!(Instant::now() < deadline, "the change never rolled out");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while names(&daemon) != ["gamma"] {
        assert!(
            Instant::now() < deadline,
            "alpha was never deleted: {:?}",
            names(&daemon)
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Removed while the daemon is down: deleted at the next start.
    daemon.kill9();
    std::fs::remove_file(dir.path().join("c.yaml")).unwrap();
    let daemon = Daemon::start_with(state.path(), &["--watch", watch]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !names(&daemon).is_empty() {
        assert!(
            Instant::now() < deadline,
            "gamma was never deleted: {:?}",
            names(&daemon)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn rollout_status_of_a_failed_workload_ends_at_once_saying_why() {
    let state = tempfile::tempdir().expect("tempdir");
    let m = Manifests::new();
    let daemon = Daemon::start(state.path());
    daemon.apply(&failing_crasher(&m, ""));
    wait_phase(&daemon, "crash", "Failed");
    // With a 30 s timeout an answer that waited would say it did not finish in time.
    let out = daemon.cli(&["rollout", "status", "workload/crash", "--timeout", "30s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("workload/crash is Failed: RestartBudgetExceeded"),
        "{stderr}"
    );
    assert!(stderr.contains("apply it again"), "{stderr}");
    // `get` says why next to the phase.
    let out = daemon.cli(&["get", "workloads"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("Failed (RestartBudgetExceeded)"), "{table}");
}

#[test]
fn get_selects_by_label_and_names_objects_and_events_of_nothing_fail() {
    let state = tempfile::tempdir().expect("tempdir");
    let m = Manifests::new();
    let doc = |name: &str, tier: &str| {
        format!(
            "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {name}\n  labels: {{tier: {tier}}}\nspec:\n  component: {{guest:ticker}}\n"
        )
    };
    let file = m.write(
        "two.yaml",
        &format!("{}---\n{}", doc("front", "web"), doc("store", "db")),
    );
    let daemon = Daemon::start(state.path());
    let applied = daemon.apply(&file);
    assert!(
        applied.contains(", 1 replica)"),
        "one replica, not 1 replicas: {applied}"
    );
    let out = daemon.cli(&["get", "-l", "tier=web", "-o", "name"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "workload/front\n");
    let out = daemon.cli(&["get", "-l", "tier=web,tier=db", "-o", "name"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "all labels must match"
    );
    let out = daemon.cli(&["get", "-o", "name"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "workload/front\nworkload/store\n"
    );
    let out = daemon.cli(&["get", "-l", "tier"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY=VALUE"));
    let out = daemon.cli(&["events", "nosuch"]);
    assert_eq!(out.status.code(), Some(1), "events of nothing is an error");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no workload or job `nosuch`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = daemon.cli(&["events", "front"]);
    assert!(out.status.success());
    let out = daemon.cli(&["describe", "workload/front"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Labels:      tier=web"));
}

#[test]
fn a_second_daemon_on_the_same_state_directory_names_the_first() {
    let state = tempfile::tempdir().expect("tempdir");
    let first = Daemon::start(state.path());
    let out = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["daemon", "--state-dir"])
        .arg(state.path())
        .args(["--socket"])
        .arg(state.path().join("other.sock"))
        .output()
        .expect("the second daemon runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another daemon is running on the state directory {} (pid {})",
            state.path().display(),
            first.child.id()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("Database already open"), "{stderr}");
}

#[test]
fn rollout_restart_replaces_every_instance_and_refuses_what_it_cannot_restart() {
    let state = tempfile::tempdir().expect("tempdir");
    let m = Manifests::new();
    let file = m.write("web.yaml", &workload("web", "ticker", "  replicas: 2\n"));
    let daemon = Daemon::start(state.path());
    daemon.apply(&file);
    let ids = |w: &Value| -> Vec<String> {
        w["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    let before = ids(&daemon.wait_ready("web", 2));
    let out = daemon.cli(&["rollout", "restart", "workload/web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "workload/web restarted\n"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let w = daemon.wait_ready("web", 2);
        let now = ids(&w);
        if now.len() == 2 && now.iter().all(|id| !before.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never two new instances: {now:?} vs {before:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = daemon.cli(&["rollout", "restart", "workload/nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = daemon.cli(&["rollout", "restart", "job/web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("jobs have no rollouts"));
}

/// `crash.yaml`: a `crasher` that exits at once and has no restart to spend, so it is
/// Failed after its first end; `extra` joins its spec.
fn failing_crasher(m: &Manifests, extra: &str) -> std::path::PathBuf {
    m.write(
        "crash.yaml",
        &workload(
            "crash",
            "crasher",
            &format!(
                "{extra}  env: {{CRASH_AFTER_MS: '0', MODE: exit}}\n  restartBudget: {{maxRestarts: 0, window: 1m}}\n"
            ),
        ),
    )
}

/// Waits until `name`'s phase is `phase`.
fn wait_phase(daemon: &Daemon, name: &str, phase: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(w) = daemon
            .workloads()
            .into_iter()
            .find(|w| w["name"] == name && w["phase"] == phase)
        {
            return w;
        }
        assert!(Instant::now() < deadline, "{name} never became {phase}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the daemon with SIGTERM and waits for its clean exit.
fn terminate(mut daemon: Daemon) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    let exit = daemon.child.wait().expect("exits");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_failed_workload_stays_failed_across_restarts_until_it_is_restarted() {
    let state = tempfile::tempdir().expect("tempdir");
    let m = Manifests::new();
    let daemon = Daemon::start(state.path());
    daemon.apply(&failing_crasher(&m, ""));
    let failed = wait_phase(&daemon, "crash", "Failed");
    let revision = failed["revision"].clone();
    let describe = daemon.cli(&["describe", "workload/crash"]);
    let text = String::from_utf8_lossy(&describe.stdout);
    assert!(
        text.contains("Failed:      RestartBudgetExceeded"),
        "{text}"
    );
    assert!(
        text.contains("`setpoint rollout restart workload/crash`"),
        "says how to recover: {text}"
    );
    // The last end in full: why, how long, how much memory and CPU, its last output.
    assert!(text.contains("Last termination: Exited (crash-"), "{text}");
    assert!(text.contains("exited with status 1"), "{text}");
    assert!(text.contains(", peak memory "), "{text}");
    assert!(text.contains("  last output:"), "{text}");
    terminate(daemon);
    // Started again, it is still failed, and runs nothing.
    let daemon = Daemon::start(state.path());
    let w = wait_phase(&daemon, "crash", "Failed");
    assert_eq!(w["revision"], revision);
    assert_eq!(w["instances"].as_array().map(Vec::len), Some(0), "{w}");
    let events = daemon.cli(&["events", "workload/crash"]);
    assert!(
        String::from_utf8_lossy(&events.stdout)
            .contains("still failed, as recorded before the host restarted"),
        "{}",
        String::from_utf8_lossy(&events.stdout)
    );
    // `rollout restart` clears the verdict, durably: the restart spends the budget again,
    // so to see it cleared the workload must not fail again: scale it to zero first.
    daemon.apply(&failing_crasher(&m, "  replicas: 0\n"));
    let out = daemon.cli(&["rollout", "restart", "workload/crash"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_phase(&daemon, "crash", "Running");
    terminate(daemon);
    let daemon = Daemon::start(state.path());
    let w = wait_phase(&daemon, "crash", "Running");
    assert!(
        w["conditions"].as_array().is_some_and(|c| c
            .iter()
            .all(|c| c["type"] != "Failed" || c["status"] == false)),
        "{w}"
    );
    // Deleted and applied again, a workload starts with no verdict either.
    let out = daemon.cli(&["delete", "workload/crash"]);
    assert!(out.status.success());
    terminate(daemon);
}

#[test]
fn get_o_yaml_is_the_manifest_and_applies_again_unchanged() {
    use std::io::Write as _;
    let state = tempfile::tempdir().expect("tempdir");
    let m = Manifests::new();
    let file = m.write(
        "web.yaml",
        &format!(
            "{}---\napiVersion: setpoint.dev/v1alpha1\nkind: Job\nmetadata:\n  name: crunch\nspec:\n  component: {{guest:batch}}\n  completions: 2\n  parallelism: 2\n  env: {{WORK_MS: '0'}}\n",
            workload(
                "web",
                "ticker",
                "  replicas: 2\n  env: {TICK_MS: '5000', GREETING: hi there}\n  resources: {memory: 16Mi}\n  backoff: {initial: 20ms, max: 2s}\n  terminationGracePeriod: 1500ms\n  strategy: {maxSurge: 1, maxUnavailable: 0%}\n"
            )
        ),
    );
    let daemon = Daemon::start(state.path());
    daemon.apply(&file);
    daemon.wait_ready("web", 2);
    let out = daemon.cli(&["get", "-o", "yaml", "workload/web"]);
    assert!(out.status.success());
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    // The manifest as written: field names, units, the user's component path.
    for want in [
        "apiVersion: setpoint.dev/v1alpha1",
        "kind: Workload",
        "GREETING: hi there",
        "memory: 16Mi",
        "terminationGracePeriod: 1500ms",
        "maxUnavailable: 0%",
        "ticker.wasm",
        "status:",
    ] {
        assert!(yaml.contains(want), "`{want}` missing from:\n{yaml}");
    }
    assert!(!yaml.contains("blobs"), "not the daemon's blob:\n{yaml}");
    // Piped back into apply, it changes nothing.
    let apply_stdin = |text: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .args(["apply", "-f", "-", "--socket"])
            .arg(&daemon.socket)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("apply runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("writes");
        child.wait_with_output().expect("apply ends")
    };
    let out = apply_stdin(&yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "workload/web unchanged\n"
    );
    // Every object at once, a Job among them, round-trips too.
    let all = daemon.cli(&["get", "-o", "yaml"]);
    let out = apply_stdin(&String::from_utf8_lossy(&all.stdout));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("workload/web unchanged"), "{said}");
    assert!(said.contains("job/crunch unchanged"), "{said}");
    // -o json shows the same spec form.
    let json = daemon.cli(&["get", "-o", "json", "workload/web"]);
    let value: Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(value[0]["spec"]["env"]["GREETING"], "hi there");
    assert_eq!(value[0]["spec"]["resources"]["memory"], "16Mi");
    assert_eq!(value[0]["ready"], 2);
}

#[test]
fn get_watch_prints_a_row_again_when_it_changes() {
    use std::io::BufRead as _;
    let state = tempfile::tempdir().expect("tempdir");
    let m = Manifests::new();
    let daemon = Daemon::start(state.path());
    daemon.apply(&m.write("web.yaml", &workload("web", "ticker", "  replicas: 1\n")));
    daemon.wait_ready("web", 1);
    let mut watcher = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["get", "workloads", "-w", "--socket"])
        .arg(&daemon.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("get -w runs");
    let lines = std::io::BufReader::new(watcher.stdout.take().expect("stdout"));
    let mut lines = lines.lines();
    let mut next = || lines.next().expect("a line").expect("text");
    assert!(next().starts_with("NAME"));
    assert!(next().contains("1/1"));
    // Scaled to 2, the row comes again with each change, ending at 2/2.
    daemon.apply(&m.write("web.yaml", &workload("web", "ticker", "  replicas: 2\n")));
    loop {
        let line = next();
        assert!(line.starts_with("web"), "{line}");
        if line.contains("2/2") {
            break;
        }
    }
    let out = daemon.cli(&["delete", "workload/web"]);
    assert!(out.status.success());
    loop {
        if next().contains("web   (deleted)") {
            break;
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
}

#[test]
fn wait_returns_when_the_state_comes_and_at_once_when_it_never_will() {
    let state = tempfile::tempdir().expect("tempdir");
    let m = Manifests::new();
    let daemon = Daemon::start(state.path());
    daemon.apply(&m.write("web.yaml", &workload("web", "ticker", "  replicas: 2\n")));
    let waited = |args: &[&str]| {
        let out = daemon.cli(&[&["wait"], args].concat());
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = waited(&["workload/web", "--for", "ready", "--timeout", "60s"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "workload/web condition met\n");
    assert_eq!(daemon.wait_ready("web", 2)["ready"], 2);
    // A state that is not coming: a timeout, exit 1.
    let (code, _, stderr) = waited(&["workload/web", "--for", "failed", "--timeout", "300ms"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("timed out after 300ms waiting for workload/web to be failed"),
        "{stderr}"
    );
    // A state that can never come ends the wait at once.
    daemon.apply(&failing_crasher(&m, ""));
    let (code, _, stderr) = waited(&["workload/crash", "--for", "failed", "--timeout", "60s"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = waited(&["workload/crash", "--for", "ready", "--timeout", "60s"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("workload/crash is Failed (RestartBudgetExceeded"),
        "{stderr}"
    );
    let (code, _, stderr) = waited(&["workload/web", "--for", "complete"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("never completes"), "{stderr}");
    // Deleted.
    assert!(daemon.cli(&["delete", "workload/web"]).status.success());
    let (code, stdout, stderr) = waited(&["workload/web", "--for", "deleted", "--timeout", "60s"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "workload/web deleted\n");
}

#[test]
fn scale_keeps_its_count_across_restarts_until_the_manifest_is_applied_again() {
    let state = tempfile::tempdir().expect("tempdir");
    let m = Manifests::new();
    let file = m.write("web.yaml", &workload("web", "ticker", "  replicas: 1\n"));
    let mut daemon = Daemon::start(state.path());
    daemon.apply(&file);
    let before = daemon.wait_ready("web", 1)["revision"].clone();
    let out = daemon.cli(&["scale", "workload/web", "--replicas", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "workload/web scaled to 3 replicas\n"
    );
    let w = daemon.wait_ready("web", 3);
    assert_eq!(w["revision"], before, "scaling makes no new revision");
    let created = w["created"].clone();
    assert!(created.is_string(), "{w}");
    let table = String::from_utf8_lossy(&daemon.cli(&["get", "workloads"]).stdout).into_owned();
    assert!(
        table.lines().next().is_some_and(|h| h.contains("AGE")),
        "{table}"
    );
    daemon.kill9();
    let daemon = Daemon::start(state.path());
    let w = daemon.wait_ready("web", 3);
    assert_eq!(w["desired"], 3, "kept across a restart");
    assert_eq!(w["created"], created, "a restart does not make it young");
    // Refused: a job, something unknown, a count over the limit.
    let out = daemon.cli(&["scale", "job/web", "--replicas", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let out = daemon.cli(&["scale", "workload/nosuch", "--replicas", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = daemon.cli(&["scale", "workload/web", "--replicas", "1000000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("over this host's limit"));
    // The manifest applied again says what it says.
    daemon.apply(&file);
    daemon.wait_ready("web", 1);
}

#[test]
fn under_systemd_the_daemon_says_ready_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let state = tempfile::tempdir().expect("tempdir");
    let notify = state.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&notify).expect("binds");
    systemd
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["daemon", "--state-dir"])
        .arg(state.path())
        .env("NOTIFY_SOCKET", &notify)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("daemon starts");
    let mut buf = [0u8; 512];
    let n = systemd.recv(&mut buf).expect("READY=1 arrives");
    let said = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(said.starts_with("READY=1\nSTATUS=serving on "), "{said}");
    // Ready means it answers.
    let socket = state.path().join("setpoint.sock");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["get", "--socket"])
        .arg(&socket)
        .output()
        .expect("get runs");
    assert!(out.status.success());
    // `systemctl reload`: RELOADING=1 with the time systemd 253 asks for, then READY=1.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGHUP) };
    let n = systemd.recv(&mut buf).expect("RELOADING=1 arrives");
    let said = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(said.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{said}");
    let n = systemd.recv(&mut buf).expect("READY=1 arrives again");
    let said = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(said.starts_with("READY=1\nSTATUS=reloaded: "), "{said}");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let n = systemd.recv(&mut buf).expect("STOPPING=1 arrives");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim_end(), "STOPPING=1");
    assert!(daemon.wait().expect("exits").success());
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(version) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("skipped: no systemd-analyze on this machine");
        return;
    };
    assert!(version.status.success());
    // The unit as installed, with ExecStart pointing at this build.
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/setpoint.service"),
    )
    .expect("the unit");
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload="));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("setpoint.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/setpoint", env!("CARGO_BIN_EXE_setpoint")),
    )
    .expect("write");
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    // A line it cannot parse is only a warning: the unit is clean when nothing is said.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn the_daemon_logs_each_apply_delete_crash_and_shutdown_as_json_lines() {
    let state = tempfile::tempdir().expect("tempdir");
    let log = state.path().join("daemon.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["--log-format", "json", "daemon", "--state-dir"])
        .arg(state.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("daemon starts");
    let socket = state.path().join("setpoint.sock");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .expect("cli runs")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cli(&["get"]).status.success() {
        assert!(Instant::now() < deadline, "the daemon never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let manifests = Manifests::new();
    let file = manifests.write(
        "crash.yaml",
        &workload("crashy", "crasher", "  env:\n    CRASH_AFTER_MS: \"10\"\n"),
    );
    assert!(
        cli(&["apply", "-f", file.to_str().expect("utf-8")])
            .status
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Trapped")
    {
        assert!(Instant::now() < deadline, "no crash was logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(cli(&["delete", "workload/crashy"]).status.success());
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().expect("exits").success());
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let said = |needle: &str| {
        lines.iter().any(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle))
        })
    };
    for needle in ["applied", "deleted", "shutting down"] {
        assert!(said(needle), "no `{needle}` line in:\n{text}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "WARN" && l["fields"]["reason"] == "Trapped"),
        "no crash line in:\n{text}"
    );
    assert!(!text.contains('\u{1b}'), "colour codes in a log file");
}

#[test]
fn a_daemon_on_its_own_state_dir_says_how_clients_find_it() {
    use std::io::BufRead as _;
    let state = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["daemon", "--state-dir"])
        .arg(state.path())
        .env_remove("SETPOINT_STATE_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("daemon starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let export = loop {
        let line = lines.next().expect("the daemon speaks").expect("a line");
        if let Some(rest) = line.strip_prefix("setpoint daemon: clients find this daemon with: ") {
            break rest.to_string();
        }
    };
    let socket = export
        .strip_prefix("export SETPOINT_SOCKET=")
        .expect("an export line");
    // Exactly what the line says works.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .arg("get")
        .env("SETPOINT_SOCKET", socket)
        .output()
        .expect("get runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn diff_shows_what_an_apply_would_change_field_by_field_and_changes_nothing() {
    let state = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(state.path());
    let manifests = Manifests::new();
    let spec = |replicas: u32, env: &str| {
        workload(
            "web",
            "ticker",
            &format!("  replicas: {replicas}\n  env: {{{env}}}\n"),
        )
    };
    let file = manifests.write("web.yaml", &spec(2, "A: \"1\", B: \"2\""));
    let path = file.to_str().expect("utf-8");
    // Not applied yet: everything is new.
    let out = daemon.cli(&["diff", "-f", path]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("workload/web: created") && text.contains("+ spec.replicas: 2"),
        "{text}"
    );
    daemon.apply(&file);
    let revision = daemon.wait_ready("web", 2)["revision"].clone();
    let out = daemon.cli(&["diff", "-f", path]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no changes"));
    // Changed: each field, and the daemon runs what it ran.
    manifests.write("web.yaml", &spec(4, "A: \"1\", C: \"3\""));
    let out = daemon.cli(&["diff", "-f", path]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in [
        "~ spec.replicas: 2 → 4",
        "+ spec.env.C: \"3\"",
        "- spec.env.B: \"2\"",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
    let now = daemon.wait_ready("web", 2);
    assert_eq!(now["revision"], revision);
    assert_eq!(now["desired"], 2);
    // A manifest that does not load is an error (2), not a difference.
    manifests.write("web.yaml", "kind: Nonsense\n");
    assert_eq!(daemon.cli(&["diff", "-f", path]).status.code(), Some(2));
}

#[test]
fn an_error_about_a_component_names_the_users_file_not_the_state_directory() {
    let state = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(state.path());
    let manifests = Manifests::new();
    std::fs::write(manifests.dir.path().join("fake.wasm"), b"not wasm").expect("fake");
    let file = manifests.write(
        "fake.yaml",
        "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: fake\nspec:\n  component: fake.wasm\n",
    );
    let out = daemon.cli(&["apply", "-f", file.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fake.wasm` is not a valid Wasm component"),
        "{stderr}"
    );
    assert!(!stderr.contains("blobs"), "{stderr}");
}

#[test]
fn top_shows_the_busiest_instance_first_with_its_memory_and_cpu() {
    let state = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(state.path());
    let manifests = Manifests::new();
    let spin = manifests.write("spin.yaml", &workload("spin", "spinner", "  replicas: 1\n"));
    let tick = manifests.write(
        "tick.yaml",
        &workload(
            "tick",
            "ticker",
            "  replicas: 2\n  env: {TICK_MS: \"1000\"}\n",
        ),
    );
    daemon.apply(&spin);
    daemon.apply(&tick);
    daemon.wait_ready("spin", 1);
    daemon.wait_ready("tick", 2);
    let out = daemon.cli(&["top", "--once", "--interval", "500ms"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0][..4],
        ["INSTANCE", "OWNER", "MEMORY", "CPU%"],
        "{text}"
    );
    assert_eq!(rows.len(), 4, "{text}");
    // The spinner burns its share of a core; a ticker that sleeps uses next to none.
    assert_eq!(rows[1][1], "spin", "{text}");
    let cpu = |r: &Vec<&str>| {
        r[4].trim_end_matches('%')
            .parse::<f64>()
            .expect("a percentage")
    };
    assert!(cpu(&rows[1]) > 20.0, "{text}");
    assert!(cpu(&rows[3]) < cpu(&rows[1]), "{text}");
    assert!(
        rows[1][2].parse::<f64>().is_ok() && rows[1][3].ends_with("iB"),
        "{text}"
    );
    // The same figures are in the status, for scripts.
    let w = daemon.wait_ready("spin", 1);
    assert!(
        w["instances"][0]["memoryBytes"].as_u64().unwrap_or(0) > 0,
        "{w}"
    );
    assert!(w["instances"][0]["cpuMs"].as_u64().is_some(), "{w}");
}

#[test]
fn the_daemon_names_a_policy_plugin_by_its_file_not_its_blob() {
    let state = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(state.path());
    let manifests = Manifests::new();
    let file = manifests.write(
        "ordered.yaml",
        &workload(
            "ordered",
            "ticker",
            &format!(
                "  replicas: 1\n  policy:\n    plugin: {}\n",
                guest("policy_ordered").display()
            ),
        ),
    );
    daemon.apply(&file);
    let w = daemon.wait_ready("ordered", 1);
    assert_eq!(w["policy"], "plugin:policy_ordered.wasm", "{w}");
}
