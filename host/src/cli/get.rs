//! `setpoint get` and `setpoint describe`: what the daemon runs, as tables, JSON or YAML.

use std::process::ExitCode;

use serde::Serialize;
use setpoint::status::{HostStatus, InstanceStatus, JobStatus, WorkloadKind, WorkloadStatus};

use super::client::{Target, fail, local_error};
use super::objects::{Listing, fetch};
use super::output::{
    GetOutput, age, object_json, print_objects, print_rows, print_value, row, time,
};

/// `setpoint get`.
#[derive(clap::Args)]
pub struct GetArgs {
    /// `workloads`, `jobs`, `instances`, `nodes` (of a fleet) or `all` (the default),
    /// optionally followed by a name (for `instances`, the workload or job they belong
    /// to); or `KIND/NAME`.
    #[arg(value_name = "KIND [NAME]", num_args = 0..=2)]
    what: Vec<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = GetOutput::Table)]
    output: GetOutput,
    /// Only objects with these labels (`key=value`, repeatable or comma-separated; all
    /// must match).
    #[arg(
        short = 'l',
        long = "selector",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    selector: Vec<String>,
    /// After the table, print each workload's or job's row again whenever it changes
    /// (woken by the daemon's events), until interrupted.
    #[arg(short, long)]
    watch: bool,
    #[command(flatten)]
    target: Target,
}

/// `setpoint describe`.
#[derive(clap::Args)]
pub struct DescribeArgs {
    /// `workload/NAME`, `job/NAME` (or just `NAME`), or `node/NAME` in a fleet.
    target_name: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = GetOutput::Table)]
    output: GetOutput,
    #[command(flatten)]
    target: Target,
}

/// An instance with the workload or job it belongs to, as `get instances` shows it.
#[derive(Serialize)]
struct OwnedInstance<'a> {
    owner: &'a str,
    #[serde(flatten)]
    instance: &'a InstanceStatus,
}

