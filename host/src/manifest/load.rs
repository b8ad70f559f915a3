//! Reading manifest files: YAML parsing under input budgets, then validation of every
//! document into [`Workload`]s (`validate.rs`, `validate_job.rs`). All problems of all
//! files are collected, each located.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_saphyr::DuplicateKeyPolicy;

use super::diagnostic::{Diagnostic, Origin, Rejected};
use super::raw::RawManifest;
use super::spec::Workload;
use super::validate::Validator;

/// The only `apiVersion` this host reads.
pub const API_VERSION: &str = "setpoint.dev/v1alpha1";

/// Bounds on manifest input. Every field has a default; embedders may tighten them.
#[derive(Debug, Clone)]
pub struct ManifestLimits {
    /// Largest manifest file read, in bytes.
    pub max_file_bytes: u64,
    /// Most YAML documents in one file.
    pub max_documents: usize,
    /// Most replicas one workload may ask for.
    pub max_replicas: u32,
    /// Largest memory cap a workload may ask for, in bytes.
    pub max_memory: u64,
    /// Most env vars, args, dirs or addresses one workload may grant.
    pub max_grants: usize,
    /// Directories a workload may be granted must lie under one of these (canonical
    /// paths). Empty means any directory.
    pub dir_roots: Vec<PathBuf>,
    /// Whether workloads may be granted outbound connections at all.
    pub allow_network: bool,
}

impl Default for ManifestLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 4 * 1024 * 1024,
            max_documents: 1024,
            max_replicas: 100_000,
            max_memory: 4 * 1024 * 1024 * 1024,
            max_grants: 1024,
            dir_roots: Vec::new(),
            allow_network: true,
        }
    }
}

/// Reads and validates manifest files. Either every document of every file is valid and
/// all workloads are returned, or nothing is and every problem found is returned.
pub fn load_files(paths: &[PathBuf], limits: &ManifestLimits) -> Result<Vec<Workload>, Rejected> {
    let mut workloads = Vec::new();
    let mut diagnostics = Vec::new();
    let mut seen: HashMap<String, Origin> = HashMap::new();
    for path in paths {
        match load_file(path, limits) {
            Ok(found) => {
                for (workload, name_origin) in found {
                    if let Some(first) = seen.get(&workload.name) {
                        diagnostics.push(
                            Diagnostic::at(
                                Some(name_origin),
                                format!("workload `{}` is defined twice", workload.name),
                            )
                            .with_help(format!(
                                "the first definition is at {first}; names must be unique"
                            )),
                        );
                    } else {
                        seen.insert(workload.name.clone(), name_origin);
                        workloads.push(workload);
                    }
                }
            }
            Err(rejected) => diagnostics.extend(rejected.diagnostics),
        }
    }
    if diagnostics.is_empty() {
        Ok(workloads)
    } else {
        Err(Rejected { diagnostics })
    }
}

