//! A run-to-completion command for Jobs: it works for `WORK_MS` milliseconds (default
//! 50), then exits with `EXIT_CODE` (default 0; any code 0..=255, through
//! `wasi:cli/exit.exit-with-code`).
//!
//! With a directory granted at `/state` it keeps a ledger there: every run appends a line
//! to `/state/runs`, and a run that succeeds appends one to `/state/done`. With
//! `FAIL_TIMES=N` the first N runs (counted in `/state/runs`) exit with `FAIL_CODE`
//! (default 1) instead: a job that succeeds on a retry.

use std::io::Write as _;
use std::time::Duration;

wit_bindgen::generate!({
    inline: "
        package wasi:cli@0.2.12;
        interface exit {
            exit: func(status: result);
            exit-with-code: func(status-code: u8);
        }
        world batch {
            import exit;
        }
    ",
});

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn append(path: &str, line: &str) -> usize {
    let previous = std::fs::read_to_string(path).map_or(0, |s| s.lines().count());
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
    previous + 1
}

fn main() {
    let work_ms = env_or("WORK_MS", 50);
    let mut code = env_or("EXIT_CODE", 0).min(255) as u8;
    let ledger = std::path::Path::new("/state").is_dir();
    let run = if ledger {
        append("/state/runs", "run")
    } else {
        1
    };
    if (run as u64) <= env_or("FAIL_TIMES", 0) {
        code = env_or("FAIL_CODE", 1).min(255) as u8;
    }
    println!("batch: run {run}, working {work_ms} ms, then exiting with {code}");
    std::thread::sleep(Duration::from_millis(work_ms));
    if ledger && code == 0 {
        append("/state/done", "done");
    }
    wasi::cli::exit::exit_with_code(code);
}