/// `setpoint get [workloads|jobs|instances|all] [NAME] [-o ...]`.
pub async fn get(args: GetArgs) -> ExitCode {
    match args.what.as_slice() {
        [kind, rest @ ..] if super::nodes::is_node_kind(kind) => {
            return super::nodes::get_nodes(
                args.target,
                rest.first().map(String::as_str),
                args.output,
            )
            .await;
        }
        [one]
            if one
                .split_once('/')
                .is_some_and(|(k, _)| super::nodes::is_node_kind(k)) =>
        {
            let name = one.split_once('/').map(|(_, n)| n);
            return super::nodes::get_nodes(args.target, name, args.output).await;
        }
        _ => {}
    }
    let (listing, name) = match args.what.as_slice() {
        [] => (Ok(Listing::All), None),
        // kubectl's `get workload/web` as well as `get workloads web`.
        [one] if one.contains('/') => match super::objects::parse_target(one) {
            Ok((Some(kind), name)) => (Ok(Listing::Of(kind)), Some(name.to_string())),
            Ok((None, name)) => (Ok(Listing::All), Some(name.to_string())),
            Err(e) => (Err(e), None),
        },
        [kind, rest @ ..] => (Listing::parse(kind), rest.first().cloned()),
    };
    let listing = match listing {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let output = args.output;
    let status: HostStatus = match args.target.clone().client().get_json("/v1/workloads").await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    // Stored but not running: said on stderr whatever the output format.
    for q in &status.quarantined {
        if name.as_ref().is_none_or(|n| q.workloads.contains(n)) {
            eprintln!(
                "warning: stored apply {} ({}) is quarantined, not running: {}\n  help: {}",
                q.apply,
                q.workloads.join(", "),
                q.reason,
                q.help
            );
        }
    }
    let mut objects = status.workloads;
    if let Listing::Of(kind) = listing {
        objects.retain(|w| w.kind == kind);
    }
    let mut wanted = Vec::new();
    for s in &args.selector {
        match s.split_once('=') {
            Some((key, value)) if !key.is_empty() => wanted.push((key, value)),
            _ => {
                return fail(&local_error(format!(
                    "`{s}` is not a label selector; write KEY=VALUE, e.g. -l tier=web"
                )));
            }
        }
    }
    objects.retain(|w| {
        wanted
            .iter()
            .all(|(k, v)| w.labels.get(*k).is_some_and(|have| have == v))
    });
    if let Some(name) = &name {
        objects.retain(|w| w.name == *name);
        if objects.is_empty() {
            let what = match listing {
                Listing::Of(kind) => kind.noun(),
                _ => "object",
            };
            return fail(&local_error(format!("{what} `{name}` not found")));
        }
    }
    let wide = output == GetOutput::Wide;
    if listing == Listing::Instances {
        let instances: Vec<OwnedInstance<'_>> = objects
            .iter()
            .flat_map(|w| {
                w.instances.iter().map(|instance| OwnedInstance {
                    owner: &w.name,
                    instance,
                })
            })
            .collect();
        if output == GetOutput::Name {
            for i in &instances {
                println!("instance/{}", i.instance.id);
            }
        } else if !print_value(&instances, output) {
            print_instances(&instances, wide);
        }
        return ExitCode::SUCCESS;
    }
    if print_objects(&objects, output) {
        return ExitCode::SUCCESS;
    }
    if output == GetOutput::Name {
        for w in &objects {
            println!("{}/{}", w.kind.noun(), w.name);
        }
        return ExitCode::SUCCESS;
    }
    let (jobs, workloads): (Vec<&WorkloadStatus>, Vec<&WorkloadStatus>) =
        objects.iter().partition(|w| w.kind == WorkloadKind::Job);
    let show_workloads = matches!(listing, Listing::All | Listing::Of(WorkloadKind::Workload));
    let show_jobs = matches!(listing, Listing::All | Listing::Of(WorkloadKind::Job));
    if show_workloads && (!workloads.is_empty() || listing != Listing::All) {
        print_workloads(&workloads, listing, wide);
    }
    if show_jobs && (!jobs.is_empty() || listing != Listing::All) {
        if show_workloads && !workloads.is_empty() && !jobs.is_empty() {
            println!();
        }
        print_jobs(&jobs, listing, wide);
    }
    if listing == Listing::All && objects.is_empty() {
        println!("no workloads or jobs");
    }
    if args.watch {
        let keep = |w: &WorkloadStatus| {
            let kind_ok = match listing {
                Listing::Of(kind) => w.kind == kind,
                _ => true,
            };
            kind_ok
                && name.as_ref().is_none_or(|n| w.name == *n)
                && wanted
                    .iter()
                    .all(|(k, v)| w.labels.get(*k).is_some_and(|have| have == v))
        };
        return watch(&args.target, &objects, keep, listing, wide).await;
    }
    ExitCode::SUCCESS
}

/// `get -w`: each selected object's row again whenever it changes. The daemon's event
/// stream says when to look (and a 2 s tick covers what no event tells, such as ages).
async fn watch(
    target: &Target,
    shown: &[WorkloadStatus],
    keep: impl Fn(&WorkloadStatus) -> bool,
    listing: Listing,
    wide: bool,
) -> ExitCode {
    let client = target.clone().client();
    let mut poked = super::wait::follow_events(target.clone().client());
    let row_of = |w: &WorkloadStatus| match w.kind {
        WorkloadKind::Job => job_row(listing, w, wide),
        WorkloadKind::Workload => workload_row(listing, w, wide, w.http.is_some()),
    };
    let mut last: std::collections::BTreeMap<String, Vec<String>> = shown
        .iter()
        .map(|w| (format!("{}/{}", w.kind.noun(), w.name), row_of(w)))
        .collect();
    loop {
        tokio::select! {
            woke = poked.recv() => if woke.is_none() { break },
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
        // Let a burst of events settle into one look.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        while poked.try_recv().is_ok() {}
        let status: HostStatus = match client.get_json("/v1/workloads").await {
            Ok(s) => s,
            Err(e) => return fail(&e),
        };
        let mut changed = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for w in status.workloads.iter().filter(|w| keep(w)) {
            let key = format!("{}/{}", w.kind.noun(), w.name);
            let row = row_of(w);
            // A row is printed again when it changed, not when it only aged.
            let unaged = |r: &Vec<String>| -> Vec<String> {
                let mut r = r.clone();
                if w.kind == WorkloadKind::Workload && r.len() > AGE_CELL {
                    r.remove(AGE_CELL);
                }
                r
            };
            if last.get(&key).map(unaged) != Some(unaged(&row)) {
                changed.push(row.clone());
                last.insert(key.clone(), row);
            }
            seen.insert(key);
        }
        for gone in last
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect::<Vec<_>>()
        {
            last.remove(&gone);
            changed.push(vec![gone, "(deleted)".into()]);
        }
        for row in changed {
            println!("{}", row.join("   "));
        }
    }
    fail(&local_error("the daemon closed the event stream"))
}

fn print_instances(instances: &[OwnedInstance<'_>], wide: bool) {
    let mut rows = vec![row(&[
        "INSTANCE", "OWNER", "SLOT", "PHASE", "READY", "RESTARTS", "AGE",
    ])];
    // In a fleet, where each runs.
    let fleet = instances.iter().any(|i| i.instance.node.is_some());
    if fleet {
        rows[0].push("NODE".into());
    }
    if wide {
        rows[0].push("REVISION".into());
    }
    for OwnedInstance { owner, instance: i } in instances {
        let mut r = vec![
            i.id.clone(),
            owner.to_string(),
            i.slot.to_string(),
            i.phase.to_string(),
            i.ready.to_string(),
            i.restarts.to_string(),
            age(i.age),
        ];
        if fleet {
            r.push(i.node.clone().unwrap_or_default());
        }
        if wide {
            r.push(i.revision.clone());
        }
        rows.push(r);
    }
    print_rows(&rows, "no instances");
}

fn print_workloads(workloads: &[&WorkloadStatus], listing: Listing, wide: bool) {
    let mut header = row(&["NAME", "READY", "RESTARTS", "PHASE", "REVISION", "AGE"]);
    let serves_http = workloads.iter().any(|w| w.http.is_some());
    if serves_http {
        header.push("URL".into());
    }
    if wide {
        header.extend(["RUNNING", "POLICY", "ROLLOUT"].map(String::from));
    }
    let mut rows = vec![header];
    for w in workloads {
        rows.push(workload_row(listing, w, wide, serves_http));
    }
    print_rows(&rows, "no workloads");
}

/// Where a workload's row of `get` has its AGE.
const AGE_CELL: usize = 5;

/// A workload's row of `get`.
fn workload_row(listing: Listing, w: &WorkloadStatus, wide: bool, url: bool) -> Vec<String> {
    let mut r = vec![
        prefixed(listing, w),
        format!("{}/{}", w.ready, w.desired),
        w.restarts.to_string(),
        phase(w),
        w.revision.clone(),
        w.created.map_or_else(|| "-".into(), since),
    ];
    if url {
        r.push(
            w.http
                .as_ref()
                .map_or_else(|| "-".into(), |h| h.url.clone()),
        );
    }
    if wide {
        r.push(w.running.to_string());
        r.push(w.policy.clone());
        r.push(
            w.rollout
                .as_ref()
                .map_or_else(|| "-".to_string(), |r| format!("{} → {}", r.from, r.to)),
        );
    }
    r
}

fn print_jobs(jobs: &[&WorkloadStatus], listing: Listing, wide: bool) {
    let mut header = row(&[
        "NAME",
        "COMPLETIONS",
        "ACTIVE",
        "FAILED",
        "DURATION",
        "PHASE",
    ]);
    if wide {
        header.extend(["IGNORED", "REVISION"].map(String::from));
    }
    let mut rows = vec![header];
    for w in jobs.iter().filter(|w| w.job.is_some()) {
        rows.push(job_row(listing, w, wide));
    }
    print_rows(&rows, "no jobs");
}

/// A job's row of `get` (its name and phase only if it carries no job progress).
fn job_row(listing: Listing, w: &WorkloadStatus, wide: bool) -> Vec<String> {
    let Some(j) = &w.job else {
        return vec![prefixed(listing, w), phase(w)];
    };
    let mut r = vec![
        prefixed(listing, w),
        format!("{}/{}", j.succeeded, j.completions),
        j.active.to_string(),
        j.failed.to_string(),
        job_duration(j),
        phase(w),
    ];
    if wide {
        r.push(j.ignored.to_string());
        r.push(w.revision.clone());
    }
    r
}

/// The PHASE cell: the phase, and for a failed object why (`Failed (BackoffLimitExceeded)`).
fn phase(w: &WorkloadStatus) -> String {
    let failed = w
        .conditions
        .iter()
        .find(|c| c.kind == setpoint::status::ConditionType::Failed && c.status);
    match failed {
        Some(c) => format!("{} ({})", w.phase, c.reason),
        None => w.phase.to_string(),
    }
}

/// The NAME cell: `kind/name` when several kinds are listed, as kubectl does.
fn prefixed(listing: Listing, w: &WorkloadStatus) -> String {
    if listing == Listing::All {
        format!("{}/{}", w.kind.noun(), w.name)
    } else {
        w.name.clone()
    }
}

/// How long ago `t` was (`0ms` for a time ahead of this clock).
fn since(t: std::time::SystemTime) -> String {
    age(std::time::SystemTime::now()
        .duration_since(t)
        .unwrap_or_default())
}

/// How long a job has run: to its completion time, or until now.
fn job_duration(job: &JobStatus) -> String {
    let end = job
        .completion_time
        .unwrap_or_else(std::time::SystemTime::now);
    age(end.duration_since(job.start_time).unwrap_or_default())
}

/// `setpoint describe KIND/NAME`.
pub async fn describe(args: DescribeArgs) -> ExitCode {
    if let Some((kind, name)) = args.target_name.split_once('/')
        && super::nodes::is_node_kind(kind)
    {
        return super::nodes::describe_node(args.target, name, args.output).await;
    }
    let client = args.target.client();
    let w = match fetch(&client, &args.target_name).await {
        Ok(w) => w,
        Err(e) => return fail(&e.error()),
    };
    match args.output {
        GetOutput::Json => {
            print_value(&object_json(&w), args.output);
            return ExitCode::SUCCESS;
        }
        GetOutput::Yaml => {
            print_objects(std::slice::from_ref(&w), args.output);
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    if args.output == GetOutput::Name {
        println!("{}/{}", w.kind.noun(), w.name);
        return ExitCode::SUCCESS;
    }
    println!("Name:        {}", w.name);
    println!("Kind:        {}", w.kind);
    if !w.labels.is_empty() {
        let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("Labels:      {}", labels.join(", "));
    }
    println!("Phase:       {}", w.phase);
    if let Some(c) = w
        .conditions
        .iter()
        .find(|c| c.kind == setpoint::status::ConditionType::Failed && c.status)
    {
        println!("Failed:      {}: {}", c.reason, c.message);
        if w.kind == setpoint::status::WorkloadKind::Workload {
            println!(
                "             to recover, fix the cause and apply a new revision, or `setpoint rollout restart workload/{}`",
                w.name
            );
        }
    }
    println!("Revision:    {}", w.revision);
    println!("Policy:      {}", w.policy);
    match &w.job {
        Some(j) => {
            println!(
                "Runs:        {}/{} succeeded, {} active, {} failed, {} ignored (parallelism {})",
                j.succeeded, j.completions, j.active, j.failed, j.ignored, j.parallelism
            );
            println!("Started:     {}", time(Some(j.start_time)));
            println!("Finished:    {}", time(j.completion_time));
            println!("Duration:    {}", job_duration(j));
        }
        None => println!(
            "Replicas:    {} desired, {} running, {} ready, {} restarts",
            w.desired, w.running, w.ready, w.restarts
        ),
    }
    if let Some(h) = &w.http {
        println!(
            "URL:         {} ({} in flight, {} queued)",
            h.url, h.in_flight, h.queued
        );
    }
    println!("Spec:");
    let yaml =
        serde_saphyr::to_string(&setpoint::manifest::render::spec_of(&w.spec)).unwrap_or_default();
    for line in yaml.lines() {
        println!("  {line}");
    }
    println!("Conditions:");
    for c in &w.conditions {
        println!("  {:<10} {:<6} {}", c.kind, c.status, c.message);
    }
    println!("Instances:");
    for i in &w.instances {
        let http = i.http.map_or_else(String::new, |h| {
            format!(
                "  {}{} served, {} failed, {} in flight",
                if h.draining { "draining, " } else { "" },
                h.served,
                h.failed,
                h.in_flight
            )
        });
        println!(
            "  {:<24} slot {:<4} {:<10} revision {}{http}",
            i.id, i.slot, i.phase, i.revision
        );
    }
    if let Some(t) = &w.last_termination {
        let ago = since(t.at);
        println!(
            "Last termination: {} ({}, slot {}, {ago} ago)",
            t.end.reason.name(),
            t.instance,
            t.slot
        );
        println!("  {}", t.end.reason);
        // The trap's backtrace, bounded: its first frames say where.
        if let setpoint::runtime::EndReason::Trapped { message, .. }
        | setpoint::runtime::EndReason::OutOfMemory { message, .. }
        | setpoint::runtime::EndReason::CpuBudgetExceeded { message, .. } = &t.end.reason
        {
            for line in message.lines().skip(1).take(8) {
                println!("    {line}");
            }
        }
        println!(
            "  ran {}, peak memory {}, CPU {}",
            age(t.end.ran_for),
            bytesize::ByteSize(t.end.peak_memory_bytes),
            age(t.end.cpu)
        );
        if !t.end.output.tail.is_empty() {
            println!("  last output:");
            for line in &t.end.output.tail {
                println!("    {line}");
            }
        }
    }
    println!("Events:");
    for e in &w.events {
        println!(
            "  {:<7} {:<8} {:<16} {:<24} {}",
            since(e.time),
            e.kind,
            e.reason,
            e.instance.as_deref().unwrap_or("-"),
            e.message
        );
    }
    ExitCode::SUCCESS
}
