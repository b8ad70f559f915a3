//! Host bindings of `wit/workload.wit`: the `lifecycle` exports setpoint calls and the
//! `heartbeat` import it provides.

use std::sync::atomic::Ordering;

use super::instance::InstanceState;

wasmtime::component::bindgen!({
    path: "../wit/workload",
    world: "reactor",
    exports: { default: async },
});

pub use exports::setpoint::workload::lifecycle::HealthStatus;

/// The export and import names by which a component's style is recognised.
pub const LIFECYCLE_EXPORT: &str = "setpoint:workload/lifecycle@0.1.0";
/// The heartbeat interface's import name.
pub const HEARTBEAT_IMPORT: &str = "setpoint:workload/heartbeat@0.1.0";

impl setpoint::workload::heartbeat::Host for InstanceState {
    fn beat(&mut self) {
        let first = self.vitals.record_beat();
        if first {
            self.vitals.changed.notify_one();
        }
    }

    fn set_ready(&mut self, ready: bool) {
        if self.vitals.ready.swap(ready, Ordering::AcqRel) != ready {
            self.vitals.changed.notify_one();
        }
    }

    fn stop_requested(&mut self) -> bool {
        self.vitals.stop_requested.load(Ordering::Acquire)
    }
}
