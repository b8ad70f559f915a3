//! The daemon's client commands, kubectl-style (`apply`, `get`, `describe`, `delete`),
//! which talk to it over its socket. Objects are named `KIND/NAME` (`workload/web`,
//! `job/backup`); workloads and jobs share one name space.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use hyper::Method;
use serde_json::Value;
use setpoint::daemon::api::{ApplyRequest, ApplyResponse};
use setpoint::daemon::store::{Document, digest_of};
use setpoint::host::Change;
use setpoint::manifest::{ManifestLimits, load_str_with_files};

use super::client::{ApiError, Client, Endpoint, local_error};

/// Output formats of `get` and `describe`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GetOutput {
    /// A table (the default).
    Table,
    /// A wider table.
    Wide,
    /// JSON, as the API returns it.
    Json,
    /// YAML.
    Yaml,
}

/// The daemon to talk to: `--server` (or `$SETPOINT_SERVER`) over TCP with the token
/// from `--token-file` (or `$SETPOINT_TOKEN`); else the Unix socket `--socket`, else
/// `$SETPOINT_SOCKET`, else the default daemon's.
pub fn endpoint(
    socket: Option<PathBuf>,
    server: Option<String>,
    token_file: Option<PathBuf>,
) -> Endpoint {
    let server = server.or_else(|| std::env::var("SETPOINT_SERVER").ok());
    if let (Some(server), None) = (server, &socket) {
        let addr = server
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let token = match token_file {
            Some(file) => std::fs::read_to_string(&file)
                .map(|t| t.trim().to_string())
                .map_err(|e| format!("cannot read the token file {}: {e}", file.display())),
            None => std::env::var("SETPOINT_TOKEN").map_err(|_| {
                "the TCP API needs the daemon's token: set SETPOINT_TOKEN or pass --token-file (the daemon keeps it in STATE_DIR/api-token)".to_string()
            }),
        };
        return Endpoint::Tcp { addr, token };
    }
    Endpoint::Unix(
        socket
            .or_else(|| std::env::var_os("SETPOINT_SOCKET").map(PathBuf::from))
            .unwrap_or_else(|| {
                setpoint::daemon::default_socket(&setpoint::daemon::default_state_dir())
            }),
    )
}

fn fail(e: &ApiError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::FAILURE
}

/// The manifest files of `-f` arguments: files as given, directories' `*.yaml` and
/// `*.yml` files in name order.
fn manifest_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ApiError> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| local_error(format!("cannot read {}: {e}", path.display())))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(local_error(format!(
                    "{} holds no .yaml or .yml files",
                    path.display()
                )));
            }
            out.extend(found);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Reads the manifests, checks them here (located errors before anything is sent),
/// uploads the components they name, and builds the apply request.
async fn build_request(
    client: &Client,
    files: &[PathBuf],
    dry_run: bool,
) -> Result<ApplyRequest, ApiError> {
    let limits = ManifestLimits::default();
    let mut documents = Vec::new();
    // Joined path as the manifest names it → the file on this machine.
    let mut referenced = BTreeMap::<String, PathBuf>::new();
    let mut problems = Vec::new();
    for file in manifest_files(files)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| local_error(format!("cannot read {}: {e}", file.display())))?;
        match load_str_with_files(&file, &text, &limits) {
            Ok((_, found)) => referenced.extend(found),
            Err(rejected) => problems.extend(rejected.diagnostics.iter().map(|d| d.to_string())),
        }
        documents.push(Document {
            source: file.to_string_lossy().into_owned(),
            text,
        });
    }
    if !problems.is_empty() {
        let mut e = local_error(format!(
            "rejected: {} problem(s); nothing was sent",
            problems.len()
        ));
        e.body.diagnostics = problems;
        return Err(e);
    }
    let mut digests = BTreeMap::new();
    let mut uploaded = BTreeMap::<PathBuf, String>::new();
    for (joined, path) in referenced {
        let digest = match uploaded.get(&path) {
            Some(d) => d.clone(),
            None => {
                // The daemon's limit, checked before a byte is read.
                let limit = setpoint::runtime::RuntimeConfig::default().max_component_bytes;
                let size = std::fs::metadata(&path)
                    .map_err(|e| local_error(format!("cannot read {}: {e}", path.display())))?
                    .len();
                if size > limit {
                    return Err(local_error(format!(
                        "{} is {}, larger than the {} a component may be; nothing was sent",
                        path.display(),
                        bytesize::ByteSize(size),
                        bytesize::ByteSize(limit)
                    )));
                }
                let bytes = std::fs::read(&path)
                    .map_err(|e| local_error(format!("cannot read {}: {e}", path.display())))?;
                let digest = digest_of(&bytes);
                client
                    .call(
                        Method::PUT,
                        &format!("/v1/blobs/{digest}"),
                        Some(("application/wasm", bytes)),
                    )
                    .await?;
                uploaded.insert(path, digest.clone());
                digest
            }
        };
        digests.insert(joined, digest);
    }
    Ok(ApplyRequest {
        documents,
        files: digests,
        dry_run,
    })
}

