//! `setpoint apply` and `setpoint delete`: manifests checked here first (located
//! errors before anything is sent), their components uploaded, then applied or deleted
//! by the daemon.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use hyper::Method;
use setpoint::daemon::store::{Document, digest_of};
use setpoint::daemon::wire::{ApplyRequest, ApplyResponse};
use setpoint::host::Change;
use setpoint::manifest::{ManifestLimits, load_str_with_files};
use setpoint::status::WorkloadKind;

use super::client::{ApiError, Client, Target, fail, local_error};
use super::objects::{Missing, fetch, parse_target, url_word};
use super::output::count;

/// `setpoint apply`.
#[derive(clap::Args)]
pub struct ApplyArgs {
    /// Manifest files or directories (their *.yaml and *.yml files); `-` reads standard
    /// input (e.g. `setpoint get -o yaml workload/web | setpoint apply -f -`).
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR"
    )]
    files: Vec<PathBuf>,
    /// Show what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    target: Target,
}

/// `setpoint delete`.
#[derive(clap::Args)]
pub struct DeleteArgs {
    /// `workload/NAME` or `job/NAME`, one or more.
    names: Vec<String>,
    /// Manifest files or directories naming the workloads to delete.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    target: Target,
}

/// How standard input is named in errors (`-f -`); relative paths in it are relative to
/// the current directory.
const STDIN: &str = "<stdin>";

/// Reads `file`, or standard input for [`STDIN`], within `limit` bytes.
fn read_manifest(file: &std::path::Path, limit: u64) -> Result<String, ApiError> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| local_error(format!("cannot read {}: {e}", file.display()));
    if file.as_os_str() != STDIN {
        return std::fs::read_to_string(file).map_err(cannot);
    }
    let mut text = String::new();
    std::io::stdin()
        .take(limit.saturating_add(1))
        .read_to_string(&mut text)
        .map_err(cannot)?;
    Ok(text)
}

/// The manifest files of `-f` arguments: files as given, directories' `*.yaml` and
/// `*.yml` files in name order.
fn manifest_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ApiError> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            out.push(PathBuf::from(STDIN));
        } else if path.is_dir() {
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
/// The apply request for `files` (their components uploaded), and the workloads they
/// define as this machine reads them, each component named by its path as applied.
pub(super) async fn build_request(
    client: &Client,
    files: &[PathBuf],
    dry_run: bool,
) -> Result<(ApplyRequest, Vec<setpoint::manifest::Workload>), ApiError> {
    let limits = ManifestLimits::default();
    let mut documents = Vec::new();
    // Joined path as the manifest names it → the file on this machine.
    let mut referenced = BTreeMap::<String, PathBuf>::new();
    let mut workloads = Vec::new();
    let mut problems = Vec::new();
    for file in manifest_files(files)? {
        let text = read_manifest(&file, limits.max_file_bytes)?;
        match load_str_with_files(&file, &text, &limits) {
            Ok((found_workloads, found)) => {
                let as_applied: BTreeMap<PathBuf, PathBuf> = found
                    .iter()
                    .map(|(joined, local)| (local.clone(), PathBuf::from(joined)))
                    .collect();
                for mut w in found_workloads {
                    if let Some(path) = as_applied.get(&w.spec.component) {
                        w.spec.component = path.clone();
                    }
                    if let Some(policy) = w.spec.policy.as_mut()
                        && let Some(path) = as_applied.get(&policy.plugin)
                    {
                        policy.plugin = path.clone();
                    }
                    workloads.push(w);
                }
                referenced.extend(found);
            }
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
    Ok((
        ApplyRequest {
            documents,
            files: digests,
            dry_run,
        },
        workloads,
    ))
}

/// `setpoint apply -f FILE|DIR... [--dry-run]`.
pub async fn apply(args: ApplyArgs) -> ExitCode {
    let client = args.target.client();
    let (request, workloads) = match build_request(&client, &args.files, args.dry_run).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    // The daemon compiles what it has not compiled before.
    let spinner = super::progress::Spinner::start(format!(
        "the daemon compiles {}",
        super::progress::describe(&super::components_of(&workloads))
    ));
    let sent = client.send_json(Method::POST, "/v1/apply", &request).await;
    drop(spinner);
    let response: ApplyResponse = match sent {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let suffix = if response.dry_run { " (dry run)" } else { "" };
    for c in &response.changes {
        let is_job = c.kind == WorkloadKind::Job;
        let what = match &c.change {
            Change::Create if is_job => format!("created (revision {})", c.revision),
            Change::Create => format!(
                "created (revision {}, {})",
                c.revision,
                count(c.replicas, "replica")
            ),
            Change::Update { from_revision } => {
                format!("configured (revision {from_revision} → {})", c.revision)
            }
            Change::Scale { from_replicas } => {
                format!(
                    "scaled ({from_replicas} → {})",
                    count(c.replicas, "replica")
                )
            }
            Change::Unchanged => "unchanged".to_string(),
        };
        println!("{}/{} {what}{suffix}", c.kind.noun(), c.name);
    }
    ExitCode::SUCCESS
}

/// `setpoint delete KIND/NAME... | -f FILE...`.
pub async fn delete(args: DeleteArgs) -> ExitCode {
    let mut names = Vec::new();
    for t in &args.names {
        if let Err(e) = parse_target(t) {
            return fail(&e);
        }
        names.push(t.clone());
    }
    if !args.files.is_empty() {
        // The names come from the manifests; their components need not exist any more.
        let limits = ManifestLimits::default();
        let files = match manifest_files(&args.files) {
            Ok(f) => f,
            Err(e) => return fail(&e),
        };
        for file in files {
            let text = match read_manifest(&file, limits.max_file_bytes) {
                Ok(t) => t,
                Err(e) => return fail(&e),
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
            "nothing to delete: name KIND/NAME (workload/web, job/backup) or give -f FILE",
        ));
    }
    let client = args.target.client();
    let mut code = ExitCode::SUCCESS;
    for target in names {
        match delete_one(&client, &target).await {
            Ok(what) => println!("{what} deleted"),
            Err(e) => code = fail(&e),
        }
    }
    code
}

/// Deletes `KIND/NAME`; returns what was deleted.
async fn delete_one(client: &Client, target: &str) -> Result<String, ApiError> {
    let (kind, name) = match fetch(client, target).await {
        Ok(w) => (w.kind, w.name),
        // Not running, but perhaps stored (a quarantined apply): the daemon decides
        // whether it knows the name.
        Err(Missing::NotRunning(_)) => {
            let (kind, name) = parse_target(target)?;
            (kind.unwrap_or(WorkloadKind::Workload), name.to_string())
        }
        Err(other) => return Err(other.error()),
    };
    client
        .call(
            Method::DELETE,
            &format!("/v1/workloads/{}", url_word(&name)),
            None,
        )
        .await?;
    Ok(format!("{}/{name}", kind.noun()))
}
