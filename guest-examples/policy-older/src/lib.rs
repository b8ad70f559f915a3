//! A plugin built against the previous version of the policy contract,
//! `setpoint:policy@0.1.0` (its WIT is kept beside it). The host must refuse it at apply
//! and say what changed, not fail at link with a type mismatch.

wit_bindgen::generate!({ path: "wit", world: "plugin" });

use exports::setpoint::policy::reconciler::Guest;
use setpoint::policy::types::{Action, Desired, Observed};

struct Older;

impl Guest for Older {
    fn reconcile(_desired: Desired, _observed: Observed, _now_unix_ms: u64) -> Vec<Action> {
        Vec::new()
    }
}

export!(Older);