/// Reads and validates one file; returns each workload with the origin of its name.
fn load_file(path: &Path, limits: &ManifestLimits) -> Result<Vec<(Workload, Origin)>, Rejected> {
    let file_only =
        |message: String| Rejected::one(Diagnostic::at(Some(Origin::new(path, 0, 0)), message));
    let meta =
        std::fs::metadata(path).map_err(|e| file_only(format!("cannot read manifest: {e}")))?;
    if meta.len() > limits.max_file_bytes {
        return Err(file_only(format!(
            "manifest is {} bytes, over the limit of {} bytes",
            meta.len(),
            limits.max_file_bytes
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| file_only(format!("cannot read manifest: {e}")))?;
    load_text(path, &text, limits, &on_disk)
}

/// Validates YAML text as if it were the file `path` (which names it in errors and
/// against whose directory relative component paths resolve; it need not exist).
pub fn load_str(
    path: &Path,
    text: &str,
    limits: &ManifestLimits,
) -> Result<Vec<Workload>, Rejected> {
    load_str_resolving(path, text, limits, &on_disk)
}

/// [`load_str`], also returning each component or plugin file the manifests name: the
/// path joined onto the manifest's directory (as written, for the daemon to map) → the
/// file found on disk. What a client uploads, and what `--watch` fingerprints.
pub fn load_str_with_files(
    path: &Path,
    text: &str,
    limits: &ManifestLimits,
) -> Result<(Vec<Workload>, std::collections::BTreeMap<String, PathBuf>), Rejected> {
    let referenced = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let record = |joined: &Path| -> std::io::Result<PathBuf> {
        let found = on_disk(joined)?;
        referenced
            .borrow_mut()
            .insert(joined.to_string_lossy().into_owned(), found.clone());
        Ok(found)
    };
    let workloads = load_str_resolving(path, text, limits, &record)?;
    Ok((workloads, referenced.into_inner()))
}

/// [`load_str`] with component and plugin files found by `resolve` instead of on disk.
pub fn load_str_resolving(
    path: &Path,
    text: &str,
    limits: &ManifestLimits,
    resolve: Resolver<'_>,
) -> Result<Vec<Workload>, Rejected> {
    if text.len() as u64 > limits.max_file_bytes {
        return Err(Rejected::one(Diagnostic::at(
            Some(Origin::new(path, 0, 0)),
            format!(
                "manifest is {} bytes, over the limit of {} bytes",
                text.len(),
                limits.max_file_bytes
            ),
        )));
    }
    Ok(load_text(path, text, limits, resolve)?
        .into_iter()
        .map(|(w, _)| w)
        .collect())
}

fn load_text(
    path: &Path,
    text: &str,
    limits: &ManifestLimits,
    resolve: Resolver<'_>,
) -> Result<Vec<(Workload, Origin)>, Rejected> {
    let file_only =
        |message: String| Rejected::one(Diagnostic::at(Some(Origin::new(path, 0, 0)), message));
    let docs = parse_documents(path, text, limits)?;
    if docs.is_empty() {
        return Err(file_only("no manifest documents in this file".to_string()));
    }
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut out = Vec::new();
    let mut diagnostics = Vec::new();
    for doc in docs {
        let mut v = Validator::new(path, &base_dir, resolve, limits);
        if let Some(found) = v.workload(doc) {
            out.push(found);
        }
        diagnostics.extend(v.diagnostics);
    }
    if diagnostics.is_empty() {
        Ok(out)
    } else {
        Err(Rejected { diagnostics })
    }
}

/// The workload names a manifest's documents declare (parsed, not validated: for
/// `delete -f`, whose components need not exist any more).
pub fn parse_names(
    path: &Path,
    text: &str,
    limits: &ManifestLimits,
) -> Result<Vec<String>, Rejected> {
    Ok(parse_documents(path, text, limits)?
        .into_iter()
        .map(|doc| doc.metadata.name.value)
        .collect())
}

/// Parses YAML text into raw documents (`---` separated) under input budgets.
pub fn parse_documents(
    path: &Path,
    text: &str,
    limits: &ManifestLimits,
) -> Result<Vec<RawManifest>, Rejected> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: limits.max_documents,
            max_depth: 64,
            max_nodes: 1_000_000,
            max_total_scalar_bytes: limits.max_file_bytes as usize,
        },
        duplicate_keys: DuplicateKeyPolicy::Error,
        strict_booleans: true,
    };
    let parse =
        |text: &str| serde_saphyr::from_multiple_with_options::<RawManifest>(text, options.clone());
    let first = match parse(text) {
        Ok(docs) => return Ok(docs),
        Err(e) => e,
    };
    // serde stops at the first problem. To report every one, the block the problem is
    // in is blanked out (its lines kept, as empty lines, so that every later location
    // still points into the file as written) and the file parsed again, until it
    // parses, a problem repeats, or the problems are not in a block that can go.
    let mut diagnostics = vec![parse_diagnostic(path, &first, limits)];
    let mut repaired = text.to_string();
    let mut error = first;
    for _ in 0..MAX_PARSE_PROBLEMS {
        let Some(line) = error.location().map(|l| l.line()) else {
            break;
        };
        let Some(next) = blank_block(&repaired, line) else {
            break;
        };
        repaired = next;
        match parse(&repaired) {
            Ok(_) => break,
            Err(e) => {
                let diagnostic = parse_diagnostic(path, &e, limits);
                // A field blanked out is not missing: that problem is already said.
                if e.to_string().contains("missing field") || diagnostics.contains(&diagnostic) {
                    break;
                }
                diagnostics.push(diagnostic);
                error = e;
            }
        }
    }
    Err(Rejected { diagnostics })
}

