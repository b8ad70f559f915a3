//! A command that ends after `CRASH_AFTER_MS` milliseconds (default 500), in the way
//! `MODE` says: `panic` (a trap, the default), `exit` (exit code 1) or `ok` (exit 0).

use std::time::Duration;

fn main() {
    let after_ms: u64 = std::env::var("CRASH_AFTER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let mode = std::env::var("MODE").unwrap_or_else(|_| "panic".to_string());
    println!("crasher up, mode={mode}, ending in {after_ms} ms");
    if after_ms > 0 {
        std::thread::sleep(Duration::from_millis(after_ms));
    }
    match mode.as_str() {
        "exit" => {
            eprintln!("crasher: exiting with status 1");
            std::process::exit(1)
        }
        "ok" => println!("crasher: done"),
        _ => panic!("crasher: deliberate panic"),
    }
}
