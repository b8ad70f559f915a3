//! Admission: what the host checks before a workload may run, beyond what a manifest
//! alone can say, and the compiled, linked form it runs as. Everything here happens
//! before the controller sees a workload, so a refusal changes nothing:
//!
//! - its directory grants ([`grants`]: opened once without following a link, pinned
//!   identities compared, nested writable grants refused);
//! - its component: compiled and linked, of the style its spec expects (a probe needs a
//!   reactor), importing only capabilities the spec grants and the host provides, and
//!   fitting an instance pool's slot;
//! - that a name keeps its kind and a job its spec ([`apply_conflict`]);
//! - its revision: the spec's projection and the digests of what it runs.

pub(crate) mod grants;

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::manifest::{Diagnostic, Rejected, Workload, WorkloadSpec, unversioned};
use crate::runtime::plugin::PreparedPlugin;
use crate::runtime::{ComponentStyle, PreparedComponent, Runtime};

pub(crate) use grants::{GrantRef, check_nesting, grant_refs};

/// A workload whose component is compiled, ready for the controller.
pub(crate) struct PreparedWorkload {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: Arc<WorkloadSpec>,
    pub component: Arc<PreparedComponent>,
    /// The granted directories, opened at admission.
    pub grants: crate::runtime::Grants,
    pub plugin: Option<Arc<PreparedPlugin>>,
    pub revision: String,
    /// Where the workload was written, for located errors.
    pub origin: Option<crate::manifest::Origin>,
    /// A failure verdict recorded before a restart: a workload created with one starts
    /// failed (nothing spawned) if it is still of that revision.
    pub failed: Option<RecordedFailure>,
}

/// A workload's failure verdict as a daemon keeps it across restarts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedFailure {
    /// The revision that failed.
    pub revision: String,
    /// The stable reason (`RestartBudgetExceeded`, ...).
    pub reason: String,
    /// What the verdict said.
    pub message: String,
    /// When it was marked failed.
    #[serde(with = "crate::serde_time::rfc3339")]
    pub since: std::time::SystemTime,
}

/// Compiles and checks every workload's component; all diagnostics or all workloads.
pub(crate) fn prepare_all(
    runtime: &Runtime,
    workloads: Vec<Workload>,
) -> Result<Vec<PreparedWorkload>, Rejected> {
    let mut prepared = Vec::with_capacity(workloads.len());
    let mut diagnostics = Vec::new();
    for w in workloads {
        let grants = match grants::open_grants(&w) {
            Ok(grants) => grants,
            Err(problems) => {
                diagnostics.extend(problems);
                continue;
            }
        };
        let unknown = unknown_grants(runtime, &w);
        if !unknown.is_empty() {
            diagnostics.extend(unknown);
            continue;
        }
        if let Some(problem) = exceeds_pool_slot(runtime, &w) {
            diagnostics.push(problem);
            continue;
        }
        match runtime.prepare(&w.spec.component) {
            Ok(component) => {
                if let Some(problem) = style_mismatch(&w, &component) {
                    diagnostics
                        .push(Diagnostic::at(w.origin.clone(), problem.0).with_help(problem.1));
                    continue;
                }
                let ungranted = ungranted_imports(&w, &component.capability_imports);
                if !ungranted.is_empty() {
                    diagnostics.extend(ungranted);
                    continue;
                }
                let plugin = match &w.spec.policy {
                    None => None,
                    Some(policy) => match runtime.prepare_plugin(&policy.plugin) {
                        Ok(plugin) => Some(plugin),
                        Err(e) => {
                            let help = e.unsupported_help().unwrap_or_else(|| {
                                "build the plugin for the `setpoint:policy/plugin` world (wit/policy/policy.wit)".into()
                            });
                            diagnostics.push(
                                Diagnostic::at(w.policy_origin.clone(), e.to_string())
                                    .with_help(help),
                            );
                            continue;
                        }
                    },
                };
                let plugin_digest = plugin.as_ref().map(|p| p.digest.0);
                let revision = revision(&w, &component.digest.0, plugin_digest.as_ref(), &grants);
                prepared.push(PreparedWorkload {
                    origin: w.origin.clone(),
                    name: w.name,
                    labels: w.labels,
                    spec: Arc::new(w.spec),
                    component,
                    grants,
                    plugin,
                    revision,
                    failed: None,
                });
            }
            Err(e) => {
                use crate::runtime::PrepareError as E;
                let unsupported = e.unsupported_help();
                let help = match &e {
                    E::Unsupported { .. } => unsupported.as_deref().unwrap_or_default(),
                    E::Link { .. } => {
                        "setpoint does not retry a component that cannot be linked; rebuild it against what the host provides"
                    }
                    E::PrecompiledRefused { .. } => {
                        "if you built this artifact with `setpoint compile`, allow precompiled components; otherwise point spec.component at the `.wasm`"
                    }
                    E::Incompatible { .. } => {
                        "artifacts are tied to the setpoint build, target and engine settings that made them; keep the `.wasm` and recompile"
                    }
                    E::NoCompiler { .. } => "ship the `.cwasm` made by `setpoint compile` instead",
                    _ => "point spec.component at a component built for wasm32-wasip2",
                };
                diagnostics.push(Diagnostic::at(w.origin.clone(), e.to_string()).with_help(help));
            }
        }
    }
    if diagnostics.is_empty() {
        Ok(prepared)
    } else {
        Err(Rejected { diagnostics })
    }
}