/// `setpoint apply -f FILE|DIR... [--dry-run]`.
pub async fn apply(endpoint: Endpoint, files: Vec<PathBuf>, dry_run: bool) -> ExitCode {
    let client = Client::new(endpoint);
    let request = match build_request(&client, &files, dry_run).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let response: ApplyResponse = match client.send_json(Method::POST, "/v1/apply", &request).await
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let suffix = if response.dry_run { " (dry run)" } else { "" };
    for c in &response.changes {
        let is_job = c.kind == "Job";
        let what = match &c.change {
            Change::Create if is_job => format!("created (revision {})", c.revision),
            Change::Create => format!("created (revision {}, {} replicas)", c.revision, c.replicas),
            Change::Update { from_revision } => {
                format!("configured (revision {from_revision} → {})", c.revision)
            }
            Change::Scale { from_replicas } => {
                format!("scaled ({from_replicas} → {} replicas)", c.replicas)
            }
            Change::Unchanged => "unchanged".to_string(),
        };
        let kind = if is_job { "job" } else { "workload" };
        println!("{kind}/{} {what}{suffix}", c.name);
    }
    ExitCode::SUCCESS
}

/// The kinds of object the daemon runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Kept running.
    Workload,
    /// Run to completion.
    Job,
}

impl Kind {
    /// `workload`, `workloads`, `wl`, `job`, `jobs`.
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "workload" | "workloads" | "wl" => Some(Self::Workload),
            "job" | "jobs" => Some(Self::Job),
            _ => None,
        }
    }

    /// The `kind` of manifests and of status.
    fn api_name(self) -> &'static str {
        match self {
            Self::Workload => "Workload",
            Self::Job => "Job",
        }
    }

    /// The word in `KIND/NAME`.
    fn word(self) -> &'static str {
        match self {
            Self::Workload => "workload",
            Self::Job => "job",
        }
    }
}

/// `KIND/NAME` or `NAME` → the kind (if given) and the name.
fn parse_target(target: &str) -> Result<(Option<Kind>, &str), ApiError> {
    match target.split_once('/') {
        None if !target.is_empty() => Ok((None, target)),
        Some((kind, name)) if !name.is_empty() => match Kind::parse(kind) {
            Some(kind) => Ok((Some(kind), name)),
            None => Err(local_error(format!(
                "unknown kind `{kind}`; the kinds are: workload, job"
            ))),
        },
        _ => Err(local_error(format!(
            "`{target}` names nothing; write KIND/NAME, e.g. workload/web or job/backup"
        ))),
    }
}

/// Fetches `KIND/NAME`; the kind, when given, must match the object's.
async fn fetch(client: &Client, target: &str) -> Result<(Kind, Value), ApiError> {
    let (kind, name) = parse_target(target)?;
    let w: Value = client.get_json(&format!("/v1/workloads/{name}")).await?;
    let actual = if w["kind"] == "Job" {
        Kind::Job
    } else {
        Kind::Workload
    };
    match kind {
        Some(kind) if kind != actual => Err(local_error(format!(
            "{}/{name} not found: `{name}` is a {}",
            kind.word(),
            actual.api_name()
        ))),
        _ => Ok((actual, w)),
    }
}

fn print_value(value: &Value, output: GetOutput) -> bool {
    match output {
        GetOutput::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
            true
        }
        GetOutput::Yaml => {
            print!("{}", serde_saphyr::to_string(value).unwrap_or_default());
            true
        }
        GetOutput::Table | GetOutput::Wide => false,
    }
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// Prints rows as aligned columns.
fn print_table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// What `get` lists.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Listing {
    /// Workloads, then jobs (no kind given).
    All,
    /// One kind of object.
    Of(Kind),
    /// Live instances, of every workload and job (or of the one named).
    Instances,
}

