//! `setpoint diff -f FILE...`: what an apply would change, field by field, without
//! changing anything (kubectl's `diff`): the daemon plans the apply (a dry run, so every
//! check an apply makes is made), and each workload that would change is compared with
//! what it runs now, both in the manifest's own form.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use hyper::Method;
use serde_json::Value;
use setpoint::daemon::wire::ApplyResponse;
use setpoint::host::Change;

use super::client::{Target, fail};
use super::objects::fetch;

/// `setpoint diff`.
#[derive(clap::Args)]
pub struct DiffArgs {
    /// Manifest files or directories, as for `apply`; `-` reads standard input.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR"
    )]
    files: Vec<PathBuf>,
    #[command(flatten)]
    target: Target,
}

/// Every leaf of `value` by its dotted path under `prefix` (lists are leaves).
pub fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(fields) if !fields.is_empty() => {
            for (k, v) in fields {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// The changes from `old` to `new`, one line per field: `~ path: old → new`,
/// `+ path: new`, `- path: old`.
pub fn field_changes(old: &Value, new: &Value) -> Vec<String> {
    let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
    flatten("", old, &mut before);
    flatten("", new, &mut after);
    // Nothing before (a new object) is no field.
    before.remove("");
    after.remove("");
    let show = |v: &Value| serde_json::to_string(v).unwrap_or_default();
    let mut lines = Vec::new();
    for (path, value) in &after {
        let path = path.trim_start_matches('.');
        match before.get(&format!(".{path}")) {
            Some(was) if was == value => {}
            Some(was) => lines.push(format!("~ {path}: {} → {}", show(was), show(value))),
            None => lines.push(format!("+ {path}: {}", show(value))),
        }
    }
    for (path, value) in &before {
        if !after.contains_key(path) {
            lines.push(format!(
                "- {}: {}",
                path.trim_start_matches('.'),
                show(value)
            ));
        }
    }
    lines
}

/// `setpoint diff -f FILE|DIR...`: exit 0 when nothing would change, 1 when something
/// would, 2 on an error.
pub async fn diff(args: DiffArgs) -> ExitCode {
    let client = args.target.client();
    let (request, local) = match super::apply::build_request(&client, &args.files, true).await {
        Ok(r) => r,
        Err(e) => return errored(&e),
    };
    let planned: ApplyResponse = match client.send_json(Method::POST, "/v1/apply", &request).await {
        Ok(r) => r,
        Err(e) => return errored(&e),
    };
    let mut changed = false;
    for c in &planned.changes {
        let Some(w) = local.iter().find(|w| w.name == c.name) else {
            continue;
        };
        let object = format!("{}/{}", c.kind.noun(), c.name);
        let new = setpoint::manifest::render::document(&w.name, &w.labels, &w.spec);
        let lines = match &c.change {
            Change::Unchanged => continue,
            Change::Create => {
                println!("{object}: created (revision {})", c.revision);
                field_changes(&Value::Null, &new)
            }
            Change::Update { .. } | Change::Scale { .. } => {
                let now = match fetch(&client, &c.name).await {
                    Ok(now) => now,
                    Err(e) => return errored(&e.error()),
                };
                let old = setpoint::manifest::render::document(&now.name, &now.labels, &now.spec);
                match &c.change {
                    Change::Update { from_revision } => {
                        println!(
                            "{object}: configured (revision {from_revision} → {})",
                            c.revision
                        )
                    }
                    Change::Scale { from_replicas } => {
                        println!("{object}: scaled ({from_replicas} → {})", c.replicas)
                    }
                    _ => {}
                }
                let mut lines = field_changes(&old, &new);
                if lines.is_empty() {
                    lines.push(
                        "~ the component's bytes (or a granted directory) changed; the manifest did not"
                            .into(),
                    );
                }
                lines
            }
        };
        changed = true;
        for line in lines {
            println!("  {line}");
        }
    }
    if changed {
        ExitCode::from(1)
    } else {
        println!("no changes");
        ExitCode::SUCCESS
    }
}

/// An error, told as every command tells it, with diff's exit status 2 (1 means "there
/// are differences").
fn errored(e: &super::client::ApiError) -> ExitCode {
    let _ = fail(e);
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_changes_name_each_field_that_differs() {
        let old = json!({"spec": {"replicas": 3, "env": {"A": "1", "B": "2"}, "args": ["x"]}});
        let new = json!({"spec": {"replicas": 5, "env": {"A": "1", "C": "3"}, "args": ["x", "y"]}});
        let lines = field_changes(&old, &new);
        assert_eq!(
            lines,
            [
                "~ spec.args: [\"x\"] → [\"x\",\"y\"]",
                "+ spec.env.C: \"3\"",
                "~ spec.replicas: 3 → 5",
                "- spec.env.B: \"2\"",
            ]
        );
        assert!(field_changes(&old, &old).is_empty());
    }
}
