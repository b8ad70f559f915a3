//! `setpoint rollout status | history | undo`: watch, list or undo a workload's
//! rollouts.

use std::process::ExitCode;
use std::time::Duration;

use hyper::Method;
use setpoint::daemon::wire::{ApplyResponse, Restarted, RevisionInfo, UndoRequest};
use setpoint::host::Change;
use setpoint::status::{ConditionType, Phase, WorkloadKind};

use super::client::{ApiError, Target, fail, local_error};
use super::objects::{fetch, parse_target, url_word};
use super::output::{GetOutput, count, print_rows, print_value, row};

/// `setpoint rollout ...`.
#[derive(clap::Subcommand)]
pub enum RolloutCmd {
    /// Wait for the rollout in progress to finish, showing its progress; fails if it is
    /// rolled back or does not finish in time.
    Status {
        /// `workload/NAME` (or just `NAME`).
        target_name: String,
        /// Give up after this long.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        target: Target,
    },
    /// List the revisions the workload has had (the last 10), oldest first.
    History {
        /// `workload/NAME` (or just `NAME`).
        target_name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = GetOutput::Table)]
        output: GetOutput,
        #[command(flatten)]
        target: Target,
    },
    /// Replace every instance with a new one of the same revision, clearing a Failed
    /// workload's failure and starting its restart budget and back-off afresh.
    Restart {
        /// `workload/NAME` (or just `NAME`).
        target_name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Go back to the previous revision (or to --to-revision): its manifest is applied
    /// again, as it was, and rolls out.
    Undo {
        /// `workload/NAME` (or just `NAME`).
        target_name: String,
        /// The revision to go back to (see `rollout history`).
        #[arg(long, value_name = "REVISION")]
        to_revision: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

/// Runs a `rollout` command.
pub async fn run(command: RolloutCmd) -> ExitCode {
    match command {
        RolloutCmd::Status {
            target_name,
            timeout,
            target,
        } => status(target, target_name, timeout).await,
        RolloutCmd::History {
            target_name,
            output,
            target,
        } => history(target, target_name, output).await,
        RolloutCmd::Undo {
            target_name,
            to_revision,
            target,
        } => undo(target, target_name, to_revision).await,
        RolloutCmd::Restart {
            target_name,
            target,
        } => restart(target, target_name).await,
    }
}

/// `setpoint rollout restart KIND/NAME`.
async fn restart(target: Target, name: String) -> ExitCode {
    let name = match rollout_target(&name) {
        Ok(name) => name,
        Err(e) => return fail(&e),
    };
    let path = format!("/v1/workloads/{}/restart", url_word(&name));
    let answer: Result<Restarted, _> = target
        .client()
        .send_json(Method::POST, &path, &serde_json::json!({}))
        .await;
    match answer {
        Ok(r) => {
            println!("workload/{} restarted", r.restarted);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Waits until the rollout in progress ends, showing its progress; fails if it ends
/// rolled back, or after `timeout`.
async fn status(target: Target, name: String, timeout: Duration) -> ExitCode {
    let client = target.client();
    let deadline = setpoint::clock::after_tokio(tokio::time::Instant::now(), timeout);
    let mut aim: Option<String> = None;
    let mut last = String::new();
    loop {
        let w = match fetch(&client, &name).await {
            Ok(w) => w,
            Err(e) => return fail(&e.error()),
        };
        if w.kind == WorkloadKind::Job {
            return fail(&local_error(format!(
                "{name} is a job: jobs have no rollouts"
            )));
        }
        let name = &w.name;
        let aim = aim.get_or_insert_with(|| {
            w.rollout
                .as_ref()
                .map_or_else(|| w.revision.clone(), |r| r.to.clone())
        });
        if w.rollout.is_none() && w.phase == Phase::Failed {
            let why = w
                .conditions
                .iter()
                .find(|c| c.kind == ConditionType::Failed)
                .map_or_else(String::new, |c| format!(": {} ({})", c.reason, c.message));
            return fail(&local_error(format!(
                "workload/{name} is Failed{why}; it will not become ready by itself: fix the manifest and apply it again, or `setpoint rollout restart workload/{name}` to try again as it is"
            )));
        }
        let line = match &w.rollout {
            None if w.ready == w.desired => {
                if *aim == w.revision {
                    println!(
                        "workload/{name} successfully rolled out (revision {})",
                        w.revision
                    );
                    return ExitCode::SUCCESS;
                }
                return fail(&local_error(format!(
                    "workload/{name} was rolled back to revision {}; see `setpoint events workload/{name}`",
                    w.revision
                )));
            }
            None => format!(
                "Waiting for workload/{name}: {} of {} ready...",
                w.ready,
                count(w.desired, "replica")
            ),
            Some(r) if r.rollback => format!(
                "Rolling back workload/{name} to {}: {} of {} updated, {} ready...",
                r.to, r.updated, w.desired, w.ready
            ),
            Some(r) => format!(
                "Waiting for workload/{name} rollout to {}: {} of {} updated, {} ready...",
                r.to, r.updated, w.desired, w.ready
            ),
        };
        if line != last {
            println!("{line}");
            last = line;
        }
        if tokio::time::Instant::now() >= deadline {
            return fail(&local_error(format!(
                "workload/{name}: the rollout did not finish within {}",
                humantime::format_duration(timeout)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The workload a rollout command names (a job has no rollouts).
fn rollout_target(target: &str) -> Result<String, ApiError> {
    match parse_target(target)? {
        (Some(WorkloadKind::Job), _) => Err(local_error(format!(
            "{target} is a job: jobs have no rollouts"
        ))),
        (_, name) => Ok(name.to_string()),
    }
}

/// `setpoint rollout history KIND/NAME`.
async fn history(target: Target, name: String, output: GetOutput) -> ExitCode {
    let name = match rollout_target(&name) {
        Ok(name) => name,
        Err(e) => return fail(&e),
    };
    let path = format!("/v1/workloads/{}/history", url_word(&name));
    let history: Vec<RevisionInfo> = match target.client().get_json(&path).await {
        Ok(h) => h,
        Err(e) => return fail(&e),
    };
    if print_value(&history, output) {
        return ExitCode::SUCCESS;
    }
    let mut rows = vec![row(&["REVISION", "APPLIED", "CURRENT"])];
    for r in &history {
        let current = if r.current { "*" } else { "" };
        rows.push(row(&[&r.revision, &r.applied_at, current]));
    }
    print_rows(&rows, "no revisions recorded");
    ExitCode::SUCCESS
}

/// `setpoint rollout undo KIND/NAME [--to-revision R]`.
async fn undo(target: Target, name: String, to_revision: Option<String>) -> ExitCode {
    let name = match rollout_target(&name) {
        Ok(name) => name,
        Err(e) => return fail(&e),
    };
    let request = UndoRequest { to_revision };
    let path = format!("/v1/workloads/{}/undo", url_word(&name));
    let response: ApplyResponse = match target
        .client()
        .send_json(Method::POST, &path, &request)
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    for c in &response.changes {
        match &c.change {
            Change::Update { from_revision } => println!(
                "workload/{} rolled back (revision {from_revision} → {})",
                c.name, c.revision
            ),
            _ => println!("workload/{} unchanged", c.name),
        }
    }
    ExitCode::SUCCESS
}