impl Listing {
    /// Parses `get`'s first word.
    pub fn parse(word: &str) -> Result<Self, ApiError> {
        match word {
            "all" => Ok(Self::All),
            "instances" | "instance" | "inst" => Ok(Self::Instances),
            other => Kind::parse(other).map(Self::Of).ok_or_else(|| {
                local_error(format!(
                    "unknown kind `{other}`; the kinds are: workloads, jobs, instances"
                ))
            }),
        }
    }
}

/// `setpoint get [workloads|jobs|instances|all] [NAME] [-o ...]`.
pub async fn get(
    endpoint: Endpoint,
    listing: Listing,
    name: Option<String>,
    output: GetOutput,
) -> ExitCode {
    let client = Client::new(endpoint);
    let status: Value = match client.get_json("/v1/workloads").await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let mut objects: Vec<Value> = status["workloads"].as_array().cloned().unwrap_or_default();
    // Stored but not running: said on stderr whatever the output format.
    for q in status["quarantined"].as_array().into_iter().flatten() {
        let names: Vec<String> = q["workloads"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(String::from))
            .collect();
        if name.as_ref().is_none_or(|n| names.contains(n)) {
            eprintln!(
                "warning: stored apply {} ({}) is quarantined, not running: {}\n  help: {}",
                text(q, "apply"),
                names.join(", "),
                text(q, "reason"),
                text(q, "help")
            );
        }
    }
    if let Listing::Of(kind) = listing {
        objects.retain(|w| w["kind"] == kind.api_name());
    }
    if let Some(name) = &name {
        objects.retain(|w| w["name"] == *name.as_str());
        if objects.is_empty() {
            let what = match listing {
                Listing::Of(kind) => kind.word(),
                _ => "object",
            };
            return fail(&local_error(format!("{what} `{name}` not found")));
        }
    }
    let wide = output == GetOutput::Wide;
    if listing == Listing::Instances {
        let instances: Vec<Value> = objects
            .iter()
            .flat_map(|w| {
                let owner = text(w, "name");
                w["instances"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |mut i| {
                        i["owner"] = Value::String(owner.clone());
                        i
                    })
            })
            .collect();
        if print_value(&Value::Array(instances.clone()), output) {
            return ExitCode::SUCCESS;
        }
        let mut rows = vec![row(&[
            "INSTANCE", "OWNER", "SLOT", "PHASE", "READY", "RESTARTS", "AGE",
        ])];
        if wide {
            rows[0].push("REVISION".into());
        }
        for i in &instances {
            let mut r = vec![
                text(i, "id"),
                text(i, "owner"),
                text(i, "slot"),
                text(i, "phase"),
                text(i, "ready"),
                text(i, "restarts"),
                age(i["ageMs"].as_u64().unwrap_or(0)),
            ];
            if wide {
                r.push(text(i, "revision"));
            }
            rows.push(r);
        }
        print_rows(&rows, "no instances");
        return ExitCode::SUCCESS;
    }
    if print_value(&Value::Array(objects.clone()), output) {
        return ExitCode::SUCCESS;
    }
    let (jobs, workloads): (Vec<&Value>, Vec<&Value>) =
        objects.iter().partition(|w| w["kind"] == "Job");
    let show_workloads = matches!(listing, Listing::All | Listing::Of(Kind::Workload));
    let show_jobs = matches!(listing, Listing::All | Listing::Of(Kind::Job));
    if show_workloads && (!workloads.is_empty() || listing != Listing::All) {
        let mut header = row(&["NAME", "READY", "RESTARTS", "PHASE", "REVISION"]);
        if wide {
            header.extend(["RUNNING", "POLICY", "ROLLOUT"].map(String::from));
        }
        let mut rows = vec![header];
        for w in &workloads {
            let mut r = vec![
                prefixed(listing, "workload", w),
                format!("{}/{}", text(w, "ready"), text(w, "desired")),
                text(w, "restarts"),
                text(w, "phase"),
                text(w, "revision"),
            ];
            if wide {
                r.push(text(w, "running"));
                r.push(text(w, "policy"));
                r.push(match &w["rollout"] {
                    Value::Null => "-".to_string(),
                    r => format!("{} → {}", text(r, "from"), text(r, "to")),
                });
            }
            rows.push(r);
        }
        print_rows(&rows, "no workloads");
    }
    if show_jobs && (!jobs.is_empty() || listing != Listing::All) {
        if show_workloads && !workloads.is_empty() && !jobs.is_empty() {
            println!();
        }
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
        for w in &jobs {
            let j = &w["job"];
            let mut r = vec![
                prefixed(listing, "job", w),
                format!("{}/{}", text(j, "succeeded"), text(j, "completions")),
                text(j, "active"),
                text(j, "failed"),
                job_duration(j),
                text(w, "phase"),
            ];
            if wide {
                r.push(text(j, "ignored"));
                r.push(text(w, "revision"));
            }
            rows.push(r);
        }
        print_rows(&rows, "no jobs");
    }
    if listing == Listing::All && objects.is_empty() {
        println!("no workloads or jobs");
    }
    ExitCode::SUCCESS
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| s.to_string()).collect()
}

