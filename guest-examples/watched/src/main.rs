//! A command of setpoint's `watched-command` world: it beats every `BEAT_MS` (default
//! 100), and exits cleanly when the host asks it to stop. With `HANG_AFTER_MS` set it
//! stops beating after that long (a hang the watchdog must catch).

use std::time::{Duration, Instant};

wit_bindgen::generate!({ path: "../../wit/workload", world: "watched-command" });

use setpoint::workload::heartbeat;

fn main() {
    let beat_ms: u64 = std::env::var("BEAT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let hang_after = std::env::var("HANG_AFTER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let started = Instant::now();
    heartbeat::set_ready(true);
    loop {
        if heartbeat::stop_requested() {
            println!("watched: stop requested, exiting cleanly");
            return;
        }
        if hang_after.is_some_and(|h| started.elapsed() >= h) {
            println!("watched: hanging");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        heartbeat::beat();
        std::thread::sleep(Duration::from_millis(beat_ms));
    }
}
