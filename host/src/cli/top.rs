//! `setpoint top`: what each live instance uses now (linear memory, CPU), refreshed,
//! busiest first, like `kubectl top pods` and top(1). CPU% is the CPU time an instance
//! used over the last interval (sampled at the epoch tick), over that interval.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use setpoint::status::HostStatus;

use super::client::{Client, Target, fail, local_error};
use super::output::{age, print_rows, row};

/// `setpoint top`.
#[derive(clap::Args)]
pub struct TopArgs {
    /// Only this workload's or job's instances (`KIND/NAME` or `NAME`).
    target_name: Option<String>,
    /// How often to refresh; CPU% is measured over this interval.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = setpoint::manifest::units::parse_duration)]
    interval: Duration,
    /// Print one table, measured over one interval, and exit.
    #[arg(long)]
    once: bool,
    /// Busiest first by `cpu` (the default) or by `memory`.
    #[arg(long, value_enum, default_value_t = SortBy::Cpu)]
    sort: SortBy,
    #[command(flatten)]
    target: Target,
}

/// `--sort`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SortBy {
    /// CPU over the last interval.
    Cpu,
    /// Linear memory.
    Memory,
}

/// One instance as sampled.
struct Sample {
    owner: String,
    node: Option<String>,
    memory: u64,
    cpu_ms: u64,
    age: Duration,
}

async fn sample(
    client: &Client,
    only: Option<&str>,
) -> Result<HashMap<String, Sample>, super::client::ApiError> {
    let status: HostStatus = client.get_json("/v1/workloads").await?;
    let mut out = HashMap::new();
    for w in status.workloads {
        if only.is_some_and(|n| n != w.name) {
            continue;
        }
        for i in w.instances {
            out.insert(
                i.id.clone(),
                Sample {
                    owner: w.name.clone(),
                    node: i.node.clone(),
                    memory: i.memory_bytes.unwrap_or(0),
                    cpu_ms: i.cpu_ms.unwrap_or(0),
                    age: i.age,
                },
            );
        }
    }
    Ok(out)
}

/// The table for `now`, CPU% against `before` over `over`.
fn table(
    now: &HashMap<String, Sample>,
    before: &HashMap<String, Sample>,
    over: Duration,
    sort: SortBy,
) -> Vec<Vec<String>> {
    let fleet = now.values().any(|s| s.node.is_some());
    let mut rows: Vec<(f64, u64, Vec<String>)> = now
        .iter()
        .map(|(id, s)| {
            let used = s
                .cpu_ms
                .saturating_sub(before.get(id).map_or(s.cpu_ms, |b| b.cpu_ms));
            let percent = used as f64 / over.as_millis().max(1) as f64 * 100.0;
            let mut r = vec![
                id.clone(),
                s.owner.clone(),
                bytesize::ByteSize(s.memory).to_string(),
                format!("{percent:.1}%"),
                age(Duration::from_millis(s.cpu_ms)),
                age(s.age),
            ];
            if fleet {
                r.push(s.node.clone().unwrap_or_default());
            }
            (percent, s.memory, r)
        })
        .collect();
    match sort {
        SortBy::Cpu => rows.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1))),
        SortBy::Memory => rows.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.total_cmp(&a.0))),
    }
    let mut header = row(&["INSTANCE", "OWNER", "MEMORY", "CPU%", "CPU TIME", "AGE"]);
    if fleet {
        header.push("NODE".into());
    }
    std::iter::once(header)
        .chain(rows.into_iter().map(|(_, _, r)| r))
        .collect()
}

/// `setpoint top [NAME] [--interval 2s] [--once] [--sort cpu|memory]`.
pub async fn top(args: TopArgs) -> ExitCode {
    let client = args.target.client();
    let only = match args
        .target_name
        .as_deref()
        .map(super::objects::parse_target)
    {
        Some(Ok((_, name))) => Some(name.to_string()),
        Some(Err(e)) => return fail(&e),
        None => None,
    };
    if args.interval < Duration::from_millis(100) {
        return fail(&local_error("--interval must be at least 100ms"));
    }
    let mut before = match sample(&client, only.as_deref()).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let mut taken = Instant::now();
    let live = !args.once && std::io::stdout().is_terminal();
    loop {
        tokio::time::sleep(args.interval).await;
        let now = match sample(&client, only.as_deref()).await {
            Ok(s) => s,
            Err(e) => return fail(&e),
        };
        let over = taken.elapsed();
        taken = Instant::now();
        let rows = table(&now, &before, over, args.sort);
        if live {
            // Home and clear, then the table: redrawn in place.
            print!("\x1b[H\x1b[2J");
        }
        print_rows(&rows, "no instances");
        if args.once {
            return ExitCode::SUCCESS;
        }
        if !live {
            println!();
        }
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(owner: &str, memory: u64, cpu_ms: u64) -> Sample {
        Sample {
            owner: owner.into(),
            node: None,
            memory,
            cpu_ms,
            age: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_busiest_instance_comes_first_with_its_share_of_the_interval() {
        let before: HashMap<String, Sample> = [
            ("a".into(), s("w", 1 << 20, 100)),
            ("b".into(), s("w", 4 << 20, 0)),
        ]
        .into();
        let now: HashMap<String, Sample> = [
            ("a".into(), s("w", 1 << 20, 1100)),
            ("b".into(), s("w", 4 << 20, 200)),
        ]
        .into();
        let rows = table(&now, &before, Duration::from_secs(2), SortBy::Cpu);
        assert_eq!(rows[1][0], "a");
        assert_eq!(rows[1][3], "50.0%");
        assert_eq!(rows[2][3], "10.0%");
        let rows = table(&now, &before, Duration::from_secs(2), SortBy::Memory);
        assert_eq!(rows[1][0], "b");
        // A new instance counts from its first sample.
        let rows = table(&now, &HashMap::new(), Duration::from_secs(2), SortBy::Cpu);
        assert_eq!(rows[1][3], "0.0%");
    }
}
