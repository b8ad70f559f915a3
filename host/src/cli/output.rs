//! How client commands print: the output formats, aligned tables, short ages.

use serde::Serialize;

/// Output formats of `get`, `describe`, `events` and `rollout history`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum GetOutput {
    /// A table (the default).
    Table,
    /// A wider table.
    Wide,
    /// JSON, as the API returns it.
    Json,
    /// YAML.
    Yaml,
    /// `kind/name`, one per line (for scripts: `xargs setpoint delete`).
    Name,
}

impl GetOutput {
    /// Whether this format prints the data itself rather than a table.
    pub fn is_data(self) -> bool {
        matches!(self, Self::Json | Self::Yaml)
    }
}

/// Prints `value` as JSON or YAML if `output` asks for data; false for a table.
pub fn print_value<T: Serialize>(value: &T, output: GetOutput) -> bool {
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
        GetOutput::Table | GetOutput::Wide | GetOutput::Name => false,
    }
}

/// A workload's status as `-o json` shows it: the API's status, with the spec in the
/// manifest's own form (field names, units, the user's component path).
pub fn object_json(w: &setpoint::WorkloadStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(w).unwrap_or_default();
    value["spec"] = setpoint::manifest::render::spec_of(&w.spec);
    value
}

/// A workload as `-o yaml` shows it: the manifest document `apply -f` reads
/// (`apiVersion`, `kind`, `metadata`, `spec`), and its status under `status`, which
/// `apply` ignores.
pub fn object_document(w: &setpoint::WorkloadStatus) -> serde_json::Value {
    let mut doc = setpoint::manifest::render::document(&w.name, &w.labels, &w.spec);
    let mut status = serde_json::to_value(w).unwrap_or_default();
    if let Some(fields) = status.as_object_mut() {
        for shown in ["name", "labels", "kind", "spec"] {
            fields.remove(shown);
        }
    }
    doc["status"] = status;
    doc
}

/// Prints workloads for `-o json` (a list) or `-o yaml` (one document each, applyable);
/// false for the other formats.
pub fn print_objects(objects: &[setpoint::WorkloadStatus], output: GetOutput) -> bool {
    match output {
        GetOutput::Json => {
            let list: Vec<serde_json::Value> = objects.iter().map(object_json).collect();
            print_value(&list, output)
        }
        GetOutput::Yaml => {
            let docs: Vec<String> = objects
                .iter()
                .map(|w| serde_saphyr::to_string(&object_document(w)).unwrap_or_default())
                .collect();
            print!("{}", docs.join("---\n"));
            true
        }
        GetOutput::Table | GetOutput::Wide | GetOutput::Name => false,
    }
}

/// `n` and the noun, plural unless `n` is 1: `1 replica`, `3 replicas`.
pub fn count(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A table row from cells.
pub fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| s.to_string()).collect()
}

/// Prints rows (the first is the header) as aligned columns, or `empty` when there is
/// nothing under the header.
pub fn print_rows(rows: &[Vec<String>], empty: &str) {
    if rows.len() <= 1 {
        println!("{empty}");
        return;
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
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

/// A short age: `850ms`, `42s`, `7m3s`, `2h5m`, `3d4h`.
pub fn age(d: std::time::Duration) -> String {
    let ms = d.as_millis() as u64;
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// A time as the API writes it (RFC 3339, milliseconds), or `-`.
pub fn time(t: Option<std::time::SystemTime>) -> String {
    t.map_or_else(
        || "-".to_string(),
        |t| humantime::format_rfc3339_millis(t).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_are_plural_unless_one() {
        assert_eq!(count(1, "replica"), "1 replica");
        assert_eq!(count(0, "replica"), "0 replicas");
        assert_eq!(count(3, "replica"), "3 replicas");
    }

    #[test]
    fn ages_are_short() {
        let cases = [
            (Duration::from_millis(850), "850ms"),
            (Duration::from_secs(42), "42s"),
            (Duration::from_secs(423), "7m3s"),
            (Duration::from_secs(7500), "2h5m"),
            (Duration::from_secs(4 * 3600 + 3 * 86400), "3d4h"),
        ];
        for (d, shown) in cases {
            assert_eq!(age(d), shown);
        }
    }
}
