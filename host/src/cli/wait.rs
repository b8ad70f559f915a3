//! `setpoint wait`: block until workloads or jobs reach a state (kubectl's `wait`),
//! woken by the daemon's events; a state that can no longer come ends the wait at once.

use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;
use setpoint::WorkloadStatus;
use setpoint::status::{ConditionType, WorkloadKind};

use super::client::{Client, Target, fail, local_error};
use super::objects::{Missing, fetch};

/// What to wait for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Wanted {
    /// Every desired replica ready and no rollout under way (a workload).
    Ready,
    /// The job succeeded.
    Complete,
    /// Marked Failed.
    Failed,
    /// Gone.
    Deleted,
}

/// `setpoint wait`.
#[derive(clap::Args)]
pub struct WaitArgs {
    /// `workload/NAME` or `job/NAME` (or just `NAME`), one or more: all must get there.
    #[arg(required = true, value_name = "KIND/NAME")]
    targets: Vec<String>,
    /// What to wait for.
    #[arg(long = "for", value_enum, value_name = "STATE")]
    wanted: Wanted,
    /// Give up (exit 1) after this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = setpoint::manifest::units::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    target: Target,
}

/// Where one object stands against what is wanted.
enum Standing {
    Met,
    Waiting,
    /// It will not get there by itself.
    Never(String),
}

fn failure(w: &WorkloadStatus) -> Option<String> {
    w.conditions
        .iter()
        .find(|c| c.kind == ConditionType::Failed && c.status)
        .map(|c| format!("{}: {}", c.reason, c.message))
}

fn standing(w: &WorkloadStatus, wanted: Wanted) -> Standing {
    let who = format!("{}/{}", w.kind.noun(), w.name);
    match wanted {
        Wanted::Failed if failure(w).is_some() => Standing::Met,
        Wanted::Failed | Wanted::Deleted => Standing::Waiting,
        _ if failure(w).is_some() => Standing::Never(format!(
            "{who} is Failed ({})",
            failure(w).unwrap_or_default()
        )),
        Wanted::Ready if w.kind == WorkloadKind::Job => {
            Standing::Never(format!("{who} is a job: wait for it with --for complete"))
        }
        Wanted::Complete if w.kind == WorkloadKind::Workload => Standing::Never(format!(
            "{who} is a workload, which never completes: wait for it with --for ready"
        )),
        Wanted::Ready if w.rollout.is_none() && w.ready >= w.desired => Standing::Met,
        Wanted::Complete
            if w.conditions
                .iter()
                .any(|c| c.kind == ConditionType::Complete && c.status) =>
        {
            Standing::Met
        }
        Wanted::Ready | Wanted::Complete => Standing::Waiting,
    }
}

/// Follows the daemon's events: the receiver gets a poke whenever something happened,
/// so that a waiting command looks again (`wait`, `get -w`).
pub fn follow_events(client: Client) -> tokio::sync::mpsc::Receiver<()> {
    let (poke, poked) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let _ = client
            .stream_lines(
                "/v1/events?watch=true",
                |_: setpoint::daemon::wire::StreamLine<serde_json::Value>| {
                    let _ = poke.try_send(());
                },
            )
            .await;
    });
    poked
}

/// `setpoint wait KIND/NAME... --for STATE [--timeout D]`.
pub async fn wait(args: WaitArgs) -> ExitCode {
    let client = args.target.clone().client();
    let mut poked = follow_events(args.target.client());
    let deadline = setpoint::clock::after_tokio(tokio::time::Instant::now(), args.timeout);
    let mut pending = args.targets.clone();
    loop {
        let mut still = Vec::new();
        for target in pending {
            match fetch(&client, &target).await {
                Ok(w) => match standing(&w, args.wanted) {
                    Standing::Met => println!("{}/{} condition met", w.kind.noun(), w.name),
                    Standing::Waiting => still.push(target),
                    Standing::Never(why) => return fail(&local_error(why)),
                },
                Err(Missing::NotRunning(_)) if args.wanted == Wanted::Deleted => {
                    println!("{target} deleted");
                }
                Err(e) => return fail(&e.error()),
            }
        }
        if still.is_empty() {
            return ExitCode::SUCCESS;
        }
        pending = still;
        tokio::select! {
            woke = poked.recv() => if woke.is_none() {
                // The event stream ended: look once a second instead.
                tokio::time::sleep(Duration::from_secs(1)).await;
            },
            // What no event says (the events stream gone, a condition's clock).
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(deadline) => {
                let state = args
                    .wanted
                    .to_possible_value()
                    .map_or_else(String::new, |v| v.get_name().to_string());
                return fail(&local_error(format!(
                    "timed out after {} waiting for {} to be {state}",
                    humantime::format_duration(args.timeout),
                    pending.join(", "),
                )));
            }
        }
    }
}