fn print_rows(rows: &[Vec<String>], empty: &str) {
    if rows.len() <= 1 {
        println!("{empty}");
    } else {
        print_table(rows);
    }
}

/// The NAME cell: `kind/name` when several kinds are listed, as kubectl does.
fn prefixed(listing: Listing, kind: &str, w: &Value) -> String {
    if listing == Listing::All {
        format!("{kind}/{}", text(w, "name"))
    } else {
        text(w, "name")
    }
}

/// A short age: `850ms`, `42s`, `7m3s`, `2h5m`, `3d4h`.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// How long a job has run: to its completion time, or until now.
fn job_duration(job: &Value) -> String {
    let parse = |key: &str| {
        job[key]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
    };
    let Some(start) = parse("startTime") else {
        return "-".into();
    };
    let end = parse("completionTime").unwrap_or_else(std::time::SystemTime::now);
    age(end.duration_since(start).unwrap_or_default().as_millis() as u64)
}

/// `setpoint describe KIND/NAME`.
pub async fn describe(endpoint: Endpoint, target: String, output: GetOutput) -> ExitCode {
    let client = Client::new(endpoint);
    let (kind, w) = match fetch(&client, &target).await {
        Ok(found) => found,
        Err(e) => return fail(&e),
    };
    if print_value(&w, output) {
        return ExitCode::SUCCESS;
    }
    println!("Name:        {}", text(&w, "name"));
    println!("Kind:        {}", kind.api_name());
    println!("Phase:       {}", text(&w, "phase"));
    println!("Revision:    {}", text(&w, "revision"));
    println!("Policy:      {}", text(&w, "policy"));
    if kind == Kind::Job {
        let j = &w["job"];
        println!(
            "Runs:        {}/{} succeeded, {} active, {} failed, {} ignored (parallelism {})",
            text(j, "succeeded"),
            text(j, "completions"),
            text(j, "active"),
            text(j, "failed"),
            text(j, "ignored"),
            text(j, "parallelism")
        );
        println!("Started:     {}", text(j, "startTime"));
        println!("Finished:    {}", text(j, "completionTime"));
        println!("Duration:    {}", job_duration(j));
    } else {
        println!(
            "Replicas:    {} desired, {} running, {} ready, {} restarts",
            text(&w, "desired"),
            text(&w, "running"),
            text(&w, "ready"),
            text(&w, "restarts")
        );
    }
    if let Some(spec) = w["spec"].as_object() {
        println!("Spec:");
        let yaml = serde_saphyr::to_string(&Value::Object(spec.clone())).unwrap_or_default();
        for line in yaml.lines() {
            println!("  {line}");
        }
    }
    println!("Conditions:");
    for c in w["conditions"].as_array().into_iter().flatten() {
        println!(
            "  {:<10} {:<6} {}",
            text(c, "type"),
            text(c, "status"),
            text(c, "message")
        );
    }
    println!("Instances:");
    for i in w["instances"].as_array().into_iter().flatten() {
        println!(
            "  {:<24} slot {:<4} {:<10} revision {}",
            text(i, "id"),
            text(i, "slot"),
            text(i, "phase"),
            text(i, "revision")
        );
    }
    if let Some(t) = w["lastTermination"].as_object() {
        let t = Value::Object(t.clone());
        println!(
            "Last termination: {} ({})",
            text(&t, "reason"),
            text(&t, "instance")
        );
    }
    println!("Events:");
    for e in w["events"].as_array().into_iter().flatten() {
        println!(
            "  {:<8} {:<16} {:<24} {}",
            text(e, "type"),
            text(e, "reason"),
            text(e, "instance"),
            text(e, "message")
        );
    }
    ExitCode::SUCCESS
}