/// Problems reported from one file's parse, at most (the rest would only repeat them).
const MAX_PARSE_PROBLEMS: usize = 20;

/// `text` with the block of the key on 1-based `line` (that line and the more indented
/// ones after it) turned into empty lines; `None` when there is no such block to take
/// away (a top-level key, the line out of range).
fn blank_block(text: &str, line: u64) -> Option<String> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    let at = usize::try_from(line).ok()?.checked_sub(1)?;
    let first = *lines.get(at)?;
    let indent = first.len() - first.trim_start().len();
    if indent == 0 || first.trim().is_empty() {
        return None;
    }
    let mut end = at + 1;
    while end < lines.len() {
        let l = lines[end];
        let deeper = l.len() - l.trim_start().len() > indent;
        if !(deeper || l.trim().is_empty()) {
            break;
        }
        end += 1;
    }
    for l in &mut lines[at..end] {
        *l = "";
    }
    Some(lines.join("\n"))
}

/// One parse problem, located, in plain words, with what to do.
fn parse_diagnostic(path: &Path, e: &serde_saphyr::Error, limits: &ManifestLimits) -> Diagnostic {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let message = e.without_snippet().to_string();
    let message = plain_words(
        &strip_location_suffix(&message)
            .replace(", set DuplicateKeyPolicy in Options if acceptable", ""),
        limits,
    );
    let (message, help) = did_you_mean(&message);
    Diagnostic::at(Some(Origin::new(path, line, column)), message).with_help(
        help.unwrap_or_else(|| {
            "`setpoint explain spec` describes every field of a manifest".into()
        }),
    )
}

/// "unknown field `replcas`, expected one of ..." → "unknown field `replcas`: did you
/// mean `replicas`?", with the fields there are as the help; the same for enum values.
fn did_you_mean(message: &str) -> (String, Option<String>) {
    let kind = if message.starts_with("unknown field") {
        "field"
    } else if message.starts_with("unknown variant") {
        "value"
    } else {
        return (message.to_string(), None);
    };
    let Some(given) = message.split('`').nth(1) else {
        return (message.to_string(), None);
    };
    let Some((_, expected)) = message.split_once("expected ") else {
        return (message.to_string(), None);
    };
    let choices: Vec<&str> = expected
        .trim_start_matches("one of ")
        .split([',', ' '])
        .map(|c| c.trim_matches('`').trim())
        .filter(|c| !c.is_empty() && *c != "or")
        .collect();
    let closest = choices
        .iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&given.to_lowercase(), &c.to_lowercase()),
                *c,
            )
        })
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min();
    let listed = format!("the {kind}s allowed here: {}", choices.join(", "));
    match closest {
        Some((_, c)) => (
            format!("unknown {kind} `{given}`: did you mean `{c}`?"),
            Some(listed),
        ),
        None => (format!("unknown {kind} `{given}`"), Some(listed)),
    }
}