/// With an instance pool, a memory limit cannot exceed the pool's slot size.
fn exceeds_pool_slot(runtime: &Runtime, w: &Workload) -> Option<Diagnostic> {
    let config = runtime.config();
    let limit = w.spec.memory_limit?;
    if config.instance_pool == 0 || limit <= config.default_memory_limit {
        return None;
    }
    Some(
        Diagnostic::at(
            w.origin.clone(),
            format!(
                "resources.memory {} exceeds this host's instance pool slot of {}",
                bytesize::ByteSize(limit),
                bytesize::ByteSize(config.default_memory_limit)
            ),
        )
        .with_help("lower resources.memory, or start the host with a larger default memory limit or without an instance pool"),
    )
}

/// Every capability grant must name a capability this host provides.
fn unknown_grants(runtime: &Runtime, w: &Workload) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for grant in &w.spec.capabilities {
        if runtime.capability(grant).is_none() {
            let provided: Vec<&str> = runtime
                .config()
                .capabilities
                .iter()
                .map(|c| c.grant_name())
                .collect();
            let origin = w.capability_origins.get(grant).or(w.origin.as_ref());
            out.push(
                Diagnostic::at(
                    origin.cloned(),
                    format!(
                        "workload `{}` is granted capability `{grant}`, which this host does not provide",
                        w.name
                    ),
                )
                .with_help(if provided.is_empty() {
                    "this host provides no device capabilities; remove the grant".to_string()
                } else {
                    format!("this host provides: {}", provided.join(", "))
                }),
            );
        }
    }
    out
}

/// Every capability the component imports must be granted to the workload.
fn ungranted_imports(w: &Workload, imports: &[String]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for import in imports {
        let name = unversioned(import);
        if !w.spec.capabilities.iter().any(|g| unversioned(g) == name) {
            out.push(
                Diagnostic::at(
                    w.origin.clone(),
                    format!(
                        "workload `{}`'s component imports the device capability `{import}`, which the workload is not granted",
                        w.name
                    ),
                )
                .with_help(format!(
                    "add `{name}` to spec.capabilities if this workload may use it"
                )),
            );
        }
    }
    out
}