/// `setpoint delete KIND/NAME... | -f FILE...`.
pub async fn delete(endpoint: Endpoint, targets: Vec<String>, files: Vec<PathBuf>) -> ExitCode {
    let mut names = Vec::new();
    for t in &targets {
        if let Err(e) = parse_target(t) {
            return fail(&e);
        }
        names.push(t.clone());
    }
    if !files.is_empty() {
        // The names come from the manifests; their components need not exist any more.
        let limits = ManifestLimits::default();
        let files = match manifest_files(&files) {
            Ok(f) => f,
            Err(e) => return fail(&e),
        };
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    return fail(&local_error(format!("cannot read {}: {e}", file.display())));
                }
            };
            match setpoint::manifest::parse_names(&file, &text, &limits) {
                Ok(found) => names.extend(found),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    if names.is_empty() {
        return fail(&local_error(
            "nothing to delete: name KIND/NAME (workload/web, job/backup) or give -f FILE"
                .to_string(),
        ));
    }
    let client = Client::new(endpoint);
    let mut code = ExitCode::SUCCESS;
    for target in names {
        let deleted = async {
            let (kind, name) = match fetch(&client, &target).await {
                Ok((kind, w)) => (kind, text(&w, "name")),
                // Not running, but perhaps stored (a quarantined apply): the daemon
                // decides whether it knows the name.
                Err(e) if e.body.error.ends_with("not found") && !e.body.error.contains(": `") => {
                    let (kind, name) = parse_target(&target)?;
                    (kind.unwrap_or(Kind::Workload), name.to_string())
                }
                Err(e) => return Err(e),
            };
            client
                .call(Method::DELETE, &format!("/v1/workloads/{name}"), None)
                .await?;
            Ok::<_, ApiError>(format!("{}/{name}", kind.word()))
        };
        match deleted.await {
            Ok(what) => println!("{what} deleted"),
            Err(e) => code = fail(&e),
        }
    }
    code
}