/// The parser's messages in the words of a manifest's author, not of Rust types.
fn plain_words(message: &str, limits: &ManifestLimits) -> String {
    if message.contains("budget breached") {
        return if message.contains("Documents") {
            format!(
                "the file has more than {} YAML documents, the most this host reads from one file",
                limits.max_documents
            )
        } else if message.contains("Depth") {
            "the YAML nests deeper than 64 levels, the most this host reads".into()
        } else if message.contains("ScalarBytes") || message.contains("scalar") {
            format!(
                "the file's values add up to more than {} bytes, the most this host reads",
                limits.max_file_bytes
            )
        } else {
            "the YAML has more nodes than this host reads from one file (1,000,000)".into()
        };
    }
    let mut text = message
        .replace(
            "cannot deserialize null into string; use Option<String>",
            "a value is missing here: write a text value",
        )
        .replace(
            "expected string scalar",
            "expected text here, not a list or a map (quote it if it looks like something else)",
        )
        .replace("use Option<String>", "write a text value");
    for (rust, plain) in [
        ("i64", "a whole number"),
        ("u64", "a whole number"),
        ("u32", "a whole number"),
        ("u8", "a whole number"),
        ("f64", "a number"),
        ("a string", "text"),
    ] {
        text = text
            .replace(&format!("invalid {rust}"), &format!("not {plain}"))
            .replace(&format!("expected {rust}"), &format!("expected {plain}"));
    }
    text
}

/// serde-saphyr appends " at line L, column C" to messages; we print the location up front.
fn strip_location_suffix(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(idx) => message[..idx].to_string(),
        None => message.to_string(),
    }
}

/// Finds the file a manifest's `spec.component` or `spec.policy.plugin` names, given
/// the path joined onto the manifest's directory. On the filesystem that is
/// `canonicalize`; the daemon answers from the components a client uploaded.
pub type Resolver<'a> = &'a dyn Fn(&Path) -> std::io::Result<PathBuf>;

/// Resolves against the filesystem.
fn on_disk(path: &Path) -> std::io::Result<PathBuf> {
    std::fs::canonicalize(path)
}

#[cfg(test)]
mod tests {
    /// A build with the `http` feature takes `spec.http` and `spec.network.http`; a build
    /// without it refuses each at its own line, naming the feature.
    #[test]
    fn http_fields_are_taken_only_by_a_build_with_http() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("web.wasm"), b"\0asm").expect("a component file");
        let text = "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata: {name: web}\nspec:\n  component: web.wasm\n  http: {listen: 127.0.0.1:8080}\n  network:\n    http: [api.example.com:443]\n";
        let loaded = super::load_str(
            &dir.path().join("web.yaml"),
            text,
            &super::ManifestLimits::default(),
        );
        if cfg!(feature = "http") {
            let workloads = loaded.expect("a build with http takes the HTTP fields");
            assert!(workloads[0].spec.http.is_some());
            assert_eq!(workloads[0].spec.http_authorities.len(), 1);
        } else {
            let rejected = loaded.expect_err("a build without http refuses the HTTP fields");
            let shown = rejected.to_string();
            assert_eq!(
                shown.matches("cargo feature `http`").count(),
                2,
                "both fields are refused: {shown}"
            );
            assert!(shown.contains("web.yaml:6:"), "spec.http located: {shown}");
            assert!(
                shown.contains("web.yaml:8:"),
                "network.http located: {shown}"
            );
        }
    }

    #[test]
    fn a_blanked_block_keeps_every_line_where_it_was() {
        let text = "spec:\n  a: 1\n  env:\n    X: [1]\n    Y: 2\n  b: 3\n";
        let blanked = super::blank_block(text, 3).expect("a nested block");
        assert_eq!(blanked, "spec:\n  a: 1\n\n\n\n  b: 3\n");
        assert_eq!(blanked.lines().count(), text.lines().count());
        assert_eq!(super::blank_block(text, 1), None, "a top-level key stays");
        assert_eq!(super::blank_block(text, 99), None);
        assert_eq!(super::blank_block(text, 0), None);
    }
}
