//! A reactor of setpoint's `reactor` world with a real health probe.
//!
//! Configured through granted env vars:
//! - `WARMUP_PROBES` (default 0): answer `not-ready` to this many probes first;
//! - `FAIL_AFTER_PROBES` (default never): after this many probes, answer `failing`;
//! - `HANG_AFTER_PROBES` (default never): after this many probes, spin forever inside `health`;
//! - `FAIL_START` (set to anything): `start` returns an error.

use std::sync::atomic::{AtomicU64, Ordering};

wit_bindgen::generate!({ path: "../../wit/workload", world: "reactor" });

use exports::setpoint::workload::lifecycle::{Guest, HealthStatus as Health};

static PROBES: AtomicU64 = AtomicU64::new(0);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

struct Probed;

impl Guest for Probed {
    fn start() -> Result<(), String> {
        if std::env::var("FAIL_START").is_ok() {
            return Err("FAIL_START is set: refusing to start".to_string());
        }
        println!("probed: started");
        Ok(())
    }

    fn health() -> Health {
        let n = PROBES.fetch_add(1, Ordering::Relaxed) + 1;
        if env_u64("HANG_AFTER_PROBES").is_some_and(|limit| n > limit) {
            println!("probed: probe {n} hangs");
            #[allow(clippy::empty_loop)]
            loop {}
        }
        if env_u64("FAIL_AFTER_PROBES").is_some_and(|limit| n > limit) {
            println!("probed: probe {n} failing");
            return Health::Failing(format!("failing since probe {n}"));
        }
        if n <= env_u64("WARMUP_PROBES").unwrap_or(0) {
            return Health::NotReady(format!("warming up ({n})"));
        }
        Health::Ready
    }

    fn stop() {
        println!(
            "probed: stopping after {} probes",
            PROBES.load(Ordering::Relaxed)
        );
    }
}

export!(Probed);
