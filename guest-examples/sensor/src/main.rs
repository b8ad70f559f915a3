//! A workload using a device capability: every `PERIOD_MS` (default 100) it reads sensor
//! `SENSOR` (default 0) through the embedder's `device:sensors/read` interface and prints
//! the reading. It exits after `READINGS` readings (default: never).

use std::time::Duration;

wit_bindgen::generate!({ path: "wit", world: "sensor-app" });

use device::sensors::read;

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    let period = Duration::from_millis(env("PERIOD_MS").unwrap_or(100));
    let sensor: u32 = env("SENSOR").unwrap_or(0);
    let readings: Option<u64> = env("READINGS");
    let mut taken = 0u64;
    loop {
        match read::temperature(sensor) {
            Ok(celsius) => println!("sensor {sensor}: {celsius:.1} C"),
            Err(why) => println!("sensor {sensor}: unreadable: {why}"),
        }
        taken += 1;
        if readings.is_some_and(|n| taken >= n) {
            return;
        }
        std::thread::sleep(period);
    }
}