/// A spec asking for something the component cannot do.
fn style_mismatch(w: &Workload, component: &PreparedComponent) -> Option<(String, String)> {
    let style = component.style;
    let uses_heartbeat = component.uses_heartbeat;
    match (&w.spec.http, style) {
        (Some(_), ComponentStyle::Http) => {}
        (Some(_), _) => {
            return Some((
                format!(
                    "workload `{}` sets spec.http, but its component does not export `wasi:http/incoming-handler`",
                    w.name
                ),
                "build the component for the `wasi:http/proxy` world (e.g. with wasip2's `http::proxy::export!` or wstd's `#[wstd::http_server]`), or remove spec.http".into(),
            ));
        }
        (None, ComponentStyle::Http) if !component.runs_as_command => {
            return Some((
                format!(
                    "workload `{}`'s component serves HTTP (it exports `wasi:http/incoming-handler`), and the workload sets no spec.http",
                    w.name
                ),
                "add spec.http with the address to serve on, e.g. `http: {listen: 127.0.0.1:8080}`"
                    .into(),
            ));
        }
        (None, _) => {}
    }
    if w.spec.job.is_some() && style == ComponentStyle::Reactor {
        return Some((
            format!(
                "job `{}` runs a reactor component, which never ends on its own",
                w.name
            ),
            "a Job runs a command component (`wasi:cli/run`) to completion; use `kind: Workload` for a reactor".into(),
        ));
    }
    if w.spec.probe.is_some() && style == ComponentStyle::Http {
        return Some((
            format!(
                "workload `{}` sets health.probe, but its component is an HTTP service with no `lifecycle.health` export",
                w.name
            ),
            "probe an HTTP service with health.http (a GET sent through the component)".into(),
        ));
    }
    if w.spec.probe.is_some() && style != ComponentStyle::Reactor {
        return Some((
            format!(
                "workload `{}` sets health.probe, but its component is a command with no `lifecycle.health` export",
                w.name
            ),
            "remove health.probe, or build the component for the `setpoint:workload/reactor` world"
                .into(),
        ));
    }
    let runs_as_command = style == ComponentStyle::Command
        || (style == ComponentStyle::Http && component.runs_as_command && w.spec.http.is_none());
    if w.spec.watchdog.is_some() && !(runs_as_command && uses_heartbeat) {
        return Some((
            format!("workload `{}` sets health.watchdog, but its component is not a command importing `setpoint:workload/heartbeat`", w.name),
            "remove health.watchdog, or build the component for the `setpoint:workload/watched-command` world".into(),
        ));
    }
    None
}

/// The revision: a digest of the spec (without `replicas`, which scales rather than
/// replaces), of the component's bytes, and of which directories the grants opened (a
/// directory replaced under the same path is a new revision, not the old handle kept).
fn revision(
    w: &Workload,
    component_digest: &[u8; 32],
    plugin_digest: Option<&[u8; 32]>,
    grants: &crate::runtime::Grants,
) -> String {
    let mut hasher = Sha256::new();
    if w.revision_paths.is_empty() {
        hasher.update(crate::manifest::revision::projection(&w.spec));
    } else {
        let mut spec = w.spec.clone();
        if let Some(path) = w.revision_paths.get(&spec.component) {
            spec.component = path.clone();
        }
        if let Some(policy) = spec.policy.as_mut()
            && let Some(path) = w.revision_paths.get(&policy.plugin)
        {
            policy.plugin = path.clone();
        }
        hasher.update(crate::manifest::revision::projection(&spec));
    }
    hasher.update(component_digest);
    if let Some(plugin) = plugin_digest {
        hasher.update(plugin);
    }
    for grant in grants.iter() {
        let id = grant.dir.identity();
        hasher.update(id.device.to_le_bytes());
        hasher.update(id.inode.to_le_bytes());
        hasher.update(id.born_ns.to_le_bytes());
    }
    let digest = hasher.finalize();
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a prepared workload may not replace the one of the same name: a Job's spec cannot
/// change once applied, and a name keeps its kind until it is deleted. `current` is the
/// applied one's (is a job, revision), unless it is being deleted.
pub(crate) fn apply_conflict(
    name: &str,
    current: Option<(bool, &str)>,
    new_is_job: bool,
    new_revision: &str,
) -> Option<(String, String)> {
    let (is_job, revision) = current?;
    let kind = |job: bool| if job { "job" } else { "workload" };
    if is_job != new_is_job {
        return Some((
            format!(
                "`{name}` is applied as a {}; it cannot become a {}",
                kind(is_job),
                kind(new_is_job)
            ),
            format!(
                "delete {}/{name} first, or choose another name",
                kind(is_job)
            ),
        ));
    }
    if is_job && revision != new_revision {
        return Some((
            format!(
                "job `{name}` is applied with revision {revision}; a Job's spec cannot change once applied"
            ),
            format!("delete job/{name} first (its progress goes with it), then apply"),
        ));
    }
    None
}
