//! The human-readable status table.

use setpoint::HostStatus;
use setpoint::manifest::units::format_duration;

/// Renders one line per workload, kubectl-style. With `stopped` (the final table of a
/// `run`, whose instances have all stopped since `status` was taken), a workload shows
/// as `Stopped` with none ready, and what it was before.
pub fn render(status: &HostStatus, stopped: bool) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "NAME".to_string(),
        "PHASE".to_string(),
        "READY".to_string(),
        "RESTARTS".to_string(),
        "REVISION".to_string(),
        "LAST TERMINATION".to_string(),
        "URL".to_string(),
    ]];
    for w in &status.workloads {
        let last = w.last_termination.as_ref().map_or_else(
            || "-".to_string(),
            |t| {
                format!(
                    "{} after {} ({})",
                    t.end.reason.name(),
                    format_duration(t.end.ran_for),
                    t.instance
                )
            },
        );
        let failed = w
            .conditions
            .iter()
            .find(|c| c.kind == setpoint::status::ConditionType::Failed)
            .map(|c| format!(" [{}]", c.reason));
        let phase = format!("{:?}{}", w.phase, failed.unwrap_or_default());
        let (phase, ready) = match &w.job {
            Some(j) => {
                let done = format!("{}/{} done", j.succeeded, j.completions);
                let finished = matches!(
                    w.phase,
                    setpoint::status::Phase::Succeeded | setpoint::status::Phase::Failed
                );
                if stopped && !finished {
                    (format!("Stopped (was {phase})"), done)
                } else {
                    (phase, done)
                }
            }
            None if stopped => (
                format!("Stopped (was {phase})"),
                format!("0/{} (was {})", w.desired, w.ready),
            ),
            None => (phase, format!("{}/{}", w.ready, w.desired)),
        };
        rows.push([
            w.name.clone(),
            phase,
            ready,
            w.restarts.to_string(),
            w.revision.clone(),
            last,
            w.http.as_ref().map_or_else(String::new, |h| h.url.clone()),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
    }
    out
}
