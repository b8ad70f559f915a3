//! A healthy long-running `wasi:cli/command`: no setpoint-specific code at all.
//! Prints a line every `TICK_MS` milliseconds (default 1000) until it is stopped.

use std::time::Duration;

fn main() {
    let tick_ms: u64 = std::env::var("TICK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "tick".to_string());
    let mut n: u64 = 0;
    loop {
        n += 1;
        println!("{greeting} {n}");
        std::thread::sleep(Duration::from_millis(tick_ms));
    }
}
