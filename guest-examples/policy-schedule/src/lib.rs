//! A time-of-day scaler. Config (UTC, `to` exclusive; `replicas` capped by the spec's):
//!
//! ```yaml
//! config:
//!   default: 1
//!   windows:
//!     - {from: "08:00", to: "20:00", replicas: 3}
//! ```
//!
//! It keeps the scheduled number of slots filled (replacing ended instances at once), stops
//! the rest, and asks to be woken at the next window boundary.

wit_bindgen::generate!({ path: "../../wit/policy", world: "plugin" });

use exports::setpoint::policy::reconciler::Guest;
use setpoint::policy::types::{Action, Desired, Event, Observed};

const DAY_MS: u64 = 24 * 3600 * 1000;

struct Schedule;

fn minutes(hhmm: &str) -> Option<u64> {
    let (h, m) = hhmm.split_once(':')?;
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some((h * 60 + m) * 60_000)
}

/// The scheduled replicas at `now_ms` into the day, and ms until the next boundary.
fn scheduled(config: &serde_json::Value, now_ms: u64) -> Result<(u32, u64), String> {
    let default = config.get("default").and_then(|v| v.as_u64()).unwrap_or(1) as u32;
    let mut count = default;
    let mut next = DAY_MS - now_ms;
    for w in config
        .get("windows")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let from = w
            .get("from")
            .and_then(|v| v.as_str())
            .and_then(minutes)
            .ok_or("window without a valid `from` (HH:MM)")?;
        let to = w
            .get("to")
            .and_then(|v| v.as_str())
            .and_then(minutes)
            .ok_or("window without a valid `to` (HH:MM)")?;
        let replicas = w
            .get("replicas")
            .and_then(|v| v.as_u64())
            .ok_or("window without `replicas`")? as u32;
        if from <= now_ms && now_ms < to {
            count = replicas;
        }
        for edge in [from, to] {
            if edge > now_ms {
                next = next.min(edge - now_ms);
            }
        }
    }
    Ok((count, next))
}

impl Guest for Schedule {
    fn reconcile(desired: Desired, observed: Observed, now_unix_ms: u64) -> Vec<Action> {
        let config: serde_json::Value =
            serde_json::from_str(&desired.config).unwrap_or(serde_json::Value::Null);
        let (count, next) = match scheduled(&config, now_unix_ms % DAY_MS) {
            Ok(found) => found,
            Err(why) => {
                return vec![Action::Event(Event {
                    warning: true,
                    reason: "BadScheduleConfig".to_string(),
                    message: why.to_string(),
                })];
            }
        };
        let target = count.min(desired.replicas);
        let mut actions = Vec::new();
        for slot in &observed.slots {
            if slot.index >= target && slot.instance.as_ref().is_some_and(|i| !i.stopping) {
                actions.push(Action::Stop(slot.index));
            }
        }
        for index in 0..target {
            if observed
                .slots
                .get(index as usize)
                .is_none_or(|s| s.instance.is_none())
            {
                actions.push(Action::Spawn(index));
            }
        }
        actions.push(Action::RequeueAfterMs(next.max(1)));
        actions
    }
}

export!(Schedule);
