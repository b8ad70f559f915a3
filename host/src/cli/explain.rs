//! `setpoint explain`: what a manifest field is, from the manifest's own JSON Schema
//! (kubectl's `explain`): its type, its description and, for an object, its fields.

use std::process::ExitCode;

use serde_json::Value;

use super::client::{fail, local_error};

/// `setpoint explain`.
#[derive(clap::Args)]
pub struct ExplainArgs {
    /// A dotted field path such as `spec`, `spec.http` or `spec.health.probe.period`;
    /// nothing for the document itself.
    #[arg(value_name = "FIELD")]
    field: Option<String>,
}

/// Follows `$ref`s, an optional's `anyOf [X, null]` and an array's items, to the schema
/// that has the fields.
fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..16 {
        if let Some(r) = node.get("$ref").and_then(Value::as_str) {
            let name = r.trim_start_matches("#/$defs/");
            match root["$defs"].get(name) {
                Some(def) => node = def,
                None => return node,
            }
        } else if let Some(any) = node.get("anyOf").and_then(Value::as_array) {
            match any
                .iter()
                .find(|v| v.get("type") != Some(&Value::from("null")))
            {
                Some(v) => node = v,
                None => return node,
            }
        } else if let Some(items) = node.get("items") {
            node = items;
        } else {
            return node;
        }
    }
    node
}

/// A field's type in a few words: `string`, `integer`, `[]Dir`, `Http`, `map`.
fn type_name(node: &Value) -> String {
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        return r.trim_start_matches("#/$defs/").to_string();
    }
    if let Some(any) = node.get("anyOf").and_then(Value::as_array)
        && let Some(v) = any
            .iter()
            .find(|v| v.get("type") != Some(&Value::from("null")))
    {
        return type_name(v);
    }
    let kind = match node.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("any")
            .to_string(),
        _ if node.get("enum").is_some() => "string".into(),
        _ => "any".into(),
    };
    match kind.as_str() {
        "array" => format!(
            "[]{}",
            node.get("items").map_or_else(|| "any".into(), type_name)
        ),
        "object"
            if node
                .get("additionalProperties")
                .is_some_and(Value::is_object) =>
        {
            "map".into()
        }
        _ => kind,
    }
}

/// `setpoint explain [FIELD]`.
pub fn explain(args: ExplainArgs) -> ExitCode {
    let root = serde_json::to_value(setpoint::manifest::json_schema()).unwrap_or_default();
    let path = args.field.unwrap_or_default();
    let mut node = &root;
    let mut description = root
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut at = String::new();
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let fields = resolve(&root, node).get("properties");
        match fields.and_then(|f| f.get(segment)) {
            Some(field) => {
                description = field
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                node = field;
                at = if at.is_empty() {
                    segment.to_string()
                } else {
                    format!("{at}.{segment}")
                };
            }
            None => {
                let known: Vec<&str> = fields
                    .and_then(Value::as_object)
                    .map(|f| f.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let within = if at.is_empty() {
                    "a manifest"
                } else {
                    at.as_str()
                };
                return fail(&local_error(if known.is_empty() {
                    format!("`{within}` has no fields")
                } else {
                    format!(
                        "`{within}` has no field `{segment}`; its fields are: {}",
                        known.join(", ")
                    )
                }));
            }
        }
    }
    if !at.is_empty() {
        println!("FIELD:    {at}");
        println!("TYPE:     {}", type_name(node));
    }
    println!("DESCRIPTION:");
    for line in description.lines() {
        println!("  {line}");
    }
    let resolved = resolve(&root, node);
    if let Some(values) = resolved.get("enum").and_then(Value::as_array) {
        let values: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
        println!("VALUES:   {}", values.join(", "));
    }
    if let Some(fields) = resolved.get("properties").and_then(Value::as_object) {
        let required: Vec<&str> = resolved
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!("FIELDS:");
        for (name, field) in fields {
            let mark = if required.contains(&name.as_str()) {
                " (required)"
            } else {
                ""
            };
            println!("  {name}  <{}>{mark}", type_name(field));
            if let Some(d) = field.get("description").and_then(Value::as_str) {
                for line in d.lines() {
                    println!("    {line}");
                }
            }
        }
    }
    ExitCode::SUCCESS
}
