//! The daemon's commands: `daemon` itself, and the kubectl-style client commands
//! (`apply`, `get`, `describe`, `delete`) that talk to it over its socket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hyper::Method;
use serde_json::Value;
use setpoint::daemon::api::{ApplyRequest, ApplyResponse};
use setpoint::daemon::store::{Document, digest_of};
use setpoint::host::Change;
use setpoint::manifest::{ManifestLimits, load_str_resolving};

use super::client::{ApiError, Client, local_error};

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

/// The socket to talk to: `--socket`, else `$SETPOINT_SOCKET`, else the default
/// daemon's.
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("SETPOINT_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| setpoint::daemon::default_socket(&setpoint::daemon::default_state_dir()))
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
    let referenced = std::cell::RefCell::new(BTreeMap::<String, PathBuf>::new());
    let record = |joined: &Path| -> std::io::Result<PathBuf> {
        let found = std::fs::canonicalize(joined)?;
        referenced
            .borrow_mut()
            .insert(joined.to_string_lossy().into_owned(), found.clone());
        Ok(found)
    };
    let mut problems = Vec::new();
    for file in manifest_files(files)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| local_error(format!("cannot read {}: {e}", file.display())))?;
        if let Err(rejected) = load_str_resolving(&file, &text, &limits, &record) {
            problems.extend(rejected.diagnostics.iter().map(|d| d.to_string()));
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
    for (joined, path) in referenced.into_inner() {
        let digest = match uploaded.get(&path) {
            Some(d) => d.clone(),
            None => {
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
pub async fn apply(socket: PathBuf, files: Vec<PathBuf>, dry_run: bool) -> ExitCode {
    let client = Client::new(socket);
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
        let what = match &c.change {
            Change::Create => format!("created (revision {}, {} replicas)", c.revision, c.replicas),
            Change::Update { from_revision } => {
                format!("configured (revision {from_revision} → {})", c.revision)
            }
            Change::Scale { from_replicas } => {
                format!("scaled ({from_replicas} → {} replicas)", c.replicas)
            }
            Change::Unchanged => "unchanged".to_string(),
        };
        println!("workload/{} {what}{suffix}", c.name);
    }
    ExitCode::SUCCESS
}

/// `KIND/NAME` or `NAME` → the workload name (the only kind so far).
fn workload_name(target: &str) -> Result<&str, ApiError> {
    match target.split_once('/') {
        None => Ok(target),
        Some(("workload" | "workloads" | "wl", name)) if !name.is_empty() => Ok(name),
        Some((kind, _)) => Err(local_error(format!(
            "unknown kind `{kind}`; the kinds are: workload"
        ))),
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

/// `setpoint get [workloads] [-o ...]`.
pub async fn get(socket: PathBuf, name: Option<String>, output: GetOutput) -> ExitCode {
    let client = Client::new(socket);
    let status: Value = match client.get_json("/v1/workloads").await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let mut workloads: Vec<Value> = status["workloads"].as_array().cloned().unwrap_or_default();
    if let Some(name) = &name {
        workloads.retain(|w| w["name"] == *name.as_str());
        if workloads.is_empty() {
            return fail(&local_error(format!("workload `{name}` not found")));
        }
    }
    if print_value(&Value::Array(workloads.clone()), output) {
        return ExitCode::SUCCESS;
    }
    let wide = output == GetOutput::Wide;
    let mut header = vec!["NAME", "READY", "RESTARTS", "PHASE", "REVISION"];
    if wide {
        header.extend(["RUNNING", "POLICY", "ROLLOUT"]);
    }
    let mut rows = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for w in &workloads {
        let mut row = vec![
            text(w, "name"),
            format!("{}/{}", text(w, "ready"), text(w, "desired")),
            text(w, "restarts"),
            text(w, "phase"),
            text(w, "revision"),
        ];
        if wide {
            row.push(text(w, "running"));
            row.push(text(w, "policy"));
            row.push(match &w["rollout"] {
                Value::Null => "-".to_string(),
                r => text(r, "phase"),
            });
        }
        rows.push(row);
    }
    if workloads.is_empty() {
        println!("no workloads");
    } else {
        print_table(&rows);
    }
    ExitCode::SUCCESS
}

/// `setpoint describe workload/NAME`.
pub async fn describe(socket: PathBuf, target: String, output: GetOutput) -> ExitCode {
    let name = match workload_name(&target) {
        Ok(n) => n,
        Err(e) => return fail(&e),
    };
    let client = Client::new(socket);
    let w: Value = match client.get_json(&format!("/v1/workloads/{name}")).await {
        Ok(w) => w,
        Err(e) => return fail(&e),
    };
    if print_value(&w, output) {
        return ExitCode::SUCCESS;
    }
    println!("Name:        {}", text(&w, "name"));
    println!("Phase:       {}", text(&w, "phase"));
    println!("Revision:    {}", text(&w, "revision"));
    println!("Policy:      {}", text(&w, "policy"));
    println!(
        "Replicas:    {} desired, {} running, {} ready, {} restarts",
        text(&w, "desired"),
        text(&w, "running"),
        text(&w, "ready"),
        text(&w, "restarts")
    );
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
pub async fn delete(socket: PathBuf, targets: Vec<String>, files: Vec<PathBuf>) -> ExitCode {
    let mut names = Vec::new();
    for t in &targets {
        match workload_name(t) {
            Ok(n) => names.push(n.to_string()),
            Err(e) => return fail(&e),
        }
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
            "nothing to delete: name workload/NAME or give -f FILE".to_string(),
        ));
    }
    let client = Client::new(socket);
    let mut code = ExitCode::SUCCESS;
    for name in names {
        match client
            .call(Method::DELETE, &format!("/v1/workloads/{name}"), None)
            .await
        {
            Ok(_) => println!("workload/{name} deleted"),
            Err(e) => code = fail(&e),
        }
    }
    code
}