/// `setpoint logs KIND/NAME [--instance ID] [--tail N] [-f]`.
pub async fn logs(
    endpoint: Endpoint,
    target: String,
    instance: Option<String>,
    tail: Option<usize>,
    follow: bool,
) -> ExitCode {
    let client = Client::new(endpoint);
    // By name alone: a deleted job's kept output is still there to read.
    let name = match parse_target(&target) {
        Ok((_, name)) => name.to_string(),
        Err(e) => return fail(&e),
    };
    let mut query = vec![format!("follow={follow}")];
    if let Some(i) = &instance {
        query.push(format!("instance={}", url_word(i)));
    }
    if let Some(t) = tail {
        query.push(format!("tail={t}"));
    }
    let path = format!("/v1/logs/{}?{}", url_word(&name), query.join("&"));
    let prefixed = instance.is_none();
    let printed = client
        .stream_lines(&path, |l| {
            if l["skipped"].is_number() {
                eprintln!("({} lines skipped: this client fell behind)", l["skipped"]);
            } else if prefixed {
                println!("{} | {}", text(&l, "instance"), text(&l, "line"));
            } else {
                println!("{}", text(&l, "line"));
            }
        })
        .await;
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// `setpoint events [KIND/NAME] [-w] [-o json]`.
pub async fn events(
    endpoint: Endpoint,
    target: Option<String>,
    watch: bool,
    output: GetOutput,
) -> ExitCode {
    let client = Client::new(endpoint);
    let mut query = vec![format!("watch={watch}")];
    if let Some(t) = &target {
        match parse_target(t) {
            Ok((_, name)) => query.push(format!("workload={}", url_word(name))),
            Err(e) => return fail(&e),
        }
    }
    let path = format!("/v1/events?{}", query.join("&"));
    let json = matches!(output, GetOutput::Json | GetOutput::Yaml);
    let mut any = false;
    let printed = client
        .stream_lines(&path, |e| {
            any = true;
            if json {
                println!("{e}");
            } else if e["skipped"].is_number() {
                eprintln!("({} events skipped: this client fell behind)", e["skipped"]);
            } else {
                let object = match &e["instance"] {
                    Value::String(i) => i.clone(),
                    _ => text(&e, "workload"),
                };
                println!(
                    "{:<24}  {:<7}  {:<22}  {:<28}  {}",
                    text(&e, "time"),
                    text(&e, "type"),
                    text(&e, "reason"),
                    object,
                    text(&e, "message")
                );
            }
        })
        .await;
    if let Err(e) = printed {
        return fail(&e);
    }
    if !any && !json {
        println!("no events");
    }
    ExitCode::SUCCESS
}

/// `word` made safe for a URL path segment or query value (names are DNS labels and
/// instance ids; anything else is percent-encoded).
fn url_word(word: &str) -> String {
    word.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `setpoint rollout status KIND/NAME`: waits until the rollout in progress ends, showing
/// its progress; fails if it ends rolled back, or after `timeout`.
pub async fn rollout_status(
    endpoint: Endpoint,
    target: String,
    timeout: std::time::Duration,
) -> ExitCode {
    let client = Client::new(endpoint);
    let deadline = setpoint::clock::after_tokio(tokio::time::Instant::now(), timeout);
    let mut aim: Option<String> = None;
    let mut last = String::new();
    loop {
        let (kind, w) = match fetch(&client, &target).await {
            Ok(found) => found,
            Err(e) => return fail(&e),
        };
        if kind == Kind::Job {
            return fail(&local_error(format!(
                "{target} is a job: jobs have no rollouts"
            )));
        }
        let name = text(&w, "name");
        let rollout = &w["rollout"];
        if aim.is_none() {
            aim = Some(match rollout {
                Value::Null => text(&w, "revision"),
                r => text(r, "to"),
            });
        }
        let line = match rollout {
            Value::Null if w["ready"] == w["desired"] => {
                let revision = text(&w, "revision");
                if aim.as_deref() == Some(revision.as_str()) {
                    println!("workload/{name} successfully rolled out (revision {revision})");
                    return ExitCode::SUCCESS;
                }
                return fail(&local_error(format!(
                    "workload/{name} was rolled back to revision {revision}; see `setpoint events workload/{name}`"
                )));
            }
            Value::Null => format!(
                "Waiting for workload/{name}: {} of {} replicas ready...",
                text(&w, "ready"),
                text(&w, "desired")
            ),
            r if r["rollback"] == true => format!(
                "Rolling back workload/{name} to {}: {} of {} updated, {} ready...",
                text(r, "to"),
                text(r, "updated"),
                text(&w, "desired"),
                text(&w, "ready")
            ),
            r => format!(
                "Waiting for workload/{name} rollout to {}: {} of {} updated, {} ready...",
                text(r, "to"),
                text(r, "updated"),
                text(&w, "desired"),
                text(&w, "ready")
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
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The workload a rollout command names (a job has no rollouts).
fn rollout_target(target: &str) -> Result<String, ApiError> {
    match parse_target(target)? {
        (Some(Kind::Job), _) => Err(local_error(format!(
            "{target} is a job: jobs have no rollouts"
        ))),
        (_, name) => Ok(name.to_string()),
    }
}

/// `setpoint rollout history KIND/NAME`.
pub async fn rollout_history(endpoint: Endpoint, target: String, output: GetOutput) -> ExitCode {
    let client = Client::new(endpoint);
    let name = match rollout_target(&target) {
        Ok(name) => name,
        Err(e) => return fail(&e),
    };
    let history: Value = match client
        .get_json(&format!("/v1/workloads/{}/history", url_word(&name)))
        .await
    {
        Ok(h) => h,
        Err(e) => return fail(&e),
    };
    if print_value(&history, output) {
        return ExitCode::SUCCESS;
    }
    let mut rows = vec![row(&["REVISION", "APPLIED", "CURRENT"])];
    for r in history.as_array().into_iter().flatten() {
        rows.push(vec![
            text(r, "revision"),
            text(r, "appliedAt"),
            if r["current"] == true {
                "*".into()
            } else {
                String::new()
            },
        ]);
    }
    print_rows(&rows, "no revisions recorded");
    ExitCode::SUCCESS
}

/// `setpoint rollout undo KIND/NAME [--to-revision R]`.
pub async fn rollout_undo(
    endpoint: Endpoint,
    target: String,
    to_revision: Option<String>,
) -> ExitCode {
    let client = Client::new(endpoint);
    let name = match rollout_target(&target) {
        Ok(name) => name,
        Err(e) => return fail(&e),
    };
    let request = setpoint::daemon::api::UndoRequest { to_revision };
    let response: ApplyResponse = match client
        .send_json(
            Method::POST,
            &format!("/v1/workloads/{}/undo", url_word(&name)),
            &request,
        )
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
