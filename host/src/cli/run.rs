//! `setpoint run`: manifests in the foreground, with live status, until Ctrl-C,
//! SIGTERM or `--for` elapses; then the final status.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use setpoint::manifest::{ManifestLimits, load_files, units::parse_duration};
use setpoint::{EventType, Host};

use super::signals::StopSignals;
use super::{EngineArgs, Output, report, table};

/// `setpoint run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Manifest files (YAML, several documents per file with `---`).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Stop after this long (e.g. `30s`), then print the final status.
    #[arg(long = "for", value_parser = parse_duration)]
    run_for: Option<Duration>,
    /// Output format of status.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// How often to print the status table while running (table output only).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    status_every: Duration,
    /// Do not print guest output lines.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    cache: super::CacheArgs,
    /// At the end, write each workload's policy snapshot (what its policy would be shown
    /// then) to DIR/NAME.json, for replay with `setpoint policy test`.
    #[arg(long, value_name = "DIR")]
    snapshots: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs the manifests until stopped.
pub async fn run(args: RunArgs) -> ExitCode {
    let mut signals = match StopSignals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let workloads = match load_files(&args.files, &ManifestLimits::default()) {
        Ok(w) => w,
        Err(rejected) => return report(&rejected),
    };
    let mut builder = args.engine.apply(Host::builder());
    if let Some(dir) = args.cache.dir() {
        builder = builder.cache_dir(dir);
    }
    let host = match builder.build() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: cannot start the host: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // A run of Jobs only ends when they have all finished, as a batch tool does.
    let only_jobs = !workloads.is_empty() && workloads.iter().all(|w| w.spec.job.is_some());
    let mut job_events = host.events();
    let mut jobs_outcome: Option<bool> = None;
    let mut events = host.events();
    let mut logs = host.logs();
    let mut interrupted = false;
    let spinner = super::progress::Spinner::start(format!(
        "compiling {}",
        super::progress::describe(&super::components_of(&workloads))
    ));
    tokio::select! {
        applied = host.apply(workloads) => if let Err(rejected) = applied {
            drop(spinner);
            if let Some(why) = host.failure() {
                eprintln!("error: the host's controller died: {why}");
                return ExitCode::FAILURE;
            }
            host.shutdown().await;
            return report(&rejected);
        },
        _ = signals.recv() => {
            eprintln!("interrupted while starting");
            interrupted = true;
        }
    }
    drop(spinner);
    let mut logs_open = !args.quiet;
    let live_table = args.output == Output::Table && std::io::stdout().is_terminal();
    let screen = super::screen::Screen::new(live_table);
    let printing = screen.clone();
    let say = move |text: String| super::screen::lock(&printing).line(&text);
    let mut printer = tokio::spawn(async move {
        loop {
            tokio::select! {
                // Output first: an instance's last lines come before the event of its end.
                biased;
                line = logs.recv(), if logs_open => match line {
                    Ok(l) => say(format!("{} | {}", l.instance, l.line)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => say(format!("log ({n} lines skipped)")),
                    // Both channels close when the host is gone: drain the events still
                    // buffered (the last instances' ends) before stopping.
                    Err(_) => logs_open = false,
                },
                event = events.recv() => match event {
                    Ok(e) => {
                        let level = if e.kind == EventType::Warning { "WARN " } else { "event" };
                        let who = e.instance.as_deref().unwrap_or(&e.workload);
                        say(format!("{level} {who}: {} {}", e.reason, e.message));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => say(format!("event ({n} events skipped)")),
                    Err(_) => break,
                },
            }
        }
    });
    let deadline = args
        .run_for
        .map(|d| setpoint::clock::after_tokio(tokio::time::Instant::now(), d));
    let mut ticker = tokio::time::interval(args.status_every.max(Duration::from_millis(100)));
    let mut last_table = String::new();
    if !interrupted {
        loop {
            tokio::select! {
                why = host.died() => {
                    eprintln!("error: the host's controller died: {why}");
                    printer.abort();
                    return ExitCode::FAILURE;
                }
                _ = signals.recv() => break,
                event = job_events.recv(), if only_jobs => {
                    if matches!(event, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        break;
                    }
                    if let Some(all_succeeded) = jobs_finished(&host.status().await) {
                        jobs_outcome = Some(all_succeeded);
                        break;
                    }
                }
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
                _ = ticker.tick(), if live_table => {
                    let table = table::render(&host.status().await, false);
                    if table != last_table {
                        super::screen::lock(&screen).status(&table);
                        last_table = table;
                    }
                }
            }
        }
    }
    // The status users want is the one they were running, taken before instances stop.
    // Stopping is bounded at any load: a host that does not answer, or does not stop
    // within its longest grace period and a margin, or a second signal, ends the
    // process at once.
    let status = tokio::select! {
        status = host.status() => status,
        _ = tokio::time::sleep(STOP_MARGIN) => force_exit("the host did not answer within 10 s"),
        _ = signals.recv() => force_exit("a second signal"),
    };
    if let Some(dir) = &args.snapshots
        && let Err(e) = write_snapshots(&host, &status, dir).await
    {
        eprintln!("error: writing snapshots to {}: {e}", dir.display());
    }
    let grace = status.longest_grace_period();
    tokio::select! {
        _ = host.shutdown() => {}
        _ = tokio::time::sleep(grace.saturating_add(STOP_MARGIN)) => {
            force_exit("the host did not stop within its grace period and 10 s")
        }
        _ = signals.recv() => force_exit("a second signal"),
    }
    // The host is gone, so its event and log channels close: let the printer drain what is
    // still buffered (the last instances' ends) instead of cutting it off.
    if tokio::time::timeout(Duration::from_secs(2), &mut printer)
        .await
        .is_err()
    {
        printer.abort();
    }
    super::screen::lock(&screen).finish();
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        ),
        // Taken before the instances stopped, shown as what it is now: stopped.
        Output::Table => println!("{}", table::render(&status, true)),
    }
    match jobs_outcome {
        Some(false) => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

/// Whether every job in `status` has finished: `Some(true)` if all succeeded,
/// `Some(false)` if any failed, `None` while one still runs.
fn jobs_finished(status: &setpoint::HostStatus) -> Option<bool> {
    use setpoint::Phase;
    let finished = status
        .workloads
        .iter()
        .all(|w| matches!(w.phase, Phase::Succeeded | Phase::Failed));
    finished.then(|| status.workloads.iter().all(|w| w.phase == Phase::Succeeded))
}

/// A fault for the tests at the kernel's mapping limit, in debug builds only: with
/// `SETPOINT_TEST_FREE_MAPPINGS=N`, the process first maps small regions until only
/// about N mappings are left under `vm.max_map_count`, so the wall comes after a few
/// hundred instances instead of tens of thousands.
#[cfg(all(debug_assertions, target_os = "linux"))]
pub(super) fn fill_mappings_for_tests() {
    let Some(free) = std::env::var("SETPOINT_TEST_FREE_MAPPINGS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return;
    };
    let (Some(limit), Some(in_use)) = (
        setpoint::runtime::mappings::limit(),
        setpoint::runtime::mappings::in_use(),
    ) else {
        return;
    };
    let wanted = limit.saturating_sub(in_use).saturating_sub(free);
    // One region, every other page made inaccessible: each protection change splits
    // it, so `wanted` mappings cost one mmap and wanted/2 mprotect calls.
    let pages = wanted + 1;
    // SAFETY: an anonymous private mapping that nothing else refers to, and changes of
    // its own pages' protection; it is never unmapped (it lives as long as the process).
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let base = libc::mmap(
            std::ptr::null_mut(),
            pages * page,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if base == libc::MAP_FAILED {
            return;
        }
        for i in (1..pages).step_by(2) {
            libc::mprotect(
                base.cast::<u8>().add(i * page).cast(),
                page,
                libc::PROT_NONE,
            );
        }
    }
}

/// The margin a stopping host gets beyond its longest grace period.
const STOP_MARGIN: Duration = Duration::from_secs(10);

/// Ends the process now, saying why (a stop that would otherwise not be bounded).
fn force_exit(why: &str) -> ! {
    eprintln!("error: stopping at once: {why}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::process::exit(1)
}

async fn write_snapshots(
    host: &Host,
    status: &setpoint::HostStatus,
    dir: &std::path::Path,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for w in &status.workloads {
        if let Some(snapshot) = host.policy_snapshot(&w.name).await {
            let text = serde_json::to_string_pretty(&snapshot).map_err(std::io::Error::other)?;
            std::fs::write(dir.join(format!("{}.json", w.name)), text + "\n")?;
        }
    }
    Ok(())
}
