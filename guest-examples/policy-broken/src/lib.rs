//! A deliberately broken policy for the tests; `config.mode` picks how it breaks:
//! `trap`, `spin` (never returns), `oom` (allocates without end), `sleep` (blocks in a
//! host call), `spawn-beyond` (spawns slot 9999), `stop-unknown` (stops an empty slot),
//! `bad-reason` (an event whose reason is not CamelCase), `flood` (ten thousand actions).

wit_bindgen::generate!({ path: "../../wit/policy", world: "plugin" });

use exports::setpoint::policy::reconciler::Guest;
use setpoint::policy::types::{Action, Desired, Event, Observed};

struct Broken;

impl Guest for Broken {
    fn reconcile(desired: Desired, observed: Observed, _now_unix_ms: u64) -> Vec<Action> {
        let config: serde_json::Value = serde_json::from_str(&desired.config).unwrap_or_default();
        let mode = config
            .get("mode")
            .and_then(|v| v.as_str())
            .unwrap_or("trap")
            .to_string();
        eprintln!("policy-broken: mode {mode}");
        match mode.as_str() {
            "spin" => {
                let mut x = 1u64;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(3));
                }
            }
            "oom" => {
                // One request far over any sane cap: a single memory.grow the host refuses.
                let hoard: Vec<u8> = Vec::with_capacity(1 << 30);
                std::hint::black_box(&hoard);
                Vec::new()
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Vec::new()
            }
            "spawn-beyond" => vec![Action::Spawn(9999)],
            "stop-unknown" => vec![Action::Stop(observed.slots.len() as u32 + 7)],
            "bad-reason" => vec![Action::Event(Event {
                warning: false,
                reason: "not camel case!".to_string(),
                message: String::new(),
            })],
            "flood" => (0..10_000).map(|_| Action::RequeueAfterMs(1)).collect(),
            _ => panic!("policy-broken: deliberate trap"),
        }
    }
}

export!(Broken);
