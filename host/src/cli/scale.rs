//! `setpoint scale`: a workload's replica count, kept by the daemon as if its manifest
//! had said it (until the next apply of that manifest).

use std::process::ExitCode;

use hyper::Method;
use setpoint::daemon::wire::Scaled;
use setpoint::status::WorkloadKind;

use super::client::{Target, fail, local_error};
use super::objects::{parse_target, url_word};
use super::output::count;

/// `setpoint scale`.
#[derive(clap::Args)]
pub struct ScaleArgs {
    /// `workload/NAME` (or just `NAME`).
    #[arg(value_name = "KIND/NAME")]
    target_name: String,
    /// How many replicas to keep.
    #[arg(long)]
    replicas: u32,
    #[command(flatten)]
    target: Target,
}

/// `setpoint scale workload/NAME --replicas N`.
pub async fn scale(args: ScaleArgs) -> ExitCode {
    let name = match parse_target(&args.target_name) {
        Ok((Some(WorkloadKind::Job), _)) => {
            return fail(&local_error(format!(
                "{} is a job: a job's parallelism is part of its spec; apply it changed",
                args.target_name
            )));
        }
        Ok((_, name)) => name.to_string(),
        Err(e) => return fail(&e),
    };
    let path = format!("/v1/workloads/{}/scale", url_word(&name));
    let answer: Result<Scaled, _> = args
        .target
        .client()
        .send_json(
            Method::POST,
            &path,
            &serde_json::json!({ "replicas": args.replicas }),
        )
        .await;
    match answer {
        Ok(s) => {
            println!(
                "workload/{} scaled to {}",
                s.scaled,
                count(s.replicas, "replica")
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
