//! `setpoint logs` and `setpoint events`: what the daemon kept, then (following) what
//! comes, as it comes.

use std::process::ExitCode;

use setpoint::daemon::logbook::LogEntry;
use setpoint::daemon::wire::StreamLine;
use setpoint::status::Event;

use super::client::{Target, fail};
use super::objects::{parse_target, url_word};
use super::output::{GetOutput, time};

/// `setpoint logs`.
#[derive(clap::Args)]
pub struct LogsArgs {
    /// `workload/NAME` or `job/NAME` (or just `NAME`).
    target_name: String,
    /// Only this instance's lines.
    #[arg(long, value_name = "ID")]
    instance: Option<String>,
    /// Only the last N kept lines.
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    /// Keep following new output until interrupted.
    #[arg(short, long)]
    follow: bool,
    /// Begin each line with the time the daemon received it (RFC 3339).
    #[arg(long)]
    timestamps: bool,
    /// An HTTP service's access lines (one per request: client, request line, status,
    /// time to the response head, replica) instead of its output.
    #[arg(long)]
    access: bool,
    /// Only lines received within this long before now (e.g. `5m`, `90s`).
    #[arg(long, value_name = "DURATION", value_parser = setpoint::manifest::units::parse_duration)]
    since: Option<std::time::Duration>,
    #[command(flatten)]
    target: Target,
}

/// `setpoint events`.
#[derive(clap::Args)]
pub struct EventsArgs {
    /// Only this workload's or job's events: `KIND/NAME` or `NAME`.
    target_name: Option<String>,
    /// Keep watching for new events until interrupted.
    #[arg(short, long)]
    watch: bool,
    /// `table` (default) or `json` (one event per line).
    #[arg(short, long, value_enum, default_value_t = GetOutput::Table)]
    output: GetOutput,
    #[command(flatten)]
    target: Target,
}

/// `setpoint logs KIND/NAME [--instance ID] [--tail N] [-f]`.
pub async fn logs(args: LogsArgs) -> ExitCode {
    // By name alone: a deleted job's kept output is still there to read.
    let name = match parse_target(&args.target_name) {
        Ok((_, name)) => name.to_string(),
        Err(e) => return fail(&e),
    };
    let mut query = vec![format!("follow={}", args.follow)];
    if let Some(i) = &args.instance {
        query.push(format!("instance={}", url_word(i)));
    }
    if let Some(t) = args.tail {
        query.push(format!("tail={t}"));
    }
    if args.access {
        query.push("access=true".into());
    }
    let path = format!("/v1/logs/{}?{}", url_word(&name), query.join("&"));
    // An access line names its replica already.
    let prefixed = args.instance.is_none() && !args.access;
    let timestamps = args.timestamps;
    let since = args.since.map(|d| {
        std::time::SystemTime::now()
            .checked_sub(d)
            .unwrap_or(std::time::UNIX_EPOCH)
    });
    let printed = args
        .target
        .client()
        .stream_lines(&path, |l: StreamLine<LogEntry>| match l {
            StreamLine::Skipped { skipped } => {
                eprintln!("({skipped} lines skipped: this client fell behind)");
            }
            StreamLine::Item(l) if since.is_some_and(|s| l.time < s) => {}
            StreamLine::Item(l) => {
                let mut out = String::new();
                if timestamps {
                    out.push_str(&time(Some(l.time)));
                    out.push(' ');
                }
                if prefixed {
                    out.push_str(&format!("{} | ", l.instance));
                }
                out.push_str(&l.line);
                println!("{out}");
            }
        })
        .await;
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// `setpoint events [KIND/NAME] [-w] [-o json]`.
pub async fn events(args: EventsArgs) -> ExitCode {
    let mut query = vec![format!("watch={}", args.watch)];
    if let Some(t) = &args.target_name {
        match parse_target(t) {
            Ok((_, name)) => query.push(format!("workload={}", url_word(name))),
            Err(e) => return fail(&e),
        }
    }
    let path = format!("/v1/events?{}", query.join("&"));
    let data = args.output.is_data();
    let mut any = false;
    let printed = args
        .target
        .client()
        .stream_lines(&path, |line: StreamLine<Event>| {
            any = true;
            match line {
                StreamLine::Skipped { skipped } if !data => {
                    eprintln!("({skipped} events skipped: this client fell behind)");
                }
                line if data => println!("{}", serde_json::to_string(&line).unwrap_or_default()),
                StreamLine::Skipped { .. } => {}
                StreamLine::Item(e) => println!(
                    "{:<24}  {:<7}  {:<22}  {:<28}  {}",
                    time(Some(e.time)),
                    e.kind,
                    e.reason,
                    e.instance.as_deref().unwrap_or(&e.workload),
                    e.message
                ),
            }
        })
        .await;
    if let Err(e) = printed {
        return fail(&e);
    }
    if !any && !data {
        println!("no events");
    }
    ExitCode::SUCCESS
}
